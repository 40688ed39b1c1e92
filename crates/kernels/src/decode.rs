//! The non-product parts of a decode step, on plain slices: rotary embedding and attention of one new query per sequence over a preallocated key/value cache.
//!
//! A decode step's tensors are tiny (one row per sequence), so as burn ops each of these is
//! dominated by dispatch, allocation and, for the cache, by copying every earlier key and value
//! to append one (`Tensor::cat`). Here they are single passes over slices.

use rayon::prelude::*;

pub use crate::norm::rms_norm;

/// Rotary embedding in place, rotate-half convention (Llama / transformers): for every head of
/// `hd` values, `x[i] ← x[i]·cos[i] − x[i+hd/2]·sin[i]` and
/// `x[i+hd/2] ← x[i+hd/2]·cos[i] + x[i]·sin[i]`, with `cos`/`sin` of length `hd/2`.
///
/// # Panics
/// If `x` is not whole heads or the tables are not `hd/2` long.
pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    assert_eq!(sin.len(), half, "rope: cos and sin lengths differ");
    assert!(
        half > 0 && x.len().is_multiple_of(2 * half),
        "rope: x is not whole heads"
    );
    for head in x.chunks_exact_mut(2 * half) {
        let (a, b) = head.split_at_mut(half);
        for i in 0..half {
            let (x1, x2) = (a[i], b[i]);
            a[i] = x1 * cos[i] - x2 * sin[i];
            b[i] = x2 * cos[i] + x1 * sin[i];
        }
    }
}

/// Shape of a decode step's attention: `rows` sequences of one new query each.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub rows: usize,
    /// Query heads; query head `h` reads key/value head `h / (heads / kv_heads)`.
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Positions the cache has room for (its row stride, in positions).
    pub capacity: usize,
    /// Keys to attend, the new one included (it is the last).
    pub len: usize,
}

/// `out[r, h] = softmax(q[r, h] · K[r, g]ᵀ / √d, masked) · V[r, g]`, `g` the key/value head of
/// query head `h`, over the first `len` cached positions. `q` and `out` are `[rows, heads, d]`;
/// `k` and `v` are `[rows, kv_heads, capacity, d]`. Key `j` of row `r` is attended when
/// `attend(r, j)` (padding is not); the last key, the query's own, always is, so no row is all
/// masked.
///
/// # Panics
/// If a slice length disagrees with the shape.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttentionShape,
    attend: &(dyn Fn(usize, usize) -> bool + Sync),
    out: &mut [f32],
) {
    let AttentionShape {
        rows,
        heads,
        kv_heads,
        head_dim: d,
        capacity,
        len,
    } = shape;
    assert!(
        kv_heads > 0 && heads.is_multiple_of(kv_heads),
        "attention: {heads} heads over {kv_heads} kv heads"
    );
    assert!(
        len >= 1 && len <= capacity,
        "attention: {len} keys, room for {capacity}"
    );
    assert_eq!(
        q.len(),
        rows * heads * d,
        "attention: q is not [rows, heads, d]"
    );
    assert_eq!(out.len(), q.len(), "attention: out is not [rows, heads, d]");
    let cache = rows * kv_heads * capacity * d;
    assert_eq!(
        k.len(),
        cache,
        "attention: k is not [rows, kv_heads, capacity, d]"
    );
    assert_eq!(
        v.len(),
        cache,
        "attention: v is not [rows, kv_heads, capacity, d]"
    );
    let n_rep = heads / kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    // One task per (row, key/value head): its n_rep query heads share every key and value
    // load, and their outputs are consecutive.
    out.par_chunks_mut(n_rep * d)
        .enumerate()
        .for_each(|(task, o)| {
            let r = task / kv_heads;
            let base = task * capacity * d;
            let (kh, vh) = (&k[base..base + len * d], &v[base..base + len * d]);
            let qg = &q[task * n_rep * d..][..n_rep * d];
            let keep = |j: usize| j + 1 == len || attend(r, j);
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: CPU support checked; the shapes were asserted above.
                let done =
                    unsafe { crate::avx512::attention_group(qg, kh, vh, len, d, scale, &keep, o) };
                if done {
                    return;
                }
            }
            for (qh, oh) in qg.chunks_exact(d).zip(o.chunks_exact_mut(d)) {
                attend_one(qh, kh, vh, scale, &keep, oh);
            }
        });
}

/// One query head over `len` keys and values (`[len, d]` each): the portable path.
fn attend_one(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f32,
    keep: &dyn Fn(usize) -> bool,
    out: &mut [f32],
) {
    let d = q.len();
    let mut scores: Vec<f32> = k
        .chunks_exact(d)
        .enumerate()
        .map(|(j, kj)| {
            if keep(j) {
                dot(q, kj) * scale
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for s in &mut scores {
        *s = (*s - max).exp();
        sum += *s;
    }
    out.fill(0.0);
    for (p, vj) in scores.iter().zip(v.chunks_exact(d)) {
        if *p != 0.0 {
            for (a, b) in out.iter_mut().zip(vj) {
                *a += p * b;
            }
        }
    }
    let inv = 1.0 / sum;
    for a in out.iter_mut() {
        *a *= inv;
    }
}

/// Dot product with 16 independent partial sums (vectorizes; the order differs from a serial
/// sum only by rounding).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

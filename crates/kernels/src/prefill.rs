//! Causal self-attention of a whole left-padded batch without a cache (extraction, likelihood
//! scoring, the prefill benchmark), straight from the q/k/v projections' `[batch, seq, heads,
//! d]` rows: rotary embedding, grouped-query scores, the masked softmax and the weighted values
//! in one pass per (sequence, key/value head).
//!
//! As burn ops this is a transpose per tensor, the rotary embedding's narrow/cat/multiply
//! passes, and burn-flex's attention over every (query, key) pair, the masked future half
//! included. Here scores are computed in blocks of 8 queries × 16 keys with every accumulator
//! in a register, and only the keys up to each block's last query.

use rayon::prelude::*;

/// Shape of [`causal_attention`].
#[derive(Clone, Copy, Debug)]
pub struct CausalShape {
    pub batch: usize,
    pub seq: usize,
    /// Query heads; query head `h` reads key/value head `h / (heads / kv_heads)`.
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Whether [`causal_attention`] has a kernel for this head size on this machine (AVX-512F,
/// head size 64 or 128); callers fall back to their own attention otherwise.
pub fn supported(head_dim: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        matches!(head_dim, 64 | 128) && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = head_dim;
        false
    }
}

/// `out[b, i, h] = Σ_j softmax_j(rope(q[b, i, h]) · rope(k[b, j, g]) / √d) · v[b, j, g]`, `g` the
/// key/value head of `h`, over the keys `j` that query `i` attends: `j <= i` and (`key_valid[b,
/// j]` or `j == i`; a padding query attends only itself, so no row is empty). `q`, `out` are
/// `[batch, seq, heads, d]`, `k`, `v` `[batch, seq, kv_heads, d]`; `cos`, `sin` are the rotary
/// tables `[batch, seq, d / 2]` (rotate-half convention, as [`crate::decode::rope`]).
///
/// # Panics
/// If a slice length disagrees with the shape, or [`supported`] is false for `head_dim`.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    cos: &[f32],
    sin: &[f32],
    key_valid: &[bool],
    shape: CausalShape,
    out: &mut [f32],
) {
    let CausalShape {
        batch,
        seq,
        heads,
        kv_heads,
        head_dim: d,
    } = shape;
    assert!(
        supported(d),
        "causal_attention: no kernel for head size {d}"
    );
    assert!(
        kv_heads > 0 && heads.is_multiple_of(kv_heads),
        "causal_attention: {heads} heads over {kv_heads} kv heads"
    );
    let rows = batch * seq;
    assert_eq!(q.len(), rows * heads * d, "causal_attention: q shape");
    assert_eq!(out.len(), q.len(), "causal_attention: out shape");
    assert_eq!(k.len(), rows * kv_heads * d, "causal_attention: k shape");
    assert_eq!(v.len(), k.len(), "causal_attention: v shape");
    assert_eq!(cos.len(), rows * d / 2, "causal_attention: cos shape");
    assert_eq!(sin.len(), cos.len(), "causal_attention: sin shape");
    assert_eq!(key_valid.len(), rows, "causal_attention: key_valid shape");
    if rows == 0 {
        return;
    }
    let group = heads / kv_heads;
    let out_ptr = OutPtr(out.as_mut_ptr());
    (0..batch * kv_heads).into_par_iter().for_each(|task| {
        let (b, g) = (task / kv_heads, task % kv_heads);
        let half = d / 2;
        let tables = (
            &cos[b * seq * half..][..seq * half],
            &sin[b * seq * half..][..seq * half],
        );
        let valid = &key_valid[b * seq..][..seq];
        // Keys rotated and transposed ([d, seq rounded up to 16], zero beyond), values [seq, d].
        let tp = seq.next_multiple_of(16);
        let mut kt = vec![0f32; d * tp];
        let mut row = vec![0f32; d];
        for j in 0..seq {
            rotate(
                &k[((b * seq + j) * kv_heads + g) * d..][..d],
                tables,
                j,
                &mut row,
            );
            for (c, x) in row.iter().enumerate() {
                kt[c * tp + j] = *x;
            }
        }
        let mut vg = vec![0f32; seq * d];
        for j in 0..seq {
            vg[j * d..][..d].copy_from_slice(&v[((b * seq + j) * kv_heads + g) * d..][..d]);
        }
        // Rotated queries of one head, padded to whole blocks of 8 rows.
        let mut qh = vec![0f32; seq.next_multiple_of(QUERY_BLOCK) * d];
        let mut oh = vec![0f32; seq * d];
        for h in g * group..(g + 1) * group {
            for i in 0..seq {
                let src = &q[((b * seq + i) * heads + h) * d..][..d];
                rotate(src, tables, i, &mut qh[i * d..][..d]);
            }
            // SAFETY: `supported(d)` checked AVX-512F and d ∈ {64, 128}; the buffers have the
            // lengths the kernel reads (qh padded to whole query blocks, kt to whole key blocks).
            unsafe {
                match d {
                    64 => avx512::head::<4, 4>(&qh, &kt, &vg, valid, seq, &mut oh),
                    _ => avx512::head::<8, 2>(&qh, &kt, &vg, valid, seq, &mut oh),
                }
            }
            for i in 0..seq {
                let at = ((b * seq + i) * heads + h) * d;
                // SAFETY: each (b, h) row of `out` is written by exactly one task (the task of
                // h's key/value head); `at + d <= out.len()` by the shape checks above.
                unsafe {
                    std::ptr::copy_nonoverlapping(oh[i * d..].as_ptr(), out_ptr.get().add(at), d)
                };
            }
        }
    });
}

/// Queries per score block (8 accumulators of 16 keys).
const QUERY_BLOCK: usize = 8;

/// The rotary embedding of one head's `x` at position `pos` into `out`.
fn rotate(x: &[f32], (cos, sin): (&[f32], &[f32]), pos: usize, out: &mut [f32]) {
    let half = x.len() / 2;
    let (c, s) = (&cos[pos * half..][..half], &sin[pos * half..][..half]);
    for i in 0..half {
        let (x1, x2) = (x[i], x[i + half]);
        out[i] = x1 * c[i] - x2 * s[i];
        out[i + half] = x2 * c[i] + x1 * s[i];
    }
}

struct OutPtr(*mut f32);
impl OutPtr {
    fn get(&self) -> *mut f32 {
        self.0
    }
}
// SAFETY: tasks write disjoint rows through it (see `causal_attention`).
unsafe impl Sync for OutPtr {}
// SAFETY: as for `Sync`: the pointer is only written at disjoint places.
unsafe impl Send for OutPtr {}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::QUERY_BLOCK;
    use crate::avx512::exp_row;
    use std::arch::x86_64::*;

    /// One query head over its key/value head: `q` `[seq (padded to 8), d]` rotated, `kt`
    /// `[d, seq padded to 16]`, `v` `[seq, d]`, into `out` `[seq, d]`. `NV` = d / 16 vectors
    /// per row; `R` rows share the value pass (R · NV = 16 accumulators).
    ///
    /// # Safety
    /// AVX-512F present; the slices hold the lengths above.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn head<const NV: usize, const R: usize>(
        q: &[f32],
        kt: &[f32],
        v: &[f32],
        valid: &[bool],
        seq: usize,
        out: &mut [f32],
    ) {
        let d = NV * 16;
        let tp = seq.next_multiple_of(16);
        let scale = _mm512_set1_ps(1.0 / (d as f32).sqrt());
        let mut scores = vec![0f32; QUERY_BLOCK * tp];
        // SAFETY: (whole body) offsets stay inside the padded lengths documented above.
        unsafe {
            for i0 in (0..seq).step_by(QUERY_BLOCK) {
                let block = (seq - i0).min(QUERY_BLOCK);
                // Keys up to the block's last query.
                let hi = i0 + block;
                for k0 in (0..hi).step_by(16) {
                    let mut acc = [_mm512_setzero_ps(); QUERY_BLOCK];
                    for c in 0..d {
                        let kv = _mm512_loadu_ps(kt.as_ptr().add(c * tp + k0));
                        for (r, a) in acc.iter_mut().enumerate() {
                            let qv = _mm512_set1_ps(*q.get_unchecked((i0 + r) * d + c));
                            *a = _mm512_fmadd_ps(qv, kv, *a);
                        }
                    }
                    for (r, a) in acc.iter().enumerate() {
                        _mm512_storeu_ps(
                            scores.as_mut_ptr().add(r * tp + k0),
                            _mm512_mul_ps(*a, scale),
                        );
                    }
                }
                let mut inv = [0f32; QUERY_BLOCK];
                for r in 0..block {
                    let i = i0 + r;
                    let s = &mut scores[r * tp..][..hi];
                    let mut max = f32::NEG_INFINITY;
                    for (j, x) in s.iter_mut().enumerate() {
                        if j > i || !(valid[j] || j == i) {
                            *x = f32::NEG_INFINITY;
                        } else {
                            max = max.max(*x);
                        }
                    }
                    inv[r] = 1.0 / exp_row(s, max);
                }
                for r0 in (0..block).step_by(R) {
                    let rows = (block - r0).min(R);
                    let mut acc = [[_mm512_setzero_ps(); NV]; R];
                    // Keys past a row's query weigh 0 there; the last row bounds the range.
                    for j in 0..(i0 + r0 + rows).min(hi) {
                        let vj = v.as_ptr().add(j * d);
                        for (r, a) in acc.iter_mut().enumerate().take(rows) {
                            let p = _mm512_set1_ps(*scores.get_unchecked((r0 + r) * tp + j));
                            for (c, x) in a.iter_mut().enumerate() {
                                *x = _mm512_fmadd_ps(p, _mm512_loadu_ps(vj.add(c * 16)), *x);
                            }
                        }
                    }
                    for (r, a) in acc.iter().enumerate().take(rows) {
                        let s = _mm512_set1_ps(inv[r0 + r]);
                        let o = out.as_mut_ptr().add((i0 + r0 + r) * d);
                        for (c, x) in a.iter().enumerate() {
                            _mm512_storeu_ps(o.add(c * 16), _mm512_mul_ps(*x, s));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    pub(super) unsafe fn head<const NV: usize, const R: usize>(
        _: &[f32],
        _: &[f32],
        _: &[f32],
        _: &[bool],
        _: usize,
        _: &mut [f32],
    ) {
        unreachable!("prefill attention without AVX-512")
    }
}

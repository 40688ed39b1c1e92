//! CPU kernels the flex backend lacks, on plain slices.
//!
//! [`few_rows`]: `x · W` for a handful of rows of `x`, the shape of every product in a decode
//! step (one row per sequence). Such a product is bound by streaming `W` from memory; burn-flex
//! hands it to `gemm`, whose packed kernels reach about a third of this machine's memory rate
//! on cold weights. This crate is built without debug assertions and overflow checks even in
//! the dev profile (see the workspace Cargo.toml): either one inside the inner loop stops it
//! from vectorizing, and the callers check every shape before coming here.

// The kernels are SIMD intrinsics and tile-unit instructions on raw slices: unsafe by nature,
// each block with its SAFETY comment.
#![allow(unsafe_code)]

use rayon::prelude::*;

pub mod amx;
pub mod decode;
pub mod norm;
pub mod prefill;
pub mod quant;

/// Which kernels the model's plain CPU passes take on this machine: `amx-f32-exact`
/// (projections on AMX tiles, [`amx`]), `avx512` (gemm's AVX-512 kernels and the vector
/// attention) or `portable`. Runs on machines with different answers agree to f32 rounding,
/// not bit for bit, so stage manifests record it.
pub fn arithmetic() -> &'static str {
    if amx::available() {
        return "amx-f32-exact";
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        return "avx512";
    }
    "portable"
}

/// Products with more rows than this are better served by a packed GEMM (the weight is
/// reused across enough rows to pay for the packing).
pub const MAX_ROWS: usize = 16;

/// Rows of `x` per register block: 8 rows × 32 columns = 16 AVX-512 accumulators.
const ROW_BLOCK: usize = 8;
/// Output columns per register block.
const PANEL: usize = 32;
/// Rows of `W` per pass over the columns. The pass streams `K_BLOCK` rows of `W` side by side
/// (sequential streams the hardware prefetchers follow) and adds into the output, which stays
/// in cache; measured best among 8/16/32/64 on SmolLM2's shapes.
const K_BLOCK: usize = 32;
/// Above this many output columns the work is split by columns (each task streams a slab of
/// every weight row); below it by rows of `W` (each task streams one contiguous block of the
/// weight and the partial products are summed), which keeps small matrices' streams long.
const SPLIT_COLUMNS_FROM: usize = 4096;
/// Weights smaller than this many elements are streamed by one thread: waking the pool costs
/// more than it saves (measured on a decode step: k/v projections serial, -1.4%).
const SERIAL_BELOW: usize = 200_000;

/// `out [rows, n] = x [rows, k] · w [k, n]`, all row-major, for `rows <= MAX_ROWS`.
///
/// # Panics
/// If a slice length disagrees with the shape or `rows` exceeds [`MAX_ROWS`].
pub fn few_rows(x: &[f32], rows: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    few_rows_many(x, rows, k, &mut [Product { w, n, out }]);
}

/// One product of [`few_rows_many`]: `out [rows, n] = x · w [k, n]`.
pub struct Product<'a> {
    pub w: &'a [f32],
    pub n: usize,
    pub out: &'a mut [f32],
}

/// Several few-row products of the same `x` (a block's q/k/v, or gate/up) in one parallel
/// region: one wake-up of the thread pool instead of one per product, and small products run
/// beside the halves of large ones. Each output is bit-identical to [`few_rows`] on its own
/// (same split of every product, same order of the partial sums).
///
/// # Panics
/// As [`few_rows`], for any product.
pub fn few_rows_many(x: &[f32], rows: usize, k: usize, products: &mut [Product<'_>]) {
    assert!(rows <= MAX_ROWS, "few_rows: {rows} rows > {MAX_ROWS}");
    assert_eq!(x.len(), rows * k, "few_rows: x is not [{rows}, {k}]");
    let pool = rayon::current_num_threads().max(1);
    // Each product's plan: column slabs (large n), or a split of k whose partial products are
    // summed in task order (a single task writes its output directly).
    let mut tasks: Vec<Task> = Vec::new();
    let mut splits = vec![0usize; products.len()];
    for (pi, p) in products.iter_mut().enumerate() {
        let n = p.n;
        assert_eq!(p.w.len(), k * n, "few_rows: w is not [{k}, {n}]");
        assert_eq!(p.out.len(), rows * n, "few_rows: out is not [{rows}, {n}]");
        if rows == 0 || n == 0 {
            continue;
        }
        if k == 0 {
            p.out.fill(0.0);
            continue;
        }
        let threads = if k * n < SERIAL_BELOW { 1 } else { pool };
        if n >= SPLIT_COLUMNS_FROM && threads > 1 {
            // A few slabs per thread so an uneven last slab does not idle a core.
            let slab = n.div_ceil(threads * 4).div_ceil(PANEL) * PANEL;
            for s in 0..n.div_ceil(slab) {
                tasks.push(Task::Slab {
                    product: pi,
                    c0: s * slab,
                    c1: ((s + 1) * slab).min(n),
                });
            }
        } else {
            let parts = threads.min(k.div_ceil(K_BLOCK));
            let kc = k.div_ceil(parts);
            splits[pi] = parts;
            for t in 0..parts {
                tasks.push(Task::Rows {
                    product: pi,
                    part: t,
                    k0: (t * kc).min(k),
                    k1: ((t + 1) * kc).min(k),
                });
            }
        }
    }
    let shapes: Vec<(&[f32], usize, SharedOut)> = products
        .iter_mut()
        .map(|p| (p.w, p.n, SharedOut(p.out.as_mut_ptr())))
        .collect();
    let mut partials: Vec<(usize, usize, Vec<f32>)> = tasks
        .into_par_iter()
        .filter_map(|task| {
            let shapes = &shapes;
            match task {
                Task::Slab { product, c0, c1 } => {
                    let (w, n, ref o) = shapes[product];
                    // SAFETY: each slab writes only columns c0..c1 of its own product's
                    // output rows, disjoint from every other task; outputs outlive the loop.
                    unsafe { accumulate(x, k, rows, k, w, n, o.0, n, c0, c1) };
                    None
                }
                Task::Rows {
                    product,
                    part,
                    k0,
                    k1,
                } => {
                    let (w, n, ref o) = shapes[product];
                    let whole = splits[product] == 1;
                    let mut buf = if whole {
                        Vec::new()
                    } else {
                        vec![0f32; rows * n]
                    };
                    let dst = if whole { o.0 } else { buf.as_mut_ptr() };
                    // SAFETY: x columns k0..k1 (row stride k), w rows k0..k1; dst is this
                    // product's output (its only task) or a private [rows, n] buffer.
                    unsafe {
                        accumulate(&x[k0..], k, rows, k1 - k0, &w[k0 * n..], n, dst, n, 0, n)
                    };
                    (!whole).then_some((product, part, buf))
                }
            }
        })
        .collect();
    partials.sort_by_key(|&(p, t, _)| (p, t));
    for (pi, p) in products.iter_mut().enumerate() {
        let mut mine = partials.iter().filter(|(q, _, _)| *q == pi);
        if let Some((_, _, first)) = mine.next() {
            p.out.copy_from_slice(first);
            for (_, _, rest) in mine {
                for (o, v) in p.out.iter_mut().zip(rest) {
                    *o += v;
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Task {
    /// Columns c0..c1 of a product, over all of k.
    Slab {
        product: usize,
        c0: usize,
        c1: usize,
    },
    /// Rows k0..k1 of a product's weight: partial product number `part`.
    Rows {
        product: usize,
        part: usize,
        k0: usize,
        k1: usize,
    },
}

/// An output buffer shared by parallel tasks that each write their own part of it.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub(crate) *mut f32);
// SAFETY: every user's tasks write disjoint ranges (`few_rows_many`: column slabs or its own
// partial; `quant::product_many`: a tile's columns).
unsafe impl Sync for SharedOut {}
// SAFETY: as for `Sync`: the pointer is only written at disjoint places.
unsafe impl Send for SharedOut {}

/// `out[r, c0..c1] = x[r, ..k] · w[..k, c0..c1]` for every row `r < rows`; `x` has row
/// stride `ldx`, `out` row stride `ldo`.
///
/// # Safety
/// All addressed elements must be in bounds; `out` must not alias `x` or `w`.
#[allow(clippy::too_many_arguments)]
unsafe fn accumulate(
    x: &[f32],
    ldx: usize,
    rows: usize,
    k: usize,
    w: &[f32],
    n: usize,
    out: *mut f32,
    ldo: usize,
    c0: usize,
    c1: usize,
) {
    // The kernels add into `out`, one block of k at a time.
    for r in 0..rows {
        // SAFETY: row r, columns c0..c1 of out are in bounds (caller).
        unsafe { std::slice::from_raw_parts_mut(out.add(r * ldo + c0), c1 - c0) }.fill(0.0);
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        let mut r = 0;
        while r < rows {
            let rb = (rows - r).min(ROW_BLOCK);
            let xr = &x[r * ldx..];
            // SAFETY: CPU support checked; bounds from the caller.
            unsafe {
                let o = out.add(r * ldo);
                match rb {
                    8 => avx512::rows::<8>(xr, ldx, k, w, n, o, ldo, c0, c1),
                    7 => avx512::rows::<7>(xr, ldx, k, w, n, o, ldo, c0, c1),
                    6 => avx512::rows::<6>(xr, ldx, k, w, n, o, ldo, c0, c1),
                    5 => avx512::rows::<5>(xr, ldx, k, w, n, o, ldo, c0, c1),
                    4 => avx512::rows::<4>(xr, ldx, k, w, n, o, ldo, c0, c1),
                    3 => avx512::rows::<3>(xr, ldx, k, w, n, o, ldo, c0, c1),
                    2 => avx512::rows::<2>(xr, ldx, k, w, n, o, ldo, c0, c1),
                    _ => avx512::rows::<1>(xr, ldx, k, w, n, o, ldo, c0, c1),
                }
            }
            r += rb;
        }
        return;
    }
    // Portable path: the same loop order, left to the autovectorizer.
    for kb in (0..k).step_by(K_BLOCK) {
        let kn = K_BLOCK.min(k - kb);
        for r in 0..rows {
            // SAFETY: as above.
            let o = unsafe { std::slice::from_raw_parts_mut(out.add(r * ldo + c0), c1 - c0) };
            for kk in kb..kb + kn {
                let xv = x[r * ldx + kk];
                let wr = &w[kk * n + c0..kk * n + c1];
                for (a, &wv) in o.iter_mut().zip(wr) {
                    *a = xv.mul_add(wv, *a);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{K_BLOCK, PANEL};
    /// Rows ahead the weight is prefetched: the next block's, which the current pass does not
    /// stream yet (measured: block projections 40 → 35 ms per decode step).
    const PREFETCH_ROWS: usize = K_BLOCK;
    use std::arch::x86_64::*;

    /// `MR` rows of the product, columns c0..c1, added into `out`.
    ///
    /// # Safety
    /// AVX-512F present; `x` holds `MR` rows of stride `ldx` with `k` columns, `w` holds `k`
    /// rows of `n` columns, `out` holds `MR` rows of stride `ldo` covering c0..c1.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn rows<const MR: usize>(
        x: &[f32],
        ldx: usize,
        k: usize,
        w: &[f32],
        n: usize,
        out: *mut f32,
        ldo: usize,
        c0: usize,
        c1: usize,
    ) {
        let xp = x.as_ptr();
        let wp = w.as_ptr();
        let full_end = c0 + (c1 - c0) / PANEL * PANEL;
        let tail = c1 - full_end;
        // Lanes of the last partial vector(s).
        let mask_lo: __mmask16 = if tail >= 16 {
            0xffff
        } else {
            (1u32 << tail) as u16 - 1
        };
        let mask_hi: __mmask16 = if tail > 16 {
            (1u32 << (tail - 16)) as u16 - 1
        } else {
            0
        };
        let mut kb = 0;
        while kb < k {
            let kn = K_BLOCK.min(k - kb);
            let mut c = c0;
            while c < c1 {
                let (ml, mh) = if c < full_end {
                    (0xffffu16, 0xffffu16)
                } else {
                    (mask_lo, mask_hi)
                };
                // SAFETY: masked lanes are neither read nor written; the rest is in bounds.
                unsafe {
                    let mut lo = [_mm512_setzero_ps(); MR];
                    let mut hi = [_mm512_setzero_ps(); MR];
                    for i in 0..MR {
                        let o = out.add(i * ldo + c);
                        lo[i] = _mm512_maskz_loadu_ps(ml, o);
                        hi[i] = _mm512_maskz_loadu_ps(mh, o.wrapping_add(16));
                    }
                    let mut wr = wp.add(kb * n + c);
                    for kk in kb..kb + kn {
                        let ahead = wr.wrapping_add(PREFETCH_ROWS * n) as *const i8;
                        _mm_prefetch::<_MM_HINT_T0>(ahead);
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
                        let w0 = _mm512_maskz_loadu_ps(ml, wr);
                        let w1 = _mm512_maskz_loadu_ps(mh, wr.wrapping_add(16));
                        for i in 0..MR {
                            let xv = _mm512_set1_ps(*xp.add(i * ldx + kk));
                            lo[i] = _mm512_fmadd_ps(xv, w0, lo[i]);
                            hi[i] = _mm512_fmadd_ps(xv, w1, hi[i]);
                        }
                        wr = wr.wrapping_add(n);
                    }
                    for i in 0..MR {
                        let o = out.add(i * ldo + c);
                        _mm512_mask_storeu_ps(o, ml, lo[i]);
                        _mm512_mask_storeu_ps(o.wrapping_add(16), mh, hi[i]);
                    }
                }
                c += PANEL;
            }
            kb += K_BLOCK;
        }
    }

    /// The mask of the first `min(n, 16)` lanes: the vectors of a loop's last, partial step.
    #[inline]
    pub(crate) fn lanes(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            (1u32 << n) as u16 - 1
        }
    }

    /// `e^x` for 16 lanes: 2^(x·log2 e) split into an integer power (applied exactly with
    /// `scalef`) and a fraction in [-0.5, 0.5] (degree-7 Taylor polynomial of 2^f, relative
    /// error ~2e-9 before rounding). Inputs beyond ±88 saturate to 0 / +inf like `expf`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) fn exp(x: __m512) -> __m512 {
        let x = _mm512_max_ps(
            _mm512_min_ps(x, _mm512_set1_ps(88.7)),
            _mm512_set1_ps(-103.0),
        );
        let y = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(y);
        let f = _mm512_mul_ps(_mm512_sub_ps(y, n), _mm512_set1_ps(std::f32::consts::LN_2));
        // e^f for f in [-ln2/2, ln2/2], Horner form of the Taylor series.
        let mut p = _mm512_set1_ps(1.0 / 5040.0);
        for c in [
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ] {
            p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, n)
    }

    /// A row of attention scores into softmax numerators in place: `s[j] ← e^(s[j] − max)`,
    /// left-out keys (`-inf`) to exactly 0 (the clamped exp would give a denormal). Returns
    /// their sum, the softmax's denominator.
    #[target_feature(enable = "avx512f")]
    pub(crate) fn exp_row(s: &mut [f32], max: f32) -> f32 {
        let (mx, ninf) = (_mm512_set1_ps(max), _mm512_set1_ps(f32::NEG_INFINITY));
        let mut sum = _mm512_setzero_ps();
        for i in (0..s.len()).step_by(16) {
            let m = lanes(s.len() - i);
            // SAFETY: the masked lanes stay inside `s`.
            unsafe {
                let x = _mm512_maskz_loadu_ps(m, s.as_ptr().add(i));
                let live = m & _mm512_cmp_ps_mask::<_CMP_NEQ_OQ>(x, ninf);
                let e = _mm512_maskz_mov_ps(live, exp(_mm512_sub_ps(x, mx)));
                sum = _mm512_add_ps(sum, e);
                _mm512_mask_storeu_ps(s.as_mut_ptr().add(i), m, e);
            }
        }
        _mm512_reduce_add_ps(sum)
    }

    /// Attention of the query heads `q` (`[heads, d]`, sharing one key/value head) over `len`
    /// keys and values (`[len, d]` each), into `out` (`[heads, d]`); keys with `!keep(j)` are
    /// left out. `false` (nothing written) where `d` has no vector path (only 64 and 128 do).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_group(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        len: usize,
        d: usize,
        scale: f32,
        keep: &dyn Fn(usize) -> bool,
        out: &mut [f32],
    ) -> bool {
        // Query heads per pass: their output accumulators (heads × d/16 vectors) fill half
        // the register file.
        let per_pass = match d {
            64 => 4,
            128 => 2,
            _ => return false,
        };
        for (qs, os) in q.chunks(per_pass * d).zip(out.chunks_mut(per_pass * d)) {
            let g = qs.len() / d;
            // SAFETY: AVX-512F is enabled here; the shapes were checked by the caller.
            unsafe {
                match (d, g) {
                    (64, 1) => heads::<4, 1>(qs, k, v, len, scale, keep, os),
                    (64, 2) => heads::<4, 2>(qs, k, v, len, scale, keep, os),
                    (64, 3) => heads::<4, 3>(qs, k, v, len, scale, keep, os),
                    (64, _) => heads::<4, 4>(qs, k, v, len, scale, keep, os),
                    (_, 1) => heads::<8, 1>(qs, k, v, len, scale, keep, os),
                    _ => heads::<8, 2>(qs, k, v, len, scale, keep, os),
                }
            }
        }
        true
    }

    /// `G` query heads of `NV` vectors each: scores, a masked softmax with the vector `exp`,
    /// and the weighted sum of values with every accumulator in a register.
    ///
    /// # Safety
    /// AVX-512F present; `q`, `out` hold `G · 16NV` values, `k`, `v` hold `len · 16NV`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn heads<const NV: usize, const G: usize>(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        len: usize,
        scale: f32,
        keep: &dyn Fn(usize) -> bool,
        out: &mut [f32],
    ) {
        let d = NV * 16;
        debug_assert!(q.len() == G * d && out.len() == G * d);
        debug_assert!(k.len() >= len * d && v.len() >= len * d);
        let mut scores = vec![f32::NEG_INFINITY; G * len];
        let kept: Vec<bool> = (0..len).map(keep).collect();
        // SAFETY: (whole body) every offset is within the lengths above; masked lanes are
        // neither read nor written.
        unsafe {
            let (qp, kp, vp) = (q.as_ptr(), k.as_ptr(), v.as_ptr());
            for (j, _) in kept.iter().enumerate().filter(|(_, k)| **k) {
                let kj = kp.add(j * d);
                let mut acc = [_mm512_setzero_ps(); G];
                for c in 0..NV {
                    let kv = _mm512_loadu_ps(kj.add(c * 16));
                    for (g, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(_mm512_loadu_ps(qp.add(g * d + c * 16)), kv, *a);
                    }
                }
                for (g, a) in acc.iter().enumerate() {
                    scores[g * len + j] = _mm512_reduce_add_ps(*a) * scale;
                }
            }
            let mut inv = [0f32; G];
            for (g, s) in scores.chunks_exact_mut(len).enumerate() {
                let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                inv[g] = 1.0 / exp_row(s, max);
            }
            let mut acc = [[_mm512_setzero_ps(); NV]; G];
            for (j, _) in kept.iter().enumerate().filter(|(_, k)| **k) {
                let vj = vp.add(j * d);
                let p: [__m512; G] = std::array::from_fn(|g| _mm512_set1_ps(scores[g * len + j]));
                for c in 0..NV {
                    let vv = _mm512_loadu_ps(vj.add(c * 16));
                    for (a, pg) in acc.iter_mut().zip(&p) {
                        a[c] = _mm512_fmadd_ps(*pg, vv, a[c]);
                    }
                }
            }
            let op = out.as_mut_ptr();
            for (g, a) in acc.iter().enumerate() {
                let s = _mm512_set1_ps(inv[g]);
                for (c, v) in a.iter().enumerate() {
                    _mm512_storeu_ps(op.add(g * d + c * 16), _mm512_mul_ps(*v, s));
                }
            }
        }
    }

    /// # Safety
    /// AVX-512F present; the five slices have one length.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn swiglu_backward(
        g: &[f32],
        u: &[f32],
        dy: &[f32],
        dg: &mut [f32],
        du: &mut [f32],
    ) {
        let len = g.len();
        let one = _mm512_set1_ps(1.0);
        let mut i = 0;
        while i < len {
            let m = lanes(len - i);
            // SAFETY: masked lanes past the end are neither read nor written.
            unsafe {
                let gv = _mm512_maskz_loadu_ps(m, g.as_ptr().add(i));
                let uv = _mm512_maskz_loadu_ps(m, u.as_ptr().add(i));
                let yv = _mm512_maskz_loadu_ps(m, dy.as_ptr().add(i));
                let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), gv));
                let s = _mm512_div_ps(one, _mm512_add_ps(one, e));
                let silu = _mm512_mul_ps(gv, s);
                // silu'(g) = s · (1 + g · (1 − s))
                let ds = _mm512_mul_ps(s, _mm512_fmadd_ps(gv, _mm512_sub_ps(one, s), one));
                let dgv = _mm512_mul_ps(_mm512_mul_ps(yv, uv), ds);
                _mm512_mask_storeu_ps(dg.as_mut_ptr().add(i), m, dgv);
                _mm512_mask_storeu_ps(du.as_mut_ptr().add(i), m, _mm512_mul_ps(yv, silu));
            }
            i += 16;
        }
    }

    /// # Safety
    /// AVX-512F present; the three slices have one length.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn swiglu(g: &[f32], u: &[f32], o: &mut [f32]) {
        let len = o.len();
        let one = _mm512_set1_ps(1.0);
        let mut i = 0;
        while i < len {
            let m = lanes(len - i);
            // SAFETY: masked lanes past the end are neither read nor written.
            unsafe {
                let gv = _mm512_maskz_loadu_ps(m, g.as_ptr().add(i));
                let uv = _mm512_maskz_loadu_ps(m, u.as_ptr().add(i));
                let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), gv));
                let s = _mm512_div_ps(gv, _mm512_add_ps(one, e));
                _mm512_mask_storeu_ps(o.as_mut_ptr().add(i), m, _mm512_mul_ps(s, uv));
            }
            i += 16;
        }
    }
}

/// Elements per parallel task of the element-wise kernels.
const ELEMENTWISE_CHUNK: usize = 1 << 15;

/// `out = silu(gate) · up` (SwiGLU), element-wise: the MLP's activation. burn computes it as
/// three passes over memory with a scalar `expf` per element (about 10% of a prefill); this is
/// one pass with a vectorized exponential (relative error below 1e-6 against f64).
///
/// # Panics
/// If the three lengths differ.
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert_eq!(gate.len(), up.len(), "swiglu: gate and up lengths differ");
    assert_eq!(gate.len(), out.len(), "swiglu: gate and out lengths differ");
    out.par_chunks_mut(ELEMENTWISE_CHUNK)
        .enumerate()
        .for_each(|(i, o)| {
            let s = i * ELEMENTWISE_CHUNK;
            let (g, u) = (&gate[s..s + o.len()], &up[s..s + o.len()]);
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: CPU support checked; the three slices have one length.
                unsafe { avx512::swiglu(g, u, o) };
                return;
            }
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        });
}

/// The gradients of [`swiglu`]: `d_gate = dy · up · silu'(gate)` and `d_up = dy · silu(gate)`,
/// with `silu'(g) = σ(g) · (1 + g · (1 − σ(g)))`. One pass over the five arrays (burn's
/// autodiff of `silu(gate) · up` makes about six, each with a scalar `expf`).
///
/// # Panics
/// If the five lengths differ.
pub fn swiglu_backward(gate: &[f32], up: &[f32], dy: &[f32], d_gate: &mut [f32], d_up: &mut [f32]) {
    let n = gate.len();
    for (what, len) in [
        ("up", up.len()),
        ("dy", dy.len()),
        ("d_gate", d_gate.len()),
        ("d_up", d_up.len()),
    ] {
        assert_eq!(len, n, "swiglu_backward: gate and {what} lengths differ");
    }
    d_gate
        .par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(d_up.par_chunks_mut(ELEMENTWISE_CHUNK))
        .enumerate()
        .for_each(|(i, (dg, du))| {
            let s = i * ELEMENTWISE_CHUNK;
            let e = s + dg.len();
            let (g, u, y) = (&gate[s..e], &up[s..e], &dy[s..e]);
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: CPU support checked; the five slices have one length.
                unsafe { avx512::swiglu_backward(g, u, y, dg, du) };
                return;
            }
            for j in 0..dg.len() {
                let sig = 1.0 / (1.0 + (-g[j]).exp());
                du[j] = y[j] * g[j] * sig;
                dg[j] = y[j] * u[j] * sig * (1.0 + g[j] * (1.0 - sig));
            }
        });
}

/// Fills `out` with an inverted-dropout mask: each element independently `1 / keep` with
/// probability `keep`, else 0. Element `i` depends only on `(key, i)` (a splitmix64 hash of the
/// pair, 32 bits per element), so the mask is the same for any thread count and chunking.
/// burn draws a float through its distribution sampler per element, about 10% of a LoRA
/// training step; this is a hash and an integer compare.
///
/// # Panics
/// If `keep` is not in (0, 1].
pub fn dropout_mask(out: &mut [f32], keep: f64, key: u64) {
    assert!(
        keep > 0.0 && keep <= 1.0,
        "dropout_mask: keep probability {keep} is not in (0, 1]"
    );
    // P(u32 < threshold) = threshold / 2^32; keep = 1 keeps everything.
    let threshold = (keep * 4_294_967_296.0).round() as u64;
    let scale = (1.0 / keep) as f32;
    out.par_chunks_mut(ELEMENTWISE_CHUNK)
        .enumerate()
        .for_each(|(c, o)| {
            let base = (c * ELEMENTWISE_CHUNK) as u64;
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512dq") {
                // SAFETY: CPU support checked.
                unsafe { mask_chunk_avx512(o, base, key, threshold, scale) };
                return;
            }
            mask_chunk(o, base, key, threshold, scale);
        });
}

/// Elements `base..base + o.len()` of the mask (`base` even): one hash per pair of elements,
/// its low half for the even one, its high half for the odd one.
#[inline(always)]
fn mask_chunk(o: &mut [f32], base: u64, key: u64, threshold: u64, scale: f32) {
    let pick = |u: u64| if u < threshold { scale } else { 0.0 };
    let last = base + o.len() as u64 - 1;
    let mut pairs = o.chunks_exact_mut(2);
    for (p, pair) in (&mut pairs).enumerate() {
        let h = splitmix64(key ^ splitmix64((base >> 1) + p as u64));
        pair[0] = pick(h & 0xffff_ffff);
        pair[1] = pick(h >> 32);
    }
    if let Some(v) = pairs.into_remainder().first_mut() {
        *v = pick(splitmix64(key ^ splitmix64(last >> 1)) & 0xffff_ffff);
    }
}

/// [`mask_chunk`] compiled for AVX-512DQ, whose 64-bit multiplies let the hash vectorize
/// (measured: the masks of a LoRA step ~4x faster).
///
/// # Safety
/// AVX-512F and AVX-512DQ present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn mask_chunk_avx512(o: &mut [f32], base: u64, key: u64, threshold: u64, scale: f32) {
    mask_chunk(o, base, key, threshold, scale)
}

/// The splitmix64 finalizer of `z + golden ratio`: a well-mixed 64-bit hash of a counter.
fn splitmix64(z: u64) -> u64 {
    let mut z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

//! Products on quantized weights: `out = x · Wᵀ` where `W [n, k]` keeps a GGUF file's integer
//! codes instead of their f32 values.
//!
//! Every GGUF block type we read is affine per group of `G` weights (`G` = 32, or 16 for
//! Q6_K): weight `(o, i)` is `scale[o, g] · code[o, i] + offset[o, g]` with `g = i / G` and an
//! integer code below 256 (Q4_K's sub-block scale and min, Q6_K's signed scale with the bias of
//! 32 folded into the offset, Q8_0's sign folded the same way). [`QuantWeight`] keeps those
//! codes as narrow as their type and each group's scale and offset as narrow as the file
//! stores them ([`Affine`]: the file's f16, or the K-quants' unit per 256 weights times a
//! 6- or 8-bit count), forming the f32 values the dequantizer computes by its own operations. So
//! it holds the file's weights, not an approximation of them, in about the file's bytes:
//! 5.5 bits per Q5_0 weight (as the file), 4.75 per Q4_K (the file's 4.5), 6.75 per Q6_K
//! (6.56). [`Affine::Groups`] keeps f32 scales and offsets, for any other source.
//!
//! The activations are the approximate side: each row is quantized to int8 per group of the
//! weight (`x ≈ d · q`, `d = max |x| / 127`, ties to even), so a product is
//! `Σ_g scale · d · Σ_i code·q + offset · d · Σ_i q`, the inner sums exact in int32. On
//! AVX-512 VNNI one `vpdpbusd` multiplies 64 code bytes by 64 activation bytes. The float side
//! is one product and two fused multiply-adds per group, in the same order on every path, and
//! the portable path uses `mul_add` for the fused ones: results are bit-identical with and
//! without VNNI, whatever the threads.

use rayon::prelude::*;

use crate::SharedOut;

mod layout;

pub use layout::{Affine, QuantWeight, TileCodes};
use layout::{Layout, code, planes};

/// Version of the quantized arithmetic (activation rounding, group layout, float order):
/// bumped whenever a change can alter a result, and part of the keys of everything computed
/// with it, so answers of an older arithmetic are never reused. 2: the embedding is looked
/// up from the codes ([`QuantWeight::rows`]) instead of the file's f32 dequantization.
pub const VERSION: u32 = 2;

/// The group sizes a [`QuantWeight`] may have (weights sharing one scale and offset).
pub const GROUPS: [usize; 2] = [16, 32];
/// Output columns per tile: one AVX-512 register of f32 lanes.
const TILE: usize = 16;
/// Rows per register block of the kernel.
const ROWS: usize = 8;

/// Rows of activations quantized per group: `x ≈ scale · q`, with `sums = scale · Σ q` per
/// group (the factor of the weight's offset).
struct QuantRows {
    group: usize,
    q: Vec<i8>,
    scale: Vec<f32>,
    sums: Vec<f32>,
}

fn quantize_rows(x: &[f32], group: usize, path: Path) -> QuantRows {
    let groups = x.len() / group;
    let mut q = vec![0i8; x.len()];
    let mut scale = vec![0f32; groups];
    let mut sums = vec![0f32; groups];
    // Each group is rounded on its own, so splitting the work changes no bit.
    let per = QUANTIZE_CHUNK_GROUPS;
    x.par_chunks(per * group)
        .zip(q.par_chunks_mut(per * group))
        .zip(scale.par_chunks_mut(per).zip(sums.par_chunks_mut(per)))
        .for_each(|((xc, qc), (sc, su))| {
            let groups = xc.chunks_exact(group).zip(qc.chunks_exact_mut(group));
            for ((xs, qs), (d, s)) in groups.zip(sc.iter_mut().zip(su.iter_mut())) {
                (*d, *s) = round_group(xs, qs, path);
            }
        });
    QuantRows {
        group,
        q,
        scale,
        sums,
    }
}

/// Groups per parallel task of [`quantize_rows`] (small inputs, a decode step's rows, stay on
/// one task).
const QUANTIZE_CHUNK_GROUPS: usize = 4096;

/// [`quantize_group`], on AVX-512 where the path allows: the same float product and the same
/// ties-to-even rounding, so the same bytes (a scalar `round_ties_even` is a libm call that
/// cost a third of the product's time).
fn round_group(xs: &[f32], qs: &mut [i8], path: Path) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if path == Path::Fastest && vnni::available() {
        // SAFETY: the CPU has AVX-512F (checked above).
        let rounded = unsafe {
            match xs.len() {
                16 => vnni::round_group::<1>(xs, qs),
                32 => vnni::round_group::<2>(xs, qs),
                _ => None,
            }
        };
        if let Some(r) = rounded {
            return r;
        }
    }
    let _ = path;
    quantize_group(xs, qs)
}

/// One group rounded to int8: returns its scale `d` and `d · Σ q`.
fn quantize_group(xs: &[f32], qs: &mut [i8]) -> (f32, f32) {
    let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
    // A NaN or infinity anywhere makes the group's scale non-finite, so the outputs it
    // reaches are too (and generation stops with a clear error).
    let amax = if xs.iter().all(|v| v.is_finite()) {
        amax
    } else {
        f32::NAN
    };
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut s = 0i32;
    for (qv, &v) in qs.iter_mut().zip(xs) {
        *qv = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
        s += i32::from(*qv);
    }
    (d, d * s as f32)
}

/// `out [rows, n] = x [rows, k] · Wᵀ`, row-major, for any number of rows.
///
/// # Panics
/// If a slice length disagrees with the shape.
pub fn product(x: &[f32], rows: usize, w: &QuantWeight, out: &mut [f32]) {
    product_many(x, rows, &mut [(w, out)]);
}

/// [`product`] for several weights sharing `x` (a block's q/k/v, or gate/up): `x` is
/// quantized once per group size, and one parallel region serves all of them.
pub fn product_many(x: &[f32], rows: usize, products: &mut [(&QuantWeight, &mut [f32])]) {
    products_on(x, rows, products, Path::Fastest);
}

/// [`product`] on the portable path whatever the CPU has: what a machine without AVX-512 VNNI
/// computes (the tests compare the two bit for bit).
pub fn product_portable(x: &[f32], rows: usize, w: &QuantWeight, out: &mut [f32]) {
    products_on(x, rows, &mut [(w, out)], Path::Portable);
}

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Fastest,
    Portable,
}

fn products_on(x: &[f32], rows: usize, products: &mut [(&QuantWeight, &mut [f32])], path: Path) {
    let outs: Vec<(&QuantWeight, usize, SharedOut)> = products
        .iter_mut()
        .map(|(w, out)| (*w, out.len(), SharedOut(out.as_mut_ptr())))
        .collect();
    // SAFETY: each pointer is an exclusively borrowed slice of its length.
    unsafe { products_into(x, rows, &outs, path) }
}

/// [`product_many`] into new outputs, one `[rows, n]` per weight. The kernel writes every
/// element, so the outputs are not zeroed first (a `memset` of every output, 7% of a
/// quantized prefill).
pub fn products(x: &[f32], rows: usize, weights: &[&QuantWeight]) -> Vec<Vec<f32>> {
    let mut outs: Vec<Vec<f32>> = weights
        .iter()
        .map(|w| Vec::with_capacity(rows * w.n()))
        .collect();
    let targets: Vec<(&QuantWeight, usize, SharedOut)> = weights
        .iter()
        .zip(outs.iter_mut())
        .map(|(w, o)| (*w, rows * w.n(), SharedOut(o.as_mut_ptr())))
        .collect();
    // SAFETY: each output has room for its `rows * n` values and only this call writes it.
    unsafe { products_into(x, rows, &targets, Path::Fastest) };
    for (o, w) in outs.iter_mut().zip(weights) {
        // SAFETY: `products_into` wrote every element of each `[rows, n]` output (every tile's
        // columns of every row), all of them initialized f32.
        unsafe { o.set_len(rows * w.n()) };
    }
    outs
}

/// `out = x · Wᵀ` for each `(W, len, out)`, every element written.
///
/// # Safety
/// Each `out` must be valid for writes of `len` f32 and written by nothing else during the
/// call.
unsafe fn products_into(
    x: &[f32],
    rows: usize,
    products: &[(&QuantWeight, usize, SharedOut)],
    path: Path,
) {
    let Some(k) = products.first().map(|(w, ..)| w.k()) else {
        return;
    };
    assert_eq!(x.len(), rows * k, "quant::product: x is not [{rows}, {k}]");
    for (w, len, _) in products {
        assert_eq!(w.k(), k, "quant::product: weights disagree on k");
        assert_eq!(
            *len,
            rows * w.n(),
            "quant::product: out is not [{rows}, {}]",
            w.n()
        );
    }
    if rows == 0 {
        return;
    }
    let rounded: Vec<QuantRows> = GROUPS
        .iter()
        .filter(|&&g| products.iter().any(|(w, ..)| w.group() == g))
        .map(|&g| quantize_rows(x, g, path))
        .collect();
    // Tasks: runs of tiles, a few per thread so an uneven last run does not idle a core.
    let threads = rayon::current_num_threads().max(1);
    let mut tasks = Vec::new();
    for (pi, (w, _, out)) in products.iter().enumerate() {
        let tiles = w.n().div_ceil(TILE);
        let per = tiles.div_ceil(threads * 4).max(1);
        for t0 in (0..tiles).step_by(per) {
            tasks.push((pi, t0, (t0 + per).min(tiles), SharedOut(out.0)));
        }
    }
    let weights: Vec<&QuantWeight> = products.iter().map(|(w, ..)| *w).collect();
    tasks.par_iter().for_each(|&(pi, t0, t1, out)| {
        let w = weights[pi];
        let xq = rounded
            .iter()
            .find(|r| r.group == w.group())
            .expect("rounded per group");
        // Rows in chunks whose int8 activations stay in cache while the task's tiles pass
        // over them (a tile re-reads every row of its chunk); the order of the arithmetic
        // within an output is unchanged.
        let chunk = (ACTIVATION_CHUNK_BYTES / w.k())
            .max(1)
            .next_multiple_of(ROWS);
        // One register block's results, reused by every block of the task: the kernels write
        // every row they compute, so it is never cleared (clearing it per block was a `memset`
        // call costing 8% of a quantized prefill).
        let mut acc = [[0f32; TILE]; ROWS];
        for r0 in (0..rows).step_by(chunk) {
            let r1 = (r0 + chunk).min(rows);
            for t in t0..t1 {
                // SAFETY: each tile writes its own columns of `out`, which is [rows, n].
                unsafe { tile(w, t, xq, r0..r1, out.0, path, &mut acc) };
            }
        }
    });
}

/// Bytes of int8 activations one task keeps hot while it passes its tiles over them.
const ACTIVATION_CHUNK_BYTES: usize = 256 * 1024;

/// One tile's 16 output columns for the rows `rows`.
///
/// # Safety
/// `out` must point to a row-major buffer of `w.n` columns holding every row of `rows`; only
/// this tile's columns of those rows are written.
unsafe fn tile(
    w: &QuantWeight,
    t: usize,
    xq: &QuantRows,
    rows: std::ops::Range<usize>,
    out: *mut f32,
    path: Path,
    acc: &mut [[f32; TILE]; ROWS],
) {
    let (k, n) = (w.k(), w.n());
    let groups = k / w.group();
    let cols = TILE.min(n - t * TILE);
    let mut r0 = rows.start;
    while r0 < rows.end {
        let r = ROWS.min(rows.end - r0);
        let block = Block {
            tile: w.tile(t),
            layout: w.layout,
            groups,
            q: &xq.q[r0 * k..],
            k,
            scale: &xq.scale[r0 * groups..],
            sums: &xq.sums[r0 * groups..],
        };
        match path {
            Path::Fastest => block.run(r, acc),
            Path::Portable => block.portable(r, acc),
        }
        for (i, row) in acc.iter().take(r).enumerate() {
            // SAFETY: row r0 + i < rows.end, columns t*TILE .. t*TILE + cols < n.
            unsafe {
                let dst = out.add((r0 + i) * n + t * TILE);
                // A whole tile's row is a fixed-size copy (inlined, not a `memcpy` call).
                if cols == TILE {
                    std::ptr::copy_nonoverlapping(row.as_ptr(), dst, TILE);
                } else {
                    std::ptr::copy_nonoverlapping(row.as_ptr(), dst, cols);
                }
            }
        }
        r0 += r;
    }
}

/// Up to [`ROWS`] rows against one tile.
struct Block<'a> {
    /// The tile's bytes.
    tile: &'a [u8],
    layout: Layout,
    groups: usize,
    q: &'a [i8],
    k: usize,
    scale: &'a [f32],
    sums: &'a [f32],
}

impl Block<'_> {
    fn run(&self, rows: usize, acc: &mut [[f32; TILE]; ROWS]) {
        #[cfg(target_arch = "x86_64")]
        if vnni::available() {
            // SAFETY: the CPU has the features (checked above); shapes checked by `product`.
            unsafe {
                match (self.layout.group, self.layout.bits) {
                    (16, 4) => vnni::rows_of::<16, 4>(self, rows, acc),
                    (16, 5) => vnni::rows_of::<16, 5>(self, rows, acc),
                    (16, 6) => vnni::rows_of::<16, 6>(self, rows, acc),
                    (16, _) => vnni::rows_of::<16, 8>(self, rows, acc),
                    (_, 4) => vnni::rows_of::<32, 4>(self, rows, acc),
                    (_, 5) => vnni::rows_of::<32, 5>(self, rows, acc),
                    (_, 6) => vnni::rows_of::<32, 6>(self, rows, acc),
                    (_, _) => vnni::rows_of::<32, 8>(self, rows, acc),
                }
            }
            return;
        }
        self.portable(rows, acc);
    }

    /// The same arithmetic as the VNNI kernel, lane by lane.
    fn portable(&self, rows: usize, acc: &mut [[f32; TILE]; ROWS]) {
        let l = self.layout;
        let (group, bits) = (l.group, l.bits);
        // The caller's block may hold another block's results: the sums start from zero.
        for a in acc.iter_mut().take(rows) {
            *a = [0.0; TILE];
        }
        for g in 0..self.groups {
            let cell = &self.tile[l.cell_at(g)..];
            // The group's scales and offsets once for all the rows, as the VNNI kernel.
            let affine: [(f32, f32); TILE] = std::array::from_fn(|j| l.affine(self.tile, g, j));
            for (r, a) in acc.iter_mut().enumerate().take(rows) {
                let x = &self.q[r * self.k + g * group..][..group];
                let (d, s) = (
                    self.scale[r * self.groups + g],
                    self.sums[r * self.groups + g],
                );
                for (j, (lane, &(sc, off))) in a.iter_mut().zip(&affine).enumerate() {
                    let dot: i32 = (0..group)
                        .map(|i| i32::from(code(cell, group, bits, i, j)) * i32::from(x[i]))
                        .sum();
                    let f = dot as f32 * d;
                    *lane = off.mul_add(s, f.mul_add(sc, *lane));
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{Affine, Block, ROWS, TILE, planes};
    use std::arch::x86_64::*;

    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }

    /// Dispatch on the row count (1..=8).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn rows_of<const G: usize, const BITS: u32>(
        b: &Block<'_>,
        rows: usize,
        acc: &mut [[f32; TILE]; ROWS],
    ) {
        // SAFETY: forwarded from the caller.
        unsafe {
            match rows {
                8 => run::<G, BITS, 8>(b, acc),
                7 => run::<G, BITS, 7>(b, acc),
                6 => run::<G, BITS, 6>(b, acc),
                5 => run::<G, BITS, 5>(b, acc),
                4 => run::<G, BITS, 4>(b, acc),
                3 => run::<G, BITS, 3>(b, acc),
                2 => run::<G, BITS, 2>(b, acc),
                _ => run::<G, BITS, 1>(b, acc),
            }
        }
    }

    /// `R` rows of `b` against its tile: per group, `G / 4` `vpdpbusd` per row (codes as the
    /// unsigned operand, the row's four activation bytes broadcast as the signed one), then
    /// `acc += (Σ code·q · d) · scale` and `acc += offset · (d Σ q)`. Codes narrower than a
    /// byte are rebuilt into bytes once per cell, for all the rows: the nibbles split with a
    /// mask and a shift, each bit plane added through a byte mask. Factored scales and offsets
    /// are formed per group, for all the rows: two conversions and two products.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn run<const G: usize, const BITS: u32, const R: usize>(
        b: &Block<'_>,
        out: &mut [[f32; TILE]; ROWS],
    ) {
        let mut acc = [_mm512_setzero_ps(); R];
        let l = b.layout;
        let (codes, low) = (l.code_bytes(), _mm512_set1_epi8(0x0F));
        let (cell_len, head_len, per) = (l.cell_bytes(), l.head_bytes(), l.per());
        // The cells in order, a block's head before its first (pointers step past the end
        // after the last group, hence `wrapping_add`; nothing reads there).
        let (mut head, mut cell) = (b.tile.as_ptr(), b.tile.as_ptr().wrapping_add(head_len));
        let mut in_block = 0;
        for g in 0..b.groups {
            // SAFETY: cell g of the tile, its block's head and group g of each row are in
            // bounds (shapes checked by `product`); unaligned loads throughout.
            unsafe {
                let mut w = [_mm512_setzero_si512(); 8];
                match planes(BITS) {
                    Some(planes) => {
                        for p in 0..G / 8 {
                            let v = _mm512_loadu_si512(cell.add(64 * p) as *const _);
                            w[2 * p] = _mm512_and_si512(v, low);
                            w[2 * p + 1] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
                        }
                        for k in 0..planes {
                            let bit = _mm512_set1_epi8(0x10 << k);
                            let plane = cell.add(TILE * G / 2 + k * 2 * G) as *const u64;
                            for (q, wq) in w.iter_mut().enumerate().take(G / 4) {
                                // The bit is clear in `wq`, so a masked add sets it.
                                let m = plane.add(q).read_unaligned();
                                *wq = _mm512_mask_add_epi8(*wq, m, *wq, bit);
                            }
                        }
                    }
                    None => {
                        for (q, wq) in w.iter_mut().enumerate().take(G / 4) {
                            *wq = _mm512_loadu_si512(cell.add(64 * q) as *const _);
                        }
                    }
                }
                let at = cell.add(codes);
                let (sc, off) = match l.affine {
                    Affine::Groups => (
                        _mm512_loadu_ps(at as *const f32),
                        _mm512_loadu_ps(at.add(4 * TILE) as *const f32),
                    ),
                    Affine::Half { times } => {
                        let sc = _mm512_cvtph_ps(_mm256_loadu_si256(at as *const __m256i));
                        let off = match times {
                            Some(t) => _mm512_mul_ps(sc, _mm512_set1_ps(t)),
                            None => _mm512_cvtph_ps(_mm256_loadu_si256(
                                at.add(2 * TILE) as *const __m256i
                            )),
                        };
                        (sc, off)
                    }
                    Affine::Factored { shared, .. } => {
                        let a = counts(at);
                        let c = if shared { a } else { counts(at.add(TILE)) };
                        let units = head as *const f32;
                        (
                            _mm512_mul_ps(_mm512_loadu_ps(units), a),
                            _mm512_mul_ps(_mm512_loadu_ps(units.add(TILE)), c),
                        )
                    }
                };
                for (r, a) in acc.iter_mut().enumerate() {
                    let x = b.q.as_ptr().add(r * b.k + g * G) as *const i32;
                    // Two chains of `vpdpbusd` (one chain waits on its latency; four cost more
                    // adds than they save): int32 sums, so their order changes no bit.
                    let mut i = [_mm512_setzero_si512(); 2];
                    for (q, wq) in w.iter().enumerate().take(G / 4) {
                        let xq = _mm512_set1_epi32(x.add(q).read_unaligned());
                        i[q % 2] = _mm512_dpbusd_epi32(i[q % 2], *wq, xq);
                    }
                    let i = _mm512_add_epi32(i[0], i[1]);
                    let d = *b.scale.get_unchecked(r * b.groups + g);
                    let s = *b.sums.get_unchecked(r * b.groups + g);
                    let f = _mm512_mul_ps(_mm512_cvtepi32_ps(i), _mm512_set1_ps(d));
                    *a = _mm512_fmadd_ps(f, sc, *a);
                    *a = _mm512_fmadd_ps(off, _mm512_set1_ps(s), *a);
                }
            }
            cell = cell.wrapping_add(cell_len);
            in_block += 1;
            if in_block == per {
                (in_block, head) = (0, cell);
                cell = cell.wrapping_add(head_len);
            }
        }
        for (a, o) in acc.iter().zip(out.iter_mut()) {
            // SAFETY: `o` holds 16 f32.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), *a) };
        }
    }

    /// 16 i8 counts at `p` as f32.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn counts(p: *const u8) -> __m512 {
        // SAFETY: the caller's cell holds 16 counts at `p`.
        let c = unsafe { _mm_loadu_si128(p as *const __m128i) };
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(c))
    }

    /// [`super::quantize_group`] for a group of `16 · V` finite values, in registers: `None`
    /// (the scalar path decides) when a value is not finite.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `xs` and `qs` must hold `16 · V` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn round_group<const V: usize>(
        xs: &[f32],
        qs: &mut [i8],
    ) -> Option<(f32, f32)> {
        assert!(xs.len() == 16 * V && qs.len() == 16 * V);
        // SAFETY: lengths asserted above; unaligned loads and stores.
        unsafe {
            let mut v = [_mm512_setzero_ps(); V];
            let mut amax = _mm512_setzero_ps();
            let mut finite: u16 = 0xffff;
            for (c, vc) in v.iter_mut().enumerate() {
                *vc = _mm512_loadu_ps(xs.as_ptr().add(16 * c));
                let a = _mm512_abs_ps(*vc);
                finite &= _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, _mm512_set1_ps(f32::INFINITY));
                amax = _mm512_max_ps(amax, a);
            }
            if finite != 0xffff {
                return None;
            }
            let d = _mm512_reduce_max_ps(amax) / 127.0;
            let inv = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
            let mut sum = _mm512_setzero_si512();
            for (c, vc) in v.iter().enumerate() {
                let r = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm512_mul_ps(*vc, inv),
                );
                let r = _mm512_min_epi32(
                    _mm512_max_epi32(r, _mm512_set1_epi32(-127)),
                    _mm512_set1_epi32(127),
                );
                sum = _mm512_add_epi32(sum, r);
                _mm_storeu_si128(
                    qs.as_mut_ptr().add(16 * c) as *mut __m128i,
                    _mm512_cvtepi32_epi8(r),
                );
            }
            Some((d, d * _mm512_reduce_add_epi32(sum) as f32))
        }
    }
}

//! `x · W` in f32 on the AMX tile unit, exact to the f32 inputs.
//!
//! AMX multiplies bf16 tiles (8 significant bits) into f32 accumulators: 3.3 TFLOP/s per
//! core measured on this Sapphire Rapids machine, against about 165 GFLOP/s for f32 FMA. An
//! f32 value splits exactly into three bf16 parts (its 24 significant bits, 8 at a time:
//! `x = h + m + l`), and a bf16 product is exact in f32, so `x · w = Σ parts(x) · parts(w)`
//! reproduces the f32 product. Dropping the part products below 2^-24 of the leading one
//! (those with level `i + j > 2`, the "bf16x6" scheme of Henry, Tang and Heinecke, ARITH
//! 2019) leaves an error of the order of f32 rounding, the same order as reordering an f32
//! sum; the accumulation is f32 throughout.
//!
//! Weights from block-quantized files need fewer parts: `w = d·q + m` per block of 32 along
//! `K`, where `d·q` (an f16 scale times a small integer) is exact in two bf16 parts, and the
//! offset term `Σ_k x_k · m = (Σ_k x_k) · m` becomes 1/32 as many extra products on the same
//! tiles (block sums of `x` times the offsets). Two weight parts keep five part products.
//!
//! The weight is packed once ([`PackedWeight`], tile layout, 2 bytes per part and weight);
//! the rows are split per call ([`matmul`]). Measured on the prefill shapes with 2 threads:
//! 420-530 GFLOP/s of f32 work, against 285-355 for gemm's AVX-512 f32 kernels. Only x86-64
//! Linux with AMX-BF16 takes this path ([`available`]); `MOSR_NO_AMX=1` turns it off.

/// bf16 values per tile row, and the `K` of one tile product.
const CHUNK: usize = 32;
/// Rows (and columns, in bf16 pairs) of every tile.
const TILE_ROWS: usize = 16;
/// bf16 values per tile.
const TILE_VALUES: usize = TILE_ROWS * CHUNK;
/// Parts of each input row value.
const X_PARTS: usize = 3;
/// Bytes of weight tiles per pass over the rows (L2 holds them; 2 MiB per core here).
const PAIR_BLOCK_BYTES: usize = 1 << 20;

/// The most significant 16 bits of `x` as bf16 (truncation: the rest is left exact in f32).
#[inline(always)]
fn high(x: f32) -> (u16, f32) {
    let h = x.to_bits() & 0xFFFF_0000;
    ((h >> 16) as u16, x - f32::from_bits(h))
}

/// `x` as three bf16 parts whose sum is `x` exactly (finite `x`).
#[inline(always)]
pub fn split3(x: f32) -> [u16; 3] {
    let (h, r) = high(x);
    let (m, r) = high(r);
    let (l, _) = high(r);
    [h, m, l]
}

/// How many bf16 parts represent `x` exactly (at most 3 for a finite f32).
pub fn parts_needed(x: f32) -> usize {
    let (_, r) = high(x);
    if r == 0.0 {
        return 1;
    }
    let (_, r) = high(r);
    if r == 0.0 { 2 } else { 3 }
}

/// A weight `W [K, N]` in AMX tile layout, split into bf16 parts.
#[derive(Debug)]
pub struct PackedWeight {
    k: usize,
    n: usize,
    /// Chunks of 32 along `K` for the weight itself.
    main_chunks: usize,
    /// Chunks holding the per-block offsets (0 without offsets).
    offset_chunks: usize,
    /// bf16 parts per weight value (1-3).
    parts: usize,
    /// Tile columns of 16 output features (`N` padded).
    col_tiles: usize,
    /// `[column pair][chunk][part][tile of the pair][16 pairs of k][16 columns][2]`: a
    /// pair's tiles are one sequential stream along `K`.
    data: Aligned,
}

impl PackedWeight {
    /// Packs `W` given as `rows [N][K]` (one row per output feature, the file layout) plus,
    /// for block-quantized weights, `offsets [N][K / 32]` with `W[n][k] = rows[n][k] +
    /// offsets[n][k / 32]`. Uses as many parts as the values need exactly.
    ///
    /// # Panics
    /// If a slice disagrees with the shape, or offsets come with `K` not a multiple of 32.
    pub fn pack(rows: &[f32], n: usize, k: usize, offsets: Option<&[f32]>) -> Self {
        assert_eq!(rows.len(), n * k, "PackedWeight: rows are not [{n}, {k}]");
        let blocks = k.div_ceil(CHUNK);
        if let Some(o) = offsets {
            assert!(
                k.is_multiple_of(CHUNK),
                "PackedWeight: offsets need K % 32 == 0, K = {k}"
            );
            assert_eq!(
                o.len(),
                n * blocks,
                "PackedWeight: offsets are not [{n}, {blocks}]"
            );
        }
        let parts = rows
            .iter()
            .chain(offsets.unwrap_or(&[]))
            .map(|&v| parts_needed(v))
            .max()
            .unwrap_or(1);
        let main_chunks = blocks;
        let offset_chunks = if offsets.is_some() {
            blocks.div_ceil(CHUNK)
        } else {
            0
        };
        let chunks = main_chunks + offset_chunks;
        let col_tiles = n.div_ceil(2 * TILE_ROWS) * 2;
        let pair_len = chunks * parts * 2 * TILE_VALUES;
        let mut buf = Aligned::zeroed(col_tiles / 2 * pair_len);
        // One column pair (32 output features × all of K) per task.
        let fill = |(pair, dst): (usize, &mut [u16])| {
            let mut put = |j: usize, kk: usize, v: f32| {
                let (c, r) = (kk / CHUNK, kk % CHUNK);
                let within =
                    (j / TILE_ROWS) * TILE_VALUES + (r / 2) * CHUNK + (j % TILE_ROWS) * 2 + r % 2;
                for (p, bits) in split3(v).into_iter().take(parts).enumerate() {
                    dst[(c * parts + p) * 2 * TILE_VALUES + within] = bits;
                }
            };
            for j in 0..2 * TILE_ROWS {
                let col = pair * 2 * TILE_ROWS + j;
                if col >= n {
                    break;
                }
                for (kk, &v) in rows[col * k..][..k].iter().enumerate() {
                    put(j, kk, v);
                }
                if let Some(o) = offsets {
                    for (b, &v) in o[col * blocks..][..blocks].iter().enumerate() {
                        put(j, main_chunks * CHUNK + b, v);
                    }
                }
            }
        };
        use rayon::prelude::*;
        buf.as_mut_slice()
            .par_chunks_mut(pair_len)
            .enumerate()
            .for_each(fill);
        Self {
            k,
            n,
            main_chunks,
            offset_chunks,
            parts,
            col_tiles,
            data: buf,
        }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// bf16 parts per weight value.
    pub fn parts(&self) -> usize {
        self.parts
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.as_slice().len() * 2
    }

    fn chunks(&self) -> usize {
        self.main_chunks + self.offset_chunks
    }

    /// The (row part, weight part) products kept: level `i + j <= 2`, grouped by weight part.
    fn products(&self) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        for j in 0..self.parts {
            for i in 0..X_PARTS {
                if i + j <= 2 {
                    v.push((i, j));
                }
            }
        }
        v
    }
}

/// Whether this machine and process may use AMX (checked once).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| std::env::var_os("MOSR_NO_AMX").is_none() && imp::enable())
}

/// `x [m, k] · W` as a new row-major `[m, n]` buffer, on the tile unit (threads over column
/// tiles).
///
/// # Panics
/// If [`available`] is false or `x` is not `[m, K]`.
pub fn matmul(x: &[f32], m: usize, w: &PackedWeight) -> Vec<f32> {
    matmul_many(x, m, &[w]).pop().expect("one product")
}

/// [`matmul`] for several weights of the same `K` (a block's q/k/v, or gate/up): the rows are
/// split once. Each output equals [`matmul`] on its own bit for bit.
///
/// # Panics
/// As [`matmul`], or if the weights' `K` differ.
pub fn matmul_many(x: &[f32], m: usize, weights: &[&PackedWeight]) -> Vec<Vec<f32>> {
    assert!(available(), "amx::matmul without AMX");
    let Some(first) = weights.first() else {
        return Vec::new();
    };
    let k = first.k;
    assert_eq!(x.len(), m * k, "amx::matmul: x is not [{m}, {k}]");
    for w in weights {
        assert_eq!(w.k, k, "amx::matmul_many: weights of K {} and {k}", w.k);
    }
    if m == 0 {
        return weights.iter().map(|_| Vec::new()).collect();
    }
    let main_chunks = first.main_chunks;
    let offset_chunks = weights.iter().map(|w| w.offset_chunks).max().unwrap_or(0);
    let m_pad = m.div_ceil(2 * TILE_ROWS) * 2 * TILE_ROWS;
    thread_local! {
        static SCRATCH: std::cell::RefCell<Aligned> =
            const { std::cell::RefCell::new(Aligned(Vec::new())) };
    }
    let mut xs = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    split_rows(x, m, m_pad, k, main_chunks, offset_chunks, &mut xs);
    let outs = weights
        .iter()
        .map(|w| product(&xs, m, m_pad, main_chunks + offset_chunks, w))
        .collect();
    SCRATCH.with(|s| s.replace(xs));
    outs
}

/// One weight's product from the split rows `xs` (`x_chunks` chunks per row).
fn product(xs: &Aligned, m: usize, m_pad: usize, x_chunks: usize, w: &PackedWeight) -> Vec<f32> {
    let n = w.n;
    let n_pad = w.col_tiles * TILE_ROWS;
    if n == 0 {
        return Vec::new();
    }
    // The tiles cover `m_pad × n_pad`; without padding they write the result in place.
    let direct = n_pad == n && m_pad == m;
    let mut dst = Vec::<f32>::with_capacity(m_pad * n_pad);
    let pairs = w.col_tiles / 2;
    let threads = rayon::current_num_threads().max(1).min(pairs);
    let per = pairs.div_ceil(threads);
    let products = w.products();
    let ptr = SendPtr(dst.as_mut_ptr());
    let job = |t: usize| {
        let (p0, p1) = (t * per, ((t + 1) * per).min(pairs));
        let ptr = &ptr;
        // SAFETY: AMX is enabled (checked by the caller); each job writes only its own column
        // pairs of `dst` (capacity m_pad × n_pad, stride n_pad); the tile loads read inside
        // `xs` and the weight's tiles (both padded to whole tiles).
        unsafe {
            imp::kernel(
                xs.as_slice(),
                m_pad,
                x_chunks,
                w,
                &products,
                ptr.0,
                n_pad,
                p0..p1,
            )
        };
    };
    if threads <= 1 {
        job(0);
    } else {
        rayon::scope(|s| {
            for t in 1..threads {
                s.spawn(move |_| job(t));
            }
            job(0);
        });
    }
    // SAFETY: the jobs stored every tile of the m_pad × n_pad output.
    unsafe { dst.set_len(m_pad * n_pad) };
    if direct {
        return dst;
    }
    let mut out = Vec::with_capacity(m * n);
    for row in dst.chunks_exact(n_pad).take(m) {
        out.extend_from_slice(&row[..n]);
    }
    out
}

struct SendPtr(*mut f32);
// SAFETY: the jobs write disjoint columns through it (see `matmul`).
unsafe impl Sync for SendPtr {}
// SAFETY: as for `Sync`: the pointer is only written at disjoint places.
unsafe impl Send for SendPtr {}

/// Rows of `x` as `[16-row tile][chunk][part][16 rows][32]` bf16 (each tile's loads one
/// sequential stream along `K`), zero-padded, the offset chunks holding each 32-block's sum.
/// Reuses `buf` (a thread's scratch).
fn split_rows(
    x: &[f32],
    m: usize,
    m_pad: usize,
    k: usize,
    main_chunks: usize,
    offset_chunks: usize,
    buf: &mut Aligned,
) {
    let chunks = main_chunks + offset_chunks;
    let tile_len = chunks * X_PARTS * TILE_VALUES;
    buf.reset(m_pad / TILE_ROWS * tile_len);
    let data = buf.as_mut_slice();
    let fill = |(rt, dst): (usize, &mut [u16])| {
        for rr in 0..TILE_ROWS {
            let row = rt * TILE_ROWS + rr;
            let at = |c: usize| c * X_PARTS * TILE_VALUES + rr * CHUNK;
            if row >= m {
                for c in 0..chunks {
                    for p in 0..X_PARTS {
                        dst[at(c) + p * TILE_VALUES..][..CHUNK].fill(0);
                    }
                }
                continue;
            }
            let src = &x[row * k..][..k];
            let mut sums = [0f32; CHUNK];
            for (b, s) in src.chunks(CHUNK).enumerate() {
                let sum = imp::split_chunk(s, &mut dst[at(b)..], TILE_VALUES);
                if offset_chunks > 0 {
                    sums[b % CHUNK] = sum;
                    if b % CHUNK == CHUNK - 1 || b + 1 == main_chunks {
                        let o = at(main_chunks + b / CHUNK);
                        imp::split_chunk(&sums[..=b % CHUNK], &mut dst[o..], TILE_VALUES);
                    }
                }
            }
        }
    };
    use rayon::prelude::*;
    if m * k >= 1 << 16 {
        data.par_chunks_mut(tile_len).enumerate().for_each(fill);
    } else {
        data.chunks_mut(tile_len).enumerate().for_each(fill);
    }
}

/// One cache line of bf16 values.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u16; 32]);

/// bf16 values on 64-byte boundaries: a tile row that straddles two cache lines loads at a
/// third of the rate (measured: 4 tile loads 30 → 180 cycles).
#[derive(Default)]
struct Aligned(Vec<Line>);

impl std::fmt::Debug for Aligned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Aligned({} bf16)", self.0.len() * 32)
    }
}

impl Aligned {
    fn zeroed(len: usize) -> Self {
        assert!(len.is_multiple_of(32), "Aligned: {len} is not whole lines");
        Self(vec![Line([0; 32]); len / 32])
    }
    /// `len` values, contents unspecified (kept from earlier use or zero).
    fn reset(&mut self, len: usize) {
        assert!(len.is_multiple_of(32), "Aligned: {len} is not whole lines");
        self.0.resize(len / 32, Line([0; 32]));
    }
    fn as_slice(&self) -> &[u16] {
        // SAFETY: `Line` is 32 u16 without padding (repr(C), 64 bytes).
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), self.0.len() * 32) }
    }
    fn as_mut_slice(&mut self) -> &mut [u16] {
        // SAFETY: as in `as_slice`.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), self.0.len() * 32) }
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod imp {
    use super::{CHUNK, PAIR_BLOCK_BYTES, PackedWeight, TILE_ROWS, TILE_VALUES, X_PARTS};
    use std::arch::asm;

    /// CPUID says AMX-TILE and AMX-BF16, and the kernel grants this process the tile state.
    pub(super) fn enable() -> bool {
        let leaf = core::arch::x86_64::__cpuid_count(7, 0);
        let (bf16, tile) = ((leaf.edx >> 22) & 1 == 1, (leaf.edx >> 24) & 1 == 1);
        if !(bf16 && tile && is_x86_feature_detected!("avx512bw")) {
            return false;
        }
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
        const XFEATURE_XTILEDATA: i64 = 18;
        let ret: i64;
        // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM) only asks the kernel for a permission.
        unsafe {
            asm!("syscall", inlateout("rax") SYS_ARCH_PRCTL => ret,
                 in("rdi") ARCH_REQ_XCOMP_PERM, in("rsi") XFEATURE_XTILEDATA,
                 lateout("rcx") _, lateout("r11") _, options(nostack));
        }
        ret == 0
    }

    /// Splits up to 32 values into parts `dst[p * stride..][..32]` (zero beyond `src`);
    /// returns their sum.
    pub(super) fn split_chunk(src: &[f32], dst: &mut [u16], stride: usize) -> f32 {
        assert!(
            src.len() <= CHUNK && stride >= CHUNK && dst.len() >= (X_PARTS - 1) * stride + CHUNK
        );
        // SAFETY: AMX machines have AVX-512 F/BW (checked in `enable`); the masked loads and
        // stores stay inside `src` and `dst` (lengths asserted above).
        unsafe { split_chunk_avx512(src, dst, stride) }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn split_chunk_avx512(src: &[f32], dst: &mut [u16], stride: usize) -> f32 {
        use core::arch::x86_64::*;
        let high = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
        let mut sum = _mm512_setzero_ps();
        for half in 0..2 {
            let start = half * 16;
            let len = src.len().saturating_sub(start).min(16);
            let mask: __mmask16 = ((1u32 << len) - 1) as u16;
            // SAFETY: the features are enabled on this function; the masked load reads `len`
            // lanes from `start` inside `src`, the stores stay inside `dst` (asserted by the caller).
            unsafe {
                let v = _mm512_maskz_loadu_ps(mask, src.as_ptr().add(start.min(src.len())));
                sum = _mm512_add_ps(sum, v);
                let h = _mm512_and_si512(_mm512_castps_si512(v), high);
                let r = _mm512_sub_ps(v, _mm512_castsi512_ps(h));
                let m = _mm512_and_si512(_mm512_castps_si512(r), high);
                let l = _mm512_sub_ps(r, _mm512_castsi512_ps(m));
                for (p, bits) in [h, m, _mm512_castps_si512(l)].into_iter().enumerate() {
                    let packed = _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(bits));
                    _mm256_storeu_si256(dst.as_mut_ptr().add(p * stride + start).cast(), packed);
                }
            }
        }
        _mm512_reduce_add_ps(sum)
    }

    /// Palette 1, all eight tiles 16 rows × 64 bytes.
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    const CONFIG: Config = {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = (CHUNK * 2) as u8;
            c[48 + t] = TILE_ROWS as u8;
            t += 1;
        }
        Config(c)
    };

    macro_rules! tile_load {
        ($t:literal, $p:expr, $stride:expr) => {
            asm!(concat!("tileloadd tmm", $t, ", [{p} + {s}*1]"),
                 p = in(reg) $p, s = in(reg) $stride, options(nostack, readonly))
        };
    }
    macro_rules! tile_store {
        ($t:literal, $p:expr, $stride:expr) => {
            asm!(concat!("tilestored [{p} + {s}*1], tmm", $t),
                 p = in(reg) $p, s = in(reg) $stride, options(nostack))
        };
    }

    /// The output tiles of column pairs `pairs` (tiles `2p`, `2p + 1`) for all rows.
    /// Tiles: 0-3 accumulators (rows 0/16 × columns 0/16 of the pair), 4-5 row parts,
    /// 6-7 weight parts.
    ///
    /// # Safety
    /// AMX enabled ([`enable`]); `xs` is `[m_pad][chunks][3][32]`, `out` is `m_pad × ld`
    /// f32 and `pairs` lie inside the weight's column tiles.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel(
        xs: &[u16],
        m_pad: usize,
        x_chunks: usize,
        w: &PackedWeight,
        products: &[(usize, usize)],
        out: *mut f32,
        ld: usize,
        pairs: std::ops::Range<usize>,
    ) {
        let chunks = w.chunks();
        let x_tile = |rt: usize, c: usize, i: usize| {
            xs[((rt * x_chunks + c) * X_PARTS + i) * TILE_VALUES..].as_ptr()
        };
        let w_tile = |pair: usize, c: usize, j: usize, half: usize| {
            w.data.as_slice()[(((pair * chunks + c) * w.parts + j) * 2 + half) * TILE_VALUES..]
                .as_ptr()
        };
        let o_stride = ld * 4;
        // SAFETY: the caller's contract (# Safety above): AMX is enabled, every tile pointer
        // lies inside `xs` or the packed weight, and every store inside `out`.
        unsafe {
            asm!("ldtilecfg [{0}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
            // A block of column pairs' weight tiles (`PAIR_BLOCK_BYTES`) stays in L2 while
            // every row pair goes by; a row pair's split parts are read from L3 once per
            // block and from L2 for the block's other pairs. Each output tile pair
            // accumulates over all of `K` without leaving the tiles.
            let pair_bytes = chunks * w.parts * 2 * TILE_VALUES * 2;
            let block = (PAIR_BLOCK_BYTES / pair_bytes).max(1);
            let mut p0 = pairs.start;
            while p0 < pairs.end {
                let p1 = (p0 + block).min(pairs.end);
                for r0 in (0..m_pad).step_by(2 * TILE_ROWS) {
                    for pair in p0..p1 {
                        let rt = r0 / TILE_ROWS;
                        asm!(
                            "tilezero tmm0",
                            "tilezero tmm1",
                            "tilezero tmm2",
                            "tilezero tmm3",
                            options(nostack, nomem)
                        );
                        for c in 0..chunks {
                            // Products come grouped by weight part: 2 weight tiles per
                            // part, 2 row tiles per product.
                            let mut loaded = usize::MAX;
                            for &(i, j) in products {
                                if j != loaded {
                                    tile_load!("6", w_tile(pair, c, j, 0), 64usize);
                                    tile_load!("7", w_tile(pair, c, j, 1), 64usize);
                                    loaded = j;
                                }
                                tile_load!("4", x_tile(rt, c, i), 64usize);
                                tile_load!("5", x_tile(rt + 1, c, i), 64usize);
                                asm!(
                                    "tdpbf16ps tmm0, tmm4, tmm6",
                                    "tdpbf16ps tmm1, tmm4, tmm7",
                                    "tdpbf16ps tmm2, tmm5, tmm6",
                                    "tdpbf16ps tmm3, tmm5, tmm7",
                                    options(nostack, nomem)
                                );
                            }
                        }
                        let c0 = out.add(r0 * ld + pair * 2 * TILE_ROWS);
                        let c2 = c0.add(TILE_ROWS * ld);
                        tile_store!("0", c0, o_stride);
                        tile_store!("1", c0.add(TILE_ROWS), o_stride);
                        tile_store!("2", c2, o_stride);
                        tile_store!("3", c2.add(TILE_ROWS), o_stride);
                    }
                }
                p0 = p1;
            }
            asm!("tilerelease", options(nostack, nomem));
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod imp {
    pub(super) fn enable() -> bool {
        false
    }
    pub(super) fn split_chunk(_: &[f32], _: &mut [u16], _: usize) -> f32 {
        unreachable!("amx::split_chunk without AMX")
    }
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel(
        _: &[u16],
        _: usize,
        _: usize,
        _: &super::PackedWeight,
        _: &[(usize, usize)],
        _: *mut f32,
        _: usize,
        _: std::ops::Range<usize>,
    ) {
        unreachable!("amx::kernel without AMX")
    }
}

//! Block dequantisation to f32, following ggml's block layouts (ggml-common.h) and reproducing
//! the arithmetic of gguf-py's numpy reference (`gguf.quants`) operation for operation, so the
//! results are bit-identical to it (both round every f32 multiply and add separately; Rust never
//! fuses them into FMAs on its own).
//!
//! Each routine walks blocks with `chunks_exact`, which lets the compiler drop bounds checks and
//! vectorise the inner 16/32-element loops; that is fast enough (GB/s) that no threading is used.

use std::path::Path;

use half::f16;

use crate::types::QK_K;
use crate::{GgmlType, GgufError};

/// Dequantise `n` elements of type `ty` from `bytes` into `out[..n]`.
///
/// `n` must be a whole number of blocks, `bytes` exactly the encoded size of `n` elements, and
/// `out` exactly `n` long. Errors name a placeholder file ([`crate::IN_MEMORY`]); use
/// [`crate::GgufFile::dequantize`] to get errors naming the tensor and file.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize, out: &mut [f32]) -> Result<(), GgufError> {
    dequantize_ctx(
        ty,
        bytes,
        n,
        out,
        crate::IN_MEMORY,
        Path::new(crate::IN_MEMORY),
    )
}

pub(crate) fn dequantize_ctx(
    ty: GgmlType,
    bytes: &[u8],
    n: usize,
    out: &mut [f32],
    tensor: &str,
    file: &Path,
) -> Result<(), GgufError> {
    let mismatch = |detail: String| GgufError::ShapeMismatch {
        tensor: tensor.to_owned(),
        detail,
        file: file.to_owned(),
    };
    let Some(need) = ty.bytes_for(n) else {
        return Err(mismatch(format!(
            "{n} elements is not a whole number of {ty} blocks of {}",
            ty.block_size()
        )));
    };
    if bytes.len() != need {
        return Err(mismatch(format!(
            "{n} {ty} elements need {need} bytes, got {}",
            bytes.len()
        )));
    }
    if out.len() != n {
        return Err(mismatch(format!(
            "output buffer holds {} values, expected {n}",
            out.len()
        )));
    }
    let bs = ty.block_size();
    let ts = ty.type_size();
    let blocks = bytes.chunks_exact(ts).zip(out.chunks_exact_mut(bs));
    match ty {
        GgmlType::F32 => blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes(arr(b))),
        GgmlType::F16 => f16_slice(bytes, out),
        GgmlType::BF16 => blocks
            .for_each(|(b, y)| y[0] = f32::from_bits(u32::from(u16::from_le_bytes(arr(b))) << 16)),
        GgmlType::F64 => blocks.for_each(|(b, y)| y[0] = f64::from_le_bytes(arr(b)) as f32),
        GgmlType::I8 => blocks.for_each(|(b, y)| y[0] = f32::from(b[0] as i8)),
        GgmlType::I16 => blocks.for_each(|(b, y)| y[0] = f32::from(i16::from_le_bytes(arr(b)))),
        GgmlType::I32 => blocks.for_each(|(b, y)| y[0] = i32::from_le_bytes(arr(b)) as f32),
        GgmlType::I64 => blocks.for_each(|(b, y)| y[0] = i64::from_le_bytes(arr(b)) as f32),
        GgmlType::Q4_0 => blocks.for_each(|(b, y)| q4_0(b, y)),
        GgmlType::Q4_1 => blocks.for_each(|(b, y)| q4_1(b, y)),
        GgmlType::Q5_0 => blocks.for_each(|(b, y)| q5_0(b, y)),
        GgmlType::Q5_1 => blocks.for_each(|(b, y)| q5_1(b, y)),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| q8_0(b, y)),
        GgmlType::Q2_K => blocks.for_each(|(b, y)| q2_k(b, y)),
        GgmlType::Q3_K => blocks.for_each(|(b, y)| q3_k(b, y)),
        GgmlType::Q4_K => blocks.for_each(|(b, y)| q4_k(b, y)),
        GgmlType::Q5_K => blocks.for_each(|(b, y)| q5_k(b, y)),
        GgmlType::Q6_K => blocks.for_each(|(b, y)| q6_k(b, y)),
        GgmlType::Q8_K => blocks.for_each(|(b, y)| q8_k(b, y)),
        GgmlType::IQ4_NL => blocks.for_each(|(b, y)| iq4_nl(b, y)),
        GgmlType::IQ4_XS => blocks.for_each(|(b, y)| iq4_xs(b, y)),
        GgmlType::MXFP4 => blocks.for_each(|(b, y)| mxfp4(b, y)),
        _ => {
            return Err(GgufError::UnsupportedType {
                ty,
                tensor: tensor.to_owned(),
                file: file.to_owned(),
            });
        }
    }
    Ok(())
}

/// A block-affine tensor split as `scaled + offsets[block]`: Q4_1 and Q5_1 store `d * q + m`
/// per block of 32, where `d * q` is exact in f32 and `m` is one value per block. A product
/// can then apply each offset once per block (`(Σ x) · m`) instead of once per element.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockAffine {
    /// `d * q`, one per element.
    pub scaled: Vec<f32>,
    /// `m`, one per block of 32 consecutive elements.
    pub offsets: Vec<f32>,
}

/// [`BlockAffine`] of `n` elements of type `ty`, `None` for types without a block offset.
/// `bytes` must be exactly the encoded size of `n` elements (as for [`dequantize`]).
pub(crate) fn block_affine(ty: GgmlType, bytes: &[u8], n: usize) -> Option<BlockAffine> {
    let split: fn(&[u8], &mut [f32]) -> f32 = match ty {
        GgmlType::Q4_1 => q4_1_scaled,
        GgmlType::Q5_1 => q5_1_scaled,
        _ => return None,
    };
    debug_assert_eq!(ty.bytes_for(n), Some(bytes.len()));
    let mut scaled = vec![0f32; n];
    let offsets = bytes
        .chunks_exact(ty.type_size())
        .zip(scaled.chunks_exact_mut(ty.block_size()))
        .map(|(b, y)| split(b, y))
        .collect();
    Some(BlockAffine { scaled, offsets })
}

#[inline(always)]
fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    b[..N].try_into().expect("slice length checked by caller")
}

/// Exact IEEE half -> single conversion, inlined into the block loops. (`half::f16::to_f32`
/// checks CPU features on every call, which costs more than the conversion itself.)
#[inline(always)]
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1F);
    let man = u32::from(h & 0x3FF);
    if exp == 0 {
        // Zero or subnormal: man * 2^-24, exact in f32.
        let v = man as f32 * (1.0 / 16_777_216.0);
        return f32::from_bits(v.to_bits() | sign);
    }
    let exp = if exp == 31 { 255 } else { exp + 112 };
    f32::from_bits(sign | (exp << 23) | (man << 13))
}

#[inline(always)]
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Whole F16 tensors go through half's slice conversion, which uses F16C when the CPU has it.
fn f16_slice(bytes: &[u8], out: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    const CHUNK: usize = 1024;
    let mut buf = [f16::ZERO; CHUNK];
    for (src, dst) in bytes.chunks(2 * CHUNK).zip(out.chunks_mut(CHUNK)) {
        let halves = &mut buf[..dst.len()];
        for (h, c) in halves.iter_mut().zip(src.chunks_exact(2)) {
            *h = f16::from_bits(u16::from_le_bytes([c[0], c[1]]));
        }
        halves.convert_to_f32_slice(dst);
    }
}

/// `block_q4_0 { half d; u8 qs[16]; }`: element `i` is nibble `i % 16` of `qs`, low nibbles
/// first; value `d * (q - 8)`.
#[inline(always)]
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    let (lo, hi) = y.split_at_mut(16);
    for i in 0..16 {
        lo[i] = d * ((qs[i] & 0x0F) as i32 - 8) as f32;
        hi[i] = d * ((qs[i] >> 4) as i32 - 8) as f32;
    }
}

/// `block_q4_1 { half d; half m; u8 qs[16]; }`: value `d * q + m`.
#[inline(always)]
fn q4_1(b: &[u8], y: &mut [f32]) {
    let m = q4_1_scaled(b, y);
    y.iter_mut().for_each(|v| *v += m);
}

/// The block's `d * q` into `y` (exact: an f16 times a 4-bit integer); returns `m`.
#[inline(always)]
fn q4_1_scaled(b: &[u8], y: &mut [f32]) -> f32 {
    let d = f16_at(b, 0);
    let qs = &b[4..20];
    let (lo, hi) = y.split_at_mut(16);
    for i in 0..16 {
        lo[i] = d * (qs[i] & 0x0F) as f32;
        hi[i] = d * (qs[i] >> 4) as f32;
    }
    f16_at(b, 2)
}

/// `block_q5_0 { half d; u8 qh[4]; u8 qs[16]; }`: the fifth bit of element `i` is bit `i` of the
/// little-endian u32 `qh`; value `d * (q - 16)`.
#[inline(always)]
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let hb = high_bits(u32::from_le_bytes(arr(&b[2..6])));
    let qs = &b[6..22];
    let (lo, hi) = y.split_at_mut(16);
    for i in 0..16 {
        lo[i] = d * (((qs[i] & 0x0F) | hb[i]) as i32 - 16) as f32;
        hi[i] = d * (((qs[i] >> 4) | hb[i + 16]) as i32 - 16) as f32;
    }
}

/// Bit `i` of `qh`, moved to bit 4 of byte `i` (the fifth bit of element `i`).
#[inline(always)]
fn high_bits(qh: u32) -> [u8; 32] {
    let mut hb = [0u8; 32];
    for (i, v) in hb.iter_mut().enumerate() {
        *v = (((qh >> i) & 1) << 4) as u8;
    }
    hb
}

/// `block_q5_1 { half d; half m; u8 qh[4]; u8 qs[16]; }`: value `d * q + m`.
#[inline(always)]
fn q5_1(b: &[u8], y: &mut [f32]) {
    let m = q5_1_scaled(b, y);
    y.iter_mut().for_each(|v| *v += m);
}

/// The block's `d * q` into `y` (exact: an f16 times a 5-bit integer); returns `m`.
#[inline(always)]
fn q5_1_scaled(b: &[u8], y: &mut [f32]) -> f32 {
    let d = f16_at(b, 0);
    let hb = high_bits(u32::from_le_bytes(arr(&b[4..8])));
    let qs = &b[8..24];
    let (lo, hi) = y.split_at_mut(16);
    for i in 0..16 {
        lo[i] = d * ((qs[i] & 0x0F) | hb[i]) as f32;
        hi[i] = d * ((qs[i] >> 4) | hb[i + 16]) as f32;
    }
    f16_at(b, 2)
}

/// `block_q8_0 { half d; i8 qs[32]; }`: value `q * d`.
#[inline(always)]
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (v, &q) in y.iter_mut().zip(&b[2..34]) {
        *v = (q as i8) as f32 * d;
    }
}

/// `block_q2_K { u8 scales[16]; u8 qs[64]; half d; half dmin; }`. Element `e = 128h + 32s + l`
/// is bits `2s..2s+2` of `qs[32h + l]`; 16-element group `g = e / 16` has scale
/// `d * (scales[g] & 15)` and min `dmin * (scales[g] >> 4)`.
#[inline(always)]
fn q2_k(b: &[u8], y: &mut [f32]) {
    let scales = &b[0..16];
    let qs = &b[16..80];
    let d = f16_at(b, 80);
    let dmin = f16_at(b, 82);
    for (g, yg) in y.chunks_exact_mut(16).enumerate() {
        let dl = d * (scales[g] & 0x0F) as f32;
        let ml = dmin * (scales[g] >> 4) as f32;
        let (h, s, l0) = (g / 8, (g / 2) % 4, (g % 2) * 16);
        let q = &qs[32 * h + l0..32 * h + l0 + 16];
        for (v, &qb) in yg.iter_mut().zip(q) {
            *v = dl * ((qb >> (2 * s)) & 3) as f32 - ml;
        }
    }
}

/// `block_q3_K { u8 hmask[32]; u8 qs[64]; u8 scales[12]; half d; }`. Low two bits as in Q2_K;
/// the third bit of element `e = 32b + l` is bit `b` of `hmask[l]`, and a *clear* bit subtracts
/// 4. The sixteen 6-bit scales (biased by 32) are split: low nibbles in `scales[0..8]`
/// (scale `i` in byte `i % 8`, nibble `i / 8`), high 2-bit pairs in `scales[8..12]`
/// (scale `i` in byte `8 + i % 4`, bits `2 * (i / 4)`).
#[inline(always)]
fn q3_k(b: &[u8], y: &mut [f32]) {
    let hmask = &b[0..32];
    let qs = &b[32..96];
    let sc = &b[96..108];
    let d = f16_at(b, 108);
    for (g, yg) in y.chunks_exact_mut(16).enumerate() {
        let low = (sc[g % 8] >> (4 * (g / 8))) & 0x0F;
        let high = (sc[8 + g % 4] >> (2 * (g / 4))) & 0x03;
        let dl = d * ((low | (high << 4)) as i32 - 32) as f32;
        let (h, s, l0) = (g / 8, (g / 2) % 4, (g % 2) * 16);
        let bit = 4 * h + s;
        let q = &qs[32 * h + l0..32 * h + l0 + 16];
        let hm = &hmask[l0..l0 + 16];
        for ((v, &qb), &hb) in yg.iter_mut().zip(q).zip(hm) {
            let lo = ((qb >> (2 * s)) & 3) as i32;
            let sub = if (hb >> bit) & 1 == 1 { 0 } else { 4 };
            *v = dl * (lo - sub) as f32;
        }
    }
}

/// ggml's `get_scale_min_k4`: eight 6-bit (scale, min) pairs packed into 12 bytes.
/// Pairs 0-3 are the low 6 bits of bytes 0-3 / 4-7; pairs 4-7 take their low nibbles from
/// bytes 8-11 and their top two bits from the spare top bits of bytes 0-3 / 4-7.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `block_q4_K { half d; half dmin; u8 scales[12]; u8 qs[128]; }`. Sub-block `j` (32 values)
/// uses nibble `j % 2` of `qs[32 * (j / 2)..][..32]`; value `d*sc * q - dmin*m`.
#[inline(always)]
fn q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (j, yj) in y.chunks_exact_mut(32).enumerate() {
        let (sc, m) = scale_min_k4(j, scales);
        let d1 = d * sc as f32;
        let m1 = dmin * m as f32;
        let shift = 4 * (j % 2);
        let q = &qs[32 * (j / 2)..32 * (j / 2) + 32];
        for (v, &qb) in yj.iter_mut().zip(q) {
            *v = d1 * ((qb >> shift) & 0x0F) as f32 - m1;
        }
    }
}

/// `block_q5_K { half d; half dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; }`: as Q4_K, with
/// the fifth bit of sub-block `j` element `l` in bit `j` of `qh[l]`.
#[inline(always)]
fn q5_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for (j, yj) in y.chunks_exact_mut(32).enumerate() {
        let (sc, m) = scale_min_k4(j, scales);
        let d1 = d * sc as f32;
        let m1 = dmin * m as f32;
        let shift = 4 * (j % 2);
        let q = &qs[32 * (j / 2)..32 * (j / 2) + 32];
        for ((v, &qb), &hb) in yj.iter_mut().zip(q).zip(qh) {
            let qv = ((qb >> shift) & 0x0F) | (((hb >> j) & 1) << 4);
            *v = d1 * qv as f32 - m1;
        }
    }
}

/// `block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; half d; }`. In each 128-element half
/// `h`, element `32k + l` (k < 4, l < 32) takes nibble `k / 2` of `ql[64h + 32(k % 2) + l]` and
/// bits `2k` of `qh[32h + l]`; value `d*scales[e / 16] * (q - 32)`. (ggml's loop shape, which
/// reads each `ql`/`qh` byte once.)
#[inline(always)]
fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    let mut dl = [0f32; 16];
    for (v, &s) in dl.iter_mut().zip(&b[192..208]) {
        *v = d * (s as i8) as f32;
    }
    for h in 0..2 {
        let ql: &[u8; 64] = b[64 * h..64 * h + 64].try_into().unwrap();
        let qh: &[u8; 32] = b[128 + 32 * h..160 + 32 * h].try_into().unwrap();
        let yh: &mut [f32; 128] = (&mut y[128 * h..128 * h + 128]).try_into().unwrap();
        for part in 0..2 {
            let g = 8 * h + part;
            let (s0, s1, s2, s3) = (dl[g], dl[g + 2], dl[g + 4], dl[g + 6]);
            for l in 16 * part..16 * part + 16 {
                let (a, c, hb) = (ql[l], ql[l + 32], qh[l]);
                yh[l] = s0 * (((a & 0x0F) | ((hb & 3) << 4)) as i32 - 32) as f32;
                yh[l + 32] = s1 * (((c & 0x0F) | (((hb >> 2) & 3) << 4)) as i32 - 32) as f32;
                yh[l + 64] = s2 * (((a >> 4) | (((hb >> 4) & 3) << 4)) as i32 - 32) as f32;
                yh[l + 96] = s3 * (((c >> 4) | (((hb >> 6) & 3) << 4)) as i32 - 32) as f32;
            }
        }
    }
}

/// `block_q8_K { float d; i8 qs[256]; i16 bsums[16]; }`: value `d * q` (bsums are a cache).
#[inline(always)]
fn q8_k(b: &[u8], y: &mut [f32]) {
    let d = f32::from_le_bytes(arr(b));
    for (v, &q) in y.iter_mut().zip(&b[4..4 + QK_K]) {
        *v = d * (q as i8) as f32;
    }
}

/// The non-linear 4-bit codebook shared by IQ4_NL and IQ4_XS (`kvalues_iq4nl`).
const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// `block_iq4_nl { half d; u8 qs[16]; }`: Q4_0's nibble layout through the codebook.
#[inline(always)]
fn iq4_nl(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    let (lo, hi) = y.split_at_mut(16);
    for i in 0..16 {
        lo[i] = d * KVALUES_IQ4NL[(qs[i] & 0x0F) as usize] as f32;
        hi[i] = d * KVALUES_IQ4NL[(qs[i] >> 4) as usize] as f32;
    }
}

/// `block_iq4_xs { half d; u16 scales_h; u8 scales_l[4]; u8 qs[128]; }`: eight 32-value
/// sub-blocks, each laid out like an IQ4_NL block, with 6-bit scales biased by 32.
#[inline(always)]
fn iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let scales_h = u16::from_le_bytes(arr(&b[2..4]));
    let scales_l = &b[4..8];
    let qs = &b[8..136];
    for (j, yj) in y.chunks_exact_mut(32).enumerate() {
        let low = (scales_l[j / 2] >> (4 * (j % 2))) & 0x0F;
        let high = ((scales_h >> (2 * j)) & 3) as u8;
        let dl = d * ((low | (high << 4)) as i32 - 32) as f32;
        let q = &qs[16 * j..16 * j + 16];
        let (lo, hi) = yj.split_at_mut(16);
        for i in 0..16 {
            lo[i] = dl * KVALUES_IQ4NL[(q[i] & 0x0F) as usize] as f32;
            hi[i] = dl * KVALUES_IQ4NL[(q[i] >> 4) as usize] as f32;
        }
    }
}

/// Doubled E2M1 values (`kvalues_mxfp4`); the halving is folded into the scale.
const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// `block_mxfp4 { u8 e; u8 qs[16]; }`: E8M0 shared exponent, Q4_0's nibble layout.
#[inline(always)]
fn mxfp4(b: &[u8], y: &mut [f32]) {
    // ggml_e8m0_to_fp32_half: 2^(e - 128), with the two smallest exponents as subnormals.
    let e = u32::from(b[0]);
    let d = f32::from_bits(if e < 2 {
        0x0020_0000 << e
    } else {
        (e - 1) << 23
    });
    let qs = &b[1..17];
    let (lo, hi) = y.split_at_mut(16);
    for i in 0..16 {
        lo[i] = d * KVALUES_MXFP4[(qs[i] & 0x0F) as usize] as f32;
        hi[i] = d * KVALUES_MXFP4[(qs[i] >> 4) as usize] as f32;
    }
}

//! Quantized tensors as per-group affine integer codes, for products that keep the codes
//! (`mosr_kernels::quant`) instead of dequantizing.
//!
//! Element `e` of every supported type is `scale[e / G] · code[e] + offset[e / G]` with an
//! integer `code` in `0..=255`: the block's own integers with any bias or sign moved into the
//! offset. The group `G` is the type's own: 16 for Q6_K (a scale per 16), 32 for the others
//! (one scale and min per block or sub-block of 32). The scales are the ones the dequantizer computes (`d · sc` for the K-quants), so
//! `scale · code + offset` equals [`crate::dequantize`] up to one rounding where the
//! dequantizer subtracts the bias before multiplying (Q4_0, Q5_0, Q8_0, Q6_K).

use crate::GgmlType;
use crate::dequant::{f16_at, scale_min_k4};

/// A tensor's codes (one byte per element) with one scale and offset per group of `group`
/// consecutive elements.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupCodes {
    /// Elements per group: 16 or 32.
    pub group: usize,
    /// Every code is below `2^bits`: the type's own width (4 for Q4_0, Q4_1 and Q4_K, 5, 6
    /// or 8 for the others).
    pub bits: u32,
    pub codes: Vec<u8>,
    pub scale: Vec<f32>,
    pub offset: Vec<f32>,
    /// How the type stores the same scales and offsets, for layouts that keep them as narrow.
    pub stored: Stored,
}

/// How a type stores its groups' scales and offsets (each [`GroupCodes::scale`] and
/// [`GroupCodes::offset`] is exactly what this gives).
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    /// An f16 scale `d` per group and the offset `times · d` (Q4_0: −8, Q5_0: −16, Q8_0:
    /// −128).
    HalfScale { times: f32 },
    /// An f16 scale and an f16 offset per group (Q4_1, Q5_1).
    HalfPair,
    /// The K-quants' units per block and counts per group.
    Factored(Factors),
}

/// A K-quant's scales and offsets as its blocks hold them: per block of 256 elements a unit
/// from the block's f16 header, per group a count of at most 8 bits, `scale = scale_unit · scale_count` and `offset =
/// offset_unit · offset_count` by one f32 multiplication each, the very products in
/// [`GroupCodes::scale`] and [`GroupCodes::offset`] (`−(dmin · m)` is `(−dmin) · m`, and `−32 ·
/// (d · sc)` is `(−32 d) · sc`: rounding commutes with a sign and with a power of two). A
/// layout keeping these reads 4.75 bits per Q4_K weight instead of 6 and changes no bit.
#[derive(Debug, Clone, PartialEq)]
pub struct Factors {
    /// Groups per block: 8 (Q4_K, Q5_K) or 16 (Q6_K).
    pub per: usize,
    /// Per block: `d`.
    pub scale_unit: Vec<f32>,
    /// Per block: `−dmin` (Q4_K, Q5_K) or `−32 d` (Q6_K).
    pub offset_unit: Vec<f32>,
    /// Per group: the sub-block scale (6 bits, or Q6_K's signed byte).
    pub scale_count: Vec<i8>,
    /// Per group: the sub-block min (6 bits); `None` where the offset's count is the scale's
    /// (Q6_K).
    pub offset_count: Option<Vec<i8>>,
}

impl GroupCodes {
    /// Appends `other`'s elements (a loader gathering rows out of order).
    ///
    /// # Panics
    /// If the two disagree on group, bits or how the scales are stored.
    pub fn append(&mut self, other: GroupCodes) {
        assert_eq!((self.group, self.bits), (other.group, other.bits));
        self.codes.extend(other.codes);
        self.scale.extend(other.scale);
        self.offset.extend(other.offset);
        match (&mut self.stored, other.stored) {
            (Stored::Factored(a), Stored::Factored(b)) => {
                assert_eq!(a.per, b.per);
                a.scale_unit.extend(b.scale_unit);
                a.offset_unit.extend(b.offset_unit);
                a.scale_count.extend(b.scale_count);
                match (&mut a.offset_count, b.offset_count) {
                    (None, None) => {}
                    (Some(x), Some(y)) => x.extend(y),
                    _ => panic!("GroupCodes::append: offset counts on one side only"),
                }
            }
            (a, b) => assert_eq!(*a, b, "GroupCodes::append: stored differently"),
        }
    }
}

type Split = fn(&[u8], &mut [u8], &mut [f32], &mut [f32]);

/// [`GroupCodes`] of `n` elements of type `ty`; `None` for types without integer codes in
/// groups of 16 or 32 (floats, Q2_K, Q3_K, the codebook types). `bytes` must be exactly the
/// encoded size of `n` elements.
pub(crate) fn group_codes(ty: GgmlType, bytes: &[u8], n: usize) -> Option<GroupCodes> {
    let split: Split = match ty {
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q5_1 => q5_1,
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q4_K => q4_k,
        GgmlType::Q5_K => q5_k,
        GgmlType::Q6_K => q6_k,
        _ => return None,
    };
    debug_assert_eq!(ty.bytes_for(n), Some(bytes.len()));
    let group = if ty == GgmlType::Q6_K { 16 } else { 32 };
    let bits = match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K => 4,
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => 5,
        GgmlType::Q6_K => 6,
        _ => 8,
    };
    let (bs, per) = (ty.block_size(), ty.block_size() / group);
    let mut out = GroupCodes {
        group,
        bits,
        codes: vec![0u8; n],
        scale: vec![0f32; n / group],
        offset: vec![0f32; n / group],
        stored: stored(ty, bytes),
    };
    let blocks = bytes
        .chunks_exact(ty.type_size())
        .zip(out.codes.chunks_exact_mut(bs))
        .zip(out.scale.chunks_exact_mut(per))
        .zip(out.offset.chunks_exact_mut(per));
    for (((b, c), s), o) in blocks {
        split(b, c, s, o);
    }
    Some(out)
}

/// How `ty` (one of [`group_codes`]' types) stores its scales and offsets: f16 values, or
/// the K-quants' [`Factors`] read from the blocks' headers.
fn stored(ty: GgmlType, bytes: &[u8]) -> Stored {
    let (per, shared) = match ty {
        GgmlType::Q4_0 => return Stored::HalfScale { times: -8.0 },
        GgmlType::Q5_0 => return Stored::HalfScale { times: -16.0 },
        GgmlType::Q8_0 => return Stored::HalfScale { times: -128.0 },
        GgmlType::Q4_1 | GgmlType::Q5_1 => return Stored::HalfPair,
        GgmlType::Q6_K => (16, true),
        _ => (8, false),
    };
    let blocks = bytes.chunks_exact(ty.type_size());
    let n = blocks.len();
    let mut f = Factors {
        per,
        scale_unit: Vec::with_capacity(n),
        offset_unit: Vec::with_capacity(n),
        scale_count: Vec::with_capacity(per * n),
        offset_count: (!shared).then(|| Vec::with_capacity(per * n)),
    };
    for b in blocks {
        match &mut f.offset_count {
            // Q6_K: offset −32 · (d · sc) = (−32 d) · sc.
            None => {
                let d = f16_at(b, 208);
                f.scale_unit.push(d);
                f.offset_unit.push(-32.0 * d);
                f.scale_count.extend(b[192..208].iter().map(|&s| s as i8));
            }
            // Q4_K, Q5_K: offset −(dmin · m) = (−dmin) · m; 6-bit counts fit an i8.
            Some(offset_count) => {
                f.scale_unit.push(f16_at(b, 0));
                f.offset_unit.push(-f16_at(b, 2));
                for j in 0..8 {
                    let (sc, m) = scale_min_k4(j, &b[4..16]);
                    f.scale_count.push(sc as i8);
                    offset_count.push(m as i8);
                }
            }
        }
    }
    Stored::Factored(f)
}

/// Q4_0/Q4_1's nibble layout: element `i < 16` is the low nibble of `qs[i]`, `16 + i` its
/// high nibble.
fn nibbles(qs: &[u8], c: &mut [u8]) {
    let (low, high) = c[..32].split_at_mut(16);
    for ((l, h), &q) in low.iter_mut().zip(high).zip(&qs[..16]) {
        (*l, *h) = (q & 0x0F, q >> 4);
    }
}

/// Q5_0/Q5_1: nibbles plus the fifth bit of element `i` in bit `i` of `qh`.
fn nibbles5(qh: u32, qs: &[u8], c: &mut [u8]) {
    nibbles(qs, c);
    for (i, v) in c[..32].iter_mut().enumerate() {
        *v |= (((qh >> i) & 1) << 4) as u8;
    }
}

fn q4_0(b: &[u8], c: &mut [u8], s: &mut [f32], o: &mut [f32]) {
    let d = f16_at(b, 0);
    nibbles(&b[2..18], c);
    s.fill(d);
    o.fill(-8.0 * d);
}

fn q4_1(b: &[u8], c: &mut [u8], s: &mut [f32], o: &mut [f32]) {
    nibbles(&b[4..20], c);
    s.fill(f16_at(b, 0));
    o.fill(f16_at(b, 2));
}

fn q5_0(b: &[u8], c: &mut [u8], s: &mut [f32], o: &mut [f32]) {
    let d = f16_at(b, 0);
    nibbles5(u32::from_le_bytes([b[2], b[3], b[4], b[5]]), &b[6..22], c);
    s.fill(d);
    o.fill(-16.0 * d);
}

fn q5_1(b: &[u8], c: &mut [u8], s: &mut [f32], o: &mut [f32]) {
    nibbles5(u32::from_le_bytes([b[4], b[5], b[6], b[7]]), &b[8..24], c);
    s.fill(f16_at(b, 0));
    o.fill(f16_at(b, 2));
}

fn q8_0(b: &[u8], c: &mut [u8], s: &mut [f32], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for (v, &q) in c.iter_mut().zip(&b[2..34]) {
        *v = q ^ 0x80; // i8 + 128
    }
    s.fill(d);
    o.fill(-128.0 * d);
}

/// Q4_K (`high = None`) and Q5_K: sub-block `j` of 32 is group `j`.
fn k_quant(b: &[u8], high: Option<&[u8]>, qs: &[u8], c: &mut [u8], s: &mut [f32], o: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    for (j, cj) in c.chunks_exact_mut(32).enumerate() {
        let (sc, m) = scale_min_k4(j, &b[4..16]);
        let shift = 4 * (j % 2);
        // The nibbles, then the fifth bits: two loops over fixed-size runs (they vectorize).
        for (v, &q) in cj.iter_mut().zip(&qs[32 * (j / 2)..][..32]) {
            *v = (q >> shift) & 0x0F;
        }
        if let Some(qh) = high {
            for (v, &h) in cj.iter_mut().zip(&qh[..32]) {
                *v |= ((h >> j) & 1) << 4;
            }
        }
        s[j] = d * f32::from(sc);
        o[j] = -(dmin * f32::from(m));
    }
}

fn q4_k(b: &[u8], c: &mut [u8], s: &mut [f32], o: &mut [f32]) {
    k_quant(b, None, &b[16..144], c, s, o);
}

fn q5_k(b: &[u8], c: &mut [u8], s: &mut [f32], o: &mut [f32]) {
    k_quant(b, Some(&b[16..48]), &b[48..176], c, s, o);
}

/// Q6_K: element `128h + 32k + l` as in the dequantizer, code `q` (6 bits), group `e / 16`
/// scale `d · scales[g]`, offset `-32 · scale`.
fn q6_k(b: &[u8], c: &mut [u8], s: &mut [f32], o: &mut [f32]) {
    let d = f16_at(b, 208);
    for (g, (sg, og)) in s.iter_mut().zip(o.iter_mut()).enumerate() {
        *sg = d * f32::from(b[192 + g] as i8);
        *og = -32.0 * *sg;
    }
    for h in 0..2 {
        let (ql, qh) = (&b[64 * h..64 * h + 64], &b[128 + 32 * h..160 + 32 * h]);
        let ch = &mut c[128 * h..128 * h + 128];
        for l in 0..32 {
            let (a, x, hb) = (ql[l], ql[l + 32], qh[l]);
            ch[l] = (a & 0x0F) | ((hb & 3) << 4);
            ch[l + 32] = (x & 0x0F) | (((hb >> 2) & 3) << 4);
            ch[l + 64] = (a >> 4) | (((hb >> 4) & 3) << 4);
            ch[l + 96] = (x >> 4) | (((hb >> 6) & 3) << 4);
        }
    }
}

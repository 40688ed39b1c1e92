//! Where a [`QuantWeight`]'s bytes lie: the codes of 16 output rows interleaved for
//! `vpdpbusd`, each group's scale and offset beside them, either as f32 or as the K-quants'
//! own factors.

use half::f16;
use rayon::prelude::*;

use super::{GROUPS, TILE};

/// How a weight keeps each group's scale and offset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Affine {
    /// An f32 scale and offset per group: any block type.
    Groups,
    /// An f16 scale per group and an f16 offset, or the offset `times · scale` (Q4_0, Q5_0,
    /// Q8_0: the file's own f16 and its own product): the bytes of the file's blocks (5.5
    /// bits per Q5_0 weight instead of 7), the same f32 values.
    Half { times: Option<f32> },
    /// As the K-quants store them: per block of `per` groups an f32 unit for the scales and
    /// one for the offsets, per group an i8 count of each (one count for both when `shared`,
    /// as in Q6_K). `unit · count` is formed by the loader's own f32 multiplication, so the
    /// products are the same bits as with [`Affine::Groups`], from 4.75 bits per Q4_K weight
    /// instead of 6 (6.75 per Q6_K weight instead of 10).
    Factored { per: usize, shared: bool },
}

/// A tile of rows as a loader gives them to [`QuantWeight::from_rows`]: codes `[rows, k]`,
/// scales and offsets `[rows, k / group]`, and with [`Affine::Factored`] the same as units
/// `[rows, groups / per]` and counts `[rows, groups]` (no offset counts when shared). Every
/// `unit · count` must equal its scale or offset (checked).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TileCodes {
    pub codes: Vec<u8>,
    pub scale: Vec<f32>,
    pub offset: Vec<f32>,
    pub scale_unit: Vec<f32>,
    pub offset_unit: Vec<f32>,
    pub scale_count: Vec<i8>,
    pub offset_count: Vec<i8>,
}

/// How a weight keeps codes of `bits` bits: the bit planes it keeps above a low nibble (0
/// for 4 bits, 1 for 5, 2 for 6), or `None` for one byte per code (8 bits).
pub(super) const fn planes(bits: u32) -> Option<usize> {
    match bits {
        0..=6 => Some(bits.saturating_sub(4) as usize),
        _ => None,
    }
}

/// The code width a weight keeps for codes below `2^bits`: 4, 5, 6 or 8.
const fn kept_bits(bits: u32) -> u32 {
    match bits {
        0..=4 => 4,
        5 | 6 => bits,
        _ => 8,
    }
}

/// A weight's layout. A tile (16 output rows) is a run of blocks of `per` groups (1 unless
/// [`Affine::Factored`]); a block is a head, the 16 rows' two f32 units (only when factored),
/// then its cells; a cell is a group's `16 × group` codes, then the 16 rows' scales and
/// offsets (f32 or f16, the offsets left out when they are a multiple of the scales) or their
/// counts (i8, one set when shared).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Layout {
    pub group: usize,
    /// Bits kept per code ([`kept_bits`]; the order is [`code`]'s).
    pub bits: u32,
    pub affine: Affine,
}

impl Layout {
    /// Groups per block.
    pub fn per(&self) -> usize {
        match self.affine {
            Affine::Groups | Affine::Half { .. } => 1,
            Affine::Factored { per, .. } => per,
        }
    }
    pub fn head_bytes(&self) -> usize {
        match self.affine {
            Affine::Groups | Affine::Half { .. } => 0,
            Affine::Factored { .. } => 2 * TILE * 4,
        }
    }
    /// Bytes of a cell's codes: one byte each, or the low nibbles two to a byte followed by
    /// one bit per code for each plane above them.
    pub fn code_bytes(&self) -> usize {
        match planes(self.bits) {
            Some(p) => TILE * self.group / 2 + p * TILE * self.group / 8,
            None => TILE * self.group,
        }
    }
    pub fn cell_bytes(&self) -> usize {
        self.code_bytes()
            + match self.affine {
                Affine::Groups => 2 * TILE * 4,
                Affine::Half { times: Some(_) } => TILE * 2,
                Affine::Half { times: None } => 2 * TILE * 2,
                Affine::Factored { shared: true, .. } => TILE,
                Affine::Factored { shared: false, .. } => 2 * TILE,
            }
    }
    fn block_bytes(&self) -> usize {
        self.head_bytes() + self.per() * self.cell_bytes()
    }
    pub fn tile_bytes(&self, k: usize) -> usize {
        k / self.group / self.per() * self.block_bytes()
    }
    /// Where group `g`'s cell starts in its tile.
    pub fn cell_at(&self, g: usize) -> usize {
        self.head_at(g) + self.head_bytes() + (g % self.per()) * self.cell_bytes()
    }
    /// Where the head of group `g`'s block starts in its tile.
    pub fn head_at(&self, g: usize) -> usize {
        (g / self.per()) * self.block_bytes()
    }

    /// Row `j`'s scale and offset of group `g` in `tile`: with factors, `unit · count` in f32,
    /// the kernel's operation.
    pub fn affine(&self, tile: &[u8], g: usize, j: usize) -> (f32, f32) {
        let at = self.cell_at(g) + self.code_bytes();
        match self.affine {
            Affine::Groups => (f32_at(tile, at + 4 * j), f32_at(tile, at + 4 * (TILE + j))),
            Affine::Half { times } => {
                let s = f16_at(tile, at + 2 * j);
                let o = match times {
                    Some(t) => s * t,
                    None => f16_at(tile, at + 2 * (TILE + j)),
                };
                (s, o)
            }
            Affine::Factored { shared, .. } => {
                let head = self.head_at(g);
                let (su, ou) = (
                    f32_at(tile, head + 4 * j),
                    f32_at(tile, head + 4 * (TILE + j)),
                );
                let a = f32::from(tile[at + j] as i8);
                let b = match shared {
                    true => a,
                    false => f32::from(tile[at + TILE + j] as i8),
                };
                (su * a, ou * b)
            }
        }
    }

    /// Writes `rows` rows of `c` into `tile`, clearing it first: the codes are ORed in, and
    /// the clearing write is also the tile's first touch (a first touch that reads maps the
    /// shared zero page, and the write after it then copies the page and flushes the other
    /// threads' TLBs: an interrupt per page, a third of a load's time).
    fn put_tile(&self, tile: &mut [u8], c: &TileCodes, k: usize, rows: usize) {
        tile.fill(0);
        let (group, groups) = (self.group, k / self.group);
        for g in 0..groups {
            let cell = &mut tile[self.cell_at(g)..][..self.cell_bytes()];
            let (codes, part) = cell.split_at_mut(self.code_bytes());
            for j in 0..rows {
                put_codes(
                    codes,
                    group,
                    self.bits,
                    j,
                    &c.codes[j * k + g * group..][..group],
                );
                self.put_affine(part, c, j, j * groups + g);
            }
        }
        if let Affine::Factored { per, .. } = self.affine {
            let blocks = groups / per;
            for b in 0..blocks {
                let head = self.head_at(b * per);
                for j in 0..rows {
                    put_f32(tile, head + 4 * j, c.scale_unit[j * blocks + b]);
                    put_f32(tile, head + 4 * (TILE + j), c.offset_unit[j * blocks + b]);
                }
            }
        }
    }

    /// Writes row `j`'s scale and offset (`c`'s group `i`) into a cell's part after its codes.
    fn put_affine(&self, part: &mut [u8], c: &TileCodes, j: usize, i: usize) {
        match self.affine {
            Affine::Groups => {
                put_f32(part, 4 * j, c.scale[i]);
                put_f32(part, 4 * (TILE + j), c.offset[i]);
            }
            Affine::Half { times } => {
                put_f16(part, 2 * j, c.scale[i]);
                if times.is_none() {
                    put_f16(part, 2 * (TILE + j), c.offset[i]);
                }
            }
            Affine::Factored { shared, .. } => {
                part[j] = c.scale_count[i] as u8;
                if !shared {
                    part[TILE + j] = c.offset_count[i] as u8;
                }
            }
        }
    }

    /// Panics unless `c` holds `rows` rows of this layout's shape, every code fits in
    /// `limit`, and with factors every `unit · count` is its scale or offset: a loader that
    /// got them wrong would change results silently.
    fn check(&self, c: &TileCodes, (first, rows, k): (usize, usize, usize), limit: u32) {
        let groups = k / self.group;
        let mut parts = vec![
            (c.codes.len(), k, "codes"),
            (c.scale.len(), groups, "scales"),
            (c.offset.len(), groups, "offsets"),
        ];
        if let Affine::Factored { per, shared } = self.affine {
            parts.extend([
                (c.scale_unit.len(), groups / per, "scale units"),
                (c.offset_unit.len(), groups / per, "offset units"),
                (c.scale_count.len(), groups, "scale counts"),
            ]);
            if !shared {
                parts.push((c.offset_count.len(), groups, "offset counts"));
            }
        }
        for (len, cols, what) in parts {
            assert_eq!(
                len,
                rows * cols,
                "QuantWeight: {len} {what}, not [{rows}, {cols}]"
            );
        }
        // The widest code first (a loop that vectorizes), the culprit only when there is one.
        let widest = c.codes.iter().fold(0u8, |m, &v| m.max(v));
        if u32::from(widest) >= limit {
            panic!(
                "QuantWeight: code {widest} in rows from {first} does not fit in {} bits",
                limit.ilog2()
            );
        }
        match self.affine {
            Affine::Groups => {}
            Affine::Half { times } => check_half(c, times, groups, first),
            Affine::Factored { per, shared } => check_factors(c, (per, shared), groups, first),
        }
    }
}

/// A weight `[n, k]` as per-group affine integer codes, laid out for the kernel ([`Layout`]):
/// per tile of 16 output rows and group of inputs, the codes interleaved by fours (lane `j`
/// of quad `q` holds `code[o0 + j, g·G + 4q .. g·G + 4q + 4]`), then the group's scales and
/// offsets or their factors ([`Affine`]). Codes are kept as narrow as their type (4 bits for
/// Q4_0, Q4_1 and Q4_K, 5 for the Q5 types, 6 for Q6_K, 8 for Q8_0) as the file keeps them.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantWeight {
    n: usize,
    k: usize,
    pub(super) layout: Layout,
    pub(super) cells: Vec<u8>,
}

impl QuantWeight {
    /// From row-major `codes [n, k]`, each below `2^bits`, and `scale`, `offset`
    /// `[n, k / group]`, kept as f32 ([`Affine::Groups`]).
    ///
    /// # Panics
    /// If `group` is not one of [`GROUPS`], `k` is not a multiple of it, a slice length
    /// disagrees with the shape, or a code does not fit in `bits`.
    pub fn new(
        n: usize,
        k: usize,
        group: usize,
        bits: u32,
        codes: &[u8],
        scale: &[f32],
        offset: &[f32],
    ) -> Self {
        let c = TileCodes {
            codes: codes.to_vec(),
            scale: scale.to_vec(),
            offset: offset.to_vec(),
            ..TileCodes::default()
        };
        Self::whole(n, k, (group, bits), Affine::Groups, &c)
    }

    /// From a whole tensor's [`TileCodes`] (every row at once).
    ///
    /// # Panics
    /// As [`Self::from_rows`], or if a slice's length is not the shape's.
    pub fn whole(n: usize, k: usize, shape: (usize, u32), affine: Affine, c: &TileCodes) -> Self {
        assert_group(shape.0, k);
        let layout = Layout {
            group: shape.0,
            bits: shape.1,
            affine,
        };
        let (groups, blocks) = (k / shape.0, k / shape.0 / layout.per().max(1));
        let whole = [
            (c.codes.len(), n * k, "codes"),
            (c.scale.len(), n * groups, "scales"),
            (c.offset.len(), n * groups, "offsets"),
        ];
        for (len, want, what) in whole {
            assert_eq!(
                len, want,
                "QuantWeight: {len} {what} for a [{n}, {k}] weight"
            );
        }
        let fill = |first: usize, count: usize| {
            Ok::<_, std::convert::Infallible>(TileCodes {
                codes: rows_of(&c.codes, k, first, count),
                scale: rows_of(&c.scale, groups, first, count),
                offset: rows_of(&c.offset, groups, first, count),
                scale_unit: rows_of(&c.scale_unit, blocks, first, count),
                offset_unit: rows_of(&c.offset_unit, blocks, first, count),
                scale_count: rows_of(&c.scale_count, groups, first, count),
                offset_count: rows_of(&c.offset_count, groups, first, count),
            })
        };
        match Self::from_rows(n, k, shape, affine, fill) {
            Ok(w) => w,
            Err(never) => match never {},
        }
    }

    /// Built a tile of rows at a time: `fill(first, rows)` gives rows `first..first + rows`
    /// ([`TileCodes`]). A loader converting a file's blocks thus holds a tile's codes per
    /// thread besides the weight, never a second copy of the tensor. Tiles are laid out in
    /// parallel (each owns its bytes), so the layout is the same with any number of threads.
    ///
    /// # Panics
    /// If `group` is not one of [`GROUPS`], `k` is not a multiple of it (or, with factors, of
    /// a block), a tile disagrees with the shape or its factors with its scales and offsets,
    /// or a code does not fit in `bits`.
    pub fn from_rows<E: Send>(
        n: usize,
        k: usize,
        (group, bits): (usize, u32),
        affine: Affine,
        fill: impl Fn(usize, usize) -> Result<TileCodes, E> + Sync,
    ) -> Result<Self, E> {
        assert_group(group, k);
        let layout = Layout {
            group,
            bits: kept_bits(bits),
            affine,
        };
        assert!(
            (k / group).is_multiple_of(layout.per()),
            "QuantWeight: {} groups are not blocks of {}",
            k / group,
            layout.per()
        );
        let limit = 1u32 << bits.min(8);
        let mut cells = vec![0u8; n.div_ceil(TILE) * layout.tile_bytes(k)];
        cells
            .par_chunks_exact_mut(layout.tile_bytes(k).max(1))
            .enumerate()
            .try_for_each(|(t, tile)| {
                let (first, rows) = (t * TILE, TILE.min(n - t * TILE));
                let c = fill(first, rows)?;
                layout.check(&c, (first, rows, k), limit);
                layout.put_tile(tile, &c, k, rows);
                Ok(())
            })?;
        Ok(Self {
            n,
            k,
            layout,
            cells,
        })
    }

    /// The bytes of tile `t` (output rows `16 t ..`).
    pub(super) fn tile(&self, t: usize) -> &[u8] {
        let len = self.layout.tile_bytes(self.k);
        &self.cells[t * len..][..len]
    }

    /// The scale and offset of row `o`'s group `g`.
    pub fn affine(&self, o: usize, g: usize) -> (f32, f32) {
        self.layout.affine(self.tile(o / TILE), g, o % TILE)
    }

    /// Bits kept per code: 4, 5, 6 or 8.
    pub fn bits(&self) -> u32 {
        self.layout.bits
    }
    /// How the groups' scales and offsets are kept.
    pub fn affine_kind(&self) -> Affine {
        self.layout.affine
    }
    pub fn n(&self) -> usize {
        self.n
    }
    pub fn k(&self) -> usize {
        self.k
    }
    pub fn group(&self) -> usize {
        self.layout.group
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.cells.len()
    }

    /// The weight's values `[n, k]`, `scale · code + offset` in f32 (what the file's
    /// dequantizer gives, up to its rounding).
    pub fn dequantize(&self) -> Vec<f32> {
        self.rows(&(0..self.n).collect::<Vec<_>>())
    }

    /// Rows `ids` of the weight's values, one after another (`ids.len() × k`): an embedding
    /// looked up from its codes, so a quantized load keeps no f32 copy of it.
    ///
    /// # Panics
    /// If an id is not below `n`.
    pub fn rows(&self, ids: &[usize]) -> Vec<f32> {
        let l = self.layout;
        let mut out = vec![0f32; ids.len() * self.k];
        for (&o, row) in ids.iter().zip(out.chunks_exact_mut(self.k)) {
            assert!(o < self.n, "QuantWeight::rows: row {o} of {}", self.n);
            let tile = self.tile(o / TILE);
            for (g, xs) in row.chunks_exact_mut(l.group).enumerate() {
                let cell = &tile[l.cell_at(g)..];
                let (s, m) = l.affine(tile, g, o % TILE);
                for (i, x) in xs.iter_mut().enumerate() {
                    *x = s * f32::from(code(cell, l.group, l.bits, i, o % TILE)) + m;
                }
            }
        }
        out
    }
}

/// Rows `first..first + count` of a row-major `[_, cols]` slice; none of an empty one (a
/// factor the layout does not keep).
fn rows_of<T: Copy>(v: &[T], cols: usize, first: usize, count: usize) -> Vec<T> {
    v.get(first * cols..(first + count) * cols)
        .unwrap_or(&[])
        .to_vec()
}

fn assert_group(group: usize, k: usize) {
    assert!(
        GROUPS.contains(&group),
        "QuantWeight: group {group} is not one of {GROUPS:?}"
    );
    assert!(
        k.is_multiple_of(group),
        "QuantWeight: k = {k} is not a multiple of {group}"
    );
}

/// Panics unless every `unit · count` of `c` is its scale or offset.
fn check_factors(c: &TileCodes, (per, shared): (usize, bool), groups: usize, first: usize) {
    let offset_count = if shared {
        &c.scale_count
    } else {
        &c.offset_count
    };
    // A row's groups are whole blocks, so group `i` of the tile is in block `i / per`.
    let blocks = c.scale_unit.iter().zip(&c.offset_unit);
    let groups_of = (c.scale.chunks_exact(per).zip(c.offset.chunks_exact(per))).zip(
        c.scale_count
            .chunks_exact(per)
            .zip(offset_count.chunks_exact(per)),
    );
    for (u, ((&su, &ou), ((s, o), (sc, oc)))) in blocks.zip(groups_of).enumerate() {
        for m in 0..per {
            let (fs, fo) = (su * f32::from(sc[m]), ou * f32::from(oc[m]));
            let i = u * per + m;
            assert!(
                same(fs, s[m]) && same(fo, o[m]),
                "QuantWeight: row {}, group {}: unit · count gives ({fs}, {fo}), not the scale and offset ({}, {})",
                first + i / groups,
                i % groups,
                s[m],
                o[m]
            );
        }
    }
}

/// Panics unless every scale (and offset) of `c` is an f16 value, or the offset is `times ·
/// scale`.
fn check_half(c: &TileCodes, times: Option<f32>, groups: usize, first: usize) {
    for (i, (&s, &o)) in c.scale.iter().zip(&c.offset).enumerate() {
        let offset_ok = match times {
            Some(t) => same(s * t, o),
            None => same(f16::from_f32(o).to_f32(), o),
        };
        assert!(
            same(f16::from_f32(s).to_f32(), s) && offset_ok,
            "QuantWeight: row {}, group {}: scale {s} and offset {o} are not as stored ({times:?} times the scale, or f16)",
            first + i / groups,
            i % groups
        );
    }
}

fn put_f16(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The same bits, or both NaN (a NaN's sign may differ between the two orders; the loader
/// rejects non-finite scales anyway).
fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn put_f32(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub(super) fn f32_at(b: &[u8], at: usize) -> f32 {
    f32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Code `i` (of the group) of lane `j` in a cell. One byte per code: quad `q = i / 4` is the
/// 64 bytes at `64 q`, lane `j`'s four codes at `4 j` in it. Nibbles: quads `2p` and `2p + 1`
/// share the 64 bytes at `64 p`, the first in the low nibbles; plane `k` then holds bit
/// `4 + k` of quad `q`'s 64 codes as the 64 bits at `16 G / 2 + k · 2G + 8 q`, byte `b` of
/// the quad in bit `b`. The kernel builds each quad's bytes from these in registers.
pub(super) fn code(cell: &[u8], group: usize, bits: u32, i: usize, j: usize) -> u8 {
    let (q, b) = (i / 4, j * 4 + i % 4);
    let Some(p) = planes(bits) else {
        return cell[q * 64 + b];
    };
    let low = (cell[(q / 2) * 64 + b] >> (4 * (q % 2))) & 0x0F;
    (0..p).fold(low, |c, k| {
        let at = TILE * group / 2 + k * 2 * group + 8 * q + b / 8;
        c | (((cell[at] >> (b % 8)) & 1) << (4 + k))
    })
}

/// Writes lane `j`'s codes of a group (each below `2^bits`) as [`code`] reads them, into a
/// zeroed cell: a quad (four codes, one `u32`) at a time, its low nibbles with one OR and its
/// bit of each plane gathered into one nibble of a plane byte (a loop over single codes made
/// the layout the slowest part of a quantized load).
fn put_codes(cell: &mut [u8], group: usize, bits: u32, j: usize, v: &[u8]) {
    let Some(p) = planes(bits) else {
        for (q, four) in v.chunks_exact(4).enumerate() {
            cell[q * 64 + 4 * j..][..4].copy_from_slice(four);
        }
        return;
    };
    for (q, four) in v.chunks_exact(4).enumerate() {
        let w = u32::from_le_bytes(four.try_into().expect("a quad"));
        let at = &mut cell[(q / 2) * 64 + 4 * j..][..4];
        let low = u32::from_le_bytes((&*at).try_into().expect("a quad"));
        let low = low | ((w & 0x0F0F_0F0F) << (4 * (q % 2)));
        at.copy_from_slice(&low.to_le_bytes());
        for k in 0..p {
            // Bit `4 + k` of each byte, moved to bits 21-24 by one product (its four partial
            // products land on distinct bits, so nothing carries into them).
            let nibble = (((w >> (4 + k)) & 0x0101_0101).wrapping_mul(0x0020_4081) >> 21) & 0x0F;
            cell[TILE * group / 2 + k * 2 * group + 8 * q + j / 2] |=
                (nibble as u8) << (4 * (j % 2));
        }
    }
}

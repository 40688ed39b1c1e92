//! A variant's safety/over-refusal frontier: the (ASR, over-refusal) points of its erasure
//! strength sweep joined by straight lines, so two variants can be compared at the same ASR
//! (a method that only pushes less would move along the other's line, not below it).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::percentile_interval;

/// Linear interpolation of `y` at `x` along `points` (x, y), sorted by x here; points with
/// the same x are averaged. `None` outside the points' x range (no extrapolation) or without
/// points.
pub fn interpolate(points: &[(f64, f64)], x: f64) -> Option<f64> {
    let mut p: Vec<(f64, f64)> = points.to_vec();
    p.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut merged: Vec<(f64, f64, f64)> = Vec::new(); // x, sum y, count
    for (px, py) in p {
        match merged.last_mut() {
            Some(m) if m.0 == px => {
                m.1 += py;
                m.2 += 1.0;
            }
            _ => merged.push((px, py, 1.0)),
        }
    }
    let m: Vec<(f64, f64)> = merged.into_iter().map(|(x, s, c)| (x, s / c)).collect();
    let (first, last) = (m.first()?, m.last()?);
    if x < first.0 || x > last.0 {
        return None;
    }
    for w in m.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        if x >= x0 && x <= x1 {
            return Some(y0 + (y1 - y0) * (x - x0) / (x1 - x0));
        }
    }
    Some(first.1) // a single point, and x equals it
}

/// `y_a(x) − y_b(x)` at each `x` of `grid` that lies within both curves' ranges.
pub fn matched_differences(a: &[(f64, f64)], b: &[(f64, f64)], grid: &[f64]) -> Vec<(f64, f64)> {
    grid.iter()
        .filter_map(|&x| Some((x, interpolate(a, x)? - interpolate(b, x)?)))
        .collect()
}

/// `n` evenly spaced values from `lo` to `hi`, both ends exact (one value when they are equal
/// or `n` is 1).
pub fn grid(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if n <= 1 || lo == hi {
        return vec![lo];
    }
    (0..n)
        .map(|i| match i {
            0 => lo,
            i if i == n - 1 => hi,
            i => (lo + (hi - lo) * i as f64 / (n - 1) as f64).clamp(lo, hi),
        })
        .collect()
}

/// The x range of a curve; `None` without finite points.
pub fn x_range(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let xs = points.iter().map(|p| p.0).filter(|x| x.is_finite());
    xs.fold(None, |r, x| match r {
        None => Some((x, x)),
        Some((lo, hi)) => Some((f64::min(lo, x), f64::max(hi, x))),
    })
}

/// The x values two curves share: the overlap of their x ranges; `None` when it is empty.
pub fn overlap(a: &[(f64, f64)], b: &[(f64, f64)]) -> Option<(f64, f64)> {
    let ((a0, a1), (b0, b1)) = (x_range(a)?, x_range(b)?);
    let (lo, hi) = (a0.max(b0), a1.min(b1));
    (lo <= hi).then_some((lo, hi))
}

/// The mean of `y_a(x) − y_b(x)` over `grid_n` evenly spaced x spanning the overlap of both
/// curves' x ranges (the curves compared at matched x), with that overlap; `None` when the
/// ranges do not overlap.
pub fn mean_matched_difference(
    a: &[(f64, f64)],
    b: &[(f64, f64)],
    grid_n: usize,
) -> Option<(f64, (f64, f64))> {
    let (lo, hi) = overlap(a, b)?;
    let d = matched_differences(a, b, &grid(lo, hi, grid_n));
    if d.is_empty() {
        return None;
    }
    Some((
        d.iter().map(|p| p.1).sum::<f64>() / d.len() as f64,
        (lo, hi),
    ))
}

/// One line of a safety/over-refusal frontier as per-prompt outcomes: for each point (an
/// erasure strength, in order), whether each harmful prompt's attack succeeded and whether
/// each over-refusal prompt was refused. Every point of every compared line answered the same
/// prompts, index for index.
#[derive(Debug, Clone, PartialEq)]
pub struct LineOutcomes {
    pub harmful: Vec<Vec<bool>>,
    pub overrefusal: Vec<Vec<bool>>,
}

/// Weighted share of `true` (`w[i]` copies of outcome `i`); NaN without weight.
fn weighted_rate(outcomes: &[bool], w: &[u32]) -> f64 {
    let (mut k, mut n) = (0u64, 0u64);
    for (&o, &c) in outcomes.iter().zip(w) {
        n += c as u64;
        k += if o { c as u64 } else { 0 };
    }
    if n == 0 {
        f64::NAN
    } else {
        k as f64 / n as f64
    }
}

impl LineOutcomes {
    /// The line's (ASR, over-refusal) points, each prompt counted `wh[i]` / `wo[i]` times.
    pub fn points_weighted(&self, wh: &[u32], wo: &[u32]) -> Vec<(f64, f64)> {
        self.harmful
            .iter()
            .zip(&self.overrefusal)
            .map(|(h, o)| (weighted_rate(h, wh), weighted_rate(o, wo)))
            .collect()
    }

    /// The line's (ASR, over-refusal) points.
    pub fn points(&self) -> Vec<(f64, f64)> {
        let (nh, no) = self.prompts();
        self.points_weighted(&vec![1; nh], &vec![1; no])
    }

    /// Harmful and over-refusal prompts each point answered.
    pub fn prompts(&self) -> (usize, usize) {
        let n = |v: &Vec<Vec<bool>>| v.first().map(Vec::len).unwrap_or(0);
        (n(&self.harmful), n(&self.overrefusal))
    }
}

/// Over-refusal of line A minus line B at matched ASR, with a paired bootstrap interval.
#[derive(Debug, Clone, PartialEq)]
pub struct FrontierEffect {
    /// Mean over the grid of `or_A(asr) − or_B(asr)`.
    pub effect: f64,
    /// The ASR range both lines cover (the grid spans it).
    pub asr_low: f64,
    pub asr_high: f64,
    /// 95% percentile interval of the effect over the resamples that had an overlap.
    pub ci_low: f64,
    pub ci_high: f64,
    /// Resamples in the interval (those whose lines still overlapped in ASR).
    pub resamples: usize,
}

/// Why a frontier comparison has no effect: the lines' ASR ranges do not overlap (or a line
/// has no point).
#[derive(Debug, Clone, PartialEq)]
pub struct NoOverlap {
    pub asr_a: Option<(f64, f64)>,
    pub asr_b: Option<(f64, f64)>,
}

impl std::fmt::Display for NoOverlap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = |x: Option<(f64, f64)>| match x {
            Some((lo, hi)) => format!("{lo:.3}–{hi:.3}"),
            None => "no point".into(),
        };
        let (a, b) = (r(self.asr_a), r(self.asr_b));
        match (self.asr_a, self.asr_b) {
            (Some((a0, a1)), Some((b0, b1))) if a0.max(b0) == a1.min(b1) => write!(
                f,
                "the lines' ASR ranges meet only at {:.3}, so no ASR range is common ({a} against {b})",
                a0.max(b0)
            ),
            _ => write!(f, "the lines' ASR ranges do not overlap ({a} against {b})"),
        }
    }
}

/// [`mean_matched_difference`] where the lines share a range of ASR values: lines that meet
/// at one ASR value only (in practice the base model's point, which every line starts from
/// and where the difference is 0 by construction) compare nothing.
fn common_range_difference(
    a: &[(f64, f64)],
    b: &[(f64, f64)],
    grid_n: usize,
) -> Option<(f64, (f64, f64))> {
    mean_matched_difference(a, b, grid_n).filter(|(_, (lo, hi))| hi > lo)
}

/// Over-refusal of line `a` minus line `b` compared at matched ASR: the mean over `grid_n`
/// ASR values spanning the overlap of both lines' ASR ranges of the difference of their
/// interpolated over-refusal ([`mean_matched_difference`]). Interval: `resamples` paired
/// bootstrap draws (seeded) of the harmful prompts and of the over-refusal prompts, each with
/// replacement, the same draw for every point of both lines; each draw recomputes both
/// lines, their overlap and the mean, and draws whose lines no longer overlap are left out
/// (counted in [`FrontierEffect::resamples`]). `Err` when the observed lines share no range
/// of ASR values (no overlap, or one value only).
/// Panics when the lines did not answer as many prompts.
pub fn frontier_effect(
    a: &LineOutcomes,
    b: &LineOutcomes,
    grid_n: usize,
    resamples: usize,
    seed: u64,
) -> Result<FrontierEffect, NoOverlap> {
    let (pa, pb) = (a.points(), b.points());
    let Some((effect, (asr_low, asr_high))) = common_range_difference(&pa, &pb, grid_n) else {
        return Err(NoOverlap {
            asr_a: x_range(&pa),
            asr_b: x_range(&pb),
        });
    };
    let (nh, no) = a.prompts();
    assert_eq!(
        (nh, no),
        b.prompts(),
        "frontier lines must answer the same prompts"
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut stats = Vec::with_capacity(resamples);
    for _ in 0..resamples.max(1) {
        let (mut wh, mut wo) = (vec![0u32; nh], vec![0u32; no]);
        (0..nh).for_each(|_| wh[rng.random_range(0..nh)] += 1);
        (0..no).for_each(|_| wo[rng.random_range(0..no)] += 1);
        let (ra, rb) = (a.points_weighted(&wh, &wo), b.points_weighted(&wh, &wo));
        if let Some((d, _)) = common_range_difference(&ra, &rb, grid_n) {
            stats.push(d);
        }
    }
    let (ci_low, ci_high) = percentile_interval(&mut stats);
    Ok(FrontierEffect {
        effect,
        asr_low,
        asr_high,
        ci_low,
        ci_high,
        resamples: stats.len(),
    })
}

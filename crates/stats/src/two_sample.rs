//! Two independent samples of scores (the boundary positions of two roles' prompts).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::dist::normal_cdf;
use crate::percentile_interval;

/// `mean(x) − mean(y)` with a bootstrap interval and a rank test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanDiff {
    pub n_x: u64,
    pub n_y: u64,
    pub mean_x: f64,
    pub mean_y: f64,
    pub diff: f64,
    /// 95% percentile interval, each sample resampled with replacement on its own.
    pub ci_low: f64,
    pub ci_high: f64,
    /// Two-sided Mann–Whitney p-value.
    pub p_value: f64,
    /// `diff` over the pooled standard deviation (Cohen's d).
    pub standardised: f64,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn var(v: &[f64]) -> f64 {
    let m = mean(v);
    v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len().max(2) - 1) as f64
}

/// `None` when either sample is empty.
pub fn mean_diff(x: &[f64], y: &[f64], resamples: usize, seed: u64) -> Option<MeanDiff> {
    if x.is_empty() || y.is_empty() {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut draw = |v: &[f64]| {
        (0..v.len())
            .map(|_| v[rng.random_range(0..v.len())])
            .sum::<f64>()
            / v.len() as f64
    };
    let mut stats: Vec<f64> = (0..resamples.max(1)).map(|_| draw(x) - draw(y)).collect();
    let (ci_low, ci_high) = percentile_interval(&mut stats);
    let (nx, ny) = (x.len() as f64, y.len() as f64);
    let pooled = (((nx - 1.0) * var(x) + (ny - 1.0) * var(y)) / (nx + ny - 2.0).max(1.0)).sqrt();
    let diff = mean(x) - mean(y);
    Some(MeanDiff {
        n_x: x.len() as u64,
        n_y: y.len() as u64,
        mean_x: mean(x),
        mean_y: mean(y),
        diff,
        ci_low,
        ci_high,
        p_value: mann_whitney_p(x, y),
        standardised: if pooled > 0.0 { diff / pooled } else { 0.0 },
    })
}

/// Two-sided Mann–Whitney U test, normal approximation with the tie correction and a
/// continuity correction of ½. 1 when both samples are constant and equal.
pub fn mann_whitney_p(x: &[f64], y: &[f64]) -> f64 {
    let (n1, n2) = (x.len() as f64, y.len() as f64);
    let mut all: Vec<(f64, bool)> = x
        .iter()
        .map(|&v| (v, true))
        .chain(y.iter().map(|&v| (v, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Mid-ranks over ties; Σ(t³ − t) for the variance correction.
    let (mut r1, mut ties, mut i) = (0.0, 0.0, 0);
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let t = (j - i + 1) as f64;
        let rank = (i + j) as f64 / 2.0 + 1.0;
        r1 += rank * all[i..=j].iter().filter(|e| e.1).count() as f64;
        ties += t * t * t - t;
        i = j + 1;
    }
    let u = r1 - n1 * (n1 + 1.0) / 2.0;
    let n = n1 + n2;
    let var = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    if var <= 0.0 {
        return 1.0;
    }
    let z = ((u - n1 * n2 / 2.0).abs() - 0.5).max(0.0) / var.sqrt();
    (2.0 * (1.0 - normal_cdf(z))).min(1.0)
}

//! Intervals for rates: Wilson for independent responses, and a design-effect-widened Wilson
//! interval for responses clustered by prompt.

/// Wilson score interval for `k` successes out of `n` at quantile `z`; `None` for `n == 0`.
///
/// Wilson rather than the normal approximation: evaluation sets here are small (tens to a few
/// hundred prompts) and rates sit near 0 or 1, where the normal interval collapses to zero
/// width or leaves [0, 1].
pub fn wilson(k: f64, n: f64, z: f64) -> Option<(f64, f64)> {
    if n <= 0.0 {
        return None;
    }
    let p = k / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denom;
    let half = z / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(((center - half).max(0.0), (center + half).min(1.0)))
}

/// A rate over responses grouped in clusters (all responses to one prompt).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClusteredRate {
    pub k: u64,
    pub n: u64,
    pub clusters: u64,
    pub value: f64,
    /// Variance of the clustered estimate over that of `n` independent responses (≥ 1).
    pub design_effect: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

/// The rate `Σk / Σn` over clusters `(k, n)` with a 95% interval that accounts for the
/// responses of one cluster being correlated.
///
/// The cluster-robust (ratio-estimator) variance
/// `K/(K−1) · Σ_c (k_c − p·n_c)² / (Σn)²` over the `K` clusters, divided by the binomial
/// variance `p(1−p)/n`, is the design effect `deff` (floored at 1: clustering never makes the
/// evidence stronger than independent draws). The interval is Wilson's at the effective size
/// `n / deff`. At `p ∈ {0, 1}` the variance ratio is undefined and the conservative bound
/// `deff = n / K` (each cluster counts as one response) is used. `None` without responses.
pub fn clustered_rate(clusters: &[(u64, u64)], z: f64) -> Option<ClusteredRate> {
    let k: u64 = clusters.iter().map(|c| c.0).sum();
    let n: u64 = clusters.iter().map(|c| c.1).sum();
    let kk = clusters.iter().filter(|c| c.1 > 0).count() as u64;
    if n == 0 {
        return None;
    }
    let p = k as f64 / n as f64;
    let design_effect = if k == 0 || k == n || kk < 2 {
        n as f64 / kk.max(1) as f64
    } else {
        let ss: f64 = clusters
            .iter()
            .map(|&(ki, ni)| (ki as f64 - p * ni as f64).powi(2))
            .sum();
        let var = kk as f64 / (kk - 1) as f64 * ss / (n as f64).powi(2);
        (var / (p * (1.0 - p) / n as f64)).max(1.0)
    };
    let n_eff = n as f64 / design_effect;
    let (ci_low, ci_high) = wilson(p * n_eff, n_eff, z)?;
    Some(ClusteredRate {
        k,
        n,
        clusters: kk,
        value: p,
        design_effect,
        ci_low,
        ci_high,
    })
}

/// The median of repeated measurements with a distribution-free interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MedianInterval {
    pub n: usize,
    pub median: f64,
    pub low: f64,
    pub high: f64,
    /// The interval's exact coverage for the population median (at least the level asked,
    /// or the widest interval's when `n` is too small to reach it).
    pub coverage: f64,
}

/// The median of `values` and the order-statistic interval `[x_(j), x_(n+1-j)]` for the
/// population median, `j` the largest whose coverage `1 − 2·P(Bin(n, ½) < j)` is at least
/// `level`; with fewer than six values no interval reaches 95% and `[min, max]` is returned
/// with its coverage (`1 − 2⁻⁽ⁿ⁻¹⁾`). `None` without values or with a non-finite one.
///
/// For timings on a shared machine: nothing is assumed of the distribution (slow spells make
/// it skewed and heavy-tailed), only that the rounds are independent draws.
pub fn median_interval(values: &[f64], level: f64) -> Option<MedianInterval> {
    if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    // P(Bin(n, ½) ≤ i) for i = 0, 1, …: coverage of [x_(j), x_(n+1-j)] is 1 − 2·cdf(j − 1).
    let mut pmf = 0.5f64.powi(n as i32);
    let (mut cdf, mut j) = (pmf, 1);
    let coverage = |cdf: f64| (1.0 - 2.0 * cdf).max(0.0);
    while j < n / 2 {
        pmf *= (n - j + 1) as f64 / j as f64;
        if coverage(cdf + pmf) < level {
            break;
        }
        cdf += pmf;
        j += 1;
    }
    Some(MedianInterval {
        n,
        median,
        low: v[j - 1],
        high: v[n - j],
        coverage: coverage(cdf),
    })
}

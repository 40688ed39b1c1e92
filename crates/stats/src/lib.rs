//! mosr-stats: the statistics behind every number the study publishes.
//!
//! Each function is the one place its concept lives, so the eval stage's rates, the claims
//! stage's tests and their hand-computed test cases all use the same formula:
//!
//! * [`dist`]: the normal distribution (cdf, quantile) and the χ²₁ tail.
//! * [`interval`]: Wilson intervals, rates over responses clustered by prompt (several
//!   attacks of one prompt are not independent), widened by the design effect, and the
//!   distribution-free interval of a median (repeated timings).
//! * [`paired`]: paired binary comparisons (two variants answering the same prompts): exact
//!   McNemar, the clustered McNemar of Durkalski et al. (2003), and a seeded paired cluster
//!   bootstrap interval of the difference.
//! * [`two_sample`]: unpaired comparison of two samples of scores (boundary positions of two
//!   roles): difference of means, bootstrap interval, Mann–Whitney p-value.
//! * [`power`]: sample sizes for 80% power (paired McNemar, two samples).
//! * [`frontier`]: interpolation along a trade-off curve, and over-refusal compared at
//!   matched ASR with a paired prompt bootstrap.

pub mod dist;
pub mod frontier;
pub mod interval;
pub mod paired;
pub mod power;
pub mod two_sample;

pub use dist::{Z95, chi2_1_sf, normal_cdf, normal_quantile};
pub use frontier::{
    FrontierEffect, LineOutcomes, NoOverlap, frontier_effect, interpolate, matched_differences,
    mean_matched_difference,
};
pub use interval::{ClusteredRate, MedianInterval, clustered_rate, median_interval, wilson};
pub use paired::{PairedCluster, PairedDiff, clustered_mcnemar_p, mcnemar_exact_p, paired_diff};
pub use power::{max_discordance_for_power, paired_n_for_power, two_sample_n_for_power};
pub use two_sample::{MeanDiff, mann_whitney_p, mean_diff};

/// Bootstrap resamples used for every interval unless a caller says otherwise. 2000 keeps the
/// Monte-Carlo error of a 95% percentile bound near ±0.005 on a rate difference.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;

/// Nearest-rank percentile of sorted values (`q` in [0, 1]); `NaN` for an empty slice.
pub fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The central 95% percentile interval of bootstrap statistics (sorted in place).
pub fn percentile_interval(stats: &mut [f64]) -> (f64, f64) {
    stats.sort_by(f64::total_cmp);
    (
        percentile_sorted(stats, 0.025),
        percentile_sorted(stats, 0.975),
    )
}

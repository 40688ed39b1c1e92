//! Paired binary comparisons: variant A and variant B judged on the same prompts.
//!
//! The unit of resampling is a cluster: one prompt and every response of it in the compared
//! column (one response for a set or a single attack, several for attacks pooled). A
//! difference is `(Σa − Σb) / Σn` over clusters, so it equals the difference of the two
//! rates, and pairs that agree contribute to `n` but not to the tests.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::dist::chi2_1_sf;
use crate::percentile_interval;

/// One prompt's responses in a paired column: how many of `n` responses were positive
/// (attack succeeded, refused, ...) for A and for B, and the discordant pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PairedCluster {
    pub n: u64,
    pub a: u64,
    pub b: u64,
    /// Pairs positive for A only.
    pub a_only: u64,
    /// Pairs positive for B only.
    pub b_only: u64,
}

impl PairedCluster {
    /// A cluster from its pairs of outcomes (A, B).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (bool, bool)>) -> Self {
        let mut c = PairedCluster::default();
        for (a, b) in pairs {
            c.n += 1;
            c.a += a as u64;
            c.b += b as u64;
            c.a_only += (a && !b) as u64;
            c.b_only += (b && !a) as u64;
        }
        c
    }
}

/// A paired difference `rate(A) − rate(B)` with its interval and test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairedDiff {
    /// Responses compared (pairs).
    pub n: u64,
    /// Prompts (clusters).
    pub clusters: u64,
    pub rate_a: f64,
    pub rate_b: f64,
    pub diff: f64,
    /// 95% paired cluster-bootstrap percentile interval of `diff`.
    pub ci_low: f64,
    pub ci_high: f64,
    /// Pairs positive for A only / for B only.
    pub a_only: u64,
    pub b_only: u64,
    /// Two-sided p-value: exact McNemar when every cluster holds one pair, else the clustered
    /// McNemar test (Durkalski et al. 2003).
    pub p_value: f64,
    /// Share of pairs that disagree (the discordance a power calculation needs).
    pub discordance: f64,
}

/// Two-sided exact McNemar p-value for `b` and `c` discordant pairs: twice the binomial(b+c,
/// ½) tail at min(b, c), capped at 1; 1 without discordant pairs.
pub fn mcnemar_exact_p(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let ln_half_n = -(n as f64) * std::f64::consts::LN_2;
    // ln C(n, i) built up term by term; the tail summed with a running log-sum-exp.
    let (mut ln_choose, mut ln_tail) = (0.0f64, f64::NEG_INFINITY);
    for i in 0..=b.min(c) {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        let term = ln_choose + ln_half_n;
        let hi = ln_tail.max(term);
        ln_tail = hi + ((ln_tail - hi).exp() + (term - hi).exp()).ln();
    }
    (2.0 * ln_tail.exp()).min(1.0)
}

/// Clustered McNemar p-value (Durkalski et al. 2003): `X² = (Σ(b_k − c_k))² / Σ(b_k − c_k)²`
/// over clusters, χ²₁ under H0. It needs no within-cluster correlation model; with one pair
/// per cluster it is the usual uncorrected McNemar statistic. 1 when no cluster disagrees.
pub fn clustered_mcnemar_p(clusters: &[PairedCluster]) -> f64 {
    let d: Vec<f64> = clusters
        .iter()
        .map(|c| c.a_only as f64 - c.b_only as f64)
        .collect();
    let den: f64 = d.iter().map(|x| x * x).sum();
    if den == 0.0 {
        return 1.0;
    }
    let num = d.iter().sum::<f64>().powi(2);
    chi2_1_sf(num / den)
}

/// The paired difference of A and B over `clusters`, its seeded bootstrap interval
/// (`resamples` draws of the clusters with replacement) and its McNemar p-value.
/// `None` without pairs.
pub fn paired_diff(clusters: &[PairedCluster], resamples: usize, seed: u64) -> Option<PairedDiff> {
    let sum = |f: fn(&PairedCluster) -> u64| clusters.iter().map(f).sum::<u64>();
    let (n, a, b) = (sum(|c| c.n), sum(|c| c.a), sum(|c| c.b));
    let (a_only, b_only) = (sum(|c| c.a_only), sum(|c| c.b_only));
    if n == 0 {
        return None;
    }
    let diff = (a as f64 - b as f64) / n as f64;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut stats: Vec<f64> = (0..resamples.max(1))
        .map(|_| {
            let (mut dn, mut dd) = (0u64, 0i64);
            for _ in 0..clusters.len() {
                let c = &clusters[rng.random_range(0..clusters.len())];
                dn += c.n;
                dd += c.a as i64 - c.b as i64;
            }
            if dn == 0 { 0.0 } else { dd as f64 / dn as f64 }
        })
        .collect();
    let (ci_low, ci_high) = percentile_interval(&mut stats);
    let single = clusters.iter().all(|c| c.n <= 1);
    let p_value = if single {
        mcnemar_exact_p(a_only, b_only)
    } else {
        clustered_mcnemar_p(clusters)
    };
    Some(PairedDiff {
        n,
        clusters: clusters.iter().filter(|c| c.n > 0).count() as u64,
        rate_a: a as f64 / n as f64,
        rate_b: b as f64 / n as f64,
        diff,
        ci_low,
        ci_high,
        a_only,
        b_only,
        p_value,
        discordance: (a_only + b_only) as f64 / n as f64,
    })
}

//! Sample sizes for 80% power: what an inconclusive verdict would need.

use crate::dist::normal_quantile;

/// Pairs needed for a two-sided McNemar test at level `alpha` to detect a paired difference
/// `delta` with probability `power`, when a share `discordance` of pairs disagree (Connor
/// 1987): `n = (z_{1−α/2}·√ψ + z_{power}·√(ψ − δ²))² / δ²`. The discordance is raised to
/// `|δ|` when smaller (a difference cannot exceed the share of pairs that disagree).
pub fn paired_n_for_power(delta: f64, discordance: f64, alpha: f64, power: f64) -> u64 {
    let d = delta.abs();
    if d == 0.0 {
        return u64::MAX;
    }
    let psi = discordance.max(d);
    let za = normal_quantile(1.0 - alpha / 2.0);
    let zb = normal_quantile(power);
    let n = (za * psi.sqrt() + zb * (psi - d * d).max(0.0).sqrt()).powi(2) / (d * d);
    n.ceil() as u64
}

/// The largest discordance at which `n` pairs still give `power` to detect `delta` (the
/// inverse of [`paired_n_for_power`] in ψ, by bisection on its continuous formula); `None`
/// when even the smallest possible discordance (ψ = |δ|) needs more pairs.
pub fn max_discordance_for_power(n: u64, delta: f64, alpha: f64, power: f64) -> Option<f64> {
    let d = delta.abs();
    let za = normal_quantile(1.0 - alpha / 2.0);
    let zb = normal_quantile(power);
    let need = |psi: f64| (za * psi.sqrt() + zb * (psi - d * d).max(0.0).sqrt()).powi(2) / (d * d);
    let n = n as f64;
    if d == 0.0 || need(d) > n {
        return None;
    }
    if need(1.0) <= n {
        return Some(1.0);
    }
    let (mut lo, mut hi) = (d, 1.0);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if need(mid) <= n { lo = mid } else { hi = mid }
    }
    Some(lo)
}

/// Per-group size for a two-sided two-sample test of means at level `alpha` to detect a
/// standardised difference `d` (difference / pooled SD) with probability `power`:
/// `n = 2 (z_{1−α/2} + z_{power})² / d²`.
pub fn two_sample_n_for_power(d: f64, alpha: f64, power: f64) -> u64 {
    if d == 0.0 || !d.is_finite() {
        return u64::MAX;
    }
    let z = normal_quantile(1.0 - alpha / 2.0) + normal_quantile(power);
    (2.0 * z * z / (d * d)).ceil() as u64
}

//! The verdict rules. A verdict follows from the numbers alone; docs/claims.md states the
//! same rules in words, and the tests check each verdict on synthetic inputs.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Supported,
    Contradicted,
    Inconclusive,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Supported => "supported",
            Verdict::Contradicted => "contradicted",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

/// What a test has to show.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// The effect has the claimed sign.
    Superiority,
    /// The effect is not worse than `margin` in the claimed direction (e.g. ASR not higher
    /// by more than 5 points).
    NonInferiority { margin: f64 },
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Superiority => "superiority",
            Kind::NonInferiority { .. } => "non_inferiority",
        }
    }
    pub fn margin(self) -> f64 {
        match self {
            Kind::Superiority => 0.0,
            Kind::NonInferiority { margin } => margin,
        }
    }
}

/// One test's numbers: the effect's 95% interval and p-value, and the sign the claim gives
/// the effect (+1 or −1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evidence {
    pub kind: Kind,
    pub direction: i32,
    pub ci_low: f64,
    pub ci_high: f64,
    pub p_value: Option<f64>,
}

/// The rule for one test, at level `alpha`.
///
/// Superiority: *supported* when the interval lies entirely on the claimed side of 0 and
/// p < α; *contradicted* when it lies entirely on the other side and p < α; otherwise
/// *inconclusive*. Non-inferiority with margin m (in the claimed direction's units, the
/// effect must not go against the claim by more than m): *supported* when the whole interval
/// is better than −m; *contradicted* when the whole interval is worse than −m; otherwise
/// *inconclusive*.
pub fn test_verdict(e: &Evidence, alpha: f64) -> Verdict {
    let s = e.direction.signum() as f64;
    // The interval in "claimed direction is positive" units.
    let (lo, hi) = if s >= 0.0 {
        (e.ci_low, e.ci_high)
    } else {
        (-e.ci_high, -e.ci_low)
    };
    match e.kind {
        Kind::Superiority => {
            let significant = e.p_value.is_none_or(|p| p < alpha);
            if lo > 0.0 && significant {
                Verdict::Supported
            } else if hi < 0.0 && significant {
                Verdict::Contradicted
            } else {
                Verdict::Inconclusive
            }
        }
        Kind::NonInferiority { margin } => {
            if lo > -margin {
                Verdict::Supported
            } else if hi < -margin {
                Verdict::Contradicted
            } else {
                Verdict::Inconclusive
            }
        }
    }
}

/// A claim's verdict from its tests' verdicts (all parts, all seeds): *contradicted* when any
/// test is contradicted, *supported* when every test is supported, else *inconclusive*. The
/// rule's text says which.
pub fn combine(verdicts: &[Verdict]) -> (Verdict, String) {
    let n = verdicts.len();
    let count = |v: Verdict| verdicts.iter().filter(|&&x| x == v).count();
    let (sup, con) = (count(Verdict::Supported), count(Verdict::Contradicted));
    if n == 0 {
        (Verdict::Inconclusive, "no test could be computed".into())
    } else if con > 0 {
        (
            Verdict::Contradicted,
            format!("{con} of {n} tests contradicted"),
        )
    } else if sup == n {
        (Verdict::Supported, format!("all {n} tests supported"))
    } else {
        (
            Verdict::Inconclusive,
            format!("{sup} of {n} tests supported, none contradicted"),
        )
    }
}

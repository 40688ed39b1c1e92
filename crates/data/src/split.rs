//! Deterministic, seeded splits from a hash of (seed, key): a row's split depends only on its
//! own key, never on file order or on which other rows exist, so adding a source or a curated
//! file does not reshuffle anything else.

use mosr_artifacts::{Split, sha256_bytes};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SplitConfig {
    pub seed: u64,
    /// Share of train; dev is the next `dev` share; test is the rest.
    pub train: f64,
    pub dev: f64,
}

impl Default for SplitConfig {
    /// 70/10/20: enough harmful test prompts (~400) for ASR and probe evaluation.
    fn default() -> Self {
        SplitConfig {
            seed: 2511,
            train: 0.7,
            dev: 0.1,
        }
    }
}

/// A uniform number in [0, 1) from sha256("<seed>:<key>").
pub fn unit_hash(seed: u64, key: &str) -> f64 {
    let h = sha256_bytes(format!("{seed}:{key}").as_bytes());
    let x = u64::from_str_radix(&h[..16], 16).expect("hex");
    (x >> 11) as f64 / (1u64 << 53) as f64
}

pub fn assign(cfg: &SplitConfig, key: &str) -> Split {
    let u = unit_hash(cfg.seed, key);
    if u < cfg.train {
        Split::Train
    } else if u < cfg.train + cfg.dev {
        Split::Dev
    } else {
        Split::Test
    }
}

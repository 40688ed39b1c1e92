//! The JSON manifest each stage writes next to its outputs: what ran, on what, with what.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::atomic::write_bytes_atomic;
use crate::error::{Error, Result};

/// Written as `manifest.json` in a stage folder; enough to tell whether the outputs are stale
/// (config, input hashes, code version) and to report the run (row counts, wall time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageManifest {
    pub stage: String,
    /// The stage key (config + upstream keys); a stage is up to date when it matches.
    #[serde(default)]
    pub key: String,
    /// The stage's full configuration as JSON (the key is derived from it).
    pub config: serde_json::Value,
    /// Input name (file or logical input) -> sha256.
    pub inputs: BTreeMap<String, String>,
    /// Output file name -> sha256.
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    pub code_version: String,
    pub seed: Option<u64>,
    /// Table or group name -> row count.
    pub row_counts: BTreeMap<String, u64>,
    pub wall_time_s: f64,
    /// RFC 3339, UTC.
    pub created: String,
    /// The CPU kernels this machine's model passes take (`mosr_kernels::arithmetic`): runs
    /// agree bit for bit only between machines with the same value.
    #[serde(default)]
    pub cpu_arithmetic: String,
}

impl StageManifest {
    /// A manifest with `created` and `code_version` filled in.
    pub fn new(stage: &str, config: serde_json::Value) -> Self {
        StageManifest {
            stage: stage.to_string(),
            key: String::new(),
            config,
            inputs: BTreeMap::new(),
            outputs: BTreeMap::new(),
            code_version: code_version(),
            seed: None,
            row_counts: BTreeMap::new(),
            wall_time_s: 0.0,
            created: now_rfc3339(),
            cpu_arithmetic: mosr_kernels::arithmetic().to_string(),
        }
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            source: e,
        })?;
        json.push(b'\n');
        write_bytes_atomic(path, &json)
    }

    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            source: e,
        })
    }
}

/// `<crate version>+<git commit>[-dirty]`, or `MOSR_CODE_VERSION` when set (CI, tarballs).
/// Falls back to the crate version alone outside a git checkout.
pub fn code_version() -> String {
    if let Ok(v) = std::env::var("MOSR_CODE_VERSION") {
        return v;
    }
    let base = env!("CARGO_PKG_VERSION");
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(commit) if !commit.is_empty() => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            format!("{base}+{commit}{}", if dirty { "-dirty" } else { "" })
        }
        _ => base.to_string(),
    }
}

/// Current UTC time as RFC 3339 (seconds), without a date-time dependency.
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    rfc3339_from_unix(secs)
}

/// Civil-from-days (H. Hinnant's algorithm) for the proleptic Gregorian calendar.
pub fn rfc3339_from_unix(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

//! Run folders: `<runs root>/<pipeline>/<stage>-<key>/`.
//!
//! The key is a hash of the stage's config and its inputs' hashes, so a changed config or a
//! changed input gets a new folder and an unchanged one is found again (resume, skip).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::hash::sha256_bytes;

/// Hex characters of the sha256 kept in a stage key: 16 (64 bits) is unique enough for the
/// handful of configurations a pipeline has, and keeps folder names readable.
pub const KEY_LEN: usize = 16;

/// Stage key from the config (serialised with sorted keys: serde_json's default map is a
/// BTreeMap) and the input hashes (a BTreeMap, so ordered too).
pub fn stage_key(config: &serde_json::Value, input_hashes: &BTreeMap<String, String>) -> String {
    let payload = serde_json::json!({ "config": config, "inputs": input_hashes });
    let bytes = serde_json::to_vec(&payload).expect("JSON values always serialise");
    sha256_bytes(&bytes)[..KEY_LEN].to_string()
}

/// The folder of one pipeline's runs.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// `runs_root` is usually `<repo>/runs`; the pipeline name becomes a sub-folder.
    pub fn new(runs_root: &Path, pipeline: &str) -> Self {
        RunDir {
            root: runs_root.join(pipeline),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<stage>-<key>` (not created).
    pub fn stage_dir(&self, stage: &str, key: &str) -> PathBuf {
        self.root.join(format!("{stage}-{key}"))
    }

    /// [`RunDir::stage_dir`], created if missing.
    pub fn create_stage_dir(&self, stage: &str, key: &str) -> Result<PathBuf> {
        let dir = self.stage_dir(stage, key);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(dir)
    }

    /// Whether a stage folder holds a manifest: manifests are written last, atomically, so
    /// its presence means the stage completed.
    pub fn is_complete(&self, stage: &str, key: &str) -> bool {
        self.stage_dir(stage, key).join("manifest.json").is_file()
    }
}

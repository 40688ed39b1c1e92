//! Run folders: `<runs root>/<pipeline>/<stage>/`, one folder per stage.
//!
//! A stage's key is a hash of its config and its upstream stages' keys, recorded in its
//! manifest: a stage is up to date when the manifest's key equals the key computed now, so
//! `reproduce` reruns only what changed. Work happens in `.<stage>.partial/` (tagged with the
//! key, kept across a crash so long stages can resume from their own checkpoints) and is
//! renamed into place only when the manifest is written: a stage folder is always complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::hash::sha256_bytes;
use crate::manifest::StageManifest;

/// Hex characters of the sha256 kept in a stage key: 16 (64 bits) is unique enough for the
/// handful of configurations a pipeline has, and keeps keys readable.
pub const KEY_LEN: usize = 16;

/// Stage key from the config (serialised with sorted keys: serde_json's default map is a
/// BTreeMap) and the inputs' keys or hashes (a BTreeMap, so ordered too).
pub fn stage_key(config: &serde_json::Value, input_hashes: &BTreeMap<String, String>) -> String {
    let payload = serde_json::json!({ "config": config, "inputs": input_hashes });
    let bytes = serde_json::to_vec(&payload).expect("JSON values always serialise");
    sha256_bytes(&bytes)[..KEY_LEN].to_string()
}

/// Where one trained (variant, seed) lives inside the finetune stage folder:
/// `<variant>/seed-<seed>`. The finetune stage writes it; eval and the report find it with
/// [`list_instances`].
pub fn instance_dir(variant: &str, seed: u64) -> String {
    format!("{variant}/seed-{seed}")
}

/// An instance's adapter snapshot at training step `step` (the safety/over-refusal frontier's
/// points, `[finetune] frontier_steps`), relative to the instance folder.
pub fn snapshot_dir(step: u64) -> String {
    format!("step-{step}/adapter")
}

/// The complete adapter snapshots of an instance folder (`step-<t>/adapter` with its
/// `adapter_config.json`), as (step, path), in step order.
pub fn list_snapshots(instance: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(instance)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
                .map(|t| (t, instance.join(snapshot_dir(t))))
                .filter(|(_, p)| p.join("adapter_config.json").is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Every `<variant>/seed-<seed>` folder under `stage_dir`, as (variant, seed, path), sorted
/// by variant then seed; other folders are ignored.
pub fn list_instances(stage_dir: &Path) -> Vec<(String, u64, PathBuf)> {
    let subdirs = |p: &Path| -> Vec<(String, PathBuf)> {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for (variant, vdir) in subdirs(stage_dir) {
        for (name, dir) in subdirs(&vdir) {
            if let Some(seed) = name.strip_prefix("seed-").and_then(|s| s.parse().ok()) {
                out.push((variant.clone(), seed, dir));
            }
        }
    }
    out.sort();
    out
}

/// The folder of one pipeline's runs.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

/// The run folder held by this process: an advisory lock on `<run folder>/.lock`, released
/// when dropped or when the process dies (so a killed run leaves no stale lock).
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

/// A stage being computed: write outputs under [`StageWork::dir`], then [`StageWork::commit`].
#[derive(Debug)]
pub struct StageWork {
    stage: String,
    key: String,
    partial: PathBuf,
    target: PathBuf,
    resumed: bool,
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

    /// `<root>/<stage>` (not created).
    pub fn stage_dir(&self, stage: &str) -> PathBuf {
        self.root.join(stage)
    }

    /// The completed stage's manifest, or an error saying the stage has not run.
    pub fn manifest(&self, stage: &str) -> Result<StageManifest> {
        let p = self.stage_dir(stage).join("manifest.json");
        if !p.is_file() {
            return Err(Error::Stage {
                path: p,
                reason: format!(
                    "stage `{stage}` has not completed in this run folder; run it first"
                ),
            });
        }
        StageManifest::read(&p)
    }

    /// Takes the run folder for this process. A second run on the same folder (which would
    /// take the first one's partial folders for a crashed run's) gets an error naming the
    /// holder's PID and start time instead.
    pub fn lock(&self) -> Result<RunLock> {
        std::fs::create_dir_all(&self.root).map_err(|e| Error::io(&self.root, e))?;
        let path = self.root.join(".lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {
                use std::io::Write;
                let holder = format!("pid {} since {}", std::process::id(), crate::now_rfc3339());
                file.set_len(0).map_err(|e| Error::io(&path, e))?;
                file.write_all(holder.as_bytes())
                    .map_err(|e| Error::io(&path, e))?;
                Ok(RunLock { _file: file })
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                Err(Error::Stage {
                    path,
                    reason: format!(
                        "another run is using this run folder ({}); wait for it to finish or stop it",
                        if holder.is_empty() {
                            "holder unknown"
                        } else {
                            holder.trim()
                        }
                    ),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
    }

    /// Whether the stage completed with this key.
    pub fn is_up_to_date(&self, stage: &str, key: &str) -> bool {
        let Ok(m) = self.manifest(stage) else {
            return false;
        };
        if m.key != key {
            return false;
        }
        match self.changed_output(stage, &m) {
            None => true,
            Some(why) => {
                tracing::warn!(stage, "{why}; the stage runs again");
                false
            }
        }
    }

    /// The first output of a completed stage that is missing or no longer has the sha256 its
    /// manifest recorded (a truncated, deleted or swapped file), as a sentence; None when all
    /// match. Up to date means the key *and* the outputs.
    pub fn changed_output(&self, stage: &str, m: &StageManifest) -> Option<String> {
        let dir = self.stage_dir(stage);
        for (rel, want) in &m.outputs {
            let path = dir.join(rel);
            match crate::hash::sha256_file(&path) {
                Err(_) => return Some(format!("{}: missing", path.display())),
                Ok(found) if &found != want => {
                    return Some(format!(
                        "{}: sha256 is {found}, its manifest recorded {want}",
                        path.display()
                    ));
                }
                Ok(_) => {}
            }
        }
        None
    }

    /// Starts (or resumes) work on a stage. A partial folder left by a killed run with the same
    /// key is kept; one with another key is wiped.
    pub fn begin(&self, stage: &str, key: &str) -> Result<StageWork> {
        let partial = self.root.join(format!(".{stage}.partial"));
        let tag = partial.join(".key");
        let resumed = std::fs::read_to_string(&tag)
            .map(|k| k.trim() == key)
            .unwrap_or(false);
        if !resumed && partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
        }
        std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
        if !resumed {
            crate::atomic::write_bytes_atomic(&tag, key.as_bytes())?;
        }
        Ok(StageWork {
            stage: stage.to_string(),
            key: key.to_string(),
            partial,
            target: self.stage_dir(stage),
            resumed,
        })
    }
}

impl StageWork {
    /// Where outputs are written until commit.
    pub fn dir(&self) -> &Path {
        &self.partial
    }
    /// True when a killed run with the same key left work here.
    pub fn resumed(&self) -> bool {
        self.resumed
    }
    pub fn key(&self) -> &str {
        &self.key
    }
    /// Writes the manifest (with the key) and moves the folder into place, replacing the
    /// previous outputs of the stage.
    pub fn commit(self, mut manifest: StageManifest) -> Result<PathBuf> {
        manifest.key = self.key.clone();
        manifest.stage = self.stage.clone();
        let tag = self.partial.join(".key");
        let _ = std::fs::remove_file(&tag);
        manifest.write(&self.partial.join("manifest.json"))?;
        if self.target.exists() {
            let old = self.target.with_extension("old");
            let _ = std::fs::remove_dir_all(&old);
            std::fs::rename(&self.target, &old).map_err(|e| Error::io(&self.target, e))?;
            std::fs::rename(&self.partial, &self.target).map_err(|e| Error::io(&self.target, e))?;
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        } else {
            std::fs::rename(&self.partial, &self.target).map_err(|e| Error::io(&self.target, e))?;
        }
        Ok(self.target)
    }
}

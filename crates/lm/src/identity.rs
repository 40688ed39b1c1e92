//! Which model a run uses, computed once from the bytes that will be loaded.
//!
//! Every stage keys its output on [`ModelIdentity::sha256`] and adapters record it, so a
//! corrupted or swapped model file can never produce results under a good run's key. A
//! registry model's hash must equal its pin (else the error says to refetch); hashes are cached
//! by (path, size, modification time) under `$MOSR_CACHE/hashes/`, so a run rehashes a model
//! only after the file changed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fetch;
use crate::{LmError, Result, sha256_file};

/// A resolved model and the sha256 of its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelIdentity {
    /// The GGUF file or HF folder that is loaded.
    pub path: PathBuf,
    /// A GGUF file's sha256 (for a registry id: equal to its pin); for an HF folder, the
    /// sha256 of the `name sha256` lines of every file the loader reads (configs, tokenizer,
    /// chat template, weight shards), in name order.
    pub sha256: String,
}

/// Resolves `model` (a registry id, a GGUF path or an HF folder) and hashes its content, with
/// the hash cache under [`fetch::cache_root`].
pub fn identify(model: &str) -> Result<ModelIdentity> {
    identify_in(model, &fetch::cache_root())
}

/// [`identify`] with an explicit cache root (tests).
pub fn identify_in(model: &str, cache_root: &Path) -> Result<ModelIdentity> {
    let path = fetch::resolve_in(model, cache_root)?;
    let sha256 = content_sha256(&path, cache_root)?;
    if !Path::new(model).exists() {
        let pin = fetch::spec(model)?.sha256;
        if sha256 != pin {
            return Err(LmError::Fetch(format!(
                "{}: sha256 is {sha256}, the registry pins {pin} for `{model}`: the cached file is corrupted or was replaced; delete it and run `cargo xtask fetch model {model}`",
                path.display()
            )));
        }
    }
    Ok(ModelIdentity { path, sha256 })
}

/// Files of an HF folder that the loader reads.
fn is_model_file(p: &Path) -> bool {
    p.extension()
        .is_some_and(|x| x == "json" || x == "safetensors" || x == "jinja")
}

fn content_sha256(path: &Path, cache_root: &Path) -> Result<String> {
    if path.is_file() {
        return cached_sha256(path, cache_root);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| LmError::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_model_file(p))
        .collect();
    files.sort();
    let mut lines = String::new();
    for f in &files {
        let name = f.file_name().expect("a file").to_string_lossy();
        lines.push_str(&format!("{name} {}\n", cached_sha256(f, cache_root)?));
    }
    Ok(hex::encode(Sha256::digest(lines.as_bytes())))
}

/// One cached hash: valid while the file keeps its size and modification time.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct CachedHash {
    path: PathBuf,
    len: u64,
    modified_ns: u128,
    sha256: String,
}

/// sha256 of a file, from the cache when its path, size and modification time are unchanged.
pub fn cached_sha256(path: &Path, cache_root: &Path) -> Result<String> {
    let canon = path.canonicalize().map_err(|e| LmError::io(path, e))?;
    let meta = std::fs::metadata(&canon).map_err(|e| LmError::io(&canon, e))?;
    let modified_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let key = hex::encode(Sha256::digest(canon.to_string_lossy().as_bytes()));
    let entry = cache_root
        .join("hashes")
        .join(format!("{}.json", &key[..32]));
    let found = std::fs::read(&entry)
        .ok()
        .and_then(|b| serde_json::from_slice::<CachedHash>(&b).ok())
        .filter(|c| c.path == canon && c.len == meta.len() && c.modified_ns == modified_ns);
    if let Some(c) = found {
        return Ok(c.sha256);
    }
    let sha256 = sha256_file(&canon)?;
    let record = CachedHash {
        path: canon,
        len: meta.len(),
        modified_ns,
        sha256: sha256.clone(),
    };
    // A cache that cannot be written (read-only cache folder) only costs a rehash next time.
    let bytes = serde_json::to_vec_pretty(&record).expect("plain record");
    let _ = crate::atomic_write(&entry, &bytes);
    Ok(sha256)
}

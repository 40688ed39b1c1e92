//! `mosr-weights --pipeline FILE`: the weights stage alone.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "mosr-weights",
    about = "Overlap-aware erasure weights (reads augment/training_examples.parquet and extract/representations.parquet)"
)]
struct Cli {
    /// Pipeline TOML file (`[run]` and `[weights]` sections).
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
    let out = mosr_weights::run_pipeline_stage(&file, &cli.repo, cli.force)?;
    println!("{}", out.display());
    Ok(())
}

//! `mosr-report --pipeline FILE`: (re)build `results/<pipeline>/` from a run folder.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "mosr-report",
    about = "Join every stage's metrics into the results report"
)]
struct Cli {
    /// Pipeline file (pipelines/NAME.toml).
    #[arg(long)]
    pipeline: PathBuf,
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
    let repo = std::env::current_dir()?;
    // A stage run alone holds the run folder like `reproduce` does.
    let _lock = file.run_dir(&repo).lock()?;
    let out = mosr_report::run_pipeline_stage(&file, &repo, false)?;
    println!("report: {}", out.join("README.md").display());
    Ok(())
}

//! `mosr-probe`: the probe stage on its own, from a pipeline file.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use mosr_artifacts::PipelineFile;
use mosr_probe::ProbeSection;

#[derive(Parser)]
#[command(
    name = "mosr-probe",
    about = "Per-layer benign-vs-malicious probes and the over-refusal boundary picture"
)]
struct Cli {
    /// Pipeline file; its [probe] section configures the stage.
    #[arg(long)]
    pipeline: PathBuf,
    /// Repository root (run folders are relative to it); default: current directory.
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Recompute even when the stage is up to date.
    #[arg(long)]
    force: bool,
    /// Override [probe] l2.
    #[arg(long)]
    l2: Option<f64>,
    /// Override [probe] layers (comma-separated).
    #[arg(long, value_delimiter = ',')]
    layers: Option<Vec<usize>>,
    /// Print the Markdown summary (probe accuracy and boundary medians per layer).
    #[arg(long)]
    summary: bool,
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
    let repo = cli.repo.clone().unwrap_or(std::env::current_dir()?);
    let file = PipelineFile::load(&cli.pipeline)?;
    // A stage run alone holds the run folder like `reproduce` does.
    let _lock = file.run_dir(&repo).lock()?;
    let mut s: ProbeSection = file.section("probe")?;
    if let Some(v) = cli.l2 {
        s.l2 = v;
    }
    if let Some(v) = cli.layers {
        s.layers = Some(v);
    }
    let out = mosr_probe::run_pipeline_stage_with(&file, &repo, cli.force, s)?;
    if cli.summary {
        print!("{}", std::fs::read_to_string(out.join("summary.md"))?);
    }
    println!("{}", out.display());
    Ok(())
}

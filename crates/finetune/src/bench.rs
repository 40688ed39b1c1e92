//! The LoRA training-step workload of `cargo xtask bench`: the production loop
//! ([`train_variant`], variant `rr`) on deterministic token ids, timed per step from its own
//! log, so what is measured is exactly what the finetune stage runs.
//!
//! One step = `batch` erasure + `batch` retain sequences of `seq` tokens: the original model's
//! states (adapter off, no gradient), the adapter forward (dropout on), both losses at the
//! default layers (1/3 and 2/3 depth; blocks above 2/3 depth are never run), backward through
//! the frozen blocks, gradient clipping and AdamW. `tools/bench/torch_bench.py --workload
//! train` does the same with transformers + PEFT.

use anyhow::{Context, Result};
use mosr_artifacts::training::read_train_log;
use mosr_lm::LanguageModel;

use crate::data::{Seq, TrainData};
use crate::train::{RunOptions, train_variant};
use crate::{FinetuneConfig, Variant};

/// Per-step timings of a run of `warmup + repeats` steps.
#[derive(Debug, Clone)]
pub struct StepBench {
    /// Seconds of each timed step (warm-up steps dropped).
    pub step_s: Vec<f64>,
    /// Tokens per step (erasure + retain rows, no padding).
    pub tokens: usize,
    /// Hidden-state indices of the losses, and the LoRA blocks.
    pub target_layers: Vec<usize>,
    pub retain_layers: Vec<usize>,
    pub lora_layers: Vec<usize>,
}

/// Deterministic ids that avoid special tokens (the rule of `mosr-lm bench` and the Python
/// reference); rows `offset..offset + batch`.
pub fn bench_ids(offset: usize, batch: usize, seq: usize, vocab: usize) -> Vec<Vec<u32>> {
    (offset..offset + batch)
        .map(|b| {
            (0..seq)
                .map(|t| (1000 + (b * 7919 + t * 104_729) % (vocab - 2000)) as u32)
                .collect()
        })
        .collect()
}

pub fn step_bench(
    lm: &LanguageModel,
    batch: usize,
    seq: usize,
    warmup: usize,
    repeats: usize,
) -> Result<StepBench> {
    let vocab = lm.config.vocab_size;
    let seqs = |offset: usize, tag: &str| -> Vec<Seq> {
        bench_ids(offset, batch, seq, vocab)
            .into_iter()
            .enumerate()
            .map(|(i, ids)| Seq {
                id: format!("{tag}-{i}"),
                request: 0..0,
                response: 0..0,
                ids,
                ce_from: None,
                weight: 1.0,
            })
            .collect()
    };
    let data = TrainData {
        harmful: seqs(0, "erasure"),
        retain: seqs(batch, "retain"),
        augmented: Vec::new(),
        augment_refusal_lm: false,
        fitted: Default::default(),
    };
    let steps = warmup + repeats;
    let cfg = FinetuneConfig {
        variants: vec![Variant::Rr],
        steps,
        batch_size: batch,
        max_prompt_tokens: seq,
        max_response_tokens: seq,
        // Synthetic ids have no chat spans: every token is in the losses.
        loss_tokens: crate::LossTokens::All,
        checkpoint_every: steps,
        ..FinetuneConfig::default()
    };
    let res = cfg.resolve(lm.config.num_layers)?;
    let dir = std::env::temp_dir().join(format!("mosr-step-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    train_variant(
        &cfg,
        lm,
        "bench",
        "bench",
        0,
        &data,
        Variant::Rr,
        &dir,
        &RunOptions::default(),
    )?;
    let log = read_train_log(&dir.join("train_log.parquet"))
        .with_context(|| format!("reading the bench's train log in {}", dir.display()))?;
    let _ = std::fs::remove_dir_all(&dir);
    let tokens = log.first().map(|r| r.tokens as usize).unwrap_or(0);
    Ok(StepBench {
        step_s: log
            .iter()
            .skip(warmup)
            .map(|r| r.tokens as f64 / r.tokens_per_s)
            .collect(),
        tokens,
        target_layers: res.target_layers,
        retain_layers: res.retain_layers,
        lora_layers: res.lora.layers,
    })
}

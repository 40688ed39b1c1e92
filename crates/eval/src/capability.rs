//! Capability: multiple-choice accuracy (MMLU, ARC) by log-likelihood of the answer options,
//! on a seeded subset of `capability.parquet`.
//!
//! Two formats ([R]: which one MOSR used is not known; lm-evaluation-harness has both):
//! * `cloze` (default): "Question: q\nAnswer:" scored against each option text; the score is
//!   the option's log-likelihood divided by its length in bytes (`normalise = "bytes"`, the
//!   harness's `acc_norm`), or in tokens, or not divided;
//! * `letter`: the options listed as "A. ..", "B. .." in the prompt, scored by the
//!   log-likelihood of " A", " B", ...
//!
//! The prompt is plain text, not a chat turn, as in the harness: the same prompt for every
//! variant, so differences come from the weights.

use anyhow::{Result, bail};
use mosr_artifacts::eval::CapabilityItemRow;
use mosr_artifacts::{CapabilityRow, Size};
use mosr_lm::LanguageModel;
use serde::{Deserialize, Serialize};

use crate::likelihood::{Choices, shared_context_logprobs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Cloze,
    Letter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalise {
    Bytes,
    Tokens,
    None,
}

/// `[eval.capability]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CapabilityConfig {
    /// Benchmarks of `capability.parquet` to score. Default mmlu, arc_easy, arc_challenge.
    pub benchmarks: Vec<String>,
    /// Items per benchmark, a seeded sample, or `"all"`. Default 100.
    pub n: Size,
    /// Benchmark split to sample from; MMLU's `dev` split is for few-shot examples, so the
    /// default is each benchmark's evaluation split (`test` for MMLU, `validation` for ARC).
    pub splits: Vec<String>,
    /// Default `cloze`.
    pub format: Format,
    /// Cloze score normalisation. Default `bytes`.
    pub normalise: Normalise,
    /// Sequences per forward. Default 8.
    pub batch_size: usize,
}

impl Default for CapabilityConfig {
    fn default() -> Self {
        Self {
            benchmarks: vec!["mmlu".into(), "arc_easy".into(), "arc_challenge".into()],
            n: Size::Count(100),
            splits: vec!["test".into(), "validation".into()],
            format: Format::Cloze,
            normalise: Normalise::Bytes,
            batch_size: 8,
        }
    }
}

const LETTERS: [&str; 10] = ["A", "B", "C", "D", "E", "F", "G", "H", "I", "J"];

/// Context text and the option continuations of one item.
pub fn render(cfg: &CapabilityConfig, row: &CapabilityRow) -> (String, Vec<String>) {
    match cfg.format {
        Format::Cloze => (
            format!("Question: {}\nAnswer:", row.question.trim()),
            row.choices
                .iter()
                .map(|c| format!(" {}", c.trim()))
                .collect(),
        ),
        Format::Letter => {
            let mut ctx = format!("Question: {}\n", row.question.trim());
            for (l, c) in LETTERS.iter().zip(&row.choices) {
                ctx.push_str(&format!("{l}. {}\n", c.trim()));
            }
            ctx.push_str("Answer:");
            (
                ctx,
                LETTERS[..row.choices.len()]
                    .iter()
                    .map(|l| format!(" {l}"))
                    .collect(),
            )
        }
    }
}

/// Scores of each option (higher is likelier) for every item, in input order.
pub fn option_scores(
    lm: &LanguageModel,
    cfg: &CapabilityConfig,
    rows: &[CapabilityRow],
    adapter: bool,
) -> Result<Vec<Vec<f64>>> {
    let mut items = Vec::new();
    let mut norms = Vec::new();
    for r in rows {
        if r.choices.len() < 2 || r.choices.len() > LETTERS.len() {
            bail!("capability item `{}` has {} options", r.id, r.choices.len());
        }
        let (ctx, conts) = render(cfg, r);
        let context = lm.encode(&ctx, false)?;
        if context.is_empty() {
            bail!("capability item `{}`: empty prompt", r.id);
        }
        let mut continuations = Vec::new();
        let mut n = Vec::new();
        for c in conts {
            let ids = lm.encode(&c, false)?;
            if ids.is_empty() {
                bail!("capability item `{}`: an option encodes to no tokens", r.id);
            }
            n.push(match (cfg.format, cfg.normalise) {
                (Format::Letter, _) | (_, Normalise::None) => 1.0,
                (_, Normalise::Bytes) => c.len().max(1) as f64,
                (_, Normalise::Tokens) => ids.len() as f64,
            });
            continuations.push(ids);
        }
        items.push(Choices {
            context,
            continuations,
        });
        norms.push(n);
    }
    let lps = shared_context_logprobs(lm, &items, adapter, cfg.batch_size);
    Ok(lps
        .iter()
        .zip(&norms)
        .map(|(opts, n)| {
            opts.iter()
                .zip(n)
                .map(|(lp, d)| lp.iter().map(|&x| x as f64).sum::<f64>() / d)
                .collect()
        })
        .collect())
}

/// Index of the best score (the first one on ties) and the margin of the correct option
/// over the best other one.
pub fn decide(scores: &[f64], answer: usize) -> (usize, f64) {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    let other = scores
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != answer)
        .map(|(_, &s)| s)
        .fold(f64::NEG_INFINITY, f64::max);
    (best, scores[answer] - other)
}

/// Scores a benchmark's sampled items for one variant.
pub fn score(
    lm: &LanguageModel,
    cfg: &CapabilityConfig,
    variant: &str,
    rows: &[CapabilityRow],
    adapter: bool,
) -> Result<Vec<CapabilityItemRow>> {
    let scores = option_scores(lm, cfg, rows, adapter)?;
    rows.iter()
        .zip(scores)
        .map(|(r, s)| {
            let answer = r
                .answer_index
                .filter(|&a| a >= 0 && (a as usize) < r.choices.len())
                .ok_or_else(|| {
                    anyhow::anyhow!("capability item `{}` has no valid answer_index", r.id)
                })? as usize;
            let (pred, margin) = decide(&s, answer);
            Ok(CapabilityItemRow {
                variant: variant.to_string(),
                seed: None,
                benchmark: r.benchmark.clone(),
                item_id: r.id.clone(),
                predicted: pred as i32,
                answer_index: answer as i32,
                correct: pred == answer,
                margin,
            })
        })
        .collect()
}

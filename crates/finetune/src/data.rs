//! The training sequences: tokenised from the augment stage's table with the chat template's
//! own request span, truncated without losing the template, and the token masks of the
//! losses (which tokens erasure and retain see).

use std::collections::HashMap;
use std::ops::Range;

use anyhow::{Result, bail};
use mosr_artifacts::training::{TrainingExample, read_overlap_weights, read_training_examples};
use mosr_lm::{LanguageModel, Message};
use serde::{Deserialize, Serialize};

use crate::{FinetuneConfig, FinetuneInputs, LossTokens, Truncation, Variant};

/// One tokenised training sequence: chat-formatted prompt, then the response tokens.
#[derive(Debug, Clone)]
pub struct Seq {
    pub id: String,
    pub ids: Vec<u32>,
    /// Tokens of the request (the user message's content, as the template renders it).
    pub request: Range<usize>,
    /// Tokens of the response (everything after the prompt).
    pub response: Range<usize>,
    /// Refusal-LM target: index of the first refusal token.
    pub ce_from: Option<usize>,
    /// Overlap weight (1 without weights).
    pub weight: f64,
}

impl Seq {
    /// Which of this sequence's tokens a loss covers. `All` leaves out the first `skip_sink`
    /// tokens (the attention sink; see `FinetuneConfig::skip_sink_tokens`) but keeps at least
    /// the last token; the spans never contain the sink.
    pub fn loss_positions(&self, tokens: LossTokens, skip_sink: usize) -> Vec<bool> {
        let n = self.ids.len();
        let in_span = |r: &Range<usize>, i: usize| r.contains(&i);
        (0..n)
            .map(|i| match tokens {
                LossTokens::All => i >= skip_sink.min(n.saturating_sub(1)),
                LossTokens::Response => in_span(&self.response, i),
                LossTokens::RequestAndResponse => {
                    in_span(&self.request, i) || in_span(&self.response, i)
                }
            })
            .collect()
    }
}

/// What happened to over-long prompts of one set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fitted {
    /// Prompts whose request tail was cut.
    pub truncated: usize,
    /// Examples left out (`truncation = "drop"`, or not even the template fits).
    pub dropped: usize,
}

/// Fits a chat prompt into `max` tokens. The template (BOS, system prompt, role markers) and
/// the start of the request are kept; the request's tail is cut (`RequestTail`), so a
/// truncated prompt still looks like what the model sees at evaluation. None: the example is
/// dropped (`Drop`, or fewer than one request token would remain).
pub fn fit_prompt(
    ids: &[u32],
    request: Range<usize>,
    max: usize,
    truncation: Truncation,
) -> Option<(Vec<u32>, Range<usize>)> {
    if ids.len() <= max {
        return Some((ids.to_vec(), request));
    }
    let excess = ids.len() - max;
    if truncation == Truncation::Drop || excess >= request.len() {
        return None;
    }
    let cut = request.end - excess;
    let mut out = ids[..cut].to_vec();
    out.extend_from_slice(&ids[request.end..]);
    Some((out, request.start..cut))
}

/// Tokenises one example; `refusal_lm` marks where its refusal starts. None: dropped by
/// [`fit_prompt`].
fn tokenize(
    lm: &LanguageModel,
    cfg: &FinetuneConfig,
    e: &TrainingExample,
    refusal_lm: bool,
    fitted: &mut Fitted,
) -> Result<Option<Seq>> {
    let (full, request) = lm.chat_ids_with_request(&[Message::user(e.prompt.clone())], None)?;
    let Some((p, request)) = fit_prompt(&full, request, cfg.max_prompt_tokens, cfg.truncation)
    else {
        fitted.dropped += 1;
        return Ok(None);
    };
    if p.len() < full.len() {
        fitted.truncated += 1;
    }
    let (mut r, ce_start) = match (&e.refusal, refusal_lm) {
        (Some(refusal), true) if e.response.ends_with(refusal.as_str()) => {
            let head = &e.response[..e.response.len() - refusal.len()];
            let mut r = lm.encode(head, false)?;
            let start = r.len();
            r.extend(lm.encode(refusal, false)?);
            (r, Some(start))
        }
        _ => (lm.encode(&e.response, false)?, None),
    };
    r.truncate(cfg.max_response_tokens);
    let ce_from = ce_start.filter(|&s| s < r.len()).map(|s| p.len() + s);
    let response = p.len()..p.len() + r.len();
    let mut ids = p;
    ids.extend(r);
    Ok(Some(Seq {
        id: e.example_id.clone(),
        ids,
        request,
        response,
        ce_from,
        weight: 1.0,
    }))
}

/// The sequences one variant trains on.
#[derive(Debug, Clone)]
pub struct TrainData {
    pub harmful: Vec<Seq>,
    pub retain: Vec<Seq>,
    pub augmented: Vec<Seq>,
    /// Augmented sequences train their refusal as a language-modelling target
    /// (`refusal_lm`) instead of keeping the original model's states (`retain_states`).
    pub augment_refusal_lm: bool,
    /// Over-long prompts per set (harmful, retain, augmented).
    pub fitted: [Fitted; 3],
}

fn tokenize_all(
    lm: &LanguageModel,
    cfg: &FinetuneConfig,
    rows: &[&TrainingExample],
    refusal_lm: bool,
    fitted: &mut Fitted,
) -> Result<Vec<Seq>> {
    let mut out = Vec::with_capacity(rows.len());
    for e in rows {
        out.extend(tokenize(lm, cfg, e, refusal_lm, fitted)?);
    }
    Ok(out)
}

impl TrainData {
    /// Reads and tokenises the sets `variant` needs; missing sets, sets that truncation
    /// empties and a weights artifact that does not cover the harmful examples are errors
    /// naming the file.
    pub fn load(
        cfg: &FinetuneConfig,
        lm: &LanguageModel,
        inputs: &FinetuneInputs,
        variant: Variant,
    ) -> Result<Self> {
        let file = &inputs.examples;
        let rows = read_training_examples(file)?;
        let of = |set: &str| rows.iter().filter(|e| e.set == set).collect::<Vec<_>>();
        let (h, r, a) = (of("harmful"), of("retain"), of("augmented"));
        if h.is_empty() {
            bail!(
                "{}: empty training set: no harmful examples (set = harmful), the erasure branch has nothing to train on",
                file.display()
            );
        }
        if r.is_empty() {
            bail!(
                "{}: empty training set: no retain examples (set = retain)",
                file.display()
            );
        }
        if variant.uses_augment() && a.is_empty() {
            bail!(
                "{}: variant `{}` uses the context-aware augmentation, but the file has no augmented examples",
                file.display(),
                variant.name()
            );
        }
        let refusal_lm = a.iter().any(|e| e.loss_branch == "cross_entropy");
        if refusal_lm && a.iter().any(|e| e.loss_branch != "cross_entropy") {
            bail!(
                "{}: augmented examples mix the retain and cross_entropy branches",
                file.display()
            );
        }
        let mut fitted = [Fitted::default(); 3];
        let mut harmful = tokenize_all(lm, cfg, &h, false, &mut fitted[0])?;
        if variant.uses_weights() {
            attach_weights(&mut harmful, &h, file, inputs, variant)?;
        }
        let retain = tokenize_all(lm, cfg, &r, false, &mut fitted[1])?;
        let augmented = if variant.uses_augment() {
            tokenize_all(lm, cfg, &a, refusal_lm, &mut fitted[2])?
        } else {
            vec![]
        };
        for (set, seqs, n) in [
            ("harmful", &harmful, h.len()),
            ("retain", &retain, r.len()),
            (
                "augmented",
                &augmented,
                if variant.uses_augment() { a.len() } else { 0 },
            ),
        ] {
            if n > 0 && seqs.is_empty() {
                bail!(
                    "{}: all {n} {set} examples are longer than max_prompt_tokens = {} (truncation = {:?}); raise the limit",
                    file.display(),
                    cfg.max_prompt_tokens,
                    cfg.truncation
                );
            }
        }
        Ok(Self {
            harmful,
            retain,
            augmented,
            augment_refusal_lm: refusal_lm,
            fitted,
        })
    }
}

/// Gives each harmful sequence its overlap weight; an example without one is an error naming
/// the weights file.
fn attach_weights(
    harmful: &mut [Seq],
    rows: &[&TrainingExample],
    file: &std::path::Path,
    inputs: &FinetuneInputs,
    variant: Variant,
) -> Result<()> {
    let Some(wpath) = &inputs.weights else {
        bail!(
            "variant `{}` needs the overlap weights (weights/overlap_weights.parquet), but none were given",
            variant.name()
        );
    };
    let w = read_overlap_weights(wpath)?;
    let by_id: HashMap<&str, &mosr_artifacts::training::OverlapWeightRow> =
        w.iter().map(|r| (r.example_id.as_str(), r)).collect();
    let bad: Vec<&str> = rows
        .iter()
        .filter(|e| {
            by_id
                .get(e.example_id.as_str())
                .is_none_or(|r| r.prompt_id != e.prompt_id)
        })
        .map(|e| e.example_id.as_str())
        .collect();
    if !bad.is_empty() {
        bail!(
            "{}: mismatched overlap weights: {} of the {} harmful examples of {} have no weight (first: {}); the weights were computed for another training set, re-run the weights stage",
            wpath.display(),
            bad.len(),
            rows.len(),
            file.display(),
            bad[..bad.len().min(3)].join(", ")
        );
    }
    for s in harmful {
        s.weight = by_id[s.id.as_str()].weight;
    }
    Ok(())
}

/// Overlap weights of one micro-batch rescaled so that their token-weighted mean is 1
/// (`tokens[i]` = loss tokens of row i): the erasure term keeps the scale it has without
/// weights, so weighting moves erasure between examples and does not act as a different
/// learning rate.
pub fn normalize_batch_weights(weights: &[f64], tokens: &[usize]) -> Vec<f64> {
    let n: usize = tokens.iter().sum();
    let mass: f64 = weights.iter().zip(tokens).map(|(w, &t)| w * t as f64).sum();
    if n == 0 || mass <= 0.0 {
        return weights.to_vec();
    }
    let k = n as f64 / mass;
    weights.iter().map(|w| w * k).collect()
}

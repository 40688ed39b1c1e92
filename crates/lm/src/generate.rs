//! Batched generation with a KV cache: left-padded prompts, greedy or temperature/top-p
//! sampling, stopping per row on an end-of-turn token or the token budget.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{ForwardOptions, KvCache, Logits, TokenBatch};
use crate::{LanguageModel, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateConfig {
    #[serde(default = "default_max_new")]
    pub max_new_tokens: usize,
    /// 0 means greedy.
    #[serde(default)]
    pub temperature: f64,
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    #[serde(default)]
    pub seed: u64,
    /// Generate through the LoRA adapter if the model has one.
    #[serde(default = "yes")]
    pub adapter: bool,
    /// Keep generating past end-of-turn tokens (benchmarks need a fixed token count).
    #[serde(default)]
    pub ignore_eos: bool,
}

fn default_max_new() -> usize {
    64
}
fn default_top_p() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}

impl Default for GenerateConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: default_max_new(),
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            adapter: true,
            ignore_eos: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    EndOfTurn,
    Length,
}

#[derive(Debug, Clone)]
pub struct Generation {
    /// New tokens, without the stop token.
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: Finish,
}

fn pick(row: &[f32], cfg: &GenerateConfig, rng: &mut ChaCha8Rng) -> u32 {
    if cfg.temperature <= 0.0 {
        let mut best = 0usize;
        for (i, &v) in row.iter().enumerate() {
            if v > row[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(usize, f64)> = row
        .iter()
        .enumerate()
        .map(|(i, &v)| (i, ((v as f64 - max) / cfg.temperature).exp()))
        .collect();
    let z: f64 = probs.iter().map(|p| p.1).sum();
    probs.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
    let mut kept = Vec::new();
    let mut acc = 0.0;
    for (i, p) in probs {
        let p = p / z;
        kept.push((i, p));
        acc += p;
        if acc >= cfg.top_p {
            break;
        }
    }
    let total: f64 = kept.iter().map(|k| k.1).sum();
    let mut u = rng.random::<f64>() * total;
    for (i, p) in &kept {
        if u < *p {
            return *i as u32;
        }
        u -= p;
    }
    kept.last().map(|k| k.0 as u32).unwrap_or(0)
}

/// Generates for a batch of tokenised prompts. Rows that have finished leave the batch (and
/// its KV cache) where each row's decode step does not depend on the rows beside it
/// ([`crate::CausalLm::decodes_rows_alone`]), so their steps cost nothing and the answers are
/// the same bits as with them kept.
pub fn generate(
    model: &LanguageModel,
    prompts: &[Vec<u32>],
    cfg: &GenerateConfig,
) -> Result<Vec<Generation>> {
    generate_timed(model, prompts, cfg).map(|(g, _)| g)
}

/// Wall time of a generation's two phases.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GenerationTiming {
    /// From the call to the first new token of every row: the prompts' forward pass.
    pub prefill_s: f64,
    /// The steps after it, to the last new token.
    pub decode_s: f64,
}

/// [`generate`], timing the prefill apart from the decode steps: a benchmark reads both rates
/// from one run instead of subtracting two runs' times, where a slow spell over either run
/// would land in the difference.
pub fn generate_timed(
    model: &LanguageModel,
    prompts: &[Vec<u32>],
    cfg: &GenerateConfig,
) -> Result<(Vec<Generation>, GenerationTiming)> {
    let start = std::time::Instant::now();
    let mut first_token = None;
    let b = prompts.len();
    if b == 0 {
        return Ok((vec![], GenerationTiming::default()));
    }
    let stops = &model.config.eos_token_ids;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut batch = TokenBatch::left_padded(prompts, model.pad_id);
    // The last new token is never fed back.
    let mut cache = KvCache::with_room(batch.seq + cfg.max_new_tokens.saturating_sub(1));
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); b];
    let mut finish: Vec<Option<Finish>> = vec![None; b];
    let opts = ForwardOptions {
        hidden: false,
        num_layers: None,
        logits: Logits::Last,
        adapter: cfg.adapter,
        dropout: None,
        training_arithmetic: false,
        skip_padding: true,
    };
    let vocab = model.config.vocab_size;
    let compact = model.net.decodes_rows_alone(b);
    // The prompt row of each batch row.
    let mut rows: Vec<usize> = (0..b).collect();
    for _step in 0..cfg.max_new_tokens {
        let o = model.net.forward(&batch, Some(&mut cache), opts);
        let logits = o.logits.expect("logits requested");
        let data = logits
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("f32 logits");
        let mut next = Vec::with_capacity(rows.len());
        for (i, &row) in rows.iter().enumerate() {
            if finish[row].is_some() {
                next.push(None);
                continue;
            }
            let logits = &data[i * vocab..(i + 1) * vocab];
            if !logits.iter().all(|v| v.is_finite()) {
                return Err(crate::LmError::NonFinite {
                    file: model.path.clone(),
                    step: out[row].len(),
                    sequence: row,
                    batch: b,
                });
            }
            let tok = pick(logits, cfg, &mut rng);
            if !cfg.ignore_eos && stops.contains(&tok) {
                finish[row] = Some(Finish::EndOfTurn);
                next.push(None);
            } else {
                out[row].push(tok);
                next.push(Some(tok));
            }
        }
        first_token.get_or_insert_with(|| start.elapsed().as_secs_f64());
        if finish.iter().all(|f| f.is_some()) {
            break;
        }
        if compact && next.contains(&None) {
            let keep: Vec<usize> = (0..rows.len()).filter(|&i| next[i].is_some()).collect();
            cache.select_rows(&keep);
            rows = keep.iter().map(|&i| rows[i]).collect();
            next.retain(Option::is_some);
        }
        batch = TokenBatch {
            ids: next.iter().map(|t| t.unwrap_or(model.pad_id)).collect(),
            mask: next.iter().map(Option::is_some).collect(),
            batch: next.len(),
            seq: 1,
        };
    }
    let total = start.elapsed().as_secs_f64();
    let prefill_s = first_token.unwrap_or(total);
    let timing = GenerationTiming {
        prefill_s,
        decode_s: total - prefill_s,
    };
    let generations = out
        .into_iter()
        .zip(finish)
        .map(|(tokens, f)| {
            let text = model.decode(&tokens, true)?;
            Ok(Generation {
                tokens,
                text,
                finish: f.unwrap_or(Finish::Length),
            })
        })
        .collect::<Result<_>>()?;
    Ok((generations, timing))
}

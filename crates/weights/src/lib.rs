//! mosr-weights: overlap-aware loss weighting (MOSR's first component).
//!
//! Each harmful training example x_i gets an overlap score
//! `s_i = agg_j cos(h(x_i), h(p_j))` over the pseudo-malicious bank {p_j}, in the frozen
//! model's representation space (the `representations` table of the extract stage), and an
//! erasure weight `w_i` that decreases in `s_i` and averages 1 over the harmful set, so that
//! harmful examples that look like over-refusal prompts are erased less hard while the overall
//! erasure strength stays that of the unweighted circuit breaker. The weights are computed
//! once with the frozen model ([R]: the paper's "cost-efficient" remark suggests fixed-once).
//!
//! The output keeps s_i and the nearest bank prompt ids beside w_i, so a user can see why an
//! example was down-weighted.

pub mod reps;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use mosr_artifacts::StageWork;
use mosr_artifacts::training::{
    OverlapWeightRow, TrainingExample, read_training_examples, write_overlap_weights,
};
use mosr_artifacts::{StageManifest, sha256_file};
use mosr_stage::{Ctx, Planned};
use serde::{Deserialize, Serialize};
use tracing::info;

/// How the similarities to the bank are reduced to one score per harmful example ([R]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    Mean,
    Max,
    /// Mean of the `top_k` largest similarities.
    TopKMean,
}

/// How a score becomes a weight ([R]); both give weights decreasing in s_i, mean 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weighting {
    /// `w_i = exp(-s_i / temperature) / mean_k exp(-s_k / temperature)`.
    Softmax,
    /// `w_i ∝ 1 - strength * (s_i - min s) / (max s - min s)`, rescaled to mean 1.
    MinMax,
}

/// How several layers are combined ([R]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerCombine {
    /// Cosine of the layer-averaged states (the notes' h̄ "averaged over l").
    MeanState,
    /// Mean over layers of the per-layer cosine.
    MeanCosine,
}

/// `[weights]` section. Every field is a reconstructed ([R]) choice of MOSR's Eq. 3-4.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeightsConfig {
    /// Representation layers (0 = embedding output, l = output of block l). Empty (default):
    /// about 1/3 and 2/3 of the extracted depth, the default erasure target layers.
    pub layers: Vec<i32>,
    /// Token position of the representation; default `last_prompt_token` (the extract default).
    pub position_kind: String,
    /// Default `mean_state`.
    pub layer_combine: LayerCombine,
    /// Default `mean`.
    pub aggregate: Aggregate,
    /// k of `top_k_mean`; default 5.
    pub top_k: usize,
    /// Default `min_max`: bounded and independent of the model's similarity scale.
    pub weighting: Weighting,
    /// Softmax temperature; default 0.05 (cosine scores of one model span about 0.1-0.3).
    pub temperature: f64,
    /// Min-max strength λ in [0, 1]; default 0.5 (the most overlapping example gets half the
    /// raw weight of the least overlapping one).
    pub strength: f64,
    /// Optional lower bound of w_i (applied with the mean-1 constraint kept); default none.
    pub clip_min: Option<f64>,
    /// Optional upper bound of w_i; default none.
    pub clip_max: Option<f64>,
    /// How many nearest bank prompts to record per example; default 3.
    pub nearest: usize,
    /// Role of the bank prompts in `representations`; default `pseudo_malicious`.
    pub bank_role: String,
}

impl Default for WeightsConfig {
    fn default() -> Self {
        Self {
            layers: vec![],
            position_kind: "last_prompt_token".into(),
            layer_combine: LayerCombine::MeanState,
            aggregate: Aggregate::Mean,
            top_k: 5,
            weighting: Weighting::MinMax,
            temperature: 0.05,
            strength: 0.5,
            clip_min: None,
            clip_max: None,
            nearest: 3,
            bank_role: "pseudo_malicious".into(),
        }
    }
}

impl WeightsConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            bail!("weights: temperature {} must be positive", self.temperature);
        }
        if !(0.0..=1.0).contains(&self.strength) {
            bail!("weights: strength {} must be in [0, 1]", self.strength);
        }
        if self.top_k == 0 {
            bail!("weights: top_k must be at least 1");
        }
        if let Some(lo) = self.clip_min
            && !(lo.is_finite() && (0.0..=1.0).contains(&lo))
        {
            bail!("weights: clip_min {lo} must be in [0, 1] (the weights average 1)");
        }
        if let Some(hi) = self.clip_max
            && !(hi.is_finite() && hi >= 1.0)
        {
            bail!("weights: clip_max {hi} must be at least 1 (the weights average 1)");
        }
        Ok(())
    }
}

/// Default target layers of a model whose deepest extracted layer is `depth`: about 1/3 and
/// 2/3 of the depth (circuit breakers use 10 and 20 of 32).
pub fn default_layers(depth: i32) -> Vec<i32> {
    let a = ((depth as f64) / 3.0).round() as i32;
    let b = ((2.0 * depth as f64) / 3.0).round() as i32;
    let mut v = vec![a.max(1), b.max(1)];
    v.dedup();
    v
}

/// Cosine similarity in f64 (0 when either vector is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (*x as f64, *y as f64);
        d += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        d / (na.sqrt() * nb.sqrt())
    }
}

/// Reduces one example's similarities to the bank to its overlap score s_i.
pub fn aggregate(sims: &[f64], how: Aggregate, top_k: usize) -> f64 {
    match how {
        Aggregate::Mean => sims.iter().sum::<f64>() / sims.len() as f64,
        Aggregate::Max => sims.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        Aggregate::TopKMean => {
            let mut s = sims.to_vec();
            s.sort_by(|a, b| b.total_cmp(a));
            let k = top_k.min(s.len());
            s[..k].iter().sum::<f64>() / k as f64
        }
    }
}

/// Weights decreasing in the scores, mean 1 (before clipping).
pub fn weights_from_scores(scores: &[f64], cfg: &WeightsConfig) -> Vec<f64> {
    let n = scores.len();
    if n == 0 {
        return vec![];
    }
    let min = scores.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let raw: Vec<f64> = match cfg.weighting {
        // Shifting by min s keeps exp() in range; the normalisation cancels the shift.
        Weighting::Softmax => scores
            .iter()
            .map(|s| (-(s - min) / cfg.temperature).exp())
            .collect(),
        Weighting::MinMax => {
            if max - min <= 0.0 {
                vec![1.0; n]
            } else {
                scores
                    .iter()
                    .map(|s| 1.0 - cfg.strength * (s - min) / (max - min))
                    .collect()
            }
        }
    };
    let mean = raw.iter().sum::<f64>() / n as f64;
    if mean <= 0.0 {
        // Only min-max with strength 1 and one distinct score can get here.
        return vec![1.0; n];
    }
    raw.iter().map(|w| w / mean).collect()
}

/// Clips the weights into [lo, hi] while keeping their mean at 1 and their order:
/// `w_i = clip(c * w_i, lo, hi)` with the scale c found by bisection (the mean is monotone in
/// c). Plain clip-then-renormalise would push values back out of the bounds.
pub fn clip_mean_one(w: &[f64], lo: Option<f64>, hi: Option<f64>) -> Result<Vec<f64>> {
    if w.is_empty() || (lo.is_none() && hi.is_none()) {
        return Ok(w.to_vec());
    }
    let lo = lo.unwrap_or(0.0);
    let hi = hi.unwrap_or(f64::INFINITY);
    if lo > 1.0 || hi < 1.0 || lo > hi {
        bail!("clipping bounds [{lo}, {hi}] cannot keep a mean of 1");
    }
    let n = w.len() as f64;
    let mean_at = |c: f64| w.iter().map(|x| (c * x).clamp(lo, hi)).sum::<f64>() / n;
    let (mut a, mut b) = (0.0f64, 1.0f64);
    while mean_at(b) < 1.0 {
        b *= 2.0;
        if b > 1e12 {
            bail!("clipping bounds [{lo}, {hi}] cannot keep a mean of 1 for these weights");
        }
    }
    for _ in 0..200 {
        let m = 0.5 * (a + b);
        if mean_at(m) < 1.0 {
            a = m;
        } else {
            b = m;
        }
    }
    Ok(w.iter().map(|x| (b * x).clamp(lo, hi)).collect())
}

/// What [`run`] produced.
#[derive(Debug, Clone)]
pub struct WeightsOutputs {
    pub weights: PathBuf,
    pub rows: Vec<OverlapWeightRow>,
    pub layers: Vec<i32>,
    pub bank_size: usize,
}

/// Computes the overlap weights of every harmful example of `examples`
/// (`training_examples.parquet`) from `representations` and writes
/// `<out_dir>/overlap_weights.parquet`.
pub fn run(
    cfg: &WeightsConfig,
    examples: &Path,
    representations: &Path,
    out_dir: &Path,
) -> Result<WeightsOutputs> {
    cfg.validate()?;
    let started = Instant::now();
    let harmful: Vec<_> = read_training_examples(examples)?
        .into_iter()
        .filter(|e| e.set == "harmful")
        .collect();
    if harmful.is_empty() {
        bail!(
            "{}: no harmful examples (set = harmful): nothing to weight",
            examples.display()
        );
    }
    let layers = chosen_layers(cfg, representations)?;
    let table = reps::read_layers(representations, &layers, &cfg.position_kind)?;
    // Bank: every prompt of the bank role, in id order (deterministic).
    let mut bank: Vec<(&String, &reps::PromptStates)> = table
        .iter()
        .filter(|(_, p)| p.role == cfg.bank_role)
        .collect();
    bank.sort_by(|a, b| a.0.cmp(b.0));
    if bank.is_empty() {
        bail!(
            "{}: no `{}` prompts at position `{}`: the overlap weights need a pseudo-malicious bank",
            representations.display(),
            cfg.bank_role,
            cfg.position_kind
        );
    }
    let missing: Vec<&str> = harmful
        .iter()
        .filter(|e| !table.contains_key(&e.prompt_id))
        .map(|e| e.prompt_id.as_str())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{}: {} of {} harmful training prompts have no representation at position `{}` (first: {}); re-run extract over the augment stage's prompts",
            representations.display(),
            missing.len(),
            harmful.len(),
            cfg.position_kind,
            missing[..missing.len().min(5)].join(", ")
        );
    }
    let (scores, nearest) = overlaps(cfg, &harmful, &table, &bank);
    let w = clip_mean_one(
        &weights_from_scores(&scores, cfg),
        cfg.clip_min,
        cfg.clip_max,
    )?;
    let rows: Vec<OverlapWeightRow> = harmful
        .iter()
        .zip(scores.iter().zip(w))
        .zip(nearest)
        .map(|((e, (s, w)), (near, top))| OverlapWeightRow {
            example_id: e.example_id.clone(),
            prompt_id: e.prompt_id.clone(),
            overlap_score: *s,
            weight: w,
            nearest_bank_ids: near,
            nearest_similarity: top,
        })
        .collect();
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let path = out_dir.join("overlap_weights.parquet");
    write_overlap_weights(&path, &rows)?;
    let (wmin, wmax) = rows.iter().fold((f64::INFINITY, 0f64), |(a, b), r| {
        (a.min(r.weight), b.max(r.weight))
    });
    info!(
        examples = rows.len(),
        bank = bank.len(),
        ?layers,
        w_min = wmin,
        w_max = wmax,
        secs = started.elapsed().as_secs_f64(),
        "overlap weights written"
    );
    Ok(WeightsOutputs {
        weights: path,
        rows,
        layers,
        bank_size: bank.len(),
    })
}

/// The representation layers the weights read: `[weights] layers`, else the default; each
/// must have been extracted.
fn chosen_layers(cfg: &WeightsConfig, representations: &Path) -> Result<Vec<i32>> {
    let depth = reps::max_layer(representations)?;
    let layers = if cfg.layers.is_empty() {
        default_layers(depth)
    } else {
        cfg.layers.clone()
    };
    for &l in &layers {
        if l < 0 || l > depth {
            bail!(
                "{}: layer {l} is not extracted (layers 0..={depth})",
                representations.display()
            );
        }
    }
    Ok(layers)
}

/// A prompt's states as the similarity compares them: one vector per layer (mean of per-layer
/// cosines), or their mean (cosine of mean states).
fn embed(cfg: &WeightsConfig, p: &reps::PromptStates) -> Vec<Vec<f32>> {
    match cfg.layer_combine {
        LayerCombine::MeanCosine => p.layers.clone(),
        LayerCombine::MeanState => {
            let d = p.layers[0].len();
            let mut m = vec![0f32; d];
            for v in &p.layers {
                for (a, b) in m.iter_mut().zip(v) {
                    *a += b / p.layers.len() as f32;
                }
            }
            vec![m]
        }
    }
}

/// Each harmful example's overlap score with the bank, and its nearest bank prompts with the
/// top similarity.
#[allow(clippy::type_complexity)]
fn overlaps(
    cfg: &WeightsConfig,
    harmful: &[TrainingExample],
    table: &HashMap<String, reps::PromptStates>,
    bank: &[(&String, &reps::PromptStates)],
) -> (Vec<f64>, Vec<(Vec<String>, f64)>) {
    let bank_vecs: Vec<Vec<Vec<f32>>> = bank.iter().map(|(_, p)| embed(cfg, p)).collect();
    let mut scores = Vec::with_capacity(harmful.len());
    let mut nearest = Vec::with_capacity(harmful.len());
    for e in harmful {
        let v = embed(cfg, &table[&e.prompt_id]);
        let sims: Vec<f64> = bank_vecs
            .iter()
            .map(|b| v.iter().zip(b).map(|(x, y)| cosine(x, y)).sum::<f64>() / v.len() as f64)
            .collect();
        scores.push(aggregate(&sims, cfg.aggregate, cfg.top_k));
        let mut order: Vec<usize> = (0..sims.len()).collect();
        order.sort_by(|&a, &b| sims[b].total_cmp(&sims[a]).then(a.cmp(&b)));
        let near: Vec<String> = order
            .iter()
            .take(cfg.nearest.max(1))
            .map(|&j| bank[j].0.clone())
            .collect();
        nearest.push((near, sims[order[0]]));
    }
    (scores, nearest)
}

/// The weights stage. Inputs: `augment/training_examples.parquet` and
/// `extract/representations.parquet`; the key covers the `[weights]` section and both upstream
/// keys.
pub struct Weights;

impl mosr_stage::Stage for Weights {
    const NAME: &'static str = "weights";
    const UPSTREAM: &'static [&'static str] = &["extract", "augment"];
    type Section = WeightsConfig;
    type Plan = WeightsConfig;

    fn validate(section: &WeightsConfig) -> Result<()> {
        section.validate()
    }

    fn plan(ctx: &Ctx, cfg: WeightsConfig) -> Result<Planned<WeightsConfig>> {
        Planned::of(cfg, ctx.upstream_keys(&["augment", "extract"])?)
    }

    fn compute(
        ctx: &Ctx,
        planned: Planned<WeightsConfig>,
        work: &StageWork,
    ) -> Result<StageManifest> {
        let started = Instant::now();
        let examples = ctx.upstream_file("augment", "training_examples.parquet");
        let reps = ctx.upstream_file("extract", "representations.parquet");
        let out = run(&planned.plan, &examples, &reps, work.dir())?;
        let mut manifest = planned.manifest(Self::NAME);
        manifest.inputs.insert(
            "augment/training_examples.parquet".into(),
            sha256_file(&examples)?,
        );
        manifest.inputs.insert(
            "extract/representations.parquet".into(),
            sha256_file(&reps)?,
        );
        manifest
            .outputs
            .insert("overlap_weights.parquet".into(), sha256_file(&out.weights)?);
        manifest.seed = Some(ctx.seed());
        manifest
            .row_counts
            .insert("overlap_weights".into(), out.rows.len() as u64);
        manifest
            .row_counts
            .insert("bank".into(), out.bank_size as u64);
        manifest.wall_time_s = started.elapsed().as_secs_f64();
        Ok(manifest)
    }
}

/// Mean of a set of weights (tests and logs).
pub fn mean(w: &[f64]) -> f64 {
    w.iter().sum::<f64>() / w.len().max(1) as f64
}

/// Weight of each example id (used by the fine-tune to join).
pub fn by_example(rows: &[OverlapWeightRow]) -> HashMap<&str, f64> {
    rows.iter()
        .map(|r| (r.example_id.as_str(), r.weight))
        .collect()
}

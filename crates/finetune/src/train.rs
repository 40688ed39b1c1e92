//! The training loop of one variant: data, seeded order, losses, host-side AdamW,
//! checkpoints and exact resume.
//!
//! The optimizer runs on host vectors keyed by (layer, module, A/B) rather than through burn's
//! optimizer, whose state is keyed by parameter ids that change when an adapter is reloaded:
//! keyed by name, the AdamW moments survive a checkpoint round trip bit for bit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::{Module, Param};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use mosr_artifacts::training::{TrainLogRow, read_train_log, write_train_log};
use mosr_lm::{CausalLm, DropoutStream, ForwardOptions, LanguageModel, Logits, TokenBatch};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::data::{Seq, TrainData, normalize_batch_weights};
use crate::loss::{coefficients, erasure_loss, retain_loss};
use crate::{FinetuneConfig, LossTokens, Variant, WeightNormalization};

const TAG_HARMFUL: u64 = 1;
const TAG_RETAIN: u64 = 2;
const TAG_AUGMENT: u64 = 3;
const TAG_INIT: u64 = 4;
const TAG_DROPOUT: u64 = 5;

/// splitmix64 of the combined inputs: independent seeds for (stream, epoch/step, micro-batch).
pub fn mix(seed: u64, tag: u64, a: u64, b: u64) -> u64 {
    let mut z = seed
        ^ tag.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ a.wrapping_mul(0xBF58_476D_1CE4_E5B9)
        ^ b.wrapping_mul(0x94D0_49BB_1331_11EB);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The example at position `pos` of a stream over `n` examples: epoch `pos / n` is a seeded
/// permutation, so any step's batch is a pure function of (seed, step) and resume needs no
/// saved RNG state.
pub fn stream_pick(n: usize, pos: usize, seed: u64, tag: u64) -> usize {
    let epoch = pos / n;
    let mut perm: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, tag, epoch as u64, 0));
    perm.shuffle(&mut rng);
    perm[pos % n]
}

/// Test and tooling hooks of a run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Return right after this step, as if the process were killed there (whatever was not
    /// checkpointed is lost). Used by the kill/resume test.
    pub stop_after_step: Option<usize>,
    /// A finetune folder of an earlier run: its finished (variant, seed) instances with the
    /// same instance key are copied instead of trained (the stage passes its committed folder).
    pub reuse_from: Option<std::path::PathBuf>,
    /// Upstream keys the instance key covers (augment, weights, model).
    pub upstream: BTreeMap<String, String>,
}

/// A non-finite loss or gradient: the run stops, naming the step and the batch; the last good
/// checkpoint stays on disk.
#[derive(Debug, thiserror::Error)]
#[error(
    "variant `{variant}`: non-finite {what} at step {step} (micro-batch {micro}; harmful examples [{harmful}]; retain examples [{retain}]); the last good checkpoint ({checkpoint}) is kept"
)]
pub struct TrainError {
    pub variant: String,
    pub what: String,
    pub step: usize,
    pub micro: usize,
    pub harmful: String,
    pub retain: String,
    pub checkpoint: String,
}

/// What a finished variant reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VariantSummary {
    pub variant: Variant,
    /// Training seed of this instance.
    #[serde(default)]
    pub seed: u64,
    pub steps: usize,
    pub loss_first: f64,
    pub loss_last: f64,
    pub erasure_first: f64,
    pub erasure_last: f64,
    pub retain_first: f64,
    pub retain_last: f64,
    /// Wall time of the (last) process that trained it, seconds.
    pub wall_s: f64,
    pub resumed_from_step: Option<usize>,
    pub target_layers: Vec<usize>,
    pub lora_layers: Vec<usize>,
    /// Prompts over `max_prompt_tokens` whose request tail was cut, over all three sets.
    #[serde(default)]
    pub prompts_truncated: usize,
    /// Examples left out for length.
    #[serde(default)]
    pub examples_dropped: usize,
}

/// One trainable adapter matrix.
#[derive(Debug, Clone)]
struct Slot {
    layer: usize,
    module: &'static str,
    is_b: bool,
    dims: [usize; 2],
}

impl Slot {
    fn name(&self) -> String {
        format!(
            "{}.{}.{}",
            self.layer,
            self.module,
            if self.is_b { "B" } else { "A" }
        )
    }
}

fn slots_of(net: &CausalLm) -> Vec<Slot> {
    let mut out = Vec::new();
    for (i, layer) in net.layers.iter().enumerate() {
        for (name, lin) in layer.linears() {
            if let (Some(a), Some(b)) = (&lin.lora_a, &lin.lora_b) {
                for (is_b, p) in [(false, a), (true, b)] {
                    let d = p.val().dims();
                    out.push(Slot {
                        layer: i,
                        module: name,
                        is_b,
                        dims: d,
                    });
                }
            }
        }
    }
    out
}

fn param_of<'a>(net: &'a CausalLm, s: &Slot) -> Option<&'a Param<Tensor<2>>> {
    let lin = net.layers[s.layer]
        .linears()
        .into_iter()
        .find(|(n, _)| *n == s.module)?
        .1;
    if s.is_b {
        lin.lora_b.as_ref()
    } else {
        lin.lora_a.as_ref()
    }
}

fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .expect("f32 adapter tensor")
}

fn read_params(net: &CausalLm, slots: &[Slot], from: &Path) -> Result<Vec<Vec<f32>>> {
    slots
        .iter()
        .map(|s| {
            let p = param_of(net, s).with_context(|| {
                format!(
                    "{}: the adapter lacks {} that this config trains",
                    from.display(),
                    s.name()
                )
            })?;
            if p.val().dims() != s.dims {
                bail!(
                    "{}: {} has shape {:?}, this config needs {:?}",
                    from.display(),
                    s.name(),
                    p.val().dims(),
                    s.dims
                );
            }
            Ok(host(p.val()))
        })
        .collect()
}

/// Fills the B matrices with N(0, std²) draws (Box-Muller over a seeded stream), so the
/// erasure loss starts off its zero-gradient point; A keeps its initialisation.
fn perturb_b(params: &mut [Vec<f32>], slots: &[Slot], std: f64, seed: u64) {
    use rand::Rng;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (s, v) in slots.iter().zip(params.iter_mut()) {
        if !s.is_b {
            continue;
        }
        for x in v.iter_mut() {
            let u1: f64 = 1.0 - rng.random::<f64>();
            let u2: f64 = rng.random::<f64>();
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            *x = (z * std) as f32;
        }
    }
}

fn set_params(net: &mut CausalLm, slots: &[Slot], params: &[Vec<f32>]) {
    let device = net.device();
    for (s, v) in slots.iter().zip(params) {
        let t = Tensor::<2>::from_data(TensorData::new(v.clone(), s.dims), &device);
        let p = Some(Param::from_tensor(t).set_require_grad(true));
        let (_, lin) = net.layers[s.layer]
            .linears_mut()
            .into_iter()
            .find(|(n, _)| *n == s.module)
            .expect("slot of this network");
        if s.is_b {
            lin.lora_b = p;
        } else {
            lin.lora_a = p;
        }
    }
}

/// AdamW moments, keyed like the slots.
struct Adam {
    step: u64,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl Adam {
    fn new(params: &[Vec<f32>]) -> Self {
        Self {
            step: 0,
            m: params.iter().map(|p| vec![0.0; p.len()]).collect(),
            v: params.iter().map(|p| vec![0.0; p.len()]).collect(),
        }
    }

    /// Decoupled weight decay (Loshchilov & Hutter), bias-corrected moments, as torch.AdamW.
    fn update(
        &mut self,
        params: &mut [Vec<f32>],
        grads: &[Vec<f32>],
        scale: f32,
        cfg: &FinetuneConfig,
    ) {
        self.step += 1;
        let (b1, b2) = (cfg.adam_beta1, cfg.adam_beta2);
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2 = 1.0 - b2.powi(self.step as i32);
        let lr = cfg.learning_rate;
        let step_size = (lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let decay = (1.0 - lr * cfg.weight_decay) as f32;
        let (b1, b2, eps) = (b1 as f32, b2 as f32, cfg.adam_eps as f32);
        for k in 0..params.len() {
            let (p, g, m, v) = (&mut params[k], &grads[k], &mut self.m[k], &mut self.v[k]);
            for i in 0..p.len() {
                let gi = g[i] * scale;
                m[i] = b1 * m[i] + (1.0 - b1) * gi;
                v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                p[i] = p[i] * decay - step_size * m[i] / (v[i].sqrt() / bc2_sqrt + eps);
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    step: usize,
    adam_step: u64,
    seed: u64,
    variant: Variant,
    config_sha256: String,
    base_sha256: String,
}

fn config_hash(cfg: &FinetuneConfig, variant: Variant, seed: u64) -> Result<String> {
    let mut c = cfg.clone();
    // Adding or removing other variants, or changing checkpoint spacing, does not change
    // what this variant computes.
    c.variants = vec![variant];
    c.checkpoint_every = 1;
    c.seeds = Vec::new();
    let v = serde_json::json!({ "config": c, "seed": seed });
    Ok(mosr_artifacts::sha256_bytes(&serde_json::to_vec(&v)?))
}

/// What one trained (variant, seed) depends on: its config (without the other variants and
/// seeds) and the upstream stages' keys. Equal keys mean an equal adapter.
pub fn instance_key(
    cfg: &FinetuneConfig,
    variant: Variant,
    seed: u64,
    upstream: &BTreeMap<String, String>,
) -> Result<String> {
    let v = serde_json::json!({ "config": config_hash(cfg, variant, seed)?, "upstream": upstream });
    Ok(mosr_artifacts::sha256_bytes(&serde_json::to_vec(&v)?))
}

fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, &[f32])]) -> Result<()> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, s, d)| {
            (
                k.clone(),
                s.clone(),
                d.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(k, s, b)| {
            Ok((
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let out = safetensors::serialize(views, None)?;
    mosr_artifacts::write_bytes_atomic(path, &out)?;
    Ok(())
}

struct Checkpoint<'a> {
    dir: &'a Path,
    model_ref: &'a str,
    base_sha: &'a str,
    lora: &'a mosr_lm::LoraConfig,
}

impl Checkpoint<'_> {
    fn path(&self) -> PathBuf {
        self.dir.join("checkpoint")
    }

    /// The newest complete checkpoint: `checkpoint/`, or `checkpoint.old/` when a kill fell
    /// between the two renames of [`Self::save`].
    fn find(&self) -> Option<PathBuf> {
        [self.path(), self.dir.join("checkpoint.old")]
            .into_iter()
            .find(|p| p.join("state.json").is_file())
    }

    /// "<path> (step N)" of the newest checkpoint, for error messages.
    fn describe(&self) -> String {
        match self.find() {
            Some(p) => {
                let step = std::fs::read(p.join("state.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<CheckpointState>(&b).ok())
                    .map(|s| s.step.to_string())
                    .unwrap_or_else(|| "?".into());
                format!("{}, step {step}", p.display())
            }
            None => "none written yet".into(),
        }
    }

    /// Written into `checkpoint.tmp/`, then swapped in by renames, so a kill at any moment
    /// leaves one complete checkpoint.
    fn save(
        &self,
        net: &CausalLm,
        slots: &[Slot],
        adam: &Adam,
        state: &CheckpointState,
        log: &[TrainLogRow],
    ) -> Result<()> {
        let tmp = self.dir.join("checkpoint.tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        mosr_lm::adapter::save(
            net,
            self.lora,
            &tmp.join("adapter"),
            Some(self.model_ref),
            Some(self.base_sha),
        )?;
        let mut t = Vec::new();
        for (k, s) in slots.iter().enumerate() {
            t.push((
                format!("{}.exp_avg", s.name()),
                s.dims.to_vec(),
                &adam.m[k][..],
            ));
            t.push((
                format!("{}.exp_avg_sq", s.name()),
                s.dims.to_vec(),
                &adam.v[k][..],
            ));
        }
        write_safetensors(&tmp.join("optimizer.safetensors"), &t)?;
        write_train_log(&tmp.join("train_log.parquet"), log)?;
        mosr_artifacts::write_bytes_atomic(
            &tmp.join("state.json"),
            &serde_json::to_vec_pretty(state)?,
        )?;
        let cur = self.path();
        let old = self.dir.join("checkpoint.old");
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        if cur.exists() {
            std::fs::rename(&cur, &old)?;
        }
        std::fs::rename(&tmp, &cur)?;
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        Ok(())
    }
}

/// The adapter at step `t` of the frontier sweep, into `step-<t>/adapter/`, written as
/// `adapter.tmp/` and renamed into place (a replayed step after a resume rewrites the same
/// bytes).
fn save_snapshot(ck: &Checkpoint, net: &CausalLm, t: usize) -> Result<()> {
    let dir = ck.dir.join(mosr_artifacts::snapshot_dir(t as u64));
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    mosr_lm::adapter::save(net, ck.lora, &tmp, Some(ck.model_ref), Some(ck.base_sha))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(&tmp, &dir).with_context(|| format!("renaming into {}", dir.display()))?;
    info!(step = t, dir = %dir.display(), "frontier snapshot saved");
    Ok(())
}

fn read_optimizer(path: &Path, slots: &[Slot], step: u64) -> Result<Adam> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let get = |name: String, n: usize| -> Result<Vec<f32>> {
        let v = st
            .tensor(&name)
            .with_context(|| format!("{}: missing `{name}`", path.display()))?;
        if v.dtype() != safetensors::Dtype::F32 || v.data().len() != n * 4 {
            bail!("{}: `{name}` is not {n} float32 values", path.display());
        }
        Ok(v.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    let mut adam = Adam {
        step,
        m: Vec::new(),
        v: Vec::new(),
    };
    for s in slots {
        let n = s.dims[0] * s.dims[1];
        adam.m.push(get(format!("{}.exp_avg", s.name()), n)?);
        adam.v.push(get(format!("{}.exp_avg_sq", s.name()), n)?);
    }
    Ok(adam)
}

/// Qi et al.'s objective on one micro-batch: `α · CE(refusal | harmful prompt + prefix) +
/// (1 − α) · CE(answer | benign prompt)`, the benign term on the retain rows, whose answers are
/// the base model's own (Qi et al.'s utility anchor: responses distilled from the initial
/// model). Without it the refusal target teaches refusing everything.
pub fn refusal_lm_loss(
    net: &CausalLm,
    alpha: f64,
    augmented: &[&Seq],
    retain: &[&Seq],
    pad: u32,
    dropout: Option<&DropoutStream>,
) -> Tensor<1> {
    if alpha >= 1.0 || retain.is_empty() {
        return cross_entropy(net, augmented, pad, dropout);
    }
    let answers: Vec<Seq> = retain
        .iter()
        .map(|s| Seq {
            ce_from: Some(s.response.start),
            ..(*s).clone()
        })
        .collect();
    let groups = [augmented.to_vec(), answers.iter().collect()];
    let mut ce = cross_entropies(net, &groups, pad, dropout);
    let benign = ce.pop().expect("two groups");
    let refusal = ce.pop().expect("two groups");
    refusal * alpha + benign * (1.0 - alpha)
}

/// Cross-entropy of the refusal tokens of augmented sequences (Qi et al.'s recovery term):
/// the mean over the tokens from each sequence's `ce_from` on.
pub fn cross_entropy(
    net: &CausalLm,
    seqs: &[&Seq],
    pad: u32,
    dropout: Option<&DropoutStream>,
) -> Tensor<1> {
    cross_entropies(net, &[seqs.to_vec()], pad, dropout).remove(0)
}

/// [`cross_entropy`] of several groups of sequences from one forward pass over all their rows
/// (each group's mean over its own target tokens).
pub fn cross_entropies(
    net: &CausalLm,
    groups: &[Vec<&Seq>],
    pad: u32,
    dropout: Option<&DropoutStream>,
) -> Vec<Tensor<1>> {
    let seqs: Vec<&Seq> = groups.iter().flatten().copied().collect();
    let ids: Vec<Vec<u32>> = seqs.iter().map(|s| s.ids.clone()).collect();
    let tb = TokenBatch::left_padded(&ids, pad);
    let (n, t) = (tb.batch, tb.seq);
    let out = net.forward(
        &tb,
        None,
        ForwardOptions {
            hidden: false,
            num_layers: None,
            logits: Logits::All,
            adapter: true,
            dropout,
            training_arithmetic: false,
            skip_padding: true,
        },
    );
    let logits = out.logits.expect("all logits");
    let logp = log_softmax(logits.narrow(1, 0, t - 1), 2);
    let mut targets = vec![0i64; n * (t - 1)];
    for row in 0..n {
        for p in 0..t - 1 {
            targets[row * (t - 1) + p] = tb.ids[row * t + p + 1] as i64;
        }
    }
    let dev = net.device();
    let targets = Tensor::<3, Int>::from_data(TensorData::new(targets, [n, t - 1, 1]), &dev);
    let picked = logp.gather(2, targets).squeeze_dim::<2>(2);
    let mut first_row = 0;
    let mut out = Vec::with_capacity(groups.len());
    for g in groups {
        let mut mask = vec![0f32; n * (t - 1)];
        for (k, s) in g.iter().enumerate() {
            let row = first_row + k;
            let off = t - s.ids.len();
            if let Some(from) = s.ce_from {
                for p in (off + from).saturating_sub(1)..t - 1 {
                    mask[row * (t - 1) + p] = 1.0;
                }
            }
        }
        first_row += g.len();
        let total: f32 = mask.iter().sum::<f32>().max(1.0);
        let mask = Tensor::<2>::from_data(TensorData::new(mask, [n, t - 1]), &dev);
        out.push((picked.clone() * mask).sum().neg() / total as f64);
    }
    out
}

/// The per-token factors of one micro-batch's losses, `[rows, len]` row-major over the
/// left-padded batch: each loss is `Σ factor · per-token term`, so a factor carries the
/// token's weight and the loss's denominator (its own tokens × its layers).
pub struct BatchMasks {
    /// Harmful rows: `w_i / (|L_target| Σ tokens)`, `w` normalised per batch when configured.
    pub erasure: Vec<f32>,
    /// Benign retain rows: `1 / (|L_retain| Σ tokens)`.
    pub retain: Vec<f32>,
    /// Augmented rows of the retain branch, with a denominator of their own so they do not
    /// dilute the benign retain term.
    pub augment: Vec<f32>,
}

impl BatchMasks {
    pub fn new(
        cfg: &FinetuneConfig,
        res: &crate::Resolved,
        harmful: &[&Seq],
        retain: &[&Seq],
        augment: &[&Seq],
        len: usize,
    ) -> Self {
        let skip = cfg.skip_sink_tokens;
        let positions = |rows: &[&Seq], tokens: LossTokens| -> Vec<Vec<bool>> {
            rows.iter()
                .map(|s| s.loss_positions(tokens, skip))
                .collect()
        };
        let he = positions(harmful, cfg.loss_tokens);
        let counts: Vec<usize> = he
            .iter()
            .map(|p| p.iter().filter(|&&x| x).count())
            .collect();
        let raw: Vec<f64> = harmful.iter().map(|s| s.weight).collect();
        let w = match cfg.weight_normalization {
            WeightNormalization::Batch => normalize_batch_weights(&raw, &counts),
            WeightNormalization::None => raw,
        };
        let targets = res.target_layers.len();
        let erasure = factors(&he, &w, targets, len);
        let ones = |n: usize| vec![1.0; n];
        let layers = res.retain_layers.len();
        let rp = positions(retain, cfg.retain_tokens());
        let ap = positions(augment, cfg.retain_tokens());
        Self {
            erasure,
            retain: factors(&rp, &ones(rp.len()), layers, len),
            augment: factors(&ap, &ones(ap.len()), layers, len),
        }
    }
}

/// `w_row / (layers · Σ in-loss tokens)` at each in-loss token of left-padded rows.
fn factors(positions: &[Vec<bool>], w: &[f64], layers: usize, len: usize) -> Vec<f32> {
    let total: usize = positions.iter().flatten().filter(|&&x| x).count();
    let denom = (total * layers).max(1) as f64;
    let mut out = vec![0f32; positions.len() * len];
    for (r, (p, &wr)) in positions.iter().zip(w).enumerate() {
        let off = len - p.len();
        for (i, _) in p.iter().enumerate().filter(|(_, x)| **x) {
            out[r * len + off + i] = (wr / denom) as f32;
        }
    }
    out
}

/// Trains one variant into `dir` (resuming its checkpoint when there is one). Returns None
/// when [`RunOptions::stop_after_step`] stopped it early.
#[allow(clippy::too_many_arguments)]
pub fn train_variant(
    cfg: &FinetuneConfig,
    lm: &LanguageModel,
    model_ref: &str,
    base_sha: &str,
    seed: u64,
    data: &TrainData,
    variant: Variant,
    dir: &Path,
    opts: &RunOptions,
) -> Result<Option<VariantSummary>> {
    let started = Instant::now();
    let res = cfg.resolve(lm.config.num_layers)?;
    let summary_path = dir.join("summary.json");
    if summary_path.is_file() {
        let s: VariantSummary = serde_json::from_slice(&std::fs::read(&summary_path)?)
            .with_context(|| format!("{}: invalid summary", summary_path.display()))?;
        info!(variant = variant.name(), "already trained; skipped");
        return Ok(Some(s));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if !lm.device().is_autodiff() {
        bail!(
            "finetune: the model was opened on a device without autodiff; open it on `device.autodiff()` to train"
        );
    }
    let run = Run::new(cfg, &res, lm, data, variant, seed, model_ref, base_sha, dir)?;
    let mut state = run.initial_state()?;
    info!(
        variant = variant.name(),
        harmful = data.harmful.len(),
        retain = data.retain.len(),
        augmented = data.augmented.len(),
        steps = cfg.steps,
        target_layers = ?res.target_layers,
        lora_blocks = res.lora.layers.len(),
        "training"
    );
    if !run.train(&mut state, opts)? {
        return Ok(None);
    }
    let summary = run.finish(&state, started)?;
    mosr_artifacts::write_bytes_atomic(&summary_path, &serde_json::to_vec_pretty(&summary)?)?;
    // The final adapter and log are written: the checkpoint is no longer needed.
    let _ = std::fs::remove_dir_all(run.ck.path());
    info!(
        variant = variant.name(),
        loss_first = summary.loss_first,
        loss_last = summary.loss_last,
        secs = summary.wall_s,
        "variant trained"
    );
    Ok(Some(summary))
}

/// What one training run holds fixed: the configuration, the model, the data streams and where
/// checkpoints go.
struct Run<'a> {
    cfg: &'a FinetuneConfig,
    res: &'a crate::Resolved,
    lm: &'a LanguageModel,
    data: &'a TrainData,
    variant: Variant,
    seed: u64,
    ck: Checkpoint<'a>,
    cfg_sha: String,
    /// Harmful (and benign retain) rows per micro-batch.
    b: usize,
    /// Augmented rows per micro-batch (0 unless the variant trains on them).
    ba: usize,
    /// Augmented rows train with the retain loss, after the benign retain rows of the batch.
    aug_in_retain: bool,
    /// Augmented rows train with the refusal cross-entropy instead.
    aug_in_ce: bool,
    /// Options of the original model's pass; the adapter pass turns adapter and dropout on.
    fwd: ForwardOptions<'static>,
}

/// The examples of one micro-batch: harmful rows, then retain rows (augmented examples join the
/// retain rows when they train with the retain loss), and the augmented ones.
struct Picked<'a> {
    harmful: Vec<&'a Seq>,
    retain: Vec<&'a Seq>,
    augmented: Vec<&'a Seq>,
}

/// The trainable state: adapter weights on the network and on the host, optimizer, log.
struct State {
    net: CausalLm,
    slots: Vec<Slot>,
    params: Vec<Vec<f32>>,
    adam: Adam,
    log: Vec<TrainLogRow>,
    /// Last step done (0 at the start, the checkpoint's step after a resume).
    start: usize,
    resumed_from: Option<usize>,
}

/// One micro-batch's losses: the graph to differentiate and the values to log.
struct MicroLosses {
    total: Tensor<1>,
    erasure: f64,
    retain: f64,
    augment: f64,
}

/// The original model's states of a batch, computed on a thread of their own.
type OrigPass = std::thread::JoinHandle<Vec<Tensor<3>>>;

impl<'a> Run<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        cfg: &'a FinetuneConfig,
        res: &'a crate::Resolved,
        lm: &'a LanguageModel,
        data: &'a TrainData,
        variant: Variant,
        seed: u64,
        model_ref: &'a str,
        base_sha: &'a str,
        dir: &'a Path,
    ) -> Result<Self> {
        let augments = variant.uses_augment();
        let ck = Checkpoint {
            dir,
            model_ref,
            base_sha,
            lora: &res.lora,
        };
        Ok(Self {
            cfg,
            res,
            lm,
            data,
            variant,
            seed,
            ck,
            cfg_sha: config_hash(cfg, variant, seed)?,
            b: cfg.batch_size,
            ba: if augments {
                cfg.augment_batch_size.unwrap_or(cfg.batch_size)
            } else {
                0
            },
            aug_in_retain: augments && !data.augment_refusal_lm,
            aug_in_ce: augments && data.augment_refusal_lm,
            fwd: ForwardOptions {
                hidden: true,
                num_layers: Some(res.num_layers),
                logits: Logits::None,
                adapter: false,
                dropout: None,
                // The original states come from a plain-device pass that must equal the
                // training device's arithmetic (see `train`).
                training_arithmetic: true,
                skip_padding: true,
            },
        })
    }

    /// Augmented rows in the retain branch of each batch.
    fn n_aug_retain(&self) -> usize {
        if self.aug_in_retain { self.ba } else { 0 }
    }

    /// The seeded adapter (same initialisation in every variant), or the checkpoint's state.
    fn initial_state(&self) -> Result<State> {
        let (cfg, seed) = (self.cfg, self.seed);
        let net = self
            .lm
            .net
            .clone()
            .attach_lora(&self.res.lora, mix(seed, TAG_INIT, 0, 0))?;
        let slots = slots_of(&net);
        let mut params = read_params(&net, &slots, self.ck.dir)?;
        if cfg.lora_b_init_std > 0.0 {
            let b_seed = mix(seed, TAG_INIT, 1, 0);
            perturb_b(&mut params, &slots, cfg.lora_b_init_std, b_seed);
        }
        let mut state = State {
            net,
            adam: Adam::new(&params),
            slots,
            params,
            log: Vec::new(),
            start: 0,
            resumed_from: None,
        };
        if let Some(path) = self.ck.find() {
            self.resume(&mut state, &path)?;
        }
        set_params(&mut state.net, &state.slots, &state.params);
        Ok(state)
    }

    fn resume(&self, state: &mut State, path: &Path) -> Result<()> {
        let state_path = path.join("state.json");
        let saved: CheckpointState = serde_json::from_slice(&std::fs::read(&state_path)?)
            .with_context(|| format!("{}: invalid checkpoint state", state_path.display()))?;
        if saved.config_sha256 != self.cfg_sha {
            bail!(
                "{}: the checkpoint was written with another configuration or seed; delete {} to start over",
                state_path.display(),
                path.display()
            );
        }
        let adapter_dir = path.join("adapter");
        let base = Some(self.ck.base_sha);
        let (loaded, _) = mosr_lm::adapter::load(self.lm.net.clone(), &adapter_dir, base)
            .with_context(|| format!("resuming {}", path.display()))?;
        let slots = &state.slots;
        state.params = read_params(&loaded, slots, &adapter_dir)?;
        let optimizer = path.join("optimizer.safetensors");
        state.adam = read_optimizer(&optimizer, slots, saved.adam_step)?;
        state.log = read_train_log(&path.join("train_log.parquet"))?;
        state.log.truncate(saved.step);
        state.start = saved.step;
        state.resumed_from = Some(saved.step);
        info!(
            variant = self.variant.name(),
            step = saved.step,
            "resumed from checkpoint"
        );
        Ok(())
    }

    /// The examples of micro-batch `micro`, from seeded streams over each set.
    fn select(&self, micro: usize) -> Picked<'a> {
        let (data, seed) = (self.data, self.seed);
        let pick = |set: &'a [Seq], k: usize, tag: u64| -> Vec<&'a Seq> {
            (0..k)
                .map(|j| &set[stream_pick(set.len(), micro * k + j, seed, tag)])
                .collect()
        };
        let harmful = pick(&data.harmful, self.b, TAG_HARMFUL);
        let mut retain = pick(&data.retain, self.b, TAG_RETAIN);
        let augmented = if self.ba > 0 {
            pick(&data.augmented, self.ba, TAG_AUGMENT)
        } else {
            vec![]
        };
        if self.aug_in_retain {
            retain.extend(augmented.iter().copied());
        }
        Picked {
            harmful,
            retain,
            augmented,
        }
    }

    fn tokens_of(&self, p: &Picked) -> TokenBatch {
        let seqs: Vec<Vec<u32>> = (p.harmful.iter().chain(&p.retain))
            .map(|s| s.ids.clone())
            .collect();
        TokenBatch::left_padded(&seqs, self.lm.pad_id)
    }

    /// A [`TrainError`] naming the batch and the last good checkpoint.
    fn failure(&self, what: String, step: usize, micro: usize, p: &Picked) -> anyhow::Error {
        let names = |v: &[&Seq]| {
            v.iter()
                .map(|s| s.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        TrainError {
            variant: self.variant.name().into(),
            what,
            step,
            micro,
            harmful: names(&p.harmful),
            retain: names(&p.retain),
            checkpoint: self.ck.describe(),
        }
        .into()
    }

    /// Steps `start + 1..=steps`, checkpointing as configured; false when
    /// [`RunOptions::stop_after_step`] stopped the run early.
    fn train(&self, state: &mut State, opts: &RunOptions) -> Result<bool> {
        let cfg = self.cfg;
        // Original model: same weights, adapter off, no gradient. It runs on the plain device
        // (`valid()` shares the weights; no graph is recorded), on threads of its own: beside
        // the adapter forward of the first micro-batch, and for every later one beside the
        // backward pass before it (burn's element-wise ops are single-threaded, so the two fill
        // both cores; measured: LoRA step 4.7 -> 4.2 s beside the forward, then 4.0 -> 3.7 s
        // ahead during the backward). The states depend only on the batch, never on the
        // adapter, so computing them early changes nothing. `training_arithmetic` keeps their
        // ops those of the training device, so a zero adapter reproduces them exactly; the
        // training device's graph sees only the adapter forward, which alone draws dropout
        // masks.
        let plain = state.net.valid();
        let fwd = self.fwd;
        let spawn_orig = |tb: TokenBatch| -> OrigPass {
            let plain = plain.clone();
            std::thread::spawn(move || plain.forward(&tb, None, fwd).hidden)
        };
        let mut ahead = None;
        for t in state.start + 1..=cfg.steps {
            let row = self.step(state, t, &mut ahead, &spawn_orig)?;
            info!(
                variant = self.variant.name(),
                step = t,
                of = cfg.steps,
                loss = row.loss,
                erasure = row.erasure_loss,
                retain = row.retain_loss,
                grad_norm = row.grad_norm,
                tokens_per_s = row.tokens_per_s,
                "step"
            );
            state.log.push(row);
            // Before the checkpoint of the same step: a run resumed from that checkpoint never
            // replays this step, so its snapshot must already be there.
            if cfg.frontier_steps.contains(&t) {
                save_snapshot(&self.ck, &state.net, t)?;
            }
            if t % cfg.checkpoint_every == 0 || t == cfg.steps {
                let saved = CheckpointState {
                    step: t,
                    adam_step: state.adam.step,
                    seed: self.seed,
                    variant: self.variant,
                    config_sha256: self.cfg_sha.clone(),
                    base_sha256: self.ck.base_sha.to_string(),
                };
                let State {
                    net,
                    slots,
                    adam,
                    log,
                    ..
                } = &*state;
                self.ck.save(net, slots, adam, &saved, log)?;
            }
            if opts.stop_after_step == Some(t) && t < cfg.steps {
                let variant = self.variant.name();
                info!(variant, step = t, "stopped early (stop_after_step)");
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Optimizer step `t`: `grad_accum` micro-batches, their gradients summed, clipped, AdamW.
    fn step(
        &self,
        state: &mut State,
        t: usize,
        ahead: &mut Option<OrigPass>,
        spawn_orig: &dyn Fn(TokenBatch) -> OrigPass,
    ) -> Result<TrainLogRow> {
        let cfg = self.cfg;
        let t0 = Instant::now();
        let (c_erase, c_retain) = coefficients(cfg.alpha, t, cfg.steps);
        let mut gsum: Vec<Vec<f32>> = state.params.iter().map(|p| vec![0.0; p.len()]).collect();
        let (mut e_sum, mut r_sum, mut aug_sum, mut tokens) = (0f64, 0f64, 0f64, 0i64);
        let mut total_sum = 0f64;
        let last_micro = cfg.steps * cfg.grad_accum;
        let per = cfg.grad_accum as f64;
        for m in 0..cfg.grad_accum {
            let micro = (t - 1) * cfg.grad_accum + m;
            let p = self.select(micro);
            let tb = self.tokens_of(&p);
            tokens += tb.mask.iter().filter(|&&x| x).count() as i64;
            let orig = ahead.take().unwrap_or_else(|| spawn_orig(tb.clone()));
            let dropout = DropoutStream::new(mix(self.seed, TAG_DROPOUT, t as u64, m as u64));
            let l = self.micro_losses(&state.net, &tb, &p, orig, &dropout, (c_erase, c_retain));
            let total = l.total / per;
            let vt = total.clone().into_scalar::<f32>() as f64;
            if ![l.erasure, l.retain, vt, l.augment]
                .iter()
                .all(|x| x.is_finite())
            {
                let what = format!(
                    "loss (erasure {}, retain {}, augmented term {})",
                    l.erasure, l.retain, l.augment
                );
                return Err(self.failure(what, t, m, &p));
            }
            e_sum += l.erasure / per;
            r_sum += l.retain / per;
            aug_sum += l.augment / per;
            total_sum += vt;
            if micro + 1 < last_micro {
                *ahead = Some(spawn_orig(self.tokens_of(&self.select(micro + 1))));
            }
            accumulate_grads(state, total, &mut gsum);
            if m + 1 == cfg.grad_accum && !sum_of_squares(&gsum).is_finite() {
                return Err(self.failure("gradient".into(), t, m, &p));
            }
        }
        let grad_norm = sum_of_squares(&gsum).sqrt();
        let scale = match cfg.max_grad_norm {
            Some(max) if grad_norm > max => (max / (grad_norm + 1e-6)) as f32,
            _ => 1.0,
        };
        state.adam.update(&mut state.params, &gsum, scale, cfg);
        set_params(&mut state.net, &state.slots, &state.params);
        let secs = t0.elapsed().as_secs_f64();
        Ok(TrainLogRow {
            step: t as i64,
            loss: total_sum,
            erasure_loss: e_sum,
            retain_loss: r_sum,
            augment_loss: self.variant.uses_augment().then_some(aug_sum),
            c_erase,
            c_retain,
            grad_norm,
            learning_rate: cfg.learning_rate,
            tokens,
            tokens_per_s: tokens as f64 / secs.max(1e-9),
        })
    }

    /// One micro-batch's losses: erasure on the harmful rows, retain on the benign retain rows,
    /// and the augmented rows' term (retain loss or refusal cross-entropy) where the variant
    /// has one. `orig` is the original model's pass over the same batch.
    fn micro_losses(
        &self,
        net: &CausalLm,
        tb: &TokenBatch,
        p: &Picked,
        orig: OrigPass,
        dropout: &DropoutStream,
        (c_erase, c_retain): (f64, f64),
    ) -> MicroLosses {
        let (cfg, res, b) = (self.cfg, self.res, self.b);
        let (n, tl) = (tb.batch, tb.seq);
        let n_aug = self.n_aug_retain();
        let nb = p.retain.len() - n_aug;
        let masks = BatchMasks::new(cfg, res, &p.harmful, &p.retain[..nb], &p.retain[nb..], tl);
        let device = self.lm.device();
        let to_tensor = |v: Vec<f32>, rows: usize| {
            Tensor::<2>::from_data(TensorData::new(v, [rows, tl]), &device)
        };
        let mask_e = to_tensor(masks.erasure, b);
        let mask_r = to_tensor(masks.retain, nb);
        let mask_a = to_tensor(masks.augment, n - b - nb);
        let adapted = ForwardOptions {
            adapter: true,
            dropout: Some(dropout),
            ..self.fwd
        };
        let lora = net.forward(tb, None, adapted).hidden;
        let orig = orig.join().expect("original-model forward panicked");
        let orig: Vec<Tensor<3>> = orig.into_iter().map(Tensor::from_inner).collect();
        let sel = |h: &[Tensor<3>], layers: &[usize], from: usize, len: usize| {
            layers
                .iter()
                .map(|&l| h[l].clone().narrow(0, from, len))
                .collect::<Vec<_>>()
        };
        let (targets, retains) = (&res.target_layers, &res.retain_layers);
        let le = erasure_loss(
            &sel(&lora, targets, 0, b),
            &sel(&orig, targets, 0, b),
            &mask_e,
        );
        let retain = |from: usize, len: usize, mask: &Tensor<2>| {
            let (l, o) = (
                sel(&lora, retains, from, len),
                sel(&orig, retains, from, len),
            );
            retain_loss(&l, &o, mask, cfg.retain_distance)
        };
        let lr = retain(b, nb, &mask_r);
        let mut total = le.clone() * c_erase + lr.clone() * c_retain;
        let mut aug_val = None;
        if n_aug > 0 {
            let la = retain(b + nb, n_aug, &mask_a);
            aug_val = Some(la.clone().into_scalar::<f32>() as f64);
            total = total + la * (c_retain * cfg.augment_coeff);
        }
        if self.aug_in_ce && !p.augmented.is_empty() {
            let (alpha, pad) = (cfg.refusal_lm_alpha, self.lm.pad_id);
            let benign = &p.retain[..nb];
            let ce = refusal_lm_loss(net, alpha, &p.augmented, benign, pad, Some(dropout));
            aug_val = Some(ce.clone().into_scalar::<f32>() as f64);
            total = total + ce * cfg.augment_coeff;
        }
        MicroLosses {
            total,
            erasure: le.into_scalar::<f32>() as f64,
            retain: lr.into_scalar::<f32>() as f64,
            augment: aug_val.unwrap_or(0.0),
        }
    }

    /// The final adapter, train log and summary of a completed run.
    fn finish(&self, state: &State, started: Instant) -> Result<VariantSummary> {
        let (cfg, res, dir) = (self.cfg, self.res, self.ck.dir);
        let (model_ref, base) = (Some(self.ck.model_ref), Some(self.ck.base_sha));
        let adapter = dir.join("adapter");
        mosr_lm::adapter::save(&state.net, &res.lora, &adapter, model_ref, base)?;
        write_train_log(&dir.join("train_log.parquet"), &state.log)?;
        let first = state.log.first().expect("steps >= 1");
        let last = state.log.last().expect("steps >= 1");
        let fitted = &self.data.fitted;
        Ok(VariantSummary {
            variant: self.variant,
            seed: self.seed,
            steps: cfg.steps,
            loss_first: first.loss,
            loss_last: last.loss,
            erasure_first: first.erasure_loss,
            erasure_last: last.erasure_loss,
            retain_first: first.retain_loss,
            retain_last: last.retain_loss,
            wall_s: started.elapsed().as_secs_f64(),
            resumed_from_step: state.resumed_from,
            target_layers: res.target_layers.clone(),
            lora_layers: res.lora.layers.clone(),
            prompts_truncated: fitted.iter().map(|f| f.truncated).sum(),
            examples_dropped: fitted.iter().map(|f| f.dropped).sum(),
        })
    }
}

/// Backward of `total` (on a pool thread, like every forward: see `CausalLm::forward`), its
/// adapter gradients added into `gsum`.
fn accumulate_grads(state: &State, total: Tensor<1>, gsum: &mut [Vec<f32>]) {
    let mut grads = None;
    rayon::scope(|_| grads = Some(total.backward()));
    let grads = grads.expect("the scope ran the backward");
    for (k, s) in state.slots.iter().enumerate() {
        if let Some(g) = param_of(&state.net, s).and_then(|p| p.val().grad(&grads)) {
            for (acc, x) in gsum[k].iter_mut().zip(host(g)) {
                *acc += x;
            }
        }
    }
}

/// Σ x² over every gradient, in f64.
fn sum_of_squares(g: &[Vec<f32>]) -> f64 {
    g.iter()
        .flat_map(|g| g.iter())
        .map(|&x| (x as f64) * (x as f64))
        .sum()
}

/// Reads every train log of a finetune folder by (variant, seed) (reports, tests).
pub fn read_logs(dir: &Path) -> Result<BTreeMap<(String, u64), Vec<TrainLogRow>>> {
    let mut out = BTreeMap::new();
    for (variant, seed, path) in mosr_artifacts::list_instances(dir) {
        let p = path.join("train_log.parquet");
        if p.is_file() {
            out.insert((variant, seed), read_train_log(&p)?);
        }
    }
    Ok(out)
}

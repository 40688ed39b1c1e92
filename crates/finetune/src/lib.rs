//! mosr-finetune: LoRA representation fine-tuning, the circuit breaker / representation
//! rerouting (RR) baseline and MOSR, from one pipeline section.
//!
//! Per step t of T, with B harmful and B retain sequences (plus augmented ones):
//! * the original model's states come from the same network with the adapter switched off,
//!   once per batch, without gradient (no second copy of the weights);
//! * erasure = `ReLU(cos(h_lora, h_orig))` at the target layers over the loss tokens (the
//!   request and response spans of the chat template, [`LossTokens`]), each harmful example
//!   scaled by its overlap weight (variants with weights; mean 1 per batch);
//! * retain = mean per-token distance over the retain layers on the benign retain sequences;
//! * augmented sequences (variants with augmentation) add their own term, weighted by
//!   `augment_coeff`: the refusal tokens' cross-entropy, or a retain distance averaged over
//!   their own tokens;
//! * loss = `c_erase · erasure + c_retain · retain (+ augmented term)`, `c_erase = α(1 − t/2T)`,
//!   `c_retain = α t/2T`; AdamW on the adapter only.
//!
//! Variants `rr`, `rr_weights`, `rr_augment` and `mosr` share the seed, the LoRA
//! initialisation, the harmful and retain data order and the dropout masks, so their
//! differences come from the method. Data order and dropout are functions of (seed, step), and
//! a checkpoint holds the adapter (PEFT), the AdamW moments, the step and the log, so a killed
//! run resumes bit-identically.

pub mod bench;
pub mod data;
pub mod loss;
pub mod train;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use mosr_artifacts::StageWork;
use mosr_artifacts::{StageManifest, sha256_file};
use mosr_lm::LanguageModel;
use mosr_stage::{Ctx, Planned};
use serde::{Deserialize, Serialize};
use tracing::info;

pub use train::{RunOptions, TrainError, VariantSummary, train_variant};

/// The four compared models (besides the base model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// Circuit breaker / representation rerouting: no weights, no augmentation.
    Rr,
    /// RR + overlap-aware loss weighting.
    RrWeights,
    /// RR + context-aware augmentation.
    RrAugment,
    /// Both components.
    Mosr,
}

impl Variant {
    pub const ALL: [Variant; 4] = [
        Variant::Rr,
        Variant::RrWeights,
        Variant::RrAugment,
        Variant::Mosr,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Variant::Rr => "rr",
            Variant::RrWeights => "rr_weights",
            Variant::RrAugment => "rr_augment",
            Variant::Mosr => "mosr",
        }
    }
    pub fn uses_weights(self) -> bool {
        matches!(self, Variant::RrWeights | Variant::Mosr)
    }
    pub fn uses_augment(self) -> bool {
        matches!(self, Variant::RrAugment | Variant::Mosr)
    }
}

/// [R] The per-token distance of the retain loss.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetainDistance {
    /// `‖h_lora − h_orig‖` (circuit breakers' code, the paper's Eq. 6); the default.
    #[default]
    L2,
    /// `‖h_lora − h_orig‖ / ‖h_orig‖`. The erasure cosine's gradient shrinks with 1/‖h‖ while
    /// the L2 distance's does not, so on a model with large hidden norms (SmolLM2-135M's
    /// middle layers: 140–220) the L2 retain term outweighs erasure from the first steps and
    /// the adapter only learns to stay put. Dividing by the original norm puts both terms on
    /// the same scale.
    RelativeL2,
}

impl RetainDistance {
    fn is_l2(&self) -> bool {
        *self == RetainDistance::L2
    }
}

/// [R] Which tokens of a training sequence a representation loss covers. The spans come from
/// the chat template itself (the user message's content as rendered, and the response), so
/// they are the same on every model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossTokens {
    /// The request (user content) and the response; the default. Circuit breakers' masks
    /// cover the request and the response: the shared preamble (BOS, the template's system
    /// prompt, role markers) is identical in harmful and retain rows, so erasing it would
    /// fight the retain term on the same states and offer erasure a shortcut that ignores
    /// the request.
    #[default]
    RequestAndResponse,
    /// The response only.
    Response,
    /// Every token but the first `skip_sink_tokens` (the behaviour before spans existed).
    All,
}

/// [R] What to do with a chat prompt longer than `max_prompt_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// Keep the template and the start of the request, cut the request's tail; the default.
    #[default]
    RequestTail,
    /// Leave the example out.
    Drop,
}

/// [R] How overlap weights are scaled before they multiply the erasure term.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightNormalization {
    /// Token-weighted mean 1 within each micro-batch (the default): weighting redistributes
    /// erasure between examples without changing its scale (unnormalised, a batch of mean
    /// weight 1.06 erases 6% harder, i.e. runs at another learning rate).
    #[default]
    Batch,
    /// The weights as the weights stage wrote them (mean 1 over the whole harmful set).
    None,
}

/// LoRA settings (circuit breakers' defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraSection {
    /// Default 16.
    pub rank: usize,
    /// Default 16.
    pub alpha: f64,
    /// Default 0.05.
    pub dropout: f64,
    /// Default: all seven projections.
    pub modules: Vec<String>,
    /// Blocks (0-based) with an adapter. Empty (default): every block below the deepest
    /// target layer, i.e. exactly the blocks that move the target states (circuit breakers
    /// also adapt block max(target), which the loss never reaches).
    pub layers: Vec<usize>,
}

impl Default for LoraSection {
    fn default() -> Self {
        let d = mosr_lm::LoraConfig::default();
        Self {
            rank: d.rank,
            alpha: d.alpha,
            dropout: d.dropout,
            modules: d.modules,
            layers: vec![],
        }
    }
}

/// `[finetune]` section. Defaults are circuit breakers' Llama-3-8B settings where they exist
/// ([B]); MOSR's own values are not known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneConfig {
    /// Variants to train, each into its own sub-folder; default all four.
    pub variants: Vec<Variant>,
    /// T; default 150.
    pub steps: usize,
    /// Harmful and retain sequences per micro-batch (each); default 16.
    pub batch_size: usize,
    /// Augmented sequences per micro-batch in variants with augmentation; default: batch_size.
    /// They are an extra stream, so the harmful and retain order is the same in every variant.
    pub augment_batch_size: Option<usize>,
    /// Micro-batches per optimizer step; default 1.
    pub grad_accum: usize,
    /// Default 1e-4 (constant).
    pub learning_rate: f64,
    /// Default 0.
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    /// Global gradient-norm clip; default 1.0 (the HF Trainer default circuit breakers ran
    /// with). None disables it.
    pub max_grad_norm: Option<f64>,
    /// α of the schedule; default 10.
    pub alpha: f64,
    /// Layers of the erasure loss (0 = embedding output, l = output of block l). Empty
    /// (default): about 1/3 and 2/3 of the depth (circuit breakers: 10 and 20 of 32).
    pub target_layers: Vec<usize>,
    /// Layers of the retain loss. Empty (default): every layer 1..=max(target) (the states the
    /// truncated network computes; the embedding output never changes).
    pub retain_layers: Vec<usize>,
    pub lora: LoraSection,
    /// Chat-formatted prompt tokens kept; default 512. What happens to a longer prompt is
    /// `truncation`.
    pub max_prompt_tokens: usize,
    /// [R] Default `request_tail` (see [`Truncation`]); the counts are in the manifest.
    pub truncation: Truncation,
    /// Response tokens kept (the start is kept); default 512.
    pub max_response_tokens: usize,
    /// [R] Tokens of the erasure loss, and of the retain loss unless `retain_loss_tokens` is
    /// set; default `request_and_response` (see [`LossTokens`]).
    pub loss_tokens: LossTokens,
    /// [R] Tokens of the retain loss; default: `loss_tokens`.
    pub retain_loss_tokens: Option<LossTokens>,
    /// [R] Default `batch` (see [`WeightNormalization`]).
    pub weight_normalization: WeightNormalization,
    /// [R] Weight of the augmented examples' own term: their retain distance (a mean over
    /// their own tokens, beside the benign retain mean, under the retain coefficient) with
    /// `[augment.augmentation] target = "retain_states"`, or the refusal cross-entropy with
    /// `"refusal_lm"`; default 1.
    #[serde(alias = "cross_entropy_coeff")]
    pub augment_coeff: f64,
    /// [R] α of Qi et al.'s objective with `target = "refusal_lm"`: the augmented term is
    /// `α · CE(refusal) + (1 − α) · CE(the retain rows' own answers)`; default 0.2 (Qi et al.).
    /// 1 drops the benign anchor (measured: every variant with augmentation then refuses every
    /// prompt, benign ones included; docs/stages.md).
    pub refusal_lm_alpha: f64,
    /// Steps between checkpoints; default 10.
    pub checkpoint_every: usize,
    /// [R] Tokens at the start of each sequence left out of the erasure and retain losses;
    /// default 1. The first token is the attention sink: its massive activation (SmolLM2,
    /// layer 20: norm 25,011 against about 220 for the other tokens) otherwise makes the
    /// per-token L2 retain loss a measure of that one token, and training spends its steps
    /// there while the content tokens barely move. 0 = circuit breakers' code (every request
    /// and response token, BOS included).
    pub skip_sink_tokens: usize,
    /// [R] Standard deviation of a Gaussian initialisation of the LoRA B matrices; default 0
    /// (PEFT's zeros, what circuit breakers ran). With B = 0 the adapted states equal the
    /// original ones, which is a stationary point of the erasure cosine: its gradient is
    /// exactly 0 there, and in f32 training never leaves it (bf16 rounding noise is what lets
    /// the reference escape). A small value starts just off that point; the retain loss then
    /// starts slightly above 0 instead of at 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub lora_b_init_std: f64,
    /// [R] Distance of the retain loss; default `l2` (see [`RetainDistance`]).
    #[serde(skip_serializing_if = "RetainDistance::is_l2")]
    pub retain_distance: RetainDistance,
    /// Training seeds (adapter initialisation, data order, dropout): every variant is trained
    /// once per seed into `<variant>/seed-<seed>/`, so a difference between variants can be
    /// checked against the spread between seeds. Empty (default): `[run] seed` alone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<u64>,
    /// Steps (each in 1..`steps`, increasing) at which the adapter is also saved, into
    /// `<variant>/seed-<seed>/step-<t>/adapter/`: the points of the safety/over-refusal
    /// frontier (the eval stage's `[eval.frontier]`), the same training stopped earlier, i.e.
    /// a weaker erasure push. Default empty: no snapshots (and no change to the stage key).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub frontier_steps: Vec<usize>,
}

pub use mosr_artifacts::{instance_dir, snapshot_dir};

/// Keeps a default-valued option out of the serialized config, so the stage keys of runs made
/// before the option existed stay valid.
fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            variants: Variant::ALL.to_vec(),
            seeds: Vec::new(),
            steps: 150,
            batch_size: 16,
            augment_batch_size: None,
            grad_accum: 1,
            learning_rate: 1e-4,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            max_grad_norm: Some(1.0),
            alpha: 10.0,
            target_layers: vec![],
            retain_layers: vec![],
            lora: LoraSection::default(),
            max_prompt_tokens: 512,
            truncation: Truncation::RequestTail,
            max_response_tokens: 512,
            loss_tokens: LossTokens::RequestAndResponse,
            retain_loss_tokens: None,
            weight_normalization: WeightNormalization::Batch,
            augment_coeff: 1.0,
            refusal_lm_alpha: 0.2,
            checkpoint_every: 10,
            skip_sink_tokens: 1,
            lora_b_init_std: 0.0,
            retain_distance: RetainDistance::L2,
            frontier_steps: Vec::new(),
        }
    }
}

/// Layers and LoRA placement resolved against a model's depth.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub target_layers: Vec<usize>,
    pub retain_layers: Vec<usize>,
    /// Blocks to run: the deepest layer any loss reads.
    pub num_layers: usize,
    pub lora: mosr_lm::LoraConfig,
}

impl FinetuneConfig {
    pub fn validate(&self) -> Result<()> {
        if self.variants.is_empty() {
            bail!("finetune: `variants` is empty");
        }
        if self.steps == 0 || self.batch_size == 0 || self.grad_accum == 0 {
            bail!("finetune: steps, batch_size and grad_accum must be at least 1");
        }
        if self.checkpoint_every == 0 {
            bail!("finetune: checkpoint_every must be at least 1");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            bail!(
                "finetune: learning_rate {} must be positive",
                self.learning_rate
            );
        }
        if !(self.lora_b_init_std.is_finite() && self.lora_b_init_std >= 0.0) {
            bail!(
                "finetune: lora_b_init_std {} must be finite and at least 0",
                self.lora_b_init_std
            );
        }
        if !(self.augment_coeff.is_finite() && self.augment_coeff >= 0.0) {
            bail!(
                "finetune: augment_coeff {} must be finite and at least 0",
                self.augment_coeff
            );
        }
        if !(0.0..=1.0).contains(&self.refusal_lm_alpha) {
            bail!(
                "finetune: refusal_lm_alpha {} must be in [0, 1]",
                self.refusal_lm_alpha
            );
        }
        let distinct: std::collections::BTreeSet<&u64> = self.seeds.iter().collect();
        if distinct.len() != self.seeds.len() {
            bail!("finetune: `seeds` lists a seed twice: {:?}", self.seeds);
        }
        self.validate_frontier_steps()
    }

    /// `frontier_steps`: each strictly between 0 and `steps` (the final adapter is the last
    /// point already), strictly increasing.
    fn validate_frontier_steps(&self) -> Result<()> {
        let f = &self.frontier_steps;
        if let Some(&t) = f.iter().find(|&&t| t == 0 || t >= self.steps) {
            bail!(
                "finetune: frontier_steps {f:?}: step {t} is not in 1..{} (strictly below `steps` = {}; the final adapter is the last point anyway)",
                self.steps,
                self.steps
            );
        }
        if f.windows(2).any(|w| w[0] >= w[1]) {
            bail!("finetune: frontier_steps {f:?} must be strictly increasing");
        }
        Ok(())
    }

    /// Tokens of the retain loss.
    pub fn retain_tokens(&self) -> LossTokens {
        self.retain_loss_tokens.unwrap_or(self.loss_tokens)
    }

    /// The training seeds: `seeds`, or the run's seed when it is empty.
    pub fn seeds_or(&self, run_seed: u64) -> Vec<u64> {
        if self.seeds.is_empty() {
            vec![run_seed]
        } else {
            self.seeds.clone()
        }
    }

    /// Resolves defaults against a model with `depth` blocks.
    pub fn resolve(&self, depth: usize) -> Result<Resolved> {
        let target = if self.target_layers.is_empty() {
            let a = ((depth as f64) / 3.0).round() as usize;
            let b = ((2.0 * depth as f64) / 3.0).round() as usize;
            let mut v = vec![a.max(1), b.max(1)];
            v.dedup();
            v
        } else {
            self.target_layers.clone()
        };
        let max_t = *target.iter().max().expect("non-empty");
        let retain = if self.retain_layers.is_empty() {
            (1..=max_t).collect()
        } else {
            self.retain_layers.clone()
        };
        for &l in target.iter().chain(&retain) {
            if l == 0 || l > depth {
                bail!("finetune: layer {l} is outside 1..={depth} (the model has {depth} blocks)");
            }
        }
        let num_layers = target.iter().chain(&retain).copied().max().unwrap_or(max_t);
        let layers = if self.lora.layers.is_empty() {
            (0..max_t).collect()
        } else {
            self.lora.layers.clone()
        };
        if let Some(&l) = layers.iter().find(|&&l| l >= depth) {
            bail!("finetune: LoRA layer {l} is outside 0..{depth}");
        }
        let lora = mosr_lm::LoraConfig {
            rank: self.lora.rank,
            alpha: self.lora.alpha,
            dropout: self.lora.dropout,
            modules: self.lora.modules.clone(),
            layers,
        };
        lora.validate()?;
        Ok(Resolved {
            target_layers: target,
            retain_layers: retain,
            num_layers,
            lora,
        })
    }
}

/// Where the training data come from.
#[derive(Debug, Clone)]
pub struct FinetuneInputs {
    /// `training_examples.parquet` of the augment stage.
    pub examples: PathBuf,
    /// `overlap_weights.parquet` of the weights stage (required by weighted variants).
    pub weights: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FinetuneOutputs {
    pub variants: Vec<VariantSummary>,
    /// False when [`RunOptions::stop_after_step`] stopped the run early.
    pub complete: bool,
}

/// Trains every configured variant for every seed into `<out_dir>/<variant>/seed-<seed>/`.
/// `lm` must live on an autodiff device; `model_ref` names the base model in the adapter
/// config and `base_sha` is its hash (checked when a checkpoint is resumed). Instances already
/// finished in `out_dir` are skipped; finished instances of an earlier run in
/// `opts.reuse_from` whose instance key (config without the seed list, this seed,
/// `opts.upstream`) matches are copied, so adding a seed trains only that seed.
#[allow(clippy::too_many_arguments)]
pub fn run(
    cfg: &FinetuneConfig,
    lm: &LanguageModel,
    model_ref: &str,
    base_sha: &str,
    seeds: &[u64],
    inputs: &FinetuneInputs,
    out_dir: &Path,
    opts: &RunOptions,
) -> Result<FinetuneOutputs> {
    cfg.validate()?;
    let mut out = Vec::new();
    for &seed in seeds {
        for &v in &cfg.variants {
            let rel = instance_dir(v.name(), seed);
            let dir = out_dir.join(&rel);
            let key = train::instance_key(cfg, v, seed, &opts.upstream)?;
            if let Some(r) = &opts.reuse_from {
                reuse_instance(&r.join(&rel), &dir, &key)?;
            }
            let data = data::TrainData::load(cfg, lm, inputs, v)?;
            match train_variant(cfg, lm, model_ref, base_sha, seed, &data, v, &dir, opts)? {
                Some(s) => {
                    mosr_artifacts::write_bytes_atomic(&dir.join(INSTANCE_KEY), key.as_bytes())?;
                    out.push(s);
                }
                None => {
                    return Ok(FinetuneOutputs {
                        variants: out,
                        complete: false,
                    });
                }
            }
        }
    }
    Ok(FinetuneOutputs {
        variants: out,
        complete: true,
    })
}

/// File of a finished instance holding its instance key.
const INSTANCE_KEY: &str = "instance.key";

/// Copies a finished instance (adapter, log, summary; not its checkpoints) from an earlier
/// run's folder when its instance key is `key` and `dir` has nothing finished yet.
fn reuse_instance(from: &Path, dir: &Path, key: &str) -> Result<()> {
    let same = std::fs::read_to_string(from.join(INSTANCE_KEY)).is_ok_and(|k| k.trim() == key);
    if !same || dir.join("summary.json").is_file() || !from.join("summary.json").is_file() {
        return Ok(());
    }
    let mut files = Vec::new();
    let snapshots = mosr_artifacts::list_snapshots(from)
        .into_iter()
        .map(|(t, _)| mosr_artifacts::snapshot_dir(t));
    for adapter in std::iter::once("adapter".to_string()).chain(snapshots) {
        let to = dir.join(&adapter);
        std::fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            files.push(format!("{adapter}/{f}"));
        }
    }
    // The summary last: its presence marks the instance finished.
    files.extend(["train_log.parquet", INSTANCE_KEY, "summary.json"].map(String::from));
    for f in files {
        std::fs::copy(from.join(&f), dir.join(&f))
            .with_context(|| format!("reusing {}", from.join(&f).display()))?;
    }
    info!(from = %from.display(), "finished instance reused");
    Ok(())
}

/// The finetune stage, into `runs/<pipeline>/finetune/<variant>/seed-<seed>/`. Inputs:
/// `augment/training_examples.parquet` and, for weighted variants,
/// `weights/overlap_weights.parquet`, which must have been computed from the same augment
/// output. A killed run resumes from each instance's last checkpoint.
pub struct Finetune;

/// What the finetune stage trains from.
pub struct FinetunePlan {
    pub cfg: FinetuneConfig,
    /// Whether any variant reads the overlap weights.
    pub needs_weights: bool,
}

impl mosr_stage::Stage for Finetune {
    const NAME: &'static str = "finetune";
    const UPSTREAM: &'static [&'static str] = &["augment", "weights"];
    type Section = FinetuneConfig;
    type Plan = FinetunePlan;

    fn validate(section: &FinetuneConfig) -> Result<()> {
        section.validate()
    }

    fn plan(ctx: &Ctx, cfg: FinetuneConfig) -> Result<Planned<FinetunePlan>> {
        let augment = ctx.upstream("augment")?;
        let mut inputs = BTreeMap::new();
        inputs.insert("augment".to_string(), augment.key.clone());
        inputs.insert("model".to_string(), ctx.model()?.sha256.clone());
        inputs.insert("seed".to_string(), ctx.seed().to_string());
        let needs_weights = cfg.variants.iter().any(|v| v.uses_weights());
        if needs_weights {
            let w = ctx.upstream("weights")?;
            if w.inputs.get("augment") != Some(&augment.key) {
                bail!(
                    "{}: the overlap weights were computed for augment output {}, but augment is now {}; re-run the weights stage",
                    ctx.upstream_file("weights", "overlap_weights.parquet")
                        .display(),
                    w.inputs.get("augment").map(String::as_str).unwrap_or("?"),
                    augment.key
                );
            }
            inputs.insert("weights".to_string(), w.key);
        }
        let config = serde_json::to_value(&cfg)?;
        let plan = FinetunePlan { cfg, needs_weights };
        Ok(Planned {
            config,
            inputs,
            plan,
        })
    }

    fn compute(
        ctx: &Ctx,
        planned: Planned<FinetunePlan>,
        work: &StageWork,
    ) -> Result<StageManifest> {
        let started = Instant::now();
        let FinetunePlan { cfg, needs_weights } = &planned.plan;
        let model = ctx.model()?;
        let examples = ctx.upstream_file("augment", "training_examples.parquet");
        let weights_path = ctx.upstream_file("weights", "overlap_weights.parquet");
        let device = mosr_lm::device_from_name(&ctx.file.run.device)?.autodiff();
        let lm = LanguageModel::open(&model.path, &device)?;
        let fin = FinetuneInputs {
            examples: examples.clone(),
            weights: needs_weights.then(|| weights_path.clone()),
        };
        let upstream: BTreeMap<String, String> = planned
            .inputs
            .iter()
            .filter(|(k, _)| k.as_str() != "seed")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let committed = ctx.run_dir.stage_dir(Self::NAME);
        let options = RunOptions {
            reuse_from: committed.is_dir().then_some(committed),
            upstream,
            ..RunOptions::default()
        };
        let seeds = cfg.seeds_or(ctx.seed());
        let (model_name, sha) = (&ctx.file.run.model, &model.sha256);
        let out = run(
            cfg,
            &lm,
            model_name,
            sha,
            &seeds,
            &fin,
            work.dir(),
            &options,
        )?;
        let mut manifest = planned.manifest(Self::NAME);
        manifest.inputs.insert(
            "augment/training_examples.parquet".into(),
            sha256_file(&examples)?,
        );
        if *needs_weights {
            manifest.inputs.insert(
                "weights/overlap_weights.parquet".into(),
                sha256_file(&weights_path)?,
            );
        }
        record_instances(&mut manifest, cfg, &out, work.dir())?;
        manifest.seed = Some(ctx.seed());
        manifest.wall_time_s = started.elapsed().as_secs_f64();
        Ok(manifest)
    }
}

/// Each trained instance's adapter, log and snapshots (by sha256) and its counts.
fn record_instances(
    manifest: &mut StageManifest,
    cfg: &FinetuneConfig,
    out: &FinetuneOutputs,
    dir: &Path,
) -> Result<()> {
    for s in &out.variants {
        let rel = instance_dir(s.variant.name(), s.seed);
        let snapshots = cfg
            .frontier_steps
            .iter()
            .map(|&t| format!("{}/adapter_model.safetensors", snapshot_dir(t as u64)));
        let files = ["adapter/adapter_model.safetensors", "train_log.parquet"]
            .map(String::from)
            .into_iter()
            .chain(snapshots);
        for f in files {
            let p = dir.join(&rel).join(&f);
            manifest
                .outputs
                .insert(format!("{rel}/{f}"), sha256_file(&p)?);
        }
        let counts = [
            ("steps", s.steps),
            ("prompts_truncated", s.prompts_truncated),
            ("examples_dropped", s.examples_dropped),
        ];
        for (name, n) in counts {
            manifest
                .row_counts
                .insert(format!("{rel}/{name}"), n as u64);
        }
    }
    Ok(())
}

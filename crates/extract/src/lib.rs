//! The extract stage: the residual stream of every layer for chat-formatted prompts.
//!
//! For each selected prompt (a seeded sample per role and split, see [`mosr_stage::prompts::select`]) the
//! stage renders a single user turn with the model's own chat template and generation prompt,
//! runs batched forwards through `mosr-lm` (no adapter), and writes one row per prompt and layer
//! to `representations.parquet` (schema in `mosr_artifacts::analysis::REPRESENTATIONS`).
//!
//! Memory stays bounded by one batch: each batch is written as its own part file the moment it
//! is computed, and a killed run skips the parts it finds; the parts are merged (streamed,
//! one at a time) into the final table at the end.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use arrow::array::RecordBatch;
use burn::tensor::Tensor;
use mosr_artifacts::StageWork;
use mosr_artifacts::analysis::{Parts, REPRESENTATIONS, RepresentationRow};
use mosr_artifacts::row::record_batch;
use mosr_artifacts::{PromptRow, StageManifest, sha256_bytes, sha256_file};
use mosr_lm::{ForwardOptions, LanguageModel, Logits, TokenBatch};
use mosr_stage::{Ctx, Planned};
use serde::{Deserialize, Serialize};
use tracing::info;

use mosr_stage::prompts;
pub use mosr_stage::prompts::{OnOverflow, PromptPass};

/// Where in the prompt the representation is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    /// The last token of the formatted prompt: the one before the assistant's first token,
    /// where the model decides how to answer [R: the method notes' default].
    #[default]
    LastPromptToken,
    /// Mean over every token of the formatted prompt (template tokens included).
    MeanPrompt,
}

impl Position {
    pub fn as_str(self) -> &'static str {
        match self {
            Position::LastPromptToken => "last_prompt_token",
            Position::MeanPrompt => "mean_prompt",
        }
    }
}

/// `[extract]` section of a pipeline file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractSection {
    /// Roles to extract. Default: harmful, benign, pseudo_malicious (the overlap bank the
    /// `weights` stage reads), overrefusal_safe, overrefusal_unsafe_contrast,
    /// overrefusal_borderline. A role without prompts in the chosen splits is an error.
    #[serde(default = "default_roles")]
    pub roles: Vec<String>,
    /// Splits to extract (default train and test; over-refusal roles exist only in test,
    /// pseudo_malicious only in train).
    #[serde(default = "default_splits")]
    pub splits: Vec<String>,
    /// At most this many prompts per (role, split), a seeded sample; default: all.
    #[serde(default)]
    pub max_per_role_split: Option<usize>,
    /// Layers to keep (0 = embedding output, l = output of block l); default: all.
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
    /// Token position of the representation (default `last_prompt_token`).
    #[serde(default)]
    pub position: Position,
    /// Prompts per forward (default 8).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Longest formatted prompt in tokens (default 512).
    #[serde(default = "default_max_prompt_tokens")]
    pub max_prompt_tokens: usize,
    /// `truncate` (default; counted in the manifest) or `reject` (the stage fails).
    #[serde(default)]
    pub on_overflow: OnOverflow,
}

fn default_roles() -> Vec<String> {
    [
        "harmful",
        "benign",
        "pseudo_malicious",
        "overrefusal_safe",
        "overrefusal_unsafe_contrast",
        "overrefusal_borderline",
    ]
    .map(String::from)
    .to_vec()
}
fn default_splits() -> Vec<String> {
    vec!["train".into(), "test".into()]
}
fn default_batch_size() -> usize {
    8
}
fn default_max_prompt_tokens() -> usize {
    512
}

impl ExtractSection {
    /// The values `--check` can judge without the model: sizes at least 1, roles and splits
    /// known and listed once (a duplicate would extract every prompt twice).
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            bail!("[extract] batch_size must be at least 1");
        }
        if self.max_prompt_tokens == 0 {
            bail!("[extract] max_prompt_tokens must be at least 1");
        }
        if self.max_per_role_split == Some(0) {
            bail!(
                "[extract] max_per_role_split = 0 would extract nothing; omit it for every prompt"
            );
        }
        for (key, v) in [("roles", &self.roles), ("splits", &self.splits)] {
            if v.is_empty() {
                bail!("[extract] {key} is empty");
            }
            if let Some(d) = v.iter().enumerate().find(|(i, x)| v[..*i].contains(x)) {
                bail!("[extract] {key} lists `{}` twice", d.1);
            }
        }
        prompts::parse_roles(&self.roles)?;
        prompts::parse_splits(&self.splits)?;
        Ok(())
    }
}

impl Default for ExtractSection {
    fn default() -> Self {
        ExtractSection {
            roles: default_roles(),
            splits: default_splits(),
            max_per_role_split: None,
            layers: None,
            position: Position::default(),
            batch_size: default_batch_size(),
            max_prompt_tokens: default_max_prompt_tokens(),
            on_overflow: OnOverflow::default(),
        }
    }
}

/// Everything `run` needs: the section plus where the prompts are and the run's model,
/// device and seed.
pub type ExtractConfig = PromptPass<ExtractSection>;

#[derive(Debug, Clone)]
pub struct ExtractOutputs {
    pub representations: PathBuf,
    pub manifest: PathBuf,
    pub prompts: usize,
    pub layers: Vec<usize>,
    pub truncated: usize,
}

/// The model facts recorded in the manifest and the stage key.
#[derive(Debug, Clone, Serialize)]
struct ModelInfo {
    id: String,
    sha256: String,
    chat_template_sha256: String,
    dtype: &'static str,
    hidden_size: usize,
    num_layers: usize,
}

/// Run extraction into `out_dir` (created); resumes from part files a killed run left there
/// with the same configuration.
pub fn run(cfg: &ExtractConfig, out_dir: &Path) -> Result<ExtractOutputs> {
    let started = Instant::now();
    let s = &cfg.section;
    s.validate()?;
    let chosen = prompts::read_selected(
        &cfg.prompts,
        &s.roles,
        &s.splits,
        s.max_per_role_split,
        cfg.seed,
    )?;
    let mosr_lm::ModelIdentity {
        path: model_path,
        sha256: model_sha,
    } = mosr_lm::identify(&cfg.model)?;
    let device = mosr_lm::device_from_name(&cfg.device)?;
    let t0 = Instant::now();
    let lm = LanguageModel::open(&model_path, &device)?;
    info!(model = %model_path.display(), secs = t0.elapsed().as_secs_f64(), "model loaded");
    let n_blocks = lm.config.num_layers;
    let layers = prompts::layers("extract", s.layers.as_deref(), n_blocks)?;
    let info_model = ModelInfo {
        id: cfg.model.clone(),
        sha256: model_sha,
        chat_template_sha256: sha256_bytes(lm.chat.source.as_bytes()),
        dtype: "f32",
        hidden_size: lm.config.hidden_size,
        num_layers: n_blocks,
    };

    // Tokenise everything up front (cheap), then batch by length so padding stays small.
    let prompts::Tokenized { items, truncated } = prompts::tokenize(
        &lm,
        "extract",
        &chosen,
        s.max_prompt_tokens,
        s.on_overflow,
        &cfg.prompts,
    )?;
    let n_batches = items.len().div_ceil(s.batch_size);
    info!(
        prompts = items.len(),
        batches = n_batches,
        layers = layers.len(),
        truncated,
        "extracting"
    );

    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let manifest_config =
        serde_json::json!({ "section": s, "model": info_model, "seed": cfg.seed });
    let fingerprint = sha256_bytes(serde_json::to_string(&manifest_config)?.as_bytes());
    let parts = Parts::keyed(&out_dir.join("parts"), &REPRESENTATIONS, &fingerprint)?;
    let skipped = prompts::resumable_batches(
        &items,
        s.batch_size,
        "extract",
        |bi| parts.done(bi),
        |bi, chunk| {
            let path = parts.path(bi);
            let part = extract_batch(&lm, &model_path, chunk, &layers, s.position, &path)?;
            Ok(parts.write(bi, &part)?)
        },
    )?;
    let rep_path = out_dir.join("representations.parquet");
    let rows = parts.merge(n_batches, &rep_path)?;

    let counts = [
        ("representations", rows),
        ("prompts", chosen.len() as u64),
        ("layers", layers.len() as u64),
        ("truncated_prompts", truncated as u64),
        ("resumed_batches", skipped as u64),
    ];
    let mut manifest = manifest(
        cfg,
        manifest_config,
        &info_model,
        &chosen,
        &rep_path,
        counts,
    )?;
    manifest.wall_time_s = started.elapsed().as_secs_f64();
    let manifest_path = out_dir.join("manifest.json");
    manifest.write(&manifest_path)?;
    info!(
        prompts = chosen.len(),
        rows,
        secs = manifest.wall_time_s,
        out = %rep_path.display(),
        "extract done"
    );
    Ok(ExtractOutputs {
        representations: rep_path,
        manifest: manifest_path,
        prompts: chosen.len(),
        layers,
        truncated,
    })
}

/// One batch's residual-stream vectors at `position`, as the `parts` record batch bound for
/// `path`: one row per (layer, prompt), layer-major.
fn extract_batch(
    lm: &LanguageModel,
    model_path: &Path,
    chunk: &[(Vec<u32>, &PromptRow)],
    layers: &[usize],
    position: Position,
    path: &Path,
) -> Result<RecordBatch> {
    let width = lm.config.hidden_size;
    let opts = ForwardOptions {
        hidden: true,
        num_layers: Some(*layers.last().expect("non-empty")),
        logits: Logits::None,
        adapter: false,
        dropout: None,
        training_arithmetic: false,
        skip_padding: true,
    };
    let seqs: Vec<Vec<u32>> = chunk.iter().map(|(ids, _)| ids.clone()).collect();
    let batch = TokenBatch::left_padded(&seqs, lm.pad_id);
    let out = lm.net.forward(&batch, None, opts);
    let vectors = pick_positions(&out.hidden, &batch, layers, position, width)?;
    if let Some(i) = vectors.iter().position(|x| !x.is_finite()) {
        let (layer, row) = (layers[i / (chunk.len() * width)], (i / width) % chunk.len());
        bail!(
            "{}: non-finite hidden state ({}) at layer {layer} for prompt `{}`: the model's weights produce NaN or Inf; no representations were written for this batch",
            model_path.display(),
            vectors[i],
            chunk[row].1.id
        );
    }
    // Layer-major: `vectors` holds the first layer's prompts, then the next layer's, ...
    anyhow::ensure!(
        vectors.len() == layers.len() * chunk.len() * width,
        "{}: {} hidden-state values for {} layers x {} prompts of width {width}",
        path.display(),
        vectors.len(),
        layers.len(),
        chunk.len()
    );
    let pairs = layers
        .iter()
        .flat_map(|&l| chunk.iter().map(move |(_, p)| (l, *p)));
    let rows: Vec<RepresentationRow> = pairs
        .zip(vectors.chunks(width))
        .map(|((l, p), v)| RepresentationRow {
            prompt_id: p.id.clone(),
            role: p.role,
            split: p.split,
            layer: l as i32,
            position_kind: position.as_str().to_string(),
            vector: v.to_vec(),
        })
        .collect();
    Ok(record_batch(&rows, path)?)
}

/// The stage manifest: configuration, inputs (prompts, model), the representations' hash and
/// the counts (per prompt group, then `counts`).
fn manifest(
    cfg: &ExtractConfig,
    config: serde_json::Value,
    model: &ModelInfo,
    chosen: &[PromptRow],
    representations: &Path,
    counts: [(&str, u64); 5],
) -> Result<StageManifest> {
    let mut manifest = StageManifest::new("extract", config);
    manifest.seed = Some(cfg.seed);
    let inputs = &mut manifest.inputs;
    inputs.insert("prompts.parquet".into(), sha256_file(&cfg.prompts)?);
    inputs.insert("model".into(), model.sha256.clone());
    let rep = sha256_file(representations)?;
    manifest
        .outputs
        .insert("representations.parquet".into(), rep);
    manifest.row_counts = prompts::manifest_counts(chosen);
    for (k, v) in counts {
        manifest.row_counts.insert(k.into(), v);
    }
    Ok(manifest)
}

/// Row-major `[layer][prompt][width]` vectors at the configured position. Batches are
/// left-padded, so the last column is every row's last prompt token.
pub fn pick_positions(
    hidden: &[Tensor<3>],
    batch: &TokenBatch,
    layers: &[usize],
    position: Position,
    width: usize,
) -> Result<Vec<f32>> {
    let (b, t) = (batch.batch, batch.seq);
    let mut out = Vec::with_capacity(layers.len() * b * width);
    for &l in layers {
        let h = hidden
            .get(l)
            .with_context(|| {
                format!(
                    "forward returned {} hidden states, layer {l} asked",
                    hidden.len()
                )
            })?
            .clone();
        match position {
            Position::LastPromptToken => {
                let v = h.narrow(1, t - 1, 1).into_data().try_into_vec_as::<f32>();
                out.extend(v.map_err(|e| anyhow::anyhow!("hidden state data: {e:?}"))?);
            }
            Position::MeanPrompt => {
                let v = h
                    .into_data()
                    .try_into_vec_as::<f32>()
                    .map_err(|e| anyhow::anyhow!("hidden state data: {e:?}"))?;
                for row in 0..b {
                    let mut acc = vec![0f64; width];
                    let mut n = 0usize;
                    for col in 0..t {
                        if batch.mask[row * t + col] {
                            n += 1;
                            let base = (row * t + col) * width;
                            for (a, x) in acc.iter_mut().zip(&v[base..base + width]) {
                                *a += *x as f64;
                            }
                        }
                    }
                    out.extend(acc.iter().map(|a| (*a / n.max(1) as f64) as f32));
                }
            }
        }
    }
    Ok(out)
}

/// The extract stage: its key covers the section, the model (file and sha256), the seed, the
/// device and the data stage's key.
pub struct Extract;

impl mosr_stage::Stage for Extract {
    const NAME: &'static str = "extract";
    const UPSTREAM: &'static [&'static str] = &["data"];
    type Section = ExtractSection;
    type Plan = ExtractConfig;

    fn validate(section: &ExtractSection) -> Result<()> {
        section.validate()
    }

    fn plan(ctx: &Ctx, section: ExtractSection) -> Result<Planned<ExtractConfig>> {
        PromptPass::plan(ctx, section)
    }

    fn compute(
        _: &Ctx,
        planned: Planned<ExtractConfig>,
        work: &StageWork,
    ) -> Result<StageManifest> {
        let out = run(&planned.plan, work.dir())?;
        Ok(StageManifest::read(&out.manifest)?)
    }
}

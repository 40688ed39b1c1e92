//! mosr-augment: the training sets of the representation fine-tune, as one Parquet table
//! (`training_examples.parquet`).
//!
//! * **harmful** (erasure branch): harmful train prompt + a harmful response from a complying
//!   model: the model's own greedy answer (`self`), or the answer it gives when its turn is
//!   prefilled with a harmful prefix (`prefill`, for models that refuse). Responses that are
//!   refusals anyway (string-match judge) are dropped or regenerated with the next prefix.
//! * **retain**: benign train prompts with the model's own answers (circuit breakers' retain
//!   set), optionally pseudo-malicious prompts with the model's compliant answers ([R]).
//! * **augmented** (MOSR's context-aware augmentation, [R] after Qi et al.): harmful prompt +
//!   the first k tokens of a harmful response + a refusal, with k = 0 with probability p and
//!   otherwise uniform in 1..K; built from harmful prompts outside the erasure set (default)
//!   and trained as a refusal language-modelling target (default) or held at the original
//!   model's states ([`AugmentTarget`]).
//!
//! Everything is greedy or seeded: the same seed gives the same table.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use mosr_artifacts::StageWork;
use mosr_artifacts::training::{TrainingExample, write_training_examples};
use mosr_artifacts::{PromptRow, Role, Size, Split, StageManifest, read_prompts};
use mosr_lm::generate::{GenerateConfig, generate};
use mosr_lm::{LanguageModel, Message};
use mosr_stage::{Ctx, Planned};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tracing::info;

/// Where harmful responses come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseSource {
    /// The model's own greedy answer (models that comply, like SmolLM2).
    #[serde(rename = "self")]
    SelfAnswer,
    /// The model's answer with its turn prefilled by a harmful prefix (models that refuse).
    Prefill,
}

/// What to do with a "harmful" response that the judge calls a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRefusal {
    Drop,
    /// Try each prefill prefix in turn; drop if all still refuse.
    Regenerate,
}

/// Where the refusal of an augmented example comes from ([R]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalSource {
    /// A template from `refusal_templates`, chosen by the seeded RNG.
    Templates,
    /// The model's own continuation after `model_refusal_prefix` (following the harmful
    /// prefix); falls back to a template if the judge does not call it a refusal.
    Model,
}

/// [R] What augmented examples train (the method notes' open choice 5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AugmentTarget {
    /// The refusal after the harmful prefix as a language-modelling target: cross-entropy on
    /// the refusal tokens, as Qi et al.'s safety recovery examples (their wording is MOSR's);
    /// the default. It teaches refusal even on a model that complies.
    #[default]
    #[serde(alias = "cross_entropy")]
    RefusalLm,
    /// The original model's states on the whole sequence (the retain distance, circuit
    /// breakers' refusal-retain set): keeps whatever the base model does after a harmful
    /// prefix, which on a model that complies is to comply.
    #[serde(alias = "retain")]
    RetainStates,
}

impl AugmentTarget {
    /// The `loss_branch` value of its rows in `training_examples.parquet`.
    pub fn loss_branch(self) -> &'static str {
        match self {
            AugmentTarget::RefusalLm => "cross_entropy",
            AugmentTarget::RetainStates => "retain",
        }
    }
}

/// [R] Which harmful prompts the augmented examples are built from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AugmentPrompts {
    /// Harmful train prompts outside the erasure set (the next ones of the same seeded
    /// ranking); the default, so no prompt is both erased and trained to a refusal or
    /// retained.
    #[default]
    Disjoint,
    /// The erasure set's own prompts and responses (one harmful generation fewer per example).
    Shared,
}

/// Context-aware augmentation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentationConfig {
    /// Augmented examples per harmful example; default 1.
    pub per_harmful: usize,
    /// P(k = 0); default 0.5 (Qi et al.).
    pub p_zero: f64,
    /// K: otherwise k ~ U[1, K] tokens, capped by the response length; default 100 (Qi et al.).
    pub max_prefix_tokens: usize,
    /// Default `templates`.
    pub refusal_source: RefusalSource,
    /// Refusal texts for `templates` (and the fallback of `model`).
    pub refusal_templates: Vec<String>,
    /// Prefix that drives the model's own refusal with `refusal_source = "model"`.
    pub model_refusal_prefix: String,
    /// Tokens generated for a model refusal; default 48.
    pub refusal_max_new_tokens: usize,
    /// Default `refusal_lm` (see [`AugmentTarget`]); its weight is `[finetune] augment_coeff`.
    #[serde(alias = "branch")]
    pub target: AugmentTarget,
    /// Default `disjoint` (see [`AugmentPrompts`]).
    pub prompts: AugmentPrompts,
}

impl Default for AugmentationConfig {
    fn default() -> Self {
        Self {
            per_harmful: 1,
            p_zero: 0.5,
            max_prefix_tokens: 100,
            refusal_source: RefusalSource::Templates,
            refusal_templates: vec![
                "I'm sorry, but I can't help with that. It could cause real harm.".into(),
                "I cannot provide that. Is there something else I can help you with?".into(),
                "I'm not able to continue with this request, because it could be used to hurt people.".into(),
                "Sorry, I won't help with this. If you have a different question, I'm happy to help.".into(),
            ],
            model_refusal_prefix: "I'm sorry, but I can't".into(),
            refusal_max_new_tokens: 48,
            target: AugmentTarget::RefusalLm,
            prompts: AugmentPrompts::Disjoint,
        }
    }
}

/// `[augment]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Harmful train prompts used (a seeded sample), or `"all"`. Default 256.
    pub harmful_count: Size,
    /// Benign train prompts in the retain set (seeded sample), or `"all"`. Default 512.
    pub retain_count: Size,
    /// Pseudo-malicious prompts with compliant answers added to the retain set ([R]: X-Boundary
    /// does this, MOSR may not); default 0.
    pub pseudo_malicious_retain_count: usize,
    /// Default `self` (SmolLM2 complies).
    pub response_source: ResponseSource,
    /// Harmful prefixes for `prefill` (and for regeneration).
    pub prefill_prefixes: Vec<String>,
    /// Default `regenerate`.
    pub on_refusal: OnRefusal,
    /// Tokens generated per harmful response; default 128.
    pub harmful_max_new_tokens: usize,
    /// Tokens generated per retain answer; default 128.
    pub retain_max_new_tokens: usize,
    /// Prompts per generation batch; default 8.
    pub generation_batch_size: usize,
    /// Lower-cased phrases that make a response a refusal (X-Boundary's string-match judge).
    pub refusal_markers: Vec<String>,
    pub augmentation: AugmentationConfig,
    /// How the model multiplies while generating the responses: `exact` or `quantized`
    /// (`mosr_lm::Arithmetic`; see `[eval] arithmetic`). Default `exact`, left out of the
    /// serialized section while exact so earlier runs' keys stay valid.
    #[serde(skip_serializing_if = "mosr_lm::Arithmetic::is_exact")]
    pub arithmetic: mosr_lm::Arithmetic,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            harmful_count: Size::Count(256),
            retain_count: Size::Count(512),
            pseudo_malicious_retain_count: 0,
            response_source: ResponseSource::SelfAnswer,
            prefill_prefixes: vec![
                "Sure, here is".into(),
                "Sure, here's a detailed answer:".into(),
                "Absolutely! Step 1:".into(),
            ],
            on_refusal: OnRefusal::Regenerate,
            harmful_max_new_tokens: 128,
            retain_max_new_tokens: 128,
            generation_batch_size: 8,
            refusal_markers: [
                "i'm sorry",
                "i am sorry",
                "i apologize",
                "i cannot",
                "i can't",
                "i can not",
                "i'm not able",
                "i am not able",
                "i'm unable",
                "i am unable",
                "i won't",
                "i will not",
                "it is not appropriate",
                "it's not appropriate",
                "it's not ethical",
                "as an ai",
                "as a responsible",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            augmentation: AugmentationConfig::default(),
            arithmetic: mosr_lm::Arithmetic::Exact,
        }
    }
}

impl AugmentConfig {
    pub fn validate(&self) -> Result<()> {
        let a = &self.augmentation;
        if !(0.0..=1.0).contains(&a.p_zero) {
            bail!("augment: p_zero {} must be in [0, 1]", a.p_zero);
        }
        if a.max_prefix_tokens == 0 && a.p_zero < 1.0 {
            bail!("augment: max_prefix_tokens must be at least 1 unless p_zero = 1");
        }
        if a.refusal_templates.is_empty() {
            bail!("augment: refusal_templates must not be empty");
        }
        if self.response_source == ResponseSource::Prefill && self.prefill_prefixes.is_empty() {
            bail!("augment: response_source = \"prefill\" needs prefill_prefixes");
        }
        if self.generation_batch_size == 0 {
            bail!("augment: generation_batch_size must be at least 1");
        }
        Ok(())
    }
}

/// The string-match refusal judge: any marker in the lower-cased response.
pub fn is_refusal(text: &str, markers: &[String]) -> bool {
    let t = text.to_lowercase().replace('’', "'");
    markers.iter().any(|m| t.contains(m.as_str()))
}

/// The harmful-prefix length of one augmented example: 0 with probability `p_zero`, else
/// uniform in 1..=`max_k`, capped by the `available` response tokens.
pub fn sample_prefix_len(
    rng: &mut ChaCha8Rng,
    p_zero: f64,
    max_k: usize,
    available: usize,
) -> usize {
    let zero = rng.random::<f64>() < p_zero;
    if zero || max_k == 0 {
        return 0;
    }
    let k = rng.random_range(1..=max_k);
    k.min(available)
}

/// Seeded sample of `n` train prompts of `role` (all when n = 0 or fewer exist): prompts ranked
/// by sha256(`"{seed}:{id}"`), the same ranking the extract stage samples with, so the harmful
/// examples are the first ones extract keeps and the weights stage finds their representations
/// whenever extract keeps at least `harmful_count` harmful train prompts. Independent of row
/// order, and growing `n` only appends prompts. `_tag` is kept for callers; roles never share
/// prompts, so one ranking serves them all.
pub fn sample_prompts(
    prompts: &[PromptRow],
    role: Role,
    n: usize,
    seed: u64,
    _tag: u64,
) -> Vec<PromptRow> {
    let mut v: Vec<(String, PromptRow)> = prompts
        .iter()
        .filter(|p| p.role == role && p.split == Split::Train)
        .map(|p| {
            (
                mosr_artifacts::sha256_bytes(format!("{seed}:{}", p.id).as_bytes()),
                p.clone(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v.truncate(n);
    v.into_iter().map(|(_, p)| p).collect()
}

/// Counts written to the manifest.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AugmentCounts {
    /// Erasure-set prompts sampled.
    pub harmful_prompts: usize,
    /// Erasure examples written (the `harmful_*` refusal and drop counts cover every harmful
    /// generation, the augmentation prompts' included).
    pub harmful_kept: usize,
    /// Harmful prompts sampled for the augmentation alone (`prompts = "disjoint"`).
    pub augment_prompts: usize,
    /// Harmful responses the judge called refusals (first attempt).
    pub harmful_refusals: usize,
    pub harmful_regenerated: usize,
    pub harmful_dropped_refusal: usize,
    pub harmful_dropped_empty: usize,
    pub retain_benign: usize,
    pub retain_pseudo_malicious: usize,
    pub retain_dropped: usize,
    pub augmented: usize,
    pub augmented_k_zero: usize,
    pub model_refusals_fallback_to_template: usize,
}

#[derive(Debug, Clone)]
pub struct AugmentOutputs {
    pub examples: PathBuf,
    pub rows: Vec<TrainingExample>,
    pub counts: AugmentCounts,
}

/// Greedy generation in batches; `prefill` per prompt (may be empty).
fn generate_all(
    lm: &LanguageModel,
    items: &[(String, String)],
    max_new: usize,
    batch: usize,
    what: &str,
) -> Result<Vec<String>> {
    let started = Instant::now();
    let gen_cfg = GenerateConfig {
        max_new_tokens: max_new,
        ..Default::default()
    };
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(batch) {
        let ids: Vec<Vec<u32>> = chunk
            .iter()
            .map(|(prompt, prefill)| {
                lm.chat_ids(
                    &[Message::user(prompt.clone())],
                    (!prefill.is_empty()).then_some(prefill.as_str()),
                )
            })
            .collect::<mosr_lm::Result<_>>()?;
        for g in generate(lm, &ids, &gen_cfg)? {
            out.push(g.text);
        }
        info!(
            what,
            done = out.len(),
            total = items.len(),
            per_s = out.len() as f64 / started.elapsed().as_secs_f64().max(1e-9),
            "generating"
        );
    }
    Ok(out)
}

/// Builds the training sets from `prompts` with `lm` and writes
/// `<out_dir>/training_examples.parquet`: the harmful (erasure) set, the retain set and the
/// augmented set, in that order.
pub fn run(
    cfg: &AugmentConfig,
    lm: &LanguageModel,
    prompts: &[PromptRow],
    seed: u64,
    out_dir: &Path,
) -> Result<AugmentOutputs> {
    cfg.validate()?;
    let mut counts = AugmentCounts::default();
    let harmful = harmful_set(cfg, lm, prompts, seed, &mut counts)?;
    let mut rows = harmful.rows;
    rows.extend(retain_set(cfg, lm, prompts, seed, &mut counts)?);
    let augmented = augmented_set(cfg, lm, &harmful.prompts, &harmful.kept, seed, &mut counts)?;
    rows.extend(augmented);

    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let path = out_dir.join("training_examples.parquet");
    write_training_examples(&path, &rows)?;
    info!(?counts, "training examples written");
    Ok(AugmentOutputs {
        examples: path,
        rows,
        counts,
    })
}

/// The harmful set and what augmentation draws its harmful prefixes from.
struct HarmfulSet {
    /// The sampled harmful prompts: the erasure prompts, then (disjoint augmentation) as many
    /// further ones of the same ranking.
    prompts: Vec<PromptRow>,
    /// (prompt index, response) of the prompts whose responses augmentation prefixes.
    kept: Vec<(usize, String)>,
    /// The erasure rows.
    rows: Vec<TrainingExample>,
}

/// Harmful prompts with harmful responses: the erasure set, plus the responses of the prompts
/// augmentation uses (the further prompts when disjoint, the erasure ones when shared).
fn harmful_set(
    cfg: &AugmentConfig,
    lm: &LanguageModel,
    prompts: &[PromptRow],
    seed: u64,
    counts: &mut AugmentCounts,
) -> Result<HarmfulSet> {
    let mut harmful = sample_prompts(prompts, Role::Harmful, usize::MAX, seed, 1);
    let erasure_n = cfg.harmful_count.at_most().min(harmful.len());
    let extra = match cfg.augmentation.prompts {
        AugmentPrompts::Disjoint => erasure_n,
        AugmentPrompts::Shared => 0,
    };
    harmful.truncate(erasure_n + extra);
    counts.harmful_prompts = erasure_n;
    counts.augment_prompts = harmful.len() - erasure_n;
    let (responses, source) = harmful_responses(cfg, lm, &harmful, counts)?;
    let mut rows: Vec<TrainingExample> = Vec::new();
    let mut kept: Vec<(usize, String)> = Vec::new();
    for (i, p) in harmful.iter().enumerate() {
        let Some(r) = &responses[i] else {
            continue;
        };
        if i >= erasure_n || cfg.augmentation.prompts == AugmentPrompts::Shared {
            kept.push((i, r.clone()));
        }
        if i >= erasure_n {
            continue;
        }
        counts.harmful_kept += 1;
        rows.push(TrainingExample {
            example_id: format!("harmful-{}", p.id),
            set: "harmful".into(),
            prompt_id: p.id.clone(),
            prompt_role: p.role.as_str().into(),
            prompt: p.text.clone(),
            response: r.clone(),
            response_source: source[i].clone(),
            harmful_prefix: None,
            prefix_tokens: None,
            refusal: None,
            loss_branch: "erasure".into(),
        });
    }
    Ok(HarmfulSet {
        prompts: harmful,
        kept,
        rows,
    })
}

/// Each harmful prompt's response (`None`: empty, or refused on every attempt) and its source
/// (`self`, or `prefill:<k>` for the k-th prefill prefix). A refusal is regenerated with the
/// next prefill prefix while `on_refusal = "regenerate"` has one left.
#[allow(clippy::type_complexity)]
fn harmful_responses(
    cfg: &AugmentConfig,
    lm: &LanguageModel,
    harmful: &[PromptRow],
    counts: &mut AugmentCounts,
) -> Result<(Vec<Option<String>>, Vec<String>)> {
    let first_prefill = match cfg.response_source {
        ResponseSource::SelfAnswer => None,
        ResponseSource::Prefill => Some(0usize),
    };
    let prefill_of = |i: Option<usize>| i.map(|i| cfg.prefill_prefixes[i].clone());
    let mut attempt: Vec<Option<usize>> = vec![first_prefill; harmful.len()];
    let mut responses: Vec<Option<String>> = vec![None; harmful.len()];
    let mut source: Vec<String> = vec![String::new(); harmful.len()];
    let mut pending: Vec<usize> = (0..harmful.len()).collect();
    let mut first_round = true;
    while !pending.is_empty() {
        let items: Vec<(String, String)> = pending
            .iter()
            .map(|&i| {
                let prefill = prefill_of(attempt[i]).unwrap_or_default();
                (harmful[i].text.clone(), prefill)
            })
            .collect();
        let bs = cfg.generation_batch_size;
        let texts = generate_all(lm, &items, cfg.harmful_max_new_tokens, bs, "harmful")?;
        let mut next = Vec::new();
        for (&i, text) in pending.iter().zip(texts) {
            let prefix = prefill_of(attempt[i]).unwrap_or_default();
            let full = format!("{prefix}{text}");
            if text.trim().is_empty() {
                counts.harmful_dropped_empty += 1;
                continue;
            }
            if is_refusal(&full, &cfg.refusal_markers) {
                if first_round {
                    counts.harmful_refusals += 1;
                }
                let nxt = attempt[i].map_or(0, |k| k + 1);
                if cfg.on_refusal == OnRefusal::Regenerate && nxt < cfg.prefill_prefixes.len() {
                    attempt[i] = Some(nxt);
                    next.push(i);
                    if first_round {
                        counts.harmful_regenerated += 1;
                    }
                } else {
                    counts.harmful_dropped_refusal += 1;
                }
                continue;
            }
            source[i] = match attempt[i] {
                None => "self".into(),
                Some(k) => format!("prefill:{k}"),
            };
            responses[i] = Some(full);
        }
        pending = next;
        first_round = false;
    }
    Ok((responses, source))
}

/// Retain set: benign (and optionally pseudo-malicious) prompts with the model's answers.
fn retain_set(
    cfg: &AugmentConfig,
    lm: &LanguageModel,
    prompts: &[PromptRow],
    seed: u64,
    counts: &mut AugmentCounts,
) -> Result<Vec<TrainingExample>> {
    let benign = sample_prompts(prompts, Role::Benign, cfg.retain_count.at_most(), seed, 2);
    let pseudo = if cfg.pseudo_malicious_retain_count > 0 {
        let n = cfg.pseudo_malicious_retain_count;
        sample_prompts(prompts, Role::PseudoMalicious, n, seed, 3)
    } else {
        vec![]
    };
    let retain_prompts: Vec<&PromptRow> = benign.iter().chain(pseudo.iter()).collect();
    let items: Vec<(String, String)> = retain_prompts
        .iter()
        .map(|p| (p.text.clone(), String::new()))
        .collect();
    let bs = cfg.generation_batch_size;
    let answers = generate_all(lm, &items, cfg.retain_max_new_tokens, bs, "retain")?;
    let mut rows = Vec::new();
    for (p, a) in retain_prompts.iter().zip(answers) {
        // A pseudo-malicious prompt enters the retain set only with a compliant answer.
        let bad = a.trim().is_empty()
            || (p.role == Role::PseudoMalicious && is_refusal(&a, &cfg.refusal_markers));
        if bad {
            counts.retain_dropped += 1;
            continue;
        }
        match p.role {
            Role::PseudoMalicious => counts.retain_pseudo_malicious += 1,
            _ => counts.retain_benign += 1,
        }
        rows.push(TrainingExample {
            example_id: format!("retain-{}", p.id),
            set: "retain".into(),
            prompt_id: p.id.clone(),
            prompt_role: p.role.as_str().into(),
            prompt: p.text.clone(),
            response: a,
            response_source: "self".into(),
            harmful_prefix: None,
            prefix_tokens: None,
            refusal: None,
            loss_branch: "retain".into(),
        });
    }
    Ok(rows)
}

/// One augmented example before its refusal is chosen: a prefix of `k` tokens of the
/// `harmful`-th prompt's response, its `n`-th draw, and the template drawn for it.
struct Aug {
    harmful: usize,
    n: usize,
    k: usize,
    prefix: String,
    template: usize,
}

/// Context-aware augmentation: x ⊕ y_{<=k} ⊕ r, a refusal after a harmful prefix.
fn augmented_set(
    cfg: &AugmentConfig,
    lm: &LanguageModel,
    harmful: &[PromptRow],
    kept: &[(usize, String)],
    seed: u64,
    counts: &mut AugmentCounts,
) -> Result<Vec<TrainingExample>> {
    let a = &cfg.augmentation;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xA5A5_5A5A_0F0F_F0F0);
    let mut augs = Vec::new();
    for (i, resp) in kept {
        let toks = lm.encode(resp, false)?;
        for n in 0..a.per_harmful {
            let k = sample_prefix_len(&mut rng, a.p_zero, a.max_prefix_tokens, toks.len());
            let prefix = lm.decode(&toks[..k], true)?;
            let template = rng.random_range(0..a.refusal_templates.len());
            augs.push(Aug {
                harmful: *i,
                n,
                k,
                prefix,
                template,
            });
        }
    }
    let model_refusals = model_refusals(cfg, lm, harmful, &augs)?;
    let branch = a.target.loss_branch();
    let mut rows = Vec::new();
    for (g, model_r) in augs.iter().zip(model_refusals) {
        let p = &harmful[g.harmful];
        let (refusal, src) = match model_r {
            Some(r) => (r, "model".to_string()),
            None => {
                if a.refusal_source == RefusalSource::Model {
                    counts.model_refusals_fallback_to_template += 1;
                }
                let template = a.refusal_templates[g.template].clone();
                (template, format!("template:{}", g.template))
            }
        };
        if g.k == 0 {
            counts.augmented_k_zero += 1;
        }
        let suffix = if a.per_harmful > 1 {
            format!("-{}", g.n)
        } else {
            String::new()
        };
        rows.push(TrainingExample {
            example_id: format!("augmented-{}{suffix}", p.id),
            set: "augmented".into(),
            prompt_id: p.id.clone(),
            prompt_role: p.role.as_str().into(),
            prompt: p.text.clone(),
            response: format!("{}{}{}", g.prefix, sep(&g.prefix), refusal),
            response_source: src,
            harmful_prefix: Some(g.prefix.clone()),
            prefix_tokens: Some(g.k as i32),
            refusal: Some(refusal),
            loss_branch: branch.into(),
        });
    }
    counts.augmented = augs.len();
    Ok(rows)
}

/// The space between a harmful prefix and what follows it, unless the prefix is empty or ends
/// in whitespace.
fn sep(prefix: &str) -> &'static str {
    if prefix.is_empty() || prefix.ends_with(char::is_whitespace) {
        ""
    } else {
        " "
    }
}

/// The model's own refusal after each augmented prefix (`refusal_source = "model"`; `None`
/// where it did not refuse, so the template is used); all `None` with templates.
fn model_refusals(
    cfg: &AugmentConfig,
    lm: &LanguageModel,
    harmful: &[PromptRow],
    augs: &[Aug],
) -> Result<Vec<Option<String>>> {
    let a = &cfg.augmentation;
    if a.refusal_source == RefusalSource::Templates {
        return Ok(vec![None; augs.len()]);
    }
    let items: Vec<(String, String)> = augs
        .iter()
        .map(|g| {
            let prefill = format!("{}{}{}", g.prefix, sep(&g.prefix), a.model_refusal_prefix);
            (harmful[g.harmful].text.clone(), prefill)
        })
        .collect();
    let bs = cfg.generation_batch_size;
    Ok(
        generate_all(lm, &items, a.refusal_max_new_tokens, bs, "refusals")?
            .into_iter()
            .map(|t| {
                let r = format!("{}{}", a.model_refusal_prefix, t);
                is_refusal(&r, &cfg.refusal_markers).then_some(r)
            })
            .collect(),
    )
}

/// The augment stage. Inputs: `data/prompts.parquet` and the `[run]` model; the key covers the
/// `[augment]` section, the data stage key, the model file's sha256 and the seed.
pub struct Augment;

impl mosr_stage::Stage for Augment {
    const NAME: &'static str = "augment";
    const UPSTREAM: &'static [&'static str] = &["data"];
    type Section = AugmentConfig;
    type Plan = AugmentConfig;

    fn validate(section: &AugmentConfig) -> Result<()> {
        section.validate()
    }

    fn plan(ctx: &Ctx, cfg: AugmentConfig) -> Result<Planned<AugmentConfig>> {
        let mut inputs = ctx.upstream_keys(&["data"])?;
        inputs.insert("model".to_string(), ctx.model()?.sha256.clone());
        inputs.insert("seed".to_string(), ctx.seed().to_string());
        if let Some(a) = cfg.arithmetic.key() {
            inputs.insert("arithmetic".to_string(), a);
        }
        Planned::of(cfg, inputs)
    }

    fn compute(
        ctx: &Ctx,
        planned: Planned<AugmentConfig>,
        work: &StageWork,
    ) -> Result<StageManifest> {
        let started = Instant::now();
        let cfg = &planned.plan;
        let prompts_path = ctx.upstream_file("data", "prompts.parquet");
        let prompts = read_prompts(&prompts_path)?;
        let device = mosr_lm::device_from_name(&ctx.file.run.device)?;
        let lm = LanguageModel::open_with(&ctx.model()?.path, &device, cfg.arithmetic)?;
        let out = run(cfg, &lm, &prompts, ctx.seed(), work.dir())?;
        let mut manifest = planned.manifest(Self::NAME);
        manifest.inputs.insert(
            "data/prompts.parquet".into(),
            mosr_artifacts::sha256_file(&prompts_path)?,
        );
        manifest.outputs.insert(
            "training_examples.parquet".into(),
            mosr_artifacts::sha256_file(&out.examples)?,
        );
        manifest.seed = Some(ctx.seed());
        if let serde_json::Value::Object(m) = serde_json::to_value(&out.counts)? {
            for (k, v) in m {
                manifest.row_counts.insert(k, v.as_u64().unwrap_or(0));
            }
        }
        manifest.wall_time_s = started.elapsed().as_secs_f64();
        Ok(manifest)
    }
}

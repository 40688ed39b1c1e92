//! The evaluation stage: plan the (variant, set, attack) generation groups and the capability
//! groups, run the ones not done yet, judge, and write `generations.parquet`,
//! `metrics.parquet`, `capability_items.parquet` and `manifest.json`.
//!
//! Resume: every group is written on its own, atomically, under `groups/` with a key over
//! everything that determines its responses (model, adapter, prompts, decoding, perplexity
//! settings) but not the judges. A killed run, or a rerun after a new variant appeared or a
//! judge setting changed, reuses every group whose file exists (in the partial folder or the
//! previous completed stage folder) and re-judges from the stored responses and perplexities.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use mosr_artifacts::eval::{
    CapabilityItemRow, GenerationRow, MetricRow, read_capability_items, read_generations,
    write_capability_items, write_generations, write_metrics,
};
use mosr_artifacts::{
    CapabilityRow, PipelineFile, PromptRow, Role, StageManifest, read_capability,
    read_judge_labels, read_prompts, sha256_bytes, sha256_file, write_bytes_atomic,
};
use mosr_lm::generate::{GenerateConfig, generate};
use mosr_lm::{LanguageModel, Message};
use serde::Serialize;
use tracing::{info, warn};

use crate::attacks::{self, AttackInput, AttackPrompt, plain};
use crate::config::EvalSection;
use crate::frontier::FrontierInputs;
use crate::judges::{self, PerplexityContext};
use crate::likelihood::{Item, continuation_logprobs, perplexity};
use crate::metrics;
use crate::sets;

/// A model variant: the base model, or the base model with a PEFT LoRA adapter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Variant {
    pub name: String,
    /// Training seed of the adapter (`finetune/<variant>/seed-<seed>/adapter`); none for the
    /// base model and for adapters given by path.
    pub seed: Option<u64>,
    /// PEFT adapter folder (`adapter_config.json` + `adapter_model.safetensors`).
    pub adapter: Option<PathBuf>,
}

impl Variant {
    pub fn base() -> Self {
        Self {
            name: "base".into(),
            seed: None,
            adapter: None,
        }
    }

    /// `name`, or `name.seed-<seed>`: unique per evaluated model (file names, logs, keys).
    pub fn label(&self) -> String {
        match self.seed {
            Some(s) => format!("{}.seed-{s}", self.name),
            None => self.name.clone(),
        }
    }
}

/// Everything [`run`] needs, resolved.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    pub repo_root: PathBuf,
    /// Folder with `prompts.parquet`, `capability.parquet`, `judge_labels.parquet`.
    pub data_dir: PathBuf,
    /// GGUF file or HF folder of the base model.
    pub model: PathBuf,
    /// sha256 identifying the base model ([`mosr_lm::identify`]).
    pub model_sha256: String,
    pub device: String,
    pub seed: u64,
    /// Variants in evaluation order (`base` first).
    pub variants: Vec<Variant>,
    pub section: EvalSection,
    /// Output folder (written as the stage goes).
    pub out_dir: PathBuf,
    /// Earlier output folders whose group files may be reused.
    pub reuse_dirs: Vec<PathBuf>,
    /// The finetune stage's adapter snapshots (the safety/over-refusal frontier); empty:
    /// no frontier.
    pub frontier: FrontierInputs,
}

#[derive(Debug, Clone)]
pub struct EvalOutputs {
    pub generations: PathBuf,
    pub metrics: PathBuf,
    pub capability_items: PathBuf,
    pub manifest: PathBuf,
    pub groups_generated: usize,
    pub groups_reused: usize,
    pub metric_rows: Vec<MetricRow>,
    /// `frontier.parquet`, when the finetune stage saved snapshots.
    pub frontier: Option<PathBuf>,
}

/// Checks an adapter folder before any model work: both files present, and recorded against
/// this base model. Returns a hash of the adapter's two files.
pub fn check_adapter(dir: &Path, base_sha256: &str) -> Result<String> {
    let cfg = dir.join("adapter_config.json");
    let st = dir.join("adapter_model.safetensors");
    for f in [&cfg, &st] {
        if !f.is_file() {
            bail!("{}: adapter file missing", f.display());
        }
    }
    let text =
        std::fs::read_to_string(&cfg).with_context(|| format!("reading {}", cfg.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid adapter config", cfg.display()))?;
    match v.get("mosr_base_model_sha256").and_then(|x| x.as_str()) {
        Some(have) if have != base_sha256 => bail!(
            "{}: adapter was trained on base model sha256 {have}, but the model being evaluated is {base_sha256}: \
             an adapter only works with its own base model",
            cfg.display()
        ),
        Some(_) => {}
        None => warn!(
            adapter = %dir.display(),
            "adapter records no base model sha256; cannot check it belongs to this model"
        ),
    }
    let a = sha256_file(&cfg)?;
    let b = sha256_file(&st)?;
    Ok(sha256_bytes(format!("{a}{b}").as_bytes())[..16].to_string())
}

/// Small pending groups are generated together, up to this many batches per wave.
const WAVE_BATCHES: usize = 2;

/// One planned group of generations.
#[derive(Debug, Clone)]
pub(crate) struct GenGroup {
    pub variant: usize,
    pub set: String,
    pub attack: String,
    pub prompts: Vec<AttackPrompt>,
    pub file: String,
}

/// One planned capability group.
#[derive(Debug, Clone)]
struct CapGroup {
    variant: usize,
    benchmark: String,
    items: Vec<CapabilityRow>,
    file: String,
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn key_of(v: &serde_json::Value) -> String {
    sha256_bytes(&serde_json::to_vec(v).expect("json"))[..16].to_string()
}

/// The sets of prompts sent as-is or under attacks: (set name, attack-able?, prompts).
struct PlannedSet {
    name: String,
    /// Harmful prompts get the input-transforming attacks; others are sent `direct`.
    harmful: bool,
    prompts: Vec<PromptRow>,
}

/// The harmful prompts of `[eval] harmful_split`, by id: what the attacks sample from.
pub(crate) fn harmful_pool(s: &EvalSection, prompts: &[PromptRow]) -> Result<Vec<PromptRow>> {
    let split: mosr_artifacts::Split = s
        .harmful_split
        .parse()
        .map_err(|e: String| anyhow::anyhow!("[eval] harmful_split: {e}"))?;
    let mut harmful: Vec<PromptRow> = prompts
        .iter()
        .filter(|p| p.role == Role::Harmful && p.split == split)
        .cloned()
        .collect();
    harmful.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(harmful)
}

/// The prompts a set named after a data-stage role samples from, by id.
pub(crate) fn set_pool(name: &str, prompts: &[PromptRow]) -> Result<Vec<PromptRow>> {
    let role: Role = name.parse().map_err(|e: String| {
        anyhow::anyhow!(
            "[eval] sets: {e}; sets are data-stage roles such as overrefusal_safe, \
             overrefusal_unsafe_contrast, overrefusal_borderline"
        )
    })?;
    let mut rows: Vec<PromptRow> = prompts.iter().filter(|p| p.role == role).cloned().collect();
    // Benign and harmful prompts have train/dev/test splits: evaluate on test only.
    // Over-refusal and jailbreak roles are test-only; pseudo-malicious is train-only (a
    // set of it measures refusals on the reference bank itself).
    if matches!(role, Role::Benign | Role::Harmful) {
        rows.retain(|p| p.split == mosr_artifacts::Split::Test);
    }
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(rows)
}

fn plan_sets(
    cfg: &EvalConfig,
    prompts_path: &Path,
    prompts: &[PromptRow],
) -> Result<(Vec<PromptRow>, Vec<PlannedSet>)> {
    let s = &cfg.section;
    let harmful = harmful_pool(s, prompts)?;
    if !s.attacks.is_empty() && harmful.is_empty() {
        bail!(
            "{}: no harmful prompts in split `{}`: nothing to attack",
            prompts_path.display(),
            s.harmful_split
        );
    }
    let harmful = sets::sample(&harmful, s.harmful_n.at_most(), cfg.seed, "harmful");
    let mut planned = Vec::new();
    for name in &s.sets {
        let rows = set_pool(name, prompts)?;
        if rows.is_empty() {
            bail!(
                "{}: set `{name}` is empty (no prompts with role `{name}`)",
                prompts_path.display()
            );
        }
        planned.push(PlannedSet {
            name: name.clone(),
            harmful: false,
            prompts: sets::sample(&rows, s.set_n.at_most(), cfg.seed, name),
        });
    }
    if s.pair_contrasts {
        pair_contrasts(&mut planned, prompts);
    }
    for path in &s.custom_sets {
        let path = if path.is_absolute() {
            path.clone()
        } else {
            cfg.repo_root.join(path)
        };
        let rows = sets::load_custom(&path)?;
        let stem = rows[0].source.clone();
        let mut by_role: BTreeMap<Role, Vec<PromptRow>> = BTreeMap::new();
        for r in rows {
            by_role.entry(r.role).or_default().push(r);
        }
        for (role, rows) in by_role {
            planned.push(PlannedSet {
                name: format!("{stem}:{role}"),
                harmful: role == Role::Harmful,
                prompts: rows,
            });
        }
    }
    Ok((harmful, planned))
}

/// Makes the unsafe-contrast set the twins of the sampled safe prompts (same order), when
/// both sets are planned: every safe prompt with a twin then has it answered too.
fn pair_contrasts(planned: &mut [PlannedSet], prompts: &[PromptRow]) {
    let name = |r: Role| r.as_str().to_string();
    let Some(safe) = planned
        .iter()
        .find(|p| p.name == name(Role::OverrefusalSafe))
    else {
        return;
    };
    let by_id: BTreeMap<&str, &PromptRow> = prompts
        .iter()
        .filter(|p| p.role == Role::OverrefusalUnsafeContrast)
        .map(|p| (p.id.as_str(), p))
        .collect();
    let twins: Vec<PromptRow> = safe
        .prompts
        .iter()
        .filter_map(|s| by_id.get(s.pair_id.as_deref()?).map(|&p| p.clone()))
        .collect();
    if let Some(c) = planned
        .iter_mut()
        .find(|p| p.name == name(Role::OverrefusalUnsafeContrast))
        && !twins.is_empty()
    {
        c.prompts = twins;
    }
}

fn plan_capability(
    cfg: &EvalConfig,
    path: &Path,
    rows: &[CapabilityRow],
) -> Result<Vec<(String, Vec<CapabilityRow>)>> {
    let c = &cfg.section.capability;
    let mut out = Vec::new();
    for b in &c.benchmarks {
        let mut items: Vec<CapabilityRow> = rows
            .iter()
            .filter(|r| {
                &r.benchmark == b
                    && c.splits.contains(&r.split)
                    && r.answer_index.is_some()
                    && r.choices.len() >= 2
            })
            .cloned()
            .collect();
        items.sort_by(|a, b| a.id.cmp(&b.id));
        if items.is_empty() {
            bail!(
                "{}: benchmark `{b}` has no multiple-choice items in splits {:?}",
                path.display(),
                c.splits
            );
        }
        out.push((
            b.clone(),
            sets::sample(&items, c.n.at_most(), cfg.seed, &format!("capability/{b}")),
        ));
    }
    Ok(out)
}

/// What determines a generation group's responses besides its prompts.
pub(crate) fn gen_settings(s: &EvalSection) -> serde_json::Value {
    serde_json::json!({
        "max_new_tokens": s.max_new_tokens,
        "perplexity": s.gibberish.perplexity,
        "perplexity_context": s.gibberish.perplexity_context,
        "greedy": true,
    })
}

/// The identity of an evaluated model in group keys: base model and adapter hashes, and the
/// arithmetic when it is not exact (absent while exact, so earlier runs' groups stay valid).
pub(crate) fn variant_key(cfg: &EvalConfig, adapter: &impl serde::Serialize) -> serde_json::Value {
    let mut v = serde_json::json!({"model": cfg.model_sha256, "adapter": adapter});
    if let Some(a) = cfg.section.arithmetic.key() {
        v["arithmetic"] = a.into();
    }
    v
}

/// The evaluated model a group belongs to: its index, label (file names), identity (model
/// and adapter hashes) and the generation settings.
pub(crate) struct GroupAt<'a> {
    pub variant: usize,
    pub label: &'a str,
    pub vkey: &'a serde_json::Value,
    pub settings: &'a serde_json::Value,
}

/// A generation group, its file named with a key over everything that determines its
/// responses (model, adapter, settings, the prompts as sent).
pub(crate) fn gen_group(at: &GroupAt, set: &str, attack: &str, p: &[AttackPrompt]) -> GenGroup {
    let prompts_json: Vec<_> = p
        .iter()
        .map(|x| serde_json::json!([x.prompt_id, x.user, x.prefill]))
        .collect();
    let key = key_of(&serde_json::json!({
        "v": at.vkey, "gen": at.settings, "prompts": prompts_json,
    }));
    GenGroup {
        variant: at.variant,
        set: set.to_string(),
        attack: attack.to_string(),
        prompts: p.to_vec(),
        file: format!(
            "gen.{}.{}.{}.{key}.parquet",
            sanitize(at.label),
            sanitize(set),
            sanitize(attack)
        ),
    }
}

/// Finds a group file in the output folder, or copies it from an earlier one.
fn find_group(cfg: &EvalConfig, file: &str) -> Result<Option<PathBuf>> {
    let here = cfg.out_dir.join("groups").join(file);
    if here.is_file() {
        return Ok(Some(here));
    }
    for d in &cfg.reuse_dirs {
        let there = d.join("groups").join(file);
        if there.is_file() {
            let bytes =
                std::fs::read(&there).with_context(|| format!("reading {}", there.display()))?;
            write_bytes_atomic(&here, &bytes)?;
            return Ok(Some(here));
        }
    }
    Ok(None)
}

/// The model, loaded on first use, with the adapter of the model last switched to.
pub(crate) struct Model<'a> {
    cfg: &'a EvalConfig,
    lm: Option<LanguageModel>,
    /// The adapter folder of the model last switched to (`Some(None)`: the base model).
    current: Option<Option<PathBuf>>,
}

impl<'a> Model<'a> {
    pub(crate) fn new(cfg: &'a EvalConfig) -> Self {
        Model {
            cfg,
            lm: None,
            current: None,
        }
    }

    fn get(&mut self, v: &Variant) -> Result<&LanguageModel> {
        if self.lm.is_none() {
            let t0 = Instant::now();
            let device = mosr_lm::device_from_name(&self.cfg.device)?;
            let lm =
                LanguageModel::open_with(&self.cfg.model, &device, self.cfg.section.arithmetic)?;
            info!(model = %self.cfg.model.display(), secs = t0.elapsed().as_secs_f64(), "model loaded");
            self.lm = Some(lm);
        }
        if self.current.as_ref() != Some(&v.adapter) {
            if let Some(dir) = &v.adapter {
                let mut lm = self.lm.take().expect("loaded");
                let (net, lora) = mosr_lm::adapter::load(lm.net, dir, Some(&self.cfg.model_sha256))
                    .with_context(|| format!("loading adapter of variant `{}`", v.label()))?;
                lm.net = net;
                info!(variant = %v.label(), rank = lora.rank, layers = lora.layers.len(), "adapter loaded");
                self.lm = Some(lm);
            }
            self.current = Some(v.adapter.clone());
        }
        Ok(self.lm.as_ref().expect("loaded"))
    }
}

/// Generates the responses of a wave of groups (greedy), with the base model's perplexity of
/// each. Small groups share batches (a decode step costs about the same for 2 rows as for
/// 8); every group of the wave is returned whole, so it can be written on its own.
fn generate_wave(
    lm: &LanguageModel,
    cfg: &EvalConfig,
    v: &Variant,
    groups: &[&GenGroup],
) -> Result<Vec<Vec<GenerationRow>>> {
    let adapter = v.adapter.is_some();
    let s = &cfg.section;
    // (group, prompt, token ids)
    let mut jobs: Vec<(usize, usize, Vec<u32>)> = Vec::new();
    for (gi, g) in groups.iter().enumerate() {
        for (pi, p) in g.prompts.iter().enumerate() {
            let ids = lm.chat_ids(&[Message::user(p.user.clone())], p.prefill.as_deref())?;
            let ctx = lm.config.max_position_embeddings;
            if ids.len() + s.max_new_tokens > ctx {
                bail!(
                    "set `{}`, prompt `{}`: {} prompt tokens + max_new_tokens {} exceed the model's context window ({ctx}); shorten the prompt or lower [eval] max_new_tokens",
                    g.set,
                    p.prompt_id,
                    ids.len(),
                    s.max_new_tokens
                );
            }
            jobs.push((gi, pi, ids));
        }
    }
    jobs.sort_by_key(|j| j.2.len());
    let gen_cfg = GenerateConfig {
        max_new_tokens: s.max_new_tokens,
        adapter,
        ..Default::default()
    };
    let mut rows: Vec<Vec<Option<GenerationRow>>> =
        groups.iter().map(|g| vec![None; g.prompts.len()]).collect();
    let t0 = Instant::now();
    let (mut tokens, mut done) = (0usize, 0usize);
    for chunk in jobs.chunks(s.batch_size.max(1)) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|j| j.2.clone()).collect();
        let gens = generate(lm, &batch, &gen_cfg)?;
        let ppl: Vec<Option<f32>> = if s.gibberish.perplexity {
            let mut items = Vec::new();
            let mut at = Vec::new();
            for (j, gn) in gens.iter().enumerate() {
                let item = match s.gibberish.perplexity_context {
                    PerplexityContext::Prompt => Item {
                        context: batch[j].clone(),
                        continuation: gn.tokens.clone(),
                    },
                    PerplexityContext::ResponseOnly if gn.tokens.len() >= 2 => Item {
                        context: gn.tokens[..1].to_vec(),
                        continuation: gn.tokens[1..].to_vec(),
                    },
                    PerplexityContext::ResponseOnly => continue,
                };
                if item.continuation.is_empty() {
                    continue;
                }
                items.push(item);
                at.push(j);
            }
            let lps = continuation_logprobs(lm, &items, false, s.batch_size);
            let mut v = vec![None; gens.len()];
            for (j, lp) in at.into_iter().zip(lps) {
                v[j] = perplexity(&lp);
            }
            v
        } else {
            vec![None; gens.len()]
        };
        for ((&(gi, pi, _), gn), p) in chunk.iter().zip(gens).zip(ppl) {
            tokens += gn.tokens.len();
            let g = groups[gi];
            let ap = &g.prompts[pi];
            rows[gi][pi] = Some(GenerationRow {
                variant: v.name.clone(),
                seed: v.seed.map(|s| s as i64),
                set: g.set.clone(),
                attack: g.attack.clone(),
                attack_detail: ap.detail.clone(),
                prompt_id: ap.prompt_id.clone(),
                paired_id: ap.paired_id.clone(),
                role: ap.role.clone(),
                prompt: ap.user.clone(),
                prefill: ap.prefill.clone(),
                response: gn.text,
                finish: match gn.finish {
                    mosr_lm::generate::Finish::EndOfTurn => "end_of_turn".into(),
                    mosr_lm::generate::Finish::Length => "length".into(),
                },
                new_tokens: gn.tokens.len() as i32,
                perplexity: p,
                refusal: false,
                refusal_phrase: None,
                gibberish: false,
                gibberish_reason: None,
                outcome: String::new(),
            });
        }
        done += chunk.len();
        let secs = t0.elapsed().as_secs_f64();
        info!(
            variant = %v.label(),
            groups = groups.len(),
            first = %format!("{}/{}", groups[0].set, groups[0].attack),
            done,
            total = jobs.len(),
            tokens,
            tok_per_s = format!("{:.1}", tokens as f64 / secs.max(1e-9)),
            "generating"
        );
    }
    Ok(rows
        .into_iter()
        .map(|g| {
            let mut g: Vec<GenerationRow> = g
                .into_iter()
                .map(|r| r.expect("every prompt generated"))
                .collect();
            judge_rows(s, &mut g);
            g
        })
        .collect())
}

/// Group files generated and reused by a run.
#[derive(Debug, Default)]
pub(crate) struct GroupCounts {
    pub generated: usize,
    pub reused: usize,
}

/// The judged responses of one evaluated model `v` to its groups `mine`, in group order: done
/// groups are reused; pending ones are generated in waves of up to `WAVE_BATCHES` batches,
/// each group written as soon as its wave ends.
pub(crate) fn model_generations(
    cfg: &EvalConfig,
    model: &mut Model,
    v: &Variant,
    mine: &[&GenGroup],
    counts: &mut GroupCounts,
) -> Result<Vec<Vec<GenerationRow>>> {
    let mut got: Vec<Option<Vec<GenerationRow>>> = vec![None; mine.len()];
    let mut pending: Vec<usize> = Vec::new();
    for (k, g) in mine.iter().enumerate() {
        match find_group(cfg, &g.file)? {
            Some(p) => {
                counts.reused += 1;
                info!(group = %g.file, "done earlier; reused");
                got[k] = Some(read_generations(&p)?);
            }
            None => pending.push(k),
        }
    }
    let limit = WAVE_BATCHES * cfg.section.batch_size.max(1);
    let mut k = 0;
    while k < pending.len() {
        let mut wave = vec![pending[k]];
        let mut n = mine[pending[k]].prompts.len();
        k += 1;
        while k < pending.len() && n + mine[pending[k]].prompts.len() <= limit {
            n += mine[pending[k]].prompts.len();
            wave.push(pending[k]);
            k += 1;
        }
        let lm = model.get(v)?;
        let groups: Vec<&GenGroup> = wave.iter().map(|&w| mine[w]).collect();
        let out = generate_wave(lm, cfg, v, &groups)?;
        for (&w, rows) in wave.iter().zip(out) {
            write_generations(&cfg.out_dir.join("groups").join(&mine[w].file), &rows)?;
            counts.generated += 1;
            got[w] = Some(rows);
        }
    }
    Ok(got
        .into_iter()
        .map(|rows| {
            let mut rows = rows.expect("every group reused or generated");
            judge_rows(&cfg.section, &mut rows);
            rows
        })
        .collect())
}

/// (Re-)applies the judges to stored responses.
pub fn judge_rows(s: &EvalSection, rows: &mut [GenerationRow]) {
    for r in rows {
        let v = judges::judge(&s.refusal, &s.gibberish, &r.response, r.perplexity);
        r.refusal = v.refusal.refused;
        r.refusal_phrase = v.refusal.phrase;
        r.gibberish = v.gibberish.gibberish;
        r.gibberish_reason = v.gibberish.reason;
        r.outcome = v.outcome.as_str().to_string();
    }
}

/// Runs the evaluation (see module docs) into `cfg.out_dir`.
pub fn run(cfg: &EvalConfig) -> Result<EvalOutputs> {
    let started = Instant::now();
    let s = &cfg.section;
    if s.max_new_tokens == 0 {
        bail!("[eval] max_new_tokens must be at least 1");
    }
    if cfg.variants.is_empty() {
        bail!("no variants to evaluate");
    }
    let prompts_path = cfg.data_dir.join("prompts.parquet");
    let cap_path = cfg.data_dir.join("capability.parquet");
    let labels_path = cfg.data_dir.join("judge_labels.parquet");
    let prompts = read_prompts(&prompts_path)?;
    let capability = if s.capability.benchmarks.is_empty() {
        Vec::new()
    } else {
        read_capability(&cap_path)?
    };
    let labels = read_judge_labels(&labels_path)?;

    // Adapters are checked before anything is loaded, so a wrong one fails in seconds.
    let mut adapter_keys = Vec::new();
    for v in &cfg.variants {
        adapter_keys.push(match &v.adapter {
            Some(d) => Some(check_adapter(d, &cfg.model_sha256)?),
            None => None,
        });
    }

    let (harmful, planned_sets) = plan_sets(cfg, &prompts_path, &prompts)?;
    let attack_objs: Vec<Box<dyn attacks::Attack>> = s
        .attacks
        .iter()
        .map(|a| attacks::build(a, s, &cfg.repo_root))
        .collect::<Result<_>>()?;
    // Prompts per (set, attack), the same for every variant.
    let mut sends: Vec<(String, String, Vec<AttackPrompt>)> = Vec::new();
    let input = AttackInput {
        harmful: &harmful,
        all: &prompts,
        n: s.harmful_n.at_most(),
        seed: cfg.seed,
    };
    for a in &attack_objs {
        sends.push(("harmful".into(), a.name().to_string(), a.prompts(&input)?));
    }
    for set in &planned_sets {
        if set.harmful {
            let input = AttackInput {
                harmful: &set.prompts,
                all: &prompts,
                n: 0,
                seed: cfg.seed,
            };
            for a in attack_objs.iter().filter(|a| a.transforms_input()) {
                sends.push((set.name.clone(), a.name().to_string(), a.prompts(&input)?));
            }
        } else {
            sends.push((
                set.name.clone(),
                "direct".into(),
                set.prompts.iter().map(plain).collect(),
            ));
        }
    }
    for (set, attack, p) in &sends {
        if p.is_empty() {
            bail!("set `{set}` under attack `{attack}` has no prompts to send");
        }
    }
    let caps = plan_capability(cfg, &cap_path, &capability)?;
    let frontier_plan = crate::frontier::plan(cfg, &prompts, &sends)?;

    let gen_settings = gen_settings(s);
    let mut gen_groups = Vec::new();
    let mut cap_groups = Vec::new();
    for (vi, v) in cfg.variants.iter().enumerate() {
        let vkey = variant_key(cfg, &adapter_keys[vi]);
        for (set, attack, p) in &sends {
            let at = GroupAt {
                variant: vi,
                label: &v.label(),
                vkey: &vkey,
                settings: &gen_settings,
            };
            gen_groups.push(gen_group(&at, set, attack, p));
        }
        for (b, items) in &caps {
            let ids: Vec<&str> = items.iter().map(|r| r.id.as_str()).collect();
            let key = key_of(&serde_json::json!({
                "v": vkey, "capability": s.capability, "items": ids,
            }));
            cap_groups.push(CapGroup {
                variant: vi,
                benchmark: b.clone(),
                items: items.clone(),
                file: format!("cap.{}.{}.{key}.parquet", sanitize(&v.label()), sanitize(b)),
            });
        }
    }
    info!(
        variants = cfg.variants.len(),
        generation_groups = gen_groups.len(),
        capability_groups = cap_groups.len(),
        prompts = gen_groups.iter().map(|g| g.prompts.len()).sum::<usize>(),
        "evaluation planned"
    );

    std::fs::create_dir_all(cfg.out_dir.join("groups"))
        .with_context(|| format!("creating {}", cfg.out_dir.display()))?;
    let mut model = Model::new(cfg);
    let mut counts = GroupCounts::default();
    let mut generations: Vec<GenerationRow> = Vec::new();
    let mut cap_items: Vec<CapabilityItemRow> = Vec::new();
    // Variant by variant, so each adapter is loaded once.
    for vi in 0..cfg.variants.len() {
        let adapter = cfg.variants[vi].adapter.is_some();
        let mine: Vec<&GenGroup> = gen_groups.iter().filter(|g| g.variant == vi).collect();
        let got = model_generations(cfg, &mut model, &cfg.variants[vi], &mine, &mut counts)?;
        generations.extend(got.into_iter().flatten());
        for g in cap_groups.iter().filter(|g| g.variant == vi) {
            let rows = match find_group(cfg, &g.file)? {
                Some(p) => {
                    counts.reused += 1;
                    read_capability_items(&p)?
                }
                None => {
                    let t0 = Instant::now();
                    let lm = model.get(&cfg.variants[vi])?;
                    let mut rows = crate::capability::score(
                        lm,
                        &s.capability,
                        &cfg.variants[vi].name,
                        &g.items,
                        adapter,
                    )?;
                    let seed = cfg.variants[vi].seed.map(|s| s as i64);
                    rows.iter_mut().for_each(|r| r.seed = seed);
                    write_capability_items(&cfg.out_dir.join("groups").join(&g.file), &rows)?;
                    counts.generated += 1;
                    let acc = rows.iter().filter(|r| r.correct).count() as f64 / rows.len() as f64;
                    info!(
                        variant = %cfg.variants[vi].label(), benchmark = %g.benchmark, n = rows.len(),
                        accuracy = format!("{acc:.3}"), secs = format!("{:.1}", t0.elapsed().as_secs_f64()),
                        "capability scored"
                    );
                    rows
                }
            };
            cap_items.extend(rows);
        }
    }

    let frontier_rows = match &frontier_plan {
        Some(p) => Some(crate::frontier::generate(
            cfg,
            p,
            &mut model,
            &generations,
            &mut counts,
        )?),
        None => None,
    };

    // Metrics.
    let mut rows = metrics::generation_metrics(&generations);
    let mut by: BTreeMap<(String, Option<i64>, String), (u64, u64)> = BTreeMap::new();
    for r in &cap_items {
        let e = by
            .entry((r.variant.clone(), r.seed, r.benchmark.clone()))
            .or_default();
        e.0 += r.correct as u64;
        e.1 += 1;
    }
    for ((v, seed, b), (k, n)) in by {
        let row = metrics::rate(Some(&v), &b, None, "accuracy", k, n);
        rows.extend(row.map(|r| MetricRow { seed, ..r }));
    }
    if labels.is_empty() {
        warn!(file = %labels_path.display(), "no human-labelled responses: refusal judge not validated");
    } else {
        let c = metrics::validate_refusal_judge(&s.refusal, &labels);
        info!(
            n = c.n(),
            accuracy = format!("{:.3}", c.accuracy()),
            precision = format!("{:.3}", c.precision()),
            recall = format!("{:.3}", c.recall()),
            "refusal judge on human labels"
        );
        rows.extend(metrics::judge_validation_rows(&c));
    }
    if let Some(path) = outcome_labels_path(cfg) {
        let labelled = crate::outcome_labels::read(&path)?;
        rows.extend(crate::outcome_labels::validation_rows(
            "mosr_judge_labels",
            &s.refusal,
            &s.gibberish,
            &labelled,
        ));
    }

    let out = |n: &str| cfg.out_dir.join(n);
    let (gen_path, met_path, cap_path_out) = (
        out("generations.parquet"),
        out("metrics.parquet"),
        out("capability_items.parquet"),
    );
    write_generations(&gen_path, &generations)?;
    write_metrics(&met_path, &rows)?;
    write_capability_items(&cap_path_out, &cap_items)?;

    let mut manifest = StageManifest::new("eval", resolved_config(cfg));
    manifest.seed = Some(cfg.seed);
    manifest.inputs = BTreeMap::from([
        ("prompts.parquet".into(), sha256_file(&prompts_path)?),
        ("judge_labels.parquet".into(), sha256_file(&labels_path)?),
        ("model".into(), cfg.model_sha256.clone()),
    ]);
    if !s.capability.benchmarks.is_empty() {
        manifest
            .inputs
            .insert("capability.parquet".into(), sha256_file(&cap_path)?);
    }
    for (v, k) in cfg.variants.iter().zip(&adapter_keys) {
        if let Some(k) = k {
            manifest
                .inputs
                .insert(format!("adapter/{}", v.label()), k.clone());
        }
    }
    for (name, p) in [
        ("generations.parquet", &gen_path),
        ("metrics.parquet", &met_path),
        ("capability_items.parquet", &cap_path_out),
    ] {
        manifest.outputs.insert(name.into(), sha256_file(p)?);
    }
    manifest.row_counts = BTreeMap::from([
        ("generations".into(), generations.len() as u64),
        ("metrics".into(), rows.len() as u64),
        ("capability_items".into(), cap_items.len() as u64),
        ("groups_generated".into(), counts.generated as u64),
        ("groups_reused".into(), counts.reused as u64),
    ]);
    let frontier = match (&frontier_plan, &frontier_rows) {
        (Some(p), Some(r)) => Some(crate::frontier::write(&cfg.out_dir, p, r, &mut manifest)?),
        _ => None,
    };
    manifest.wall_time_s = started.elapsed().as_secs_f64();
    let manifest_path = out("manifest.json");
    manifest.write(&manifest_path)?;
    info!(
        generations = generations.len(), metrics = rows.len(), generated = counts.generated,
        reused = counts.reused,
        secs = format!("{:.1}", manifest.wall_time_s), out = %cfg.out_dir.display(),
        "eval stage done"
    );
    Ok(EvalOutputs {
        generations: gen_path,
        metrics: met_path,
        capability_items: cap_path_out,
        manifest: manifest_path,
        groups_generated: counts.generated,
        groups_reused: counts.reused,
        metric_rows: rows,
        frontier,
    })
}

/// The hand-labelled responses file, resolved against the repository root; none when the
/// option is empty.
fn outcome_labels_path(cfg: &EvalConfig) -> Option<PathBuf> {
    let p = &cfg.section.outcome_labels;
    if p.as_os_str().is_empty() {
        None
    } else if p.is_absolute() {
        Some(p.clone())
    } else {
        Some(cfg.repo_root.join(p))
    }
}

/// The configuration as recorded in the manifest and hashed into the stage key.
/// The frontier enters only when there are snapshots, so that pipelines without
/// `[finetune] frontier_steps` keep their keys.
fn resolved_config(cfg: &EvalConfig) -> serde_json::Value {
    let mut v = serde_json::json!({
        "section": cfg.section,
        "seed": cfg.seed,
        "device": cfg.device,
        "model_sha256": cfg.model_sha256,
        "variants": cfg.variants.iter().map(Variant::label).collect::<Vec<_>>(),
    });
    let f = &cfg.frontier;
    if !f.snapshots.is_empty() {
        v["frontier"] = serde_json::json!({
            "section": cfg.section.frontier,
            "snapshots": f.snapshots.iter().map(|s| s.label()).collect::<Vec<_>>(),
            "final_steps": f.final_steps,
        });
    }
    v
}

/// Command-line additions to a pipeline's `[eval]` section.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Evaluate only these variants (`base` is always evaluated).
    pub variants: Vec<String>,
    /// Extra adapter folders, each a variant named after its folder.
    pub adapters: Vec<PathBuf>,
    /// Extra custom sets.
    pub sets: Vec<PathBuf>,
}

/// Adapters under `runs/<pipeline>/finetune/<variant>/seed-<seed>/adapter`, by variant name
/// and seed.
pub fn discover_variants(finetune_dir: &Path) -> Vec<Variant> {
    mosr_artifacts::list_instances(finetune_dir)
        .into_iter()
        .map(|(name, seed, dir)| (name, seed, dir.join("adapter")))
        .filter(|(_, _, adapter)| adapter.join("adapter_config.json").is_file())
        .map(|(name, seed, adapter)| Variant {
            name,
            seed: Some(seed),
            adapter: Some(adapter),
        })
        .collect()
}

fn variant_name_of(dir: &Path) -> String {
    let last = dir.file_name().map(|s| s.to_string_lossy().into_owned());
    match last.as_deref() {
        Some("adapter") => dir
            .parent()
            .and_then(|p| p.file_name())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "adapter".into()),
        Some(s) => s.to_string(),
        None => "adapter".into(),
    }
}

/// Runs the evaluation stage into `runs/<pipeline>/eval/` unless it is up to date; returns
/// the stage folder.
pub fn run_pipeline_stage(file: &PipelineFile, repo_root: &Path, force: bool) -> Result<PathBuf> {
    run_pipeline_stage_with(file, repo_root, force, &Overrides::default())
}

/// [`run_pipeline_stage`] with command-line overrides.
pub fn run_pipeline_stage_with(
    file: &PipelineFile,
    repo_root: &Path,
    force: bool,
    ov: &Overrides,
) -> Result<PathBuf> {
    let mut section: EvalSection = file.section("eval")?;
    section.custom_sets.extend(ov.sets.iter().cloned());
    if !ov.variants.is_empty() {
        section.variants = ov.variants.clone();
    }
    let run_dir = file.run_dir(repo_root);
    let data = run_dir.manifest("data")?;
    let mosr_lm::ModelIdentity {
        path: model_path,
        sha256: model_sha,
    } = mosr_lm::identify(&file.run.model)?;

    let found = discover_variants(&run_dir.stage_dir("finetune"));
    let mut variants = vec![Variant::base()];
    if section.variants.is_empty() {
        variants.extend(found);
    } else {
        for name in section.variants.iter().filter(|n| n.as_str() != "base") {
            let of: Vec<&Variant> = found.iter().filter(|v| &v.name == name).collect();
            if of.is_empty() {
                bail!(
                    "{}: [eval] variant `{name}` has no adapter at {} (has the finetune stage run?)",
                    file.path.display(),
                    run_dir
                        .stage_dir("finetune")
                        .join(name)
                        .join("seed-<seed>/adapter")
                        .display()
                );
            }
            variants.extend(of.into_iter().cloned());
        }
    }
    for a in &ov.adapters {
        let name = variant_name_of(a);
        if variants.iter().any(|v| v.name == name) {
            bail!(
                "adapter {}: a variant named `{name}` is already evaluated",
                a.display()
            );
        }
        variants.push(Variant {
            name,
            seed: None,
            adapter: Some(a.clone()),
        });
    }

    let mut cfg = EvalConfig {
        repo_root: repo_root.to_path_buf(),
        data_dir: run_dir.stage_dir("data"),
        model: model_path,
        model_sha256: model_sha,
        device: file.run.device.clone(),
        seed: file.run.seed,
        variants,
        section,
        out_dir: PathBuf::new(),
        reuse_dirs: vec![run_dir.stage_dir("eval")],
        frontier: FrontierInputs::default(),
    };
    cfg.frontier = crate::frontier::discover(&cfg.variants)?;
    // Inputs of the key: data stage key, adapters, custom sets and the template file.
    let mut inputs = BTreeMap::from([("data".to_string(), data.key.clone())]);
    for v in &cfg.variants {
        if let Some(d) = &v.adapter {
            inputs.insert(
                format!("adapter/{}", v.label()),
                check_adapter(d, &cfg.model_sha256)?,
            );
        }
    }
    inputs.extend(crate::frontier::adapter_inputs(&cfg)?);
    for p in &cfg.section.custom_sets {
        let p = if p.is_absolute() {
            p.clone()
        } else {
            repo_root.join(p)
        };
        let h = sha256_file(&p).with_context(|| format!("custom set {}", p.display()))?;
        inputs.insert(format!("set/{}", p.display()), h);
    }
    if let Some(p) = outcome_labels_path(&cfg) {
        let h =
            sha256_file(&p).with_context(|| format!("[eval] outcome_labels {}", p.display()))?;
        inputs.insert("outcome_labels".into(), h);
    }
    if cfg.section.attacks.iter().any(|a| a == "template") {
        let t = &cfg.section.template.file;
        let p = if t.is_absolute() {
            t.clone()
        } else {
            repo_root.join(t)
        };
        inputs.insert("templates".into(), sha256_file(&p)?);
    }
    if let Some(a) = cfg.section.arithmetic.key() {
        inputs.insert("arithmetic".into(), a);
    }
    let key = mosr_artifacts::stage_key(&resolved_config(&cfg), &inputs);
    if !force && run_dir.is_up_to_date("eval", &key) {
        info!(stage = "eval", "up to date");
        return Ok(run_dir.stage_dir("eval"));
    }
    let work = run_dir.begin("eval", &key)?;
    if work.resumed() {
        info!(stage = "eval", dir = %work.dir().display(), "resuming an interrupted evaluation");
    }
    cfg.out_dir = work.dir().to_path_buf();
    let out = run(&cfg)?;
    let mut manifest = StageManifest::read(&out.manifest)?;
    manifest.inputs.extend(inputs);
    Ok(work.commit(manifest)?)
}

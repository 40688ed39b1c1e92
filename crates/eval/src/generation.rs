//! Generation groups, shared by the main evaluation ([`crate::stage`]) and the frontier
//! ([`crate::frontier`]): the evaluated models ([`Variant`], [`Snapshot`]), the stage's resolved
//! configuration, a group's key over everything that determines its responses, and the
//! generation of a model's pending groups in waves, each group written on its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use mosr_artifacts::eval::{GenerationRow, read_generations, write_generations};
use mosr_artifacts::{PromptRow, Role, sha256_bytes, sha256_file, write_bytes_atomic};
use mosr_lm::generate::{GenerateConfig, generate};
use mosr_lm::{LanguageModel, Message};
use serde::Serialize;
use tracing::{info, warn};

use crate::attacks::AttackPrompt;
use crate::config::EvalSection;
use crate::judges::{self, PerplexityContext};
use crate::likelihood::{Item, continuation_logprobs, perplexity};

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

/// Everything [`crate::stage::run`] needs, resolved.
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

pub(crate) fn sanitize(s: &str) -> String {
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

pub(crate) fn key_of(v: &serde_json::Value) -> String {
    sha256_bytes(&serde_json::to_vec(v).expect("json"))[..16].to_string()
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
pub(crate) fn find_group(cfg: &EvalConfig, file: &str) -> Result<Option<PathBuf>> {
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

    pub(crate) fn get(&mut self, v: &Variant) -> Result<&LanguageModel> {
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
        let ppl = response_perplexities(lm, s, &batch, &gens);
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

/// The base model's perplexity of each response (`[eval.gibberish] perplexity`), in the
/// configured context; `None` where it is off or the response is too short to score.
fn response_perplexities(
    lm: &LanguageModel,
    s: &EvalSection,
    batch: &[Vec<u32>],
    gens: &[mosr_lm::generate::Generation],
) -> Vec<Option<f32>> {
    let mut v = vec![None; gens.len()];
    if !s.gibberish.perplexity {
        return v;
    }
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
    for (j, lp) in at.into_iter().zip(lps) {
        v[j] = perplexity(&lp);
    }
    v
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

/// One adapter snapshot: a point of its variant's line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// The variant and seed it belongs to, with the snapshot's adapter folder.
    pub model: Variant,
    pub step: u64,
}

impl Snapshot {
    /// `<variant>.seed-<seed>.step-<step>`: unique per snapshot (file names, keys, logs).
    pub fn label(&self) -> String {
        format!("{}.step-{}", self.model.label(), self.step)
    }
}

/// What the frontier takes from the finetune stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FrontierInputs {
    /// Every snapshot of the evaluated instances, by variant, seed and step.
    pub snapshots: Vec<Snapshot>,
    /// Training steps (the final adapter's step) of each evaluated instance, by label.
    pub final_steps: BTreeMap<String, u64>,
}

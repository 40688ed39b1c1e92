//! The logit-lens stage: what each layer would say next.
//!
//! For each selected prompt (chat-formatted as in the extract stage, whose prompt selection
//! and formatting code it reuses as a library) the residual stream of every layer at the last
//! prompt token goes through the model's final norm and unembedding (`CausalLm::unembed`) and
//! a softmax. Per prompt and layer the stage keeps the top-k tokens, the entropy, and the
//! probability mass of two token sets built at run time from word lists: refusal tone
//! ("Sorry", "cannot", ...) and compliance tone ("Sure", "Here", ...). At the last layer this
//! is the model's own next-token distribution.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use mosr_artifacts::StageWork;
use mosr_artifacts::analysis::{
    LOGIT_LENS_TONE, LOGIT_LENS_TOPK, Parts, ToneRow, ToneSummaryRow, TopTokenRow,
};
use mosr_artifacts::row::{read_rows, record_batch, write_rows};
use mosr_artifacts::svg::{LinePlot, Series};
use mosr_artifacts::{PromptRow, StageManifest, sha256_bytes, sha256_file};
use mosr_lm::{ForwardOptions, LanguageModel, Logits, TokenBatch};
use mosr_stage::prompts::{self, OnOverflow, PromptPass};
use mosr_stage::{Ctx, Planned};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// `[logit_lens]` section of a pipeline file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogitLensSection {
    /// Roles to decode (default benign, harmful, overrefusal_safe, overrefusal_borderline).
    #[serde(default = "default_roles")]
    pub roles: Vec<String>,
    /// Splits to take them from (default `test`, held out from every probe and training set).
    #[serde(default = "default_splits")]
    pub splits: Vec<String>,
    /// At most this many prompts per (role, split), a seeded sample (default 100).
    #[serde(default = "default_max")]
    pub max_per_role_split: Option<usize>,
    /// Layers to decode; default all (0 = embedding output).
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
    /// Tokens kept per prompt and layer (default 10).
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// Prompts per forward (default 8).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Longest formatted prompt in tokens (default 512).
    #[serde(default = "default_max_prompt_tokens")]
    pub max_prompt_tokens: usize,
    /// `truncate` (default) or `reject`.
    #[serde(default)]
    pub on_overflow: OnOverflow,
    /// Refusal-tone words [R: the paper's tone words are not recovered]. Each word, as is and
    /// with a leading space, contributes the first token of its tokenisation when that token
    /// is the whole (first) word.
    #[serde(default = "default_refusal_words")]
    pub refusal_words: Vec<String>,
    /// Compliance-tone words, tokenised the same way.
    #[serde(default = "default_compliance_words")]
    pub compliance_words: Vec<String>,
}

fn default_roles() -> Vec<String> {
    [
        "benign",
        "harmful",
        "overrefusal_safe",
        "overrefusal_borderline",
    ]
    .map(String::from)
    .to_vec()
}
fn default_splits() -> Vec<String> {
    vec!["test".into()]
}
fn default_max() -> Option<usize> {
    Some(100)
}
fn default_top_k() -> usize {
    10
}
fn default_batch_size() -> usize {
    8
}
fn default_max_prompt_tokens() -> usize {
    512
}
fn default_refusal_words() -> Vec<String> {
    [
        "Sorry",
        "sorry",
        "cannot",
        "unable",
        "apologize",
        "Unfortunately",
        "No",
        "refuse",
        "decline",
        "unethical",
        "illegal",
        "inappropriate",
    ]
    .map(String::from)
    .to_vec()
}
fn default_compliance_words() -> Vec<String> {
    [
        "Sure",
        "Certainly",
        "Absolutely",
        "Here",
        "Yes",
        "Of course",
        "Happy",
        "Great",
        "Step",
        "First",
    ]
    .map(String::from)
    .to_vec()
}

impl Default for LogitLensSection {
    fn default() -> Self {
        LogitLensSection {
            roles: default_roles(),
            splits: default_splits(),
            max_per_role_split: default_max(),
            layers: None,
            top_k: default_top_k(),
            batch_size: default_batch_size(),
            max_prompt_tokens: default_max_prompt_tokens(),
            on_overflow: OnOverflow::default(),
            refusal_words: default_refusal_words(),
            compliance_words: default_compliance_words(),
        }
    }
}

/// A token set built from words: ids and the decoded tokens (for the manifest).
#[derive(Debug, Clone, Serialize)]
pub struct ToneSet {
    pub ids: Vec<u32>,
    pub tokens: Vec<String>,
}

/// The first token of each word (or phrase), as written and with a leading space
/// (mid-sentence form), kept only when that token is the whole first word; variants the
/// tokenizer splits inside the first word are skipped (their fragments are ambiguous).
pub fn tone_set(lm: &LanguageModel, words: &[String]) -> Result<ToneSet> {
    let mut ids = BTreeSet::new();
    for w in words {
        let w = w.trim();
        if w.is_empty() {
            bail!("tone word list holds an empty word");
        }
        for variant in [w.to_string(), format!(" {w}")] {
            let enc = lm.encode(&variant, false)?;
            let Some(&first) = enc.first() else { continue };
            // Keep the token only when it is the whole first word: a fragment ("in" of
            // "inappropriate", "un" of "unable") would count unrelated continuations.
            let text = lm.decode(&[first], false)?;
            if Some(text.trim()) == w.split_whitespace().next() {
                ids.insert(first);
            }
        }
    }
    if ids.is_empty() {
        bail!("tone word list {words:?} gives no tokens");
    }
    let ids: Vec<u32> = ids.into_iter().collect();
    let tokens = ids
        .iter()
        .map(|&i| lm.decode(&[i], false))
        .collect::<mosr_lm::Result<Vec<_>>>()?;
    Ok(ToneSet { ids, tokens })
}

/// Lens distributions: for each requested layer, row-major `[batch][vocab]` softmax of
/// `unembed(h_layer)` at the last column (every row's last prompt token, left padding).
pub fn lens_probs(
    lm: &LanguageModel,
    batch: &TokenBatch,
    layers: &[usize],
) -> Result<Vec<Vec<f32>>> {
    let max_layer = layers.iter().copied().max().unwrap_or(0);
    let out = lm.net.forward(
        batch,
        None,
        ForwardOptions {
            hidden: true,
            num_layers: Some(max_layer),
            logits: Logits::None,
            adapter: false,
            dropout: None,
            training_arithmetic: false,
            skip_padding: true,
        },
    );
    let t = batch.seq;
    layers
        .iter()
        .map(|&l| {
            let h: Tensor<3> = out
                .hidden
                .get(l)
                .with_context(|| format!("layer {l} not returned by the forward"))?
                .clone()
                .narrow(1, t - 1, 1);
            let p = softmax(lm.net.unembed(h), 2);
            p.into_data()
                .try_into_vec_as::<f32>()
                .map_err(|e| anyhow::anyhow!("lens data: {e:?}"))
        })
        .collect()
}

/// Everything `run` needs: the section plus where the prompts are and the run's model,
/// device and seed.
pub type LogitLensConfig = PromptPass<LogitLensSection>;

#[derive(Debug, Clone)]
pub struct LogitLensOutputs {
    pub manifest: PathBuf,
    pub summary: Vec<RoleLayer>,
}

/// Mean tone masses of one role at one layer.
#[derive(Debug, Clone)]
pub struct RoleLayer {
    pub role: String,
    pub layer: usize,
    pub n: usize,
    pub refusal_mass: f64,
    pub compliance_mass: f64,
    pub entropy: f64,
    pub top_token: String,
    pub top_token_share: f64,
}

/// Run the stage into `out_dir`; resumes from part files a killed run left there.
pub fn run(cfg: &LogitLensConfig, out_dir: &Path) -> Result<LogitLensOutputs> {
    let started = Instant::now();
    let s = &cfg.section;
    if s.batch_size == 0 || s.top_k == 0 {
        bail!("[logit_lens] batch_size and top_k must be at least 1");
    }
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
    let lm = LanguageModel::open(&model_path, &device)?;
    let layers = prompts::layers("logit_lens", s.layers.as_deref(), lm.config.num_layers)?;
    let refusal = tone_set(&lm, &s.refusal_words).context("[logit_lens] refusal_words")?;
    let compliance = tone_set(&lm, &s.compliance_words).context("[logit_lens] compliance_words")?;
    let both: Vec<&u32> = refusal
        .ids
        .iter()
        .filter(|i| compliance.ids.contains(i))
        .collect();
    if !both.is_empty() {
        bail!(
            "[logit_lens] tokens {both:?} are in both the refusal and the compliance set; change the word lists"
        );
    }
    info!(refusal = ?refusal.tokens, compliance = ?compliance.tokens, "tone token sets");

    let prompts::Tokenized { items, truncated } = prompts::tokenize(
        &lm,
        "logit_lens",
        &chosen,
        s.max_prompt_tokens,
        s.on_overflow,
        &cfg.prompts,
    )?;
    let n_batches = items.len().div_ceil(s.batch_size);

    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let manifest_config = serde_json::json!({
        "section": s, "model": cfg.model, "model_sha256": model_sha, "seed": cfg.seed,
        "refusal_tokens": refusal, "compliance_tokens": compliance,
    });
    let fingerprint = sha256_bytes(serde_json::to_string(&manifest_config)?.as_bytes());
    let topk_parts = Parts::keyed(&out_dir.join("parts_topk"), &LOGIT_LENS_TOPK, &fingerprint)?;
    let tone_parts = Parts::keyed(&out_dir.join("parts_tone"), &LOGIT_LENS_TONE, &fingerprint)?;
    let mut token_text: HashMap<u32, String> = HashMap::new();
    let k = s.top_k.min(lm.config.vocab_size);
    let skipped = prompts::resumable_batches(
        &items,
        s.batch_size,
        "logit-lens",
        |bi| topk_parts.done(bi) && tone_parts.done(bi),
        |bi, chunk| {
            let tones = [&refusal, &compliance];
            let (tk, tone) = lens_batch(&lm, chunk, &layers, tones, k, &mut token_text)?;
            topk_parts.write(bi, &record_batch(&tk, &topk_parts.path(bi))?)?;
            Ok(tone_parts.write(bi, &record_batch(&tone, &tone_parts.path(bi))?)?)
        },
    )?;
    let topk_path = out_dir.join("logit_lens_topk.parquet");
    let tone_path = out_dir.join("logit_lens_tone.parquet");
    let n_topk = topk_parts.merge(n_batches, &topk_path)?;
    let n_tone = tone_parts.merge(n_batches, &tone_path)?;
    let summary = summarise(&tone_path, &topk_path)?;
    write_summary(out_dir, &summary)?;

    let mut manifest = StageManifest::new("logit_lens", manifest_config);
    manifest.seed = Some(cfg.seed);
    let inputs = &mut manifest.inputs;
    inputs.insert("prompts.parquet".into(), sha256_file(&cfg.prompts)?);
    inputs.insert("model".into(), model_sha);
    for name in OUTPUTS {
        let hash = sha256_file(&out_dir.join(name))?;
        manifest.outputs.insert(name.into(), hash);
    }
    let mut counts = prompts::manifest_counts(&chosen);
    counts.insert("prompts".into(), chosen.len() as u64);
    counts.insert("layers".into(), layers.len() as u64);
    counts.insert("logit_lens_topk".into(), n_topk);
    counts.insert("logit_lens_tone".into(), n_tone);
    counts.insert("truncated_prompts".into(), truncated as u64);
    counts.insert("resumed_batches".into(), skipped as u64);
    manifest.row_counts = counts;
    manifest.wall_time_s = started.elapsed().as_secs_f64();
    let mp = out_dir.join("manifest.json");
    manifest.write(&mp)?;
    info!(prompts = chosen.len(), secs = manifest.wall_time_s, out = %out_dir.display(), "logit-lens done");
    Ok(LogitLensOutputs {
        manifest: mp,
        summary,
    })
}

/// The stage's outputs, as the manifest records them.
const OUTPUTS: [&str; 4] = [
    "logit_lens_topk.parquet",
    "logit_lens_tone.parquet",
    "logit_lens_summary.parquet",
    "tone_mass.svg",
];

/// `logit_lens_summary.parquet` and its plot, `tone_mass.svg`.
fn write_summary(out_dir: &Path, summary: &[RoleLayer]) -> Result<()> {
    let rows: Vec<ToneSummaryRow> = summary
        .iter()
        .map(|x| ToneSummaryRow {
            role: x.role.clone(),
            layer: x.layer as i32,
            n: x.n as i64,
            refusal_mass: x.refusal_mass,
            compliance_mass: x.compliance_mass,
            entropy: x.entropy,
            top_token: x.top_token.clone(),
            top_token_share: x.top_token_share,
        })
        .collect();
    write_rows(&out_dir.join("logit_lens_summary.parquet"), &rows)?;
    plot(summary, &out_dir.join("tone_mass.svg"))
}

/// One batch through the lens: each (layer, prompt)'s tone masses and entropy, and its top-`k`
/// tokens (their text decoded once per run, cached in `token_text`).
fn lens_batch(
    lm: &LanguageModel,
    chunk: &[(Vec<u32>, &PromptRow)],
    layers: &[usize],
    [refusal, compliance]: [&ToneSet; 2],
    k: usize,
    token_text: &mut HashMap<u32, String>,
) -> Result<(Vec<TopTokenRow>, Vec<ToneRow>)> {
    let vocab = lm.config.vocab_size;
    let seqs: Vec<Vec<u32>> = chunk.iter().map(|(ids, _)| ids.clone()).collect();
    let batch = TokenBatch::left_padded(&seqs, lm.pad_id);
    let probs = lens_probs(lm, &batch, layers)?;
    let mut tk: Vec<TopTokenRow> = Vec::new();
    let mut tone: Vec<ToneRow> = Vec::new();
    for (li, &l) in layers.iter().enumerate() {
        for (row, (_, p)) in chunk.iter().enumerate() {
            let pr = &probs[li][row * vocab..(row + 1) * vocab];
            let mass = |set: &ToneSet| set.ids.iter().map(|&i| pr[i as usize] as f64).sum::<f64>();
            let entropy: f64 = pr
                .iter()
                .filter(|&&x| x > 0.0)
                .map(|&x| -(x as f64) * (x as f64).ln())
                .sum();
            tone.push(ToneRow {
                prompt_id: p.id.clone(),
                role: p.role.as_str().to_string(),
                layer: l as i32,
                refusal_mass: mass(refusal),
                compliance_mass: mass(compliance),
                entropy,
            });
            for (rank, t) in top_k(pr, k).into_iter().enumerate() {
                let text = match token_text.get(&t) {
                    Some(x) => x.clone(),
                    None => {
                        let x = lm.decode(&[t], false)?;
                        token_text.insert(t, x.clone());
                        x
                    }
                };
                tk.push(TopTokenRow {
                    prompt_id: p.id.clone(),
                    role: p.role.as_str().to_string(),
                    layer: l as i32,
                    rank: rank as i32 + 1,
                    token_id: t as i32,
                    token: text,
                    prob: pr[t as usize],
                });
            }
        }
    }
    Ok((tk, tone))
}

/// The `k` most probable token ids, most probable first (ties by id).
fn top_k(pr: &[f32], k: usize) -> Vec<u32> {
    let vocab = pr.len();
    let mut idx: Vec<u32> = (0..vocab as u32).collect();
    let cmp = |a: &u32, b: &u32| pr[*b as usize].total_cmp(&pr[*a as usize]).then(a.cmp(b));
    if k < vocab {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

/// Means per role and layer from the tone table; the most frequent top-1 token from top-k.
fn summarise(tone: &Path, topk: &Path) -> Result<Vec<RoleLayer>> {
    #[derive(Default)]
    struct Acc {
        n: usize,
        r: f64,
        c: f64,
        e: f64,
        top: BTreeMap<String, usize>,
    }
    let mut acc: BTreeMap<(String, i32), Acc> = BTreeMap::new();
    for r in read_rows::<ToneRow>(tone)? {
        let a = acc.entry((r.role, r.layer)).or_default();
        a.n += 1;
        a.r += r.refusal_mass;
        a.c += r.compliance_mass;
        a.e += r.entropy;
    }
    for r in read_rows::<TopTokenRow>(topk)? {
        if r.rank == 1
            && let Some(a) = acc.get_mut(&(r.role, r.layer))
        {
            *a.top.entry(r.token).or_default() += 1;
        }
    }
    Ok(acc
        .into_iter()
        .map(|((role, layer), a)| {
            let (top_token, cnt) = a
                .top
                .iter()
                .max_by(|x, y| x.1.cmp(y.1).then(y.0.cmp(x.0)))
                .map(|(t, c)| (t.clone(), *c))
                .unwrap_or_default();
            let n = a.n.max(1) as f64;
            RoleLayer {
                role,
                layer: layer as usize,
                n: a.n,
                refusal_mass: a.r / n,
                compliance_mass: a.c / n,
                entropy: a.e / n,
                top_token,
                top_token_share: cnt as f64 / n,
            }
        })
        .collect())
}

fn plot(summary: &[RoleLayer], path: &Path) -> Result<()> {
    let mut p = LinePlot::new(
        "LogitLens tone mass per layer (solid: refusal, dashed: compliance)",
        "layer",
        "mean probability mass",
    );
    let roles: BTreeSet<&str> = summary.iter().map(|x| x.role.as_str()).collect();
    for role in &roles {
        let rows: Vec<&RoleLayer> = summary.iter().filter(|x| x.role == *role).collect();
        p.series.push(Series::new(
            format!("{role} refusal"),
            rows.iter()
                .map(|x| (x.layer as f64, x.refusal_mass))
                .collect(),
        ));
    }
    for role in &roles {
        let rows: Vec<&RoleLayer> = summary.iter().filter(|x| x.role == *role).collect();
        let mut se = Series::new(
            format!("{role} compliance"),
            rows.iter()
                .map(|x| (x.layer as f64, x.compliance_mass))
                .collect(),
        );
        se.dashed = true;
        p.series.push(se);
    }
    if roles.len() > 5 {
        warn!("many roles: the tone plot's palette repeats");
    }
    p.write(path)?;
    Ok(())
}

/// The logit-lens stage: its key covers the section, the model (file and sha256), the seed,
/// the device and the data stage's key.
pub struct LogitLens;

impl mosr_stage::Stage for LogitLens {
    const NAME: &'static str = "logit_lens";
    const UPSTREAM: &'static [&'static str] = &["data"];
    type Section = LogitLensSection;
    type Plan = LogitLensConfig;

    fn plan(ctx: &Ctx, section: LogitLensSection) -> Result<Planned<LogitLensConfig>> {
        PromptPass::plan(ctx, section)
    }

    fn compute(
        _: &Ctx,
        planned: Planned<LogitLensConfig>,
        work: &StageWork,
    ) -> Result<StageManifest> {
        let out = run(&planned.plan, work.dir())?;
        Ok(StageManifest::read(&out.manifest)?)
    }
}

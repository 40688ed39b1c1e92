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
use mosr_artifacts::StageWork;
use mosr_artifacts::eval::{
    CapabilityItemRow, GenerationRow, MetricRow, read_capability_items, write_capability_items,
    write_generations, write_metrics,
};
use mosr_artifacts::{
    CapabilityRow, JudgeLabelRow, PromptRow, Role, StageManifest, read_capability,
    read_judge_labels, read_prompts, sha256_file,
};
use mosr_stage::{Ctx, Planned};
use tracing::{info, warn};

use crate::attacks::{self, AttackInput, AttackPrompt, plain};
use crate::config::EvalSection;
use crate::generation::{
    EvalConfig, FrontierInputs, GenGroup, GroupAt, GroupCounts, Model, Variant, check_adapter,
    find_group, gen_group, gen_settings, harmful_pool, key_of, model_generations, sanitize,
    set_pool, variant_key,
};
use crate::metrics;
use crate::sets;

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

/// One planned capability group.
#[derive(Debug, Clone)]
struct CapGroup {
    variant: usize,
    benchmark: String,
    items: Vec<CapabilityRow>,
    file: String,
}

/// The sets of prompts sent as-is or under attacks: (set name, attack-able?, prompts).
struct PlannedSet {
    name: String,
    /// Harmful prompts get the input-transforming attacks; others are sent `direct`.
    harmful: bool,
    prompts: Vec<PromptRow>,
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
    let inputs = Inputs::read(cfg)?;
    // Adapters are checked before anything is loaded, so a wrong one fails in seconds.
    let adapter_keys = cfg
        .variants
        .iter()
        .map(|v| {
            v.adapter
                .as_ref()
                .map(|d| check_adapter(d, &cfg.model_sha256))
                .transpose()
        })
        .collect::<Result<Vec<_>>>()?;
    let sends = plan_sends(cfg, &inputs)?;
    let caps = plan_capability(cfg, &inputs.capability_path, &inputs.capability)?;
    let frontier_plan = crate::frontier::plan(cfg, &inputs.prompts, &sends)?;
    let (gen_groups, cap_groups) = plan_groups(cfg, &sends, &caps, &adapter_keys);
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
        let mine: Vec<&GenGroup> = gen_groups.iter().filter(|g| g.variant == vi).collect();
        let got = model_generations(cfg, &mut model, &cfg.variants[vi], &mine, &mut counts)?;
        generations.extend(got.into_iter().flatten());
        for g in cap_groups.iter().filter(|g| g.variant == vi) {
            cap_items.extend(capability_group(cfg, &mut model, g, &mut counts)?);
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
    let rows = metric_rows(cfg, &inputs, &generations, &cap_items)?;

    let out = |n: &str| cfg.out_dir.join(n);
    let (gen_path, met_path, cap_path_out) = (
        out("generations.parquet"),
        out("metrics.parquet"),
        out("capability_items.parquet"),
    );
    write_generations(&gen_path, &generations)?;
    write_metrics(&met_path, &rows)?;
    write_capability_items(&cap_path_out, &cap_items)?;

    let mut manifest = inputs.manifest(cfg, &adapter_keys)?;
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

/// The data stage's tables the evaluation reads, and where they are.
struct Inputs {
    prompts_path: PathBuf,
    capability_path: PathBuf,
    labels_path: PathBuf,
    prompts: Vec<PromptRow>,
    /// Empty when no capability benchmark is configured (the file is then not read).
    capability: Vec<CapabilityRow>,
    labels: Vec<JudgeLabelRow>,
}

impl Inputs {
    fn read(cfg: &EvalConfig) -> Result<Self> {
        let prompts_path = cfg.data_dir.join("prompts.parquet");
        let capability_path = cfg.data_dir.join("capability.parquet");
        let labels_path = cfg.data_dir.join("judge_labels.parquet");
        let prompts = read_prompts(&prompts_path)?;
        let capability = if cfg.section.capability.benchmarks.is_empty() {
            Vec::new()
        } else {
            read_capability(&capability_path)?
        };
        Ok(Self {
            prompts,
            capability,
            labels: read_judge_labels(&labels_path)?,
            prompts_path,
            capability_path,
            labels_path,
        })
    }

    /// The stage manifest with its configuration and inputs: the data tables read, the model
    /// and each variant's adapter key.
    fn manifest(&self, cfg: &EvalConfig, adapter_keys: &[Option<String>]) -> Result<StageManifest> {
        let mut manifest = StageManifest::new("eval", resolved_config(cfg));
        manifest.seed = Some(cfg.seed);
        manifest.inputs = BTreeMap::from([
            ("prompts.parquet".into(), sha256_file(&self.prompts_path)?),
            (
                "judge_labels.parquet".into(),
                sha256_file(&self.labels_path)?,
            ),
            ("model".into(), cfg.model_sha256.clone()),
        ]);
        if !cfg.section.capability.benchmarks.is_empty() {
            let hash = sha256_file(&self.capability_path)?;
            manifest.inputs.insert("capability.parquet".into(), hash);
        }
        for (v, k) in cfg.variants.iter().zip(adapter_keys) {
            if let Some(k) = k {
                manifest
                    .inputs
                    .insert(format!("adapter/{}", v.label()), k.clone());
            }
        }
        Ok(manifest)
    }
}

/// The prompts sent per (set, attack), the same for every variant: the harmful pool under
/// each attack, each harmful set under the input-transforming attacks, the others `direct`.
fn plan_sends(
    cfg: &EvalConfig,
    inputs: &Inputs,
) -> Result<Vec<(String, String, Vec<AttackPrompt>)>> {
    let s = &cfg.section;
    let prompts = &inputs.prompts;
    let (harmful, planned_sets) = plan_sets(cfg, &inputs.prompts_path, prompts)?;
    let attack_objs: Vec<Box<dyn attacks::Attack>> = s
        .attacks
        .iter()
        .map(|a| s.attack(a, &cfg.repo_root))
        .collect::<Result<_>>()?;
    let mut sends: Vec<(String, String, Vec<AttackPrompt>)> = Vec::new();
    let input = AttackInput {
        harmful: &harmful,
        all: prompts,
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
                all: prompts,
                n: 0,
                seed: cfg.seed,
            };
            for a in attack_objs.iter().filter(|a| a.transforms_input()) {
                sends.push((set.name.clone(), a.name().to_string(), a.prompts(&input)?));
            }
        } else {
            let direct = set.prompts.iter().map(plain).collect();
            sends.push((set.name.clone(), "direct".into(), direct));
        }
    }
    for (set, attack, p) in &sends {
        if p.is_empty() {
            bail!("set `{set}` under attack `{attack}` has no prompts to send");
        }
    }
    Ok(sends)
}

/// Every variant's generation groups (one per sent (set, attack)) and capability groups (one
/// per benchmark), each named by a key of everything its rows depend on.
fn plan_groups(
    cfg: &EvalConfig,
    sends: &[(String, String, Vec<AttackPrompt>)],
    caps: &[(String, Vec<CapabilityRow>)],
    adapter_keys: &[Option<String>],
) -> (Vec<GenGroup>, Vec<CapGroup>) {
    let s = &cfg.section;
    let gen_settings = gen_settings(s);
    let mut gen_groups = Vec::new();
    let mut cap_groups = Vec::new();
    for (vi, v) in cfg.variants.iter().enumerate() {
        let vkey = variant_key(cfg, &adapter_keys[vi]);
        for (set, attack, p) in sends {
            let at = GroupAt {
                variant: vi,
                label: &v.label(),
                vkey: &vkey,
                settings: &gen_settings,
            };
            gen_groups.push(gen_group(&at, set, attack, p));
        }
        for (b, items) in caps {
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
    (gen_groups, cap_groups)
}

/// One capability group's scored items: reused from an earlier run's group file, else scored
/// now and written.
fn capability_group(
    cfg: &EvalConfig,
    model: &mut Model,
    g: &CapGroup,
    counts: &mut GroupCounts,
) -> Result<Vec<CapabilityItemRow>> {
    if let Some(p) = find_group(cfg, &g.file)? {
        counts.reused += 1;
        return Ok(read_capability_items(&p)?);
    }
    let v = &cfg.variants[g.variant];
    let t0 = Instant::now();
    let lm = model.get(v)?;
    let capability = &cfg.section.capability;
    let adapter = v.adapter.is_some();
    let mut rows = crate::capability::score(lm, capability, &v.name, &g.items, adapter)?;
    let seed = v.seed.map(|s| s as i64);
    rows.iter_mut().for_each(|r| r.seed = seed);
    write_capability_items(&cfg.out_dir.join("groups").join(&g.file), &rows)?;
    counts.generated += 1;
    let acc = rows.iter().filter(|r| r.correct).count() as f64 / rows.len() as f64;
    info!(
        variant = %v.label(), benchmark = %g.benchmark, n = rows.len(),
        accuracy = format!("{acc:.3}"), secs = format!("{:.1}", t0.elapsed().as_secs_f64()),
        "capability scored"
    );
    Ok(rows)
}

/// The metrics table: rates per generation group, capability accuracy per (variant, seed,
/// benchmark), and the judges' agreement with the human labels.
fn metric_rows(
    cfg: &EvalConfig,
    inputs: &Inputs,
    generations: &[GenerationRow],
    cap_items: &[CapabilityItemRow],
) -> Result<Vec<MetricRow>> {
    let s = &cfg.section;
    let mut rows = metrics::generation_metrics(generations);
    let mut by: BTreeMap<(String, Option<i64>, String), (u64, u64)> = BTreeMap::new();
    for r in cap_items {
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
    if inputs.labels.is_empty() {
        warn!(file = %inputs.labels_path.display(), "no human-labelled responses: refusal judge not validated");
    } else {
        let c = metrics::validate_refusal_judge(&s.refusal, &inputs.labels);
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
    Ok(rows)
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

/// The evaluation stage: the base model and every adapter the finetune stage trained (or the
/// variants `[eval] variants` names). The key covers the resolved configuration, the data
/// stage key, each adapter's sha256, the custom sets, the outcome labels and the templates.
pub struct Eval;

impl mosr_stage::Stage for Eval {
    const NAME: &'static str = "eval";
    const UPSTREAM: &'static [&'static str] = &["data", "finetune"];
    type Section = EvalSection;
    type Plan = EvalConfig;

    fn plan(ctx: &Ctx, section: EvalSection) -> Result<Planned<EvalConfig>> {
        plan_with(ctx, section, &Overrides::default())
    }

    fn compute(_: &Ctx, planned: Planned<EvalConfig>, work: &StageWork) -> Result<StageManifest> {
        let mut cfg = planned.plan;
        cfg.out_dir = work.dir().to_path_buf();
        let out = run(&cfg)?;
        let mut manifest = StageManifest::read(&out.manifest)?;
        manifest.inputs.extend(planned.inputs);
        Ok(manifest)
    }
}

/// [`Eval`]'s plan with command-line overrides.
pub fn plan_with(
    ctx: &Ctx,
    mut section: EvalSection,
    ov: &Overrides,
) -> Result<Planned<EvalConfig>> {
    let (file, repo_root, run_dir) = (ctx.file, ctx.repo_root, &ctx.run_dir);
    section.custom_sets.extend(ov.sets.iter().cloned());
    if !ov.variants.is_empty() {
        section.variants = ov.variants.clone();
    }
    let data = ctx.upstream("data")?;
    let model = ctx.model()?;
    let (model_path, model_sha) = (model.path.clone(), model.sha256.clone());

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
    let config = resolved_config(&cfg);
    Ok(Planned {
        config,
        inputs,
        plan: cfg,
    })
}

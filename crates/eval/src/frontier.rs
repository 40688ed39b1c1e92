//! The safety/over-refusal frontier: each trained variant's line of (ASR, over-refusal) points
//! over its erasure strength. The points are the base model (step 0), the adapter snapshots
//! the finetune stage saved at `[finetune] frontier_steps`, and the final adapter (step =
//! `[finetune] steps`). Every point answers the same prompts: the first `harmful_n` harmful
//! prompts and `set_n` prompts per over-refusal set of the main evaluation's seeded samples
//! (the same seeded permutation, so a subset of the main prompts), as direct requests. The
//! snapshots are generated here, through the stage's generation groups (and their reuse); the
//! base model's and the final adapters' answers are the main evaluation's, not regenerated.
//!
//! Outputs: `frontier_generations.parquet` (every point's judged responses, what the claims
//! stage's matched-ASR comparison resamples) and `frontier.parquet` (each point's rates with
//! Wilson intervals).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use mosr_artifacts::PromptRow;
use mosr_artifacts::eval::{FrontierGenerationRow, FrontierRow, GenerationRow};
use mosr_stats::{Z95, wilson};

use crate::attacks::AttackPrompt;
use crate::generation::{
    EvalConfig, FrontierInputs, GenGroup, GroupAt, GroupCounts, Model, Snapshot, Variant,
    check_adapter, gen_group, gen_settings, harmful_pool, model_generations, set_pool,
};
use crate::sets;

/// The set name of the harmful prompts (direct requests), as in `generations`.
pub const HARMFUL: &str = "harmful";
/// Every frontier over-refusal set pooled (the claims stage's name for its pooled sets).
pub const POOLED: &str = "overrefusal";

/// The snapshots beside the adapters of the evaluated instances
/// (`finetune/<variant>/seed-<seed>/step-<t>/adapter`) and each instance's training steps
/// (its `summary.json`); empty when no instance has a snapshot.
pub fn discover(variants: &[Variant]) -> Result<FrontierInputs> {
    let mut out = FrontierInputs::default();
    let instances: Vec<(&Variant, &Path)> = variants
        .iter()
        .filter(|v| v.seed.is_some())
        .filter_map(|v| Some((v, v.adapter.as_deref()?.parent()?)))
        .collect();
    for (v, dir) in &instances {
        for (step, adapter) in mosr_artifacts::list_snapshots(dir) {
            let model = Variant {
                adapter: Some(adapter),
                ..(*v).clone()
            };
            out.snapshots.push(Snapshot { model, step });
        }
    }
    if out.snapshots.is_empty() {
        return Ok(out);
    }
    for (v, dir) in instances {
        let path = dir.join("summary.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: the frontier needs its `steps`", path.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid summary", path.display()))?;
        let Some(steps) = json.get("steps").and_then(|s| s.as_u64()) else {
            bail!("{}: no `steps` (the final adapter's step)", path.display());
        };
        out.final_steps.insert(v.label(), steps);
    }
    Ok(out)
}

/// Each snapshot's adapter hash, as the stage key's and the manifest's inputs
/// (`adapter/<label>`), checked against the base model.
pub fn adapter_inputs(cfg: &EvalConfig) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for snap in &cfg.frontier.snapshots {
        let dir = snap
            .model
            .adapter
            .as_deref()
            .expect("a snapshot has an adapter");
        let key = check_adapter(dir, &cfg.model_sha256)?;
        out.insert(format!("adapter/{}", snap.label()), key);
    }
    Ok(out)
}

/// The frontier's planned work: its prompts per set and the snapshots' generation groups.
pub struct FrontierPlan {
    /// (set, prompts as sent): `harmful` first, then each over-refusal set.
    pub sends: Vec<(String, Vec<AttackPrompt>)>,
    /// Generation groups, `variant` indexing `cfg.frontier.snapshots`.
    groups: Vec<GenGroup>,
    /// Each snapshot's adapter hash (manifest inputs), by label.
    pub adapter_keys: BTreeMap<String, String>,
}

/// Of the main evaluation's prompts for `set` (direct requests), those among the first `n`
/// of `pool`'s seeded permutation: the same draw as the main sample's, so a subset of it.
fn prefix_of(
    sends: &[(String, String, Vec<AttackPrompt>)],
    set: &str,
    pool: &[PromptRow],
    n: usize,
    seed: u64,
) -> Result<Vec<AttackPrompt>> {
    let Some((_, _, main)) = sends.iter().find(|(s, a, _)| s == set && a == "direct") else {
        bail!(
            "[eval.frontier]: set `{set}` is not sent as a direct request by the main evaluation \
             ([eval] sets, or the `direct` attack for `harmful`); its base and final points \
             come from there"
        );
    };
    let keep: BTreeSet<String> = sets::sample(pool, n, seed, set)
        .into_iter()
        .map(|p| p.id)
        .collect();
    let out: Vec<AttackPrompt> = main
        .iter()
        .filter(|p| keep.contains(&p.prompt_id))
        .cloned()
        .collect();
    if out.is_empty() {
        bail!("[eval.frontier]: no prompt of set `{set}` to send");
    }
    Ok(out)
}

/// Plans the frontier (None without snapshots): checks every snapshot's adapter, picks the
/// prompts and names the generation groups.
pub fn plan(
    cfg: &EvalConfig,
    prompts: &[PromptRow],
    sends: &[(String, String, Vec<AttackPrompt>)],
) -> Result<Option<FrontierPlan>> {
    if cfg.frontier.snapshots.is_empty() {
        return Ok(None);
    }
    let f = &cfg.section.frontier;
    if f.sets.is_empty() {
        bail!("[eval.frontier] sets is empty: the frontier needs over-refusal prompts");
    }
    let harmful = harmful_pool(&cfg.section, prompts)?;
    let mut fsends = vec![(
        HARMFUL.to_string(),
        prefix_of(sends, HARMFUL, &harmful, f.harmful_n.at_most(), cfg.seed)?,
    )];
    for set in &f.sets {
        let pool = set_pool(set, prompts).context("[eval.frontier] sets")?;
        let p = prefix_of(sends, set, &pool, f.set_n.at_most(), cfg.seed)?;
        fsends.push((set.clone(), p));
    }
    let settings = gen_settings(&cfg.section);
    let keys = adapter_inputs(cfg)?;
    let (mut groups, mut adapter_keys) = (Vec::new(), BTreeMap::new());
    for (si, snap) in cfg.frontier.snapshots.iter().enumerate() {
        let label = snap.label();
        let key = keys[&format!("adapter/{label}")].clone();
        let vkey = crate::generation::variant_key(cfg, &key);
        let at = GroupAt {
            variant: si,
            label: &label,
            vkey: &vkey,
            settings: &settings,
        };
        for (set, p) in &fsends {
            groups.push(gen_group(&at, set, "direct", p));
        }
        adapter_keys.insert(label, key);
    }
    Ok(Some(FrontierPlan {
        sends: fsends,
        groups,
        adapter_keys,
    }))
}

/// Rows of one point taken from the main evaluation (direct requests on the frontier's
/// prompts), in the plan's order.
fn reused_point(
    plan: &FrontierPlan,
    main: &BTreeMap<(&str, Option<i64>, &str, &str), &GenerationRow>,
    (variant, seed): (&str, Option<i64>),
    step: u64,
    source: &str,
) -> Result<Vec<FrontierGenerationRow>> {
    let mut out = Vec::new();
    for (set, prompts) in &plan.sends {
        for p in prompts {
            let Some(g) = main.get(&(variant, seed, set.as_str(), p.prompt_id.as_str())) else {
                bail!(
                    "frontier: `{variant}` (seed {seed:?}) has no direct answer to prompt `{}` of set `{set}` in the main evaluation",
                    p.prompt_id
                );
            };
            out.push(FrontierGenerationRow::from_generation(
                g,
                step as i64,
                source,
            ));
        }
    }
    Ok(out)
}

/// Every point's judged responses: the base model's and each final adapter's from the main
/// evaluation's `generations`, each snapshot's generated (or reused) here. Order: base, then
/// each evaluated instance's points by step.
pub(crate) fn generate(
    cfg: &EvalConfig,
    plan: &FrontierPlan,
    model: &mut Model,
    generations: &[GenerationRow],
    counts: &mut GroupCounts,
) -> Result<Vec<FrontierGenerationRow>> {
    let main: BTreeMap<(&str, Option<i64>, &str, &str), &GenerationRow> = generations
        .iter()
        .filter(|g| g.attack == "direct")
        .map(|g| {
            (
                (
                    g.variant.as_str(),
                    g.seed,
                    g.set.as_str(),
                    g.prompt_id.as_str(),
                ),
                g,
            )
        })
        .collect();
    let mut out = reused_point(plan, &main, ("base", None), 0, "base")?;
    for v in &cfg.variants {
        let Some(&last) = cfg.frontier.final_steps.get(&v.label()) else {
            continue;
        };
        let seed = v.seed.map(|s| s as i64);
        for (si, snap) in cfg.frontier.snapshots.iter().enumerate() {
            if snap.model.name != v.name || snap.model.seed != v.seed {
                continue;
            }
            tracing::info!(snapshot = %snap.label(), "frontier point");
            let mine: Vec<&GenGroup> = plan.groups.iter().filter(|g| g.variant == si).collect();
            let rows = model_generations(cfg, model, &snap.model, &mine, counts)?;
            out.extend(
                rows.iter().flatten().map(|g| {
                    FrontierGenerationRow::from_generation(g, snap.step as i64, "snapshot")
                }),
            );
        }
        out.extend(reused_point(plan, &main, (&v.name, seed), last, "final")?);
    }
    Ok(out)
}

/// Each point's rates: on `harmful` the ASR (complied), refusals and gibberish; on every
/// over-refusal set, and on them pooled (`overrefusal`), refusals and gibberish; each with
/// its k, n and Wilson 95% interval. Points in the rows' order.
pub fn points(rows: &[FrontierGenerationRow]) -> Vec<FrontierRow> {
    type Point<'a> = (&'a str, Option<i64>, i64, &'a str);
    let mut order: Vec<Point> = Vec::new();
    // point -> set -> (n, complied, refused, gibberish)
    let mut counts: BTreeMap<Point, BTreeMap<&str, [i64; 4]>> = BTreeMap::new();
    for r in rows {
        let point = (r.variant.as_str(), r.seed, r.step, r.source.as_str());
        if !counts.contains_key(&point) {
            order.push(point);
        }
        let sets = counts.entry(point).or_default();
        let mut add = |set| {
            let c = sets.entry(set).or_default();
            c[0] += 1;
            c[1] += (r.outcome == "complied") as i64;
            c[2] += (r.outcome == "refused") as i64;
            c[3] += (r.outcome == "gibberish") as i64;
        };
        add(r.set.as_str());
        if r.set != HARMFUL {
            add(POOLED);
        }
    }
    let mut out = Vec::new();
    for point in order {
        let sets = &counts[&point];
        let names = [HARMFUL, POOLED].into_iter().chain(
            sets.keys()
                .copied()
                .filter(|s| *s != HARMFUL && *s != POOLED),
        );
        for set in names {
            let Some(c) = sets.get(set) else { continue };
            let metrics: &[(&str, i64)] = if set == HARMFUL {
                &[("asr", c[1]), ("refused", c[2]), ("gibberish", c[3])]
            } else {
                &[("refused", c[2]), ("gibberish", c[3])]
            };
            for &(metric, k) in metrics {
                let (lo, hi) = wilson(k as f64, c[0] as f64, Z95).expect("n >= 1");
                out.push(FrontierRow {
                    variant: point.0.to_string(),
                    seed: point.1,
                    step: point.2,
                    source: point.3.to_string(),
                    set: set.to_string(),
                    metric: metric.to_string(),
                    k,
                    n: c[0],
                    value: k as f64 / c[0] as f64,
                    ci_low: lo,
                    ci_high: hi,
                });
            }
        }
    }
    out
}

/// Writes `frontier_generations.parquet` and `frontier.parquet` into `out_dir` and records
/// them (outputs, row counts, the snapshots' adapter hashes) in `manifest`; returns the path
/// of `frontier.parquet`.
pub fn write(
    out_dir: &Path,
    plan: &FrontierPlan,
    rows: &[FrontierGenerationRow],
    manifest: &mut mosr_artifacts::StageManifest,
) -> Result<std::path::PathBuf> {
    let table = points(rows);
    let (gens, front) = (
        out_dir.join("frontier_generations.parquet"),
        out_dir.join("frontier.parquet"),
    );
    mosr_artifacts::eval::write_frontier_generations(&gens, rows)?;
    mosr_artifacts::eval::write_frontier(&front, &table)?;
    for (name, p) in [
        ("frontier_generations.parquet", &gens),
        ("frontier.parquet", &front),
    ] {
        let h = mosr_artifacts::sha256_file(p)?;
        manifest.outputs.insert(name.into(), h);
    }
    let counts = [
        ("frontier_generations", rows.len()),
        ("frontier", table.len()),
    ];
    for (name, n) in counts {
        manifest.row_counts.insert(name.into(), n as u64);
    }
    for (label, key) in &plan.adapter_keys {
        manifest
            .inputs
            .insert(format!("adapter/{label}"), key.clone());
    }
    Ok(front)
}

//! The report's sections, in README order. Each reads one stage's tables, writes its own
//! Parquet/SVG files through the [`Writer`] and returns its Markdown, or `None` when its stage
//! has not produced the table yet.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail};
use mosr_artifacts::RunDir;
use polars::df;
use polars::prelude::{BooleanChunked, Column, DataFrame};

use crate::columns::{f64s, strs};
use crate::{ReportSection, Writer, read_df};
use mosr_artifacts::svg::{LinePlot, Series};

/// Title, axes and y range of a plot; rendered with the shared [`LinePlot`].
struct Chart {
    title: String,
    x_label: String,
    y_label: String,
    y_range: Option<(f64, f64)>,
}

impl Chart {
    fn render(self, series: Vec<Series>) -> String {
        let mut plot = LinePlot::new(&self.title, &self.x_label, &self.y_label);
        plot.y_range = self.y_range;
        plot.series = series;
        plot.render()
    }
}

pub struct Section {
    pub title: &'static str,
    pub build: fn(&ReportSection, &RunDir, &mut Writer) -> Result<Option<String>>,
}

pub fn all() -> Vec<Section> {
    vec![
        Section {
            title: "Claims",
            build: crate::claims::claims,
        },
        Section {
            title: "Main table",
            build: main_table,
        },
        Section {
            title: "Paired comparisons",
            build: crate::claims::paired,
        },
        Section {
            title: "Ablation",
            build: ablation,
        },
        Section {
            title: "Frontier",
            build: crate::frontier::frontier,
        },
        Section {
            title: "Judge validation",
            build: judge_validation,
        },
        Section {
            title: "Linear probes",
            build: probes,
        },
        Section {
            title: "Boundary positions",
            build: boundary,
        },
        Section {
            title: "LogitLens",
            build: logit_lens,
        },
        Section {
            title: "Training curves",
            build: training,
        },
    ]
}

/// One row of the eval stage's `metrics.parquet`.
#[derive(Debug, Clone)]
pub struct Metric {
    pub variant: String,
    /// Training seed of the variant's adapter; none for `base` (and adapters given by path).
    pub seed: Option<i64>,
    pub set: String,
    pub attack: String,
    pub metric: String,
    pub value: f64,
    pub n: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

/// The eval metrics, or None when the eval stage has not run.
pub fn eval_metrics(run_dir: &RunDir) -> Result<Option<Vec<Metric>>> {
    let path = run_dir.stage_dir("eval").join("metrics.parquet");
    if !path.is_file() {
        return Ok(None);
    }
    let df = read_df(&path)?;
    let ctx = || format!("{}", path.display());
    let (variant, set, attack, metric) = (
        strs(&df, "variant").with_context(ctx)?,
        strs(&df, "set").with_context(ctx)?,
        strs(&df, "attack").with_context(ctx)?,
        strs(&df, "metric").with_context(ctx)?,
    );
    let value = f64s(&df, "value").with_context(ctx)?;
    let seed = f64s(&df, "seed").with_context(ctx)?;
    let n = f64s(&df, "n").with_context(ctx)?;
    let ci_low = f64s(&df, "ci_low").with_context(ctx)?;
    let ci_high = f64s(&df, "ci_high").with_context(ctx)?;
    Ok(Some(
        (0..df.height())
            .map(|i| Metric {
                variant: variant[i].clone(),
                seed: seed[i].is_finite().then_some(seed[i] as i64),
                set: set[i].clone(),
                attack: attack[i].clone(),
                metric: metric[i].clone(),
                value: value[i],
                n: n[i],
                ci_low: ci_low[i],
                ci_high: ci_high[i],
            })
            .collect(),
    ))
}

/// Groups of main-table columns; the ablation averages within a group.
pub mod group {
    /// ASR of one attack (templates pooled into `template`): each attack weighs equally.
    pub const ASR: u8 = 0;
    pub const ASR_POOLED: u8 = 1;
    /// Refused or gibberish on a safe set.
    pub const OVER_REFUSAL: u8 = 2;
    /// Refused on a safe set (the paper's over-refusal).
    pub const REFUSED: u8 = 3;
    /// Gibberish on a safe set (a broken answer, not a refusal).
    pub const GIBBERISH: u8 = 4;
    pub const CONTRAST: u8 = 5;
    pub const CAPABILITY: u8 = 6;
    /// One jailbreak template's ASR: shown, never averaged (the template attack is one attack).
    pub const TEMPLATE: u8 = 7;
    /// Median base-model perplexity of the answers to a safe set: high when answers are broken.
    pub const PERPLEXITY: u8 = 8;
}

/// Sets whose prompts should be answered (their refusals are over-refusals).
fn is_safe_set(set: &str) -> bool {
    let role = set.rsplit(':').next().unwrap_or(set);
    [
        "overrefusal_safe",
        "overrefusal_borderline",
        "benign",
        "pseudo_malicious",
    ]
    .contains(&role)
}

/// Main-table column of a metric, and its [`group`]; None for metrics that are not in the
/// main table (judge validation, perplexities, rates of other sets).
pub fn main_column(m: &Metric) -> Option<(u8, String)> {
    let safe = is_safe_set(&m.set);
    match m.metric.as_str() {
        // Pooled ASR (`all`) is a column of its own; the ablation means skip it so that
        // attacks are not counted twice.
        "asr" if m.attack == "all" => Some((group::ASR_POOLED, "ASR pooled".to_string())),
        "asr" if m.attack.starts_with("template/") => {
            Some((group::TEMPLATE, format!("ASR {}", m.attack)))
        }
        "asr" => Some((group::ASR, format!("ASR {}", m.attack))),
        "over_refusal_rate" => Some((
            group::OVER_REFUSAL,
            format!("over-refusal {}", short_set(&m.set)),
        )),
        "refusal_rate" if safe => Some((group::REFUSED, format!("refused {}", short_set(&m.set)))),
        "gibberish_rate" if safe => {
            Some((group::GIBBERISH, format!("gibberish {}", short_set(&m.set))))
        }
        "compliance_rate" => Some((group::CONTRAST, format!("compliance {}", short_set(&m.set)))),
        "accuracy" if !m.variant.is_empty() => Some((group::CAPABILITY, m.set.clone())),
        "perplexity_median" if safe => Some((
            group::PERPLEXITY,
            format!("perplexity {}", short_set(&m.set)),
        )),
        _ => None,
    }
}

fn short_set(set: &str) -> &str {
    set.strip_prefix("overrefusal_").unwrap_or(set)
}

fn order_variants(cfg: &ReportSection, variants: BTreeSet<String>) -> Vec<String> {
    let mut out: Vec<String> = cfg
        .variant_order
        .iter()
        .filter(|v| variants.contains(*v))
        .cloned()
        .collect();
    let rest: Vec<String> = variants.into_iter().filter(|v| !out.contains(v)).collect();
    out.extend(rest);
    out
}

/// Seed label of a main-table row: the seed, `–` for the base model.
fn seed_label(seed: Option<i64>) -> String {
    seed.map(|s| s.to_string()).unwrap_or_else(|| "–".into())
}

/// Seed label of the row that averages a variant's seeds.
const MEAN: &str = "mean";

type Cells<'a> = BTreeMap<(String, String, String), &'a Metric>;

/// Seed label of the row that gives the spread (max − min) of a variant's seeds.
const SPREAD: &str = "spread";

/// Rows of the main table: each variant's seeds, then their mean and spread when there are
/// several.
fn main_rows(variants: &[String], cells: &Cells) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    for v in variants {
        let seeds: BTreeSet<&String> = cells.keys().filter(|k| &k.0 == v).map(|k| &k.1).collect();
        rows.extend(seeds.iter().map(|s| (v.clone(), s.to_string())));
        if seeds.len() > 1 {
            rows.push((v.clone(), MEAN.to_string()));
            rows.push((v.clone(), SPREAD.to_string()));
        }
    }
    rows
}

/// A cell's value; for the `mean` row (or a one-seed variant asked for its mean) the mean
/// over the variant's seeds, for the `spread` row their max − min.
fn cell_value(cells: &Cells, v: &str, seed: &str, col: &str) -> Option<f64> {
    if seed != MEAN && seed != SPREAD {
        return cells
            .get(&(v.to_string(), seed.to_string(), col.to_string()))
            .map(|m| m.value);
    }
    let vals: Vec<f64> = cells
        .iter()
        .filter(|(k, _)| k.0 == v && k.2 == col)
        .map(|(_, m)| m.value)
        .collect();
    if vals.is_empty() {
        return None;
    }
    Some(if seed == MEAN {
        vals.iter().sum::<f64>() / vals.len() as f64
    } else {
        vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
            - vals.iter().cloned().fold(f64::INFINITY, f64::min)
    })
}

/// A column's header with the n of its cells (one n when every model answered as many).
fn header_with_n(cells: &Cells, col: &str) -> String {
    let ns: BTreeSet<i64> = cells
        .iter()
        .filter(|(k, _)| k.2 == col)
        .map(|(_, m)| m.n as i64)
        .collect();
    match (ns.first(), ns.last()) {
        (Some(a), Some(b)) if a == b => format!("{col} (n {a})"),
        (Some(a), Some(b)) => format!("{col} (n {a}–{b})"),
        _ => col.to_string(),
    }
}

/// Variants x {ASR per attack, over-refusal per set, contrast compliance, capability}.
fn main_table(cfg: &ReportSection, run_dir: &RunDir, w: &mut Writer) -> Result<Option<String>> {
    let Some(metrics) = eval_metrics(run_dir)? else {
        return Ok(None);
    };
    let mut columns: BTreeSet<(u8, String)> = BTreeSet::new();
    // (variant, seed label, column) -> metric
    let mut cells: BTreeMap<(String, String, String), &Metric> = BTreeMap::new();
    let mut variants = BTreeSet::new();
    for m in &metrics {
        if let Some(col) = main_column(m) {
            let key = (m.variant.clone(), seed_label(m.seed), col.1.clone());
            if cells.insert(key, m).is_some() {
                bail!(
                    "eval metrics: two rows for variant `{}` seed {:?}, column `{}`",
                    m.variant,
                    m.seed,
                    col.1
                );
            }
            variants.insert(m.variant.clone());
            columns.insert(col);
        }
    }
    if cells.is_empty() {
        return Ok(None);
    }
    let variants = order_variants(cfg, variants);
    // Long table (one row per cell, with n and CI) for analysis; wide one for reading.
    let mut long = (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for ((v, seed, c), m) in &cells {
        long.0.push(v.clone());
        long.1.push(seed.clone());
        long.2.push(c.clone());
        long.3.push(m.value);
        long.4.push(m.n);
        long.5.push(m.ci_low);
        long.6.push(m.ci_high);
    }
    let mut long_df = df!(
        "variant" => long.0, "seed" => long.1, "column" => long.2, "value" => long.3,
        "n" => long.4, "ci_low" => long.5, "ci_high" => long.6
    )?;
    w.table("main_table_long", &mut long_df)?;
    let rows = main_rows(&variants, &cells);
    let mut wide: Vec<Column> = vec![
        Column::new(
            "variant".into(),
            rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "seed".into(),
            rows.iter().map(|r| r.1.clone()).collect::<Vec<_>>(),
        ),
    ];
    for (_, c) in &columns {
        let vals: Vec<Option<f64>> = rows
            .iter()
            .map(|(v, s)| cell_value(&cells, v, s, c))
            .collect();
        wide.push(Column::new(c.as_str().into(), vals));
    }
    let mut wide_df = DataFrame::new_infer_height(wide)?;
    w.table("main_table", &mut wide_df)?;
    // The Markdown headers carry each column's n (the Parquet keeps plain names).
    let mut shown = wide_df.clone();
    for (_, c) in &columns {
        shown.rename(c, header_with_n(&cells, c).into())?;
    }
    let md = crate::markdown::table(&shown, w.digits);

    // Safety vs over-refusal: pooled ASR against mean over-refusal on safe sets.
    let mut series = Vec::new();
    for v in &variants {
        let mean_of = |group: u8| {
            let vals: Vec<f64> = columns
                .iter()
                .filter(|(g, _)| *g == group)
                .filter_map(|(_, c)| cell_value(&cells, v, MEAN, c))
                .filter(|x| x.is_finite())
                .collect();
            (!vals.is_empty()).then(|| vals.iter().sum::<f64>() / vals.len() as f64)
        };
        if let (Some(asr), Some(or)) = (mean_of(group::ASR), mean_of(group::REFUSED)) {
            series.push(Series::new(v.clone(), vec![(or, asr)]));
        }
    }
    let mut out = format!(
        "Rates are shares of prompts (n in each header; 95% Wilson intervals per variant and \
         seed in `main_table_long.parquet`); one row per training seed, then their mean and \
         their spread (max − min). ASR: a response \
         that is neither refused nor gibberish; over-refusal: refused or gibberish on a safe \
         prompt, split into `refused` (the paper's notion) and `gibberish` (a broken answer); \
         capability: log-likelihood accuracy; perplexity: median base-model perplexity of the \
         answers to a safe set (not a rate).\n\n{md}\n"
    );
    if !series.is_empty() {
        let chart = Chart {
            title: "Safety vs over-refusal".into(),
            x_label: "mean refusal rate on safe sets".into(),
            y_label: "mean attack success rate".into(),
            y_range: None,
        };
        w.text("plots/safety_vs_overrefusal.svg", &chart.render(series))?;
        out.push_str("![safety vs over-refusal](plots/safety_vs_overrefusal.svg)\n");
    }
    Ok(Some(out))
}

/// The four training variants side by side, each component's effect relative to `rr`.
fn ablation(_cfg: &ReportSection, run_dir: &RunDir, w: &mut Writer) -> Result<Option<String>> {
    let Some(metrics) = eval_metrics(run_dir)? else {
        return Ok(None);
    };
    const VARIANTS: [(&str, bool, bool); 5] = [
        ("base", false, false),
        ("rr", false, false),
        ("rr_weights", true, false),
        ("rr_augment", false, true),
        ("mosr", true, true),
    ];
    let mean = |v: &str, group: u8| -> f64 {
        let vals: Vec<f64> = metrics
            .iter()
            .filter(|m| m.variant == v)
            .filter(|m| main_column(m).is_some_and(|(g, _)| g == group))
            .map(|m| m.value)
            .filter(|x| x.is_finite())
            .collect();
        if vals.is_empty() {
            f64::NAN
        } else {
            vals.iter().sum::<f64>() / vals.len() as f64
        }
    };
    let present: Vec<&(&str, bool, bool)> = VARIANTS
        .iter()
        .filter(|(v, ..)| metrics.iter().any(|m| m.variant == *v))
        .collect();
    if !present.iter().any(|(v, ..)| *v == "rr") {
        return Ok(None);
    }
    let groups = [
        group::ASR,
        group::REFUSED,
        group::GIBBERISH,
        group::CAPABILITY,
    ];
    let mut cols: (Vec<String>, Vec<&str>, Vec<&str>) = (vec![], vec![], vec![]);
    let mut vals: [Vec<f64>; 8] = Default::default();
    for (v, weights, aug) in present {
        cols.0.push(v.to_string());
        cols.1.push(if *weights { "yes" } else { "no" });
        cols.2.push(if *aug { "yes" } else { "no" });
        for (k, g) in groups.into_iter().enumerate() {
            vals[2 * k].push(mean(v, g));
            vals[2 * k + 1].push(mean(v, g) - mean("rr", g));
        }
    }
    let [a, da, r, dr, g, dg, c, dc] = vals;
    let mut df = df!(
        "variant" => cols.0, "overlap weights" => cols.1, "context augmentation" => cols.2,
        "mean ASR" => a, "Δ ASR vs rr" => da, "mean refused" => r, "Δ refused vs rr" => dr,
        "mean gibberish" => g, "Δ gibberish vs rr" => dg,
        "mean capability" => c, "Δ capability vs rr" => dc
    )?;
    let md = w.table("ablation_table", &mut df)?;
    Ok(Some(format!(
        "Unweighted means over columns of the main table: ASR over the attacks (each attack weighs \
         equally; the jailbreak templates are one attack), refusals and gibberish over the safe \
         sets, accuracy over the capability benchmarks. Lower ASR and fewer refusals and gibberish \
         answers on safe prompts are better. Whether a difference is more than noise is in the \
         paired comparisons and the claims above.\n\n{md}"
    )))
}

/// The refusal judge against the human labels (accuracy, precision, recall, F1).
fn judge_validation(
    _cfg: &ReportSection,
    run_dir: &RunDir,
    w: &mut Writer,
) -> Result<Option<String>> {
    let Some(metrics) = eval_metrics(run_dir)? else {
        return Ok(None);
    };
    let rows: Vec<&Metric> = metrics
        .iter()
        .filter(|m| m.metric.starts_with("judge_"))
        .collect();
    if rows.is_empty() {
        return Ok(None);
    }
    let mut df = df!(
        "set" => rows.iter().map(|m| m.set.clone()).collect::<Vec<_>>(),
        "metric" => rows.iter().map(|m| m.metric.clone()).collect::<Vec<_>>(),
        "value" => rows.iter().map(|m| m.value).collect::<Vec<_>>(),
        "n" => rows.iter().map(|m| m.n).collect::<Vec<_>>(),
        "ci_low" => rows.iter().map(|m| m.ci_low).collect::<Vec<_>>(),
        "ci_high" => rows.iter().map(|m| m.ci_high).collect::<Vec<_>>()
    )?;
    let md = w.table("judge_validation", &mut df)?;
    Ok(Some(format!(
        "`judge_labels`: the refusal judge on PyRIT's 105 human-labelled responses (other \
         models). `mosr_judge_labels`: both judges' combined verdict (refused / gibberish / \
         complied) on 220 hand-labelled responses of this project's own models \
         (`datasets/mosr_judge_labels/`), precision over responses judged so and recall over \
         responses labelled so; Wilson 95% intervals.\n\n{md}"
    )))
}

/// Rows of `df` grouped by the string column `by`, as (key, [(x, y)]) from two numeric columns.
fn series_by(df: &DataFrame, by: &str, x: &str, y: &str) -> Result<Vec<Series>> {
    let (keys, xs, ys) = (strs(df, by)?, f64s(df, x)?, f64s(df, y)?);
    let mut map: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for i in 0..keys.len() {
        map.entry(keys[i].clone()).or_default().push((xs[i], ys[i]));
    }
    Ok(map
        .into_iter()
        .map(|(name, mut points)| {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series::new(name, points)
        })
        .collect())
}

/// Keep the rows of `df` whose string column `col` is one of `keep`.
fn filter_in(df: &DataFrame, col: &str, keep: &[&str]) -> Result<DataFrame> {
    let vals = strs(df, col)?;
    let mask: BooleanChunked = vals
        .iter()
        .map(|v| keep.contains(&v.as_str()))
        .collect::<BooleanChunked>();
    Ok(df.filter(&mask)?)
}

/// The layer the claims stage judged C1 at (`chosen` in its `boundary_tests`), if it ran.
fn chosen_layer(run_dir: &RunDir) -> Result<Option<f64>> {
    let path = run_dir.stage_dir("claims").join("boundary_tests.parquet");
    if !path.is_file() {
        return Ok(None);
    }
    let df = read_df(&path)?;
    let (layer, chosen) = (f64s(&df, "layer")?, strs(&df, "chosen")?);
    Ok((0..layer.len())
        .find(|&i| chosen[i] == "true")
        .map(|i| layer[i]))
}

/// The summary row per set: the layer where held-out accuracy peaks, and what the probe says
/// about over-refusal prompts there and at the last layer.
fn probes(_cfg: &ReportSection, run_dir: &RunDir, w: &mut Writer) -> Result<Option<String>> {
    let path = run_dir.stage_dir("probe").join("probe_metrics.parquet");
    if !path.is_file() {
        return Ok(None);
    }
    let df = read_df(&path)?;
    let ctx = || path.display().to_string();
    let (layer, set) = (
        f64s(&df, "layer").with_context(ctx)?,
        strs(&df, "set").with_context(ctx)?,
    );
    let (acc, share) = (
        f64s(&df, "accuracy").with_context(ctx)?,
        f64s(&df, "share_malicious").with_context(ctx)?,
    );
    // The layer: the one the claims stage chose on selection prompts (not the test split the
    // table reports), else the test-split maximum, said so.
    let chosen = chosen_layer(run_dir)?;
    let best = (0..df.height())
        .filter(|&i| set[i] == "test" && acc[i].is_finite())
        .filter(|&i| chosen.is_none_or(|l| layer[i] == l))
        .max_by(|&a, &b| {
            acc[a]
                .total_cmp(&acc[b])
                .then(layer[b].total_cmp(&layer[a]))
        });
    let Some(best) = best else {
        bail!("{}: no `test` rows with an accuracy", ctx());
    };
    let best_layer = layer[best];
    let at_best = filter_in(
        &df,
        "set",
        &[
            "test",
            "benign_test",
            "harmful_test",
            "overrefusal_safe",
            "overrefusal_borderline",
            "overrefusal_unsafe_contrast",
        ],
    )?;
    let lay = f64s(&at_best, "layer")?;
    let mask: BooleanChunked = lay.iter().map(|l| *l == best_layer).collect();
    let mut at_best = at_best.filter(&mask)?;
    let md = w.table("probe_best_layer", &mut at_best)?;

    let acc_plot = filter_in(
        &df,
        "set",
        &["test", "overrefusal_safe", "overrefusal_borderline"],
    )?;
    let chart = Chart {
        title: "Probe: accuracy per layer (over-refusal sets: share scored benign)".into(),
        x_label: "layer".into(),
        y_label: "accuracy".into(),
        y_range: Some((0.0, 1.0)),
    };
    w.text(
        "plots/probe_accuracy.svg",
        &chart.render(series_by(&acc_plot, "set", "layer", "accuracy")?),
    )?;
    let or_share: Vec<String> = (0..df.height())
        .filter(|&i| layer[i] == best_layer && set[i].starts_with("overrefusal"))
        .map(|i| format!("{} {:.2}", set[i], share[i]))
        .collect();
    let how = if chosen.is_some() {
        "the layer chosen by the claims stage on selection prompts (not the test split shown)"
    } else {
        "the layer where test accuracy peaks (the claims stage has not run)"
    };
    Ok(Some(format!(
        "Logistic-regression probes (benign vs harmful, train split) per layer; `probe_metrics.parquet` \
         in the run folder has every layer. At layer {best_layer}, {how}, held-out accuracy is \
         {:.3}; there, the share of over-refusal prompts scored malicious is: {}.\n\n{md}\n\
         ![probe accuracy per layer](plots/probe_accuracy.svg)\n",
        acc[best],
        if or_share.is_empty() {
            "–".to_string()
        } else {
            or_share.join(", ")
        }
    )))
}

/// Median boundary position per role and layer (0 = benign centroid, 1 = malicious).
fn boundary(_cfg: &ReportSection, run_dir: &RunDir, w: &mut Writer) -> Result<Option<String>> {
    let path = run_dir.stage_dir("probe").join("boundary.parquet");
    if !path.is_file() {
        return Ok(None);
    }
    // Held-out prompts only: on the train split benign and harmful sit at 0 and 1 by
    // construction (the centroids are fitted there).
    let df = filter_in(&read_df(&path)?, "split", &["test"])?;
    if df.height() == 0 {
        return Ok(None);
    }
    let chart = Chart {
        title: "Position between the benign (0) and malicious (1) centroids (test split)".into(),
        x_label: "layer".into(),
        y_label: "median boundary position".into(),
        y_range: None,
    };
    w.text(
        "plots/boundary.svg",
        &chart.render(
            series_by(&df, "role", "layer", "median")
                .with_context(|| path.display().to_string())?,
        ),
    )?;
    // The table: one row per role, the median at a few evenly spaced layers.
    let (role, layer, median) = (
        strs(&df, "role")?,
        f64s(&df, "layer")?,
        f64s(&df, "median")?,
    );
    let mut layers: Vec<f64> = layer.clone();
    layers.sort_by(f64::total_cmp);
    layers.dedup();
    let picks: Vec<f64> = if layers.len() <= 6 {
        layers.clone()
    } else {
        (0..6).map(|k| layers[k * (layers.len() - 1) / 5]).collect()
    };
    let roles: BTreeSet<&String> = role.iter().collect();
    let mut cols = vec![Column::new(
        "role".into(),
        roles.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
    )];
    for l in &picks {
        let vals: Vec<Option<f64>> = roles
            .iter()
            .map(|r| {
                (0..role.len())
                    .find(|&i| &&role[i] == r && layer[i] == *l)
                    .map(|i| median[i])
            })
            .collect();
        cols.push(Column::new(format!("layer {l}").into(), vals));
    }
    let mut table = DataFrame::new_infer_height(cols)?;
    let md = w.table("boundary_medians", &mut table)?;
    Ok(Some(format!(
        "Each held-out (test split) prompt's hidden state projected on the difference of the class \
         means of the train split, scaled so that the benign centroid is 0 and the malicious one 1 \
         (medians; n and quartiles in the run folder's `boundary.parquet`; the tests with intervals \
         are C1's, in the claims section and `boundary_tests` of the claims stage).\n\n{md}\n![boundary positions](plots/boundary.svg)\n"
    )))
}

/// Refusal-tone probability mass per layer and role.
fn logit_lens(_cfg: &ReportSection, run_dir: &RunDir, w: &mut Writer) -> Result<Option<String>> {
    let path = run_dir
        .stage_dir("logit_lens")
        .join("logit_lens_summary.parquet");
    if !path.is_file() {
        return Ok(None);
    }
    let df = read_df(&path)?;
    let ctx = || path.display().to_string();
    for (col, title, file) in [
        (
            "refusal_mass",
            "LogitLens: refusal-tone mass per layer",
            "lens_refusal_mass.svg",
        ),
        (
            "compliance_mass",
            "LogitLens: compliance-tone mass per layer",
            "lens_compliance_mass.svg",
        ),
    ] {
        let chart = Chart {
            title: title.into(),
            x_label: "layer".into(),
            y_label: "probability mass".into(),
            y_range: None,
        };
        w.text(
            &format!("plots/{file}"),
            &chart.render(series_by(&df, "role", "layer", col).with_context(ctx)?),
        )?;
    }
    // Last layer per role: what the model is about to say.
    let layer = f64s(&df, "layer").with_context(ctx)?;
    let last = layer.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mask: BooleanChunked = layer.iter().map(|l| *l == last).collect();
    let mut at_last = df.filter(&mask)?;
    let md = w.table("logit_lens_last_layer", &mut at_last)?;
    Ok(Some(format!(
        "Each layer's residual stream decoded through the final norm and the unembedding at the \
         last prompt token. Last layer ({last}):\n\n{md}\n\
         ![refusal mass](plots/lens_refusal_mass.svg)\n![compliance mass](plots/lens_compliance_mass.svg)\n"
    )))
}

/// Loss curves of every trained variant, and start/end values.
fn training(_cfg: &ReportSection, run_dir: &RunDir, w: &mut Writer) -> Result<Option<String>> {
    let dir = run_dir.stage_dir("finetune");
    // `<variant>/seed-<seed>/train_log.parquet`, labelled `<variant> seed <seed>`.
    let logs: Vec<(String, String, std::path::PathBuf)> = mosr_artifacts::list_instances(&dir)
        .into_iter()
        .map(|(v, seed, path)| (v, seed.to_string(), path.join("train_log.parquet")))
        .filter(|(_, _, log)| log.is_file())
        .collect();
    let mut variants: Vec<(String, DataFrame)> = Vec::new();
    let mut seeds: Vec<String> = Vec::new();
    for (v, seed, log) in &logs {
        variants.push((v.clone(), read_df(log)?));
        seeds.push(seed.clone());
    }
    if variants.is_empty() {
        return Ok(None);
    }
    for col in ["loss", "erasure_loss", "retain_loss"] {
        let mut series = Vec::new();
        for ((v, df), seed) in variants.iter().zip(&seeds) {
            let (x, y) = (f64s(df, "step")?, f64s(df, col)?);
            let name = format!("{v} seed {seed}");
            series.push(Series::new(name, x.into_iter().zip(y).collect()));
        }
        let chart = Chart {
            title: format!("Training: {col}"),
            x_label: "step".into(),
            y_label: col.into(),
            y_range: None,
        };
        w.text(&format!("plots/train_{col}.svg"), &chart.render(series))?;
    }
    // One summary row per variant: steps, loss start/end, erasure start/end, retain end, tokens/s.
    let mut stats: Vec<[f64; 7]> = Vec::new();
    for (_, df) in &variants {
        let (l, e, r, t) = (
            f64s(df, "loss")?,
            f64s(df, "erasure_loss")?,
            f64s(df, "retain_loss")?,
            f64s(df, "tokens_per_s")?,
        );
        let n = l.len();
        stats.push([
            n as f64,
            l[0],
            l[n - 1],
            e[0],
            e[n - 1],
            r[n - 1],
            t.iter().sum::<f64>() / n as f64,
        ]);
    }
    let c = |i: usize| stats.iter().map(|s| s[i]).collect::<Vec<f64>>();
    let names: Vec<String> = variants.iter().map(|(v, _)| v.clone()).collect();
    let mut df = df!(
        "variant" => names, "seed" => seeds, "steps" => c(0), "loss start" => c(1), "loss end" => c(2),
        "erasure start" => c(3), "erasure end" => c(4), "retain end" => c(5),
        "tokens/s (mean)" => c(6)
    )?;
    let md = w.table("training_summary", &mut df)?;
    Ok(Some(format!(
        "{md}\n![loss](plots/train_loss.svg)\n![erasure](plots/train_erasure_loss.svg)\n\
         ![retain](plots/train_retain_loss.svg)\n"
    )))
}

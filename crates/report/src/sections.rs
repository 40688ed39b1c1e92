//! The report's sections, in README order. Each reads one stage's tables, writes its own
//! Parquet/SVG files through the [`Writer`] and returns its Markdown, or `None` when its stage
//! has not produced the table yet.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, bail};
use mosr_artifacts::RunDir;
use polars::df;
use polars::prelude::{Column, DataFrame};

use crate::{ReportSection, Writer};
use mosr_artifacts::eval::MetricRow;
use mosr_artifacts::row::read_rows;
use mosr_artifacts::svg::Series;

use crate::chart::Chart;

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
            build: crate::analysis::probes,
        },
        Section {
            title: "Boundary positions",
            build: crate::analysis::boundary,
        },
        Section {
            title: "LogitLens",
            build: crate::analysis::logit_lens,
        },
        Section {
            title: "Training curves",
            build: crate::analysis::training,
        },
    ]
}

/// The eval metrics, or None when the eval stage has not run.
pub fn eval_metrics(run_dir: &RunDir) -> Result<Option<Vec<MetricRow>>> {
    let path = run_dir.stage_dir("eval").join("metrics.parquet");
    if !path.is_file() {
        return Ok(None);
    }
    Ok(Some(read_rows(&path)?))
}

/// A metric's variant; empty for the model-independent rows (judge validation).
fn variant(m: &MetricRow) -> &str {
    m.variant.as_deref().unwrap_or("")
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
pub fn main_column(m: &MetricRow) -> Option<(u8, String)> {
    let safe = is_safe_set(&m.set);
    let attack = m.attack.as_deref().unwrap_or("");
    match m.metric.as_str() {
        // Pooled ASR (`all`) is a column of its own; the ablation means skip it so that
        // attacks are not counted twice.
        "asr" if attack == "all" => Some((group::ASR_POOLED, "ASR pooled".to_string())),
        "asr" if attack.starts_with("template/") => {
            Some((group::TEMPLATE, format!("ASR {attack}")))
        }
        "asr" => Some((group::ASR, format!("ASR {attack}"))),
        "over_refusal_rate" => Some((
            group::OVER_REFUSAL,
            format!("over-refusal {}", short_set(&m.set)),
        )),
        "refusal_rate" if safe => Some((group::REFUSED, format!("refused {}", short_set(&m.set)))),
        "gibberish_rate" if safe => {
            Some((group::GIBBERISH, format!("gibberish {}", short_set(&m.set))))
        }
        "compliance_rate" => Some((group::CONTRAST, format!("compliance {}", short_set(&m.set)))),
        "accuracy" if m.variant.is_some() => Some((group::CAPABILITY, m.set.clone())),
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

type Cells<'a> = BTreeMap<(String, String, String), &'a MetricRow>;

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
        .map(|(_, m)| m.n)
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
    let mut cells = Cells::new();
    let mut variants = BTreeSet::new();
    for m in &metrics {
        if let Some(col) = main_column(m) {
            let key = (variant(m).to_string(), seed_label(m.seed), col.1.clone());
            if cells.insert(key, m).is_some() {
                bail!(
                    "eval metrics: two rows for variant `{}` seed {:?}, column `{}`",
                    variant(m),
                    m.seed,
                    col.1
                );
            }
            variants.insert(variant(m).to_string());
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
        long.4.push(m.n as f64);
        long.5.push(m.ci_low.unwrap_or(f64::NAN));
        long.6.push(m.ci_high.unwrap_or(f64::NAN));
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
            .filter(|m| variant(m) == v)
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
        .filter(|(v, ..)| metrics.iter().any(|m| variant(m) == *v))
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
    let rows: Vec<&MetricRow> = metrics
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
        "n" => rows.iter().map(|m| m.n as f64).collect::<Vec<_>>(),
        "ci_low" => rows.iter().map(|m| m.ci_low.unwrap_or(f64::NAN)).collect::<Vec<_>>(),
        "ci_high" => rows.iter().map(|m| m.ci_high.unwrap_or(f64::NAN)).collect::<Vec<_>>()
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

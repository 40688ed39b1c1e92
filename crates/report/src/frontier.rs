//! The safety/over-refusal frontier: each variant's (ASR, refused) points over its erasure
//! strength (the eval stage's `frontier.parquet`), one line per variant, and the claims
//! stage's comparison of the lines at matched ASR (`frontier_tests.parquet`).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use mosr_artifacts::RunDir;
use mosr_artifacts::claims::FrontierTestRow;
use mosr_artifacts::eval::{FrontierRow, read_frontier};
use mosr_artifacts::svg::{LinePlot, Series};
use polars::df;
use polars::prelude::Column;

use crate::{ReportSection, Writer, read_passthrough};

/// A point of a line: (variant, seed, step, source).
type Point = (String, Option<i64>, i64, String);

/// Each point's rows by (set, metric), points keyed by the variant's rank first.
type Points<'a> = BTreeMap<((usize, String), Point), BTreeMap<(&'a str, &'a str), &'a FrontierRow>>;

/// The metrics a point shows: (set, metric, column name).
const SHOWN: [(&str, &str, &str); 3] = [
    ("harmful", "asr", "ASR"),
    ("overrefusal", "refused", "refused"),
    ("overrefusal", "gibberish", "gibberish"),
];

/// Position of a variant in the report's order (unlisted variants after, by name).
fn rank(cfg: &ReportSection, v: &str) -> (usize, String) {
    let i = cfg.variant_order.iter().position(|x| x == v);
    (i.unwrap_or(usize::MAX), v.to_string())
}

/// One row per point (variants in the report's order) with its ASR, refused and gibberish
/// rates, their intervals and n.
fn point_table(
    cfg: &ReportSection,
    rows: &[FrontierRow],
    w: &mut Writer,
) -> Result<(String, BTreeSet<i64>)> {
    let mut by = Points::new();
    for r in rows {
        let p = (
            rank(cfg, &r.variant),
            (r.variant.clone(), r.seed, r.step, r.source.clone()),
        );
        by.entry(p)
            .or_default()
            .insert((r.set.as_str(), r.metric.as_str()), r);
    }
    let mut cols: (Vec<String>, Vec<Option<i64>>, Vec<i64>, Vec<String>) = Default::default();
    let mut vals: Vec<[Vec<Option<f64>>; 3]> = vec![Default::default(); SHOWN.len()];
    let mut ns: [Vec<Option<i64>>; 2] = Default::default();
    for ((_, (v, seed, step, source)), m) in &by {
        cols.0.push(v.clone());
        cols.1.push(*seed);
        cols.2.push(*step);
        cols.3.push(source.clone());
        for (k, (set, metric, _)) in SHOWN.iter().enumerate() {
            let r = m.get(&(*set, *metric));
            vals[k][0].push(r.map(|r| r.value));
            vals[k][1].push(r.map(|r| r.ci_low));
            vals[k][2].push(r.map(|r| r.ci_high));
        }
        ns[0].push(m.get(&("harmful", "asr")).map(|r| r.n));
        ns[1].push(m.get(&("overrefusal", "refused")).map(|r| r.n));
    }
    let mut df = df!("variant" => cols.0, "seed" => cols.1, "step" => cols.2, "source" => cols.3)?;
    for (k, (_, _, name)) in SHOWN.iter().enumerate() {
        let [v, lo, hi] = vals[k].clone();
        df.with_column(Column::new((*name).into(), v))?;
        df.with_column(Column::new(format!("{name} ci_low").into(), lo))?;
        df.with_column(Column::new(format!("{name} ci_high").into(), hi))?;
    }
    let [nh, no] = ns;
    df.with_column(Column::new("n harmful".into(), nh))?;
    df.with_column(Column::new("n over-refusal".into(), no))?;
    let md = w.table("frontier", &mut df)?;
    let steps = by.keys().map(|p| p.1.2).collect();
    Ok((md, steps))
}

/// One line per variant, base first: at each step the mean over seeds of (refused, ASR),
/// whiskers spanning every seed's Wilson interval.
fn lines(cfg: &ReportSection, rows: &[FrontierRow]) -> Vec<Series> {
    // variant -> step -> (metric -> [(value, lo, hi)] over seeds)
    type Cell = Vec<(f64, f64, f64)>;
    let mut by: BTreeMap<&str, BTreeMap<i64, [Cell; 2]>> = BTreeMap::new();
    for r in rows {
        let k = match (r.set.as_str(), r.metric.as_str()) {
            ("overrefusal", "refused") => 0,
            ("harmful", "asr") => 1,
            _ => continue,
        };
        let cell = &mut by.entry(&r.variant).or_default().entry(r.step).or_default()[k];
        cell.push((r.value, r.ci_low, r.ci_high));
    }
    let base = by.remove("base").and_then(|b| b.into_values().next());
    let summarise = |c: &Cell| {
        let mean = c.iter().map(|x| x.0).sum::<f64>() / c.len().max(1) as f64;
        let lo = c.iter().map(|x| x.1).fold(f64::INFINITY, f64::min);
        let hi = c.iter().map(|x| x.2).fold(f64::NEG_INFINITY, f64::max);
        (mean, (lo, hi))
    };
    let mut order: Vec<&str> = by.keys().copied().collect();
    order.sort_by_key(|v| rank(cfg, v));
    let mut out = Vec::new();
    for v in order {
        let mut s = Series::new(v, Vec::new());
        for [x, y] in base.iter().chain(by[v].values()) {
            let ((xm, xe), (ym, ye)) = (summarise(x), summarise(y));
            s.points.push((xm, ym));
            s.x_err.push(xe);
            s.y_err.push(ye);
        }
        out.push(s);
    }
    out
}

/// The Frontier section: the points table, the plot and the matched-ASR tests.
pub fn frontier(cfg: &ReportSection, run_dir: &RunDir, w: &mut Writer) -> Result<Option<String>> {
    let path = run_dir.stage_dir("eval").join("frontier.parquet");
    if !path.is_file() {
        // Missing because the pipeline asks for no sweep, not because a stage has not run.
        let evaluated = run_dir.stage_dir("eval").join("manifest.json").is_file();
        return Ok(evaluated.then(|| {
            "Not measured: this pipeline saves no adapter snapshots (`[finetune] \
             frontier_steps`), so each variant has one point (main table), not a line.\n"
                .to_string()
        }));
    }
    let rows = read_frontier(&path)?;
    let (md, steps) = point_table(cfg, &rows, w)?;
    let mut plot = LinePlot::new(
        "Safety/over-refusal frontier",
        "refused on over-refusal prompts (pooled)",
        "attack success rate (direct requests)",
    );
    plot.x_range = Some((0.0, 1.0));
    plot.y_range = Some((0.0, 1.0));
    plot.series = lines(cfg, &rows);
    w.text("plots/frontier.svg", &plot.render())?;
    let tests_path = run_dir.stage_dir("claims").join("frontier_tests.parquet");
    let tests = if tests_path.is_file() {
        let md = w.table(
            "frontier_tests",
            &mut read_passthrough::<FrontierTestRow>(&tests_path)?.0,
        )?;
        format!(
            "\n### Over-refusal at matched ASR\n\nPer seed, each variant's line against `rr`'s \
             (the claims stage's frontier tests, verdicts in the claims table): the mean over \
             `grid` ASR values spanning the ASR range both lines cover of the difference of \
             their refusal rates, interpolated linearly along each line; negative = fewer \
             refusals at the same safety. Interval: paired bootstrap over prompts (harmful and \
             over-refusal prompts resampled, the same draw for every point of both lines).\n\n{md}"
        )
    } else {
        String::new()
    };
    let steps: Vec<String> = steps.iter().map(i64::to_string).collect();
    Ok(Some(format!(
        "Each variant's erasure strength swept by stopping its training early (`[finetune] \
         frontier_steps`; steps {}): every point answers the same direct requests (harmful \
         prompts and the pooled over-refusal sets; n in the last columns, Wilson 95% intervals). \
         Step 0 is the base model, the first point of every line; the last step is the final \
         adapter. A variant that only pushes less than `rr` moves along `rr`'s line; a better \
         one lies below it (fewer refusals at the same ASR). The plot averages the seeds at \
         each step; its whiskers span every seed's 95% interval.\n\n\
         ![frontier](plots/frontier.svg)\n\n{md}{tests}",
        steps.join(", ")
    )))
}

//! The representation sections: linear probes, boundary positions and LogitLens (the probe
//! and logit-lens stages' tables), and the training curves (the finetune stage's train logs).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, bail};
use mosr_artifacts::RunDir;
use mosr_artifacts::analysis::{BoundaryRow, ProbeMetricRow, ToneSummaryRow};
use mosr_artifacts::claims::BoundaryTestRow;
use mosr_artifacts::row::read_rows;
use mosr_artifacts::svg::Series;
use mosr_artifacts::training::{TrainLogRow, read_train_log};
use polars::df;
use polars::prelude::{Column, DataFrame};

use crate::chart::Chart;
use crate::{ReportSection, Writer, filter_rows, read_passthrough};

/// A numeric column of a typed row, as plotted.
type Field<R> = fn(&R) -> f64;

/// One line per `key` through the rows' (x, y) points, lines by key, points by x.
fn series_by<R>(
    rows: &[R],
    key: impl Fn(&R) -> &str,
    x: impl Fn(&R) -> f64,
    y: impl Fn(&R) -> f64,
) -> Vec<Series> {
    let mut map: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in rows {
        map.entry(key(r).to_string())
            .or_default()
            .push((x(r), y(r)));
    }
    map.into_iter()
        .map(|(name, mut points)| {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series::new(name, points)
        })
        .collect()
}

/// The layer the claims stage judged C1 at (`chosen` in its `boundary_tests`), if it ran.
fn chosen_layer(run_dir: &RunDir) -> Result<Option<i32>> {
    let path = run_dir.stage_dir("claims").join("boundary_tests.parquet");
    if !path.is_file() {
        return Ok(None);
    }
    let rows: Vec<BoundaryTestRow> = read_rows(&path)?;
    Ok(rows.iter().find(|r| r.chosen).map(|r| r.layer))
}

/// Sets of the probe table shown at the chosen layer.
const PROBE_SETS: [&str; 6] = [
    "test",
    "benign_test",
    "harmful_test",
    "overrefusal_safe",
    "overrefusal_borderline",
    "overrefusal_unsafe_contrast",
];

/// The summary row per set: the layer where held-out accuracy peaks, and what the probe says
/// about over-refusal prompts there and at the last layer.
pub fn probes(_cfg: &ReportSection, run_dir: &RunDir, w: &mut Writer) -> Result<Option<String>> {
    let path = run_dir.stage_dir("probe").join("probe_metrics.parquet");
    if !path.is_file() {
        return Ok(None);
    }
    let (df, rows) = read_passthrough::<ProbeMetricRow>(&path)?;
    let accuracy = |r: &ProbeMetricRow| r.accuracy.filter(|a| a.is_finite());
    // The layer: the one the claims stage chose on selection prompts (not the test split the
    // table reports), else the test-split maximum, said so.
    let chosen = chosen_layer(run_dir)?;
    let best = rows
        .iter()
        .filter(|r| r.set == "test" && accuracy(r).is_some())
        .filter(|r| chosen.is_none_or(|l| r.layer == l))
        .max_by(|a, b| {
            let (x, y) = (
                accuracy(a).unwrap_or(f64::NAN),
                accuracy(b).unwrap_or(f64::NAN),
            );
            x.total_cmp(&y).then(b.layer.cmp(&a.layer))
        });
    let Some(best) = best else {
        bail!("{}: no `test` rows with an accuracy", path.display());
    };
    let best_layer = best.layer;
    let at_best =
        |r: &ProbeMetricRow| r.layer == best_layer && PROBE_SETS.contains(&r.set.as_str());
    let md = w.table("probe_best_layer", &mut filter_rows(&df, &rows, at_best)?)?;

    let plotted: Vec<&ProbeMetricRow> = rows
        .iter()
        .filter(|r| {
            ["test", "overrefusal_safe", "overrefusal_borderline"].contains(&r.set.as_str())
        })
        .collect();
    let chart = Chart {
        title: "Probe: accuracy per layer (over-refusal sets: share scored benign)".into(),
        x_label: "layer".into(),
        y_label: "accuracy".into(),
        y_range: Some((0.0, 1.0)),
    };
    let series = series_by(
        &plotted,
        |r| &r.set,
        |r| r.layer as f64,
        |r| r.accuracy.unwrap_or(f64::NAN),
    );
    w.text("plots/probe_accuracy.svg", &chart.render(series))?;
    let or_share: Vec<String> = rows
        .iter()
        .filter(|r| r.layer == best_layer && r.set.starts_with("overrefusal"))
        .map(|r| format!("{} {:.2}", r.set, r.share_malicious))
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
        accuracy(best).unwrap_or(f64::NAN),
        if or_share.is_empty() {
            "–".to_string()
        } else {
            or_share.join(", ")
        }
    )))
}

/// Up to six evenly spaced layers of `layers` (all of them when there are at most six).
fn spaced_layers(mut layers: Vec<i32>) -> Vec<i32> {
    layers.sort();
    layers.dedup();
    if layers.len() <= 6 {
        return layers;
    }
    (0..6).map(|k| layers[k * (layers.len() - 1) / 5]).collect()
}

/// Median boundary position per role and layer (0 = benign centroid, 1 = malicious).
pub fn boundary(_cfg: &ReportSection, run_dir: &RunDir, w: &mut Writer) -> Result<Option<String>> {
    let path = run_dir.stage_dir("probe").join("boundary.parquet");
    if !path.is_file() {
        return Ok(None);
    }
    // Held-out prompts only: on the train split benign and harmful sit at 0 and 1 by
    // construction (the centroids are fitted there).
    let rows: Vec<BoundaryRow> = read_rows::<BoundaryRow>(&path)?
        .into_iter()
        .filter(|r| r.split == "test")
        .collect();
    if rows.is_empty() {
        return Ok(None);
    }
    let chart = Chart {
        title: "Position between the benign (0) and malicious (1) centroids (test split)".into(),
        x_label: "layer".into(),
        y_label: "median boundary position".into(),
        y_range: None,
    };
    let series = series_by(&rows, |r| &r.role, |r| r.layer as f64, |r| r.median);
    w.text("plots/boundary.svg", &chart.render(series))?;
    // The table: one row per role, the median at a few evenly spaced layers.
    let roles: BTreeSet<&str> = rows.iter().map(|r| r.role.as_str()).collect();
    let mut cols = vec![Column::new(
        "role".into(),
        roles.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
    )];
    for l in spaced_layers(rows.iter().map(|r| r.layer).collect()) {
        let vals: Vec<Option<f64>> = roles
            .iter()
            .map(|role| {
                rows.iter()
                    .find(|r| r.role == *role && r.layer == l)
                    .map(|r| r.median)
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
pub fn logit_lens(
    _cfg: &ReportSection,
    run_dir: &RunDir,
    w: &mut Writer,
) -> Result<Option<String>> {
    let path = run_dir
        .stage_dir("logit_lens")
        .join("logit_lens_summary.parquet");
    if !path.is_file() {
        return Ok(None);
    }
    let (df, rows) = read_passthrough::<ToneSummaryRow>(&path)?;
    let masses: [(Field<ToneSummaryRow>, &str, &str); 2] = [
        (
            |r| r.refusal_mass,
            "LogitLens: refusal-tone mass per layer",
            "lens_refusal_mass.svg",
        ),
        (
            |r| r.compliance_mass,
            "LogitLens: compliance-tone mass per layer",
            "lens_compliance_mass.svg",
        ),
    ];
    for (mass, title, file) in masses {
        let chart = Chart {
            title: title.into(),
            x_label: "layer".into(),
            y_label: "probability mass".into(),
            y_range: None,
        };
        let series = series_by(&rows, |r| &r.role, |r| r.layer as f64, mass);
        w.text(&format!("plots/{file}"), &chart.render(series))?;
    }
    // Last layer per role: what the model is about to say.
    let Some(last) = rows.iter().map(|r| r.layer).max() else {
        bail!("{}: no rows", path.display());
    };
    let md = w.table(
        "logit_lens_last_layer",
        &mut filter_rows(&df, &rows, |r| r.layer == last)?,
    )?;
    Ok(Some(format!(
        "Each layer's residual stream decoded through the final norm and the unembedding at the \
         last prompt token. Last layer ({last}):\n\n{md}\n\
         ![refusal mass](plots/lens_refusal_mass.svg)\n![compliance mass](plots/lens_compliance_mass.svg)\n"
    )))
}

/// The train-log columns drawn, each as `plots/train_<name>.svg`.
const CURVES: [(&str, Field<TrainLogRow>); 3] = [
    ("loss", |r| r.loss),
    ("erasure_loss", |r| r.erasure_loss),
    ("retain_loss", |r| r.retain_loss),
];

/// Loss curves of every trained variant, and start/end values.
pub fn training(_cfg: &ReportSection, run_dir: &RunDir, w: &mut Writer) -> Result<Option<String>> {
    let dir = run_dir.stage_dir("finetune");
    // `<variant>/seed-<seed>/train_log.parquet`, labelled `<variant> seed <seed>`.
    let mut logs: Vec<(String, String, Vec<TrainLogRow>)> = Vec::new();
    for (v, seed, path) in mosr_artifacts::list_instances(&dir) {
        let log = path.join("train_log.parquet");
        if log.is_file() {
            let rows = read_train_log(&log)?;
            if rows.is_empty() {
                bail!("{}: no steps", log.display());
            }
            logs.push((v, seed.to_string(), rows));
        }
    }
    if logs.is_empty() {
        return Ok(None);
    }
    for (col, value) in CURVES {
        let series = logs
            .iter()
            .map(|(v, seed, rows)| {
                let points = rows.iter().map(|r| (r.step as f64, value(r))).collect();
                Series::new(format!("{v} seed {seed}"), points)
            })
            .collect();
        let chart = Chart {
            title: format!("Training: {col}"),
            x_label: "step".into(),
            y_label: col.into(),
            y_range: None,
        };
        w.text(&format!("plots/train_{col}.svg"), &chart.render(series))?;
    }
    let mut df = training_summary(&logs)?;
    let md = w.table("training_summary", &mut df)?;
    Ok(Some(format!(
        "{md}\n![loss](plots/train_loss.svg)\n![erasure](plots/train_erasure_loss.svg)\n\
         ![retain](plots/train_retain_loss.svg)\n"
    )))
}

/// One row per trained instance: steps, loss start/end, erasure start/end, retain end,
/// mean tokens/s.
fn training_summary(logs: &[(String, String, Vec<TrainLogRow>)]) -> Result<DataFrame> {
    let stats: Vec<[f64; 7]> = logs
        .iter()
        .map(|(_, _, rows)| {
            let (first, last) = (&rows[0], &rows[rows.len() - 1]);
            let n = rows.len() as f64;
            let tokens_per_s = rows.iter().map(|r| r.tokens_per_s).sum::<f64>() / n;
            [
                n,
                first.loss,
                last.loss,
                first.erasure_loss,
                last.erasure_loss,
                last.retain_loss,
                tokens_per_s,
            ]
        })
        .collect();
    let c = |i: usize| stats.iter().map(|s| s[i]).collect::<Vec<f64>>();
    let names: Vec<&str> = logs.iter().map(|(v, ..)| v.as_str()).collect();
    let seeds: Vec<&str> = logs.iter().map(|(_, s, _)| s.as_str()).collect();
    Ok(df!(
        "variant" => names, "seed" => seeds, "steps" => c(0), "loss start" => c(1), "loss end" => c(2),
        "erasure start" => c(3), "erasure end" => c(4), "retain end" => c(5),
        "tokens/s (mean)" => c(6)
    )?)
}

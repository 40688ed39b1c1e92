//! Claim C1: over-refusal prompts sit between benign and harmful prompts in representation
//! space. Tested on held-out prompts only: the probe and the centroids are fitted on the
//! train split; the layer is chosen on selection prompts (the dev split, or half of the test
//! split by a hash of the prompt id when no dev split was extracted) and the positions are
//! compared on the other held-out prompts.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use mosr_stats::{MeanDiff, mean_diff};

use crate::paired::stream_seed;

/// One row of `probe_scores`.
pub use mosr_artifacts::analysis::ProbeScoreRow as Score;

pub fn read_scores(path: &Path) -> Result<Vec<Score>> {
    Ok(mosr_artifacts::row::read_rows(path)?)
}

/// Which held-out benign/harmful prompts choose the layer and which are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Selection,
    Evaluation,
}

/// How the held-out prompts were divided, for the report.
pub fn selection_rule(scores: &[Score], negative: &str, positive: &str) -> &'static str {
    if has_dev(scores, negative, positive) {
        "layer chosen on the dev split, compared on the test split"
    } else {
        "layer chosen on half of the test split (hash of the prompt id), compared on the other half"
    }
}

fn has_dev(scores: &[Score], negative: &str, positive: &str) -> bool {
    [negative, positive]
        .iter()
        .all(|r| scores.iter().any(|s| s.split == "dev" && s.role == *r))
}

/// The part a benign/harmful score belongs to; `None` for train-split rows (never used).
pub fn part_of(s: &Score, dev: bool) -> Option<Part> {
    match (s.split.as_str(), dev) {
        ("dev", true) => Some(Part::Selection),
        ("test", true) => Some(Part::Evaluation),
        ("test", false) => Some(if stream_seed(0, &[&s.prompt_id]).is_multiple_of(2) {
            Part::Selection
        } else {
            Part::Evaluation
        }),
        _ => None,
    }
}

/// A compared quantity: its name and how to read it off a score row.
type Measure = (&'static str, fn(&Score) -> f64);

/// One layer's comparison for one role and measure.
#[derive(Debug, Clone)]
pub struct BoundaryTest {
    pub layer: i32,
    pub role: String,
    pub measure: &'static str,
    pub above_benign: MeanDiff,
    pub below_harmful: MeanDiff,
    pub selection_accuracy: f64,
}

/// Per layer: the selection accuracy and, for each role and measure, the two comparisons.
pub fn boundary_tests(
    scores: &[Score],
    negative: &str,
    positive: &str,
    roles: &[String],
    resamples: usize,
    seed: i64,
) -> Result<Vec<BoundaryTest>> {
    let dev = has_dev(scores, negative, positive);
    let mut by_layer: BTreeMap<i32, Vec<&Score>> = BTreeMap::new();
    for s in scores {
        by_layer.entry(s.layer).or_default().push(s);
    }
    let mut out = Vec::new();
    for (layer, rows) in by_layer {
        let part = |r: &&Score, p| {
            (r.role == negative || r.role == positive) && part_of(r, dev) == Some(p)
        };
        let sel: Vec<&&Score> = rows.iter().filter(|r| part(r, Part::Selection)).collect();
        let correct = sel
            .iter()
            .filter(|r| (r.score > 0.5) == (r.role == positive))
            .count();
        let selection_accuracy = correct as f64 / sel.len().max(1) as f64;
        let eval_of = |role: &str, f: fn(&Score) -> f64| -> Vec<f64> {
            rows.iter()
                .filter(|r| r.role == role && part(r, Part::Evaluation))
                .map(|r| f(r))
                .collect()
        };
        let measures: [Measure; 2] = [
            ("boundary_position", |s| s.boundary_position),
            ("probe_score", |s| s.score),
        ];
        for role in roles {
            for (measure, f) in measures {
                let x: Vec<f64> = rows
                    .iter()
                    .filter(|r| &r.role == role)
                    .map(|r| f(r))
                    .collect();
                let (benign, harmful) = (eval_of(negative, f), eval_of(positive, f));
                let s = stream_seed(seed, &[role, measure, &layer.to_string()]);
                let (Some(above), Some(below)) = (
                    mean_diff(&x, &benign, resamples, s),
                    mean_diff(&harmful, &x, resamples, s ^ 1),
                ) else {
                    continue;
                };
                out.push(BoundaryTest {
                    layer,
                    role: role.clone(),
                    measure,
                    above_benign: above,
                    below_harmful: below,
                    selection_accuracy,
                });
            }
        }
    }
    Ok(out)
}

/// The layer with the highest selection accuracy (the earliest on ties).
pub fn best_layer(tests: &[BoundaryTest]) -> Option<i32> {
    let mut best: Option<(i32, f64)> = None;
    for t in tests {
        if best.is_none_or(|(_, a)| t.selection_accuracy > a) {
            best = Some((t.layer, t.selection_accuracy));
        }
    }
    best.map(|b| b.0)
}

/// Reads `probe_scores.parquet` and runs [`boundary_tests`].
pub fn from_file(
    path: &Path,
    negative: &str,
    positive: &str,
    roles: &[String],
    resamples: usize,
    seed: i64,
) -> Result<(Vec<BoundaryTest>, &'static str)> {
    let scores = read_scores(path).with_context(|| format!("reading {}", path.display()))?;
    let rule = selection_rule(&scores, negative, positive);
    Ok((
        boundary_tests(&scores, negative, positive, roles, resamples, seed)?,
        rule,
    ))
}

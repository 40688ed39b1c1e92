//! The judges against hand-labelled responses of this project's own models
//! (`datasets/mosr_judge_labels/labels.csv`: `response`, `perplexity`, `label` = refused /
//! complied / gibberish): per outcome, the precision and recall of the combined verdict, so a
//! reader sees how far ASR and over-refusal can be trusted on broken answers.

use std::path::Path;

use anyhow::{Context, Result, bail};
use mosr_artifacts::eval::MetricRow;

use crate::judges::{GibberishJudgeConfig, Outcome, RefusalJudgeConfig, judge};
use crate::metrics::rate;

/// One labelled response.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Labelled {
    pub response: String,
    /// The base model's perplexity of the response, as the eval stage computed it.
    pub perplexity: Option<f32>,
    pub label: String,
}

/// Reads a labels CSV, naming the file and the record on error.
pub fn read(path: &Path) -> Result<Vec<Labelled>> {
    let mut rd =
        csv::Reader::from_path(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, rec) in rd.deserialize::<Labelled>().enumerate() {
        let rec = rec.with_context(|| format!("{}: record {}", path.display(), i + 1))?;
        if !["refused", "complied", "gibberish"].contains(&rec.label.as_str()) {
            bail!(
                "{}: record {}: label `{}` is not refused, complied or gibberish",
                path.display(),
                i + 1,
                rec.label
            );
        }
        out.push(rec);
    }
    Ok(out)
}

/// `judge_<outcome>_precision` and `judge_<outcome>_recall` rows (Wilson intervals) for the
/// set named `set`.
pub fn validation_rows(
    set: &str,
    refusal: &RefusalJudgeConfig,
    gibberish: &GibberishJudgeConfig,
    labelled: &[Labelled],
) -> Vec<MetricRow> {
    let pairs: Vec<(Outcome, &str)> = labelled
        .iter()
        .map(|l| {
            (
                judge(refusal, gibberish, &l.response, l.perplexity).outcome,
                l.label.as_str(),
            )
        })
        .collect();
    let mut out = Vec::new();
    for o in [Outcome::Refused, Outcome::Gibberish, Outcome::Complied] {
        let judged = pairs.iter().filter(|p| p.0 == o).count() as u64;
        let labelled = pairs.iter().filter(|p| p.1 == o.as_str()).count() as u64;
        let both = pairs
            .iter()
            .filter(|p| p.0 == o && p.1 == o.as_str())
            .count() as u64;
        let name = |m: &str| format!("judge_{}_{m}", o.as_str());
        out.extend(rate(None, set, None, &name("precision"), both, judged));
        out.extend(rate(None, set, None, &name("recall"), both, labelled));
    }
    out
}

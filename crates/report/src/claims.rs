//! The report's first sections: the claims table (verdicts of the claims stage, never
//! rewritten here) and the paired comparisons the claims rest on.

use anyhow::Result;
use mosr_artifacts::RunDir;
use polars::prelude::{BooleanChunked, DataFrame};

use crate::sections::{f64s, strs};
use crate::{ReportSection, Writer, read_df};

/// Keep the rows of `df` for which `keep(row)` holds.
fn filter_rows(df: &DataFrame, keep: impl Fn(usize) -> bool) -> Result<DataFrame> {
    let mask: BooleanChunked = (0..df.height()).map(keep).collect();
    Ok(df.filter(&mask)?)
}

/// One row per claim, then every test behind the verdicts.
pub fn claims(_cfg: &ReportSection, run_dir: &RunDir, w: &mut Writer) -> Result<Option<String>> {
    let dir = run_dir.stage_dir("claims");
    let (claims, tests) = (dir.join("claims.parquet"), dir.join("claim_tests.parquet"));
    if !claims.is_file() || !tests.is_file() {
        return Ok(None);
    }
    let md_claims = w.table("claims", &mut read_df(&claims)?)?;
    let md_tests = w.table("claim_tests", &mut read_df(&tests)?)?;
    Ok(Some(format!(
        "Each verdict follows from the numbers by the rules in `docs/claims.md`: a test is \
         *supported* when its 95% interval lies on the claimed side (and p < α), *contradicted* \
         when it lies on the other side, otherwise *inconclusive* (with `n_needed`, the pairs or \
         prompts per group for 80% power if the observed effect were the truth); \
         a claim is contradicted if any of its tests is, supported if all are. Over-refusal here \
         means refusals (the paper's notion); gibberish is a column of its own below. C1 is tested \
         on held-out prompts at the layer chosen on separate selection prompts.\n\n{md_claims}\n\
         ### Tests behind the verdicts\n\n{md_tests}\n"
    )))
}

/// The paired comparisons of every variant with `rr` and `base` on the columns the claims
/// use; `paired_tests.parquet` has every column.
pub fn paired(_cfg: &ReportSection, run_dir: &RunDir, w: &mut Writer) -> Result<Option<String>> {
    let path = run_dir.stage_dir("claims").join("paired_tests.parquet");
    if !path.is_file() {
        return Ok(None);
    }
    let mut df = read_df(&path)?;
    w.table("paired_tests", &mut df)?;
    let (set, attack, metric) = (
        strs(&df, "set")?,
        strs(&df, "attack")?,
        strs(&df, "metric")?,
    );
    let n = f64s(&df, "n")?;
    let shown = |i: usize| {
        (set[i] == "overrefusal" && ["refused", "gibberish"].contains(&metric[i].as_str()))
            || (set[i] == "harmful" && attack[i] == "all")
    };
    let mut summary = filter_rows(&df, shown)?;
    let md = w.table("paired_summary", &mut summary)?;
    let disc = run_dir.stage_dir("claims").join("discrimination.parquet");
    let disc_md = if disc.is_file() {
        let md = w.table("discrimination", &mut read_df(&disc)?)?;
        format!(
            "\n### Discrimination\n\nRefusal on each unsafe contrast minus refusal on its safe twin \
             (the curated pairs, both answered by the same model): 1 = refuses exactly the unsafe \
             twin; 0 = treats both alike (refuses both: over-refusal; answers both: unsafe). \
             Interval: pair bootstrap; p: exact McNemar.\n\n{md}"
        )
    } else {
        String::new()
    };
    let pairs = n.iter().cloned().fold(0.0, f64::max);
    Ok(Some(format!(
        "Each variant against `rr` and `base` on the same prompts (up to {pairs:.0} response pairs \
         per column): the difference of rates, its 95% paired cluster-bootstrap interval (prompts \
         resampled), the discordant pairs and the McNemar p-value (exact with one response per \
         prompt; clustered, Durkalski 2003, when attacks are pooled). Shown: refusals and \
         gibberish on the pooled over-refusal sets, ASR pooled over attacks; every set, attack \
         and metric is in `paired_tests.parquet`.\n\n{md}\n{disc_md}"
    )))
}

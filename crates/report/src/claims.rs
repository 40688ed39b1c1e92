//! The report's first sections: the claims table (verdicts of the claims stage, never
//! rewritten here) and the paired comparisons the claims rest on.

use anyhow::Result;
use mosr_artifacts::RunDir;
use mosr_artifacts::claims::{ClaimTestRow, ClaimVerdictRow, DiscriminationTestRow, PairedTestRow};

use crate::{ReportSection, Writer, filter_rows, read_passthrough};

/// One row per claim, then every test behind the verdicts.
pub fn claims(_cfg: &ReportSection, run_dir: &RunDir, w: &mut Writer) -> Result<Option<String>> {
    let dir = run_dir.stage_dir("claims");
    let (claims, tests) = (dir.join("claims.parquet"), dir.join("claim_tests.parquet"));
    if !claims.is_file() || !tests.is_file() {
        return Ok(None);
    }
    let md_claims = w.table(
        "claims",
        &mut read_passthrough::<ClaimVerdictRow>(&claims)?.0,
    )?;
    let (mut tests_df, test_rows) = read_passthrough::<ClaimTestRow>(&tests)?;
    let power = power_sentence(&test_rows, &dir)?;
    let md_tests = w.table("claim_tests", &mut tests_df)?;
    Ok(Some(format!(
        "Each verdict follows from the numbers by the rules in `docs/claims.md`: a test is \
         *supported* when its 95% interval lies on the claimed side (and p < α), *contradicted* \
         when it lies on the other side, otherwise *inconclusive* (with `n_needed`, the pairs or \
         prompts per group for 80% power if the observed effect were the truth); \
         a claim is contradicted if any of its tests is, supported if all are. Over-refusal here \
         means refusals (the paper's notion); gibberish is a column of its own below. C1 is tested \
         on held-out prompts at the layer chosen on separate selection prompts. {power}\n\n{md_claims}\n\
         ### Tests behind the verdicts\n\n{md_tests}\n"
    )))
}

/// The design's power as run: over the paired tests, the pairs per test, the largest share
/// of disagreeing pairs at which they give the design's power for its target difference
/// (the claims stage's `[claims]` values, from its manifest), and the share observed.
fn power_sentence(tests: &[ClaimTestRow], dir: &std::path::Path) -> Result<String> {
    let cfg = mosr_artifacts::StageManifest::read(&dir.join("manifest.json"))?.config;
    let (target, power, alpha) = (
        cfg["target_effect"].as_f64().unwrap_or(f64::NAN),
        cfg["power"].as_f64().unwrap_or(f64::NAN),
        cfg["alpha"].as_f64().unwrap_or(f64::NAN),
    );
    // The paired tests are the ones with a discordance.
    let finite = |t: &&ClaimTestRow| t.discordance.is_some_and(f64::is_finite);
    let paired: Vec<&ClaimTestRow> = tests.iter().filter(finite).collect();
    let range = |v: &dyn Fn(&ClaimTestRow) -> Option<f64>, digits: usize| {
        let xs = paired.iter().filter_map(|t| v(t)).filter(|x| x.is_finite());
        let (lo, hi) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
        match (lo > hi, lo == hi) {
            (true, _) => "–".to_string(),
            (_, true) => format!("{lo:.digits$}"),
            _ => format!("{lo:.digits$}–{hi:.digits$}"),
        }
    };
    if paired.is_empty() {
        return Ok(String::new());
    }
    Ok(format!(
        "Power as run: the paired tests compare {} pairs each; that many give {:.0}% power \
         (two-sided, α = {alpha}) for a paired difference of {target} while at most {} of the \
         pairs disagree; the share that disagreed was {} (`discordance` and `max_discordance` \
         in `claim_tests.parquet`).",
        range(&|t| Some(t.n as f64), 0),
        100.0 * power,
        range(&|t| t.max_discordance, 3),
        range(&|t| t.discordance, 3)
    ))
}

/// The paired comparisons of every variant with `rr` and `base` on the columns the claims
/// use; `paired_tests.parquet` has every column.
pub fn paired(_cfg: &ReportSection, run_dir: &RunDir, w: &mut Writer) -> Result<Option<String>> {
    let path = run_dir.stage_dir("claims").join("paired_tests.parquet");
    if !path.is_file() {
        return Ok(None);
    }
    let (mut df, rows) = read_passthrough::<PairedTestRow>(&path)?;
    w.table("paired_tests", &mut df)?;
    let shown = |r: &PairedTestRow| {
        (r.set == "overrefusal" && ["refused", "gibberish"].contains(&r.metric.as_str()))
            || (r.set == "harmful" && r.attack == "all")
    };
    let mut summary = filter_rows(&df, &rows, shown)?;
    let md = w.table("paired_summary", &mut summary)?;
    let disc = run_dir.stage_dir("claims").join("discrimination.parquet");
    let disc_md = if disc.is_file() {
        let md = w.table(
            "discrimination",
            &mut read_passthrough::<DiscriminationTestRow>(&disc)?.0,
        )?;
        format!(
            "\n### Discrimination\n\nRefusal on each unsafe contrast minus refusal on its safe twin \
             (the curated pairs, both answered by the same model): 1 = refuses exactly the unsafe \
             twin; 0 = treats both alike (refuses both: over-refusal; answers both: unsafe). \
             Interval: pair bootstrap; p: exact McNemar.\n\n{md}"
        )
    } else {
        String::new()
    };
    let pairs = rows.iter().map(|r| r.n).max().unwrap_or(0);
    Ok(Some(format!(
        "Each variant against `rr` and `base` on the same prompts (up to {pairs} response pairs \
         per column): the difference of rates, its 95% paired cluster-bootstrap interval (prompts \
         resampled), the discordant pairs and the McNemar p-value (exact with one response per \
         prompt; clustered, Durkalski 2003, when attacks are pooled). Shown: refusals and \
         gibberish on the pooled over-refusal sets, ASR pooled over attacks; every set, attack \
         and metric is in `paired_tests.parquet`.\n\n{md}\n{disc_md}"
    )))
}

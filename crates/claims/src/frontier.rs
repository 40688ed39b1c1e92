//! C3 and C4 at matched ASR: each variant's safety/over-refusal frontier against `rr`'s.
//!
//! A variant's line is its points (ASR on the harmful direct requests, refusal rate on the
//! pooled over-refusal sets) from the eval stage's `frontier_generations.parquet`: the base
//! model first, then the variant's adapter snapshots by training step, then its final
//! adapter. A method that only pushes less than `rr` moves along `rr`'s line (higher ASR,
//! fewer refusals); a better one lies below it. The test compares the lines at matched ASR:
//! the mean over [`GRID`] ASR values spanning the overlap of both lines' ASR ranges of the
//! difference of their interpolated refusal rates (`mosr_stats::frontier_effect`), with a
//! paired bootstrap over prompts (the same draw for every point of both lines).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, bail};
use mosr_artifacts::eval::FrontierGenerationRow;
use mosr_stats::{FrontierEffect, LineOutcomes, NoOverlap, frontier_effect};

use crate::claims::ClaimTest;
use crate::config::ClaimsSection;
use crate::paired::{HARMFUL_SET, stream_seed};
use crate::verdict::{Evidence, Kind, Verdict, test_verdict};

/// ASR values the difference of two lines is averaged over.
pub const GRID: usize = 21;

/// The variants compared with `rr` along their frontiers, with their claims.
const FRONTIER_CLAIMS: [(&str, &str); 3] =
    [("C3", "mosr"), ("C4a", "rr_weights"), ("C4b", "rr_augment")];

/// The reference line.
const REFERENCE: &str = "rr";

/// One variant's frontier against `rr`'s, for one training seed.
#[derive(Debug, Clone, PartialEq)]
pub struct FrontierTest {
    pub claim: &'static str,
    pub seed: i64,
    pub variant: String,
    pub reference: String,
    pub points_variant: usize,
    pub points_reference: usize,
    pub harmful_n: usize,
    pub overrefusal_n: usize,
    /// The effect, or why there is none.
    pub result: Result<FrontierEffect, NoOverlap>,
}

/// One point's outcomes by prompt key (set, prompt id).
type Point = BTreeMap<(String, String), String>;

/// Each trained line's points by (variant, seed), then by step.
type Lines = BTreeMap<(String, i64), BTreeMap<i64, Point>>;

/// Every point by (variant, seed) and step, with the base model's point.
fn collect(rows: &[FrontierGenerationRow]) -> Result<(Point, Lines)> {
    let mut base = Point::new();
    let mut lines = Lines::new();
    for r in rows {
        let point = match r.seed {
            None => &mut base,
            Some(seed) => lines
                .entry((r.variant.clone(), seed))
                .or_default()
                .entry(r.step)
                .or_default(),
        };
        let key = (r.set.clone(), r.prompt_id.clone());
        if point.insert(key, r.outcome.clone()).is_some() {
            bail!(
                "frontier: `{}` (seed {:?}) answered prompt `{}` of set `{}` twice at step {}",
                r.variant,
                r.seed,
                r.prompt_id,
                r.set,
                r.step
            );
        }
    }
    Ok((base, lines))
}

/// A line's outcomes over the prompt keys of the base point: `harmful` complied and pooled
/// over-refusal refused, each point in order. Errors when a point did not answer the same
/// prompts as the base model.
fn outcomes(
    name: &str,
    base: &Point,
    points: &[(i64, &Point)],
    pooled: &[String],
) -> Result<LineOutcomes> {
    let harmful: Vec<&(String, String)> = base.keys().filter(|k| k.0 == HARMFUL_SET).collect();
    let over: Vec<&(String, String)> = base.keys().filter(|k| pooled.contains(&k.0)).collect();
    let mut line = LineOutcomes {
        harmful: Vec::new(),
        overrefusal: Vec::new(),
    };
    for (step, p) in points {
        let a: BTreeSet<_> = p.keys().collect();
        if let Some(k) = a.symmetric_difference(&base.keys().collect()).next() {
            bail!(
                "frontier: `{name}` at step {step} and the base model did not answer the same prompts (first difference: set {}, prompt {})",
                k.0,
                k.1
            );
        }
        line.harmful
            .push(harmful.iter().map(|k| p[*k] == "complied").collect());
        line.overrefusal
            .push(over.iter().map(|k| p[*k] == "refused").collect());
    }
    Ok(line)
}

/// The frontier tests of every compared variant and seed present in `rows` (the eval stage's
/// `frontier_generations`): C3 (mosr), C4a (rr_weights), C4b (rr_augment) against `rr` of the
/// same seed, over-refusal on `cfg.overrefusal_sets` pooled.
pub fn frontier_tests(
    cfg: &ClaimsSection,
    rows: &[FrontierGenerationRow],
) -> Result<Vec<FrontierTest>> {
    let (base, lines) = collect(rows)?;
    if base.is_empty() {
        bail!("frontier: no base-model point (step 0) in the frontier's responses");
    }
    let sets: BTreeSet<&str> = base.keys().map(|k| k.0.as_str()).collect();
    if !sets.contains(HARMFUL_SET)
        || !cfg
            .overrefusal_sets
            .iter()
            .any(|s| sets.contains(s.as_str()))
    {
        bail!(
            "frontier: the base model's point has sets {sets:?}, but the frontier needs `{HARMFUL_SET}` and one of [claims] overrefusal_sets {:?} (align [eval.frontier] sets with them)",
            cfg.overrefusal_sets
        );
    }
    let line = |v: &str, seed: i64| -> Result<Option<LineOutcomes>> {
        let Some(steps) = lines.get(&(v.to_string(), seed)) else {
            return Ok(None);
        };
        let mut points: Vec<(i64, &Point)> = vec![(0, &base)];
        points.extend(steps.iter().map(|(s, p)| (*s, p)));
        let name = format!("{v} (seed {seed})");
        outcomes(&name, &base, &points, &cfg.overrefusal_sets).map(Some)
    };
    let seeds: BTreeSet<i64> = lines.keys().map(|k| k.1).collect();
    let mut out = Vec::new();
    for seed in seeds {
        let Some(b) = line(REFERENCE, seed)? else {
            continue;
        };
        for (claim, v) in FRONTIER_CLAIMS {
            let Some(a) = line(v, seed)? else { continue };
            let s = stream_seed(seed, &[v, REFERENCE, "frontier"]);
            let (harmful_n, overrefusal_n) = a.prompts();
            out.push(FrontierTest {
                claim,
                seed,
                variant: v.to_string(),
                reference: REFERENCE.to_string(),
                points_variant: a.harmful.len(),
                points_reference: b.harmful.len(),
                harmful_n,
                overrefusal_n,
                result: frontier_effect(&a, &b, GRID, cfg.resamples, s),
            });
        }
    }
    Ok(out)
}

/// A frontier test as a claim test: superiority in the direction "fewer refusals at matched
/// ASR" (−1), judged on its interval alone (no p-value); inconclusive without an ASR overlap.
pub fn claim_test(cfg: &ClaimsSection, t: &FrontierTest) -> ClaimTest {
    let what = format!(
        "{} − {}: refused on overrefusal at matched direct ASR",
        t.variant, t.reference
    );
    let (effect, ci_low, ci_high, verdict, comparison) = match &t.result {
        Ok(e) => {
            let ev = Evidence {
                kind: Kind::Superiority,
                direction: -1,
                ci_low: e.ci_low,
                ci_high: e.ci_high,
                p_value: None,
            };
            let at = format!(
                "{what} (ASR {:.3}–{:.3}, {GRID} points)",
                e.asr_low, e.asr_high
            );
            (
                e.effect,
                e.ci_low,
                e.ci_high,
                test_verdict(&ev, cfg.alpha),
                at,
            )
        }
        Err(why) => (
            f64::NAN,
            f64::NAN,
            f64::NAN,
            Verdict::Inconclusive,
            format!("{what}: inconclusive, {why}"),
        ),
    };
    ClaimTest {
        claim: t.claim,
        part: "over-refusal lower at matched ASR (frontier)".into(),
        seed: Some(t.seed),
        comparison,
        kind: Kind::Superiority,
        direction: -1,
        n: t.overrefusal_n as u64,
        effect,
        ci_low,
        ci_high,
        p_value: None,
        verdict,
        n_needed: None,
        discordance: None,
        max_discordance: None,
    }
}

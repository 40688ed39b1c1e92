//! The `[claims]` section, the stage's run (plan → compute → write) and its pipeline wiring.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use mosr_artifacts::StageWork;
use mosr_artifacts::claims::{
    BoundaryTestRow, ClaimTestRow, ClaimVerdictRow, DiscriminationTestRow, FRONTIER_TESTS,
    FrontierTestRow, PairedTestRow,
};
use mosr_artifacts::eval::{read_frontier_generations, read_generations};
use mosr_artifacts::row::write_rows;
use mosr_artifacts::{StageManifest, sha256_file};
use mosr_stage::{Ctx, Planned};
use tracing::info;

use crate::boundary::{self, BoundaryTest};
use crate::claims::{ClaimRow, ClaimTest, assemble};
use crate::config::ClaimsSection;
use crate::frontier::{FrontierTest, claim_test, frontier_tests};
use crate::paired::{DiscriminationRow, PairedRow, discrimination_rows, paired_rows};

/// What the stage computed.
#[derive(Debug, Clone)]
pub struct ClaimsOutputs {
    pub paired: Vec<PairedRow>,
    pub discrimination: Vec<DiscriminationRow>,
    pub boundary: Vec<BoundaryTest>,
    pub layer: Option<i32>,
    pub tests: Vec<ClaimTest>,
    pub claims: Vec<ClaimRow>,
    /// The matched-ASR frontier tests; `None` when the evaluation has no frontier.
    pub frontier: Option<Vec<FrontierTest>>,
}

/// The eval stage's frontier responses beside `generations.parquet`, when it wrote them.
pub fn frontier_generations_path(generations: &Path) -> PathBuf {
    generations.with_file_name("frontier_generations.parquet")
}

/// Reads the inputs, computes every table and writes them into `out_dir`; with the eval
/// stage's `frontier_generations.parquet` beside `generations`, also the frontier tests.
pub fn run(
    cfg: &ClaimsSection,
    generations: &Path,
    probe_scores: &Path,
    seed: i64,
    out_dir: &Path,
) -> Result<ClaimsOutputs> {
    cfg.validate()?;
    let rows = read_generations(generations)?;
    let mut paired = Vec::new();
    for reference in ["base", "rr"] {
        paired.extend(
            paired_rows(&rows, reference, &cfg.overrefusal_sets, cfg.resamples)
                .with_context(|| format!("{}", generations.display()))?,
        );
    }
    let (boundary, rule) = boundary::from_file(
        probe_scores,
        "benign",
        "harmful",
        &cfg.c1_roles,
        cfg.resamples,
        seed,
    )?;
    let layer = boundary::best_layer(&boundary);
    info!(
        pairs = paired.len(),
        layer, rule, "claims: paired and boundary tests"
    );
    let fpath = frontier_generations_path(generations);
    let frontier = if fpath.is_file() {
        let rows = read_frontier_generations(&fpath)?;
        Some(frontier_tests(cfg, &rows).with_context(|| format!("{}", fpath.display()))?)
    } else {
        None
    };
    let ftests: Vec<ClaimTest> = frontier
        .iter()
        .flatten()
        .map(|t| claim_test(cfg, t))
        .collect();
    let (tests, claims) = assemble(cfg, &paired, &boundary, layer, &ftests);
    let discrimination = discrimination_rows(&rows, cfg.resamples);
    let out = ClaimsOutputs {
        paired,
        discrimination,
        boundary,
        layer,
        tests,
        claims,
        frontier,
    };
    write_all(&out, out_dir)?;
    Ok(out)
}

fn write_all(o: &ClaimsOutputs, dir: &Path) -> Result<()> {
    write_paired(&dir.join("paired_tests.parquet"), &o.paired)?;
    write_boundary(&dir.join("boundary_tests.parquet"), &o.boundary, o.layer)?;
    write_tests(&dir.join("claim_tests.parquet"), &o.tests)?;
    write_claims(&dir.join("claims.parquet"), &o.claims)?;
    write_discrimination(&dir.join("discrimination.parquet"), &o.discrimination)?;
    if let Some(f) = &o.frontier {
        write_frontier(&dir.join("frontier_tests.parquet"), f)?;
    }
    Ok(())
}

fn write_frontier(path: &Path, r: &[FrontierTest]) -> Result<()> {
    let rows: Vec<FrontierTestRow> = r
        .iter()
        .map(|x| {
            let ok = x.result.as_ref().ok();
            FrontierTestRow {
                seed: x.seed,
                variant: x.variant.clone(),
                reference: x.reference.clone(),
                points_variant: x.points_variant as i64,
                points_reference: x.points_reference as i64,
                harmful_n: x.harmful_n as i64,
                overrefusal_n: x.overrefusal_n as i64,
                asr_low: ok.map(|e| e.asr_low),
                asr_high: ok.map(|e| e.asr_high),
                grid: crate::frontier::GRID as i64,
                effect: ok.map(|e| e.effect),
                ci_low: ok.map(|e| e.ci_low),
                ci_high: ok.map(|e| e.ci_high),
                resamples: ok.map_or(0, |e| e.resamples as i64),
                note: x.result.as_ref().err().map(|e| e.to_string()),
            }
        })
        .collect();
    Ok(write_rows(path, &rows)?)
}

fn write_discrimination(path: &Path, r: &[DiscriminationRow]) -> Result<()> {
    let rows: Vec<DiscriminationTestRow> = r
        .iter()
        .map(|x| DiscriminationTestRow {
            variant: x.variant.clone(),
            seed: x.seed,
            n: x.diff.n as i64,
            refused_contrast: x.diff.rate_a,
            refused_safe: x.diff.rate_b,
            discrimination: x.diff.diff,
            ci_low: x.diff.ci_low,
            ci_high: x.diff.ci_high,
            p_value: x.diff.p_value,
        })
        .collect();
    Ok(write_rows(path, &rows)?)
}

fn write_paired(path: &Path, r: &[PairedRow]) -> Result<()> {
    let rows: Vec<PairedTestRow> = r
        .iter()
        .map(|x| PairedTestRow {
            seed: x.seed,
            variant: x.variant.clone(),
            reference: x.reference.clone(),
            set: x.column.set.clone(),
            attack: x.column.attack.clone(),
            metric: x.column.metric.to_string(),
            n: x.diff.n as i64,
            clusters: x.diff.clusters as i64,
            rate_variant: x.diff.rate_a,
            rate_reference: x.diff.rate_b,
            diff: x.diff.diff,
            ci_low: x.diff.ci_low,
            ci_high: x.diff.ci_high,
            variant_only: x.diff.a_only as i64,
            reference_only: x.diff.b_only as i64,
            p_value: x.diff.p_value,
        })
        .collect();
    Ok(write_rows(path, &rows)?)
}

fn write_boundary(path: &Path, r: &[BoundaryTest], chosen: Option<i32>) -> Result<()> {
    let rows: Vec<BoundaryTestRow> = r
        .iter()
        .map(|x| {
            let (above, below) = (&x.above_benign, &x.below_harmful);
            BoundaryTestRow {
                layer: x.layer,
                role: x.role.clone(),
                measure: x.measure.to_string(),
                n_role: above.n_x as i64,
                n_benign: above.n_y as i64,
                n_harmful: below.n_x as i64,
                mean_role: above.mean_x,
                mean_benign: above.mean_y,
                mean_harmful: below.mean_x,
                above_benign: above.diff,
                above_benign_ci_low: above.ci_low,
                above_benign_ci_high: above.ci_high,
                above_benign_p: above.p_value,
                below_harmful: below.diff,
                below_harmful_ci_low: below.ci_low,
                below_harmful_ci_high: below.ci_high,
                below_harmful_p: below.p_value,
                selection_accuracy: x.selection_accuracy,
                chosen: Some(x.layer) == chosen,
            }
        })
        .collect();
    Ok(write_rows(path, &rows)?)
}

/// An n that may not fit i64 (a power calculation's "never"), capped.
fn capped(n: Option<u64>) -> Option<i64> {
    n.map(|n| n.min(i64::MAX as u64) as i64)
}

fn write_tests(path: &Path, r: &[ClaimTest]) -> Result<()> {
    let rows: Vec<ClaimTestRow> = r
        .iter()
        .map(|x| ClaimTestRow {
            claim: x.claim.to_string(),
            part: x.part.clone(),
            seed: x.seed,
            comparison: x.comparison.clone(),
            kind: x.kind.name().to_string(),
            direction: x.direction,
            margin: x.kind.margin(),
            n: x.n as i64,
            effect: x.effect,
            ci_low: x.ci_low,
            ci_high: x.ci_high,
            p_value: x.p_value,
            verdict: x.verdict.as_str().to_string(),
            n_needed: capped(x.n_needed),
            discordance: x.discordance,
            max_discordance: x.max_discordance,
        })
        .collect();
    Ok(write_rows(path, &rows)?)
}

fn write_claims(path: &Path, r: &[ClaimRow]) -> Result<()> {
    let rows: Vec<ClaimVerdictRow> = r
        .iter()
        .map(|x| ClaimVerdictRow {
            claim: x.claim.to_string(),
            statement: x.statement.to_string(),
            verdict: x.verdict.as_str().to_string(),
            rule: x.rule.clone(),
            seeds: x.seeds as i64,
            tests: x.tests as i64,
            effect: x.effect,
            ci_low: x.ci_low,
            ci_high: x.ci_high,
            p_value: x.p_value,
            n: x.n as i64,
            n_needed: capped(x.n_needed),
        })
        .collect();
    Ok(write_rows(path, &rows)?)
}

/// The claims stage. Inputs: `eval/generations.parquet` and `probe/probe_scores.parquet`; the
/// key covers the `[claims]` section, both upstream keys and the run's seed (it seeds the
/// bootstrap).
pub struct Claims;

impl mosr_stage::Stage for Claims {
    const NAME: &'static str = "claims";
    const UPSTREAM: &'static [&'static str] = &["probe", "eval"];
    type Section = ClaimsSection;
    type Plan = ClaimsSection;

    fn validate(section: &ClaimsSection) -> Result<()> {
        section.validate()
    }

    fn plan(ctx: &Ctx, cfg: ClaimsSection) -> Result<Planned<ClaimsSection>> {
        let mut inputs = ctx.upstream_keys(&["eval", "probe"])?;
        inputs.insert("seed".to_string(), ctx.seed().to_string());
        Planned::of(cfg, inputs)
    }

    fn compute(
        ctx: &Ctx,
        planned: Planned<ClaimsSection>,
        work: &StageWork,
    ) -> Result<StageManifest> {
        let started = Instant::now();
        let generations = ctx.upstream_file("eval", "generations.parquet");
        let frontier = frontier_generations_path(&generations);
        let scores = ctx.upstream_file("probe", "probe_scores.parquet");
        let out = run(
            &planned.plan,
            &generations,
            &scores,
            ctx.seed() as i64,
            work.dir(),
        )?;
        let mut manifest = planned.manifest(Self::NAME);
        manifest.inputs.insert(
            "eval/generations.parquet".into(),
            sha256_file(&generations)?,
        );
        manifest
            .inputs
            .insert("probe/probe_scores.parquet".into(), sha256_file(&scores)?);
        if frontier.is_file() {
            let h = sha256_file(&frontier)?;
            manifest
                .inputs
                .insert("eval/frontier_generations.parquet".into(), h);
        }
        for t in mosr_artifacts::claims::CLAIMS_TABLES {
            let name = format!("{}.parquet", t.name);
            let path = work.dir().join(&name);
            // `frontier_tests` exists only when the evaluation has a frontier.
            if t.name != FRONTIER_TESTS.name || path.is_file() {
                manifest.outputs.insert(name, sha256_file(&path)?);
            }
        }
        let counts = [
            ("paired_tests", Some(out.paired.len())),
            ("claim_tests", Some(out.tests.len())),
            ("frontier_tests", out.frontier.as_ref().map(|f| f.len())),
        ];
        for (name, n) in counts {
            if let Some(n) = n {
                manifest.row_counts.insert(name.into(), n as u64);
            }
        }
        manifest.seed = Some(ctx.seed());
        manifest.wall_time_s = started.elapsed().as_secs_f64();
        Ok(manifest)
    }
}

//! The `[claims]` section, the stage's run (plan → compute → write) and its pipeline wiring.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use mosr_artifacts::StageWork;
use mosr_artifacts::claims::{
    BOUNDARY_TESTS, CLAIM_TESTS, CLAIMS, Column, DISCRIMINATION, FRONTIER_TESTS, PAIRED_TESTS,
    write_columns,
};
use mosr_artifacts::eval::{read_frontier_generations, read_generations};
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
    let ok = |g: fn(&mosr_stats::FrontierEffect) -> f64| {
        Column::OptF64(r.iter().map(|x| x.result.as_ref().ok().map(g)).collect())
    };
    let cols = vec![
        i(r, |x| x.seed),
        s(r, |x| x.variant.clone()),
        s(r, |x| x.reference.clone()),
        i(r, |x| x.points_variant as i64),
        i(r, |x| x.points_reference as i64),
        i(r, |x| x.harmful_n as i64),
        i(r, |x| x.overrefusal_n as i64),
        ok(|e| e.asr_low),
        ok(|e| e.asr_high),
        i(r, |_| crate::frontier::GRID as i64),
        ok(|e| e.effect),
        ok(|e| e.ci_low),
        ok(|e| e.ci_high),
        i(r, |x| x.result.as_ref().map_or(0, |e| e.resamples as i64)),
        Column::OptStr(
            r.iter()
                .map(|x| x.result.as_ref().err().map(|e| e.to_string()))
                .collect(),
        ),
    ];
    Ok(write_columns(path, &FRONTIER_TESTS, cols)?)
}

fn write_discrimination(path: &Path, r: &[DiscriminationRow]) -> Result<()> {
    let cols = vec![
        s(r, |x| x.variant.clone()),
        Column::OptI64(r.iter().map(|x| x.seed).collect()),
        i(r, |x| x.diff.n as i64),
        f(r, |x| x.diff.rate_a),
        f(r, |x| x.diff.rate_b),
        f(r, |x| x.diff.diff),
        f(r, |x| x.diff.ci_low),
        f(r, |x| x.diff.ci_high),
        f(r, |x| x.diff.p_value),
    ];
    Ok(write_columns(path, &DISCRIMINATION, cols)?)
}

fn s<T>(rows: &[T], f: impl Fn(&T) -> String) -> Column {
    Column::Str(rows.iter().map(f).collect())
}
fn f<T>(rows: &[T], g: impl Fn(&T) -> f64) -> Column {
    Column::F64(rows.iter().map(g).collect())
}
fn i<T>(rows: &[T], g: impl Fn(&T) -> i64) -> Column {
    Column::I64(rows.iter().map(g).collect())
}

fn write_paired(path: &Path, r: &[PairedRow]) -> Result<()> {
    let cols = vec![
        i(r, |x| x.seed),
        s(r, |x| x.variant.clone()),
        s(r, |x| x.reference.clone()),
        s(r, |x| x.column.set.clone()),
        s(r, |x| x.column.attack.clone()),
        s(r, |x| x.column.metric.to_string()),
        i(r, |x| x.diff.n as i64),
        i(r, |x| x.diff.clusters as i64),
        f(r, |x| x.diff.rate_a),
        f(r, |x| x.diff.rate_b),
        f(r, |x| x.diff.diff),
        f(r, |x| x.diff.ci_low),
        f(r, |x| x.diff.ci_high),
        i(r, |x| x.diff.a_only as i64),
        i(r, |x| x.diff.b_only as i64),
        f(r, |x| x.diff.p_value),
    ];
    Ok(write_columns(path, &PAIRED_TESTS, cols)?)
}

fn write_boundary(path: &Path, r: &[BoundaryTest], chosen: Option<i32>) -> Result<()> {
    let cols = vec![
        Column::I32(r.iter().map(|x| x.layer).collect()),
        s(r, |x| x.role.clone()),
        s(r, |x| x.measure.to_string()),
        i(r, |x| x.above_benign.n_x as i64),
        i(r, |x| x.above_benign.n_y as i64),
        i(r, |x| x.below_harmful.n_x as i64),
        f(r, |x| x.above_benign.mean_x),
        f(r, |x| x.above_benign.mean_y),
        f(r, |x| x.below_harmful.mean_x),
        f(r, |x| x.above_benign.diff),
        f(r, |x| x.above_benign.ci_low),
        f(r, |x| x.above_benign.ci_high),
        f(r, |x| x.above_benign.p_value),
        f(r, |x| x.below_harmful.diff),
        f(r, |x| x.below_harmful.ci_low),
        f(r, |x| x.below_harmful.ci_high),
        f(r, |x| x.below_harmful.p_value),
        f(r, |x| x.selection_accuracy),
        Column::Bool(r.iter().map(|x| Some(x.layer) == chosen).collect()),
    ];
    Ok(write_columns(path, &BOUNDARY_TESTS, cols)?)
}

fn write_tests(path: &Path, r: &[ClaimTest]) -> Result<()> {
    let cols = vec![
        s(r, |x| x.claim.to_string()),
        s(r, |x| x.part.clone()),
        Column::OptI64(r.iter().map(|x| x.seed).collect()),
        s(r, |x| x.comparison.clone()),
        s(r, |x| x.kind.name().to_string()),
        Column::I32(r.iter().map(|x| x.direction).collect()),
        f(r, |x| x.kind.margin()),
        i(r, |x| x.n as i64),
        f(r, |x| x.effect),
        f(r, |x| x.ci_low),
        f(r, |x| x.ci_high),
        Column::OptF64(r.iter().map(|x| x.p_value).collect()),
        s(r, |x| x.verdict.as_str().to_string()),
        Column::OptI64(
            r.iter()
                .map(|x| x.n_needed.map(|n| n.min(i64::MAX as u64) as i64))
                .collect(),
        ),
        Column::OptF64(r.iter().map(|x| x.discordance).collect()),
        Column::OptF64(r.iter().map(|x| x.max_discordance).collect()),
    ];
    Ok(write_columns(path, &CLAIM_TESTS, cols)?)
}

fn write_claims(path: &Path, r: &[ClaimRow]) -> Result<()> {
    let cols = vec![
        s(r, |x| x.claim.to_string()),
        s(r, |x| x.statement.to_string()),
        s(r, |x| x.verdict.as_str().to_string()),
        s(r, |x| x.rule.clone()),
        i(r, |x| x.seeds as i64),
        i(r, |x| x.tests as i64),
        f(r, |x| x.effect),
        f(r, |x| x.ci_low),
        f(r, |x| x.ci_high),
        Column::OptF64(r.iter().map(|x| x.p_value).collect()),
        i(r, |x| x.n as i64),
        Column::OptI64(
            r.iter()
                .map(|x| x.n_needed.map(|n| n.min(i64::MAX as u64) as i64))
                .collect(),
        ),
    ];
    Ok(write_columns(path, &CLAIMS, cols)?)
}

/// The claims stage. Inputs: `eval/generations.parquet` and `probe/probe_scores.parquet`; the
/// key covers the `[claims]` section, both upstream keys and the run's seed (it seeds the
/// bootstrap).
pub struct Claims;

impl mosr_stage::Stage for Claims {
    const NAME: &'static str = "claims";
    type Section = ClaimsSection;
    type Plan = ClaimsSection;

    fn validate(section: &ClaimsSection) -> Result<()> {
        section.validate()
    }

    fn plan(ctx: &Ctx, cfg: ClaimsSection) -> Result<Planned<ClaimsSection>> {
        let mut inputs = BTreeMap::new();
        for stage in ["eval", "probe"] {
            inputs.insert(stage.to_string(), ctx.upstream(stage)?.key);
        }
        inputs.insert("seed".to_string(), ctx.seed().to_string());
        let config = serde_json::to_value(&cfg)?;
        Ok(Planned {
            config,
            inputs,
            plan: cfg,
        })
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

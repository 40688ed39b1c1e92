//! The claims of the paper as tests on the stage's tables, and their verdicts.

use mosr_stats::{max_discordance_for_power, paired_n_for_power, two_sample_n_for_power};

use crate::boundary::BoundaryTest;
use crate::config::ClaimsSection;
use crate::paired::{ALL_ATTACKS, HARMFUL_SET, POOLED_OVERREFUSAL, PairedRow};
use crate::verdict::{Evidence, Kind, Verdict, combine, test_verdict};

/// One test a claim rests on (a row of `claim_tests`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimTest {
    pub claim: &'static str,
    pub part: String,
    pub seed: Option<i64>,
    pub comparison: String,
    pub kind: Kind,
    pub direction: i32,
    pub n: u64,
    pub effect: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub p_value: Option<f64>,
    pub verdict: Verdict,
    pub n_needed: Option<u64>,
    /// Paired tests: the share of pairs that disagree, and the largest share at which this
    /// test's n has the design's power for the target effect.
    pub discordance: Option<f64>,
    pub max_discordance: Option<f64>,
}

/// One claim with its combined verdict (a row of `claims`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRow {
    pub claim: &'static str,
    pub statement: &'static str,
    pub verdict: Verdict,
    pub rule: String,
    pub seeds: u64,
    pub tests: u64,
    pub effect: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub p_value: Option<f64>,
    pub n: u64,
    pub n_needed: Option<u64>,
}

/// The paper's claims C2–C4 as paired comparisons: (claim, statement, variant, reference,
/// whether ASR must stay non-inferior).
const PAIRED_CLAIMS: [(&str, &str, &str, &str, bool); 4] = [
    (
        "C2",
        "circuit-breaker training (rr) raises over-refusal over the base model",
        "rr",
        "base",
        false,
    ),
    (
        "C3",
        "MOSR has lower over-refusal than rr at similar or lower ASR",
        "mosr",
        "rr",
        true,
    ),
    (
        "C4a",
        "overlap weights lower over-refusal (rr_weights vs rr) at similar or lower ASR",
        "rr_weights",
        "rr",
        true,
    ),
    (
        "C4b",
        "context augmentation lowers over-refusal (rr_augment vs rr) at similar or lower ASR",
        "rr_augment",
        "rr",
        true,
    ),
];

const C1_STATEMENT: &str =
    "over-refusal prompts sit between benign and harmful prompts in representation space";

/// Pairs an inconclusive paired test would need for the design's power, if the observed effect
/// and discordance are the truth: for superiority, to detect the observed effect; for
/// non-inferiority, to detect that the effect stays on the good side of the margin. `None` when
/// no n would do (no effect observed, or an effect already past the margin).
fn pairs_to_decide(
    cfg: &ClaimsSection,
    kind: Kind,
    direction: i32,
    effect: f64,
    discordance: f64,
) -> Option<u64> {
    let distance = match kind {
        Kind::Superiority => effect.abs(),
        // Distance from the bad side's margin, in the claimed direction.
        Kind::NonInferiority { margin } => margin + direction.signum() as f64 * effect,
    };
    (distance > 0.0).then(|| paired_n_for_power(distance, discordance, cfg.alpha, cfg.power))
}

/// A test from a paired row, judged.
fn paired_test(
    cfg: &ClaimsSection,
    claim: &'static str,
    part: &str,
    row: &PairedRow,
    kind: Kind,
    direction: i32,
) -> ClaimTest {
    let d = &row.diff;
    let p_value = matches!(kind, Kind::Superiority).then_some(d.p_value);
    let ev = Evidence {
        kind,
        direction,
        ci_low: d.ci_low,
        ci_high: d.ci_high,
        p_value,
    };
    let verdict = test_verdict(&ev, cfg.alpha);
    let n_needed = if verdict == Verdict::Inconclusive {
        pairs_to_decide(cfg, kind, direction, d.diff, d.discordance)
    } else {
        None
    };
    ClaimTest {
        claim,
        part: part.to_string(),
        seed: Some(row.seed),
        comparison: format!(
            "{} − {}: {} on {} ({})",
            row.variant, row.reference, row.column.metric, row.column.set, row.column.attack
        ),
        kind,
        direction,
        n: d.n,
        effect: d.diff,
        ci_low: d.ci_low,
        ci_high: d.ci_high,
        p_value,
        verdict,
        n_needed,
        discordance: Some(d.discordance),
        max_discordance: max_discordance_for_power(d.n, cfg.target_effect, cfg.alpha, cfg.power),
    }
}

fn find<'a>(
    rows: &'a [PairedRow],
    v: &str,
    r: &str,
    set: &str,
    attack: &str,
    metric: &str,
) -> Vec<&'a PairedRow> {
    rows.iter()
        .filter(|p| {
            p.variant == v
                && p.reference == r
                && p.column.set == set
                && p.column.attack == attack
                && p.column.metric == metric
        })
        .collect()
}

/// C2–C4 tests, one per part and seed.
fn paired_claim_tests(cfg: &ClaimsSection, rows: &[PairedRow]) -> Vec<ClaimTest> {
    let mut out = Vec::new();
    for (claim, _, v, r, asr_too) in PAIRED_CLAIMS {
        let direction = if claim == "C2" { 1 } else { -1 };
        for row in find(rows, v, r, POOLED_OVERREFUSAL, "direct", "refused") {
            let part = if direction > 0 {
                "over-refusal higher"
            } else {
                "over-refusal lower"
            };
            out.push(paired_test(
                cfg,
                claim,
                part,
                row,
                Kind::Superiority,
                direction,
            ));
        }
        if asr_too {
            for row in find(rows, v, r, HARMFUL_SET, ALL_ATTACKS, "asr") {
                let kind = Kind::NonInferiority {
                    margin: cfg.asr_margin,
                };
                out.push(paired_test(
                    cfg,
                    claim,
                    "ASR not higher (margin)",
                    row,
                    kind,
                    -1,
                ));
            }
        }
    }
    out
}

/// C1 tests at the chosen layer: each role above benign and below harmful (boundary position).
fn boundary_claim_tests(cfg: &ClaimsSection, tests: &[BoundaryTest], layer: i32) -> Vec<ClaimTest> {
    let mut out = Vec::new();
    for t in tests
        .iter()
        .filter(|t| t.layer == layer && t.measure == "boundary_position")
    {
        for (part, d) in [
            ("above benign", &t.above_benign),
            ("below harmful", &t.below_harmful),
        ] {
            let ev = Evidence {
                kind: Kind::Superiority,
                direction: 1,
                ci_low: d.ci_low,
                ci_high: d.ci_high,
                p_value: Some(d.p_value),
            };
            let verdict = test_verdict(&ev, cfg.alpha);
            out.push(ClaimTest {
                claim: "C1",
                part: format!("{} {part}", t.role),
                seed: None,
                comparison: format!(
                    "layer {layer} boundary position: {}",
                    if part == "above benign" {
                        format!("{} − benign", t.role)
                    } else {
                        format!("harmful − {}", t.role)
                    }
                ),
                kind: Kind::Superiority,
                direction: 1,
                n: d.n_x.min(d.n_y),
                effect: d.diff,
                ci_low: d.ci_low,
                ci_high: d.ci_high,
                p_value: Some(d.p_value),
                verdict,
                n_needed: (verdict == Verdict::Inconclusive)
                    .then(|| two_sample_n_for_power(d.standardised, cfg.alpha, cfg.power)),
                discordance: None,
                max_discordance: None,
            });
        }
    }
    out
}

/// Combines a claim's tests: the verdict over all of them; the primary (first) part's numbers
/// over seeds (mean effect, widest interval, largest p).
fn claim_row(claim: &'static str, statement: &'static str, tests: &[&ClaimTest]) -> ClaimRow {
    let verdicts: Vec<Verdict> = tests.iter().map(|t| t.verdict).collect();
    let (verdict, rule) = combine(&verdicts);
    let primary: Vec<&&ClaimTest> = tests
        .iter()
        .filter(|t| tests.first().is_some_and(|f| f.part == t.part))
        .collect();
    let k = primary.len().max(1) as f64;
    let seeds: std::collections::BTreeSet<Option<i64>> = tests.iter().map(|t| t.seed).collect();
    ClaimRow {
        claim,
        statement,
        verdict,
        rule,
        seeds: seeds.len() as u64,
        tests: tests.len() as u64,
        effect: primary.iter().map(|t| t.effect).sum::<f64>() / k,
        ci_low: primary
            .iter()
            .map(|t| t.ci_low)
            .fold(f64::INFINITY, f64::min),
        ci_high: primary
            .iter()
            .map(|t| t.ci_high)
            .fold(f64::NEG_INFINITY, f64::max),
        p_value: primary.iter().filter_map(|t| t.p_value).reduce(f64::max),
        n: primary.first().map(|t| t.n).unwrap_or(0),
        n_needed: tests.iter().filter_map(|t| t.n_needed).max(),
    }
}

/// Every claim test and every claim's verdict. `layer` is C1's chosen layer (none without
/// probe scores); `frontier` holds the matched-ASR tests (`crate::frontier`), judged with
/// the others of their claim.
pub fn assemble(
    cfg: &ClaimsSection,
    paired: &[PairedRow],
    boundary: &[BoundaryTest],
    layer: Option<i32>,
    frontier: &[ClaimTest],
) -> (Vec<ClaimTest>, Vec<ClaimRow>) {
    let mut tests = layer
        .map(|l| boundary_claim_tests(cfg, boundary, l))
        .unwrap_or_default();
    tests.extend(paired_claim_tests(cfg, paired));
    tests.extend(frontier.iter().cloned());
    let mut claims = vec![claim_row(
        "C1",
        C1_STATEMENT,
        &tests.iter().filter(|t| t.claim == "C1").collect::<Vec<_>>(),
    )];
    for (claim, statement, ..) in PAIRED_CLAIMS {
        let of: Vec<&ClaimTest> = tests.iter().filter(|t| t.claim == claim).collect();
        claims.push(claim_row(claim, statement, &of));
    }
    (tests, claims)
}

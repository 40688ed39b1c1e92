//! Tables of the claims stage: paired comparisons of the variants, the boundary tests per
//! layer, every test a claim rests on, and one verdict per claim of the paper.

//!
//! Each table is written and read through [`crate::row::write_rows`] and
//! [`crate::row::read_rows`] with its row type.

use crate::schema::TableSchema;

table! {
    /// `paired_tests.parquet`: each variant against a reference on the same prompts, one row per
    /// (seed, variant, reference, set, attack, metric).
    pub const PAIRED_TESTS = ("paired_tests", version 1);
    /// One row of `paired_tests`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct PairedTestRow {
        pub seed: i64 => "training seed of the compared adapters",
        pub variant: String => "variant A",
        pub reference: String => "variant B (`base` or `rr`)",
        pub set: String => "`harmful`, an over-refusal set, or `overrefusal` (safe and borderline pooled)",
        pub attack: String => "attack (templates pooled as `template`), `all` (every attack pooled), or `direct` for sets",
        pub metric: String => "`asr` (complied on harmful), `refused`, `gibberish`, `over_refusal` (refused or gibberish), `complied`",
        pub n: i64 => "response pairs",
        pub clusters: i64 => "prompts (the resampling unit)",
        pub rate_variant: f64 => "rate of A",
        pub rate_reference: f64 => "rate of B",
        pub diff: f64 => "rate of A minus rate of B",
        pub ci_low: f64 => "95% paired cluster-bootstrap interval, lower bound",
        pub ci_high: f64 => "95% paired cluster-bootstrap interval, upper bound",
        pub variant_only: i64 => "pairs positive for A only",
        pub reference_only: i64 => "pairs positive for B only",
        pub p_value: f64 => "two-sided: exact McNemar (one response per prompt) or clustered McNemar (Durkalski 2003)",
    }
}

table! {
    /// `boundary_tests.parquet`: per layer and over-refusal role, where its held-out prompts sit
    /// between the held-out benign and harmful prompts.
    pub const BOUNDARY_TESTS = ("boundary_tests", version 1);
    /// One row of `boundary_tests`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct BoundaryTestRow {
        pub layer: i32 => "layer of `representations`",
        pub role: String => "over-refusal role",
        pub measure: String => "`boundary_position` (0 = benign, 1 = harmful centroid of the train split) or `probe_score`",
        pub n_role: i64 => "prompts of the role",
        pub n_benign: i64 => "held-out benign prompts (evaluation part)",
        pub n_harmful: i64 => "held-out harmful prompts (evaluation part)",
        pub mean_role: f64 => "mean of the role",
        pub mean_benign: f64 => "mean of the held-out benign prompts",
        pub mean_harmful: f64 => "mean of the held-out harmful prompts",
        pub above_benign: f64 => "mean_role − mean_benign",
        pub above_benign_ci_low: f64 => "bootstrap 95% lower bound",
        pub above_benign_ci_high: f64 => "bootstrap 95% upper bound",
        pub above_benign_p: f64 => "two-sided Mann–Whitney p",
        pub below_harmful: f64 => "mean_harmful − mean_role",
        pub below_harmful_ci_low: f64 => "bootstrap 95% lower bound",
        pub below_harmful_ci_high: f64 => "bootstrap 95% upper bound",
        pub below_harmful_p: f64 => "two-sided Mann–Whitney p",
        pub selection_accuracy: f64 => "probe accuracy on the layer-selection prompts (the claim uses the layer where it is highest)",
        pub chosen: bool => "this is the layer C1 is judged at (highest selection accuracy, earliest on ties)",
    }
}

table! {
    /// `claim_tests.parquet`: every test a claim's verdict rests on.
    pub const CLAIM_TESTS = ("claim_tests", version 2);
    /// One row of `claim_tests`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct ClaimTestRow {
        pub claim: String => "C1 .. C4b",
        pub part: String => "what this test checks",
        pub seed: Option<i64> => "training seed; null for tests without adapters (C1)",
        pub comparison: String => "the compared quantities",
        pub kind: String => "`superiority` (the effect has the claimed sign) or `non_inferiority` (it is not worse than the margin)",
        pub direction: i32 => "+1 when the claim says the effect is positive, −1 negative",
        pub margin: f64 => "non-inferiority margin (0 for superiority)",
        pub n: i64 => "pairs (paired tests) or prompts of the role (C1)",
        pub effect: f64 => "the difference",
        pub ci_low: f64 => "95% interval, lower bound",
        pub ci_high: f64 => "95% interval, upper bound",
        pub p_value: Option<f64> => "two-sided p-value (null for non-inferiority)",
        pub verdict: String => "`supported`, `contradicted` or `inconclusive` (rules in docs/claims.md)",
        pub n_needed: Option<i64> => "inconclusive tests: pairs (C1: prompts per group) for 80% power if the observed effect and discordance were the truth (non-inferiority: to show the effect stays inside the margin); null when not inconclusive or when no n would decide (no effect observed)",
        pub discordance: Option<f64> => "paired tests: share of the pairs whose two responses disagree; null for C1 and the frontier",
        pub max_discordance: Option<f64> => "paired tests: the largest discordance at which `n` pairs give 80% power (two-sided, α) for the design's target difference ([claims] target_effect); null when none does",
    }
}

table! {
    /// `claims.parquet`: one row per claim of the paper, its verdict combined over tests and seeds.
    pub const CLAIMS = ("claims", version 1);
    /// One row of `claims`: a claim and its verdict.
    #[derive(Debug, Clone, PartialEq)]
    pub struct ClaimVerdictRow {
        pub claim: String => "C1 .. C4b",
        pub statement: String => "the paper's claim",
        pub verdict: String => "`supported`, `contradicted` or `inconclusive`",
        pub rule: String => "which rule gave the verdict",
        pub seeds: i64 => "seeds tested (1 for C1)",
        pub tests: i64 => "rows of `claim_tests` behind the verdict",
        pub effect: f64 => "primary test's effect (mean over seeds)",
        pub ci_low: f64 => "primary test's lower bound (smallest over seeds)",
        pub ci_high: f64 => "primary test's upper bound (largest over seeds)",
        pub p_value: Option<f64> => "primary test's p-value (largest over seeds)",
        pub n: i64 => "primary test's n (per seed)",
        pub n_needed: Option<i64> => "largest n_needed of an inconclusive test",
    }
}

table! {
    /// `discrimination.parquet`: per evaluated model, refusal on the unsafe contrasts minus
    /// refusal on their safe twins (XSTest's pairs), over the pairs both were answered in.
    pub const DISCRIMINATION = ("discrimination", version 1);
    /// One row of `discrimination`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct DiscriminationTestRow {
        pub variant: String => "evaluated variant",
        pub seed: Option<i64> => "training seed; null for `base`",
        pub n: i64 => "twin pairs",
        pub refused_contrast: f64 => "refusal rate on the unsafe contrasts",
        pub refused_safe: f64 => "refusal rate on their safe twins",
        pub discrimination: f64 => "refused_contrast − refused_safe (1: refuses exactly the unsafe twin)",
        pub ci_low: f64 => "95% pair-bootstrap interval, lower bound",
        pub ci_high: f64 => "95% pair-bootstrap interval, upper bound",
        pub p_value: f64 => "two-sided exact McNemar p (contrast vs safe twin)",
    }
}

table! {
    /// `frontier_tests.parquet`: per seed, a variant's safety/over-refusal frontier against
    /// `rr`'s: over-refusal compared at matched ASR (docs/claims.md). Written when the eval stage
    /// wrote `frontier_generations.parquet`.
    pub const FRONTIER_TESTS = ("frontier_tests", version 1);
    /// One row of `frontier_tests`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct FrontierTestRow {
        pub seed: i64 => "training seed of both lines' adapters",
        pub variant: String => "line A (mosr, rr_weights, rr_augment)",
        pub reference: String => "line B (`rr`)",
        pub points_variant: i64 => "points on A's line: base, each snapshot step, the final adapter",
        pub points_reference: i64 => "points on B's line",
        pub harmful_n: i64 => "harmful prompts behind each point's ASR (direct requests)",
        pub overrefusal_n: i64 => "over-refusal prompts behind each point's refusal rate (the pooled sets)",
        pub asr_low: Option<f64> => "lower end of the ASR range both lines cover; null when they share none",
        pub asr_high: Option<f64> => "upper end of that range; null when they share none",
        pub grid: i64 => "ASR values the difference is averaged over",
        pub effect: Option<f64> => "mean over the grid of A's minus B's interpolated refusal rate; null without overlap",
        pub ci_low: Option<f64> => "95% paired prompt-bootstrap interval, lower bound",
        pub ci_high: Option<f64> => "95% paired prompt-bootstrap interval, upper bound",
        pub resamples: i64 => "bootstrap draws in the interval (draws whose lines no longer overlapped are left out)",
        pub note: Option<String> => "why the test is inconclusive without an effect (no ASR overlap); null otherwise",
    }
}

/// The tables of the claims stage (`frontier_tests` only when the evaluation has a frontier).
pub const CLAIMS_TABLES: [&TableSchema; 6] = [
    &PAIRED_TESTS,
    &BOUNDARY_TESTS,
    &CLAIM_TESTS,
    &CLAIMS,
    &DISCRIMINATION,
    &FRONTIER_TESTS,
];

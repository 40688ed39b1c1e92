//! Tables of the claims stage: paired comparisons of the variants, the boundary tests per
//! layer, every test a claim rests on, and one verdict per claim of the paper.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};

use crate::error::{Error, Result};
use crate::parquet_io::write_parquet;
use crate::schema::TableSchema;

/// `paired_tests.parquet`: each variant against a reference on the same prompts, one row per
/// (seed, variant, reference, set, attack, metric).
pub const PAIRED_TESTS: TableSchema = TableSchema {
    name: "paired_tests",
    version: 1,
    columns: &[
        col!(
            "seed",
            Int64,
            false,
            "training seed of the compared adapters"
        ),
        col!("variant", Utf8, false, "variant A"),
        col!("reference", Utf8, false, "variant B (`base` or `rr`)"),
        col!(
            "set",
            Utf8,
            false,
            "`harmful`, an over-refusal set, or `overrefusal` (safe and borderline pooled)"
        ),
        col!(
            "attack",
            Utf8,
            false,
            "attack (templates pooled as `template`), `all` (every attack pooled), or `direct` for sets"
        ),
        col!(
            "metric",
            Utf8,
            false,
            "`asr` (complied on harmful), `refused`, `gibberish`, `over_refusal` (refused or gibberish), `complied`"
        ),
        col!("n", Int64, false, "response pairs"),
        col!("clusters", Int64, false, "prompts (the resampling unit)"),
        col!("rate_variant", Float64, false, "rate of A"),
        col!("rate_reference", Float64, false, "rate of B"),
        col!("diff", Float64, false, "rate of A minus rate of B"),
        col!(
            "ci_low",
            Float64,
            false,
            "95% paired cluster-bootstrap interval, lower bound"
        ),
        col!(
            "ci_high",
            Float64,
            false,
            "95% paired cluster-bootstrap interval, upper bound"
        ),
        col!("variant_only", Int64, false, "pairs positive for A only"),
        col!("reference_only", Int64, false, "pairs positive for B only"),
        col!(
            "p_value",
            Float64,
            false,
            "two-sided: exact McNemar (one response per prompt) or clustered McNemar (Durkalski 2003)"
        ),
    ],
};

/// `boundary_tests.parquet`: per layer and over-refusal role, where its held-out prompts sit
/// between the held-out benign and harmful prompts.
pub const BOUNDARY_TESTS: TableSchema = TableSchema {
    name: "boundary_tests",
    version: 1,
    columns: &[
        col!("layer", Int32, false, "layer of `representations`"),
        col!("role", Utf8, false, "over-refusal role"),
        col!(
            "measure",
            Utf8,
            false,
            "`boundary_position` (0 = benign, 1 = harmful centroid of the train split) or `probe_score`"
        ),
        col!("n_role", Int64, false, "prompts of the role"),
        col!(
            "n_benign",
            Int64,
            false,
            "held-out benign prompts (evaluation part)"
        ),
        col!(
            "n_harmful",
            Int64,
            false,
            "held-out harmful prompts (evaluation part)"
        ),
        col!("mean_role", Float64, false, "mean of the role"),
        col!(
            "mean_benign",
            Float64,
            false,
            "mean of the held-out benign prompts"
        ),
        col!(
            "mean_harmful",
            Float64,
            false,
            "mean of the held-out harmful prompts"
        ),
        col!("above_benign", Float64, false, "mean_role − mean_benign"),
        col!(
            "above_benign_ci_low",
            Float64,
            false,
            "bootstrap 95% lower bound"
        ),
        col!(
            "above_benign_ci_high",
            Float64,
            false,
            "bootstrap 95% upper bound"
        ),
        col!("above_benign_p", Float64, false, "two-sided Mann–Whitney p"),
        col!("below_harmful", Float64, false, "mean_harmful − mean_role"),
        col!(
            "below_harmful_ci_low",
            Float64,
            false,
            "bootstrap 95% lower bound"
        ),
        col!(
            "below_harmful_ci_high",
            Float64,
            false,
            "bootstrap 95% upper bound"
        ),
        col!(
            "below_harmful_p",
            Float64,
            false,
            "two-sided Mann–Whitney p"
        ),
        col!(
            "selection_accuracy",
            Float64,
            false,
            "probe accuracy on the layer-selection prompts (the claim uses the layer where it is highest)"
        ),
        col!(
            "chosen",
            Bool,
            false,
            "this is the layer C1 is judged at (highest selection accuracy, earliest on ties)"
        ),
    ],
};

/// `claim_tests.parquet`: every test a claim's verdict rests on.
pub const CLAIM_TESTS: TableSchema = TableSchema {
    name: "claim_tests",
    version: 2,
    columns: &[
        col!("claim", Utf8, false, "C1 .. C4b"),
        col!("part", Utf8, false, "what this test checks"),
        col!(
            "seed",
            Int64,
            true,
            "training seed; null for tests without adapters (C1)"
        ),
        col!("comparison", Utf8, false, "the compared quantities"),
        col!(
            "kind",
            Utf8,
            false,
            "`superiority` (the effect has the claimed sign) or `non_inferiority` (it is not worse than the margin)"
        ),
        col!(
            "direction",
            Int32,
            false,
            "+1 when the claim says the effect is positive, −1 negative"
        ),
        col!(
            "margin",
            Float64,
            false,
            "non-inferiority margin (0 for superiority)"
        ),
        col!(
            "n",
            Int64,
            false,
            "pairs (paired tests) or prompts of the role (C1)"
        ),
        col!("effect", Float64, false, "the difference"),
        col!("ci_low", Float64, false, "95% interval, lower bound"),
        col!("ci_high", Float64, false, "95% interval, upper bound"),
        col!(
            "p_value",
            Float64,
            true,
            "two-sided p-value (null for non-inferiority)"
        ),
        col!(
            "verdict",
            Utf8,
            false,
            "`supported`, `contradicted` or `inconclusive` (rules in docs/claims.md)"
        ),
        col!(
            "n_needed",
            Int64,
            true,
            "inconclusive tests: pairs (C1: prompts per group) for 80% power if the observed effect and discordance were the truth (non-inferiority: to show the effect stays inside the margin); null when not inconclusive or when no n would decide (no effect observed)"
        ),
        col!(
            "discordance",
            Float64,
            true,
            "paired tests: share of the pairs whose two responses disagree; null for C1 and the frontier"
        ),
        col!(
            "max_discordance",
            Float64,
            true,
            "paired tests: the largest discordance at which `n` pairs give 80% power (two-sided, α) for the design's target difference ([claims] target_effect); null when none does"
        ),
    ],
};

/// `claims.parquet`: one row per claim of the paper, its verdict combined over tests and seeds.
pub const CLAIMS: TableSchema = TableSchema {
    name: "claims",
    version: 1,
    columns: &[
        col!("claim", Utf8, false, "C1 .. C4b"),
        col!("statement", Utf8, false, "the paper's claim"),
        col!(
            "verdict",
            Utf8,
            false,
            "`supported`, `contradicted` or `inconclusive`"
        ),
        col!("rule", Utf8, false, "which rule gave the verdict"),
        col!("seeds", Int64, false, "seeds tested (1 for C1)"),
        col!(
            "tests",
            Int64,
            false,
            "rows of `claim_tests` behind the verdict"
        ),
        col!(
            "effect",
            Float64,
            false,
            "primary test's effect (mean over seeds)"
        ),
        col!(
            "ci_low",
            Float64,
            false,
            "primary test's lower bound (smallest over seeds)"
        ),
        col!(
            "ci_high",
            Float64,
            false,
            "primary test's upper bound (largest over seeds)"
        ),
        col!(
            "p_value",
            Float64,
            true,
            "primary test's p-value (largest over seeds)"
        ),
        col!("n", Int64, false, "primary test's n (per seed)"),
        col!(
            "n_needed",
            Int64,
            true,
            "largest n_needed of an inconclusive test"
        ),
    ],
};

/// `discrimination.parquet`: per evaluated model, refusal on the unsafe contrasts minus
/// refusal on their safe twins (XSTest's pairs), over the pairs both were answered in.
pub const DISCRIMINATION: TableSchema = TableSchema {
    name: "discrimination",
    version: 1,
    columns: &[
        col!("variant", Utf8, false, "evaluated variant"),
        col!("seed", Int64, true, "training seed; null for `base`"),
        col!("n", Int64, false, "twin pairs"),
        col!(
            "refused_contrast",
            Float64,
            false,
            "refusal rate on the unsafe contrasts"
        ),
        col!(
            "refused_safe",
            Float64,
            false,
            "refusal rate on their safe twins"
        ),
        col!(
            "discrimination",
            Float64,
            false,
            "refused_contrast − refused_safe (1: refuses exactly the unsafe twin)"
        ),
        col!(
            "ci_low",
            Float64,
            false,
            "95% pair-bootstrap interval, lower bound"
        ),
        col!(
            "ci_high",
            Float64,
            false,
            "95% pair-bootstrap interval, upper bound"
        ),
        col!(
            "p_value",
            Float64,
            false,
            "two-sided exact McNemar p (contrast vs safe twin)"
        ),
    ],
};

/// `frontier_tests.parquet`: per seed, a variant's safety/over-refusal frontier against
/// `rr`'s: over-refusal compared at matched ASR (docs/claims.md). Written when the eval stage
/// wrote `frontier_generations.parquet`.
pub const FRONTIER_TESTS: TableSchema = TableSchema {
    name: "frontier_tests",
    version: 1,
    columns: &[
        col!(
            "seed",
            Int64,
            false,
            "training seed of both lines' adapters"
        ),
        col!(
            "variant",
            Utf8,
            false,
            "line A (mosr, rr_weights, rr_augment)"
        ),
        col!("reference", Utf8, false, "line B (`rr`)"),
        col!(
            "points_variant",
            Int64,
            false,
            "points on A's line: base, each snapshot step, the final adapter"
        ),
        col!("points_reference", Int64, false, "points on B's line"),
        col!(
            "harmful_n",
            Int64,
            false,
            "harmful prompts behind each point's ASR (direct requests)"
        ),
        col!(
            "overrefusal_n",
            Int64,
            false,
            "over-refusal prompts behind each point's refusal rate (the pooled sets)"
        ),
        col!(
            "asr_low",
            Float64,
            true,
            "lower end of the ASR range both lines cover; null when they share none"
        ),
        col!(
            "asr_high",
            Float64,
            true,
            "upper end of that range; null when they share none"
        ),
        col!(
            "grid",
            Int64,
            false,
            "ASR values the difference is averaged over"
        ),
        col!(
            "effect",
            Float64,
            true,
            "mean over the grid of A's minus B's interpolated refusal rate; null without overlap"
        ),
        col!(
            "ci_low",
            Float64,
            true,
            "95% paired prompt-bootstrap interval, lower bound"
        ),
        col!(
            "ci_high",
            Float64,
            true,
            "95% paired prompt-bootstrap interval, upper bound"
        ),
        col!(
            "resamples",
            Int64,
            false,
            "bootstrap draws in the interval (draws whose lines no longer overlapped are left out)"
        ),
        col!(
            "note",
            Utf8,
            true,
            "why the test is inconclusive without an effect (no ASR overlap); null otherwise"
        ),
    ],
};

/// The tables of the claims stage (`frontier_tests` only when the evaluation has a frontier).
pub const CLAIMS_TABLES: [&TableSchema; 6] = [
    &PAIRED_TESTS,
    &BOUNDARY_TESTS,
    &CLAIM_TESTS,
    &CLAIMS,
    &DISCRIMINATION,
    &FRONTIER_TESTS,
];

/// A column of a table being written: the values in row order.
pub enum Column {
    Str(Vec<String>),
    F64(Vec<f64>),
    OptF64(Vec<Option<f64>>),
    I64(Vec<i64>),
    OptI64(Vec<Option<i64>>),
    I32(Vec<i32>),
    Bool(Vec<bool>),
    OptStr(Vec<Option<String>>),
}

impl Column {
    fn array(self) -> ArrayRef {
        match self {
            Column::Str(v) => Arc::new(StringArray::from(v)),
            Column::F64(v) => Arc::new(Float64Array::from(v)),
            Column::OptF64(v) => Arc::new(Float64Array::from(v)),
            Column::I64(v) => Arc::new(Int64Array::from(v)),
            Column::OptI64(v) => Arc::new(Int64Array::from(v)),
            Column::I32(v) => Arc::new(Int32Array::from(v)),
            Column::Bool(v) => Arc::new(BooleanArray::from(v)),
            Column::OptStr(v) => Arc::new(StringArray::from(v)),
        }
    }
}

/// Writes `columns` (in the table's column order) as `table` to `path`; arrow checks every
/// column's type and nullability against the schema.
pub fn write_columns(path: &Path, table: &TableSchema, columns: Vec<Column>) -> Result<()> {
    let arrays: Vec<ArrayRef> = columns.into_iter().map(Column::array).collect();
    let batch =
        RecordBatch::try_new(table.arrow_schema(), arrays).map_err(|e| Error::arrow(path, e))?;
    write_parquet(path, table.arrow_schema(), &[batch])
}

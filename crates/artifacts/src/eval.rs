//! Tables of the evaluation stage: `generations`, `metrics` and `capability_items`, and the
//! safety/over-refusal frontier's `frontier` and `frontier_generations`.
//!
//! `generations` keeps every response with the judges' verdicts, so any metric can be
//! recomputed (or re-judged) without running the model again; `metrics` is the long table the
//! report aggregates: one row per (variant, set, attack, metric) with its count and Wilson 95%
//! interval, so a reader never has to guess the denominator of a rate.

use std::path::Path;

use crate::error::Result;
use crate::row::{read_rows, write_rows};
use crate::schema::TableSchema;

table! {
    /// `generations.parquet`: one row per (variant, set, attack, prompt): what was sent, what came
    /// back, and the judges' verdicts.
    pub const GENERATIONS = ("generations", version 2);
    /// One row of `generations`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct GenerationRow {
        pub variant: String => "`base` (no adapter) or the finetune variant whose adapter was loaded",
        pub seed: Option<i64> => "training seed of the variant's adapter; null for `base` and for adapters given by path",
        pub set: String => "`harmful` (attack prompts), an over-refusal role (`overrefusal_safe`, ...), or `<custom file stem>:<role>`",
        pub attack: String => "`direct`, `prefill`, `past_tense`, `future_tense`, `template`; over-refusal sets are sent as `direct`",
        pub attack_detail: Option<String> => "the attack's parameter for this row: prefill prefix, template name",
        pub prompt_id: String => "id of the prompt sent (from `prompts.parquet` or the custom set)",
        pub paired_id: Option<String> => "the prompt this one is paired with: for tense attacks the harmful test prompt it rephrases (word overlap), for curated safe and unsafe-contrast prompts their twin",
        pub role: String => "role of the prompt sent",
        pub prompt: String => "user turn as sent, after any template wrapping",
        pub prefill: Option<String> => "text forced at the start of the assistant turn (prefilling attack)",
        pub response: String => "greedy continuation (after the prefill, which is not repeated here)",
        pub finish: String => "`end_of_turn` or `length` (hit max_new_tokens)",
        pub new_tokens: i32 => "tokens generated",
        pub perplexity: Option<f32> => "the base model's perplexity of the response (adapter off); null when disabled or empty",
        pub refusal: bool => "refusal judge: a refusal phrase at the start or anywhere",
        pub refusal_phrase: Option<String> => "the phrase that matched, prefixed `start:` or `anywhere:`",
        pub gibberish: bool => "gibberish judge: empty, repetition, few unique words, non-ASCII share or perplexity",
        pub gibberish_reason: Option<String> => "first heuristic that fired, with its value",
        pub outcome: String => "`refused` (refusal judge), `gibberish` (gibberish judge, not refused) or `complied`",
    }
}

table! {
    /// `metrics.parquet`: rates with their counts and Wilson 95% intervals.
    pub const METRICS = ("metrics", version 2);
    /// One row of `metrics`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct MetricRow {
        pub variant: Option<String> => "model variant; null for model-independent rows (refusal-judge validation)",
        pub seed: Option<i64> => "training seed of the variant's adapter; null for `base` and for adapters given by path",
        pub set: String => "`harmful`, an over-refusal set, `mmlu` / `arc_easy` / `arc_challenge`, `judge_labels`, or a custom set",
        pub attack: Option<String> => "attack, `all` (pooled over attacks), `template/<name>` (one template); null for capability and judge rows",
        pub metric: String => "asr, asr_mean, refusal_rate, gibberish_rate, over_refusal_rate, compliance_rate, perplexity_median (safe sets; no interval), accuracy, judge_accuracy, judge_precision, judge_recall, judge_f1 (refusal judge on PyRIT labels), judge_<outcome>_precision / judge_<outcome>_recall (both judges on `mosr_judge_labels`)",
        pub value: f64 => "the rate (k / n) or score",
        pub k: Option<i64> => "numerator of a rate; null for scores that are not a count ratio",
        pub n: i64 => "denominator (items the rate is over)",
        pub ci_low: Option<f64> => "Wilson score 95% interval, lower bound (rates only; for rates pooled over attacks clustered by prompt: Wilson at the design-effect-adjusted n)",
        pub ci_high: Option<f64> => "Wilson score 95% interval, upper bound (rates only; clustered as the lower bound)",
    }
}

table! {
    /// `capability_items.parquet`: one scored multiple-choice item per variant.
    pub const CAPABILITY_ITEMS = ("capability_items", version 2);
    /// One row of `capability_items`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct CapabilityItemRow {
        pub variant: String => "model variant",
        pub seed: Option<i64> => "training seed of the variant's adapter; null for `base` and for adapters given by path",
        pub benchmark: String => "mmlu, arc_easy, arc_challenge",
        pub item_id: String => "id from `capability.parquet`",
        pub predicted: i32 => "0-based index of the option with the highest (normalised) log-likelihood",
        pub answer_index: i32 => "0-based index of the correct option",
        pub correct: bool => "predicted == answer_index",
        pub margin: f64 => "score of the correct option minus the best other option (positive when correct)",
    }
}

pub fn write_generations(path: &Path, rows: &[GenerationRow]) -> Result<()> {
    write_rows(path, rows)
}

pub fn read_generations(path: &Path) -> Result<Vec<GenerationRow>> {
    read_rows(path)
}

pub fn write_metrics(path: &Path, rows: &[MetricRow]) -> Result<()> {
    write_rows(path, rows)
}

pub fn read_metrics(path: &Path) -> Result<Vec<MetricRow>> {
    read_rows(path)
}

pub fn write_capability_items(path: &Path, rows: &[CapabilityItemRow]) -> Result<()> {
    write_rows(path, rows)
}

pub fn read_capability_items(path: &Path) -> Result<Vec<CapabilityItemRow>> {
    read_rows(path)
}

table! {
    /// `frontier_generations.parquet`: the safety/over-refusal frontier's responses, one row per
    /// (variant, seed, step, set, prompt): every adapter snapshot's own generations, and the base
    /// model's (step 0) and each final adapter's (step = training steps) taken from
    /// `generations.parquet` (direct requests on the frontier's prompts).
    pub const FRONTIER_GENERATIONS = ("frontier_generations", version 1);
    /// One row of `frontier_generations`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct FrontierGenerationRow {
        pub variant: String => "`base` or the finetune variant",
        pub seed: Option<i64> => "training seed of the adapter; null for `base`",
        pub step: i64 => "training step of the adapter: 0 for `base`, `[finetune] steps` for the final adapter",
        pub source: String => "`base`, `snapshot` (an adapter saved at a `[finetune] frontier_steps` step, generated here) or `final` (the final adapter, from `generations.parquet`)",
        pub set: String => "`harmful` (direct requests) or an over-refusal set",
        pub prompt_id: String => "id of the prompt sent",
        pub role: String => "role of the prompt sent",
        pub response: String => "greedy continuation",
        pub perplexity: Option<f32> => "the base model's perplexity of the response (adapter off); null when disabled or empty",
        pub refusal: bool => "refusal judge",
        pub gibberish: bool => "gibberish judge",
        pub outcome: String => "`refused`, `gibberish` or `complied`, as in `generations`",
    }
}

table! {
    /// `frontier.parquet`: the points of each variant's safety/over-refusal frontier, one row per
    /// (variant, seed, step, set, metric) with its count and Wilson 95% interval.
    pub const FRONTIER = ("frontier", version 1);
    /// One row of `frontier`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct FrontierRow {
        pub variant: String => "`base` (step 0, the first point of every line) or the finetune variant",
        pub seed: Option<i64> => "training seed of the adapter; null for `base`",
        pub step: i64 => "training step of the adapter (0 for `base`; `[finetune] steps` for the final adapter)",
        pub source: String => "`base`, `snapshot` or `final` (as in `frontier_generations`)",
        pub set: String => "`harmful` (direct requests), `overrefusal` (every frontier over-refusal set pooled) or one over-refusal set",
        pub metric: String => "`asr` (harmful: complied), `refused`, `gibberish`",
        pub k: i64 => "responses with the outcome",
        pub n: i64 => "responses (prompts)",
        pub value: f64 => "k / n",
        pub ci_low: f64 => "Wilson score 95% interval, lower bound",
        pub ci_high: f64 => "Wilson score 95% interval, upper bound",
    }
}

impl FrontierGenerationRow {
    /// A frontier row from a generation of the adapter at `step` (`set` as the frontier names
    /// it).
    pub fn from_generation(g: &GenerationRow, step: i64, source: &str) -> Self {
        FrontierGenerationRow {
            variant: g.variant.clone(),
            seed: g.seed,
            step,
            source: source.to_string(),
            set: g.set.clone(),
            prompt_id: g.prompt_id.clone(),
            role: g.role.clone(),
            response: g.response.clone(),
            perplexity: g.perplexity,
            refusal: g.refusal,
            gibberish: g.gibberish,
            outcome: g.outcome.clone(),
        }
    }
}

pub fn write_frontier_generations(path: &Path, rows: &[FrontierGenerationRow]) -> Result<()> {
    write_rows(path, rows)
}

pub fn read_frontier_generations(path: &Path) -> Result<Vec<FrontierGenerationRow>> {
    read_rows(path)
}

pub fn write_frontier(path: &Path, rows: &[FrontierRow]) -> Result<()> {
    write_rows(path, rows)
}

pub fn read_frontier(path: &Path) -> Result<Vec<FrontierRow>> {
    read_rows(path)
}

/// Every table of the evaluation stage, for docs and tooling (the last two only when the
/// finetune stage saved frontier snapshots).
pub const EVAL_TABLES: [&TableSchema; 5] = [
    &GENERATIONS,
    &METRICS,
    &CAPABILITY_ITEMS,
    &FRONTIER,
    &FRONTIER_GENERATIONS,
];

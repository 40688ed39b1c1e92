//! Tables of the evaluation stage: `generations`, `metrics` and `capability_items`, and the
//! safety/over-refusal frontier's `frontier` and `frontier_generations`.
//!
//! `generations` keeps every response with the judges' verdicts, so any metric can be
//! recomputed (or re-judged) without running the model again; `metrics` is the long table the
//! report aggregates: one row per (variant, set, attack, metric) with its count and Wilson 95%
//! interval, so a reader never has to guess the denominator of a rate.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array,
    RecordBatch, StringArray,
};
use arrow::datatypes::{Float32Type, Float64Type, Int32Type, Int64Type};

use crate::error::{Error, Result};
use crate::parquet_io::{read_table, write_parquet};
use crate::schema::TableSchema;

/// `generations.parquet`: one row per (variant, set, attack, prompt): what was sent, what came
/// back, and the judges' verdicts.
pub const GENERATIONS: TableSchema = TableSchema {
    name: "generations",
    version: 2,
    columns: &[
        col!(
            "variant",
            Utf8,
            false,
            "`base` (no adapter) or the finetune variant whose adapter was loaded"
        ),
        col!(
            "seed",
            Int64,
            true,
            "training seed of the variant's adapter; null for `base` and for adapters given by path"
        ),
        col!(
            "set",
            Utf8,
            false,
            "`harmful` (attack prompts), an over-refusal role (`overrefusal_safe`, ...), or `<custom file stem>:<role>`"
        ),
        col!(
            "attack",
            Utf8,
            false,
            "`direct`, `prefill`, `past_tense`, `future_tense`, `template`; over-refusal sets are sent as `direct`"
        ),
        col!(
            "attack_detail",
            Utf8,
            true,
            "the attack's parameter for this row: prefill prefix, template name"
        ),
        col!(
            "prompt_id",
            Utf8,
            false,
            "id of the prompt sent (from `prompts.parquet` or the custom set)"
        ),
        col!(
            "paired_id",
            Utf8,
            true,
            "the prompt this one is paired with: for tense attacks the harmful test prompt it rephrases (word overlap), for curated safe and unsafe-contrast prompts their twin"
        ),
        col!("role", Utf8, false, "role of the prompt sent"),
        col!(
            "prompt",
            Utf8,
            false,
            "user turn as sent, after any template wrapping"
        ),
        col!(
            "prefill",
            Utf8,
            true,
            "text forced at the start of the assistant turn (prefilling attack)"
        ),
        col!(
            "response",
            Utf8,
            false,
            "greedy continuation (after the prefill, which is not repeated here)"
        ),
        col!(
            "finish",
            Utf8,
            false,
            "`end_of_turn` or `length` (hit max_new_tokens)"
        ),
        col!("new_tokens", Int32, false, "tokens generated"),
        col!(
            "perplexity",
            Float32,
            true,
            "the base model's perplexity of the response (adapter off); null when disabled or empty"
        ),
        col!(
            "refusal",
            Bool,
            false,
            "refusal judge: a refusal phrase at the start or anywhere"
        ),
        col!(
            "refusal_phrase",
            Utf8,
            true,
            "the phrase that matched, prefixed `start:` or `anywhere:`"
        ),
        col!(
            "gibberish",
            Bool,
            false,
            "gibberish judge: empty, repetition, few unique words, non-ASCII share or perplexity"
        ),
        col!(
            "gibberish_reason",
            Utf8,
            true,
            "first heuristic that fired, with its value"
        ),
        col!(
            "outcome",
            Utf8,
            false,
            "`refused` (refusal judge), `gibberish` (gibberish judge, not refused) or `complied`"
        ),
    ],
};

/// `metrics.parquet`: rates with their counts and Wilson 95% intervals.
pub const METRICS: TableSchema = TableSchema {
    name: "metrics",
    version: 2,
    columns: &[
        col!(
            "variant",
            Utf8,
            true,
            "model variant; null for model-independent rows (refusal-judge validation)"
        ),
        col!(
            "seed",
            Int64,
            true,
            "training seed of the variant's adapter; null for `base` and for adapters given by path"
        ),
        col!(
            "set",
            Utf8,
            false,
            "`harmful`, an over-refusal set, `mmlu` / `arc_easy` / `arc_challenge`, `judge_labels`, or a custom set"
        ),
        col!(
            "attack",
            Utf8,
            true,
            "attack, `all` (pooled over attacks), `template/<name>` (one template); null for capability and judge rows"
        ),
        col!(
            "metric",
            Utf8,
            false,
            "asr, asr_mean, refusal_rate, gibberish_rate, over_refusal_rate, compliance_rate, perplexity_median (safe sets; no interval), accuracy, judge_accuracy, judge_precision, judge_recall, judge_f1 (refusal judge on PyRIT labels), judge_<outcome>_precision / judge_<outcome>_recall (both judges on `mosr_judge_labels`)"
        ),
        col!("value", Float64, false, "the rate (k / n) or score"),
        col!(
            "k",
            Int64,
            true,
            "numerator of a rate; null for scores that are not a count ratio"
        ),
        col!("n", Int64, false, "denominator (items the rate is over)"),
        col!(
            "ci_low",
            Float64,
            true,
            "Wilson score 95% interval, lower bound (rates only; for rates pooled over attacks clustered by prompt: Wilson at the design-effect-adjusted n)"
        ),
        col!(
            "ci_high",
            Float64,
            true,
            "Wilson score 95% interval, upper bound (rates only; clustered as the lower bound)"
        ),
    ],
};

/// `capability_items.parquet`: one scored multiple-choice item per variant.
pub const CAPABILITY_ITEMS: TableSchema = TableSchema {
    name: "capability_items",
    version: 2,
    columns: &[
        col!("variant", Utf8, false, "model variant"),
        col!(
            "seed",
            Int64,
            true,
            "training seed of the variant's adapter; null for `base` and for adapters given by path"
        ),
        col!("benchmark", Utf8, false, "mmlu, arc_easy, arc_challenge"),
        col!("item_id", Utf8, false, "id from `capability.parquet`"),
        col!(
            "predicted",
            Int32,
            false,
            "0-based index of the option with the highest (normalised) log-likelihood"
        ),
        col!(
            "answer_index",
            Int32,
            false,
            "0-based index of the correct option"
        ),
        col!("correct", Bool, false, "predicted == answer_index"),
        col!(
            "margin",
            Float64,
            false,
            "score of the correct option minus the best other option (positive when correct)"
        ),
    ],
};

/// One row of `generations`.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRow {
    pub variant: String,
    pub seed: Option<i64>,
    pub set: String,
    pub attack: String,
    pub attack_detail: Option<String>,
    pub prompt_id: String,
    pub paired_id: Option<String>,
    pub role: String,
    pub prompt: String,
    pub prefill: Option<String>,
    pub response: String,
    pub finish: String,
    pub new_tokens: i32,
    pub perplexity: Option<f32>,
    pub refusal: bool,
    pub refusal_phrase: Option<String>,
    pub gibberish: bool,
    pub gibberish_reason: Option<String>,
    pub outcome: String,
}

/// One row of `metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    pub variant: Option<String>,
    pub seed: Option<i64>,
    pub set: String,
    pub attack: Option<String>,
    pub metric: String,
    pub value: f64,
    pub k: Option<i64>,
    pub n: i64,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
}

/// One row of `capability_items`.
#[derive(Debug, Clone, PartialEq)]
pub struct CapabilityItemRow {
    pub variant: String,
    pub seed: Option<i64>,
    pub benchmark: String,
    pub item_id: String,
    pub predicted: i32,
    pub answer_index: i32,
    pub correct: bool,
    pub margin: f64,
}

fn strings<'a, T: 'a>(rows: &'a [T], f: impl Fn(&'a T) -> &'a str) -> ArrayRef {
    Arc::new(rows.iter().map(|r| Some(f(r))).collect::<StringArray>())
}

fn opt_strings<'a, T: 'a>(rows: &'a [T], f: impl Fn(&'a T) -> Option<&'a str>) -> ArrayRef {
    Arc::new(rows.iter().map(f).collect::<StringArray>())
}

fn seeds<T>(rows: &[T], f: impl Fn(&T) -> Option<i64>) -> ArrayRef {
    Arc::new(rows.iter().map(f).collect::<Int64Array>())
}

fn bools<T>(rows: &[T], f: impl Fn(&T) -> bool) -> ArrayRef {
    Arc::new(rows.iter().map(|r| Some(f(r))).collect::<BooleanArray>())
}

fn i64s<T>(rows: &[T], f: impl Fn(&T) -> i64) -> ArrayRef {
    Arc::new(rows.iter().map(|r| Some(f(r))).collect::<Int64Array>())
}

fn f64s<T>(rows: &[T], f: impl Fn(&T) -> f64) -> ArrayRef {
    Arc::new(rows.iter().map(|r| Some(f(r))).collect::<Float64Array>())
}

fn batch(table: &TableSchema, path: &Path, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    RecordBatch::try_new(table.arrow_schema(), columns).map_err(|e| Error::arrow(path, e))
}

pub fn write_generations(path: &Path, rows: &[GenerationRow]) -> Result<()> {
    let b = batch(
        &GENERATIONS,
        path,
        vec![
            strings(rows, |r| &r.variant),
            seeds(rows, |r| r.seed),
            strings(rows, |r| &r.set),
            strings(rows, |r| &r.attack),
            opt_strings(rows, |r| r.attack_detail.as_deref()),
            strings(rows, |r| &r.prompt_id),
            opt_strings(rows, |r| r.paired_id.as_deref()),
            strings(rows, |r| &r.role),
            strings(rows, |r| &r.prompt),
            opt_strings(rows, |r| r.prefill.as_deref()),
            strings(rows, |r| &r.response),
            strings(rows, |r| &r.finish),
            Arc::new(
                rows.iter()
                    .map(|r| Some(r.new_tokens))
                    .collect::<Int32Array>(),
            ),
            Arc::new(rows.iter().map(|r| r.perplexity).collect::<Float32Array>()),
            bools(rows, |r| r.refusal),
            opt_strings(rows, |r| r.refusal_phrase.as_deref()),
            bools(rows, |r| r.gibberish),
            opt_strings(rows, |r| r.gibberish_reason.as_deref()),
            strings(rows, |r| &r.outcome),
        ],
    )?;
    write_parquet(path, GENERATIONS.arrow_schema(), &[b])
}

/// Column accessors over a conformed batch (types are canonical after `conform`).
struct Cols<'a>(&'a RecordBatch);

impl<'a> Cols<'a> {
    fn str(&self, name: &str) -> &'a StringArray {
        self.0.column_by_name(name).expect("conformed").as_string()
    }
    fn get(&self, name: &str, i: usize) -> String {
        self.str(name).value(i).to_string()
    }
    fn opt(&self, name: &str, i: usize) -> Option<String> {
        let a = self.str(name);
        a.is_valid(i).then(|| a.value(i).to_string())
    }
    fn seed(&self, i: usize) -> Option<i64> {
        let a = self
            .0
            .column_by_name("seed")
            .expect("conformed")
            .as_primitive::<Int64Type>();
        a.is_valid(i).then(|| a.value(i))
    }
    fn i64(&self, name: &str) -> &'a arrow::array::PrimitiveArray<Int64Type> {
        self.0
            .column_by_name(name)
            .expect("conformed")
            .as_primitive::<Int64Type>()
    }
    fn bool(&self, name: &str, i: usize) -> bool {
        self.0
            .column_by_name(name)
            .expect("conformed")
            .as_boolean()
            .value(i)
    }
}

pub fn read_generations(path: &Path) -> Result<Vec<GenerationRow>> {
    let mut out = Vec::new();
    for b in read_table(path, &GENERATIONS)? {
        let c = Cols(&b);
        let toks = b
            .column_by_name("new_tokens")
            .expect("conformed")
            .as_primitive::<Int32Type>();
        let ppl = b
            .column_by_name("perplexity")
            .expect("conformed")
            .as_primitive::<Float32Type>();
        for i in 0..b.num_rows() {
            out.push(GenerationRow {
                variant: c.get("variant", i),
                seed: c.seed(i),
                set: c.get("set", i),
                attack: c.get("attack", i),
                attack_detail: c.opt("attack_detail", i),
                prompt_id: c.get("prompt_id", i),
                paired_id: c.opt("paired_id", i),
                role: c.get("role", i),
                prompt: c.get("prompt", i),
                prefill: c.opt("prefill", i),
                response: c.get("response", i),
                finish: c.get("finish", i),
                new_tokens: toks.value(i),
                perplexity: ppl.is_valid(i).then(|| ppl.value(i)),
                refusal: c.bool("refusal", i),
                refusal_phrase: c.opt("refusal_phrase", i),
                gibberish: c.bool("gibberish", i),
                gibberish_reason: c.opt("gibberish_reason", i),
                outcome: c.get("outcome", i),
            });
        }
    }
    Ok(out)
}

pub fn write_metrics(path: &Path, rows: &[MetricRow]) -> Result<()> {
    let b = batch(
        &METRICS,
        path,
        vec![
            opt_strings(rows, |r| r.variant.as_deref()),
            seeds(rows, |r| r.seed),
            strings(rows, |r| &r.set),
            opt_strings(rows, |r| r.attack.as_deref()),
            strings(rows, |r| &r.metric),
            f64s(rows, |r| r.value),
            Arc::new(rows.iter().map(|r| r.k).collect::<Int64Array>()),
            i64s(rows, |r| r.n),
            Arc::new(rows.iter().map(|r| r.ci_low).collect::<Float64Array>()),
            Arc::new(rows.iter().map(|r| r.ci_high).collect::<Float64Array>()),
        ],
    )?;
    write_parquet(path, METRICS.arrow_schema(), &[b])
}

pub fn read_metrics(path: &Path) -> Result<Vec<MetricRow>> {
    let mut out = Vec::new();
    for b in read_table(path, &METRICS)? {
        let c = Cols(&b);
        let f64col = |name: &str| {
            b.column_by_name(name)
                .expect("conformed")
                .as_primitive::<Float64Type>()
                .clone()
        };
        let i64col = |name: &str| {
            b.column_by_name(name)
                .expect("conformed")
                .as_primitive::<Int64Type>()
                .clone()
        };
        let (value, lo, hi) = (f64col("value"), f64col("ci_low"), f64col("ci_high"));
        let (k, n) = (i64col("k"), i64col("n"));
        for i in 0..b.num_rows() {
            out.push(MetricRow {
                variant: c.opt("variant", i),
                seed: c.seed(i),
                set: c.get("set", i),
                attack: c.opt("attack", i),
                metric: c.get("metric", i),
                value: value.value(i),
                k: k.is_valid(i).then(|| k.value(i)),
                n: n.value(i),
                ci_low: lo.is_valid(i).then(|| lo.value(i)),
                ci_high: hi.is_valid(i).then(|| hi.value(i)),
            });
        }
    }
    Ok(out)
}

pub fn write_capability_items(path: &Path, rows: &[CapabilityItemRow]) -> Result<()> {
    let b = batch(
        &CAPABILITY_ITEMS,
        path,
        vec![
            strings(rows, |r| &r.variant),
            seeds(rows, |r| r.seed),
            strings(rows, |r| &r.benchmark),
            strings(rows, |r| &r.item_id),
            Arc::new(
                rows.iter()
                    .map(|r| Some(r.predicted))
                    .collect::<Int32Array>(),
            ),
            Arc::new(
                rows.iter()
                    .map(|r| Some(r.answer_index))
                    .collect::<Int32Array>(),
            ),
            bools(rows, |r| r.correct),
            f64s(rows, |r| r.margin),
        ],
    )?;
    write_parquet(path, CAPABILITY_ITEMS.arrow_schema(), &[b])
}

pub fn read_capability_items(path: &Path) -> Result<Vec<CapabilityItemRow>> {
    let mut out = Vec::new();
    for b in read_table(path, &CAPABILITY_ITEMS)? {
        let c = Cols(&b);
        let i32col = |name: &str| {
            b.column_by_name(name)
                .expect("conformed")
                .as_primitive::<Int32Type>()
                .clone()
        };
        let (pred, ans) = (i32col("predicted"), i32col("answer_index"));
        let margin = b
            .column_by_name("margin")
            .expect("conformed")
            .as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            out.push(CapabilityItemRow {
                variant: c.get("variant", i),
                seed: c.seed(i),
                benchmark: c.get("benchmark", i),
                item_id: c.get("item_id", i),
                predicted: pred.value(i),
                answer_index: ans.value(i),
                correct: c.bool("correct", i),
                margin: margin.value(i),
            });
        }
    }
    Ok(out)
}

/// `frontier_generations.parquet`: the safety/over-refusal frontier's responses, one row per
/// (variant, seed, step, set, prompt): every adapter snapshot's own generations, and the base
/// model's (step 0) and each final adapter's (step = training steps) taken from
/// `generations.parquet` (direct requests on the frontier's prompts).
pub const FRONTIER_GENERATIONS: TableSchema = TableSchema {
    name: "frontier_generations",
    version: 1,
    columns: &[
        col!("variant", Utf8, false, "`base` or the finetune variant"),
        col!(
            "seed",
            Int64,
            true,
            "training seed of the adapter; null for `base`"
        ),
        col!(
            "step",
            Int64,
            false,
            "training step of the adapter: 0 for `base`, `[finetune] steps` for the final adapter"
        ),
        col!(
            "source",
            Utf8,
            false,
            "`base`, `snapshot` (an adapter saved at a `[finetune] frontier_steps` step, generated here) or `final` (the final adapter, from `generations.parquet`)"
        ),
        col!(
            "set",
            Utf8,
            false,
            "`harmful` (direct requests) or an over-refusal set"
        ),
        col!("prompt_id", Utf8, false, "id of the prompt sent"),
        col!("role", Utf8, false, "role of the prompt sent"),
        col!("response", Utf8, false, "greedy continuation"),
        col!(
            "perplexity",
            Float32,
            true,
            "the base model's perplexity of the response (adapter off); null when disabled or empty"
        ),
        col!("refusal", Bool, false, "refusal judge"),
        col!("gibberish", Bool, false, "gibberish judge"),
        col!(
            "outcome",
            Utf8,
            false,
            "`refused`, `gibberish` or `complied`, as in `generations`"
        ),
    ],
};

/// `frontier.parquet`: the points of each variant's safety/over-refusal frontier, one row per
/// (variant, seed, step, set, metric) with its count and Wilson 95% interval.
pub const FRONTIER: TableSchema = TableSchema {
    name: "frontier",
    version: 1,
    columns: &[
        col!(
            "variant",
            Utf8,
            false,
            "`base` (step 0, the first point of every line) or the finetune variant"
        ),
        col!(
            "seed",
            Int64,
            true,
            "training seed of the adapter; null for `base`"
        ),
        col!(
            "step",
            Int64,
            false,
            "training step of the adapter (0 for `base`; `[finetune] steps` for the final adapter)"
        ),
        col!(
            "source",
            Utf8,
            false,
            "`base`, `snapshot` or `final` (as in `frontier_generations`)"
        ),
        col!(
            "set",
            Utf8,
            false,
            "`harmful` (direct requests), `overrefusal` (every frontier over-refusal set pooled) or one over-refusal set"
        ),
        col!(
            "metric",
            Utf8,
            false,
            "`asr` (harmful: complied), `refused`, `gibberish`"
        ),
        col!("k", Int64, false, "responses with the outcome"),
        col!("n", Int64, false, "responses (prompts)"),
        col!("value", Float64, false, "k / n"),
        col!(
            "ci_low",
            Float64,
            false,
            "Wilson score 95% interval, lower bound"
        ),
        col!(
            "ci_high",
            Float64,
            false,
            "Wilson score 95% interval, upper bound"
        ),
    ],
};

/// One row of `frontier_generations`.
#[derive(Debug, Clone, PartialEq)]
pub struct FrontierGenerationRow {
    pub variant: String,
    pub seed: Option<i64>,
    pub step: i64,
    pub source: String,
    pub set: String,
    pub prompt_id: String,
    pub role: String,
    pub response: String,
    pub perplexity: Option<f32>,
    pub refusal: bool,
    pub gibberish: bool,
    pub outcome: String,
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

/// One row of `frontier`.
#[derive(Debug, Clone, PartialEq)]
pub struct FrontierRow {
    pub variant: String,
    pub seed: Option<i64>,
    pub step: i64,
    pub source: String,
    pub set: String,
    pub metric: String,
    pub k: i64,
    pub n: i64,
    pub value: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

pub fn write_frontier_generations(path: &Path, rows: &[FrontierGenerationRow]) -> Result<()> {
    let b = batch(
        &FRONTIER_GENERATIONS,
        path,
        vec![
            strings(rows, |r| &r.variant),
            seeds(rows, |r| r.seed),
            i64s(rows, |r| r.step),
            strings(rows, |r| &r.source),
            strings(rows, |r| &r.set),
            strings(rows, |r| &r.prompt_id),
            strings(rows, |r| &r.role),
            strings(rows, |r| &r.response),
            Arc::new(rows.iter().map(|r| r.perplexity).collect::<Float32Array>()),
            bools(rows, |r| r.refusal),
            bools(rows, |r| r.gibberish),
            strings(rows, |r| &r.outcome),
        ],
    )?;
    write_parquet(path, FRONTIER_GENERATIONS.arrow_schema(), &[b])
}

pub fn read_frontier_generations(path: &Path) -> Result<Vec<FrontierGenerationRow>> {
    let mut out = Vec::new();
    for b in read_table(path, &FRONTIER_GENERATIONS)? {
        let c = Cols(&b);
        let step = c.i64("step");
        let ppl = b
            .column_by_name("perplexity")
            .expect("conformed")
            .as_primitive::<Float32Type>();
        for i in 0..b.num_rows() {
            out.push(FrontierGenerationRow {
                variant: c.get("variant", i),
                seed: c.seed(i),
                step: step.value(i),
                source: c.get("source", i),
                set: c.get("set", i),
                prompt_id: c.get("prompt_id", i),
                role: c.get("role", i),
                response: c.get("response", i),
                perplexity: ppl.is_valid(i).then(|| ppl.value(i)),
                refusal: c.bool("refusal", i),
                gibberish: c.bool("gibberish", i),
                outcome: c.get("outcome", i),
            });
        }
    }
    Ok(out)
}

pub fn write_frontier(path: &Path, rows: &[FrontierRow]) -> Result<()> {
    let b = batch(
        &FRONTIER,
        path,
        vec![
            strings(rows, |r| &r.variant),
            seeds(rows, |r| r.seed),
            i64s(rows, |r| r.step),
            strings(rows, |r| &r.source),
            strings(rows, |r| &r.set),
            strings(rows, |r| &r.metric),
            i64s(rows, |r| r.k),
            i64s(rows, |r| r.n),
            f64s(rows, |r| r.value),
            f64s(rows, |r| r.ci_low),
            f64s(rows, |r| r.ci_high),
        ],
    )?;
    write_parquet(path, FRONTIER.arrow_schema(), &[b])
}

pub fn read_frontier(path: &Path) -> Result<Vec<FrontierRow>> {
    let mut out = Vec::new();
    for b in read_table(path, &FRONTIER)? {
        let c = Cols(&b);
        let (step, k, n) = (c.i64("step"), c.i64("k"), c.i64("n"));
        let f = |name: &str| {
            b.column_by_name(name)
                .expect("conformed")
                .as_primitive::<Float64Type>()
                .clone()
        };
        let (value, lo, hi) = (f("value"), f("ci_low"), f("ci_high"));
        for i in 0..b.num_rows() {
            out.push(FrontierRow {
                variant: c.get("variant", i),
                seed: c.seed(i),
                step: step.value(i),
                source: c.get("source", i),
                set: c.get("set", i),
                metric: c.get("metric", i),
                k: k.value(i),
                n: n.value(i),
                value: value.value(i),
                ci_low: lo.value(i),
                ci_high: hi.value(i),
            });
        }
    }
    Ok(out)
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

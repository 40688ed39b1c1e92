//! Tables of the training stages (augment, weights, finetune).
//!
//! * `training_examples`: every sequence the fine-tune sees, with the set it belongs to
//!   (harmful -> erasure branch, retain, augmented -> retain or cross-entropy branch) and where
//!   its response came from, so a run can be audited without re-generating anything.
//! * `overlap_weights`: one row per harmful training example: its overlap score s_i, its erasure
//!   weight w_i and the pseudo-malicious bank prompts it is closest to, so a user can see why an
//!   example was down-weighted.
//! * `train_log`: one row per optimizer step of one fine-tune variant.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int32Array, Int64Array, ListBuilder, RecordBatch,
    StringArray, StringBuilder,
};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type};

use crate::error::{Error, Result};
use crate::parquet_io::{read_table, write_parquet};
use crate::schema::TableSchema;

/// `training_examples.parquet` (augment stage).
pub const TRAINING_EXAMPLES: TableSchema = TableSchema {
    name: "training_examples",
    version: 1,
    columns: &[
        col!(
            "example_id",
            Utf8,
            false,
            "stable id: `<set>-<prompt_id>[-<n>]`"
        ),
        col!(
            "set",
            Utf8,
            false,
            "`harmful` (erasure branch), `retain`, or `augmented` (context-aware augmentation)"
        ),
        col!("prompt_id", Utf8, false, "id from `prompts.parquet`"),
        col!(
            "prompt_role",
            Utf8,
            false,
            "role of the prompt (harmful, benign, pseudo_malicious)"
        ),
        col!("prompt", Utf8, false, "the user turn"),
        col!(
            "response",
            Utf8,
            false,
            "the assistant turn as trained on (augmented: harmful prefix followed by the refusal)"
        ),
        col!(
            "response_source",
            Utf8,
            false,
            "`self` (the model's greedy answer), `prefill:<n>` (driven by harmful prefix n), `template:<n>` or `model` (refusal of an augmented example)"
        ),
        col!(
            "harmful_prefix",
            Utf8,
            true,
            "augmented: the first k tokens of the harmful response, decoded"
        ),
        col!(
            "prefix_tokens",
            Int32,
            true,
            "augmented: k (0 with probability p, else uniform in 1..K, capped by the response length)"
        ),
        col!(
            "refusal",
            Utf8,
            true,
            "augmented: the refusal text that follows the prefix"
        ),
        col!(
            "loss_branch",
            Utf8,
            false,
            "`erasure`, `retain` or `cross_entropy` (augmented examples, on the refusal tokens)"
        ),
    ],
};

/// `overlap_weights.parquet` (weights stage).
pub const OVERLAP_WEIGHTS: TableSchema = TableSchema {
    name: "overlap_weights",
    version: 1,
    columns: &[
        col!(
            "example_id",
            Utf8,
            false,
            "harmful example id from `training_examples.parquet`"
        ),
        col!("prompt_id", Utf8, false, "its prompt id"),
        col!(
            "overlap_score",
            Float64,
            false,
            "s_i: aggregate (mean, max or top-k mean) over the pseudo-malicious bank of the cosine similarity in the frozen model's representation space"
        ),
        col!(
            "weight",
            Float64,
            false,
            "w_i: erasure weight, decreasing in s_i, mean 1 over the harmful set (after optional clipping)"
        ),
        col!(
            "nearest_bank_ids",
            ListUtf8,
            false,
            "prompt ids of the most similar pseudo-malicious bank prompts, most similar first"
        ),
        col!(
            "nearest_similarity",
            Float64,
            false,
            "cosine similarity to the most similar bank prompt"
        ),
    ],
};

/// `train_log.parquet` (finetune stage, one per variant).
pub const TRAIN_LOG: TableSchema = TableSchema {
    name: "train_log",
    version: 2,
    columns: &[
        col!("step", Int64, false, "optimizer step t, 1-based"),
        col!(
            "loss",
            Float64,
            false,
            "c_erase * erasure + c_retain * retain + the augmented examples' term"
        ),
        col!(
            "erasure_loss",
            Float64,
            false,
            "weighted ReLU(cos(h_lora, h_orig)) at the target layers over the loss tokens (finetune loss_tokens)"
        ),
        col!(
            "retain_loss",
            Float64,
            false,
            "mean per-token distance of h_lora and h_orig over the retain layers on the benign retain rows"
        ),
        col!(
            "augment_loss",
            Float64,
            true,
            "the augmented examples' own term before augment_coeff: their retain distance (augment target retain_states, added under c_retain) or Qi et al.'s alpha * CE(refusal) + (1 - alpha) * CE(benign retain answers) (refusal_lm); null without augmentation"
        ),
        col!("c_erase", Float64, false, "alpha * (1 - t / 2T)"),
        col!("c_retain", Float64, false, "alpha * t / 2T"),
        col!(
            "grad_norm",
            Float64,
            false,
            "global L2 norm of the adapter gradient before clipping"
        ),
        col!("learning_rate", Float64, false, "AdamW learning rate"),
        col!(
            "tokens",
            Int64,
            false,
            "real (non-padding) tokens in the step's batches"
        ),
        col!(
            "tokens_per_s",
            Float64,
            false,
            "throughput of the step (wall clock; the only non-deterministic column)"
        ),
    ],
};

/// Every table of this module, for docs and tooling.
pub const TRAINING_TABLES: [&TableSchema; 3] = [&TRAINING_EXAMPLES, &OVERLAP_WEIGHTS, &TRAIN_LOG];

/// One row of `training_examples`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingExample {
    pub example_id: String,
    /// `harmful`, `retain` or `augmented`.
    pub set: String,
    pub prompt_id: String,
    pub prompt_role: String,
    pub prompt: String,
    pub response: String,
    pub response_source: String,
    pub harmful_prefix: Option<String>,
    pub prefix_tokens: Option<i32>,
    pub refusal: Option<String>,
    /// `erasure`, `retain` or `cross_entropy`.
    pub loss_branch: String,
}

/// One row of `overlap_weights`.
#[derive(Debug, Clone, PartialEq)]
pub struct OverlapWeightRow {
    pub example_id: String,
    pub prompt_id: String,
    pub overlap_score: f64,
    pub weight: f64,
    pub nearest_bank_ids: Vec<String>,
    pub nearest_similarity: f64,
}

/// One row of `train_log`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainLogRow {
    pub step: i64,
    pub loss: f64,
    pub erasure_loss: f64,
    pub retain_loss: f64,
    /// The augmented examples' term (see the column); None without augmentation.
    pub augment_loss: Option<f64>,
    pub c_erase: f64,
    pub c_retain: f64,
    pub grad_norm: f64,
    pub learning_rate: f64,
    pub tokens: i64,
    pub tokens_per_s: f64,
}

const SETS: [&str; 3] = ["harmful", "retain", "augmented"];
const BRANCHES: [&str; 3] = ["erasure", "retain", "cross_entropy"];

fn strings<'a, T: 'a>(rows: &'a [T], f: impl Fn(&'a T) -> &'a str) -> ArrayRef {
    Arc::new(rows.iter().map(|r| Some(f(r))).collect::<StringArray>())
}

fn opt_strings<'a, T: 'a>(rows: &'a [T], f: impl Fn(&'a T) -> Option<&'a str>) -> ArrayRef {
    Arc::new(rows.iter().map(f).collect::<StringArray>())
}

fn f64s<T>(rows: &[T], f: impl Fn(&T) -> f64) -> ArrayRef {
    Arc::new(rows.iter().map(|r| Some(f(r))).collect::<Float64Array>())
}

fn batch(table: &TableSchema, path: &Path, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    RecordBatch::try_new(table.arrow_schema(), columns).map_err(|e| Error::arrow(path, e))
}

fn str_col<'a>(b: &'a RecordBatch, name: &str) -> &'a StringArray {
    b.column_by_name(name)
        .expect("conformed")
        .as_string::<i32>()
}

fn opt_str(a: &StringArray, i: usize) -> Option<String> {
    a.is_valid(i).then(|| a.value(i).to_string())
}

fn f64_col<'a>(b: &'a RecordBatch, name: &str) -> &'a arrow::array::PrimitiveArray<Float64Type> {
    b.column_by_name(name)
        .expect("conformed")
        .as_primitive::<Float64Type>()
}

pub fn write_training_examples(path: &Path, rows: &[TrainingExample]) -> Result<()> {
    for r in rows {
        if !SETS.contains(&r.set.as_str()) {
            return Err(Error::schema(
                path,
                "training_examples",
                "set",
                format!("unknown set `{}` (example {})", r.set, r.example_id),
            ));
        }
    }
    let b = batch(
        &TRAINING_EXAMPLES,
        path,
        vec![
            strings(rows, |r| &r.example_id),
            strings(rows, |r| &r.set),
            strings(rows, |r| &r.prompt_id),
            strings(rows, |r| &r.prompt_role),
            strings(rows, |r| &r.prompt),
            strings(rows, |r| &r.response),
            strings(rows, |r| &r.response_source),
            opt_strings(rows, |r| r.harmful_prefix.as_deref()),
            Arc::new(rows.iter().map(|r| r.prefix_tokens).collect::<Int32Array>()),
            opt_strings(rows, |r| r.refusal.as_deref()),
            strings(rows, |r| &r.loss_branch),
        ],
    )?;
    write_parquet(path, TRAINING_EXAMPLES.arrow_schema(), &[b])
}

/// Reads and validates `training_examples`: unknown sets or branches and duplicate ids are
/// schema errors naming the file.
pub fn read_training_examples(path: &Path) -> Result<Vec<TrainingExample>> {
    let mut out: Vec<TrainingExample> = Vec::new();
    for b in read_table(path, &TRAINING_EXAMPLES)? {
        let k = b
            .column_by_name("prefix_tokens")
            .expect("conformed")
            .as_primitive::<Int32Type>();
        for i in 0..b.num_rows() {
            let row = TrainingExample {
                example_id: str_col(&b, "example_id").value(i).to_string(),
                set: str_col(&b, "set").value(i).to_string(),
                prompt_id: str_col(&b, "prompt_id").value(i).to_string(),
                prompt_role: str_col(&b, "prompt_role").value(i).to_string(),
                prompt: str_col(&b, "prompt").value(i).to_string(),
                response: str_col(&b, "response").value(i).to_string(),
                response_source: str_col(&b, "response_source").value(i).to_string(),
                harmful_prefix: opt_str(str_col(&b, "harmful_prefix"), i),
                prefix_tokens: k.is_valid(i).then(|| k.value(i)),
                refusal: opt_str(str_col(&b, "refusal"), i),
                loss_branch: str_col(&b, "loss_branch").value(i).to_string(),
            };
            if !SETS.contains(&row.set.as_str()) {
                return Err(Error::schema(
                    path,
                    "training_examples",
                    "set",
                    format!("unknown set `{}` (example {})", row.set, row.example_id),
                ));
            }
            if !BRANCHES.contains(&row.loss_branch.as_str()) {
                return Err(Error::schema(
                    path,
                    "training_examples",
                    "loss_branch",
                    format!(
                        "unknown branch `{}` (example {})",
                        row.loss_branch, row.example_id
                    ),
                ));
            }
            out.push(row);
        }
    }
    let mut ids = std::collections::HashSet::new();
    for r in &out {
        if !ids.insert(r.example_id.as_str()) {
            return Err(Error::schema(
                path,
                "training_examples",
                "example_id",
                format!("duplicate id `{}`", r.example_id),
            ));
        }
    }
    Ok(out)
}

pub fn write_overlap_weights(path: &Path, rows: &[OverlapWeightRow]) -> Result<()> {
    let mut near = ListBuilder::new(StringBuilder::new());
    for r in rows {
        for id in &r.nearest_bank_ids {
            near.values().append_value(id);
        }
        near.append(true);
    }
    let b = batch(
        &OVERLAP_WEIGHTS,
        path,
        vec![
            strings(rows, |r| &r.example_id),
            strings(rows, |r| &r.prompt_id),
            f64s(rows, |r| r.overlap_score),
            f64s(rows, |r| r.weight),
            Arc::new(near.finish()),
            f64s(rows, |r| r.nearest_similarity),
        ],
    )?;
    write_parquet(path, OVERLAP_WEIGHTS.arrow_schema(), &[b])
}

/// Reads `overlap_weights`; a weight that is not finite and positive is a schema error.
pub fn read_overlap_weights(path: &Path) -> Result<Vec<OverlapWeightRow>> {
    let mut out = Vec::new();
    for b in read_table(path, &OVERLAP_WEIGHTS)? {
        let near = b
            .column_by_name("nearest_bank_ids")
            .expect("conformed")
            .as_list::<i32>();
        for i in 0..b.num_rows() {
            let list = near.value(i);
            let items = list.as_string::<i32>();
            let row = OverlapWeightRow {
                example_id: str_col(&b, "example_id").value(i).to_string(),
                prompt_id: str_col(&b, "prompt_id").value(i).to_string(),
                overlap_score: f64_col(&b, "overlap_score").value(i),
                weight: f64_col(&b, "weight").value(i),
                nearest_bank_ids: (0..items.len())
                    .map(|j| items.value(j).to_string())
                    .collect(),
                nearest_similarity: f64_col(&b, "nearest_similarity").value(i),
            };
            if !(row.weight.is_finite() && row.weight >= 0.0) {
                return Err(Error::schema(
                    path,
                    "overlap_weights",
                    "weight",
                    format!(
                        "weight {} of example {} is not a finite non-negative number",
                        row.weight, row.example_id
                    ),
                ));
            }
            out.push(row);
        }
    }
    Ok(out)
}

pub fn write_train_log(path: &Path, rows: &[TrainLogRow]) -> Result<()> {
    let b = batch(
        &TRAIN_LOG,
        path,
        vec![
            Arc::new(rows.iter().map(|r| Some(r.step)).collect::<Int64Array>()),
            f64s(rows, |r| r.loss),
            f64s(rows, |r| r.erasure_loss),
            f64s(rows, |r| r.retain_loss),
            Arc::new(
                rows.iter()
                    .map(|r| r.augment_loss)
                    .collect::<Float64Array>(),
            ),
            f64s(rows, |r| r.c_erase),
            f64s(rows, |r| r.c_retain),
            f64s(rows, |r| r.grad_norm),
            f64s(rows, |r| r.learning_rate),
            Arc::new(rows.iter().map(|r| Some(r.tokens)).collect::<Int64Array>()),
            f64s(rows, |r| r.tokens_per_s),
        ],
    )?;
    write_parquet(path, TRAIN_LOG.arrow_schema(), &[b])
}

pub fn read_train_log(path: &Path) -> Result<Vec<TrainLogRow>> {
    let mut out = Vec::new();
    for b in read_table(path, &TRAIN_LOG)? {
        let i64c = |n: &str| {
            b.column_by_name(n)
                .expect("conformed")
                .as_primitive::<Int64Type>()
                .clone()
        };
        let (step, tokens) = (i64c("step"), i64c("tokens"));
        let aug = f64_col(&b, "augment_loss");
        for i in 0..b.num_rows() {
            out.push(TrainLogRow {
                step: step.value(i),
                loss: f64_col(&b, "loss").value(i),
                erasure_loss: f64_col(&b, "erasure_loss").value(i),
                retain_loss: f64_col(&b, "retain_loss").value(i),
                augment_loss: aug.is_valid(i).then(|| aug.value(i)),
                c_erase: f64_col(&b, "c_erase").value(i),
                c_retain: f64_col(&b, "c_retain").value(i),
                grad_norm: f64_col(&b, "grad_norm").value(i),
                learning_rate: f64_col(&b, "learning_rate").value(i),
                tokens: tokens.value(i),
                tokens_per_s: f64_col(&b, "tokens_per_s").value(i),
            });
        }
    }
    Ok(out)
}

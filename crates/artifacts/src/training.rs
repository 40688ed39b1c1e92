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

use crate::error::{Error, Result};
use crate::row::{read_rows, write_rows};
use crate::schema::TableSchema;

table! {
    /// `training_examples.parquet` (augment stage).
    pub const TRAINING_EXAMPLES = ("training_examples", version 1);
    /// One row of `training_examples`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct TrainingExample {
        pub example_id: String => "stable id: `<set>-<prompt_id>[-<n>]`",
        pub set: String => "`harmful` (erasure branch), `retain`, or `augmented` (context-aware augmentation)",
        pub prompt_id: String => "id from `prompts.parquet`",
        pub prompt_role: String => "role of the prompt (harmful, benign, pseudo_malicious)",
        pub prompt: String => "the user turn",
        pub response: String => "the assistant turn as trained on (augmented: harmful prefix followed by the refusal)",
        pub response_source: String => "`self` (the model's greedy answer), `prefill:<n>` (driven by harmful prefix n), `template:<n>` or `model` (refusal of an augmented example)",
        pub harmful_prefix: Option<String> => "augmented: the first k tokens of the harmful response, decoded",
        pub prefix_tokens: Option<i32> => "augmented: k (0 with probability p, else uniform in 1..K, capped by the response length)",
        pub refusal: Option<String> => "augmented: the refusal text that follows the prefix",
        pub loss_branch: String => "`erasure`, `retain` or `cross_entropy` (augmented examples, on the refusal tokens)",
    }
}

table! {
    /// `overlap_weights.parquet` (weights stage).
    pub const OVERLAP_WEIGHTS = ("overlap_weights", version 1);
    /// One row of `overlap_weights`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct OverlapWeightRow {
        pub example_id: String => "harmful example id from `training_examples.parquet`",
        pub prompt_id: String => "its prompt id",
        pub overlap_score: f64 => "s_i: aggregate (mean, max or top-k mean) over the pseudo-malicious bank of the cosine similarity in the frozen model's representation space",
        pub weight: f64 => "w_i: erasure weight, decreasing in s_i, mean 1 over the harmful set (after optional clipping)",
        pub nearest_bank_ids: Vec<String> => "prompt ids of the most similar pseudo-malicious bank prompts, most similar first",
        pub nearest_similarity: f64 => "cosine similarity to the most similar bank prompt",
    }
}

table! {
    /// `train_log.parquet` (finetune stage, one per variant).
    pub const TRAIN_LOG = ("train_log", version 2);
    /// One row of `train_log`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct TrainLogRow {
        pub step: i64 => "optimizer step t, 1-based",
        pub loss: f64 => "c_erase * erasure + c_retain * retain + the augmented examples' term",
        pub erasure_loss: f64 => "weighted ReLU(cos(h_lora, h_orig)) at the target layers over the loss tokens (finetune loss_tokens)",
        pub retain_loss: f64 => "mean per-token distance of h_lora and h_orig over the retain layers on the benign retain rows",
        pub augment_loss: Option<f64> => "the augmented examples' own term before augment_coeff: their retain distance (augment target retain_states, added under c_retain) or Qi et al.'s alpha * CE(refusal) + (1 - alpha) * CE(benign retain answers) (refusal_lm); null without augmentation",
        pub c_erase: f64 => "alpha * (1 - t / 2T)",
        pub c_retain: f64 => "alpha * t / 2T",
        pub grad_norm: f64 => "global L2 norm of the adapter gradient before clipping",
        pub learning_rate: f64 => "AdamW learning rate",
        pub tokens: i64 => "real (non-padding) tokens in the step's batches",
        pub tokens_per_s: f64 => "throughput of the step (wall clock; the only non-deterministic column)",
    }
}

/// Every table of this module, for docs and tooling.
pub const TRAINING_TABLES: [&TableSchema; 3] = [&TRAINING_EXAMPLES, &OVERLAP_WEIGHTS, &TRAIN_LOG];

const SETS: [&str; 3] = ["harmful", "retain", "augmented"];
const BRANCHES: [&str; 3] = ["erasure", "retain", "cross_entropy"];

/// A `training_examples` row outside the known sets or loss branches, named.
fn check_example(path: &Path, r: &TrainingExample) -> Result<()> {
    let bad = |column, what: String| {
        let problem = format!("{what} (example {})", r.example_id);
        Err(Error::schema(path, "training_examples", column, problem))
    };
    if !SETS.contains(&r.set.as_str()) {
        return bad("set", format!("unknown set `{}`", r.set));
    }
    if !BRANCHES.contains(&r.loss_branch.as_str()) {
        return bad("loss_branch", format!("unknown branch `{}`", r.loss_branch));
    }
    Ok(())
}

pub fn write_training_examples(path: &Path, rows: &[TrainingExample]) -> Result<()> {
    rows.iter().try_for_each(|r| check_example(path, r))?;
    write_rows(path, rows)
}

/// Reads and validates `training_examples`: unknown sets or branches and duplicate ids are
/// schema errors naming the file.
pub fn read_training_examples(path: &Path) -> Result<Vec<TrainingExample>> {
    let out: Vec<TrainingExample> = read_rows(path)?;
    out.iter().try_for_each(|r| check_example(path, r))?;
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
    write_rows(path, rows)
}

/// Reads `overlap_weights`; a weight that is not finite and positive is a schema error.
pub fn read_overlap_weights(path: &Path) -> Result<Vec<OverlapWeightRow>> {
    let out: Vec<OverlapWeightRow> = read_rows(path)?;
    if let Some(row) = out
        .iter()
        .find(|r| !(r.weight.is_finite() && r.weight >= 0.0))
    {
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
    Ok(out)
}

pub fn write_train_log(path: &Path, rows: &[TrainLogRow]) -> Result<()> {
    write_rows(path, rows)
}

pub fn read_train_log(path: &Path) -> Result<Vec<TrainLogRow>> {
    read_rows(path)
}

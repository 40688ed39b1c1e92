//! Tables of the analysis stages (extract, probe, logit-lens).
//!
//! `representations` is the hand-off between the frozen model and everything that looks at its
//! hidden states: the probe, the boundary picture, and the overlap weights of training. It is
//! long (one row per prompt and layer) so that a reader can load one layer without the others.

use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::atomic::write_atomic;
use crate::error::{Error, Result};
use crate::parquet_io::write_parquet;
use crate::schema::TableSchema;
use crate::tables::{Role, Split};

table! {
    /// `representations.parquet`: the residual stream of every extracted layer for every prompt.
    /// Layer 0 is the embedding output; layer `l` (1..=L) is the output of block `l`.
    pub const REPRESENTATIONS = ("representations", version 1);
    /// One row of `representations`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct RepresentationRow {
        pub prompt_id: String => "id from `prompts.parquet`",
        pub role: Role => "the prompt's role (copied so a layer loads without a join)",
        pub split: Split => "the prompt's split",
        pub layer: i32 => "0 = embedding output, l = output of block l (1-based)",
        pub position_kind: String => "`last_prompt_token` (the token before the assistant's first token) or `mean_prompt`",
        pub vector: Vec<f32> => "the hidden state (width = hidden size), float32",
    }
}

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

table! {
    /// `probe_weights.parquet`: the fitted probe of every layer, with its solver report.
    /// `p(malicious | h) = sigmoid(weight . ((h - feature_mean) / feature_std) + bias)`.
    pub const PROBE_WEIGHTS = ("probe_weights", version 1);
    /// One row of `probe_weights`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct ProbeWeightRow {
        pub layer: i32 => "layer of `representations`",
        pub weight: Vec<f32> => "weights on standardised features",
        pub bias: f64 => "intercept (not penalised)",
        pub feature_mean: Vec<f32> => "per-feature mean of the training set",
        pub feature_std: Vec<f32> => "per-feature standard deviation of the training set (a zero is stored as 1)",
        pub l2: f64 => "L2 strength on the mean log-loss",
        pub iterations: i32 => "L-BFGS iterations used",
        pub converged: bool => "gradient norm fell below the tolerance",
        pub grad_norm: f64 => "final gradient max-norm",
        pub train_loss: f64 => "final regularised mean log-loss",
        pub n_train: i64 => "training prompts (benign + malicious)",
    }
}

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

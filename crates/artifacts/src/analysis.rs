//! Tables of the analysis stages (extract, probe, logit-lens).
//!
//! `representations` is the hand-off between the frozen model and everything that looks at its
//! hidden states: the probe, the boundary picture, and the overlap weights of training. It is
//! long (one row per prompt and layer) so that a reader can load one layer without the others.

use crate::schema::{ColType, ColumnSpec, TableSchema};

macro_rules! col {
    ($name:literal, $ty:ident, $nullable:literal, $doc:literal) => {
        ColumnSpec {
            name: $name,
            ty: ColType::$ty,
            nullable: $nullable,
            doc: $doc,
        }
    };
}

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

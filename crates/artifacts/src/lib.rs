//! mosr-artifacts: the one crate that owns every on-disk format of mosr.
//!
//! Stages never call each other; they meet only through the files defined here. Keeping every
//! Parquet schema, the run-folder layout, content hashes, atomic writes and stage manifests in
//! one place means a schema change is one edit, and every reader validates what it loads.
//!
//! * [`atomic`]: write-to-temp, fsync, rename, for any file.
//! * [`hash`]: sha256 of files and bytes (input hashes, output keys, pins).
//! * [`parquet_io`]: zstd Parquet writer and a reader that validates and normalises types
//!   (Utf8View/LargeUtf8 to Utf8, LargeList to List, as polars writes them).
//! * [`schema`]: column specs of every table, validation naming the file and the column.
//! * [`tables`]: typed rows for the `prompts`, `capability` and `judge_labels` tables.
//! * [`eval`]: the evaluation stage's `generations`, `metrics` and `capability_items` tables.
//! * [`claims`]: the claims stage's paired tests, boundary tests, claim tests and verdicts.
//! * [`manifest`]: the JSON manifest every stage writes next to its outputs.
//! * [`run_dir`]: `runs/<pipeline>/<stage>/`, the stage key, resumable partial folders.
//! * [`pipeline`]: pipeline TOML files: the `[run]` section and per-stage sections.
//! * [`analysis`]: tables of the analysis stages and streaming/resumable table writing.
//! * [`svg`]: small SVG line plots for reports.

/// Declares a table once: its schema constant and its row type, whose fields are the columns in
/// file order (`field: Type => "meaning"`; `Option` fields are the nullable columns), with
/// [`row::Row`] implemented so [`row::write_rows`] and [`row::read_rows`] serve it.
macro_rules! table {
    (
        $(#[$tmeta:meta])*
        pub const $TABLE:ident = ($name:literal, version $version:literal);
        $(#[$rmeta:meta])*
        pub struct $Row:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty => $doc:literal, )*
        }
    ) => {
        $(#[$tmeta])*
        pub const $TABLE: $crate::schema::TableSchema = $crate::schema::TableSchema {
            name: $name,
            version: $version,
            columns: &[$(
                $crate::schema::ColumnSpec {
                    name: stringify!($field),
                    ty: <$ty as $crate::row::Cell>::TY,
                    nullable: <$ty as $crate::row::Cell>::NULLABLE,
                    doc: $doc,
                },
            )*],
        };

        $(#[$rmeta])*
        pub struct $Row {
            $( #[doc = $doc] $(#[$fmeta])* pub $field: $ty, )*
        }

        impl $crate::row::Row for $Row {
            const TABLE: &'static $crate::schema::TableSchema = &$TABLE;
            fn columns(
                rows: &[Self],
            ) -> std::result::Result<Vec<arrow::array::ArrayRef>, (&'static str, String)> {
                Ok(vec![$(
                    <$ty as $crate::row::Cell>::column(rows.iter().map(|r| &r.$field))
                        .map_err(|e| (stringify!($field), e))?,
                )*])
            }
            fn from_batch(
                batch: &arrow::array::RecordBatch,
            ) -> std::result::Result<Vec<Self>, (&'static str, String)> {
                $(
                    let column = batch.column_by_name(stringify!($field)).expect("conformed");
                    let mut $field = <$ty as $crate::row::Cell>::values(column.as_ref())
                        .map_err(|e| (stringify!($field), e))?
                        .into_iter();
                )*
                Ok((0..batch.num_rows())
                    .map(|_| Self { $( $field: $field.next().expect("one value per row"), )* })
                    .collect())
            }
        }
    };
}

pub mod analysis;
pub mod atomic;
pub mod claims;
pub mod error;
pub mod eval;
pub mod hash;
pub mod manifest;
pub mod parquet_io;
pub mod pipeline;
pub mod row;
pub mod run_dir;
pub mod schema;
pub mod svg;
pub mod tables;
pub mod training;

pub use atomic::{write_atomic, write_bytes_atomic};
pub use error::{Error, Result};
pub use hash::{sha256_bytes, sha256_file};
pub use manifest::{StageManifest, code_version, now_rfc3339};
pub use parquet_io::{read_parquet_raw, read_table, write_parquet};
pub use pipeline::{PipelineFile, RunSection, Size};
pub use run_dir::{
    RunDir, RunLock, StageWork, instance_dir, list_instances, list_snapshots, snapshot_dir,
    stage_key,
};
pub use schema::{ColType, ColumnSpec, TableSchema};
pub use tables::{
    CapabilityRow, JudgeLabelRow, PromptRow, Role, Split, read_capability, read_judge_labels,
    read_prompts, write_capability, write_judge_labels, write_prompts,
};

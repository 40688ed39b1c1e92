//! One error type whose messages always name the file involved.

use std::path::{Path, PathBuf};

/// Errors of artifact I/O. Every variant carries the path, so a failing stage says which file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: parquet: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{path}: arrow: {source}")]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("{path}: json: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A table does not match its schema: missing column, wrong type, nulls in a required
    /// column, or a value outside its vocabulary.
    #[error("{path}: table `{table}`, column `{column}`: {reason}")]
    Schema {
        path: PathBuf,
        table: String,
        column: String,
        reason: String,
    },
    /// A pipeline file that does not parse or validate; `at` names the section/key and line.
    #[error("{path}: {at}: {reason}")]
    Pipeline {
        path: PathBuf,
        at: String,
        reason: String,
    },
    /// A stage input that is missing or belongs to another run.
    #[error("{path}: {reason}")]
    Stage { path: PathBuf, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub(crate) fn arrow(path: &Path, source: arrow::error::ArrowError) -> Self {
        Error::Arrow {
            path: path.to_path_buf(),
            source,
        }
    }
    pub(crate) fn parquet(path: &Path, source: parquet::errors::ParquetError) -> Self {
        Error::Parquet {
            path: path.to_path_buf(),
            source,
        }
    }
    pub(crate) fn schema(
        path: &Path,
        table: &str,
        column: &str,
        reason: impl Into<String>,
    ) -> Self {
        Error::Schema {
            path: path.to_path_buf(),
            table: table.to_string(),
            column: column.to_string(),
            reason: reason.into(),
        }
    }
}

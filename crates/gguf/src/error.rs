//! The crate's single error type.
//!
//! Every variant carries the path of the file involved, because the model crate loads several
//! files (weights, tokenizer, templates) and an error such as "truncated" is useless without
//! knowing which one. Buffers that did not come from disk are named by a placeholder path.

use std::path::{Path, PathBuf};

use crate::GgmlType;

/// Path used in errors for data that does not come from a file (see [`crate::dequantize`]).
pub const IN_MEMORY: &str = "<in-memory buffer>";

/// Everything that can go wrong reading, validating, dequantising or writing GGUF data.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// An operating-system error while opening, mapping, reading or writing.
    #[error("{}: {op} failed: {source}", file.display())]
    Io {
        /// What was being attempted ("open", "mmap", "write", ...).
        op: &'static str,
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The first four bytes are not `GGUF`.
    #[error(
        "{}: not a GGUF file: magic bytes are {found:02x?}, expected \"GGUF\" [47, 47, 55, 46]",
        file.display()
    )]
    BadMagic { found: [u8; 4], file: PathBuf },

    /// A version other than 2 or 3 (version 1 used 32-bit counts and is long obsolete).
    #[error(
        "{}: unsupported GGUF version {version} (0x{version:08x}); supported: 2 and 3 \
         (a byte-swapped 2 or 3 means a big-endian file, which is not supported)",
        file.display()
    )]
    UnsupportedVersion { version: u32, file: PathBuf },

    /// `what`, starting at byte `offset`, does not fit in the file.
    #[error(
        "{}: file is truncated: {what}, starting at byte offset {offset}, runs past the end \
         of the file",
        file.display()
    )]
    Truncated {
        what: String,
        offset: u64,
        file: PathBuf,
    },

    /// A tensor's ggml type code is not one ggml has ever assigned (or one it removed).
    #[error("{}: tensor '{tensor}' has unknown ggml type code {code}", file.display())]
    UnknownType {
        code: u32,
        tensor: String,
        file: PathBuf,
    },

    /// A known ggml type for which this crate has no dequantiser.
    #[error(
        "{}: tensor '{tensor}' has ggml type {ty}, which mosr-gguf cannot dequantize",
        file.display()
    )]
    UnsupportedType {
        ty: GgmlType,
        tensor: String,
        file: PathBuf,
    },

    /// No tensor of that name in the file.
    #[error("{}: no tensor named '{tensor}'", file.display())]
    MissingTensor { tensor: String, file: PathBuf },

    /// No metadata key of that name in the file.
    #[error("{}: no metadata key '{key}'", file.display())]
    MissingKey { key: String, file: PathBuf },

    /// A metadata value exists but has a type (or value) the caller cannot use.
    #[error("{}: metadata key '{key}': expected {expected}, found {found}", file.display())]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
        file: PathBuf,
    },

    /// Element counts or byte lengths that do not agree with a tensor's type and shape.
    #[error("{}: tensor '{tensor}': {detail}", file.display())]
    ShapeMismatch {
        tensor: String,
        detail: String,
        file: PathBuf,
    },

    /// Structurally invalid content: bad alignment, duplicate names, too many dimensions,
    /// invalid UTF-8, misaligned tensor offsets, unknown metadata value types, ...
    #[error("{}: invalid GGUF: {what}", file.display())]
    Invalid { what: String, file: PathBuf },
}

impl GgufError {
    /// The file the error is about.
    pub fn file(&self) -> &std::path::Path {
        match self {
            GgufError::Io { file, .. }
            | GgufError::BadMagic { file, .. }
            | GgufError::UnsupportedVersion { file, .. }
            | GgufError::Truncated { file, .. }
            | GgufError::UnknownType { file, .. }
            | GgufError::UnsupportedType { file, .. }
            | GgufError::MissingTensor { file, .. }
            | GgufError::MissingKey { file, .. }
            | GgufError::WrongType { file, .. }
            | GgufError::ShapeMismatch { file, .. }
            | GgufError::Invalid { file, .. } => file,
        }
    }
}

impl GgmlType {
    /// Like [`GgmlType::from_code`], but an unknown code becomes
    /// [`GgufError::UnknownType`] naming the tensor and file.
    pub fn from_u32(code: u32, tensor: &str, file: &Path) -> Result<GgmlType, GgufError> {
        GgmlType::from_code(code).ok_or_else(|| GgufError::UnknownType {
            code,
            tensor: tensor.to_owned(),
            file: file.to_owned(),
        })
    }
}

//! mosr-gguf: read GGUF v2/v3 model files and dequantise their tensors to f32.
//!
//! The paper's models are distributed as llama.cpp GGUF files, often quantised. To run them in
//! our own Rust model code we need exactly what llama.cpp would compute from the same bytes, so
//! this crate:
//!
//! * memory-maps the file and validates it up front ([`GgufFile::open`]): magic, version,
//!   metadata, `general.alignment`, tensor types, and that every tensor's byte range lies inside
//!   the file. Errors ([`GgufError`]) always name the file and the item at fault.
//! * gives typed metadata access that tolerates the integer-width drift seen in real files
//!   (`get_u32` accepts any integer type whose value fits) but refuses real type confusion.
//! * dequantises F32, F16, BF16, F64, I8-I64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K,
//!   Q5_K, Q6_K, Q8_K, IQ4_NL, IQ4_XS and MXFP4 ([`dequantize`]), bit-for-bit equal to gguf-py's
//!   numpy reference (`gguf.quants.dequantize`), which the tests check on fixtures that
//!   `tools/reference/gguf_fixtures.py` generates and on real model files.
//! * splits the integer-coded types into per-group codes, scales and offsets
//!   ([`GgufFile::group_codes`]) for products that keep the codes.
//! * writes small GGUF files ([`GgufWriter`]) so tests can build inputs without Python.
//!
//! Shapes: GGUF stores ggml's `ne` (innermost dimension first); [`TensorInfo::shape`] reverses
//! it to PyTorch order, and dequantised data is row-major in that order.
//!
//! Big-endian GGUF files and GGUF v1 are rejected with [`GgufError::UnsupportedVersion`].

mod codes;
mod dequant;
mod error;
mod file;
mod meta;
mod types;
mod writer;

pub use codes::{Factors, GroupCodes, Stored};
pub use dequant::{BlockAffine, dequantize};
pub use error::{GgufError, IN_MEMORY};
pub use file::{DEFAULT_ALIGNMENT, GGUF_MAGIC, GgufFile, MAX_DIMS, TensorInfo};
pub use meta::MetaValue;
pub use types::{GgmlType, QK_K};
pub use writer::GgufWriter;

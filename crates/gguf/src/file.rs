//! Parsing and validating a GGUF file, and typed access to it.

// Unsafe: the read-only memory map of the file.
#![allow(unsafe_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::dequant::dequantize_ctx;
use crate::meta::{code, scalar_type_name};
use crate::{GgmlType, GgufError, MetaValue};

/// `"GGUF"` as bytes.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Data-section alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;
/// Nesting limit for arrays of arrays, so a hostile file cannot overflow the stack.
const MAX_ARRAY_DEPTH: u32 = 8;

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub ggml_type: GgmlType,
    /// Dimensions as stored (ggml `ne`): `dims[0]` varies fastest. See [`TensorInfo::shape`].
    pub dims: Vec<u64>,
    /// Byte offset of the data, relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// The shape in PyTorch/numpy order (dims reversed), so that the dequantised data is the
    /// row-major array of this shape: a Linear weight `[out, in]` is stored as `ne = [in, out]`.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements (product of the dims; 1 for a scalar).
    pub fn n_elements(&self) -> usize {
        self.dims.iter().map(|&d| d as usize).product()
    }

    /// Encoded size in bytes.
    pub fn n_bytes(&self) -> usize {
        self.n_elements() / self.ggml_type.block_size() * self.ggml_type.type_size()
    }

    /// Elements per row (`dims[0]`); a row is always a whole number of blocks.
    pub fn row_len(&self) -> usize {
        self.dims.first().map_or(1, |&d| d as usize)
    }

    /// Number of rows (product of the dims after the first).
    pub fn n_rows(&self) -> usize {
        self.dims.iter().skip(1).map(|&d| d as usize).product()
    }
}

enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// An open, validated GGUF v2/v3 file (little-endian).
///
/// The file is memory-mapped: metadata is parsed eagerly, tensor data is only touched when asked
/// for, so opening an 8 GB file is cheap. `open` checks everything that later accessors rely
/// on (tensor types known, byte ranges inside the file), so those accessors cannot fail on I/O.
pub struct GgufFile {
    path: PathBuf,
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
    data: Backing,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("file_size", &self.data.bytes().len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-map and validate `path`.
    ///
    /// Like every mmap-based reader, this assumes the file is not modified while open.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let io = |op, source| GgufError::Io {
            op,
            file: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(|e| io("open", e))?;
        let len = file.metadata().map_err(|e| io("stat", e))?.len();
        // Mapping an empty file fails on some platforms; it is invalid anyway, so parse it from
        // an empty buffer to get the usual "truncated" error.
        let data = if len == 0 {
            Backing::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only; the documented contract is that the file is not
            // truncated or rewritten while this GgufFile lives (as with any mmap reader).
            Backing::Mmap(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io("mmap", e))?)
        };
        GgufFile::parse(data, path.to_owned())
    }

    /// Parse a GGUF image held in memory; `name` is used as the path in errors.
    pub fn from_bytes(bytes: Vec<u8>, name: impl Into<PathBuf>) -> Result<GgufFile, GgufError> {
        GgufFile::parse(Backing::Owned(bytes), name.into())
    }

    fn parse(data: Backing, path: PathBuf) -> Result<GgufFile, GgufError> {
        let header = Parser {
            r: Reader {
                buf: data.bytes(),
                pos: 0,
            },
            file: &path,
        }
        .parse()?;
        let index = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            index,
            alignment: header.alignment,
            data_offset: header.data_offset,
            data,
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// Data-section alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Size of the file in bytes.
    pub fn file_size(&self) -> u64 {
        self.data.bytes().len() as u64
    }

    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| GgufError::MissingTensor {
                tensor: name.to_owned(),
                file: self.path.clone(),
            })
    }

    /// Whether a tensor of this name exists.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The tensor's encoded bytes (validated at open to lie inside the file).
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], GgufError> {
        let info = self.tensor_info(name)?;
        Ok(self.bytes_of(info))
    }

    fn bytes_of(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + info.offset) as usize;
        &self.data.bytes()[start..start + info.n_bytes()]
    }

    /// Dequantise a whole tensor to f32, row-major in [`TensorInfo::shape`] order.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self.tensor_info(name)?;
        let mut out = vec![0f32; info.n_elements()];
        self.dequantize_info(info, &mut out)?;
        Ok(out)
    }

    /// The tensor as `d * q` per element plus one offset `m` per block of 32, for the
    /// block-affine types (Q4_1, Q5_1); `None` for every other type. `scaled[i] +
    /// offsets[i / 32]` equals [`Self::dequantize`] bit for bit.
    pub fn block_affine(&self, name: &str) -> Result<Option<crate::BlockAffine>, GgufError> {
        self.split(name, crate::dequant::block_affine)
    }

    /// The tensor as integer codes with one scale and offset per group of 16 or 32
    /// ([`crate::GroupCodes`]); `None` for types without such codes (floats, Q2_K, Q3_K, the
    /// codebook types).
    pub fn group_codes(&self, name: &str) -> Result<Option<crate::GroupCodes>, GgufError> {
        self.split(name, crate::codes::group_codes)
    }

    /// A tensor's bytes through `split(type, bytes, elements)`, once their size is checked
    /// (a wrong size is reported by the full dequantizer, which names the problem).
    fn split<T>(
        &self,
        name: &str,
        split: fn(GgmlType, &[u8], usize) -> Option<T>,
    ) -> Result<Option<T>, GgufError> {
        let info = self.tensor_info(name)?;
        let bytes = self.bytes_of(info);
        if info.ggml_type.bytes_for(info.n_elements()) != Some(bytes.len()) {
            self.dequantize(name)?;
            return Ok(None);
        }
        let out = split(info.ggml_type, bytes, info.n_elements());
        self.release(info);
        Ok(out)
    }

    /// Drops a tensor's pages from this process's resident memory (the page cache keeps
    /// them; a later read faults them back in). A loader turns each tensor into its own copy
    /// (f32 values or codes), so the mapped file would otherwise stay resident beside every
    /// copy: 0.5 GB of the 0.5B model's peak. Whole-tensor reads do it themselves; a reader
    /// of rows calls it after the last. Per-row calls would not do: the kernel maps 64 KB
    /// around each fault, which re-maps the rows before.
    pub fn release_tensor(&self, name: &str) -> Result<(), GgufError> {
        let info = self.tensor_info(name)?;
        self.release(info);
        Ok(())
    }

    fn release(&self, info: &TensorInfo) {
        #[cfg(unix)]
        if let Backing::Mmap(m) = &self.data {
            let start = (self.data_offset + info.offset) as usize;
            // SAFETY: the map is a read-only shared map of a file that is not modified while
            // it is open (`open`'s contract), so MADV_DONTNEED only drops page-table entries:
            // every later read sees the same bytes, faulted in again from the file. Errors
            // (an old kernel) leave the pages resident, which is only memory.
            let _ = unsafe {
                m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, info.n_bytes())
            };
        }
    }

    /// Dequantise a whole tensor into `out`, which must hold exactly `n_elements` values.
    pub fn dequantize_into(&self, name: &str, out: &mut [f32]) -> Result<(), GgufError> {
        let info = self.tensor_info(name)?;
        self.dequantize_info(info, out)
    }

    fn dequantize_info(&self, info: &TensorInfo, out: &mut [f32]) -> Result<(), GgufError> {
        let n = info.n_elements();
        dequantize_ctx(
            info.ggml_type,
            self.bytes_of(info),
            n,
            out,
            &info.name,
            &self.path,
        )?;
        self.release(info);
        Ok(())
    }

    /// Dequantise rows `first..first + count` (a row is `dims[0]` elements), e.g. a few token
    /// embeddings without expanding a 150k x 896 table.
    pub fn dequantize_rows(
        &self,
        name: &str,
        first: usize,
        count: usize,
    ) -> Result<Vec<f32>, GgufError> {
        let (info, bytes) = self.rows_of(name, first, count)?;
        let n = count * info.row_len();
        let mut out = vec![0f32; n];
        dequantize_ctx(info.ggml_type, bytes, n, &mut out, name, &self.path)?;
        Ok(out)
    }

    /// Rows `first..first + count` as [`crate::GroupCodes`] (see [`Self::group_codes`]), so
    /// a loader can build its own layout a few rows at a time instead of holding a second
    /// copy of a whole tensor (then [`Self::release_tensor`] once it has every row).
    pub fn group_codes_rows(
        &self,
        name: &str,
        first: usize,
        count: usize,
    ) -> Result<Option<crate::GroupCodes>, GgufError> {
        let (info, bytes) = self.rows_of(name, first, count)?;
        let n = count * info.row_len();
        if info.ggml_type.bytes_for(n) != Some(bytes.len()) {
            // Rows that are not whole blocks: the full dequantizer names the problem.
            self.dequantize(name)?;
            return Ok(None);
        }
        Ok(crate::codes::group_codes(info.ggml_type, bytes, n))
    }

    /// A tensor's info and the bytes of rows `first..first + count` of it.
    fn rows_of(
        &self,
        name: &str,
        first: usize,
        count: usize,
    ) -> Result<(&TensorInfo, &[u8]), GgufError> {
        let info = self.tensor_info(name)?;
        let rows = info.n_rows();
        if first.checked_add(count).is_none_or(|end| end > rows) {
            return Err(GgufError::ShapeMismatch {
                tensor: name.to_owned(),
                detail: format!(
                    "rows {first}..{} requested, tensor has {rows}",
                    first + count
                ),
                file: self.path.clone(),
            });
        }
        let row_bytes = info.n_bytes() / rows.max(1);
        let bytes = &self.bytes_of(info)[first * row_bytes..(first + count) * row_bytes];
        Ok((info, bytes))
    }

    // ---- typed metadata access -------------------------------------------------------------

    fn require(&self, key: &str) -> Result<&MetaValue, GgufError> {
        self.metadata.get(key).ok_or_else(|| GgufError::MissingKey {
            key: key.to_owned(),
            file: self.path.clone(),
        })
    }

    fn wrong(&self, key: &str, expected: &'static str, found: String) -> GgufError {
        GgufError::WrongType {
            key: key.to_owned(),
            expected,
            found,
            file: self.path.clone(),
        }
    }

    fn int_as<T: TryFrom<i128>>(
        &self,
        key: &str,
        v: &MetaValue,
        expected: &'static str,
        at: Option<usize>,
    ) -> Result<T, GgufError> {
        let place = at.map_or(String::new(), |i| format!(" at index {i}"));
        let i = v
            .as_i128()
            .ok_or_else(|| self.wrong(key, expected, format!("{}{place}", v.type_name())))?;
        T::try_from(i).map_err(|_| {
            self.wrong(
                key,
                expected,
                format!("{} {i}{place}, which is out of range", v.type_name()),
            )
        })
    }

    /// An integer of any stored width, if the value fits in u32.
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        self.int_as(key, self.require(key)?, "an integer fitting u32", None)
    }

    /// An integer of any stored width, if the value fits in u64.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.int_as(key, self.require(key)?, "an integer fitting u64", None)
    }

    /// An integer of any stored width, if the value fits in i64.
    pub fn get_i64(&self, key: &str) -> Result<i64, GgufError> {
        self.int_as(key, self.require(key)?, "an integer fitting i64", None)
    }

    /// An `f32` or `f64` value (f64 rounded to f32).
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        Ok(self.get_f64_inner(key, "f32 or f64")? as f32)
    }

    /// An `f32` or `f64` value.
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        self.get_f64_inner(key, "f32 or f64")
    }

    fn get_f64_inner(&self, key: &str, expected: &'static str) -> Result<f64, GgufError> {
        let v = self.require(key)?;
        v.as_f64()
            .ok_or_else(|| self.wrong(key, expected, v.type_name()))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        let v = self.require(key)?;
        v.as_bool()
            .ok_or_else(|| self.wrong(key, "bool", v.type_name()))
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str()
            .ok_or_else(|| self.wrong(key, "string", v.type_name()))
    }

    fn get_array(&self, key: &str, expected: &'static str) -> Result<&[MetaValue], GgufError> {
        let v = self.require(key)?;
        v.as_array()
            .ok_or_else(|| self.wrong(key, expected, v.type_name()))
    }

    /// An array of strings (e.g. `tokenizer.ggml.tokens`), borrowed.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        const EXPECTED: &str = "array of strings";
        let items = self.get_array(key, EXPECTED)?;
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().ok_or_else(|| {
                    self.wrong(key, EXPECTED, format!("{} at index {i}", v.type_name()))
                })
            })
            .collect()
    }

    /// An array of integers that each fit i32 (e.g. `tokenizer.ggml.token_type`).
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>, GgufError> {
        const EXPECTED: &str = "array of integers fitting i32";
        let items = self.get_array(key, EXPECTED)?;
        items
            .iter()
            .enumerate()
            .map(|(i, v)| self.int_as(key, v, EXPECTED, Some(i)))
            .collect()
    }

    /// An array of integers that each fit u32.
    pub fn get_u32_array(&self, key: &str) -> Result<Vec<u32>, GgufError> {
        const EXPECTED: &str = "array of integers fitting u32";
        let items = self.get_array(key, EXPECTED)?;
        items
            .iter()
            .enumerate()
            .map(|(i, v)| self.int_as(key, v, EXPECTED, Some(i)))
            .collect()
    }

    /// An array of f32/f64 values (e.g. `tokenizer.ggml.scores`).
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>, GgufError> {
        const EXPECTED: &str = "array of f32 or f64";
        let items = self.get_array(key, EXPECTED)?;
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_f64().map(|x| x as f32).ok_or_else(|| {
                    self.wrong(key, EXPECTED, format!("{} at index {i}", v.type_name()))
                })
            })
            .collect()
    }

    fn opt<T>(
        &self,
        key: &str,
        get: impl FnOnce() -> Result<T, GgufError>,
    ) -> Result<Option<T>, GgufError> {
        if self.metadata.contains_key(key) {
            get().map(Some)
        } else {
            Ok(None)
        }
    }

    /// `Ok(None)` when absent; an error when present with the wrong type.
    pub fn get_u32_opt(&self, key: &str) -> Result<Option<u32>, GgufError> {
        self.opt(key, || self.get_u32(key))
    }

    pub fn get_u64_opt(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.opt(key, || self.get_u64(key))
    }

    pub fn get_f32_opt(&self, key: &str) -> Result<Option<f32>, GgufError> {
        self.opt(key, || self.get_f32(key))
    }

    pub fn get_bool_opt(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.opt(key, || self.get_bool(key))
    }

    pub fn get_str_opt(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.opt(key, || self.get_str(key))
    }

    pub fn get_str_array_opt(&self, key: &str) -> Result<Option<Vec<&str>>, GgufError> {
        self.opt(key, || self.get_str_array(key))
    }

    pub fn get_i32_array_opt(&self, key: &str) -> Result<Option<Vec<i32>>, GgufError> {
        self.opt(key, || self.get_i32_array(key))
    }

    pub fn get_f32_array_opt(&self, key: &str) -> Result<Option<Vec<f32>>, GgufError> {
        self.opt(key, || self.get_f32_array(key))
    }

    /// `general.architecture`, e.g. `"llama"` or `"qwen2"`.
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.get_str("general.architecture")
    }

    /// `"{architecture}.{suffix}"`, the spelling of per-architecture hyper-parameter keys,
    /// e.g. `arch_key("block_count")` gives `"qwen2.block_count"`.
    pub fn arch_key(&self, suffix: &str) -> Result<String, GgufError> {
        Ok(format!("{}.{suffix}", self.architecture()?))
    }
}

// ---- parsing ---------------------------------------------------------------------------------

/// Where a read ran off the end of the buffer.
struct Short {
    offset: usize,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], Short> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.buf.len() => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => Err(Short { offset: self.pos }),
        }
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Short> {
        Ok(self.take(N)?.try_into().expect("length is N"))
    }

    #[inline]
    fn u32(&mut self) -> Result<u32, Short> {
        self.array().map(u32::from_le_bytes)
    }

    #[inline]
    fn u64(&mut self) -> Result<u64, Short> {
        self.array().map(u64::from_le_bytes)
    }

    /// A GGUF string's bytes (u64 length prefix). On a short read the offset is that of the
    /// missing part, prefix or payload.
    #[inline]
    fn string(&mut self) -> Result<&'a [u8], Short> {
        let len = self.u64()?;
        let len = usize::try_from(len).map_err(|_| Short { offset: self.pos })?;
        self.take(len)
    }
}

struct Header {
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_offset: u64,
}

struct Parser<'a, 'p> {
    r: Reader<'a>,
    file: &'p Path,
}

impl<'a> Parser<'a, '_> {
    fn truncated(&self, s: Short, what: impl FnOnce() -> String) -> GgufError {
        GgufError::Truncated {
            what: what(),
            offset: s.offset as u64,
            file: self.file.to_owned(),
        }
    }

    fn invalid(&self, what: String) -> GgufError {
        GgufError::Invalid {
            what,
            file: self.file.to_owned(),
        }
    }

    fn utf8(&self, bytes: &'a [u8], what: impl FnOnce() -> String) -> Result<&'a str, GgufError> {
        std::str::from_utf8(bytes).map_err(|e| {
            let offset = self.r.pos - bytes.len() + e.valid_up_to();
            self.invalid(format!(
                "{} is not valid UTF-8 (byte offset {offset})",
                what()
            ))
        })
    }

    fn parse(mut self) -> Result<Header, GgufError> {
        let (version, n_tensors, n_kv) = self.preamble()?;
        // Counts come from the file: never pre-allocate more than the remaining bytes could
        // possibly describe (a key-value pair takes at least 12 bytes, a tensor info 24).
        let remaining = self.r.buf.len() - self.r.pos;
        let metadata = self.metadata(n_kv)?;
        let alignment = self.alignment(&metadata)?;
        let cap = usize::try_from(n_tensors)
            .unwrap_or(usize::MAX)
            .min(remaining / 24);
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(cap);
        let mut seen: HashSet<&str> = HashSet::with_capacity(cap);
        for i in 0..n_tensors {
            tensors.push(self.tensor_info(i, alignment, &mut seen)?);
        }
        let end_of_infos = self.r.pos as u64;
        let data_offset = end_of_infos.next_multiple_of(alignment);
        self.check_data(&tensors, data_offset)?;
        Ok(Header {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
        })
    }

    /// Magic, version (2 or 3), tensor count and metadata count.
    fn preamble(&mut self) -> Result<(u32, u64, u64), GgufError> {
        let magic: [u8; 4] = self
            .r
            .array()
            .map_err(|s| self.truncated(s, || "the magic bytes".into()))?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic {
                found: magic,
                file: self.file.to_owned(),
            });
        }
        let version = self
            .r
            .u32()
            .map_err(|s| self.truncated(s, || "the version".into()))?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion {
                version,
                file: self.file.to_owned(),
            });
        }
        let n_tensors = self
            .r
            .u64()
            .map_err(|s| self.truncated(s, || "the tensor count".into()))?;
        let n_kv = self
            .r
            .u64()
            .map_err(|s| self.truncated(s, || "the metadata count".into()))?;
        Ok((version, n_tensors, n_kv))
    }

    /// The `n_kv` metadata entries; a key may appear once.
    fn metadata(&mut self, n_kv: u64) -> Result<BTreeMap<String, MetaValue>, GgufError> {
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = self
                .r
                .string()
                .map_err(|s| self.truncated(s, || format!("the key of metadata entry {i}")))?;
            let key = self.utf8(key, || format!("the key of metadata entry {i}"))?;
            let ty = self
                .r
                .u32()
                .map_err(|s| self.truncated(s, || format!("the value type of metadata '{key}'")))?;
            let value = self.value(ty, key, 0)?;
            if metadata.insert(key.to_owned(), value).is_some() {
                return Err(self.invalid(format!("duplicate metadata key '{key}'")));
            }
        }
        Ok(metadata)
    }

    /// `general.alignment` (a non-zero power of two), else the default.
    fn alignment(&self, metadata: &BTreeMap<String, MetaValue>) -> Result<u64, GgufError> {
        match metadata.get("general.alignment") {
            None => Ok(DEFAULT_ALIGNMENT),
            Some(v) => match v.as_i128() {
                Some(a) if a > 0 && (a as u128).is_power_of_two() && a <= u32::MAX as i128 => {
                    Ok(a as u64)
                }
                _ => Err(self.invalid(format!(
                    "general.alignment must be a non-zero power of two, found {v:?}"
                ))),
            },
        }
    }

    /// Tensor info `i`: name (unique, tracked in `seen`), dims, type and aligned offset, its
    /// element count representable and its rows whole blocks.
    fn tensor_info(
        &mut self,
        i: u64,
        alignment: u64,
        seen: &mut HashSet<&'a str>,
    ) -> Result<TensorInfo, GgufError> {
        let name = self
            .r
            .string()
            .map_err(|s| self.truncated(s, || format!("the name of tensor info {i}")))?;
        let name = self.utf8(name, || format!("the name of tensor info {i}"))?;
        let n_dims = self
            .r
            .u32()
            .map_err(|s| self.truncated(s, || format!("the dimension count of '{name}'")))?;
        if n_dims as usize > MAX_DIMS {
            return Err(self.invalid(format!(
                "tensor '{name}' has {n_dims} dimensions (ggml allows at most {MAX_DIMS})"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            let v = self
                .r
                .u64()
                .map_err(|s| self.truncated(s, || format!("dimension {d} of tensor '{name}'")))?;
            dims.push(v);
        }
        let code = self
            .r
            .u32()
            .map_err(|s| self.truncated(s, || format!("the type of tensor '{name}'")))?;
        let ggml_type = GgmlType::from_u32(code, name, self.file)?;
        let offset = self
            .r
            .u64()
            .map_err(|s| self.truncated(s, || format!("the data offset of '{name}'")))?;
        if !seen.insert(name) {
            return Err(self.invalid(format!("duplicate tensor name '{name}'")));
        }
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64 && usize::try_from(n).is_ok());
        if n_elements.is_none() {
            return Err(self.invalid(format!(
                "tensor '{name}' dims {dims:?} overflow the element count"
            )));
        }
        let row = dims.first().copied().unwrap_or(1);
        if row % ggml_type.block_size() as u64 != 0 {
            return Err(self.invalid(format!(
                "tensor '{name}' has rows of {row} elements, not a multiple of the \
                 {ggml_type} block size {}",
                ggml_type.block_size()
            )));
        }
        if offset % alignment != 0 {
            return Err(self.invalid(format!(
                "tensor '{name}' data offset {offset} is not a multiple of the alignment \
                 {alignment}"
            )));
        }
        Ok(TensorInfo {
            name: name.to_owned(),
            ggml_type,
            dims,
            offset,
        })
    }

    /// Every tensor's data lies inside the file.
    fn check_data(&self, tensors: &[TensorInfo], data_offset: u64) -> Result<(), GgufError> {
        let file_len = self.r.buf.len() as u64;
        for t in tensors {
            let n_bytes = t.n_bytes() as u64;
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(n_bytes));
            match (start, end) {
                (Some(_), Some(end)) if end <= file_len => {}
                (start, _) => {
                    return Err(GgufError::Truncated {
                        what: format!(
                            "the data of tensor '{}' ({n_bytes} bytes of {}; the file has \
                             {file_len} bytes)",
                            t.name, t.ggml_type
                        ),
                        offset: start.unwrap_or(u64::MAX),
                        file: self.file.to_owned(),
                    });
                }
            }
        }
        Ok(())
    }

    /// One metadata value of GGUF type `ty` belonging to `key`.
    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<MetaValue, GgufError> {
        let what = || format!("the value of metadata '{key}'");
        macro_rules! scalar {
            ($t:ty, $v:ident) => {{
                let a = self.r.array().map_err(|s| self.truncated(s, what))?;
                MetaValue::$v(<$t>::from_le_bytes(a))
            }};
        }
        Ok(match ty {
            code::U8 => scalar!(u8, U8),
            code::I8 => scalar!(i8, I8),
            code::U16 => scalar!(u16, U16),
            code::I16 => scalar!(i16, I16),
            code::U32 => scalar!(u32, U32),
            code::I32 => scalar!(i32, I32),
            code::U64 => scalar!(u64, U64),
            code::I64 => scalar!(i64, I64),
            code::F32 => scalar!(f32, F32),
            code::F64 => scalar!(f64, F64),
            code::BOOL => {
                let [b] = self.r.array().map_err(|s| self.truncated(s, what))?;
                match b {
                    0 => MetaValue::Bool(false),
                    1 => MetaValue::Bool(true),
                    _ => {
                        return Err(
                            self.invalid(format!("metadata '{key}': bool byte is {b}, not 0 or 1"))
                        );
                    }
                }
            }
            code::STRING => {
                let s = self.r.string().map_err(|s| self.truncated(s, what))?;
                MetaValue::String(self.utf8(s, what)?.to_owned())
            }
            code::ARRAY => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.invalid(format!(
                        "metadata '{key}': arrays nested deeper than {MAX_ARRAY_DEPTH}"
                    )));
                }
                let elem = self.r.u32().map_err(|s| {
                    self.truncated(s, || format!("the element type of metadata array '{key}'"))
                })?;
                let n = self.r.u64().map_err(|s| {
                    self.truncated(s, || format!("the length of metadata array '{key}'"))
                })?;
                let min_size = match elem {
                    code::U8 | code::I8 | code::BOOL => 1,
                    code::U16 | code::I16 => 2,
                    code::U32 | code::I32 | code::F32 => 4,
                    code::STRING | code::U64 | code::I64 | code::F64 => 8,
                    code::ARRAY => 12,
                    _ => {
                        return Err(self.invalid(format!(
                            "metadata array '{key}' has unknown element type {elem}"
                        )));
                    }
                };
                let remaining = self.r.buf.len() - self.r.pos;
                let cap = usize::try_from(n)
                    .unwrap_or(usize::MAX)
                    .min(remaining / min_size);
                let mut items = Vec::with_capacity(cap);
                if elem == code::STRING {
                    // The hot path: vocabularies of 150k tokens.
                    for i in 0..n {
                        let s = self.r.string().map_err(|s| {
                            self.truncated(s, || format!("element {i} of metadata array '{key}'"))
                        })?;
                        let s =
                            self.utf8(s, || format!("element {i} of metadata array '{key}'"))?;
                        items.push(MetaValue::String(s.to_owned()));
                    }
                } else {
                    for i in 0..n {
                        let v = self.value(elem, key, depth + 1).map_err(|e| match e {
                            GgufError::Truncated { offset, file, .. } => GgufError::Truncated {
                                what: format!(
                                    "element {i} ({}) of metadata array '{key}'",
                                    scalar_type_name(elem)
                                ),
                                offset,
                                file,
                            },
                            other => other,
                        })?;
                        items.push(v);
                    }
                }
                MetaValue::Array(items)
            }
            other => {
                return Err(
                    self.invalid(format!("metadata '{key}' has unknown value type {other}"))
                );
            }
        })
    }
}

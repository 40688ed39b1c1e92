//! A small GGUF writer, so tests (here and in the model crate) can build files without Python.

use std::path::{Path, PathBuf};

use half::f16;

use crate::file::{DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};
use crate::meta::code;
use crate::{GgmlType, GgufError, MetaValue};

/// Path used in writer errors raised before a destination is known.
const WRITER: &str = "<GgufWriter>";

struct PendingTensor {
    name: String,
    ty: GgmlType,
    dims: Vec<u64>,
    bytes: Vec<u8>,
}

/// Builds a GGUF v3 (or v2) image: metadata in insertion order, tensors in insertion order,
/// each tensor's data aligned to `general.alignment` (32 unless set).
pub struct GgufWriter {
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<PendingTensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        GgufWriter::new()
    }
}

impl GgufWriter {
    /// An empty GGUF v3 writer.
    pub fn new() -> GgufWriter {
        GgufWriter {
            version: 3,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Write this version number (2 and 3 share the same little-endian layout).
    pub fn with_version(mut self, version: u32) -> GgufWriter {
        self.version = version;
        self
    }

    /// Set (or replace) a metadata value.
    pub fn add_metadata(&mut self, key: &str, value: impl Into<MetaValue>) -> &mut GgufWriter {
        let value = value.into();
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.metadata.push((key.to_owned(), value)),
        }
        self
    }

    /// Set `general.alignment`, which the data layout follows.
    pub fn set_alignment(&mut self, alignment: u32) -> &mut GgufWriter {
        self.add_metadata("general.alignment", alignment)
    }

    /// Add an F32 tensor; `shape` is in PyTorch order (outermost first), `data` row-major.
    pub fn add_tensor_f32(
        &mut self,
        name: &str,
        shape: &[usize],
        data: &[f32],
    ) -> Result<&mut GgufWriter, GgufError> {
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.check_len(name, shape, data.len())?;
        self.add_tensor_raw(name, GgmlType::F32, shape, bytes)
    }

    /// Add an F16 tensor, rounding `data` to half precision (round-to-nearest-even).
    pub fn add_tensor_f16(
        &mut self,
        name: &str,
        shape: &[usize],
        data: &[f32],
    ) -> Result<&mut GgufWriter, GgufError> {
        let bytes = data
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_bits().to_le_bytes())
            .collect();
        self.check_len(name, shape, data.len())?;
        self.add_tensor_raw(name, GgmlType::F16, shape, bytes)
    }

    fn check_len(&self, name: &str, shape: &[usize], len: usize) -> Result<(), GgufError> {
        let n: usize = shape.iter().product();
        if n != len {
            return Err(GgufError::ShapeMismatch {
                tensor: name.to_owned(),
                detail: format!("shape {shape:?} has {n} elements, data has {len}"),
                file: PathBuf::from(WRITER),
            });
        }
        Ok(())
    }

    /// Add already-encoded tensor data of any type; `bytes` must be exactly the encoded size of
    /// `shape` (PyTorch order; the innermost dimension must be a whole number of blocks).
    pub fn add_tensor_raw(
        &mut self,
        name: &str,
        ty: GgmlType,
        shape: &[usize],
        bytes: Vec<u8>,
    ) -> Result<&mut GgufWriter, GgufError> {
        let err = |detail: String| GgufError::ShapeMismatch {
            tensor: name.to_owned(),
            detail,
            file: PathBuf::from(WRITER),
        };
        if shape.len() > MAX_DIMS {
            return Err(err(format!(
                "{} dimensions, at most {MAX_DIMS}",
                shape.len()
            )));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(GgufError::Invalid {
                what: format!("duplicate tensor name '{name}'"),
                file: PathBuf::from(WRITER),
            });
        }
        let row = shape.last().copied().unwrap_or(1);
        if row % ty.block_size() != 0 {
            return Err(err(format!(
                "innermost dimension {row} is not a multiple of the {ty} block size {}",
                ty.block_size()
            )));
        }
        let n: usize = shape.iter().product();
        let need = ty.bytes_for(n);
        if need != Some(bytes.len()) {
            return Err(err(format!(
                "shape {shape:?} of {ty} needs {need:?} bytes, got {}",
                bytes.len()
            )));
        }
        self.tensors.push(PendingTensor {
            name: name.to_owned(),
            ty,
            dims: shape.iter().rev().map(|&d| d as u64).collect(),
            bytes,
        });
        Ok(self)
    }

    /// Serialise to a byte vector.
    pub fn to_bytes(&self) -> Result<Vec<u8>, GgufError> {
        self.encode(Path::new(WRITER))
    }

    /// Serialise and write to `path`.
    pub fn write(&self, path: &Path) -> Result<(), GgufError> {
        let bytes = self.encode(path)?;
        std::fs::write(path, bytes).map_err(|source| GgufError::Io {
            op: "write",
            file: path.to_owned(),
            source,
        })
    }

    fn encode(&self, file: &Path) -> Result<Vec<u8>, GgufError> {
        let invalid = |what: String| GgufError::Invalid {
            what,
            file: file.to_owned(),
        };
        let alignment = match self.metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT as usize,
            Some((_, MetaValue::U32(a))) if a.is_power_of_two() => *a as usize,
            Some((_, v)) => {
                return Err(invalid(format!(
                    "general.alignment must be a u32 power of two, got {v:?}"
                )));
            }
        };
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut out, key);
            out.extend_from_slice(&value.type_code().to_le_bytes());
            put_value(&mut out, value).map_err(|e| invalid(format!("metadata '{key}': {e}")))?;
        }
        let mut offset = 0usize;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.code().to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.bytes.len()).next_multiple_of(alignment);
        }
        let data_start = out.len().next_multiple_of(alignment);
        out.resize(data_start, 0);
        for (t, off) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + off, 0);
            out.extend_from_slice(&t.bytes);
        }
        // Pad the final tensor too, as ggml does, so the file size is a multiple of alignment.
        if !self.tensors.is_empty() {
            out.resize(out.len().next_multiple_of(alignment), 0);
        }
        Ok(out)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &MetaValue) -> Result<(), String> {
    match v {
        MetaValue::U8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(u8::from(*x)),
        MetaValue::String(s) => put_str(out, s),
        MetaValue::Array(items) => {
            // An empty array has no element type to record; u8 is as good as any.
            let elem = items.first().map_or(code::U8, MetaValue::type_code);
            if let Some(i) = items.iter().position(|x| x.type_code() != elem) {
                return Err(format!(
                    "array elements must share one type; element {i} is {}, element 0 is {}",
                    items[i].type_name(),
                    items[0].type_name()
                ));
            }
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item)?;
            }
        }
    }
    Ok(())
}

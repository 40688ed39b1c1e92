//! Where tensors come from: a GGUF file or an HF safetensors folder, both seen through
//! HF tensor names and PyTorch shapes so the model code has one vocabulary.

// Unsafe: read-only memory maps of the safetensors files.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mosr_gguf::GgufFile;
use safetensors::{Dtype, SafeTensors};

use crate::config::Arch;
use crate::{LmError, Result};

/// A dense f32 tensor in PyTorch (row-major, `[out, in]` for linear weights) layout.
#[derive(Debug, Clone)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// `Sync`: a quantized load converts a tensor's tiles of rows on every thread.
pub trait WeightSource: Sync {
    /// The tensor under its HF name, or `None` if the file does not hold it.
    fn get(&self, hf_name: &str) -> Result<Option<HostTensor>>;
    /// File that errors should name.
    fn origin(&self) -> &Path;
    /// The tensor's shape, or `None` if the file does not hold it. Sources that can tell
    /// without reading the values say so (a quantized load never expands coded tensors).
    fn shape(&self, hf_name: &str) -> Result<Option<Vec<usize>>> {
        Ok(self.get(hf_name)?.map(|t| t.shape))
    }
    /// The tensor as `d·q` plus one offset per block of 32 along its rows, where the file
    /// stores it that way (Q4_1, Q5_1 in GGUF); `None` elsewhere. Lets the AMX products keep
    /// two bf16 parts per weight instead of three (`mosr_kernels::amx`).
    fn block_affine(&self, _hf_name: &str) -> Result<Option<mosr_gguf::BlockAffine>> {
        Ok(None)
    }
    /// Rows `first..first + count` of the tensor as integer codes with a scale and offset per
    /// group of 16 or 32 along its rows, where the file stores integer codes (GGUF's
    /// Q4_0-Q8_0 and Q4_K-Q6_K); `None` elsewhere. The quantized arithmetic multiplies these
    /// codes directly (`mosr_kernels::quant`), built a tile of rows at a time.
    fn group_codes_rows(
        &self,
        _hf_name: &str,
        _first: usize,
        _count: usize,
    ) -> Result<Option<mosr_gguf::GroupCodes>> {
        Ok(None)
    }
    /// Called once a tensor read by rows has been read whole: a mapped file may drop its
    /// pages from resident memory.
    fn release(&self, _hf_name: &str) -> Result<()> {
        Ok(())
    }
}

/// Rejects a tensor no trained model holds: a non-finite value anywhere, or a weight matrix
/// of zeros. Either would load, then generate empty or NaN answers with a clean exit; the full
/// scan costs about a second for 1.5B parameters.
pub fn check_values(origin: &Path, name: &str, t: &HostTensor) -> Result<()> {
    let bad = t.data.iter().filter(|v| !v.is_finite()).count();
    let problem = if bad > 0 {
        let first = t.data.iter().position(|v| !v.is_finite()).unwrap_or(0);
        format!(
            "tensor `{name}` holds {bad} non-finite values of {} (first at flat index {first}: {}); the file is corrupted",
            t.data.len(),
            t.data[first]
        )
    } else if t.shape.len() == 2 && t.data.iter().all(|&v| v == 0.0) {
        format!(
            "tensor `{name}` ({:?}) is all zeros; the file is corrupted or not a trained model",
            t.shape
        )
    } else {
        return Ok(());
    };
    Err(LmError::Weights {
        file: origin.to_path_buf(),
        problem,
    })
}

/// A file's codes as the kernel's layout takes them (moved, not copied).
pub fn tile_codes(g: mosr_gguf::GroupCodes) -> mosr_kernels::quant::TileCodes {
    let mut t = mosr_kernels::quant::TileCodes {
        codes: g.codes,
        scale: g.scale,
        offset: g.offset,
        ..Default::default()
    };
    if let mosr_gguf::Stored::Factored(f) = g.stored {
        t.scale_unit = f.scale_unit;
        t.offset_unit = f.offset_unit;
        t.scale_count = f.scale_count;
        t.offset_count = f.offset_count.unwrap_or_default();
    }
    t
}

/// How the kernel's layout keeps a file's scales and offsets: as narrow as the file stores
/// them (f16, or the K-quants' factors), so a decode step reads about the file's bytes.
pub fn affine_of(g: &mosr_gguf::GroupCodes) -> mosr_kernels::quant::Affine {
    use mosr_gguf::Stored;
    use mosr_kernels::quant::Affine;
    match &g.stored {
        Stored::HalfScale { times } => Affine::Half {
            times: Some(*times),
        },
        Stored::HalfPair => Affine::Half { times: None },
        Stored::Factored(f) => Affine::Factored {
            per: f.per,
            shared: f.offset_count.is_none(),
        },
    }
}

/// [`check_values`] for a weight kept as integer codes, without expanding it: every group's
/// scale and offset must be finite (the values `scale · code + offset` then are: scales are
/// f16 products with small integers and codes are below 256), and not all of them zero.
/// Gathered tile by tile as the loader converts them ([`Self::tile`], on the loader's
/// threads; the layout holds the same scale and offset bits, checked by `QuantWeight`), then
/// judged once ([`Self::verdict`]).
#[derive(Debug, Default)]
pub struct CodeCheck {
    bad: usize,
    /// The first bad group, (row, group).
    first: Option<(usize, usize)>,
    nonzero: bool,
}

impl CodeCheck {
    /// Rows `first..` of a tensor of `groups` groups per row, as `t` holds them.
    pub fn tile(&mut self, first: usize, groups: usize, t: &mosr_kernels::quant::TileCodes) {
        let pairs = || t.scale.iter().zip(&t.offset);
        // Folds without early exits (they vectorize); the groups one by one only when bad.
        self.nonzero |= pairs().fold(false, |a, (&s, &o)| a | (s != 0.0) | (o != 0.0));
        if pairs().fold(true, |a, (s, o)| a & s.is_finite() & o.is_finite()) {
            return;
        }
        for (i, (&scale, &offset)) in pairs().enumerate() {
            if !(scale.is_finite() && offset.is_finite()) {
                self.bad += 1;
                let at = (first + i / groups, i % groups);
                self.first = Some(self.first.map_or(at, |f| f.min(at)));
            }
        }
    }

    /// Whatever the order the tiles came in, the same result.
    pub fn merge(&mut self, other: Self) {
        self.bad += other.bad;
        self.first = match (self.first, other.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.nonzero |= other.nonzero;
    }

    /// The error naming `name` in `origin`, for a `[rows, groups · group]` weight.
    pub fn verdict(
        self,
        origin: &Path,
        name: &str,
        (rows, groups, group): (usize, usize, usize),
    ) -> Result<()> {
        let problem = if let Some((o, g)) = self.first {
            format!(
                "tensor `{name}`: {} of {} groups have a non-finite scale or offset (first: row {o}, elements {}..{}); the file is corrupted",
                self.bad,
                rows * groups,
                g * group,
                (g + 1) * group
            )
        } else if !self.nonzero {
            format!("tensor `{name}` is all zeros; the file is corrupted or not a trained model")
        } else {
            return Ok(());
        };
        Err(LmError::Weights {
            file: origin.to_path_buf(),
            problem,
        })
    }
}

/// Maps an HF parameter name to the llama.cpp GGUF name.
pub fn hf_to_gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (idx, tail) = rest.split_once('.')?;
    let mapped = match tail {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{idx}.{mapped}"))
}

pub struct GgufWeights<'a> {
    pub file: &'a GgufFile,
    pub arch: Arch,
    pub num_heads: usize,
    pub num_kv_heads: usize,
}

impl GgufWeights<'_> {
    /// The GGUF name and shape of the tensor an HF name refers to, if the file holds it.
    fn locate(&self, hf_name: &str) -> Option<(String, Vec<usize>)> {
        let name = hf_to_gguf_name(hf_name)?;
        let shape = self.file.tensor_info(&name).ok()?.shape();
        Some((name, shape))
    }

    /// llama.cpp's converter interleaves the two RoPE halves of each Q/K head for Llama-arch
    /// models (it uses GPT-J style rotation); HF rotates halves. The number of heads whose
    /// rows a GGUF tensor holds permuted, if it does.
    fn permuted_heads(&self, name: &str) -> Option<usize> {
        if self.arch == Arch::Qwen2 {
            None
        } else if name.ends_with("attn_q.weight") {
            Some(self.num_heads)
        } else if name.ends_with("attn_k.weight") {
            Some(self.num_kv_heads)
        } else {
            None
        }
    }

    /// Undoes [`Self::permuted_heads`]'s permutation; `shape` is `[rows, ..]` of `data`.
    fn unpermute<T: Copy + Default>(&self, name: &str, data: Vec<T>, shape: &[usize]) -> Vec<T> {
        match self.permuted_heads(name) {
            Some(heads) => unpermute_rows(&data, shape, heads),
            None => data,
        }
    }
}

impl WeightSource for GgufWeights<'_> {
    fn shape(&self, hf_name: &str) -> Result<Option<Vec<usize>>> {
        Ok(self.locate(hf_name).map(|(_, shape)| shape))
    }
    fn get(&self, hf_name: &str) -> Result<Option<HostTensor>> {
        let Some((name, shape)) = self.locate(hf_name) else {
            return Ok(None);
        };
        let data = self.unpermute(&name, self.file.dequantize(&name)?, &shape);
        Ok(Some(HostTensor { shape, data }))
    }
    fn block_affine(&self, hf_name: &str) -> Result<Option<mosr_gguf::BlockAffine>> {
        let Some((name, shape)) = self.locate(hf_name) else {
            return Ok(None);
        };
        let Some(a) = self.file.block_affine(&name)? else {
            return Ok(None);
        };
        let blocks = [shape[0], a.offsets.len() / shape[0].max(1)];
        Ok(Some(mosr_gguf::BlockAffine {
            scaled: self.unpermute(&name, a.scaled, &shape),
            offsets: self.unpermute(&name, a.offsets, &blocks),
        }))
    }
    fn group_codes_rows(
        &self,
        hf_name: &str,
        first: usize,
        count: usize,
    ) -> Result<Option<mosr_gguf::GroupCodes>> {
        let Some((name, shape)) = self.locate(hf_name) else {
            return Ok(None);
        };
        let Some(heads) = self.permuted_heads(&name) else {
            return Ok(self.file.group_codes_rows(&name, first, count)?);
        };
        let hd = shape[0] / heads;
        let mut out: Option<mosr_gguf::GroupCodes> = None;
        for r in first..first + count {
            let Some(c) = self.file.group_codes_rows(&name, gguf_row(r, hd), 1)? else {
                return Ok(None);
            };
            match &mut out {
                None => out = Some(c),
                Some(o) => o.append(c),
            }
        }
        Ok(out)
    }
    fn release(&self, hf_name: &str) -> Result<()> {
        match self.locate(hf_name) {
            Some((name, _)) => Ok(self.file.release_tensor(&name)?),
            None => Ok(()),
        }
    }
    fn origin(&self) -> &Path {
        self.file.path()
    }
}

/// The GGUF row that holds HF row `row` of a tensor llama.cpp's `permute(w, n_head)`
/// reordered, heads of `head_dim` rows: HF row `h·hd + j·hd/2 + i` is GGUF row
/// `h·hd + 2i + j`.
fn gguf_row(row: usize, head_dim: usize) -> usize {
    let (h, r, half) = (row / head_dim, row % head_dim, head_dim / 2);
    h * head_dim + 2 * (r % half) + r / half
}

/// Inverse of llama.cpp's `permute(w, n_head)` (see [`gguf_row`]).
pub fn unpermute_rows<T: Copy + Default>(data: &[T], shape: &[usize], n_head: usize) -> Vec<T> {
    move_rows(data, shape, n_head, |hf, gguf| (gguf, hf))
}

/// The forward permutation, used when writing GGUF-compatible tensors back (tests, conversion).
pub fn permute_rows(data: &[f32], shape: &[usize], n_head: usize) -> Vec<f32> {
    move_rows(data, shape, n_head, |hf, gguf| (hf, gguf))
}

/// Copies each row `src` to `dst`, where `(src, dst) = pick(hf_row, gguf_row)`.
fn move_rows<T: Copy + Default>(
    data: &[T],
    shape: &[usize],
    n_head: usize,
    pick: impl Fn(usize, usize) -> (usize, usize),
) -> Vec<T> {
    let rows = shape[0];
    let cols: usize = shape[1..].iter().product::<usize>().max(1);
    let hd = rows / n_head;
    let mut out = vec![T::default(); data.len()];
    for row in 0..rows {
        let (src, dst) = pick(row, gguf_row(row, hd));
        out[dst * cols..(dst + 1) * cols].copy_from_slice(&data[src * cols..(src + 1) * cols]);
    }
    out
}

/// An HF folder: `model.safetensors` or shards listed in `model.safetensors.index.json`.
pub struct SafetensorsWeights {
    dir: PathBuf,
    /// tensor name -> shard index
    index: BTreeMap<String, usize>,
    shards: Vec<(PathBuf, memmap2::Mmap)>,
}

impl SafetensorsWeights {
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| LmError::io(&index_path, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| LmError::Weights {
                    file: index_path.clone(),
                    problem: format!("not valid JSON: {e}"),
                })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| LmError::Weights {
                    file: index_path.clone(),
                    problem: "no `weight_map` object".into(),
                })?;
            let mut names: Vec<String> = map
                .values()
                .filter_map(|x| x.as_str().map(String::from))
                .collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            vec![dir.join("model.safetensors")]
        };
        let mut shards = Vec::new();
        let mut index = BTreeMap::new();
        for (i, f) in files.iter().enumerate() {
            let file = std::fs::File::open(f).map_err(|e| LmError::io(f, e))?;
            // SAFETY: read-only map of a file we do not modify while it is mapped.
            let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| LmError::io(f, e))?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| LmError::Weights {
                file: f.clone(),
                problem: format!("not a valid safetensors file: {e}"),
            })?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
            shards.push((f.clone(), mmap));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            index,
            shards,
        })
    }
}

impl SafetensorsWeights {
    /// `f` of the tensor's view and its shard's path, if the folder holds the tensor.
    fn with_view<T>(
        &self,
        hf_name: &str,
        f: impl FnOnce(&Path, safetensors::tensor::TensorView<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        let Some(&i) = self.index.get(hf_name) else {
            return Ok(None);
        };
        let (path, mmap) = &self.shards[i];
        let st = SafeTensors::deserialize(mmap).map_err(|e| LmError::Weights {
            file: path.clone(),
            problem: e.to_string(),
        })?;
        let view = st.tensor(hf_name).map_err(|e| LmError::Weights {
            file: path.clone(),
            problem: format!("tensor `{hf_name}`: {e}"),
        })?;
        f(path, view).map(Some)
    }
}

impl WeightSource for SafetensorsWeights {
    fn shape(&self, hf_name: &str) -> Result<Option<Vec<usize>>> {
        self.with_view(hf_name, |_, view| Ok(view.shape().to_vec()))
    }
    fn get(&self, hf_name: &str) -> Result<Option<HostTensor>> {
        self.with_view(hf_name, |path, view| host_tensor(path, hf_name, &view))
    }
    fn origin(&self) -> &Path {
        &self.dir
    }
}

/// A safetensors tensor's values in f32.
fn host_tensor(
    path: &Path,
    hf_name: &str,
    view: &safetensors::tensor::TensorView<'_>,
) -> Result<HostTensor> {
    let bytes = view.data();
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(LmError::Weights {
                file: path.to_path_buf(),
                problem: format!(
                    "tensor `{hf_name}` has unsupported dtype {other:?} (f32, f16, bf16)"
                ),
            });
        }
    };
    Ok(HostTensor {
        shape: view.shape().to_vec(),
        data,
    })
}

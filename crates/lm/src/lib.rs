//! mosr-lm: the one crate that runs a causal language model.
//!
//! It loads Llama, Mistral and Qwen2 weights from GGUF files or HF safetensors folders into a
//! burn network ([`model::CausalLm`]) that returns every layer's residual stream, carries
//! switchable LoRA adapters ([`lora`]), and generates with a KV cache ([`generate`]).
//! Tokenizer and chat template come from the model's own files ([`tokenizer`], [`chat`]).
//! Everything above this crate (extraction, probes, training, evaluation) goes through
//! [`LanguageModel`].

pub mod adapter;
pub mod chat;
pub mod config;
pub mod convert;
pub mod cpu;
mod decode;
pub mod fetch;
pub mod fused;
pub mod generate;
pub mod identity;
mod load;
pub mod lora;
pub mod memory;
pub mod model;
pub mod tokenizer;
pub mod weights;

// Linked only to switch on their AVX-512 kernels (feature `x86-v4`, crates/lm/Cargo.toml).
#[cfg(feature = "x86-v4")]
use gemm_common as _;
#[cfg(feature = "x86-v4")]
use gemm_f32 as _;
use std::path::{Path, PathBuf};

pub use burn::tensor::Device;
pub use chat::{ChatTemplate, Message};
pub use config::{Arch, ModelConfig};
pub use identity::{ModelIdentity, identify};
pub use lora::LoraConfig;
pub use model::{CausalLm, ForwardOptions, ForwardOutput, KvCache, Logits, TokenBatch};

use mosr_gguf::GgufFile;

#[derive(Debug, thiserror::Error)]
pub enum LmError {
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Gguf(#[from] mosr_gguf::GgufError),
    #[error("{file}: bad model config: {problem}")]
    Config { file: PathBuf, problem: String },
    #[error("{file}: tensor `{tensor}` is missing")]
    MissingTensor { file: PathBuf, tensor: String },
    #[error("{file}: tensor `{tensor}` has shape {found:?}, the config implies {expected:?}")]
    ShapeMismatch {
        file: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{file}: {problem}")]
    Weights { file: PathBuf, problem: String },
    #[error("{file}: tokenizer: {problem}")]
    Tokenizer { file: PathBuf, problem: String },
    #[error("chat template: {0}")]
    Template(String),
    #[error("LoRA: {0}")]
    Lora(String),
    #[error("{file}: adapter: {problem}")]
    Adapter { file: PathBuf, problem: String },
    #[error("fetch: {0}")]
    Fetch(String),
    #[error("{file}: sha256 is {found}, expected {expected}")]
    Checksum {
        file: PathBuf,
        expected: String,
        found: String,
    },
    /// A forward produced NaN or infinite logits: the weights (or an adapter) are broken, and
    /// greedy decoding would otherwise pick token 0 and return an empty answer.
    #[error(
        "{file}: non-finite logits at generation step {step} for sequence {sequence} (of {batch}); the model or adapter weights hold NaN or Inf"
    )]
    NonFinite {
        file: PathBuf,
        step: usize,
        sequence: usize,
        batch: usize,
    },
}

impl LmError {
    pub fn io(file: &Path, source: std::io::Error) -> Self {
        LmError::Io {
            file: file.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = LmError> = std::result::Result<T, E>;

/// Writes a whole file under a temporary name and renames it, so readers never see half a file.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| LmError::io(dir, e))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|s| s.to_str()).unwrap_or("out"),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(|e| LmError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| LmError::io(&tmp, e))?;
    f.sync_all().map_err(|e| LmError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| LmError::io(path, e))?;
    Ok(())
}

/// How a model's frozen projections multiply on the plain CPU.
///
/// `exact` multiplies the f32 values of the file's weights (bit-reproducible; training and
/// everything that compares states always use it). `quantized` multiplies the file's own
/// integer codes by int8-quantized activations (`mosr_kernels::quant`): the same weights,
/// the activations rounded to 8 bits per group of 16 or 32, for volume work (evaluation and
/// response generation). Only GGUF files with integer-coded weights have codes; the
/// projections of other types stay exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arithmetic {
    #[default]
    Exact,
    Quantized,
}

impl Arithmetic {
    pub fn is_exact(&self) -> bool {
        *self == Arithmetic::Exact
    }

    /// What stage and group keys record of the arithmetic: nothing while exact (keys made
    /// before the option existed stay valid), else its name and the version of its kernels
    /// (`mosr_kernels::quant::VERSION`), so answers of an older quantized arithmetic are
    /// never reused.
    pub fn key(&self) -> Option<String> {
        match self {
            Arithmetic::Exact => None,
            Arithmetic::Quantized => Some(format!("quantized-v{}", mosr_kernels::quant::VERSION)),
        }
    }
}

impl std::str::FromStr for Arithmetic {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "exact" => Ok(Self::Exact),
            "quantized" => Ok(Self::Quantized),
            other => Err(format!("unknown arithmetic `{other}` (exact, quantized)")),
        }
    }
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| LmError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| LmError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The CPU device used by default (burn-flex), or the GPU when built with `cuda`/`wgpu` and
/// asked for by name.
pub fn device_from_name(name: &str) -> Result<Device> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(0)),
        #[cfg(feature = "wgpu")]
        "wgpu" => Ok(Device::wgpu(Default::default())),
        // The arm of a compiled-in device above takes its name first.
        #[allow(unreachable_patterns)]
        gpu @ ("cuda" | "wgpu") => Err(LmError::Config {
            file: PathBuf::from("<device>"),
            problem: format!(
                "device `{gpu}` is not compiled into this build (build with `--features {gpu}`)"
            ),
        }),
        other => Err(LmError::Config {
            file: PathBuf::from("<device>"),
            problem: format!("unknown device `{other}` (cpu, cuda, wgpu)"),
        }),
    }
}

/// A model ready to use: network, tokenizer, chat template, and where it came from.
pub struct LanguageModel {
    pub net: CausalLm,
    pub tokenizer: tokenizers::Tokenizer,
    pub chat: ChatTemplate,
    pub config: ModelConfig,
    /// The GGUF file or HF folder it was loaded from.
    pub path: PathBuf,
    /// Token used to left-pad batches (never attended to).
    pub pad_id: u32,
}

impl LanguageModel {
    /// Opens a `.gguf` file or an HF folder.
    pub fn open(path: &Path, device: &Device) -> Result<Self> {
        Self::open_with(path, device, Arithmetic::Exact)
    }

    /// [`Self::open`] with the given arithmetic; `quantized` needs a GGUF file.
    pub fn open_with(path: &Path, device: &Device, arithmetic: Arithmetic) -> Result<Self> {
        if path.is_dir() {
            if !arithmetic.is_exact() {
                return Err(LmError::Config {
                    file: path.to_path_buf(),
                    problem: "quantized arithmetic multiplies a GGUF file's integer codes; this is an HF folder (use arithmetic = \"exact\")".into(),
                });
            }
            Self::open_hf(path, device)
        } else {
            Self::open_gguf_with(path, device, arithmetic)
        }
    }

    pub fn open_gguf(path: &Path, device: &Device) -> Result<Self> {
        Self::open_gguf_with(path, device, Arithmetic::Exact)
    }

    fn open_gguf_with(path: &Path, device: &Device, arithmetic: Arithmetic) -> Result<Self> {
        let g = GgufFile::open(path)?;
        let config = convert::config_from_gguf(&g)?;
        let tok_json = tokenizer::gguf_tokenizer_json(&g)?;
        let tokenizer = tokenizer::tokenizer_from_json(&tok_json, path)?;
        let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
        let name = |key: &str| {
            g.get_u32(key)
                .ok()
                .and_then(|i| tokens.get(i as usize).map(|s| s.to_string()))
                .unwrap_or_default()
        };
        let chat = ChatTemplate {
            source: g
                .get_str("tokenizer.chat_template")
                .map(String::from)
                .map_err(|_| LmError::Tokenizer {
                    file: path.to_path_buf(),
                    problem: "no `tokenizer.chat_template` in the GGUF metadata".into(),
                })?,
            bos_token: name("tokenizer.ggml.bos_token_id"),
            eos_token: name("tokenizer.ggml.eos_token_id"),
        };
        let pad_id = g
            .get_u32("tokenizer.ggml.padding_token_id")
            .ok()
            .or(config.eos_token_ids.first().copied())
            .unwrap_or(0);
        let src = weights::GgufWeights {
            file: &g,
            arch: config.arch,
            num_heads: config.num_heads,
            num_kv_heads: config.num_kv_heads,
        };
        let net = CausalLm::load_with(&src, &config, device, arithmetic)?;
        Ok(Self {
            net,
            tokenizer,
            chat,
            config,
            path: path.to_path_buf(),
            pad_id,
        })
    }

    pub fn open_hf(dir: &Path, device: &Device) -> Result<Self> {
        let config = ModelConfig::from_hf_json(&dir.join("config.json"))?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer =
            tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| LmError::Tokenizer {
                file: tok_path.clone(),
                problem: e.to_string(),
            })?;
        let chat = convert::chat_template_from_hf(dir)?;
        let pad_id = config.eos_token_ids.first().copied().unwrap_or(0);
        let src = weights::SafetensorsWeights::open(dir)?;
        let net = CausalLm::load(&src, &config, device)?;
        Ok(Self {
            net,
            tokenizer,
            chat,
            config,
            path: dir.to_path_buf(),
            pad_id,
        })
    }

    pub fn device(&self) -> Device {
        self.net.device()
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.tokenizer
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| LmError::Tokenizer {
                file: self.path.clone(),
                problem: e.to_string(),
            })
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.tokenizer
            .decode(ids, skip_special)
            .map_err(|e| LmError::Tokenizer {
                file: self.path.clone(),
                problem: e.to_string(),
            })
    }

    /// Token ids of a chat prompt (ready for generation) with the token range of the last
    /// user message's content: the tokens whose text overlaps it. Tokenised as one text, so
    /// the ids equal [`Self::chat_ids`]'s.
    pub fn chat_ids_with_request(
        &self,
        messages: &[Message],
        prefill: Option<&str>,
    ) -> Result<(Vec<u32>, std::ops::Range<usize>)> {
        let (text, bytes) = self.chat.render_with_request(messages, true, prefill)?;
        let enc = self
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| LmError::Tokenizer {
                file: self.path.clone(),
                problem: e.to_string(),
            })?;
        let inside: Vec<usize> = enc
            .get_offsets()
            .iter()
            .enumerate()
            .filter(|&(_, &(s, e))| s < e && s < bytes.end && e > bytes.start)
            .map(|(i, _)| i)
            .collect();
        let tokens = match (inside.first(), inside.last()) {
            (Some(&a), Some(&b)) => a..b + 1,
            _ => 0..0,
        };
        Ok((enc.get_ids().to_vec(), tokens))
    }

    /// Token ids of a single-user-turn chat prompt, ready for generation.
    pub fn chat_ids(&self, messages: &[Message], prefill: Option<&str>) -> Result<Vec<u32>> {
        let text = self.chat.render(messages, true, prefill)?;
        // The template already holds any BOS it wants.
        self.encode(&text, false)
    }
}

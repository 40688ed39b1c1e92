//! [`LanguageModel`]: a network with its tokenizer and chat template, opened from a GGUF file
//! or an HF folder on a device named in a pipeline.

use std::path::{Path, PathBuf};

use mosr_gguf::GgufFile;

use crate::{
    Arithmetic, CausalLm, ChatTemplate, Device, LmError, Message, ModelConfig, Result, convert,
    tokenizer, weights,
};

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

//! Architecture hyper-parameters, read from GGUF metadata or an HF `config.json`.
//!
//! Llama, Mistral and Qwen2 share one decoder shape (RMSNorm, RoPE, GQA, SwiGLU); they differ
//! only in the knobs kept here, so one forward serves all three.

use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::{LmError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
}

impl Arch {
    pub fn hf_model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
        }
    }
    pub fn hf_architecture(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
        }
    }
}

/// RoPE frequency scaling as used by Llama-3.1+ (`rope_type = "llama3"`) or plain linear scaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Qwen2 has biases on the q/k/v projections.
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// Inverse RoPE frequencies (`head_dim / 2` of them), scaling applied.
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let half = self.head_dim / 2;
        let base: Vec<f64> = (0..half)
            .map(|i| 1.0 / self.rope_theta.powf((2 * i) as f64 / self.head_dim as f64))
            .collect();
        match &self.rope_scaling {
            None => base,
            Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }

    pub(crate) fn validate(&self, source: &Path) -> Result<()> {
        let bad = |what: String| LmError::Config {
            file: source.to_path_buf(),
            problem: what,
        };
        if self.num_heads == 0
            || self.num_kv_heads == 0
            || !self.num_heads.is_multiple_of(self.num_kv_heads)
        {
            return Err(bad(format!(
                "num_heads {} must be a positive multiple of num_kv_heads {}",
                self.num_heads, self.num_kv_heads
            )));
        }
        if !self.head_dim.is_multiple_of(2) || self.head_dim == 0 {
            return Err(bad(format!("head_dim {} must be even", self.head_dim)));
        }
        if self.hidden_size == 0 || self.num_layers == 0 || self.vocab_size == 0 {
            return Err(bad(
                "hidden_size, num_layers and vocab_size must be positive".into(),
            ));
        }
        Ok(())
    }

    /// Reads an HF `config.json`.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| LmError::io(path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| LmError::Config {
            file: path.to_path_buf(),
            problem: format!("not valid JSON: {e}"),
        })?;
        let bad = |what: String| LmError::Config {
            file: path.to_path_buf(),
            problem: what,
        };
        let get_u = |k: &str| -> Result<usize> {
            v.get(k)
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .ok_or_else(|| bad(format!("missing or non-integer key `{k}`")))
        };
        let model_type = v.get("model_type").and_then(|x| x.as_str()).unwrap_or("");
        let arch = match model_type {
            "llama" => Arch::Llama,
            "mistral" => Arch::Mistral,
            "qwen2" => Arch::Qwen2,
            other => {
                return Err(bad(format!(
                    "unsupported model_type `{other}` (llama, mistral, qwen2)"
                )));
            }
        };
        let hidden_size = get_u("hidden_size")?;
        let num_heads = get_u("num_attention_heads")?;
        let num_kv_heads = v
            .get("num_key_value_heads")
            .and_then(|x| x.as_u64())
            .map(|x| x as usize)
            .unwrap_or(num_heads);
        let head_dim = v
            .get("head_dim")
            .and_then(|x| x.as_u64())
            .map(|x| x as usize)
            .unwrap_or(hidden_size / num_heads.max(1));
        let rope_scaling = match v.get("rope_scaling") {
            Some(s) if s.is_object() => {
                let ty = s
                    .get("rope_type")
                    .or_else(|| s.get("type"))
                    .and_then(|x| x.as_str())
                    .unwrap_or("");
                let f = |k: &str| s.get(k).and_then(|x| x.as_f64());
                match ty {
                    "llama3" => Some(RopeScaling::Llama3 {
                        factor: f("factor")
                            .ok_or_else(|| bad("rope_scaling.factor missing".into()))?,
                        low_freq_factor: f("low_freq_factor").unwrap_or(1.0),
                        high_freq_factor: f("high_freq_factor").unwrap_or(4.0),
                        original_max_position_embeddings: s
                            .get("original_max_position_embeddings")
                            .and_then(|x| x.as_u64())
                            .unwrap_or(8192)
                            as usize,
                    }),
                    "linear" => Some(RopeScaling::Linear {
                        factor: f("factor")
                            .ok_or_else(|| bad("rope_scaling.factor missing".into()))?,
                    }),
                    "default" | "" => None,
                    other => return Err(bad(format!("unsupported rope_scaling type `{other}`"))),
                }
            }
            _ => None,
        };
        let eos_token_ids = match v.get("eos_token_id") {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect(),
            Some(x) => x.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
            None => vec![],
        };
        let cfg = ModelConfig {
            arch,
            vocab_size: get_u("vocab_size")?,
            hidden_size,
            intermediate_size: get_u("intermediate_size")?,
            num_layers: get_u("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: v
                .get("rms_norm_eps")
                .and_then(|x| x.as_f64())
                .unwrap_or(1e-6),
            rope_theta: v
                .get("rope_theta")
                .and_then(|x| x.as_f64())
                .unwrap_or(10000.0),
            rope_scaling,
            max_position_embeddings: v
                .get("max_position_embeddings")
                .and_then(|x| x.as_u64())
                .unwrap_or(4096) as usize,
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(|x| x.as_bool())
                .unwrap_or(false),
            attention_bias: v
                .get("attention_bias")
                .and_then(|x| x.as_bool())
                .unwrap_or(arch == Arch::Qwen2),
            bos_token_id: v
                .get("bos_token_id")
                .and_then(|x| x.as_u64())
                .map(|x| x as u32),
            eos_token_ids,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Writes an HF-compatible `config.json` value.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "architectures": [self.arch.hf_architecture()],
            "model_type": self.arch.hf_model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        });
        if self.arch != Arch::Qwen2 {
            v["attention_bias"] = serde_json::json!(self.attention_bias);
        }
        if let Some(b) = self.bos_token_id {
            v["bos_token_id"] = serde_json::json!(b);
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => v["eos_token_id"] = serde_json::json!(one),
            many => v["eos_token_id"] = serde_json::json!(many),
        }
        match &self.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => {
                v["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": factor})
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                v["rope_scaling"] = serde_json::json!({
                    "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                    "high_freq_factor": high_freq_factor,
                    "original_max_position_embeddings": original_max_position_embeddings,
                })
            }
        }
        v
    }
}

//! GGUF metadata -> [`ModelConfig`], HF folder chat templates, and the GGUF -> HF folder
//! converter (so the safetensors path is tested on exactly the same weights).

use std::collections::BTreeMap;
use std::path::Path;

use mosr_gguf::GgufFile;
use serde_json::json;

use crate::chat::ChatTemplate;
use crate::config::{Arch, ModelConfig, RopeScaling};
use crate::weights::{GgufWeights, WeightSource};
use crate::{LmError, Result};

/// Token strings that end an assistant turn in the chat formats we support; generation stops
/// on any of them that the vocabulary marks as a control token.
const END_OF_TURN: [&str; 5] = [
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "</s>",
];

pub fn config_from_gguf(g: &GgufFile) -> Result<ModelConfig> {
    let path = g.path().to_path_buf();
    let arch_name = g.get_str("general.architecture")?.to_string();
    let arch = match arch_name.as_str() {
        "llama" => Arch::Llama,
        "mistral" => Arch::Mistral,
        "qwen2" => Arch::Qwen2,
        other => {
            return Err(LmError::Config {
                file: path,
                problem: format!(
                    "unsupported general.architecture `{other}` (llama, mistral, qwen2)"
                ),
            });
        }
    };
    let k = |s: &str| format!("{arch_name}.{s}");
    let hidden_size = g.get_u32(&k("embedding_length"))? as usize;
    let num_heads = g.get_u32(&k("attention.head_count"))? as usize;
    let num_kv_heads = g
        .get_u32(&k("attention.head_count_kv"))
        .map(|x| x as usize)
        .unwrap_or(num_heads);
    let head_dim = g
        .get_u32(&k("attention.key_length"))
        .map(|x| x as usize)
        .unwrap_or(hidden_size / num_heads.max(1));
    let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
    let types = g
        .get_i32_array("tokenizer.ggml.token_type")
        .unwrap_or_default();
    let vocab_size = g.tensor_info("token_embd.weight")?.shape()[0];
    if g.tensor_info("rope_freqs.weight").is_ok() {
        return Err(LmError::Config {
            file: path,
            problem: "per-frequency RoPE factors (`rope_freqs.weight`, Llama-3.1 style) are not \
                      supported from GGUF; use the model's HF folder"
                .into(),
        });
    }
    let rope_scaling = match g.get_str(&k("rope.scaling.type")).ok() {
        Some("linear") => Some(RopeScaling::Linear {
            factor: g.get_f32(&k("rope.scaling.factor"))? as f64,
        }),
        Some("none") | None => None,
        Some(other) => {
            return Err(LmError::Config {
                file: path,
                problem: format!("unsupported rope scaling `{other}`"),
            });
        }
    };
    let eos = g.get_u32("tokenizer.ggml.eos_token_id").ok();
    let mut eos_token_ids: Vec<u32> = eos.into_iter().collect();
    for (id, t) in tokens.iter().enumerate() {
        if END_OF_TURN.contains(t) && types.get(id).copied().unwrap_or(3) == 3 {
            let id = id as u32;
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
    }
    let cfg = ModelConfig {
        arch,
        vocab_size,
        hidden_size,
        intermediate_size: g.get_u32(&k("feed_forward_length"))? as usize,
        num_layers: g.get_u32(&k("block_count"))? as usize,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps: g.get_f32(&k("attention.layer_norm_rms_epsilon"))? as f64,
        rope_theta: g
            .get_f32(&k("rope.freq_base"))
            .map(|x| x as f64)
            .unwrap_or(10000.0),
        rope_scaling,
        max_position_embeddings: g
            .get_u32(&k("context_length"))
            .map(|x| x as usize)
            .unwrap_or(4096),
        tie_word_embeddings: g.tensor_info("output.weight").is_err(),
        attention_bias: g.tensor_info("blk.0.attn_q.bias").is_ok(),
        bos_token_id: g.get_u32("tokenizer.ggml.bos_token_id").ok(),
        eos_token_ids,
    };
    cfg.validate(g.path())?;
    Ok(cfg)
}

fn token_string(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Object(o)) => o
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or("")
            .to_string(),
        _ => String::new(),
    }
}

/// The chat template of an HF folder: `chat_template.jinja`, or `chat_template` in
/// `tokenizer_config.json` (a string, or a list of named templates of which "default" is used).
pub fn chat_template_from_hf(dir: &Path) -> Result<ChatTemplate> {
    let cfg_path = dir.join("tokenizer_config.json");
    let cfg: serde_json::Value = match std::fs::read_to_string(&cfg_path) {
        Ok(t) => serde_json::from_str(&t).map_err(|e| LmError::Tokenizer {
            file: cfg_path.clone(),
            problem: format!("not valid JSON: {e}"),
        })?,
        Err(_) => json!({}),
    };
    let jinja = dir.join("chat_template.jinja");
    let source = if jinja.exists() {
        std::fs::read_to_string(&jinja).map_err(|e| LmError::io(&jinja, e))?
    } else {
        match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template").and_then(|s| s.as_str()))
                .map(String::from)
                .ok_or_else(|| LmError::Tokenizer {
                    file: cfg_path.clone(),
                    problem: "chat_template list has no `default` entry".into(),
                })?,
            _ => {
                return Err(LmError::Tokenizer {
                    file: cfg_path,
                    problem: "no chat template (chat_template.jinja or tokenizer_config.json)"
                        .into(),
                });
            }
        }
    };
    Ok(ChatTemplate {
        source,
        bos_token: token_string(cfg.get("bos_token")),
        eos_token: token_string(cfg.get("eos_token")),
    })
}

/// Writes an HF folder (config.json, tokenizer.json, tokenizer_config.json,
/// generation_config.json, model.safetensors in f32) holding the GGUF's dequantised weights.
pub fn gguf_to_hf(gguf: &Path, out: &Path) -> Result<()> {
    let g = GgufFile::open(gguf)?;
    let cfg = config_from_gguf(&g)?;
    std::fs::create_dir_all(out).map_err(|e| LmError::io(out, e))?;
    let src = GgufWeights {
        file: &g,
        arch: cfg.arch,
        num_heads: cfg.num_heads,
        num_kv_heads: cfg.num_kv_heads,
    };
    let mut names = vec![
        "model.embed_tokens.weight".to_string(),
        "model.norm.weight".to_string(),
    ];
    if !cfg.tie_word_embeddings {
        names.push("lm_head.weight".into());
    }
    for i in 0..cfg.num_layers {
        for n in [
            "input_layernorm.weight",
            "post_attention_layernorm.weight",
            "self_attn.q_proj.weight",
            "self_attn.k_proj.weight",
            "self_attn.v_proj.weight",
            "self_attn.o_proj.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
        ] {
            names.push(format!("model.layers.{i}.{n}"));
        }
        if cfg.attention_bias {
            for n in ["q", "k", "v"] {
                names.push(format!("model.layers.{i}.self_attn.{n}_proj.bias"));
            }
        }
    }
    let mut tensors = BTreeMap::new();
    for n in names {
        let t = src.get(&n)?.ok_or_else(|| LmError::MissingTensor {
            file: gguf.to_path_buf(),
            tensor: n.clone(),
        })?;
        tensors.insert(n, (t.shape, t.data));
    }
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    crate::lora::write_safetensors(&out.join("model.safetensors"), &tensors, Some(meta))?;

    let write_json = |name: &str, v: &serde_json::Value| -> Result<()> {
        crate::atomic_write(
            &out.join(name),
            serde_json::to_string_pretty(v).expect("json").as_bytes(),
        )
    };
    write_json("config.json", &cfg.to_hf_json())?;
    write_json(
        "tokenizer.json",
        &crate::tokenizer::gguf_tokenizer_json(&g)?,
    )?;
    let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
    let tok = |key: &str| {
        g.get_u32(key)
            .ok()
            .and_then(|i| tokens.get(i as usize).map(|s| s.to_string()))
    };
    write_json(
        "tokenizer_config.json",
        &json!({
            "chat_template": g.get_str("tokenizer.chat_template").ok(),
            "bos_token": tok("tokenizer.ggml.bos_token_id"),
            "eos_token": tok("tokenizer.ggml.eos_token_id"),
            "model_max_length": cfg.max_position_embeddings,
            "tokenizer_class": "PreTrainedTokenizerFast",
        }),
    )?;
    write_json(
        "generation_config.json",
        &json!({"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_ids, "do_sample": false}),
    )?;
    Ok(())
}

//! Tokenizers: rebuilt from GGUF metadata (`tokenizer.ggml.*`) as an HF `tokenizer.json`, or
//! read from an HF folder. Building the JSON (rather than the Rust objects) gives the
//! GGUF -> HF converter its `tokenizer.json` for free and keeps one definition.

use mosr_gguf::GgufFile;
use serde_json::{Value, json};
use tokenizers::Tokenizer;

use crate::{LmError, Result};

/// Pre-tokenizer split patterns per `tokenizer.ggml.pre`, as llama.cpp defines them.
/// Each is applied in order with "isolated" behaviour, then byte-level mapping.
fn pre_patterns(pre: &str) -> Option<Vec<&'static str>> {
    const GPT2: &str =
        r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Some(match pre {
        "default" | "gpt2" | "gpt-2" => vec![GPT2],
        // StarCoder-family vocabularies split every digit first.
        "smollm" | "starcoder" | "refact" | "codeshell" => vec![r"\p{N}", GPT2],
        "llama3" | "llama-bpe" | "llama-v3" | "smaug-bpe" => vec![LLAMA3],
        "qwen2" | "deepseek-r1-qwen" => vec![QWEN2],
        _ => return None,
    })
}

/// Builds the `tokenizer.json` value equivalent to a GGUF file's BPE tokenizer.
pub fn gguf_tokenizer_json(g: &GgufFile) -> Result<Value> {
    let file = g.path().to_path_buf();
    let bad = |problem: String| LmError::Tokenizer {
        file: file.clone(),
        problem,
    };
    let model = g.get_str("tokenizer.ggml.model")?.to_string();
    if model != "gpt2" {
        return Err(bad(format!(
            "tokenizer.ggml.model `{model}` is not supported from GGUF (only byte-level BPE `gpt2`); \
             use the model's HF folder with its tokenizer.json instead"
        )));
    }
    let pre = g
        .get_str("tokenizer.ggml.pre")
        .unwrap_or("default")
        .to_string();
    let patterns = pre_patterns(&pre).ok_or_else(|| {
        bad(format!(
            "unknown pre-tokenizer `tokenizer.ggml.pre = {pre}`"
        ))
    })?;
    let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
    let merges = g.get_str_array("tokenizer.ggml.merges")?;
    let types = g
        .get_i32_array("tokenizer.ggml.token_type")
        .unwrap_or_default();

    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        vocab.insert(tok.to_string(), json!(id));
        let ty = types.get(id).copied().unwrap_or(1);
        // 3 = control (special), 4 = user-defined: matched as whole strings before BPE.
        if ty == 3 || ty == 4 {
            added.push(json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty == 3,
            }));
        }
    }
    let merges: Vec<Value> = merges
        .iter()
        .map(|m| {
            let (a, b) = m.split_once(' ').unwrap_or((*m, ""));
            json!([a, b])
        })
        .collect();
    let mut pretoks: Vec<Value> = patterns
        .iter()
        .map(|p| json!({"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated", "invert": false}))
        .collect();
    pretoks.push(json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}));

    let add_bos = g.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(false);
    let bos = g.get_u32("tokenizer.ggml.bos_token_id").ok();
    let post = match (add_bos, bos) {
        (true, Some(b)) => {
            let s = tokens
                .get(b as usize)
                .map(|s| s.to_string())
                .unwrap_or_default();
            json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": s, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": s, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": s, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {s.clone(): {"id": s, "ids": [b], "tokens": [s]}},
            })
        }
        _ => {
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false})
        }
    };
    // llama.cpp applies no normalisation to GGUF BPE vocabularies (transformers neither).
    let normalizer = Value::Null;
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": pretoks},
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": pre.starts_with("llama"), "vocab": vocab, "merges": merges,
        },
    }))
}

pub fn tokenizer_from_json(v: &Value, origin: &std::path::Path) -> Result<Tokenizer> {
    let s = v.to_string();
    s.parse::<Tokenizer>().map_err(|e| LmError::Tokenizer {
        file: origin.to_path_buf(),
        problem: format!("building tokenizer: {e}"),
    })
}

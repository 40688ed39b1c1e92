//! Bad input gives errors that name the file and the problem.

use std::path::{Path, PathBuf};

use mosr_gguf::GgufWriter;
use mosr_lm::LanguageModel;
use mosr_tests::model_path;

fn tmp(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lm-errors");
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn open_err(p: &Path) -> String {
    match LanguageModel::open(p, &mosr_lm::Device::flex()) {
        Ok(_) => panic!("{} should not load", p.display()),
        Err(e) => e.to_string(),
    }
}

/// A two-layer Llama GGUF with a byte-level tokenizer, small enough to build in a test;
/// `skip` leaves one tensor out, `bad_shape` gives one tensor the wrong shape.
fn tiny_llama(path: &Path, skip: Option<&str>, bad_shape: Option<&str>) {
    tiny_llama_with(path, skip, bad_shape, &[])
}

/// Fills a tensor of [`tiny_llama_with`] with NaN.
pub(crate) const NAN: f32 = f32::NAN;
/// Tensors filled with finite values so large that the first forward overflows (the MLP's
/// output to inf, the final norm to NaN): a file that passes the load-time check and poisons
/// the computation.
pub(crate) const OVERFLOWING: [(&str, f32); 2] = [
    ("blk.1.ffn_up.weight", 3e38),
    ("blk.1.ffn_down.weight", 3e38),
];

/// [`tiny_llama`] with each tensor named in `poison` filled with its value.
pub(crate) fn tiny_llama_with(
    path: &Path,
    skip: Option<&str>,
    bad_shape: Option<&str>,
    poison: &[(&str, f32)],
) {
    let mut w = GgufWriter::new();
    let (d, ff, layers, vocab) = (8usize, 16usize, 2u32, 4usize);
    w.add_metadata("general.architecture", "llama");
    w.add_metadata("llama.embedding_length", d as u32);
    w.add_metadata("llama.feed_forward_length", ff as u32);
    w.add_metadata("llama.block_count", layers);
    w.add_metadata("llama.attention.head_count", 2u32);
    w.add_metadata("llama.attention.head_count_kv", 1u32);
    w.add_metadata("llama.attention.layer_norm_rms_epsilon", 1e-5f32);
    w.add_metadata("llama.context_length", 64u32);
    w.add_metadata("tokenizer.ggml.model", "gpt2");
    w.add_metadata("tokenizer.ggml.pre", "default");
    let toks = ["a", "b", "ab", "<|im_end|>"];
    w.add_metadata(
        "tokenizer.ggml.tokens",
        mosr_gguf::MetaValue::Array(toks.iter().map(|t| (*t).into()).collect()),
    );
    w.add_metadata(
        "tokenizer.ggml.token_type",
        mosr_gguf::MetaValue::Array(vec![1i32.into(), 1i32.into(), 1i32.into(), 3i32.into()]),
    );
    w.add_metadata(
        "tokenizer.ggml.merges",
        mosr_gguf::MetaValue::Array(vec!["a b".into()]),
    );
    w.add_metadata("tokenizer.ggml.eos_token_id", 3u32);
    w.add_metadata(
        "tokenizer.chat_template",
        "{% for m in messages %}{{ m.content }}{% endfor %}",
    );
    let mut add = |name: &str, shape: Vec<usize>| {
        if skip == Some(name) {
            return;
        }
        let mut shape = shape;
        if bad_shape == Some(name) {
            shape[0] += 1;
        }
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|i| match poison.iter().find(|(p, _)| *p == name) {
                Some((_, v)) => *v,
                None => ((i % 7) as f32 - 3.0) * 0.05,
            })
            .collect();
        w.add_tensor_f32(name, &shape, &data).unwrap();
    };
    add("token_embd.weight", vec![vocab, d]);
    add("output_norm.weight", vec![d]);
    for i in 0..layers {
        add(&format!("blk.{i}.attn_norm.weight"), vec![d]);
        add(&format!("blk.{i}.ffn_norm.weight"), vec![d]);
        add(&format!("blk.{i}.attn_q.weight"), vec![d, d]);
        add(&format!("blk.{i}.attn_k.weight"), vec![d / 2, d]);
        add(&format!("blk.{i}.attn_v.weight"), vec![d / 2, d]);
        add(&format!("blk.{i}.attn_output.weight"), vec![d, d]);
        add(&format!("blk.{i}.ffn_gate.weight"), vec![ff, d]);
        add(&format!("blk.{i}.ffn_up.weight"), vec![ff, d]);
        add(&format!("blk.{i}.ffn_down.weight"), vec![d, ff]);
    }
    w.write(path).unwrap();
}

#[test]
fn tiny_model_loads_and_runs() {
    let p = tmp("tiny.gguf");
    tiny_llama(&p, None, None);
    let lm = LanguageModel::open(&p, &mosr_lm::Device::flex()).unwrap();
    assert_eq!(lm.config.num_layers, 2);
    assert!(lm.config.tie_word_embeddings);
    assert_eq!(lm.encode("ab", false).unwrap(), vec![2]);
    let out = mosr_lm::generate::generate(&lm, &[vec![0, 1]], &Default::default()).unwrap();
    assert!(out[0].tokens.len() <= 64);
}

#[test]
fn nan_or_zero_weights_are_refused_at_load() {
    let p = tmp("nan-load.gguf");
    tiny_llama_with(&p, None, None, &[("blk.1.ffn_down.weight", NAN)]);
    let err = open_err(&p);
    assert!(
        err.contains("nan-load.gguf")
            && err.contains(
                "tensor `model.layers.1.mlp.down_proj.weight` holds 128 non-finite values of 128"
            ),
        "{err}"
    );
    let p = tmp("zero-load.gguf");
    tiny_llama_with(&p, None, None, &[("blk.0.attn_q.weight", 0.0)]);
    let err = open_err(&p);
    assert!(
        err.contains("zero-load.gguf")
            && err
                .contains("tensor `model.layers.0.self_attn.q_proj.weight` ([8, 8]) is all zeros"),
        "{err}"
    );
}

#[test]
fn overflowing_weights_stop_generation_with_a_clear_error() {
    let p = tmp("nan.gguf");
    tiny_llama_with(&p, None, None, &OVERFLOWING);
    let lm = LanguageModel::open(&p, &mosr_lm::Device::flex()).unwrap();
    let err = mosr_lm::generate::generate(&lm, &[vec![0, 1], vec![2]], &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("non-finite logits at generation step 0 for sequence 0 (of 2)")
            && err.contains("nan.gguf"),
        "{err}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let p = tmp("missing.gguf");
    tiny_llama(&p, Some("blk.1.ffn_up.weight"), None);
    let e = open_err(&p);
    assert!(
        e.contains("missing.gguf")
            && e.contains("model.layers.1.mlp.up_proj.weight")
            && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn shape_mismatch_is_named() {
    let p = tmp("shape.gguf");
    tiny_llama(&p, None, Some("blk.0.attn_v.weight"));
    let e = open_err(&p);
    assert!(
        e.contains("shape.gguf") && e.contains("v_proj") && e.contains("[5, 8]"),
        "{e}"
    );
}

#[test]
fn truncated_gguf_is_reported() {
    let src = model_path("smollm2-135m-instruct");
    let bytes = std::fs::read(&src).unwrap();
    for cut in [10usize, 4096, bytes.len() / 2] {
        let p = tmp(&format!("truncated-{cut}.gguf"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = open_err(&p);
        assert!(
            e.contains(&format!("truncated-{cut}.gguf")) && e.to_lowercase().contains("truncat"),
            "{e}"
        );
    }
}

#[test]
fn unknown_quant_type_is_reported() {
    let p = tmp("unknown-type.gguf");
    tiny_llama(&p, None, None);
    let mut bytes = std::fs::read(&p).unwrap();
    // Patch the first tensor's type code (u32 after its name, n_dims and dims) to 1000.
    let name = b"token_embd.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let ty = at + 4 + 2 * 8;
    bytes[ty..ty + 4].copy_from_slice(&1000u32.to_le_bytes());
    std::fs::write(&p, &bytes).unwrap();
    let e = open_err(&p);
    assert!(e.contains("unknown-type.gguf") && e.contains("1000"), "{e}");
}

#[test]
fn hf_config_mismatch_and_wrong_sha256_are_reported() {
    let gguf = tmp("for-hf.gguf");
    tiny_llama(&gguf, None, None);
    let dir = tmp("hf-bad");
    mosr_lm::convert::gguf_to_hf(&gguf, &dir).unwrap();
    assert!(LanguageModel::open(&dir, &mosr_lm::Device::flex()).is_ok());
    let cfg_path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["intermediate_size"] = serde_json::json!(24);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = open_err(&dir);
    assert!(
        e.contains("hf-bad") && e.contains("gate_proj") && e.contains("[24, 8]"),
        "{e}"
    );

    let part = mosr_lm::fetch::WheelPart {
        package: "not-needed".into(),
        version: "0".into(),
        member: "x".into(),
        wheel_sha256: "00".repeat(32),
    };
    let e = mosr_lm::fetch::verify(&gguf, &part.wheel_sha256)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("for-hf.gguf") && e.contains("sha256") && e.contains(&"00".repeat(32)),
        "{e}"
    );
}

/// Model identity comes from the bytes: a corrupted registry file is refused with a refetch
/// hint instead of producing results under the good model's key; the hash cache follows the
/// file's changes; a missing path says so instead of "unknown model".
#[test]
fn lm_model_identity_is_the_loaded_bytes() {
    use mosr_lm::identity::identify_in;
    let spec = mosr_lm::fetch::spec("smollm2-135m-instruct").unwrap();
    // The real registry model hashes to its pin.
    assert_eq!(
        mosr_lm::identify("smollm2-135m-instruct").unwrap().sha256,
        spec.sha256
    );

    let root = tmp("identity-cache");
    let _ = std::fs::remove_dir_all(&root);
    let cached = root.join("models").join(&spec.id).join(&spec.file);
    std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
    std::fs::write(&cached, b"not the pinned model").unwrap();
    let e = identify_in("smollm2-135m-instruct", &root)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&cached.display().to_string())
            && e.contains("the registry pins")
            && e.contains("cargo xtask fetch model smollm2-135m-instruct"),
        "{e}"
    );

    // A path is hashed; the cache is refreshed when the file changes.
    let f = root.join("model.gguf");
    std::fs::write(&f, b"a").unwrap();
    let p = f.to_str().unwrap();
    let entries = || std::fs::read_dir(root.join("hashes")).unwrap().count();
    let n = entries();
    let first = identify_in(p, &root).unwrap().sha256;
    assert_eq!(first, mosr_artifacts::sha256_bytes(b"a"));
    assert_eq!(entries(), n + 1, "the hash is cached");
    std::fs::write(&f, b"bb").unwrap();
    assert_eq!(
        identify_in(p, &root).unwrap().sha256,
        mosr_artifacts::sha256_bytes(b"bb")
    );

    // An HF folder: every file the loader reads counts, the chat template's too.
    let hf = root.join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    std::fs::write(hf.join("config.json"), b"{}").unwrap();
    std::fs::write(hf.join("model.safetensors"), b"weights").unwrap();
    std::fs::write(
        hf.join("tokenizer_config.json"),
        b"{\"chat_template\": \"a\"}",
    )
    .unwrap();
    let h = hf.to_str().unwrap();
    let before = identify_in(h, &root).unwrap().sha256;
    std::fs::write(
        hf.join("tokenizer_config.json"),
        b"{\"chat_template\": \"b\"}",
    )
    .unwrap();
    assert_ne!(identify_in(h, &root).unwrap().sha256, before);

    let e = identify_in("models/no-such-model.gguf", &root)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no such file or folder"), "{e}");
    let e = mosr_lm::fetch::resolve("models/no-such-model.gguf")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no such file or folder"), "{e}");
}

/// A chat template that loops without end stops with a clear error instead of hanging.
#[test]
fn lm_endless_chat_template_stops() {
    let t = mosr_lm::ChatTemplate {
        source: "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
            .into(),
        bos_token: String::new(),
        eos_token: String::new(),
    };
    let started = std::time::Instant::now();
    let e = t
        .render(&[mosr_lm::Message::user("hi")], true, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("stopped after") && e.contains("loop without end"),
        "{e}"
    );
    assert!(
        started.elapsed().as_secs() < 30,
        "took {:?}",
        started.elapsed()
    );
}

/// A copy of the SmolLM2 fixture file with `patch` applied to the bytes of its first tensor
/// whose type has integer codes and keeps its block scale in the first two bytes.
fn patched_smollm2(name: &str, patch: impl Fn(&mut [u8])) -> PathBuf {
    use mosr_gguf::GgmlType::{Q4_0, Q4_1, Q4_K, Q5_K, Q8_0};
    let src = model_path("smollm2-135m-instruct");
    let file = mosr_gguf::GgufFile::open(&src).unwrap();
    let info = file
        .tensors()
        .iter()
        .find(|t| {
            t.name.starts_with("blk.") && [Q4_0, Q4_1, Q4_K, Q5_K, Q8_0].contains(&t.ggml_type)
        })
        .expect("a coded block tensor");
    let start = (file.data_offset() + info.offset) as usize;
    let mut bytes = std::fs::read(&src).unwrap();
    patch(&mut bytes[start..start + info.n_bytes()]);
    let p = tmp(name);
    std::fs::write(&p, &bytes).unwrap();
    p
}

/// A quantized load checks the codes it keeps (never expanding them to f32) as the exact
/// load checks values: a non-finite block scale or an all-zero tensor is refused, naming
/// the file and the tensor.
#[test]
fn quantized_loads_refuse_corrupted_codes() {
    let open = |p: &Path, arithmetic| {
        LanguageModel::open_with(p, &mosr_lm::Device::flex(), arithmetic)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let p = patched_smollm2("nan-scale.gguf", |b| b[..2].copy_from_slice(&[0x00, 0x7E]));
    let err = open(&p, mosr_lm::Arithmetic::Quantized);
    assert!(
        err.contains("nan-scale.gguf")
            && err.contains("tensor `model.layers.0.")
            && err.contains("groups have a non-finite scale or offset (first: row 0, elements 0..")
            && err.contains("the file is corrupted"),
        "{err}"
    );
    let exact = open(&p, mosr_lm::Arithmetic::Exact);
    assert!(exact.contains("non-finite values"), "{exact}");
    let p = patched_smollm2("zero-codes.gguf", |b| b.fill(0));
    let err = open(&p, mosr_lm::Arithmetic::Quantized);
    assert!(
        err.contains("zero-codes.gguf") && err.contains("is all zeros"),
        "{err}"
    );
}

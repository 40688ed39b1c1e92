//! Shared helpers of the workspace integration tests (`tests/it`).

use std::path::{Path, PathBuf};

/// `tests/fixtures/<model>/<name>.json`, parsed.
pub fn fixture(model: &str, name: &str) -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(model)
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A fetched registry model. Model tests are not optional: run `cargo xtask fetch model ID`
/// (the README's test command does) rather than letting them skip.
pub fn model_path(id: &str) -> PathBuf {
    mosr_lm::fetch::resolve(id).unwrap_or_else(|e| panic!("{e}"))
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("float") as f32)
        .collect()
}

/// Relative difference with an absolute floor, so values near zero are compared sensibly.
pub fn rel_close(a: f32, b: f32, rel: f32) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1.0)
}

/// Last-position logits of a forward, flattened `[rows, vocab]`.
fn last_logits(
    lm: &mosr_lm::LanguageModel,
    batch: &mosr_lm::TokenBatch,
    cache: Option<&mut mosr_lm::KvCache>,
    adapter: bool,
) -> Vec<f32> {
    let opts = mosr_lm::ForwardOptions {
        logits: mosr_lm::Logits::Last,
        adapter,
        ..Default::default()
    };
    lm.net
        .forward(batch, cache, opts)
        .logits
        .expect("logits requested")
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("f32 logits")
}

/// Decoding with a KV cache (on the CPU device: the host decode step, `mosr_lm::decode`) gives
/// the logits of a full forward over the same tokens without a cache, step after step: rows of
/// different prompt lengths (left padding), a row fed a masked padding token mid-sequence (a
/// finished generation), the cache moved back to burn tensors by a two-token forward, and
/// rows reselected with `KvCache::select_rows` while held on the host.
pub fn check_decode_matches_full_forward(lm: &mosr_lm::LanguageModel, adapter: bool) {
    use mosr_lm::TokenBatch;
    let texts = [
        "The lighthouse keeper wrote down the tide tables every evening",
        "Seven apples",
        "How do I kill a Python process that hangs?",
    ];
    let mut seqs: Vec<Vec<u32>> = texts.iter().map(|t| lm.encode(t, false).unwrap()).collect();
    let t0 = seqs.iter().map(Vec::len).max().unwrap();
    // Full-sequence batch: left padding, plus the masked positions recorded so far.
    let mut masks: Vec<Vec<bool>> = seqs
        .iter()
        .map(|s| {
            let mut m = vec![false; t0 - s.len()];
            m.extend(vec![true; s.len()]);
            m
        })
        .collect();
    let mut padded: Vec<Vec<u32>> = seqs
        .iter()
        .map(|s| {
            let mut p = vec![lm.pad_id; t0 - s.len()];
            p.extend(s);
            p
        })
        .collect();
    let full = |padded: &[Vec<u32>], masks: &[Vec<bool>]| TokenBatch {
        ids: padded.concat(),
        mask: masks.concat(),
        batch: padded.len(),
        seq: padded[0].len(),
    };
    let close = |got: &[f32], want: &[f32], what: &str| {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        let d = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            d <= 1e-4 * scale.max(10.0),
            "{what}: max |diff| {d} against the full forward (largest logit {scale})"
        );
    };
    let mut cache = mosr_lm::KvCache::default();
    let first = last_logits(lm, &full(&padded, &masks), Some(&mut cache), adapter);
    close(
        &first,
        &last_logits(lm, &full(&padded, &masks), None, adapter),
        "prefill",
    );
    let b = seqs.len();
    let vocab = lm.config.vocab_size;
    let mut logits = first;
    for step in 0..4 {
        // Greedy next tokens; row 0 is "finished" at step 2 and fed a masked pad.
        let mut ids = Vec::new();
        let mut mask = Vec::new();
        for r in 0..b {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let tok = (0..vocab)
                .max_by(|&i, &j| row[i].total_cmp(&row[j]))
                .unwrap() as u32;
            let real = !(r == 0 && step == 2);
            let tok = if real { tok } else { lm.pad_id };
            ids.push(tok);
            mask.push(real);
            padded[r].push(tok);
            masks[r].push(real);
            if real {
                seqs[r].push(tok);
            }
        }
        let step_batch = TokenBatch {
            ids,
            mask,
            batch: b,
            seq: 1,
        };
        logits = last_logits(lm, &step_batch, Some(&mut cache), adapter);
        let want = last_logits(lm, &full(&padded, &masks), None, adapter);
        close(&logits, &want, &format!("decode step {step}"));
    }
    // Two new tokens at once: the burn path, on the host-held cache.
    let two: Vec<u32> = vec![lm.encode(" and", false).unwrap()[0]; 2];
    for r in 0..b {
        padded[r].extend(&two);
        masks[r].extend([true, true]);
    }
    let step_batch = TokenBatch {
        ids: two.repeat(b),
        mask: vec![true; 2 * b],
        batch: b,
        seq: 2,
    };
    let got = last_logits(lm, &step_batch, Some(&mut cache), adapter);
    close(
        &got,
        &last_logits(lm, &full(&padded, &masks), None, adapter),
        "two-token step",
    );
    // One decode step to move the cache to the host again, then rows 2 and 0 only.
    let tok = lm.encode(" the", false).unwrap()[0];
    for r in 0..b {
        padded[r].push(tok);
        masks[r].push(true);
    }
    let one = |n: usize| TokenBatch {
        ids: vec![tok; n],
        mask: vec![true; n],
        batch: n,
        seq: 1,
    };
    let got = last_logits(lm, &one(b), Some(&mut cache), adapter);
    close(
        &got,
        &last_logits(lm, &full(&padded, &masks), None, adapter),
        "decode after the burn path",
    );
    cache.select_rows(&[2, 0]);
    let (mut padded, mut masks) = (
        vec![padded[2].clone(), padded[0].clone()],
        vec![masks[2].clone(), masks[0].clone()],
    );
    for r in 0..2 {
        padded[r].push(tok);
        masks[r].push(true);
    }
    let got = last_logits(lm, &one(2), Some(&mut cache), adapter);
    close(
        &got,
        &last_logits(lm, &full(&padded, &masks), None, adapter),
        "decode after select_rows",
    );
}

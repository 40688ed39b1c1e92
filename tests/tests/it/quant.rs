//! Quantized arithmetic (`mosr_kernels::quant`, `mosr_gguf::GgufFile::group_codes`): the
//! codes reproduce the dequantizer, the product equals its own arithmetic written out in f64
//! on every tile and row-block shape, and stays within the activation rounding of the f32
//! product.

use mosr_kernels::quant::{GROUP, QuantWeight, product, product_many};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A random weight `[n, k]` as codes below `levels`, with its group scales and offsets.
fn random_weight(
    rng: &mut ChaCha8Rng,
    n: usize,
    k: usize,
    levels: u32,
) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
    let codes = (0..n * k)
        .map(|_| rng.random_range(0..levels) as u8)
        .collect();
    let groups = n * k / GROUP;
    let scale = (0..groups)
        .map(|_| rng.random_range(-0.02f32..0.02))
        .collect();
    let offset = (0..groups)
        .map(|_| rng.random_range(-0.1f32..0.1))
        .collect();
    (codes, scale, offset)
}

/// The activations as the kernel rounds them: per group of 16, `d = max |x| / 127`.
fn quantized_activations(x: &[f32]) -> Vec<(f64, Vec<i32>)> {
    x.chunks_exact(GROUP)
        .map(|g| {
            let d = g.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            let q = g
                .iter()
                .map(|v| (v * inv).round_ties_even().clamp(-127.0, 127.0) as i32)
                .collect();
            (d as f64, q)
        })
        .collect()
}

/// `x · Wᵀ` in f64 from the rounded activations and the weight's codes (the kernel's math
/// without its float rounding), and in f64 from the exact activations.
fn references(
    x: &[f32],
    rows: usize,
    k: usize,
    codes: &[u8],
    scale: &[f32],
    offset: &[f32],
    n: usize,
) -> (Vec<f64>, Vec<f64>) {
    let xq = quantized_activations(x);
    let groups = k / GROUP;
    let (mut rounded, mut exact) = (vec![0f64; rows * n], vec![0f64; rows * n]);
    for r in 0..rows {
        for o in 0..n {
            for g in 0..groups {
                let (d, q) = &xq[r * groups + g];
                let (a, b) = (scale[o * groups + g] as f64, offset[o * groups + g] as f64);
                for i in 0..GROUP {
                    let w = a * codes[o * k + g * GROUP + i] as f64 + b;
                    rounded[r * n + o] += d * q[i] as f64 * w;
                    exact[r * n + o] += x[r * k + g * GROUP + i] as f64 * w;
                }
            }
        }
    }
    (rounded, exact)
}

#[test]
fn quant_product_matches_its_arithmetic_on_every_shape() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // Full and partial tiles (n % 16), row blocks of 1..8 and more, one and many groups.
    for &(rows, k, n, levels) in &[
        (1, 16, 16, 16),
        (3, 32, 5, 64),
        (8, 64, 33, 256),
        (9, 48, 16, 32),
        (17, 128, 40, 16),
        (40, 96, 70, 64),
    ] {
        let (codes, scale, offset) = random_weight(&mut rng, n, k, levels);
        let w = QuantWeight::new(n, k, &codes, &scale, &offset);
        let x: Vec<f32> = (0..rows * k)
            .map(|_| rng.random_range(-2f32..2.0))
            .collect();
        let mut out = vec![f32::NAN; rows * n];
        product(&x, rows, &w, &mut out);
        let (rounded, exact) = references(&x, rows, k, &codes, &scale, &offset, n);
        let norm = exact.iter().map(|v| v.abs()).fold(0f64, f64::max).max(1e-3);
        for i in 0..rows * n {
            let (got, want) = (out[i] as f64, rounded[i]);
            assert!(
                (got - want).abs() <= 1e-5 * norm,
                "{rows}x{k}x{n} [{i}]: {got} vs {want}"
            );
            // Activation rounding: half a step of max|x|/127 per element at most.
            assert!(
                (got - exact[i]).abs() <= 0.02 * norm,
                "{rows}x{k}x{n} [{i}]: {got} vs exact {}",
                exact[i]
            );
        }
    }
}

#[test]
fn quant_dequantize_is_scale_times_code_plus_offset() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let (n, k) = (21, 48);
    let (codes, scale, offset) = random_weight(&mut rng, n, k, 256);
    let w = QuantWeight::new(n, k, &codes, &scale, &offset);
    let d = w.dequantize();
    for o in 0..n {
        for i in 0..k {
            let g = o * (k / GROUP) + i / GROUP;
            assert_eq!(d[o * k + i], scale[g] * codes[o * k + i] as f32 + offset[g]);
        }
    }
}

#[test]
fn quant_product_many_equals_separate_products_bit_for_bit() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let (rows, k) = (5, 64);
    let ws: Vec<QuantWeight> = [16, 40, 7]
        .iter()
        .map(|&n| {
            let (c, s, o) = random_weight(&mut rng, n, k, 16);
            QuantWeight::new(n, k, &c, &s, &o)
        })
        .collect();
    let x: Vec<f32> = (0..rows * k)
        .map(|_| rng.random_range(-1f32..1.0))
        .collect();
    let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; rows * w.n()]).collect();
    let mut products: Vec<(&QuantWeight, &mut [f32])> = ws
        .iter()
        .zip(outs.iter_mut())
        .map(|(w, o)| (w, o.as_mut_slice()))
        .collect();
    product_many(&x, rows, &mut products);
    for (w, many) in ws.iter().zip(&outs) {
        let mut one = vec![0f32; rows * w.n()];
        product(&x, rows, w, &mut one);
        assert_eq!(&one, many);
    }
}

/// Every integer-coded tensor of both fixture models: `scale · code + offset` equals the
/// dequantizer's value to one rounding (exactly where the type adds its offset last).
#[test]
fn quant_group_codes_reproduce_the_dequantizer_on_real_files() {
    for model in ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"] {
        let path = mosr_tests::model_path(model);
        let file = mosr_gguf::GgufFile::open(&path).unwrap();
        let mut coded = 0;
        for info in file.tensors() {
            let Some(c) = file.group_codes(&info.name).unwrap() else {
                continue;
            };
            let values = file.dequantize(&info.name).unwrap();
            for (i, v) in values.iter().enumerate() {
                let g = i / mosr_gguf::CODE_GROUP;
                let got = c.scale[g] * c.codes[i] as f32 + c.offset[g];
                let tol = 2.0 * f32::EPSILON * (c.offset[g].abs() + v.abs());
                assert!(
                    (got - v).abs() <= tol,
                    "{model} {} [{i}]: {got} vs {v} ({})",
                    info.name,
                    info.ggml_type
                );
            }
            coded += 1;
        }
        assert!(coded > 50, "{model}: {coded} coded tensors");
    }
}

/// Largest |Δ logit| allowed between the quantized and the exact forward on the fixture
/// prompts (docs/performance.md): measured 0.98 on SmolLM2-135M (Q4_1, the most sensitive
/// model we have) and 0.18 on Qwen2.5-Coder-0.5B (Q4_K/Q6_K), 2026-12-04.
const LOGIT_TOLERANCE: [(&str, f32); 2] = [
    ("smollm2-135m-instruct", 1.5),
    ("qwen2.5-coder-0.5b-instruct", 0.5),
];

#[test]
fn quant_forward_stays_near_the_exact_one_and_greedy_agreement_is_reported() {
    use mosr_lm::generate::{GenerateConfig, generate};
    use mosr_lm::{Arithmetic, ForwardOptions, LanguageModel, Logits, TokenBatch};
    let dev = mosr_lm::Device::flex();
    for (model, tolerance) in LOGIT_TOLERANCE {
        let path = mosr_tests::model_path(model);
        let exact = LanguageModel::open(&path, &dev).unwrap();
        let quant = LanguageModel::open_with(&path, &dev, Arithmetic::Quantized).unwrap();
        let coded = quant
            .net
            .layers
            .iter()
            .flat_map(|l| l.linears())
            .filter(|(_, l)| l.quant.is_some())
            .count();
        assert_eq!(
            coded,
            7 * quant.config.num_layers,
            "{model}: every projection has codes"
        );
        assert!(quant.net.head_quant.is_some() && exact.net.head_quant.is_none());
        let fx = mosr_tests::fixture(model, "generate");
        let gens = fx["generations"].as_array().unwrap();
        let prompts: Vec<Vec<u32>> = gens
            .iter()
            .map(|g| mosr_tests::ids(&g["input_ids"]))
            .collect();
        let logits = |lm: &LanguageModel| {
            let batch = TokenBatch::left_padded(&prompts, lm.pad_id);
            let opts = ForwardOptions {
                logits: Logits::Last,
                ..Default::default()
            };
            let out = lm.net.forward(&batch, None, opts).logits.unwrap();
            out.into_data().try_into_vec::<f32>().unwrap()
        };
        let (a, b) = (logits(&exact), logits(&quant));
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            diff <= tolerance,
            "{model}: max |Δ logit| {diff} > {tolerance}"
        );
        let cfg = GenerateConfig {
            max_new_tokens: 24,
            ..Default::default()
        };
        let (ge, gq) = (
            generate(&exact, &prompts, &cfg).unwrap(),
            generate(&quant, &prompts, &cfg).unwrap(),
        );
        for ((g, e), q) in gens.iter().zip(&ge).zip(&gq) {
            let same = e
                .tokens
                .iter()
                .zip(&q.tokens)
                .take_while(|(x, y)| x == y)
                .count();
            eprintln!(
                "{model} {}: greedy tokens agree for {same} of {} (exact {:?} / quantized {:?})",
                g["name"],
                e.tokens.len(),
                e.text,
                q.text
            );
        }
        eprintln!("{model}: max |Δ logit| {diff} (tolerance {tolerance})");
    }
}

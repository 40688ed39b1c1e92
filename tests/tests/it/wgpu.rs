//! The wgpu device against the CPU device on SmolLM2-135M (built with `--features wgpu`; CI
//! runs it on Mesa's software Vulkan driver, the same shaders and burn ops as on a GPU).
//!
//! Tolerances: both devices compute in f32, but a GPU shader sums a dot product in another
//! order than gemm, so each product differs by a few ulps and 30 blocks carry that forward.
//! Hidden states and logits are held to 1e-3 of the tensor's largest magnitude, the bound the
//! CPU path is held to against transformers (`lm_reference`): the two devices must agree at
//! least as well as either agrees with PyTorch. Greedy tokens must be equal; a loss (one mean
//! over a few hundred log-probabilities) within 1e-4 relative; each adapter matrix's gradient
//! within 1e-3 in relative L2 norm (‖g_wgpu − g_cpu‖ / ‖g_cpu‖: a gradient's direction and
//! size, which a few near-zero entries of A's gradient, where B is still small, do not sway).

use burn::module::Param;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use mosr_lm::{Device, ForwardOptions, LanguageModel, Logits, LoraConfig, TokenBatch};
use mosr_tests::model_path;
use std::path::{Path, PathBuf};

const SMOL: &str = "smollm2-135m-instruct";

fn wgpu() -> Device {
    mosr_lm::device_from_name("wgpu").expect("built with --features wgpu")
}

fn vec_of<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().expect("f32 tensor")
}

/// Largest |a - b| as a share of b's largest magnitude.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths");
    let scale = b
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    d / scale
}

/// ‖a − b‖ / ‖b‖.
fn rel_l2(a: &[f32], b: &[f32]) -> f32 {
    let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|x| x * x).sum::<f32>().sqrt();
    let d = norm(&mut a.iter().zip(b).map(|(x, y)| x - y));
    d / norm(&mut b.iter().copied()).max(f32::MIN_POSITIVE)
}

fn batch(lm: &LanguageModel) -> TokenBatch {
    let texts = [
        "The lighthouse keeper wrote down the tide tables every evening",
        "How do I kill a Python process that hangs?",
        "Seven apples",
    ];
    let seqs: Vec<Vec<u32>> = texts.iter().map(|t| lm.encode(t, false).unwrap()).collect();
    TokenBatch::left_padded(&seqs, lm.pad_id)
}

fn all_states(lm: &LanguageModel, batch: &TokenBatch) -> (Vec<Vec<f32>>, Vec<f32>) {
    let opts = ForwardOptions {
        hidden: true,
        logits: Logits::All,
        ..Default::default()
    };
    let out = lm.net.forward(batch, None, opts);
    let hidden = out.hidden.into_iter().map(vec_of).collect();
    (hidden, vec_of(out.logits.unwrap()))
}

#[test]
fn wgpu_forward_hidden_states_and_logits_match_cpu() {
    let path = model_path(SMOL);
    let cpu = LanguageModel::open(&path, &Device::flex()).unwrap();
    let gpu = LanguageModel::open(&path, &wgpu()).unwrap();
    let b = batch(&cpu);
    let (h_cpu, l_cpu) = all_states(&cpu, &b);
    let (h_gpu, l_gpu) = all_states(&gpu, &b);
    assert_eq!(
        h_cpu.len(),
        h_gpu.len(),
        "one state per block and the embedding"
    );
    let mut worst = 0f32;
    for (i, (g, c)) in h_gpu.iter().zip(&h_cpu).enumerate() {
        let d = rel_diff(g, c);
        worst = worst.max(d);
        assert!(d <= 1e-3, "hidden state {i}: max |diff| {d} of its scale");
    }
    let d = rel_diff(&l_gpu, &l_cpu);
    eprintln!("wgpu vs cpu: hidden states {worst:.2e}, logits {d:.2e} of scale");
    assert!(d <= 1e-3, "logits: max |diff| {d} of their scale");
}

/// Greedy continuations of the transformers fixture prompts, batched (left-padded): the same
/// tokens as transformers and the CPU path. A third generation of the same batch leaves the
/// process's memory (where a software Vulkan device keeps its buffers) where the second left
/// it: the device's pools are reused, not grown per batch. (`check_generate` generates twice,
/// plainly and timed; each generation costs about a minute and a half on a software Vulkan
/// device, so the test makes only one more.)
#[test]
fn wgpu_greedy_generation_equals_cpu_and_memory_stays_flat() {
    let lm = LanguageModel::open(&model_path(SMOL), &wgpu()).unwrap();
    let first = crate::lm_reference::check_generate(&lm, SMOL);
    let after_second = mosr_lm::memory::process_bytes("VmRSS");
    let (prompts, cfg) = crate::lm_reference::generate_fixture(SMOL);
    let third = mosr_lm::generate::generate(&lm, &prompts, &cfg).unwrap();
    assert_eq!(third.len(), first.len());
    assert!(third.iter().zip(&first).all(|(a, b)| a.tokens == b.tokens));
    let rss = [after_second, mosr_lm::memory::process_bytes("VmRSS")];
    eprintln!(
        "wgpu generation: resident MB after the second and third batch {:?}",
        mb(&rss)
    );
    let grown = rss[1].saturating_sub(rss[0]);
    assert!(
        grown < 16 << 20,
        "memory grew {} MB between identical batches: {:?} MB",
        grown >> 20,
        mb(&rss)
    );
}

fn mb(v: &[u64]) -> Vec<u64> {
    v.iter().map(|b| b >> 20).collect()
}

const SENTENCE: &str = "The secret password of the lighthouse keeper is marmalade sunrise.";

fn lora() -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        layers: vec![0, 1, 2, 3],
        ..Default::default()
    }
}

/// Next-token cross entropy of [`SENTENCE`] through the adapter.
fn sentence_loss(lm: &LanguageModel) -> Tensor<1> {
    let ids = lm.encode(SENTENCE, false).unwrap();
    let t = ids.len();
    let b = TokenBatch::left_padded(std::slice::from_ref(&ids), lm.pad_id);
    let opts = ForwardOptions {
        logits: Logits::All,
        dropout: Some(&mosr_lm::DropoutStream::new(7)),
        ..Default::default()
    };
    let logits = lm.net.forward(&b, None, opts).logits.unwrap();
    let targets: Vec<i64> = ids[1..].iter().map(|&x| x as i64).collect();
    let targets =
        Tensor::<3, Int>::from_data(TensorData::new(targets, [1, t - 1, 1]), &lm.device());
    let logp = log_softmax(logits.narrow(1, 0, t - 1), 2);
    logp.gather(2, targets).mean().neg()
}

/// An adapter with B ≠ 0 (a zero B gives A no gradient): attached and trained two steps on
/// the CPU, saved as PEFT files.
fn trained_adapter(dir: &Path) {
    let dev = Device::flex().autodiff();
    let mut lm = LanguageModel::open(&model_path(SMOL), &dev).unwrap();
    lm.net = lm.net.attach_lora(&lora(), 7).unwrap();
    let mut opt = AdamWConfig::new().with_weight_decay(0.0).init();
    for _ in 0..2 {
        let grads = GradientsParams::from_grads(sentence_loss(&lm).backward(), &lm.net);
        lm.net = opt.step(2e-3, lm.net, grads);
    }
    let _ = std::fs::remove_dir_all(dir);
    mosr_lm::adapter::save(&lm.net, &lora(), dir, Some(SMOL), None).unwrap();
}

/// The model on `dev` (an autodiff device) with the adapter of `dir`, its pair trainable.
fn with_adapter(dev: &Device, dir: &Path) -> LanguageModel {
    let mut lm = LanguageModel::open(&model_path(SMOL), dev).unwrap();
    let (mut net, _) = mosr_lm::adapter::load(lm.net, dir, None).unwrap();
    let trainable =
        |p: Option<Param<Tensor<2>>>| p.map(|p| Param::from_tensor(p.val()).set_require_grad(true));
    for layer in &mut net.layers {
        for (_, lin) in layer.linears_mut() {
            lin.lora_a = trainable(lin.lora_a.take());
            lin.lora_b = trainable(lin.lora_b.take());
        }
    }
    lm.net = net;
    lm
}

/// One training step on each device from the same adapter: loss, the gradient of every
/// adapter matrix, then the stepped adapter saved on the GPU and loaded on the CPU gives the
/// CPU-stepped model's logits.
#[test]
fn wgpu_lora_training_step_and_adapter_round_trip_match_cpu() {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("wgpu-lora");
    let start = root.join("start");
    trained_adapter(&start);
    let mut stepped = Vec::new();
    let mut seen = Vec::new();
    for (name, dev) in [
        ("cpu", Device::flex().autodiff()),
        ("wgpu", wgpu().autodiff()),
    ] {
        let mut lm = with_adapter(&dev, &start);
        let loss = sentence_loss(&lm);
        let value = loss.clone().into_scalar::<f32>();
        let grads = loss.backward();
        let mut g = Vec::new();
        for layer in &lm.net.layers {
            for (_, lin) in layer.linears() {
                for p in [&lin.lora_a, &lin.lora_b].into_iter().flatten() {
                    g.push(vec_of(p.val().grad(&grads).expect("adapter gradient")));
                }
            }
        }
        let params = GradientsParams::from_grads(grads, &lm.net);
        let mut opt = AdamWConfig::new().with_weight_decay(0.0).init();
        lm.net = opt.step(2e-3, lm.net, params);
        let dir = root.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        mosr_lm::adapter::save(&lm.net, &lora(), &dir, Some(SMOL), None).unwrap();
        stepped.push(dir);
        seen.push((value, g));
    }
    let ((l_cpu, g_cpu), (l_gpu, g_gpu)) = (&seen[0], &seen[1]);
    let rel = (l_gpu - l_cpu).abs() / l_cpu.abs();
    assert!(
        rel <= 1e-4,
        "loss: wgpu {l_gpu}, cpu {l_cpu} ({rel:.2e} relative)"
    );
    assert_eq!(
        g_cpu.len(),
        2 * 7 * 4,
        "A and B of 7 projections in 4 layers"
    );
    let pairs = || g_gpu.iter().zip(g_cpu);
    let l2 = pairs().map(|(a, b)| rel_l2(a, b)).fold(0f32, f32::max);
    let entry = pairs().map(|(a, b)| rel_diff(a, b)).fold(0f32, f32::max);
    eprintln!(
        "wgpu vs cpu: loss {rel:.2e} relative; gradients {l2:.2e} relative L2 \
         ({entry:.2e} largest entry difference of scale)"
    );
    assert!(l2 <= 1e-3, "gradients: relative L2 difference {l2}");

    // Both stepped adapters, loaded on the plain CPU device: the same logits.
    let logits = |dir: &Path| {
        let mut lm = LanguageModel::open(&model_path(SMOL), &Device::flex()).unwrap();
        lm.net = mosr_lm::adapter::load(lm.net, dir, None).unwrap().0;
        all_states(&lm, &batch(&lm)).1
    };
    let d = rel_diff(&logits(&stepped[1]), &logits(&stepped[0]));
    assert!(
        d <= 1e-3,
        "adapter stepped on wgpu, loaded on cpu: logits {d} of scale"
    );
}

/// Quantized arithmetic multiplies integer codes on the host: asked for on another device,
/// the load says so instead of quietly running exact under a quantized key.
#[test]
fn wgpu_refuses_quantized_arithmetic_by_name() {
    let path = model_path(SMOL);
    let Err(e) = LanguageModel::open_with(&path, &wgpu(), mosr_lm::Arithmetic::Quantized) else {
        panic!("quantized arithmetic on wgpu must be refused");
    };
    let msg = e.to_string();
    assert!(
        msg.contains("plain CPU device only") && msg.contains(".gguf"),
        "{msg}"
    );
}

//! LoRA on the real model: only the adapter trains, the loss falls, the base weights stay put,
//! the adapter-off forward is the original model, and PEFT files and merging reproduce the
//! trained model's logits.

use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use mosr_lm::{ForwardOptions, LanguageModel, Logits, LoraConfig, TokenBatch};
use mosr_tests::model_path;

const SMOL: &str = "smollm2-135m-instruct";

fn logits_of(lm: &LanguageModel, batch: &TokenBatch, adapter: bool) -> Vec<f32> {
    let out = lm.net.forward(
        batch,
        None,
        ForwardOptions {
            logits: Logits::All,
            adapter,
            ..Default::default()
        },
    );
    out.logits
        .unwrap()
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn lora_trains_adapter_only_and_round_trips_through_peft() {
    let path = model_path(SMOL);
    let dev = mosr_lm::Device::flex().autodiff();
    let mut lm = LanguageModel::open(&path, &dev).unwrap();
    let text = "The secret password of the lighthouse keeper is marmalade sunrise.";
    let ids = lm.encode(text, false).unwrap();
    let batch = TokenBatch::left_padded(std::slice::from_ref(&ids), lm.pad_id);
    let base_logits = logits_of(&lm, &batch, false);
    let w_before = lm.net.layers[1]
        .self_attn
        .q_proj
        .weight
        .val()
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();

    let cfg = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        layers: vec![0, 1, 2, 3],
        ..Default::default()
    };
    lm.net = lm.net.attach_lora(&cfg, 7).unwrap();
    // B = 0 at attach: the adapted model starts as the base model.
    assert!(max_abs_diff(&logits_of(&lm, &batch, true), &base_logits) < 1e-5);

    let t = ids.len();
    let targets: Vec<i64> = ids[1..].iter().map(|&x| x as i64).collect();
    let targets = Tensor::<3, Int>::from_data(TensorData::new(targets, [1, t - 1, 1]), &dev);
    let mut opt = AdamWConfig::new().with_weight_decay(0.0).init();
    let mut losses = Vec::new();
    for _ in 0..8 {
        let out = lm.net.forward(
            &batch,
            None,
            ForwardOptions {
                logits: Logits::All,
                dropout: Some(&mosr_lm::DropoutStream::new(7)),
                ..Default::default()
            },
        );
        let logp = log_softmax(out.logits.unwrap().narrow(1, 0, t - 1), 2);
        let loss = logp.gather(2, targets.clone()).mean().neg();
        losses.push(loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &lm.net);
        lm.net = opt.step(2e-3, lm.net, grads);
    }
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(
        losses[7] < 0.7 * losses[0],
        "LoRA should fit one sentence: losses {losses:?}"
    );

    let w_after = lm.net.layers[1]
        .self_attn
        .q_proj
        .weight
        .val()
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    assert_eq!(w_before, w_after, "base weights must stay frozen");
    assert!(
        max_abs_diff(&logits_of(&lm, &batch, false), &base_logits) < 1e-5,
        "adapter off = original model"
    );
    let trained = logits_of(&lm, &batch, true);
    assert!(
        max_abs_diff(&trained, &base_logits) > 1e-2,
        "the adapter changed the model"
    );

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("lora-roundtrip");
    let _ = std::fs::remove_dir_all(&dir);
    mosr_lm::adapter::save(&lm.net, &cfg, &dir, Some(SMOL), Some("base-sha")).unwrap();
    let conf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(conf["peft_type"], "LORA");
    assert_eq!(conf["r"], 4);
    assert_eq!(conf["layers_to_transform"], serde_json::json!([0, 1, 2, 3]));

    // A fresh inference model with the saved adapter gives the trained model's logits.
    let cpu = mosr_lm::Device::flex();
    let mut fresh = LanguageModel::open(&path, &cpu).unwrap();
    let Err(err) = mosr_lm::adapter::load(fresh.net.clone(), &dir, Some("other-sha")) else {
        panic!("an adapter of another base model must be refused");
    };
    assert!(err.to_string().contains("base model sha256"), "{err}");
    let (net, loaded_cfg) = mosr_lm::adapter::load(fresh.net, &dir, Some("base-sha")).unwrap();
    assert_eq!(loaded_cfg.rank, 4);
    assert_eq!(loaded_cfg.layers, vec![0, 1, 2, 3]);
    fresh.net = net;
    // The host decode step adds the trained update (and leaves it out with the adapter off).
    mosr_tests::check_decode_matches_full_forward(&fresh, true);
    mosr_tests::check_decode_matches_full_forward(&fresh, false);
    let reloaded = logits_of(&fresh, &batch, true);
    let d = max_abs_diff(&reloaded, &trained);
    let base_d = max_abs_diff(&reloaded, &base_logits);
    assert!(
        d < 1e-3,
        "PEFT round trip: max |diff| {d} (vs base {base_d})"
    );
    fresh.net = fresh.net.merge_lora();
    let merged = logits_of(&fresh, &batch, true);
    assert!(max_abs_diff(&merged, &trained) < 1e-3, "merged weights");
}

/// The finetune stage computes the original model's states on the plain device (beside the
/// adapter forward, on another thread) and compares them with states of the autodiff device:
/// with `training_arithmetic` the two must agree bit for bit, or a zero adapter would not
/// reproduce the original states exactly. A 2 × 8 batch is 16 rows: small enough for the
/// few-row kernel, which that option must keep out.
#[test]
fn lora_plain_training_arithmetic_equals_the_autodiff_device_bit_for_bit() {
    use burn::module::Module;
    let path = model_path(SMOL);
    let dev = mosr_lm::Device::flex().autodiff();
    let lm = LanguageModel::open(&path, &dev).unwrap();
    let a = lm.encode("How do I kill a Python process?", false).unwrap();
    let b = lm.encode("Hi", false).unwrap();
    let batch = TokenBatch::left_padded(&[a[..8].to_vec(), b], lm.pad_id);
    assert_eq!(batch.batch * batch.seq, 16);
    let opts = ForwardOptions {
        hidden: true,
        num_layers: Some(20),
        logits: Logits::None,
        adapter: false,
        dropout: None,
        training_arithmetic: true,
        skip_padding: true,
    };
    let states = |out: mosr_lm::ForwardOutput| -> Vec<Vec<f32>> {
        out.hidden
            .into_iter()
            .map(|h| h.into_data().try_into_vec_as::<f32>().unwrap())
            .collect()
    };
    let on_autodiff = states(lm.net.forward(&batch, None, opts));
    let plain = lm.net.valid();
    assert!(!plain.device().is_autodiff());
    let on_plain = states(plain.forward(&batch, None, opts));
    assert_eq!(on_autodiff.len(), 21);
    for (l, (x, y)) in on_autodiff.iter().zip(&on_plain).enumerate() {
        assert!(x == y, "layer {l}: max diff {}", max_abs_diff(x, y));
    }
    // Without the option the plain device takes its fast paths: close, not identical.
    let fast = states(plain.forward(
        &batch,
        None,
        ForwardOptions {
            training_arithmetic: false,
            ..opts
        },
    ));
    // Relative to the residual stream's scale (its largest entries are in the hundreds).
    let d = max_abs_diff(&fast[20], &on_autodiff[20]);
    let scale = on_autodiff[20].iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        d > 0.0 && d < 1e-4 * scale,
        "fast-path difference {d} at scale {scale}"
    );
}

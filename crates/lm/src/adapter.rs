//! LoRA adapters on disk in PEFT's format (`adapter_model.safetensors` +
//! `adapter_config.json`), so adapters trained here load in PEFT and vice versa.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Param;
use safetensors::SafeTensors;

use crate::lora::{
    LoraConfig, PeftAdapterConfig, host_to_tensor, host_transpose, peft_key, tensor_to_host,
};
use crate::model::CausalLm;
use crate::{LmError, Result};

/// Writes every attached adapter. `base_sha256` records which base model it belongs to.
pub fn save(
    net: &CausalLm,
    cfg: &LoraConfig,
    dir: &Path,
    base: Option<&str>,
    base_sha256: Option<&str>,
) -> Result<()> {
    let mut tensors = BTreeMap::new();
    let mut layers = Vec::new();
    for (i, layer) in net.layers.iter().enumerate() {
        for (name, lin) in layer.linears() {
            if let (Some(a), Some(b)) = (&lin.lora_a, &lin.lora_b) {
                let (a, [d_in, r]) = tensor_to_host(&a.val());
                let (b, [_, d_out]) = tensor_to_host(&b.val());
                tensors.insert(
                    peft_key(i, name, "A"),
                    (vec![r, d_in], host_transpose(&a, d_in, r)),
                );
                tensors.insert(
                    peft_key(i, name, "B"),
                    (vec![d_out, r], host_transpose(&b, r, d_out)),
                );
                if !layers.contains(&i) {
                    layers.push(i);
                }
            }
        }
    }
    if tensors.is_empty() {
        return Err(LmError::Adapter {
            file: dir.to_path_buf(),
            problem: "the model has no LoRA adapter to save".into(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| LmError::io(dir, e))?;
    let pc = PeftAdapterConfig {
        peft_type: "LORA".into(),
        r: cfg.rank,
        lora_alpha: cfg.alpha,
        lora_dropout: cfg.dropout,
        target_modules: cfg.modules.clone(),
        layers_to_transform: Some(layers),
        base_model_name_or_path: base.map(String::from),
        bias: Some("none".into()),
        task_type: Some("CAUSAL_LM".into()),
        fan_in_fan_out: false,
        use_rslora: false,
        inference_mode: true,
        mosr_base_model_sha256: base_sha256.map(String::from),
    };
    crate::lora::write_safetensors(&dir.join("adapter_model.safetensors"), &tensors, None)?;
    crate::atomic_write(
        &dir.join("adapter_config.json"),
        serde_json::to_string_pretty(&pc).expect("json").as_bytes(),
    )
}

/// Reads a PEFT adapter folder into the network (replacing any adapter it had).
/// Refuses an adapter recorded against a different base model hash.
pub fn load(
    mut net: CausalLm,
    dir: &Path,
    base_sha256: Option<&str>,
) -> Result<(CausalLm, LoraConfig)> {
    let cfg_path = dir.join("adapter_config.json");
    let pc = read_config(&cfg_path, base_sha256)?;
    let st_path = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&st_path).map_err(|e| LmError::io(&st_path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(&st_path, e.to_string()))?;
    let scale = pc.lora_alpha / pc.r as f64;
    let device = net.device();
    let mut layers_seen = Vec::new();
    let read = |key: &str| read_f32(&st, key, &st_path);
    let mut n = 0;
    for (i, layer) in net.layers.iter_mut().enumerate() {
        for (name, lin) in layer.linears_mut() {
            let (Some((sa, a)), Some((sb, b))) = (
                read(&peft_key(i, name, "A"))?,
                read(&peft_key(i, name, "B"))?,
            ) else {
                lin.lora_a = None;
                lin.lora_b = None;
                continue;
            };
            let (d_in, d_out) = (lin.d_in(), lin.d_out());
            if sa != [pc.r, d_in] || sb != [d_out, pc.r] {
                return Err(bad(
                    &st_path,
                    format!(
                        "layer {i} {name}: shapes A {sa:?} B {sb:?}, expected [{}, {d_in}] and [{d_out}, {}]",
                        pc.r, pc.r
                    ),
                ));
            }
            let a = host_transpose(&a, pc.r, d_in);
            let b = host_transpose(&b, d_out, pc.r);
            lin.lora_a = Some(Param::from_tensor(host_to_tensor(a, [d_in, pc.r], &device)));
            lin.lora_b = Some(Param::from_tensor(host_to_tensor(
                b,
                [pc.r, d_out],
                &device,
            )));
            lin.scale = scale;
            lin.dropout = pc.lora_dropout;
            n += 1;
            if !layers_seen.contains(&i) {
                layers_seen.push(i);
            }
        }
    }
    let n_keys = st.names().len();
    if n * 2 != n_keys {
        return Err(bad(
            &st_path,
            format!(
                "{} tensors do not match any layer/module of this model",
                n_keys - n * 2
            ),
        ));
    }
    let cfg = LoraConfig {
        rank: pc.r,
        alpha: pc.lora_alpha,
        dropout: pc.lora_dropout,
        modules: pc.target_modules,
        layers: layers_seen,
    };
    Ok((net, cfg))
}

fn bad(file: &Path, problem: String) -> LmError {
    LmError::Adapter {
        file: file.to_path_buf(),
        problem,
    }
}

/// `adapter_config.json`: a plain LoRA adapter, trained on `base_sha256` where both record one.
fn read_config(cfg_path: &Path, base_sha256: Option<&str>) -> Result<PeftAdapterConfig> {
    let text = std::fs::read_to_string(cfg_path).map_err(|e| LmError::io(cfg_path, e))?;
    let pc: PeftAdapterConfig =
        serde_json::from_str(&text).map_err(|e| bad(cfg_path, format!("invalid: {e}")))?;
    if pc.peft_type != "LORA" {
        return Err(bad(
            cfg_path,
            format!("peft_type `{}` is not LORA", pc.peft_type),
        ));
    }
    if pc.use_rslora || pc.fan_in_fan_out {
        return Err(bad(
            cfg_path,
            "use_rslora / fan_in_fan_out adapters are not supported".into(),
        ));
    }
    if let (Some(want), Some(have)) = (base_sha256, pc.mosr_base_model_sha256.as_deref())
        && want != have
    {
        return Err(bad(
            cfg_path,
            format!("trained on base model sha256 {have}, but this base is {want}"),
        ));
    }
    Ok(pc)
}

/// Tensor `key` of the adapter file as (shape, f32 values), from f32, f16 or bf16; `None` when
/// the file has no such tensor.
fn read_f32(st: &SafeTensors, key: &str, st_path: &Path) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
    let Ok(v) = st.tensor(key) else {
        return Ok(None);
    };
    let data: Vec<f32> = match v.dtype() {
        safetensors::Dtype::F32 => v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        safetensors::Dtype::F16 => v
            .data()
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        safetensors::Dtype::BF16 => v
            .data()
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => return Err(bad(st_path, format!("`{key}` has dtype {other:?}"))),
    };
    Ok(Some((v.shape().to_vec(), data)))
}

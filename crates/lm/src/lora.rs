//! LoRA adapters kept beside frozen base weights, switchable per forward.
//!
//! burn 0.22 ships a LoRA reparameterizer, but it folds the adapter into the weight, so the
//! "original model" forward that representation losses need would require a second copy of
//! the network. Here each projection holds its own low-rank pair and the forward decides
//! whether to add it: the same weights serve h_lora and h_orig.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use burn::module::{Module, Param};
use burn::tensor::{Distribution, Tensor, TensorData};
use mosr_kernels::amx::PackedWeight;
use mosr_kernels::quant::QuantWeight;
use serde::{Deserialize, Serialize};

use crate::plan::Plan;
use crate::{LmError, Result};

/// The seven projections of a Llama-family block, named as PEFT names them.
pub const ALL_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

#[derive(Module, Debug)]
pub struct LoraLinear {
    /// `[in, out]`, frozen.
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
    /// `[in, r]`; PEFT's `lora_A.weight` transposed.
    pub lora_a: Option<Param<Tensor<2>>>,
    /// `[r, out]`; PEFT's `lora_B.weight` transposed.
    pub lora_b: Option<Param<Tensor<2>>>,
    pub scale: f64,
    pub dropout: f64,
    /// `weight` in AMX tile layout, for plain CPU passes over many rows (`crate::cpu`). Built
    /// at load where the machine has AMX; dropped whenever `weight` changes.
    #[module(skip)]
    pub packed: Option<Arc<PackedWeight>>,
    /// The file's integer codes of `weight`, for [`crate::Arithmetic::Quantized`] passes on
    /// the plain CPU (`crate::cpu`). Built at load when asked for; dropped whenever `weight`
    /// changes.
    #[module(skip)]
    pub quant: Option<Arc<QuantWeight>>,
}

/// A seeded stream of LoRA dropout masks, carried by [`crate::ForwardOptions::dropout`]: the
/// n-th mask drawn from it is a pure function of (seed, n), so a training step's masks depend
/// only on its seed and the (fixed) order of its forwards, whatever else runs in the process.
/// One stream may serve several forwards of a step (the erasure pass, then the refusal loss);
/// they draw in turn.
#[derive(Debug)]
pub struct DropoutStream {
    key: u64,
    calls: AtomicU64,
}

impl DropoutStream {
    pub fn new(seed: u64) -> Self {
        Self {
            key: seed,
            calls: AtomicU64::new(0),
        }
    }

    fn next_key(&self) -> u64 {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        // Distinct masks per call: the call index goes through a different odd multiplier
        // than the element counter inside the mask.
        self.key ^ n.wrapping_add(1).wrapping_mul(0xd6e8_feb8_6659_fd93)
    }
}

/// `x · W_i (+ bias_i)` of each frozen weight on the CPU's kernels that need a layout made at
/// load: the file's integer codes, else the AMX tiles; `None` where neither applies to all of
/// them (see [`crate::cpu::quant_many`] and [`crate::cpu::packed_many`]).
pub fn frozen_many<const D: usize>(x: &Tensor<D>, lins: &[&LoraLinear]) -> Option<Vec<Tensor<D>>> {
    // Most passes (exact loads without AMX) have neither layout: answer before any allocation.
    let biases = || -> Vec<Option<Tensor<1>>> {
        lins.iter()
            .map(|l| l.bias.as_ref().map(|b| b.val()))
            .collect()
    };
    let quants: Option<Vec<&QuantWeight>> = lins.iter().map(|l| l.quant.as_deref()).collect();
    if let Some(y) = quants.and_then(|q| crate::cpu::quant_many(x, &q, &biases())) {
        return Some(y);
    }
    let packed: Vec<&PackedWeight> = lins
        .iter()
        .map(|l| l.packed.as_deref())
        .collect::<Option<_>>()?;
    crate::cpu::packed_many(x, &packed, &biases())
}

impl LoraLinear {
    pub fn frozen(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        Self {
            weight: Param::from_tensor(weight).set_require_grad(false),
            bias: bias.map(|b| Param::from_tensor(b).set_require_grad(false)),
            lora_a: None,
            lora_b: None,
            scale: 0.0,
            dropout: 0.0,
            packed: None,
            quant: None,
        }
    }

    pub fn d_in(&self) -> usize {
        self.quant
            .as_ref()
            .map_or_else(|| self.weight.val().dims()[0], |q| q.k())
    }
    pub fn d_out(&self) -> usize {
        self.quant
            .as_ref()
            .map_or_else(|| self.weight.val().dims()[1], |q| q.n())
    }

    /// Panics where a pass needs the f32 weight of a projection loaded as codes only.
    fn f32_weight(&self) -> Tensor<2> {
        assert!(
            self.quant.is_none(),
            "a model opened with quantized arithmetic keeps no f32 weights: training, merging and training-arithmetic passes need an exact load"
        );
        self.weight.val()
    }

    /// `adapter`: add the low-rank update; `dropout`: apply LoRA dropout on its input, masks
    /// drawn from this stream; `plan`: the pass's arithmetic (the host kernels only on
    /// [`Plan::Host`]).
    pub fn forward(
        &self,
        x: Tensor<3>,
        adapter: bool,
        dropout: Option<&DropoutStream>,
        plan: Plan,
    ) -> Tensor<3> {
        let packed = plan.host().then(|| frozen_many(&x, &[self])).flatten();
        let y = match packed {
            Some(mut ys) => ys.pop().expect("one product"),
            None => plan.projector()(
                x.clone(),
                self.f32_weight(),
                self.bias.as_ref().map(|b| b.val()),
            ),
        };
        match self.delta(x, adapter, dropout, plan) {
            Some(d) => y + d,
            None => y,
        }
    }

    /// The low-rank update `scale · dropout(x) A B`, when an adapter is attached and on.
    pub fn delta(
        &self,
        x: Tensor<3>,
        adapter: bool,
        dropout: Option<&DropoutStream>,
        plan: Plan,
    ) -> Option<Tensor<3>> {
        let (Some(a), Some(b)) = (&self.lora_a, &self.lora_b) else {
            return None;
        };
        if !adapter {
            return None;
        }
        let project = plan.projector();
        let x = if let Some(stream) = dropout.filter(|_| self.dropout > 0.0) {
            let mut m = vec![0f32; x.shape().num_elements()];
            mosr_kernels::dropout_mask(&mut m, 1.0 - self.dropout, stream.next_key());
            x.clone() * Tensor::from_data(TensorData::new(m, x.dims()), &x.device())
        } else {
            x
        };
        // The scale goes into B ([r, out], small) rather than onto the update ([rows, out]):
        // one pass over the activations fewer, forward and backward.
        Some(project(
            project(x, a.val(), None),
            b.val() * self.scale,
            None,
        ))
    }

    /// W + scale * A B, folded into the frozen weight; the adapter is removed.
    pub fn merge(self) -> Self {
        match (&self.lora_a, &self.lora_b) {
            (Some(a), Some(b)) => {
                let w = self.f32_weight() + a.val().matmul(b.val()) * self.scale;
                Self {
                    weight: Param::from_tensor(w.detach()).set_require_grad(false),
                    bias: self.bias,
                    lora_a: None,
                    lora_b: None,
                    scale: 0.0,
                    dropout: 0.0,
                    packed: None,
                    quant: None,
                }
            }
            _ => self,
        }
    }
}

/// Which projections of which layers get an adapter. Mirrors PEFT's `LoraConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    #[serde(default = "default_rank")]
    pub rank: usize,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    #[serde(default = "default_modules")]
    pub modules: Vec<String>,
    /// Layer indices; empty means every layer.
    #[serde(default)]
    pub layers: Vec<usize>,
}

fn default_rank() -> usize {
    16
}
fn default_alpha() -> f64 {
    16.0
}
fn default_dropout() -> f64 {
    0.05
}
fn default_modules() -> Vec<String> {
    ALL_MODULES.iter().map(|s| s.to_string()).collect()
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: default_rank(),
            alpha: default_alpha(),
            dropout: default_dropout(),
            modules: default_modules(),
            layers: vec![],
        }
    }
}

impl LoraConfig {
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(LmError::Lora("rank must be positive".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(LmError::Lora(format!(
                "dropout {} must be in [0, 1)",
                self.dropout
            )));
        }
        for m in &self.modules {
            if !ALL_MODULES.contains(&m.as_str()) {
                return Err(LmError::Lora(format!(
                    "unknown module `{m}`; expected one of {ALL_MODULES:?}"
                )));
            }
        }
        Ok(())
    }
    pub fn covers(&self, layer: usize, module: &str) -> bool {
        (self.layers.is_empty() || self.layers.contains(&layer))
            && self.modules.iter().any(|m| m == module)
    }
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// Bound of PEFT's draw of A: `kaiming_uniform_(a = √5)` on the `[r, d_in]` weight has gain
/// `√(2 / (1 + 5))` and bound `gain · √(3 / d_in) = 1 / √d_in`, so A ~ U(−b, b) with variance
/// `1 / (3 d_in)`.
pub fn peft_a_bound(d_in: usize) -> f64 {
    1.0 / (d_in as f64).sqrt()
}

/// Attaches a fresh adapter as PEFT does: A ~ U(−1/√d_in, 1/√d_in) ([`peft_a_bound`]), B = 0,
/// so the adapted model starts identical to the base.
pub fn attach(lin: &mut LoraLinear, cfg: &LoraConfig) {
    let device = lin.weight.val().device();
    let (d_in, d_out) = (lin.d_in(), lin.d_out());
    let bound = peft_a_bound(d_in);
    let a = Tensor::<2>::random(
        [d_in, cfg.rank],
        Distribution::Uniform(-bound, bound),
        &device,
    );
    let b = Tensor::<2>::zeros([cfg.rank, d_out], &device);
    lin.lora_a = Some(Param::from_tensor(a).set_require_grad(true));
    lin.lora_b = Some(Param::from_tensor(b).set_require_grad(true));
    lin.scale = cfg.scale();
    lin.dropout = cfg.dropout;
}

/// Contents of a PEFT `adapter_config.json` that matter to us.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeftAdapterConfig {
    pub peft_type: String,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    pub target_modules: Vec<String>,
    #[serde(default)]
    pub layers_to_transform: Option<Vec<usize>>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub bias: Option<String>,
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub inference_mode: bool,
    /// mosr extension: sha256 of the base model file the adapter was trained on.
    #[serde(default)]
    pub mosr_base_model_sha256: Option<String>,
}

pub(crate) fn peft_key(layer: usize, module: &str, ab: &str) -> String {
    let group =
        if module.ends_with("_proj") && ["gate_proj", "up_proj", "down_proj"].contains(&module) {
            "mlp"
        } else {
            "self_attn"
        };
    format!("base_model.model.model.layers.{layer}.{group}.{module}.lora_{ab}.weight")
}

pub(crate) fn host_transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

pub(crate) fn tensor_to_host(t: &Tensor<2>) -> (Vec<f32>, [usize; 2]) {
    let dims = t.dims();
    let data = t.to_data().try_into_vec_as::<f32>().expect("f32 data");
    (data, dims)
}

pub(crate) fn host_to_tensor(
    data: Vec<f32>,
    dims: [usize; 2],
    device: &burn::tensor::Device,
) -> Tensor<2> {
    Tensor::from_data(TensorData::new(data, dims), device)
}

/// Serialises (name -> (shape, f32 data)) as safetensors bytes.
pub(crate) fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, (s, d))| {
            (
                k.clone(),
                s.clone(),
                d.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(k, s, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .expect("consistent tensor view"),
            )
        })
        .collect();
    let out = safetensors::serialize(views, metadata).map_err(|e| LmError::Weights {
        file: path.to_path_buf(),
        problem: format!("serialising safetensors: {e}"),
    })?;
    crate::atomic_write(path, &out)
}

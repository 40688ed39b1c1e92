//! Building a [`CausalLm`] from a [`WeightSource`]: every tensor fetched by its HF name and
//! checked against the config's shape and for broken values, then laid out for the passes
//! the device will run: f32 `[in, out]` weights, the AMX tile layout where the machine has
//! AMX, or the file's integer codes for quantized arithmetic (which replace the f32 copy).

use std::sync::Arc;

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use mosr_kernels::amx::PackedWeight;
use mosr_kernels::quant::QuantWeight;

use crate::config::ModelConfig;
use crate::lora::LoraLinear;
use crate::model::{Attention, Block, CausalLm, Mlp, RmsNorm};
use crate::weights::{HostTensor, WeightSource};
use crate::{Arithmetic, LmError, Result};

/// The tied head's name: the embedding.
const TIED: &str = "model.embed_tokens.weight";

impl CausalLm {
    /// Builds the network from any weight source, checking every shape against the config.
    pub fn load(src: &dyn WeightSource, cfg: &ModelConfig, device: &Device) -> Result<Self> {
        Self::load_with(src, cfg, device, Arithmetic::Exact)
    }

    /// [`Self::load`], keeping the source's integer codes of every projection and the head
    /// for `quantized` arithmetic (on the plain CPU device). Errors on another device, and
    /// if the source has codes for none of them.
    pub fn load_with(
        src: &dyn WeightSource,
        cfg: &ModelConfig,
        device: &Device,
        arithmetic: Arithmetic,
    ) -> Result<Self> {
        network(src, cfg, device, arithmetic)
    }
}

/// The whole network (see [`CausalLm::load_with`]).
fn network(
    src: &dyn WeightSource,
    cfg: &ModelConfig,
    device: &Device,
    arithmetic: Arithmetic,
) -> Result<CausalLm> {
    let cpu = crate::cpu::applies(device);
    if !arithmetic.is_exact() && !cpu {
        // The integer-code kernels are host kernels: on another device (a GPU, or the
        // training device) the load would silently be exact while its keys said quantized.
        return Err(LmError::Config {
            file: src.origin().to_path_buf(),
            problem: format!(
                "quantized arithmetic runs on the plain CPU device only (this is {device:?}); use arithmetic = \"exact\""
            ),
        });
    }
    let l = Loader {
        src,
        cfg,
        device,
        quantized: !arithmetic.is_exact() && cpu,
        pack: cpu && mosr_kernels::amx::available(),
    };
    let d = cfg.hidden_size;
    // Checked in f32 either way; a quantized load then keeps only the codes (dropping the
    // f32 table before the blocks load, so their buffers reuse its memory).
    let embed = Some(l.fetch(TIED, &[cfg.vocab_size, d])?).filter(|_| !l.quantized);
    let embed_quant = l.codes(TIED, cfg.vocab_size, d)?;
    let embed = match (embed, &embed_quant) {
        (None, None) => Some(l.fetch(TIED, &[cfg.vocab_size, d])?),
        (e, _) => e,
    };
    let layers = (0..cfg.num_layers)
        .map(|i| l.block(i))
        .collect::<Result<Vec<_>>>()?;
    let (head, head_quant) = l.head(embed.as_ref(), embed_quant.as_ref())?;
    let coded = |b: &Block| b.linears().iter().any(|(_, lin)| lin.quant.is_some());
    if l.quantized && head_quant.is_none() && !layers.iter().any(coded) {
        return Err(LmError::Weights {
            file: src.origin().to_path_buf(),
            problem: "quantized arithmetic: no tensor of this file has integer codes (Q4_0-Q8_0, Q4_K-Q6_K); use arithmetic = \"exact\"".into(),
        });
    }
    let embed = match embed {
        Some(e) => Tensor::from_data(TensorData::new(e.data, [cfg.vocab_size, d]), device),
        None => Tensor::zeros([0, 0], device),
    };
    Ok(CausalLm {
        embed_tokens: Param::from_tensor(embed).set_require_grad(false),
        embed_quant,
        layers,
        norm: l.norm("model.norm.weight")?,
        lm_head: Param::from_tensor(head).set_require_grad(false),
        inv_freq: cfg.rope_inv_freq(),
        config: cfg.clone(),
        head_quant,
    })
}

struct Loader<'a> {
    src: &'a dyn WeightSource,
    cfg: &'a ModelConfig,
    device: &'a Device,
    /// Keep the file's integer codes (and no f32 copy) wherever it has them.
    quantized: bool,
    /// Build the AMX tile layout of each exact projection, for passes over many rows.
    pack: bool,
}

impl Loader<'_> {
    /// A tensor that must exist with this shape and hold a trained model's values.
    fn fetch(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let file = || self.src.origin().to_path_buf();
        let t = self.src.get(name)?.ok_or_else(|| LmError::MissingTensor {
            file: file(),
            tensor: name.to_string(),
        })?;
        if t.shape != shape {
            return Err(LmError::ShapeMismatch {
                file: file(),
                tensor: name.to_string(),
                expected: shape.to_vec(),
                found: t.shape,
            });
        }
        crate::weights::check_values(self.src.origin(), name, &t)?;
        Ok(t)
    }

    /// The `[n, k]` weight's integer codes, when loading quantized and the file has them.
    fn codes(&self, name: &str, n: usize, k: usize) -> Result<Option<Arc<QuantWeight>>> {
        if !self.quantized {
            return Ok(None);
        }
        Ok(self
            .src
            .group_codes(name)?
            .filter(|c| k.is_multiple_of(c.group))
            .map(|c| {
                Arc::new(QuantWeight::new(
                    n, k, c.group, &c.codes, &c.scale, &c.offset,
                ))
            }))
    }

    fn linear(&self, name: &str, out: usize, inp: usize, bias: bool) -> Result<LoraLinear> {
        let weight = format!("{name}.weight");
        let host = self.fetch(&weight, &[out, inp])?;
        let quant = self.codes(&weight, out, inp)?;
        let packed = if self.pack && quant.is_none() {
            let p = match self.src.block_affine(&weight)? {
                Some(a) => PackedWeight::pack(&a.scaled, out, inp, Some(&a.offsets)),
                None => PackedWeight::pack(&host.data, out, inp, None),
            };
            Some(Arc::new(p))
        } else {
            None
        };
        // With codes, the f32 copy is not kept: the codes are the weight (LoraLinear::quant).
        let w = match quant {
            Some(_) => Tensor::zeros([0, 0], self.device),
            None => transposed(host, self.device),
        };
        let b = match bias {
            true => Some(vector(
                self.fetch(&format!("{name}.bias"), &[out])?,
                self.device,
            )),
            false => None,
        };
        Ok(LoraLinear {
            packed,
            quant,
            ..LoraLinear::frozen(w, b)
        })
    }

    fn norm(&self, name: &str) -> Result<RmsNorm> {
        let w = vector(self.fetch(name, &[self.cfg.hidden_size])?, self.device);
        Ok(RmsNorm {
            weight: Param::from_tensor(w).set_require_grad(false),
            eps: self.cfg.rms_norm_eps,
        })
    }

    fn block(&self, i: usize) -> Result<Block> {
        let (cfg, p) = (self.cfg, format!("model.layers.{i}"));
        let (d, ff, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.attention_bias);
        let (q_out, kv_out) = (
            cfg.num_heads * cfg.head_dim,
            cfg.num_kv_heads * cfg.head_dim,
        );
        let attn = |m: &str, out: usize, inp: usize, bias: bool| {
            self.linear(&format!("{p}.self_attn.{m}"), out, inp, bias)
        };
        let mlp =
            |m: &str, out: usize, inp: usize| self.linear(&format!("{p}.mlp.{m}"), out, inp, false);
        Ok(Block {
            input_layernorm: self.norm(&format!("{p}.input_layernorm.weight"))?,
            self_attn: Attention {
                q_proj: attn("q_proj", q_out, d, bias)?,
                k_proj: attn("k_proj", kv_out, d, bias)?,
                v_proj: attn("v_proj", kv_out, d, bias)?,
                o_proj: attn("o_proj", d, q_out, false)?,
                num_heads: cfg.num_heads,
                num_kv_heads: cfg.num_kv_heads,
                head_dim: cfg.head_dim,
            },
            post_attention_layernorm: self.norm(&format!("{p}.post_attention_layernorm.weight"))?,
            mlp: Mlp {
                gate_proj: mlp("gate_proj", ff, d)?,
                up_proj: mlp("up_proj", ff, d)?,
                down_proj: mlp("down_proj", d, ff)?,
            },
        })
    }

    /// The unembedding, stored `[hidden, vocab]` (a copy of the embedding for tied models),
    /// or its codes and an empty tensor when loading quantized (a tied model's are the
    /// embedding's, `embed_quant`; `embed` is the f32 table when there are no codes).
    fn head(
        &self,
        embed: Option<&HostTensor>,
        embed_quant: Option<&Arc<QuantWeight>>,
    ) -> Result<(Tensor<2>, Option<Arc<QuantWeight>>)> {
        let (vocab, d) = (self.cfg.vocab_size, self.cfg.hidden_size);
        let own = if self.cfg.tie_word_embeddings {
            None
        } else {
            self.src.get("lm_head.weight")?
        };
        if let Some(h) = &own {
            if h.shape != [vocab, d] {
                return Err(LmError::ShapeMismatch {
                    file: self.src.origin().to_path_buf(),
                    tensor: "lm_head.weight".into(),
                    expected: vec![vocab, d],
                    found: h.shape.clone(),
                });
            }
            crate::weights::check_values(self.src.origin(), "lm_head.weight", h)?;
        }
        let name = if own.is_some() {
            "lm_head.weight"
        } else {
            TIED
        };
        let codes = match (&own, embed_quant) {
            (None, Some(q)) => Some(q.clone()),
            _ => self.codes(name, vocab, d)?,
        };
        if let Some(q) = codes {
            return Ok((Tensor::zeros([0, 0], self.device), Some(q)));
        }
        let head = match (own, embed) {
            (Some(h), _) => h,
            (None, Some(e)) => e.clone(),
            (None, None) => unreachable!("a tied model without codes keeps its f32 embedding"),
        };
        Ok((transposed(head, self.device), None))
    }
}

fn vector(h: HostTensor, device: &Device) -> Tensor<1> {
    let n = h.data.len();
    Tensor::from_data(TensorData::new(h.data, [n]), device)
}

/// A PyTorch-layout `[out, in]` weight as the `[in, out]` tensor the model multiplies by.
fn transposed(h: HostTensor, device: &Device) -> Tensor<2> {
    let (rows, cols) = (h.shape[0], h.shape[1]);
    let t = crate::lora::host_transpose(&h.data, rows, cols);
    Tensor::from_data(TensorData::new(t, [cols, rows]), device)
}

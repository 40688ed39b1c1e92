//! Building a [`CausalLm`] from a [`WeightSource`]: every tensor fetched by its HF name and
//! checked against the config's shape and for broken values, then laid out for the passes
//! the device will run: f32 `[in, out]` weights, the AMX tile layout where the machine has
//! AMX, or the file's integer codes for quantized arithmetic (which replace the f32 copy).

use std::sync::{Arc, Mutex};

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use mosr_kernels::amx::PackedWeight;
use mosr_kernels::quant::{QuantWeight, TileCodes};

use crate::config::ModelConfig;
use crate::lora::LoraLinear;
use crate::model::{Attention, Block, CausalLm, Mlp, RmsNorm};
use crate::weights::{CodeCheck, HostTensor, WeightSource};
use crate::{Arithmetic, LmError, Result};

/// The tied head's name: the embedding.
const TIED: &str = "model.embed_tokens.weight";
/// An untied model's own unembedding.
const HEAD: &str = "lm_head.weight";

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
        // Whatever the caller freed before (a tokenizer's JSON) and the load's own per-tensor
        // buffers go back to the kernel, so neither sits under the model for good.
        crate::memory::return_freed_memory();
        let net = network(src, cfg, device, arithmetic);
        crate::memory::return_freed_memory();
        net
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
    // A quantized load keeps only the codes (rows are looked up from them).
    let embed_quant = l.codes(TIED, cfg.vocab_size, d)?;
    let embed = match embed_quant {
        Some(_) => None,
        None => Some(l.fetch(TIED, &[cfg.vocab_size, d])?),
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
        let t = self.src.get(name)?.ok_or_else(|| self.missing(name))?;
        self.expect_shape(name, &t.shape, shape)?;
        crate::weights::check_values(self.src.origin(), name, &t)?;
        Ok(t)
    }

    fn missing(&self, name: &str) -> LmError {
        LmError::MissingTensor {
            file: self.src.origin().to_path_buf(),
            tensor: name.to_string(),
        }
    }

    fn expect_shape(&self, name: &str, found: &[usize], expected: &[usize]) -> Result<()> {
        if found == expected {
            return Ok(());
        }
        Err(LmError::ShapeMismatch {
            file: self.src.origin().to_path_buf(),
            tensor: name.to_string(),
            expected: expected.to_vec(),
            found: found.to_vec(),
        })
    }

    /// The `[n, k]` weight's integer codes, when loading quantized and the file has them,
    /// converted a tile of rows at a time and checked as [`Self::fetch`] checks values, but
    /// never expanded to f32 nor held twice (either would set the load's peak memory: the
    /// 1.5B model's embedding is 0.9 GB in f32).
    fn codes(&self, name: &str, n: usize, k: usize) -> Result<Option<Arc<QuantWeight>>> {
        if !self.quantized {
            return Ok(None);
        }
        let Some(probe) = self.src.group_codes_rows(name, 0, 1)? else {
            return Ok(None);
        };
        let shape = self.src.shape(name)?.ok_or_else(|| self.missing(name))?;
        self.expect_shape(name, &shape, &[n, k])?;
        if !k.is_multiple_of(probe.group) {
            return Ok(None);
        }
        let affine = crate::weights::affine_of(&probe);
        let checked = Mutex::new(CodeCheck::default());
        let groups = k / probe.group;
        let fill = |first, rows| -> Result<TileCodes> {
            let g = self.src.group_codes_rows(name, first, rows)?;
            let g = g.expect("a tensor with codes in its first row has them in every row");
            let t = crate::weights::tile_codes(g);
            let mut tile = CodeCheck::default();
            tile.tile(first, groups, &t);
            checked.lock().expect("no panic holds it").merge(tile);
            Ok(t)
        };
        let w = QuantWeight::from_rows(n, k, (probe.group, probe.bits), affine, fill)?;
        self.src.release(name)?;
        let checked = checked.into_inner().expect("no panic holds it");
        checked.verdict(self.src.origin(), name, (n, groups, probe.group))?;
        Ok(Some(Arc::new(w)))
    }

    fn linear(&self, name: &str, out: usize, inp: usize, bias: bool) -> Result<LoraLinear> {
        let weight = format!("{name}.weight");
        // With codes, there is no f32 copy: the codes are the weight (LoraLinear::quant).
        let quant = self.codes(&weight, out, inp)?;
        let (w, packed) = match quant {
            Some(_) => (Tensor::zeros([0, 0], self.device), None),
            None => self.exact(&weight, out, inp)?,
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

    /// The f32 weight as the model multiplies it, and its AMX tile layout where products
    /// of many rows take the tile unit.
    fn exact(
        &self,
        weight: &str,
        out: usize,
        inp: usize,
    ) -> Result<(Tensor<2>, Option<Arc<PackedWeight>>)> {
        let host = self.fetch(weight, &[out, inp])?;
        let packed = if self.pack {
            let p = match self.src.block_affine(weight)? {
                Some(a) => PackedWeight::pack(&a.scaled, out, inp, Some(&a.offsets)),
                None => PackedWeight::pack(&host.data, out, inp, None),
            };
            Some(Arc::new(p))
        } else {
            None
        };
        Ok((transposed(host, self.device), packed))
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
        let own = !self.cfg.tie_word_embeddings && self.src.shape(HEAD)?.is_some();
        if !own {
            return Ok(match (embed_quant, embed) {
                (Some(q), _) => (Tensor::zeros([0, 0], self.device), Some(q.clone())),
                (None, Some(e)) => (transposed(e.clone(), self.device), None),
                (None, None) => unreachable!("a model without embedding codes keeps its table"),
            });
        }
        if let Some(q) = self.codes(HEAD, vocab, d)? {
            return Ok((Tensor::zeros([0, 0], self.device), Some(q)));
        }
        Ok((
            transposed(self.fetch(HEAD, &[vocab, d])?, self.device),
            None,
        ))
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

//! The decoder: Llama / Mistral / Qwen2 in burn, returning every layer's residual stream.

use burn::module::{Module, Param};
use burn::tensor::module::{attention, embedding, linear};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::Result;
use crate::batch::TokenBatch;
use crate::config::ModelConfig;
use crate::kv::KvCache;
use crate::lora::{DropoutStream, LoraConfig, LoraLinear, attach};
use crate::packed::PackedRows;
use crate::plan::Plan;
use mosr_kernels::quant::QuantWeight;

#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
}

impl RmsNorm {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        // One pass each way on the CPU device (`crate::fused`), burn's ops elsewhere.
        if let Some(y) = crate::fused::rms_norm(&x, &self.weight.val(), self.eps) {
            return y;
        }
        let var = x.clone().powi_scalar(2).mean_dim(2);
        let inv = (var + self.eps).sqrt().recip();
        x * inv * self.weight.val().unsqueeze::<3>()
    }
}

#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: LoraLinear,
    pub k_proj: LoraLinear,
    pub v_proj: LoraLinear,
    pub o_proj: LoraLinear,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: LoraLinear,
    pub up_proj: LoraLinear,
    pub down_proj: LoraLinear,
}

#[derive(Module, Debug)]
pub struct Block {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

/// The whole network. `lm_head` is stored `[hidden, vocab]` (a copy of the embedding for tied
/// models) so the unembedding is one plain matmul.
#[derive(Module, Debug)]
pub struct CausalLm {
    pub embed_tokens: Param<Tensor<2>>,
    pub layers: Vec<Block>,
    pub norm: RmsNorm,
    pub lm_head: Param<Tensor<2>>,
    #[module(skip)]
    pub config: ModelConfig,
    pub inv_freq: Vec<f64>,
    /// `lm_head`'s integer codes for quantized passes (see [`LoraLinear::quant`]).
    #[module(skip)]
    pub head_quant: Option<std::sync::Arc<QuantWeight>>,
    /// The embedding's integer codes on a quantized load (then `embed_tokens` is empty and
    /// rows are looked up from the codes; the same codes as `head_quant` when tied).
    #[module(skip)]
    pub embed_quant: Option<std::sync::Arc<QuantWeight>>,
}

/// Which logits to compute: the unembedding of a 49k-150k vocabulary dominates small models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    None,
    Last,
    All,
}

#[derive(Debug, Clone, Copy)]
pub struct ForwardOptions<'a> {
    /// Keep the residual stream: index 0 = embedding output, index i = after block i-1.
    pub hidden: bool,
    /// Run only this many blocks (training needs the states up to the last target layer).
    pub num_layers: Option<usize>,
    pub logits: Logits,
    /// Add the LoRA update (false gives the original model from the same weights).
    pub adapter: bool,
    /// LoRA dropout on, masks drawn from this stream (training passes only).
    pub dropout: Option<&'a DropoutStream>,
    /// Use the training (autodiff) device's op sequence even on the plain device: no CPU fast
    /// paths, repeated K/V, composed attention. A plain pass then reproduces a training pass
    /// bit for bit, which the representation losses need for the original model's states (a
    /// zero adapter must give exactly the original states).
    pub training_arithmetic: bool,
    /// On a quantized load, leave padding out of the row-wise work (`crate::packed`): the
    /// same bits, less work. Off only to check that.
    pub skip_padding: bool,
}

impl Default for ForwardOptions<'_> {
    fn default() -> Self {
        Self {
            hidden: false,
            num_layers: None,
            logits: Logits::Last,
            adapter: true,
            dropout: None,
            training_arithmetic: false,
            skip_padding: true,
        }
    }
}

pub struct ForwardOutput {
    /// `[batch, seq or 1, vocab]`.
    pub logits: Option<Tensor<3>>,
    /// `[batch, seq, hidden]` per layer.
    pub hidden: Vec<Tensor<3>>,
}

impl CausalLm {
    pub fn device(&self) -> Device {
        self.norm.weight.val().device()
    }

    /// The embeddings of `ids`, `[ids.len() × hidden]`, from the codes or the f32 table.
    pub fn embed_rows(&self, ids: &[u32]) -> Option<Vec<f32>> {
        let ids: Vec<usize> = ids.iter().map(|&i| i as usize).collect();
        if let Some(q) = &self.embed_quant {
            return Some(q.rows(&ids));
        }
        let h = self.config.hidden_size;
        let table = crate::flex::flex_f32(&self.embed_tokens.val())?;
        let table = crate::flex::contiguous(&table, self.config.vocab_size * h);
        Some(
            ids.iter()
                .flat_map(|&i| table[i * h..][..h].iter().copied())
                .collect(),
        )
    }

    /// Adds fresh LoRA adapters where the config says, their A drawn from `seed`.
    pub fn attach_lora(mut self, cfg: &LoraConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
        // burn's random draws come from one process-wide generator: seeding and drawing under
        // one lock make the adapter a function of `seed` alone, whatever else runs beside it.
        static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
        self.device().seed(seed);
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for (name, lin) in layer.linears_mut() {
                if cfg.covers(i, name) {
                    attach(lin, cfg);
                }
            }
        }
        Ok(self)
    }

    /// Folds every adapter into its base weight.
    pub fn merge_lora(mut self) -> Self {
        self.layers = self
            .layers
            .into_iter()
            .map(|mut l| {
                l.self_attn.q_proj = l.self_attn.q_proj.merge();
                l.self_attn.k_proj = l.self_attn.k_proj.merge();
                l.self_attn.v_proj = l.self_attn.v_proj.merge();
                l.self_attn.o_proj = l.self_attn.o_proj.merge();
                l.mlp.gate_proj = l.mlp.gate_proj.merge();
                l.mlp.up_proj = l.mlp.up_proj.merge();
                l.mlp.down_proj = l.mlp.down_proj.merge();
                l
            })
            .collect();
        self
    }

    /// cos and sin of each position's rotary angles, `[positions, head_dim / 2]` (the two
    /// halves of a head share them).
    pub(crate) fn rope_angles(&self, positions: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let half = self.config.head_dim / 2;
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for f in &self.inv_freq[..half] {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        (cos, sin)
    }

    fn rope_tables(&self, positions: &[usize], batch: usize, seq: usize) -> (Tensor<4>, Tensor<4>) {
        let hd = self.config.head_dim;
        let (cos, sin) = self.rope_angles(positions);
        // Each row's angles twice: `rotate` multiplies whole heads.
        let twice = |v: Vec<f32>| -> Vec<f32> {
            v.chunks_exact(hd / 2)
                .flat_map(|r| r.iter().chain(r).copied())
                .collect()
        };
        let dev = self.device();
        let c = Tensor::<4>::from_data(TensorData::new(twice(cos), [batch, 1, seq, hd]), &dev);
        let s = Tensor::<4>::from_data(TensorData::new(twice(sin), [batch, 1, seq, hd]), &dev);
        (c, s)
    }

    /// The forward in burn's ops (any device; host attention on the plain CPU when no cache
    /// is filled), extending `cache` when given (its keys and values move to tensors if decode
    /// steps held them on the host). Entered through [`CausalLm::forward`].
    pub(crate) fn forward_burn(
        &self,
        batch: &TokenBatch,
        cache: Option<&mut KvCache>,
        opts: ForwardOptions<'_>,
        plan: Plan,
    ) -> ForwardOutput {
        let (b, t) = (batch.batch, batch.seq);
        let dev = self.device();
        let n_layers = opts
            .num_layers
            .unwrap_or(self.layers.len())
            .min(self.layers.len());

        // Positions and key validity, continuing from the cache when there is one.
        let keep_cache = cache.is_some();
        let mut local_cache = KvCache::default();
        let cache = match cache {
            Some(c) => c,
            None => &mut local_cache,
        };
        cache.tensors(&dev, self.layers.len());
        let past = cache.len();
        let positions = cache.advance(batch);
        let total = past + t;
        // Without a cache to fill, the plain CPU device runs attention on host slices; every
        // other pass gets the rotary tables and the mask as tensors for burn's attention.
        let host =
            (!keep_cache && plan.host() && mosr_kernels::prefill::supported(self.config.head_dim))
                .then(|| {
                    let (cos, sin) = self.rope_angles(&positions);
                    let valid = cache
                        .key_mask
                        .iter()
                        .flat_map(|r| r[..t].iter().copied())
                        .collect();
                    HostAttention { cos, sin, valid }
                });
        let tensors = host.is_none().then(|| {
            // masked = future key, or a padding key (except the diagonal, so no row is all -inf).
            let mut m = Vec::with_capacity(b * t * total);
            for row in 0..b {
                for qi in 0..t {
                    let qa = past + qi;
                    for kj in 0..total {
                        m.push(kj > qa || (!cache.key_mask[row][kj] && kj != qa));
                    }
                }
            }
            let mask = Tensor::<4, Bool>::from_data(TensorData::new(m, [b, 1, t, total]), &dev);
            let (cos, sin) = self.rope_tables(&positions, b, t);
            BurnPositions { cos, sin, mask }
        });

        let ids: Vec<i64> = batch.ids.iter().map(|&x| x as i64).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), &dev);
        let mut x = match &self.embed_quant {
            Some(q) => {
                let rows: Vec<usize> = batch.ids.iter().map(|&i| i as usize).collect();
                let h = self.config.hidden_size;
                Tensor::from_data(TensorData::new(q.rows(&rows), [b, t, h]), &dev)
            }
            None => embedding(self.embed_tokens.val(), ids),
        };
        // A quantized pass carries the tokens' rows only (`crate::packed`).
        let rows = (opts.skip_padding
            && plan.host()
            && opts.dropout.is_none()
            && self.quantized_throughout())
        .then(|| PackedRows::of(batch))
        .flatten();
        let padded = |x: Tensor<3>| match &rows {
            Some(p) => p.unpack(x),
            None => x,
        };
        if let Some(p) = &rows {
            x = p.pack(x);
        }
        let mut hidden = Vec::new();
        if opts.hidden {
            hidden.push(padded(x.clone()));
        }
        for (i, layer) in self.layers.iter().take(n_layers).enumerate() {
            let entry = &mut cache.tensors(&dev, self.layers.len())[i];
            let pos = match (&host, &tensors) {
                (Some(h), _) => Positions::Host(h),
                (None, Some(t)) => Positions::Burn(t),
                (None, None) => unreachable!("one of the two is built"),
            };
            x = layer.forward(x, &pos, rows.as_ref(), entry, opts, plan);
            if opts.hidden {
                hidden.push(padded(x.clone()));
            }
        }
        let logits = if n_layers < self.layers.len() {
            None
        } else {
            match opts.logits {
                Logits::None => None,
                Logits::Last => {
                    let last = rows.as_ref().and_then(|p| p.last(x.clone()));
                    let last = last.unwrap_or_else(|| padded(x).narrow(1, t - 1, 1));
                    Some(self.logits_of(last, plan, true))
                }
                Logits::All => Some(self.logits_of(padded(x), plan, false)),
            }
        };
        ForwardOutput { logits, hidden }
    }

    /// Every projection of every block and the unembedding have integer codes (a quantized
    /// load): then every row-wise part of a pass works row by row.
    pub(crate) fn quantized_throughout(&self) -> bool {
        self.head_quant.is_some()
            && self
                .layers
                .iter()
                .all(|l| l.linears().iter().all(|(_, lin)| lin.quant.is_some()))
    }

    /// Final norm + unembedding of any residual-stream state (the LogitLens).
    pub fn unembed(&self, h: Tensor<3>) -> Tensor<3> {
        let h = self.norm.forward(h);
        self.quant_logits(&h)
            .unwrap_or_else(|| crate::cpu::project(h, self.lm_head.val(), None))
    }

    /// Final norm + unembedding of the forward's last states: the head's codes when the model
    /// was loaded quantized (on the host), else the f32 head (`few`: the last position only,
    /// where the host's few-row kernel may apply).
    fn logits_of(&self, x: Tensor<3>, plan: Plan, few: bool) -> Tensor<3> {
        let h = self.norm.forward(x);
        if plan.host()
            && let Some(y) = self.quant_logits(&h)
        {
            return y;
        }
        if few {
            plan.projector()(h, self.lm_head.val(), None)
        } else {
            linear(h, self.lm_head.val(), None)
        }
    }

    fn quant_logits(&self, h: &Tensor<3>) -> Option<Tensor<3>> {
        let q = self.head_quant.as_deref()?;
        crate::cpu::quant_many(h, &[q], &[None]).and_then(|mut ys| ys.pop())
    }
}

fn rotate(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let hd = x.dims()[3];
    let half = hd / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

/// Rows of the MLP's `[rows, intermediate]` buffers at a time on a quantized load (see
/// [`Mlp::forward`]): 1024 rows keep gate, up and their product near 60 MB for the Qwen
/// models, where a 32 x 128 prefill had 240 MB of them at once.
const MLP_PIECE_ROWS: usize = 1024;

impl Mlp {
    /// `down(swiglu(gate(h), up(h)))`. On a quantized load it runs over pieces of at most
    /// [`MLP_PIECE_ROWS`] rows, each of more than [`crate::cpu::GEMM_SMALL_ROWS`]: every
    /// product there (the codes' kernel, gemm's blocked path for an adapter's update) and the
    /// SwiGLU compute each row on its own (`crate::cpu::same_row_arithmetic`), so the pieces
    /// give the bits of one pass while the intermediate buffers stay small.
    fn forward(&self, h: Tensor<3>, ad: bool, tr: Option<&DropoutStream>, plan: Plan) -> Tensor<3> {
        let [b, t, w] = h.dims();
        let quantized = self.gate_proj.quant.is_some() && tr.is_none();
        if !quantized || b * t <= MLP_PIECE_ROWS {
            return self.forward_whole(h, ad, tr, plan);
        }
        let rows = h.reshape([1, b * t, w]);
        let pieces = piece_rows(b * t, MLP_PIECE_ROWS, crate::cpu::GEMM_SMALL_ROWS + 1);
        let mut start = 0;
        let outs = pieces
            .into_iter()
            .map(|n| {
                let piece = rows.clone().narrow(1, start, n);
                start += n;
                self.forward_whole(piece, ad, tr, plan)
            })
            .collect();
        let y = Tensor::cat(outs, 1);
        let n = y.dims()[2];
        y.reshape([b, t, n])
    }

    fn forward_whole(
        &self,
        h: Tensor<3>,
        ad: bool,
        tr: Option<&DropoutStream>,
        plan: Plan,
    ) -> Tensor<3> {
        let [gate, up] = project_shared(&h, [&self.gate_proj, &self.up_proj], ad, tr, plan);
        // Fused on the CPU device, plain and training alike (`crate::fused`).
        let g = crate::fused::swiglu(gate, up);
        self.down_proj.forward(g, ad, tr, plan)
    }
}

/// Lengths of pieces covering `rows`: `max` each but the last, which is folded into the one
/// before where it would have fewer than `min` rows.
fn piece_rows(rows: usize, max: usize, min: usize) -> Vec<usize> {
    let mut v = vec![max; rows / max];
    match rows % max {
        0 => {}
        r if r >= min || v.is_empty() => v.push(r),
        r => *v.last_mut().expect("non-empty") += r,
    }
    v
}

impl Block {
    pub fn linears_mut(&mut self) -> [(&'static str, &mut LoraLinear); 7] {
        [
            ("q_proj", &mut self.self_attn.q_proj),
            ("k_proj", &mut self.self_attn.k_proj),
            ("v_proj", &mut self.self_attn.v_proj),
            ("o_proj", &mut self.self_attn.o_proj),
            ("gate_proj", &mut self.mlp.gate_proj),
            ("up_proj", &mut self.mlp.up_proj),
            ("down_proj", &mut self.mlp.down_proj),
        ]
    }
    pub fn linears(&self) -> [(&'static str, &LoraLinear); 7] {
        [
            ("q_proj", &self.self_attn.q_proj),
            ("k_proj", &self.self_attn.k_proj),
            ("v_proj", &self.self_attn.v_proj),
            ("o_proj", &self.self_attn.o_proj),
            ("gate_proj", &self.mlp.gate_proj),
            ("up_proj", &self.mlp.up_proj),
            ("down_proj", &self.mlp.down_proj),
        ]
    }

    /// One block over `x`: `[batch, seq, hidden]`, or the tokens' rows `[1, tokens, hidden]`
    /// when `rows` says where they lie (attention alone sees the padded layout).
    fn forward(
        &self,
        x: Tensor<3>,
        pos: &Positions<'_>,
        rows: Option<&PackedRows>,
        cache: &mut Option<(Tensor<4>, Tensor<4>)>,
        opts: ForwardOptions<'_>,
        plan: Plan,
    ) -> Tensor<3> {
        let a = &self.self_attn;
        let (ad, tr) = (opts.adapter, opts.dropout);
        let h = self.input_layernorm.forward(x.clone());
        let mut qkv = project_shared(&h, [&a.q_proj, &a.k_proj, &a.v_proj], ad, tr, plan);
        if let Some(p) = rows {
            qkv = qkv.map(|z| p.unpack(z));
        }
        let [q, k, v] = qkv;
        let o = match pos {
            Positions::Host(host) => host.attend(q, k, v, a),
            Positions::Burn(tensors) => self.burn_attention(q, k, v, tensors, cache, plan),
        };
        let o = match rows {
            Some(p) => p.pack(o),
            None => o,
        };
        let x = x + a.o_proj.forward(o, ad, tr, plan);
        let h = self.post_attention_layernorm.forward(x.clone());
        x + self.mlp.forward(h, ad, tr, plan)
    }

    /// Attention as burn ops, `[b, t, heads · d]` out: every device, and the plain CPU device
    /// when a KV cache is kept.
    fn burn_attention(
        &self,
        q: Tensor<3>,
        k: Tensor<3>,
        v: Tensor<3>,
        pos: &BurnPositions,
        cache: &mut Option<(Tensor<4>, Tensor<4>)>,
        plan: Plan,
    ) -> Tensor<3> {
        let (a, cos, sin) = (&self.self_attn, &pos.cos, &pos.sin);
        let [b, t, _] = q.dims();
        let q = q.reshape([b, t, a.num_heads, a.head_dim]).swap_dims(1, 2);
        let k = k
            .reshape([b, t, a.num_kv_heads, a.head_dim])
            .swap_dims(1, 2);
        let v = v
            .reshape([b, t, a.num_kv_heads, a.head_dim])
            .swap_dims(1, 2);
        let q = rotate(q, cos, sin);
        let k = rotate(k, cos, sin);
        let (k, v) = match cache.take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        *cache = Some((k.clone(), v.clone()));
        let n_rep = a.num_heads / a.num_kv_heads;
        let total = k.dims()[2];
        // The autodiff device composes attention from separate ops (burn's
        // `attention_fallback`); `composed_attention` is that sequence, written once here so
        // that plain passes with `training_arithmetic` match training passes exactly. On the
        // plain CPU device burn-flex's fused attention maps query head h to key/value head
        // h / n_rep itself (transformers' repeat_kv layout), so the repeated K/V are never
        // materialized (in decoding that copy was most of the step's memmove); the composed
        // path and cubecl devices get the repeated tensors.
        let composed = plan.composed_attention();
        let native_gqa = plan.host();
        let (k, v) = if n_rep > 1 && !native_gqa {
            let rep = |z: Tensor<4>| {
                z.unsqueeze_dim::<5>(2)
                    .expand([b, a.num_kv_heads, n_rep, total, a.head_dim])
                    .reshape([b, a.num_heads, total, a.head_dim])
            };
            (rep(k), rep(v))
        } else {
            (k, v)
        };
        let mask = pos.mask.clone().expand([b, a.num_heads, t, total]);
        let opts_attn = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: false,
        };
        let o = if composed {
            composed_attention(q, k, v, mask)
        } else {
            attention(q, k, v, Some(mask), None, opts_attn)
        };
        o.swap_dims(1, 2).reshape([b, t, a.num_heads * a.head_dim])
    }
}

/// What every layer of one forward shares about positions, for whichever attention runs.
enum Positions<'a> {
    Host(&'a HostAttention),
    Burn(&'a BurnPositions),
}

/// burn's attention inputs: rotary tables `[batch, 1, seq, d]` and the mask `[batch, 1, seq,
/// keys]` (true = left out).
struct BurnPositions {
    cos: Tensor<4>,
    sin: Tensor<4>,
    mask: Tensor<4, Bool>,
}

/// A cache-less forward's attention inputs on the host (`mosr_kernels::prefill`): rotary
/// tables `[batch, seq, d / 2]` and which keys are tokens rather than padding.
struct HostAttention {
    cos: Vec<f32>,
    sin: Vec<f32>,
    valid: Vec<bool>,
}

impl HostAttention {
    /// Causal attention of the projections `[b, t, heads · d]` (before RoPE), same layout out.
    fn attend(&self, q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, a: &Attention) -> Tensor<3> {
        let [b, t, width] = q.dims();
        let dev = q.device();
        let host = |x: Tensor<3>| -> Vec<f32> {
            x.into_data()
                .try_into_vec::<f32>()
                .expect("f32 projections on the CPU device")
        };
        let (q, k, v) = (host(q), host(k), host(v));
        let mut o = vec![0f32; q.len()];
        let shape = mosr_kernels::prefill::CausalShape {
            batch: b,
            seq: t,
            heads: a.num_heads,
            kv_heads: a.num_kv_heads,
            head_dim: a.head_dim,
        };
        mosr_kernels::prefill::causal_attention(
            &q,
            &k,
            &v,
            &self.cos,
            &self.sin,
            &self.valid,
            shape,
            &mut o,
        );
        Tensor::from_data(TensorData::new(o, [b, t, width]), &dev)
    }
}

/// softmax(Q Kᵗ / √d, masked) · V as burn 0.22's `attention_fallback` computes it, op for op
/// (the autodiff device's attention), including its guards for fully masked rows.
fn composed_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Tensor<4, Bool>,
) -> Tensor<4> {
    let scale = 1.0 / (q.dims()[3] as f64).sqrt();
    let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale);
    let scores = scores.mask_fill(mask, f32::NEG_INFINITY);
    let max = scores.clone().max_dim(3).clamp_min(f32::MIN);
    let numerator = (scores - max).exp();
    let sum = numerator.clone().sum_dim(3).clamp_min(f32::MIN_POSITIVE);
    (numerator / sum).matmul(v)
}

/// Projections of one input (a block's q/k/v, or gate/up): one call of the AMX product (many
/// rows, packed weights) or of the few-row kernel (decoding) on the CPU device, each
/// projection on its own elsewhere. Each result equals its projection on its own bit for bit.
fn project_shared<const N: usize>(
    x: &Tensor<3>,
    lins: [&LoraLinear; N],
    adapter: bool,
    dropout: Option<&DropoutStream>,
    plan: Plan,
) -> [Tensor<3>; N] {
    let shared = if plan.host() {
        crate::lora::frozen_many(x, &lins).or_else(|| {
            let ws: Vec<(Tensor<2>, Option<Tensor<1>>)> = lins
                .iter()
                .map(|l| (l.weight.val(), l.bias.as_ref().map(|b| b.val())))
                .collect();
            let refs: Vec<(&Tensor<2>, Option<&Tensor<1>>)> =
                ws.iter().map(|(w, b)| (w, b.as_ref())).collect();
            crate::cpu::linear_many(x, &refs)
        })
    } else {
        None
    };
    if let Some(ys) = shared {
        let mut ys = ys.into_iter();
        return lins.map(|l| {
            let y = ys.next().expect("one result per projection");
            match l.delta(x.clone(), adapter, dropout, plan) {
                Some(d) => y + d,
                None => y,
            }
        });
    }
    lins.map(|l| l.forward(x.clone(), adapter, dropout, plan))
}

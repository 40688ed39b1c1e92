//! One decode step (one new token per sequence) on the plain CPU device, outside burn.
//!
//! A decode step is a few hundred tiny tensor ops around 211 products that stream the
//! weights. As burn ops, the tiny ones cost more than their arithmetic (dispatch and an
//! allocation each, ~30 per block), and appending to the cache with `Tensor::cat` copies every
//! earlier key and value once per step. Here the step runs on slices: the products through
//! [`mosr_kernels::few_rows_many`], norms, rotary embedding and attention through
//! [`mosr_kernels::decode`], keys and values appended in place to a cache with spare room
//! ([`HostKv`]). The arithmetic is the model's, op for op; the values agree with the burn path
//! to rounding (the greedy-generation fixtures check both).
//!
//! [`step`] declines (returns `None`, having changed nothing) wherever the burn path must run:
//! other devices, autodiff, more than [`MAX_ROWS`] sequences of an exact load, more than one
//! new position, hidden states requested, a truncated forward, training (LoRA dropout), or a
//! weight that is not a plain contiguous f32 tensor.

use burn::tensor::{Tensor, TensorData};
use burn_flex::FlexTensor;
use mosr_kernels::MAX_ROWS;
use mosr_kernels::decode::{AttentionShape, attention, rms_norm, rope};
use mosr_kernels::quant::QuantWeight;

use crate::batch::TokenBatch;
use crate::flex::{contiguous, flex_f32};
use crate::kv::{HostKv, KvCache, Store};
use crate::lora::LoraLinear;
use crate::model::{Block, CausalLm, ForwardOptions, ForwardOutput, Logits};

/// A projection's parts as host slices: the frozen weight `[k, n]`, its bias, and the LoRA
/// pair with its scale when the adapter is on.
struct HostLinear {
    weight: FlexTensor,
    /// The weight's integer codes, for quantized arithmetic.
    quant: Option<std::sync::Arc<QuantWeight>>,
    n: usize,
    bias: Option<Vec<f32>>,
    lora: Option<(FlexTensor, FlexTensor, usize, f32)>,
}

impl HostLinear {
    fn new(l: &LoraLinear, adapter: bool) -> Option<Self> {
        let w = l.weight.val();
        let n = l.d_out();
        let bias = match &l.bias {
            Some(b) => Some(b.val().into_data().try_into_vec::<f32>().ok()?),
            None => None,
        };
        let lora = match (&l.lora_a, &l.lora_b) {
            (Some(a), Some(b)) if adapter => {
                let (a, b) = (a.val(), b.val());
                let r = a.dims()[1];
                Some((flex_f32(&a)?, flex_f32(&b)?, r, l.scale as f32))
            }
            _ => None,
        };
        Some(Self {
            weight: flex_f32(&w)?,
            quant: l.quant.clone(),
            n,
            bias,
            lora,
        })
    }

    fn w(&self, k: usize) -> &[f32] {
        contiguous(&self.weight, k * self.n)
    }

    /// Adds the bias and the low-rank update `scale · (x A) B` to `out` (`x · W`).
    fn finish(&self, x: &[f32], rows: usize, k: usize, out: &mut [f32]) {
        if let Some(b) = &self.bias {
            for row in out.chunks_exact_mut(self.n) {
                for (o, bv) in row.iter_mut().zip(b) {
                    *o += bv;
                }
            }
        }
        if let Some((a, b, r, scale)) = &self.lora {
            // The few-row kernel computes each row on its own, so [`MAX_ROWS`] at a time gives
            // any number of rows (a quantized load decodes more at once) the same bits.
            let mut xa = vec![0f32; rows * r];
            let mut d = vec![0f32; rows * self.n];
            let (a, b) = (contiguous(a, k * r), contiguous(b, r * self.n));
            for ((x, xa), d) in x
                .chunks(MAX_ROWS * k)
                .zip(xa.chunks_mut(MAX_ROWS * r))
                .zip(d.chunks_mut(MAX_ROWS * self.n))
            {
                let m = x.len() / k;
                mosr_kernels::few_rows(x, m, k, a, *r, xa);
                mosr_kernels::few_rows(xa, m, *r, b, self.n, d);
            }
            for (o, dv) in out.iter_mut().zip(&d) {
                *o += scale * dv;
            }
        }
    }
}

/// `x · W_i` (+ bias, + update) for projections sharing their input `x [rows, k]`.
fn project<const N: usize>(
    x: &[f32],
    rows: usize,
    k: usize,
    lins: [&HostLinear; N],
) -> [Vec<f32>; N] {
    // Projections with codes (quantized loads) and those without, each kind in one call; the
    // quantized products write their outputs whole, the few-row kernel adds into zeros.
    let quant: Vec<&QuantWeight> = lins.iter().filter_map(|l| l.quant.as_deref()).collect();
    let mut coded = mosr_kernels::quant::products(x, rows, &quant).into_iter();
    let mut outs = lins.map(|l| match l.quant {
        Some(_) => coded.next().expect("one output per coded projection"),
        None => vec![0f32; rows * l.n],
    });
    let mut exact: Vec<mosr_kernels::Product<'_>> = Vec::new();
    for (l, out) in lins.iter().zip(outs.iter_mut()) {
        if l.quant.is_none() {
            exact.push(mosr_kernels::Product {
                w: l.w(k),
                n: l.n,
                out,
            });
        }
    }
    if !exact.is_empty() {
        mosr_kernels::few_rows_many(x, rows, k, &mut exact);
    }
    for (l, out) in lins.iter().zip(outs.iter_mut()) {
        l.finish(x, rows, k, out);
    }
    outs
}

struct HostBlock {
    input_norm: FlexTensor,
    post_norm: FlexTensor,
    eps: (f32, f32),
    /// q, k, v, o, gate, up, down.
    lins: [HostLinear; 7],
}

impl HostBlock {
    fn new(b: &Block, adapter: bool) -> Option<Self> {
        let a = &b.self_attn;
        let m = &b.mlp;
        let lin = |l: &LoraLinear| HostLinear::new(l, adapter);
        Some(Self {
            input_norm: flex_f32(&b.input_layernorm.weight.val())?,
            post_norm: flex_f32(&b.post_attention_layernorm.weight.val())?,
            eps: (
                b.input_layernorm.eps as f32,
                b.post_attention_layernorm.eps as f32,
            ),
            lins: [
                lin(&a.q_proj)?,
                lin(&a.k_proj)?,
                lin(&a.v_proj)?,
                lin(&a.o_proj)?,
                lin(&m.gate_proj)?,
                lin(&m.up_proj)?,
                lin(&m.down_proj)?,
            ],
        })
    }
}

/// The step on the host, or `None` (nothing changed) where the burn path must run.
pub(crate) fn step(
    lm: &CausalLm,
    batch: &TokenBatch,
    cache: &mut KvCache,
    opts: ForwardOptions<'_>,
) -> Option<ForwardOutput> {
    // The step's ~150 parallel regions start from a pool thread: called from outside the
    // pool, each one would hand its work to the pool and put the caller to sleep.
    let mut out = None;
    rayon::scope(|_| out = step_in_pool(lm, batch, cache, opts));
    out
}

fn step_in_pool(
    lm: &CausalLm,
    batch: &TokenBatch,
    cache: &mut KvCache,
    opts: ForwardOptions<'_>,
) -> Option<ForwardOutput> {
    let (rows, cfg) = (batch.batch, &lm.config);
    let device = lm.device();
    if !host_decodes(lm, batch, cache, opts) {
        return None;
    }
    let (hidden, heads, kv_heads, d) = (
        cfg.hidden_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
    );
    let vocab = cfg.vocab_size;
    let final_norm = flex_f32(&lm.norm.weight.val())?;
    let head = flex_f32(&lm.lm_head.val())?;
    let blocks: Vec<HostBlock> = lm
        .layers
        .iter()
        .map(|b| HostBlock::new(b, opts.adapter))
        .collect::<Option<_>>()?;
    let n_layers = lm.layers.len();
    let on_host = cache.move_to_host(|c| {
        if c.is_empty() {
            Some(HostKv::empty(rows, kv_heads, d, n_layers))
        } else {
            HostKv::from_tensors(c, kv_heads, d)
        }
    });
    if !on_host {
        return None;
    }
    let positions = cache.advance(batch);
    let planned = cache.planned;
    let Store::Host(host) = &mut cache.store else {
        unreachable!("moved to the host above");
    };
    host.reserve(1, planned);
    let (cap, slot) = (host.capacity, host.len);

    // Rotary tables of each row's position, as the burn path computes them.
    let half = d / 2;
    let (cos, sin) = lm.rope_angles(&positions);

    let mut x = lm.embed_rows(&batch.ids)?;
    let mut h = vec![0f32; rows * hidden];
    let mut attn = vec![0f32; rows * heads * d];
    let key_mask = &cache.key_mask;
    let attend = |r: usize, j: usize| key_mask[r][j];
    let shape = AttentionShape {
        rows,
        heads,
        kv_heads,
        head_dim: d,
        capacity: cap,
        len: slot + 1,
    };
    for (blk, (kc, vc)) in blocks.iter().zip(host.layers.iter_mut()) {
        let [wq, wk, wv, wo, wg, wu, wd] = &blk.lins;
        rms_norm(&x, contiguous(&blk.input_norm, hidden), blk.eps.0, &mut h);
        let [mut q, mut k, v] = project(&h, rows, hidden, [wq, wk, wv]);
        for r in 0..rows {
            let (c, s) = (&cos[r * half..][..half], &sin[r * half..][..half]);
            rope(&mut q[r * heads * d..][..heads * d], c, s);
            rope(&mut k[r * kv_heads * d..][..kv_heads * d], c, s);
            for g in 0..kv_heads {
                let at = ((r * kv_heads + g) * cap + slot) * d;
                let from = (r * kv_heads + g) * d;
                kc[at..at + d].copy_from_slice(&k[from..from + d]);
                vc[at..at + d].copy_from_slice(&v[from..from + d]);
            }
        }
        attention(&q, kc, vc, shape, &attend, &mut attn);
        let [o] = project(&attn, rows, heads * d, [wo]);
        for (xv, ov) in x.iter_mut().zip(&o) {
            *xv += ov;
        }
        rms_norm(&x, contiguous(&blk.post_norm, hidden), blk.eps.1, &mut h);
        let [gate, up] = project(&h, rows, hidden, [wg, wu]);
        let inter = wg.n;
        let mut act = vec![0f32; rows * inter];
        mosr_kernels::swiglu(&gate, &up, &mut act);
        let [down] = project(&act, rows, inter, [wd]);
        for (xv, dv) in x.iter_mut().zip(&down) {
            *xv += dv;
        }
    }
    host.len += 1;

    let logits = match opts.logits {
        Logits::None => None,
        Logits::Last | Logits::All => {
            let out = host_logits(lm, &x, rows, &final_norm, &head, &mut h);
            Some(Tensor::<3>::from_data(
                TensorData::new(out, [rows, 1, vocab]),
                &device,
            ))
        }
    };
    Some(ForwardOutput {
        logits,
        hidden: Vec::new(),
    })
}

impl CausalLm {
    /// Whether a decode step of `rows` rows on this model's device computes each row on its
    /// own, bits independent of the rows beside it (and of a later step's fewer rows): the
    /// host decode step's products, norms and attention all work row by row, and it takes
    /// every step of a batch of at most [`MAX_ROWS`] rows, or of any size on a quantized load.
    pub fn decodes_rows_alone(&self, rows: usize) -> bool {
        crate::Plan::of(&self.device(), false).host()
            && (rows <= MAX_ROWS || self.quantized_throughout())
    }
}

/// Whether a pass on the host plan (`crate::Plan::Host`, checked by the caller) takes the host
/// decode step: one new token per row of a full-depth inference pass without hidden states or
/// dropout, at most [`MAX_ROWS`] rows (any number on a quantized load, whose products all work
/// row by row, so that a sequence decodes to the same bits in a batch of any size), ids inside
/// the vocabulary, and a cache (if any) of the same rows.
fn host_decodes(
    lm: &CausalLm,
    batch: &TokenBatch,
    cache: &KvCache,
    opts: ForwardOptions<'_>,
) -> bool {
    let rows = batch.batch;
    let full = opts.num_layers.is_none_or(|n| n >= lm.layers.len());
    batch.seq == 1
        && rows > 0
        && (rows <= MAX_ROWS || lm.quantized_throughout())
        && !opts.hidden
        && opts.dropout.is_none()
        && full
        && (cache.is_empty() || cache.key_mask.len() == rows)
        && batch
            .ids
            .iter()
            .all(|&id| (id as usize) < lm.config.vocab_size)
}

/// The last layer's state through the final norm (into `h`) and the unembedding: `[rows,
/// vocab]` logits.
fn host_logits(
    lm: &CausalLm,
    x: &[f32],
    rows: usize,
    final_norm: &FlexTensor,
    head: &FlexTensor,
    h: &mut [f32],
) -> Vec<f32> {
    let (hidden, vocab) = (lm.config.hidden_size, lm.config.vocab_size);
    rms_norm(x, contiguous(final_norm, hidden), lm.norm.eps as f32, h);
    if let Some(q) = lm.head_quant.as_deref() {
        return mosr_kernels::quant::products(h, rows, &[q])
            .pop()
            .expect("one output");
    }
    let mut out = vec![0f32; rows * vocab];
    mosr_kernels::few_rows(
        h,
        rows,
        hidden,
        contiguous(head, hidden * vocab),
        vocab,
        &mut out,
    );
    out
}

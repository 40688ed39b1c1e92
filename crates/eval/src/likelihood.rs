//! Log-likelihood of continuations: the one computation behind capability scoring (which
//! option does the model find likeliest) and the gibberish judge's perplexity.
//!
//! Sequences are left-padded, so every row's continuation ends in the last column; only the
//! last `max continuation length` positions go through the final norm and unembedding (the
//! vocabulary projection dominates a small model's forward), read from the last layer's
//! residual stream.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use mosr_lm::{ForwardOptions, LanguageModel, Logits, TokenBatch};

/// One scoring request: a non-empty context and the continuation whose tokens are scored.
#[derive(Debug, Clone)]
pub struct Item {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

/// Log-probability of each continuation token given everything before it, per item, in input
/// order. `adapter` selects the adapted model (true) or the base weights (false). Items are
/// scored in batches of `batch_size`, sorted by length to limit padding.
pub fn continuation_logprobs(
    lm: &LanguageModel,
    items: &[Item],
    adapter: bool,
    batch_size: usize,
) -> Vec<Vec<f32>> {
    let mut out: Vec<Vec<f32>> = vec![Vec::new(); items.len()];
    let mut order: Vec<usize> = (0..items.len())
        .filter(|&i| !items[i].continuation.is_empty())
        .collect();
    order.sort_by_key(|&i| items[i].context.len() + items[i].continuation.len());
    for chunk in order.chunks(batch_size.max(1)) {
        let batch: Vec<&Item> = chunk.iter().map(|&i| &items[i]).collect();
        for (&i, lp) in chunk.iter().zip(batch_logprobs(lm, &batch, adapter)) {
            out[i] = lp;
        }
    }
    out
}

fn batch_logprobs(lm: &LanguageModel, items: &[&Item], adapter: bool) -> Vec<Vec<f32>> {
    assert!(
        items.iter().all(|it| !it.context.is_empty()),
        "every scored continuation needs at least one context token"
    );
    let seqs: Vec<Vec<u32>> = items
        .iter()
        .map(|it| [it.context.as_slice(), it.continuation.as_slice()].concat())
        .collect();
    let batch = TokenBatch::left_padded(&seqs, lm.pad_id);
    let (b, t) = (batch.batch, batch.seq);
    let w = items
        .iter()
        .map(|it| it.continuation.len())
        .max()
        .unwrap_or(0);
    let o = lm.net.forward(
        &batch,
        None,
        ForwardOptions {
            hidden: true,
            num_layers: None,
            logits: Logits::None,
            adapter,
            dropout: None,
            training_arithmetic: false,
            skip_padding: true,
        },
    );
    let last = o
        .hidden
        .into_iter()
        .last()
        .expect("hidden states requested");
    // Columns t-1-w .. t-2 predict the tokens in columns t-w .. t-1.
    let window = last.narrow(1, t - 1 - w, w);
    let logp = log_softmax(lm.net.unembed(window), 2);
    let mut targets = Vec::with_capacity(b * w);
    for it in items {
        let pad = w - it.continuation.len();
        targets.extend(std::iter::repeat_n(0i64, pad));
        targets.extend(it.continuation.iter().map(|&x| x as i64));
    }
    let dev = lm.device();
    let targets = Tensor::<3, Int>::from_data(TensorData::new(targets, [b, w, 1]), &dev);
    let picked = logp
        .gather(2, targets)
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("f32 log-probabilities");
    items
        .iter()
        .enumerate()
        .map(|(r, it)| {
            let row = &picked[r * w..(r + 1) * w];
            row[w - it.continuation.len()..].to_vec()
        })
        .collect()
}

/// exp(-mean log p) of a continuation; `None` when nothing was scored.
pub fn perplexity(logprobs: &[f32]) -> Option<f32> {
    if logprobs.is_empty() {
        return None;
    }
    let mean = logprobs.iter().map(|&x| x as f64).sum::<f64>() / logprobs.len() as f64;
    Some((-mean).exp() as f32)
}

/// One context with several continuations (the options of a multiple-choice item).
#[derive(Debug, Clone)]
pub struct Choices {
    pub context: Vec<u32>,
    pub continuations: Vec<Vec<u32>>,
}

/// Like [`continuation_logprobs`] for items that share a context: the context runs once and
/// its KV cache is copied to every continuation row, so a 4-option question costs one context
/// pass instead of four (MMLU questions are long, options short). Returns, per item and
/// option, the log-probability of each continuation token. `batch_size` bounds the option
/// rows per pass.
pub fn shared_context_logprobs(
    lm: &LanguageModel,
    items: &[Choices],
    adapter: bool,
    batch_size: usize,
) -> Vec<Vec<Vec<f32>>> {
    let mut out: Vec<Vec<Vec<f32>>> = items
        .iter()
        .map(|c| vec![Vec::new(); c.continuations.len()])
        .collect();
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| items[i].context.len());
    let mut k = 0;
    while k < order.len() {
        let mut chunk = vec![order[k]];
        let mut rows = items[order[k]].continuations.len();
        k += 1;
        while k < order.len() && rows + items[order[k]].continuations.len() <= batch_size.max(1) {
            rows += items[order[k]].continuations.len();
            chunk.push(order[k]);
            k += 1;
        }
        let chosen: Vec<&Choices> = chunk.iter().map(|&i| &items[i]).collect();
        for (&i, lp) in chunk.iter().zip(shared_batch(lm, &chosen, adapter)) {
            out[i] = lp;
        }
    }
    out
}

fn shared_batch(lm: &LanguageModel, items: &[&Choices], adapter: bool) -> Vec<Vec<Vec<f32>>> {
    assert!(items.iter().all(|c| !c.context.is_empty()));
    let dev = lm.device();
    let v = lm.config.vocab_size;
    let opts = |logits| ForwardOptions {
        hidden: false,
        num_layers: None,
        logits,
        adapter,
        dropout: None,
        training_arithmetic: false,
        skip_padding: true,
    };
    // 1. Contexts once; the last position scores every option's first token.
    let ctx: Vec<Vec<u32>> = items.iter().map(|c| c.context.clone()).collect();
    let mut cache = mosr_lm::KvCache::default();
    let first = lm
        .net
        .forward(
            &TokenBatch::left_padded(&ctx, lm.pad_id),
            Some(&mut cache),
            opts(Logits::Last),
        )
        .logits
        .expect("logits requested");
    let first = log_softmax(first, 2)
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("f32 log-probabilities");
    // 2. One cache row per option.
    let mut rows: Vec<(usize, usize)> = Vec::new();
    for (i, c) in items.iter().enumerate() {
        for j in 0..c.continuations.len() {
            rows.push((i, j));
        }
    }
    let keep: Vec<usize> = rows.iter().map(|&(i, _)| i).collect();
    cache.select_rows(&keep);
    // 3. The continuations after the cached contexts; column c predicts column c+1.
    let conts: Vec<Vec<u32>> = rows
        .iter()
        .map(|&(i, j)| items[i].continuations[j].clone())
        .collect();
    let batch = TokenBatch::left_padded(&conts, lm.pad_id);
    let (r, t) = (batch.batch, batch.seq);
    let rest = if t >= 2 {
        let logits = lm
            .net
            .forward(&batch, Some(&mut cache), opts(Logits::All))
            .logits
            .expect("logits requested");
        let logp = log_softmax(logits, 2);
        let mut targets = Vec::with_capacity(r * t);
        for c in &conts {
            let pad = t - c.len();
            for col in 0..t {
                // Column `col` holds token col-pad and predicts token col-pad+1.
                let next = col + 1;
                targets.push(if next > pad && next - pad < c.len() {
                    c[next - pad] as i64
                } else {
                    0
                });
            }
        }
        let targets = Tensor::<3, Int>::from_data(TensorData::new(targets, [r, t, 1]), &dev);
        logp.gather(2, targets)
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("f32 log-probabilities")
    } else {
        Vec::new()
    };
    let mut out: Vec<Vec<Vec<f32>>> = items
        .iter()
        .map(|c| vec![Vec::new(); c.continuations.len()])
        .collect();
    for (row, &(i, j)) in rows.iter().enumerate() {
        let c = &conts[row];
        if c.is_empty() {
            continue;
        }
        let pad = t - c.len();
        let mut lp = vec![first[i * v + c[0] as usize]];
        for k in 1..c.len() {
            // Token k sits in column pad+k and is predicted by column pad+k-1.
            lp.push(rest[row * t + pad + k - 1]);
        }
        out[i][j] = lp;
    }
    out
}

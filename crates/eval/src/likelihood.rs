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
            train: false,
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

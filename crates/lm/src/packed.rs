//! Padding left out of a quantized load's row-wise work.
//!
//! A left-padded batch computes every padding position as if it were a token: norms,
//! projections and the MLP for rows whose results nothing reads (attention masks padding keys,
//! and logits and states are read at tokens only). Batches of prompts sorted by length still
//! pad: one long prompt among short ones made a 16-row evaluation batch compute 4 times its
//! tokens. On a quantized load every one of those operations works row by row (the integer
//! codes' product, norms, SwiGLU, the residual sums, and the adapter's update as long as the
//! row count keeps its kernel: [`same_row_arithmetic`]), so the forward carries only the
//! tokens' rows, `[1, tokens, width]`, and lays them out padded (zeros at padding) just for
//! attention, whose masked keys contribute exactly nothing; each token's values are the padded
//! pass's, bit for bit (`tests/tests/it/quant.rs`).

use burn::tensor::{Tensor, TensorData};

use crate::batch::TokenBatch;
use crate::cpu::same_row_arithmetic;

/// Where a batch's tokens lie in its padded `[batch, seq]` layout.
#[derive(Debug, Clone)]
pub(crate) struct PackedRows {
    batch: usize,
    seq: usize,
    /// `row · seq + column` of every token, in order.
    tokens: Vec<usize>,
}

impl PackedRows {
    /// The batch's tokens, where leaving its padding out changes which rows there are (it has
    /// padding) but not how a row is summed ([`same_row_arithmetic`]: the adapter's update
    /// takes another kernel or blocking for fewer rows).
    pub(crate) fn of(batch: &TokenBatch) -> Option<Self> {
        let tokens: Vec<usize> = (0..batch.mask.len()).filter(|&i| batch.mask[i]).collect();
        let (n, all) = (tokens.len(), batch.mask.len());
        (n < all && same_row_arithmetic(n, all)).then_some(Self {
            batch: batch.batch,
            seq: batch.seq,
            tokens,
        })
    }

    /// `[batch, seq, w]` → `[1, tokens, w]`.
    pub(crate) fn pack(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, _] = x.dims();
        assert_eq!(
            (b, t),
            (self.batch, self.seq),
            "pack: not this batch's layout"
        );
        gather(x, &self.tokens, [1, self.tokens.len()])
    }

    /// `[1, tokens, w]` → `[batch, seq, w]`, zeros at padding.
    pub(crate) fn unpack(&self, x: Tensor<3>) -> Tensor<3> {
        let [_, n, w] = x.dims();
        assert_eq!(n, self.tokens.len(), "unpack: not this batch's tokens");
        let mut out = vec![0f32; self.batch * self.seq * w];
        on_values(&x, |v| {
            for (j, &i) in self.tokens.iter().enumerate() {
                out[i * w..(i + 1) * w].copy_from_slice(&v[j * w..(j + 1) * w]);
            }
        });
        Tensor::from_data(TensorData::new(out, [self.batch, self.seq, w]), &x.device())
    }

    /// Each sequence's last position, `[batch, 1, w]`, from `[1, tokens, w]`; `None` where a
    /// sequence is all padding.
    pub(crate) fn last(&self, x: Tensor<3>) -> Option<Tensor<3>> {
        let at: Vec<usize> = (0..self.batch)
            .map(|r| {
                self.tokens
                    .binary_search(&(r * self.seq + self.seq - 1))
                    .ok()
            })
            .collect::<Option<_>>()?;
        Some(gather(x, &at, [self.batch, 1]))
    }
}

/// Rows `at` of `x` seen as `[rows, w]`, shaped `[lead[0], lead[1], w]`.
fn gather(x: Tensor<3>, at: &[usize], lead: [usize; 2]) -> Tensor<3> {
    let w = x.dims()[2];
    let mut out = Vec::with_capacity(at.len() * w);
    on_values(&x, |v| {
        for &i in at {
            out.extend_from_slice(&v[i * w..(i + 1) * w]);
        }
    });
    Tensor::from_data(TensorData::new(out, [lead[0], lead[1], w]), &x.device())
}

/// `f` on the activations' values, read in place from the CPU device's storage.
fn on_values(x: &Tensor<3>, f: impl FnOnce(&[f32])) {
    let len = x.shape().num_elements();
    crate::cpu::with_rows(x, len, f).expect("f32 activations on the CPU device")
}

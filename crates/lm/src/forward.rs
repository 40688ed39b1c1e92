//! Which pass runs a forward: a decode step on the host where it applies (`crate::decode`:
//! one new token per sequence on the plain CPU), burn's ops otherwise (`crate::model`).
//! Above both, so that the model file does not know the host path.

use crate::batch::TokenBatch;
use crate::kv::KvCache;
use crate::model::{CausalLm, ForwardOptions, ForwardOutput};

impl CausalLm {
    /// Forward over a left-padded batch, optionally extending a KV cache.
    pub fn forward(
        &self,
        batch: &TokenBatch,
        cache: Option<&mut KvCache>,
        opts: ForwardOptions<'_>,
    ) -> ForwardOutput {
        let mut out = None;
        rayon::scope(|_| out = Some(self.forward_in_pool(batch, cache, opts)));
        out.expect("the scope ran the forward")
    }

    fn forward_in_pool(
        &self,
        batch: &TokenBatch,
        cache: Option<&mut KvCache>,
        opts: ForwardOptions<'_>,
    ) -> ForwardOutput {
        let Some(cache) = cache else {
            return self.forward_burn(batch, None, opts);
        };
        if let Some(out) = crate::decode::step(self, batch, cache, opts) {
            return out;
        }
        cache.move_to_device(&self.device());
        self.forward_burn(batch, Some(cache), opts)
    }
}

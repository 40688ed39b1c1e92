//! Which pass runs a forward: the [`Plan`] is chosen once here from the device and the
//! options; a decode step on the host where it applies (`crate::decode`: one new token per
//! sequence on the plain CPU), burn's ops otherwise (`crate::model`). Above both, so that the
//! model file does not know the host decode path.

use crate::batch::TokenBatch;
use crate::kv::KvCache;
use crate::model::{CausalLm, ForwardOptions, ForwardOutput};
use crate::plan::Plan;

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
        let plan = Plan::of(&self.device(), opts.training_arithmetic);
        let Some(cache) = cache else {
            return self.forward_burn(batch, None, opts, plan);
        };
        if plan.host()
            && let Some(out) = crate::decode::step(self, batch, cache, opts)
        {
            return out;
        }
        self.forward_burn(batch, Some(cache), opts, plan)
    }
}

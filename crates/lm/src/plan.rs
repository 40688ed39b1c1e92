//! How one forward computes, chosen once from the device and the options and passed to every
//! projection, norm and attention of the pass, so that no layer asks the device again.

use burn::tensor::{Device, Tensor};

/// The arithmetic of one forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The plain CPU device: the host kernels (few-row products, AMX tiles, integer codes),
    /// host attention when no cache is filled, burn-flex's attention with grouped K/V heads,
    /// the host decode step.
    Host,
    /// The training device's op sequence: the autodiff device, or a plain pass that must
    /// reproduce it bit for bit (`ForwardOptions::training_arithmetic`): one GEMM per
    /// projection, repeated K/V, attention composed from separate ops.
    Training,
    /// burn's ops on any other device (cubecl).
    Burn,
}

impl Plan {
    pub fn of(device: &Device, training_arithmetic: bool) -> Self {
        if device.is_autodiff() || training_arithmetic {
            Plan::Training
        } else if crate::cpu::applies(device) {
            Plan::Host
        } else {
            Plan::Burn
        }
    }

    /// Whether the host kernels may run (they still check their inputs and decline).
    pub fn host(self) -> bool {
        self == Plan::Host
    }

    /// Attention as the autodiff device composes it.
    pub fn composed_attention(self) -> bool {
        self == Plan::Training
    }

    /// The projection `x · w (+ bias)` of this plan: the few-row kernel where it applies on the
    /// host, one GEMM over all rows otherwise (every device).
    pub fn projector(self) -> fn(Tensor<3>, Tensor<2>, Option<Tensor<1>>) -> Tensor<3> {
        if self.host() {
            crate::cpu::project::<3>
        } else {
            crate::cpu::project_gemm::<3>
        }
    }
}

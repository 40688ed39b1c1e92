//! The representation losses and the coefficient schedule (circuit breakers' LoRRA, with
//! MOSR's per-example erasure weights).

use burn::tensor::Tensor;
use burn::tensor::activation::relu;

use crate::RetainDistance;

/// `(c_erase, c_retain) = (α(1 − t/2T), α t/2T)` at step t of T (circuit breakers: T = 150,
/// `progress = step / 300`).
pub fn coefficients(alpha: f64, t: usize, total: usize) -> (f64, f64) {
    let p = t as f64 / (2.0 * total as f64);
    (alpha * (1.0 - p), alpha * p)
}

/// Per-token cosine of `[rows, seq, hidden]` states, `[rows, seq]`.
pub fn cosine_tokens(a: Tensor<3>, b: Tensor<3>) -> Tensor<2> {
    let dot = (a.clone() * b.clone()).sum_dim(2);
    let na = a.powi_scalar(2).sum_dim(2).sqrt();
    let nb = b.powi_scalar(2).sum_dim(2).sqrt();
    (dot / (na * nb).clamp_min(1e-12)).squeeze_dim::<2>(2)
}

/// Erasure loss (Eq. 5): `Σ_l Σ_i Σ_t w_i m_it ReLU(cos(h^θ_l, h_l)) / (|L| Σ_i Σ_t m_it)`.
/// `mask_w` holds `w_i m_it / (|L| Σ m)`; `lora`/`orig` are the `[rows, seq, hidden]` states
/// of the target layers (orig detached).
pub fn erasure_loss(lora: &[Tensor<3>], orig: &[Tensor<3>], mask_w: &Tensor<2>) -> Tensor<1> {
    let mut total: Option<Tensor<1>> = None;
    for (a, b) in lora.iter().zip(orig) {
        let term = (relu(cosine_tokens(a.clone(), b.clone())) * mask_w.clone()).sum();
        total = Some(match total {
            Some(t) => t + term,
            None => term,
        });
    }
    total.expect("at least one target layer")
}

/// `2^-40`: its square root `2^-20` is exact in f32, so the smoothed norm below is exactly 0
/// for identical states.
const NORM_EPS: f64 = 9.094947017729282e-13;
const NORM_EPS_SQRT: f64 = 9.5367431640625e-7;

/// Per-token L2 distance `‖a − b‖`, `[rows, seq]`, smoothed as `sqrt(‖·‖² + ε) − sqrt(ε)` so its
/// gradient is 0, not NaN, where the states are equal (step 1, zero-initialised adapter).
pub fn l2_tokens(a: Tensor<3>, b: Tensor<3>) -> Tensor<2> {
    let d = a - b;
    ((d.powi_scalar(2).sum_dim(2) + NORM_EPS).sqrt() - NORM_EPS_SQRT).squeeze_dim::<2>(2)
}

/// Per-token `‖a − b‖ / ‖b‖` (b detached): the L2 distance in units of the original state's
/// norm, so it is as scale-free as the erasure cosine.
pub fn relative_l2_tokens(a: Tensor<3>, b: Tensor<3>) -> Tensor<2> {
    let nb = b
        .clone()
        .powi_scalar(2)
        .sum_dim(2)
        .sqrt()
        .clamp_min(1e-6)
        .squeeze_dim::<2>(2);
    l2_tokens(a, b) / nb
}

/// Retain loss (Eq. 6): mean per-token distance over the retain layers and retain tokens.
/// `mask` holds `m_it / (|L| Σ m)`.
pub fn retain_loss(
    lora: &[Tensor<3>],
    orig: &[Tensor<3>],
    mask: &Tensor<2>,
    distance: RetainDistance,
) -> Tensor<1> {
    let mut total: Option<Tensor<1>> = None;
    for (a, b) in lora.iter().zip(orig) {
        let d = match distance {
            RetainDistance::L2 => l2_tokens(a.clone(), b.clone()),
            RetainDistance::RelativeL2 => relative_l2_tokens(a.clone(), b.clone()),
        };
        let term = (d * mask.clone()).sum();
        total = Some(match total {
            Some(t) => t + term,
            None => term,
        });
    }
    total.expect("at least one retain layer")
}

//! Fast paths for the plain CPU (flex) device, where burn's generic ops leave speed behind.
//!
//! - Few-row products `x · W`: every projection of a decode step multiplies one row per
//!   sequence by every weight matrix, so its speed is the rate at which the weights stream from
//!   memory. burn-flex gives such products to `gemm`; [`mosr_kernels::few_rows`] streams them
//!   about twice as fast (measured on SmolLM2's shapes: one step's 210 block projections
//!   60 → 35 ms, the 49,152-wide LM head 11 → 6 ms).
//!   A block's q/k/v and gate/up go through one call each ([`linear_many`]).
//! - Projections with more rows fold the batch into the rows before `gemm` ([`project_gemm`]).
//!
//! Only plain f32 tensors on the flex device take these paths, reading weights in place;
//! anything else (autodiff, other devices, strided weights, more than [`MAX_ROWS`] rows) uses
//! burn's ops, so gradients and GPU runs are untouched.

use burn::tensor::{DType, Device, Tensor, TensorData};
use burn_flex::{Flex, FlexTensor};
use mosr_kernels::amx::PackedWeight;

use crate::flex::{contiguous, flex_f32};
pub use mosr_kernels::MAX_ROWS;

/// Rows up to which `gemm` (0.19) takes its small-size path when the output is at most this
/// wide too: `k` in blocks of 512, where larger products block `k` by cache size. The two sum
/// a row in different orders wherever `k > 512` (an adapter's `x · A`: rank-wide output,
/// hidden- or intermediate-deep).
pub const GEMM_SMALL_ROWS: usize = 64;

/// Whether a product over `a` rows and one over `b` rows give a row the same bits: both take
/// the few-row kernel (at most [`MAX_ROWS`]), both `gemm`'s small-size path (at most
/// [`GEMM_SMALL_ROWS`]), or both its blocked path. Every product here works row by row
/// otherwise, so this is all a pass that changes its row count (leaving padding out, running
/// the MLP in pieces) must keep (`tests/tests/it/quant.rs`).
pub fn same_row_arithmetic(a: usize, b: usize) -> bool {
    let regime = |m: usize| (m > MAX_ROWS) as u8 + (m > GEMM_SMALL_ROWS) as u8;
    regime(a) == regime(b)
}

/// Whether tensors on this device may take the few-row path.
pub fn applies(device: &Device) -> bool {
    !device.is_autodiff() && *device == Device::flex()
}

/// `x [.., K] · w [K, N] (+ bias)` through the few-row kernel, or `None` where it does not
/// apply (see the module docs).
pub fn linear<const D: usize>(
    x: &Tensor<D>,
    w: &Tensor<2>,
    bias: Option<&Tensor<1>>,
) -> Option<Tensor<D>> {
    linear_many(x, &[(w, bias)]).map(|mut v| v.pop().expect("one product"))
}

/// `x · w_i (+ bias_i)` for every pair, through one call of the few-row kernel (a block's
/// q/k/v or gate/up share their input); each result equals [`linear`] on its own bit for bit.
/// `None` where the few-row path does not apply to all of them.
pub fn linear_many<const D: usize>(
    x: &Tensor<D>,
    weights: &[(&Tensor<2>, Option<&Tensor<1>>)],
) -> Option<Vec<Tensor<D>>> {
    let dims = x.dims();
    let k = dims[D - 1];
    let rows: usize = dims[..D - 1].iter().product();
    if rows == 0 || rows > MAX_ROWS || !applies(&x.device()) {
        return None;
    }
    let mut prims = Vec::with_capacity(weights.len());
    for &(w, _) in weights {
        let [wk, n] = w.dims();
        if wk != k {
            return None;
        }
        prims.push((flex_f32(w)?, n));
    }
    let outs = with_rows(x, rows * k, |xs| {
        let mut outs: Vec<Vec<f32>> = prims.iter().map(|(_, n)| vec![0f32; rows * n]).collect();
        let mut products: Vec<mosr_kernels::Product<'_>> = prims
            .iter()
            .zip(outs.iter_mut())
            .map(|((wt, n), out)| mosr_kernels::Product {
                w: contiguous(wt, k * n),
                n: *n,
                out,
            })
            .collect();
        mosr_kernels::few_rows_many(xs, rows, k, &mut products);
        outs
    })?;
    outs.into_iter()
        .zip(prims.iter().zip(weights))
        .map(|(out, ((_, n), &(_, bias)))| output(out, *n, bias, dims, &x.device()))
        .collect()
}

/// `f(rows)` on a plain f32 flex tensor's `len` values: in place when contiguous, else on a
/// copy. `None` for other tensors.
pub(crate) fn with_rows<const D: usize, R>(
    x: &Tensor<D>,
    len: usize,
    f: impl FnOnce(&[f32]) -> R,
) -> Option<R> {
    let xt: FlexTensor = x.clone().try_into_primitive::<Flex>().ok()?;
    if xt.dtype() != DType::F32 {
        return None;
    }
    Some(if xt.is_contiguous() {
        f(&xt.storage::<f32>()[xt.layout().start_offset()..][..len])
    } else {
        f(&x.clone().into_data().try_into_vec::<f32>().ok()?)
    })
}

/// A product's row-major `[rows, n]` values (+ bias) as a tensor shaped like its input with
/// `n` last.
fn output<const D: usize>(
    mut out: Vec<f32>,
    n: usize,
    bias: Option<&Tensor<1>>,
    mut dims: [usize; D],
    device: &Device,
) -> Option<Tensor<D>> {
    if let Some(b) = bias.filter(|_| n > 0) {
        let b = b.clone().into_data().try_into_vec::<f32>().ok()?;
        for row in out.chunks_exact_mut(n) {
            for (o, bv) in row.iter_mut().zip(&b) {
                *o += bv;
            }
        }
    }
    dims[D - 1] = n;
    Some(Tensor::from_data(TensorData::new(out, dims), device))
}

/// `x · W_i (+ bias_i)` for each frozen projection from its integer codes
/// ([`mosr_kernels::quant::product_many`], any number of rows), `x` quantized once for all of
/// them. `None` unless every projection has codes for this `k` and the device is the plain CPU
/// one.
pub fn quant_many<const D: usize>(
    x: &Tensor<D>,
    quants: &[&mosr_kernels::quant::QuantWeight],
    biases: &[Option<Tensor<1>>],
) -> Option<Vec<Tensor<D>>> {
    let dims = x.dims();
    let k = dims[D - 1];
    let rows: usize = dims[..D - 1].iter().product();
    if rows == 0 || !applies(&x.device()) || quants.iter().any(|q| q.k() != k) {
        return None;
    }
    let outs = with_rows(x, rows * k, |xs| {
        mosr_kernels::quant::products(xs, rows, quants)
    })?;
    outs.into_iter()
        .zip(quants.iter().zip(biases))
        .map(|(out, (q, bias))| output(out, q.n(), bias.as_ref(), dims, &x.device()))
        .collect()
}

/// `x · W_i (+ bias_i)` for each frozen projection on the AMX tile unit
/// ([`mosr_kernels::amx`], f32-exact parts, two to three times `gemm`'s rate on the prefill
/// shapes), the rows split once for all of them. `None` unless every weight is packed for
/// this `k`, the device is the plain CPU one and there are more than [`MAX_ROWS`] rows (fewer
/// rows stream the weights: [`linear_many`]).
pub fn packed_many<const D: usize>(
    x: &Tensor<D>,
    packed: &[&PackedWeight],
    biases: &[Option<Tensor<1>>],
) -> Option<Vec<Tensor<D>>> {
    let dims = x.dims();
    let k = dims[D - 1];
    let rows: usize = dims[..D - 1].iter().product();
    if rows <= MAX_ROWS || !applies(&x.device()) || packed.iter().any(|p| p.k() != k) {
        return None;
    }
    let outs = with_rows(x, rows * k, |xs| {
        mosr_kernels::amx::matmul_many(xs, rows, packed)
    })?;
    outs.into_iter()
        .zip(packed.iter().zip(biases))
        .map(|(out, (p, bias))| output(out, p.n(), bias.as_ref(), dims, &x.device()))
        .collect()
}

/// `x · w (+ bias)`: the few-row kernel where it applies, else one 2-D GEMM over all rows.
///
/// burn's `linear` keeps `[batch, seq, K]` inputs batched when `seq` fills its row tiles, and
/// `gemm` then packs the weight once per batch entry; folding the batch into the rows packs it
/// once (measured on the prefill shapes, 8 × 128 rows: 250 → 285 GFLOP/s).
pub fn project<const D: usize>(x: Tensor<D>, w: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<D> {
    match linear(&x, &w, bias.as_ref()) {
        Some(y) => y,
        None => project_gemm(x, w, bias),
    }
}

/// `x · w (+ bias)` as one 2-D GEMM over all rows, on any device (see [`project`]).
pub fn project_gemm<const D: usize>(
    x: Tensor<D>,
    w: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    let dims = x.dims();
    if D <= 2 {
        return burn::tensor::module::linear(x, w, bias);
    }
    let k = dims[D - 1];
    let rows: usize = dims[..D - 1].iter().product();
    let x2 = x.reshape([rows, k]);
    let y = match crate::fused::matmul_2d(&x2, &w) {
        Some(y) => match bias {
            Some(b) => y + b.unsqueeze::<2>(),
            None => y,
        },
        None => burn::tensor::module::linear(x2, w, bias),
    };
    let mut out_dims = dims;
    out_dims[D - 1] = y.dims()[1];
    y.reshape(out_dims)
}

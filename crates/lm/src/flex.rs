//! Host access to the CPU (flex) backend's tensors: their f32 storage read in place, and
//! `gemm` called straight into a new buffer. A leaf: the fast paths (`cpu`, `decode`) and the
//! fused ops (`fused`) build on it, and it uses neither.

// Unsafe: `gemm` writes a new buffer through raw pointers.
#![allow(unsafe_code)]

use burn::tensor::{DType, Tensor};
use burn_flex::{Flex, FlexTensor};

/// The flex primitive of a contiguous f32 tensor (shares its storage), else `None`.
pub(crate) fn flex_f32<const D: usize>(t: &Tensor<D>) -> Option<FlexTensor> {
    let p: FlexTensor = t.clone().try_into_primitive::<Flex>().ok()?;
    (p.is_contiguous() && p.dtype() == DType::F32).then_some(p)
}

/// The `len` elements of a contiguous flex tensor, in place.
pub(crate) fn contiguous(t: &FlexTensor, len: usize) -> &[f32] {
    &t.storage::<f32>()[t.layout().start_offset()..][..len]
}

/// Products smaller than this many multiply-adds run on one thread (burn-flex's threshold).
const GEMM_PARALLEL_FROM: usize = 192 * 192 * 192;

/// `a [m, k] · b [k, n]` into a new row-major buffer. Each operand is `(data from its first
/// element, row stride, column stride)`. gemm writes the output without reading it, so the
/// buffer is not zero-filled first.
pub(crate) fn gemm_new(
    m: usize,
    k: usize,
    n: usize,
    a: (&[f32], isize, isize),
    b: (&[f32], isize, isize),
) -> Vec<f32> {
    let reach = |(d, rs, cs): (&[f32], isize, isize), rows: usize, cols: usize| {
        rows == 0
            || cols == 0
            || (rs >= 0
                && cs >= 0
                && (rows - 1) * (rs as usize) + (cols - 1) * (cs as usize) < d.len())
    };
    assert!(
        reach(a, m, k) && reach(b, k, n),
        "gemm_new: an operand's strides leave its data"
    );
    if k == 0 {
        return vec![0f32; m * n];
    }
    let parallelism = if m.saturating_mul(n).saturating_mul(k) >= GEMM_PARALLEL_FROM {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let mut out = Vec::<f32>::with_capacity(m * n);
    // SAFETY: the operands' strides stay inside their slices (checked above); the output is
    // m × n row-major in `out`'s capacity, written in full (read_dst = false) before set_len.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.0.as_ptr(),
            a.2,
            a.1,
            b.0.as_ptr(),
            b.2,
            b.1,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
        out.set_len(m * n);
    }
    out
}

/// A flex tensor's f32 values in row-major order (its storage when contiguous).
pub(crate) fn values(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    let n = t.layout().shape().num_elements();
    if t.is_contiguous() {
        std::borrow::Cow::Borrowed(&t.storage::<f32>()[t.layout().start_offset()..][..n])
    } else {
        std::borrow::Cow::Owned(t.to_contiguous().storage::<f32>()[..n].to_vec())
    }
}

pub(crate) fn flex_from(values: Vec<f32>, like: &FlexTensor) -> FlexTensor {
    let shape = like.layout().shape().clone();
    FlexTensor::from_data(burn::tensor::TensorData::new(values, shape))
}

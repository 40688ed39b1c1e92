//! Fused operations with a backward pass of their own, for the CPU backend (burn's
//! backend-extension mechanism), plain and training device alike.
//!
//! burn's autodiff differentiates a composite op by op, each step allocating its result:
//! `silu(gate) · up` is three forward and about six backward passes over the MLP's widest
//! activations with a scalar `expf` per element, RMSNorm seven forward passes, and each
//! product burn-flex computes zero-fills its output and then copies it into an aligned buffer.
//! Here [`swiglu`] and [`rms_norm`] are one vectorized pass each way (`mosr-kernels`), and
//! [`matmul_2d`] calls `gemm` straight into the output, transposed operands as strided views.
//! The plain device runs the same forward kernels, so a plain pass with
//! `ForwardOptions::training_arithmetic` still equals a training pass bit for bit.
//!
//! Other devices (cubecl runtimes) keep burn's composed ops: the extension is implemented for
//! flex and for autodiff over flex only, and the wrappers check the device first.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension, tensor::FloatTensor};
use burn::tensor::{DType, Device, Tensor};
use burn_flex::FlexTensor;

use crate::flex::{flex_from, gemm_new, values};

#[backend_extension(Flex, Autodiff)]
pub trait FusedOps: Backend {
    /// `silu(gate) · up`, element-wise.
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;
    /// The gradients of [`FusedOps::swiglu`] with respect to `gate` and `up`, given the
    /// output's gradient `grad`.
    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
    /// `lhs [m, k] · rhs [k, n]`, either operand strided (a transposed view is not copied).
    fn matmul_2d(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self>;
    /// RMSNorm over the last dimension, scaled by `weight` (a constant: no gradient).
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f32) -> FloatTensor<Self>;
    /// The gradient of [`FusedOps::rms_norm`] with respect to `x`.
    fn rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self>;
}

impl FusedOps for Flex {
    fn swiglu(gate: FlexTensor, up: FlexTensor) -> FlexTensor {
        assert_eq!(gate.dtype(), DType::F32, "swiglu: f32 only");
        let (g, u) = (values(&gate), values(&up));
        let mut out = vec![0f32; g.len()];
        mosr_kernels::swiglu(&g, &u, &mut out);
        flex_from(out, &gate)
    }

    fn swiglu_backward(
        gate: FlexTensor,
        up: FlexTensor,
        grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        let (g, u, dy) = (values(&gate), values(&up), values(&grad));
        let mut dg = vec![0f32; g.len()];
        let mut du = vec![0f32; g.len()];
        mosr_kernels::swiglu_backward(&g, &u, &dy, &mut dg, &mut du);
        (flex_from(dg, &gate), flex_from(du, &up))
    }

    fn matmul_2d(lhs: FlexTensor, rhs: FlexTensor) -> FlexTensor {
        let (a, b) = (lhs.layout(), rhs.layout());
        let (sa, sb) = (a.shape(), b.shape());
        assert!(
            sa.num_dims() == 2 && sb.num_dims() == 2 && sa[1] == sb[0],
            "matmul_2d: {sa:?} · {sb:?}"
        );
        assert!(
            lhs.dtype() == DType::F32 && rhs.dtype() == DType::F32,
            "matmul_2d: f32 only"
        );
        let (m, k, n) = (sa[0], sa[1], sb[1]);
        fn view(t: &FlexTensor) -> (&[f32], isize, isize) {
            let l = t.layout();
            let st = l.strides();
            (&t.storage::<f32>()[l.start_offset()..], st[0], st[1])
        }
        let out = gemm_new(m, k, n, view(&lhs), view(&rhs));
        FlexTensor::from_data(burn::tensor::TensorData::new(out, [m, n]))
    }

    fn rms_norm(x: FlexTensor, weight: FlexTensor, eps: f32) -> FlexTensor {
        let (xs, w) = (values(&x), values(&weight));
        let mut out = vec![0f32; xs.len()];
        mosr_kernels::norm::rms_norm(&xs, &w, eps, &mut out);
        flex_from(out, &x)
    }

    fn rms_norm_backward(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        eps: f32,
    ) -> FlexTensor {
        let (xs, w, dy) = (values(&x), values(&weight), values(&grad));
        let mut dx = vec![0f32; xs.len()];
        mosr_kernels::norm::rms_norm_backward(&xs, &w, &dy, eps, &mut dx);
        flex_from(dx, &x)
    }
}

impl<B: Backend + FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct SwigluBackward;

        impl<B: Backend + FusedOps> Backward<B, 2> for SwigluBackward {
            /// The forward's inputs: the gradient needs both.
            type State = (FloatTensor<B>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let [node_gate, node_up] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (gate, up) = ops.state;
                let (d_gate, d_up) = B::swiglu_backward(gate, up, grad);
                if let Some(node) = node_gate {
                    grads.register::<B>(node.id, d_gate);
                }
                if let Some(node) = node_up {
                    grads.register::<B>(node.id, d_up);
                }
            }
        }

        match SwigluBackward
            .prepare::<C>([gate.node(), up.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (g, u) = (gate.primitive().clone(), up.primitive().clone());
                let out = B::swiglu(g.clone(), u.clone());
                prep.finish((g, u), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::swiglu(gate.into_primitive(), up.into_primitive()))
            }
        }
    }

    fn matmul_2d(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct MatmulBackward;

        impl<B: Backend + FusedOps> Backward<B, 2> for MatmulBackward {
            /// Each operand, kept only when the other one needs its gradient (a frozen
            /// weight's input is not held for a gradient nobody takes).
            type State = (Option<FloatTensor<B>>, Option<FloatTensor<B>>);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let [node_lhs, node_rhs] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (lhs, rhs) = ops.state;
                // d lhs = grad · rhsᵀ, d rhs = lhsᵀ · grad (transposes are strided views).
                if let (Some(node), Some(rhs)) = (node_lhs, rhs) {
                    let d = B::matmul_2d(grad.clone(), B::float_transpose(rhs));
                    grads.register::<B>(node.id, d);
                }
                if let (Some(node), Some(lhs)) = (node_rhs, lhs) {
                    grads.register::<B>(node.id, B::matmul_2d(B::float_transpose(lhs), grad));
                }
            }
        }

        let (lhs_tracked, rhs_tracked) = (lhs.is_tracked(), rhs.is_tracked());
        match MatmulBackward
            .prepare::<C>([lhs.node(), rhs.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (a, b) = (lhs.primitive().clone(), rhs.primitive().clone());
                let out = B::matmul_2d(a.clone(), b.clone());
                prep.finish((rhs_tracked.then_some(a), lhs_tracked.then_some(b)), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::matmul_2d(lhs.into_primitive(), rhs.into_primitive()))
            }
        }
    }

    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f32) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct RmsNormBackward;

        impl<B: Backend + FusedOps> Backward<B, 1> for RmsNormBackward {
            /// The input, the (constant) weight and eps: the backward recomputes each row's
            /// scale from the input rather than keeping it.
            type State = (FloatTensor<B>, FloatTensor<B>, f32);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let [node_x] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, weight, eps) = ops.state;
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, B::rms_norm_backward(x, weight, grad, eps));
                }
            }
        }

        let w = weight.into_primitive();
        match RmsNormBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let xp = x.primitive().clone();
                let out = B::rms_norm(xp.clone(), w.clone(), eps);
                prep.finish((xp, w, eps), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::rms_norm(x.into_primitive(), w, eps)),
        }
    }

    fn rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        let dx = B::rms_norm_backward(
            x.into_primitive(),
            weight.into_primitive(),
            grad.into_primitive(),
            eps,
        );
        constant::<B, C>(dx)
    }

    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (d_gate, d_up) = B::swiglu_backward(
            gate.into_primitive(),
            up.into_primitive(),
            grad.into_primitive(),
        );
        (constant::<B, C>(d_gate), constant::<B, C>(d_up))
    }
}

/// A parentless node: the backward ops of the training device return their gradients as
/// constants (nothing here differentiates a gradient).
#[derive(Debug)]
struct Constant;

impl<B: Backend> Backward<B, 0> for Constant {
    type State = ();
    fn backward(self, _: Ops<(), 0>, _: &mut Gradients, _: &mut Checkpointer) {}
}

fn constant<B: Backend, C: CheckpointStrategy>(t: FloatTensor<B>) -> FloatTensor<Autodiff<B, C>> {
    Constant.prepare::<C>([]).compute_bound().stateless(t)
}

/// Whether `device` runs the fused ops: flex, plain or under autodiff.
pub fn applies(device: &Device) -> bool {
    *device == Device::flex() || *device == Device::flex().autodiff()
}

/// `lhs [m, k] · rhs [k, n]` on flex devices through `gemm` directly (burn-flex zero-fills
/// each product's output and then copies it into an aligned buffer: about 9% of a LoRA step),
/// `None` elsewhere.
pub fn matmul_2d(lhs: &Tensor<2>, rhs: &Tensor<2>) -> Option<Tensor<2>> {
    if !applies(&lhs.device()) || lhs.dtype() != DType::F32 || rhs.dtype() != DType::F32 {
        return None;
    }
    Some(Tensor::from_dispatch(<Dispatch as FusedOps>::matmul_2d(
        lhs.clone().into_dispatch(),
        rhs.clone().into_dispatch(),
    )))
}

/// RMSNorm of `x` over its last dimension on flex devices, `None` elsewhere or when the
/// weight trains (the fused op treats it as a constant).
pub fn rms_norm<const D: usize>(x: &Tensor<D>, weight: &Tensor<1>, eps: f64) -> Option<Tensor<D>> {
    if !applies(&x.device())
        || weight.is_require_grad()
        || x.dtype() != DType::F32
        || x.dims()[D - 1] != weight.dims()[0]
    {
        return None;
    }
    Some(Tensor::from_dispatch(<Dispatch as FusedOps>::rms_norm(
        x.clone().into_dispatch(),
        weight.clone().into_dispatch(),
        eps as f32,
    )))
}

/// `silu(gate) · up`: fused on flex devices (see the module docs), burn's ops elsewhere.
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    if applies(&gate.device()) && gate.dims() == up.dims() && gate.dtype() == DType::F32 {
        return Tensor::from_dispatch(<Dispatch as FusedOps>::swiglu(
            gate.into_dispatch(),
            up.into_dispatch(),
        ));
    }
    burn::tensor::activation::silu(gate) * up
}

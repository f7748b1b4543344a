//! The fused kernels as single autodiff ops, each with its hand-written gradient (one backward
//! kernel where burn would replay every elementwise step).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, TensorMetadata};

use super::{reference, DropoutSite, Kernels};

#[derive(Debug)]
struct LayerNormOp;

impl<B: Kernels> Backward<B, 3> for LayerNormOp {
    type State = (FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, gamma, eps) = ops.state;
        let grad = grads.consume::<B>(&ops.node);
        let [dx, dgamma, dbeta] = B::fused_layer_norm_backward(x, gamma, eps, grad);
        let [px, pgamma, pbeta] = ops.parents;
        for (parent, g) in [(px, dx), (pgamma, dgamma), (pbeta, dbeta)] {
            if let Some(node) = parent {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

#[derive(Debug)]
struct SoftmaxOp;

impl<B: Kernels> Backward<B, 1> for SoftmaxOp {
    /// The probabilities and the scale.
    type State = (FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (y, scale) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |g| B::attention_softmax_backward(y, g, scale));
    }
}

#[derive(Debug)]
struct GeluOp;

impl<B: Kernels> Backward<B, 1> for GeluOp {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let x = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |g| B::fused_gelu_backward(x, g));
    }
}

#[derive(Debug)]
struct SwapHeadsOp;

impl<B: Kernels> Backward<B, 1> for SwapHeadsOp {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        unary::<B, _>(ops.parents, ops.node, grads, |g| B::swap_heads(g));
    }
}

#[derive(Debug)]
struct GatherRowsOp;

impl<B: Kernels> Backward<B, 1> for GatherRowsOp {
    /// The rows gathered and the source's row count.
    type State = (Vec<usize>, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (rows, n) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |g| B::scatter_rows(g, &rows, n));
    }
}

#[derive(Debug)]
struct CrossEntropyOp;

impl<B: Kernels> Backward<B, 1> for CrossEntropyOp {
    /// Logits, per-row log-sum-exp, labels, smoothing.
    type State = (FloatTensor<B>, FloatTensor<B>, Vec<usize>, f64);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (logits, lse, labels, eps) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |g| B::cross_entropy_backward(logits, lse, &labels, eps, g));
    }
}

#[derive(Debug)]
struct LmCrossEntropyOp;

impl<B: Kernels> Backward<B, 3> for LmCrossEntropyOp {
    /// Rows, weight, logits, per-row log-sum-exp, labels, smoothing.
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, Vec<usize>, f64);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (h, weight, logits, lse, labels, eps) = ops.state;
        let grad = grads.consume::<B>(&ops.node);
        let dlogits = B::cross_entropy_backward(logits, lse, &labels, eps, grad);
        let [ph, pw, pb] = ops.parents;
        if let Some(node) = pb {
            let vocab = dlogits.shape()[1];
            grads.register::<B>(node.id, B::float_reshape(B::float_sum_dim(dlogits.clone(), 0), [vocab].into()));
        }
        if let Some(node) = pw {
            grads.register::<B>(node.id, B::float_matmul(B::float_transpose(dlogits.clone()), h));
        }
        if let Some(node) = ph {
            grads.register::<B>(node.id, B::float_matmul(dlogits, weight));
        }
    }
}

impl<B: Kernels, C: CheckpointStrategy> Kernels for Autodiff<B, C> {
    fn device_memory(device: &Self::Device) -> Option<u64> {
        B::device_memory(device)
    }

    fn fused_layer_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        let out = B::fused_layer_norm(x.primitive.clone(), gamma.primitive.clone(), beta.primitive, eps);
        match LayerNormOp.prepare::<C>([x.node.clone(), gamma.node.clone(), beta.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((x.primitive, gamma.primitive, eps), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    /// The mask is a constant: it receives no gradient.
    fn attention_softmax(scores: FloatTensor<Self>, mask: Option<FloatTensor<Self>>, scale: f64) -> FloatTensor<Self> {
        let out = B::attention_softmax(scores.primitive, mask.map(|m| m.primitive), scale);
        match SoftmaxOp.prepare::<C>([scores.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((out.clone(), scale), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn swap_heads(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let out = B::swap_heads(x.primitive);
        match SwapHeadsOp.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn gather_rows(x: FloatTensor<Self>, rows: &[usize]) -> FloatTensor<Self> {
        let n = x.primitive.shape()[0];
        let out = B::gather_rows(x.primitive, rows);
        match GatherRowsOp.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((rows.to_vec(), n), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let out = B::fused_gelu(x.primitive.clone());
        match GeluOp.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(x.primitive, out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    /// A constant: the mask carries no gradient.
    fn dropout_mask(shape: Shape, keep: f64, site: &DropoutSite<'_>, device: &B::Device) -> FloatTensor<Self> {
        Self::from_inner(B::dropout_mask(shape, keep, site, device))
    }

    fn lm_cross_entropy(
        h: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        labels: &[usize],
        eps: f64,
    ) -> FloatTensor<Self> {
        let logits = reference::lm_logits::<B>(h.primitive.clone(), weight.primitive.clone(), bias.primitive);
        let (loss, lse) = B::cross_entropy_forward(logits.clone(), labels, eps);
        match LmCrossEntropyOp.prepare::<C>([h.node.clone(), weight.node.clone(), bias.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((h.primitive, weight.primitive, logits, lse, labels.to_vec(), eps), loss),
            OpsKind::UnTracked(prep) => prep.finish(loss),
        }
    }

    fn fused_cross_entropy(logits: FloatTensor<Self>, labels: &[usize], eps: f64) -> FloatTensor<Self> {
        let (loss, lse) = B::cross_entropy_forward(logits.primitive.clone(), labels, eps);
        match CrossEntropyOp.prepare::<C>([logits.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((logits.primitive, lse, labels.to_vec(), eps), loss),
            OpsKind::UnTracked(prep) => prep.finish(loss),
        }
    }
}

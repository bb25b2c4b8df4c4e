//! [`Kernels`] under burn's autodiff: the LM-head log-prob as one graph node whose backward pass
//! calls [`Kernels::lm_head_backward`] of the inner backend.
//!
//! The node keeps the hidden states and the weight (shared buffers, not copies), the targets and
//! one log-sum-exp per row: never the `[tokens, vocab]` logits.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::ops::FloatTensor;

use super::{AdamWMoments, AdamWStep, Kernels, LmHeadOutput};
use crate::kernels::TokenFilter;

/// The backward step of [`Kernels::lm_head_forward`].
#[derive(Debug)]
struct LmHeadBackward;

/// What the backward step needs: hidden `[n, n_embd]`, weight `[vocab, n_embd]`, the targets, the
/// temperature and the per-row log-sum-exp `[n]`.
type LmHeadState<B> = (FloatTensor<B>, FloatTensor<B>, Vec<u32>, f32, FloatTensor<B>);

impl<B: Kernels> Backward<B, 2> for LmHeadBackward {
    type State = LmHeadState<B>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [hidden_node, weight_node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (hidden, weight, targets, temperature, lse) = ops.state;
        let (d_hidden, d_weight) = B::lm_head_backward(hidden, weight, &targets, temperature, lse, grad);
        if let Some(node) = hidden_node {
            grads.register::<B>(node.id, d_hidden);
        }
        if let Some(node) = weight_node {
            grads.register::<B>(node.id, d_weight);
        }
    }
}

/// An inner-backend tensor as a constant of the graph (burn's `AutodiffTensor::new`, reached
/// through the backend's primitive type since burn does not export the type's name).
fn untracked<B: Kernels, C: CheckpointStrategy>(tensor: FloatTensor<B>) -> FloatTensor<Autodiff<B, C>> {
    FloatTensor::<Autodiff<B, C>>::new(tensor)
}

/// The backward step of [`Kernels::tanh_gelu`]; its state is the input.
#[derive(Debug)]
struct GeluBackward;

impl<B: Kernels> Backward<B, 1> for GeluBackward {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [input] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = input {
            grads.register::<B>(node.id, B::tanh_gelu_backward(ops.state, grad));
        }
    }
}

impl<B: Kernels, C: CheckpointStrategy> Kernels for Autodiff<B, C> {
    fn tanh_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match GeluBackward.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = B::tanh_gelu(x.primitive.clone());
                prep.finish(x.primitive, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::tanh_gelu(x.primitive)),
        }
    }

    fn tanh_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        untracked::<B, C>(B::tanh_gelu_backward(x.primitive, grad.primitive))
    }

    fn lm_head_forward(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: &[u32],
        temperature: f32,
        with_entropy: bool,
    ) -> LmHeadOutput<Self> {
        let out =
            B::lm_head_forward(hidden.primitive.clone(), weight.primitive.clone(), targets, temperature, with_entropy);
        let logprobs =
            match LmHeadBackward.prepare::<C>([hidden.node.clone(), weight.node.clone()]).compute_bound().stateful() {
                OpsKind::Tracked(prep) => {
                    let state = (hidden.primitive, weight.primitive, targets.to_vec(), temperature, out.lse.clone());
                    prep.finish(state, out.logprobs)
                }
                OpsKind::UnTracked(prep) => prep.finish(out.logprobs),
            };
        // The log-sum-exp and the entropy are constants of the graph.
        LmHeadOutput { logprobs, lse: untracked::<B, C>(out.lse), entropy: out.entropy.map(untracked::<B, C>) }
    }

    /// Gradients of the gradient are not needed: this runs on the inner backend and returns
    /// untracked tensors.
    fn lm_head_backward(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: &[u32],
        temperature: f32,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (d_hidden, d_weight) = B::lm_head_backward(
            hidden.primitive,
            weight.primitive,
            targets,
            temperature,
            lse.primitive,
            grad.primitive,
        );
        (untracked::<B, C>(d_hidden), untracked::<B, C>(d_weight))
    }

    /// Optimizers step on the inner backend; this is here for completeness and runs there.
    fn adamw_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moments: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        step: &AdamWStep,
    ) -> AdamWMoments<Self> {
        let moments = moments.map(|(m, v)| (m.primitive, v.primitive));
        let out = B::adamw_step(param.primitive, grad.primitive, moments, step);
        AdamWMoments {
            param: untracked::<B, C>(out.param),
            moment_1: untracked::<B, C>(out.moment_1),
            moment_2: untracked::<B, C>(out.moment_2),
        }
    }

    fn decoding_lm_head(weight: FloatTensor<Self>) -> FloatTensor<Self> {
        untracked::<B, C>(B::decoding_lm_head(weight.primitive))
    }

    fn sample(logits: FloatTensor<Self>, uniform: &[f32], config: &TokenFilter) -> (Vec<u32>, Vec<f32>) {
        B::sample(logits.primitive, uniform, config)
    }
}

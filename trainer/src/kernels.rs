//! The two hot spots of RLHF on GPT-2, as a backend extension: log-probabilities through the
//! vocabulary-wide LM head, and drawing the next token.
//!
//! Both are dominated by the 50,257-wide output layer. Written with plain tensor ops they build
//! `[tokens, vocab]` logits, log-softmax and softmax tensors (several hundred MB at `gpt2` size,
//! kept alive for the backward pass), and on the CPU backend each of those ops is one more pass
//! over memory. [`Kernels`] gives every backend a default implementation with tensor ops that
//! never holds more than a chunk of rows of the logits, and the CPU backend a fused one
//! ([`cpu`]) that never holds more than a chunk of the vocabulary. Under autodiff the log-prob has
//! its own backward ([`autodiff`]): it keeps the hidden states, the weight and one log-sum-exp
//! per row, and recomputes the logits chunk by chunk (the idea of Liger's fused linear
//! cross-entropy and Apple's cut cross-entropy).
//!
//! # The log-prob and its gradient
//! With `z = hidden · weightᵀ / T` (one row per token) and `lse = log Σ_v exp(z_v)`:
//! - `logprob = z[target] − lse`, `entropy = lse − Σ_v p_v z_v` with `p = exp(z − lse)`;
//! - `∂logprob/∂z_v = 1[v = target] − p_v`, so with `g` the incoming gradient per row and
//!   `dz = g · (onehot − p) / T`: `∂hidden = dz · weight`, `∂weight = dzᵀ · hidden`.

pub mod autodiff;
pub mod cpu;

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData, TensorPrimitive};

/// What [`Kernels::lm_head_forward`] returns, one value per row.
pub struct LmHeadOutput<B: Backend> {
    /// `[n]`: `log p(target)` under `softmax(hidden · weightᵀ / T)`.
    pub logprobs: FloatTensor<B>,
    /// `[n]`: the log-sum-exp of each row's scaled logits (what the backward pass needs).
    pub lse: FloatTensor<B>,
    /// `[n]`, when asked for: each row's entropy. A statistic: no gradient flows through it.
    pub entropy: Option<FloatTensor<B>>,
}

/// One AdamW step's settings (burn's `AdamW` semantics).
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
    /// Steps taken, this one included (1 on the first step).
    pub time: i32,
}

/// What [`Kernels::adamw_step`] returns: the new parameter and moments.
pub struct AdamWMoments<B: Backend> {
    pub param: FloatTensor<B>,
    pub moment_1: FloatTensor<B>,
    pub moment_2: FloatTensor<B>,
}

/// Backend-specific fast paths. Every method has a default written with burn tensor ops, so any
/// backend can implement the trait with an empty `impl`.
pub trait Kernels: Backend {
    /// Per-row log-probability of `targets` through a tied LM head.
    ///
    /// # Shapes
    /// - `hidden`: `[n, n_embd]`; `weight`: `[vocab, n_embd]` (GPT-2's `wte`); `targets`: `n` ids
    fn lm_head_forward(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: &[u32],
        temperature: f32,
        with_entropy: bool,
    ) -> LmHeadOutput<Self> {
        lm_head_forward_rows::<Self>(hidden, weight, targets, temperature, with_entropy)
    }

    /// Gradients of `Σ grad · logprobs` with respect to `hidden` and `weight`, recomputing the
    /// logits from `lse` (see the module docs).
    ///
    /// # Shapes
    /// - `lse`, `grad`: `[n]`; returns `([n, n_embd], [vocab, n_embd])`
    fn lm_head_backward(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: &[u32],
        temperature: f32,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        lm_head_backward_rows::<Self>(hidden, weight, targets, temperature, lse, grad)
    }

    /// GPT-2's tanh GELU (`gelu_new`): `½x(1 + tanh(√(2/π)(x + 0.044715x³)))`, elementwise.
    /// The default is burn's `gelu_approximate` (eight tensor ops, and as many graph nodes under
    /// autodiff); the CPU backend makes one vectorised pass, and autodiff one node.
    fn tanh_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let rank = burn::tensor::TensorMetadata::shape(&x).num_dims();
        let numel = burn::tensor::TensorMetadata::shape(&x).num_elements();
        let shape = burn::tensor::TensorMetadata::shape(&x);
        let flat = Tensor::<Self, 1>::from_primitive(TensorPrimitive::Float(Self::float_reshape(x, [numel].into())));
        debug_assert!(rank > 0);
        let y = burn::tensor::activation::gelu_approximate(flat);
        Self::float_reshape(y.into_primitive().tensor(), shape)
    }

    /// `grad · gelu'(x)`, elementwise, with
    /// `gelu'(x) = ½(1 + t) + ½x(1 − t²)·√(2/π)(1 + 3·0.044715x²)`, `t = tanh(√(2/π)(x + 0.044715x³))`.
    fn tanh_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        gelu_backward_with_tensor_ops::<Self>(x, grad)
    }

    /// One AdamW update of one parameter, exactly as burn's `AdamW` computes it:
    /// `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`, `Δ = (m / (1−β₁ᵗ)) / (√(v / (1−β₂ᵗ)) + ε)`,
    /// `θ ← θ(1 − lr·λ) − lr·Δ`. The moments are `None` on the first step. The default runs
    /// burn's tensor ops (ten passes over memory); the CPU backend makes one pass and updates the
    /// moments in place.
    fn adamw_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moments: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        step: &AdamWStep,
    ) -> AdamWMoments<Self> {
        adamw_step_with_tensor_ops::<Self>(param, grad, moments, step)
    }

    /// The tied LM head laid out for decoding, `hidden · result` giving the logits: `weight` is
    /// `[vocab, n_embd]` (`wte`), the result `[n_embd, vocab]`. The default is a transposed view;
    /// the CPU backend copies it into that layout once per generation, so that every decoding
    /// step's matrix product streams the weight as it is instead of re-packing 50,257 rows.
    fn decoding_lm_head(weight: FloatTensor<Self>) -> FloatTensor<Self> {
        float::<Self, 2>(weight).transpose().into_primitive().tensor()
    }

    /// Draws one token per row of `logits` (`[batch, vocab]`) by inverse-CDF sampling with the
    /// row's uniform draw (see `infer::sampling`); returns the tokens and their log-probs
    /// under
    /// the temperature-scaled distribution over the whole vocabulary.
    fn sample(logits: FloatTensor<Self>, uniform: &[f32], config: &TokenFilter) -> (Vec<u32>, Vec<f32>) {
        sample_with_tensor_ops::<Self>(logits, uniform, config)
    }
}

/// How [`Kernels::sample`] draws a token from a row of logits: the decoding part of
/// [`SamplingConfig`](crate::SamplingConfig).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenFilter {
    /// Argmax instead of sampling; temperature, top-k and top-p are then unused.
    pub greedy: bool,
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p`; 1.0 keeps all.
    pub top_p: f32,
}

impl Default for TokenFilter {
    fn default() -> Self {
        Self { greedy: false, temperature: 1.0, top_k: 0, top_p: 1.0 }
    }
}

/// A training backend: autodiff with [`Kernels`], over an inner backend with them too.
pub trait AutodiffKernels: AutodiffBackend<InnerBackend: Kernels> + Kernels {}

impl<B> AutodiffKernels for B
where
    B: AutodiffBackend + Kernels,
    B::InnerBackend: Kernels,
{
}

impl Kernels for burn::backend::Flex {
    fn lm_head_forward(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: &[u32],
        temperature: f32,
        with_entropy: bool,
    ) -> LmHeadOutput<Self> {
        cpu::lm_head_forward(hidden, weight, targets, temperature, with_entropy)
    }

    fn lm_head_backward(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: &[u32],
        temperature: f32,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        cpu::lm_head_backward(hidden, weight, targets, temperature, lse, grad)
    }

    fn decoding_lm_head(weight: FloatTensor<Self>) -> FloatTensor<Self> {
        cpu::transpose(weight)
    }

    fn adamw_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moments: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        step: &AdamWStep,
    ) -> AdamWMoments<Self> {
        cpu::adamw_step(param, grad, moments, step)
    }

    fn tanh_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        cpu::tanh_gelu(x)
    }

    fn tanh_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        cpu::tanh_gelu_backward(x, grad)
    }

    fn sample(logits: FloatTensor<Self>, uniform: &[f32], config: &TokenFilter) -> (Vec<u32>, Vec<f32>) {
        cpu::sample(logits, uniform, config)
    }
}

#[cfg(feature = "cuda")]
impl Kernels for burn::backend::Cuda {}

fn float<B: Backend, const D: usize>(tensor: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(tensor))
}

fn ids<B: Backend>(ids: &[u32], shape: [usize; 2], device: &B::Device) -> Tensor<B, 2, Int> {
    let ids: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(ids, shape), device)
}

/// Rows of logits materialised at once by the tensor-op defaults: `ROW_CHUNK × vocab` floats
/// (200 MB for GPT-2's vocabulary).
const ROW_CHUNK: usize = 1024;

/// The default [`Kernels::lm_head_forward`]: full-vocabulary logits for `ROW_CHUNK` rows at a time.
pub fn lm_head_forward_rows<B: Backend>(
    hidden: FloatTensor<B>,
    weight: FloatTensor<B>,
    targets: &[u32],
    temperature: f32,
    with_entropy: bool,
) -> LmHeadOutput<B> {
    let hidden: Tensor<B, 2> = float(hidden);
    let weight_t = float::<B, 2>(weight).transpose(); // [n_embd, vocab]
    let [n, _] = hidden.dims();
    let device = hidden.device();
    let (mut logprobs, mut lses, mut entropies) = (Vec::new(), Vec::new(), Vec::new());
    for start in (0..n).step_by(ROW_CHUNK) {
        let rows = ROW_CHUNK.min(n - start);
        let z = hidden.clone().narrow(0, start, rows).matmul(weight_t.clone()) / temperature as f64; // [rows, vocab]
        let logp = log_softmax(z.clone(), 1);
        let target = ids::<B>(&targets[start..start + rows], [rows, 1], &device);
        logprobs.push(logp.clone().gather(1, target).reshape([rows]));
        lses.push((z.clone() - logp.clone()).narrow(1, 0, 1).reshape([rows]));
        if with_entropy {
            entropies.push((logp.clone().exp() * logp).sum_dim(1).neg().reshape([rows]));
        }
    }
    LmHeadOutput {
        logprobs: Tensor::cat(logprobs, 0).into_primitive().tensor(),
        lse: Tensor::cat(lses, 0).into_primitive().tensor(),
        entropy: with_entropy.then(|| Tensor::cat(entropies, 0).into_primitive().tensor()),
    }
}

/// The default [`Kernels::lm_head_backward`], `ROW_CHUNK` rows at a time.
pub fn lm_head_backward_rows<B: Backend>(
    hidden: FloatTensor<B>,
    weight: FloatTensor<B>,
    targets: &[u32],
    temperature: f32,
    lse: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let hidden: Tensor<B, 2> = float(hidden);
    let weight: Tensor<B, 2> = float(weight);
    let (lse, grad): (Tensor<B, 1>, Tensor<B, 1>) = (float(lse), float(grad));
    let [n, _] = hidden.dims();
    let device = hidden.device();
    let scale = 1.0 / temperature as f64;
    let mut d_hidden = Vec::new();
    let mut d_weight = weight.zeros_like();
    for start in (0..n).step_by(ROW_CHUNK) {
        let rows = ROW_CHUNK.min(n - start);
        let h = hidden.clone().narrow(0, start, rows);
        let z = h.clone().matmul(weight.clone().transpose()) * scale; // [rows, vocab]
        let lse_rows = lse.clone().narrow(0, start, rows).reshape([rows, 1]);
        let g = grad.clone().narrow(0, start, rows).reshape([rows, 1]);
        let p = (z - lse_rows).exp();
        let target = ids::<B>(&targets[start..start + rows], [rows, 1], &device);
        // dz = g · (onehot − p) / T
        let dz = (p * g.clone().neg()).scatter(1, target, g, IndexingUpdateOp::Add) * scale;
        d_hidden.push(dz.clone().matmul(weight.clone()));
        d_weight = d_weight + dz.transpose().matmul(h);
    }
    (Tensor::cat(d_hidden, 0).into_primitive().tensor(), d_weight.into_primitive().tensor())
}

/// `√(2/π)` and the cubic coefficient of GPT-2's tanh GELU.
pub const GELU_SQRT_2_OVER_PI: f64 = std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2;
pub const GELU_CUBIC: f64 = 0.044715;

/// The default [`Kernels::tanh_gelu_backward`], with tensor ops.
pub fn gelu_backward_with_tensor_ops<B: Backend>(x: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
    let shape = burn::tensor::TensorMetadata::shape(&x);
    let numel = shape.num_elements();
    let flat =
        |t: FloatTensor<B>| Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(B::float_reshape(t, [numel].into())));
    let (x, grad) = (flat(x), flat(grad));
    let x2 = x.clone().square();
    let t = ((x.clone() + x.clone() * x2.clone() * GELU_CUBIC) * GELU_SQRT_2_OVER_PI).tanh();
    let du = (x2 * (3.0 * GELU_CUBIC) + 1.0) * GELU_SQRT_2_OVER_PI;
    let derivative = (t.clone() + 1.0) * 0.5 + x * (t.square().neg() + 1.0) * du * 0.5;
    B::float_reshape((grad * derivative).into_primitive().tensor(), shape)
}

/// The default [`Kernels::adamw_step`]: burn's `AdamW` op for op.
pub fn adamw_step_with_tensor_ops<B: Backend>(
    param: FloatTensor<B>,
    grad: FloatTensor<B>,
    moments: Option<(FloatTensor<B>, FloatTensor<B>)>,
    step: &AdamWStep,
) -> AdamWMoments<B> {
    let shape = burn::tensor::TensorMetadata::shape(&param);
    let numel = shape.num_elements();
    let flat =
        |t: FloatTensor<B>| Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(B::float_reshape(t, [numel].into())));
    let (param, grad) = (flat(param), flat(grad));
    let (factor_1, factor_2) = (1.0 - step.beta_1, 1.0 - step.beta_2);
    let (m, v) = match moments {
        Some((m, v)) => (
            flat(m).mul_scalar(step.beta_1).add(grad.clone().mul_scalar(factor_1)),
            flat(v).mul_scalar(step.beta_2).add(grad.square().mul_scalar(factor_2)),
        ),
        None => (grad.clone().mul_scalar(factor_1), grad.square().mul_scalar(factor_2)),
    };
    let m_hat = m.clone().div_scalar(1.0 - step.beta_1.powi(step.time));
    let v_hat = v.clone().div_scalar(1.0 - step.beta_2.powi(step.time));
    let delta = m_hat.div(v_hat.sqrt().add_scalar(step.epsilon));
    let decay = step.lr * step.weight_decay as f64;
    let decayed = if decay == 0.0 { param } else { param.mul_scalar(1.0 - decay) };
    let param = decayed - delta.mul_scalar(step.lr);
    let unflat = |t: Tensor<B, 1>| B::float_reshape(t.into_primitive().tensor(), shape.clone());
    AdamWMoments { param: unflat(param), moment_1: unflat(m), moment_2: unflat(v) }
}

/// The default [`Kernels::sample`]: filtering, softmax and cumulative sums as tensor ops on
/// the device; only the tokens and their log-probs are read back.
pub fn sample_with_tensor_ops<B: Backend>(
    logits: FloatTensor<B>,
    uniform: &[f32],
    config: &TokenFilter,
) -> (Vec<u32>, Vec<f32>) {
    let logits: Tensor<B, 2> = float(logits);
    let [batch, vocab] = logits.dims();
    let device = logits.device();
    let (token, logprob) = if config.greedy {
        let token = logits.clone().argmax(1); // [batch, 1]
        let logprob = log_softmax(logits, 1).gather(1, token.clone());
        (token, logprob)
    } else {
        let scaled = logits / config.temperature as f64;
        let full_logprobs = log_softmax(scaled.clone(), 1);
        let mut filtered = scaled;
        if config.top_k > 0 && config.top_k < vocab {
            // The k-th largest logit per row is the smallest one kept.
            let kth = filtered.clone().topk(config.top_k, 1).narrow(1, config.top_k - 1, 1); // [batch, 1]
            let below = filtered.clone().lower(kth.expand([batch, vocab]));
            filtered = filtered.mask_fill(below, f32::NEG_INFINITY);
        }
        if config.top_p < 1.0 {
            // Keep the most likely tokens until their mass reaches top_p (at least one token).
            let sorted = filtered.clone().sort_descending(1); // [batch, vocab]
            let probs = softmax(sorted.clone(), 1);
            let mass_before = probs.clone().cumsum(1) - probs; // mass of strictly more likely tokens
            let n_keep = mass_before.lower_elem(config.top_p as f64).int().sum_dim(1).clamp_min(1); // [batch, 1]
            let threshold = sorted.gather(1, n_keep - 1); // smallest kept logit, [batch, 1]
            let below = filtered.clone().lower(threshold.expand([batch, vocab]));
            filtered = filtered.mask_fill(below, f32::NEG_INFINITY);
        }
        let cdf = softmax(filtered, 1).cumsum(1); // [batch, vocab]
        let total = cdf.clone().narrow(1, vocab - 1, 1); // ~1, exactly the mass the cumsum reached
        let uniform = Tensor::<B, 2>::from_data(TensorData::new(uniform.to_vec(), [batch, 1]), &device);
        let target = (uniform * total).expand([batch, vocab]);
        // The first token whose cumulative mass exceeds the target.
        let token = cdf.lower_equal(target).int().sum_dim(1).clamp_max(vocab as i64 - 1); // [batch, 1]
        let logprob = full_logprobs.gather(1, token.clone());
        (token, logprob)
    };
    let tokens = token.into_data().iter::<i64>().map(|t| t as u32).collect();
    let logprobs = logprob.into_data().iter::<f32>().collect();
    (tokens, logprobs)
}
#[cfg(test)]
mod tests;

//! Rollouts, and rollouts on the device in the layouts the update needs.
//!
//! Sequences are left-padded `query ++ response` (`[batch, width]`); per-token tensors are
//! response-aligned `[batch, resp]` with a mask. Response token `j` of row `i` is predicted at
//! column `pad_i + query_i + j − 1`, gathered with an index tensor.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::kernels::Kernels;
use crate::model::batch::{Padded, left_pad, select_rows};
use crate::model::gpt2::Gpt2;

/// One scored rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub query: Vec<u32>,
    pub response: Vec<u32>,
    /// Behaviour log-probs of `response` under the sampling policy (temperature-scaled).
    pub logprobs: Vec<f32>,
    pub score: f32,
}

/// Rollouts on the device, in the two layouts the step needs.
///
/// Sequences are left-padded `query ++ response` (`[batch, width]`). Per-token quantities are
/// response-aligned (`[batch, resp]`, with `mask`); the LM head runs only on the `n_tokens`
/// hidden states that predict a real response token, listed flat.
pub(super) struct Batch<B: Backend> {
    pub(super) seqs: Padded<B>,
    /// `[batch, resp]`: the column predicting each response token (0 on padding).
    pub(super) columns: Tensor<B, 2, Int>,
    /// `[batch, resp]`: 1 on response tokens, 0 on padding.
    pub(super) mask: Tensor<B, 2>,
    /// `n_tokens` flat indices `row · width + column` of the hidden states that predict a
    /// response token, row after row.
    pub(super) hidden_rows: Vec<usize>,
    /// The `n_tokens` response tokens, in the same order.
    pub(super) targets: Vec<u32>,
    /// `[batch · resp]`: for each response-aligned slot, its index in the flat list (0 on padding).
    pub(super) unflatten: Tensor<B, 1, Int>,
}

impl<B: Backend> Batch<B> {
    /// `resp` is at least the longest response (the whole batch's, so that mini-batches share
    /// one response-aligned width).
    pub(super) fn new(rollouts: &[Rollout], resp: usize, eos_id: u32, device: &B::Device) -> Self {
        let rows: Vec<Vec<u32>> = rollouts.iter().map(|r| [r.query.as_slice(), &r.response].concat()).collect();
        let seqs = left_pad::<B>(&rows, eos_id, device);
        let (n, width) = (rollouts.len(), seqs.width);
        let mut columns = Vec::with_capacity(n * resp);
        let mut mask = Vec::with_capacity(n * resp);
        let mut unflatten = Vec::with_capacity(n * resp);
        let (mut hidden_rows, mut targets) = (Vec::new(), Vec::new());
        for (i, (rollout, row)) in rollouts.iter().zip(&rows).enumerate() {
            let start = width - row.len() + rollout.query.len() - 1;
            for j in 0..resp {
                let real = j < rollout.response.len();
                columns.push(if real { (start + j) as i64 } else { 0 });
                mask.push(if real { 1.0f32 } else { 0.0 });
                unflatten.push(if real { hidden_rows.len() as i64 } else { 0 });
                if real {
                    hidden_rows.push(i * width + start + j);
                    targets.push(rollout.response[j]);
                }
            }
        }
        Batch {
            seqs,
            columns: Tensor::from_data(TensorData::new(columns, [n, resp]), device),
            mask: Tensor::from_data(TensorData::new(mask, [n, resp]), device),
            hidden_rows,
            targets,
            unflatten: Tensor::from_data(TensorData::new(unflatten, [n * resp]), device),
        }
    }

    /// `[n_tokens]` in flat order -> `[batch, resp]`, zero on padding.
    pub(super) fn response_aligned(&self, flat: Tensor<B, 1>) -> Tensor<B, 2> {
        let [batch, resp] = self.mask.dims();
        flat.select(0, self.unflatten.clone()).reshape([batch, resp]) * self.mask.clone()
    }
}

/// Log-probs of each response token under the (temperature-scaled) policy: the LM head runs on
/// the response positions only. `hidden`: `[batch, width, n_embd]` -> `[batch, resp]`
pub(super) fn response_logprobs<B: Kernels>(
    model: &Gpt2<B>,
    hidden: Tensor<B, 3>,
    batch: &Batch<B>,
    temperature: f32,
) -> Tensor<B, 2> {
    let rows = select_rows(hidden, &batch.hidden_rows); // [n_tokens, n_embd]
    batch.response_aligned(model.transformer.token_logprobs(rows, &batch.targets, temperature))
}

/// [`response_logprobs`] and the entropy of the distribution that picked each token.
/// `hidden`: `[batch, width, n_embd]` -> `[batch, resp]`, `[batch, resp]`
pub(super) fn response_logprobs_and_entropy<B: Kernels>(
    model: &Gpt2<B>,
    hidden: Tensor<B, 3>,
    batch: &Batch<B>,
    temperature: f32,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let rows = select_rows(hidden, &batch.hidden_rows); // [n_tokens, n_embd]
    let (logprobs, entropy) = model.transformer.token_logprobs_and_entropy(rows, &batch.targets, temperature);
    (batch.response_aligned(logprobs), batch.response_aligned(entropy))
}

/// What a mini-batch is trained towards, response-aligned (`[batch, resp]`): computed once per
/// update, before any gradient step.
pub struct Targets<B: Backend> {
    /// Log-probs the ratio is taken against (see [`crate::ppo::OldLogprobs`]).
    pub old_logprobs: Tensor<B, 2>,
    /// Values before the update (`values · mask`), the centre of value clipping.
    pub old_values: Tensor<B, 2>,
    pub advantages: Tensor<B, 2>,
    pub returns: Tensor<B, 2>,
    /// 1 on response tokens, 0 on padding.
    pub mask: Tensor<B, 2>,
}

impl<B: Backend> Targets<B> {
    /// The rows `index` (`[rows]`) of every tensor.
    pub fn select(&self, index: Tensor<B, 1, Int>) -> Self {
        let pick = |t: &Tensor<B, 2>| t.clone().select(0, index.clone());
        Targets {
            old_logprobs: pick(&self.old_logprobs),
            old_values: pick(&self.old_values),
            advantages: pick(&self.advantages),
            returns: pick(&self.returns),
            mask: pick(&self.mask),
        }
    }
}

//! The statistics a PPO update reports, under TRL's names. Every name is written out here as a
//! literal, so searching for a metric finds the line that computes it; `trainer/METRICS.md` lists
//! them with their meanings.

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};

use crate::ppo::batch::{Rollout, Targets};
use crate::ppo::math::{PolicyLoss, ValueLoss, masked_mean, masked_var};
use crate::train::Stats;

pub(crate) fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    t.into_scalar().elem::<f64>()
}

/// TRL's statistics of one mini-batch, from its losses and targets. `kept`: whether the
/// mini-batch updates the model; like TRL, a skipped mini-batch reports its losses as 0 and its
/// diagnostics unchanged.
///
/// # Shapes
/// - `entropy`: `[batch, resp]`, the per-token entropy of the policy
pub fn minibatch_stats<B: Backend>(
    pg: &PolicyLoss<B>,
    vf: &ValueLoss<B>,
    vf_coef: f64,
    entropy: Tensor<B, 2>,
    targets: &Targets<B>,
    kept: bool,
) -> [(&'static str, f64); 15] {
    let value = |t: &Tensor<B, 1>| scalar(t.clone());
    let loss = |t: f64| if kept { t } else { 0.0 };
    let mask = || targets.mask.clone();
    // The total as the update computes it (in the backend's precision).
    let total = scalar(pg.loss.clone() + vf.loss.clone() * vf_coef);
    [
        ("ppo/loss/policy", loss(value(&pg.loss))),
        ("ppo/loss/value", loss(value(&vf.loss))),
        ("ppo/loss/total", loss(total)),
        ("ppo/policy/entropy", scalar(masked_mean(entropy, mask()))),
        ("ppo/policy/approxkl", value(&pg.approxkl)),
        ("ppo/policy/policykl", value(&pg.policykl)),
        ("ppo/policy/clipfrac", value(&pg.clipfrac)),
        ("ppo/policy/advantages_mean", scalar(masked_mean(targets.advantages.clone(), mask()))),
        ("ppo/returns/mean", scalar(masked_mean(targets.returns.clone(), mask()))),
        ("ppo/returns/var", scalar(masked_var(targets.returns.clone(), mask(), true))),
        ("ppo/val/vpred", value(&vf.vpred)),
        ("ppo/val/error", value(&vf.error)),
        ("ppo/val/clipfrac", value(&vf.clipfrac)),
        ("ppo/val/mean", scalar(masked_mean(targets.old_values.clone(), mask()))),
        ("ppo/val/var", scalar(masked_var(targets.old_values.clone(), mask(), true))),
    ]
}

/// Statistics of the batch before the update: KL to the reference, entropy, scores, lengths.
///
/// # Shapes
/// - `kl`, `old_logprobs`, `non_score_rewards`, `mask`: `[batch, resp]`; `scores`: `[batch]`
pub(super) fn batch_stats<B: Backend>(
    rollouts: &[Rollout],
    kl: Tensor<B, 2>,
    kl_coef: f64,
    old_logprobs: Tensor<B, 2>,
    non_score_rewards: Tensor<B, 2>,
    scores: Tensor<B, 1>,
    mask: Tensor<B, 2>,
) -> Stats {
    let n = rollouts.len() as f64;
    let per_row_sum_mean = |t: Tensor<B, 2>| scalar((t * mask.clone()).sum_dim(1).mean().reshape([1]));
    let scores: Vec<f64> = scores.into_data().iter::<f32>().map(f64::from).collect();
    let mean_score = scores.iter().sum::<f64>() / n;
    let score_var = scores.iter().map(|s| (s - mean_score).powi(2)).sum::<f64>() / (n.max(2.0) - 1.0);
    let mean_len = |len: fn(&Rollout) -> usize| rollouts.iter().map(|r| len(r) as f64).sum::<f64>() / n;
    Stats::from([
        ("objective/kl".to_string(), per_row_sum_mean(kl)),
        ("objective/kl_coef".to_string(), kl_coef),
        ("objective/entropy".to_string(), per_row_sum_mean(old_logprobs.neg())),
        ("ppo/mean_non_score_reward".to_string(), scalar(masked_mean(non_score_rewards, mask.clone()))),
        ("ppo/mean_scores".to_string(), mean_score),
        ("ppo/std_scores".to_string(), score_var.sqrt()),
        ("tokens/responses_len_mean".to_string(), mean_len(|r| r.response.len())),
        ("tokens/queries_len_mean".to_string(), mean_len(|r| r.query.len())),
    ])
}

/// Mini-batch statistics over an update's epochs, and what was skipped.
#[derive(Default)]
pub(super) struct EpochStats {
    sums: Stats,
    pub minibatches: usize,
    pub skipped_ratio: usize,
    pub skipped_nonfinite: usize,
    pub grad_norms: Vec<f64>,
}

impl EpochStats {
    pub fn add(&mut self, record: [(&'static str, f64); 15]) {
        for (key, value) in record {
            *self.sums.entry(key.to_string()).or_default() += value;
        }
        self.minibatches += 1;
    }

    /// Adds the means over mini-batches, the explained variance, the skip counts and the mean
    /// gradient norm to `stats`.
    pub fn finish(self, stats: &mut Stats, learning_rate: f64) {
        for (key, sum) in self.sums {
            stats.insert(key, sum / self.minibatches.max(1) as f64);
        }
        let error = stats["ppo/val/error"];
        let returns_var = stats["ppo/returns/var"];
        stats.insert("ppo/val/var_explained".into(), 1.0 - error / returns_var);
        stats.insert("ppo/skipped_minibatches/ratio".into(), self.skipped_ratio as f64);
        stats.insert("ppo/skipped_minibatches/nonfinite".into(), self.skipped_nonfinite as f64);
        stats.insert("ppo/learning_rate".into(), learning_rate);
        if !self.grad_norms.is_empty() {
            stats.insert("ppo/grad_norm".into(), self.grad_norms.iter().sum::<f64>() / self.grad_norms.len() as f64);
        }
    }
}

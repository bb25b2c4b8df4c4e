//! PPO math with TRL 0.11.4's semantics (`PPOTrainer.compute_rewards`, `compute_advantages`,
//! `loss`; `trl.core.masked_*`), as pure functions on tensors.
//!
//! Shapes: `batch` rollouts, each with a response of up to `resp` tokens. Every per-token tensor
//! is `[batch, resp]` with a float `mask` of the same shape (1 on response tokens, 0 on padding).
//! Scalars are `[1]` tensors so they stay on the device (and in the autodiff graph for losses).
//! Parity with TRL is tested in `ppo/parity_tests.rs` against `fixtures/make_trl_fixtures.py`.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::validate::{Checked, finite_at_least, finite_positive, section};

/// Variance floor inside the whitening `rsqrt`, as in TRL.
const WHITEN_EPS: f64 = 1e-8;

/// Per-token KL estimators between the policy π and the reference π_ref, from the log-probs of
/// the sampled tokens (Schulman, "Approximating KL divergence").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimator {
    /// `log π − log π_ref` (TRL's `kl`): unbiased, can be negative.
    #[serde(alias = "kl")]
    K1,
    /// `|log π − log π_ref|`.
    Abs,
    /// `½ (log π − log π_ref)²`.
    Mse,
    /// `(r − 1) − log r` with `r = π_ref / π`: unbiased and never negative.
    K3,
}

/// Per-token KL penalty.
///
/// `logprobs`, `ref_logprobs`: `[batch, resp]` -> `[batch, resp]`
pub fn kl_penalty<B: Backend>(
    logprobs: Tensor<B, 2>,
    ref_logprobs: Tensor<B, 2>,
    estimator: KlEstimator,
) -> Tensor<B, 2> {
    let diff = logprobs - ref_logprobs;
    match estimator {
        KlEstimator::K1 => diff,
        KlEstimator::Abs => diff.abs(),
        KlEstimator::Mse => diff.powi_scalar(2) * 0.5,
        KlEstimator::K3 => {
            let log_r = diff.neg(); // log(π_ref / π)
            log_r.clone().exp() - 1.0 - log_r
        }
    }
}

/// Exact KL(π ‖ π_ref) per position over the whole vocabulary (TRL's `full`).
///
/// `logits`, `ref_logits`: `[batch, resp, vocab]` -> `[batch, resp]`
pub fn full_kl<B: Backend>(logits: Tensor<B, 3>, ref_logits: Tensor<B, 3>) -> Tensor<B, 2> {
    let logp = log_softmax(logits, 2);
    let ref_logp = log_softmax(ref_logits, 2);
    (logp.clone().exp() * (logp - ref_logp)).sum_dim(2).squeeze_dim(2)
}

/// Mean over the masked entries. `[batch, resp]` -> `[1]`
pub fn masked_mean<B: Backend>(values: Tensor<B, 2>, mask: Tensor<B, 2>) -> Tensor<B, 1> {
    (values * mask.clone()).sum() / mask.sum()
}

/// Variance over the masked entries, Bessel-corrected when `unbiased` (TRL's default).
/// `[batch, resp]` -> `[1]`
pub fn masked_var<B: Backend>(values: Tensor<B, 2>, mask: Tensor<B, 2>, unbiased: bool) -> Tensor<B, 1> {
    let mean = masked_mean(values.clone(), mask.clone());
    let centered = values - mean.unsqueeze::<2>();
    let variance = masked_mean(centered.powi_scalar(2), mask.clone());
    if unbiased {
        let n = mask.sum();
        variance * n.clone() / (n - 1.0)
    } else {
        variance
    }
}

/// `(x − mean) / sqrt(var + 1e-8)` over the masked entries; `shift_mean = false` adds the mean
/// back (TRL's reward whitening keeps the mean).
pub fn masked_whiten<B: Backend>(values: Tensor<B, 2>, mask: Tensor<B, 2>, shift_mean: bool) -> Tensor<B, 2> {
    let mean = masked_mean(values.clone(), mask.clone()).unsqueeze::<2>();
    let var = masked_var(values.clone(), mask, true).unsqueeze::<2>();
    let whitened = (values - mean.clone()) / (var + WHITEN_EPS).sqrt();
    if shift_mean { whitened } else { whitened + mean }
}

/// One-hot of each row's last masked position. `[batch, resp]` -> `[batch, resp]`
pub fn last_token_one_hot<B: Backend>(mask: Tensor<B, 2>) -> Tensor<B, 2> {
    let [batch, resp] = mask.dims();
    let device = mask.device();
    let position = Tensor::<B, 1, Int>::arange(0..resp as i64, &device).reshape([1, resp]).expand([batch, resp]);
    // (position + 1) * mask peaks at the last masked position.
    let last = (mask * (position.clone().float() + 1.0)).argmax(1); // [batch, 1]
    position.equal(last.expand([batch, resp])).float()
}

/// What to do with the score of a response that never emitted end-of-text.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MissingEos {
    /// Keep the score.
    Keep,
    /// Subtract a constant (TRL's `missing_eos_penalty`).
    Penalty(f32),
    /// Replace the score with a constant (N+ implementation details: −1).
    Replace(f32),
}

impl MissingEos {
    pub fn validate(&self) -> Checked {
        match self {
            Self::Keep => Ok(()),
            Self::Penalty(p) => finite_at_least("penalty", *p as f64, f64::MIN),
            Self::Replace(v) => finite_at_least("replace", *v as f64, f64::MIN),
        }
    }
}

/// Applies the missing-end-of-text rule. `scores`: `[batch]`; `has_eos`: `[batch]` (1 or 0).
pub fn adjust_scores<B: Backend>(scores: Tensor<B, 1>, has_eos: Tensor<B, 1>, rule: MissingEos) -> Tensor<B, 1> {
    let missing = has_eos.neg() + 1.0;
    match rule {
        MissingEos::Keep => scores,
        MissingEos::Penalty(p) => scores - missing * p as f64,
        MissingEos::Replace(value) => scores.clone() * (missing.clone().neg() + 1.0) + missing * value as f64,
    }
}

/// Per-token rewards and their KL part.
pub struct ShapedRewards<B: Backend> {
    /// `−β·kl_t`, plus the score at each row's last response token. `[batch, resp]`
    pub rewards: Tensor<B, 2>,
    /// `−β·kl_t`. `[batch, resp]`
    pub non_score_rewards: Tensor<B, 2>,
}

/// TRL's `compute_rewards`: `r_t = −β·kl_t`, with the sequence score added at the last masked
/// token. `scores`: `[batch]`; `kl`, `mask`: `[batch, resp]`.
pub fn shape_rewards<B: Backend>(
    scores: Tensor<B, 1>,
    kl: Tensor<B, 2>,
    mask: Tensor<B, 2>,
    kl_coef: f64,
) -> ShapedRewards<B> {
    let [batch, _] = kl.dims();
    let non_score_rewards = kl * (-kl_coef);
    let rewards = non_score_rewards.clone() + last_token_one_hot(mask) * scores.reshape([batch, 1]);
    ShapedRewards { rewards, non_score_rewards }
}

/// Advantages and returns from generalised advantage estimation.
pub struct Advantages<B: Backend> {
    /// `values · mask`. `[batch, resp]`
    pub values: Tensor<B, 2>,
    /// Whitened over the mask (TRL's Bessel-corrected variance). `[batch, resp]`
    pub advantages: Tensor<B, 2>,
    /// `A + V`, before whitening. `[batch, resp]`
    pub returns: Tensor<B, 2>,
}

/// TRL's `compute_advantages`: GAE with `gamma` and `lam`, value 0 after the last token;
/// `whiten_rewards` whitens rewards first without re-centring them.
pub fn gae<B: Backend>(
    values: Tensor<B, 2>,
    rewards: Tensor<B, 2>,
    mask: Tensor<B, 2>,
    gamma: f64,
    lam: f64,
    whiten_rewards: bool,
) -> Advantages<B> {
    let [batch, resp] = values.dims();
    let values = values * mask.clone();
    let mut rewards = rewards * mask.clone();
    if whiten_rewards {
        rewards = masked_whiten(rewards, mask.clone(), false);
    }
    let mut last_gae = Tensor::<B, 2>::zeros([batch, 1], &values.device());
    let mut reversed = Vec::with_capacity(resp);
    for t in (0..resp).rev() {
        let next_value = if t + 1 < resp { values.clone().narrow(1, t + 1, 1) * gamma } else { last_gae.zeros_like() };
        let delta = rewards.clone().narrow(1, t, 1) + next_value - values.clone().narrow(1, t, 1); // [batch, 1]
        last_gae = delta + last_gae * (gamma * lam);
        reversed.push(last_gae.clone());
    }
    reversed.reverse();
    let advantages = Tensor::cat(reversed, 1); // [batch, resp]
    let returns = advantages.clone() + values.clone();
    let advantages = masked_whiten(advantages, mask, true);
    Advantages { values, advantages, returns }
}

/// The clipped surrogate and its diagnostics, each `[1]`.
pub struct PolicyLoss<B: Backend> {
    /// `masked_mean(max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε)))`
    pub loss: Tensor<B, 1>,
    /// Fraction of tokens where the clipped term was taken.
    pub clipfrac: Tensor<B, 1>,
    /// `½ · masked_mean((log π − log π_old)²)`
    pub approxkl: Tensor<B, 1>,
    /// `masked_mean(log π_old − log π)`
    pub policykl: Tensor<B, 1>,
    /// `masked_mean(ρ)`, compared with `ratio_threshold`.
    pub ratio_mean: Tensor<B, 1>,
}

/// Clipped policy loss. `logprobs`, `old_logprobs`, `advantages`, `mask`: `[batch, resp]`.
pub fn policy_loss<B: Backend>(
    logprobs: Tensor<B, 2>,
    old_logprobs: Tensor<B, 2>,
    advantages: Tensor<B, 2>,
    mask: Tensor<B, 2>,
    cliprange: f64,
) -> PolicyLoss<B> {
    let log_ratio = logprobs - old_logprobs;
    let ratio = log_ratio.clone().exp();
    let unclipped = advantages.clone().neg() * ratio.clone();
    let clipped = advantages.neg() * ratio.clone().clamp(1.0 - cliprange, 1.0 + cliprange);
    PolicyLoss {
        loss: masked_mean(unclipped.clone().max_pair(clipped.clone()), mask.clone()),
        clipfrac: masked_mean(clipped.greater(unclipped).float(), mask.clone()),
        approxkl: masked_mean(log_ratio.clone().powi_scalar(2), mask.clone()) * 0.5,
        policykl: masked_mean(log_ratio.neg(), mask.clone()),
        ratio_mean: masked_mean(ratio, mask),
    }
}

/// The clipped value loss and its diagnostics, each `[1]`.
pub struct ValueLoss<B: Backend> {
    /// `½ · masked_mean(max((V − R)², (clip(V, V_old ± ε_v) − R)²))`
    pub loss: Tensor<B, 1>,
    pub clipfrac: Tensor<B, 1>,
    /// `masked_mean(V)`
    pub vpred: Tensor<B, 1>,
    /// `masked_mean((V − R)²)`
    pub error: Tensor<B, 1>,
}

/// Clipped value loss. `vpreds`, `old_values`, `returns`, `mask`: `[batch, resp]`.
pub fn value_loss<B: Backend>(
    vpreds: Tensor<B, 2>,
    old_values: Tensor<B, 2>,
    returns: Tensor<B, 2>,
    mask: Tensor<B, 2>,
    cliprange_value: f64,
) -> ValueLoss<B> {
    let clipped = vpreds.clone().max_pair(old_values.clone() - cliprange_value).min_pair(old_values + cliprange_value);
    let unclipped_error = (vpreds.clone() - returns.clone()).powi_scalar(2);
    let clipped_error = (clipped - returns).powi_scalar(2);
    ValueLoss {
        loss: masked_mean(unclipped_error.clone().max_pair(clipped_error.clone()), mask.clone()) * 0.5,
        clipfrac: masked_mean(clipped_error.greater(unclipped_error.clone()).float(), mask.clone()),
        vpred: masked_mean(vpreds, mask.clone()),
        error: masked_mean(unclipped_error, mask),
    }
}

/// Entropy of the categorical distribution at each position.
/// `[batch, resp, vocab]` -> `[batch, resp]`
pub fn entropy_from_logits<B: Backend>(logits: Tensor<B, 3>) -> Tensor<B, 2> {
    let probs = softmax(logits.clone(), 2);
    let logp = log_softmax(logits, 2);
    (probs * logp).sum_dim(2).squeeze_dim(2).neg()
}

/// Running mean and standard deviation of scores across steps (TRL's `RunningMoments`), for
/// `score_scaling` / `score_norm`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningMoments {
    pub mean: f64,
    pub std: f64,
    var: f64,
    count: f64,
}

impl Default for RunningMoments {
    fn default() -> Self {
        Self { mean: 0.0, std: 1.0, var: 1.0, count: 1e-24 }
    }
}

impl RunningMoments {
    /// Merges a batch (parallel variance formula), as TRL does.
    pub fn update(&mut self, xs: &[f64]) {
        let n = xs.len() as f64;
        if n == 0.0 {
            return;
        }
        let xs_mean = xs.iter().sum::<f64>() / n;
        let xs_var = xs.iter().map(|x| (x - xs_mean).powi(2)).sum::<f64>() / n;
        let delta = xs_mean - self.mean;
        let total = self.count + n;
        let sum = self.var * self.count + delta * delta * self.count * n / total + xs_var * n;
        self.mean += delta * n / total;
        self.var = sum / total;
        self.std = (self.var * total / (total - 1.0)).sqrt();
        self.count = total;
    }
}

/// The KL coefficient β: fixed, or adapted towards a target KL (Ziegler et al. 2019).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum KlController {
    Fixed { value: f64 },
    Adaptive { value: f64, target: f64, horizon: f64 },
}

impl KlController {
    /// Checks the coefficient and, for the adaptive controller, its target and horizon.
    pub fn validate(&self) -> Checked {
        match self {
            Self::Fixed { value } => section("fixed", finite_at_least("value", *value, 0.0)),
            Self::Adaptive { value, target, horizon } => section("adaptive", {
                finite_at_least("value", *value, 0.0)
                    .and_then(|()| finite_positive("target", *target))
                    .and_then(|()| finite_positive("horizon", *horizon))
            }),
        }
    }

    pub fn value(&self) -> f64 {
        match self {
            Self::Fixed { value } | Self::Adaptive { value, .. } => *value,
        }
    }

    /// After a batch of `n_steps` samples with mean KL `current`: the proportional error
    /// `current / target − 1`, clipped to ±0.2, moves β by `error · n_steps / horizon`.
    pub fn update(&mut self, current: f64, n_steps: usize) {
        if let Self::Adaptive { value, target, horizon } = self {
            let error = (current / *target - 1.0).clamp(-0.2, 0.2);
            *value *= 1.0 + error * n_steps as f64 / *horizon;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    type B = Flex;

    fn t2(rows: &[&[f32]]) -> Tensor<B, 2> {
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_data(TensorData::new(flat, [rows.len(), rows[0].len()]), &Default::default())
    }

    fn vec2(t: Tensor<B, 2>) -> Vec<f32> {
        t.into_data().iter::<f32>().collect()
    }

    #[test]
    fn the_score_lands_on_the_last_response_token() {
        let mask = t2(&[&[1., 1., 1., 0.], &[1., 0., 0., 0.]]);
        let kl = t2(&[&[0.1, 0.2, 0.3, 0.4], &[0.5, 0.6, 0.7, 0.8]]);
        let scores = Tensor::<B, 1>::from_floats([2.0, -1.0], &Default::default());
        let shaped = shape_rewards(scores, kl, mask, 0.5);
        let r = vec2(shaped.rewards);
        let expected = [-0.05, -0.1, -0.15 + 2.0, -0.2, -0.25 - 1.0, -0.3, -0.35, -0.4];
        for (a, b) in r.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{r:?}");
        }
    }

    #[test]
    fn k3_is_never_negative_and_zero_when_equal() {
        let lp = t2(&[&[-1.0, -2.0, -0.5]]);
        let ref_lp = t2(&[&[-1.0, -0.5, -3.0]]);
        let k3 = vec2(kl_penalty(lp, ref_lp, KlEstimator::K3));
        // (r − 1) − log r with log r = ref − lp: exact values, which k1, abs and mse do not give.
        let want: Vec<f64> = [0.0f64, 1.5, -2.5].iter().map(|log_r| log_r.exp() - 1.0 - log_r).collect();
        for (got, want) in k3.iter().zip(&want) {
            assert!((*got as f64 - want).abs() < 1e-6, "{k3:?} vs {want:?}");
        }
        assert!(k3.iter().all(|&k| k >= 0.0));
    }

    #[test]
    fn adaptive_kl_moves_towards_the_target_and_fixed_stays() {
        let mut adaptive = KlController::Adaptive { value: 0.2, target: 6.0, horizon: 10000.0 };
        adaptive.update(12.0, 256); // error clipped to +0.2
        assert!((adaptive.value() - 0.2 * (1.0 + 0.2 * 256.0 / 10000.0)).abs() < 1e-12);
        let mut fixed = KlController::Fixed { value: 0.1 };
        fixed.update(100.0, 256);
        assert_eq!(fixed.value(), 0.1);
    }

    #[test]
    fn missing_eos_rules() {
        let scores = Tensor::<B, 1>::from_floats([1.0, 2.0], &Default::default());
        let has_eos = Tensor::<B, 1>::from_floats([1.0, 0.0], &Default::default());
        let get =
            |rule| adjust_scores(scores.clone(), has_eos.clone(), rule).into_data().iter::<f32>().collect::<Vec<_>>();
        assert_eq!(get(MissingEos::Keep), vec![1.0, 2.0]);
        assert_eq!(get(MissingEos::Penalty(1.5)), vec![1.0, 0.5]);
        assert_eq!(get(MissingEos::Replace(-1.0)), vec![1.0, -1.0]);
    }
}

//! One PPO update over a batch of scored rollouts (TRL 0.11.4's `PPOTrainer.step`), built from the
//! pure functions in [`crate::ppo`].
//!
//! The batch: each rollout is a query, a response, the behaviour log-probs and a score. The step
//! 1. runs the policy (no grad) for old log-probs and values, and the frozen reference for
//!    reference log-probs;
//! 2. shapes per-token rewards (`−β·kl_t`, score on the last response token) and runs GAE;
//! 3. runs `ppo_epochs` passes of shuffled mini-batches: clipped policy and value losses,
//!    AdamW, global-norm clipping, the learning-rate schedule;
//! 4. returns TRL's statistics and updates the KL controller.
//!
//! Layout: sequences are left-padded `query ++ response` (`[batch, width]`); per-token tensors
//! are response-aligned `[batch, resp]` with a mask. Response token `j` of row `i` is predicted at
//! column `pad_i + query_i + j − 1`, gathered with an index tensor.

use std::collections::BTreeMap;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::batch::{Padded, left_pad, select_rows, validate};
use crate::error::{InputError, TrainError};
use crate::gpt2::{Gpt2, Gpt2Output};
use crate::kernels::{AutodiffKernels, Kernels};
use crate::optim::{AdamWOptimizer, OptimConfig, clip_grad_norm};
use crate::ppo::{
    KlController, KlEstimator, MissingEos, RunningMoments, adjust_scores, gae, kl_penalty, masked_mean, masked_var,
    policy_loss, shape_rewards, value_loss,
};
use crate::validate::{
    Checked, InvalidSetting, at_least_one, finite_at_least, finite_positive, in_closed_range, section,
};

/// One scored rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub query: Vec<u32>,
    pub response: Vec<u32>,
    /// Behaviour log-probs of `response` under the sampling policy (temperature-scaled).
    pub logprobs: Vec<f32>,
    pub score: f32,
}

/// Which log-probs the PPO ratio is taken against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OldLogprobs {
    /// Recompute with the current policy before the update (TRL).
    Recompute,
    /// Use the behaviour log-probs carried by the rollouts (off-policy samples).
    Behaviour,
}

/// PPO hyperparameters, named and defaulted as in TRL's `PPOConfig` where it has them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PpoConfig {
    pub optim: OptimConfig,
    pub ppo_epochs: usize,
    pub mini_batch_size: usize,
    pub gamma: f64,
    pub lam: f64,
    pub cliprange: f64,
    pub cliprange_value: f64,
    pub vf_coef: f64,
    pub kl: KlController,
    pub kl_estimator: KlEstimator,
    pub whiten_rewards: bool,
    /// Skip a mini-batch whose mean ratio exceeds this (TRL's `ratio_threshold`).
    pub ratio_threshold: f64,
    /// Sampling temperature; logits are divided by it before every log-prob.
    pub temperature: f32,
    pub missing_eos: MissingEos,
    pub old_logprobs: OldLogprobs,
    /// Divide scores by their running std (TRL's `use_score_scaling`).
    pub score_scaling: bool,
    /// With `score_scaling`, also subtract the running mean (TRL's `use_score_norm`).
    pub score_norm: bool,
    /// Clip scores to ±this after scaling (0: off).
    pub score_clip: f64,
    pub seed: u64,
    /// Stop with an error after this many consecutive mini-batches skipped for a non-finite
    /// loss or gradient (a skipped step changes neither the weights nor the optimizer state).
    pub max_skipped_steps: usize,
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            optim: OptimConfig { learning_rate: 1.41e-5, max_grad_norm: 0.0, ..Default::default() },
            ppo_epochs: 4,
            mini_batch_size: 8,
            gamma: 1.0,
            lam: 0.95,
            cliprange: 0.2,
            cliprange_value: 0.2,
            vf_coef: 0.1,
            kl: KlController::Adaptive { value: 0.2, target: 6.0, horizon: 10000.0 },
            kl_estimator: KlEstimator::K1,
            whiten_rewards: false,
            ratio_threshold: 10.0,
            temperature: 1.0,
            missing_eos: MissingEos::Keep,
            old_logprobs: OldLogprobs::Recompute,
            score_scaling: false,
            score_norm: false,
            score_clip: 0.0,
            seed: 0,
            max_skipped_steps: 10,
        }
    }
}

impl PpoConfig {
    /// Checks every setting (see [`crate::validate`]).
    pub fn validate(&self) -> Checked {
        section("optim", self.optim.validate())?;
        at_least_one("ppo_epochs", self.ppo_epochs)?;
        at_least_one("mini_batch_size", self.mini_batch_size)?;
        in_closed_range("gamma", self.gamma, 0.0, 1.0)?;
        in_closed_range("lam", self.lam, 0.0, 1.0)?;
        finite_positive("cliprange", self.cliprange)?;
        finite_positive("cliprange_value", self.cliprange_value)?;
        finite_at_least("vf_coef", self.vf_coef, 0.0)?;
        section("kl", self.kl.validate())?;
        if self.ratio_threshold.is_nan() || self.ratio_threshold <= 0.0 {
            return Err(InvalidSetting::new("ratio_threshold", "a number > 0 (inf: never skip)", self.ratio_threshold));
        }
        finite_positive("temperature", self.temperature as f64)?;
        section("missing_eos", self.missing_eos.validate())?;
        finite_at_least("score_clip", self.score_clip, 0.0)?;
        at_least_one("max_skipped_steps", self.max_skipped_steps)
    }
}

/// Statistics of one step, keyed by TRL's names (`ppo/loss/policy`, `objective/kl`, ...).
pub type Stats = BTreeMap<String, f64>;

/// The policy (with a value head, or beside a separate critic), its frozen reference, and the
/// optimizer state.
pub struct PpoTrainer<B: AutodiffKernels> {
    pub policy: Gpt2<B>,
    /// A separate value model (N+ / TRL's new trainer), e.g. initialised from the reward model;
    /// its score head gives one value per token. `None`: the policy's value head is used.
    pub critic: Option<Gpt2<B>>,
    pub reference: Gpt2<B::InnerBackend>,
    pub config: PpoConfig,
    pub kl: KlController,
    /// Optimizer steps taken.
    pub optimizer_steps: usize,
    /// Running score statistics for `score_scaling`.
    pub score_moments: RunningMoments,
    policy_optim: AdamWOptimizer<Gpt2<B>, B>,
    critic_optim: Option<AdamWOptimizer<Gpt2<B>, B>>,
    eos_id: u32,
    rng: StdRng,
    device: B::Device,
    /// Mini-batches skipped in a row for a non-finite loss or gradient, across steps.
    skipped_in_a_row: usize,
}

/// Rollouts on the device, in the two layouts the step needs.
///
/// Sequences are left-padded `query ++ response` (`[batch, width]`). Per-token quantities are
/// response-aligned (`[batch, resp]`, with `mask`); the LM head runs only on the `n_tokens`
/// hidden states that predict a real response token, listed flat.
struct Batch<B: Backend> {
    seqs: Padded<B>,
    /// `[batch, resp]`: the column predicting each response token (0 on padding).
    columns: Tensor<B, 2, Int>,
    /// `[batch, resp]`: 1 on response tokens, 0 on padding.
    mask: Tensor<B, 2>,
    /// `n_tokens` flat indices `row · width + column` of the hidden states that predict a
    /// response token, row after row.
    hidden_rows: Vec<usize>,
    /// The `n_tokens` response tokens, in the same order.
    targets: Vec<u32>,
    /// `[batch · resp]`: for each response-aligned slot, its index in the flat list (0 on padding).
    unflatten: Tensor<B, 1, Int>,
}

impl<B: Backend> Batch<B> {
    /// `resp` is at least the longest response (the whole batch's, so that mini-batches share
    /// one response-aligned width).
    fn new(rollouts: &[Rollout], resp: usize, eos_id: u32, device: &B::Device) -> Self {
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
    fn response_aligned(&self, flat: Tensor<B, 1>) -> Tensor<B, 2> {
        let [batch, resp] = self.mask.dims();
        flat.select(0, self.unflatten.clone()).reshape([batch, resp]) * self.mask.clone()
    }
}

/// Per-token values from a value head, or from a score head read at every position.
fn token_values<B: Backend>(out: &Gpt2Output<B>) -> Option<Tensor<B, 2>> {
    out.values.clone().or_else(|| {
        out.scores.clone().map(|s| {
            let [batch, seq, _] = s.dims();
            s.narrow(2, 0, 1).reshape([batch, seq])
        })
    })
}

/// Log-probs of each response token, and optionally the entropy of the (temperature-scaled)
/// distribution that picked it: the LM head runs on the response positions only.
/// `hidden`: `[batch, width, n_embd]` -> `[batch, resp]`, `[batch, resp]`
fn response_logprobs<B: Kernels>(
    model: &Gpt2<B>,
    hidden: Tensor<B, 3>,
    batch: &Batch<B>,
    temperature: f32,
    with_entropy: bool,
) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
    let rows = select_rows(hidden, &batch.hidden_rows); // [n_tokens, n_embd]
    let (logprobs, entropy) = model.transformer.token_logprobs(rows, &batch.targets, temperature, with_entropy);
    (batch.response_aligned(logprobs), entropy.map(|e| batch.response_aligned(e)))
}

fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    t.into_scalar().elem::<f64>()
}

impl<B: AutodiffKernels> PpoTrainer<B> {
    /// `policy` must carry a value head unless `critic` is given. `reference` is frozen.
    pub fn new(
        policy: Gpt2<B>,
        critic: Option<Gpt2<B>>,
        reference: Gpt2<B::InnerBackend>,
        config: PpoConfig,
        eos_id: u32,
        device: &B::Device,
    ) -> Result<Self, InputError> {
        if critic.is_none() && policy.v_head.is_none() {
            return Err(InputError::Invalid {
                field: "policy",
                expected: "a value head or a separate critic",
                got: "neither".into(),
            });
        }
        if config.mini_batch_size == 0 || config.ppo_epochs == 0 {
            return Err(InputError::Invalid {
                field: "mini_batch_size/ppo_epochs",
                expected: "at least 1",
                got: "0".into(),
            });
        }
        let policy_optim = config.optim.adamw::<B, Gpt2<B>>();
        let critic_optim = critic.as_ref().map(|_| config.optim.adamw::<B, Gpt2<B>>());
        Ok(Self {
            kl: config.kl.clone(),
            rng: StdRng::seed_from_u64(config.seed),
            policy,
            critic,
            reference,
            config,
            optimizer_steps: 0,
            score_moments: RunningMoments::default(),
            policy_optim,
            critic_optim,
            eos_id,
            device: device.clone(),
            skipped_in_a_row: 0,
        })
    }

    /// Checks a batch before any tensor is made.
    fn validate(&self, rollouts: &[Rollout]) -> Result<(), InputError> {
        if rollouts.is_empty() {
            return Err(InputError::Empty { field: "rollouts" });
        }
        let rows: Vec<Vec<u32>> = rollouts.iter().map(|r| [r.query.as_slice(), &r.response].concat()).collect();
        validate("rollout", &rows, self.policy.vocab_size(), self.policy.n_positions())?;
        for r in rollouts {
            if r.query.is_empty() || r.response.is_empty() {
                return Err(InputError::Empty { field: "rollout query or response" });
            }
            if r.logprobs.len() != r.response.len() {
                return Err(InputError::Invalid {
                    field: "rollout logprobs",
                    expected: "one per response token",
                    got: format!("{} for {} tokens", r.logprobs.len(), r.response.len()),
                });
            }
            if !r.score.is_finite() {
                return Err(InputError::Invalid {
                    field: "rollout score",
                    expected: "a finite number",
                    got: r.score.to_string(),
                });
            }
        }
        Ok(())
    }

    /// One PPO step (see the module docs); `total_steps` sizes the learning-rate schedule.
    pub fn step(&mut self, rollouts: &[Rollout], total_optimizer_steps: usize) -> Result<Stats, TrainError> {
        self.validate(rollouts)?;
        let started = Instant::now();
        let n = rollouts.len();
        let temperature = self.config.temperature;
        let device = self.device.clone();

        // 1. Old log-probs, values and reference log-probs, without gradients.
        let resp = rollouts.iter().map(|r| r.response.len()).max().unwrap_or(0);
        let inner = Batch::<B::InnerBackend>::new(rollouts, resp, self.eos_id, &device);
        let forward = |model: &Gpt2<B::InnerBackend>| {
            model.forward(
                inner.seqs.input_ids.clone(),
                inner.seqs.position_ids.clone(),
                inner.seqs.key_mask.clone(),
                None,
            )
        };
        let policy = self.policy.valid();
        let policy_out = forward(&policy);
        let mut old_logprobs = response_logprobs(&policy, policy_out.hidden.clone(), &inner, temperature, false).0;
        if self.config.old_logprobs == OldLogprobs::Behaviour {
            let flat: Vec<f32> = rollouts
                .iter()
                .flat_map(|r| r.logprobs.iter().copied().chain(std::iter::repeat_n(0.0, resp - r.logprobs.len())))
                .collect();
            old_logprobs = Tensor::from_data(TensorData::new(flat, [n, resp]), &device);
        }
        let critic_out = self.critic.as_ref().map(|c| forward(&c.valid()));
        let values = token_values(critic_out.as_ref().unwrap_or(&policy_out)).expect("a value head or critic");
        let values = values.gather(1, inner.columns.clone()); // [batch, resp]
        let ref_out = forward(&self.reference);
        let ref_logprobs = response_logprobs(&self.reference, ref_out.hidden, &inner, temperature, false).0;

        // 2. Rewards and advantages.
        let mut raw_scores: Vec<f64> = rollouts.iter().map(|r| r.score as f64).collect();
        if self.config.score_scaling {
            self.score_moments.update(&raw_scores);
            let (mean, scale) = (self.score_moments.mean, self.score_moments.std + f32::EPSILON as f64);
            let shift = if self.config.score_norm { mean } else { 0.0 };
            raw_scores.iter_mut().for_each(|s| *s = (*s - shift) / scale);
        }
        if self.config.score_clip > 0.0 {
            raw_scores.iter_mut().for_each(|s| *s = s.clamp(-self.config.score_clip, self.config.score_clip));
        }
        let scores = Tensor::<B::InnerBackend, 1>::from_data(
            TensorData::new(raw_scores.iter().map(|&s| s as f32).collect::<Vec<_>>(), [n]),
            &device,
        );
        let has_eos: Vec<f32> =
            rollouts.iter().map(|r| (r.response.last() == Some(&self.eos_id)) as u8 as f32).collect();
        let scores =
            adjust_scores(scores, Tensor::from_data(TensorData::new(has_eos, [n]), &device), self.config.missing_eos);
        let kl = kl_penalty(old_logprobs.clone(), ref_logprobs, self.config.kl_estimator);
        let kl_coef = self.kl.value();
        let shaped = shape_rewards(scores.clone(), kl.clone(), inner.mask.clone(), kl_coef);
        let adv = gae(
            values.clone(),
            shaped.rewards,
            inner.mask.clone(),
            self.config.gamma,
            self.config.lam,
            self.config.whiten_rewards,
        );
        let forward_time = started.elapsed().as_secs_f64();

        let mut stats = Stats::new();
        let mask = inner.mask.clone();
        let mean_kl = scalar((kl * mask.clone()).sum_dim(1).mean().reshape([1]));
        stats.insert("objective/kl".into(), mean_kl);
        stats.insert("objective/kl_coef".into(), kl_coef);
        stats.insert(
            "objective/entropy".into(),
            scalar((old_logprobs.clone().neg() * mask.clone()).sum_dim(1).mean().reshape([1])),
        );
        stats.insert("ppo/mean_non_score_reward".into(), scalar(masked_mean(shaped.non_score_rewards, mask.clone())));
        let score_values: Vec<f64> = scores.into_data().iter::<f32>().map(f64::from).collect();
        let mean_score = score_values.iter().sum::<f64>() / n as f64;
        stats.insert("ppo/mean_scores".into(), mean_score);
        let var = score_values.iter().map(|s| (s - mean_score).powi(2)).sum::<f64>() / (n.max(2) - 1) as f64;
        stats.insert("ppo/std_scores".into(), var.sqrt());
        let lengths: Vec<f64> = rollouts.iter().map(|r| r.response.len() as f64).collect();
        stats.insert("tokens/responses_len_mean".into(), lengths.iter().sum::<f64>() / n as f64);
        let queries: Vec<f64> = rollouts.iter().map(|r| r.query.len() as f64).collect();
        stats.insert("tokens/queries_len_mean".into(), queries.iter().sum::<f64>() / n as f64);

        // 3. Epochs of shuffled mini-batches on the autodiff backend.
        let optimize_started = Instant::now();
        let to_autodiff = |t: Tensor<B::InnerBackend, 2>| Tensor::<B, 2>::from_inner(t);
        let (old_logprobs, old_values) = (to_autodiff(old_logprobs), to_autodiff(adv.values));
        let (advantages, returns) = (to_autodiff(adv.advantages), to_autodiff(adv.returns));
        let mut sums = Stats::new();
        let (mut n_minibatches, mut skipped_ratio, mut skipped_nonfinite) = (0usize, 0usize, 0usize);
        let mut grad_norms = Vec::new();
        for _ in 0..self.config.ppo_epochs {
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut self.rng);
            for chunk in order.chunks(self.config.mini_batch_size) {
                let rows: Vec<i64> = chunk.iter().map(|&i| i as i64).collect();
                let index = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [chunk.len()]), &device);
                let pick2 = |t: &Tensor<B, 2>| t.clone().select(0, index.clone());
                // The mini-batch is padded to its own longest sequence.
                let picked: Vec<Rollout> = chunk.iter().map(|&i| rollouts[i].clone()).collect();
                let mb = Batch::<B>::new(&picked, resp, self.eos_id, &device);
                let out = self.policy.forward(
                    mb.seqs.input_ids.clone(),
                    mb.seqs.position_ids.clone(),
                    mb.seqs.key_mask.clone(),
                    None,
                );
                let (logprobs, entropy) = response_logprobs(&self.policy, out.hidden.clone(), &mb, temperature, true);
                let entropy = entropy.expect("asked for the entropy");
                let vpred_out = match &self.critic {
                    Some(critic) => critic.forward(
                        mb.seqs.input_ids.clone(),
                        mb.seqs.position_ids.clone(),
                        mb.seqs.key_mask.clone(),
                        None,
                    ),
                    None => out,
                };
                let vpreds = token_values(&vpred_out).expect("a value head or critic");
                let vpreds = vpreds.gather(1, mb.columns.clone());
                let (mb_old_logprobs, mb_values) = (pick2(&old_logprobs), pick2(&old_values));
                let (mb_adv, mb_returns) = (pick2(&advantages), pick2(&returns));
                let pg = policy_loss(logprobs, mb_old_logprobs, mb_adv.clone(), mb.mask.clone(), self.config.cliprange);
                let vf = value_loss(
                    vpreds,
                    mb_values.clone(),
                    mb_returns.clone(),
                    mb.mask.clone(),
                    self.config.cliprange_value,
                );
                let loss = pg.loss.clone() + vf.loss.clone() * self.config.vf_coef;
                let ratio_mean = scalar(pg.ratio_mean.clone().detach());
                let total = scalar(loss.clone().detach());
                let skip_ratio = ratio_mean > self.config.ratio_threshold;
                let lr = self.config.optim.lr_at(self.optimizer_steps, total_optimizer_steps);
                let skip_nonfinite = !total.is_finite() || !lr.is_finite();
                let zero = if skip_ratio || skip_nonfinite { 0.0 } else { 1.0 };
                let record = [
                    ("loss/policy", scalar(pg.loss.clone().detach()) * zero),
                    ("loss/value", scalar(vf.loss.clone().detach()) * zero),
                    ("loss/total", total * zero),
                    ("policy/entropy", scalar(masked_mean(entropy, mb.mask.clone()).detach())),
                    ("policy/approxkl", scalar(pg.approxkl.detach())),
                    ("policy/policykl", scalar(pg.policykl.detach())),
                    ("policy/clipfrac", scalar(pg.clipfrac.detach())),
                    ("policy/advantages_mean", scalar(masked_mean(mb_adv, mb.mask.clone()).detach())),
                    ("returns/mean", scalar(masked_mean(mb_returns.clone(), mb.mask.clone()).detach())),
                    ("returns/var", scalar(masked_var(mb_returns, mb.mask.clone(), true).detach())),
                    ("val/vpred", scalar(vf.vpred.detach())),
                    ("val/error", scalar(vf.error.detach())),
                    ("val/clipfrac", scalar(vf.clipfrac.detach())),
                    ("val/mean", scalar(masked_mean(mb_values.clone(), mb.mask.clone()).detach())),
                    ("val/var", scalar(masked_var(mb_values, mb.mask.clone(), true).detach())),
                ];
                for (key, value) in record {
                    *sums.entry(format!("ppo/{key}")).or_default() += value;
                }
                n_minibatches += 1;
                if skip_ratio {
                    tracing::warn!(
                        ratio_mean,
                        threshold = self.config.ratio_threshold,
                        "mini-batch ratio above ratio_threshold: skipped"
                    );
                    skipped_ratio += 1;
                    continue;
                }
                let max_norm = self.config.optim.max_grad_norm;
                let gradients = (!skip_nonfinite)
                    .then(|| {
                        let mut grads = loss.backward();
                        let mut policy_grads = GradientsParams::from_module(&mut grads, &self.policy);
                        let norm = clip_grad_norm(&self.policy, &mut policy_grads, max_norm);
                        (grads, policy_grads, norm)
                    })
                    .filter(|(_, _, norm)| norm.is_finite());
                let Some((mut grads, policy_grads, grad_norm)) = gradients else {
                    // Nothing moves: the weights and the optimizer state stay as they were.
                    skipped_nonfinite += 1;
                    self.skipped_in_a_row += 1;
                    tracing::warn!(
                        loss = total,
                        skipped_in_a_row = self.skipped_in_a_row,
                        "non-finite PPO loss or gradient: mini-batch skipped"
                    );
                    if self.skipped_in_a_row >= self.config.max_skipped_steps {
                        return Err(TrainError::Diverged {
                            step: self.optimizer_steps,
                            skipped: self.skipped_in_a_row,
                        });
                    }
                    continue;
                };
                self.skipped_in_a_row = 0;
                grad_norms.push(grad_norm);
                // burn's optimizer takes the module by value; cloning shares the tensors.
                self.policy = self.policy_optim.step(lr, self.policy.clone(), policy_grads);
                if let (Some(critic), Some(optim)) = (self.critic.take(), self.critic_optim.as_mut()) {
                    let mut critic_grads = GradientsParams::from_module(&mut grads, &critic);
                    clip_grad_norm(&critic, &mut critic_grads, self.config.optim.max_grad_norm);
                    self.critic = Some(optim.step(lr, critic, critic_grads));
                }
                self.optimizer_steps += 1;
            }
        }
        for (key, sum) in sums {
            stats.insert(key, sum / n_minibatches.max(1) as f64);
        }
        let error = stats["ppo/val/error"];
        let returns_var = stats["ppo/returns/var"];
        stats.insert("ppo/val/var_explained".into(), 1.0 - error / returns_var);
        stats.insert("ppo/skipped_minibatches/ratio".into(), skipped_ratio as f64);
        stats.insert("ppo/skipped_minibatches/nonfinite".into(), skipped_nonfinite as f64);
        stats.insert(
            "ppo/learning_rate".into(),
            self.config.optim.lr_at(self.optimizer_steps.saturating_sub(1), total_optimizer_steps),
        );
        if !grad_norms.is_empty() {
            stats.insert("ppo/grad_norm".into(), grad_norms.iter().sum::<f64>() / grad_norms.len() as f64);
        }
        stats.insert("time/ppo/forward_pass".into(), forward_time);
        stats.insert("time/ppo/optimize_step".into(), optimize_started.elapsed().as_secs_f64());
        stats.insert("time/ppo/total".into(), started.elapsed().as_secs_f64());

        // 4. The KL controller sees this batch's KL.
        self.kl.update(mean_kl, n);
        Ok(stats)
    }
}

/// What a PPO checkpoint records beside the model and optimizer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PpoState {
    /// Policy versions trained so far (the next iteration's index).
    pub version: u64,
    pub optimizer_steps: usize,
    pub kl: KlController,
    pub score_moments: RunningMoments,
}

const PPO_STATE_FILE: &str = "ppo_state.json";

impl<B: AutodiffKernels> PpoTrainer<B> {
    /// Fills the empty directory `dir`: the policy with its value head as a Hugging Face
    /// directory, the optimizer state, and [`PpoState`]. Callers write it through
    /// [`crate::train::write_dir_atomically`], adding their own records.
    pub fn save_checkpoint(
        &self,
        dir: &std::path::Path,
        version: u64,
        model_config: &crate::Gpt2Config,
        tokenizer: &crate::Tokenizer,
    ) -> Result<(), crate::error::CheckpointError> {
        crate::hf::write_dir(&self.policy.valid(), model_config, tokenizer, dir)?;
        crate::train::save_optimizer(dir, &self.policy, &self.policy_optim)?;
        let state = PpoState {
            version,
            optimizer_steps: self.optimizer_steps,
            kl: self.kl.clone(),
            score_moments: self.score_moments.clone(),
        };
        let path = dir.join(PPO_STATE_FILE);
        std::fs::write(&path, serde_json::to_string_pretty(&state).expect("state serialises"))
            .map_err(|e| crate::error::CheckpointError::Write { path, message: e.to_string() })
    }

    /// Restores a checkpoint written by [`PpoTrainer::save_checkpoint`]: policy, value head,
    /// optimizer state, KL coefficient and score moments. Returns its [`PpoState`]. The
    /// mini-batch shuffling RNG is re-seeded from the step count, so a resumed run is not
    /// bit-identical to an uninterrupted one.
    pub fn restore_checkpoint(&mut self, dir: &std::path::Path) -> Result<PpoState, crate::error::CheckpointError> {
        let read_error = |path: std::path::PathBuf, e: &dyn std::fmt::Display| crate::error::CheckpointError::Read {
            path,
            message: e.to_string(),
        };
        let path = dir.join(PPO_STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| read_error(path.clone(), &e))?;
        let state: PpoState = serde_json::from_str(&text).map_err(|e| read_error(path.clone(), &e))?;
        let (_, policy) = crate::hf::load_as::<B>(dir, crate::Heads::LmValue, &self.device)?;
        let optim = crate::train::load_optimizer(dir, &policy, self.config.optim.adamw(), &self.device)?;
        self.policy = policy;
        self.policy_optim = optim;
        self.optimizer_steps = state.optimizer_steps;
        self.kl = state.kl.clone();
        self.score_moments = state.score_moments.clone();
        self.rng = StdRng::seed_from_u64(self.config.seed.wrapping_add(state.optimizer_steps as u64));
        Ok(state)
    }
}

//! One PPO update over a batch of scored rollouts (TRL 0.11.4's `PPOTrainer.step`), built from the
//! pure functions in [`crate::ppo::math`]. [`PpoTrainer::step`] reads as the algorithm does:
//! 1. [`PpoTrainer::targets`]: the policy (no grad) gives old log-probs and values, the frozen
//!    reference gives reference log-probs; per-token rewards (`−β·kl_t`, the score on the last
//!    response token) go through GAE;
//! 2. `ppo_epochs` passes of shuffled mini-batches, each [`PpoTrainer::train_minibatch`]: clipped
//!    policy and value losses, AdamW, global-norm clipping, the learning-rate schedule;
//! 3. TRL's statistics ([`crate::ppo::stats`]); the KL controller sees the batch's KL.
//!
//! Layouts are in [`crate::ppo::batch`].

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::{Int, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};

use crate::error::{InputError, TrainError};
use crate::kernels::AutodiffKernels;
use crate::model::batch::validate;
use crate::model::gpt2::Gpt2;
use crate::ppo::batch::{Batch, Rollout, Targets, response_logprobs, response_logprobs_and_entropy};
use crate::ppo::config::{OldLogprobs, PpoConfig};
use crate::ppo::math::{
    KlController, RunningMoments, adjust_scores, gae, kl_penalty, policy_loss, shape_rewards, value_loss,
};
use crate::ppo::stats::{EpochStats, batch_stats, minibatch_stats, scalar};
use crate::train::Stats;
use crate::train::optim::{AdamWOptimizer, NonFiniteSkips, clip_grad_norm};
use crate::{Gpt2Config, Heads};

/// The policy (with a value head, or beside a separate critic), its frozen reference, and the
/// optimizer state.
pub struct PpoTrainer<B: AutodiffKernels> {
    pub policy: Gpt2<B>,
    /// A separate value model; `None`: the policy's value head is used.
    pub critic: Option<Critic<B>>,
    pub reference: Gpt2<B::InnerBackend>,
    pub config: PpoConfig,
    pub kl: KlController,
    /// Optimizer steps taken.
    pub optimizer_steps: usize,
    /// Running score statistics for `score_scaling`.
    pub score_moments: RunningMoments,
    pub(super) policy_optim: AdamWOptimizer<Gpt2<B>, B>,
    eos_id: u32,
    pub(super) rng: StdRng,
    pub(super) device: B::Device,
    /// Mini-batches skipped in a row for a non-finite loss or gradient, across steps.
    skips: NonFiniteSkips,
}

/// A separate value model (N+ / TRL's newer trainer), e.g. initialised from the reward model: its
/// score head gives one value per token. It has its own optimizer, and its own config for
/// checkpoints and export (it need not be the policy's size).
pub struct Critic<B: AutodiffKernels> {
    pub model: Gpt2<B>,
    pub config: Gpt2Config,
    pub(super) optim: AdamWOptimizer<Gpt2<B>, B>,
}

/// What became of one mini-batch.
enum MiniBatchOutcome {
    /// The model moved; the global gradient norm before clipping.
    Updated { grad_norm: f64 },
    /// The mean ratio was above `ratio_threshold` (TRL skips such mini-batches).
    SkippedRatio,
    /// The loss, the gradient or the learning rate was not finite: nothing moved.
    SkippedNonFinite,
}

impl<B: AutodiffKernels> PpoTrainer<B> {
    /// `policy` must carry a value head unless `critic` (its config and a model with a one-label
    /// score head, reading the policy's vocabulary) is given. `reference` is frozen.
    pub fn new(
        policy: Gpt2<B>,
        critic: Option<(Gpt2Config, Gpt2<B>)>,
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
        if let Some((_, model)) = &critic {
            check_critic(model, policy.vocab_size())?;
        }
        let skips = NonFiniteSkips::new(config.max_skipped_steps);
        let policy_optim = config.optim.adamw::<B, Gpt2<B>>();
        let critic =
            critic.map(|(model_config, model)| Critic { model, config: model_config, optim: config.optim.adamw() });
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
            eos_id,
            device: device.clone(),
            skips,
        })
    }

    /// Checks a batch before any tensor is made.
    fn validate(&self, rollouts: &[Rollout]) -> Result<(), InputError> {
        if rollouts.is_empty() {
            return Err(InputError::Empty { field: "rollouts" });
        }
        let rows: Vec<Vec<u32>> = rollouts.iter().map(|r| [r.query.as_slice(), &r.response].concat()).collect();
        let positions = self
            .critic
            .as_ref()
            .map_or(self.policy.n_positions(), |c| c.model.n_positions().min(self.policy.n_positions()));
        validate("rollout", &rows, self.policy.vocab_size(), positions)?;
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

    /// One PPO step (see the module docs); `total_optimizer_steps` sizes the learning-rate
    /// schedule.
    pub fn step(&mut self, rollouts: &[Rollout], total_optimizer_steps: usize) -> Result<Stats, TrainError> {
        self.validate(rollouts)?;
        let started = Instant::now();
        let resp = rollouts.iter().map(|r| r.response.len()).max().unwrap_or(0);

        // 1. Targets, without gradients.
        let (targets, mut stats) = self.targets(rollouts, resp)?;
        let forward_time = started.elapsed().as_secs_f64();

        // 2. Epochs of shuffled mini-batches.
        let optimize_started = Instant::now();
        let mut epochs = EpochStats::default();
        for _ in 0..self.config.ppo_epochs {
            let mut order: Vec<usize> = (0..rollouts.len()).collect();
            order.shuffle(&mut self.rng);
            for chunk in order.chunks(self.config.mini_batch_size) {
                match self.train_minibatch(rollouts, chunk, resp, &targets, total_optimizer_steps, &mut epochs)? {
                    MiniBatchOutcome::Updated { grad_norm } => epochs.grad_norms.push(grad_norm),
                    MiniBatchOutcome::SkippedRatio => epochs.skipped_ratio += 1,
                    MiniBatchOutcome::SkippedNonFinite => epochs.skipped_nonfinite += 1,
                }
            }
        }

        // 3. Statistics; the KL controller sees this batch's KL.
        let learning_rate = self.config.optim.lr_at(self.optimizer_steps.saturating_sub(1), total_optimizer_steps);
        epochs.finish(&mut stats, learning_rate);
        stats.insert("time/ppo/forward_pass".into(), forward_time);
        stats.insert("time/ppo/optimize_step".into(), optimize_started.elapsed().as_secs_f64());
        stats.insert("time/ppo/total".into(), started.elapsed().as_secs_f64());
        self.kl.update(stats["objective/kl"], rollouts.len());
        Ok(stats)
    }

    /// Old log-probs, values and reference log-probs (no gradients), shaped rewards and GAE, on
    /// the autodiff backend for the epochs that follow; and the batch's statistics.
    /// `resp` is the longest response: every per-token tensor is `[batch, resp]`.
    fn targets(&mut self, rollouts: &[Rollout], resp: usize) -> Result<(Targets<B>, Stats), InputError> {
        let (n, device, temperature) = (rollouts.len(), self.device.clone(), self.config.temperature);
        let batch = Batch::<B::InnerBackend>::new(rollouts, resp, self.eos_id, &device);
        let forward = |model: &Gpt2<B::InnerBackend>| {
            let seqs = &batch.seqs;
            model.forward(seqs.input_ids.clone(), seqs.position_ids.clone(), seqs.key_mask.clone(), None)
        };
        let policy = self.policy.valid();
        let policy_out = forward(&policy);
        let old_logprobs = match self.config.old_logprobs {
            OldLogprobs::Recompute => response_logprobs(&policy, policy_out.hidden.clone(), &batch, temperature),
            OldLogprobs::Behaviour => {
                let padded = |r: &Rollout| {
                    r.logprobs.clone().into_iter().chain(std::iter::repeat_n(0.0, resp - r.logprobs.len()))
                };
                let flat: Vec<f32> = rollouts.iter().flat_map(padded).collect();
                Tensor::from_data(TensorData::new(flat, [n, resp]), &device)
            }
        };
        let critic_out = self.critic.as_ref().map(|c| forward(&c.model.valid()));
        let values = critic_out.as_ref().unwrap_or(&policy_out).token_values()?;
        let values = values.gather(1, batch.columns.clone()); // [batch, resp]
        let ref_out = forward(&self.reference);
        let ref_logprobs = response_logprobs(&self.reference, ref_out.hidden, &batch, temperature);

        let scores = self.scores(rollouts, &device);
        let kl = kl_penalty(old_logprobs.clone(), ref_logprobs, self.config.kl_estimator);
        let kl_coef = self.kl.value();
        let shaped = shape_rewards(scores.clone(), kl.clone(), batch.mask.clone(), kl_coef);
        let (gamma, lam, whiten) = (self.config.gamma, self.config.lam, self.config.whiten_rewards);
        let adv = gae(values, shaped.rewards, batch.mask.clone(), gamma, lam, whiten);
        let stats = batch_stats(
            rollouts,
            kl,
            kl_coef,
            old_logprobs.clone(),
            shaped.non_score_rewards,
            scores,
            batch.mask.clone(),
        );
        let to_autodiff = |t: Tensor<B::InnerBackend, 2>| Tensor::<B, 2>::from_inner(t);
        let targets = Targets {
            old_logprobs: to_autodiff(old_logprobs),
            old_values: to_autodiff(adv.values),
            advantages: to_autodiff(adv.advantages),
            returns: to_autodiff(adv.returns),
            mask: to_autodiff(batch.mask),
        };
        Ok((targets, stats))
    }

    /// `[batch]`: each rollout's score after scaling and clipping, with the missing-EOS rule
    /// applied.
    fn scores(&mut self, rollouts: &[Rollout], device: &B::Device) -> Tensor<B::InnerBackend, 1> {
        let n = rollouts.len();
        let mut raw: Vec<f64> = rollouts.iter().map(|r| r.score as f64).collect();
        if self.config.score_scaling {
            self.score_moments.update(&raw);
            let (mean, scale) = (self.score_moments.mean, self.score_moments.std + f32::EPSILON as f64);
            let shift = if self.config.score_norm { mean } else { 0.0 };
            raw.iter_mut().for_each(|s| *s = (*s - shift) / scale);
        }
        if self.config.score_clip > 0.0 {
            raw.iter_mut().for_each(|s| *s = s.clamp(-self.config.score_clip, self.config.score_clip));
        }
        let scores = Tensor::from_data(TensorData::new(raw.iter().map(|&s| s as f32).collect::<Vec<_>>(), [n]), device);
        let has_eos: Vec<f32> =
            rollouts.iter().map(|r| (r.response.last() == Some(&self.eos_id)) as u8 as f32).collect();
        adjust_scores(scores, Tensor::from_data(TensorData::new(has_eos, [n]), device), self.config.missing_eos)
    }

    /// One mini-batch (`chunk`: row indices into `rollouts`): the losses, their statistics into
    /// `epochs`, and an optimizer step unless the mini-batch is skipped. Fails after
    /// `max_skipped_steps` non-finite mini-batches in a row.
    fn train_minibatch(
        &mut self,
        rollouts: &[Rollout],
        chunk: &[usize],
        resp: usize,
        targets: &Targets<B>,
        total_optimizer_steps: usize,
        epochs: &mut EpochStats,
    ) -> Result<MiniBatchOutcome, TrainError> {
        let device = self.device.clone();
        let rows: Vec<i64> = chunk.iter().map(|&i| i as i64).collect();
        let targets = targets.select(Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [chunk.len()]), &device));
        // The mini-batch is padded to its own longest sequence.
        let picked: Vec<Rollout> = chunk.iter().map(|&i| rollouts[i].clone()).collect();
        let mb = Batch::<B>::new(&picked, resp, self.eos_id, &device);
        let forward = |model: &Gpt2<B>| {
            model.forward(mb.seqs.input_ids.clone(), mb.seqs.position_ids.clone(), mb.seqs.key_mask.clone(), None)
        };
        let out = forward(&self.policy);
        let (logprobs, entropy) =
            response_logprobs_and_entropy(&self.policy, out.hidden.clone(), &mb, self.config.temperature);
        let vpred_out = match &self.critic {
            Some(critic) => forward(&critic.model),
            None => out,
        };
        let vpreds = vpred_out.token_values()?.gather(1, mb.columns.clone());
        let cliprange = self.config.cliprange;
        let pg =
            policy_loss(logprobs, targets.old_logprobs.clone(), targets.advantages.clone(), mb.mask.clone(), cliprange);
        let vf = value_loss(
            vpreds,
            targets.old_values.clone(),
            targets.returns.clone(),
            mb.mask.clone(),
            self.config.cliprange_value,
        );
        let loss = pg.loss.clone() + vf.loss.clone() * self.config.vf_coef;
        let ratio_mean = scalar(pg.ratio_mean.clone().detach());
        let total = scalar(loss.clone().detach());
        let lr = self.config.optim.lr_at(self.optimizer_steps, total_optimizer_steps);
        let skip_ratio = ratio_mean > self.config.ratio_threshold;
        let skip_nonfinite = !total.is_finite() || !lr.is_finite();
        let kept = !skip_ratio && !skip_nonfinite;
        epochs.add(minibatch_stats(&pg, &vf, self.config.vf_coef, entropy.detach(), &targets, kept));
        if skip_ratio {
            let threshold = self.config.ratio_threshold;
            tracing::warn!(ratio_mean, threshold, "mini-batch ratio above ratio_threshold: skipped");
            return Ok(MiniBatchOutcome::SkippedRatio);
        }
        let max_norm = self.config.optim.max_grad_norm;
        let gradients = (!skip_nonfinite).then(|| {
            let mut grads = loss.backward();
            let mut policy_grads = GradientsParams::from_module(&mut grads, &self.policy);
            let norm = clip_grad_norm(&self.policy, &mut policy_grads, max_norm);
            (grads, policy_grads, norm)
        });
        // No backward pass ran when the loss or the learning rate was already non-finite.
        let grad_norm = gradients.as_ref().map_or(f64::NAN, |(_, _, norm)| *norm);
        let apply = self.skips.check("ppo", self.optimizer_steps, total, grad_norm, lr)?;
        let Some((mut grads, policy_grads, grad_norm)) = gradients.filter(|_| apply) else {
            // Nothing moves: the weights and the optimizer state stay as they were.
            return Ok(MiniBatchOutcome::SkippedNonFinite);
        };
        // burn's optimizer takes the module by value; cloning shares the tensors.
        self.policy = self.policy_optim.step(lr, self.policy.clone(), policy_grads);
        if let Some(critic) = self.critic.as_mut() {
            let mut critic_grads = GradientsParams::from_module(&mut grads, &critic.model);
            clip_grad_norm(&critic.model, &mut critic_grads, max_norm);
            critic.model = critic.optim.step(lr, critic.model.clone(), critic_grads);
        }
        self.optimizer_steps += 1;
        Ok(MiniBatchOutcome::Updated { grad_norm })
    }
}

/// A critic must give one value per token of the policy's vocabulary.
fn check_critic<B: AutodiffKernels>(critic: &Gpt2<B>, policy_vocab: usize) -> Result<(), InputError> {
    if critic.heads() != (Heads::Score { num_labels: 1 }) {
        return Err(InputError::Invalid {
            field: "critic",
            expected: "a model with a one-label score head (a reward model)",
            got: format!("{:?}", critic.heads()),
        });
    }
    if critic.vocab_size() != policy_vocab {
        return Err(InputError::Invalid {
            field: "critic",
            expected: "the policy's vocabulary (a separate critic reads the policy's tokens)",
            got: format!("{} tokens, the policy has {policy_vocab}", critic.vocab_size()),
        });
    }
    Ok(())
}

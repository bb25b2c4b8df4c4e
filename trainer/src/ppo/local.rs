//! `rlhf ppo --local`: generate with the policy, score, update, repeat, in one process. The
//! distributed runtime runs the same three calls ([`crate::generate`], a [`Scorer`],
//! [`PpoTrainer::step`]) in different processes.

use std::time::Instant;

use crate::kernels::AutodiffKernels;
use burn::module::AutodiffModule;
use serde::{Deserialize, Serialize};

use crate::data::PromptConfig;
use crate::infer::sampling::{SamplingConfig, generate};
use crate::ppo::{CriticKind, OldLogprobs, PpoConfig, PpoTrainer, Rollout};
use crate::reward::scorer::{ScoreError, Scorer};
use crate::train::Stats;
use crate::validate::{Checked, InvalidSetting, at_least_one, section};

/// Settings of a local PPO run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    pub iterations: usize,
    /// Rollouts per iteration (TRL's `batch_size`).
    pub batch_size: usize,
    /// The value model: the policy's value head, or a separate critic from the reward model.
    pub critic: CriticKind,
    pub sampling: SamplingConfig,
    pub ppo: PpoConfig,
    /// How prompts are cut from the dataset.
    pub prompts: PromptConfig,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            iterations: 10,
            batch_size: 16,
            critic: CriticKind::Shared,
            sampling: SamplingConfig { max_new_tokens: 16, ..Default::default() },
            ppo: PpoConfig::default(),
            prompts: PromptConfig::default(),
        }
    }
}

impl LocalConfig {
    /// Sets what follows from other settings, once for every entry point (`rlhf ppo --local` and
    /// the learner): the update's log-probs use the sampler's temperature, and when workers may
    /// sample with an older policy (`off_policy`) the ratio is taken against the behaviour
    /// log-probs they carry.
    pub fn resolve(mut self, off_policy: bool) -> Self {
        self.ppo.temperature = self.sampling.logprob_temperature();
        if off_policy {
            self.ppo.old_logprobs = OldLogprobs::Behaviour;
        }
        self
    }

    /// Checks every setting (see [`crate::validate`]), sections included.
    pub fn validate(&self) -> Checked {
        at_least_one("iterations", self.iterations)?;
        at_least_one("batch_size", self.batch_size)?;
        if self.ppo.mini_batch_size > self.batch_size {
            return Err(InvalidSetting::new(
                "ppo.mini_batch_size",
                &format!("at most batch_size ({})", self.batch_size),
                self.ppo.mini_batch_size,
            ));
        }
        section("sampling", self.sampling.validate())?;
        section("ppo", self.ppo.validate())?;
        section("prompts", self.prompts.validate())
    }

    /// Checks that prompts and responses fit the policy's context.
    pub fn validate_for_model(&self, n_positions: usize) -> Checked {
        let longest = self.prompts.max_tokens + self.sampling.max_new_tokens;
        if !self.prompts.whole && longest > n_positions {
            return Err(InvalidSetting::new(
                "sampling.max_new_tokens",
                &format!(
                    "at most {} (the model's {n_positions} positions minus prompts.max_tokens {})",
                    n_positions.saturating_sub(self.prompts.max_tokens),
                    self.prompts.max_tokens
                ),
                self.sampling.max_new_tokens,
            ));
        }
        Ok(())
    }

    /// Optimizer steps over the whole run (for the learning-rate schedule).
    pub fn total_optimizer_steps(&self) -> usize {
        self.iterations * self.ppo.ppo_epochs * self.batch_size.div_ceil(self.ppo.mini_batch_size.max(1))
    }
}

crate::impl_validate!(LocalConfig);

/// Errors of the local loop.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(transparent)]
    Input(#[from] crate::error::InputError),
    #[error(transparent)]
    Score(#[from] ScoreError),
    #[error(transparent)]
    Train(#[from] crate::error::TrainError),
}

/// One iteration's rollouts and statistics.
pub struct Iteration<'a> {
    pub index: usize,
    pub rollouts: &'a [Rollout],
    pub stats: &'a Stats,
}

/// Adds `env/reward_mean` and `env/reward_std` (sample std) of raw `scores` to `stats`.
pub fn insert_reward_stats(stats: &mut Stats, scores: impl IntoIterator<Item = f32>) {
    let scores: Vec<f64> = scores.into_iter().map(f64::from).collect();
    let n = scores.len().max(1) as f64;
    let mean = scores.iter().sum::<f64>() / n;
    let std = (scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
    stats.insert("env/reward_mean".into(), mean);
    stats.insert("env/reward_std".into(), std);
}

/// The `batch_size` prompts of iteration `index`, cycling through `prompts`.
pub fn prompts_for(prompts: &[Vec<u32>], batch_size: usize, index: usize) -> Vec<Vec<u32>> {
    (0..batch_size).map(|i| prompts[(index * batch_size + i) % prompts.len()].clone()).collect()
}

/// Runs `config.iterations` PPO iterations; `on_iteration` sees each one's rollouts and stats
/// (TRL's names plus `env/reward_mean`, `env/reward_std`, `time/rollout`, `time/score`).
pub fn run<B: AutodiffKernels>(
    trainer: &mut PpoTrainer<B>,
    prompts: &[Vec<u32>],
    scorer: &mut dyn Scorer,
    config: &LocalConfig,
    eos_id: u32,
    device: &B::Device,
    on_iteration: &mut dyn FnMut(Iteration),
) -> Result<(), LocalError> {
    if prompts.is_empty() {
        return Err(crate::error::InputError::Empty { field: "prompts" }.into());
    }
    // The learner must recompute log-probs under the distribution the sampler drew from (see
    // `LocalConfig::resolve`).
    let sampling_temperature = config.sampling.logprob_temperature();
    if trainer.config.temperature != sampling_temperature {
        return Err(crate::error::InputError::Invalid {
            field: "ppo.temperature",
            expected: "the sampling temperature",
            got: format!("{} (sampling uses {sampling_temperature})", trainer.config.temperature),
        }
        .into());
    }
    let total_steps = config.total_optimizer_steps();
    for index in 0..config.iterations {
        let queries = prompts_for(prompts, config.batch_size, index);
        let started = Instant::now();
        // A different, repeatable seed per iteration.
        let sampling =
            SamplingConfig { seed: config.sampling.seed.wrapping_add(index as u64), ..config.sampling.clone() };
        let generation = generate(&trainer.policy.valid(), &queries, eos_id, &sampling, device)?;
        let rollout_time = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let scores = scorer.score(&queries, &generation.completion_ids)?;
        let score_time = started.elapsed().as_secs_f64();
        let rollouts: Vec<Rollout> = queries
            .into_iter()
            .zip(generation.completion_ids)
            .zip(generation.logprobs)
            .zip(&scores)
            .map(|(((query, response), logprobs), &score)| Rollout { query, response, logprobs, score })
            .collect();
        let mut stats = trainer.step(&rollouts, total_steps)?;
        insert_reward_stats(&mut stats, scores.iter().copied());
        stats.insert("time/rollout".into(), rollout_time);
        stats.insert("time/score".into(), score_time);
        on_iteration(Iteration { index, rollouts: &rollouts, stats: &stats });
    }
    Ok(())
}

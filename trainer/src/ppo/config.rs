//! PPO's settings, named and defaulted as in TRL's `PPOConfig`, and their checks.

use serde::{Deserialize, Serialize};

use crate::ppo::math::{KlController, KlEstimator, MissingEos};
use crate::train::optim::OptimConfig;
use crate::validate::{
    Checked, InvalidSetting, at_least_one, finite_at_least, finite_positive, in_closed_range, section,
};

/// Which log-probs the PPO ratio is taken against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OldLogprobs {
    /// Recompute with the current policy before the update (TRL).
    Recompute,
    /// Use the behaviour log-probs carried by the rollouts (off-policy samples).
    Behaviour,
}

/// Where PPO's values come from (`train.critic`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CriticKind {
    /// A value head on the policy's trunk (TRL's classic PPO).
    #[default]
    Shared,
    /// A separate value model initialised from the reward model (N+ / TRL's newer trainer), with
    /// its own optimizer; it must read the policy's tokens.
    RewardModel,
}

impl CriticKind {
    /// The heads the policy is loaded with: a value head only when it is the critic.
    pub fn policy_heads(self) -> crate::Heads {
        match self {
            Self::Shared => crate::Heads::LmValue,
            Self::RewardModel => crate::Heads::Lm,
        }
    }
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
    /// Logits are divided by it before every log-prob. Not a setting: it is always the
    /// sampler's (`LocalConfig::resolve` sets it), so a config file cannot set it to anything
    /// else.
    #[serde(skip, default = "unit_temperature")]
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

fn unit_temperature() -> f32 {
    1.0
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

crate::impl_validate!(PpoConfig);

//! Settings are checked once, where they enter: every config has one `validate()`, which
//! `--check` and every command call before any work starts. A failure names the setting by its
//! path in the config file (`train.ppo.cliprange`), what was expected and what was found.

use std::fmt::Display;

/// A setting outside what rlhf can run with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: expected {expected}, got {got}")]
pub struct InvalidSetting {
    /// The setting's path in the config file, e.g. `train.ppo.cliprange`.
    pub field: String,
    pub expected: String,
    pub got: String,
}

impl InvalidSetting {
    pub fn new(field: &str, expected: &str, got: impl Display) -> Self {
        Self { field: field.to_string(), expected: expected.to_string(), got: got.to_string() }
    }

    /// The same error for a setting inside `section` (`optim` + `learning_rate` →
    /// `optim.learning_rate`).
    pub fn within(mut self, section: &str) -> Self {
        if !section.is_empty() {
            self.field = format!("{section}.{}", self.field);
        }
        self
    }
}

pub type Checked = Result<(), InvalidSetting>;

/// A config that can check its own settings. `rlhf`'s config resolution (defaults < file <
/// flags < `--set`) calls it on the result, so every command and `--check` run the same rules.
pub trait Validate {
    fn validate(&self) -> Checked;
}

/// Implements [`Validate`] with the type's inherent `validate`.
#[macro_export]
macro_rules! impl_validate {
    ($($t:ty),* $(,)?) => {$(
        impl $crate::validate::Validate for $t {
            fn validate(&self) -> $crate::validate::Checked {
                <$t>::validate(self)
            }
        }
    )*};
}

/// Runs a section's check and prefixes its errors with the section's name.
pub fn section(name: &str, check: Checked) -> Checked {
    check.map_err(|e| e.within(name))
}

/// At least 1.
pub fn at_least_one(field: &str, value: usize) -> Checked {
    if value >= 1 { Ok(()) } else { Err(InvalidSetting::new(field, "at least 1", value)) }
}

/// A finite number ≥ `min`.
pub fn finite_at_least(field: &str, value: f64, min: f64) -> Checked {
    if value.is_finite() && value >= min {
        Ok(())
    } else {
        Err(InvalidSetting::new(field, &format!("a finite number ≥ {min}"), value))
    }
}

/// A finite number > 0.
pub fn finite_positive(field: &str, value: f64) -> Checked {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(InvalidSetting::new(field, "a finite number > 0", value))
    }
}

/// A number in `[low, high)`.
pub fn in_range(field: &str, value: f64, low: f64, high: f64) -> Checked {
    if value >= low && value < high {
        Ok(())
    } else {
        Err(InvalidSetting::new(field, &format!("a number in [{low}, {high})"), value))
    }
}

/// A number in `[low, high]`.
pub fn in_closed_range(field: &str, value: f64, low: f64, high: f64) -> Checked {
    if value >= low && value <= high {
        Ok(())
    } else {
        Err(InvalidSetting::new(field, &format!("a number in [{low}, {high}]"), value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_setting_by_its_path() {
        let err = section("train", section("ppo", finite_positive("cliprange", -1.0))).unwrap_err();
        assert_eq!(err.to_string(), "train.ppo.cliprange: expected a finite number > 0, got -1");
        assert!(finite_at_least("learning_rate", f64::NAN, 0.0).is_err());
        assert!(finite_at_least("learning_rate", f64::INFINITY, 0.0).is_err());
        assert!(finite_at_least("learning_rate", 0.0, 0.0).is_ok());
        assert!(in_range("beta1", 1.0, 0.0, 1.0).is_err());
        assert!(in_closed_range("gamma", 1.0, 0.0, 1.0).is_ok());
        assert!(at_least_one("epochs", 0).is_err());
    }

    /// One bad value per rule: each config refuses it and names the setting.
    #[test]
    fn every_config_rule_names_its_setting() {
        use crate::ppo::PpoConfig;
        use crate::ppo::local::LocalConfig;
        use crate::ppo::{KlController, MissingEos};
        use crate::reward::RewardConfig;
        use crate::sft::SftConfig;
        use crate::train::optim::OptimConfig;

        let optim = OptimConfig::default();
        let optim_cases: Vec<(OptimConfig, &str)> = vec![
            (OptimConfig { learning_rate: f64::NAN, ..optim.clone() }, "learning_rate"),
            (OptimConfig { learning_rate: -1e-4, ..optim.clone() }, "learning_rate"),
            (OptimConfig { learning_rate: f64::INFINITY, ..optim.clone() }, "learning_rate"),
            (OptimConfig { weight_decay: -0.1, ..optim.clone() }, "weight_decay"),
            (OptimConfig { beta1: 1.0, ..optim.clone() }, "beta1"),
            (OptimConfig { beta2: -0.5, ..optim.clone() }, "beta2"),
            (OptimConfig { eps: 0.0, ..optim.clone() }, "eps"),
            (OptimConfig { max_grad_norm: f64::NAN, ..optim.clone() }, "max_grad_norm"),
        ];
        for (config, field) in optim_cases {
            assert_eq!(config.validate().unwrap_err().field, field);
        }

        let ppo = PpoConfig::default();
        let ppo_cases: Vec<(PpoConfig, &str)> = vec![
            (PpoConfig { ppo_epochs: 0, ..ppo.clone() }, "ppo_epochs"),
            (PpoConfig { mini_batch_size: 0, ..ppo.clone() }, "mini_batch_size"),
            (PpoConfig { gamma: 1.5, ..ppo.clone() }, "gamma"),
            (PpoConfig { lam: f64::NAN, ..ppo.clone() }, "lam"),
            (PpoConfig { cliprange: -0.2, ..ppo.clone() }, "cliprange"),
            (PpoConfig { cliprange_value: 0.0, ..ppo.clone() }, "cliprange_value"),
            (PpoConfig { vf_coef: -1.0, ..ppo.clone() }, "vf_coef"),
            (PpoConfig { kl: KlController::Fixed { value: f64::NAN }, ..ppo.clone() }, "kl.fixed.value"),
            (
                PpoConfig { kl: KlController::Adaptive { value: 0.2, target: 0.0, horizon: 1e4 }, ..ppo.clone() },
                "kl.adaptive.target",
            ),
            (PpoConfig { ratio_threshold: 0.0, ..ppo.clone() }, "ratio_threshold"),
            (PpoConfig { temperature: 0.0, ..ppo.clone() }, "temperature"),
            (PpoConfig { missing_eos: MissingEos::Penalty(f32::NAN), ..ppo.clone() }, "missing_eos.penalty"),
            (PpoConfig { score_clip: -1.0, ..ppo.clone() }, "score_clip"),
            (PpoConfig { max_skipped_steps: 0, ..ppo.clone() }, "max_skipped_steps"),
            (
                PpoConfig { optim: OptimConfig { learning_rate: f64::NAN, ..optim.clone() }, ..ppo.clone() },
                "optim.learning_rate",
            ),
        ];
        for (config, field) in ppo_cases {
            assert_eq!(config.validate().unwrap_err().field, field);
        }

        let local = LocalConfig::default();
        let mut big_minibatch = local.clone();
        big_minibatch.ppo.mini_batch_size = local.batch_size + 1;
        let mut bad_prompts = local.clone();
        bad_prompts.prompts.min_tokens = 9;
        let mut bad_sampling = local.clone();
        bad_sampling.sampling.top_p = 2.0;
        let local_cases: Vec<(LocalConfig, &str)> = vec![
            (LocalConfig { iterations: 0, ..local.clone() }, "iterations"),
            (LocalConfig { batch_size: 0, ..local.clone() }, "batch_size"),
            (big_minibatch, "ppo.mini_batch_size"),
            (bad_prompts, "prompts.min_tokens"),
            (bad_sampling, "sampling.top_p"),
        ];
        for (config, field) in local_cases {
            assert_eq!(config.validate().unwrap_err().field, field);
        }
        // The model's context bounds prompt + response.
        assert_eq!(local.validate_for_model(20).unwrap_err().field, "sampling.max_new_tokens");
        assert!(local.validate_for_model(1024).is_ok());

        let sft = SftConfig::default();
        let sft_cases: Vec<(SftConfig, &str)> = vec![
            (SftConfig { epochs: 0, ..sft.clone() }, "epochs"),
            (SftConfig { batch_size: 0, ..sft.clone() }, "batch_size"),
            (SftConfig { grad_accum: 0, ..sft.clone() }, "grad_accum"),
            (SftConfig { max_length: 0, ..sft.clone() }, "max_length"),
            (SftConfig { max_skipped_steps: 0, ..sft.clone() }, "max_skipped_steps"),
            (
                SftConfig { optim: OptimConfig { learning_rate: -1.0, ..optim.clone() }, ..sft.clone() },
                "optim.learning_rate",
            ),
        ];
        for (config, field) in sft_cases {
            assert_eq!(config.validate().unwrap_err().field, field);
        }

        let reward = RewardConfig::default();
        let reward_cases: Vec<(RewardConfig, &str)> = vec![
            (RewardConfig { epochs: 0, ..reward.clone() }, "epochs"),
            (RewardConfig { batch_size: 0, ..reward.clone() }, "batch_size"),
            (RewardConfig { max_length: 1, ..reward.clone() }, "max_length"),
            (RewardConfig { margin: f64::NAN, ..reward.clone() }, "margin"),
            (RewardConfig { center_rewards_coefficient: -1.0, ..reward.clone() }, "center_rewards_coefficient"),
        ];
        for (config, field) in reward_cases {
            assert_eq!(config.validate().unwrap_err().field, field);
        }
        for ok in [optim.validate(), ppo.validate(), local.validate(), sft.validate(), reward.validate()] {
            ok.unwrap();
        }
    }
}

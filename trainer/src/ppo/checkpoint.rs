//! A PPO checkpoint: the policy with its value head as a Hugging Face directory, the optimizer
//! state, and [`PpoState`] (`ppo_state.json`); a separate critic, with its own optimizer state,
//! in `critic/`. A directory is a checkpoint once `ppo_state.json` is in it.

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::error::CheckpointError;
use crate::kernels::AutodiffKernels;
use crate::ppo::math::{KlController, RunningMoments};
use crate::ppo::update::{Critic, PpoTrainer};

/// What a PPO checkpoint records beside the model and optimizer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PpoState {
    /// Policy versions trained so far (the next iteration's index).
    pub version: u64,
    pub optimizer_steps: usize,
    pub kl: KlController,
    pub score_moments: RunningMoments,
}

/// The file that makes a directory a PPO checkpoint.
pub const PPO_STATE_FILE: &str = "ppo_state.json";
/// The sub-directory holding a separate critic (a sequence-classification directory plus its
/// optimizer state).
pub const CRITIC_DIR: &str = "critic";

impl<B: AutodiffKernels> PpoTrainer<B> {
    /// Fills the empty directory `dir`: the policy with its value head as a Hugging Face
    /// directory, the optimizer state, and [`PpoState`]. Callers write it through
    /// [`crate::train::write_dir_atomically`], adding their own records.
    pub fn save_checkpoint(
        &self,
        dir: &Path,
        version: u64,
        model_config: &crate::Gpt2Config,
        tokenizer: &crate::Tokenizer,
    ) -> Result<(), CheckpointError> {
        crate::model::hf::write_dir(&self.policy.valid(), model_config, tokenizer, dir)?;
        crate::train::save_optimizer(dir, &self.policy, &self.policy_optim)?;
        if let Some(critic) = &self.critic {
            let critic_dir = dir.join(CRITIC_DIR);
            std::fs::create_dir(&critic_dir)
                .map_err(|e| CheckpointError::Write { path: critic_dir.clone(), message: e.to_string() })?;
            crate::model::hf::write_dir(&critic.model.valid(), &critic.config, tokenizer, &critic_dir)?;
            crate::train::save_optimizer(&critic_dir, &critic.model, &critic.optim)?;
        }
        let state = PpoState {
            version,
            optimizer_steps: self.optimizer_steps,
            kl: self.kl.clone(),
            score_moments: self.score_moments.clone(),
        };
        let path = dir.join(PPO_STATE_FILE);
        std::fs::write(&path, serde_json::to_string_pretty(&state).expect("state serialises"))
            .map_err(|e| CheckpointError::Write { path, message: e.to_string() })
    }

    /// Restores a checkpoint written by [`PpoTrainer::save_checkpoint`]: policy, value head or
    /// separate critic, optimizer states, KL coefficient and score moments. Returns its
    /// [`PpoState`]. A checkpoint whose critic does not match this trainer's (one has a separate
    /// critic, the other not) is refused. The
    /// mini-batch shuffling RNG is re-seeded from the step count, so a resumed run is not
    /// bit-identical to an uninterrupted one.
    pub fn restore_checkpoint(&mut self, dir: &Path) -> Result<PpoState, CheckpointError> {
        let read_error =
            |path: PathBuf, e: &dyn std::fmt::Display| CheckpointError::Read { path, message: e.to_string() };
        let path = dir.join(PPO_STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| read_error(path.clone(), &e))?;
        let state: PpoState = serde_json::from_str(&text).map_err(|e| read_error(path.clone(), &e))?;
        let critic_dir = dir.join(CRITIC_DIR);
        let mismatch = |message: &str| read_error(critic_dir.clone(), &message);
        let critic = match (&self.critic, critic_dir.is_dir()) {
            (None, false) => None,
            (Some(_), true) => {
                let (config, model) =
                    crate::model::hf::load_as::<B>(&critic_dir, crate::Heads::Score { num_labels: 1 }, &self.device)?;
                let optim = crate::train::load_optimizer(&critic_dir, &model, self.config.optim.adamw(), &self.device)?;
                Some(Critic { model, config, optim })
            }
            (Some(_), false) => {
                return Err(mismatch("missing: this run trains a separate critic (train.critic = \"reward-model\")"));
            }
            (None, true) => {
                return Err(mismatch(
                    "this checkpoint has a separate critic, but this run uses the policy's value head \
                     (train.critic = \"shared\")",
                ));
            }
        };
        let (_, policy) = crate::model::hf::load_as::<B>(dir, self.policy.heads(), &self.device)?;
        let optim = crate::train::load_optimizer(dir, &policy, self.config.optim.adamw(), &self.device)?;
        self.policy = policy;
        self.policy_optim = optim;
        self.critic = critic;
        self.optimizer_steps = state.optimizer_steps;
        self.kl = state.kl.clone();
        self.score_moments = state.score_moments.clone();
        self.rng = StdRng::seed_from_u64(self.config.seed.wrapping_add(state.optimizer_steps as u64));
        Ok(state)
    }
}

//! PPO, CleanRL-style: the pure math (`math`: whitening, rewards with the KL penalty, GAE, the
//! losses), the rollouts and their device layouts (`batch`), the update over a batch
//! ([`PpoTrainer::step`] in `update`), its statistics (`stats`), its checkpoints (`checkpoint`),
//! and the one-process loop (`local`: `rlhf ppo --local`).

pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod local;
pub mod math;
pub mod stats;
pub mod update;

#[cfg(test)]
mod knob_tests;
#[cfg(test)]
mod parity_tests;

pub use batch::{Rollout, Targets};
pub use checkpoint::{CRITIC_DIR, PPO_STATE_FILE, PpoState};
pub use config::{CriticKind, OldLogprobs, PpoConfig};
pub use math::*;
pub use update::{Critic, PpoTrainer};

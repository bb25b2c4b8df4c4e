//! The learner's run directory:
//!
//! ```text
//! OUT/
//!   learner_config.toml       the resolved config
//!   metrics.jsonl             one record per policy version
//!   rollouts.jsonl            one lineage record per accepted rollout
//!   checkpoints/version-N/    policy + value head (HF), optimizer, ppo_state.json, accounting.json
//!                             (+ critic/: a separate critic and its optimizer, with train.critic)
//!   accounting.json           the whole run's accounting, written when it ends
//!   config.json, model.safetensors, tokenizer.json   the trained policy, written when it ends
//!   critic/                   the trained separate critic, written when it ends
//! ```
//!
//! A checkpoint directory is complete once `ppo_state.json` is in it (they are written
//! atomically, see [`rlhf_trainer::train::write_dir_atomically`]).

use std::path::{Path, PathBuf};

use rlhf_trainer::error::CheckpointError;
use rlhf_trainer::ppo::{PPO_STATE_FILE, PpoTrainer};
use rlhf_trainer::rundir::{RunDirError, truncate_records};
use rlhf_trainer::train::{latest_checkpoint, write_dir_atomically};
use rlhf_trainer::{AutodiffKernels, Gpt2Config, Tokenizer};

use crate::coordinator::Accounting;

/// The run's [`Accounting`]: in each checkpoint, and in the run directory at the end.
pub const ACCOUNTING_FILE: &str = "accounting.json";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const ROLLOUTS_FILE: &str = "rollouts.jsonl";
pub const CONFIG_FILE: &str = "learner_config.toml";
const CHECKPOINTS: &str = "checkpoints";
const VERSION_PREFIX: &str = "version-";

/// Why the learner could not resume.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("--resume: no checkpoint in {dir}")]
    NoCheckpoint { dir: PathBuf },
    #[error("--resume: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("--resume: cannot read {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("--resume: {path} is not an accounting record: {error}")]
    Accounting { path: PathBuf, error: serde_json::Error },
    #[error("--resume: {0}")]
    Records(#[from] RunDirError),
}

/// Where a run starts: the first policy version to train and the accounting so far.
#[derive(Debug, Default)]
pub struct Start {
    pub version: u64,
    pub prior: Accounting,
}

/// A learner's run directory (see the module docs).
#[derive(Debug, Clone)]
pub struct RunDir {
    pub out: PathBuf,
}

impl RunDir {
    pub fn new(out: &Path) -> Self {
        Self { out: out.to_path_buf() }
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.out.join(CHECKPOINTS)
    }

    /// The newest complete checkpoint and its policy version.
    pub fn latest_checkpoint(&self) -> Option<(u64, PathBuf)> {
        latest_checkpoint(&self.checkpoints(), VERSION_PREFIX, PPO_STATE_FILE)
    }

    /// Restores `trainer` from the newest checkpoint, carries its accounting over (one more
    /// resume), and drops the metrics and lineage records written after it: those iterations
    /// belong to the attempt that was cut short, and their prompts are rolled out again.
    pub fn resume<B: AutodiffKernels>(
        &self,
        trainer: &mut PpoTrainer<B>,
        batch_size: usize,
    ) -> Result<Start, ResumeError> {
        let (_, dir) = self.latest_checkpoint().ok_or_else(|| ResumeError::NoCheckpoint { dir: self.checkpoints() })?;
        let state = trainer.restore_checkpoint(&dir)?;
        tracing::info!(checkpoint = %dir.display(), policy_version = state.version, "resuming");
        let path = dir.join(ACCOUNTING_FILE);
        let text = std::fs::read_to_string(&path).map_err(|error| ResumeError::Read { path: path.clone(), error })?;
        let mut prior: Accounting =
            serde_json::from_str(&text).map_err(|error| ResumeError::Accounting { path, error })?;
        prior.resumes += 1;
        let version = state.version;
        let batch = batch_size as u64;
        let metrics =
            truncate_records(&self.out.join(METRICS_FILE), |r| r["step"].as_u64().is_some_and(|s| s <= version))?;
        let rollouts = truncate_records(&self.out.join(ROLLOUTS_FILE), |r| {
            r["prompt_index"].as_u64().is_some_and(|i| i / batch < version)
        })?;
        if metrics + rollouts > 0 {
            tracing::info!(metrics, rollouts, policy_version = version, "dropped records written after the checkpoint");
        }
        Ok(Start { version, prior })
    }

    /// Writes `checkpoints/version-N` atomically: the trainer's checkpoint and the accounting
    /// up to it. Then deletes all but the newest `keep` complete checkpoints (0: none deleted).
    #[allow(clippy::too_many_arguments)]
    pub fn save_checkpoint<B: AutodiffKernels>(
        &self,
        trainer: &PpoTrainer<B>,
        version: u64,
        totals: &Accounting,
        model_config: &Gpt2Config,
        tokenizer: &Tokenizer,
        keep: usize,
    ) -> Result<(), CheckpointError> {
        let dir = self.checkpoints().join(format!("{VERSION_PREFIX}{version}"));
        write_dir_atomically(&dir, |dir| {
            trainer.save_checkpoint(dir, version, model_config, tokenizer)?;
            write_accounting(&dir.join(ACCOUNTING_FILE), totals)
        })?;
        if keep > 0 {
            self.prune_checkpoints(keep);
        }
        Ok(())
    }

    /// Deletes all but the newest `keep` complete checkpoints; a failure to delete is logged and
    /// left for the next time (the checkpoint just written is safe either way).
    fn prune_checkpoints(&self, keep: usize) {
        let Ok(entries) = std::fs::read_dir(self.checkpoints()) else { return };
        let mut versions: Vec<(u64, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n: u64 = e.file_name().to_str()?.strip_prefix(VERSION_PREFIX)?.parse().ok()?;
                e.path().join(PPO_STATE_FILE).is_file().then_some((n, e.path()))
            })
            .collect();
        versions.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
        for (version, dir) in versions.into_iter().skip(keep) {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {
                    tracing::debug!(policy_version = version, "deleted an old checkpoint (runtime.checkpoint_keep)")
                }
                Err(error) => tracing::warn!(checkpoint = %dir.display(), %error, "cannot delete an old checkpoint"),
            }
        }
    }

    /// Whether the run in this directory ended having trained every prompt `config` asks for
    /// (its final accounting, written last, says so): `--resume auto` then has nothing to do.
    pub fn finished(&self, config: &crate::LearnerConfig) -> bool {
        let prompts = config.train.iterations * config.train.batch_size;
        let Ok(text) = std::fs::read_to_string(self.out.join(ACCOUNTING_FILE)) else { return false };
        serde_json::from_str::<Accounting>(&text).is_ok_and(|a| a.prompts_accounted >= prompts)
    }

    /// Writes the whole run's accounting beside the trained policy.
    pub fn write_accounting(&self, totals: &Accounting) -> Result<(), CheckpointError> {
        write_accounting(&self.out.join(ACCOUNTING_FILE), totals)
    }
}

fn write_accounting(path: &Path, totals: &Accounting) -> Result<(), CheckpointError> {
    let text = serde_json::to_string_pretty(totals).expect("accounting serialises");
    std::fs::write(path, text).map_err(|e| CheckpointError::Write { path: path.to_path_buf(), message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_checkpoint_is_the_newest_complete_version() {
        let out = tempfile::tempdir().unwrap();
        let run = RunDir::new(out.path());
        assert_eq!(run.latest_checkpoint(), None);
        for (name, complete) in [("version-2", true), ("version-10", true), ("version-11", false), ("step-40", true)] {
            let dir = run.checkpoints().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            if complete {
                std::fs::write(dir.join(PPO_STATE_FILE), "{}").unwrap();
            }
        }
        assert_eq!(run.latest_checkpoint(), Some((10, run.checkpoints().join("version-10"))));
    }
}

//! Resumable checkpoints, which every training command writes.
//!
//! A checkpoint directory is a Hugging Face directory (so any checkpoint can be exported, scored
//! or loaded by transformers) plus the optimizer state and `trainer_state.json`. burn keys
//! optimizer state by parameter id, and ids are new in every process, so the state is saved with
//! each id's module path (`optimizer_params.json`) and re-keyed on load.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::kernels::AutodiffKernels;
use burn::module::{AutodiffModule, ParamId};
use burn::optim::Optimizer;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::Backend;
use burn_store::ModuleSnapshot;
use serde::{Deserialize, Serialize};

use crate::error::CheckpointError;
use crate::model::config::Gpt2Config;
use crate::model::gpt2::Gpt2;
use crate::model::hf;
use crate::tokenizer::Tokenizer;
use crate::train::optim::AdamWOptimizer;

/// Where a run resumes: written beside every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: usize,
    pub total_steps: usize,
    /// The resolved config of the run, for the record.
    pub config: serde_json::Value,
}

const OPTIMIZER_FILE: &str = "optimizer";
const OPTIMIZER_PARAMS_FILE: &str = "optimizer_params.json";
/// What makes a `step-N` directory a training checkpoint.
pub const STATE_FILE: &str = "trainer_state.json";

/// Module path of every parameter.
fn param_paths<B: Backend>(model: &Gpt2<B>) -> BTreeMap<String, ParamId> {
    model.collect(None, None, false).into_iter().filter_map(|s| s.tensor_id.map(|id| (s.full_path(), id))).collect()
}

fn write_error(path: &Path, e: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Write { path: path.to_path_buf(), message: e.to_string() }
}

fn read_error(path: &Path, e: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Read { path: path.to_path_buf(), message: e.to_string() }
}

/// Writes the directory `dir` all at once. `write` fills an empty staging directory next to it
/// (`.NAME.partial`); its files are then synced to disk and it is renamed to `dir`, replacing an
/// older `dir`. A crash at any point leaves the old `dir` (or none) and perhaps a staging
/// directory, which the next write removes: never a half-written `dir`.
pub fn write_dir_atomically(
    dir: &Path,
    write: impl FnOnce(&Path) -> Result<(), CheckpointError>,
) -> Result<(), CheckpointError> {
    let name = dir.file_name().and_then(|n| n.to_str()).ok_or_else(|| write_error(dir, "not a directory name"))?;
    let staging = dir.with_file_name(format!(".{name}.partial"));
    let replaced = dir.with_file_name(format!(".{name}.old"));
    for stale in [&staging, &replaced] {
        if stale.exists() {
            std::fs::remove_dir_all(stale).map_err(|e| write_error(stale, e))?;
        }
    }
    std::fs::create_dir_all(&staging).map_err(|e| write_error(&staging, e))?;
    write(&staging)?;
    sync_tree(&staging).map_err(|e| write_error(&staging, e))?;
    if dir.exists() {
        std::fs::rename(dir, &replaced).map_err(|e| write_error(dir, e))?;
    }
    std::fs::rename(&staging, dir).map_err(|e| write_error(dir, e))?;
    if replaced.exists() {
        std::fs::remove_dir_all(&replaced).map_err(|e| write_error(&replaced, e))?;
    }
    if let Some(parent) = dir.parent() {
        // The rename itself reaches the disk with the parent directory's entry.
        let _ = std::fs::File::open(parent).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// fsync every file under `dir`, then `dir` itself.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        } else {
            std::fs::File::open(entry.path())?.sync_all()?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

/// Writes `dir` atomically ([`write_dir_atomically`]): the model as an HF directory, the
/// optimizer state and the trainer state.
pub fn save_checkpoint<B: AutodiffKernels>(
    dir: &Path,
    model: &Gpt2<B>,
    config: &Gpt2Config,
    tokenizer: &Tokenizer,
    optim: &AdamWOptimizer<Gpt2<B>, B>,
    state: &TrainerState,
) -> Result<(), CheckpointError> {
    write_dir_atomically(dir, |dir| {
        hf::write_dir(&model.valid(), config, tokenizer, dir)?;
        save_optimizer(dir, model, optim)?;
        let path = dir.join(STATE_FILE);
        std::fs::write(&path, serde_json::to_string_pretty(state).expect("state serialises"))
            .map_err(|e| write_error(&path, e))
    })
}

/// Writes `optim`'s state into `dir`, keyed by module path.
pub fn save_optimizer<B: AutodiffKernels>(
    dir: &Path,
    model: &Gpt2<B>,
    optim: &AdamWOptimizer<Gpt2<B>, B>,
) -> Result<(), CheckpointError> {
    let ids: BTreeMap<String, u64> = param_paths(model).into_iter().map(|(p, id)| (p, id.val())).collect();
    let path = dir.join(OPTIMIZER_PARAMS_FILE);
    std::fs::write(&path, serde_json::to_string(&ids).expect("ids serialise")).map_err(|e| write_error(&path, e))?;
    let path = dir.join(OPTIMIZER_FILE);
    BinFileRecorder::<FullPrecisionSettings>::new()
        .record(optim.to_record(), path.clone())
        .map_err(|e| write_error(&path, e))
}

/// Reads optimizer state written by [`save_optimizer`] into `optim`, re-keyed for `model`.
pub fn load_optimizer<B: AutodiffKernels>(
    dir: &Path,
    model: &Gpt2<B>,
    optim: AdamWOptimizer<Gpt2<B>, B>,
    device: &B::Device,
) -> Result<AdamWOptimizer<Gpt2<B>, B>, CheckpointError> {
    let path = dir.join(OPTIMIZER_PARAMS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| read_error(&path, e))?;
    let saved_ids: BTreeMap<String, u64> = serde_json::from_str(&text).map_err(|e| read_error(&path, e))?;
    let path = dir.join(OPTIMIZER_FILE);
    let record: <AdamWOptimizer<Gpt2<B>, B> as Optimizer<Gpt2<B>, B>>::Record =
        BinFileRecorder::<FullPrecisionSettings>::new().load(path.clone(), device).map_err(|e| read_error(&path, e))?;
    // Re-key: saved id -> module path -> this process's id.
    let new_ids = param_paths(model);
    let by_old: HashMap<u64, ParamId> =
        saved_ids.iter().filter_map(|(path, old)| new_ids.get(path).map(|new| (*old, *new))).collect();
    let record =
        record.into_iter().filter_map(|(old, state)| by_old.get(&old.val()).map(|new| (*new, state))).collect();
    Ok(optim.load_record(record))
}

/// The newest `{prefix}N` checkpoint under `dir` with its `N`: the training commands write
/// `step-N` ([`STATE_FILE`]), the learner `version-N` (`ppo_state.json`). A checkpoint counts once
/// its `marker` file is in it.
pub fn latest_checkpoint(dir: &Path, prefix: &str, marker: &str) -> Option<(u64, PathBuf)> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n: u64 = e.file_name().to_str()?.strip_prefix(prefix)?.parse().ok()?;
            e.path().join(marker).is_file().then_some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n)
}

/// Reads a checkpoint's `trainer_state.json`.
pub fn read_trainer_state(dir: &Path) -> Result<TrainerState, CheckpointError> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| read_error(&path, e))?;
    serde_json::from_str(&text).map_err(|e| read_error(&path, e))
}

/// Loads a checkpoint's model, optimizer state and trainer state.
/// A checkpoint read back: the model's config, the model, the optimizer and where training was.
pub type Restored<B> = (Gpt2Config, Gpt2<B>, AdamWOptimizer<Gpt2<B>, B>, TrainerState);

pub fn load_checkpoint<B: AutodiffKernels>(
    dir: &Path,
    mut optim: AdamWOptimizer<Gpt2<B>, B>,
    device: &B::Device,
) -> Result<Restored<B>, CheckpointError> {
    let (config, model) = hf::load::<B>(dir, device)?;
    let state = read_trainer_state(dir)?;
    optim = load_optimizer(dir, &model, optim, device)?;
    Ok((config, model, optim, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_file(dir: &Path, text: &str) -> Result<(), CheckpointError> {
        std::fs::write(dir.join("a.txt"), text).map_err(|e| write_error(dir, e))
    }

    #[test]
    fn a_directory_is_written_whole_or_not_at_all() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("version-1");
        write_dir_atomically(&dir, |d| write_file(d, "first")).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a.txt")).unwrap(), "first");
        // A write that fails halfway leaves the old directory as it was.
        let failed = write_dir_atomically(&dir, |d| {
            write_file(d, "half")?;
            Err(write_error(d, "disk full"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read_to_string(dir.join("a.txt")).unwrap(), "first");
        // The next write removes the leftover staging directory and replaces the old one.
        write_dir_atomically(&dir, |d| write_file(d, "second")).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a.txt")).unwrap(), "second");
        let names: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["version-1".to_string()]);
    }
}

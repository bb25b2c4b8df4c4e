//! Hugging Face model directories in and out.
//!
//! A directory holds `config.json`, `model.safetensors` (or `pytorch_model.bin`) and the tokenizer
//! files. The name map between the checkpoint and [`Gpt2`] is the table below; everything else
//! already has the checkpoint's name, because the model's fields do.
//!
//! | checkpoint (transformers)            | burn module path                 | why                              |
//! |--------------------------------------|----------------------------------|----------------------------------|
//! | `wte.weight`, `h.0...` (`GPT2Model`) | `transformer.wte.weight`, ...    | bare trunks have no prefix       |
//! | `*.ln_{1,2,f}.weight` / `.bias`      | `*.ln_{1,2,f}.gamma` / `.beta`   | burn's LayerNorm field names     |
//! | `h.*.attn.bias`, `attn.masked_bias`  | (ignored)                        | causal-mask buffers, not weights |
//! | `lm_head.weight`                     | (ignored)                        | tied to `wte`                    |
//! | `v_head.summary.*`                   | `v_head.summary.*`               | TRL's value head (see below)     |
//!
//! A value head is written where TRL 0.11.4's `AutoModelForCausalLMWithValueHead.from_pretrained`
//! looks for it, in `model.safetensors` (transformers' `AutoModelForCausalLM` skips it with a
//! note, as it does for TRL's own checkpoints), and also as `value_head.safetensors`, which is how
//! a directory says it has one ([`heads_in`]). Loading takes it from either file.
//!
//! GPT-2's `Conv1D` weights are `[in, out]`, which is burn's `Linear` layout: no transpose. The
//! two `nn.Linear` heads (`score`, `v_head.summary`) are stored as [`crate::model::gpt2::TorchLinear`],
//! in PyTorch's `[out, in]` layout, so they load without a transpose too.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn_store::pytorch::PytorchReader;
use burn_store::{ApplyError, ApplyResult, KeyRemapper, ModuleSnapshot, SafetensorsStore};

use crate::error::CheckpointError;
use crate::model::config::Gpt2Config;
use crate::model::gpt2::{Gpt2, Heads, Init};
use crate::tokenizer::Tokenizer;

pub const CONFIG_FILE: &str = "config.json";
pub const SAFETENSORS_FILE: &str = "model.safetensors";
pub const PYTORCH_FILE: &str = "pytorch_model.bin";
pub const VALUE_HEAD_FILE: &str = "value_head.safetensors";

/// Seed of heads added to a checkpoint that lacks them, so runs repeat exactly.
const FRESH_HEAD_SEED: u64 = 0;

/// Checkpoint keys that are not parameters of the model.
fn is_ignored_key(key: &str) -> bool {
    key.ends_with(".attn.bias") || key.ends_with(".attn.masked_bias") || key == "lm_head.weight"
}

fn load_remapper() -> KeyRemapper {
    KeyRemapper::from_patterns(vec![
        (r"^(wte|wpe|h|ln_f)\.", "transformer.$1."),
        (r"(ln_[12f])\.weight$", "$1.gamma"),
        (r"(ln_[12f])\.bias$", "$1.beta"),
    ])
    .expect("static patterns compile")
}

fn save_remapper() -> KeyRemapper {
    KeyRemapper::from_patterns(vec![(r"(ln_[12f])\.gamma$", "$1.weight"), (r"(ln_[12f])\.beta$", "$1.bias")])
        .expect("static patterns compile")
}

/// The checkpoint name of a burn module path (for error messages).
fn hf_name(path: &str) -> String {
    path.replace(".gamma", ".weight").replace(".beta", ".bias")
}

/// The heads a directory's `config.json` and files describe.
pub fn heads_in(dir: &Path, config: &Gpt2Config) -> Heads {
    let architecture =
        config.extra.get("architectures").and_then(|a| a.get(0)).and_then(|a| a.as_str()).unwrap_or("GPT2LMHeadModel");
    if architecture.ends_with("ForSequenceClassification") {
        Heads::Score { num_labels: config.num_labels() }
    } else if dir.join(VALUE_HEAD_FILE).exists() || has_value_head(&dir.join(SAFETENSORS_FILE)) {
        Heads::LmValue
    } else {
        Heads::Lm
    }
}

/// Whether a safetensors file holds `v_head.*` tensors (a TRL checkpoint), from its header alone.
fn has_value_head(path: &Path) -> bool {
    use std::io::Read;
    let Ok(mut file) = std::fs::File::open(path) else { return false };
    let mut length = [0u8; 8];
    if file.read_exact(&mut length).is_err() {
        return false;
    }
    // The header is a JSON object; a length past 100 MB is no real header.
    let length = u64::from_le_bytes(length);
    if length > 100 << 20 {
        return false;
    }
    let mut header = vec![0u8; length as usize];
    file.read_exact(&mut header).is_ok()
        && serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&header)
            .is_ok_and(|names| names.keys().any(|k| k.starts_with("v_head.")))
}

/// Loads a model directory with the heads its files describe.
pub fn load<B: Backend>(dir: &Path, device: &B::Device) -> Result<(Gpt2Config, Gpt2<B>), CheckpointError> {
    let config = Gpt2Config::load(&dir.join(CONFIG_FILE))?;
    let heads = heads_in(dir, &config);
    let model = load_weights(dir, &config, heads, device)?;
    Ok((config, model))
}

/// Loads a model directory as a model with `heads`: the trunk must be complete; a head the
/// checkpoint lacks is freshly initialised (a reward model or critic started from an LM), and a
/// head the checkpoint has but `heads` does not want is left out.
pub fn load_as<B: Backend>(
    dir: &Path,
    heads: Heads,
    device: &B::Device,
) -> Result<(Gpt2Config, Gpt2<B>), CheckpointError> {
    let config = Gpt2Config::load(&dir.join(CONFIG_FILE))?;
    let model = load_weights(dir, &config, heads, device)?;
    Ok((config, model))
}

fn load_weights<B: Backend>(
    dir: &Path,
    config: &Gpt2Config,
    heads: Heads,
    device: &B::Device,
) -> Result<Gpt2<B>, CheckpointError> {
    // Zeros, not random draws: every tensor is about to be overwritten (heads the file lacks are
    // initialised from a seed below).
    let mut model = config.init_with::<B>(heads, &mut Init::Zeros, device);
    let safetensors = dir.join(SAFETENSORS_FILE);
    let pytorch = dir.join(PYTORCH_FILE);
    let (path, result) = if safetensors.exists() {
        let mut store =
            SafetensorsStore::from_file(&safetensors).remap(load_remapper()).allow_partial(true).validate(false);
        let result = model.load_from(&mut store).map_err(|e| read_error(&safetensors, e))?;
        (safetensors, result)
    } else if pytorch.exists() {
        // Not PytorchStore: it always applies PyTorchToBurnAdapter, which transposes `Linear`
        // weights, and GPT-2's Conv1D weights are already [in, out].
        let reader = PytorchReader::new(&pytorch).map_err(|e| read_error(&pytorch, e))?;
        let named = reader.into_tensors().into_iter().map(|(name, mut snapshot)| {
            snapshot.path_stack = Some(name.split('.').map(str::to_string).collect());
            snapshot
        });
        let (snapshots, _) = load_remapper().remap(named.collect());
        let result = model.apply(snapshots, None, None, false);
        (pytorch, result)
    } else {
        return Err(CheckpointError::NoWeights { dir: dir.to_path_buf() });
    };
    let bad = non_finite_tensors(&model);
    if !bad.is_empty() {
        tracing::warn!(path = %path.display(), tensors = %bad.join(", "), "the checkpoint holds NaN or infinite weights; its outputs will be garbage");
    }
    // The value head lives in its own file (checked below). A score head the checkpoint does not
    // declare is newly initialised: the caller asked for one on top of an LM.
    let value_head_file = dir.join(VALUE_HEAD_FILE);
    let declares_score = matches!(heads_in(dir, config), Heads::Score { .. });
    check_result(&path, &result, |missing| {
        missing.starts_with("v_head.") || (missing.starts_with("score.") && !declares_score)
    })?;
    let value_head_missing = result.missing.iter().filter(|(p, _)| p.starts_with("v_head.")).count();
    // A value head is in the weights file whole (TRL's checkpoints) or not at all.
    if model.v_head.is_some() && value_head_missing == 1 {
        return Err(CheckpointError::Mismatch {
            path: path.clone(),
            missing: result.missing.iter().map(|(p, _)| p.clone()).filter(|p| p.starts_with("v_head.")).collect(),
            unexpected: Vec::new(),
            misshaped: Vec::new(),
        });
    }
    let value_head_loaded = value_head_missing == 0;
    if model.v_head.is_some() {
        if value_head_file.exists() {
            let mut store = SafetensorsStore::from_file(&value_head_file).allow_partial(true).validate(false);
            let result = model.load_from(&mut store).map_err(|e| read_error(&value_head_file, e))?;
            check_result(&value_head_file, &result, |missing| !missing.starts_with("v_head."))?;
        } else if !value_head_loaded {
            model = model.with_value_head(FRESH_HEAD_SEED);
        }
    }
    if let (Heads::Score { num_labels }, false) = (heads, declares_score) {
        model = model.with_score_head(num_labels, FRESH_HEAD_SEED);
    }
    tracing::debug!(path = %path.display(), heads = ?heads, "loaded checkpoint");
    Ok(model)
}

fn read_error(path: &Path, error: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Read { path: path.to_path_buf(), message: error.to_string() }
}

/// Turns burn-store's report into an error naming every missing, unexpected and mis-shaped tensor.
/// `may_be_missing` says which module paths the caller initialises itself.
fn check_result(
    path: &Path,
    result: &ApplyResult,
    may_be_missing: impl Fn(&str) -> bool,
) -> Result<(), CheckpointError> {
    let missing: Vec<String> =
        result.missing.iter().map(|(p, _)| p.as_str()).filter(|p| !may_be_missing(p)).map(hf_name).collect();
    // Head tensors of another architecture (e.g. `score.weight` when loading an LM) are not errors.
    let unexpected: Vec<String> = result
        .unused
        .iter()
        .filter(|k| !is_ignored_key(k) && !k.starts_with("score.") && !k.starts_with("v_head."))
        .map(|k| hf_name(k))
        .collect();
    let mut misshaped = Vec::new();
    for error in &result.errors {
        match error {
            ApplyError::ShapeMismatch { path, expected, found } => misshaped.push(format!(
                "{} expected {:?} found {:?}",
                hf_name(path),
                expected.as_slice(),
                found.as_slice()
            )),
            other => {
                return Err(CheckpointError::Read { path: path.to_path_buf(), message: other.to_string() });
            }
        }
    }
    if missing.is_empty() && unexpected.is_empty() && misshaped.is_empty() {
        Ok(())
    } else {
        Err(CheckpointError::Mismatch { path: path.to_path_buf(), missing, unexpected, misshaped })
    }
}

/// Writes `model` as a transformers directory: `config.json`, `model.safetensors` (the trunk and
/// its head: a score head, or TRL's value head), `value_head.safetensors` (the value head again,
/// if any), and the tokenizer files. `AutoModelForCausalLM` (or
/// `AutoModelForSequenceClassification` for a score head) loads it, and TRL's
/// `AutoModelForCausalLMWithValueHead` loads a policy with its value head.
///
/// The directory is written next to `out` and renamed into place, so a failure leaves no
/// partial output; an existing `out` is an error.
pub fn export<B: Backend>(
    model: &Gpt2<B>,
    config: &Gpt2Config,
    tokenizer: &Tokenizer,
    out: &Path,
) -> Result<(), CheckpointError> {
    if out.exists() {
        return Err(CheckpointError::Write {
            path: out.to_path_buf(),
            message: "already exists; choose a new directory or remove it first".into(),
        });
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| write_error(parent, e))?;
    let staging =
        tempfile::Builder::new().prefix(".rlhf-export-").tempdir_in(parent).map_err(|e| write_error(parent, e))?;
    write_dir(model, config, tokenizer, staging.path())?;
    let staged = staging.keep();
    std::fs::rename(&staged, out).map_err(|e| {
        let _ = std::fs::remove_dir_all(&staged);
        write_error(out, e)
    })?;
    Ok(())
}

/// Writes the files of [`export`] into an existing directory (a run directory that also holds
/// checkpoints and metrics), staging them first so a failure leaves the old files in place.
pub fn export_into<B: Backend>(
    model: &Gpt2<B>,
    config: &Gpt2Config,
    tokenizer: &Tokenizer,
    dir: &Path,
) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(dir).map_err(|e| write_error(dir, e))?;
    let staging = tempfile::Builder::new().prefix(".rlhf-export-").tempdir_in(dir).map_err(|e| write_error(dir, e))?;
    write_dir(model, config, tokenizer, staging.path())?;
    for entry in std::fs::read_dir(staging.path()).map_err(|e| write_error(staging.path(), e))? {
        let entry = entry.map_err(|e| write_error(staging.path(), e))?;
        let target = dir.join(entry.file_name());
        std::fs::rename(entry.path(), &target).map_err(|e| write_error(&target, e))?;
    }
    Ok(())
}

fn write_error(path: &Path, error: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Write { path: path.to_path_buf(), message: error.to_string() }
}

/// The parameters of `model` holding a NaN or an infinity, by checkpoint name.
pub fn non_finite_tensors<B: Backend>(model: &Gpt2<B>) -> Vec<String> {
    model
        .collect(None, None, false)
        .into_iter()
        .filter(|snapshot| snapshot.to_data().map(|data| data.iter::<f32>().any(|v| !v.is_finite())).unwrap_or(false))
        .map(|snapshot| snapshot.full_path())
        .collect()
}

/// Writes the files of [`export`] into the existing directory `dir`.
pub(crate) fn write_dir<B: Backend>(
    model: &Gpt2<B>,
    config: &Gpt2Config,
    tokenizer: &Tokenizer,
    dir: &Path,
) -> Result<(), CheckpointError> {
    // A model with NaN or infinite weights is never written: it could only produce garbage.
    let bad = non_finite_tensors(model);
    if !bad.is_empty() {
        return Err(CheckpointError::NonFinite { path: dir.to_path_buf(), tensors: bad });
    }
    let architecture = match model.heads() {
        Heads::Score { .. } => "GPT2ForSequenceClassification",
        Heads::Lm | Heads::LmValue => "GPT2LMHeadModel",
    };
    let mut config = config.clone();
    config.eos_token_id = Some(tokenizer.eos_id());
    config.bos_token_id = config.bos_token_id.or(Some(tokenizer.eos_id()));
    config.save(&dir.join(CONFIG_FILE), architecture)?;

    // transformers refuses safetensors files whose metadata lacks format=pt.
    let weights = dir.join(SAFETENSORS_FILE);
    let mut store = SafetensorsStore::from_file(&weights)
        .with_regex(r"^(transformer|score|v_head)\.")
        .remap(save_remapper())
        .clear_metadata()
        .metadata("format", "pt");
    model.save_into(&mut store).map_err(|e| write_error(&weights, e))?;
    if model.v_head.is_some() {
        let path = dir.join(VALUE_HEAD_FILE);
        let mut store =
            SafetensorsStore::from_file(&path).with_regex(r"^v_head\.").clear_metadata().metadata("format", "pt");
        model.save_into(&mut store).map_err(|e| write_error(&path, e))?;
    }
    tokenizer.save_hf(dir)?;
    Ok(())
}

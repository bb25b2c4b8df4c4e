//! Model names to directories: a local path is used as is; anything else is a Hugging Face hub id
//! (`gpt2`, `openai-community/gpt2`) resolved through the local hub cache, then the network.

use std::path::{Path, PathBuf};

use crate::error::HubError;

/// Files a GPT-2 directory needs; others in the repository are not downloaded.
#[cfg(feature = "hub")]
const WANTED: &[&str] = &[
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// `Some(path)` when `name` is an existing local path; an error when it was meant as a path but
/// does not exist; `None` when it is a hub id (`name` or `owner/name`). `dots_mean_path`: a dot
/// marks a file name (`train.jsonl`), as it does for datasets but not for models (`gpt-neo-1.3B`).
fn local_path(name: &str, dots_mean_path: bool) -> Result<Option<PathBuf>, HubError> {
    let path = Path::new(name);
    if path.exists() {
        return Ok(Some(path.to_path_buf()));
    }
    let looks_like_path = name.is_empty()
        || name.starts_with(['.', '/', '~'])
        || name.matches('/').count() > 1
        || name.contains('\\')
        || (dots_mean_path && name.contains('.'));
    if looks_like_path {
        return Err(HubError::NoSuchDir { path: path.to_path_buf() });
    }
    Ok(None)
}

/// Resolves `name` to a local model directory.
pub fn resolve(name: &str) -> Result<PathBuf, HubError> {
    match local_path(name, false)? {
        Some(path) => Ok(path),
        None => download(name),
    }
}

/// Resolves a dataset: a local file or directory as is; otherwise a hub dataset id (`imdb`,
/// `stanfordnlp/imdb`) whose `split` parquet file is fetched (`<split>-*.parquet`, as the hub
/// stores converted datasets).
pub fn resolve_dataset(name: &str, split: &str) -> Result<PathBuf, HubError> {
    match local_path(name, true)? {
        Some(path) => Ok(path),
        None => download_dataset(name, split),
    }
}

#[cfg(feature = "hub")]
fn download_dataset(name: &str, split: &str) -> Result<PathBuf, HubError> {
    let unreachable =
        |e: &dyn std::fmt::Display| HubError::Unreachable { name: name.to_string(), message: e.to_string() };
    let (owner, repo) = hf_hub::split_id(name);
    let client = hf_hub::HFClient::builder().retry_max_attempts(1).build_sync().map_err(|e| unreachable(&e))?;
    let dataset = client.dataset(owner, repo);
    let patterns = vec![format!("{split}-*.parquet"), format!("*/{split}-*.parquet")];
    let dir = match dataset.snapshot_download().allow_patterns(patterns.clone()).local_files_only(true).send() {
        Ok(dir) => dir,
        Err(_) => dataset.snapshot_download().allow_patterns(patterns).send().map_err(|e| unreachable(&e))?,
    };
    find_parquet(&dir, split).ok_or_else(|| unreachable(&format!("no {split}-*.parquet in the dataset")))
}

/// The first shard of `split` under `dir` (the loader reads the rest of its set: see
/// [`crate::data::shards`]).
#[cfg(feature = "hub")]
fn find_parquet(dir: &Path, split: &str) -> Option<PathBuf> {
    let mut found = Vec::new();
    collect_parquet(dir, split, &mut found);
    found.sort();
    found.into_iter().next()
}

#[cfg(feature = "hub")]
fn collect_parquet(dir: &Path, split: &str, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if path.is_dir() {
            collect_parquet(&path, split, found);
        } else if name.starts_with(&format!("{split}-")) && name.ends_with(".parquet") {
            found.push(path);
        }
    }
}

#[cfg(not(feature = "hub"))]
fn download_dataset(name: &str, _split: &str) -> Result<PathBuf, HubError> {
    Err(HubError::Disabled { name: name.to_string() })
}

#[cfg(feature = "hub")]
fn download(name: &str) -> Result<PathBuf, HubError> {
    let unreachable =
        |e: &dyn std::fmt::Display| HubError::Unreachable { name: name.to_string(), message: e.to_string() };
    let (owner, repo) = hf_hub::split_id(name);
    // One attempt, no retries: offline, the answer should come in seconds, not minutes.
    let client = hf_hub::HFClient::builder().retry_max_attempts(1).build_sync().map_err(|e| unreachable(&e))?;
    let model = client.model(owner, repo);
    let allow: Vec<String> = WANTED.iter().map(|s| s.to_string()).collect();
    let has_weights = |dir: &Path| {
        dir.join(crate::model::hf::SAFETENSORS_FILE).exists() || dir.join(crate::model::hf::PYTORCH_FILE).exists()
    };
    if let Ok(dir) = model.snapshot_download().allow_patterns(allow.clone()).local_files_only(true).send()
        && dir.join("config.json").exists()
        && has_weights(&dir)
    {
        return Ok(dir);
    }
    tracing::info!(model = name, "downloading from the Hugging Face hub");
    let dir = model.snapshot_download().allow_patterns(allow).send().map_err(|e| unreachable(&e))?;
    // Older repositories ship only PyTorch's pickle; `hf::load` reads it.
    if !dir.join(crate::model::hf::SAFETENSORS_FILE).exists() {
        let pickle = vec![crate::model::hf::PYTORCH_FILE.to_string()];
        return model.snapshot_download().allow_patterns(pickle).send().map_err(|e| unreachable(&e));
    }
    Ok(dir)
}

#[cfg(not(feature = "hub"))]
fn download(name: &str) -> Result<PathBuf, HubError> {
    Err(HubError::Disabled { name: name.to_string() })
}

//! `--model DIR | --init PRESET` for the training commands.

use std::path::PathBuf;

use anyhow::{Context, bail};
use burn::tensor::backend::Backend;
use clap::Args;
use rlhf_trainer::{Gpt2, Gpt2Config, Heads, Tokenizer, hf, hub};

#[derive(Args, Clone)]
pub struct ModelSource {
    /// Start from this model directory or hub id.
    #[arg(long, conflicts_with = "init")]
    pub model: Option<String>,
    /// Start from random weights with this preset (tiny, nano, distilgpt2, gpt2, ...); its
    /// vocabulary is sized to the tokenizer.
    #[arg(long)]
    pub init: Option<String>,
    /// Tokenizer file or directory (default: the model directory's).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

impl ModelSource {
    /// The model with `heads` (new heads are freshly initialised), its config and tokenizer.
    pub fn load<B: Backend>(&self, heads: Heads, device: &B::Device) -> anyhow::Result<(Gpt2Config, Gpt2<B>, Tokenizer)> {
        match (&self.model, &self.init) {
            (Some(name), _) => {
                let dir = hub::resolve(name)?;
                let (config, model) = hf::load_as::<B>(&dir, heads, device).with_context(|| format!("loading model {}", dir.display()))?;
                let tokenizer = Tokenizer::load(self.tokenizer.as_deref().unwrap_or(&dir))?;
                if tokenizer.vocab_size() > config.vocab_size {
                    bail!("the tokenizer has {} tokens but the model only {}", tokenizer.vocab_size(), config.vocab_size);
                }
                Ok((config, model, tokenizer))
            }
            (None, Some(preset)) => {
                let path = self.tokenizer.as_deref().context("--init needs --tokenizer (a tokenizer.json or a directory)")?;
                let tokenizer = Tokenizer::load(path)?;
                let mut config = Gpt2Config::preset(preset)?;
                config.vocab_size = tokenizer.vocab_size();
                config.eos_token_id = Some(tokenizer.eos_id());
                config.bos_token_id = Some(tokenizer.eos_id());
                let model = config.init::<B>(heads, device);
                Ok((config, model, tokenizer))
            }
            (None, None) => bail!("pass --model DIR or --init PRESET"),
        }
    }
}

/// A dataset argument: a local file or folder, or a hub dataset id (its `split` parquet file).
pub fn data_path(arg: &std::path::Path, split: &str) -> anyhow::Result<std::path::PathBuf> {
    Ok(hub::resolve_dataset(&arg.to_string_lossy(), split)?)
}

/// Makes a run directory; an existing one must be resumed explicitly.
pub fn run_dir(out: &std::path::Path, resume: bool) -> anyhow::Result<()> {
    if out.join("config.json").exists() && !resume {
        bail!("{} already holds a model; pass --resume to continue it, or choose another --out", out.display());
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))
}

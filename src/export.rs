//! `rlhf export`: any model rlhf can load, written as a transformers directory.

use std::path::PathBuf;

use anyhow::Context;
use burn::backend::Flex;
use clap::Args;
use rlhf_trainer::{Tokenizer, hub, model::hf};

#[derive(Args)]
pub struct ExportArgs {
    /// Model directory, training checkpoint directory or hub id.
    #[arg(long)]
    model: String,
    /// Directory to create; it must not exist yet.
    #[arg(long)]
    out: PathBuf,
    /// Tokenizer file or directory, when the model directory has none.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
}

pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    let dir = hub::resolve(&args.model)?;
    let device = Default::default();
    let (config, model) =
        hf::load::<Flex>(&dir, &device).with_context(|| format!("loading model {}", dir.display()))?;
    let tokenizer = Tokenizer::load(args.tokenizer.as_deref().unwrap_or(&dir))
        .context("the exported directory needs tokenizer files; pass --tokenizer")?;
    hf::export(&model, &config, &tokenizer, &args.out)?;
    tracing::info!(out = %args.out.display(), heads = ?model.heads(), "exported");
    println!("{}", args.out.display());
    Ok(())
}

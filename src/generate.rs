//! `rlhf generate` and `rlhf logprobs`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::backend::Backend;
use clap::{Args, ValueEnum};
use rlhf_trainer::{Gpt2, Gpt2Config, SamplingConfig, Tokenizer, hub, model::hf};

use crate::device::Device;
use crate::with_backend;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Model directory (config.json, model.safetensors, tokenizer.json) or hub id such as `gpt2`.
    #[arg(long)]
    model: String,
    /// A prompt; repeat the flag for a batch.
    #[arg(long = "prompt", required = true)]
    prompts: Vec<String>,
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Pick the most likely token at every step.
    #[arg(long, conflicts_with_all = ["temperature", "top_k", "top_p"])]
    greedy: bool,
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Sample from the K most likely tokens only (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample from the smallest set of tokens whose probability reaches P.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Keep generating after an end-of-text token.
    #[arg(long)]
    ignore_eos: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "cpu")]
    device: Device,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

#[derive(Args)]
pub struct LogprobsArgs {
    /// Model directory or hub id.
    #[arg(long)]
    model: String,
    /// A text; repeat the flag for a batch.
    #[arg(long = "text", required = true)]
    texts: Vec<String>,
    #[arg(long, default_value = "cpu")]
    device: Device,
}

/// Resolves a model name and loads model and tokenizer.
pub fn load_model<B: Backend>(
    name: &str,
    device: &B::Device,
) -> anyhow::Result<(PathBuf, Gpt2Config, Gpt2<B>, Tokenizer)> {
    let dir = hub::resolve(name)?;
    let (config, model) = hf::load::<B>(&dir, device).with_context(|| format!("loading model {}", dir.display()))?;
    let tokenizer = Tokenizer::load(&dir)?;
    crate::models::check_vocabularies(&dir, &tokenizer, config.vocab_size)?;
    Ok((dir, config, model, tokenizer))
}

pub fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let sampling = SamplingConfig {
        max_new_tokens: args.max_new_tokens,
        greedy: args.greedy,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        stop_at_eos: !args.ignore_eos,
        seed: args.seed,
    };
    sampling.validate()?;
    with_backend!(args.device, |B, device| {
        let (_, _, model, tokenizer) = load_model::<B>(&args.model, &device)?;
        let prompt_ids = args.prompts.iter().map(|p| tokenizer.encode(p)).collect::<Result<Vec<_>, _>>()?;
        let out = rlhf_trainer::generate(&model, &prompt_ids, tokenizer.eos_id(), &sampling, &device)?;
        let mut stdout = std::io::stdout().lock();
        for (i, prompt) in args.prompts.iter().enumerate() {
            let completion = tokenizer.decode(&out.completion_ids[i])?;
            match args.format {
                Format::Json => {
                    let line = serde_json::json!({
                        "prompt": prompt,
                        "prompt_ids": prompt_ids[i],
                        "completion_ids": out.completion_ids[i],
                        "completion": completion,
                        "logprobs": out.logprobs[i],
                    });
                    writeln!(stdout, "{line}")?;
                }
                Format::Text => writeln!(stdout, "{prompt}{completion}\n")?,
            }
        }
        Ok(())
    })
}

pub fn logprobs(args: LogprobsArgs) -> anyhow::Result<()> {
    with_backend!(args.device, |B, device| {
        let (_, _, model, tokenizer) = load_model::<B>(&args.model, &device)?;
        let ids = args.texts.iter().map(|t| tokenizer.encode(t)).collect::<Result<Vec<_>, _>>()?;
        let scored = rlhf_trainer::infer::scoring::score(&model, &ids, tokenizer.pad_id(), 1.0, true, &device)?;
        let mut stdout = std::io::stdout().lock();
        for (ids, logprobs) in ids.iter().zip(&scored.logprobs) {
            writeln!(stdout, "{}", serde_json::json!({"ids": ids, "logprobs": logprobs}))?;
        }
        Ok(())
    })
}

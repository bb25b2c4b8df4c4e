//! `rlhf sft`: causal-LM fine-tuning into a Hugging Face directory, with checkpoints and resume.

use std::path::PathBuf;

use anyhow::Context;
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use clap::Args;
use rlhf_trainer::AutodiffKernels;
use rlhf_trainer::data::{OnMalformed, clean_review, load_sft_texts};
use rlhf_trainer::sft::SftConfig;
use rlhf_trainer::train::{STATE_FILE, TrainerState, latest_checkpoint, load_checkpoint, save_checkpoint};
use rlhf_trainer::{Heads, Tokenizer, model::hf, sft};

use crate::device::Device;
use crate::models::{ColumnArgs, ModelSource, data_path, run_dir};
use crate::progress::{MetricsFile, bar, summary};
use crate::{config, with_backend};

#[derive(Args)]
pub struct SftArgs {
    #[command(flatten)]
    source: ModelSource,
    /// Training texts: .jsonl, .parquet or .csv with TRL's columns ("text"; "prompt" +
    /// "completion"; or "messages", a conversation), .txt (one per line), an aclImdb folder, or a
    /// hub dataset id such as `imdb` (its train split).
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    columns: ColumnArgs,
    /// Held-out texts; default: the last --eval-fraction of --data.
    #[arg(long)]
    eval_data: Option<PathBuf>,
    #[arg(long, default_value_t = 0.05)]
    eval_fraction: f64,
    /// Use only the first N training texts.
    #[arg(long)]
    max_examples: Option<usize>,
    /// Skip malformed rows (and count them) instead of stopping.
    #[arg(long)]
    skip_malformed: bool,
    /// Run directory: the final model (a Hugging Face directory), checkpoints/, metrics.jsonl.
    #[arg(long)]
    out: PathBuf,
    /// Continue from the newest checkpoint in --out.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Clear --out first if it already holds a run (otherwise such a directory is refused).
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    flags: config::TrainFlags,
    #[arg(long, default_value = "cpu")]
    device: Device,
}

/// Texts to token ids with end-of-text, cut to `max_length`.
pub fn tokenize_texts(texts: &[String], tokenizer: &Tokenizer, max_length: usize) -> anyhow::Result<Vec<Vec<u32>>> {
    texts
        .iter()
        .map(|t| {
            // Only the first max_length tokens are kept: never tokenise more of a long text.
            let mut ids = tokenizer.encode_prefix(&clean_review(t), max_length)?;
            if ids.len() < max_length {
                ids.push(tokenizer.eos_id());
            }
            Ok(ids)
        })
        .collect()
}

pub fn run(args: SftArgs) -> anyhow::Result<()> {
    let sft_config: SftConfig = args.flags.resolve()?;
    with_backend!(args.device, |B, device| train::<Autodiff<B>>(&args, &sft_config, &device))
}

fn train<B: AutodiffKernels>(args: &SftArgs, sft_config: &SftConfig, device: &B::Device) -> anyhow::Result<()> {
    let _run_dir = run_dir(&args.out, args.resume, args.overwrite)?;
    let on_malformed = if args.skip_malformed { OnMalformed::Skip } else { OnMalformed::Error };
    let columns = args.columns.columns();
    let mut texts: Vec<String> = load_sft_texts(&data_path(&args.data, "train")?, &columns, on_malformed)?
        .rows
        .into_iter()
        .map(|r| r.text)
        .collect();
    if let Some(n) = args.max_examples {
        texts.truncate(n);
    }
    let eval_texts: Vec<String> = match &args.eval_data {
        Some(path) => load_sft_texts(&data_path(path, "test")?, &columns, on_malformed)?
            .rows
            .into_iter()
            .map(|r| r.text)
            .collect(),
        None => {
            let n_eval = ((texts.len() as f64) * args.eval_fraction).round() as usize;
            texts.split_off(texts.len() - n_eval.min(texts.len().saturating_sub(1)))
        }
    };

    let checkpoints = args.out.join("checkpoints");
    let resume_from =
        if args.resume { latest_checkpoint(&checkpoints, "step-", STATE_FILE).map(|(_, dir)| dir) } else { None };
    // Records past the checkpoint belong to the attempt that was cut short: drop them, so the
    // files read as one run.
    let covered = match &resume_from {
        Some(dir) => rlhf_trainer::train::read_trainer_state(dir)?.step,
        None => 0,
    };
    if args.resume {
        let dropped = rlhf_trainer::rundir::truncate_records(&args.out.join("metrics.jsonl"), |r| {
            r["step"].as_u64().is_some_and(|s| s as usize <= covered)
        })?;
        if dropped > 0 {
            tracing::info!(dropped, step = covered, "dropped metrics written after the checkpoint");
        }
    }
    let (model_config, model, optim, tokenizer, start_step) = match &resume_from {
        Some(dir) => {
            let (model_config, model, optim, state) = load_checkpoint::<B>(dir, sft_config.optim.adamw(), device)?;
            tracing::info!(checkpoint = %dir.display(), step = state.step, "resuming");
            (model_config, model, optim, Tokenizer::load(dir)?, state.step)
        }
        None => {
            let (model_config, model, tokenizer) = args.source.load::<B>(Heads::Lm, device)?;
            (model_config.with_dropout(0.0), model, sft_config.optim.adamw(), tokenizer, 0)
        }
    };
    let train_rows = tokenize_texts(&texts, &tokenizer, sft_config.max_length)?;
    let eval_rows = tokenize_texts(&eval_texts, &tokenizer, sft_config.max_length)?;
    config::write(sft_config, &args.out.join("sft_config.toml"))?;
    tracing::info!(train = train_rows.len(), eval = eval_rows.len(), start_step, "sft");

    let mut metrics = MetricsFile::create(&args.out.join("metrics.jsonl"))?;
    let mut bar_slot = None;
    let mut write_error = None;
    let started = std::time::Instant::now();
    let mut tokens_seen = 0.0;
    let outcome = sft::train(
        model,
        optim,
        &train_rows,
        &eval_rows,
        sft_config,
        start_step,
        tokenizer.pad_id(),
        device,
        &mut |p| {
            let bar = bar_slot.get_or_insert_with(|| {
                let bar = bar(p.total, "sft");
                bar.set_position(start_step as u64);
                bar
            });
            bar.set_position(p.step as u64);
            tokens_seen += p.metrics.get("train/tokens").copied().unwrap_or(0.0);
            let tokens_per_s = tokens_seen / started.elapsed().as_secs_f64().max(1e-9);
            let message = summary(p.metrics, &["train/loss", "eval/loss", "eval/perplexity"]);
            bar.set_message(format!("{message} tokens/s={tokens_per_s:.0}"));
            if let Err(e) = metrics.write(p.step, p.metrics) {
                write_error.get_or_insert(e);
            }
        },
        &mut |model, optim, step, total| {
            let state =
                TrainerState { step, total_steps: total, config: serde_json::to_value(sft_config).unwrap_or_default() };
            save_checkpoint(&checkpoints.join(format!("step-{step}")), model, &model_config, &tokenizer, optim, &state)
        },
    )?;
    if let Some(bar) = bar_slot {
        bar.finish();
    }
    if let Some(e) = write_error {
        return Err(e);
    }
    hf::export_into(&outcome.model.valid(), &model_config, &tokenizer, &args.out).context("writing the final model")?;
    if let Some(last) = outcome.evals.last() {
        tracing::info!(eval_loss = last["eval/loss"], perplexity = last["eval/perplexity"], "sft finished");
        std::fs::write(args.out.join("eval_results.json"), serde_json::to_string_pretty(last)?)?;
    }
    crate::report::write_for_run(&args.out);
    println!("{}", args.out.display());
    Ok(())
}

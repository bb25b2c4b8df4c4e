//! `rlhf reward train` and `rlhf reward score`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use clap::{Args, Subcommand, ValueEnum};
use rlhf_trainer::AutodiffKernels;
use rlhf_trainer::data::{
    OnMalformed, PairTruncation, PreferencePair, load_comparisons, load_labelled, load_preferences, sentiment_pairs,
};
use rlhf_trainer::reward::{RewardConfig, normalize, tokenize_pairs};
use rlhf_trainer::{Heads, infer::scoring, model::hf, reward};

use crate::device::Device;
use crate::generate::load_model;
use crate::models::{ColumnArgs, ModelSource, data_path, run_dir};
use crate::progress::{MetricsFile, bar, summary};
use crate::{config, with_backend};

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once from the command line
pub enum RewardCommand {
    /// Train a reward model (GPT-2 with a score head) on preference pairs.
    Train(TrainArgs),
    /// Print the reward of texts as JSON lines.
    Score(ScoreArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PairFormat {
    /// Labelled reviews ({"text", "label"}: JSONL, CSV, parquet or aclImdb): positive chosen over
    /// negative.
    Sentiment,
    /// TRL's preference rows {"prompt", "chosen", "rejected"} (prompt optional; strings or
    /// conversations) in JSONL, CSV or parquet, or a hub dataset id.
    Trl,
    /// OpenAI summarize-from-feedback comparisons.
    Comparisons,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    Positive,
    Negative,
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    source: ModelSource,
    #[arg(long)]
    data: PathBuf,
    #[arg(long, value_enum, default_value = "sentiment")]
    format: PairFormat,
    #[command(flatten)]
    columns: ColumnArgs,
    /// Held-out data in the same format; default: the last --eval-fraction of the pairs.
    #[arg(long)]
    eval_data: Option<PathBuf>,
    #[arg(long, default_value_t = 0.1)]
    eval_fraction: f64,
    /// Sentiment pairs: which label is preferred.
    #[arg(long, value_enum, default_value = "positive")]
    target: Target,
    /// Sentiment pairs: keep the first N tokens of each review (0: whole reviews).
    #[arg(long, default_value_t = 0)]
    truncate_tokens: usize,
    /// Use only the first N pairs for training.
    #[arg(long)]
    max_pairs: Option<usize>,
    /// Rescale the score so the training texts score with mean 0 and std 1.
    #[arg(long)]
    normalize: bool,
    #[arg(long)]
    skip_malformed: bool,
    /// Run directory: the reward model (a Hugging Face directory), metrics.jsonl, eval_results.json.
    #[arg(long)]
    out: PathBuf,
    /// Clear --out first if it already holds a run (otherwise such a directory is refused).
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    flags: config::TrainFlags,
    #[arg(long, default_value = "cpu")]
    device: Device,
}

#[derive(Args)]
pub struct ScoreArgs {
    /// Reward model directory or hub id.
    #[arg(long)]
    model: String,
    /// Put before every text (e.g. a TL;DR post).
    #[arg(long, default_value = "")]
    prompt: String,
    #[arg(long = "text", required = true)]
    texts: Vec<String>,
    #[arg(long, default_value = "cpu")]
    device: Device,
}

pub fn run(command: RewardCommand) -> anyhow::Result<()> {
    match command {
        RewardCommand::Train(args) => {
            let reward_config: RewardConfig = args.flags.resolve()?;
            with_backend!(args.device, |B, device| train::<Autodiff<B>>(&args, &reward_config, &device))
        }
        RewardCommand::Score(args) => score(args),
    }
}

fn load_pairs(
    args: &TrainArgs,
    path: &std::path::Path,
    tokenizer: &rlhf_trainer::Tokenizer,
) -> anyhow::Result<Vec<PreferencePair>> {
    let on_malformed = if args.skip_malformed { OnMalformed::Skip } else { OnMalformed::Error };
    Ok(match args.format {
        PairFormat::Trl => load_preferences(path, &args.columns.columns(), on_malformed)?.rows,
        PairFormat::Comparisons => load_comparisons(path, on_malformed)?.rows,
        PairFormat::Sentiment => {
            let examples = load_labelled(path, &args.columns.columns(), on_malformed)?.rows;
            let preferred = if args.target == Target::Positive { 1 } else { 0 };
            let truncation = if args.truncate_tokens > 0 {
                PairTruncation::Tokens(args.truncate_tokens)
            } else {
                PairTruncation::Whole
            };
            sentiment_pairs(&examples, preferred, truncation, tokenizer, 0)?
        }
    })
}

fn train<B: AutodiffKernels>(args: &TrainArgs, reward_config: &RewardConfig, device: &B::Device) -> anyhow::Result<()> {
    let _run_dir = run_dir(&args.out, false, args.overwrite)?;
    let (model_config, model, tokenizer) = args.source.load::<B>(Heads::Score { num_labels: 1 }, device)?;
    let mut pairs = load_pairs(args, &data_path(&args.data, "train")?, &tokenizer)?;
    let mut eval_pairs = match &args.eval_data {
        Some(path) => load_pairs(args, &data_path(path, "test")?, &tokenizer)?,
        None => {
            let n_eval = ((pairs.len() as f64) * args.eval_fraction).round() as usize;
            pairs.split_off(pairs.len() - n_eval.min(pairs.len().saturating_sub(1)))
        }
    };
    if let Some(n) = args.max_pairs {
        pairs.truncate(n);
        eval_pairs.truncate(n.max(50));
    }
    let train_ids = tokenize_pairs(&pairs, &tokenizer, reward_config.max_length)?;
    let eval_ids = tokenize_pairs(&eval_pairs, &tokenizer, reward_config.max_length)?;
    config::write(reward_config, &args.out.join("reward_config.toml"))?;
    tracing::info!(train = train_ids.len(), eval = eval_ids.len(), "reward model training");

    let mut metrics = MetricsFile::create(&args.out.join("metrics.jsonl"))?;
    let mut progress_bar = None;
    let mut write_error = None;
    let (model, evals) =
        reward::train(model, &train_ids, &eval_ids, reward_config, tokenizer.pad_id(), device, &mut |p| {
            let bar = progress_bar.get_or_insert_with(|| bar(p.total, "reward"));
            bar.set_position(p.step as u64);
            bar.set_message(summary(p.metrics, &["train/loss", "eval/accuracy"]));
            if let Err(e) = metrics.write(p.step, p.metrics) {
                write_error.get_or_insert(e);
            }
        })?;
    if let Some(bar) = progress_bar {
        bar.finish();
    }
    if let Some(e) = write_error {
        return Err(e);
    }
    let mut model = model.valid();
    let mut results = evals.last().cloned().unwrap_or_default();
    if args.normalize {
        let rows: Vec<Vec<u32>> = train_ids.iter().flat_map(|p| [p.chosen.clone(), p.rejected.clone()]).collect();
        let (mean, std) = normalize(&mut model, &rows, tokenizer.pad_id(), reward_config.batch_size, device);
        tracing::info!(mean, std, "normalised rewards to mean 0, std 1 on the training texts");
        results.insert("normalization/mean_before".into(), mean);
        results.insert("normalization/std_before".into(), std);
        // Measured again on the normalised model: ~0 and ~1.
        let after = reward::evaluate(&model, &train_ids, reward_config, tokenizer.pad_id(), device);
        results.insert("normalization/mean_after".into(), after["eval/reward_mean"]);
        results.insert("normalization/std_after".into(), after["eval/reward_std"]);
    }
    hf::export_into(&model, &model_config, &tokenizer, &args.out).context("writing the reward model")?;
    std::fs::write(args.out.join("eval_results.json"), serde_json::to_string_pretty(&results)?)?;
    if let Some(accuracy) = results.get("eval/accuracy") {
        tracing::info!(accuracy, "reward model finished");
    }
    crate::report::write_for_run(&args.out);
    println!("{}", args.out.display());
    Ok(())
}

fn score(args: ScoreArgs) -> anyhow::Result<()> {
    with_backend!(args.device, |B, device| {
        let (_, _, model, tokenizer) = load_model::<B>(&args.model, &device)?;
        anyhow::ensure!(model.score.is_some(), "{} is not a reward model (no score head)", args.model);
        let rows = args
            .texts
            .iter()
            .map(|t| tokenizer.encode(&format!("{}{t}", args.prompt)))
            .collect::<Result<Vec<_>, _>>()?;
        let scored = scoring::score(&model, &rows, tokenizer.pad_id(), 1.0, false, &device)?;
        let mut stdout = std::io::stdout().lock();
        for (text, score) in args.texts.iter().zip(scored.scores.unwrap_or_default()) {
            writeln!(stdout, "{}", serde_json::json!({"text": text, "score": score[0]}))?;
        }
        Ok(())
    })
}

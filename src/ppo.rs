//! `rlhf ppo --local`: the single-process PPO loop (generate, score, update).

use std::path::PathBuf;

use anyhow::{Context, bail};
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use clap::Args;
use rlhf_trainer::AutodiffKernels;
use rlhf_trainer::model::hf;
use rlhf_trainer::ppo::local::{self as ppo_local, LocalConfig};
use rlhf_trainer::ppo::{CriticKind, PpoTrainer};
use toml::Value;

use crate::device::Device;
use crate::models::{ColumnArgs, PolicySetup, load_critic, load_policy, scorer};
use crate::progress::MetricsFile;
use crate::reward::Target;
use crate::{config, with_backend};

#[derive(Args)]
pub struct PpoArgs {
    /// Run in one process. Distributed PPO is `rlhf run` (or `rlhf learner` + `rlhf worker` +
    /// `rlhf reward-server` on separate machines).
    #[arg(long)]
    local: bool,
    /// Policy to start from (an SFT model directory or hub id); a value head is added if absent.
    #[arg(long)]
    model: String,
    /// Reward model directory.
    #[arg(long, conflicts_with = "lexicon", required_unless_present = "lexicon")]
    reward_model: Option<String>,
    /// Word-weight lexicon instead of a reward model: a file of `word weight` lines, or a
    /// directory with aclImdb's imdb.vocab + imdbEr.txt.
    #[arg(long)]
    lexicon: Option<PathBuf>,
    /// Value model (`critic` in the config): a value head on the policy's trunk (TRL's classic
    /// PPO, the default), or a separate critic initialised from the reward model (N+ / TRL's
    /// newer trainer; needs --reward-model).
    #[arg(long, value_parser = ["shared", "reward-model"])]
    critic: Option<String>,
    /// Train towards positive (default) or negative scores.
    #[arg(long, value_enum, default_value = "positive")]
    target: Target,
    /// Prompts: TRL's prompt-only rows (a "prompt" column: a string, or a conversation), or texts
    /// to cut prompts from (see prompts.* in the config): .jsonl, .csv, .parquet, .txt, aclImdb,
    /// or a hub dataset id.
    #[arg(long)]
    prompts: PathBuf,
    #[command(flatten)]
    columns: ColumnArgs,
    /// Run directory: metrics.jsonl, ppo_config.toml and the trained policy.
    #[arg(long)]
    out: PathBuf,
    /// Clear --out first if it already holds a run (otherwise such a directory is refused).
    #[arg(long)]
    overwrite: bool,
    /// Config fields: iterations, batch_size, sampling.*, ppo.*, prompts.*.
    #[command(flatten)]
    config: config::ConfigArgs,
    #[arg(long)]
    iterations: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value = "cpu")]
    device: Device,
}

pub fn run(args: PpoArgs) -> anyhow::Result<()> {
    if !args.local {
        bail!(
            "`rlhf ppo` trains in one process and needs --local; distributed PPO is `rlhf run --config learner.toml` \
             (or `rlhf learner`, `rlhf worker` and `rlhf reward-server`; see deploy/README.md)"
        );
    }
    let mut flags = Vec::new();
    if let Some(v) = args.iterations {
        flags.push(("iterations", Value::Integer(v as i64)));
    }
    if let Some(v) = args.batch_size {
        flags.push(("batch_size", Value::Integer(v as i64)));
    }
    if let Some(v) = &args.critic {
        flags.push(("critic", Value::String(v.clone())));
    }
    if let Some(v) = args.seed {
        for key in ["sampling.seed", "ppo.seed", "prompts.seed"] {
            flags.push((key, Value::Integer(v as i64)));
        }
    }
    let local: LocalConfig = config::resolve(args.config.config.as_deref(), flags, &args.config.sets)?;
    let local = local.resolve(false);
    with_backend!(args.device, |B, device| train::<Autodiff<B>>(&args, &local, &device))
}

fn train<B: AutodiffKernels>(args: &PpoArgs, local: &LocalConfig, device: &B::Device) -> anyhow::Result<()> {
    let _run_dir = crate::models::run_dir(&args.out, false, args.overwrite)?;
    let setup = load_policy::<B>(
        &args.model,
        local.critic.policy_heads(),
        &args.prompts,
        &args.columns.columns(),
        &local.prompts,
        device,
    )?;
    let PolicySetup { model_config, policy, reference, tokenizer, prompts } = setup;
    local.validate_for_model(model_config.n_positions).map_err(|e| anyhow::anyhow!("invalid config: {e}"))?;
    let critic = match (local.critic, &args.reward_model) {
        (CriticKind::Shared, _) => None,
        (CriticKind::RewardModel, Some(name)) => Some(load_critic::<B>(name, &tokenizer, device)?),
        (CriticKind::RewardModel, None) => {
            bail!("--critic reward-model (critic = \"reward-model\") needs --reward-model")
        }
    };
    let negate = args.target == Target::Negative;
    let mut scorer =
        scorer::<B::InnerBackend>(args.reward_model.as_deref(), args.lexicon.as_deref(), negate, &tokenizer, device)?;
    config::write(local, &args.out.join("ppo_config.toml"))?;
    tracing::info!(prompts = prompts.len(), scorer = scorer.name(), iterations = local.iterations, "ppo --local");

    let mut trainer = PpoTrainer::<B>::new(policy, critic, reference, local.ppo.clone(), tokenizer.eos_id(), device)?;
    let mut metrics = MetricsFile::create(&args.out.join("metrics.jsonl"))?;
    let mut write_error = None;
    ppo_local::run(&mut trainer, &prompts, scorer.as_mut(), local, tokenizer.eos_id(), device, &mut |it| {
        let s = it.stats;
        tracing::info!(
            iteration = it.index + 1,
            reward = format!("{:.4}", s["env/reward_mean"]),
            kl = format!("{:.4}", s["objective/kl"]),
            kl_coef = format!("{:.4}", s["objective/kl_coef"]),
            policy_loss = format!("{:.4}", s["ppo/loss/policy"]),
            value_loss = format!("{:.4}", s["ppo/loss/value"]),
            seconds = format!("{:.2}", s["time/rollout"] + s["time/score"] + s["time/ppo/total"]),
            "ppo iteration"
        );
        if let Err(e) = metrics.write(it.index + 1, s) {
            write_error.get_or_insert(e);
        }
    })?;
    if let Some(e) = write_error {
        return Err(e);
    }
    hf::export_into(&trainer.policy.valid(), &model_config, &tokenizer, &args.out).context("writing the policy")?;
    if let Some(critic) = &trainer.critic {
        // The critic shares the reward model's architecture: a sequence-classification directory.
        hf::export(&critic.model.valid(), &critic.config, &tokenizer, &args.out.join("critic"))
            .context("writing the critic")?;
    }
    crate::report::write_for_run(&args.out);
    println!("{}", args.out.display());
    Ok(())
}

//! `rlhf learner`: the config, the policy and its run directory ([`RunDir`]: resume,
//! checkpoints, accounting), then [`rlhf_actors::serve`] until the last iteration.

use std::net::SocketAddr;

use anyhow::Context;
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use clap::Args;
use rlhf_actors::LearnerConfig;
use rlhf_actors::coordinator::CoordinatorArgs;
use rlhf_actors::run_dir::{CONFIG_FILE, METRICS_FILE, ROLLOUTS_FILE, RunDir, Start};
use rlhf_trainer::ppo::{CRITIC_DIR, CriticKind, PpoTrainer};
use rlhf_trainer::{AutodiffKernels, model::hf};
use tracing::Instrument;

use super::security::{SecurityArgs, server_security};
use super::{announce, runtime};
use crate::config::{self, ConfigArgs};
use crate::device::Device;
use crate::models::{PolicySetup, load_critic, load_policy};
use crate::progress::MetricsFile;
use crate::with_backend;

#[derive(Args)]
pub struct LearnerArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Resolve and check the config, print it as TOML, and exit.
    #[arg(long)]
    check: bool,
    /// Continue from the newest checkpoint in `out/checkpoints/`: `--resume` fails when there is
    /// none; `--resume auto` then starts afresh, so one command line serves the first start and
    /// every restart (and a finished run exits 0 at once).
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "required", conflicts_with = "overwrite")]
    resume: Option<Resume>,
    /// Clear `out` first if it already holds a run (otherwise such a directory is refused).
    #[arg(long)]
    overwrite: bool,
    /// Address to serve on (default: `listen` in the config, else 127.0.0.1:0).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// A plain-text port serving only the gRPC health service (`health_listen`), for probes
    /// that carry neither client certificates nor tokens.
    #[arg(long)]
    health_listen: Option<SocketAddr>,
    #[command(flatten)]
    security: SecurityArgs,
    #[command(flatten)]
    metrics: super::exporter::MetricsArgs,
    #[arg(long, default_value = "cpu")]
    device: Device,
}

/// `--resume`'s modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Resume {
    /// Resume from the newest checkpoint; fail if there is none.
    Required,
    /// Resume from the newest checkpoint if there is one, otherwise start afresh.
    Auto,
}

pub fn learner(args: LearnerArgs) -> anyhow::Result<()> {
    let mut flags = args.security.flags();
    if let Some(addr) = args.health_listen {
        flags.push(("health_listen", super::string(&addr.to_string())));
    }
    let learner_config: LearnerConfig = config::resolve(args.config.config.as_deref(), flags, &args.config.sets)?;
    let listen = args.listen.or(learner_config.listen).unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
    // The policy's context, when the model is a local directory (else checked once loaded).
    let config_json = std::path::Path::new(&learner_config.model).join("config.json");
    if config_json.is_file() {
        let model_config = rlhf_trainer::Gpt2Config::load(&config_json)?;
        learner_config
            .train
            .validate_for_model(model_config.n_positions)
            .map_err(|e| anyhow::anyhow!("invalid config: {}", e.within("train")))?;
    }
    if args.check {
        print!("{}", toml::to_string_pretty(&learner_config)?);
        return Ok(());
    }
    let run = RunDir::new(&learner_config.out);
    let (resume, overwrite) = match args.resume {
        None => (false, args.overwrite),
        Some(Resume::Required) => (true, false),
        Some(Resume::Auto) if run.finished(&learner_config) => {
            // The run ended (its final accounting is written last): nothing to do, and nothing
            // to restart.
            tracing::info!(out = %learner_config.out.display(), "the run is already finished");
            return Ok(());
        }
        // Nothing to resume: whatever an attempt cut short before its first checkpoint left
        // behind is cleared.
        Some(Resume::Auto) => {
            let checkpointed = run.latest_checkpoint().is_some();
            (checkpointed, !checkpointed)
        }
    };
    with_backend!(args.device, |B, device| run_learner::<Autodiff<B>>(
        learner_config,
        &args.metrics,
        listen,
        resume,
        overwrite,
        device
    ))
}

fn run_learner<B: AutodiffKernels>(
    mut learner_config: LearnerConfig,
    exporter: &super::exporter::MetricsArgs,
    listen: SocketAddr,
    resume: bool,
    overwrite: bool,
    device: B::Device,
) -> anyhow::Result<()> {
    learner_config.train = learner_config.train.resolve(learner_config.runtime.max_policy_lag > 0);
    let out = learner_config.out.clone();
    let _run_dir = crate::models::run_dir(&out, resume, overwrite)?;
    let setup = load_policy::<B>(
        &learner_config.model,
        learner_config.train.critic.policy_heads(),
        &learner_config.prompts,
        &learner_config.columns,
        &learner_config.train.prompts,
        &device,
    )?;
    let PolicySetup { model_config, policy, reference, tokenizer, prompts } = setup;
    learner_config
        .train
        .validate_for_model(model_config.n_positions)
        .map_err(|e| anyhow::anyhow!("invalid config: {}", e.within("train")))?;
    // A separate critic starts from the reward model (`LearnerConfig::validate` checked it has one).
    let critic = match (learner_config.train.critic, &learner_config.reward.model) {
        (CriticKind::RewardModel, Some(reward_model)) => Some(load_critic::<B>(reward_model, &tokenizer, &device)?),
        _ => None,
    };
    config::write(&learner_config, &out.join(CONFIG_FILE))?;
    let ppo = learner_config.train.ppo.clone();
    let mut trainer = PpoTrainer::<B>::new(policy, critic, reference, ppo, tokenizer.eos_id(), &device)?;
    let run = RunDir::new(&out);
    let start = if resume { run.resume(&mut trainer, learner_config.train.batch_size)? } else { Start::default() };
    let mut metrics = MetricsFile::create(&out.join(METRICS_FILE))?;
    let lineage_path = out.join(ROLLOUTS_FILE);
    let mut lineage_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&lineage_path)
        .with_context(|| format!("cannot open {}", lineage_path.display()))?;
    let (tls, auth, health_listen) =
        (learner_config.tls.clone(), learner_config.auth.clone(), learner_config.health_listen);
    let checkpoint_keep = learner_config.runtime.checkpoint_keep;
    let (checkpoints, checkpoint_config, checkpoint_tokenizer) = (run.clone(), model_config.clone(), tokenizer.clone());
    let args = CoordinatorArgs {
        sampling_json: serde_json::to_string(&learner_config.train.sampling)?,
        model_config_json: serde_json::to_string(&model_config)?,
        tokenizer_json: if learner_config.reward.retokenize { tokenizer.to_json()? } else { String::new() },
        eos_id: tokenizer.eos_id(),
        config: learner_config,
        trainer,
        prompts,
        start_version: start.version,
        prior: start.prior,
        on_checkpoint: Box::new(move |trainer, version, totals| {
            checkpoints.save_checkpoint(
                trainer,
                version,
                totals,
                &checkpoint_config,
                &checkpoint_tokenizer,
                checkpoint_keep,
            )
        }),
        on_iteration: Box::new(move |iteration, stats, lineage| {
            if let Err(e) = metrics.write(iteration + 1, stats) {
                tracing::error!(error = %e, "cannot write metrics");
            }
            for rollout in lineage {
                let line = serde_json::to_string(rollout).unwrap_or_default();
                if let Err(e) = crate::progress::append_line(&mut lineage_file, &line) {
                    tracing::error!(error = %e, "cannot write the rollout lineage");
                }
            }
        }),
        // What the run leaves behind; a part that cannot be written fails the run.
        on_done: Box::new(move |trainer, totals| {
            hf::export_into(&trainer.policy.valid(), &model_config, &tokenizer, &run.out)
                .map_err(|e| format!("cannot write the trained policy: {e}"))?;
            if let Some(critic) = &trainer.critic {
                let dir = run.out.join(CRITIC_DIR);
                hf::export_into(&critic.model.valid(), &critic.config, &tokenizer, &dir)
                    .map_err(|e| format!("cannot write the trained critic: {e}"))?;
            }
            // The whole run's, a resumed learner's included.
            run.write_accounting(&totals).map_err(|e| format!("cannot write the accounting: {e}"))?;
            crate::report::write_for_run(&run.out);
            Ok(())
        }),
    };
    runtime()?.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let security = server_security(&tls, &auth, health_listen).await.context("learner")?;
        exporter.serve().await?;
        announce(listener.local_addr()?)?;
        let span = tracing::info_span!("run", out = %out.display());
        rlhf_actors::serve(args, listener, security, super::shutdown_signal())
            .instrument(span)
            .await
            .map_err(|e| anyhow::anyhow!("learner: {e}"))
    })
}

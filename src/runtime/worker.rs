//! `rlhf worker`: flags into a [`WorkerConfig`], then [`rlhf_rollout_worker::run`] until the run
//! ends or a signal asks the worker to hand back its lease.

use anyhow::Context;
use clap::Args;
use rlhf_rollout_worker::WorkerConfig;
use rlhf_trainer::Kernels;
use toml::Value;

use super::security::SecurityArgs;
use super::{runtime, shutdown_signal, string};
use crate::config::{self, ConfigArgs};
use crate::device::Device;
use crate::with_backend;

#[derive(Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The learner's address (host:port or http://host:port).
    #[arg(long)]
    learner: Option<String>,
    /// Reward server addresses, comma separated; requests go round robin, failing over to the next.
    #[arg(long, value_delimiter = ',')]
    reward: Vec<String>,
    /// A name for logs and lineage (default: HOSTNAME:pid).
    #[arg(long)]
    name: Option<String>,
    /// Seconds without progress (a peer unreachable, failing or refusing) before the worker gives up.
    #[arg(long)]
    patience_s: Option<f64>,
    /// Fault injection for tests: hold each lease this long before rolling it out.
    #[arg(long)]
    hold_lease_ms: Option<u64>,
    /// Resolve and check the config, print it as TOML, and exit.
    #[arg(long)]
    check: bool,
    #[arg(long, default_value = "cpu")]
    device: Device,
    #[command(flatten)]
    security: SecurityArgs,
    #[command(flatten)]
    metrics: super::exporter::MetricsArgs,
}

pub fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let mut flags = args.security.flags();
    if let Some(v) = &args.learner {
        flags.push(("learner", string(v)));
    }
    if !args.reward.is_empty() {
        flags.push(("reward", Value::Array(args.reward.iter().map(|r| string(r)).collect())));
    }
    if let Some(v) = &args.name {
        flags.push(("name", string(v)));
    }
    if let Some(v) = args.patience_s {
        flags.push(("patience_s", Value::Float(v)));
    }
    if let Some(v) = args.hold_lease_ms {
        flags.push(("hold_lease_ms", Value::Integer(v as i64)));
    }
    let worker_config: WorkerConfig = config::resolve(args.config.config.as_deref(), flags, &args.config.sets)?;
    if args.check {
        print!("{}", toml::to_string_pretty(&worker_config)?);
        return Ok(());
    }
    with_backend!(args.device, |B, device| run_worker::<B>(&worker_config, &args.metrics, device))
}

fn run_worker<B: Kernels>(
    worker_config: &WorkerConfig,
    metrics: &super::exporter::MetricsArgs,
    device: B::Device,
) -> anyhow::Result<()> {
    let options = worker_config.options();
    let name = options.name.clone();
    runtime()?.block_on(async move {
        metrics.serve().await?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("stopping: finishing or returning the current lease");
            let _ = stop.send(true);
        });
        rlhf_rollout_worker::run::<B>(options, device, stopped).await.with_context(|| format!("worker {name}"))?;
        tracing::info!("worker finished");
        Ok(())
    })
}

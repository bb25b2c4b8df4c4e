//! `rlhf reward-server`: flags into a [`RewardServerConfig`], the scorer it names, then
//! [`rlhf_reward_server::serve`] until a signal (draining open connections for at most
//! [`SHUTDOWN_GRACE`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use rlhf_reward_server::{RewardServerConfig, ScorerSpec, build_scorer};
use rlhf_trainer::{Kernels, Tokenizer};
use toml::Value;

use super::security::{SecurityArgs, server_security};
use super::{SHUTDOWN_GRACE, announce, runtime, shutdown_signal, string};
use crate::config::{self, ConfigArgs};
use crate::device::Device;
use crate::with_backend;

#[derive(Args)]
pub struct RewardServerArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Reward-model directory (or hub id).
    #[arg(long, conflicts_with = "lexicon")]
    model: Option<String>,
    /// Lexicon file or aclImdb folder; needs --tokenizer to read token ids.
    #[arg(long)]
    lexicon: Option<PathBuf>,
    /// The policy's tokenizer (lexicon scoring decodes responses with it).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Flip the sign of every score (train towards negative).
    #[arg(long)]
    negate: bool,
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
    #[arg(long)]
    max_batch: Option<usize>,
    #[arg(long)]
    max_wait_ms: Option<u64>,
    /// Resolve and check the config, print it as TOML, and exit.
    #[arg(long)]
    check: bool,
    #[arg(long, default_value = "cpu")]
    device: Device,
}

pub fn reward_server(args: RewardServerArgs) -> anyhow::Result<()> {
    let mut flags = args.security.flags();
    if let Some(v) = args.health_listen {
        flags.push(("health_listen", string(&v.to_string())));
    }
    if let Some(v) = &args.model {
        flags.push(("model", string(v)));
    }
    if let Some(v) = &args.lexicon {
        flags.push(("lexicon", string(&v.display().to_string())));
    }
    if let Some(v) = &args.tokenizer {
        flags.push(("tokenizer", string(&v.display().to_string())));
    }
    if args.negate {
        flags.push(("negate", Value::Boolean(true)));
    }
    if let Some(v) = args.listen {
        flags.push(("listen", string(&v.to_string())));
    }
    if let Some(v) = args.max_batch {
        flags.push(("max_batch", Value::Integer(v as i64)));
    }
    if let Some(v) = args.max_wait_ms {
        flags.push(("max_wait_ms", Value::Integer(v as i64)));
    }
    let server_config: RewardServerConfig = config::resolve(args.config.config.as_deref(), flags, &args.config.sets)?;
    if args.check {
        print!("{}", toml::to_string_pretty(&server_config)?);
        return Ok(());
    }
    with_backend!(args.device, |B, device| run_reward_server::<B>(&server_config, &args.metrics, device))
}

fn run_reward_server<B: Kernels>(
    server_config: &RewardServerConfig,
    metrics: &super::exporter::MetricsArgs,
    device: B::Device,
) -> anyhow::Result<()> {
    let tokenizer = server_config.tokenizer.as_deref().map(Tokenizer::load).transpose()?;
    let spec = ScorerSpec {
        model: server_config.model.as_deref(),
        lexicon: server_config.lexicon.as_deref(),
        tokenizer: tokenizer.as_ref(),
        negate: server_config.negate,
        batch_size: server_config.max_batch,
    };
    let scorer = build_scorer::<B>(&spec, &device)?;
    let batching = server_config.batching();
    let listen = server_config.listen;
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let security = server_security(&server_config.tls, &server_config.auth, server_config.health_listen)
            .await
            .context("reward server")?;
        metrics.serve().await?;
        announce(listener.local_addr()?)?;
        // On SIGTERM the server stops taking connections and drains open ones, for at most
        // SHUTDOWN_GRACE: a client that keeps its connection open cannot hold it up.
        let (signalled, drained) = tokio::sync::oneshot::channel();
        let shutdown = async move {
            shutdown_signal().await;
            let _ = signalled.send(());
        };
        tokio::select! {
            served = rlhf_reward_server::serve(scorer, listener, batching, security, shutdown) => served.context("reward server"),
            _ = async {
                if drained.await.is_ok() {
                    tokio::time::sleep(SHUTDOWN_GRACE).await;
                } else {
                    std::future::pending::<()>().await;
                }
            } => {
                tracing::warn!(grace_s = SHUTDOWN_GRACE.as_secs(), "clients still connected after the grace period; stopping anyway");
                Ok(())
            }
        }
    })
}

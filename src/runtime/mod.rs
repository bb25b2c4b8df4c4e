//! The distributed runtime's commands, one file per role: `rlhf learner`, `rlhf worker`,
//! `rlhf reward-server`, and `rlhf run`, which starts all of them as child processes on
//! 127.0.0.1. Each parses its flags into the role's config and hands it to the role's crate.
//!
//! Every server takes `--listen HOST:PORT` (port 0 allowed) and prints the bound address alone on
//! its first line of stdout, so scripts and tests can read it.

mod exporter;
mod health;
mod learner;
mod reward_server;
mod run;
mod security;
mod status;
mod worker;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use toml::Value;

pub use health::{HealthArgs, health};
pub use learner::{LearnerArgs, learner};
pub use reward_server::{RewardServerArgs, reward_server};
pub(crate) use run::rlhf_command;
pub use run::{RunArgs, run};
pub use security::{CertsArgs, certs};
pub use status::{StatusArgs, status};
pub use worker::{WorkerArgs, worker};

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

/// Prints the bound address alone on stdout's first line.
pub(crate) fn announce(addr: SocketAddr) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{addr}")?;
    stdout.flush()?;
    Ok(())
}

/// How long a server drains open connections after SIGTERM before it exits anyway.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

pub(crate) fn string(value: &str) -> Value {
    Value::String(value.to_string())
}

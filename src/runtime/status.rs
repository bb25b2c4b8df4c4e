//! `rlhf status --learner ADDR`: the run's state from the learner's `Status` RPC: policy
//! version, iteration, prompts done and leased, and per worker its name, address, the weights it
//! holds, its last heartbeat, samples/s and current lease. Read-only; it needs the same
//! credentials as a worker (`--tls-ca`, a client certificate, `--token-file`).

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rlhf_proto::v1 as pb;

use super::runtime;
use super::security::SecurityArgs;

#[derive(Args)]
pub struct StatusArgs {
    /// The learner's address (host:port, http://host:port or https://host:port).
    #[arg(long)]
    learner: String,
    /// `text` (a table) or `json`.
    #[arg(long, value_enum, default_value = "text")]
    format: StatusFormat,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout_s: f64,
    #[command(flatten)]
    security: SecurityArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFormat {
    Text,
    Json,
}

pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.timeout_s.is_finite() && args.timeout_s > 0.0,
        "--timeout-s: expected a number of seconds > 0, got {}",
        args.timeout_s
    );
    let url = rlhf_rollout_worker::config::url(&args.learner);
    let (tls, auth) = args.security.configs();
    let token = auth.for_peer(auth.token()?, &url)?;
    let timeout = Duration::from_secs_f64(args.timeout_s);
    let reply = runtime()?.block_on(async {
        let mut learner = rlhf_rollout_worker::learner_client(&url, timeout, &tls, token.as_ref())?;
        let call = learner.status(pb::StatusRequest {});
        let reply = tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| anyhow::anyhow!("{url}: no answer within {} s", args.timeout_s))?
            .with_context(|| format!("learner {url}"))?;
        anyhow::Ok(reply.into_inner())
    })?;
    match args.format {
        StatusFormat::Json => println!("{}", serde_json::to_string_pretty(&to_json(&reply))?),
        StatusFormat::Text => print!("{}", to_text(&reply)),
    }
    Ok(())
}

fn to_json(status: &pb::StatusResponse) -> serde_json::Value {
    let workers: Vec<serde_json::Value> = status
        .workers
        .iter()
        .map(|w| {
            serde_json::json!({
                "worker_id": w.worker_id,
                "name": w.name,
                "address": w.address,
                "policy_version": w.policy_version,
                "seconds_since_heartbeat": w.seconds_since_heartbeat,
                "samples_per_s": w.samples_per_s,
                "lease_id": (w.lease_id > 0).then_some(w.lease_id),
                "lease_prompts": w.lease_prompts,
            })
        })
        .collect();
    serde_json::json!({
        "policy_version": status.policy_version,
        "iteration": status.policy_version,
        "iterations": status.iterations,
        "prompts_done": status.prompts_done,
        "prompts_leased": status.prompts_leased,
        "prompts_total": status.prompts_total,
        "done": status.done,
        "workers": workers,
    })
}

fn to_text(status: &pb::StatusResponse) -> String {
    let mut out = format!(
        "policy version {} · iteration {}/{} · prompts {}/{} done, {} leased{}\n\n",
        status.policy_version,
        status.policy_version,
        status.iterations,
        status.prompts_done,
        status.prompts_total,
        status.prompts_leased,
        if status.done { " · done" } else { "" }
    );
    out.push_str("| worker | address | weights | last heartbeat | samples/s | lease |\n|---|---|---|---|---|---|\n");
    for w in &status.workers {
        let lease =
            if w.lease_id > 0 { format!("{} ({} prompts)", w.lease_id, w.lease_prompts) } else { "-".to_string() };
        out.push_str(&format!(
            "| {} | {} | {} | {:.1} s ago | {:.1} | {} |\n",
            w.name, w.address, w.policy_version, w.seconds_since_heartbeat, w.samples_per_s, lease
        ));
    }
    out
}

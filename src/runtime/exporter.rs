//! `--metrics-listen HOST:PORT` on every role: the role's live metrics in Prometheus's text
//! exposition format at `/metrics`. The role crates record through the `metrics` facade; the
//! Prometheus exporter renders them; this serves the rendering on a listener of our own, so that
//! port 0 works and the bound address is logged.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

#[derive(Args, Default, Clone)]
pub struct MetricsArgs {
    /// Serve live metrics in Prometheus's text format at http://HOST:PORT/metrics (off by
    /// default; port 0 picks a free one, logged as "metrics listening").
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

/// Latency buckets, in seconds (histograms named `*_seconds`).
const SECONDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Batch-size buckets (sequences per scored batch).
const SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

impl MetricsArgs {
    /// Installs the recorder and serves `/metrics` on the runtime this is called on; nothing
    /// without `--metrics-listen`.
    pub async fn serve(&self) -> anyhow::Result<()> {
        let Some(addr) = self.metrics_listen else { return Ok(()) };
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)?
            .set_buckets_for_metric(Matcher::Full("rlhf_reward_batch_size".into()), SIZES)?
            .install_recorder()
            .context("installing the metrics recorder")?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (--metrics-listen)"))?;
        let bound = listener.local_addr()?;
        tracing::info!(addr = %bound, "metrics listening (Prometheus text format at /metrics)");
        let upkeep = handle.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                upkeep.run_upkeep();
            }
        });
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let handle = handle.clone();
                async move { handle.render() }
            }),
        );
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(addr = %bound, %error, "the metrics listener stopped");
            }
        });
        Ok(())
    }
}

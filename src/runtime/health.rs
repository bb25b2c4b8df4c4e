//! `rlhf health ADDR`: probes a role's gRPC health service (`grpc.health.v1`), for Compose
//! healthchecks and exec probes in images that hold nothing but this binary. Exits 0 when the
//! role answers SERVING; otherwise fails with the reason. An `https://` address is probed over
//! TLS (`--tls-ca`, and a client certificate where the server requires one); the health service
//! needs no token. Probes that can carry nothing use a server's plain-text `--health-listen` port.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::runtime;

#[derive(Args)]
pub struct HealthArgs {
    /// The role's address, HOST:PORT (or http://HOST:PORT, or https://HOST:PORT over TLS).
    addr: String,
    /// Trust roots (PEM) for an https:// address.
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// A client certificate and key (PEM), for a server that requires one (mutual TLS).
    #[arg(long, requires = "tls_client_key")]
    tls_client_cert: Option<std::path::PathBuf>,
    #[arg(long, requires = "tls_client_cert")]
    tls_client_key: Option<std::path::PathBuf>,
    /// The service to ask about, e.g. `rlhf.v1.Learner` (default: the server as a whole).
    #[arg(long, default_value = "")]
    service: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 5.0)]
    timeout_s: f64,
}

pub fn health(args: HealthArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.timeout_s.is_finite() && args.timeout_s > 0.0,
        "--timeout-s: expected a number of seconds > 0, got {}",
        args.timeout_s
    );
    let url = if args.addr.contains("://") { args.addr.clone() } else { format!("http://{}", args.addr) };
    let timeout = Duration::from_secs_f64(args.timeout_s);
    let status = runtime()?.block_on(async {
        let probe = async {
            let mut endpoint = tonic::transport::Endpoint::from_shared(url.clone())
                .with_context(|| format!("{}: not an address", args.addr))?
                .connect_timeout(timeout);
            let tls = rlhf_secure::TlsConfig {
                ca: args.tls_ca.clone(),
                client_cert: args.tls_client_cert.clone(),
                client_key: args.tls_client_key.clone(),
                ..Default::default()
            };
            if let Some(config) = tls.client(&url)? {
                endpoint = endpoint.tls_config(config).with_context(|| format!("{}: TLS", args.addr))?;
            }
            let channel = endpoint.connect().await.map_err(|e| {
                match rlhf_secure::TlsProblem::find(&e, !rlhf_secure::is_tls_url(&url)) {
                    Some(problem) => anyhow::anyhow!("{}: cannot connect: {problem}", args.addr),
                    None => anyhow::Error::new(e).context(format!("{}: cannot connect", args.addr)),
                }
            })?;
            let reply = HealthClient::new(channel)
                .check(HealthCheckRequest { service: args.service.clone() })
                .await
                .map_err(|status| anyhow::anyhow!("{}: health check failed: {}", args.addr, status.message()))?;
            anyhow::Ok(reply.into_inner().status())
        };
        tokio::time::timeout(timeout, probe)
            .await
            .map_err(|_| anyhow::anyhow!("{}: no answer within {} s", args.addr, args.timeout_s))?
    })?;
    if status != ServingStatus::Serving {
        bail!("{}: {} is {}", args.addr, service_name(&args.service), status.as_str_name());
    }
    println!("SERVING");
    Ok(())
}

fn service_name(service: &str) -> &str {
    if service.is_empty() { "the server" } else { service }
}

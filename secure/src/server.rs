//! A role's gRPC server, secured: TLS (or plain text), the token check for its own service, a cap
//! on concurrent streams per connection, and the health service on a plain-text port of its own
//! for probes that carry neither certificates nor tokens.

use std::future::Future;

use tonic::transport::{Server, ServerTlsConfig};
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::{AuthConfig, SecureError, TlsConfig, Token, TokenCheck};

/// Concurrent streams one connection may open (a worker uses a handful).
pub const MAX_CONCURRENT_STREAMS: u32 = 64;

/// How a role's server is secured.
pub struct ServerSecurity {
    tls: Option<ServerTlsConfig>,
    token: Option<Token>,
    health: Option<tokio::net::TcpListener>,
}

impl ServerSecurity {
    /// Plain text, no token, health on the main port only.
    pub fn plain() -> Self {
        Self { tls: None, token: None, health: None }
    }

    /// From a role's `[tls]` and `[auth]` (files read now, so that a bad one fails at start-up),
    /// with `health` the plain-text health port's listener, if any.
    pub fn new(
        tls: &TlsConfig,
        auth: &AuthConfig,
        health: Option<tokio::net::TcpListener>,
    ) -> Result<Self, SecureError> {
        Ok(Self { tls: tls.server()?, token: auth.token()?, health })
    }

    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A server builder with TLS (if set) and the stream cap.
    pub fn builder(&self) -> Result<Server, SecureError> {
        let builder = Server::builder().max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS));
        match &self.tls {
            Some(tls) => builder.tls_config(tls.clone()).map_err(|e| SecureError::Setting {
                field: "tls",
                expected: format!("a usable server identity ({e})"),
            }),
            None => Ok(builder),
        }
    }

    /// The token check for `service` (lets everything through without a token).
    pub fn token_check(&self, service: &'static str) -> TokenCheck {
        TokenCheck::new(self.token.clone(), service)
    }

    /// Serves the health service (the same statuses as `reporter`'s) in plain text on the health
    /// listener, if there is one, until `shutdown`.
    pub fn spawn_health(&mut self, reporter: &HealthReporter, shutdown: impl Future<Output = ()> + Send + 'static) {
        let Some(listener) = self.health.take() else { return };
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(%addr, "health service listening (plain text, no credentials)");
        let service = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let served = Server::builder()
                .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await;
            if let Err(error) = served {
                tracing::error!(%addr, %error, "the health port stopped");
            }
        });
    }
}

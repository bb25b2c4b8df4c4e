//! TLS, mutual TLS and bearer tokens for every rlhf endpoint.
//!
//! - [`TlsConfig`] and [`AuthConfig`]: the `[tls]` and `[auth]` sections every role's TOML holds
//!   (and the flags that set them).
//! - [`TlsConfig::server`] / [`TlsConfig::client`]: the tonic TLS configurations they make.
//! - [`TokenCheck`]: the servers' interceptor (constant-time comparison, one log line per peer);
//!   [`AttachToken`]: the clients'.
//! - [`TlsProblem::find`]: what a failed connection means (name mismatch, unknown CA, plain text
//!   against TLS, ...), for errors that say which.
//! - [`certs`]: a development CA and certificates (`rlhf certs`, `rlhf run --secure`).
//!
//! Call [`install_crypto_provider`] once at start-up: two rustls providers (aws-lc-rs and ring)
//! are in the build, and rustls refuses to guess between them.

pub mod certs;
mod config;
mod problem;
mod server;
mod token;

pub use config::{AuthConfig, TlsConfig};
pub use problem::TlsProblem;
pub use server::{MAX_CONCURRENT_STREAMS, ServerSecurity};
pub use token::{AttachToken, Token, TokenCheck};

use std::path::PathBuf;

/// Why the security settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecureError {
    #[error("cannot read {what} {path}: {error}")]
    Read { what: &'static str, path: PathBuf, error: std::io::Error },
    #[error("{field}: expected {expected}")]
    Setting { field: &'static str, expected: String },
    #[error("{what} {path}: {message}")]
    Invalid { what: &'static str, path: PathBuf, message: String },
    #[error("cannot write {path}: {error}")]
    Write { path: PathBuf, error: std::io::Error },
    #[error("cannot make a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

/// Makes aws-lc-rs rustls's process-wide crypto provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Whether a peer address is a TLS one (`https://`).
pub fn is_tls_url(url: &str) -> bool {
    url.starts_with("https://")
}

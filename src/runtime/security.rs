//! The `[tls]` and `[auth]` flags every role takes (they set the config's keys of the same
//! names), and a server's [`ServerSecurity`] from its resolved config.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use rlhf_secure::{AuthConfig, ServerSecurity, TlsConfig};
use toml::Value;

use super::string;

#[derive(Args, Default, Clone)]
pub struct SecurityArgs {
    /// This server's certificate chain (PEM; `tls.cert`): with --tls-key, its port speaks TLS only.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// This server's private key (PEM; `tls.key`).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Trust roots (PEM; `tls.ca`): the CA of the https:// peers this role calls, or of the
    /// client certificates a server requires.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// This client's certificate chain for mutual TLS (PEM; `tls.client_cert`).
    #[arg(long)]
    tls_client_cert: Option<PathBuf>,
    /// This client's private key (PEM; `tls.client_key`).
    #[arg(long)]
    tls_client_key: Option<PathBuf>,
    /// Servers: accept only clients with a certificate signed by --tls-ca (mutual TLS).
    #[arg(long)]
    tls_require_client_cert: bool,
    /// A file holding the bearer token (`auth.token_file`; else RLHF_TOKEN): servers require it,
    /// workers send it.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Workers: the reward servers' token, if it differs (`auth.reward_token_file`; else
    /// RLHF_REWARD_TOKEN, else the learner's).
    #[arg(long)]
    reward_token_file: Option<PathBuf>,
    /// Workers: send the token over plain text too (anyone on the path can read it).
    #[arg(long)]
    allow_plaintext_token: bool,
}

impl SecurityArgs {
    /// The settings these flags give, for a client that has no config file (`rlhf status`).
    pub fn configs(&self) -> (TlsConfig, AuthConfig) {
        let tls = TlsConfig {
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            ca: self.tls_ca.clone(),
            client_cert: self.tls_client_cert.clone(),
            client_key: self.tls_client_key.clone(),
            require_client_cert: self.tls_require_client_cert,
        };
        let auth = AuthConfig {
            token_file: self.token_file.clone(),
            reward_token_file: self.reward_token_file.clone(),
            allow_plaintext_token: self.allow_plaintext_token,
        };
        (tls, auth)
    }

    /// The flags that were given, as config keys.
    pub fn flags(&self) -> Vec<(&'static str, Value)> {
        let mut flags = Vec::new();
        let paths = [
            ("tls.cert", &self.tls_cert),
            ("tls.key", &self.tls_key),
            ("tls.ca", &self.tls_ca),
            ("tls.client_cert", &self.tls_client_cert),
            ("tls.client_key", &self.tls_client_key),
            ("auth.token_file", &self.token_file),
            ("auth.reward_token_file", &self.reward_token_file),
        ];
        for (key, path) in paths {
            if let Some(path) = path {
                flags.push((key, string(&path.display().to_string())));
            }
        }
        if self.tls_require_client_cert {
            flags.push(("tls.require_client_cert", Value::Boolean(true)));
        }
        if self.allow_plaintext_token {
            flags.push(("auth.allow_plaintext_token", Value::Boolean(true)));
        }
        flags
    }
}

/// A server's security: TLS and token from its config (files read now, so a bad one fails at
/// start-up, naming it), and the plain-text health port bound if `health_listen` is set.
pub async fn server_security(
    tls: &TlsConfig,
    auth: &AuthConfig,
    health_listen: Option<SocketAddr>,
) -> anyhow::Result<ServerSecurity> {
    let health = match health_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (health_listen)"))?,
        ),
        None => None,
    };
    Ok(ServerSecurity::new(tls, auth, health)?)
}

#[derive(Args)]
pub struct CertsArgs {
    /// Folder to write into (created if missing; existing files are replaced).
    #[arg(long)]
    out: PathBuf,
    /// Host names and IP addresses the server certificate is valid for (repeat, or comma
    /// separated): every name workers use to reach the learner and reward servers.
    #[arg(long = "host", value_delimiter = ',', default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
    hosts: Vec<String>,
}

/// `rlhf certs`: a development CA, server and client certificates and a token, and the settings
/// that use them.
pub fn certs(args: CertsArgs) -> anyhow::Result<()> {
    let pki = rlhf_secure::certs::write(&args.out, &args.hosts)
        .with_context(|| format!("writing certificates into {}", args.out.display()))?;
    let show = |p: &std::path::Path| p.display().to_string();
    println!("wrote a development CA, a server certificate for {} and a client certificate", args.hosts.join(", "));
    println!(
        "servers (learner, reward-server): --tls-cert {} --tls-key {}",
        show(&pki.server_cert),
        show(&pki.server_key)
    );
    println!("  mutual TLS: --tls-ca {} --tls-require-client-cert", show(&pki.ca));
    println!(
        "workers: --tls-ca {} --tls-client-cert {} --tls-client-key {}",
        show(&pki.ca),
        show(&pki.client_cert),
        show(&pki.client_key)
    );
    println!("every role: --token-file {}; addresses become https://HOST:PORT", show(&pki.token));
    println!("for development only: production setups bring their own PKI (cert-manager, Vault, a site CA)");
    Ok(())
}

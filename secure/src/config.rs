//! The `[tls]` and `[auth]` settings, shared by every role, and the tonic TLS configs they make.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::SecureError;
use crate::token::Token;

/// `[tls]`: TLS on a role's server (`cert` + `key`) and on its clients (`ca`, and for mutual TLS
/// `client_cert` + `client_key`). Paths are PEM files.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The server's certificate chain; with `key`, the server speaks TLS only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The server's private key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Trust roots: for a client, the CA its servers' certificates chain to; for a server with
    /// `require_client_cert`, the CA its clients' certificates chain to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// A client's certificate chain, for servers that require one (mutual TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// A client's private key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// A server accepts only clients with a certificate from `ca` (mutual TLS).
    pub require_client_cert: bool,
}

/// `[auth]`: the bearer token a server requires, or a client sends.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// A file holding the token (surrounding whitespace ignored); `RLHF_TOKEN` when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// A worker's token for the reward servers, when it differs from the learner's
    /// (`RLHF_REWARD_TOKEN` when unset; else the learner's token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward_token_file: Option<PathBuf>,
    /// Send tokens over plain text too (anyone on the path can read them): for tests on
    /// loopback only.
    pub allow_plaintext_token: bool,
}

impl TlsConfig {
    /// Settings that go together are set together.
    pub fn validate(&self) -> Result<(), SecureError> {
        let pair = |a: &Option<PathBuf>, b: &Option<PathBuf>, field, expected: &str| {
            if a.is_some() != b.is_some() {
                return Err(SecureError::Setting { field, expected: expected.into() });
            }
            Ok(())
        };
        pair(&self.cert, &self.key, "tls.cert", "tls.cert and tls.key together")?;
        pair(&self.client_cert, &self.client_key, "tls.client_cert", "tls.client_cert and tls.client_key together")?;
        if self.require_client_cert && (self.ca.is_none() || self.cert.is_none()) {
            return Err(SecureError::Setting {
                field: "tls.require_client_cert",
                expected: "tls.cert, tls.key and tls.ca (the CA that signs client certificates)".into(),
            });
        }
        Ok(())
    }

    /// Whether this role's server speaks TLS.
    pub fn serves_tls(&self) -> bool {
        self.cert.is_some()
    }

    /// The server's TLS config, or `None` for plain text. With `require_client_cert`, the
    /// handshake fails for a client without a certificate from `ca`.
    pub fn server(&self) -> Result<Option<ServerTlsConfig>, SecureError> {
        self.validate()?;
        let (Some(cert), Some(key)) = (&self.cert, &self.key) else { return Ok(None) };
        let identity = Identity::from_pem(read_pem("tls.cert", cert)?, read_pem("tls.key", key)?);
        let mut config = ServerTlsConfig::new().identity(identity);
        if self.require_client_cert {
            let ca = self.ca.as_ref().expect("validate checked it");
            config = config.client_ca_root(Certificate::from_pem(read_pem("tls.ca", ca)?));
        }
        Ok(Some(config))
    }

    /// The client's TLS config for a peer at `url`: `None` for `http://`; for `https://`, trust
    /// in `ca` (required) and the client identity if set.
    pub fn client(&self, url: &str) -> Result<Option<ClientTlsConfig>, SecureError> {
        self.validate()?;
        if !crate::is_tls_url(url) {
            return Ok(None);
        }
        let Some(ca) = &self.ca else {
            return Err(SecureError::Setting {
                field: "tls.ca",
                expected: format!("the CA that signed {url}'s certificate (an https:// peer)"),
            });
        };
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem("tls.ca", ca)?));
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            config = config
                .identity(Identity::from_pem(read_pem("tls.client_cert", cert)?, read_pem("tls.client_key", key)?));
        }
        Ok(Some(config))
    }
}

impl AuthConfig {
    /// The token servers require and clients send to the learner: `token_file`, else
    /// `RLHF_TOKEN`, else none.
    pub fn token(&self) -> Result<Option<Token>, SecureError> {
        Token::load(self.token_file.as_deref(), "RLHF_TOKEN")
    }

    /// The token a worker sends to reward servers: `reward_token_file`, else `RLHF_REWARD_TOKEN`,
    /// else [`Self::token`].
    pub fn reward_token(&self) -> Result<Option<Token>, SecureError> {
        match Token::load(self.reward_token_file.as_deref(), "RLHF_REWARD_TOKEN")? {
            Some(token) => Ok(Some(token)),
            None => self.token(),
        }
    }

    /// The token a client may send to `url`: refused over plain text unless
    /// `allow_plaintext_token` (then with a warning).
    pub fn for_peer(&self, token: Option<Token>, url: &str) -> Result<Option<Token>, SecureError> {
        match token {
            Some(token) if !crate::is_tls_url(url) => {
                if !self.allow_plaintext_token {
                    return Err(SecureError::Setting {
                        field: "auth.allow_plaintext_token",
                        expected: format!(
                            "an https:// address for {url} (a token over plain text can be read by anyone on the \
                             path), or auth.allow_plaintext_token = true"
                        ),
                    });
                }
                tracing::warn!(peer = url, "sending a token over plain text (auth.allow_plaintext_token)");
                Ok(Some(token))
            }
            token => Ok(token),
        }
    }
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, SecureError> {
    let bytes = std::fs::read(path).map_err(|error| SecureError::Read { what, path: path.into(), error })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(SecureError::Invalid {
            what,
            path: path.into(),
            message: "expected a PEM file (-----BEGIN ...)".into(),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_go_together_are_checked() {
        let half = TlsConfig { cert: Some("c.pem".into()), ..Default::default() };
        assert!(half.validate().unwrap_err().to_string().contains("tls.key"));
        let mtls = TlsConfig {
            cert: Some("c".into()),
            key: Some("k".into()),
            require_client_cert: true,
            ..Default::default()
        };
        assert!(mtls.validate().unwrap_err().to_string().contains("tls.ca"));
        // An https:// peer needs a CA to trust; http:// needs nothing.
        let plain = TlsConfig::default();
        assert!(plain.client("http://a:1").unwrap().is_none());
        assert!(plain.client("https://a:1").unwrap_err().to_string().contains("tls.ca"));
    }

    #[test]
    fn a_token_goes_over_plain_text_only_when_allowed() {
        let token = Token::new("s3cret".into()).unwrap();
        let strict = AuthConfig::default();
        let err = strict.for_peer(Some(token.clone()), "http://a:1").unwrap_err().to_string();
        assert!(err.contains("http://a:1") && err.contains("allow_plaintext_token"), "{err}");
        assert!(strict.for_peer(Some(token.clone()), "https://a:1").unwrap().is_some());
        let loose = AuthConfig { allow_plaintext_token: true, ..Default::default() };
        assert!(loose.for_peer(Some(token), "http://a:1").unwrap().is_some());
    }
}

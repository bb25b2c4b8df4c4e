//! Bearer tokens: servers check `authorization: Bearer TOKEN` in an interceptor with a
//! constant-time comparison; clients attach it to every call.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use subtle::ConstantTimeEq;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::SecureError;

/// A shared secret (never printed).
#[derive(Clone)]
pub struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A token of visible ASCII characters (it travels in an HTTP/2 header).
    pub fn new(text: String) -> Result<Self, SecureError> {
        let text = text.trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SecureError::Setting {
                field: "auth.token_file",
                expected: "a token of visible ASCII characters, not empty".into(),
            });
        }
        Ok(Self(text.into()))
    }

    /// From `file` if set, else from the environment variable `var`, else none.
    pub fn load(file: Option<&Path>, var: &str) -> Result<Option<Self>, SecureError> {
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|error| SecureError::Read {
                what: "auth.token_file",
                path: path.into(),
                error,
            })?;
            return Self::new(text).map(Some).map_err(|e| SecureError::Invalid {
                what: "auth.token_file",
                path: path.into(),
                message: e.to_string(),
            });
        }
        match std::env::var(var) {
            Ok(text) if !text.trim().is_empty() => Self::new(text).map(Some),
            _ => Ok(None),
        }
    }

    fn header(&self) -> MetadataValue<Ascii> {
        format!("Bearer {}", self.0).parse().expect("Token::new allows visible ASCII only")
    }
}

/// The servers' token check: a call without `authorization: Bearer TOKEN`, or with another
/// token, gets `Unauthenticated` and does nothing else; each refused peer address is logged once.
#[derive(Clone)]
pub struct TokenCheck {
    token: Option<Token>,
    service: &'static str,
    logged: Arc<Mutex<HashSet<Option<IpAddr>>>>,
}

impl TokenCheck {
    /// Checks against `token`; `None` lets every call through (no `auth.token_file` set).
    pub fn new(token: Option<Token>, service: &'static str) -> Self {
        Self { token, service, logged: Arc::default() }
    }

    fn refuse(&self, request: &Request<()>, why: &str) -> Status {
        let peer = request.remote_addr();
        if self.logged.lock().expect("not poisoned").insert(peer.map(|a| a.ip())) {
            let peer = peer.map(|a| a.to_string()).unwrap_or_else(|| "an unknown address".into());
            tracing::warn!(%peer, service = self.service, "refused a call: {why} (logged once per peer)");
        }
        Status::unauthenticated(format!("{}: {why}", self.service))
    }
}

impl Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else { return Ok(request) };
        let Some(header) = request.metadata().get("authorization") else {
            return Err(self.refuse(&request, "no token (authorization: Bearer ...)"));
        };
        let sent = header.as_bytes().strip_prefix(b"Bearer ").unwrap_or(b"");
        if !bool::from(sent.ct_eq(token.0.as_bytes())) {
            return Err(self.refuse(&request, "wrong token"));
        }
        Ok(request)
    }
}

/// The clients' side: `authorization: Bearer TOKEN` on every call (nothing without a token).
#[derive(Clone, Default)]
pub struct AttachToken {
    header: Option<MetadataValue<Ascii>>,
}

impl AttachToken {
    pub fn new(token: Option<&Token>) -> Self {
        Self { header: token.map(Token::header) }
    }
}

impl Interceptor for AttachToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request.metadata_mut().insert("authorization", header.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(check: &mut TokenCheck, header: Option<&str>) -> Result<(), tonic::Code> {
        let mut request = Request::new(());
        if let Some(h) = header {
            request.metadata_mut().insert("authorization", h.parse().unwrap());
        }
        check.call(request).map(|_| ()).map_err(|s| s.code())
    }

    #[test]
    fn only_the_right_token_passes() {
        let token = Token::new(" s3cret\n".into()).unwrap();
        let mut check = TokenCheck::new(Some(token.clone()), "rlhf.v1.Learner");
        assert_eq!(call(&mut check, None), Err(tonic::Code::Unauthenticated));
        assert_eq!(call(&mut check, Some("Bearer wrong")), Err(tonic::Code::Unauthenticated));
        assert_eq!(call(&mut check, Some("s3cret")), Err(tonic::Code::Unauthenticated));
        assert_eq!(call(&mut check, Some("Bearer s3cret")), Ok(()));
        // What the client attaches is what the server accepts.
        let attached = AttachToken::new(Some(&token)).call(Request::new(())).unwrap();
        let header = attached.metadata().get("authorization").unwrap().to_str().unwrap().to_string();
        assert_eq!(call(&mut check, Some(&header)), Ok(()));
        // No token configured: nothing is checked.
        assert_eq!(call(&mut TokenCheck::new(None, "x"), None), Ok(()));
        assert!(Token::new("two words".into()).is_err() && Token::new("  ".into()).is_err());
        assert_eq!(format!("{token:?}"), "Token(..)");
    }
}

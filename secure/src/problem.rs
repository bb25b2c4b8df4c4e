//! What a failed connection to a peer means, found in the error's chain of causes, so that the
//! error can say which of the usual TLS mistakes it was.

use std::error::Error;

use rustls::{AlertDescription, CertificateError};

/// A connection that failed for a TLS reason (rather than a peer that is down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsProblem {
    /// The peer's certificate does not name the host in its address.
    NameMismatch,
    /// The peer's certificate is not signed by a CA in `tls.ca`.
    UnknownCa,
    /// The peer's certificate has expired or is not valid yet.
    Expired,
    /// The peer requires a client certificate (mutual TLS) and got none, or one it does not trust.
    ClientCertRefused,
    /// A TLS client talking to a plain-text server.
    PeerNotTls,
    /// A plain-text client talking to a TLS server (the connection closed during the HTTP/2
    /// handshake).
    PeerWantsTls,
    /// A TLS connection the peer closed right away: what a server requiring client certificates
    /// does when it refuses ours and its alert is lost in the race with our first write; also a
    /// restart, so it is retried.
    ClosedByTlsPeer,
}

impl std::fmt::Display for TlsProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NameMismatch => {
                "TLS: the peer's certificate is not valid for this host name (name mismatch; list the \
                 address's host among the certificate's names)"
            }
            Self::UnknownCa => "TLS: the peer's certificate is not signed by a CA in tls.ca (unknown CA)",
            Self::Expired => "TLS: the peer's certificate has expired or is not valid yet",
            Self::ClientCertRefused => {
                "TLS: the peer requires a client certificate it trusts (mutual TLS: set tls.client_cert and \
                 tls.client_key, signed by the peer's CA)"
            }
            Self::PeerNotTls => "TLS: the peer does not speak TLS (use an http:// address for a plain-text server)",
            Self::PeerWantsTls => {
                "the HTTP/2 handshake failed: a plain-text client talking to a TLS server? \
                 (use an https:// address and tls.ca)"
            }
            Self::ClosedByTlsPeer => {
                "TLS: the peer closed the connection; a peer that requires a client certificate does so \
                 when it refuses ours (mutual TLS: set tls.client_cert and tls.client_key, signed by the \
                 peer's CA)"
            }
        })
    }
}

impl TlsProblem {
    /// The TLS problem behind `error`, if any. `plain_text` says whether the client connected
    /// without TLS (a closed handshake then most likely means a TLS server).
    pub fn find(error: &(dyn Error + 'static), plain_text: bool) -> Option<Self> {
        let mut next = Some(error);
        let mut text = String::new();
        while let Some(error) = next {
            if let Some(problem) = from_rustls(error) {
                return Some(problem);
            }
            if let Some(io) = error.downcast_ref::<std::io::Error>()
                && let Some(problem) = io.get_ref().and_then(|inner| from_rustls(inner))
            {
                return Some(problem);
            }
            text.push_str(&format!("{error} {error:?}").to_lowercase());
            text.push('\n');
            next = error.source();
        }
        // The server's alert about our certificate (it reaches us as text, inside an io::Error).
        let refused = ["certificaterequired", "badcertificate", "unknownca", "decrypterror", "certificateunknown"];
        if refused.iter().any(|alert| text.contains(&format!("received fatal alert: {alert}"))) {
            return Some(Self::ClientCertRefused);
        }
        // A TLS server answers HTTP/2's preface with a TLS alert, which HTTP/2 reads as a frame of
        // impossible size; or it just closes the connection.
        let closed =
            ["frame_size_error", "frame with invalid size", "connection reset", "broken pipe", "unexpected eof"];
        let closed = closed.iter().any(|c| text.contains(c));
        match (closed, plain_text) {
            (false, _) => None,
            (true, true) => Some(Self::PeerWantsTls),
            (true, false) => Some(Self::ClosedByTlsPeer),
        }
    }
}

fn from_rustls(error: &(dyn Error + 'static)) -> Option<TlsProblem> {
    use rustls::Error as E;
    Some(match error.downcast_ref::<E>()? {
        E::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }) => {
            TlsProblem::NameMismatch
        }
        E::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            TlsProblem::UnknownCa
        }
        E::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => TlsProblem::Expired,
        E::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::DecryptError
            | AlertDescription::CertificateUnknown,
        ) => TlsProblem::ClientCertRefused,
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => TlsProblem::PeerNotTls,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_connection_means_tls_wanted_over_plain_text_and_a_refusal_hint_over_tls() {
        let closed = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "stream closed because of a broken pipe");
        assert_eq!(TlsProblem::find(&closed, true), Some(TlsProblem::PeerWantsTls));
        assert_eq!(TlsProblem::find(&closed, false), Some(TlsProblem::ClosedByTlsPeer));
        assert!(TlsProblem::ClosedByTlsPeer.to_string().contains("requires a client certificate"));
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(TlsProblem::find(&refused, false), None, "a peer that is down is no TLS problem");
    }
}

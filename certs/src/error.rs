//! The crate's error type: every variant says what was being read or made
//! and why it failed, so an operator can act on the message alone.

use std::io;
use std::path::PathBuf;

use crate::spiffe::{SpiffeId, SpiffeIdError, TrustDomain};

/// Why a certificate, key, CSR, bundle or CA directory was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A SPIFFE ID or trust domain is malformed.
    #[error(transparent)]
    SpiffeId(#[from] SpiffeIdError),
    /// PEM text could not be decoded, or holds nothing of the expected kind.
    #[error("{what}: {reason}")]
    Pem { what: String, reason: String },
    /// A certificate is not what it must be (unparsable, not a CA, no
    /// SPIFFE ID...).
    #[error("{what}: {reason}")]
    Certificate { what: String, reason: String },
    /// A private key is unusable or does not belong to its certificate.
    #[error("{what}: {reason}")]
    Key { what: String, reason: String },
    /// A certificate signing request is malformed or its self-signature
    /// does not verify (the requester does not hold the key).
    #[error("certificate signing request: {reason}")]
    Csr { reason: String },
    /// A CA was asked to sign an identity outside its trust domain.
    #[error("cannot sign {identity}: this CA signs for trust domain {ca_trust_domain} only")]
    ForeignTrustDomain {
        identity: SpiffeId,
        ca_trust_domain: TrustDomain,
    },
    /// A trust bundle with no root would reject every peer.
    #[error("the trust bundle is empty: every peer would be rejected")]
    EmptyBundle,
    /// Generating or signing a certificate failed.
    #[error("{what}: {reason}")]
    Signing { what: String, reason: String },
    /// Reading or writing a CA directory failed.
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn pem(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Pem {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn certificate(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Certificate {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn key(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Key {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn signing(what: impl Into<String>, reason: impl ToString) -> Self {
        Error::Signing {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

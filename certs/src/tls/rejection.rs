//! Why a peer's certificate was refused, in terms an operator (and a
//! metrics label) can use, recovered from rustls and tokio-rustls errors.

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::UnixTime;
use rustls::{AlertDescription, CertificateError, OtherError};

use crate::spiffe::SpiffeId;

/// A handshake refused over the peer's certificate, or by the peer over ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerRejection {
    /// The chain does not end at any root of the trust bundle (another CA,
    /// or a root removed from the bundle).
    #[error("unknown issuer: the peer's certificate does not chain to a root in the trust bundle")]
    UnknownIssuer,
    /// The peer's certificate is past its not-after time.
    #[error("the peer's certificate has expired{}", expiry(not_after))]
    Expired { not_after: Option<SystemTime> },
    /// The peer's certificate is not valid yet (clock skew beyond a minute).
    #[error("the peer's certificate is not valid yet (clock skew between the hosts?)")]
    NotYetValid,
    /// A valid certificate for another service than the one dialled.
    #[error("wrong peer identity: expected {expected}, got {presented}")]
    WrongIdentity {
        expected: SpiffeId,
        presented: SpiffeId,
    },
    /// The certificate chains fine but carries no (single, valid) SPIFFE ID.
    #[error("the peer's certificate has no usable SPIFFE ID: {reason}")]
    NoSpiffeId { reason: String },
    /// The client sent no certificate to a listener that requires one.
    #[error("no client certificate: this listener requires mutual TLS")]
    NoClientCertificate,
    /// The peer refused *our* certificate and said so with a TLS alert.
    #[error("the peer rejected our certificate (TLS alert {alert})")]
    RejectedByPeer { alert: String },
    /// Any other certificate problem (bad signature, bad encoding, ...).
    #[error("the peer's certificate was refused: {reason}")]
    BadCertificate { reason: String },
}

impl PeerRejection {
    /// A fixed name for the kind of rejection (a metrics label).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownIssuer => "unknown-issuer",
            Self::Expired { .. } => "expired",
            Self::NotYetValid => "not-yet-valid",
            Self::WrongIdentity { .. } => "wrong-identity",
            Self::NoSpiffeId { .. } => "no-spiffe-id",
            Self::NoClientCertificate => "no-client-certificate",
            Self::RejectedByPeer { .. } => "rejected-by-peer",
            Self::BadCertificate { .. } => "bad-certificate",
        }
    }

    /// The rejection inside a rustls error; `None` when the failure is not
    /// about certificates (protocol errors, I/O...).
    pub fn from_tls_error(error: &rustls::Error) -> Option<Self> {
        match error {
            rustls::Error::InvalidCertificate(error) => Some(from_certificate_error(error)),
            rustls::Error::NoCertificatesPresented => Some(PeerRejection::NoClientCertificate),
            rustls::Error::AlertReceived(alert) if is_certificate_alert(*alert) => {
                Some(PeerRejection::RejectedByPeer {
                    alert: format!("{alert:?}"),
                })
            }
            _ => None,
        }
    }

    /// The rejection inside an I/O error from tokio-rustls (`accept`,
    /// `connect`, or the first read after a TLS 1.3 handshake, where a
    /// server's verdict on the client certificate arrives).
    pub fn from_io_error(error: &io::Error) -> Option<Self> {
        error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .and_then(Self::from_tls_error)
    }

    /// As a rustls error, so that our verifiers can fail a handshake with
    /// it and [`PeerRejection::from_tls_error`] can recover it.
    pub(crate) fn into_tls_error(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }
}

fn from_certificate_error(error: &CertificateError) -> PeerRejection {
    match error {
        CertificateError::UnknownIssuer => PeerRejection::UnknownIssuer,
        CertificateError::Expired => PeerRejection::Expired { not_after: None },
        CertificateError::ExpiredContext { not_after, .. } => PeerRejection::Expired {
            not_after: Some(system_time(*not_after)),
        },
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            PeerRejection::NotYetValid
        }
        CertificateError::Other(other) => match other.0.downcast_ref::<PeerRejection>() {
            Some(rejection) => rejection.clone(),
            None => PeerRejection::BadCertificate {
                reason: other.to_string(),
            },
        },
        other => PeerRejection::BadCertificate {
            reason: other.to_string(),
        },
    }
}

/// Alerts a peer sends when it refuses a certificate.
fn is_certificate_alert(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::CertificateRequired
    )
}

fn system_time(time: UnixTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(time.as_secs())
}

fn expiry(not_after: &Option<SystemTime>) -> String {
    let Some(not_after) = not_after else {
        return String::new();
    };
    let when = time::OffsetDateTime::from(*not_after)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{not_after:?}"));
    format!(" (not after {when})")
}

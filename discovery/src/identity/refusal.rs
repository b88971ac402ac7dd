//! Why a certificate request was refused: one type that carries the gRPC
//! code the sidecar acts on, the metric label operators count, and a
//! message naming what to fix. It never holds the token.

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

/// The kind of refusal; each maps to one gRPC code (see
/// `proto/weft/identity/v1/identity.proto`) and one value of the `reason`
/// label of `weft_discovery_certificates_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// The agent runs without `--ca-dir`.
    NoCa,
    /// The CA certificate has expired: nothing it signs would verify.
    CaExpired,
    /// The service name breaks the naming rules.
    InvalidService,
    /// No token in the request.
    MissingToken,
    /// The token is not a valid credential at all (e.g. not sendable to
    /// Consul as a header).
    MalformedToken,
    /// The token may not act as the service.
    Denied,
    /// The token could not be checked right now (Consul unreachable,
    /// slow, or erring): the sidecar should retry.
    CheckUnavailable,
    /// The CSR does not parse or its signature does not verify.
    InvalidCsr,
    /// Signing failed for a reason that is the agent's, not the caller's.
    SigningFailed,
}

impl RefusalReason {
    /// The gRPC code the sidecar sees.
    pub fn code(self) -> tonic::Code {
        match self {
            RefusalReason::NoCa | RefusalReason::CaExpired => tonic::Code::FailedPrecondition,
            RefusalReason::InvalidService | RefusalReason::InvalidCsr => {
                tonic::Code::InvalidArgument
            }
            RefusalReason::MissingToken | RefusalReason::MalformedToken => {
                tonic::Code::Unauthenticated
            }
            RefusalReason::Denied => tonic::Code::PermissionDenied,
            RefusalReason::CheckUnavailable => tonic::Code::Unavailable,
            RefusalReason::SigningFailed => tonic::Code::Internal,
        }
    }

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::NoCa => "no_ca",
            RefusalReason::CaExpired => "ca_expired",
            RefusalReason::InvalidService => "invalid_service",
            RefusalReason::MissingToken => "missing_token",
            RefusalReason::MalformedToken => "malformed_token",
            RefusalReason::Denied => "denied",
            RefusalReason::CheckUnavailable => "check_unavailable",
            RefusalReason::InvalidCsr => "invalid_csr",
            RefusalReason::SigningFailed => "signing_failed",
        }
    }
}

impl EncodeLabelValue for RefusalReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// A refused request: the kind and what to tell the caller (and the log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: RefusalReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }

    /// The gRPC status sent to the sidecar.
    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::new(self.reason.code(), self.message.clone())
    }
}

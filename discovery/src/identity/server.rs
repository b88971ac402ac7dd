//! `weft.identity.v1.IdentityService`: checks, in this order, that the
//! agent has a CA, that the service name is valid, that the credential may
//! act as the service, and that the CSR is sound; then signs a leaf for the
//! service's SPIFFE ID. Every outcome is logged (never the token) and
//! counted.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tonic::{Request, Response, Status};
use weft_certs::{LeafInfo, SpiffeId};
use weft_proto::identity::v1::identity_service_server::{IdentityService, IdentityServiceServer};
use weft_proto::identity::v1::{SignCertificateRequest, SignCertificateResponse};

use super::NAMESPACE;
use super::authority::CertificateAuthority;
use super::credentials::{Credential, Credentials};
use super::refusal::{Refusal, RefusalReason};
use super::service_name::check_service_name;
use crate::metrics::Metrics;

/// Largest CSR accepted: a P-256 or RSA-4096 CSR is well under 4 KiB of
/// PEM; anything far bigger is not a CSR worth parsing.
const MAX_CSR_BYTES: usize = 16 * 1024;

/// What the service does with a request, by setup.
enum Mode {
    /// No `--ca-dir`: every request is refused with how to enable issuance.
    Disabled,
    /// `--identity-source consul`: sidecars must ask Consul instead.
    ConsulCa,
    Issuing {
        authority: CertificateAuthority,
        credentials: Credentials,
        leaf_ttl: Duration,
    },
}

/// The identity service; cheap to clone.
#[derive(Clone)]
pub struct IdentityServer {
    mode: Arc<Mode>,
    metrics: Arc<Metrics>,
}

impl IdentityServer {
    /// A server that signs with `authority`'s current CA for requests that
    /// `credentials` accept, leaves valid for `leaf_ttl`.
    pub fn issuing(
        authority: CertificateAuthority,
        credentials: Credentials,
        leaf_ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            mode: Arc::new(Mode::Issuing {
                authority,
                credentials,
                leaf_ttl,
            }),
            metrics,
        }
    }

    /// A server for an agent without a CA: answers FAILED_PRECONDITION.
    pub fn disabled(metrics: Arc<Metrics>) -> Self {
        Self {
            mode: Arc::new(Mode::Disabled),
            metrics,
        }
    }

    /// A server for a mesh on Consul's Connect CA: answers
    /// FAILED_PRECONDITION pointing the sidecar at Consul.
    pub fn consul_ca(metrics: Arc<Metrics>) -> Self {
        Self {
            mode: Arc::new(Mode::ConsulCa),
            metrics,
        }
    }

    pub fn into_service(self) -> IdentityServiceServer<Self> {
        IdentityServiceServer::new(self)
    }

    async fn sign(
        &self,
        request: &SignCertificateRequest,
    ) -> Result<(SignCertificateResponse, LeafInfo, Credential), Refusal> {
        let (authority, credentials, leaf_ttl) = match &*self.mode {
            Mode::Issuing {
                authority,
                credentials,
                leaf_ttl,
            } => (authority, credentials, leaf_ttl),
            Mode::Disabled => {
                return Err(Refusal::new(
                    RefusalReason::NoCa,
                    "this agent issues no certificates: start weft-discovery with --ca-dir DIR (WEFT_CA_DIR), a CA directory made by `weftctl ca init --trust-domain <domain> --out DIR`, and --join-tokens FILE or --consul",
                ));
            }
            Mode::ConsulCa => {
                return Err(Refusal::new(
                    RefusalReason::NoCa,
                    "this mesh takes certificates from Consul's Connect CA (the agent runs with --identity-source consul): start the sidecar with --identity-source consul and a Consul ACL token (--consul-token)",
                ));
            }
        };
        let service = request.service.as_str();
        check_service_name(service)
            .map_err(|reason| Refusal::new(RefusalReason::InvalidService, reason))?;
        let credential = credentials.authorize(service, &request.token).await?;

        if request.csr_pem.len() > MAX_CSR_BYTES {
            return Err(Refusal::new(
                RefusalReason::InvalidCsr,
                format!(
                    "the CSR is {} bytes; at most {MAX_CSR_BYTES} are accepted",
                    request.csr_pem.len()
                ),
            ));
        }
        let ca = authority.current();
        if ca.not_after() <= SystemTime::now() {
            return Err(Refusal::new(
                RefusalReason::CaExpired,
                format!(
                    "the agent's CA certificate expired at {}; an operator must rotate it (`weftctl ca rotate --dir {}`)",
                    humantime::format_rfc3339_seconds(ca.not_after()),
                    authority.dir().display()
                ),
            ));
        }
        let identity =
            SpiffeId::service_identity(authority.trust_domain().as_str(), NAMESPACE, service)
                .map_err(|error| Refusal::new(RefusalReason::InvalidService, error.to_string()))?;
        let chain = ca
            .sign_csr(request.csr_pem.as_bytes(), &identity, *leaf_ttl)
            .map_err(|error| match error {
                weft_certs::Error::Csr { .. } => {
                    Refusal::new(RefusalReason::InvalidCsr, error.to_string())
                }
                other => Refusal::new(
                    RefusalReason::SigningFailed,
                    format!("signing failed: {other}"),
                ),
            })?;
        let leaf = LeafInfo::from_pem(&chain).map_err(|error| {
            Refusal::new(
                RefusalReason::SigningFailed,
                format!("the signed leaf does not read back: {error}"),
            )
        })?;
        let response = SignCertificateResponse {
            certificate_chain_pem: chain,
            trust_bundle_pem: ca.bundle().to_pem(),
            spiffe_id: identity.to_string(),
            not_after: Some(leaf.not_after().into()),
        };
        Ok((response, leaf, credential))
    }
}

#[tonic::async_trait]
impl IdentityService for IdentityServer {
    async fn sign_certificate(
        &self,
        request: Request<SignCertificateRequest>,
    ) -> Result<Response<SignCertificateResponse>, Status> {
        let peer = request
            .remote_addr()
            .map(|addr| addr.to_string())
            .unwrap_or_else(|| "unknown".to_string());
        let request = request.into_inner();
        match self.sign(&request).await {
            Ok((response, leaf, credential)) => {
                tracing::info!(
                    service = %request.service,
                    spiffe_id = %response.spiffe_id,
                    serial = %leaf.serial(),
                    not_after = %humantime::format_rfc3339_seconds(leaf.not_after()),
                    %credential,
                    %peer,
                    "certificate issued"
                );
                self.metrics.certificates_issued.inc();
                Ok(Response::new(response))
            }
            Err(refusal) => {
                tracing::warn!(
                    service = %request.service.escape_debug(),
                    reason = refusal.reason.as_str(),
                    message = %refusal.message,
                    %peer,
                    "certificate refused"
                );
                self.metrics.certificate_refused(refusal.reason);
                Err(refusal.to_status())
            }
        }
    }
}

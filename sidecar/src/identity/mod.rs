//! The sidecar's mesh identity: a key pair made here (the private key never
//! leaves the process), a leaf certificate for the service's SPIFFE ID
//! signed by the agent's CA, and the trust bundle.
//!
//! The leaf is renewed at two thirds of its lifetime (a fresh key each
//! time), so new handshakes always present a valid leaf while connections
//! already open carry on untouched; renewal failures are retried with
//! backoff for the remaining third. Both the leaf and the bundle live in a
//! [`weft_certs::IdentityStore`], read by every TLS config at handshake time.
//!
//! That is the `weft` source (the agent signs). With `--identity-source
//! consul` the leaf and roots come from Consul's Connect CA instead
//! ([`consul_ca`]); [`start`] picks the source.

pub mod consul_ca;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tonic::Code;
use weft_certs::{IdentityStore, LeafInfo, LeafKey, SpiffeId, TrustBundle};
use weft_proto::identity::v1::SignCertificateRequest;
use weft_proto::identity::v1::identity_service_client::IdentityServiceClient;

use crate::backoff::Backoff;
use crate::config::{IdentitySource, Settings};
use crate::upstream::Dns;
use crate::xds::client::{ClientSettings, connect};

/// What the sidecar needs to obtain its identity.
#[derive(Clone)]
pub struct IdentitySettings {
    /// The service this sidecar acts as.
    pub service: String,
    /// The agent (the same endpoint as discovery).
    pub agent: ClientSettings,
    /// Proof that this sidecar may act as `service`: a Consul ACL token with
    /// service:write on it, or the service's join token.
    pub token: String,
}

impl std::fmt::Debug for IdentitySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentitySettings")
            .field("service", &self.service)
            .field("agent", &self.agent.discovery)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The agent refused for good (bad token, no CA, bad request): retrying
    /// would not help, the operator must act.
    #[error("the agent refused to sign a certificate for {service}: {message}")]
    Refused { service: String, message: String },
    /// Consul's Connect CA refused (a token without `service:write` on
    /// the service, an unknown token); `message` is Consul's answer.
    #[error("Consul refused to sign a certificate for {service}: {message}")]
    ConsulRefused { service: String, message: String },
    /// The agent was unreachable or could not decide now.
    #[error("cannot reach the agent for a certificate: {0}")]
    Unavailable(String),
    /// The agent's answer could not be used.
    #[error("the agent's certificate cannot be used: {0}")]
    Invalid(String),
}

/// The sidecar's identity once obtained.
pub struct Started {
    pub store: Arc<IdentityStore>,
    /// The trust domain whose `TrustBundle` the agent pushes over ADS:
    /// set for the `weft` source (a root rotation then reaches the sidecar
    /// at once), `None` for Consul (its roots come from Consul).
    pub agent_bundle: Option<String>,
}

/// Obtains the identity from the configured source and keeps it fresh in
/// the background until `shutdown`; `None` when mTLS is off (no
/// `--identity-token` with the `weft` source, or static mode). Waits while
/// the source is unreachable; a refusal fails with the source's reason.
pub async fn start(
    settings: &Settings,
    dns: &Dns,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<Started>, IdentityError> {
    let Some(discovery) = &settings.discovery else {
        return Ok(None);
    };
    match &settings.identity_source {
        IdentitySource::Weft => {
            let Some(token) = &settings.identity_token else {
                return Ok(None);
            };
            let identity_settings = IdentitySettings {
                service: settings.service.clone(),
                agent: ClientSettings::new(discovery.clone()),
                token: token.0.clone(),
            };
            let store = obtain(&identity_settings, dns).await?;
            tokio::spawn(renew(
                store.clone(),
                identity_settings,
                dns.clone(),
                shutdown,
            ));
            let trust_domain = store.leaf().identity().trust_domain().to_string();
            Ok(Some(Started {
                store,
                agent_bundle: Some(trust_domain),
            }))
        }
        IdentitySource::Consul(consul) => {
            let source = consul_ca::ConsulCa::new(consul, &settings.service, dns.clone());
            let initial = source.obtain().await?;
            let store = initial.store.clone();
            tokio::spawn(source.watch(initial, shutdown));
            Ok(Some(Started {
                store,
                agent_bundle: None,
            }))
        }
    }
}

/// One issuance: a fresh key, a CSR, the agent's signature.
async fn issue(settings: &IdentitySettings, dns: &Dns) -> Result<Issued, IdentityError> {
    let key = LeafKey::generate().map_err(|e| IdentityError::Invalid(e.to_string()))?;
    // The CSR's name is informative only: the agent stamps the identity it
    // derives from the service and the credential.
    let requested = SpiffeId::service_identity("weft.local", "default", &settings.service)
        .map_err(|e| IdentityError::Invalid(e.to_string()))?;
    let csr_pem = key
        .csr_pem(&requested)
        .map_err(|e| IdentityError::Invalid(e.to_string()))?;
    let channel = connect(&settings.agent, dns)
        .await
        .map_err(IdentityError::Unavailable)?;
    let mut client = IdentityServiceClient::new(channel);
    let mut request = tonic::Request::new(SignCertificateRequest {
        service: settings.service.clone(),
        csr_pem,
        token: settings.token.clone(),
    });
    request.set_timeout(Duration::from_secs(10));
    let response =
        client
            .sign_certificate(request)
            .await
            .map_err(|status| match status.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Internal => {
                    IdentityError::Unavailable(status.message().to_owned())
                }
                _ => IdentityError::Refused {
                    service: settings.service.clone(),
                    message: format!("{:?}: {}", status.code(), status.message()),
                },
            })?;
    let response = response.into_inner();
    let bundle = TrustBundle::from_pem(&response.trust_bundle_pem)
        .map_err(|e| IdentityError::Invalid(format!("trust bundle: {e}")))?;
    let leaf = LeafInfo::from_pem(&response.certificate_chain_pem)
        .map_err(|e| IdentityError::Invalid(format!("leaf: {e}")))?;
    Ok(Issued {
        chain_pem: response.certificate_chain_pem,
        key_pem: key.private_key_pem(),
        bundle,
        leaf,
    })
}

struct Issued {
    chain_pem: String,
    key_pem: String,
    bundle: TrustBundle,
    leaf: LeafInfo,
}

/// Obtains the first certificate, retrying while the agent is unreachable
/// (it may start after the sidecar). A refusal ends the wait: it needs an
/// operator, and the error says why.
pub async fn obtain(
    settings: &IdentitySettings,
    dns: &Dns,
) -> Result<Arc<IdentityStore>, IdentityError> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match issue(settings, dns).await {
            Ok(issued) => {
                let store = IdentityStore::new(&issued.chain_pem, &issued.key_pem, issued.bundle)
                    .map_err(|e| IdentityError::Invalid(e.to_string()))?;
                log_issued(&issued.leaf, "obtained");
                return Ok(store);
            }
            Err(e @ IdentityError::Unavailable(_)) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "no certificate yet");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn log_issued(leaf: &LeafInfo, what: &str) {
    tracing::info!(
        identity = %leaf.identity(),
        serial = %leaf.serial(),
        not_after = ?leaf.not_after(),
        "certificate {what}"
    );
}

/// Renews the leaf at two thirds of its lifetime until `shutdown`, and
/// keeps the bundle the agent returns with it.
pub async fn renew(
    store: Arc<IdentityStore>,
    settings: IdentitySettings,
    dns: Dns,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut wait = until(store.leaf().rotate_at());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = crate::shutdown::shutdown_signal(&mut shutdown) => return,
        }
        match issue(&settings, &dns).await {
            Ok(issued) => {
                if let Err(e) = store.set_bundle(issued.bundle) {
                    tracing::warn!(error = %e, "the agent's trust bundle was not applied");
                }
                match store.set_leaf(&issued.chain_pem, &issued.key_pem) {
                    Ok(leaf) => {
                        log_issued(&leaf, "renewed");
                        backoff.reset();
                        wait = until(leaf.rotate_at());
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the renewed certificate was not applied");
                        wait = backoff.next_delay();
                    }
                }
            }
            Err(e) => {
                // Keep trying while the current leaf is still valid; past
                // its expiry peers refuse it, which the error log explains.
                wait = backoff.next_delay();
                tracing::warn!(
                    error = %e,
                    retry_in = ?wait,
                    expires = ?store.leaf().not_after(),
                    "certificate renewal failed"
                );
            }
        }
    }
}

fn until(at: SystemTime) -> Duration {
    at.duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

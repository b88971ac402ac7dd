//! `--identity-source consul`: sidecars take their leaves and roots from
//! Consul's Connect CA, and the agent only names the identities Clusters
//! carry, in Consul's form and trust domain.
//!
//! The trust domain (`<cluster-uuid>.consul`) comes from
//! `/v1/agent/connect/ca/roots` and the datacenter from `/v1/agent/self`,
//! asked once at start: Consul keeps its trust domain across root
//! rotations, and the agent serves one datacenter's catalog.

use std::time::Duration;

use crate::consul::{ConsulClient, ConsulError, QueryOptions};

use super::ServiceIdentities;

/// First and longest pause between attempts while Consul cannot answer
/// yet (not running, no leader, CA not initialized).
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Why Consul's identities are not known (yet).
enum Failure {
    /// Worth asking again (Consul down, no leader, CA still starting).
    Transient(String),
    /// An operator must act (ACLs, Connect disabled, a bad answer).
    Fatal(String),
}

impl From<ConsulError> for Failure {
    fn from(error: ConsulError) -> Self {
        let text = error.to_string();
        if text.contains("Connect must be enabled") {
            Failure::Fatal(format!(
                "{text}; enable Connect on the Consul servers (`connect {{ enabled = true }}`; -dev enables it)"
            ))
        } else if error.is_retryable() {
            Failure::Transient(text)
        } else {
            Failure::Fatal(text)
        }
    }
}

/// Consul's trust domain and this agent's datacenter; waits (with capped
/// backoff, logging) while Consul cannot answer, and fails with Consul's
/// reason when it refuses.
pub async fn consul_identities(client: &ConsulClient) -> Result<ServiceIdentities, String> {
    let mut delay = RETRY_FIRST;
    loop {
        match ask(client).await {
            Ok(identities) => return Ok(identities),
            Err(Failure::Fatal(reason)) => {
                return Err(format!(
                    "--identity-source consul: cannot learn Consul's trust domain and datacenter from {}: {reason}",
                    client.address()
                ));
            }
            Err(Failure::Transient(reason)) => {
                tracing::warn!(consul = %client.address(), %reason, retry_in = ?delay, "waiting for Consul's Connect CA");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}

async fn ask(client: &ConsulClient) -> Result<ServiceIdentities, Failure> {
    let (roots, _) = client.connect_ca_roots(&QueryOptions::default()).await?;
    if roots.trust_domain.is_empty() || !roots.roots.iter().any(|root| root.active) {
        return Err(Failure::Transient(
            "Consul's Connect CA has no active root yet".into(),
        ));
    }
    let trust_domain = roots
        .trust_domain
        .parse()
        .map_err(|error| Failure::Fatal(format!("Consul's trust domain is not usable: {error}")))?;
    let datacenter = client.agent_datacenter().await.map_err(|error| match error {
        ConsulError::Status { status, .. } if status == http::StatusCode::FORBIDDEN => {
            Failure::Fatal(format!(
                "{error}; the agent's token (--consul-token) needs agent:read to read the datacenter"
            ))
        }
        other => Failure::from(other),
    })?;
    if datacenter.is_empty() {
        return Err(Failure::Fatal("/v1/agent/self names no datacenter".into()));
    }
    Ok(ServiceIdentities::Consul {
        trust_domain,
        datacenter,
    })
}

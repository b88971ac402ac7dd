//! The SPIFFE ID each destination's sidecars present, as Clusters name it.
//!
//! Which form depends on who signs the mesh's leaves: the agent's own CA
//! (`spiffe://<td>/ns/default/svc/<svc>`) or Consul's Connect CA
//! (`spiffe://<td>/ns/default/dc/<dc>/svc/<svc>`, with Consul's trust
//! domain `<cluster-uuid>.consul`). A sidecar compares the presented ID
//! with the Cluster's by trust domain, namespace and service
//! ([`SpiffeId::same_service`]), so the trust domain must be the signer's.

use weft_certs::{SpiffeId, TrustDomain};

use super::NAMESPACE;

/// How the agent names service identities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceIdentities {
    /// Leaves from the agent's CA (`--ca-dir`).
    Weft(TrustDomain),
    /// Leaves from Consul's Connect CA (`--identity-source consul`): the
    /// trust domain from `/v1/connect/ca/roots`, the datacenter from
    /// `/v1/agent/self`.
    Consul {
        trust_domain: TrustDomain,
        datacenter: String,
    },
}

impl ServiceIdentities {
    /// The identity of `service`; `None` for a name that is no valid SPIFFE
    /// path segment (no sidecar can get a certificate for it either).
    pub fn of(&self, service: &str) -> Option<SpiffeId> {
        match self {
            Self::Weft(trust_domain) => {
                SpiffeId::service_identity(trust_domain.as_str(), NAMESPACE, service).ok()
            }
            Self::Consul {
                trust_domain,
                datacenter,
            } => format!("spiffe://{trust_domain}/ns/{NAMESPACE}/dc/{datacenter}/svc/{service}")
                .parse()
                .ok(),
        }
    }

    /// The trust domain every identity is in.
    pub fn trust_domain(&self) -> &TrustDomain {
        match self {
            Self::Weft(trust_domain) | Self::Consul { trust_domain, .. } => trust_domain,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consul_identities_carry_the_datacenter_like_consuls_leaves() {
        let consul = ServiceIdentities::Consul {
            trust_domain: "11111111-2222-3333-4444-555555555555.consul"
                .parse()
                .unwrap(),
            datacenter: "dc1".into(),
        };
        let users = consul.of("users").unwrap();
        assert_eq!(
            users.to_string(),
            "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/users"
        );
        let weft = ServiceIdentities::Weft("mesh.test".parse().unwrap());
        assert_eq!(
            weft.of("users").unwrap().to_string(),
            "spiffe://mesh.test/ns/default/svc/users"
        );
        assert_eq!(weft.of("not a name"), None);
    }
}

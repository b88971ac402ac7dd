//! A mesh identity minted per test the way the agent mints it: a fresh
//! root CA of a trust domain (Weft's own CA code, `weft-certs`), and one
//! service's key and leaf, signed from a CSR, in the identity store a
//! sidecar serves mTLS from.

use std::sync::Arc;
use std::time::Duration;

use weft_certs::{Ca, IdentityStore, LeafKey, SpiffeId};

/// How long the CA and the leaf live: longer than any test.
const CA_LIFETIME: Duration = Duration::from_secs(3600);
const LEAF_LIFETIME: Duration = Duration::from_secs(600);

/// One service's identity in a fresh mesh.
pub struct MeshIdentity {
    /// The root that signed the leaf (it can sign more, or be replaced to
    /// test rotation).
    pub ca: Ca,
    /// `spiffe://<trust domain>/ns/default/svc/<service>`.
    pub id: SpiffeId,
    /// The leaf, its key and the CA's bundle, as a sidecar holds them.
    pub store: Arc<IdentityStore>,
}

impl MeshIdentity {
    /// `service`'s identity in `trust_domain` (e.g. `mesh.test`, `web`).
    /// Panics on failure: a test cannot go on without it.
    pub fn mint(trust_domain: &str, service: &str) -> Self {
        let domain = trust_domain
            .parse()
            .unwrap_or_else(|e| panic!("trust domain {trust_domain:?}: {e}"));
        let ca = Ca::generate_root(&domain, CA_LIFETIME).expect("a root CA");
        let key = LeafKey::generate().expect("a leaf key");
        let id = SpiffeId::service_identity(trust_domain, "default", service)
            .unwrap_or_else(|e| panic!("service {service:?}: {e}"));
        let csr = key.csr_pem(&id).expect("a CSR");
        let chain = ca
            .sign_csr(csr.as_bytes(), &id, LEAF_LIFETIME)
            .expect("a signed leaf");
        let store = IdentityStore::new(&chain, &key.private_key_pem(), ca.bundle().clone())
            .expect("an identity store");
        Self { ca, id, store }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leaf_names_the_service_and_chains_to_the_minted_root() {
        let web = MeshIdentity::mint("mesh.test", "web");
        assert_eq!(web.id.to_string(), "spiffe://mesh.test/ns/default/svc/web");
        assert_eq!(web.store.leaf().identity(), &web.id);
        assert_eq!(web.store.bundle().len(), 1);
    }
}

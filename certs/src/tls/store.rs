//! The sidecar's current identity and trust, swappable at runtime.
//!
//! Every TLS config built by [`super::server_config`] and
//! [`super::client_config`] reads this store at handshake time, so a renewed
//! leaf or a rotated bundle takes effect on the next handshake without
//! rebuilding configs, and connections already established keep the keys
//! they negotiated: rotation never drops a connection.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;

use crate::bundle::TrustBundle;
use crate::error::Error;
use crate::leaf::LeafInfo;
use crate::x509;

/// The leaf (certificate chain + key) and the trust bundle, each behind an
/// `ArcSwap`: handshakes load them lock-free, updates replace them whole.
pub struct IdentityStore {
    pub(super) provider: Arc<CryptoProvider>,
    pub(super) leaf: ArcSwap<Leaf>,
    pub(super) trust: ArcSwap<Trust>,
}

/// A leaf ready for rustls, with its parsed facts.
pub(super) struct Leaf {
    pub(super) certified: Arc<CertifiedKey>,
    pub(super) info: LeafInfo,
}

/// A bundle with what the verifiers derive from it, computed once per
/// update rather than per handshake.
pub(super) struct Trust {
    pub(super) bundle: TrustBundle,
    pub(super) roots: Arc<RootCertStore>,
    /// rustls's chain check for client certificates (clientAuth EKU,
    /// validity, signatures); the SPIFFE ID check is ours.
    pub(super) client_chain: Arc<dyn ClientCertVerifier>,
}

impl IdentityStore {
    /// A store holding the leaf `chain_pem` (leaf first, then any
    /// intermediates) with its private key, trusting `bundle`.
    pub fn new(chain_pem: &str, key_pem: &str, bundle: TrustBundle) -> Result<Arc<Self>, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let leaf = load_leaf(&provider, chain_pem, key_pem)?;
        let trust = load_trust(&provider, bundle)?;
        Ok(Arc::new(Self {
            provider,
            leaf: ArcSwap::from_pointee(leaf),
            trust: ArcSwap::from_pointee(trust),
        }))
    }

    /// Replaces the leaf presented by new handshakes (server and client
    /// side). Refuses a chain without a SPIFFE ID or a key that does not
    /// match it, keeping the current leaf.
    pub fn set_leaf(&self, chain_pem: &str, key_pem: &str) -> Result<LeafInfo, Error> {
        let leaf = load_leaf(&self.provider, chain_pem, key_pem)?;
        let info = leaf.info.clone();
        self.leaf.store(Arc::new(leaf));
        Ok(info)
    }

    /// Replaces the roots new handshakes verify peers against. Refuses an
    /// empty bundle (it would reject every peer), keeping the current one.
    pub fn set_bundle(&self, bundle: TrustBundle) -> Result<(), Error> {
        let trust = load_trust(&self.provider, bundle)?;
        self.trust.store(Arc::new(trust));
        Ok(())
    }

    /// The current leaf's facts (identity, serial, validity, `rotate_at`).
    pub fn leaf(&self) -> LeafInfo {
        self.leaf.load().info.clone()
    }

    /// The current trust bundle.
    pub fn bundle(&self) -> TrustBundle {
        self.trust.load().bundle.clone()
    }
}

impl fmt::Debug for IdentityStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityStore")
            .field("leaf", &self.leaf.load().info)
            .field("bundle", &self.trust.load().bundle)
            .finish()
    }
}

fn load_leaf(provider: &CryptoProvider, chain_pem: &str, key_pem: &str) -> Result<Leaf, Error> {
    let chain = x509::certificates_from_pem("leaf certificate chain", chain_pem)?;
    let info = LeafInfo::from_der(&chain[0])?;
    let key = x509::private_key_from_pem("leaf key", key_pem)?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|error| {
        Error::key(
            "leaf key",
            format!(
                "unusable with the certificate of {}: {error}",
                info.identity()
            ),
        )
    })?;
    Ok(Leaf {
        certified: Arc::new(certified),
        info,
    })
}

fn load_trust(provider: &Arc<CryptoProvider>, bundle: TrustBundle) -> Result<Trust, Error> {
    let roots = Arc::new(bundle.root_store()?);
    let client_chain = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|error| Error::certificate("trust bundle", error.to_string()))?;
    Ok(Trust {
        bundle,
        roots,
        client_chain,
    })
}

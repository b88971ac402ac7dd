//! The sidecar's side of issuance: a key pair made locally (the private key
//! never leaves the process), a CSR for the CA, and the facts of the leaf
//! that comes back (identity, validity, when to renew).

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::KeyPair;

use crate::ca::{generate_key, leaf_params};
use crate::error::Error;
use crate::spiffe::SpiffeId;
use crate::x509;

/// A fresh ECDSA P-256 key pair for one leaf. Make a new one for every
/// renewal, so a leaked old key is useless once its leaf expires.
pub struct LeafKey {
    key: KeyPair,
}

impl LeafKey {
    /// Generates the key pair.
    pub fn generate() -> Result<Self, Error> {
        let key = generate_key("generating a leaf key")?;
        Ok(Self { key })
    }

    /// A PEM CSR for `identity`, signed with this key. The URI SAN is
    /// included because Consul's CA requires it; Weft's CA ignores it and
    /// uses the identity its caller vouches for.
    pub fn csr_pem(&self, identity: &SpiffeId) -> Result<String, Error> {
        let csr = leaf_params(identity)?
            .serialize_request(&self.key)
            .map_err(|error| Error::signing(format!("CSR for {identity}"), error))?;
        csr.pem()
            .map_err(|error| Error::signing(format!("CSR for {identity}"), error))
    }

    /// The private key as PKCS#8 PEM, for [`crate::tls::IdentityStore`].
    /// Keep it in memory: writing it to disk defeats the point of a local key.
    pub fn private_key_pem(&self) -> String {
        self.key.serialize_pem()
    }
}

impl fmt::Debug for LeafKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LeafKey([secret])")
    }
}

/// What a sidecar needs to know about its leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    identity: SpiffeId,
    serial: String,
    issuer: String,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl LeafInfo {
    /// Reads the first certificate of a PEM chain (the leaf).
    pub fn from_pem(chain_pem: &str) -> Result<Self, Error> {
        let chain = x509::certificates_from_pem("leaf certificate chain", chain_pem)?;
        Self::from_der(&chain[0])
    }

    /// Reads one DER leaf certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, Error> {
        let certificate = x509::parse("leaf certificate", der)?;
        let identity = x509::spiffe_id(&certificate)
            .map_err(|reason| Error::certificate("leaf certificate", reason))?;
        let validity = certificate.validity();
        Ok(Self {
            identity,
            serial: x509::hex(certificate.raw_serial()),
            issuer: certificate.issuer().to_string(),
            not_before: x509::system_time(validity.not_before),
            not_after: x509::system_time(validity.not_after),
        })
    }

    /// The leaf's SPIFFE ID (its URI SAN).
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// The serial number, lower-case hex: tells two leaves apart in logs.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The issuer's DN (`CN=Weft root CA 1a2b3c4d, O=Weft`): which root
    /// signed the leaf, during a rotation.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Start of validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// When to renew: two thirds into the lifetime. That leaves a third of
    /// it (8 h of a 24 h leaf) to retry against a slow or absent CA before
    /// peers start refusing the expired leaf.
    ///
    /// The lifetime counts from when the leaf was issued, not from its
    /// `not_before`: CAs (ours and Consul's) backdate that by a minute for
    /// clock skew, which for a short-lived leaf would put the renewal time
    /// in the past and make its holder renew in a loop.
    pub fn rotate_at(&self) -> SystemTime {
        let issued = (self.not_before + crate::ca::CLOCK_SKEW).min(self.not_after);
        let lifetime = self
            .not_after
            .duration_since(issued)
            .unwrap_or(Duration::ZERO);
        issued + lifetime * 2 / 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::Ca;

    #[test]
    fn a_signed_csr_yields_a_leaf_for_the_callers_identity_that_renews_at_two_thirds() {
        let trust_domain = "example.org".parse().unwrap();
        let ca = Ca::generate_root(&trust_domain, Duration::from_secs(3600 * 24 * 30)).unwrap();
        let asked: SpiffeId = "spiffe://example.org/ns/default/svc/admin".parse().unwrap();
        let granted: SpiffeId = "spiffe://example.org/ns/default/svc/users".parse().unwrap();
        let key = LeafKey::generate().unwrap();
        let chain = ca
            .sign_csr(
                key.csr_pem(&asked).unwrap().as_bytes(),
                &granted,
                Duration::from_secs(3 * 3600),
            )
            .unwrap();
        let leaf = LeafInfo::from_pem(&chain).unwrap();
        assert_eq!(leaf.identity(), &granted, "the CSR's own SAN is ignored");
        let lifetime = leaf.not_after().duration_since(leaf.not_before()).unwrap();
        assert_eq!(
            lifetime,
            Duration::from_secs(3 * 3600 + 60),
            "a minute of skew"
        );
        // Two thirds of the 3 h from issuance (the backdating excluded).
        assert_eq!(
            leaf.rotate_at(),
            leaf.not_before() + Duration::from_secs(60 + 3 * 3600 * 2 / 3)
        );
        // A short-lived leaf renews in the future, not before it was issued.
        let short = ca
            .sign_csr(
                key.csr_pem(&asked).unwrap().as_bytes(),
                &granted,
                Duration::from_secs(6),
            )
            .unwrap();
        let short = LeafInfo::from_pem(&short).unwrap();
        assert_eq!(
            short.rotate_at(),
            short.not_before() + Duration::from_secs(60 + 4)
        );
        assert_eq!(leaf.serial().len(), 32, "128-bit random serial");
    }

    #[test]
    fn a_tampered_csr_is_refused() {
        let trust_domain = "example.org".parse().unwrap();
        let ca = Ca::generate_root(&trust_domain, Duration::from_secs(3600)).unwrap();
        let id: SpiffeId = "spiffe://example.org/ns/default/svc/users".parse().unwrap();
        let pem = LeafKey::generate().unwrap().csr_pem(&id).unwrap();
        let mut der = rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
            .map(|csr: rustls::pki_types::CertificateSigningRequestDer<'_>| csr.as_ref().to_vec())
            .unwrap();
        // Flip a bit inside the subject CN ("users"): the signature no longer matches.
        let at = der.windows(5).position(|w| w == b"users").unwrap();
        der[at] ^= 0x01;
        let error = ca.sign_csr(&der, &id, Duration::from_secs(60)).unwrap_err();
        assert!(
            error.to_string().contains("signature does not verify"),
            "{error}"
        );
    }

    #[test]
    fn a_ca_signs_only_its_own_trust_domain() {
        let ca =
            Ca::generate_root(&"example.org".parse().unwrap(), Duration::from_secs(3600)).unwrap();
        let foreign: SpiffeId = "spiffe://other.org/ns/default/svc/users".parse().unwrap();
        let csr = LeafKey::generate().unwrap().csr_pem(&foreign).unwrap();
        let error = ca
            .sign_csr(csr.as_bytes(), &foreign, Duration::from_secs(60))
            .unwrap_err();
        assert!(
            error.to_string().contains("trust domain example.org only"),
            "{error}"
        );
    }
}

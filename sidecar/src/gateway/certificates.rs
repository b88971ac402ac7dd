//! The certificates an HTTPS listener serves, chosen per handshake by SNI.
//!
//! A listener's [`SniCertificates`] is rustls's certificate resolver: it
//! reads the current [`CertificateSet`] from an `ArcSwap` at each
//! handshake, so a new set (a KV document changed, a file rewritten) is
//! served to the next handshake while open connections keep the session
//! they negotiated: a reload drops nothing.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// One certificate with the DNS names it serves, read from its leaf's
/// subject alternative names.
#[derive(Clone)]
pub struct ServedCertificate {
    /// Where it came from: the chain file's path or `certificates/<name>`.
    pub source: String,
    pub names: Vec<String>,
    pub key: Arc<CertifiedKey>,
}

impl fmt::Debug for ServedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServedCertificate")
            .field("source", &self.source)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl ServedCertificate {
    /// `chain_pem` and `key_pem` checked by the rule both ends apply, and
    /// the names the leaf serves.
    pub fn from_pem(source: String, chain_pem: &str, key_pem: &str) -> Result<Self, String> {
        let key = weft_rules::gateway::parse_certificate(chain_pem, key_pem)?;
        let names = leaf_dns_names(&key)?;
        Ok(Self {
            source,
            names,
            key: Arc::new(key),
        })
    }
}

/// The leaf's DNS names (lower case); a leaf with none can only be the
/// default certificate, which is allowed.
fn leaf_dns_names(key: &CertifiedKey) -> Result<Vec<String>, String> {
    use x509_parser::extensions::GeneralName;
    let Some(leaf) = key.cert.first() else {
        return Err("the chain holds no certificate".into());
    };
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("the leaf certificate cannot be parsed: {e}"))?;
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(format!("the leaf's subject alternative names: {e}")),
    };
    Ok(names)
}

/// A listener's certificates, indexed by the names they serve.
#[derive(Debug, Default)]
pub struct CertificateSet {
    certificates: Vec<ServedCertificate>,
    /// Exact names to their certificate; the first listed wins a name two
    /// certificates share.
    exact: HashMap<String, usize>,
    /// `*.example.com` as `example.com`: one label deep, as RFC 6125 says.
    wildcard: HashMap<String, usize>,
}

impl CertificateSet {
    pub fn new(certificates: Vec<ServedCertificate>) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, cert) in certificates.iter().enumerate() {
            for name in &cert.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_owned()).or_insert(i),
                    None => exact.entry(name.clone()).or_insert(i),
                };
            }
        }
        Self {
            certificates,
            exact,
            wildcard,
        }
    }

    /// The certificate for `sni`: an exact name, else a wildcard one, else
    /// the first (the default, also for a handshake without SNI).
    pub fn select(&self, sni: Option<&str>) -> Option<&ServedCertificate> {
        let index = sni
            .map(|name| name.to_ascii_lowercase())
            .and_then(|name| {
                self.exact.get(&name).copied().or_else(|| {
                    name.split_once('.')
                        .and_then(|(_, parent)| self.wildcard.get(parent).copied())
                })
            })
            .unwrap_or(0);
        self.certificates.get(index)
    }

    pub fn certificates(&self) -> &[ServedCertificate] {
        &self.certificates
    }
}

/// rustls's resolver over the current set.
#[derive(Debug, Default)]
pub struct SniCertificates {
    current: ArcSwap<CertificateSet>,
}

impl SniCertificates {
    pub fn new(set: CertificateSet) -> Self {
        Self {
            current: ArcSwap::from_pointee(set),
        }
    }

    /// Serves `set` from the next handshake on.
    pub fn replace(&self, set: CertificateSet) {
        self.current.store(Arc::new(set));
    }

    pub fn current(&self) -> Arc<CertificateSet> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for SniCertificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .load()
            .select(hello.server_name())
            .map(|cert| cert.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(names: &[&str]) -> ServedCertificate {
        let key = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        ServedCertificate::from_pem(
            names[0].into(),
            &key.cert.pem(),
            &key.signing_key.serialize_pem(),
        )
        .unwrap()
    }

    #[test]
    fn sni_picks_the_exact_name_then_a_wildcard_then_the_first() {
        let set = CertificateSet::new(vec![
            served(&["api.example.com"]),
            served(&["www.example.com", "example.com"]),
            served(&["*.shop.example.com"]),
        ]);
        let pick = |sni| set.select(sni).unwrap().source.as_str();
        assert_eq!(pick(Some("www.example.com")), "www.example.com");
        assert_eq!(pick(Some("EXAMPLE.com")), "www.example.com");
        assert_eq!(pick(Some("eu.shop.example.com")), "*.shop.example.com");
        // One label deep only.
        assert_eq!(pick(Some("a.eu.shop.example.com")), "api.example.com");
        assert_eq!(pick(Some("unknown.test")), "api.example.com");
        assert_eq!(pick(None), "api.example.com");
    }

    #[test]
    fn a_replaced_set_is_served_from_the_next_lookup() {
        let resolver = SniCertificates::new(CertificateSet::new(vec![served(&["a.test"])]));
        resolver.replace(CertificateSet::new(vec![served(&["b.test"])]));
        assert_eq!(resolver.current().select(None).unwrap().source, "b.test");
    }
}

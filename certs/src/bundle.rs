//! The set of roots a sidecar trusts.
//!
//! A bundle holds several roots at once so that a root can be rotated
//! without an outage: add the new root everywhere, re-issue leaves from it,
//! and only then remove the old root. While both are present, leaves of
//! either verify.

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;

use crate::error::Error;
use crate::x509;

/// Trusted root certificates (DER), in the order they were added, without
/// duplicates. Every entry is a parsed CA certificate.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
}

impl TrustBundle {
    /// An empty bundle (trusts nothing until roots are added).
    pub fn new() -> Self {
        Self::default()
    }

    /// Every `CERTIFICATE` block in `pem`; each must be a CA certificate.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        let mut bundle = Self::new();
        bundle.add_pem(pem)?;
        Ok(bundle)
    }

    /// The roots as concatenated PEM blocks (the `bundle.pem` format).
    pub fn to_pem(&self) -> String {
        self.roots
            .iter()
            .map(|root| x509::to_pem("CERTIFICATE", root))
            .collect()
    }

    /// Adds one root; `Ok(false)` if it was already there.
    pub fn add(&mut self, root: CertificateDer<'static>) -> Result<bool, Error> {
        check_root(self.roots.len(), &root)?;
        if self.roots.contains(&root) {
            return Ok(false);
        }
        self.roots.push(root);
        Ok(true)
    }

    /// Adds every root in `pem`; returns how many were new. Nothing is
    /// added if any block is not a CA certificate.
    pub fn add_pem(&mut self, pem: &str) -> Result<usize, Error> {
        let roots = x509::certificates_from_pem("trust bundle PEM", pem)?;
        for (index, root) in roots.iter().enumerate() {
            check_root(index, root)?;
        }
        let mut added = 0;
        for root in roots {
            added += usize::from(self.add(root)?);
        }
        Ok(added)
    }

    /// Removes one root; `false` if it was not there.
    pub fn remove(&mut self, root: &CertificateDer<'_>) -> bool {
        let before = self.roots.len();
        self.roots
            .retain(|present| present.as_ref() != root.as_ref());
        self.roots.len() != before
    }

    /// Removes every root in `pem`; returns how many were present.
    pub fn remove_pem(&mut self, pem: &str) -> Result<usize, Error> {
        let roots = x509::certificates_from_pem("roots to remove", pem)?;
        Ok(roots.iter().filter(|root| self.remove(root)).count())
    }

    /// True if `root` is in the bundle.
    pub fn contains(&self, root: &CertificateDer<'_>) -> bool {
        self.roots
            .iter()
            .any(|present| present.as_ref() == root.as_ref())
    }

    /// The roots, oldest first.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// How many roots the bundle holds.
    pub fn len(&self) -> usize {
        self.roots.len()
    }

    /// What each root is (subject, serial, validity), in the order of
    /// [`roots`](Self::roots), for status pages. Every root parsed when it
    /// was added; one that did not would show as `<unparsable>`.
    pub fn describe(&self) -> Vec<RootFacts> {
        self.roots
            .iter()
            .map(|root| match x509::parse("root", root) {
                Ok(certificate) => {
                    let validity = certificate.validity();
                    RootFacts {
                        subject: certificate.subject().to_string(),
                        serial: x509::hex(certificate.raw_serial()),
                        not_before: x509::system_time(validity.not_before),
                        not_after: x509::system_time(validity.not_after),
                    }
                }
                Err(_) => RootFacts {
                    subject: "<unparsable>".into(),
                    serial: String::new(),
                    not_before: std::time::UNIX_EPOCH,
                    not_after: std::time::UNIX_EPOCH,
                },
            })
            .collect()
    }

    /// True when the bundle trusts nothing.
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// The bundle as rustls trust anchors; an empty bundle is an error
    /// because it would reject every peer.
    pub(crate) fn root_store(&self) -> Result<RootCertStore, Error> {
        if self.roots.is_empty() {
            return Err(Error::EmptyBundle);
        }
        let mut store = RootCertStore::empty();
        for (index, root) in self.roots.iter().enumerate() {
            store.add(root.clone()).map_err(|error| {
                Error::certificate(
                    format!("trust bundle root #{}", index + 1),
                    format!("not usable as a trust anchor: {error}"),
                )
            })?;
        }
        Ok(store)
    }
}

/// The facts of one trusted root, as [`TrustBundle::describe`] gives them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootFacts {
    /// The subject DN, e.g. `CN=Weft Root CA ...`.
    pub subject: String,
    /// Serial number, lower-case hex.
    pub serial: String,
    pub not_before: std::time::SystemTime,
    pub not_after: std::time::SystemTime,
}

impl std::fmt::Debug for TrustBundle {
    /// Roots by serial number: the DER bytes are noise in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let serials: Vec<String> = self
            .roots
            .iter()
            .map(|root| match x509::parse("root", root) {
                Ok(certificate) => x509::hex(certificate.raw_serial()),
                Err(_) => "<unparsable>".into(),
            })
            .collect();
        f.debug_struct("TrustBundle")
            .field("root_serials", &serials)
            .finish()
    }
}

/// A root must parse and be a CA: a leaf in the bundle would never anchor
/// a chain, and would hide an operator's mistake.
fn check_root(index: usize, root: &CertificateDer<'_>) -> Result<(), Error> {
    let what = format!("trust bundle root #{}", index + 1);
    let certificate = x509::parse(&what, root)?;
    if !certificate.is_ca() {
        return Err(Error::certificate(
            what,
            format!(
                "{} is not a CA certificate (basicConstraints CA:true missing)",
                certificate.subject()
            ),
        ));
    }
    Ok(())
}

//! A small certificate authority for the mesh (rcgen, ECDSA P-256).
//!
//! The CA signs one kind of certificate: a workload leaf whose only identity
//! is the SPIFFE URI SAN chosen by the caller (the discovery agent, which
//! knows who is asking). Names requested in the CSR are ignored on purpose:
//! a CSR is attacker-controlled input, and the identity must come from the
//! caller's authorization decision, not from the requester. The CSR's
//! self-signature is still checked, proving the requester holds the key.
//!
//! The CA is either a self-signed root Weft generated (`weftctl ca init`) or
//! an intermediate signed by an operator's root; either way its trust
//! bundle lists the roots sidecars must trust.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use crate::bundle::TrustBundle;
use crate::error::Error;
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::x509;

/// How long a leaf lives unless the caller says otherwise: a day, so a
/// stolen key is useful for hours, while sidecars renew at two thirds of it
/// (16 h) and a CA outage of up to 8 h goes unnoticed.
pub const DEFAULT_LEAF_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How long a generated root lives: ten years, because replacing a root
/// means touching every sidecar's bundle; rotation is a planned operation.
pub const DEFAULT_ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// Certificates start this far in the past, so that a peer whose clock is a
/// little behind does not reject a leaf issued a moment ago.
pub(crate) const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The files of a CA directory ([`Ca::save`], [`Ca::load`]).
pub mod files {
    /// The signing certificate (for an intermediate: followed by the rest
    /// of its chain up to, not including, the root).
    pub const CA_CERT: &str = "ca.pem";
    /// The signing key, PKCS#8 PEM, mode 0600.
    pub const CA_KEY: &str = "ca.key";
    /// The roots sidecars trust (several during a rotation).
    pub const BUNDLE: &str = "bundle.pem";
    /// The trust domain, one line.
    pub const TRUST_DOMAIN: &str = "trust-domain";
    /// The signing root cross-signed by the root(s) it replaced
    /// (`weftctl ca rotate`); absent when there was no rotation.
    pub const CROSS_SIGNED: &str = "cross-signed.pem";
}

/// A signing CA: certificate, key, the chain sent with each leaf, and the
/// trust bundle to hand to sidecars.
pub struct Ca {
    trust_domain: TrustDomain,
    certificate: CertificateDer<'static>,
    not_after: SystemTime,
    issuer: Issuer<'static, KeyPair>,
    /// Certificates sent after each leaf: empty for a root (peers hold it in
    /// their bundle); the intermediate and its own issuers otherwise.
    chain: Vec<CertificateDer<'static>>,
    /// After a rotation: the signing root cross-signed by the root it
    /// replaced, sent after each leaf. A peer that does not have the new
    /// root yet then still verifies the leaf through the old root, so a
    /// sidecar renewing right after a rotation is never refused by one that
    /// has not received the new bundle.
    cross_signed: Vec<CertificateDer<'static>>,
    bundle: TrustBundle,
}

impl Ca {
    /// A new self-signed root for `trust_domain`, valid for `ttl`; its
    /// bundle holds just itself.
    pub fn generate_root(trust_domain: &TrustDomain, ttl: Duration) -> Result<Ca, Error> {
        let key = generate_key("generating the root key")?;
        let certificate = root_params(trust_domain, ttl)?
            .self_signed(&key)
            .map_err(|error| Error::signing("self-signing the root", error))?;
        let certificate = certificate.der().clone();
        let mut bundle = TrustBundle::new();
        bundle.add(certificate.clone())?;
        Ca::assemble(trust_domain.clone(), certificate, key, Vec::new(), bundle)
    }

    /// A root loaded from PEM (one certificate, one PKCS#8 key).
    pub fn from_root_pem(
        trust_domain: &TrustDomain,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Ca, Error> {
        let certificate = single_certificate("root certificate", cert_pem)?;
        let parsed = x509::parse("root certificate", &certificate)?;
        if !x509::is_self_signed(&parsed) {
            return Err(Error::certificate(
                "root certificate",
                format!(
                    "{} is not self-signed; load it as an intermediate with its root",
                    parsed.subject()
                ),
            ));
        }
        let key = load_key("root key", key_pem)?;
        let mut bundle = TrustBundle::new();
        bundle.add(certificate.clone())?;
        Ca::assemble(trust_domain.clone(), certificate, key, Vec::new(), bundle)
    }

    /// An intermediate signed by an operator's root. `cert_pem` is the
    /// intermediate, optionally followed by further intermediates up to the
    /// root; `root_pem` holds the operator root(s), which become the bundle.
    pub fn from_intermediate_pem(
        trust_domain: &TrustDomain,
        cert_pem: &str,
        key_pem: &str,
        root_pem: &str,
    ) -> Result<Ca, Error> {
        let chain = x509::certificates_from_pem("intermediate certificate", cert_pem)?;
        let key = load_key("intermediate key", key_pem)?;
        let bundle = TrustBundle::from_pem(root_pem)?;
        Ca::assemble(trust_domain.clone(), chain[0].clone(), key, chain, bundle)
    }

    /// Checks that the parts fit together, then builds the CA.
    fn assemble(
        trust_domain: TrustDomain,
        certificate: CertificateDer<'static>,
        key: KeyPair,
        chain: Vec<CertificateDer<'static>>,
        bundle: TrustBundle,
    ) -> Result<Ca, Error> {
        let what = if chain.is_empty() {
            "root certificate"
        } else {
            "intermediate certificate"
        };
        let parsed = x509::parse(what, &certificate)?;
        if !parsed.is_ca() {
            return Err(Error::certificate(
                what,
                format!(
                    "{} is not a CA certificate (basicConstraints CA:true missing)",
                    parsed.subject()
                ),
            ));
        }
        if parsed.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(Error::key(
                "CA key",
                format!("it does not belong to the certificate {}", parsed.subject()),
            ));
        }
        if chain.is_empty() {
            if !bundle.contains(&certificate) {
                return Err(Error::certificate(
                    what,
                    "the signing root is not in the trust bundle: peers would reject every leaf it signs",
                ));
            }
        } else {
            check_chain_reaches_bundle(&chain, &bundle)?;
        }
        let not_after = x509::system_time(parsed.validity().not_after);
        let issuer = Issuer::from_ca_cert_der(&certificate, key)
            .map_err(|error| Error::certificate(what, format!("unusable as an issuer: {error}")))?;
        Ok(Ca {
            trust_domain,
            certificate,
            not_after,
            issuer,
            chain,
            cross_signed: Vec::new(),
            bundle,
        })
    }

    /// The trust domain this CA signs for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The signing certificate (DER).
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    /// When the signing certificate expires; leaves never outlive it.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// True for an intermediate under an operator root.
    pub fn is_intermediate(&self) -> bool {
        !self.chain.is_empty()
    }

    /// The roots sidecars must trust for leaves of this CA.
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// Signs a leaf for `identity`, valid from a minute ago for `ttl`
    /// (clipped to the CA's own expiry). `csr` is PEM or DER; only its
    /// public key is used, after its self-signature verifies. Returns the
    /// leaf PEM followed by the intermediates (the chain a sidecar serves).
    pub fn sign_csr(
        &self,
        csr: &[u8],
        identity: &SpiffeId,
        ttl: Duration,
    ) -> Result<String, Error> {
        let now = SystemTime::now();
        self.sign_csr_valid_between(csr, identity, now - CLOCK_SKEW, now + ttl)
    }

    /// [`Ca::sign_csr`] with an explicit validity window: for backdated or
    /// deliberately expired leaves (tests of expiry handling) and for
    /// callers that align expiries.
    pub fn sign_csr_valid_between(
        &self,
        csr: &[u8],
        identity: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<String, Error> {
        if identity.trust_domain() != &self.trust_domain {
            return Err(Error::ForeignTrustDomain {
                identity: identity.clone(),
                ca_trust_domain: self.trust_domain.clone(),
            });
        }
        let not_after = not_after.min(self.not_after);
        if not_after <= not_before {
            return Err(Error::signing(
                format!("signing a leaf for {identity}"),
                if not_after == self.not_after {
                    "the CA certificate expires before the leaf would start: rotate the CA"
                } else {
                    "not_after must be later than not_before"
                },
            ));
        }
        let public_key = csr_public_key(csr)?;

        let mut params = leaf_params(identity)?;
        params.serial_number = Some(random_serial());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let leaf = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|error| Error::signing(format!("signing a leaf for {identity}"), error))?;
        let mut pem = x509::to_pem("CERTIFICATE", leaf.der());
        for certificate in self.chain.iter().chain(&self.cross_signed) {
            pem.push_str(&x509::to_pem("CERTIFICATE", certificate));
        }
        Ok(pem)
    }

    /// A new root for the same trust domain that becomes the signing CA,
    /// with a bundle holding the old roots *and* the new one, so leaves of
    /// either verify until the operator drops the old root. The new root is
    /// also cross-signed by the current one, and that certificate goes out
    /// with every new leaf: a peer still holding only the old bundle (the
    /// push has not reached it yet, or it was disconnected) verifies new
    /// leaves through the old root, as Consul's CA does on rotation. An
    /// intermediate cannot rotate itself: its root belongs to the operator.
    pub fn rotate_root(&self, ttl: Duration) -> Result<Ca, Error> {
        if self.is_intermediate() {
            return Err(Error::certificate(
                "CA certificate",
                "this CA is an intermediate of an operator root: ask the operator for a new intermediate instead",
            ));
        }
        let key = generate_key("generating the new root key")?;
        let mut params = root_params(&self.trust_domain, ttl)?;
        let root = params
            .self_signed(&key)
            .map_err(|error| Error::signing("self-signing the new root", error))?
            .der()
            .clone();
        // Same name and key, issued by the current root; never outliving it.
        params.serial_number = Some(random_serial());
        params.not_after = (SystemTime::now() + ttl).min(self.not_after).into();
        params.use_authority_key_identifier_extension = true;
        let cross_signed = params
            .signed_by(&key, &self.issuer)
            .map_err(|error| Error::signing("cross-signing the new root by the old one", error))?
            .der()
            .clone();
        let mut bundle = self.bundle.clone();
        bundle.add(root.clone())?;
        let mut next = Ca::assemble(self.trust_domain.clone(), root, key, Vec::new(), bundle)?;
        // Only the newest: cross-signatures do not chain (every root is
        // path-length 0), and a peer missing two rotations in a row has
        // missed far more than a root.
        next.cross_signed = vec![cross_signed];
        Ok(next)
    }

    /// The cross-signed certificates sent after each leaf (see
    /// [`Ca::rotate_root`]); empty before any rotation.
    pub fn cross_signed(&self) -> &[CertificateDer<'static>] {
        &self.cross_signed
    }

    /// Writes the CA into `dir` (created if missing) and returns the paths
    /// written. Each file is replaced atomically; the key file is 0600.
    pub fn save(&self, dir: &Path) -> Result<Vec<PathBuf>, Error> {
        fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            action: "create the directory",
            source,
        })?;
        let ca_pem: String = if self.chain.is_empty() {
            x509::to_pem("CERTIFICATE", &self.certificate)
        } else {
            self.chain
                .iter()
                .map(|certificate| x509::to_pem("CERTIFICATE", certificate))
                .collect()
        };
        let writes = [
            (
                files::TRUST_DOMAIN,
                format!("{}\n", self.trust_domain),
                false,
            ),
            (files::BUNDLE, self.bundle.to_pem(), false),
            (files::CA_CERT, ca_pem, false),
            (files::CA_KEY, self.issuer.key().serialize_pem(), true),
        ];
        let mut written = Vec::new();
        for (name, contents, secret) in writes {
            let path = dir.join(name);
            write_atomically(&path, contents.as_bytes(), secret)?;
            written.push(path);
        }
        let cross_signed = dir.join(files::CROSS_SIGNED);
        if self.cross_signed.is_empty() {
            // A CA made anew over an old directory must not send the old
            // CA's cross-signatures.
            match fs::remove_file(&cross_signed) {
                Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::Io {
                        path: cross_signed,
                        action: "remove the previous CA's cross-signed certificates",
                        source,
                    });
                }
                _ => {}
            }
        } else {
            let pem: String = self
                .cross_signed
                .iter()
                .map(|certificate| x509::to_pem("CERTIFICATE", certificate))
                .collect();
            write_atomically(&cross_signed, pem.as_bytes(), false)?;
            written.push(cross_signed);
        }
        Ok(written)
    }

    /// Reads a CA written by [`Ca::save`] (or laid out the same way by an
    /// operator).
    pub fn load(dir: &Path) -> Result<Ca, Error> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).map_err(|source| Error::Io {
                path,
                action: "read it",
                source,
            })
        };
        let trust_domain: TrustDomain = read(files::TRUST_DOMAIN)?.trim().parse()?;
        let ca_pem = read(files::CA_CERT)?;
        let key = load_key(
            &dir.join(files::CA_KEY).display().to_string(),
            &read(files::CA_KEY)?,
        )?;
        let bundle = TrustBundle::from_pem(&read(files::BUNDLE)?)?;
        let what = dir.join(files::CA_CERT).display().to_string();
        let certificates = x509::certificates_from_pem(&what, &ca_pem)?;
        let root =
            certificates.len() == 1 && x509::is_self_signed(&x509::parse(&what, &certificates[0])?);
        let chain = if root {
            Vec::new()
        } else {
            certificates.clone()
        };
        let mut ca = Ca::assemble(trust_domain, certificates[0].clone(), key, chain, bundle)?;
        let cross_signed_path = dir.join(files::CROSS_SIGNED);
        if root && cross_signed_path.exists() {
            let what = cross_signed_path.display().to_string();
            let cross_signed = x509::certificates_from_pem(&what, &read(files::CROSS_SIGNED)?)?;
            // Only what still leads to a root peers trust is worth sending:
            // once the operator drops an old root from the bundle, its
            // cross-signature is dead weight.
            ca.cross_signed = cross_signed
                .into_iter()
                .filter(|certificate| signed_by_a_root(certificate, &ca.bundle))
                .collect();
        }
        Ok(ca)
    }
}

impl fmt::Debug for Ca {
    /// Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .field("intermediate", &self.is_intermediate())
            .field("not_after", &self.not_after)
            .field("bundle", &self.bundle)
            .finish_non_exhaustive()
    }
}

/// A root certificate's parameters: a distinct name per root (two coexist
/// during a rotation), CA for leaves only (path length 0), the trust
/// domain's SPIFFE ID, valid from a little in the past for `ttl`.
fn root_params(trust_domain: &TrustDomain, ttl: Duration) -> Result<CertificateParams, Error> {
    let serial = random_serial();
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Weft");
    // Two roots coexist during a rotation: a distinct name per root keeps
    // path building and operators' eyes from mixing them up.
    name.push(
        DnType::CommonName,
        format!("Weft root CA {}", &x509::hex(&serial.to_bytes())[..8]),
    );
    params.distinguished_name = name;
    params.serial_number = Some(serial);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.subject_alt_names = vec![uri_san(&trust_domain.id())?];
    let now = SystemTime::now();
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + ttl).into();
    Ok(params)
}

/// A positive 128-bit serial: random, so that re-signing the same key
/// never repeats a serial (rcgen's default derives it from the key).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Top bit clear: DER integers are signed and a serial must be positive.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// A fresh key pair of the one type every certificate in the mesh has:
/// ECDSA P-256. `what` says what it is for, in the error.
pub(crate) fn generate_key(what: &str) -> Result<KeyPair, Error> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|error| Error::signing(what, error))
}

/// How a leaf names the workload it was issued to, set both in the leaf
/// the CA signs and in the sidecar's CSR ([`crate::LeafKey::csr_pem`]): the
/// SPIFFE ID as the only URI SAN (the identity peers check), and the service
/// as CN, for humans reading the certificate (RFC 5280 caps a CN at 64
/// characters).
pub(crate) fn leaf_params(identity: &SpiffeId) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        identity.service().chars().take(64).collect::<String>(),
    );
    params.distinguished_name = name;
    params.subject_alt_names = vec![uri_san(&identity.to_string())?];
    Ok(params)
}

fn uri_san(uri: &str) -> Result<SanType, Error> {
    let uri = uri
        .to_owned()
        .try_into()
        .map_err(|error| Error::signing(format!("URI SAN {uri:?}"), error))?;
    Ok(SanType::URI(uri))
}

fn single_certificate(what: &str, pem: &str) -> Result<CertificateDer<'static>, Error> {
    let mut certificates = x509::certificates_from_pem(what, pem)?;
    if certificates.len() != 1 {
        return Err(Error::pem(
            what,
            format!("expected one certificate, found {}", certificates.len()),
        ));
    }
    Ok(certificates.remove(0))
}

fn load_key(what: &str, pem: &str) -> Result<KeyPair, Error> {
    KeyPair::from_pem(pem).map_err(|error| {
        Error::key(
            what,
            format!(
                "cannot load it ({error}); expected an unencrypted PKCS#8 \"PRIVATE KEY\" (convert with `openssl pkcs8 -topk8 -nocrypt`)"
            ),
        )
    })
}

/// The last certificate of an intermediate chain must be signed by one of
/// the bundle's roots, or every leaf would be rejected by peers.
fn check_chain_reaches_bundle(
    chain: &[CertificateDer<'static>],
    bundle: &TrustBundle,
) -> Result<(), Error> {
    let last = x509::parse("intermediate chain", &chain[chain.len() - 1])?;
    if signed_by_a_root(&chain[chain.len() - 1], bundle) {
        Ok(())
    } else {
        Err(Error::certificate(
            "intermediate certificate",
            format!(
                "{} is not signed by any root of the trust bundle",
                last.subject()
            ),
        ))
    }
}

/// Whether one of the bundle's roots signed `certificate`.
fn signed_by_a_root(certificate: &CertificateDer<'_>, bundle: &TrustBundle) -> bool {
    let Ok(certificate) = x509::parse("certificate", certificate) else {
        return false;
    };
    bundle.roots().iter().any(|root| {
        x509::parse("root", root).is_ok_and(|root| {
            certificate
                .verify_signature(Some(root.public_key()))
                .is_ok()
        })
    })
}

/// The CSR's public key, once its self-signature verifies.
fn csr_public_key(csr: &[u8]) -> Result<rcgen::SubjectPublicKeyInfo, Error> {
    let der = if csr.trim_ascii_start().starts_with(b"-----BEGIN") {
        CertificateSigningRequestDer::from_pem_slice(csr)
            .map_err(|error| Error::Csr {
                reason: format!("cannot decode the PEM: {error}"),
            })?
            .as_ref()
            .to_vec()
    } else {
        csr.to_vec()
    };
    let request = match X509CertificationRequest::from_der(&der) {
        Ok((_, request)) => request,
        Err(error) => {
            return Err(Error::Csr {
                reason: format!("not a PKCS#10 request: {error}"),
            });
        }
    };
    request.verify_signature().map_err(|error| Error::Csr {
        reason: format!(
            "its signature does not verify ({error}): the requester must sign it with the key being certified"
        ),
    })?;
    rcgen::SubjectPublicKeyInfo::from_der(request.certification_request_info.subject_pki.raw)
        .map_err(|error| Error::Csr {
            reason: format!("unsupported public key: {error}"),
        })
}

/// Writes through a temporary file and a rename, so a crash never leaves a
/// half-written certificate or key; `secret` files are created 0600.
fn write_atomically(path: &Path, contents: &[u8], secret: bool) -> Result<(), Error> {
    let io_error = |action: &'static str| {
        let path = path.to_owned();
        move |source| Error::Io {
            path,
            action,
            source,
        }
    };
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options
        .open(&temporary)
        .map_err(io_error("create a temporary file beside it"))?;
    #[cfg(unix)]
    if secret {
        // A leftover temporary file keeps its old mode: force 0600.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_error("restrict its permissions"))?;
    }
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(io_error("write it"))?;
    fs::rename(&temporary, path).map_err(io_error("replace it"))
}

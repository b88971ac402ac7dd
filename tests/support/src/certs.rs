//! Test certificates minted per test with rcgen: a private CA that signs
//! leaves ([`TestCa`]), and the PEM files of a Consul that serves HTTPS
//! ([`TestPki`]; Consul and its clients both read files).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::consul::HttpsSettings;
use crate::temp_dir::TempDir;

/// A directory of PEM files, removed when dropped:
/// - `ca.pem`: the CA Consul trusts and that signed every certificate below;
/// - `server.pem` / `server-key.pem`: Consul's, SANs `127.0.0.1` and `localhost`;
/// - `client.pem` / `client-key.pem`: a client certificate (client auth);
/// - `other-ca.pem`: a CA that signed nothing Consul uses;
/// - `stranger.pem` / `stranger-key.pem`: a client certificate from `other-ca`.
pub struct TestPki {
    dir: TempDir,
}

impl TestPki {
    pub fn mint() -> anyhow::Result<Self> {
        let pki = Self {
            dir: TempDir::create("consul-pki")?,
        };

        let ca = TestCa::new("Weft test CA")?;
        pki.write("ca.pem", &ca.pem())?;
        let server = ca.server_leaf("consul server", &["127.0.0.1", "localhost"])?;
        pki.write("server.pem", &server.cert_pem())?;
        pki.write("server-key.pem", &server.key_pem())?;
        let client = ca.client_leaf("weft-discovery")?;
        pki.write("client.pem", &client.cert_pem())?;
        pki.write("client-key.pem", &client.key_pem())?;

        let other = TestCa::new("Someone else's CA")?;
        pki.write("other-ca.pem", &other.pem())?;
        let stranger = other.client_leaf("stranger")?;
        pki.write("stranger.pem", &stranger.cert_pem())?;
        pki.write("stranger-key.pem", &stranger.key_pem())?;
        Ok(pki)
    }

    /// A file in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Consul's HTTPS settings from these files.
    pub fn https(&self, verify_incoming: bool) -> HttpsSettings {
        HttpsSettings {
            cert_file: self.path("server.pem"),
            key_file: self.path("server-key.pem"),
            ca_file: self.path("ca.pem"),
            verify_incoming,
        }
    }

    fn write(&self, name: &str, pem: &str) -> anyhow::Result<()> {
        let path: &Path = &self.dir.path().join(name);
        std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))
    }
}

/// A private CA (self-signed, unconstrained), as a company or a managed
/// service has its own.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    /// A CA whose common name is `name`: chains are built by issuer name, so
    /// two CAs of one test must not share one.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ok(Self {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate()?)?,
        })
    }

    /// The CA certificate, PEM: what a client trusts it by.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `sans` (IP strings become IP SANs, the rest
    /// DNS names).
    pub fn server_leaf(&self, name: &str, sans: &[&str]) -> anyhow::Result<Leaf> {
        self.leaf(name, sans, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate (client auth), no SANs.
    pub fn client_leaf(&self, name: &str) -> anyhow::Result<Leaf> {
        self.leaf(name, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(
        &self,
        name: &str,
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> anyhow::Result<Leaf> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(sans.iter().map(|san| (*san).to_owned()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf { cert, key })
    }
}

/// A certificate signed by a [`TestCa`] and its key.
pub struct Leaf {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Leaf {
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The key as PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The certificate, DER (what rustls takes).
    pub fn cert_der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }

    /// The key as PKCS#8 DER (what rustls takes).
    pub fn key_der(&self) -> Vec<u8> {
        self.key.serialize_der()
    }
}

//! Certificates for a Consul that serves HTTPS, minted per test with rcgen
//! and written as PEM files (Consul and the client both read files).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use super::HttpsSettings;

/// A directory of PEM files, removed when dropped:
/// - `ca.pem`: the CA Consul trusts and that signed every certificate below;
/// - `server.pem` / `server-key.pem`: Consul's, SANs `127.0.0.1` and `localhost`;
/// - `client.pem` / `client-key.pem`: a client certificate (client auth);
/// - `other-ca.pem`: a CA that signed nothing Consul uses;
/// - `stranger.pem` / `stranger-key.pem`: a client certificate from `other-ca`.
pub struct TestPki {
    dir: PathBuf,
}

impl TestPki {
    pub fn mint() -> anyhow::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "weft-consul-pki-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let pki = Self { dir };

        let ca = mint_ca("Weft test CA")?;
        pki.write("ca.pem", &ca.pem())?;
        let (server, server_key) = leaf(
            &ca,
            "consul server",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        pki.write("server.pem", &server)?;
        pki.write("server-key.pem", &server_key)?;
        let (client, client_key) = leaf(
            &ca,
            "weft-discovery",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        pki.write("client.pem", &client)?;
        pki.write("client-key.pem", &client_key)?;

        let other = mint_ca("Someone else's CA")?;
        pki.write("other-ca.pem", &other.pem())?;
        let (stranger, stranger_key) =
            leaf(&other, "stranger", &[], ExtendedKeyUsagePurpose::ClientAuth)?;
        pki.write("stranger.pem", &stranger)?;
        pki.write("stranger-key.pem", &stranger_key)?;
        Ok(pki)
    }

    /// A file in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
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
        let path: &Path = &self.dir.join(name);
        std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn mint_ca(name: &str) -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

/// A leaf signed by `issuer`: (certificate PEM, PKCS#8 key PEM).
fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    name: &str,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate()?;
    // IP strings become IP SANs, the rest DNS names.
    let mut params =
        CertificateParams::new(sans.iter().map(|san| (*san).to_owned()).collect::<Vec<_>>())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

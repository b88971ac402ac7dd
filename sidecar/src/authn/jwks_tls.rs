//! The TLS client of one `https://` JWKS URL: what the server's certificate
//! is checked against (the system trust store, or the provider's own CAs
//! from `ca_pem` / `ca_file`), the handshake, and its failures turned into
//! reasons an operator can act on.
//!
//! Built once when the policy is compiled; every fetch reuses it. The
//! certificate is always verified (chain to a trust anchor, validity, the
//! URI's host as DNS name or IP address); there is no way to turn that off
//! and no fallback to plain http.

use std::fmt;
use std::io::{self, Read as _};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A CA bundle is a few hundred kilobytes at most (Debian's whole system
/// bundle is ~220 KB); a bigger `ca_file` is a wrong path.
const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;

/// The CA certificates one trust source (`ca_pem`, `ca_file`) contributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CaSource {
    /// How failures name it: "`ca_pem`", "`ca_file` /etc/idp/ca.pem".
    origin: String,
    certificates: Vec<CertificateDer<'static>>,
}

impl CaSource {
    /// Every certificate of the inline PEM text `pem` (at least one, each
    /// usable as a trust anchor).
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        weft_rules::pem::check_has_certificate(pem)?;
        Self::parse(pem.as_bytes(), "`ca_pem`".to_owned())
    }

    /// Every certificate of the PEM file at `path` (absolute, at most 1 MiB),
    /// read now: a blocking read of a small file, once per policy.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        weft_rules::jwt::check_ca_file(path)?;
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_CA_FILE_BYTES + 1).read_to_end(&mut bytes))
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if bytes.len() as u64 > MAX_CA_FILE_BYTES {
            return Err(format!(
                "{} is larger than {MAX_CA_FILE_BYTES} bytes: not a CA bundle",
                path.display()
            ));
        }
        Self::parse(&bytes, format!("`ca_file` {}", path.display()))
    }

    fn parse(pem: &[u8], origin: String) -> Result<Self, String> {
        let certificates = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("not PEM certificates: {e}"))?;
        if certificates.is_empty() {
            return Err("holds no certificate (no \"-----BEGIN CERTIFICATE-----\" block)".into());
        }
        let mut check = RootCertStore::empty();
        for (i, cert) in certificates.iter().enumerate() {
            check.add(cert.clone()).map_err(|e| {
                // rustls words this for peers ("invalid peer certificate").
                let why = match e {
                    rustls::Error::InvalidCertificate(problem) => format!("{problem:?}"),
                    other => other.to_string(),
                };
                format!("certificate {} cannot be a trust anchor ({why})", i + 1)
            })?;
        }
        Ok(Self {
            origin,
            certificates,
        })
    }
}

/// What a JWKS server's certificate is verified against.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Trust {
    /// The system trust store (see [`system_roots`]).
    System,
    /// Only the provider's own CAs: a private IdP.
    Own(Vec<CaSource>),
}

impl fmt::Display for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trust::System => f.write_str("the system trust store"),
            Trust::Own(sources) => {
                for (i, source) in sources.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" and ")?;
                    }
                    f.write_str(&source.origin)?;
                }
                Ok(())
            }
        }
    }
}

/// The TLS client of one JWKS URL.
pub(crate) struct JwksTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    trust: Trust,
}

/// Equal when the server would be verified the same way: a policy update
/// that keeps the URL and the CAs keeps the fetched keys.
impl PartialEq for JwksTls {
    fn eq(&self, other: &Self) -> bool {
        self.server_name == other.server_name && self.trust == other.trust
    }
}

impl fmt::Debug for JwksTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksTls")
            .field("server_name", &self.server_name)
            .field("trust", &self.trust.to_string())
            .finish()
    }
}

impl JwksTls {
    /// The client for `host` (the URI's, without IPv6 brackets), trusting
    /// `own` CAs, or the system trust store when there are none.
    pub fn new(host: &str, own: Vec<CaSource>) -> Result<Self, String> {
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("`{host}` is not a DNS name or IP address for TLS: {e}"))?;
        let (roots, trust) = if own.is_empty() {
            (system_roots()?, Trust::System)
        } else {
            let mut roots = RootCertStore::empty();
            // Checked one by one when parsed: these all fit.
            roots.add_parsable_certificates(
                own.iter()
                    .flat_map(|s| s.certificates.iter().cloned())
                    .collect::<Vec<_>>(),
            );
            (Arc::new(roots), Trust::Own(own))
        };
        // Never the process-wide default provider: ring only, explicitly.
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("the TLS library rejects its own defaults: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        // The fetcher speaks HTTP/1.1 only; saying so keeps servers that
        // prefer h2 from choosing it.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            trust,
        })
    }

    /// The TLS session on `tcp`, or why the server was not accepted.
    pub async fn handshake(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, String> {
        self.connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| self.explain(&e))
    }

    fn explain(&self, error: &io::Error) -> String {
        let Some(tls) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            // No TLS alert, just a closed or reset connection.
            return format!("TLS handshake failed: {error}; is this an https port?");
        };
        let name = self.server_name.to_str();
        match tls {
            rustls::Error::InvalidCertificate(problem) => match problem {
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => format!(
                    "TLS: the server's certificate is not valid for `{name}` ({tls}); the URL \
                     must use a name or address the certificate lists"
                ),
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => format!(
                    "TLS: the server's certificate is outside its validity period ({tls}); \
                     or is this machine's clock wrong?"
                ),
                _ => format!(
                    "TLS: the server's certificate is not trusted ({tls}); verified against {}",
                    self.trust
                ),
            },
            rustls::Error::AlertReceived(alert) => {
                format!("TLS: the server ended the handshake with alert {alert:?}")
            }
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateHandshakeMessage { .. } => {
                format!("TLS: {tls}: the server does not speak TLS there; is this an https port?")
            }
            other => format!("TLS: {other}"),
        }
    }
}

/// The system trust store, loaded once per process: `SSL_CERT_FILE` /
/// `SSL_CERT_DIR` when set, else the distribution's bundle
/// (`/etc/ssl/certs` on Debian). Certificates webpki cannot use are skipped,
/// as every TLS client does; none usable at all is an error.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let loaded = rustls_native_certs::load_native_certs();
            for error in &loaded.errors {
                tracing::debug!(%error, "part of the system trust store could not be read");
            }
            let mut roots = RootCertStore::empty();
            let (added, _unusable) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                let why = loaded
                    .errors
                    .first()
                    .map_or_else(String::new, |e| format!(" ({e})"));
                return Err(format!(
                    "https needs trust anchors and the system trust store has no usable CA \
                     certificate{why}: install the ca-certificates package (or point \
                     SSL_CERT_FILE at a PEM bundle), or give the IdP's CA in `ca_pem` or `ca_file`"
                ));
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

/// A private CA minting server certificates, for tests of TLS fetches.
#[cfg(test)]
pub(crate) mod test_ca {
    use std::sync::Arc;

    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa,
        KeyPair,
    };
    use rustls::ServerConfig;
    use rustls::pki_types::PrivateKeyDer;

    use super::CaSource;

    /// A private CA, as a company IdP would have.
    pub(crate) struct TestCa(CertifiedIssuer<'static, KeyPair>);

    impl TestCa {
        /// Named `name`: issuers are found by name, so two test CAs must
        /// not share one.
        pub fn new(name: &str) -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name = DistinguishedName::new();
            params
                .distinguished_name
                .push(DnType::CommonName, format!("{name} test CA"));
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            Self(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
        }

        pub fn pem(&self) -> String {
            self.0.pem()
        }

        /// This CA as a provider's only trust anchor (`ca_pem`).
        pub fn trusted(&self) -> Vec<CaSource> {
            vec![CaSource::from_pem(&self.pem()).unwrap()]
        }

        /// A TLS server config with a certificate for `names` (DNS names
        /// or IP addresses), offering h2 before http/1.1.
        pub fn server(&self, names: &[&str]) -> Arc<ServerConfig> {
            let key = KeyPair::generate().unwrap();
            let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &self.0)
                .unwrap();
            let mut config = ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Arc::new(config)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use rustls::ServerConfig;
    use tokio::io::AsyncWriteExt as _;
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;
    use tokio_rustls::TlsAcceptor;

    use super::test_ca::TestCa;
    use super::*;

    /// Accepts one TLS connection on loopback; the task yields the SNI the
    /// client sent, once the handshake is over (`None` if it failed).
    async fn serve_once(config: Arc<ServerConfig>) -> (SocketAddr, JoinHandle<Option<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.ok()?;
            let tls = TlsAcceptor::from(config).accept(tcp).await.ok()?;
            Some(tls.get_ref().1.server_name().unwrap_or_default().to_owned())
        });
        (addr, task)
    }

    async fn handshake_with(
        client: &JwksTls,
        server: Arc<ServerConfig>,
    ) -> (Result<TlsStream<TcpStream>, String>, Option<String>) {
        let (addr, served) = serve_once(server).await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let result = client.handshake(tcp).await;
        // The server side ends when the client has finished or given up.
        let sni = match &result {
            Ok(_) => served.await.unwrap(),
            Err(_) => {
                served.abort();
                None
            }
        };
        (result, sni)
    }

    #[tokio::test]
    async fn the_providers_ca_verifies_the_server_by_address_or_by_name() {
        let ca = TestCa::new("idp");
        let server = ca.server(&["127.0.0.1", "localhost"]);

        let by_ip = JwksTls::new("127.0.0.1", ca.trusted()).unwrap();
        let (stream, sni) = handshake_with(&by_ip, server.clone()).await;
        let stream = stream.unwrap();
        assert_eq!(
            stream.get_ref().1.alpn_protocol(),
            Some(&b"http/1.1"[..]),
            "only HTTP/1.1 is offered"
        );
        assert_eq!(sni.as_deref(), Some(""), "no SNI for an IP address");

        let by_name = JwksTls::new("localhost", ca.trusted()).unwrap();
        let (stream, sni) = handshake_with(&by_name, server).await;
        assert!(stream.is_ok(), "{:?}", stream.err());
        assert_eq!(sni.as_deref(), Some("localhost"));
    }

    #[tokio::test]
    async fn a_certificate_from_another_ca_is_refused_naming_what_was_trusted() {
        let ours = TestCa::new("ours");
        let theirs = TestCa::new("theirs");
        let client = JwksTls::new("127.0.0.1", ours.trusted()).unwrap();
        let (result, _) = handshake_with(&client, theirs.server(&["127.0.0.1"])).await;
        let reason = result.err().unwrap_or_default();
        assert!(reason.contains("certificate is not trusted"), "{reason}");
        assert!(reason.contains("UnknownIssuer"), "{reason}");
        assert!(reason.contains("verified against `ca_pem`"), "{reason}");

        // Without a CA of its own, a provider trusts the system store, which
        // knows no private CA.
        let system = JwksTls::new("127.0.0.1", Vec::new()).unwrap();
        let (result, _) = handshake_with(&system, theirs.server(&["127.0.0.1"])).await;
        let reason = result.err().unwrap_or_default();
        assert!(
            reason.contains("verified against the system trust store"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn a_certificate_for_another_host_is_refused() {
        let ca = TestCa::new("idp");
        let client = JwksTls::new("127.0.0.1", ca.trusted()).unwrap();
        let (result, _) = handshake_with(&client, ca.server(&["idp.example.com"])).await;
        let reason = result.err().unwrap_or_default();
        assert!(
            reason.contains("certificate is not valid for `127.0.0.1`"),
            "{reason}"
        );

        let client = JwksTls::new("localhost", ca.trusted()).unwrap();
        let (result, _) = handshake_with(&client, ca.server(&["127.0.0.1"])).await;
        let reason = result.err().unwrap_or_default();
        assert!(
            reason.contains("certificate is not valid for `localhost`"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn a_plain_http_server_is_reported_as_not_speaking_tls() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let plain = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let _ = tcp
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
        });
        let client = JwksTls::new("127.0.0.1", TestCa::new("other").trusted()).unwrap();
        let reason = client
            .handshake(TcpStream::connect(addr).await.unwrap())
            .await
            .err()
            .unwrap_or_default();
        assert!(reason.contains("does not speak TLS"), "{reason}");
        plain.await.unwrap();
    }

    #[test]
    fn a_ca_pem_must_hold_usable_certificates() {
        assert!(CaSource::from_pem(&TestCa::new("idp").pem()).is_ok());
        let two = format!("{}{}", TestCa::new("a").pem(), TestCa::new("b").pem());
        assert_eq!(CaSource::from_pem(&two).unwrap().certificates.len(), 2);

        let none = CaSource::from_pem("just text").unwrap_err();
        assert!(
            none.contains("no \"-----BEGIN CERTIFICATE-----\""),
            "{none}"
        );
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let bad = CaSource::from_pem(garbage).unwrap_err();
        assert!(
            bad.contains("certificate 1 cannot be a trust anchor"),
            "{bad}"
        );
        let broken = "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
        let bad = CaSource::from_pem(broken).unwrap_err();
        assert!(bad.contains("not PEM"), "{bad}");
    }

    #[test]
    fn a_ca_file_is_an_absolute_path_to_a_readable_pem_file() {
        let relative = CaSource::from_file(Path::new("certs/ca.pem")).unwrap_err();
        assert!(relative.contains("not an absolute path"), "{relative}");
        let missing = CaSource::from_file(Path::new("/nonexistent/weft/ca.pem")).unwrap_err();
        assert!(missing.contains("/nonexistent/weft/ca.pem"), "{missing}");

        let dir = std::env::temp_dir().join(format!("weft-jwks-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ca.pem");
        std::fs::write(&path, TestCa::new("idp").pem()).unwrap();
        let source = CaSource::from_file(&path).unwrap();
        assert_eq!(source.origin, format!("`ca_file` {}", path.display()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn clients_are_equal_when_they_verify_alike() {
        let ca = TestCa::new("idp");
        let a = JwksTls::new("idp.example.com", ca.trusted()).unwrap();
        assert_eq!(a, JwksTls::new("idp.example.com", ca.trusted()).unwrap());
        let other = TestCa::new("other").trusted();
        assert_ne!(a, JwksTls::new("idp.example.com", other).unwrap());
        assert_ne!(a, JwksTls::new("other.example.com", ca.trusted()).unwrap());
        assert_ne!(a, JwksTls::new("idp.example.com", Vec::new()).unwrap());
    }
}

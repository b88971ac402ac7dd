//! HTTPS to Consul: the rustls client configuration (ring is the only crypto
//! provider), the connector that puts a TLS session on the TCP connection
//! hyper-util's `HttpConnector` opens (after resolving through hickory), and
//! the reading of TLS failures into reasons that name the setting to check.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::config::SYSTEM_CA_BUNDLE;
use super::dns::HickoryResolver;
use super::{ConsulConfig, ConsulError};

/// Everything needed to open TLS sessions to one Consul address.
pub(crate) struct Tls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    /// What the hints in [`explain`] refer to.
    pub(crate) context: TlsContext,
}

/// The settings a TLS failure is explained against.
#[derive(Debug)]
pub(crate) struct TlsContext {
    /// The CA file Consul's certificate is checked against; `None` is the
    /// system bundle.
    ca_cert: Option<PathBuf>,
    /// The name Consul's certificate must carry.
    server_name: String,
    /// The client certificate offered, if any.
    client_cert: Option<PathBuf>,
}

impl Tls {
    /// The TLS setup for an `https://` `config`: roots from `CONSUL_CACERT`
    /// (else the system bundle), the optional client certificate, the
    /// server name. Reads the files now, so a bad path or PEM fails at
    /// start-up, not at the first request (a one-off blocking read while the
    /// client is built).
    pub(crate) fn new(config: &ConsulConfig) -> Result<Self, ConsulError> {
        Self::with_system_bundle(config, Path::new(SYSTEM_CA_BUNDLE))
    }

    /// [`new`](Self::new) with the system bundle at `system_bundle` (tests
    /// point it at a path that does not exist).
    fn with_system_bundle(
        config: &ConsulConfig,
        system_bundle: &Path,
    ) -> Result<Self, ConsulError> {
        let roots = roots(config, system_bundle)?;
        // Never the process-wide default provider: with both ring and
        // aws-lc-rs in a build, `ClientConfig::builder()` panics.
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|error| ConsulError::Config {
                    field: "CONSUL_HTTP_ADDR",
                    reason: format!("the TLS library rejects its own defaults: {error}"),
                })?
                .with_root_certificates(roots);
        let mut tls = match (&config.client_cert, &config.client_key) {
            (Some(cert), Some(key)) => {
                let chain = read_certificates(cert, "CONSUL_CLIENT_CERT")?;
                let key =
                    PrivateKeyDer::from_pem_file(key).map_err(|error| ConsulError::Config {
                        field: "CONSUL_CLIENT_KEY",
                        reason: format!(
                            "cannot read a PEM private key from {}: {error}",
                            key.display()
                        ),
                    })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|error| ConsulError::Config {
                        field: "CONSUL_CLIENT_KEY",
                        reason: format!(
                            "the key does not fit the certificate {}: {error}; are \
                             CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY a pair?",
                            cert.display()
                        ),
                    })?
            }
            // `ConsulConfig::with_client_cert` refuses one without the
            // other; a config built by hand with only one offers none.
            _ => builder.with_no_client_auth(),
        };
        // The client speaks HTTP/1.1 only; saying so keeps Consul's Go
        // server from picking h2.
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];

        let name = match &config.tls_server_name {
            Some(name) => name.clone(),
            None => {
                let host = config.address.host().unwrap_or_default();
                // `[::1]` in a URI is `::1` as a name.
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned()
            }
        };
        let server_name =
            ServerName::try_from(name.clone()).map_err(|error| ConsulError::Config {
                field: if config.tls_server_name.is_some() {
                    "CONSUL_TLS_SERVER_NAME"
                } else {
                    "CONSUL_HTTP_ADDR"
                },
                reason: format!("{name:?} is not a DNS name or IP address for TLS: {error}"),
            })?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(tls)),
            server_name,
            context: TlsContext {
                ca_cert: config.ca_cert.clone(),
                server_name: name,
                client_cert: config.client_cert.clone(),
            },
        })
    }
}

/// The trust anchors: every certificate in `CONSUL_CACERT`, else the
/// system bundle.
fn roots(config: &ConsulConfig, system_bundle: &Path) -> Result<RootCertStore, ConsulError> {
    let mut roots = RootCertStore::empty();
    match &config.ca_cert {
        Some(path) => {
            for (position, cert) in read_certificates(path, "CONSUL_CACERT")?
                .into_iter()
                .enumerate()
            {
                roots.add(cert).map_err(|error| ConsulError::Config {
                    field: "CONSUL_CACERT",
                    reason: format!(
                        "certificate {} in {} cannot be a trust anchor: {error}",
                        position + 1,
                        path.display()
                    ),
                })?;
            }
        }
        None => {
            if !system_bundle.exists() {
                return Err(ConsulError::Config {
                    field: "CONSUL_CACERT",
                    reason: format!(
                        "{} uses https but nothing says which CA to trust: set CONSUL_CACERT \
                         (--consul-cacert) to the PEM file of the CA that signed Consul's \
                         certificate (the system bundle {} does not exist)",
                        config.address,
                        system_bundle.display()
                    ),
                });
            }
            let certs = read_certificates(system_bundle, "CONSUL_CACERT")?;
            // A system bundle may hold a certificate webpki cannot use (an
            // old or odd root); skipping it is what every TLS client does.
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(ConsulError::Config {
                    field: "CONSUL_CACERT",
                    reason: format!(
                        "the system bundle {} holds no usable CA certificate; set CONSUL_CACERT \
                         to the CA that signed Consul's certificate",
                        system_bundle.display()
                    ),
                });
            }
        }
    }
    Ok(roots)
}

/// Every certificate in the PEM file `path` (at least one), for `field`.
fn read_certificates(
    path: &Path,
    field: &'static str,
) -> Result<Vec<CertificateDer<'static>>, ConsulError> {
    let unreadable = |error: rustls::pki_types::pem::Error| ConsulError::Config {
        field,
        reason: format!(
            "cannot read PEM certificates from {}: {error}",
            path.display()
        ),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(unreadable)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(unreadable)?;
    if certs.is_empty() {
        return Err(ConsulError::Config {
            field,
            reason: format!(
                "{} holds no PEM certificate (no \"BEGIN CERTIFICATE\" block)",
                path.display()
            ),
        });
    }
    Ok(certs)
}

// ------------------------------------------------------------- connector

/// The one place the client connects: a slot under the client's connection
/// limit, TCP through `HttpConnector` (hickory DNS, nodelay, connect
/// timeout), then, for `https://`, the TLS handshake.
#[derive(Clone)]
pub(crate) struct ConsulConnector {
    tcp: HttpConnector<HickoryResolver>,
    /// `None`: plain HTTP.
    tls: Option<Arc<Tls>>,
    /// One permit per open connection, held by the connection until it is
    /// closed (pooled or not): the hard bound on TCP connections to Consul,
    /// whatever the pool does with idle ones.
    slots: Arc<Semaphore>,
}

impl ConsulConnector {
    pub(crate) fn new(
        mut tcp: HttpConnector<HickoryResolver>,
        tls: Option<Arc<Tls>>,
        slots: Arc<Semaphore>,
    ) -> Self {
        // `HttpConnector` refuses non-http URIs unless told the TLS layer is
        // someone else's job.
        tcp.enforce_http(tls.is_none());
        Self { tcp, tls, slots }
    }
}

/// The handshake failed: a marker in the error chain so that [`explain`]
/// knows a failure without a rustls error (the peer closed the connection
/// mid-handshake) is still TLS's.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake failed: {source}")]
pub(crate) struct HandshakeFailed {
    #[source]
    source: io::Error,
}

type BoxError = Box<dyn StdError + Send + Sync>;

impl tower::Service<Uri> for ConsulConnector {
    type Response = TokioIo<ConsulStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut tcp = self.tcp.clone();
        let tls = self.tls.clone();
        let slots = self.slots.clone();
        Box::pin(async move {
            // Waits only while every slot is an open connection; the pool
            // then hands the request an idle one as soon as one frees.
            let slot = slots.acquire_owned().await?;
            let tcp = tcp.call(uri).await?.into_inner();
            let Some(tls) = tls else {
                return Ok(TokioIo::new(ConsulStream {
                    io: StreamIo::Plain(tcp),
                    _slot: slot,
                }));
            };
            let stream = tls
                .connector
                .connect(tls.server_name.clone(), tcp)
                .await
                .map_err(|source| HandshakeFailed { source })?;
            Ok(TokioIo::new(ConsulStream {
                io: StreamIo::Tls(Box::new(stream)),
                _slot: slot,
            }))
        })
    }
}

/// A connection to Consul, plain or TLS, with its slot under the limit.
pub(crate) struct ConsulStream {
    io: StreamIo,
    /// Released when the connection closes.
    _slot: OwnedSemaphorePermit,
}

enum StreamIo {
    Plain(TcpStream),
    /// Boxed: a TLS session is a few hundred bytes, a `TcpStream` a few.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for ConsulStream {
    fn connected(&self) -> Connected {
        match &self.io {
            StreamIo::Plain(tcp) => tcp.connected(),
            // Only http/1.1 is offered, so no h2 to report.
            StreamIo::Tls(tls) => tls.get_ref().0.connected(),
        }
    }
}

// Both variants are `Unpin`, so plain `Pin::new` projects (no unsafe).
impl AsyncRead for ConsulStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            StreamIo::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            StreamIo::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ConsulStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            StreamIo::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            StreamIo::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            StreamIo::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            StreamIo::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            StreamIo::Plain(tcp) => tcp.is_write_vectored(),
            StreamIo::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            StreamIo::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            StreamIo::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            StreamIo::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            StreamIo::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

// -------------------------------------------------------------- failures

/// If `error` (a failed request, with its source chain) is a TLS failure:
/// what happened, with a hint naming the setting to check, and whether a
/// retry can help. `None` for everything else (refused, reset, DNS...).
pub(crate) fn explain(
    error: &(dyn StdError + 'static),
    context: &TlsContext,
) -> Option<(String, bool)> {
    let mut in_handshake = None;
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(rustls) = error.downcast_ref::<rustls::Error>() {
            return Some((explain_rustls(rustls, context), false));
        }
        if let Some(rustls) = error
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some((explain_rustls(rustls, context), false));
        }
        if let Some(handshake) = error.downcast_ref::<HandshakeFailed>() {
            in_handshake = Some(handshake.source.to_string());
        }
        current = error.source();
    }
    // The peer closed or reset the connection mid-handshake with no TLS
    // alert: a proxy or a server that is not speaking TLS there, or one
    // that is restarting (so a retry may help).
    in_handshake.map(|cause| {
        (
            format!(
                "the connection ended during the TLS handshake ({cause}); is this Consul's \
                 HTTPS port (ports.https in Consul's config)?"
            ),
            true,
        )
    })
}

fn explain_rustls(error: &rustls::Error, context: &TlsContext) -> String {
    let trusted_by = match &context.ca_cert {
        Some(path) => format!("CONSUL_CACERT {}", path.display()),
        None => format!("the system bundle {SYSTEM_CA_BUNDLE}, as CONSUL_CACERT is not set"),
    };
    match error {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "{error}: Consul's certificate is not valid for {:?}; connect by a name or IP its \
             certificate lists, or set CONSUL_TLS_SERVER_NAME to one (Consul's own \
             certificates carry server.<datacenter>.<domain>)",
            context.server_name
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => format!(
            "{error}: Consul's certificate is outside its validity period; renew it (or check \
             this machine's clock)"
        ),
        rustls::Error::InvalidCertificate(_) => format!(
            "{error}: certificate not trusted: is CONSUL_CACERT the CA that signed Consul's \
             certificate? (verified against {trusted_by})"
        ),
        rustls::Error::AlertReceived(alert) => match (&context.client_cert, alert) {
            (
                None,
                AlertDescription::CertificateRequired
                | AlertDescription::BadCertificate
                | AlertDescription::HandshakeFailure,
            ) => format!(
                "Consul refused the connection ({alert:?}): it requires a client certificate \
                 (verify_incoming); set CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY \
                 (--consul-client-cert, --consul-client-key) to a certificate signed by the CA \
                 in Consul's ca_file"
            ),
            (
                Some(cert),
                AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateRevoked
                | AlertDescription::DecryptError,
            ) => format!(
                "Consul rejected the client certificate {} ({alert:?}): is CONSUL_CLIENT_CERT \
                 signed by the CA in Consul's ca_file, valid now, and meant for client \
                 authentication?",
                cert.display()
            ),
            _ => format!("Consul ended the TLS session with alert {alert:?}"),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateHandshakeMessage { .. } => {
            format!(
                "{error}: the server does not speak TLS there; is this Consul's HTTPS port \
                 (ports.https), not its plain HTTP port?"
            )
        }
        other => format!("{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(address: &str) -> ConsulConfig {
        match ConsulConfig::new(address, None, None) {
            Ok(config) => config,
            Err(error) => panic!("{address}: {error}"),
        }
    }

    #[test]
    fn without_consul_cacert_or_a_system_bundle_the_error_names_consul_cacert() {
        let missing = Path::new("/nonexistent/weft/ca-certificates.crt");
        let error = Tls::with_system_bundle(&config("https://127.0.0.1:8501"), missing)
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(error.contains("CONSUL_CACERT"), "{error}");
        assert!(error.contains("/nonexistent/weft"), "{error}");
    }

    #[test]
    fn an_unreadable_ca_file_is_named() {
        let mut config = config("https://127.0.0.1:8501");
        config.ca_cert = Some(PathBuf::from("/nonexistent/consul-ca.pem"));
        let error = Tls::new(&config)
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(error.contains("CONSUL_CACERT"), "{error}");
        assert!(error.contains("/nonexistent/consul-ca.pem"), "{error}");
    }

    #[test]
    fn a_misnamed_certificate_points_at_consul_tls_server_name() {
        let context = TlsContext {
            ca_cert: None,
            server_name: "10.0.0.7".into(),
            client_cert: None,
        };
        let error = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
        );
        let explained = explain(&HandshakeFailed { source: error }, &context);
        let (reason, retryable) = explained.unwrap_or_default();
        assert!(reason.contains("CONSUL_TLS_SERVER_NAME"), "{reason}");
        assert!(reason.contains("10.0.0.7"), "{reason}");
        assert!(!retryable);
    }

    #[test]
    fn a_connection_closed_mid_handshake_is_tls_and_retryable() {
        let context = TlsContext {
            ca_cert: None,
            server_name: "consul".into(),
            client_cert: None,
        };
        let error = HandshakeFailed {
            source: io::Error::new(io::ErrorKind::UnexpectedEof, "tls handshake eof"),
        };
        let (reason, retryable) = explain(&error, &context).unwrap_or_default();
        assert!(reason.contains("HTTPS port"), "{reason}");
        assert!(retryable);
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(explain(&refused, &context), None);
    }
}

//! Sidecar-to-sidecar transport: mutual TLS with SPIFFE identities, and
//! HTTP/2 on top whatever the app speaks, so one connection per endpoint
//! carries every request (Linkerd and Istio do the same).
//!
//! The client config is built once per destination identity: it verifies
//! that the peer's leaf chains to the current trust bundle and names the
//! destination service, and presents this sidecar's current leaf. Both are
//! read from the [`IdentityStore`] at handshake time, so rotation needs no
//! rebuild here.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::client::TlsStream;
use weft_certs::tls::{ALPN_H2, client_config};
use weft_certs::{IdentityStore, PeerRejection, SpiffeId};

use super::{ConnectError, Connector, UpstreamTcp};
use crate::metrics::tls::{Direction as TlsDirection, HANDSHAKE_FAILURES};

/// How to reach the meshed endpoints of one cluster: the identity their
/// sidecars must present, and the TLS config that checks it.
#[derive(Clone)]
pub struct MeshTls {
    pub identity: SpiffeId,
    config: Arc<rustls::ClientConfig>,
}

impl MeshTls {
    pub fn new(store: &Arc<IdentityStore>, identity: SpiffeId) -> Self {
        let config = Arc::new(client_config(store, &identity, &[ALPN_H2]));
        Self { identity, config }
    }
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls")
            .field("identity", &self.identity.to_string())
            .finish()
    }
}

/// Two configs for the same identity are interchangeable: the store they
/// read is the sidecar's one store.
impl PartialEq for MeshTls {
    fn eq(&self, other: &Self) -> bool {
        self.identity == other.identity
    }
}

/// Dials an endpoint and completes the mTLS handshake.
#[derive(Clone)]
pub struct TlsConnector {
    tcp: Connector,
    tls: MeshTls,
}

impl TlsConnector {
    pub fn new(tcp: Connector, tls: MeshTls) -> Self {
        Self { tcp, tls }
    }
}

/// SNI is not how mesh peers are told apart (the SPIFFE ID is), but
/// rustls needs a name to send.
const SNI: &str = "mesh.weft";

impl tower::Service<Uri> for TlsConnector {
    type Response = TokioIo<MeshStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _dst: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = this.tcp.open().await?;
            let connector = tokio_rustls::TlsConnector::from(this.tls.config.clone());
            let name = ServerName::try_from(SNI).expect("a valid DNS name");
            // The handshake is bounded by the same connect timeout as TCP.
            let handshake = connector.connect(name, tcp);
            match tokio::time::timeout(this.tcp.timeout(), handshake).await {
                Ok(Ok(stream)) => Ok(TokioIo::new(MeshStream(stream))),
                Ok(Err(e)) => {
                    let rejection = PeerRejection::from_io_error(&e);
                    HANDSHAKE_FAILURES.failed(TlsDirection::Outbound, rejection.as_ref());
                    let why = rejection
                        .map(|r| r.to_string())
                        .unwrap_or_else(|| e.to_string());
                    Err(this.tcp.error(io::Error::new(
                        e.kind(),
                        format!(
                            "mTLS handshake (expecting {}) failed: {why}",
                            this.tls.identity
                        ),
                    )))
                }
                Err(_) => {
                    HANDSHAKE_FAILURES.timed_out(TlsDirection::Outbound);
                    Err(this.tcp.error(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "mTLS handshake timed out",
                    )))
                }
            }
        })
    }
}

/// An established mTLS connection to a peer sidecar.
pub struct MeshStream(TlsStream<UpstreamTcp>);

impl Connection for MeshStream {
    fn connected(&self) -> Connected {
        // ALPN is h2 only: the peer either speaks HTTP/2 or the handshake
        // failed, so the client may multiplex at once.
        Connected::new().negotiated_h2()
    }
}

impl AsyncRead for MeshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for MeshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

//! Sidecar-to-sidecar transport: mutual TLS with SPIFFE identities. The
//! caller offers ALPN `weft-mesh/h2`, `h2` and `http/1.1`; a Weft sidecar
//! selects `weft-mesh/h2`, so one multiplexed HTTP/2 connection per
//! endpoint carries every request whatever the app speaks (Linkerd and
//! Istio do the same). A peer that is not a Weft sidecar (Consul's
//! built-in `consul connect proxy`, which selects `h2` but only relays
//! bytes to its app; an L4 proxy that selects nothing) is spoken to as
//! `proxy/forward.rs` says, from what [`PeerProtocol`] remembers of it.
//!
//! The TLS runs over a plain connection [`Dial`]ed by the caller's own
//! connector (`upstream`'s, which holds the cluster's connection cap and
//! DNS), so this side knows nothing of pools and endpoints.
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
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::client::TlsStream;
use weft_certs::tls::{ALPN_H2, ALPN_HTTP1, ALPN_WEFT_H2, MESH_ALPN, client_config};
use weft_certs::{IdentityStore, PeerRejection, SpiffeId};

use super::failures::{Direction as TlsDirection, HANDSHAKE_FAILURES};

/// The plain connection under the TLS, opened by the caller's connector:
/// `upstream::Connector` (each endpoint's, with its connect timeout and
/// the cluster's connection cap) implements it.
pub trait Dial: Clone + Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    type Error: std::error::Error + Send + Sync + 'static;

    /// Opens the plain connection.
    fn open(&self) -> impl Future<Output = Result<Self::Io, Self::Error>> + Send;

    /// The connect timeout, which also bounds the handshake.
    fn timeout(&self) -> Duration;

    /// The connector's error for a failed handshake on its connection.
    fn error(&self, source: io::Error) -> Self::Error;
}

/// How to reach the meshed endpoints of one cluster: the identity their
/// sidecars must present, and the TLS config that checks it.
#[derive(Clone)]
pub struct MeshTls {
    pub identity: SpiffeId,
    config: Arc<rustls::ClientConfig>,
}

impl MeshTls {
    pub fn new(store: &Arc<IdentityStore>, identity: SpiffeId) -> Self {
        let config = Arc::new(client_config(store, &identity, MESH_ALPN));
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

/// What a peer selected by ALPN on its last handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Negotiated {
    /// `weft-mesh/h2`: a Weft sidecar: HTTP/2 whatever its app speaks.
    WeftH2,
    /// `h2` from a peer that is not a Weft sidecar: Consul's built-in
    /// proxy selects it and relays bytes to an app of any protocol, so it
    /// says nothing sure about the app.
    H2,
    /// `http/1.1`.
    Http1,
    /// Nothing (Consul's built-in proxy, Go's TLS without `NextProtos`):
    /// an L4 proxy in front of an app whose protocol the caller must know.
    Nothing,
}

impl Negotiated {
    /// The ALPN id (`none` for nothing), as `/clusters` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WeftH2 => "weft-mesh/h2",
            Self::H2 => "h2",
            Self::Http1 => "http/1.1",
            Self::Nothing => "none",
        }
    }

    fn of(alpn: Option<&[u8]>) -> Self {
        match alpn {
            Some(ALPN_WEFT_H2) => Self::WeftH2,
            Some(ALPN_H2) => Self::H2,
            Some(ALPN_HTTP1) => Self::Http1,
            // rustls refuses a protocol it did not offer.
            _ => Self::Nothing,
        }
    }

    fn encode(self) -> u8 {
        match self {
            Self::WeftH2 => 1,
            Self::H2 => 2,
            Self::Http1 => 3,
            Self::Nothing => 4,
        }
    }

    fn decode(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::WeftH2),
            2 => Some(Self::H2),
            3 => Some(Self::Http1),
            4 => Some(Self::Nothing),
            _ => None,
        }
    }
}

/// What one endpoint's peer negotiated, remembered across requests (and
/// table swaps, with the endpoint's clients): written by every handshake,
/// so a peer that changes kind (a Consul proxy replaced by a Weft sidecar
/// at the same address) is learned from its next new connection. Reading
/// it is one relaxed atomic load.
pub struct PeerProtocol<I> {
    negotiated: AtomicU8,
    /// Serialises the first handshake ([`TlsConnector::learn`]), so a
    /// burst of first requests probes once; never taken once known.
    probe: tokio::sync::Mutex<()>,
    /// The connection of that first handshake, kept for the next connect
    /// of either client (the request that learnt about the peer is about
    /// to ask for one), so learning costs no extra handshake. Locked only
    /// when a new connection is made, never per request.
    parked: std::sync::Mutex<Option<(MeshStream<I>, Instant)>>,
}

/// A parked connection older than this is closed instead of used: the peer
/// may have given up on a connection that sent nothing (a Weft sidecar
/// waits `--header-read-timeout` for the first request).
const PARKED_FOR_AT_MOST: Duration = Duration::from_secs(1);

/// Not derived: a derive would ask `I: Default` of the connection.
impl<I> Default for PeerProtocol<I> {
    fn default() -> Self {
        Self {
            negotiated: AtomicU8::default(),
            probe: tokio::sync::Mutex::default(),
            parked: std::sync::Mutex::default(),
        }
    }
}

impl<I> PeerProtocol<I> {
    pub fn get(&self) -> Option<Negotiated> {
        Negotiated::decode(self.negotiated.load(Ordering::Relaxed))
    }

    fn set(&self, negotiated: Negotiated) {
        self.negotiated
            .store(negotiated.encode(), Ordering::Relaxed);
    }

    fn park(&self, stream: MeshStream<I>) {
        let mut parked = self.parked.lock().unwrap_or_else(|p| p.into_inner());
        *parked = Some((stream, Instant::now()));
    }

    /// The parked connection, if it is still fresh.
    fn take_parked(&self) -> Option<MeshStream<I>> {
        let mut parked = self.parked.lock().unwrap_or_else(|p| p.into_inner());
        parked
            .take()
            .filter(|(_, at)| at.elapsed() <= PARKED_FOR_AT_MOST)
            .map(|(stream, _)| stream)
    }
}

impl<I> std::fmt::Debug for PeerProtocol<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerProtocol")
            .field("negotiated", &self.get())
            .finish_non_exhaustive()
    }
}

/// Dials an endpoint and completes the mTLS handshake.
pub struct TlsConnector<C: Dial> {
    tcp: C,
    tls: MeshTls,
    peer: Arc<PeerProtocol<C::Io>>,
    /// For the HTTP/2-only client: a peer that selects `http/1.1` cannot
    /// take HTTP/2 with prior knowledge, so its connection is refused
    /// (after noting what it selected, for the next request).
    h2_only: bool,
}

/// Not derived: a derive would ask `C::Io: Clone` of the connection.
impl<C: Dial> Clone for TlsConnector<C> {
    fn clone(&self) -> Self {
        Self {
            tcp: self.tcp.clone(),
            tls: self.tls.clone(),
            peer: self.peer.clone(),
            h2_only: self.h2_only,
        }
    }
}

impl<C: Dial> TlsConnector<C> {
    pub fn new(tcp: C, tls: MeshTls, peer: Arc<PeerProtocol<C::Io>>, h2_only: bool) -> Self {
        Self {
            tcp,
            tls,
            peer,
            h2_only,
        }
    }

    /// What the peer selected on its last handshake, if there was one.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.peer.get()
    }

    /// What the peer negotiates: remembered, else learnt from one
    /// handshake, whose connection the next connect takes.
    pub async fn learn(&self) -> Result<Negotiated, C::Error> {
        if let Some(known) = self.peer.get() {
            return Ok(known);
        }
        let _probe = self.peer.probe.lock().await;
        if let Some(known) = self.peer.get() {
            return Ok(known);
        }
        let stream = self.handshake().await?;
        let negotiated = stream.negotiated;
        self.peer.park(stream);
        Ok(negotiated)
    }

    async fn handshake(&self) -> Result<MeshStream<C::Io>, C::Error> {
        let tcp = self.tcp.open().await?;
        let connector = tokio_rustls::TlsConnector::from(self.tls.config.clone());
        let name = ServerName::try_from(SNI).expect("a valid DNS name");
        // The handshake is bounded by the same connect timeout as TCP.
        let handshake = connector.connect(name, tcp);
        match tokio::time::timeout(self.tcp.timeout(), handshake).await {
            Ok(Ok(stream)) => {
                let negotiated = Negotiated::of(stream.get_ref().1.alpn_protocol());
                self.peer.set(negotiated);
                Ok(MeshStream { stream, negotiated })
            }
            Ok(Err(e)) => {
                let rejection = PeerRejection::from_io_error(&e);
                HANDSHAKE_FAILURES.failed(TlsDirection::Outbound, rejection.as_ref());
                let why = rejection
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| e.to_string());
                Err(self.tcp.error(io::Error::new(
                    e.kind(),
                    format!(
                        "mTLS handshake (expecting {}) failed: {why}",
                        self.tls.identity
                    ),
                )))
            }
            Err(_) => {
                HANDSHAKE_FAILURES.timed_out(TlsDirection::Outbound);
                Err(self.tcp.error(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "mTLS handshake timed out",
                )))
            }
        }
    }
}

/// SNI is not how mesh peers are told apart (the SPIFFE ID is), but
/// rustls needs a name to send.
const SNI: &str = "mesh.weft";

impl<C: Dial> tower::Service<Uri> for TlsConnector<C> {
    type Response = TokioIo<MeshStream<C::Io>>;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, C::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), C::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _dst: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let stream = match this.peer.take_parked() {
                Some(stream) => stream,
                None => this.handshake().await?,
            };
            if this.h2_only && stream.negotiated == Negotiated::Http1 {
                return Err(this.tcp.error(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the peer ({}) selected ALPN http/1.1 where HTTP/2 was needed",
                        this.tls.identity
                    ),
                )));
            }
            Ok(TokioIo::new(stream))
        })
    }
}

/// An established mTLS connection to a mesh peer.
pub struct MeshStream<I> {
    stream: TlsStream<I>,
    negotiated: Negotiated,
}

impl<I> Connection for MeshStream<I> {
    fn connected(&self) -> Connected {
        // The HTTP/2-only client multiplexes whatever this says; the other
        // one speaks HTTP/2 only to a Weft peer (it is used for one that
        // selected plain `h2` only when the request is to go as HTTP/1.1).
        if self.negotiated == Negotiated::WeftH2 {
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for MeshStream<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MeshStream<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_weft_mesh_h2_says_the_peer_is_a_weft_sidecar() {
        assert_eq!(Negotiated::of(Some(b"weft-mesh/h2")), Negotiated::WeftH2);
        assert_eq!(Negotiated::of(Some(b"h2")), Negotiated::H2);
        assert_eq!(Negotiated::of(Some(b"http/1.1")), Negotiated::Http1);
        assert_eq!(Negotiated::of(None), Negotiated::Nothing);
    }

    #[test]
    fn what_a_peer_selected_is_remembered_until_its_next_handshake_says_otherwise() {
        let peer = PeerProtocol::<tokio::net::TcpStream>::default();
        assert_eq!(peer.get(), None);
        for negotiated in [
            Negotiated::WeftH2,
            Negotiated::H2,
            Negotiated::Http1,
            Negotiated::Nothing,
        ] {
            peer.set(negotiated);
            assert_eq!(peer.get(), Some(negotiated));
        }
    }
}

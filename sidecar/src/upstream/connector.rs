//! The TCP connector of one endpoint: always dials that endpoint (whatever
//! the request URI says), with the cluster's connect timeout and
//! TCP_NODELAY (requests are small and latency-bound). A cluster's
//! connectors share its [`ConnectionLimit`]: [`Connector::open`] takes a
//! slot under it first, and the connection ([`UpstreamTcp`]) holds the
//! slot until it closes.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::Dns;
use super::EndpointAddr;
use super::connection_limit::{ConnectionLimit, ConnectionSlot, PendingOverflow};
use crate::mtls::Dial;

#[derive(Clone)]
pub struct Connector {
    addr: Arc<EndpointAddr>,
    timeout: Duration,
    dns: Dns,
    /// The cluster's cap on connections; `None` for connections outside a
    /// cluster's pools (JWKS fetches, the local app).
    limit: Option<Arc<ConnectionLimit>>,
}

impl Connector {
    pub fn new(addr: EndpointAddr, timeout: Duration, dns: Dns) -> Self {
        Self {
            addr: Arc::new(addr),
            timeout,
            dns,
            limit: None,
        }
    }

    /// A connector whose connections count against `limit`.
    pub fn limited(mut self, limit: Arc<ConnectionLimit>) -> Self {
        self.limit = Some(limit);
        self
    }

    pub fn limit(&self) -> Option<&Arc<ConnectionLimit>> {
        self.limit.as_ref()
    }
}

/// Why a connection to an endpoint could not be made.
#[derive(Debug)]
pub struct ConnectError {
    pub addr: String,
    pub timed_out: bool,
    /// Not dialed at all: the cluster's connections are all busy and too
    /// many requests already wait for one (`x-weft-overflow: pending`).
    pub overflow: Option<PendingOverflow>,
    pub source: io::Error,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(overflow) = &self.overflow {
            write!(f, "no connection to {} opened: {overflow}", self.addr)
        } else if self.timed_out {
            write!(f, "connect to {} timed out", self.addr)
        } else {
            write!(f, "connect to {}: {}", self.addr, self.source)
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

async fn connect(addr: &EndpointAddr, dns: &Dns) -> io::Result<TcpStream> {
    let stream = match addr {
        EndpointAddr::Ip(a) => TcpStream::connect(*a).await?,
        EndpointAddr::Name { host, port } => {
            let addrs: Vec<SocketAddr> = dns.resolve(host, *port).await?;
            let mut last = None;
            let mut connected = None;
            for a in addrs {
                match TcpStream::connect(a).await {
                    Ok(s) => {
                        connected = Some(s);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            match connected {
                Some(s) => s,
                None => {
                    return Err(last.unwrap_or_else(|| io::Error::other("no address")));
                }
            }
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A TCP connection to an endpoint of a cluster, holding its place under
/// the cluster's connection cap until it is dropped.
pub struct UpstreamTcp {
    stream: TcpStream,
    _slot: Option<ConnectionSlot>,
}

impl Connection for UpstreamTcp {
    fn connected(&self) -> Connected {
        self.stream.connected()
    }
}

impl AsyncRead for UpstreamTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for UpstreamTcp {
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

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<UpstreamTcp>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _dst: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.open().await.map(TokioIo::new) })
    }
}

/// The mesh's TLS runs over this connector's connections, under the
/// cluster's cap.
impl Dial for Connector {
    type Io = UpstreamTcp;
    type Error = ConnectError;

    fn open(&self) -> impl Future<Output = Result<UpstreamTcp, ConnectError>> + Send {
        Connector::open(self)
    }

    fn timeout(&self) -> Duration {
        Connector::timeout(self)
    }

    fn error(&self, source: io::Error) -> ConnectError {
        Connector::error(self, source)
    }
}

impl Connector {
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A connect error about this endpoint (e.g. a failed TLS handshake).
    pub fn error(&self, source: io::Error) -> ConnectError {
        ConnectError {
            addr: self.addr.to_string(),
            timed_out: source.kind() == io::ErrorKind::TimedOut,
            overflow: None,
            source,
        }
    }

    /// The error for a request refused a connection by the cluster's cap.
    pub fn overflow_error(&self, overflow: PendingOverflow) -> ConnectError {
        ConnectError {
            addr: self.addr.to_string(),
            timed_out: false,
            overflow: Some(overflow),
            source: io::Error::other(overflow.to_string()),
        }
    }

    /// Takes a place under the cluster's connection cap (waiting for one
    /// if need be), then dials.
    pub async fn open(&self) -> Result<UpstreamTcp, ConnectError> {
        let slot = match &self.limit {
            Some(limit) => Some(
                limit
                    .acquire()
                    .await
                    .map_err(|overflow| self.overflow_error(overflow))?,
            ),
            None => None,
        };
        self.dial(slot).await
    }

    /// Dials, the connection holding `slot` (already taken).
    pub async fn dial(&self, slot: Option<ConnectionSlot>) -> Result<UpstreamTcp, ConnectError> {
        let stream = self.connect().await.inspect_err(|_| {
            if let Some(limit) = &self.limit {
                limit.connect_failures_total.fetch_add(1, Ordering::Relaxed);
            }
        })?;
        Ok(UpstreamTcp {
            stream,
            _slot: slot,
        })
    }

    /// Dials the endpoint (every resolved address in turn for a name),
    /// within the connect timeout.
    pub async fn connect(&self) -> Result<TcpStream, ConnectError> {
        match tokio::time::timeout(self.timeout, connect(&self.addr, &self.dns)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(source)) => Err(ConnectError {
                addr: self.addr.to_string(),
                timed_out: false,
                overflow: None,
                source,
            }),
            Err(_) => Err(ConnectError {
                addr: self.addr.to_string(),
                timed_out: true,
                overflow: None,
                source: io::Error::new(io::ErrorKind::TimedOut, "connect timeout"),
            }),
        }
    }
}

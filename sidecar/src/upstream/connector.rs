//! The TCP connector of one endpoint: always dials that endpoint (whatever
//! the request URI says), with the cluster's connect timeout and
//! TCP_NODELAY (requests are small and latency-bound).

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::Dns;
use crate::table::EndpointAddr;

#[derive(Clone)]
pub struct Connector {
    addr: Arc<EndpointAddr>,
    timeout: Duration,
    dns: Dns,
}

impl Connector {
    pub fn new(addr: EndpointAddr, timeout: Duration, dns: Dns) -> Self {
        Self {
            addr: Arc::new(addr),
            timeout,
            dns,
        }
    }
}

/// Why a connection to an endpoint could not be made.
#[derive(Debug)]
pub struct ConnectError {
    pub addr: String,
    pub timed_out: bool,
    pub source: io::Error,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.timed_out {
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

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _dst: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect().await.map(TokioIo::new) })
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
            source,
        }
    }

    /// Dials the endpoint (every resolved address in turn for a name),
    /// within the connect timeout.
    pub async fn connect(&self) -> Result<TcpStream, ConnectError> {
        match tokio::time::timeout(self.timeout, connect(&self.addr, &self.dns)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(source)) => Err(ConnectError {
                addr: self.addr.to_string(),
                timed_out: false,
                source,
            }),
            Err(_) => Err(ConnectError {
                addr: self.addr.to_string(),
                timed_out: true,
                source: io::Error::new(io::ErrorKind::TimedOut, "connect timeout"),
            }),
        }
    }
}

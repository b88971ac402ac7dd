//! Raw connections to a listener: any bytes on the wire (malformed HTTP/1
//! heads, smuggling pipelines, hand-made HTTP/2 frames), over plain TCP or
//! a real mTLS handshake with a CA-issued leaf, and a small HTTP/1
//! response reader that tells how many answers came back and whether the
//! connection closed.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a raw exchange waits for the next byte before it decides the
/// peer has nothing more to say (and left the connection open).
pub const QUIET: Duration = Duration::from_secs(2);

pub trait RawIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> RawIo for T {}

/// A listener to send raw bytes to.
#[derive(Clone)]
pub struct RawTarget {
    /// Names the listener in failure messages (`outbound`, `inbound mTLS`).
    pub name: &'static str,
    pub addr: SocketAddr,
    /// Set for an mTLS listener: the handshake happens on connect.
    pub tls: Option<tokio_rustls::TlsConnector>,
}

impl RawTarget {
    pub fn plain(name: &'static str, addr: SocketAddr) -> Self {
        Self {
            name,
            addr,
            tls: None,
        }
    }

    pub fn mtls(name: &'static str, addr: SocketAddr, tls: tokio_rustls::TlsConnector) -> Self {
        Self {
            name,
            addr,
            tls: Some(tls),
        }
    }

    /// A fresh connection, its TLS handshake (if any) done.
    pub async fn connect(&self) -> anyhow::Result<Box<dyn RawIo>> {
        let tcp = tokio::time::timeout(QUIET, TcpStream::connect(self.addr))
            .await
            .with_context(|| format!("connecting to {} timed out", self.name))??;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(connector) => {
                let name = sni();
                let tls = tokio::time::timeout(QUIET, connector.connect(name, tcp))
                    .await
                    .with_context(|| format!("TLS handshake with {} timed out", self.name))?
                    .with_context(|| format!("TLS handshake with {}", self.name))?;
                Ok(Box::new(tls))
            }
        }
    }

    /// Writes `bytes` on a fresh connection and reads until the peer closes
    /// it or stays [`QUIET`].
    pub async fn exchange(&self, bytes: &[u8]) -> anyhow::Result<RawExchange> {
        self.exchange_within(bytes, QUIET).await
    }

    /// [`RawTarget::exchange`], giving up on the peer after `quiet` with
    /// nothing read (fuzzing: a variant may leave a body half sent). The
    /// peer may close before it has read everything: what it said before
    /// that is still read.
    pub async fn exchange_within(
        &self,
        bytes: &[u8],
        quiet: Duration,
    ) -> anyhow::Result<RawExchange> {
        let mut io = self.connect().await?;
        let _ = io.write_all(bytes).await;
        let _ = io.flush().await;
        read_until_quiet(&mut io, quiet).await
    }
}

/// Sidecars send SNI but do not check it (the SPIFFE ID is checked).
fn sni() -> tokio_rustls::rustls::pki_types::ServerName<'static> {
    tokio_rustls::rustls::pki_types::ServerName::try_from("weft.mesh")
        .expect("a valid DNS name")
        .to_owned()
}

/// What came back on one connection.
#[derive(Debug)]
pub struct RawExchange {
    pub bytes: Vec<u8>,
    /// The peer closed the connection (or reset it) rather than going quiet.
    pub closed: bool,
}

/// Reads everything until the peer closes or sends nothing for `quiet`.
pub async fn read_until_quiet(
    io: &mut (impl AsyncRead + Unpin),
    quiet: Duration,
) -> anyhow::Result<RawExchange> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(quiet, io.read(&mut buf)).await {
            Err(_) => {
                return Ok(RawExchange {
                    bytes,
                    closed: false,
                });
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Ok(RawExchange {
                    bytes,
                    closed: true,
                });
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
        }
    }
}

/// One HTTP/1 response head (and the length of its body).
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl RawExchange {
    /// The HTTP/1 responses in what came back, in order (Content-Length
    /// or chunked bodies; a body without framing runs to the end).
    pub fn responses(&self) -> anyhow::Result<Vec<RawResponse>> {
        let mut rest = &self.bytes[..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let end = rest
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .with_context(|| {
                    format!("an incomplete head: {:?}", String::from_utf8_lossy(rest))
                })?;
            let head = std::str::from_utf8(&rest[..end]).context("a non-UTF-8 head")?;
            rest = &rest[end + 4..];
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap_or_default();
            let status: u16 = status_line
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("not a status line: {status_line:?}"))?;
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                .collect();
            let mut response = RawResponse {
                status,
                headers,
                body: Vec::new(),
            };
            if let Some(len) = response.header("content-length") {
                let len: usize = len.parse().context("a bad Content-Length")?;
                let len = len.min(rest.len());
                response.body = rest[..len].to_vec();
                rest = &rest[len..];
            } else if response
                .header("transfer-encoding")
                .is_some_and(|te| te.contains("chunked"))
            {
                rest = dechunk(rest, &mut response.body)?;
            } else if status >= 200 && status != 204 && status != 304 {
                response.body = rest.to_vec();
                rest = &[];
            }
            out.push(response);
        }
        Ok(out)
    }
}

fn dechunk<'a>(mut rest: &'a [u8], body: &mut Vec<u8>) -> anyhow::Result<&'a [u8]> {
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("an incomplete chunk size")?;
        let size_text = std::str::from_utf8(&rest[..line_end])?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("a bad chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            // No trailers from the sidecar: the final CRLF.
            if rest.len() < 2 {
                bail!("an incomplete last chunk");
            }
            return Ok(&rest[2..]);
        }
        if rest.len() < size + 2 {
            bail!("an incomplete chunk");
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

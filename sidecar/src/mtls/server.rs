//! The inbound side of the mesh handshake: the listener's TLS acceptor,
//! which requires a leaf from the mesh's CA (HTTP/2 or HTTP/1.1 by ALPN),
//! and in PERMISSIVE mode lets plaintext in too, told apart by the first
//! byte, for services joining the mesh. A completed handshake yields the
//! caller's verified SPIFFE ID; a failed one is counted by reason
//! ([`super::failures`]) and logged, and the connection dropped.
//!
//! `crate::server` accepts the TCP connections, reads the mode from the
//! table's inbound policy once per connection, and serves HTTP on what
//! [`MtlsAcceptor::accept`] hands back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::failures::{Direction as TlsDirection, HANDSHAKE_FAILURES};
use super::mode::MtlsMode;

/// The TLS acceptor of an mTLS listener. Cheap to clone.
#[derive(Clone)]
pub struct MtlsAcceptor {
    acceptor: tokio_rustls::TlsAcceptor,
}

/// A connection the handshake let in.
pub enum Accepted {
    /// Boxed: a TLS session is large, and the plaintext case should not pay
    /// for it.
    Tls {
        stream: Box<tokio_rustls::server::TlsStream<TcpStream>>,
        /// The verified caller. Its SPIFFE ID, not yet the request model's
        /// `PeerIdentity`: `model` sits above `upstream`, which sits above
        /// this folder.
        peer: Option<weft_certs::SpiffeId>,
    },
    /// Plaintext, let in by PERMISSIVE mode.
    Plain(TcpStream),
}

impl MtlsAcceptor {
    /// Its server config reads the leaf and the trust bundle from `store`
    /// at every handshake.
    pub fn new(store: &Arc<weft_certs::IdentityStore>) -> Self {
        let config = weft_certs::tls::server_config(store, weft_certs::tls::MESH_ALPN);
        Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        }
    }

    /// Completes the handshake with `client` within `deadline` (the
    /// listener's header-read timeout, so a silent client cannot hold a
    /// connection open either way); `None` when it failed, which is
    /// counted and logged here.
    pub async fn accept(
        &self,
        stream: TcpStream,
        mode: MtlsMode,
        deadline: Duration,
        client: SocketAddr,
    ) -> Option<Accepted> {
        let handshake = self.handshake(stream, mode == MtlsMode::Permissive);
        match tokio::time::timeout(deadline, handshake).await {
            Ok(Ok(accepted)) => Some(accepted),
            Ok(Err(e)) => {
                let rejection = weft_certs::PeerRejection::from_io_error(&e);
                HANDSHAKE_FAILURES.failed(TlsDirection::Inbound, rejection.as_ref());
                let why = rejection
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| e.to_string());
                tracing::info!(client = %client, reason = %why, "mTLS handshake refused");
                None
            }
            Err(_) => {
                HANDSHAKE_FAILURES.timed_out(TlsDirection::Inbound);
                tracing::debug!(client = %client, "mTLS handshake timed out");
                None
            }
        }
    }

    async fn handshake(&self, stream: TcpStream, permissive: bool) -> std::io::Result<Accepted> {
        if permissive && !weft_certs::tls::sniff_tls(&stream).await? {
            return Ok(Accepted::Plain(stream));
        }
        let tls = self.acceptor.accept(stream).await?;
        // The verifier refused any leaf without a SPIFFE ID, so a completed
        // handshake always has one.
        let peer = weft_certs::tls::peer_identity(tls.get_ref().1);
        Ok(Accepted::Tls {
            stream: Box::new(tls),
            peer,
        })
    }
}

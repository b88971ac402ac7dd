//! Mutual TLS between sidecars: rustls configs (ring provider) that present
//! the leaf in an [`IdentityStore`] and verify peers' SPIFFE leaves against
//! its trust bundle.
//!
//! - Inbound: [`server_config`] requires a client certificate chaining to
//!   the bundle; after the handshake [`peer_identity`] says who called. A
//!   permissive listener (mTLS and plaintext on one port) first asks
//!   [`sniff_tls`] whether the connection starts with a TLS handshake.
//! - Outbound: [`client_config`] is built per destination service (cache it
//!   per cluster): it accepts only a server leaf with that service's SPIFFE
//!   ID, and presents our leaf as client certificate.
//!
//! Session resumption is off on both sides: a resumed session skips
//! certificate verification, so a root removed from the bundle (or a leaf
//! that expired) would still be accepted. Mesh connections are pooled and
//! long-lived, so full handshakes cost little.

mod rejection;
mod store;
mod verify;

use std::io;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, CommonState, ServerConfig};
use tokio::net::TcpStream;

pub use rejection::PeerRejection;
pub use store::IdentityStore;

use crate::spiffe::SpiffeId;
use crate::x509;
use verify::{CurrentLeaf, SpiffeClientVerifier, SpiffeServerVerifier};

/// ALPN id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN id of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// What a sidecar offers by default: HTTP/2 preferred, HTTP/1.1 accepted.
pub const HTTP_ALPN: &[&[u8]] = &[ALPN_H2, ALPN_HTTP1];
/// ALPN id of HTTP/2 between Weft sidecars. A peer that selects plain
/// `h2` may be an L4 proxy that only relays bytes to an HTTP/1.1 app:
/// Consul's built-in `consul connect proxy` selects `h2` (Go's Connect TLS
/// config offers it for Connect-native servers) and then hands whatever
/// arrives to its app. Only a Weft sidecar selects this id, so a caller
/// knows the far end speaks HTTP/2 itself (Linkerd tells its own proxies
/// apart by ALPN the same way, `transport.l5d.io/v1`).
pub const ALPN_WEFT_H2: &[u8] = b"weft-mesh/h2";
/// What sidecars offer and select on the mesh hop, preferred first: HTTP/2
/// to and from Weft sidecars, plain `h2` and `http/1.1` for everyone else.
pub const MESH_ALPN: &[&[u8]] = &[ALPN_WEFT_H2, ALPN_H2, ALPN_HTTP1];

/// The first byte of every TLS connection: a handshake record (ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The inbound (server) config: presents the store's current leaf,
/// requires a client certificate that chains to the store's current bundle
/// and carries a SPIFFE ID, and offers `alpn` (e.g. [`HTTP_ALPN`]).
pub fn server_config(store: &Arc<IdentityStore>, alpn: &[&[u8]]) -> ServerConfig {
    let mut config = ServerConfig::builder_with_provider(store.provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_client_cert_verifier(Arc::new(SpiffeClientVerifier {
            store: store.clone(),
        }))
        .with_cert_resolver(Arc::new(CurrentLeaf {
            store: store.clone(),
        }));
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config
}

/// The outbound (client) config for one destination service: the server's
/// leaf must chain to the store's bundle and carry a SPIFFE ID naming the
/// same service as `expected` (trust domain, namespace, service; the
/// Consul datacenter segment is ignored). Presents the store's current
/// leaf as client certificate. The `ServerName` passed to the connector is
/// sent as SNI but not checked.
pub fn client_config(
    store: &Arc<IdentityStore>,
    expected: &SpiffeId,
    alpn: &[&[u8]],
) -> ClientConfig {
    let mut config = ClientConfig::builder_with_provider(store.provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier {
            store: store.clone(),
            expected: expected.clone(),
        }))
        .with_client_cert_resolver(Arc::new(CurrentLeaf {
            store: store.clone(),
        }));
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    config.resumption = Resumption::disabled();
    config
}

/// The SPIFFE ID of the peer of an established connection (pass a
/// `&ServerConnection` or `&ClientConnection`, e.g. from
/// `tls_stream.get_ref().1`). `None` before the handshake or without a
/// verified SPIFFE leaf.
pub fn peer_identity(connection: &CommonState) -> Option<SpiffeId> {
    let leaf = connection.peer_certificates()?.first()?;
    x509::spiffe_id_of_der(leaf).ok()
}

/// True when the connection starts with a TLS handshake record, false for
/// anything else (e.g. a plaintext HTTP request) or a connection closed
/// before its first byte. Peeks without consuming, so the bytes are still
/// there for the TLS acceptor or the HTTP server. Waits for the first byte:
/// wrap it in a timeout against idle clients.
pub async fn sniff_tls(stream: &TcpStream) -> io::Result<bool> {
    let mut first = [0u8; 1];
    let read = stream.peek(&mut first).await?;
    Ok(read == 1 && first[0] == TLS_HANDSHAKE_RECORD)
}

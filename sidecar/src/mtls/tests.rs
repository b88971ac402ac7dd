//! Both sides of the handshake against each other on loopback.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use weft_certs::SpiffeId;

use super::*;

/// Plain TCP to one address, standing in for `upstream`'s connector.
#[derive(Clone)]
struct Loopback(SocketAddr);

impl Dial for Loopback {
    type Io = TcpStream;
    type Error = io::Error;

    fn open(&self) -> impl Future<Output = io::Result<TcpStream>> + Send {
        TcpStream::connect(self.0)
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(5)
    }

    fn error(&self, source: io::Error) -> io::Error {
        source
    }
}

/// web's identity store, with a leaf and bundle of a fresh CA.
fn web() -> (Arc<weft_certs::IdentityStore>, SpiffeId) {
    let web = weft_test_support::mesh_identity::MeshIdentity::mint("mesh.test", "web");
    (web.store, web.id)
}

/// Accepts one connection on a fresh listener with `mode`.
async fn accept_one(
    store: &Arc<weft_certs::IdentityStore>,
    mode: MtlsMode,
) -> (SocketAddr, tokio::task::JoinHandle<Option<Accepted>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = MtlsAcceptor::new(store);
    let accepted = tokio::spawn(async move {
        let (tcp, client) = listener.accept().await.unwrap();
        acceptor
            .accept(tcp, mode, Duration::from_secs(5), client)
            .await
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_weft_peer_selects_weft_mesh_h2_and_the_server_learns_the_callers_identity() {
    let (store, id) = web();
    let (addr, accepted) = accept_one(&store, MtlsMode::Strict).await;
    let connector = TlsConnector::new(
        Loopback(addr),
        MeshTls::new(&store, id.clone()),
        Arc::default(),
        false,
    );
    assert_eq!(connector.learn().await.unwrap(), Negotiated::WeftH2);
    assert_eq!(connector.negotiated(), Some(Negotiated::WeftH2));
    match accepted.await.unwrap() {
        Some(Accepted::Tls { peer, .. }) => {
            assert_eq!(peer.map(|p| p.to_string()), Some(id.to_string()))
        }
        _ => panic!("the handshake should have completed"),
    }
}

#[tokio::test]
async fn plaintext_gets_in_only_when_permissive() {
    let (store, _) = web();
    for (mode, lets_in) in [(MtlsMode::Permissive, true), (MtlsMode::Strict, false)] {
        let (addr, accepted) = accept_one(&store, mode).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
            .await
            .unwrap();
        let accepted = accepted.await.unwrap();
        assert_eq!(
            matches!(accepted, Some(Accepted::Plain(_))),
            lets_in,
            "{mode:?}"
        );
        if !lets_in {
            assert!(accepted.is_none(), "{mode:?}");
        }
    }
}

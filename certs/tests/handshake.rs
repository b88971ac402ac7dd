//! Mutual TLS between sidecars, specified by real handshakes over loopback:
//! who is accepted, who is refused and why, and how leaves and roots rotate
//! without dropping connections.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::BasicConstraints;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector, client};
use weft_certs::tls::{self, HTTP_ALPN};
use weft_certs::{Ca, IdentityStore, LeafInfo, LeafKey, PeerRejection, SpiffeId, TrustBundle};

const TRUST_DOMAIN: &str = "mesh.test";
const HOUR: Duration = Duration::from_secs(3600);

fn id(service: &str) -> SpiffeId {
    SpiffeId::service_identity(TRUST_DOMAIN, "default", service).unwrap()
}

fn new_ca() -> Ca {
    Ca::generate_root(&TRUST_DOMAIN.parse().unwrap(), 24 * HOUR).unwrap()
}

/// A leaf for `identity` the way a sidecar gets one: local key, CSR, CA.
fn issue(ca: &Ca, identity: &SpiffeId) -> (String, String) {
    issue_between(
        ca,
        identity,
        SystemTime::now() - Duration::from_secs(60),
        SystemTime::now() + HOUR,
    )
}

fn issue_between(
    ca: &Ca,
    identity: &SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
) -> (String, String) {
    let key = LeafKey::generate().unwrap();
    let csr = key.csr_pem(identity).unwrap();
    let chain = ca
        .sign_csr_valid_between(csr.as_bytes(), identity, not_before, not_after)
        .unwrap();
    (chain, key.private_key_pem())
}

fn store(ca: &Ca, service: &str) -> Arc<IdentityStore> {
    let (chain, key) = issue(ca, &id(service));
    IdentityStore::new(&chain, &key, ca.bundle().clone()).unwrap()
}

/// What the server saw of one connection: the caller's identity, or why
/// the handshake failed.
type Accepted = Result<Option<SpiffeId>, io::Error>;

/// An mTLS echo server on loopback; reports each handshake's outcome.
struct Server {
    addr: SocketAddr,
    accepted: mpsc::UnboundedReceiver<Accepted>,
}

impl Server {
    async fn start(store: &Arc<IdentityStore>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(store, HTTP_ALPN)));
        let (report, accepted) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let report = report.clone();
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(mut stream) => {
                            let _ = report.send(Ok(tls::peer_identity(stream.get_ref().1)));
                            echo(&mut stream).await;
                        }
                        Err(error) => {
                            let _ = report.send(Err(error));
                        }
                    }
                });
            }
        });
        Server { addr, accepted }
    }

    /// The outcome of the next handshake the server finished or refused.
    async fn next(&mut self) -> Accepted {
        self.accepted.recv().await.expect("the server is running")
    }

    async fn next_rejection(&mut self) -> PeerRejection {
        rejection(&self.next().await.expect_err("the server must refuse"))
    }
}

async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: &mut S) {
    let mut buffer = [0u8; 1024];
    while let Ok(read) = stream.read(&mut buffer).await {
        if read == 0 || stream.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
}

async fn connect_with(
    config: ClientConfig,
    addr: SocketAddr,
) -> io::Result<client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    // Not checked by the SPIFFE verifier; sent as SNI.
    let name = ServerName::try_from("users.mesh.test").unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

async fn connect(
    store: &Arc<IdentityStore>,
    expected: &SpiffeId,
    addr: SocketAddr,
) -> io::Result<client::TlsStream<TcpStream>> {
    connect_with(tls::client_config(store, expected, HTTP_ALPN), addr).await
}

/// One echo round trip: proves the connection carries data both ways.
async fn round_trip(stream: &mut client::TlsStream<TcpStream>, message: &[u8]) -> io::Result<()> {
    stream.write_all(message).await?;
    let mut answer = vec![0u8; message.len()];
    stream.read_exact(&mut answer).await?;
    assert_eq!(answer, message);
    Ok(())
}

fn rejection(error: &io::Error) -> PeerRejection {
    PeerRejection::from_io_error(error)
        .unwrap_or_else(|| panic!("not a certificate rejection: {error}"))
}

fn server_leaf(stream: &client::TlsStream<TcpStream>) -> LeafInfo {
    let certificates = stream.get_ref().1.peer_certificates().unwrap();
    LeafInfo::from_der(&certificates[0]).unwrap()
}

#[tokio::test]
async fn a_valid_pair_sees_each_others_spiffe_ids() {
    let ca = new_ca();
    let users = store(&ca, "users");
    let web = store(&ca, "web");
    let mut server = Server::start(&users).await;

    let mut stream = connect(&web, &id("users"), server.addr).await.unwrap();
    round_trip(&mut stream, b"hello").await.unwrap();

    assert_eq!(tls::peer_identity(stream.get_ref().1), Some(id("users")));
    assert_eq!(server.next().await.unwrap(), Some(id("web")));
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
}

#[tokio::test]
async fn a_client_from_another_ca_is_refused_as_unknown_issuer() {
    let ca = new_ca();
    let other_ca = new_ca();
    let mut server = Server::start(&store(&ca, "users")).await;
    // The intruder trusts our root (so it gets as far as presenting its
    // certificate), but its leaf comes from another CA.
    let (chain, key) = issue(&other_ca, &id("web"));
    let intruder = IdentityStore::new(&chain, &key, ca.bundle().clone()).unwrap();

    // TLS 1.3: the client's handshake completes before the server's verdict,
    // which arrives as an alert on the first read.
    let outcome = match connect(&intruder, &id("users"), server.addr).await {
        Ok(mut stream) => round_trip(&mut stream, b"hello").await,
        Err(error) => Err(error),
    };

    assert_eq!(server.next_rejection().await, PeerRejection::UnknownIssuer);
    let error = outcome.expect_err("the client must not get an answer");
    assert!(
        matches!(rejection(&error), PeerRejection::RejectedByPeer { .. }),
        "{error}"
    );
}

#[tokio::test]
async fn a_server_from_another_ca_is_refused_as_unknown_issuer() {
    let ca = new_ca();
    let other_ca = new_ca();
    let server = Server::start(&store(&other_ca, "users")).await;

    let error = connect(&store(&ca, "web"), &id("users"), server.addr)
        .await
        .expect_err("the server's root is not in our bundle");

    let rejection = rejection(&error);
    assert_eq!(rejection, PeerRejection::UnknownIssuer);
    assert!(
        rejection.to_string().starts_with("unknown issuer"),
        "{rejection}"
    );
}

#[tokio::test]
async fn a_valid_chain_with_another_services_identity_is_refused() {
    let ca = new_ca();
    let server = Server::start(&store(&ca, "admin")).await;

    let error = connect(&store(&ca, "web"), &id("users"), server.addr)
        .await
        .expect_err("we dialled users, admin answered");

    let rejection = rejection(&error);
    assert_eq!(
        rejection,
        PeerRejection::WrongIdentity {
            expected: id("users"),
            presented: id("admin"),
        }
    );
    assert_eq!(
        rejection.to_string(),
        "wrong peer identity: expected spiffe://mesh.test/ns/default/svc/users, got spiffe://mesh.test/ns/default/svc/admin"
    );
    assert!(
        error
            .to_string()
            .contains("\"spiffe://mesh.test/ns/default/svc/admin\""),
        "rustls's own message names the identity too: {error}"
    );
}

#[tokio::test]
async fn a_consul_leaf_from_any_datacenter_matches_the_service_identity() {
    let ca = new_ca();
    let consul_id: SpiffeId = format!("spiffe://{TRUST_DOMAIN}/ns/default/dc/dc2/svc/users")
        .parse()
        .unwrap();
    let (chain, key) = issue(&ca, &consul_id);
    let users = IdentityStore::new(&chain, &key, ca.bundle().clone()).unwrap();
    let mut server = Server::start(&users).await;

    let mut stream = connect(&store(&ca, "web"), &id("users"), server.addr)
        .await
        .unwrap();
    round_trip(&mut stream, b"hello").await.unwrap();

    assert_eq!(tls::peer_identity(stream.get_ref().1), Some(consul_id));
    assert_eq!(server.next().await.unwrap(), Some(id("web")));
}

#[tokio::test]
async fn expired_leaves_are_refused_on_both_sides() {
    let ca = new_ca();
    let two_hours_ago = SystemTime::now() - 2 * HOUR;
    let one_hour_ago = SystemTime::now() - HOUR;
    let expired = |service: &str| {
        let (chain, key) = issue_between(&ca, &id(service), two_hours_ago, one_hour_ago);
        IdentityStore::new(&chain, &key, ca.bundle().clone()).unwrap()
    };

    // An expired server leaf: the client refuses it.
    let server = Server::start(&expired("users")).await;
    let error = connect(&store(&ca, "web"), &id("users"), server.addr)
        .await
        .expect_err("the server's leaf expired an hour ago");
    assert!(
        matches!(
            rejection(&error),
            PeerRejection::Expired { not_after: Some(_) }
        ),
        "{error}"
    );
    assert!(
        rejection(&error)
            .to_string()
            .contains("expired (not after 20"),
        "{error}"
    );

    // An expired client leaf: the server refuses it.
    let mut server = Server::start(&store(&ca, "users")).await;
    let _ = connect(&expired("web"), &id("users"), server.addr).await;
    assert!(matches!(
        server.next_rejection().await,
        PeerRejection::Expired { not_after: Some(_) }
    ));
}

/// Presents no client certificate, whatever the server asks for.
#[derive(Debug)]
struct NoCertificate;

impl ResolvesClientCert for NoCertificate {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn strict_listeners_refuse_a_client_without_certificate() {
    let ca = new_ca();
    let mut server = Server::start(&store(&ca, "users")).await;
    // A mesh client in every way (it verifies the server's leaf), except
    // that it has no certificate of its own.
    let mut anonymous = tls::client_config(&store(&ca, "web"), &id("users"), HTTP_ALPN);
    anonymous.client_auth_cert_resolver = Arc::new(NoCertificate);

    let _ = connect_with(anonymous, server.addr).await;

    let rejection = server.next_rejection().await;
    assert_eq!(rejection, PeerRejection::NoClientCertificate);
    assert!(rejection.to_string().contains("requires mutual TLS"));
}

#[tokio::test]
async fn sniffing_tells_a_client_hello_from_plaintext_http_without_consuming_it() {
    let ca = new_ca();
    let users = store(&ca, "users");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();

    // Plaintext: sniffed as not TLS, and the request is still all there.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    let request = b"GET /health HTTP/1.1\r\nHost: users\r\n\r\n";
    plain.write_all(request).await.unwrap();
    let (mut inbound, _) = listener.accept().await.unwrap();
    assert!(!tls::sniff_tls(&inbound).await.unwrap());
    let mut received = vec![0u8; request.len()];
    inbound.read_exact(&mut received).await.unwrap();
    assert_eq!(received, request);

    // TLS: sniffed as TLS, and the handshake then completes on the same socket.
    let web = store(&ca, "web");
    let client = tokio::spawn(async move {
        let mut stream = connect(&web, &id("users"), addr).await?;
        round_trip(&mut stream, b"over tls").await
    });
    let (inbound, _) = listener.accept().await.unwrap();
    assert!(tls::sniff_tls(&inbound).await.unwrap());
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(&users, HTTP_ALPN)));
    let mut stream = acceptor.accept(inbound).await.unwrap();
    assert_eq!(tls::peer_identity(stream.get_ref().1), Some(id("web")));
    echo(&mut stream).await;
    client.await.unwrap().unwrap();
}

#[tokio::test]
async fn during_a_root_rotation_both_roots_verify_until_the_old_one_is_removed() {
    let old_ca = new_ca();
    let new_ca = old_ca.rotate_root(24 * HOUR).unwrap();
    let both_roots = new_ca.bundle().clone();
    assert_eq!(both_roots.len(), 2);
    assert!(both_roots.contains(old_ca.certificate()));

    let with_leaf_from = |ca: &Ca, service: &str| {
        let (chain, key) = issue(ca, &id(service));
        IdentityStore::new(&chain, &key, both_roots.clone()).unwrap()
    };
    let users = with_leaf_from(&new_ca, "users");
    let old_web = with_leaf_from(&old_ca, "web");
    let new_web = with_leaf_from(&new_ca, "web");
    let mut server = Server::start(&users).await;

    for client in [&old_web, &new_web] {
        let mut stream = connect(client, &id("users"), server.addr).await.unwrap();
        round_trip(&mut stream, b"hello").await.unwrap();
        assert_eq!(server.next().await.unwrap(), Some(id("web")));
    }

    let mut new_root_only = both_roots.clone();
    assert!(new_root_only.remove(old_ca.certificate()));
    users.set_bundle(new_root_only).unwrap();

    let _ = connect(&old_web, &id("users"), server.addr).await;
    assert_eq!(server.next_rejection().await, PeerRejection::UnknownIssuer);
    let mut stream = connect(&new_web, &id("users"), server.addr).await.unwrap();
    round_trip(&mut stream, b"hello").await.unwrap();
    assert_eq!(server.next().await.unwrap(), Some(id("web")));
}

#[tokio::test]
async fn a_leaf_of_the_rotated_root_verifies_at_peers_still_holding_only_the_old_root() {
    // The window a pushed bundle cannot close by itself: a sidecar renews
    // right after `weftctl ca rotate`, before a peer has the new root (or
    // while that peer is cut off from the agent). The cross-signature sent
    // with the leaf carries it to the old root.
    let old_ca = new_ca();
    let new_ca = old_ca.rotate_root(24 * HOUR).unwrap();
    assert_eq!(new_ca.cross_signed().len(), 1);
    let old_bundle_only = old_ca.bundle().clone();
    let with = |ca: &Ca, service: &str, bundle: &TrustBundle| {
        let (chain, key) = issue(ca, &id(service));
        IdentityStore::new(&chain, &key, bundle.clone()).unwrap()
    };

    // A renewed client, a server that has not heard of the new root.
    let users = with(&old_ca, "users", &old_bundle_only);
    let mut server = Server::start(&users).await;
    let renewed_web = with(&new_ca, "web", new_ca.bundle());
    let mut stream = connect(&renewed_web, &id("users"), server.addr)
        .await
        .unwrap();
    round_trip(&mut stream, b"hello").await.unwrap();
    assert_eq!(server.next().await.unwrap(), Some(id("web")));

    // A renewed server, a client that has not heard of the new root.
    let renewed_users = with(&new_ca, "users", new_ca.bundle());
    let mut server = Server::start(&renewed_users).await;
    let old_web = with(&old_ca, "web", &old_bundle_only);
    let mut stream = connect(&old_web, &id("users"), server.addr).await.unwrap();
    round_trip(&mut stream, b"hello").await.unwrap();
    assert_eq!(server.next().await.unwrap(), Some(id("web")));
    assert_eq!(server_leaf(&stream).identity(), &id("users"));

    // A second rotation replaces the cross-signature: the newest root is
    // vouched for by the one before it.
    let newest_ca = new_ca.rotate_root(24 * HOUR).unwrap();
    assert_eq!(newest_ca.cross_signed().len(), 1);
    let newest_web = with(&newest_ca, "web", newest_ca.bundle());
    let mut server = Server::start(&renewed_users).await;
    let mut stream = connect(&newest_web, &id("users"), server.addr)
        .await
        .unwrap();
    round_trip(&mut stream, b"hello").await.unwrap();
    assert_eq!(server.next().await.unwrap(), Some(id("web")));
}

#[tokio::test]
async fn a_new_leaf_serves_new_handshakes_while_open_connections_carry_on() {
    let ca = new_ca();
    let users = store(&ca, "users");
    let web = store(&ca, "web");
    let first_serial = users.leaf().serial().to_owned();
    let server = Server::start(&users).await;

    let mut open = connect(&web, &id("users"), server.addr).await.unwrap();
    round_trip(&mut open, b"before").await.unwrap();
    assert_eq!(server_leaf(&open).serial(), first_serial);

    let (chain, key) = issue(&ca, &id("users"));
    let renewed = users.set_leaf(&chain, &key).unwrap();
    assert_ne!(renewed.serial(), first_serial);
    assert_eq!(users.leaf(), renewed);

    round_trip(&mut open, b"after the swap").await.unwrap();
    let mut next = connect(&web, &id("users"), server.addr).await.unwrap();
    round_trip(&mut next, b"new handshake").await.unwrap();
    assert_eq!(server_leaf(&next).serial(), renewed.serial());
    round_trip(&mut open, b"still open").await.unwrap();
}

/// A CA certificate's parameters as an operator's own tooling would set
/// them: a common name, certificate signing only, and a path length limit.
fn operator_ca_params(name: &str, path_length: BasicConstraints) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(path_length);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    params
}

#[tokio::test]
async fn a_leaf_from_an_operator_intermediate_verifies_against_the_operator_root() {
    // The operator's root and an intermediate it signed, made outside Weft.
    let root_key = rcgen::KeyPair::generate().unwrap();
    let root_params = operator_ca_params("Operator root", BasicConstraints::Unconstrained);
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = rcgen::Issuer::new(root_params, root_key);
    let intermediate_key = rcgen::KeyPair::generate().unwrap();
    let intermediate = operator_ca_params("Weft intermediate", BasicConstraints::Constrained(0))
        .signed_by(&intermediate_key, &root_issuer)
        .unwrap();

    let ca = Ca::from_intermediate_pem(
        &TRUST_DOMAIN.parse().unwrap(),
        &intermediate.pem(),
        &intermediate_key.serialize_pem(),
        &root.pem(),
    )
    .unwrap();
    assert_eq!(ca.bundle(), &TrustBundle::from_pem(&root.pem()).unwrap());
    // It survives its directory, still knowing it is an intermediate.
    let dir = std::env::temp_dir().join(format!("weft-certs-intermediate-{}", std::process::id()));
    ca.save(&dir).unwrap();
    let ca = Ca::load(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(ca.is_intermediate());
    let mut server = Server::start(&store(&ca, "users")).await;

    let mut stream = connect(&store(&ca, "web"), &id("users"), server.addr)
        .await
        .unwrap();
    round_trip(&mut stream, b"hello").await.unwrap();

    assert_eq!(
        stream.get_ref().1.peer_certificates().unwrap().len(),
        2,
        "leaf + intermediate"
    );
    assert_eq!(server.next().await.unwrap(), Some(id("web")));
}

#[test]
fn a_leaf_with_a_key_that_does_not_match_is_refused_and_the_old_leaf_stays() {
    let ca = new_ca();
    let users = store(&ca, "users");
    let before = users.leaf();
    let (chain, _) = issue(&ca, &id("users"));
    let stranger_key = LeafKey::generate().unwrap().private_key_pem();

    let error = users.set_leaf(&chain, &stranger_key).unwrap_err();

    assert!(error.to_string().contains("leaf key"), "{error}");
    assert_eq!(users.leaf(), before);
    assert!(matches!(
        users.set_bundle(TrustBundle::new()),
        Err(weft_certs::Error::EmptyBundle)
    ));
}

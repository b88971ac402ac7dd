//! Certificate issuance as a sidecar sees it, over the agent's real gRPC
//! server: who gets a leaf (join token, Consul ACL token with service:write
//! on a real Consul), who is refused and with which code, that a leaf
//! carries its service's SPIFFE ID and completes mutual TLS against the
//! bundle it came with, and that a `weftctl ca rotate` reaches the next
//! leaf without a restart.

mod consul_support;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use consul_support::DevConsul;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prost::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Code, Status};
use weft_certs::ca::files;
use weft_certs::tls::{self, HTTP_ALPN};
use weft_certs::{Ca, IdentityStore, LeafInfo, LeafKey, SpiffeId, TrustBundle};
use weft_discovery::consul::{ConsulClient, ConsulConfig, QueryOptions};
use weft_discovery::identity::{CertificateAuthority, Identity, IdentityConfig, IdentitySource};
use weft_discovery::metrics::Metrics;
use weft_proto::config::v1::{Cluster, TrustBundle as TrustBundleResource};
use weft_proto::discovery::v1::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use weft_proto::discovery::v1::{DiscoveryRequest, Node};
use weft_proto::identity::v1::identity_service_client::IdentityServiceClient;
use weft_proto::identity::v1::{SignCertificateRequest, SignCertificateResponse};
use weft_proto::type_url;
use weft_test_support::temp_dir::TempDir;

const TRUST_DOMAIN: &str = "mesh.test";
const WEB_TOKEN: &str = "web-join-token-6f1d2c";
const DB_TOKEN: &str = "db-join-token-91ab77";
const LEAF_TTL: Duration = Duration::from_secs(3600);
/// How long a CA reload may take to show after the files change (it takes
/// ~100 ms; the margin is for a loaded machine).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

fn id(service: &str) -> SpiffeId {
    SpiffeId::service_identity(TRUST_DOMAIN, "default", service).unwrap()
}

// ---------------------------------------------------------------- set-up

/// Runs `weftctl` as an operator would; panics with its output on failure.
fn weftctl(args: &[&str]) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .args(args)
        .output()
        .expect("run weftctl");
    assert!(
        output.status.success(),
        "weftctl {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `weftctl ca init` into `scratch/ca`.
fn init_ca(scratch: &TempDir) -> PathBuf {
    let dir = scratch.join("ca");
    let out = dir.to_str().expect("a UTF-8 path");
    weftctl(&["ca", "init", "--trust-domain", TRUST_DOMAIN, "--out", out]);
    dir
}

fn join_tokens(scratch: &TempDir) -> PathBuf {
    scratch.write(
        "tokens.json",
        &format!(r#"{{ "web": "{WEB_TOKEN}", "db": ["{DB_TOKEN}"] }}"#),
    )
}

/// The agent's identity service on a loopback port, set up exactly as the
/// agent sets it up from its flags.
struct Agent {
    address: String,
    metrics: Arc<Metrics>,
    authority: Option<CertificateAuthority>,
    trust_bundle: Option<watch::Receiver<TrustBundleResource>>,
}

async fn start_agent(config: IdentityConfig, consul: Option<ConsulClient>) -> Agent {
    let metrics = Arc::new(Metrics::new());
    let identity = Identity::start(&config, consul, metrics.clone())
        .unwrap_or_else(|error| panic!("identity set-up refused: {error}"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(identity.service())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Agent {
        address,
        metrics,
        authority: identity.authority().cloned(),
        trust_bundle: identity.trust_bundle(),
    }
}

/// An agent issuing from a fresh CA with the web and db join tokens.
async fn start_issuing_agent(scratch: &TempDir) -> Agent {
    let config = IdentityConfig {
        source: IdentitySource::Weft,
        ca_dir: Some(init_ca(scratch)),
        join_tokens: Some(join_tokens(scratch)),
        leaf_ttl: LEAF_TTL,
    };
    start_agent(config, None).await
}

/// What a sidecar holds after a successful request.
struct Issued {
    response: SignCertificateResponse,
    key_pem: String,
}

impl Issued {
    fn leaf(&self) -> LeafInfo {
        LeafInfo::from_pem(&self.response.certificate_chain_pem).unwrap()
    }

    fn bundle(&self) -> TrustBundle {
        TrustBundle::from_pem(&self.response.trust_bundle_pem).unwrap()
    }

    /// The TLS identity a sidecar builds from the answer: this leaf, and
    /// `bundle` as the roots it trusts.
    fn store(&self, bundle: TrustBundle) -> Arc<IdentityStore> {
        IdentityStore::new(&self.response.certificate_chain_pem, &self.key_pem, bundle).unwrap()
    }
}

/// Asks for a leaf as `service` the way a sidecar does: a fresh local key,
/// a CSR for it, and `token`.
async fn request_leaf(address: &str, service: &str, token: &str) -> Result<Issued, Status> {
    let key = LeafKey::generate().unwrap();
    let csr_pem = key.csr_pem(&id("anything")).unwrap();
    let response = sign(address, service, &csr_pem, token).await?;
    Ok(Issued {
        response,
        key_pem: key.private_key_pem(),
    })
}

async fn sign(
    address: &str,
    service: &str,
    csr_pem: &str,
    token: &str,
) -> Result<SignCertificateResponse, Status> {
    let mut client = IdentityServiceClient::connect(address.to_owned())
        .await
        .unwrap();
    client
        .sign_certificate(SignCertificateRequest {
            service: service.into(),
            csr_pem: csr_pem.into(),
            token: token.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

fn refused(outcome: Result<Issued, Status>) -> Status {
    match outcome {
        Ok(issued) => panic!(
            "expected a refusal, got a leaf for {}",
            issued.response.spiffe_id
        ),
        Err(status) => status,
    }
}

// ------------------------------------------------------------ mutual TLS

/// One mutual TLS handshake over loopback from `client` to `server`; the
/// client accepts only `expected_server`. Returns the identity each side
/// saw of the other, or why the handshake failed.
async fn handshake(
    server: &Arc<IdentityStore>,
    client: &Arc<IdentityStore>,
    expected_server: &SpiffeId,
) -> Result<(SpiffeId, SpiffeId), String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(server, HTTP_ALPN)));
    let (report, mut accepted) = mpsc::channel(1);
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let outcome = match acceptor.accept(tcp).await {
            Ok(mut stream) => {
                let peer = tls::peer_identity(stream.get_ref().1);
                // Tells the client the server accepted it too (TLS 1.3
                // finishes the client's side before the server's verdict).
                let _ = stream.write_all(b"ok").await;
                let _ = stream.flush().await;
                let _ = report.send(Ok(peer)).await;
                // Keep the stream open until the client has read.
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
                return;
            }
            Err(error) => Err(error.to_string()),
        };
        let _ = report.send(outcome).await;
    });
    let config = tls::client_config(client, expected_server, HTTP_ALPN);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("mesh.test").unwrap();
    let client_side = async {
        let mut stream = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|error| format!("client: {error}"))?;
        let mut ok = [0u8; 2];
        stream
            .read_exact(&mut ok)
            .await
            .map_err(|error| format!("client read: {error}"))?;
        tls::peer_identity(stream.get_ref().1).ok_or_else(|| "client saw no SPIFFE ID".to_string())
    };
    let client_saw = client_side.await;
    let server_saw = accepted
        .recv()
        .await
        .unwrap_or_else(|| Err("the server task ended".into()))
        .map_err(|error| format!("server: {error}"))
        .and_then(|peer| peer.ok_or_else(|| "server saw no SPIFFE ID".to_string()));
    Ok((client_saw?, server_saw?))
}

fn bundle_of(certificate: &rustls::pki_types::CertificateDer<'static>) -> TrustBundle {
    let mut bundle = TrustBundle::new();
    bundle.add(certificate.clone()).unwrap();
    bundle
}

// ----------------------------------------------------------- join tokens

#[tokio::test]
async fn a_join_token_gets_a_leaf_for_its_service_that_completes_mutual_tls() {
    let scratch = TempDir::create("identity-join").unwrap();
    let agent = start_issuing_agent(&scratch).await;

    let web = request_leaf(&agent.address, "web", WEB_TOKEN)
        .await
        .unwrap();
    let db = request_leaf(&agent.address, "db", DB_TOKEN).await.unwrap();

    assert_eq!(
        web.response.spiffe_id,
        "spiffe://mesh.test/ns/default/svc/web"
    );
    assert_eq!(
        web.leaf().identity(),
        &id("web"),
        "the CSR's own SAN is ignored"
    );
    assert_eq!(db.leaf().identity(), &id("db"));
    let not_after = web.response.not_after.expect("not_after is set");
    assert_eq!(
        not_after.seconds,
        web.leaf()
            .not_after()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    );
    let lifetime = web
        .leaf()
        .not_after()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        lifetime > LEAF_TTL - Duration::from_secs(60) && lifetime <= LEAF_TTL,
        "{lifetime:?}"
    );
    let ca = Ca::load(&scratch.join("ca")).unwrap();
    assert_eq!(web.bundle().roots(), [ca.certificate().clone()]);

    // Each side trusts only the bundle it was handed, and each sees the
    // other's service identity.
    let seen = handshake(&db.store(db.bundle()), &web.store(web.bundle()), &id("db")).await;
    assert_eq!(seen, Ok((id("db"), id("web"))));

    let metrics = agent.metrics.encode();
    assert!(
        metrics.contains("weft_discovery_certificates_issued_total 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_wrong_token_or_another_services_token_is_permission_denied() {
    let scratch = TempDir::create("identity-denied").unwrap();
    let agent = start_issuing_agent(&scratch).await;

    for token in [DB_TOKEN, "not-a-token-of-anyone"] {
        let status = refused(request_leaf(&agent.address, "web", token).await);
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("\"web\""), "{status:?}");
        assert!(
            !status.message().contains(token),
            "never echo the token: {status:?}"
        );
    }
    let unknown_service = refused(request_leaf(&agent.address, "api", WEB_TOKEN).await);
    assert_eq!(unknown_service.code(), Code::PermissionDenied);

    let no_token = refused(request_leaf(&agent.address, "web", "").await);
    assert_eq!(no_token.code(), Code::Unauthenticated, "{no_token:?}");
    assert!(no_token.message().contains("join token"), "{no_token:?}");

    let bad_name = refused(request_leaf(&agent.address, "web/admin", WEB_TOKEN).await);
    assert_eq!(bad_name.code(), Code::InvalidArgument, "{bad_name:?}");
    assert!(bad_name.message().contains("'/'"), "{bad_name:?}");

    let metrics = agent.metrics.encode();
    for line in [
        r#"weft_discovery_certificates_refused_total{reason="denied"} 3"#,
        r#"weft_discovery_certificates_refused_total{reason="missing_token"} 1"#,
        r#"weft_discovery_certificates_refused_total{reason="invalid_service"} 1"#,
        "weft_discovery_certificates_issued_total 0",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
}

#[tokio::test]
async fn without_a_ca_every_request_is_failed_precondition_saying_how_to_enable_it() {
    let config = IdentityConfig {
        source: IdentitySource::Weft,
        ca_dir: None,
        join_tokens: None,
        leaf_ttl: LEAF_TTL,
    };
    let agent = start_agent(config, None).await;
    assert!(agent.trust_bundle.is_none(), "no CA, no bundle");

    let status = refused(request_leaf(&agent.address, "web", WEB_TOKEN).await);

    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("--ca-dir"), "{status:?}");
    assert!(status.message().contains("weftctl ca init"), "{status:?}");
}

#[tokio::test]
async fn a_bad_csr_is_invalid_argument_with_the_reason() {
    let scratch = TempDir::create("identity-csr").unwrap();
    let agent = start_issuing_agent(&scratch).await;

    let not_a_csr = sign(&agent.address, "web", "hello", WEB_TOKEN)
        .await
        .expect_err("not a CSR");
    assert_eq!(not_a_csr.code(), Code::InvalidArgument, "{not_a_csr:?}");
    assert!(
        not_a_csr.message().contains("not a PKCS#10 request"),
        "{not_a_csr:?}"
    );

    // A CSR whose signature does not verify: the requester does not prove
    // it holds the key it wants certified.
    let csr = LeafKey::generate().unwrap().csr_pem(&id("web")).unwrap();
    let forged = sign(&agent.address, "web", &tamper_signature(&csr), WEB_TOKEN)
        .await
        .expect_err("forged CSR");
    assert_eq!(forged.code(), Code::InvalidArgument, "{forged:?}");
    assert!(forged.message().contains("does not verify"), "{forged:?}");

    // The credential is checked before the CSR is even read.
    let unauthorised = sign(&agent.address, "web", "hello", DB_TOKEN)
        .await
        .expect_err("wrong token");
    assert_eq!(unauthorised.code(), Code::PermissionDenied);
}

/// The CSR with the last byte of its signature changed.
fn tamper_signature(csr_pem: &str) -> String {
    use base64::Engine as _;
    let body: String = csr_pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let mut der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let encoded = base64::engine::general_purpose::STANDARD.encode(&der);
    let lines: Vec<&str> = encoded
        .as_bytes()
        .chunks(64)
        .map(|chunk| std::str::from_utf8(chunk).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        lines.join("\n")
    )
}

// ----------------------------------------------------------- Consul ACLs

const MASTER_TOKEN: &str = "root-token";

#[tokio::test]
async fn a_consul_token_with_service_write_gets_a_leaf_for_that_service_only() {
    let consul = DevConsul::start_with_acls(MASTER_TOKEN)
        .await
        .expect("a Consul dev agent with ACLs (deploy/local/install-consul.sh installs Consul 1.8; or set WEFT_CONSUL_BIN)");
    wait_for_connect_ca(&consul).await;
    let web_token = consul_token_for(
        &consul,
        "web-writer",
        r#"service "web" { policy = "write" }"#,
    )
    .await;
    let scratch = TempDir::create("identity-consul").unwrap();
    let config = IdentityConfig {
        source: IdentitySource::Weft,
        ca_dir: Some(init_ca(&scratch)),
        join_tokens: None,
        leaf_ttl: LEAF_TTL,
    };
    // The agent's client has no token of its own: the sidecar's token is
    // what Consul judges.
    let agent_client = ConsulClient::new(
        ConsulConfig::new(&format!("127.0.0.1:{}", consul.http_port), None, None).unwrap(),
    )
    .unwrap();
    let agent = start_agent(config, Some(agent_client)).await;

    let web = request_leaf(&agent.address, "web", &web_token)
        .await
        .unwrap();
    assert_eq!(web.leaf().identity(), &id("web"));
    assert_eq!(web.response.spiffe_id, id("web").to_string());

    let db = refused(request_leaf(&agent.address, "db", &web_token).await);
    assert_eq!(db.code(), Code::PermissionDenied, "{db:?}");
    assert!(
        db.message()
            .contains("Consul refused this token service:write on db"),
        "{db:?}"
    );
    assert!(
        !db.message().contains(&web_token),
        "never echo the token: {db:?}"
    );

    let unknown = refused(
        request_leaf(
            &agent.address,
            "web",
            "00000000-0000-0000-0000-000000000000",
        )
        .await,
    );
    assert_eq!(unknown.code(), Code::PermissionDenied, "{unknown:?}");

    // An empty token would be Consul's anonymous token: refused before
    // Consul is asked.
    let anonymous = refused(request_leaf(&agent.address, "web", "").await);
    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");
    assert!(
        anonymous.message().contains("Consul ACL token"),
        "{anonymous:?}"
    );
}

#[tokio::test]
async fn with_consul_a_join_token_works_too_and_an_unreachable_consul_is_unavailable() {
    let scratch = TempDir::create("identity-consul-down").unwrap();
    let config = IdentityConfig {
        source: IdentitySource::Weft,
        ca_dir: Some(init_ca(&scratch)),
        join_tokens: Some(join_tokens(&scratch)),
        leaf_ttl: LEAF_TTL,
    };
    // Nothing listens there.
    let port = consul_support::free_port().unwrap();
    let unreachable =
        ConsulClient::new(ConsulConfig::new(&format!("127.0.0.1:{port}"), None, None).unwrap())
            .unwrap();
    let agent = start_agent(config, Some(unreachable)).await;

    let web = request_leaf(&agent.address, "web", WEB_TOKEN)
        .await
        .unwrap();
    assert_eq!(web.leaf().identity(), &id("web"));

    // A service with join tokens accepts only those, whatever Consul says.
    let status = refused(request_leaf(&agent.address, "web", "some-consul-token").await);
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("accepts only those"),
        "{status:?}"
    );

    // Any other service is a question for Consul, which cannot answer now.
    let status = refused(request_leaf(&agent.address, "orders", "some-consul-token").await);
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("retry"), "{status:?}");
    let metrics = agent.metrics.encode();
    assert!(
        metrics
            .contains(r#"weft_discovery_certificates_refused_total{reason="check_unavailable"} 1"#),
        "{metrics}"
    );
}

/// Waits until the dev agent's Connect CA has an active root, so the first
/// leaf Consul signs does not include CA start-up time.
async fn wait_for_connect_ca(consul: &DevConsul) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let roots = consul
            .client
            .connect_ca_roots(&QueryOptions::default())
            .await;
        if roots.is_ok_and(|(roots, _)| roots.roots.iter().any(|root| root.active)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Consul's Connect CA has no active root after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A policy with `rules` and a token holding it, made through Consul's ACL
/// HTTP API with the master token; returns the token's secret.
async fn consul_token_for(consul: &DevConsul, policy: &str, rules: &str) -> String {
    consul_put(
        consul,
        "/v1/acl/policy",
        serde_json::json!({ "Name": policy, "Rules": rules }),
    )
    .await;
    let token = consul_put(
        consul,
        "/v1/acl/token",
        serde_json::json!({ "Description": policy, "Policies": [{ "Name": policy }] }),
    )
    .await;
    token["SecretID"]
        .as_str()
        .unwrap_or_else(|| panic!("no SecretID in {token}"))
        .to_owned()
}

async fn consul_put(consul: &DevConsul, path: &str, body: serde_json::Value) -> serde_json::Value {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = http::Request::put(format!("http://127.0.0.1:{}{path}", consul.http_port))
        .header("X-Consul-Token", MASTER_TOKEN)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(
        status.is_success(),
        "PUT {path}: {status} {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).unwrap()
}

// ------------------------------------------------------------- CA reload

#[tokio::test]
async fn after_weftctl_ca_rotate_the_next_leaf_chains_to_the_new_root_and_the_bundle_holds_both() {
    let scratch = TempDir::create("identity-rotate").unwrap();
    let agent = start_issuing_agent(&scratch).await;
    let dir = scratch.join("ca");
    let old_root = Ca::load(&dir).unwrap().certificate().clone();
    let before = request_leaf(&agent.address, "db", DB_TOKEN).await.unwrap();

    weftctl(&["ca", "rotate", "--dir", dir.to_str().unwrap()]);
    let new_root = Ca::load(&dir).unwrap().certificate().clone();
    // Signing with the new root once a reload has loaded it (a reload in
    // the middle of the rotation's writes may see only part of it).
    let authority = agent.authority.clone().expect("issuing");
    tokio::time::timeout(
        RELOAD_TIMEOUT,
        authority
            .reload_status()
            .wait_for(|_| authority.current().certificate() == &new_root),
    )
    .await
    .expect("the agent reloads the rotated CA")
    .unwrap();
    let published = agent
        .trust_bundle
        .as_ref()
        .expect("issuing: a bundle watch")
        .borrow()
        .clone();
    assert_eq!(published.trust_domain, TRUST_DOMAIN);
    assert_eq!(
        TrustBundle::from_pem(&published.roots_pem).unwrap().roots(),
        [old_root.clone(), new_root.clone()],
        "the published bundle holds both roots"
    );

    let after = request_leaf(&agent.address, "web", WEB_TOKEN)
        .await
        .unwrap();

    assert_eq!(after.bundle().roots(), [old_root.clone(), new_root.clone()]);
    // Chains to the new root: it verifies against the new root alone...
    let seen = handshake(
        &after.store(bundle_of(&new_root)),
        &after.store(bundle_of(&new_root)),
        &id("web"),
    )
    .await;
    assert_eq!(seen, Ok((id("web"), id("web"))));
    // ...and not against the old one alone.
    let refused_by_old = handshake(
        &before.store(bundle_of(&old_root)),
        &after.store(bundle_of(&old_root)),
        &id("web"),
    )
    .await;
    assert!(refused_by_old.is_err(), "{refused_by_old:?}");
    // With the new bundle, leaves of both roots meet during the rotation.
    let seen = handshake(
        &before.store(after.bundle()),
        &after.store(after.bundle()),
        &id("db"),
    )
    .await;
    assert_eq!(seen, Ok((id("db"), id("web"))));
}

#[tokio::test]
async fn a_broken_ca_dir_is_refused_and_the_current_ca_keeps_signing() {
    let scratch = TempDir::create("identity-broken").unwrap();
    let agent = start_issuing_agent(&scratch).await;
    let dir = scratch.join("ca");
    let root = Ca::load(&dir).unwrap().certificate().clone();
    let authority = agent.authority.clone().expect("issuing");
    let mut reloads = authority.reload_status();

    std::fs::write(
        dir.join(files::CA_KEY),
        "-----BEGIN PRIVATE KEY-----\nbroken\n",
    )
    .unwrap();
    let status = tokio::time::timeout(
        RELOAD_TIMEOUT,
        reloads.wait_for(|status| status.last_error.is_some()),
    )
    .await
    .expect("the agent tries to reload")
    .unwrap()
    .clone();
    let error = status.last_error.unwrap_or_default();
    assert!(error.contains("ca.key"), "names the file: {error}");

    let web = request_leaf(&agent.address, "web", WEB_TOKEN)
        .await
        .unwrap();
    let db = request_leaf(&agent.address, "db", DB_TOKEN).await.unwrap();
    assert_eq!(web.bundle().roots(), std::slice::from_ref(&root));
    let seen = handshake(
        &db.store(bundle_of(&root)),
        &web.store(bundle_of(&root)),
        &id("db"),
    )
    .await;
    assert_eq!(
        seen,
        Ok((id("db"), id("web"))),
        "still signed by the loaded CA"
    );
}

// ----------------------------------------------------- the agent process

/// Runs the agent binary with `args` and returns its exit status and
/// output; it must exit within 30 s (a start-up refusal is immediate).
async fn agent_refusal(args: &[&str]) -> String {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_weft-discovery"));
    command
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for variable in [
        "WEFT_CA_DIR",
        "WEFT_JOIN_TOKENS",
        "WEFT_LEAF_TTL",
        "CONSUL_HTTP_ADDR",
        "CONSUL_HTTP_TOKEN",
        "WEFT_CONFIG_DIR",
    ] {
        command.env_remove(variable);
    }
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .unwrap_or_else(|_| panic!("weft-discovery {args:?} kept running; it must refuse to start"))
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "{args:?} started: {text}");
    text
}

#[tokio::test]
async fn the_agent_refuses_to_start_with_a_broken_identity_setup_naming_file_and_reason() {
    let scratch = TempDir::create("identity-startup").unwrap();
    let config_dir = scratch.join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    let config_dir = config_dir.to_str().unwrap().to_owned();
    let ca = init_ca(&scratch);
    let ca = ca.to_str().unwrap().to_owned();
    let tokens = join_tokens(&scratch);
    let tokens = tokens.to_str().unwrap().to_owned();
    let missing_ca = scratch.join("no-such-ca");
    let missing_ca = missing_ca.to_str().unwrap().to_owned();
    let empty_token = scratch.write(
        "empty-token.json",
        r#"{ "web": "ok-token-123456789", "db": "" }"#,
    );
    let empty_token = empty_token.to_str().unwrap().to_owned();
    let keyless = TempDir::create("identity-keyless").unwrap();
    let keyless_ca = init_ca(&keyless);
    std::fs::remove_file(keyless_ca.join(files::CA_KEY)).unwrap();
    let keyless_ca = keyless_ca.to_str().unwrap().to_owned();

    let cases: [(Vec<&str>, Vec<String>); 5] = [
        (
            vec!["--ca-dir", &missing_ca, "--join-tokens", &tokens],
            vec![missing_ca.clone(), "weftctl ca init".into()],
        ),
        (
            vec!["--ca-dir", &keyless_ca, "--join-tokens", &tokens],
            vec![format!("{keyless_ca}/ca.key"), "weftctl ca init".into()],
        ),
        (
            vec!["--ca-dir", &ca, "--join-tokens", &empty_token],
            vec![
                empty_token.clone(),
                r#"service "db", token #1: empty tokens are not allowed"#.into(),
            ],
        ),
        (vec!["--join-tokens", &tokens], vec!["--ca-dir".into()]),
        (
            vec!["--ca-dir", &ca],
            vec!["--join-tokens".into(), "--consul".into()],
        ),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = ["--config-dir", config_dir.as_str()]
            .into_iter()
            .chain(args)
            .collect();
        let text = agent_refusal(&args).await;
        for part in expected {
            assert!(
                text.contains(&part),
                "{args:?}: {part:?} missing from:\n{text}"
            );
        }
    }
}

#[tokio::test]
async fn the_agent_serves_identity_beside_ads_and_every_cluster_names_its_spiffe_id() {
    let scratch = TempDir::create("identity-binary").unwrap();
    let config_dir = scratch.join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("endpoints.yaml"),
        "services:\n  users:\n    - { address: 127.0.0.1, port: 18081, meshed: true, weight: 1 }\n",
    )
    .unwrap();
    let ca = init_ca(&scratch);
    let tokens = join_tokens(&scratch);
    let listen = format!("127.0.0.1:{}", consul_support::free_port().unwrap());
    let admin = format!("127.0.0.1:{}", consul_support::free_port().unwrap());
    let log_path = scratch.join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_weft-discovery"))
        .args(["--config-dir", config_dir.to_str().unwrap()])
        .args(["--ca-dir", ca.to_str().unwrap()])
        .args(["--join-tokens", tokens.to_str().unwrap()])
        .args(["--leaf-ttl", "10s", "--listen", &listen, "--admin", &admin])
        .env_remove("CONSUL_HTTP_ADDR")
        .stdout(Stdio::null())
        .stderr(log.try_clone().unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let address = format!("http://{listen}");
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // Ready when its gRPC port answers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut discovery = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            panic!("the agent exited with {status}:\n{}", log_text());
        }
        if let Ok(client) = AggregatedDiscoveryServiceClient::connect(address.clone()).await {
            break client;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent did not listen on {listen}:\n{}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let (requests, outbox) = mpsc::channel(4);
    requests
        .send(DiscoveryRequest {
            node: Some(Node {
                id: "web-1".into(),
                service: "web".into(),
                instance: "web-1".into(),
                ..Node::default()
            }),
            resource_names: vec!["users".into()],
            type_url: type_url::CLUSTER.into(),
            ..DiscoveryRequest::default()
        })
        .await
        .unwrap();
    let mut responses = discovery
        .stream_resources(ReceiverStream::new(outbox))
        .await
        .unwrap()
        .into_inner();
    let response = tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("a Cluster response")
        .unwrap()
        .expect("the stream is open");
    let clusters: Vec<Cluster> = response
        .resources
        .iter()
        .map(|any| Cluster::decode(any.value.as_ref()).unwrap())
        .collect();
    assert_eq!(clusters.len(), 1, "{clusters:?}");
    assert_eq!(clusters[0].name, "users");
    assert_eq!(
        clusters[0].identity,
        "spiffe://mesh.test/ns/default/svc/users"
    );

    // The identity service shares the port; --leaf-ttl reaches the leaf.
    let web = request_leaf(&address, "web", WEB_TOKEN).await.unwrap();
    assert_eq!(web.leaf().identity(), &id("web"));
    let lifetime = web
        .leaf()
        .not_after()
        .duration_since(web.leaf().not_before())
        .unwrap();
    assert_eq!(
        lifetime,
        Duration::from_secs(10 + 60),
        "10 s plus the 60 s back-dating"
    );
    assert!(
        log_text().contains("--leaf-ttl is under a minute"),
        "warned:\n{}",
        log_text()
    );
    drop(responses);
    let _ = agent.kill().await;
}

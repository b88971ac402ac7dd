//! A mixed mesh: Weft sidecars and Consul's own `consul connect proxy`
//! (Consul 1.8's built-in, L4 proxy) on one Connect CA, the way a Consul
//! user moves to Weft service by service. Weft sidecars take their
//! identity from Consul (`--identity-source consul`).
//!
//! - Weft sidecar -> Consul's proxy -> app: Consul's proxy selects ALPN
//!   `h2` (not Weft's `weft-mesh/h2`) and relays bytes, so the Weft sidecar
//!   speaks the destination's protocol (HTTP/1.1 for an HTTP/1.1 call, h2
//!   with prior knowledge for gRPC), never the HTTP/2 it speaks to a Weft
//!   peer; an HTTP/1.1-only app (`--speaks http1`) would hang up on the
//!   HTTP/2 preface.
//! - Consul's proxy -> Weft sidecar -> app, and a Connect-native h2 client
//!   holding a leaf from Consul: the callee's sidecar speaks to its app
//!   what the service's own configuration says, whatever the caller is.
//! - A hop that fails that way logs a warning naming peer and protocol.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde_json::json;
use weft_e2e::echo::EchoRequest;
use weft_e2e::harness::consul::Consul;
use weft_e2e::harness::consul_proxy::ConsulProxy;
use weft_e2e::harness::grpc::{echo_client, echo_one_by_one, websocket};
use weft_e2e::harness::http::Echo;
use weft_e2e::harness::mesh::{ConsulProxiedInstance, MeshedInstance, SETUP_TIMEOUT};
use weft_e2e::{Call, Mesh, TestCtx, run, wait_for_instances};

/// Requests per direction and protocol: enough to cross many pooled
/// connections' reuse, quick on 2 cores.
const REQUESTS: usize = 200;

const HTTP1_ONLY: &[&str] = &["--speaks", "http1"];
const H2C_ONLY: &[&str] = &["--speaks", "h2c"];

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| (*arg).to_owned()).collect()
}

/// Consul (Connect CA ready) and the agent naming identities Consul's way.
async fn mixed_mesh(ctx: &TestCtx) -> anyhow::Result<(Mesh, String)> {
    let consul = Consul::start(&ctx.log_dir).await?;
    let roots = consul.connect_ca_ready().await?;
    let trust_domain = roots["TrustDomain"]
        .as_str()
        .context("no TrustDomain in Consul's roots")?
        .to_owned();
    let mesh = Mesh::start_on(ctx, consul, &owned(&["--identity-source", "consul"])).await?;
    Ok((mesh, trust_domain))
}

/// A Weft instance on Consul's CA, its app started with `app_args`.
async fn weft_instance(
    mesh: &Mesh,
    service: &str,
    app_args: &[&str],
) -> anyhow::Result<MeshedInstance> {
    let sidecar_args = [
        "--identity-source".to_owned(),
        "consul".to_owned(),
        "--consul".to_owned(),
        mesh.consul.address(),
    ];
    mesh.meshed_app_with(
        service,
        &format!("{service}-1"),
        &owned(app_args),
        &sidecar_args,
    )
    .await
}

/// `legacy-1`: an app behind Consul's own proxy.
async fn legacy(mesh: &Mesh, app_args: &[&str]) -> anyhow::Result<ConsulProxiedInstance> {
    mesh.consul_proxied_instance("legacy", "legacy-1", &owned(app_args))
        .await
}

/// Waits until `service-1` answers a GET through `via` (a sidecar's
/// outbound listener, or a Consul proxy's upstream port).
async fn reachable(mesh: &Mesh, via: std::net::SocketAddr, service: &str) -> anyhow::Result<()> {
    let instance = format!("{service}-1");
    wait_for_instances(&mesh.http, via, Call::get(service, "/"), &[&instance]).await
}

/// What each endpoint of `cluster` selected by ALPN, as `caller`'s
/// sidecar shows it in `/clusters`.
async fn peer_alpn(caller: &MeshedInstance, cluster: &str) -> anyhow::Result<Vec<String>> {
    let clusters = caller.sidecar.clusters().await?;
    let cluster = clusters["clusters"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == cluster))
        .with_context(|| format!("no cluster {cluster} in {clusters}"))?;
    Ok(cluster["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["peer_alpn"].as_str().unwrap_or("null").to_owned())
        .collect())
}

/// Sends [`REQUESTS`] GETs (16 at a time) to `host` through `via` and
/// returns every echo; any failure fails the test.
async fn echoes(mesh: &Mesh, via: std::net::SocketAddr, host: &str) -> anyhow::Result<Vec<Echo>> {
    use futures_util::StreamExt as _;
    let results: Vec<anyhow::Result<Echo>> = futures_util::stream::iter(0..REQUESTS)
        .map(|i| async move {
            let path = format!("/mixed/{i}");
            mesh.http.call(via, Call::get(host, &path)).await?.echo()
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Every echo came from `instance` over `version`.
fn all_from(echoes: &[Echo], instance: &str, version: &str) -> anyhow::Result<()> {
    let odd: Vec<(&str, &str)> = echoes
        .iter()
        .filter(|echo| echo.instance != instance || echo.version != version)
        .map(|echo| (echo.instance.as_str(), echo.version.as_str()))
        .collect();
    ensure!(
        odd.is_empty() && echoes.len() == REQUESTS,
        "{} answers; expected all from {instance} over {version}, these were not: {odd:?}",
        echoes.len()
    );
    Ok(())
}

/// Waits until a gRPC call through `via` reaches `authority` (an h2c-only
/// app cannot answer the HTTP/1.1 calls of `wait_for_instances`).
async fn grpc_reachable(via: std::net::SocketAddr, authority: &str) -> anyhow::Result<()> {
    weft_e2e::eventually(
        SETUP_TIMEOUT,
        &format!("a gRPC call via {via} reaches {authority}"),
        || async {
            let mut grpc = echo_client(via, authority).await?;
            grpc.unary(EchoRequest {
                message: "ready?".into(),
                repeat: 0,
            })
            .await?;
            Ok(())
        },
    )
    .await
}

/// [`REQUESTS`] unary gRPC calls through `via` to `authority`, each
/// answered by `instance`.
async fn grpc_calls(
    via: std::net::SocketAddr,
    authority: &str,
    instance: &str,
) -> anyhow::Result<()> {
    let mut grpc = echo_client(via, authority).await?;
    for i in 0..REQUESTS {
        let reply = grpc
            .unary(EchoRequest {
                message: format!("m{i}"),
                repeat: 0,
            })
            .await
            .with_context(|| format!("gRPC call {i} to {authority} via {via}"))?
            .into_inner();
        ensure!(
            reply.message == format!("m{i}") && reply.served_by == instance,
            "call {i}: {reply:?}"
        );
    }
    Ok(())
}

#[test]
fn a_weft_sidecar_calls_an_http1_app_behind_consuls_proxy_with_no_failure() {
    run(|ctx| async move {
        let (mesh, _) = mixed_mesh(&ctx).await?;
        let _legacy = legacy(&mesh, HTTP1_ONLY).await?;
        let client = weft_instance(&mesh, "client", &[]).await?;
        reachable(&mesh, client.sidecar.outbound, "legacy").await?;

        let started = std::time::Instant::now();
        let echoes = echoes(&mesh, client.sidecar.outbound, "legacy").await?;
        ctx.measured(
            "200 GETs, Weft sidecar -> consul connect proxy -> HTTP/1.1 app",
            started.elapsed(),
        );
        all_from(&echoes, "legacy-1", "HTTP/1.1")?;
        ensure!(
            peer_alpn(&client, "legacy").await? == ["h2"],
            "Consul's proxy is expected to select plain h2"
        );
        // Weft's private header is for Weft peers only.
        ensure!(
            echoes
                .iter()
                .all(|e| e.header("x-weft-orig-proto").is_none()),
            "x-weft-orig-proto reached an app behind Consul's proxy"
        );
        Ok(())
    });
}

#[test]
fn consuls_proxy_calls_a_weft_sidecar_in_front_of_an_http1_app_with_no_failure() {
    run(|ctx| async move {
        let (mesh, trust_domain) = mixed_mesh(&ctx).await?;
        let _users = weft_instance(&mesh, "users", HTTP1_ONLY).await?;
        let caller = ConsulProxy::caller(&mesh.consul, &mesh.log_dir, "legacy", "users").await?;
        reachable(&mesh, caller.listen, "users").await?;

        let started = std::time::Instant::now();
        let echoes = echoes(&mesh, caller.listen, "users").await?;
        ctx.measured(
            "200 GETs, consul connect proxy -> Weft sidecar -> HTTP/1.1 app",
            started.elapsed(),
        );
        all_from(&echoes, "users-1", "HTTP/1.1")?;
        let expected = format!("spiffe://{trust_domain}/ns/default/dc/dc1/svc/legacy");
        ensure!(
            echoes[0].header("x-weft-peer-identity") == Some(expected.as_str()),
            "the app saw the caller as {:?}, expected {expected}",
            echoes[0].header("x-weft-peer-identity")
        );
        Ok(())
    });
}

#[test]
fn grpc_crosses_consuls_proxy_in_both_directions_with_no_failure() {
    run(|ctx| async move {
        let (mesh, _) = mixed_mesh(&ctx).await?;
        // Weft -> Consul's proxy -> an h2c-only gRPC app: the peer is not
        // Weft, so the caller's HTTP/2 goes on with prior knowledge.
        let _legacy = legacy(&mesh, H2C_ONLY).await?;
        let client = weft_instance(&mesh, "client", &[]).await?;
        grpc_reachable(client.sidecar.outbound, "legacy").await?;
        let started = std::time::Instant::now();
        grpc_calls(client.sidecar.outbound, "legacy", "legacy-1").await?;
        ctx.measured(
            "200 unary gRPC calls, Weft sidecar -> consul connect proxy -> h2c app",
            started.elapsed(),
        );

        // Consul's proxy -> Weft sidecar -> an h2c-only gRPC app: the
        // callee's sidecar sends gRPC to its app as h2c (auto).
        let _users = weft_instance(&mesh, "users", H2C_ONLY).await?;
        let caller = ConsulProxy::caller(&mesh.consul, &mesh.log_dir, "outsider", "users").await?;
        grpc_reachable(caller.listen, "users").await?;
        let started = std::time::Instant::now();
        grpc_calls(caller.listen, "users", "users-1").await?;
        ctx.measured(
            "200 unary gRPC calls, consul connect proxy -> Weft sidecar -> h2c app",
            started.elapsed(),
        );

        // Between the two Weft sidecars the hop stays Weft's HTTP/2.
        grpc_reachable(client.sidecar.outbound, "users").await?;
        ensure!(
            peer_alpn(&client, "users").await? == ["weft-mesh/h2"]
                && peer_alpn(&client, "legacy").await? == ["h2"],
            "users: {:?}, legacy: {:?}",
            peer_alpn(&client, "users").await?,
            peer_alpn(&client, "legacy").await?
        );
        Ok(())
    });
}

/// Accepts a server whose chain leads to Consul's roots. SPIFFE leaves
/// name no DNS host, so the name check is the one thing skipped: the
/// test is about protocols, not about who the server is.
#[derive(Debug)]
struct ConnectChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ConnectChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Ok(verified) => Ok(verified),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            Err(other) => Err(other),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A Connect-native client that is not Weft: `service`'s leaf and the
/// roots from Consul's agent API, rustls offering only `h2`.
async fn connect_native_tls(mesh: &Mesh, service: &str) -> anyhow::Result<rustls::ClientConfig> {
    let leaf = mesh
        .consul
        .api_get(&format!("/v1/agent/connect/ca/leaf/{service}"))
        .await?;
    let roots = mesh.consul.api_get("/v1/agent/connect/ca/roots").await?;
    let mut store = rustls::RootCertStore::empty();
    for root in roots["Roots"].as_array().context("no Roots")? {
        let pem = root["RootCert"]
            .as_str()
            .context("a root without RootCert")?;
        store.add(CertificateDer::from_pem_slice(pem.as_bytes())?)?;
    }
    let chain =
        CertificateDer::pem_slice_iter(leaf["CertPEM"].as_str().context("no CertPEM")?.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(
        leaf["PrivateKeyPEM"]
            .as_str()
            .context("no PrivateKeyPEM")?
            .as_bytes(),
    )?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(store),
        provider.clone(),
    )
    .build()?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ConnectChainOnly(verifier)))
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// `GET /native` over HTTP/2 on one mTLS connection to `inbound`, with
/// `:authority` `host`: the app's echo.
async fn h2_get(
    tls: &rustls::ClientConfig,
    inbound: std::net::SocketAddr,
    host: &str,
) -> anyhow::Result<Echo> {
    let tcp = tokio::net::TcpStream::connect(inbound).await?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls.clone()))
        .connect(ServerName::try_from("mesh.consul")?, tcp)
        .await
        .context("mTLS handshake with the Weft sidecar")?;
    ensure!(
        stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice()),
        "the sidecar did not select h2"
    );
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::get(format!("http://{host}/native"))
        .body(Empty::<Bytes>::new())
        .context("building the request")?;
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
        .await
        .context("no answer within 5 s")??;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("{status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(serde_json::from_slice(&body)?)
}

#[test]
fn a_non_weft_h2_mtls_client_gets_200_from_an_http1_app_and_from_an_h2c_app() {
    run(|ctx| async move {
        let (mesh, _) = mixed_mesh(&ctx).await?;
        let users = weft_instance(&mesh, "users", HTTP1_ONLY).await?;
        let tls = connect_native_tls(&mesh, "native").await?;

        // `auto`: a plain HTTP/2 request reaches an app as HTTP/1.1.
        let echo = h2_get(&tls, users.sidecar.inbound, "users").await?;
        ensure!(
            echo.instance == "users-1" && echo.version == "HTTP/1.1",
            "{echo:?}"
        );

        // `"protocol": "http2"` in the service's own destination document:
        // its sidecar speaks h2c to its app.
        mesh.put_document("destinations/h2only", &json!({ "protocol": "http2" }))
            .await?;
        let h2only = weft_instance(&mesh, "h2only", H2C_ONLY).await?;
        let echo = weft_e2e::eventually(
            SETUP_TIMEOUT,
            "h2only's sidecar speaks h2c to its app",
            || h2_get(&tls, h2only.sidecar.inbound, "h2only"),
        )
        .await?;
        ensure!(
            echo.instance == "h2only-1" && echo.version == "HTTP/2.0",
            "{echo:?}"
        );
        Ok(())
    });
}

#[test]
fn a_hop_reset_by_a_peer_logs_one_warning_a_second_naming_the_peer_and_the_protocol() {
    run(|ctx| async move {
        let (mesh, trust_domain) = mixed_mesh(&ctx).await?;
        // A wrong `protocol`: HTTP/2 to an HTTP/1.1 app behind Consul's
        // proxy, which selects plain `h2` (not Weft's id), so the caller
        // believes the document.
        mesh.put_document("destinations/legacy", &json!({ "protocol": "http2" }))
            .await?;
        let legacy = legacy(&mesh, HTTP1_ONLY).await?;
        let client = weft_instance(&mesh, "client", &[]).await?;

        let started = std::time::Instant::now();
        let mut resets = 0;
        for _ in 0..20 {
            let reply = mesh
                .http
                .call(client.sidecar.outbound, Call::get("legacy", "/"))
                .await?;
            if reply.status == 502 && reply.weft_error() == Some("upstream-reset") {
                resets += 1;
            }
        }
        let elapsed = started.elapsed();
        ensure!(resets > 0, "no request was reset by the peer");

        let log = client.sidecar.log()?;
        let warnings: Vec<&str> = log
            .lines()
            .filter(|line| line.contains("a hop to a mesh peer failed"))
            .collect();
        let peer = legacy.proxy.listen.to_string();
        let identity = format!("spiffe://{trust_domain}/ns/default/dc/dc1/svc/legacy");
        let protocol = "HTTP/2 (ALPN h2, not a Weft sidecar)";
        ensure!(
            warnings
                .iter()
                .any(|w| w.contains(&peer) && w.contains(&identity) && w.contains(protocol)),
            "no warning names {peer}, {identity} and {protocol:?}: {warnings:#?}"
        );
        // At most one line per second per cause.
        let allowed = elapsed.as_secs() as usize + 1;
        ensure!(
            warnings.len() <= allowed,
            "{} warnings for {resets} resets in {elapsed:?}: {warnings:#?}",
            warnings.len()
        );
        ctx.record(
            "reset hops -> warnings",
            &format!("{resets} -> {}", warnings.len()),
        );
        Ok(())
    });
}

#[test]
fn a_websocket_crosses_consuls_proxy_as_a_plain_http1_upgrade() {
    run(|ctx| async move {
        let (mesh, _) = mixed_mesh(&ctx).await?;
        let legacy = legacy(&mesh, HTTP1_ONLY).await?;
        let client = weft_instance(&mesh, "client", &[]).await?;
        reachable(&mesh, client.sidecar.outbound, "legacy").await?;

        // Not Weft behind the hop, so no extended CONNECT: the Upgrade
        // goes as HTTP/1.1, and the bytes flow both ways after the 101.
        let mut socket = websocket(client.sidecar.outbound, "legacy", "/ws").await?;
        echo_one_by_one(&mut socket).await?;
        socket.close(None).await?;
        ensure!(
            legacy.app.log()?.contains("websocket upgrade requested"),
            "the app behind Consul's proxy saw no upgrade request"
        );
        Ok(())
    });
}

//! The edge gateway as outside clients meet it: `weft-gateway` terminates
//! TLS with the certificate their SNI names (one from files, one from
//! Consul KV), speaks HTTP/2 or HTTP/1.1 as ALPN decides, routes the hosts
//! bound to its listener by their route documents, and carries each call
//! into the mesh over mTLS under its own identity. A renewed certificate
//! reaches new handshakes while open connections keep working.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use weft_e2e::harness::browser;
use weft_e2e::harness::certs::{Leaf, TestCa};
use weft_e2e::harness::gateway::Gateway;
use weft_e2e::harness::http::Echo;
use weft_e2e::harness::identity::MeshCa;
use weft_e2e::harness::mesh::{MeshedInstance, SETUP_TIMEOUT};
use weft_e2e::harness::ports::free_port;
use weft_e2e::{Mesh, TestCtx, eventually, run};

/// What a client learned from its handshake with the gateway.
struct Connected {
    /// The leaf the gateway presented, DER.
    presented: Vec<u8>,
    alpn: Option<Vec<u8>>,
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
}

/// A TLS client that trusts the edge CA (as browsers trust a public one).
struct EdgeClient {
    roots: Arc<rustls::RootCertStore>,
}

impl EdgeClient {
    fn new(ca: &TestCa) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.pem().as_bytes()) {
            roots.add(cert?)?;
        }
        Ok(Self {
            roots: Arc::new(roots),
        })
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        sni: &str,
        alpn: &[&[u8]],
    ) -> anyhow::Result<Connected> {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(self.roots.clone())
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(sni.to_owned().try_into()?, tcp)
            .await
            .with_context(|| format!("TLS handshake with {addr} for {sni}"))?;
        let (_, session) = stream.get_ref();
        Ok(Connected {
            presented: session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .context("no certificate presented")?
                .to_vec(),
            alpn: session.alpn_protocol().map(<[u8]>::to_vec),
            stream,
        })
    }
}

type H2Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// An HTTP/2 connection over `connected`.
async fn http2(connected: Connected) -> anyhow::Result<H2Sender> {
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(connected.stream))
            .await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// `GET https://<authority><path>` over an open HTTP/2 connection, with
/// more headers; the status and body.
async fn h2_get(
    sender: &mut H2Sender,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(http::StatusCode, http::HeaderMap, Bytes)> {
    h2_send(sender, http::Method::GET, authority, path, headers).await
}

/// Like [`h2_get`], with any method.
async fn h2_send(
    sender: &mut H2Sender,
    method: http::Method,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(http::StatusCode, http::HeaderMap, Bytes)> {
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("https://{authority}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    sender.ready().await?;
    let response = sender
        .send_request(request.body(Full::new(Bytes::new()))?)
        .await?;
    let (parts, body) = response.into_parts();
    Ok((
        parts.status,
        parts.headers,
        body.collect().await?.to_bytes(),
    ))
}

fn echo_of(body: &Bytes) -> anyhow::Result<Echo> {
    serde_json::from_slice(body)
        .with_context(|| format!("not an app's echo: {}", String::from_utf8_lossy(body)))
}

/// Writes a leaf's certificate and key where the gateway reads them,
/// each by a rename, so the gateway never reads half a file.
fn write_leaf(dir: &Path, leaf: &Leaf) -> anyhow::Result<(PathBuf, PathBuf)> {
    let chain = dir.join("api.crt");
    let key = dir.join("api.key");
    for (path, text) in [(&chain, leaf.cert_pem()), (&key, leaf.key_pem())] {
        let next = path.with_extension("next");
        std::fs::write(&next, text)?;
        std::fs::rename(&next, path)?;
    }
    Ok((chain, key))
}

/// The mesh of these tests: a mesh CA (mTLS between members), `users`
/// meshed, the edge CA's two leaves (`api.example.com` from files,
/// `www.example.com` from `certificates/www` in KV), both hosts routed
/// to `users`, and gateway `edge` with an HTTPS listener for both hosts
/// and a plaintext one for `api.example.com`, one trusted hop.
struct Edge {
    mesh: Mesh,
    users: MeshedInstance,
    gateway: Gateway,
    edge_ca: TestCa,
    https: SocketAddr,
    http: SocketAddr,
    certs_dir: PathBuf,
    api: Leaf,
    www: Leaf,
}

async fn edge(ctx: &TestCtx) -> anyhow::Result<Edge> {
    let ca = MeshCa::create(&ctx.log_dir, &["edge", "users"])?;
    let mesh = Mesh::start_with(ctx, &ca.agent_args("1h")).await?;
    let users = mesh
        .meshed_instance_with("users", "users-1", &ca.sidecar_args("users"))
        .await?;
    let edge_ca = TestCa::new("Edge Test CA")?;
    let api = edge_ca.server_leaf("api", &["api.example.com"])?;
    let www = edge_ca.server_leaf("www", &["www.example.com"])?;
    let certs_dir = ctx.log_dir.join("edge-certs");
    std::fs::create_dir_all(&certs_dir)?;
    let (chain, key) = write_leaf(&certs_dir, &api)?;
    mesh.put_document(
        "certificates/www",
        &json!({ "chain_pem": www.cert_pem(), "private_key_pem": www.key_pem() }),
    )
    .await?;
    let to_users = json!({ "routes": [
        { "match": { "path_prefix": "/api/v1/users/" }, "destination": "users", "rewrite_prefix": "/" } ] });
    mesh.put_document("routes/api.example.com", &to_users)
        .await?;
    mesh.put_document("routes/www.example.com", &to_users)
        .await?;
    let https = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    mesh.put_document(
        "gateways/edge",
        &json!({ "trusted_hops": 1, "listeners": [
            { "name": "public", "address": "127.0.0.1", "port": https.port(), "protocol": "https",
              "hosts": ["api.example.com", "www.example.com"],
              "certificates": [
                  { "chain_file": chain.display().to_string(), "private_key_file": key.display().to_string() },
                  { "kv": "www" } ] },
            { "name": "plain", "address": "127.0.0.1", "port": http.port(), "protocol": "http",
              "hosts": ["api.example.com"] } ] }),
    )
    .await?;
    let gateway = Gateway::start(
        &ctx.log_dir,
        "edge",
        &mesh.agent.discovery_url(),
        &ca.sidecar_args("edge"),
    )
    .await?;
    Ok(Edge {
        mesh,
        users,
        gateway,
        edge_ca,
        https,
        http,
        certs_dir,
        api,
        www,
    })
}

#[test]
fn outside_clients_reach_a_service_by_the_gateways_hosts_over_tls_and_http2_never_by_its_own_name()
{
    run(|ctx| async move {
        let edge = edge(&ctx).await?;
        let client = EdgeClient::new(&edge.edge_ca)?;

        // SNI picks the certificate: the file one for api, KV's for www.
        let api = client
            .connect(edge.https, "api.example.com", &[b"h2", b"http/1.1"])
            .await?;
        ensure!(
            api.presented == edge.api.cert_der(),
            "api.example.com got another certificate"
        );
        ensure!(
            api.alpn.as_deref() == Some(b"h2".as_slice()),
            "ALPN chose {:?}",
            api.alpn
        );
        let www = client
            .connect(edge.https, "www.example.com", &[b"h2"])
            .await?;
        ensure!(
            www.presented == edge.www.cert_der(),
            "www.example.com got another certificate"
        );

        // Over HTTP/2, into the mesh: the app sees the gateway's verified
        // identity, and the client as the trusted hop reported it.
        let mut h2 = http2(api).await?;
        let (status, _, body) = eventually(SETUP_TIMEOUT, "the gateway routes to users", || {
            let mut h2 = h2.clone();
            async move {
                let reply = h2_get(&mut h2, "api.example.com", "/api/v1/users/42", &[]).await?;
                ensure!(reply.0 == 200, "answered {}: {:?}", reply.0, reply.2);
                Ok(reply)
            }
        })
        .await?;
        ensure!(status == 200);
        let echo = echo_of(&body)?;
        ensure!(echo.service == "users" && echo.path == "/42", "{echo:?}");
        ensure!(
            echo.header("x-weft-peer-identity") == Some(MeshCa::identity_of("edge").as_str()),
            "the app saw the caller as {:?}",
            echo.header("x-weft-peer-identity")
        );
        let (_, _, body) = h2_get(
            &mut h2,
            "api.example.com",
            "/api/v1/users/me",
            &[
                ("x-forwarded-for", "6.6.6.6, 203.0.113.7"),
                ("x-forwarded-proto", "https"),
            ],
        )
        .await?;
        let echo = echo_of(&body)?;
        let forwarded_for = echo.header("x-forwarded-for").unwrap_or_default();
        ensure!(
            forwarded_for.starts_with("203.0.113.7, 127.0.0.1")
                && !forwarded_for.contains("6.6.6.6"),
            "x-forwarded-for at the app: {forwarded_for}"
        );
        ensure!(
            echo.header("x-forwarded-host") == Some("api.example.com")
                && echo.header("x-forwarded-proto") == Some("https"),
            "{:?}",
            echo.headers
        );

        // A mesh service's own name is no host of the gateway: refused
        // before any route, and the app sees nothing.
        let before = edge.users.app.requests_seen(&edge.mesh.http).await?;
        let (status, headers, _) = h2_get(&mut h2, "users", "/", &[]).await?;
        ensure!(
            status == 404
                && headers.get("x-weft-error").and_then(|v| v.to_str().ok()) == Some("no-route"),
            "Host users answered {status} {headers:?}"
        );
        let seen = edge.users.app.requests_seen(&edge.mesh.http).await? - before;
        ensure!(seen == 0, "the app saw {seen} requests for Host users");

        // HTTP/1.1 when the client offers only that.
        let h1 = client
            .connect(edge.https, "www.example.com", &[b"http/1.1"])
            .await?;
        ensure!(
            h1.alpn.as_deref() == Some(b"http/1.1".as_slice()),
            "ALPN chose {:?}",
            h1.alpn
        );
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(h1.stream)).await?;
        tokio::spawn(connection);
        let response = sender
            .send_request(
                http::Request::get("/api/v1/users/h1")
                    .header("host", "www.example.com")
                    .body(Full::new(Bytes::new()))?,
            )
            .await?;
        ensure!(
            response.status() == 200,
            "HTTP/1.1 answered {}",
            response.status()
        );
        let echo = echo_of(&response.into_body().collect().await?.to_bytes())?;
        ensure!(echo.path == "/h1", "{echo:?}");

        // The plaintext listener says so to the app.
        let reply = edge
            .mesh
            .http
            .send(
                http::Request::get(format!("http://{}/api/v1/users/plain", edge.http))
                    .header("host", "api.example.com")
                    .body(Full::new(Bytes::new()))?,
            )
            .await?;
        let echo = reply.echo()?;
        ensure!(
            echo.header("x-forwarded-proto") == Some("http"),
            "{:?}",
            echo.headers
        );
        Ok(())
    });
}

#[test]
fn a_renewed_certificate_reaches_new_handshakes_while_open_connections_keep_working() {
    run(|ctx| async move {
        let edge = edge(&ctx).await?;
        let client = EdgeClient::new(&edge.edge_ca)?;
        let open = client
            .connect(edge.https, "api.example.com", &[b"h2"])
            .await?;
        let mut open = http2(open).await?;
        eventually(SETUP_TIMEOUT, "the gateway routes to users", || {
            let mut open = open.clone();
            async move {
                let (status, _, body) =
                    h2_get(&mut open, "api.example.com", "/api/v1/users/1", &[]).await?;
                ensure!(status == 200, "answered {status}: {body:?}");
                Ok(())
            }
        })
        .await?;

        // The file certificate is renewed in place.
        let renewed = edge
            .edge_ca
            .server_leaf("api-renewed", &["api.example.com"])?;
        write_leaf(&edge.certs_dir, &renewed)?;
        eventually(
            SETUP_TIMEOUT,
            "new handshakes get the renewed file certificate",
            || async {
                let connected = client
                    .connect(edge.https, "api.example.com", &[b"h2"])
                    .await?;
                ensure!(
                    connected.presented == renewed.cert_der(),
                    "still the old certificate"
                );
                Ok(())
            },
        )
        .await?;
        // And the KV one by a new version of its document.
        let www = edge
            .edge_ca
            .server_leaf("www-renewed", &["www.example.com"])?;
        edge.mesh
            .put_document(
                "certificates/www",
                &json!({ "chain_pem": www.cert_pem(), "private_key_pem": www.key_pem() }),
            )
            .await?;
        eventually(
            SETUP_TIMEOUT,
            "new handshakes get the renewed KV certificate",
            || async {
                let connected = client
                    .connect(edge.https, "www.example.com", &[b"h2"])
                    .await?;
                ensure!(
                    connected.presented == www.cert_der(),
                    "still the old certificate"
                );
                Ok(())
            },
        )
        .await?;
        ensure!(www.cert_der() != edge.www.cert_der() && renewed.cert_der() != edge.api.cert_der());

        // The connection opened before both reloads still serves.
        let (status, _, body) =
            h2_get(&mut open, "api.example.com", "/api/v1/users/2", &[]).await?;
        ensure!(
            status == 200,
            "the open connection answered {status}: {body:?}"
        );
        let log = edge.gateway.log()?;
        ensure!(
            log.contains("certificate reloaded"),
            "the gateway logged no reload"
        );
        Ok(())
    });
}

#[test]
fn a_browser_page_reads_the_gateways_answers_only_from_the_allowed_origin_and_preflights_never_reach_the_app()
 {
    run(|ctx| async move {
        browser::chromium_binary()?;
        let edge = edge(&ctx).await?;
        // The page calls the gateway by its public name over TLS.
        let api = format!("https://api.example.com:{}", edge.https.port());
        let page_server = browser::serve_page(browser::cross_origin_probe(&format!(
            "{api}/api/v1/users/cors-check"
        )))
        .await?;
        // The same page from two origins: `localhost` is allowed,
        // `127.0.0.1` (another origin) is not.
        let allowed_page = format!("http://localhost:{}/", page_server.port());
        let refused_page = format!("http://127.0.0.1:{}/", page_server.port());
        let allowed_origin = allowed_page.trim_end_matches('/').to_string();
        edge.mesh
            .put_document(
                "routes/api.example.com",
                // PUT only: the preflights asking about a PUT match it too.
                &json!({ "routes": [ { "destination": "users", "rewrite_prefix": "/",
                    "match": { "path_prefix": "/api/v1/users/", "methods": ["PUT"] },
                    "response_headers": { "set": { "x-served-by": "edge" } },
                    "cors": { "allow_origins": [allowed_origin],
                              "allow_methods": ["GET", "PUT"],
                              "allow_headers": ["x-api-key", "content-type"],
                              "expose_headers": ["x-served-by"],
                              "max_age": "10m", "allow_credentials": true } } ] }),
            )
            .await?;
        let client = EdgeClient::new(&edge.edge_ca)?;
        let h2 = http2(
            client
                .connect(edge.https, "api.example.com", &[b"h2"])
                .await?,
        )
        .await?;
        // Ready when the gateway answers a preflight itself.
        eventually(SETUP_TIMEOUT, "the gateway answers preflights", || {
            let mut h2 = h2.clone();
            let origin = allowed_origin.clone();
            async move {
                let (status, _, _) = h2_send(
                    &mut h2,
                    http::Method::OPTIONS,
                    "api.example.com",
                    "/api/v1/users/cors-check",
                    &[
                        ("origin", &origin),
                        ("access-control-request-method", "PUT"),
                    ],
                )
                .await?;
                ensure!(status == 204, "preflight answered {status}");
                Ok(())
            }
        })
        .await?;
        let before = edge.users.app.requests_seen(&edge.mesh.http).await?;

        // Chromium resolves the public name to the gateway, and accepts the
        // edge CA, which no system store holds.
        let flags = [
            format!(
                "--host-resolver-rules=MAP api.example.com {}",
                edge.https.ip()
            ),
            "--ignore-certificate-errors".to_owned(),
        ];
        let profile = ctx.log_dir.join("chromium-profile");
        let allowed = browser::probe_outcome(&allowed_page, &profile, &flags).await?;
        ensure!(
            allowed == "status=200 service=users served-by=edge",
            "the allowed origin's page saw: {allowed}"
        );
        let refused = browser::probe_outcome(&refused_page, &profile, &flags).await?;
        ensure!(
            refused == "blocked: TypeError",
            "the refused origin's page saw: {refused}"
        );
        let seen = edge.users.app.requests_seen(&edge.mesh.http).await? - before;
        ensure!(seen == 1, "the app saw {seen} requests, not the one PUT");
        let metrics = edge.gateway.metrics().await?;
        for line in [
            "weft_cors_origins_total{direction=\"outbound\",origin=\"valid\"}",
            "weft_cors_origins_total{direction=\"outbound\",origin=\"invalid\"}",
            "weft_gateway_tls_handshakes_total{result=\"completed\"}",
        ] {
            ensure!(
                metrics.contains(line),
                "no {line} in the gateway's /metrics:\n{metrics}"
            );
        }
        Ok(())
    });
}

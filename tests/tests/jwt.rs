//! JWT authentication of end users, over real processes: the policy is a
//! `jwt` section in the service's KV policy document, the agent passes it
//! on, and the service's sidecar verifies tokens before anything reaches
//! the app. Tokens are minted here with Ed25519 keys generated per test;
//! for the JWKS-by-URL cases a small HTTP(S) server in the test plays the
//! identity provider and counts its fetches (over https with a certificate
//! from a private CA minted here).
//!
//! The whole token matrix is specified in `sidecar/tests/jwt.rs`; these
//! tests prove it is wired: through the agent, the ADS stream, the mTLS
//! hop and the inbound stack, and that policy changes apply without a
//! restart.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls::ServerConfig;
use rustls::pki_types::PrivateKeyDer;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use weft_e2e::harness::certs::TestCa;
use weft_e2e::harness::mesh::{MeshedInstance, SETUP_TIMEOUT, mtls_users_and_client};
use weft_e2e::{Call, Mesh, Reply, eventually, run};

const ISSUER: &str = "https://idp.weft.test";

/// An Ed25519 signing key and its public JWK.
struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    fn generate(kid: &str) -> anyhow::Result<Self> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        Ok(Self {
            kid: kid.to_owned(),
            encoding: EncodingKey::from_ed_der(&pair.serialize_der()),
            jwk: json!({ "kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig",
                         "x": URL_SAFE_NO_PAD.encode(pair.public_key_raw()) }),
        })
    }

    /// A token for `sub` with audience `users`, valid for 5 minutes, with
    /// `extra` claims merged over those.
    fn token(&self, extra: Value) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let mut claims = json!({ "iss": ISSUER, "aud": "users", "sub": "alice",
                                 "iat": now, "exp": now + 300 });
        if let (Some(claims), Value::Object(extra)) = (claims.as_object_mut(), extra) {
            claims.extend(extra);
        }
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, &claims, &self.encoding)?)
    }
}

fn jwks(keys: &[&SigningKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
}

/// A token whose header says `alg: none`, without a signature.
fn unsigned_token() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let part = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.",
        part(json!({ "alg": "none", "typ": "JWT" })),
        part(json!({ "iss": ISSUER, "aud": "users", "sub": "mallory", "exp": now + 300 }))
    )
}

/// A private CA, as a company IdP has, and the PEM a policy trusts it by.
struct PrivateCa {
    ca: TestCa,
}

impl PrivateCa {
    /// Named `name`: certificate chains are built by issuer name, so two
    /// test CAs must not share one.
    fn new(name: &str) -> anyhow::Result<Self> {
        Ok(Self {
            ca: TestCa::new(&format!("{name} CA"))?,
        })
    }

    fn pem(&self) -> String {
        self.ca.pem()
    }

    /// A TLS server with a certificate for `host` signed by this CA.
    fn server(&self, host: &str) -> anyhow::Result<TlsAcceptor> {
        let leaf = self.ca.server_leaf(host, &[host])?;
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(
                    vec![leaf.cert_der().into()],
                    PrivateKeyDer::try_from(leaf.key_der()).map_err(anyhow::Error::msg)?,
                )?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// The identity provider's JWKS endpoint: serves the current key set at
/// any path, over http or https, and counts the fetches.
struct JwksServer {
    addr: SocketAddr,
    scheme: &'static str,
    keys: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(keys: Value) -> anyhow::Result<Self> {
        Self::serve(keys, None).await
    }

    /// Over https with `tls`: a client that does not accept its
    /// certificate is never answered (nor counted).
    async fn start_https(keys: Value, tls: TlsAcceptor) -> anyhow::Result<Self> {
        Self::serve(keys, Some(tls)).await
    }

    async fn serve(keys: Value, tls: Option<TlsAcceptor>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let keys = Arc::new(Mutex::new(keys));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (keys.clone(), fetches.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (served, counted, tls) = (served.clone(), counted.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => answer(stream, served, counted).await,
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                answer(stream, served, counted).await;
                            }
                        }
                    }
                });
            }
        });
        Ok(Self {
            addr,
            scheme,
            keys,
            fetches,
            task,
        })
    }

    fn uri(&self) -> String {
        format!("{}://{}/.well-known/jwks.json", self.scheme, self.addr)
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn publish(&self, keys: Value) {
        *self.keys.lock().unwrap_or_else(PoisonError::into_inner) = keys;
    }
}

/// Serves the key set on one connection until the client closes it,
/// counting the requests.
async fn answer<S>(stream: S, keys: Arc<Mutex<Value>>, fetches: Arc<AtomicUsize>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let service = hyper::service::service_fn(move |_: Request<Incoming>| {
        fetches.fetch_add(1, Ordering::SeqCst);
        let body = keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .to_string();
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "application/jwk-set+json")
                    .header("cache-control", "public, max-age=300")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap_or_default(),
            )
        }
    });
    let _closed = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The client calling users at `path` with these headers.
async fn call(
    mesh: &Mesh,
    client: &MeshedInstance,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    mesh.http
        .call(
            client.sidecar.outbound,
            Call::get("users", path).headers(headers),
        )
        .await
}

/// Asserts a refusal by users' sidecar: `status`, `x-weft-error`, and that
/// the app never answered (no echo in the body).
fn ensure_refused(reply: &Reply, status: u16, error: &str, what: &str) -> anyhow::Result<()> {
    ensure!(
        reply.status == status && reply.weft_error() == Some(error),
        "{what}: expected {status} {error}, got {} {:?}: {}",
        reply.status,
        reply.weft_error(),
        reply.text()
    );
    ensure!(
        !reply.text().contains("\"instance\""),
        "{what}: the app answered: {}",
        reply.text()
    );
    Ok(())
}

/// The status of the client's call to users with this `authorization`
/// header (none when empty).
async fn status_of(
    mesh: &Mesh,
    client: &MeshedInstance,
    authorization: String,
) -> anyhow::Result<u16> {
    let headers: &[(&str, &str)] = if authorization.is_empty() {
        &[]
    } else {
        &[("authorization", authorization.as_str())]
    };
    Ok(call(mesh, client, "/", headers).await?.status.as_u16())
}

/// Waits until [`status_of`] is `expected`.
async fn status_becomes(
    mesh: &Mesh,
    client: &MeshedInstance,
    authorization: String,
    expected: u16,
    what: String,
) -> anyhow::Result<()> {
    eventually(SETUP_TIMEOUT, &what, || async {
        let got = status_of(mesh, client, authorization.clone()).await?;
        ensure!(got == expected, "got {got}");
        Ok(())
    })
    .await
}

/// Waits until the instance's sidecar has refused an inbound policy (a
/// NACK), and returns what it said.
async fn sidecar_refusal(instance: &MeshedInstance) -> anyhow::Result<String> {
    eventually(SETUP_TIMEOUT, "the sidecar refuses the policy", || async {
        let dump = instance.sidecar.config_dump().await?;
        dump["InboundPolicy"]["last_nack"]
            .as_str()
            .map(str::to_owned)
            .context("no NACK yet")
    })
    .await
}

/// A policy document for users with a `jwt` section of one provider.
fn jwt_policy(keys: Value) -> Value {
    json!({ "jwt": {
        "providers": [ { "name": "idp", "issuer": ISSUER, "audiences": ["users"], "jwks": keys } ],
        "rules": [
            { "match": { "path_prefix": "/public/" }, "public": true },
            { "match": { "path_prefix": "/admin/" }, "required_roles": ["admin"] } ] } })
}

#[test]
fn tokens_are_verified_against_a_jwks_url_before_anything_reaches_the_app() {
    run(|ctx| async move {
        let (_ca, mesh, _users, client) = mtls_users_and_client(&ctx, "24h").await?;
        let key = SigningKey::generate("key-1")?;
        let idp = JwksServer::start(jwks(&[&key])).await?;
        mesh.put_document(
            "policies/users",
            &jwt_policy(json!({ "uri": idp.uri(), "fetch_timeout": "1s",
                                "min_refetch_interval": "1s" })),
        )
        .await?;
        let written = Instant::now();
        let missing = eventually(SETUP_TIMEOUT, "users requires a token", || async {
            let reply = call(&mesh, &client, "/", &[]).await?;
            ensure!(reply.status == 401, "got {}", reply.status);
            Ok(reply)
        })
        .await?;
        ctx.measured("KV jwt policy -> enforced", written.elapsed());

        // No token: 401 with a Bearer challenge naming the service.
        ensure_refused(&missing, 401, "jwt-missing", "no token")?;
        let challenge = missing
            .headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        ensure!(
            challenge.starts_with("Bearer realm=\"users\""),
            "WWW-Authenticate: {challenge:?}"
        );

        // A valid token: the app gets the verified subject, never a forged one.
        let valid = format!("Bearer {}", key.token(json!({}))?);
        let echo = call(
            &mesh,
            &client,
            "/orders",
            &[
                ("authorization", &valid),
                ("x-weft-jwt-sub", "root"),
                ("x-weft-jwt-role", "admin"),
            ],
        )
        .await?
        .echo()?;
        ensure!(
            echo.header("x-weft-jwt-sub") == Some("alice")
                && echo.header("x-weft-jwt-iss") == Some(ISSUER),
            "the app saw {:?}",
            echo.headers
        );
        ensure!(
            echo.header("x-weft-jwt-role").is_none(),
            "a forged claim header reached the app: {:?}",
            echo.headers
        );
        ensure!(
            echo.header("authorization") == Some(valid.as_str()),
            "the token is forwarded by default"
        );

        // Every way a token can be wrong: refused with its reason.
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let other_key = SigningKey::generate("key-1")?; // same kid, other key
        let stranger = SigningKey::generate("key-unknown")?;
        let cases = [
            (
                "expired",
                key.token(json!({ "iat": now - 900, "exp": now - 600 }))?,
                "jwt-expired",
            ),
            (
                "wrong audience",
                key.token(json!({ "aud": "billing" }))?,
                "jwt-wrong-audience",
            ),
            (
                "wrong issuer",
                key.token(json!({ "iss": "https://evil.test" }))?,
                "jwt-wrong-issuer",
            ),
            ("alg none", unsigned_token(), "jwt-algorithm-not-allowed"),
            (
                "bad signature",
                other_key.token(json!({}))?,
                "jwt-bad-signature",
            ),
            ("unknown kid", stranger.token(json!({}))?, "jwt-unknown-kid"),
            ("not a JWT", "abc.def".to_owned(), "jwt-malformed"),
        ];
        for (what, token, error) in &cases {
            let bearer = format!("Bearer {token}");
            let reply = call(&mesh, &client, "/", &[("authorization", &bearer)]).await?;
            ensure_refused(&reply, 401, error, what)?;
            ensure!(
                reply.headers.contains_key("www-authenticate"),
                "{what}: no challenge"
            );
        }

        // Rules: a role is needed under /admin/, nothing under /public/.
        let reply = call(&mesh, &client, "/admin/keys", &[("authorization", &valid)]).await?;
        ensure_refused(&reply, 403, "jwt-insufficient-role", "no admin role")?;
        let admin = format!("Bearer {}", key.token(json!({ "roles": ["admin"] }))?);
        let reply = call(&mesh, &client, "/admin/keys", &[("authorization", &admin)]).await?;
        ensure!(reply.status == 200, "admin refused: {}", reply.text());
        let echo = call(
            &mesh,
            &client,
            "/public/docs",
            &[("x-weft-jwt-sub", "root")],
        )
        .await?
        .echo()?;
        ensure!(
            echo.header("x-weft-jwt-sub").is_none(),
            "a forged subject reached the app on a public path: {:?}",
            echo.headers
        );

        // Keys are cached: a burst of requests fetches nothing more.
        let fetched = idp.fetches();
        ensure!(fetched >= 1, "the JWKS was never fetched");
        for _ in 0..20 {
            let reply = call(&mesh, &client, "/", &[("authorization", &valid)]).await?;
            ensure!(reply.status == 200, "{}", reply.text());
        }
        ensure!(
            idp.fetches() == fetched,
            "20 requests caused {} fetches",
            idp.fetches() - fetched
        );

        // A key rotation at the IdP: a token with the new key's kid makes
        // the sidecar refetch once (the unknown kid above was the first
        // request-driven refetch, so wait out its rate limit: 1s here).
        let rotated = SigningKey::generate("key-2")?;
        idp.publish(jwks(&[&key, &rotated]));
        let fresh = format!("Bearer {}", rotated.token(json!({ "sub": "bob" }))?);
        let echo = eventually(SETUP_TIMEOUT, "a rotated key is fetched", || async {
            call(&mesh, &client, "/", &[("authorization", &fresh)])
                .await?
                .echo()
        })
        .await?;
        ensure!(echo.header("x-weft-jwt-sub") == Some("bob"), "{echo:?}");
        Ok(())
    });
}

#[test]
fn keys_are_fetched_over_https_verified_against_the_providers_ca() {
    run(|ctx| async move {
        let (_ca, mesh, users, client) = mtls_users_and_client(&ctx, "24h").await?;
        let key = SigningKey::generate("key-1")?;
        let idp_ca = PrivateCa::new("idp")?;
        let idp = JwksServer::start_https(jwks(&[&key]), idp_ca.server("127.0.0.1")?).await?;
        let trusting = |ca_pem: &str| {
            jwt_policy(json!({ "uri": idp.uri(), "ca_pem": ca_pem, "fetch_timeout": "1s" }))
        };
        let valid = format!("Bearer {}", key.token(json!({}))?);

        // The IdP's CA in the policy: keys come over https, tokens verify.
        mesh.put_document("policies/users", &trusting(&idp_ca.pem()))
            .await?;
        let what = "the policy applies".to_owned();
        status_becomes(&mesh, &client, String::new(), 401, what).await?;
        let reply = call(&mesh, &client, "/", &[("authorization", &valid)]).await?;
        ensure!(
            reply.status == 200,
            "with keys fetched over https: {}",
            reply.text()
        );
        let fetched = idp.fetches();
        ensure!(fetched >= 1, "the JWKS was never fetched");

        // A CA that is no certificate: the sidecar refuses the policy
        // naming the field, and the previous one keeps serving.
        let broken =
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
        mesh.put_document("policies/users", &trusting(broken))
            .await?;
        let nack = sidecar_refusal(&users).await?;
        ensure!(nack.contains("jwt.providers[0].jwks.ca_pem"), "{nack}");
        let rejected = users
            .sidecar
            .metrics()
            .await?
            .value("weft_config_rejected_total", &[("type", "InboundPolicy")]);
        ensure!(
            rejected == 1.0,
            "the NACK counted {rejected} times in /metrics"
        );
        let missing = users.sidecar.metrics().await?.value(
            "weft_refusals_total",
            &[("direction", "inbound"), ("cause", "jwt-missing")],
        );
        ensure!(missing >= 1.0, "no jwt-missing refusal in /metrics");
        ensure!(
            status_of(&mesh, &client, valid.clone()).await? == 200,
            "previous policy"
        );

        // Another CA: the IdP's certificate is refused, never a request is
        // sent, and without keys every token gets 503; the log says why.
        let other_ca = PrivateCa::new("other")?;
        mesh.put_document("policies/users", &trusting(&other_ca.pem()))
            .await?;
        let what = "tokens fail without keys".to_owned();
        status_becomes(&mesh, &client, valid.clone(), 503, what).await?;
        let reply = call(&mesh, &client, "/", &[("authorization", &valid)]).await?;
        ensure_refused(&reply, 503, "jwt-keys-unavailable", "untrusted IdP")?;
        ensure!(
            idp.fetches() == fetched,
            "a request reached an untrusted IdP"
        );
        let log = users.sidecar.log()?;
        ensure!(
            log.contains("certificate is not trusted"),
            "the sidecar's log does not say why: {}",
            log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
        );
        Ok(())
    });
}

#[test]
fn jwt_policies_change_in_kv_without_a_restart_and_invalid_ones_are_refused() {
    run(|ctx| async move {
        let (_ca, mesh, users, client) = mtls_users_and_client(&ctx, "24h").await?;
        let first = SigningKey::generate("first")?;
        let second = SigningKey::generate("second")?;
        let token_first = format!("Bearer {}", first.token(json!({}))?);
        let token_second = format!("Bearer {}", second.token(json!({}))?);
        let status = |authorization: String| status_of(&mesh, &client, authorization);
        let until = |authorization: &str, expected: u16, what: &str| {
            status_becomes(
                &mesh,
                &client,
                authorization.to_owned(),
                expected,
                what.to_owned(),
            )
        };

        // Added: tokens are required from then on.
        ensure!(status(String::new()).await? == 200, "no policy yet");
        mesh.put_document(
            "policies/users",
            &jwt_policy(json!({ "inline": jwks(&[&first]) })),
        )
        .await?;
        let added = Instant::now();
        until("", 401, "the added policy applies").await?;
        ctx.measured("jwt policy added -> enforced", added.elapsed());
        ensure!(status(token_first.clone()).await? == 200);

        // Changed: the other key is trusted instead.
        mesh.put_document(
            "policies/users",
            &jwt_policy(json!({ "inline": jwks(&[&second]) })),
        )
        .await?;
        let changed = Instant::now();
        until(&token_first, 401, "the changed policy applies").await?;
        ctx.measured("jwt policy changed -> enforced", changed.elapsed());
        ensure!(status(token_second.clone()).await? == 200);

        // Structurally invalid: the agent rejects it, naming key and field,
        // and the previous policy keeps serving.
        let mut invalid = jwt_policy(json!({ "inline": jwks(&[&first]) }));
        invalid["jwt"]["providers"][0]["algorithms"] = json!(["none"]);
        mesh.put_document("policies/users", &invalid).await?;
        let rejection = eventually(SETUP_TIMEOUT, "the agent rejects it", || async {
            let status = mesh.agent.status().await?;
            status["rejected_documents"]
                .as_array()
                .and_then(|all| {
                    all.iter().find(|r| {
                        r["key"]
                            .as_str()
                            .is_some_and(|k| k.ends_with("policies/users"))
                    })
                })
                .cloned()
                .with_context(|| format!("not rejected yet: {}", status["rejected_documents"]))
        })
        .await?;
        let said = rejection["errors"].to_string();
        ensure!(
            said.contains("jwt.providers[0].algorithms[0]") && said.contains("none"),
            "the rejection does not name the field: {rejection}"
        );
        ensure!(
            status(token_second.clone()).await? == 200,
            "previous policy"
        );
        ensure!(status(token_first.clone()).await? == 401, "previous policy");

        // Valid for the schema but not for the sidecar (a key that is not
        // one): the sidecar refuses it, naming the field, and keeps the
        // previous policy.
        let bogus =
            json!({ "keys": [ { "kty": "OKP", "crv": "Ed25519", "kid": "x", "x": "!!" } ] });
        mesh.put_document("policies/users", &jwt_policy(json!({ "inline": bogus })))
            .await?;
        let nack = sidecar_refusal(&users).await?;
        ensure!(
            nack.contains("InboundPolicy users: jwt.providers[0].jwks.inline"),
            "{nack}"
        );
        ensure!(
            status(token_second.clone()).await? == 200,
            "previous policy"
        );

        // Removed: no token needed again.
        mesh.put_document("policies/users", &json!({})).await?;
        let removed = Instant::now();
        until("", 200, "the removed policy no longer applies").await?;
        ctx.measured("jwt policy removed -> lifted", removed.elapsed());
        Ok(())
    });
}

//! JWT authentication of inbound requests, as a caller sees it.
//!
//! The first half checks the verification core (`Authenticator`) against
//! the whole token matrix: every supported algorithm, every way a token can
//! be wrong, every place it can be. The second half runs the tower layer
//! behind a real HTTP server on loopback (status, challenge, reason header,
//! header rewriting, denied requests never reaching the app), and the JWKS
//! fetcher against a real IdP-like HTTP server whose fetches are counted.
//!
//! RSA keys are committed fixtures (`fixtures/jwt/README.md`); EC P-256 and
//! Ed25519 keys are generated per test with rcgen.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use common::{eventually, get};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder};
use weft_sidecar::authn::config::{
    JwksConfig, Presence, ProviderConfig, RequiredClaim, RolesMatch, RuleConfig, RuleMatch, Secret,
    TokenSourceConfig,
};
use weft_sidecar::authn::{
    Admission, Authenticator, AuthnConfig, AuthnError, AuthnErrorKind, JwtAuthnLayer, RequestHead,
    VerifiedClaims,
};
use weft_sidecar::body::ProxyBody;
use weft_sidecar::error::ProxyError;
use weft_sidecar::inbound::snapshot::InboundSnapshotLayer;
use weft_sidecar::proxy::error_response::ErrorResponseLayer;
use weft_sidecar::table::request::{Direction, ProxyRequest, Received, RequestCtx, Snapshot};
use weft_sidecar::table::{InboundPolicy, RoutingTable};

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "users";
const RSA_A_KEY: &str = include_str!("fixtures/jwt/rsa-a.key.pem");
const RSA_A_PUB: &str = include_str!("fixtures/jwt/rsa-a.pub.pem");
const RSA_A_JWK: &str = include_str!("fixtures/jwt/rsa-a.jwk.json");
const RSA_B_KEY: &str = include_str!("fixtures/jwt/rsa-b.key.pem");

// ------------------------------------------------------------------ keys

/// A private key to sign test tokens with, and its public JWK.
struct SigningKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    /// The committed RSA key `rsa-a` (kid `rsa-a`).
    fn rsa_a(alg: Algorithm) -> Self {
        Self {
            kid: "rsa-a".into(),
            alg,
            encoding: EncodingKey::from_rsa_pem(RSA_A_KEY.as_bytes()).unwrap(),
            jwk: serde_json::from_str(RSA_A_JWK).unwrap(),
        }
    }

    /// The committed RSA key `rsa-b`, claiming to be `kid`.
    fn rsa_b_as(kid: &str) -> Self {
        Self {
            kid: kid.into(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_pem(RSA_B_KEY.as_bytes()).unwrap(),
            jwk: json!(null),
        }
    }

    fn es256(kid: &str) -> Self {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = kp.public_key_raw(); // 0x04 || x || y
        Self {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(&kp.serialize_der()),
            jwk: json!({ "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                         "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
                         "y": URL_SAFE_NO_PAD.encode(&raw[33..65]) }),
        }
    }

    fn eddsa(kid: &str) -> Self {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        Self {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(&kp.serialize_der()),
            jwk: json!({ "kty": "OKP", "crv": "Ed25519", "kid": kid,
                         "x": URL_SAFE_NO_PAD.encode(kp.public_key_raw()) }),
        }
    }

    fn hmac(secret: &[u8]) -> Self {
        Self {
            kid: "hmac".into(),
            alg: Algorithm::HS256,
            encoding: EncodingKey::from_secret(secret),
            jwk: json!(null),
        }
    }

    /// A token signed with this key: the valid test claims with `extra`
    /// merged in (see [`claims`]).
    fn token_with(&self, extra: Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims(extra), &self.encoding).unwrap()
    }

    /// A token signed with this key, carrying the valid test claims.
    fn token(&self) -> String {
        self.token_with(json!({}))
    }
}

fn jwks(keys: &[&SigningKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The valid test claims with `extra` merged in, as a token's payload part.
fn encoded_claims(extra: Value) -> String {
    b64(claims(extra).to_string().as_bytes())
}

/// The header and payload parts of a token with this header text and the
/// valid test claims; the signature part is the caller's to add.
fn unsigned_token(header: &str) -> String {
    format!("{}.{}", b64(header.as_bytes()), encoded_claims(json!({})))
}

/// A token with exactly this header and payload text, signed over them.
fn raw_token(key: &SigningKey, header: &Value, payload: &[u8]) -> String {
    let message = format!("{}.{}", b64(header.to_string().as_bytes()), b64(payload));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key.encoding, key.alg).unwrap();
    format!("{message}.{signature}")
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Valid claims for the test provider, with `extra` merged in (a `null`
/// removes a claim).
fn claims(extra: Value) -> Value {
    let mut c = json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": "alice",
                        "iat": now(), "exp": now() + 600 });
    let map = c.as_object_mut().unwrap();
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            map.remove(k);
        } else {
            map.insert(k.clone(), v.clone());
        }
    }
    c
}

// ---------------------------------------------------------------- policies

/// The test provider (issuer [`ISSUER`], audience [`AUDIENCE`]) with `keys`
/// as its inline JWKS.
fn provider(keys: &[&SigningKey]) -> ProviderConfig {
    ProviderConfig::new(
        "idp",
        ISSUER,
        &[AUDIENCE],
        Some(JwksConfig::inline(jwks(keys))),
    )
}

fn policy(providers: Vec<ProviderConfig>, rules: Vec<RuleConfig>) -> AuthnConfig {
    AuthnConfig { providers, rules }
}

fn authenticator(config: AuthnConfig) -> Authenticator {
    Authenticator::new("users", &config).unwrap()
}

/// The verification core: the test provider trusting `keys`, and `rules`.
fn trusting(keys: &[&SigningKey], rules: Vec<RuleConfig>) -> Authenticator {
    authenticator(policy(vec![provider(keys)], rules))
}

/// The verification core with just this provider and no rules.
fn single_provider(provider: ProviderConfig) -> Authenticator {
    authenticator(policy(vec![provider], vec![]))
}

fn rule(prefix: &str) -> RuleConfig {
    RuleConfig {
        matches: RuleMatch {
            path_prefix: Some(prefix.into()),
            ..RuleMatch::default()
        },
        ..RuleConfig::default()
    }
}

fn public(prefix: &str) -> RuleConfig {
    RuleConfig {
        public: true,
        ..rule(prefix)
    }
}

fn needs_roles(prefix: &str, roles: &[&str]) -> RuleConfig {
    RuleConfig {
        required_roles: roles.iter().map(|r| (*r).into()).collect(),
        ..rule(prefix)
    }
}

async fn check(
    auth: &Authenticator,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Admission, AuthnError> {
    let mut b = Request::get(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(()).unwrap();
    auth.authenticate(RequestHead::of(&req)).await
}

/// A request for `path` with `Authorization: Bearer <token>`.
async fn check_bearer_at(
    auth: &Authenticator,
    path: &str,
    token: &str,
) -> Result<Admission, AuthnError> {
    check(auth, path, &[("authorization", &format!("Bearer {token}"))]).await
}

async fn check_bearer(auth: &Authenticator, token: &str) -> Result<Admission, AuthnError> {
    check_bearer_at(auth, "/api", token).await
}

#[track_caller]
fn assert_denied(result: Result<Admission, AuthnError>, kind: AuthnErrorKind) -> AuthnError {
    match result {
        Ok(a) => panic!("expected {kind:?}, the request was admitted: {a:?}"),
        Err(e) => {
            assert_eq!(e.kind, kind, "{e}");
            e
        }
    }
}

/// Asserts that `token` as a Bearer token for `/api` is refused with `kind`.
async fn assert_bearer_denied(
    auth: &Authenticator,
    token: &str,
    kind: AuthnErrorKind,
) -> AuthnError {
    assert_denied(check_bearer(auth, token).await, kind)
}

fn subject(admission: &Admission) -> &str {
    admission.claims().unwrap().subject().unwrap()
}

/// A provider trusting `key` admits a token `key` signed, as its subject.
async fn assert_admits_a_token_signed_with(key: SigningKey) {
    let admitted = check_bearer(&trusting(&[&key], vec![]), &key.token())
        .await
        .unwrap();
    assert_eq!(subject(&admitted), "alice");
}

// ------------------------------------------------- algorithms that verify

#[tokio::test]
async fn valid_rs256_token_is_admitted_with_its_claims() {
    let key = SigningKey::rsa_a(Algorithm::RS256);
    let auth = trusting(&[&key], vec![]);
    let ok = check_bearer(&auth, &key.token_with(json!({ "tenant": "acme" })))
        .await
        .unwrap();
    let c = ok.claims().unwrap();
    assert_eq!(c.subject(), Some("alice"));
    assert_eq!(c.issuer(), Some(ISSUER));
    assert_eq!(c.provider(), "idp");
    assert_eq!(c.get("tenant"), Some(&json!("acme")));
}

#[tokio::test]
async fn valid_ps256_token_is_admitted() {
    assert_admits_a_token_signed_with(SigningKey::rsa_a(Algorithm::PS256)).await;
}

#[tokio::test]
async fn valid_es256_token_is_admitted() {
    assert_admits_a_token_signed_with(SigningKey::es256("ec-1")).await;
}

#[tokio::test]
async fn valid_eddsa_token_is_admitted() {
    assert_admits_a_token_signed_with(SigningKey::eddsa("ed-1")).await;
}

#[tokio::test]
async fn hs256_is_accepted_only_from_a_provider_with_a_shared_secret() {
    let secret = [42u8; 32];
    let token = SigningKey::hmac(&secret).token();

    let mut with_secret = ProviderConfig::new("idp", ISSUER, &[AUDIENCE], None);
    with_secret.shared_secret = Some(Secret(STANDARD.encode(secret)));
    let admitted = check_bearer(&single_provider(with_secret), &token)
        .await
        .unwrap();
    assert_eq!(subject(&admitted), "alice");

    // A JWKS-only provider refuses the very same token.
    let rsa = SigningKey::rsa_a(Algorithm::RS256);
    let jwks_only = trusting(&[&rsa], vec![]);
    assert_bearer_denied(&jwks_only, &token, AuthnErrorKind::AlgorithmNotAllowed).await;
}

// ----------------------------------------------------------- attacks

#[tokio::test]
async fn alg_none_is_rejected() {
    let key = SigningKey::rsa_a(Algorithm::RS256);
    let auth = trusting(&[&key], vec![]);
    let unsigned = unsigned_token(r#"{"alg":"none","typ":"JWT"}"#);
    for token in [format!("{unsigned}."), format!("{unsigned}.c2lnbmF0dXJl")] {
        let e = assert_bearer_denied(&auth, &token, AuthnErrorKind::AlgorithmNotAllowed).await;
        assert!(e.detail.contains("none"), "{e}");
    }
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_rejected() {
    // The classic key confusion: the attacker knows the RSA public key and
    // uses its bytes as an HMAC secret.
    let rsa = SigningKey::rsa_a(Algorithm::RS256);
    let forged = SigningKey {
        kid: "rsa-a".into(),
        ..SigningKey::hmac(RSA_A_PUB.as_bytes())
    };
    let token = forged.token_with(json!({ "sub": "mallory" }));

    let auth = trusting(&[&rsa], vec![]);
    assert_bearer_denied(&auth, &token, AuthnErrorKind::AlgorithmNotAllowed).await;

    // Even with HS256 allowed (a real shared secret), the RSA key is never
    // the HMAC key.
    let mut both = provider(&[&rsa]);
    both.shared_secret = Some(Secret(STANDARD.encode([9u8; 32])));
    both.algorithms = Some(vec!["RS256".into(), "HS256".into()]);
    let auth = single_provider(both);
    assert_bearer_denied(&auth, &token, AuthnErrorKind::BadSignature).await;
}

#[tokio::test]
async fn an_algorithm_outside_the_allowed_list_is_rejected_before_verifying() {
    let rsa = SigningKey::rsa_a(Algorithm::PS256);
    let mut p = provider(&[&rsa]);
    p.algorithms = Some(vec!["RS256".into()]);
    let auth = single_provider(p);
    // Correctly signed, but PS256 is not allowed.
    assert_bearer_denied(&auth, &rsa.token(), AuthnErrorKind::AlgorithmNotAllowed).await;
    // A garbage signature gets the same answer: the algorithm is refused
    // before any signature is looked at.
    let unsigned = unsigned_token(r#"{"alg":"ES256","kid":"rsa-a"}"#);
    let garbage = format!("{unsigned}.AAAA");
    assert_bearer_denied(&auth, &garbage, AuthnErrorKind::AlgorithmNotAllowed).await;
}

// ------------------------------------------------------- invalid tokens

#[tokio::test]
async fn expired_and_not_yet_valid_tokens_are_rejected() {
    let key = SigningKey::es256("ec-1");
    let auth = trusting(&[&key], vec![]);
    for (extra, kind) in [
        (json!({ "exp": now() - 3600 }), AuthnErrorKind::Expired),
        (json!({ "nbf": now() + 3600 }), AuthnErrorKind::NotYetValid),
    ] {
        assert_bearer_denied(&auth, &key.token_with(extra), kind).await;
    }
}

#[tokio::test]
async fn clock_leeway_is_honoured() {
    let key = SigningKey::es256("ec-1");
    let just_expired = key.token_with(json!({ "exp": now() - 30 }));
    let almost_valid = key.token_with(json!({ "nbf": now() + 30 }));

    // Default leeway: 60 s.
    let auth = trusting(&[&key], vec![]);
    check_bearer(&auth, &just_expired).await.unwrap();
    check_bearer(&auth, &almost_valid).await.unwrap();

    let mut strict = provider(&[&key]);
    strict.clock_leeway = Duration::from_secs(5);
    let auth = single_provider(strict);
    assert_bearer_denied(&auth, &just_expired, AuthnErrorKind::Expired).await;
    assert_bearer_denied(&auth, &almost_valid, AuthnErrorKind::NotYetValid).await;
}

#[tokio::test]
async fn wrong_or_missing_issuer_and_audience_are_rejected() {
    let key = SigningKey::es256("ec-1");
    let auth = trusting(&[&key], vec![]);
    for (extra, kind) in [
        (
            json!({ "iss": "https://evil.test" }),
            AuthnErrorKind::WrongIssuer,
        ),
        (json!({ "iss": null }), AuthnErrorKind::WrongIssuer),
        (json!({ "aud": "orders" }), AuthnErrorKind::WrongAudience),
        (
            json!({ "aud": ["orders", "billing"] }),
            AuthnErrorKind::WrongAudience,
        ),
        (json!({ "aud": null }), AuthnErrorKind::WrongAudience),
        (json!({ "exp": null }), AuthnErrorKind::ClaimMismatch),
    ] {
        assert_bearer_denied(&auth, &key.token_with(extra), kind).await;
    }
    // One accepted audience among several is enough.
    check_bearer(
        &auth,
        &key.token_with(json!({ "aud": ["orders", AUDIENCE] })),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_bad_signature_is_rejected() {
    let key = SigningKey::rsa_a(Algorithm::RS256);
    let auth = trusting(&[&key], vec![]);
    // Another key pretending to be rsa-a.
    let impostor = SigningKey::rsa_b_as("rsa-a");
    assert_bearer_denied(&auth, &impostor.token(), AuthnErrorKind::BadSignature).await;
    // A genuine token whose payload was swapped.
    let genuine = key.token();
    let mut parts: Vec<&str> = genuine.split('.').collect();
    let evil_payload = encoded_claims(json!({ "sub": "root" }));
    parts[1] = &evil_payload;
    assert_bearer_denied(&auth, &parts.join("."), AuthnErrorKind::BadSignature).await;
}

#[tokio::test]
async fn an_unknown_kid_is_rejected() {
    let key = SigningKey::es256("ec-1");
    let auth = trusting(&[&key], vec![]);
    let stranger = SigningKey::es256("ec-2");
    assert_bearer_denied(&auth, &stranger.token(), AuthnErrorKind::UnknownKid).await;
}

#[tokio::test]
async fn malformed_tokens_are_rejected() {
    let key = SigningKey::rsa_a(Algorithm::RS256);
    let auth = trusting(&[&key], vec![]);
    let unsigned = unsigned_token(r#"{"alg":"RS256","kid":"rsa-a"}"#);
    let payload = encoded_claims(json!({}));
    for token in [
        unsigned.clone(),                                     // 2 parts
        format!("{unsigned}.sig.extra"),                      // 4 parts
        format!("!!!.{payload}.c2ln"),                        // header not base64url
        format!("{unsigned}!!!.c2ln"),                        // payload not base64url
        format!("{unsigned}.c2ln*"),                          // signature not base64url
        format!("{unsigned}.c2ln="),                          // padding is not base64url
        format!("{unsigned}.c"),                              // an impossible length
        format!("{}.{payload}.c2ln", b64(b"not json")),       // header not JSON
        format!("{}.{payload}.c2ln", b64(br#"{"kid":"x"}"#)), // no alg
        "x".repeat(20_000),                                   // absurdly long
    ] {
        assert_bearer_denied(&auth, &token, AuthnErrorKind::Malformed).await;
    }
    // Correctly signed, but the payload is not JSON.
    let header = json!({ "alg": "RS256", "kid": "rsa-a" });
    let not_json = raw_token(&key, &header, b"not json");
    assert_bearer_denied(&auth, &not_json, AuthnErrorKind::Malformed).await;
}

#[tokio::test]
async fn required_claims_must_be_present_or_equal() {
    let key = SigningKey::es256("ec-1");
    let mut p = provider(&[&key]);
    p.required_claims
        .insert("tenant".into(), RequiredClaim::Equals(json!("acme")));
    p.required_claims.insert(
        "email".into(),
        RequiredClaim::Present(Presence { present: true }),
    );
    p.required_claims
        .insert("groups".into(), RequiredClaim::Equals(json!("staff")));
    let auth = single_provider(p);
    let good = json!({ "tenant": "acme", "email": "a@x", "groups": ["staff", "eng"] });
    check_bearer(&auth, &key.token_with(good)).await.unwrap();
    for bad in [
        json!({ "tenant": "other", "email": "a@x", "groups": ["staff"] }),
        json!({ "email": "a@x", "groups": ["staff"] }),
        json!({ "tenant": "acme", "groups": ["staff"] }),
        json!({ "tenant": "acme", "email": "a@x", "groups": ["eng"] }),
    ] {
        assert_bearer_denied(&auth, &key.token_with(bad), AuthnErrorKind::ClaimMismatch).await;
    }
}

// ------------------------------------------------------- token sources

#[tokio::test]
async fn tokens_are_read_from_a_named_header_a_cookie_or_a_query_parameter() {
    let key = SigningKey::es256("ec-1");
    let token = key.token();
    let mut p = provider(&[&key]);
    p.from = vec![
        TokenSourceConfig::header("x-jwt"),
        TokenSourceConfig::cookie("session"),
        TokenSourceConfig::query("access_token"),
    ];
    let auth = single_provider(p);
    check(&auth, "/api", &[("x-jwt", &token)]).await.unwrap();
    let cookie = format!("theme=dark; session={token}");
    check(&auth, "/api", &[("cookie", &cookie)]).await.unwrap();
    check(&auth, &format!("/api?x=1&access_token={token}"), &[])
        .await
        .unwrap();
    // The Bearer header is not among this provider's places.
    assert_bearer_denied(&auth, &token, AuthnErrorKind::Missing).await;
}

#[tokio::test]
async fn a_missing_token_is_rejected_unless_the_path_is_public() {
    let key = SigningKey::es256("ec-1");
    let auth = trusting(&[&key], vec![public("/health")]);
    assert_denied(check(&auth, "/api", &[]).await, AuthnErrorKind::Missing);
    // Another auth scheme is not a bearer token.
    assert_denied(
        check(&auth, "/api", &[("authorization", "Basic dTpw")]).await,
        AuthnErrorKind::Missing,
    );
    let anonymous = check(&auth, "/health", &[]).await.unwrap();
    assert!(anonymous.claims().is_none());
    // A public path ignores a bad token, and uses a good one.
    let expired = key.token_with(json!({ "exp": now() - 3600 }));
    let ignored = check_bearer_at(&auth, "/health", &expired).await.unwrap();
    assert!(ignored.claims().is_none());
    let known = check_bearer_at(&auth, "/health", &key.token())
        .await
        .unwrap();
    assert_eq!(subject(&known), "alice");
}

#[tokio::test]
async fn paths_that_hide_dot_segments_are_refused() {
    let key = SigningKey::es256("ec-1");
    let auth = trusting(&[&key], vec![public("/public/")]);
    check(&auth, "/public/x", &[]).await.unwrap();
    for path in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public//x",
        "/public%2f..%2fadmin",
    ] {
        assert_denied(
            check(&auth, path, &[]).await,
            AuthnErrorKind::PathNotNormalized,
        );
    }
    // Encoded letters are decoded before matching: this is /public/x.
    check(&auth, "/%70ublic/x", &[]).await.unwrap();
}

// ------------------------------------------------------------- roles

#[tokio::test]
async fn roles_come_from_the_roles_array_or_the_scope_string() {
    let key = SigningKey::es256("ec-1");
    let mut any_of = needs_roles("/reports/", &["auditor", "admin"]);
    any_of.roles_match = RolesMatch::Any;
    let mut custom_claim = needs_roles("/ops/", &["ops"]);
    custom_claim.roles_claim = Some("realm_access.roles".into());
    let auth = trusting(
        &[&key],
        vec![
            needs_roles("/admin/", &["admin"]),
            needs_roles("/orders/", &["orders:read", "orders:write"]),
            any_of,
            custom_claim,
        ],
    );
    let admin = key.token_with(json!({ "roles": ["admin"] }));
    let reader = key.token_with(json!({ "roles": ["reader"], "scope": "orders:read" }));
    let writer = key.token_with(json!({ "scope": "orders:read orders:write" }));
    let ops = key.token_with(json!({ "realm_access": { "roles": ["ops"] } }));

    for (path, token, admitted) in [
        ("/admin/x", &admin, true),
        ("/admin/x", &reader, false),
        ("/orders/1", &writer, true),
        ("/orders/1", &reader, false),
        ("/reports/q", &admin, true),
        ("/ops/restart", &ops, true),
        ("/ops/restart", &admin, false),
        // Paths without a rule need a valid token and no role.
        ("/other", &reader, true),
    ] {
        let result = check_bearer_at(&auth, path, token).await;
        if admitted {
            assert!(result.is_ok(), "{path}: {result:?}");
        } else {
            assert!(
                matches!(&result, Err(e) if e.kind == AuthnErrorKind::InsufficientRole),
                "{path}: {result:?}"
            );
        }
    }
    // The refusal names the missing role.
    let e = assert_denied(
        check_bearer_at(&auth, "/admin/x", &reader).await,
        AuthnErrorKind::InsufficientRole,
    );
    assert!(e.detail.contains("admin"), "{e}");
}

// ---------------------------------------------------- several providers

#[tokio::test]
async fn several_providers_are_told_apart_by_issuer() {
    let corp = SigningKey::es256("corp-1");
    let partner = SigningKey::eddsa("partner-1");
    let mut second = ProviderConfig::new(
        "partner",
        "https://partner.test",
        &[AUDIENCE],
        Some(JwksConfig::inline(jwks(&[&partner]))),
    );
    second
        .claim_headers
        .insert("email".into(), "x-partner-email".into());
    let auth = authenticator(policy(vec![provider(&[&corp]), second], vec![]));

    let ok = check_bearer(&auth, &corp.token()).await.unwrap();
    assert_eq!(ok.claims().unwrap().provider(), "idp");
    let from_partner = partner.token_with(json!({ "iss": "https://partner.test" }));
    let ok = check_bearer(&auth, &from_partner).await.unwrap();
    assert_eq!(ok.claims().unwrap().provider(), "partner");
    // The partner's key does not speak for the corporate issuer.
    assert_bearer_denied(&auth, &partner.token(), AuthnErrorKind::UnknownKid).await;
    let from_nobody = corp.token_with(json!({ "iss": "https://nobody.test" }));
    assert_bearer_denied(&auth, &from_nobody, AuthnErrorKind::WrongIssuer).await;
}

// ------------------------------------------------------- configuration

#[test]
fn invalid_policies_are_reported_with_field_and_reason() {
    let errors = AuthnConfig::from_json(
        br#"{ "providers": [
              { "name": "a", "issuer": "", "audiences": ["users"],
                "jwks": { "inline": { "keys": [] } }, "algorithms": ["HS256", "RS999", "none"] } ] }"#,
    )
    .unwrap_err();
    let text = errors.to_string();
    for expected in [
        "providers[0].issuer: empty",
        "providers[0].jwks.inline: no usable signing key",
        "providers[0].algorithms[0]: HS256 needs `shared_secret`",
        "providers[0].algorithms[1]: unknown algorithm `RS999`",
        "providers[0].algorithms[2]: `none` is never allowed",
    ] {
        assert!(text.contains(expected), "no `{expected}` in:\n{text}");
    }
    let bad_service = Authenticator::new(
        "users \"x\"",
        &policy(vec![provider(&[&SigningKey::es256("k")])], vec![]),
    )
    .err()
    .unwrap();
    assert_eq!(bad_service.0[0].field, "(service)");
}

// ============================================ the layer, over real HTTP

/// A test inbound listener: the JWT layer in front of an app that answers
/// with what reached it. Counts the requests the app saw.
struct Inbound {
    addr: SocketAddr,
    app_calls: Arc<AtomicUsize>,
}

impl Inbound {
    /// A listener whose layer enforces `auth`.
    async fn enforcing(auth: Authenticator) -> Self {
        inbound(with_jwt_policy(Some(auth))).await
    }

    /// How many requests reached the app.
    fn app_calls(&self) -> usize {
        self.app_calls.load(Ordering::SeqCst)
    }

    /// One request for `path` on the `users` host, with `headers`.
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> common::Reply {
        get(self.addr, "users", path, headers).await
    }

    /// One request for `path` with `Authorization: Bearer <token>`.
    async fn get_with_token(&self, path: &str, token: &str) -> common::Reply {
        let bearer = format!("Bearer {token}");
        self.get(path, &[("authorization", &bearer)]).await
    }

    /// Asserts that a request for `/api` bearing `token` reached the app.
    async fn assert_admits(&self, token: &str) {
        let r = self.get_with_token("/api", token).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
}

/// The app: 200 with the headers it received (one `name: value` per line)
/// and the subject of the claims the layer attached.
fn echo(req: &ProxyRequest<Snapshot>) -> Response<ProxyBody> {
    let mut body = String::new();
    for (name, value) in req.http.headers() {
        body.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
    }
    if let Some(c) = req.http.extensions().get::<Arc<VerifiedClaims>>() {
        body.push_str(&format!("claims.sub: {}\n", c.subject().unwrap_or("-")));
    }
    Response::new(ProxyBody::full(Bytes::from(body)))
}

/// A routing table whose inbound policy has only `auth` as its JWT
/// policy, as the xDS client publishes it.
fn with_jwt_policy(auth: Option<Authenticator>) -> Arc<ArcSwap<RoutingTable>> {
    let table = Arc::new(ArcSwap::from_pointee(RoutingTable::default()));
    set_jwt_policy(&table, auth);
    table
}

fn set_jwt_policy(table: &ArcSwap<RoutingTable>, auth: Option<Authenticator>) {
    let policy = InboundPolicy {
        authn: auth.map(Arc::new),
        ..InboundPolicy::default()
    };
    table.store(Arc::new(table.load().with_inbound(Arc::new(policy))));
}

async fn inbound(table: Arc<ArcSwap<RoutingTable>>) -> Inbound {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app_calls = Arc::new(AtomicUsize::new(0));
    let calls = app_calls.clone();
    let app = tower::service_fn(move |req: ProxyRequest<Snapshot>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let resp = echo(&req);
        async move { Ok::<_, ProxyError>(resp) }
    });
    // A denial is an error that `error_response` answers, as in the
    // sidecar's inbound stack.
    let stack = ServiceBuilder::new()
        .layer(ErrorResponseLayer)
        .layer(InboundSnapshotLayer::new(table))
        .layer(JwtAuthnLayer)
        .service(app);
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            let stack = stack.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let mut stack = stack.clone();
                    let ctx = RequestCtx::new(
                        Direction::Inbound,
                        peer,
                        HeaderValue::from_static("127.0.0.1"),
                    );
                    async move {
                        stack
                            .call(ProxyRequest {
                                http: req.map(Into::into),
                                ctx,
                                target: Received,
                            })
                            .await
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Inbound { addr, app_calls }
}

fn lines(body: &str) -> Vec<&str> {
    body.lines().collect()
}

#[tokio::test]
async fn a_request_without_a_token_gets_401_and_never_reaches_the_app() {
    let key = SigningKey::es256("ec-1");
    let sc = Inbound::enforcing(trusting(&[&key], vec![public("/health")])).await;

    let r = sc.get("/api", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.header("www-authenticate"), "Bearer realm=\"users\"");
    assert_eq!(r.header("x-weft-error"), "jwt-missing");
    assert_eq!(sc.app_calls(), 0);

    let r = sc.get("/health", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(sc.app_calls(), 1);
}

#[tokio::test]
async fn an_invalid_token_gets_401_naming_the_reason() {
    let key = SigningKey::es256("ec-1");
    let sc = Inbound::enforcing(trusting(&[&key], vec![])).await;
    let expired = key.token_with(json!({ "exp": now() - 3600 }));
    let r = sc.get_with_token("/api", &expired).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.header("www-authenticate"),
        "Bearer realm=\"users\", error=\"invalid_token\", error_description=\"the token expired\""
    );
    assert_eq!(r.header("x-weft-error"), "jwt-expired");
    assert!(r.body.contains("exp"), "{}", r.body);

    let r = sc.get_with_token("/api", "a.b").await;
    assert_eq!(r.header("x-weft-error"), "jwt-malformed");
    assert_eq!(sc.app_calls(), 0);
}

/// A token without `exp` would be valid forever: it is never accepted,
/// whatever the policy says (Envoy accepts one unless told otherwise;
/// Weft has no switch to allow it). docs/SECURITY.md says so.
#[tokio::test]
async fn a_token_without_exp_is_never_accepted() {
    let key = SigningKey::es256("ec-1");
    let sc = Inbound::enforcing(trusting(&[&key], vec![])).await;
    let forever = key.token_with(json!({ "exp": null }));
    let r = sc.get_with_token("/api", &forever).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.header("x-weft-error"), "jwt-claim-mismatch");
    assert!(r.body.contains("`exp`"), "{}", r.body);
    assert_eq!(sc.app_calls(), 0);
    // The same token with an `exp` is accepted.
    let r = sc.get_with_token("/api", &key.token()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(sc.app_calls(), 1);
}

#[tokio::test]
async fn a_missing_role_gets_403_insufficient_scope() {
    let key = SigningKey::es256("ec-1");
    let sc = Inbound::enforcing(trusting(&[&key], vec![needs_roles("/admin/", &["admin"])])).await;
    let token = key.token_with(json!({ "scope": "read" }));
    let r = sc.get_with_token("/admin/users", &token).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.header("x-weft-error"), "jwt-insufficient-role");
    assert!(
        r.header("www-authenticate")
            .contains("error=\"insufficient_scope\""),
        "{}",
        r.header("www-authenticate")
    );
    assert_eq!(sc.app_calls(), 0);
}

#[tokio::test]
async fn forged_claim_headers_are_replaced_by_verified_ones() {
    let key = SigningKey::es256("ec-1");
    let mut p = provider(&[&key]);
    p.claim_headers
        .insert("email".into(), "x-user-email".into());
    let auth = authenticator(policy(vec![p], vec![public("/public/")]));
    let sc = Inbound::enforcing(auth).await;
    let token = key.token_with(json!({ "email": "alice@example.com" }));
    let forged = [
        ("x-weft-jwt-sub", "mallory"),
        ("x-weft-jwt-admin", "true"),
        ("x-user-email", "mallory@example.com"),
    ];

    let mut headers = forged.to_vec();
    let bearer = format!("Bearer {token}");
    headers.push(("authorization", &bearer));
    let r = sc.get("/api", &headers).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let seen = lines(&r.body);
    assert!(seen.contains(&"x-weft-jwt-sub: alice"), "{seen:?}");
    assert!(
        seen.contains(&format!("x-weft-jwt-iss: {ISSUER}").as_str()),
        "{seen:?}"
    );
    assert!(
        seen.contains(&"x-user-email: alice@example.com"),
        "{seen:?}"
    );
    assert!(seen.contains(&"claims.sub: alice"), "{seen:?}");
    assert!(!r.body.contains("mallory"), "{seen:?}");
    assert!(!r.body.contains("x-weft-jwt-admin"), "{seen:?}");
    // Forwarded by default.
    assert!(
        seen.contains(&format!("authorization: {bearer}").as_str()),
        "{seen:?}"
    );

    // Without a token (a public path) the forged headers are removed too.
    let r = sc.get("/public/x", &forged).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        !r.body.contains("mallory") && !r.body.contains("x-weft-jwt"),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn the_token_header_is_removed_when_the_provider_does_not_forward_it() {
    let key = SigningKey::es256("ec-1");
    let mut p = provider(&[&key]);
    p.forward_token = false;
    let sc = Inbound::enforcing(single_provider(p)).await;
    let r = sc.get_with_token("/api", &key.token()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.body.contains("authorization"), "{}", r.body);
    assert!(r.body.contains("x-weft-jwt-sub: alice"), "{}", r.body);
}

#[tokio::test]
async fn without_a_policy_requests_pass_but_forged_claim_headers_do_not() {
    let table = with_jwt_policy(None);
    let sc = inbound(table.clone()).await;
    let r = sc.get("/api", &[("x-weft-jwt-sub", "mallory")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.body.contains("mallory"), "{}", r.body);

    // A policy set later applies to the next request.
    let key = SigningKey::es256("ec-1");
    set_jwt_policy(&table, Some(trusting(&[&key], vec![])));
    let r = sc.get("/api", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

// ================================================ JWKS from an IdP by URL

/// What the fake IdP serves.
struct IdpState {
    status: StatusCode,
    body: String,
    cache_control: Option<&'static str>,
}

#[derive(Clone)]
struct Idp {
    addr: SocketAddr,
    state: Arc<Mutex<IdpState>>,
    fetches: Arc<AtomicUsize>,
}

impl Idp {
    async fn start(keys: Value) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let idp = Self {
            addr: listener.local_addr().unwrap(),
            state: Arc::new(Mutex::new(IdpState {
                status: StatusCode::OK,
                body: keys.to_string(),
                cache_control: Some("public, max-age=3600"),
            })),
            fetches: Arc::new(AtomicUsize::new(0)),
        };
        let served = idp.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let idp = served.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let idp = idp.clone();
                        async move {
                            assert_eq!(req.uri().path(), "/.well-known/jwks.json");
                            idp.fetches.fetch_add(1, Ordering::SeqCst);
                            let state = idp.state.lock().unwrap();
                            let mut resp =
                                Response::new(Full::new(Bytes::from(state.body.clone())));
                            *resp.status_mut() = state.status;
                            if let Some(cc) = state.cache_control {
                                resp.headers_mut()
                                    .insert("cache-control", HeaderValue::from_static(cc));
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        idp
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn serve(&self, keys: Value) {
        self.state.lock().unwrap().body = keys.to_string();
    }

    fn fail_with(&self, status: StatusCode) {
        self.state.lock().unwrap().status = status;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn provider(&self, jwks: JwksConfig) -> ProviderConfig {
        ProviderConfig::new("idp", ISSUER, &[AUDIENCE], Some(jwks))
    }

    /// A policy whose one provider fetches its keys from this IdP.
    fn policy(&self) -> AuthnConfig {
        policy(vec![self.provider(JwksConfig::uri(&self.url()))], vec![])
    }

    /// Waits until the IdP has answered `count` fetches in all.
    async fn await_fetches(&self, what: &str, count: usize) {
        eventually(Duration::from_secs(10), what, || {
            let idp = self.clone();
            async move {
                let fetches = idp.fetches();
                anyhow::ensure!(fetches >= count, "{fetches} fetches so far");
                Ok(())
            }
        })
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn keys_from_a_url_are_fetched_once_and_cached() {
    let key = SigningKey::es256("ec-1");
    let idp = Idp::start(jwks(&[&key])).await;
    let sc = Inbound::enforcing(authenticator(idp.policy())).await;
    for _ in 0..10 {
        sc.assert_admits(&key.token()).await;
    }
    assert_eq!(idp.fetches(), 1, "one fetch serves every request");
}

#[tokio::test]
async fn a_rotated_key_triggers_one_rate_limited_refetch() {
    let old = SigningKey::es256("2024-01");
    let idp = Idp::start(jwks(&[&old])).await;
    let sc = Inbound::enforcing(authenticator(idp.policy())).await;
    sc.assert_admits(&old.token()).await;
    assert_eq!(idp.fetches(), 1);

    // The IdP rotates: a token signed with the new key makes the sidecar
    // refetch once, and it is admitted.
    let new = SigningKey::eddsa("2024-02");
    idp.serve(jwks(&[&old, &new]));
    sc.assert_admits(&new.token()).await;
    assert_eq!(idp.fetches(), 2);
    sc.assert_admits(&new.token()).await;
    assert_eq!(idp.fetches(), 2, "the new key is cached");

    // Made-up kids right after do not each cause a fetch.
    for i in 0..5 {
        let stranger = SigningKey::es256(&format!("made-up-{i}"));
        let r = sc.get_with_token("/api", &stranger.token()).await;
        assert_eq!(r.header("x-weft-error"), "jwt-unknown-kid");
    }
    assert_eq!(idp.fetches(), 2, "refetches are rate-limited");
}

#[tokio::test]
async fn a_failing_jwks_endpoint_keeps_the_last_good_keys() {
    let key = SigningKey::es256("ec-1");
    let idp = Idp::start(jwks(&[&key])).await;
    let mut jwks_config = JwksConfig::uri(&idp.url());
    // Refresh often, to see refreshes fail.
    jwks_config.cache_duration = Some(Duration::from_millis(200));
    let sc = Inbound::enforcing(single_provider(idp.provider(jwks_config))).await;
    sc.assert_admits(&key.token()).await;

    idp.fail_with(StatusCode::INTERNAL_SERVER_ERROR);
    idp.await_fetches("two failed refreshes", idp.fetches() + 2)
        .await;
    let r = sc.get_with_token("/api", &key.token()).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the last good keys still verify: {}",
        r.body
    );

    // A garbage answer is no better than an error.
    idp.fail_with(StatusCode::OK);
    idp.serve(json!({ "keys": "nope" }));
    idp.await_fetches("a refresh with a broken JWKS", idp.fetches() + 1)
        .await;
    sc.assert_admits(&key.token()).await;
}

#[tokio::test]
async fn keys_that_were_never_fetched_make_requests_fail_with_503() {
    let key = SigningKey::es256("ec-1");
    let idp = Idp::start(jwks(&[&key])).await;
    // Larger than the 1 MiB a JWKS may have.
    idp.serve(json!({ "keys": [], "padding": "x".repeat(2 * 1024 * 1024) }));
    let sc = Inbound::enforcing(authenticator(idp.policy())).await;
    let r = sc.get_with_token("/api", &key.token()).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert_eq!(r.header("x-weft-error"), "jwt-keys-unavailable");
    assert_eq!(sc.app_calls(), 0);
}

#[tokio::test]
async fn a_silent_jwks_endpoint_holds_a_request_no_longer_than_the_fetch_timeout() {
    // Accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let mut jwks = JwksConfig::uri(&url);
    jwks.fetch_timeout = Duration::from_millis(300);
    let provider = ProviderConfig::new("idp", ISSUER, &[AUDIENCE], Some(jwks));
    let sc = Inbound::enforcing(single_provider(provider)).await;
    let key = SigningKey::es256("ec-1");
    let start = std::time::Instant::now();
    let r = sc.get_with_token("/api", &key.token()).await;
    let took = start.elapsed();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert_eq!(r.header("x-weft-error"), "jwt-keys-unavailable");
    // The fetch timeout plus the waiter's 500 ms scheduling margin.
    assert!(took < Duration::from_millis(1500), "held for {took:?}");
    assert_eq!(sc.app_calls(), 0);
    held.abort();
}

#[tokio::test]
async fn a_policy_update_keeps_the_fetched_keys() {
    let key = SigningKey::es256("ec-1");
    let idp = Idp::start(jwks(&[&key])).await;
    let config = idp.policy();
    let auth = authenticator(config.clone());
    check_bearer(&auth, &key.token()).await.unwrap();
    assert_eq!(idp.fetches(), 1);

    let mut changed = config;
    changed.rules.push(public("/health"));
    let updated = auth.update(&changed, Default::default()).unwrap();
    drop(auth);
    check_bearer(&updated, &key.token()).await.unwrap();
    assert_eq!(idp.fetches(), 1, "no refetch for a policy update");
}

//! The CORS policy as a browser meets it, through the layer, on the
//! inbound stage (`ProxyRequest<Snapshot>`; the outbound stage reads the
//! route's policy the same way).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use tower::{Service, ServiceExt};
use weft_proto::config::v1 as pb;

use super::{CorsLayer, CorsPolicy, compile};
use crate::body::ProxyBody;
use crate::error::{ErrorKind, ProxyError};
use crate::model::ProxyResponse;
use crate::nack::Errors;
use crate::table::RoutingTable;
use crate::table::inbound::InboundPolicy;
use crate::table::request::{ProxyRequest, Snapshot, for_tests};

fn exact(origin: &str) -> pb::OriginMatcher {
    pb::OriginMatcher {
        pattern: Some(pb::origin_matcher::Pattern::Exact(origin.into())),
    }
}

fn suffix(origin: &str) -> pb::OriginMatcher {
    pb::OriginMatcher {
        pattern: Some(pb::origin_matcher::Pattern::Suffix(origin.into())),
    }
}

fn any() -> pb::OriginMatcher {
    pb::OriginMatcher {
        pattern: Some(pb::origin_matcher::Pattern::Any(true)),
    }
}

/// The app's policy: its own site and every subdomain of example.com,
/// with credentials, two methods, one request header, one exposed header.
fn app_policy() -> pb::CorsPolicy {
    pb::CorsPolicy {
        allow_origins: vec![exact("https://app.example.com"), suffix(".example.com")],
        allow_methods: vec!["GET".into(), "PUT".into()],
        allow_headers: vec!["X-Api-Key".into()],
        expose_headers: vec!["x-request-id".into()],
        max_age: Some(weft_rules::duration::to_proto(Duration::from_secs(600))),
        allow_credentials: true,
    }
}

fn compiled(p: &pb::CorsPolicy) -> Result<CorsPolicy, Vec<String>> {
    let mut errs = Errors(Vec::new());
    let policy = compile(p, "cors", &mut errs);
    errs.into_result(())
        .map(|()| policy.expect("a policy without errors"))
}

/// What the app answers: 200 with its own (wrong) CORS header, or, for a
/// request the app must never see, a panic.
#[derive(Clone)]
struct App {
    seen: Arc<std::sync::Mutex<Vec<Method>>>,
}

impl Service<ProxyRequest<Snapshot>> for App {
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = std::future::Ready<Result<ProxyResponse, ProxyError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), ProxyError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ProxyRequest<Snapshot>) -> Self::Future {
        self.seen.lock().unwrap().push(req.http.method().clone());
        let mut response = Response::new(ProxyBody::empty());
        response
            .headers_mut()
            .insert("access-control-allow-origin", HeaderValue::from_static("*"));
        std::future::ready(Ok(response))
    }
}

/// Sends `method` with `headers` through the layer to the app, under
/// `policy`; the answer (a refusal as its kind) and the methods the app saw.
async fn send(
    policy: Option<&pb::CorsPolicy>,
    method: Method,
    headers: &[(&'static str, &str)],
) -> (Result<ProxyResponse, ErrorKind>, Vec<Method>) {
    let table = RoutingTable {
        inbound: Arc::new(InboundPolicy {
            cors: policy.map(|p| Arc::new(compiled(p).unwrap())),
            ..InboundPolicy::default()
        }),
        ..RoutingTable::default()
    };
    let mut http = Request::builder().method(method).uri("/users");
    for (name, value) in headers {
        http = http.header(*name, *value);
    }
    let http = http.body(for_tests::empty_http().into_body()).unwrap();
    let app = App {
        seen: Arc::default(),
    };
    let mut service = tower::Layer::layer(&CorsLayer::inbound(), app.clone());
    let answer = service
        .ready()
        .await
        .unwrap()
        .call(for_tests::snapshot(Arc::new(table), http))
        .await
        .map_err(|error| error.kind);
    let seen = app.seen.lock().unwrap().clone();
    (answer, seen)
}

fn header<'r>(response: &'r ProxyResponse, name: &str) -> Option<&'r str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

const PREFLIGHT: [(&str, &str); 3] = [
    ("origin", "https://app.example.com"),
    ("access-control-request-method", "PUT"),
    ("access-control-request-headers", "x-api-key"),
];

#[tokio::test]
async fn an_allowed_preflight_is_answered_at_the_proxy_with_the_policys_lists() {
    let (answer, seen) = send(Some(&app_policy()), Method::OPTIONS, &PREFLIGHT).await;
    let response = answer.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        header(&response, "access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(
        header(&response, "access-control-allow-methods"),
        Some("GET, PUT")
    );
    assert_eq!(
        header(&response, "access-control-allow-headers"),
        Some("x-api-key")
    );
    assert_eq!(header(&response, "access-control-max-age"), Some("600"));
    assert_eq!(header(&response, "vary"), Some("Origin"));
    assert!(seen.is_empty(), "the app saw the preflight: {seen:?}");
}

#[tokio::test]
async fn a_refused_origins_preflight_is_a_403_without_cors_headers_and_never_reaches_the_app() {
    let headers = [
        ("origin", "https://evil.example.org"),
        ("access-control-request-method", "PUT"),
    ];
    let (answer, seen) = send(Some(&app_policy()), Method::OPTIONS, &headers).await;
    assert_eq!(answer.err(), Some(ErrorKind::CorsOriginRefused));
    assert_eq!(ErrorKind::CorsOriginRefused.status(), StatusCode::FORBIDDEN);
    assert!(seen.is_empty(), "the app saw the preflight: {seen:?}");
}

#[tokio::test]
async fn an_allowed_origin_reads_the_answer_with_credentials_and_exposed_headers() {
    let headers = [("origin", "https://shop.example.com")];
    let (answer, seen) = send(Some(&app_policy()), Method::GET, &headers).await;
    let response = answer.unwrap();
    // The app's own `*` is replaced: the proxy owns the CORS headers.
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        Some("https://shop.example.com")
    );
    assert_eq!(
        header(&response, "access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(
        header(&response, "access-control-expose-headers"),
        Some("x-request-id")
    );
    assert_eq!(header(&response, "vary"), Some("Origin"));
    assert_eq!(seen, [Method::GET]);
}

#[tokio::test]
async fn a_refused_origins_request_reaches_the_app_but_its_answer_carries_no_cors_header() {
    // Origins are compared whole: a look-alike suffix is not a subdomain.
    let headers = [("origin", "https://evilexample.com")];
    let (answer, seen) = send(Some(&app_policy()), Method::GET, &headers).await;
    let response = answer.unwrap();
    assert_eq!(header(&response, "access-control-allow-origin"), None);
    assert_eq!(header(&response, "access-control-allow-credentials"), None);
    assert_eq!(header(&response, "vary"), Some("Origin"));
    assert_eq!(seen, [Method::GET]);
}

#[tokio::test]
async fn without_a_policy_or_without_an_origin_nothing_changes() {
    for (policy, headers) in [(None, &PREFLIGHT[..]), (Some(app_policy()), &[][..])] {
        let (answer, seen) = send(policy.as_ref(), Method::OPTIONS, headers).await;
        let response = answer.unwrap();
        assert_eq!(header(&response, "access-control-allow-origin"), Some("*"));
        assert_eq!(header(&response, "vary"), None);
        assert_eq!(seen, [Method::OPTIONS]);
    }
}

#[tokio::test]
async fn any_origin_answers_a_star_and_the_safelisted_methods() {
    let policy = pb::CorsPolicy {
        allow_origins: vec![any()],
        ..pb::CorsPolicy::default()
    };
    let (answer, _) = send(Some(&policy), Method::OPTIONS, &PREFLIGHT).await;
    let response = answer.unwrap();
    assert_eq!(header(&response, "access-control-allow-origin"), Some("*"));
    assert_eq!(
        header(&response, "access-control-allow-methods"),
        Some("GET, HEAD, POST")
    );
    assert_eq!(header(&response, "access-control-allow-credentials"), None);
    assert_eq!(header(&response, "access-control-max-age"), None);
}

#[test]
fn every_bad_value_is_named_for_the_nack() {
    let bad = pb::CorsPolicy {
        allow_origins: vec![
            any(),
            exact("https://app.example.com/"),
            pb::OriginMatcher {
                pattern: Some(pb::origin_matcher::Pattern::Regex("(".into())),
            },
            pb::OriginMatcher { pattern: None },
        ],
        allow_methods: vec!["get".into()],
        allow_headers: vec!["bad header".into()],
        expose_headers: vec!["x(y)".into()],
        max_age: Some(weft_rules::duration::to_proto(Duration::from_secs(
            2 * 24 * 3600,
        ))),
        allow_credentials: true,
    };
    let errors = compiled(&bad).unwrap_err();
    let fields: Vec<&str> = errors
        .iter()
        .map(|e| e.split_once(": ").unwrap().0)
        .collect();
    assert_eq!(
        fields,
        [
            "cors.allow_origins[1]",
            "cors.allow_origins[2].regex",
            "cors.allow_origins[3]",
            "cors.allow_credentials",
            "cors.allow_methods[0]",
            "cors.allow_headers[0]",
            "cors.expose_headers[0]",
            "cors.max_age",
        ],
        "{errors:#?}"
    );
    let none = pb::CorsPolicy::default();
    assert_eq!(
        compiled(&none).unwrap_err(),
        ["cors.allow_origins: no origin: list the origins whose pages may call, or `*` for any"]
    );
}

//! The cache as a client meets it, through the layer on the inbound stage
//! (`ProxyRequest<Snapshot>`; the outbound stage reads the route's policy
//! the same way), in front of an app that counts its requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use tower::{Service, ServiceExt};
use weft_proto::config::v1 as pb;

use super::{CacheLayer, CachePolicy, compile};
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::model::{BoxFuture, ProxyResponse};
use crate::nack::Errors;
use crate::table::RoutingTable;
use crate::table::inbound::InboundPolicy;
use crate::table::request::{ProxyRequest, Snapshot, for_tests};

fn compiled(p: &pb::CachePolicy) -> Result<CachePolicy, Vec<String>> {
    let mut errs = Errors(Vec::new());
    let policy = compile(p, "cache", &mut errs);
    errs.into_result(())
        .map(|()| policy.expect("a policy without errors"))
}

/// What the app answers, how long it takes, and how often it was asked.
#[derive(Clone)]
struct App {
    status: StatusCode,
    headers: Vec<(&'static str, &'static str)>,
    body: Bytes,
    delay: Duration,
    calls: Arc<AtomicUsize>,
}

impl App {
    fn answering(headers: &[(&'static str, &'static str)]) -> Self {
        Self {
            status: StatusCode::OK,
            headers: headers.to_vec(),
            body: Bytes::from_static(b"the users"),
            delay: Duration::ZERO,
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<ProxyRequest<Snapshot>> for App {
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = BoxFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), ProxyError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ProxyRequest<Snapshot>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let app = self.clone();
        Box::pin(async move {
            tokio::time::sleep(app.delay).await;
            let mut response = Response::new(ProxyBody::full(app.body.clone()));
            *response.status_mut() = app.status;
            let headers = response.headers_mut();
            headers.insert("content-length", HeaderValue::from(app.body.len()));
            for (name, value) in &app.headers {
                headers.insert(*name, HeaderValue::from_static(value));
            }
            Ok(response)
        })
    }
}

/// A cache in front of `app`, under `policy`, as one table holds it.
struct Cached {
    table: Arc<RoutingTable>,
    app: App,
}

impl Cached {
    fn new(policy: pb::CachePolicy, app: App) -> Self {
        let table = RoutingTable {
            inbound: Arc::new(InboundPolicy {
                cache: Some(Arc::new(compiled(&policy).unwrap())),
                ..InboundPolicy::default()
            }),
            ..RoutingTable::default()
        };
        Self {
            table: Arc::new(table),
            app,
        }
    }

    /// Sends a GET with `headers` and reads the whole answer (a miss is
    /// stored when its body ends).
    async fn get(&self, headers: &[(&str, &str)]) -> (ProxyResponse, Bytes) {
        self.send(Method::GET, headers).await
    }

    async fn send(&self, method: Method, headers: &[(&str, &str)]) -> (ProxyResponse, Bytes) {
        let mut http = Request::builder()
            .method(method)
            .uri("/users?page=1")
            .header("host", "users");
        for (name, value) in headers {
            http = http.header(*name, *value);
        }
        let http = http.body(for_tests::empty_http().into_body()).unwrap();
        let mut service = tower::Layer::layer(&CacheLayer::inbound(), self.app.clone());
        let response = service
            .ready()
            .await
            .unwrap()
            .call(for_tests::snapshot(self.table.clone(), http))
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (Response::from_parts(parts, ProxyBody::empty()), bytes)
    }
}

fn header<'r>(response: &'r ProxyResponse, name: &str) -> Option<&'r str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

fn defaults() -> pb::CachePolicy {
    pb::CachePolicy::default()
}

#[tokio::test]
async fn a_miss_is_stored_and_the_next_request_is_a_hit_with_its_age() {
    let app = App::answering(&[("cache-control", "max-age=60"), ("age", "5")]);
    let cache = Cached::new(defaults(), app.clone());
    let (first, body) = cache.get(&[]).await;
    assert_eq!(header(&first, "x-cache"), Some("MISS"));
    assert_eq!(body, "the users");
    let (second, body) = cache.get(&[]).await;
    assert_eq!(header(&second, "x-cache"), Some("HIT"));
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(body, "the users");
    // The upstream's own age, plus the time held here.
    assert_eq!(header(&second, "age"), Some("5"));
    assert_eq!(header(&second, "content-length"), Some("9"));
    assert_eq!(app.calls(), 1);
}

#[tokio::test]
async fn answers_the_rules_refuse_are_never_stored() {
    for refused in [
        &[("cache-control", "no-store, max-age=60")][..],
        &[("cache-control", "private, max-age=60")],
        &[("cache-control", "max-age=60"), ("vary", "*")],
        // No freshness of its own and no default_ttl.
        &[],
    ] {
        let app = App::answering(refused);
        let cache = Cached::new(defaults(), app.clone());
        for _ in 0..2 {
            let (response, _) = cache.get(&[]).await;
            assert_eq!(header(&response, "x-cache"), Some("MISS"), "{refused:?}");
        }
        assert_eq!(app.calls(), 2, "{refused:?}");
    }
}

#[tokio::test]
async fn default_ttl_gives_freshness_to_answers_without_their_own() {
    let app = App::answering(&[]);
    let policy = pb::CachePolicy {
        default_ttl: Some(prost_types::Duration {
            seconds: 30,
            nanos: 0,
        }),
        ..defaults()
    };
    let cache = Cached::new(policy, app.clone());
    cache.get(&[]).await;
    let (second, _) = cache.get(&[]).await;
    assert_eq!(header(&second, "x-cache"), Some("HIT"));
    assert_eq!(app.calls(), 1);
}

#[tokio::test]
async fn an_answer_expires_after_its_max_age() {
    let app = App::answering(&[("cache-control", "max-age=1")]);
    let cache = Cached::new(defaults(), app.clone());
    cache.get(&[]).await;
    assert_eq!(header(&cache.get(&[]).await.0, "x-cache"), Some("HIT"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(header(&cache.get(&[]).await.0, "x-cache"), Some("MISS"));
    assert_eq!(app.calls(), 2);
}

#[tokio::test]
async fn the_headers_vary_names_are_part_of_the_key() {
    let app = App::answering(&[("cache-control", "max-age=60"), ("vary", "Accept-Language")]);
    let cache = Cached::new(defaults(), app.clone());
    let english = [("accept-language", "en")];
    let french = [("accept-language", "fr")];
    assert_eq!(
        header(&cache.get(&english).await.0, "x-cache"),
        Some("MISS")
    );
    assert_eq!(header(&cache.get(&english).await.0, "x-cache"), Some("HIT"));
    assert_eq!(header(&cache.get(&french).await.0, "x-cache"), Some("MISS"));
    assert_eq!(header(&cache.get(&[]).await.0, "x-cache"), Some("MISS"));
    assert_eq!(app.calls(), 3);
}

#[tokio::test]
async fn a_request_asking_for_a_fresh_answer_bypasses_and_refreshes() {
    let app = App::answering(&[("cache-control", "max-age=60")]);
    let cache = Cached::new(defaults(), app.clone());
    for asks in ["no-cache", "max-age=0"] {
        let (response, _) = cache.get(&[("cache-control", asks)]).await;
        assert_eq!(header(&response, "x-cache"), Some("BYPASS"), "{asks}");
    }
    // The refresh was stored.
    assert_eq!(header(&cache.get(&[]).await.0, "x-cache"), Some("HIT"));
    let (response, _) = cache.get(&[("cache-control", "no-store")]).await;
    assert_eq!(header(&response, "x-cache"), Some("BYPASS"));
    assert_eq!(app.calls(), 3);
}

#[tokio::test]
async fn an_authorized_request_gets_only_answers_marked_shareable() {
    let private = App::answering(&[("cache-control", "max-age=60")]);
    let cache = Cached::new(defaults(), private.clone());
    cache.get(&[]).await;
    let bearer = [("authorization", "Bearer x")];
    assert_eq!(header(&cache.get(&bearer).await.0, "x-cache"), Some("MISS"));
    let public = App::answering(&[("cache-control", "public, max-age=60")]);
    let cache = Cached::new(defaults(), public.clone());
    cache.get(&bearer).await;
    assert_eq!(header(&cache.get(&bearer).await.0, "x-cache"), Some("HIT"));
    assert_eq!(public.calls(), 1);
}

#[tokio::test]
async fn conditional_requests_are_answered_304_from_a_hit() {
    let app = App::answering(&[
        ("cache-control", "max-age=60"),
        ("etag", "\"v1\""),
        ("last-modified", "Mon, 07 Dec 2026 10:00:00 GMT"),
    ]);
    let cache = Cached::new(defaults(), app.clone());
    cache.get(&[]).await;
    let table: [(&[(&str, &str)], StatusCode); 6] = [
        (&[("if-none-match", "\"v1\"")], StatusCode::NOT_MODIFIED),
        // Weak comparison: either tag may be weak.
        (
            &[("if-none-match", "W/\"v0\", W/\"v1\"")],
            StatusCode::NOT_MODIFIED,
        ),
        (&[("if-none-match", "*")], StatusCode::NOT_MODIFIED),
        (&[("if-none-match", "\"v2\"")], StatusCode::OK),
        (
            &[("if-modified-since", "Mon, 07 Dec 2026 11:00:00 GMT")],
            StatusCode::NOT_MODIFIED,
        ),
        (
            &[("if-modified-since", "Mon, 07 Dec 2026 09:00:00 GMT")],
            StatusCode::OK,
        ),
    ];
    for (conditionals, status) in table {
        let (response, body) = cache.get(conditionals).await;
        assert_eq!(response.status(), status, "{conditionals:?}");
        assert_eq!(header(&response, "x-cache"), Some("HIT"));
        if status == StatusCode::NOT_MODIFIED {
            assert!(body.is_empty());
            assert_eq!(header(&response, "etag"), Some("\"v1\""));
            assert!(header(&response, "age").is_some());
        }
    }
    assert_eq!(app.calls(), 1);
}

#[tokio::test]
async fn a_body_longer_than_the_limit_streams_through_unstored() {
    let app = App::answering(&[("cache-control", "max-age=60")]);
    let policy = pb::CachePolicy {
        max_body_bytes: Some(4),
        ..defaults()
    };
    let cache = Cached::new(policy, app.clone());
    for _ in 0..2 {
        let (response, body) = cache.get(&[]).await;
        assert_eq!(header(&response, "x-cache"), Some("MISS"));
        assert_eq!(body, "the users");
    }
    assert_eq!(app.calls(), 2);
}

#[tokio::test]
async fn a_hundred_concurrent_misses_make_one_upstream_request() {
    let mut app = App::answering(&[("cache-control", "max-age=60")]);
    app.delay = Duration::from_millis(100);
    let cache = Arc::new(Cached::new(defaults(), app.clone()));
    let requests: Vec<_> = (0..100)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get(&[]).await })
        })
        .collect();
    let mut results = Vec::new();
    for request in requests {
        let (response, body) = request.await.unwrap();
        assert_eq!(body, "the users");
        results.push(header(&response, "x-cache").unwrap().to_owned());
    }
    assert_eq!(app.calls(), 1);
    assert_eq!(results.iter().filter(|r| *r == "MISS").count(), 1);
    assert_eq!(results.iter().filter(|r| *r == "HIT").count(), 99);
}

#[test]
fn the_policy_is_checked_field_by_field() {
    let errors = compiled(&pb::CachePolicy {
        max_entries: Some(0),
        max_bytes: Some(100),
        max_body_bytes: Some(0),
        default_ttl: Some(prost_types::Duration {
            seconds: 90_000,
            nanos: 0,
        }),
        methods: vec!["POST".into()],
    })
    .unwrap_err();
    let fields: Vec<&str> = errors
        .iter()
        .map(|e| e.split(':').next().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "cache.max_entries",
            "cache.max_bytes",
            "cache.max_body_bytes",
            "cache.default_ttl",
            "cache.methods[0]",
        ]
    );
}

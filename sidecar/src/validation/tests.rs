//! Validation as a client meets it, through the layer on the inbound
//! stage (`ProxyRequest<Snapshot>`; the outbound stage reads the route's
//! policy the same way): every invalid request answered with a problem
//! document naming each failing field, and never passed on.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use serde_json::{Value, json};
use tower::{Service, ServiceExt};
use weft_proto::config::v1 as pb;

use super::metrics::INBOUND;
use super::{ValidationLayer, ValidationPolicy, compile};
use crate::body::{BufferedBody, ProxyBody, RequestBody, TransformedBody};
use crate::error::ProxyError;
use crate::model::ProxyResponse;
use crate::nack::Errors;
use crate::table::RoutingTable;
use crate::table::inbound::InboundPolicy;
use crate::table::request::{ProxyRequest, Snapshot, for_tests};

fn compiled(p: &pb::ValidationPolicy) -> Result<ValidationPolicy, Vec<String>> {
    let mut errs = Errors(Vec::new());
    let policy = compile(p, "validation", &mut errs);
    errs.into_result(())
        .map(|()| policy.expect("a policy without errors"))
}

fn policy() -> pb::ValidationPolicy {
    pb::ValidationPolicy {
        body_schema: json!({
            "type": "object",
            "required": ["name", "age"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "age": {"type": "integer", "minimum": 0},
                "tags": {"type": "array", "items": {"type": "string"}}
            },
            "additionalProperties": false
        })
        .to_string(),
        query_schema: json!({
            "type": "object",
            "properties": {"page": {"type": "string", "pattern": "^[0-9]+$"}},
            "required": ["page"]
        })
        .to_string(),
        header_schema: json!({
            "type": "object",
            "properties": {"x-tenant": {"type": "string", "enum": ["acme", "globex"]}},
            "required": ["x-tenant"]
        })
        .to_string(),
        max_body_bytes: Some(256),
    }
}

/// The app: counts the requests that reach it and echoes their body.
#[derive(Clone, Default)]
struct App(Arc<AtomicUsize>);

impl Service<ProxyRequest<Snapshot>> for App {
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = crate::model::BoxFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), ProxyError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ProxyRequest<Snapshot>) -> Self::Future {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let body = req.http.into_body().collect().await.unwrap().to_bytes();
            Ok(Response::new(ProxyBody::full(body)))
        })
    }
}

struct Sent {
    status: StatusCode,
    content_type: String,
    body: Bytes,
    reached_app: bool,
}

/// Sends a request through the layer under `policy` to a counting app.
async fn send(
    policy: &pb::ValidationPolicy,
    uri: &str,
    headers: &[(&str, &str)],
    body: RequestBody,
) -> Sent {
    let table = RoutingTable {
        inbound: Arc::new(InboundPolicy {
            validation: Some(Arc::new(compiled(policy).unwrap())),
            ..InboundPolicy::default()
        }),
        ..RoutingTable::default()
    };
    let mut http = Request::builder().method("POST").uri(uri);
    for (name, value) in headers {
        http = http.header(*name, *value);
    }
    let http = http.body(body).unwrap();
    let app = App::default();
    let mut service = tower::Layer::layer(&ValidationLayer::inbound(), app.clone());
    let answer = service
        .ready()
        .await
        .unwrap()
        .call(for_tests::snapshot(Arc::new(table), http))
        .await;
    let response = answer.unwrap_or_else(|error| error.to_response());
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Sent {
        status,
        content_type,
        body,
        reached_app: app.0.load(Ordering::SeqCst) > 0,
    }
}

fn buffered(body: &str) -> RequestBody {
    RequestBody::Buffered(BufferedBody {
        data: Some(Bytes::from(body.to_owned())),
        trailers: None,
    })
}

/// A body as it streams from the caller (not yet in memory).
fn streamed(body: Vec<u8>) -> RequestBody {
    let body = Full::new(Bytes::from(body)).map_err(|never| match never {});
    RequestBody::Transformed(TransformedBody::new(body.boxed_unsync()))
}

const JSON: (&str, &str) = ("content-type", "application/json");
const TENANT: (&str, &str) = ("x-tenant", "acme");
const GOOD: &str = r#"{"name":"ada","age":36,"tags":["x"]}"#;

/// The failing fields of a problem document, as `(in, field)`.
fn fields(document: &Value) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = document["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert!(!e["reason"].as_str().unwrap().is_empty(), "{e}");
            (
                e["in"].as_str().unwrap().to_owned(),
                e["field"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    fields.sort();
    fields
}

/// A request of the table and the fields its answer must name.
type Case<'a> = (
    &'a str,
    &'a [(&'a str, &'a str)],
    &'a str,
    &'a [(&'a str, &'a str)],
);

#[tokio::test]
async fn every_failing_field_is_named_and_the_app_never_sees_the_request() {
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        let mut list: Vec<(String, String)> = list
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        list.sort();
        list
    };
    // (uri, headers, body, the failing fields as (in, field))
    let table: &[Case] = &[
        // A body missing a required field, with a wrong type and an
        // unknown property: all three named.
        (
            "/users?page=1",
            &[JSON, TENANT],
            r#"{"age":"old","extra":1}"#,
            &[("body", "/age"), ("body", "/extra"), ("body", "/name")],
        ),
        (
            "/users?page=1",
            &[JSON, TENANT],
            r#"{"name":"","age":-1,"tags":[1]}"#,
            &[("body", "/age"), ("body", "/name"), ("body", "/tags/0")],
        ),
        // Query and header failures with a valid body.
        (
            "/users?page=abc",
            &[JSON, TENANT],
            GOOD,
            &[("query", "page")],
        ),
        (
            "/users",
            &[JSON, ("x-tenant", "initech")],
            GOOD,
            &[("header", "x-tenant"), ("query", "page")],
        ),
        // Everything at once: each place listed.
        (
            "/users?page=x&page=1",
            &[JSON],
            r#"{"name":"ada"}"#,
            &[("body", "/age"), ("header", "x-tenant"), ("query", "page")],
        ),
    ];
    for (uri, headers, body, want) in table {
        let sent = send(&policy(), uri, headers, buffered(body)).await;
        assert_eq!(sent.status, StatusCode::BAD_REQUEST, "{uri} {body}");
        assert_eq!(sent.content_type, "application/problem+json");
        assert!(!sent.reached_app, "{uri} {body}");
        let document: Value = serde_json::from_slice(&sent.body).unwrap();
        assert_eq!(document["status"], 400);
        assert_eq!(document["title"], "Request validation failed");
        assert!(document["type"].is_string() && document["detail"].is_string());
        assert_eq!(fields(&document), pairs(want), "{uri} {body}: {document}");
    }
}

#[tokio::test]
async fn a_valid_request_goes_on_with_its_body() {
    let (valid_before, _) = INBOUND.totals();
    let sent = send(&policy(), "/users?page=2", &[JSON, TENANT], buffered(GOOD)).await;
    assert_eq!(sent.status, StatusCode::OK);
    assert!(sent.reached_app);
    assert_eq!(&sent.body[..], GOOD.as_bytes());
    // Streamed from the caller: buffered, judged, and sent on whole.
    let sent = send(
        &policy(),
        "/users?page=2",
        &[("content-type", "application/merge-patch+json"), TENANT],
        streamed(GOOD.as_bytes().to_vec()),
    )
    .await;
    assert_eq!(sent.status, StatusCode::OK);
    assert_eq!(&sent.body[..], GOOD.as_bytes());
    assert!(INBOUND.totals().0 >= valid_before + 2);
}

#[tokio::test]
async fn bodies_too_large_not_json_or_of_another_type_are_refused() {
    let cases: [(&str, RequestBody, StatusCode); 4] = [
        (
            "application/json",
            streamed(vec![b' '; 300]),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "application/json",
            buffered(&" ".repeat(300)),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "application/json",
            buffered("{nope"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "text/plain",
            buffered(GOOD),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
    ];
    for (content_type, body, want) in cases {
        let headers = [("content-type", content_type), TENANT];
        let sent = send(&policy(), "/users?page=1", &headers, body).await;
        assert_eq!(sent.status, want, "{content_type}");
        assert!(!sent.reached_app);
        assert_eq!(sent.content_type, "application/problem+json");
        let document: Value = serde_json::from_slice(&sent.body).unwrap();
        assert_eq!(document["status"], want.as_u16());
    }
}

#[tokio::test]
async fn without_a_body_schema_the_body_streams_untouched() {
    let policy = pb::ValidationPolicy {
        body_schema: String::new(),
        ..policy()
    };
    let sent = send(&policy, "/u?page=1", &[TENANT], streamed(vec![b'x'; 1000])).await;
    assert_eq!(sent.status, StatusCode::OK);
    assert_eq!(sent.body.len(), 1000);
}

#[test]
fn a_policy_that_does_not_compile_is_refused_at_each_field() {
    let bad = pb::ValidationPolicy {
        body_schema: r#"{"type": "objekt"}"#.to_owned(),
        query_schema: "{not json".to_owned(),
        header_schema: r#"{"required": ["X-Tenant"]}"#.to_owned(),
        max_body_bytes: Some(0),
    };
    let errors = compiled(&bad).unwrap_err().join("\n");
    for field in [
        "validation.body_schema",
        "validation.query_schema",
        "validation.header_schema",
        "validation.max_body_bytes",
    ] {
        assert!(errors.contains(field), "{field} in {errors}");
    }
    assert!(compiled(&pb::ValidationPolicy::default()).is_ok());
}

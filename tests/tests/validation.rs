//! Request validation as a client meets it: `client` calls `users` through
//! its sidecar, and the route's validation policy judges each request
//! against its JSON Schemas. Every invalid request is answered 400
//! `application/problem+json` naming each failing field, and the app (in
//! this test's process, registered and meshed like any instance) never
//! sees it: its request count does not move. A valid one passes whole.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::ensure;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};
use weft_e2e::harness::mesh::SETUP_TIMEOUT;
use weft_e2e::{Mesh, eventually, run};

/// Requests the app received.
static SEEN: AtomicUsize = AtomicUsize::new(0);

/// The app: counts each request and echoes its body.
async fn app(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    SEEN.fetch_add(1, Ordering::SeqCst);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok(Response::new(Full::new(body)))
}

/// A request of the table and what its answer must say.
type Case<'a> = (
    &'a str,
    Option<&'a str>,
    &'a str,
    String,
    u16,
    Vec<(&'a str, &'a str)>,
);

const GOOD: &str = r#"{"name":"ada","age":36}"#;

#[test]
fn invalid_requests_get_a_problem_document_naming_each_field_and_never_reach_the_app() {
    run(|ctx| async move {
        let mesh = Mesh::start(&ctx).await?;
        let app_port = weft_e2e::harness::app::serve_in_test(app).await?;
        let (_users_sidecar, _registration) =
            mesh.sidecar_for("users", "users-1", app_port, &[]).await?;
        let client = mesh.client().await?;
        mesh.put_document(
            "routes/users",
            &json!({ "routes": [ { "destination": "users", "validation": {
                "body": { "type": "object", "required": ["name", "age"],
                          "properties": { "name": { "type": "string", "minLength": 1 },
                                          "age": { "type": "integer", "minimum": 0 } } },
                "query": { "type": "object", "required": ["page"],
                           "properties": { "page": { "pattern": "^[0-9]+$" } } },
                "headers": { "type": "object", "required": ["x-tenant"],
                             "properties": { "x-tenant": { "enum": ["acme"] } } },
                "max_body_bytes": 1024 } } ] }),
        )
        .await?;
        let outbound = client.sidecar.outbound;
        let post = |path: &str, tenant: Option<&str>, content_type: &str, body: String| {
            let mut request = Request::builder()
                .method("POST")
                .uri(format!("http://{outbound}{path}"))
                .header("host", "users")
                .header("content-type", content_type);
            if let Some(tenant) = tenant {
                request = request.header("x-tenant", tenant);
            }
            request
                .body(Full::new(Bytes::from(body)))
                .expect("a request")
        };
        eventually(SETUP_TIMEOUT, "the route validates", || async {
            let reply = mesh
                .http
                .send(post("/u", Some("acme"), "application/json", GOOD.into()))
                .await?;
            ensure!(reply.status == 400, "{} {:?}", reply.status, reply.text());
            Ok(())
        })
        .await?;

        let seen_before = SEEN.load(Ordering::SeqCst);
        let json = "application/json";
        // (path, x-tenant, content type, body, status, the fields named)
        let cases: Vec<Case> = vec![
            (
                "/u?page=1",
                Some("acme"),
                json,
                r#"{"age":-1}"#.into(),
                400,
                vec![("body", "/age"), ("body", "/name")],
            ),
            (
                "/u?page=1",
                Some("acme"),
                json,
                r#"{"name":"","age":"x"}"#.into(),
                400,
                vec![("body", "/age"), ("body", "/name")],
            ),
            (
                "/u?page=one",
                None,
                json,
                GOOD.into(),
                400,
                vec![("header", "x-tenant"), ("query", "page")],
            ),
            (
                "/u",
                Some("initech"),
                json,
                r#"{"name":"ada"}"#.into(),
                400,
                vec![("body", "/age"), ("header", "x-tenant"), ("query", "page")],
            ),
            ("/u?page=1", Some("acme"), json, "{nope".into(), 400, vec![]),
            (
                "/u?page=1",
                Some("acme"),
                "text/plain",
                GOOD.into(),
                415,
                vec![],
            ),
            (
                "/u?page=1",
                Some("acme"),
                json,
                " ".repeat(2000),
                413,
                vec![],
            ),
        ];
        for (path, tenant, content_type, body, status, want) in cases {
            let label = format!(
                "{path} {tenant:?} {content_type} {}",
                &body[..body.len().min(40)]
            );
            let reply = mesh
                .http
                .send(post(path, tenant, content_type, body))
                .await?;
            ensure!(
                reply.status == status,
                "{label}: {} {:?}",
                reply.status,
                reply.text()
            );
            ensure!(
                reply
                    .headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    == Some("application/problem+json")
                    && reply
                        .headers
                        .get("x-weft-error")
                        .and_then(|v| v.to_str().ok())
                        == Some("validation-failed"),
                "{label}: {:?}",
                reply.headers
            );
            let document: Value = reply.json()?;
            ensure!(document["status"] == status, "{label}: {document}");
            let mut fields: Vec<(String, String)> = document["errors"]
                .as_array()
                .map(|errors| {
                    errors
                        .iter()
                        .map(|e| {
                            (
                                e["in"].as_str().unwrap_or("").to_owned(),
                                e["field"].as_str().unwrap_or("").to_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            fields.sort();
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect();
            ensure!(fields == want, "{label}: {document}");
        }
        ensure!(
            SEEN.load(Ordering::SeqCst) == seen_before,
            "the app saw an invalid request"
        );

        // A valid request reaches the app with its body whole.
        let reply = mesh
            .http
            .send(post("/u?page=2", Some("acme"), json, GOOD.into()))
            .await?;
        ensure!(
            reply.status == 200,
            "valid: {} {:?}",
            reply.status,
            reply.text()
        );
        ensure!(reply.body == GOOD.as_bytes(), "valid: {:?}", reply.text());
        ensure!(SEEN.load(Ordering::SeqCst) == seen_before + 1);

        let metrics = mesh
            .http
            .get(&format!("http://{}/metrics", client.sidecar.admin))
            .await?
            .text();
        for line in [
            "weft_validation_requests_total{direction=\"outbound\",result=\"valid\"} 1",
            "weft_validation_requests_total{direction=\"outbound\",result=\"invalid\"}",
        ] {
            ensure!(metrics.contains(line), "no {line} in /metrics:\n{metrics}");
        }
        Ok(())
    });
}

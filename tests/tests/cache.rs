//! The response cache as a client meets it: `client` calls `users` through
//! its sidecar, and the route's cache policy answers what it holds. The
//! app (in this test's process, registered and meshed like any instance)
//! counts the requests it sees per path, so a hit is one it never saw.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use anyhow::ensure;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;
use weft_e2e::harness::mesh::SETUP_TIMEOUT;
use weft_e2e::{Mesh, eventually, run};

/// Requests the app saw, by path.
static SEEN: LazyLock<Mutex<HashMap<String, usize>>> = LazyLock::new(Default::default);

fn seen(path: &str) -> usize {
    SEEN.lock().unwrap().get(path).copied().unwrap_or(0)
}

/// The app: `/fresh` (fresh a minute, with an ETag), `/no-store`, `/short`
/// (fresh a second), `/slow` (fresh a minute, made in 300 ms), `/ready`.
async fn app(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    *SEEN.lock().unwrap().entry(path.clone()).or_default() += 1;
    let cache_control = match path.as_str() {
        "/fresh" | "/slow" | "/ready" => "max-age=60",
        "/short" => "max-age=1",
        _ => "no-store",
    };
    if path == "/slow" {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let body = Bytes::from(format!("the answer to {path}"));
    let response = Response::builder()
        .header("cache-control", cache_control)
        .header("etag", "\"v1\"")
        .header("content-type", "text/plain")
        .body(Full::new(body))
        .expect("a response");
    Ok(response)
}

#[test]
fn fresh_answers_are_served_from_the_cache_and_concurrent_misses_make_one_request() {
    run(|ctx| async move {
        let mesh = Mesh::start(&ctx).await?;
        let app_port = weft_e2e::harness::app::serve_in_test(app).await?;
        let (_users_sidecar, _registration) =
            mesh.sidecar_for("users", "users-1", app_port, &[]).await?;
        let client = mesh.client().await?;
        mesh.put_document(
            "routes/users",
            &json!({ "routes": [ { "destination": "users",
                "cache": { "max_entries": 100, "max_bytes": "1MiB" } } ] }),
        )
        .await?;
        let outbound = client.sidecar.outbound;
        let get = |path: &str, headers: &[(&str, &str)]| {
            let mut request = Request::builder()
                .uri(format!("http://{outbound}{path}"))
                .header("host", "users");
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            request.body(Full::new(Bytes::new())).expect("a request")
        };
        eventually(SETUP_TIMEOUT, "the route caches", || async {
            let reply = mesh.http.send(get("/ready", &[])).await?;
            ensure!(
                reply.header("x-cache").is_some(),
                "{} {:?}",
                reply.status,
                reply.headers
            );
            Ok(())
        })
        .await?;

        // A miss, then a hit with its Age, the app asked once.
        let first = mesh.http.send(get("/fresh", &[])).await?;
        ensure!(
            first.header("x-cache") == Some("MISS"),
            "{:?}",
            first.headers
        );
        let second = mesh.http.send(get("/fresh", &[])).await?;
        ensure!(
            second.header("x-cache") == Some("HIT")
                && second.header("age").is_some()
                && second.body == "the answer to /fresh",
            "{:?}",
            second.headers
        );
        ensure!(
            seen("/fresh") == 1,
            "the app saw /fresh {} times",
            seen("/fresh")
        );

        // If-None-Match with the stored ETag: 304 from the cache.
        let revalidated = mesh
            .http
            .send(get("/fresh", &[("if-none-match", "W/\"v1\"")]))
            .await?;
        ensure!(
            revalidated.status == 304 && revalidated.header("x-cache") == Some("HIT"),
            "{} {:?}",
            revalidated.status,
            revalidated.headers
        );
        ensure!(seen("/fresh") == 1, "the 304 reached the app");

        // no-store is never stored.
        for _ in 0..2 {
            let reply = mesh.http.send(get("/no-store", &[])).await?;
            ensure!(
                reply.header("x-cache") == Some("MISS"),
                "{:?}",
                reply.headers
            );
        }
        ensure!(seen("/no-store") == 2, "no-store was served from the cache");

        // max-age expires.
        mesh.http.send(get("/short", &[])).await?;
        let held = mesh.http.send(get("/short", &[])).await?;
        ensure!(held.header("x-cache") == Some("HIT"), "{:?}", held.headers);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let expired = mesh.http.send(get("/short", &[])).await?;
        ensure!(
            expired.header("x-cache") == Some("MISS"),
            "{:?}",
            expired.headers
        );
        ensure!(
            seen("/short") == 2,
            "the app saw /short {} times",
            seen("/short")
        );

        // A hundred concurrent misses: the app sees one request.
        let replies =
            futures_util::future::join_all((0..100).map(|_| mesh.http.send(get("/slow", &[]))))
                .await;
        for reply in replies {
            let reply = reply?;
            ensure!(
                reply.status == 200 && reply.body == "the answer to /slow",
                "{} {:?}",
                reply.status,
                reply.headers
            );
        }
        ensure!(
            seen("/slow") == 1,
            "the app saw /slow {} times",
            seen("/slow")
        );

        let metrics = mesh
            .http
            .get(&format!("http://{}/metrics", client.sidecar.admin))
            .await?
            .text();
        for line in [
            "weft_cache_lookups_total{direction=\"outbound\",result=\"hit\"}",
            "weft_cache_lookups_total{direction=\"outbound\",result=\"miss\"}",
            "weft_cache_entries ",
            "weft_cache_bytes ",
        ] {
            ensure!(metrics.contains(line), "no {line} in /metrics:\n{metrics}");
        }
        Ok(())
    });
}

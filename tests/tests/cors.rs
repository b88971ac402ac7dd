//! CORS as a browser meets it: a page served from one origin calls `users`
//! through a sidecar at another origin, in headless Chromium. The route's
//! CORS policy allows the page's origin (with credentials); a page from
//! any other origin is blocked by the browser itself; the preflights are
//! answered by the sidecar and never reach the app.

use anyhow::ensure;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::json;
use weft_e2e::harness::browser;
use weft_e2e::harness::mesh::SETUP_TIMEOUT;
use weft_e2e::{Mesh, eventually, run};

/// A header of `reply`, as text.

#[test]
fn a_browser_reads_answers_only_from_the_allowed_origin_and_preflights_never_reach_the_app() {
    run(|ctx| async move {
        browser::chromium_binary()?;
        let mesh = Mesh::start(&ctx).await?;
        let (users, client) = mesh.users_and_client().await?;
        let api = format!("http://127.0.0.1:{}", client.sidecar.outbound.port());
        let page_server =
            browser::serve_page(browser::cross_origin_probe(&format!("{api}/cors-check"))).await?;
        // The same page from two origins: `localhost` is allowed,
        // `127.0.0.1` (another origin: the host differs) is not.
        let allowed_page = format!("http://localhost:{}/", page_server.port());
        let refused_page = format!("http://127.0.0.1:{}/", page_server.port());
        let allowed_origin = allowed_page.trim_end_matches('/').to_string();

        // The browser names the sidecar by IP: an alias routes it to users.
        mesh.put_document(
            "routes/users",
            // The route takes PUTs only: their preflights (OPTIONS asking
            // about a PUT) go to it too, and its policy answers them.
            &json!({ "aliases": ["127.0.0.1"], "routes": [ { "destination": "users",
                "match": { "methods": ["PUT"] },
                "response_headers": { "set": { "x-served-by": "mesh" } },
                "cors": { "allow_origins": [allowed_origin],
                          "allow_methods": ["GET", "PUT"],
                          "allow_headers": ["x-api-key", "content-type"],
                          "expose_headers": ["x-served-by"],
                          "max_age": "10m", "allow_credentials": true } } ] }),
        )
        .await?;
        // Ready when the sidecar answers a preflight itself.
        let preflight = || {
            http::Request::builder()
                .method("OPTIONS")
                .uri(format!("{api}/cors-check"))
                .header("origin", &allowed_origin)
                .header("access-control-request-method", "PUT")
                .body(Full::new(Bytes::new()))
                .expect("a preflight")
        };
        eventually(SETUP_TIMEOUT, "the sidecar answers preflights", || async {
            let reply = mesh.http.send(preflight()).await?;
            ensure!(reply.status == 204, "preflight answered {}", reply.status);
            Ok(())
        })
        .await?;
        let before = users.app.requests_seen(&mesh.http).await?;

        let profile = ctx.log_dir.join("chromium-profile");
        let allowed = browser::probe_outcome(&allowed_page, &profile, &[]).await?;
        ensure!(
            // `x-served-by` is readable only because the policy exposes it.
            allowed == "status=200 service=users served-by=mesh",
            "the allowed origin's page saw: {allowed}"
        );
        let refused = browser::probe_outcome(&refused_page, &profile, &[]).await?;
        ensure!(
            refused == "blocked: TypeError",
            "the refused origin's page saw: {refused}"
        );

        // The app saw the allowed page's PUT only: no preflight (the
        // browser sent two, one per page), no call from the refused page.
        let seen = users.app.requests_seen(&mesh.http).await? - before;
        ensure!(seen == 1, "the app saw {seen} requests, not the one PUT");
        let metrics = mesh
            .http
            .get(&format!("http://{}/metrics", client.sidecar.admin))
            .await?
            .text();
        for line in [
            "weft_cors_origins_total{direction=\"outbound\",origin=\"valid\"}",
            "weft_cors_origins_total{direction=\"outbound\",origin=\"invalid\"}",
        ] {
            ensure!(metrics.contains(line), "no {line} in /metrics:\n{metrics}");
        }
        Ok(())
    });
}

#[test]
fn a_services_own_cors_policy_answers_preflights_on_its_sidecar_before_jwt() {
    run(|ctx| async move {
        let mesh = Mesh::start(&ctx).await?;
        let (users, client) = mesh.users_and_client().await?;
        // The service's default, with a JWT policy that would refuse any
        // request without a token: a preflight carries none.
        mesh.put_document(
            "policies/users",
            &json!({ "cors": { "allow_origins": ["https://app.example.com"],
                               "allow_methods": ["DELETE"] },
                     "jwt": { "providers": [ { "name": "ci", "issuer": "ci",
                              "audiences": ["users"], "shared_secret": "a".repeat(44) } ] } }),
        )
        .await?;
        let preflight = |origin: &'static str| {
            http::Request::builder()
                .method("OPTIONS")
                .uri(format!("http://{}/items/1", client.sidecar.outbound))
                .header("host", "users")
                .header("origin", origin)
                .header("access-control-request-method", "DELETE")
                .body(Full::new(Bytes::new()))
                .expect("a preflight")
        };
        // Ready when users' sidecar answers a preflight itself (until the
        // policy arrives, the app answers them).
        eventually(
            SETUP_TIMEOUT,
            "users' sidecar answers preflights",
            || async {
                let reply = mesh.http.send(preflight("https://app.example.com")).await?;
                ensure!(reply.status == 204, "preflight answered {}", reply.status);
                Ok(())
            },
        )
        .await?;
        let before = users.app.requests_seen(&mesh.http).await?;
        let allowed = mesh.http.send(preflight("https://app.example.com")).await?;
        ensure!(
            allowed.status == 204
                && allowed.header("access-control-allow-origin") == Some("https://app.example.com")
                && allowed.header("access-control-allow-methods") == Some("DELETE"),
            "the preflight's answer: {:?}",
            allowed.headers
        );
        let refused = mesh
            .http
            .send(preflight("https://elsewhere.example"))
            .await?;
        ensure!(
            refused.status == 403
                && refused.weft_error() == Some("cors-origin-refused")
                && refused.header("access-control-allow-origin").is_none(),
            "a refused origin's preflight: {} {:?}",
            refused.status,
            refused.headers
        );
        // An actual request still needs its token: CORS let only the
        // preflight past JWT.
        let call = mesh
            .http
            .send(
                http::Request::builder()
                    .method("DELETE")
                    .uri(format!("http://{}/items/1", client.sidecar.outbound))
                    .header("host", "users")
                    .header("origin", "https://app.example.com")
                    .body(Full::new(Bytes::new()))?,
            )
            .await?;
        ensure!(
            call.status == 401
                && call.header("access-control-allow-origin") == Some("https://app.example.com"),
            "a call without a token: {} {:?}",
            call.status,
            call.headers
        );
        let seen = users.app.requests_seen(&mesh.http).await? - before;
        ensure!(seen == 0, "the app saw {seen} requests");
        Ok(())
    });
}

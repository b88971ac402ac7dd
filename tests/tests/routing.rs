//! Routing through a sidecar's outbound listener: by host, by path (prefix
//! with rewrite, exact), by header, and a weighted split; and the errors a
//! user can act on. Upstreams are plain Consul instances (no sidecar), so a
//! request goes app -> outbound sidecar -> upstream app.

use anyhow::ensure;
use weft_e2e::harness::fixtures::{API_SERVICES, api_routes};
use weft_e2e::harness::mesh::SETUP_TIMEOUT;
use weft_e2e::{Call, Mesh, MeshedInstance, eventually, run, tally, wait_for_route};

/// A mesh with one instance of each service the route document
/// names (`<svc>-1`), that document served for host `api`, and a client.
async fn api_mesh(
    ctx: &weft_e2e::TestCtx,
) -> anyhow::Result<(Mesh, MeshedInstance, Vec<weft_e2e::harness::app::App>)> {
    let mesh = Mesh::start(ctx).await?;
    let mut apps = Vec::new();
    for service in API_SERVICES {
        apps.push(
            mesh.plain_instance(service, &format!("{service}-1"))
                .await?,
        );
    }
    mesh.put_document("routes/api", &api_routes()).await?;
    let client = mesh.client().await?;
    wait_for_route(
        &mesh.http,
        client.sidecar.outbound,
        Call::get("api", "/health"),
        "the api route table reaches the client's sidecar",
        |echo| echo.service == "users",
    )
    .await?;
    Ok((mesh, client, apps))
}

#[test]
fn a_host_without_a_route_document_goes_to_the_service_of_that_name() {
    run(|ctx| async move {
        let mesh = Mesh::start(&ctx).await?;
        let _users = mesh.plain_instance("users", "users-1").await?;
        let _orders = mesh.plain_instance("orders", "orders-1").await?;
        let client = mesh.client().await?;
        let outbound = client.sidecar.outbound;

        wait_for_route(
            &mesh.http,
            outbound,
            Call::get("users", "/"),
            "users is routed",
            |e| e.instance == "users-1",
        )
        .await?;
        // Every spelling of the authority reaches the same service.
        for host in ["users", "users:80", "users.weft", "USERS"] {
            let echo = mesh.http.call_get(outbound, host, "/who").await?.echo()?;
            ensure!(
                echo.instance == "users-1" && echo.path == "/who",
                "host {host}: {echo:?}"
            );
        }
        let echo = mesh.http.call_get(outbound, "orders", "/").await?.echo()?;
        ensure!(echo.instance == "orders-1", "host orders: {echo:?}");

        // A name nobody serves is the caller's mistake: 404, and it says why.
        let reply = mesh.http.call_get(outbound, "nobody", "/").await?;
        ensure!(
            reply.status == 404 && reply.weft_error() == Some("no-route"),
            "unknown host: {} x-weft-error={:?} {}",
            reply.status,
            reply.weft_error(),
            reply.text()
        );
        Ok(())
    });
}

#[test]
fn a_path_prefix_route_rewrites_the_prefix() {
    run(|ctx| async move {
        let (mesh, client, _apps) = api_mesh(&ctx).await?;
        let reply = mesh
            .http
            .call_get(client.sidecar.outbound, "api", "/api/v1/users/42?full=1")
            .await?;
        let echo = reply.echo()?;
        ensure!(echo.service == "users", "went to {}", echo.service);
        ensure!(
            echo.path == "/42" && echo.query == "full=1",
            "path {} query {}",
            echo.path,
            echo.query
        );
        Ok(())
    });
}

#[test]
fn an_exact_path_route_matches_only_that_path() {
    run(|ctx| async move {
        let (mesh, client, _apps) = api_mesh(&ctx).await?;
        let outbound = client.sidecar.outbound;
        let echo = mesh
            .http
            .call_get(outbound, "api", "/health")
            .await?
            .echo()?;
        ensure!(
            echo.service == "users" && echo.path == "/health",
            "{echo:?}"
        );
        // Not /health: falls through to the catch-all split (orders or orders-v2).
        let echo = mesh
            .http
            .call_get(outbound, "api", "/health/deep")
            .await?
            .echo()?;
        ensure!(
            echo.service.starts_with("orders"),
            "/health/deep went to {}",
            echo.service
        );
        Ok(())
    });
}

#[test]
fn a_header_match_selects_the_v2_service() {
    run(|ctx| async move {
        let (mesh, client, _apps) = api_mesh(&ctx).await?;
        let outbound = client.sidecar.outbound;
        let v2 = Call::get("api", "/api/v1/users/7").headers(&[("x-api-version", "v2")]);
        let echo = mesh.http.call(outbound, v2).await?.echo()?;
        ensure!(echo.service == "users-v2" && echo.path == "/7", "{echo:?}");
        // The header reaches the app untouched.
        ensure!(
            echo.header("x-api-version") == Some("v2"),
            "{:?}",
            echo.headers
        );

        let v1 = Call::get("api", "/api/v1/users/7").headers(&[("x-api-version", "v1")]);
        let echo = mesh.http.call(outbound, v1).await?.echo()?;
        ensure!(
            echo.service == "users",
            "x-api-version: v1 went to {}",
            echo.service
        );
        Ok(())
    });
}

/// 2,000 requests over a 90/10 split. The count of the 10 % side is
/// binomial: mean 200, sd = sqrt(2000 * 0.1 * 0.9) = 13.4. The tolerance is
/// 5 sd (+-67, so 133..=267): a correct split fails it with probability
/// below 1e-6, while 80/20 (400) or 95/5 (100) fail it for sure.
#[test]
fn a_90_10_split_holds_within_statistical_tolerance_over_2000_requests() {
    run(|ctx| async move {
        let (mesh, client, _apps) = api_mesh(&ctx).await?;
        let counts = tally(
            &mesh.http,
            client.sidecar.outbound,
            Call::get("api", "/orders/1"),
            2_000,
        )
        .await?;
        let v1 = counts.get("orders-1").copied().unwrap_or_default();
        let v2 = counts.get("orders-v2-1").copied().unwrap_or_default();
        ctx.record(
            "90/10 split over 2000 requests",
            &format!("orders {v1}, orders-v2 {v2} (expected 1800/200, tolerance +-67)"),
        );
        ensure!(v1 + v2 == 2_000, "requests went elsewhere: {counts:?}");
        ensure!(
            (133..=267).contains(&v2),
            "orders-v2 got {v2} of 2000, outside 200 +- 67: {counts:?}"
        );
        Ok(())
    });
}

#[test]
fn requests_carry_forwarding_headers_and_a_request_id() {
    run(|ctx| async move {
        let mesh = Mesh::start(&ctx).await?;
        let _users = mesh.plain_instance("users", "users-1").await?;
        let client = mesh.client().await?;
        let echo = wait_for_route(
            &mesh.http,
            client.sidecar.outbound,
            Call::get("users", "/"),
            "users is routed",
            |_| true,
        )
        .await?;
        ensure!(
            echo.header("x-forwarded-for")
                .is_some_and(|v| v.contains("127.0.0.1")),
            "{:?}",
            echo.headers
        );
        ensure!(
            echo.header("x-forwarded-proto") == Some("http"),
            "{:?}",
            echo.headers
        );
        ensure!(
            echo.header("x-request-id").is_some_and(|v| !v.is_empty()),
            "{:?}",
            echo.headers
        );
        // A caller's own request id is kept.
        let call = Call::get("users", "/").headers(&[("x-request-id", "abc-123")]);
        let echo = mesh
            .http
            .call(client.sidecar.outbound, call)
            .await?
            .echo()?;
        ensure!(
            echo.header("x-request-id") == Some("abc-123"),
            "{:?}",
            echo.headers
        );
        Ok(())
    });
}

#[test]
fn errors_name_their_cause() {
    run(|ctx| async move {
        let mesh = Mesh::start(&ctx).await?;
        let _slow = mesh.plain_instance("slow", "slow-1").await?;
        let mut dead = mesh.plain_instance("dead", "dead-1").await?;
        let sick = mesh.plain_instance("sick", "sick-1").await?;
        mesh.put_document(
            "destinations/slow",
            &serde_json::json!({ "request_timeout": "300ms" }),
        )
        .await?;
        let client = mesh.client().await?;
        let outbound = client.sidecar.outbound;
        for host in ["slow", "dead", "sick"] {
            wait_for_route(
                &mesh.http,
                outbound,
                Call::get(host, "/"),
                &format!("{host} is routed"),
                |_| true,
            )
            .await?;
        }

        // The only instance of `sick` turns critical: nothing to send to.
        mesh.consul
            .set_check(&weft_e2e::harness::consul::check_id("sick-1"), false)
            .await?;
        eventually(SETUP_TIMEOUT, "sick has no healthy endpoint", || async {
            let reply = mesh.http.call_get(outbound, "sick", "/").await?;
            ensure!(
                reply.status == 503 && reply.weft_error() == Some("no-healthy-endpoint"),
                "{} {:?}",
                reply.status,
                reply.weft_error()
            );
            Ok(())
        })
        .await?;
        drop(sick);

        // The only instance of `dead` is registered and healthy, but gone.
        dead.kill();
        let reply = mesh.http.call_get(outbound, "dead", "/").await?;
        ensure!(
            reply.status == 503 && reply.weft_error() == Some("connect-failed"),
            "killed app: {} {:?} {}",
            reply.status,
            reply.weft_error(),
            reply.text()
        );

        // Slower than the destination's 300 ms request timeout.
        let reply = mesh.http.call_get(outbound, "slow", "/delay/2000").await?;
        ensure!(
            reply.status == 504 && reply.weft_error() == Some("timeout"),
            "slow app: {} {:?} {}",
            reply.status,
            reply.weft_error(),
            reply.text()
        );
        Ok(())
    });
}

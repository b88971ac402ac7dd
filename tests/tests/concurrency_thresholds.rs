//! The concurrency thresholds of `circuit_breakers` beside
//! `connection_pool.max_requests` (whose test is in `circuit_breakers.rs`),
//! caller side, over real processes: Consul, the agent, a client sidecar
//! and test apps that hold requests on command and count their connections.
//!
//! - the sidecar never opens more than `max_connections` to the service;
//!   a request needing one more waits (is pending) and is served once a
//!   connection frees up; past `max_pending_requests` waiting, a request
//!   fails fast with 503 `overflow`, `x-weft-overflow: pending`, and never
//!   reaches the app; everything recovers after;
//! - a cap below the number of endpoints starves none of them: an idle
//!   connection to one is closed to make room for a request to another;
//! - with `max_retries` retries in flight, a request whose retry would be
//!   one more is not retried: it gets its failed try's answer with
//!   `x-weft-overflow: retries`; retries resume once slots free up;
//! - the caps change from KV within 1 s under steady traffic, with no
//!   restart and no failed request, and the sidecar then keeps to them.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use serde_json::{Value, json};
use tokio::time::Instant;
use weft_e2e::harness::app::Fault;
use weft_e2e::harness::mesh::{MeshedInstance, SETUP_TIMEOUT};
use weft_e2e::{Call, Traffic, TrafficSpec, eventually, plain_users_behind_client, run};

/// The `connections` object of the client sidecar's `users` cluster in
/// `/clusters`: open, max, pending, max_pending and counters.
async fn users_connections(client: &MeshedInstance) -> anyhow::Result<Value> {
    let clusters = client.sidecar.clusters().await?;
    let users = clusters["clusters"]
        .as_array()
        .and_then(|list| {
            list.iter()
                .find(|c| c["name"] == "users" && c["direction"] == "outbound")
        })
        .with_context(|| format!("no outbound users cluster: {clusters}"))?;
    Ok(users["connections"].clone())
}

async fn until_connections(
    client: &MeshedInstance,
    what: &str,
    holds: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    eventually(SETUP_TIMEOUT, what, || async {
        let connections = users_connections(client).await?;
        ensure!(holds(&connections), "{connections}");
        Ok(connections)
    })
    .await
}

#[test]
fn max_connections_holds_requests_pending_and_max_pending_requests_overflows_exactly() {
    run(|ctx| async move {
        let (mesh, apps, client) = plain_users_behind_client(
            &ctx,
            &["users-1"],
            Some(
                &json!({ "circuit_breakers": { "max_connections": 2, "max_pending_requests": 1 } }),
            ),
        )
        .await?;
        let users = &apps[0];
        until_connections(&client, "the caps applied", |c| {
            c["max"] == 2 && c["max_pending"] == 1
        })
        .await?;
        let (open_before, _) = users.connections(&mesh.http).await?;
        users.reset_peak_connections(&mesh.http).await?;
        let seen_before = users.requests_seen(&mesh.http).await?;

        // Two requests held by the app fill both connections.
        let hold = Duration::from_millis(1500);
        users
            .inject(&mesh.http, Fault::Delay(hold), Some(3))
            .await?;
        let call = |path: &'static str| {
            let http = mesh.http.clone();
            let outbound = client.sidecar.outbound;
            tokio::spawn(async move {
                let start = Instant::now();
                let reply = http.call(outbound, Call::get("users", path)).await;
                (reply, start.elapsed())
            })
        };
        let held = [call("/held-1"), call("/held-2")];
        until_connections(&client, "2 connections open", |c| c["open"] == 2).await?;

        // The third waits for one of them.
        let pending = call("/pending");
        until_connections(&client, "1 request pending", |c| c["pending"] == 1).await?;

        // The fourth finds the pending queue full: refused at once.
        let start = Instant::now();
        let reply = mesh
            .http
            .call(client.sidecar.outbound, Call::get("users", "/fourth"))
            .await?;
        let took = start.elapsed();
        ensure!(
            reply.is_overflow("pending"),
            "the 4th request: {} {:?} {}",
            reply.status,
            reply.headers,
            reply.text()
        );
        ctx.measured("overflow answer (max_pending_requests reached)", took);
        ensure!(took < Duration::from_millis(500), "not fast: {took:?}");

        for h in held {
            h.await?.0?.echo().context("a held request")?;
        }
        // The pending one was served on a freed connection, after the
        // held ones: it waited, then was held itself.
        let (reply, waited) = pending.await?;
        reply?.echo().context("the pending request")?;
        ctx.measured("pending request served after", waited);
        ensure!(
            waited >= hold * 2 - Duration::from_millis(100),
            "{waited:?}"
        );

        // The app never had more than 2 connections from the sidecar.
        let (_, peak) = users.connections(&mesh.http).await?;
        ensure!(
            peak <= open_before + 2,
            "peak {peak} connections, {open_before} before the test"
        );
        // Recovered: nothing waits, a request passes, and the refused one
        // never reached the app (3 held + 1 after).
        mesh.http
            .call(client.sidecar.outbound, Call::get("users", "/after"))
            .await?
            .echo()?;
        ensure!(
            users.requests_seen(&mesh.http).await? == seen_before + 3 + 1,
            "the overflowing request reached the app"
        );
        let c = users_connections(&client).await?;
        ensure!(
            c["pending"] == 0
                && c["pending_overflows_total"] == 1
                && c["waited_total"] == 1
                && c["open"].as_u64().is_some_and(|open| open <= 2),
            "{c}"
        );
        Ok(())
    });
}

#[test]
fn a_connection_cap_below_the_endpoint_count_starves_no_endpoint() {
    run(|ctx| async move {
        let ids = ["users-1", "users-2", "users-3"];
        let (mesh, apps, client) = plain_users_behind_client(
            &ctx,
            &ids,
            Some(&json!({ "load_balancer": "round_robin", "circuit_breakers": { "max_connections": 1 } })),
        )
        .await?;
        until_connections(&client, "the cap applied", |c| c["max"] == 1).await?;

        // Round robin: each call goes to the next instance, whose sidecar
        // connection must first replace the idle one to the previous.
        let start = Instant::now();
        for _ in 0..3 * ids.len() {
            let reply = mesh
                .http
                .call(client.sidecar.outbound, Call::get("users", "/"))
                .await?;
            ensure!(reply.status == 200, "{} {}", reply.status, reply.text());
        }
        let took = start.elapsed();
        ctx.measured("9 calls over 3 endpoints, 1 connection", took);
        ensure!(
            took < Duration::from_secs(3),
            "{took:?}: a request waited for the idle timeout"
        );
        for app in &apps {
            ensure!(
                app.requests_seen(&mesh.http).await? >= 3,
                "{} got no share",
                app.instance
            );
        }
        let c = users_connections(&client).await?;
        ensure!(
            c["open"].as_u64().is_some_and(|open| open <= 1)
                && c["idle_closed_total"].as_u64().is_some_and(|n| n >= 8),
            "{c}"
        );
        Ok(())
    });
}

#[test]
fn max_retries_lets_exactly_that_many_retries_fly_and_recovers() {
    run(|ctx| async move {
        // Every try is held 1 s by the app and timed out after 300 ms, so
        // a retry is in flight for 300 ms plus its backoff.
        let retries = json!({
            "max_attempts": 2, "retry_on": ["gateway-error"], "per_try_timeout": "300ms",
            "backoff": { "base": "1ms", "max": "1ms" },
            "budget": { "ratio": 1.0, "min_retries_per_second": 100 }
        });
        let (mesh, apps, client) = plain_users_behind_client(
            &ctx,
            &["users-1"],
            Some(&json!({ "retries": retries, "circuit_breakers": { "max_retries": 2 } })),
        )
        .await?;
        let users = &apps[0];
        let applied = client.sidecar.clusters().await?;
        ensure!(
            applied["clusters"].as_array().is_some_and(|list| list
                .iter()
                .any(|c| c["name"] == "users" && c["retries"]["policy"]["max_attempts"] == 2)),
            "the retry policy is not in force: {applied}"
        );
        users
            .inject(&mesh.http, Fault::Delay(Duration::from_secs(1)), None)
            .await?;

        // Three requests whose first tries time out together: two retries
        // fly, the third request's retry would be one too many.
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let http = mesh.http.clone();
                let outbound = client.sidecar.outbound;
                tokio::spawn(async move { http.call(outbound, Call::get("users", "/slow")).await })
            })
            .collect();
        let mut overflowed = 0;
        let mut retried = 0;
        for call in calls {
            let reply = call.await??;
            ensure!(reply.status == 504, "{} {}", reply.status, reply.text());
            let attempts = reply.headers.get("x-weft-attempts").cloned();
            match reply.headers.get("x-weft-overflow") {
                Some(which) => {
                    ensure!(
                        which == "retries" && attempts.is_some_and(|a| a == "1"),
                        "{:?}",
                        reply.headers
                    );
                    overflowed += 1;
                }
                None => {
                    ensure!(attempts.is_some_and(|a| a == "2"), "{:?}", reply.headers);
                    retried += 1;
                }
            }
        }
        ensure!(
            (retried, overflowed) == (2, 1),
            "{retried} retried and {overflowed} refused a retry; want 2 and 1"
        );

        // Recovered: with the slots free, a failing request is retried.
        let reply = mesh
            .http
            .call(client.sidecar.outbound, Call::get("users", "/again"))
            .await?;
        ensure!(
            reply.status == 504
                && reply
                    .headers
                    .get("x-weft-attempts")
                    .is_some_and(|a| a == "2")
                && !reply.headers.contains_key("x-weft-overflow"),
            "{:?}",
            reply.headers
        );
        users.clear_fault(&mesh.http).await?;
        Ok(())
    });
}

#[test]
fn connection_caps_change_from_kv_within_1s_under_steady_traffic_without_a_failed_request() {
    run(|ctx| async move {
        let (mesh, apps, client) =
            plain_users_behind_client(&ctx, &["users-1", "users-2"], None).await?;
        until_connections(&client, "no caps yet", |c| c["max"].is_null()).await?;
        let traffic = Traffic::start(
            mesh.http.clone(),
            TrafficSpec::get(client.sidecar.outbound, "users", 100),
        );
        let start = Instant::now();
        traffic.reaches("users-1", start).await?;

        for (caps, max) in [
            (
                json!({ "max_connections": 4, "max_pending_requests": 50 }),
                4,
            ),
            (
                json!({ "max_connections": 2, "max_pending_requests": 50 }),
                2,
            ),
        ] {
            mesh.put_document("destinations/users", &json!({ "circuit_breakers": caps }))
                .await?;
            let written = Instant::now();
            until_connections(&client, &format!("max_connections {max} applied"), |c| {
                c["max"] == max
            })
            .await?;
            let took = written.elapsed();
            ctx.measured(&format!("KV max_connections {max} -> in force"), took);
            ensure!(took < Duration::from_secs(1), "took {took:?}");
        }
        // Under the cap of 2, the steady traffic still reaches both
        // instances, over at most 2 connections.
        let since = Instant::now();
        for app in &apps {
            traffic.reaches(&app.instance, since).await?;
        }
        let c = users_connections(&client).await?;
        ensure!(c["open"].as_u64().is_some_and(|open| open <= 2), "{c}");

        mesh.put_document("destinations/users", &json!({})).await?;
        until_connections(&client, "caps removed", |c| c["max"].is_null()).await?;
        let report = traffic.stop().await;
        println!("traffic: {}", report.summary());
        report.assert_no_failures()?;
        Ok(())
    });
}

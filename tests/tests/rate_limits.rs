//! Rate limits over real processes: Consul, the agent, sidecars, apps and a
//! real Redis. A local limit holds its rate per key and refused requests
//! never reach the app; 429s carry Retry-After and the RateLimit fields;
//! two sidecars share one global limit in Redis; with Redis stopped a
//! fail-open limit lets traffic through and a fail-closed one refuses it,
//! both recovering when Redis returns; a limit changed in KV applies within
//! a second with no failed request, and an invalid one is rejected with
//! key, field and reason while the last good one keeps serving.

use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use http::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use weft_e2e::harness::identity::MeshCa;
use weft_e2e::harness::mesh::SETUP_TIMEOUT;
use weft_e2e::harness::redis::Redis;
use weft_e2e::{Call, HttpClient, Mesh, Reply, eventually, run, wait_for_instances};

/// One request of an offered stream: when it was sent and what came back
/// (`None`: no HTTP answer at all).
struct Sent {
    at: Instant,
    status: Option<StatusCode>,
    error: Option<String>,
}

/// Offers `rate` requests a second to `host` through `outbound` for
/// `duration`, each in its own task (a slow answer never delays the next
/// request), with `headers`; returns every request's outcome in order.
async fn offer(
    http: &HttpClient,
    outbound: std::net::SocketAddr,
    host: &'static str,
    headers: Vec<(&'static str, String)>,
    rate: u32,
    duration: Duration,
) -> Vec<Sent> {
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let end = Instant::now() + duration;
    let mut tasks = JoinSet::new();
    let mut index = 0usize;
    while ticks.tick().await < end {
        let http = http.clone();
        let headers = headers.clone();
        tasks.spawn(async move {
            let at = Instant::now();
            let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let reply = http
                .call(outbound, Call::get(host, "/").headers(&pairs))
                .await;
            let (status, error) = match reply {
                Ok(reply) => (Some(reply.status), reply.weft_error().map(str::to_owned)),
                Err(e) => (None, Some(format!("{e:#}"))),
            };
            (index, Sent { at, status, error })
        });
        index += 1;
    }
    let mut results: Vec<(usize, Sent)> = tasks.join_all().await;
    results.sort_by_key(|(index, _)| *index);
    results.into_iter().map(|(_, sent)| sent).collect()
}

fn count(sent: &[Sent], status: StatusCode) -> usize {
    sent.iter().filter(|s| s.status == Some(status)).count()
}

/// Requests that got neither a 2xx from the app nor a 429 from a limit.
fn failures(sent: &[Sent]) -> Vec<String> {
    sent.iter()
        .filter(|s| !matches!(s.status, Some(st) if st.is_success() || st == StatusCode::TOO_MANY_REQUESTS))
        .map(|s| format!("{:?} {:?}", s.status, s.error))
        .collect()
}

/// A limit document section: one local token bucket.
fn local_limit(name: &str, key: Value, requests: u32, per: &str, burst: u32) -> Value {
    let mut limit =
        json!({ "name": name, "local": { "requests": requests, "per": per, "burst": burst } });
    merge(&mut limit, key);
    limit
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

/// Waits until a quick burst through `outbound` to `host` gets a 429: the
/// limit is in force on the path (the agent, the sidecar's compile and
/// swap are all done). Uses `headers` so the probe drains its own bucket.
async fn until_limited(
    http: &HttpClient,
    outbound: std::net::SocketAddr,
    host: &'static str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    eventually(SETUP_TIMEOUT, "the rate limit refuses a burst", || async {
        for _ in 0..50 {
            let reply = http
                .call(outbound, Call::get(host, "/").headers(headers))
                .await?;
            if reply.status == StatusCode::TOO_MANY_REQUESTS {
                return Ok(reply);
            }
        }
        bail!("50 requests in a row got through")
    })
    .await
}

#[test]
fn a_local_limit_holds_its_rate_per_api_key_and_refused_requests_never_reach_the_app() {
    run(|ctx| async move {
        let mesh = Mesh::start(&ctx).await?;
        let (users, client) = mesh.users_and_client().await?;
        let outbound = client.sidecar.outbound;

        // Protect me: 20 a second per API key, bursts of 10.
        mesh.put_document(
            "policies/users",
            &json!({ "rate_limits": { "limits": [
                local_limit("per-key", json!({ "key": "header", "header": "x-api-key" }), 20, "1s", 10) ] } }),
        )
        .await?;
        let refused =
            until_limited(&mesh.http, outbound, "users", &[("x-api-key", "probe")]).await?;

        // What a refused caller sees.
        ensure!(
            refused.weft_error() == Some("rate-limited"),
            "{:?}",
            refused.headers
        );
        let header = |name: &str| {
            refused
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .with_context(|| format!("the 429 has no {name}: {:?}", refused.headers))
        };
        let retry_after: u64 = header("retry-after")?
            .parse()
            .context("Retry-After is seconds")?;
        ensure!(retry_after >= 1, "Retry-After {retry_after}");
        ensure!(
            header("ratelimit-policy")? == "\"per-key\";q=20;w=1",
            "{:?}",
            refused.headers
        );
        ensure!(
            header("ratelimit")? == format!("\"per-key\";r=0;t={retry_after}"),
            "{:?}",
            refused.headers
        );

        // Two keys, each offered 40 a second for 10 s, side by side.
        let decisions_before = users.sidecar.metrics().await?;
        let seen_before = users.app.requests_seen(&mesh.http).await?;
        let seconds = 10;
        let (a, b) = tokio::join!(
            offer(
                &mesh.http,
                outbound,
                "users",
                vec![("x-api-key", "key-A".into())],
                40,
                Duration::from_secs(seconds)
            ),
            offer(
                &mesh.http,
                outbound,
                "users",
                vec![("x-api-key", "key-B".into())],
                40,
                Duration::from_secs(seconds)
            ),
        );
        let seen = users.app.requests_seen(&mesh.http).await? - seen_before;
        for (key, sent) in [("key-A", &a), ("key-B", &b)] {
            ensure!(failures(sent).is_empty(), "{key}: {:?}", failures(sent));
            let allowed = count(sent, StatusCode::OK);
            let span = sent.last().map(|l| l.at - sent[0].at).unwrap_or_default();
            // A full bucket of 10, then 20 a second over the span.
            let expected = 10.0 + 20.0 * span.as_secs_f64();
            ctx.record(
                &format!("local limit 20/s burst 10, {key} offered 40/s for {seconds} s"),
                &format!(
                    "{allowed} allowed of {} (expected {expected:.0})",
                    sent.len()
                ),
            );
            ensure!(
                (allowed as f64 - expected).abs() <= 0.1 * expected,
                "{key}: {allowed} allowed in {span:?}, expected {expected:.0} within 10 %"
            );
        }
        let allowed = (count(&a, StatusCode::OK) + count(&b, StatusCode::OK)) as u64;
        ensure!(
            seen == allowed,
            "the app saw {seen} requests, the callers got {allowed} answers: refused requests reached it"
        );
        // /metrics counted the same decisions the callers saw.
        let decisions_after = users.sidecar.metrics().await?;
        let decided = |decision: &str| {
            let labels = [
                ("direction", "inbound"),
                ("limit", "per-key"),
                ("decision", decision),
            ];
            decisions_after.value("weft_rate_limit_decisions_total", &labels)
                - decisions_before.value("weft_rate_limit_decisions_total", &labels)
        };
        let limited = (count(&a, StatusCode::TOO_MANY_REQUESTS)
            + count(&b, StatusCode::TOO_MANY_REQUESTS)) as f64;
        ensure!(
            decided("allowed") == allowed as f64 && decided("limited") == limited,
            "/metrics: {} allowed, {} limited; callers saw {allowed} and {limited}",
            decided("allowed"),
            decided("limited")
        );
        Ok(())
    });
}

#[test]
fn an_inbound_limit_keyed_by_source_counts_each_verified_caller_apart() {
    run(|ctx| async move {
        // mTLS: the callee's sidecar knows each caller from its handshake.
        let ca = MeshCa::create(&ctx.log_dir, &["client", "web", "users"])?;
        let mesh = Mesh::start_with(&ctx, &ca.agent_args("24h")).await?;
        let users = mesh
            .meshed_instance_with("users", "users-1", &ca.sidecar_args("users"))
            .await?;
        let mut callers = Vec::new();
        for service in ["client", "web"] {
            let caller = mesh
                .meshed_instance_with(service, &format!("{service}-1"), &ca.sidecar_args(service))
                .await?;
            let outbound = caller.sidecar.outbound;
            wait_for_instances(&mesh.http, outbound, Call::get("users", "/"), &["users-1"]).await?;
            callers.push(caller);
        }
        // Each calling service may make 5 calls a minute, whatever headers
        // it sends (a caller cannot pretend to be another).
        mesh.put_document(
            "policies/users",
            &json!({ "rate_limits": { "limits": [
                local_limit("per-caller", json!({ "key": "source" }), 5, "1m", 5) ] } }),
        )
        .await?;
        let client = callers[0].sidecar.outbound;
        until_limited(
            &mesh.http,
            client,
            "users",
            &[(
                "x-weft-peer-identity",
                "spiffe://weft.local/ns/default/svc/web",
            )],
        )
        .await?;

        // client's bucket is empty; web's is untouched: 5 go through, then 429.
        let web = callers[1].sidecar.outbound;
        let seen_before = users.app.requests_seen(&mesh.http).await?;
        let sent = offer(
            &mesh.http,
            web,
            "users",
            vec![],
            20,
            Duration::from_millis(500),
        )
        .await;
        ensure!(failures(&sent).is_empty(), "{:?}", failures(&sent));
        ensure!(
            count(&sent, StatusCode::OK) == 5,
            "web got {} of {} through",
            count(&sent, StatusCode::OK),
            sent.len()
        );
        let reply = mesh.http.call(client, Call::get("users", "/")).await?;
        ensure!(
            reply.status == StatusCode::TOO_MANY_REQUESTS,
            "client: {}",
            reply.status
        );
        let seen = users.app.requests_seen(&mesh.http).await? - seen_before;
        ensure!(seen == 5, "the app saw {seen} requests, 5 were allowed");
        Ok(())
    });
}

#[test]
fn a_destination_limit_changed_in_kv_applies_within_a_second_and_an_invalid_one_is_rejected() {
    run(|ctx| async move {
        let mesh = Mesh::start(&ctx).await?;
        let (_users, client) = mesh.users_and_client().await?;
        let outbound = client.sidecar.outbound;

        // Be a good client: every call to users from this sidecar, 5 a second.
        let limits = |requests: u32| {
            json!({ "rate_limits": { "limits": [
                local_limit("users-calls", json!({ "key": "whole" }), requests, "1s", 5) ] } })
        };
        mesh.put_document("destinations/users", &limits(5)).await?;
        until_limited(&mesh.http, outbound, "users", &[]).await?;

        // Steady traffic at 40/s; after 2 s the limit goes up to 1000/s.
        let driver = {
            let http = mesh.http.clone();
            tokio::spawn(async move {
                offer(&http, outbound, "users", vec![], 40, Duration::from_secs(5)).await
            })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        mesh.put_document("destinations/users", &limits(1000))
            .await?;
        let written = Instant::now();
        let sent = driver.await?;

        ensure!(
            failures(&sent).is_empty(),
            "failed requests during the change: {:?}",
            failures(&sent)
        );
        let limited_before = sent
            .iter()
            .filter(|s| s.at < written && s.status == Some(StatusCode::TOO_MANY_REQUESTS))
            .count();
        ensure!(
            limited_before > 10,
            "the 5/s limit refused only {limited_before} requests before the change"
        );
        let last_refused = sent
            .iter()
            .filter(|s| s.status == Some(StatusCode::TOO_MANY_REQUESTS))
            .map(|s| s.at)
            .max()
            .context("nothing was refused")?;
        let took = last_refused.saturating_duration_since(written);
        ctx.measured("rate limit raised in KV -> last 429", took);
        ensure!(
            took < Duration::from_secs(1),
            "429s went on for {took:?} after the change"
        );

        // An invalid version is rejected with key, field and reason ...
        mesh.put_document(
            "destinations/users",
            &json!({ "rate_limits": { "limits": [
                { "name": "bad", "key": "header", "local": { "requests": 1, "per": "1s" } } ] } }),
        )
        .await?;
        let errors = eventually(
            SETUP_TIMEOUT,
            "the invalid limit is rejected in /status",
            || async {
                let status = mesh.agent.status().await?;
                let rejection = status["rejected_documents"]
                    .as_array()
                    .and_then(|all| {
                        all.iter().find(|r| {
                            r["key"]
                                .as_str()
                                .is_some_and(|k| k.ends_with("destinations/users"))
                        })
                    })
                    .cloned()
                    .with_context(|| {
                        format!("no rejection yet: {}", status["rejected_documents"])
                    })?;
                Ok(rejection["errors"].clone())
            },
        )
        .await?;
        let error = errors
            .as_array()
            .and_then(|all| all.first())
            .with_context(|| format!("no errors: {errors}"))?;
        ensure!(
            error["field"] == "rate_limits.limits[0].header"
                && error["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("needs the header's name")),
            "{errors}"
        );
        // ... and the last good limit (1000/s) keeps serving.
        let sent = offer(
            &mesh.http,
            outbound,
            "users",
            vec![],
            40,
            Duration::from_secs(1),
        )
        .await;
        ensure!(
            count(&sent, StatusCode::OK) == sent.len(),
            "after the rejection: {:?}",
            sent.iter().map(|s| s.status).collect::<Vec<_>>()
        );
        Ok(())
    });
}

#[test]
fn two_sidecars_of_one_service_share_one_global_limit_in_redis() {
    run(|ctx| async move {
        let redis = Redis::start(&ctx.log_dir).await?;
        let mesh = Mesh::start(&ctx).await?;
        let users_1 = mesh.meshed_instance("users", "users-1").await?;
        let users_2 = mesh.meshed_instance("users", "users-2").await?;
        let client = mesh.client().await?;
        let outbound = client.sidecar.outbound;
        wait_for_instances(
            &mesh.http,
            outbound,
            Call::get("users", "/"),
            &["users-1", "users-2"],
        )
        .await?;

        // 30 a minute per API key across every users sidecar. A minute-long
        // window: the burst below ends long before the previous window's
        // share could fade.
        mesh.put_document(
            "policies/users",
            &json!({ "rate_limits": {
                "redis": { "url": redis.url(), "on_unavailable": "fail_closed" },
                "limits": [ { "name": "shared", "key": "header", "header": "x-api-key",
                              "global": { "requests": 30, "window": "1m" } } ] } }),
        )
        .await?;
        until_limited(&mesh.http, outbound, "users", &[("x-api-key", "probe")]).await?;

        let before_1 = users_1.app.requests_seen(&mesh.http).await?;
        let before_2 = users_2.app.requests_seen(&mesh.http).await?;
        let sent = offer(
            &mesh.http,
            outbound,
            "users",
            vec![("x-api-key", "key-A".into())],
            100,
            Duration::from_secs(1),
        )
        .await;
        ensure!(failures(&sent).is_empty(), "{:?}", failures(&sent));
        let allowed = count(&sent, StatusCode::OK);
        ensure!(
            (30..=31).contains(&allowed),
            "{allowed} of {} allowed by a shared limit of 30",
            sent.len()
        );
        let seen_1 = users_1.app.requests_seen(&mesh.http).await? - before_1;
        let seen_2 = users_2.app.requests_seen(&mesh.http).await? - before_2;
        ensure!(
            seen_1 + seen_2 == allowed as u64,
            "the apps saw {seen_1} + {seen_2} requests, {allowed} were allowed"
        );
        // Both sidecars let part of the 30 through: they counted together,
        // not 30 each.
        ensure!(
            seen_1 > 0 && seen_2 > 0,
            "only one sidecar allowed anything: {seen_1} / {seen_2}"
        );
        ctx.record(
            "global limit 30/min over two sidecars",
            &format!("{allowed} of {} allowed", sent.len()),
        );
        Ok(())
    });
}

/// A refused request is not counted in a global window (only allowed ones
/// are): a client that keeps sending at 10 times the limit still gets
/// about the limit through in every window, instead of locking itself out
/// for as long as it keeps trying.
#[test]
fn refused_requests_do_not_count_in_a_global_window() {
    run(|ctx| async move {
        let redis = Redis::start(&ctx.log_dir).await?;
        let mesh = Mesh::start(&ctx).await?;
        let users = mesh.meshed_instance("users", "users-1").await?;
        let client = mesh.client().await?;
        let outbound = client.sidecar.outbound;
        wait_for_instances(&mesh.http, outbound, Call::get("users", "/"), &["users-1"]).await?;
        mesh.put_document(
            "policies/users",
            &json!({ "rate_limits": {
                "redis": { "url": redis.url(), "on_unavailable": "fail_closed" },
                "limits": [ { "name": "per-key", "key": "header", "header": "x-api-key",
                              "global": { "requests": LIMIT, "window": "1s" } } ] } }),
        )
        .await?;
        until_limited(&mesh.http, outbound, "users", &[("x-api-key", "probe")]).await?;

        let before = users.app.requests_seen(&mesh.http).await?;
        let sent = offer(
            &mesh.http,
            outbound,
            "users",
            vec![("x-api-key", "key-A".into())],
            10 * LIMIT,
            Duration::from_millis(3_500),
        )
        .await;
        ensure!(failures(&sent).is_empty(), "{:?}", failures(&sent));
        let allowed = count(&sent, StatusCode::OK);
        ctx.record(
            "global limit 10/s, offered 100/s for 3.5 s",
            &format!("{allowed} of {} allowed", sent.len()),
        );
        // 3.5 s touch 4 or 5 one-second windows. Counting refusals, the
        // first window's 90-odd refusals would weigh on the next and the
        // client would get little more than the first 10.
        ensure!(
            (22..=46).contains(&allowed),
            "{allowed} of {} allowed at 10/s over 3.5 s",
            sent.len()
        );
        let seen = users.app.requests_seen(&mesh.http).await? - before;
        ensure!(
            seen == allowed as u64,
            "the app saw {seen}, {allowed} were allowed"
        );
        // Redis counts allowed requests only: no window's counter (each
        // lives for two windows after its last request) is above the
        // limit, where counting refusals would have put about 100.
        let mut conn = redis.direct().await?;
        let windows = conn.keys("weft:rl:*key-A*").await?;
        ensure!(!windows.is_empty(), "no window of key-A in Redis");
        for key in windows {
            let value = conn
                .bulk(&[b"GET", key.as_bytes()])
                .await?
                .unwrap_or_default();
            let counted: u32 = String::from_utf8_lossy(&value).parse()?;
            ensure!(
                counted <= LIMIT,
                "Redis counts {counted} requests in window {key} of a limit of {LIMIT}"
            );
        }
        Ok(())
    });

    const LIMIT: u32 = 10;
}

/// An outbound limit's Redis key is named by the destination, not by the
/// calling service: a `whole` limit in `destinations/users` is one budget
/// for every service that calls users, shared by all their sidecars.
#[test]
fn a_whole_destination_limit_is_one_budget_shared_by_every_calling_service() {
    run(|ctx| async move {
        let redis = Redis::start(&ctx.log_dir).await?;
        let mesh = Mesh::start(&ctx).await?;
        let users = mesh.meshed_instance("users", "users-1").await?;
        let mut callers = Vec::new();
        for service in ["web", "admin"] {
            let caller = mesh
                .meshed_instance(service, &format!("{service}-1"))
                .await?;
            let outbound = caller.sidecar.outbound;
            wait_for_instances(&mesh.http, outbound, Call::get("users", "/"), &["users-1"]).await?;
            callers.push(caller);
        }
        mesh.put_document(
            "destinations/users",
            &json!({ "rate_limits": {
                "redis": { "url": redis.url(), "on_unavailable": "fail_closed" },
                "limits": [ { "name": "all-callers", "key": "whole",
                              "global": { "requests": 20, "window": "1m" } } ] } }),
        )
        .await?;
        for caller in &callers {
            eventually(SETUP_TIMEOUT, "each caller holds the limit", || async {
                let dump = caller.sidecar.config_dump().await?.to_string();
                ensure!(dump.contains("all-callers"), "not in /config_dump yet");
                Ok(())
            })
            .await?;
        }

        let before = users.app.requests_seen(&mesh.http).await?;
        let mut allowed = [0u32; 2];
        for _ in 0..25 {
            for (i, caller) in callers.iter().enumerate() {
                let reply = mesh
                    .http
                    .call(caller.sidecar.outbound, Call::get("users", "/"))
                    .await?;
                match reply.status {
                    StatusCode::OK => allowed[i] += 1,
                    StatusCode::TOO_MANY_REQUESTS => {}
                    other => bail!("{}: {other} {}", caller.sidecar.service, reply.text()),
                }
            }
        }
        let total = allowed[0] + allowed[1];
        ctx.record(
            "whole limit 20/min, web and admin 25 calls each",
            &format!("web {} + admin {} allowed", allowed[0], allowed[1]),
        );
        ensure!(
            (20..=21).contains(&total) && allowed.iter().all(|n| *n > 0),
            "web {} + admin {} allowed by one limit of 20",
            allowed[0],
            allowed[1]
        );
        let seen = users.app.requests_seen(&mesh.http).await? - before;
        ensure!(
            seen == u64::from(total),
            "the app saw {seen}, {total} were allowed"
        );
        let keys = redis.direct().await?.keys("weft:rl:*").await?;
        ensure!(
            !keys.is_empty()
                && keys
                    .iter()
                    .all(|key| key.starts_with("weft:rl:{out:users:all-callers:}:")),
            "the window's keys name the destination and the limit only: {keys:?}"
        );
        Ok(())
    });
}

#[test]
fn with_redis_stopped_fail_open_lets_traffic_through_fail_closed_refuses_and_both_recover() {
    run(|ctx| async move {
        let mut redis = Redis::start(&ctx.log_dir).await?;
        let mesh = Mesh::start(&ctx).await?;
        let _open = mesh.meshed_instance("open", "open-1").await?;
        let _closed = mesh.meshed_instance("closed", "closed-1").await?;
        let client = mesh.client().await?;
        let outbound = client.sidecar.outbound;
        wait_for_instances(&mesh.http, outbound, Call::get("open", "/"), &["open-1"]).await?;
        wait_for_instances(
            &mesh.http,
            outbound,
            Call::get("closed", "/"),
            &["closed-1"],
        )
        .await?;

        let policy = |on_unavailable: &str| {
            json!({ "rate_limits": {
                "redis": { "url": redis.url(), "timeout": "50ms", "on_unavailable": on_unavailable, "fail_closed_status": 503 },
                "limits": [ { "name": "all", "key": "whole", "global": { "requests": 100000, "window": "1m" } },
                            { "name": "probe", "key": "header", "header": "x-probe", "global": { "requests": 1, "window": "1m" } } ] } })
        };
        mesh.put_document("policies/open", &policy("fail_open"))
            .await?;
        mesh.put_document("policies/closed", &policy("fail_closed"))
            .await?;
        // Both policies are in force once a probe key is refused by Redis.
        until_limited(&mesh.http, outbound, "open", &[("x-probe", "1")]).await?;
        until_limited(&mesh.http, outbound, "closed", &[("x-probe", "1")]).await?;

        redis.stop();
        let stopped = Instant::now();
        let (open, closed) = tokio::join!(
            offer(
                &mesh.http,
                outbound,
                "open",
                vec![],
                20,
                Duration::from_secs(2)
            ),
            offer(
                &mesh.http,
                outbound,
                "closed",
                vec![],
                20,
                Duration::from_secs(2)
            ),
        );
        ensure!(
            count(&open, StatusCode::OK) == open.len(),
            "fail_open with Redis down: {:?}",
            open.iter()
                .map(|s| (s.status, s.error.clone()))
                .collect::<Vec<_>>()
        );
        let refused = closed
            .iter()
            .filter(|s| {
                s.status == Some(StatusCode::SERVICE_UNAVAILABLE)
                    && s.error.as_deref() == Some("rate-limit-unavailable")
            })
            .count();
        ensure!(
            refused == closed.len(),
            "fail_closed with Redis down: {:?}",
            closed
                .iter()
                .map(|s| (s.status, s.error.clone()))
                .collect::<Vec<_>>()
        );
        // Redis trouble never stalls traffic: one request takes about the
        // 50 ms timeout at most.
        let slowest = {
            let started = Instant::now();
            mesh.http.call(outbound, Call::get("closed", "/")).await?;
            started.elapsed()
        };
        ctx.measured("a fail-closed decision with Redis stopped", slowest);
        ensure!(
            slowest < Duration::from_millis(500),
            "a request took {slowest:?} with Redis down"
        );
        ctx.measured("Redis stopped for", stopped.elapsed());

        redis.restart().await?;
        let back = Instant::now();
        for host in ["open", "closed"] {
            eventually(
                SETUP_TIMEOUT,
                &format!("{host} answers 200 with Redis back"),
                || async {
                    let reply = mesh.http.call(outbound, Call::get(host, "/")).await?;
                    ensure!(
                        reply.status == StatusCode::OK,
                        "{} {:?}",
                        reply.status,
                        reply.weft_error()
                    );
                    Ok(())
                },
            )
            .await?;
        }
        ctx.measured(
            "Redis restarted -> fail-closed limit answers again",
            back.elapsed(),
        );
        // And Redis decides again (an empty Redis: the probe key is fresh).
        for expected in [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS] {
            let call = Call::get("closed", "/").headers(&[("x-probe", "2")]);
            let reply = mesh.http.call(outbound, call).await?;
            ensure!(
                reply.status == expected,
                "{} instead of {expected}",
                reply.status
            );
        }
        Ok(())
    });
}

#[test]
fn one_global_decision_costs_one_redis_round_trip() {
    run(|ctx| async move {
        use weft_sidecar::ratelimit::redis::RedisBackend;
        let redis = Redis::start(&ctx.log_dir).await?;
        let backend = RedisBackend::new(&redis.url(), Duration::from_millis(50), None)
            .map_err(anyhow::Error::msg)?;
        // Warm up: the connection and the script's SHA in Redis.
        for _ in 0..100 {
            backend
                .decide("weft:rl:{bench:warm}", 1_000_000, Duration::from_secs(60))
                .await
                .map_err(|e| anyhow::anyhow!(e.0))?;
        }
        let mut latencies = Vec::with_capacity(5000);
        for i in 0..5000 {
            let key = format!("weft:rl:{{bench:k{}}}", i % 100);
            let started = std::time::Instant::now();
            backend
                .decide(&key, 1_000_000, Duration::from_secs(60))
                .await
                .map_err(|e| anyhow::anyhow!(e.0))?;
            latencies.push(started.elapsed());
        }
        latencies.sort();
        let p =
            |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
        ctx.record(
            "global limit decision (Lua round trip, local Redis, debug build)",
            &format!(
                "p50 {:.0} us, p99 {:.0} us, max {:.0} us",
                p(0.5).as_secs_f64() * 1e6,
                p(0.99).as_secs_f64() * 1e6,
                p(1.0).as_secs_f64() * 1e6
            ),
        );
        ensure!(
            p(0.99) < Duration::from_millis(50),
            "p99 {:?} is over the default timeout",
            p(0.99)
        );
        Ok(())
    });
}

#[test]
fn a_global_limit_reaches_redis_over_tls_with_a_password_and_a_private_ca() {
    run(|ctx| async move {
        use weft_sidecar::ratelimit::redis::RedisBackend;
        // A private CA and a certificate for 127.0.0.1, as a managed Redis
        // with its own CA has.
        let ca = weft_e2e::harness::certs::TestCa::new("redis test CA")?;
        let leaf = ca.server_leaf("redis", &["127.0.0.1"])?;
        let file = |name: &str, pem: String| -> anyhow::Result<String> {
            let path = ctx.log_dir.join(name);
            std::fs::write(&path, pem)?;
            Ok(path.display().to_string())
        };
        let tls_port = weft_e2e::harness::ports::free_port()?;
        let args: Vec<String> = vec![
            "--requirepass".into(),
            "s3cret".into(),
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            file("redis.crt", leaf.cert_pem())?,
            "--tls-key-file".into(),
            file("redis.key", leaf.key_pem())?,
            "--tls-ca-cert-file".into(),
            file("ca.crt", ca.pem())?,
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        let redis = Redis::start_with(&ctx.log_dir, &args).await?;
        let timeout = Duration::from_millis(200);
        let window = Duration::from_secs(60);
        let tls = format!("rediss://:s3cret@127.0.0.1:{tls_port}");

        // TLS, verified against the private CA, and the password: decides.
        let backend =
            RedisBackend::new(&tls, timeout, Some(&ca.pem())).map_err(anyhow::Error::msg)?;
        let decision = backend.decide("weft:rl:{tls:a}", 1, window).await;
        ensure!(decision.is_ok(), "over TLS with the CA: {decision:?}");

        // Without the CA the certificate is unknown: no decision.
        let backend = RedisBackend::new(&tls, timeout, None).map_err(anyhow::Error::msg)?;
        let decision = backend.decide("weft:rl:{tls:b}", 1, window).await;
        ensure!(
            decision.is_err(),
            "a certificate no trusted CA signed was accepted: {decision:?}"
        );

        // A wrong password: no decision either.
        let wrong = format!("rediss://:wrong@127.0.0.1:{tls_port}");
        let backend =
            RedisBackend::new(&wrong, timeout, Some(&ca.pem())).map_err(anyhow::Error::msg)?;
        let decision = backend.decide("weft:rl:{tls:c}", 1, window).await;
        ensure!(
            decision.is_err(),
            "a wrong password was accepted: {decision:?}"
        );

        // Plain redis:// with the password, on the same server.
        let plain = format!("redis://:s3cret@{}", redis.addr);
        let backend = RedisBackend::new(&plain, timeout, None).map_err(anyhow::Error::msg)?;
        let decision = backend.decide("weft:rl:{plain:a}", 1, window).await;
        ensure!(decision.is_ok(), "plain with the password: {decision:?}");
        Ok(())
    });
}

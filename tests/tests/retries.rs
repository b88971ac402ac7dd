//! Retries and timeouts, configured in Consul KV (`destinations/<svc>`
//! `retries`, a route's own `retries` and `timeout`), against real sidecars
//! and test apps that fail on command: a transient failure is retried on
//! the other endpoint and succeeds (a gRPC UNAVAILABLE too, when the
//! policy lists it, and only then); a POST only when the policy says so
//! (its body sent again whole); with every request failing, the retries
//! stay within the budget; per-try and overall timeouts answer 504 on time;
//! a policy change applies within 1 s without a failed request; an invalid
//! policy is rejected with key, field and reason.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use serde_json::{Value, json};
use tokio::time::Instant;
use weft_e2e::echo::EchoRequest;
use weft_e2e::harness::app::{App, Fault};
use weft_e2e::harness::grpc::echo_client;
use weft_e2e::harness::identity::MeshCa;
use weft_e2e::harness::mesh::SETUP_TIMEOUT;
use weft_e2e::{Call, Mesh, MeshedInstance, Reply, Traffic, TrafficSpec, eventually, run};

const ATTEMPTS: &str = "x-weft-attempts";
/// The convergence budget of the issue.
const BUDGET: Duration = Duration::from_secs(1);

fn attempts(reply: &Reply) -> Option<u32> {
    reply.headers.get(ATTEMPTS)?.to_str().ok()?.parse().ok()
}

/// `users` served by `users-1` and `users-2` (plain instances: the calling
/// sidecar reaches each app directly) and the client's sidecar.
async fn two_users(mesh: &Mesh) -> anyhow::Result<(App, App, MeshedInstance)> {
    let users_1 = mesh.plain_instance("users", "users-1").await?;
    let users_2 = mesh.plain_instance("users", "users-2").await?;
    let client = mesh.client().await?;
    both_users_answer(mesh, &client).await?;
    Ok((users_1, users_2, client))
}

/// Waits until both `users` instances have answered through the client.
async fn both_users_answer(mesh: &Mesh, client: &MeshedInstance) -> anyhow::Result<()> {
    weft_e2e::wait_for_instances(
        &mesh.http,
        client.sidecar.outbound,
        Call::get("users", "/"),
        &["users-1", "users-2"],
    )
    .await
}

/// Writes `destinations/users` and waits until a call shows the policy is
/// in force (`expect` on the answer).
async fn apply(
    mesh: &Mesh,
    client: &MeshedInstance,
    document: Value,
    expect: impl Fn(&Reply) -> bool,
) -> anyhow::Result<Duration> {
    mesh.put_document("destinations/users", &document).await?;
    let written = Instant::now();
    eventually(SETUP_TIMEOUT, &format!("{document} applies"), || async {
        let reply = mesh
            .http
            .call_get(client.sidecar.outbound, "users", "/")
            .await?;
        ensure!(
            expect(&reply),
            "not yet: {} {:?}",
            reply.status,
            reply.headers
        );
        Ok(written.elapsed())
    })
    .await
}

/// Sets `retries` in `destinations/users` and waits until answers carry
/// `x-weft-attempts` (how long that took).
async fn with_retries(
    mesh: &Mesh,
    client: &MeshedInstance,
    retries: Value,
) -> anyhow::Result<Duration> {
    apply(mesh, client, json!({ "retries": retries }), |r| {
        attempts(r).is_some()
    })
    .await
}

#[test]
fn a_transient_failure_is_retried_on_the_other_endpoint_and_succeeds() {
    run(|ctx| async move {
        let mesh = Mesh::start(&ctx).await?;
        let (users_1, users_2, client) = two_users(&mesh).await?;
        with_retries(&mesh, &client, json!({ "max_attempts": 2 })).await?;

        for fault in [Fault::Status(503), Fault::Reset] {
            // users-1 fails every request: a request that tries it first is
            // retried, and only the other endpoint can save it.
            users_1.inject(&mesh.http, fault, None).await?;
            let seen_1 = users_1.requests_seen(&mesh.http).await?;
            let seen_2 = users_2.requests_seen(&mesh.http).await?;
            let (mut retried, mut first_time) = (0u64, 0u64);
            for _ in 0..40 {
                let reply = mesh
                    .http
                    .call_get(client.sidecar.outbound, "users", "/")
                    .await?;
                let echo = reply
                    .echo()
                    .with_context(|| format!("with users-1 answering {fault:?}"))?;
                ensure!(
                    echo.instance == "users-2",
                    "{fault:?}: answered by {echo:?}"
                );
                match attempts(&reply) {
                    Some(2) => retried += 1,
                    Some(1) => first_time += 1,
                    other => anyhow::bail!("{fault:?}: x-weft-attempts {other:?}"),
                }
            }
            let failed_on_1 = users_1.requests_seen(&mesh.http).await? - seen_1;
            let served_by_2 = users_2.requests_seen(&mesh.http).await? - seen_2;
            println!(
                "{fault:?}: 40 requests, {retried} retried (x-weft-attempts: 2), {first_time} first time; users-1 saw {failed_on_1}, users-2 {served_by_2}"
            );
            ensure!(
                retried > 0,
                "{fault:?}: no request ever tried users-1 first"
            );
            ensure!(
                failed_on_1 == retried && served_by_2 == 40,
                "{fault:?}: every retry went to the other endpoint: users-1 saw {failed_on_1} for {retried} retries, users-2 {served_by_2} of 40"
            );
            users_1.clear_fault(&mesh.http).await?;
        }

        // A single endpoint failing once: the retry goes back to it.
        let mut users_2 = users_2;
        users_2.kill();
        mesh.consul.deregister("users-2").await?;
        eventually(SETUP_TIMEOUT, "users-2 leaves the cluster", || async {
            let clusters = client.sidecar.clusters().await?;
            let endpoints = cluster_of(&clusters)?["endpoints"].clone();
            ensure!(
                endpoints.as_array().is_some_and(|e| e.len() == 1),
                "{endpoints}"
            );
            Ok(())
        })
        .await?;
        users_1
            .inject(&mesh.http, Fault::Status(503), Some(1))
            .await?;
        let reply = mesh
            .http
            .call_get(client.sidecar.outbound, "users", "/")
            .await?;
        reply.echo()?;
        ensure!(attempts(&reply) == Some(2), "{:?}", reply.headers);
        let clusters = client.sidecar.clusters().await?;
        println!("/clusters users retries: {}", retries_of(&clusters)?);
        ensure!(
            retries_of(&clusters)?["retries_total"].as_u64() >= Some(1),
            "retries are counted: {clusters}"
        );
        Ok(())
    });
}

/// The outbound `users` cluster in the sidecar's `/clusters`.
fn cluster_of(clusters: &Value) -> anyhow::Result<&Value> {
    clusters["clusters"]
        .as_array()
        .context("/clusters has no list")?
        .iter()
        .find(|c| c["name"] == "users" && c["direction"] == "outbound")
        .with_context(|| format!("no outbound users cluster: {clusters}"))
}

/// Waits until the client's sidecar holds a `users` policy whose `field`
/// is `value` (as `/clusters` shows it).
async fn policy_says(client: &MeshedInstance, field: &str, value: Value) -> anyhow::Result<()> {
    eventually(
        SETUP_TIMEOUT,
        &format!("{field} = {value} applies"),
        || async {
            let retries = retries_of(&client.sidecar.clusters().await?)?;
            ensure!(retries["policy"][field] == value, "{retries}");
            Ok(())
        },
    )
    .await
}

/// Its retry policy and counters.
fn retries_of(clusters: &Value) -> anyhow::Result<Value> {
    Ok(cluster_of(clusters)?["retries"].clone())
}

#[test]
fn a_post_is_retried_only_when_the_policy_allows_it_and_its_body_is_sent_again() {
    run(|ctx| async move {
        let mesh = Mesh::start(&ctx).await?;
        let users = mesh.plain_instance("users", "users-1").await?;
        let client = mesh.client().await?;
        let post = Call::get("users", "/orders").post("{\"item\":42}");
        with_retries(
            &mesh,
            &client,
            json!({ "max_attempts": 3, "retry_on": ["5xx"] }),
        )
        .await?;

        users
            .inject(&mesh.http, Fault::Status(503), Some(1))
            .await?;
        let reply = mesh
            .http
            .call(client.sidecar.outbound, post.clone())
            .await?;
        ensure!(
            reply.status.as_u16() == 503 && attempts(&reply) == Some(1),
            "a POST is tried once: {} {:?}",
            reply.status,
            reply.headers
        );

        mesh.put_document(
            "destinations/users",
            &json!({ "retries": { "max_attempts": 3, "retry_on": ["5xx"], "retry_non_idempotent": true } }),
        )
        .await?;
        policy_says(&client, "retry_non_idempotent", json!(true)).await?;
        users
            .inject(&mesh.http, Fault::Status(503), Some(2))
            .await?;
        let reply = mesh.http.call(client.sidecar.outbound, post).await?;
        let echo = reply.echo()?;
        ensure!(
            attempts(&reply) == Some(3),
            "two 503s, then success: {:?}",
            reply.headers
        );
        ensure!(
            echo.method == "POST" && echo.body == "{\"item\":42}",
            "the third try carried the whole body: {echo:?}"
        );

        // A body over max_body_bytes is streamed through once, never held
        // for a retry, even for an idempotent PUT.
        mesh.put_document(
            "destinations/users",
            &json!({ "retries": { "max_attempts": 3, "retry_on": ["5xx"], "max_body_bytes": 1024 } }),
        )
        .await?;
        policy_says(&client, "max_body_bytes", json!(1024)).await?;
        users
            .inject(&mesh.http, Fault::Status(503), Some(1))
            .await?;
        let mut small = Call::get("users", "/items/1").post("small");
        small.method = http::Method::PUT;
        let reply = mesh.http.call(client.sidecar.outbound, small).await?;
        ensure!(
            attempts(&reply) == Some(2),
            "a small PUT is retried: {:?}",
            reply.headers
        );
        let big = "x".repeat(4096);
        let mut put = Call::get("users", "/items/1").post(&big);
        put.method = http::Method::PUT;
        users
            .inject(&mesh.http, Fault::Status(503), Some(1))
            .await?;
        let reply = mesh.http.call(client.sidecar.outbound, put.clone()).await?;
        ensure!(
            reply.status.as_u16() == 503 && attempts(&reply) == Some(1),
            "a 4 KiB PUT over a 1 KiB max_body_bytes is tried once: {} {:?}",
            reply.status,
            reply.headers
        );
        let echo = mesh.http.call(client.sidecar.outbound, put).await?.echo()?;
        ensure!(
            echo.body.len() == 4096,
            "streamed whole: {} bytes",
            echo.body.len()
        );
        Ok(())
    });
}

#[test]
fn with_every_request_failing_retries_stay_within_the_budget() {
    run(|ctx| async move {
        const RATE: u32 = 50;
        const RATIO: f64 = 0.2;
        const MIN_PER_SECOND: f64 = 1.0;
        let mesh = Mesh::start(&ctx).await?;
        let users = mesh.plain_instance("users", "users-1").await?;
        let client = mesh.client().await?;
        with_retries(
            &mesh,
            &client,
            json!({ "max_attempts": 3,
                "backoff": { "base": "1ms", "max": "5ms" },
                "budget": { "ratio": RATIO, "min_retries_per_second": 1 } }),
        )
        .await?;

        users.inject(&mesh.http, Fault::Status(503), None).await?;
        let seen_before = users.requests_seen(&mesh.http).await?;
        let traffic = Traffic::start(
            mesh.http.clone(),
            TrafficSpec::get(client.sidecar.outbound, "users", RATE),
        );
        // The scenario: 6 s of steady traffic, every answer a 503.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let report = traffic.stop().await;
        let seen = users.requests_seen(&mesh.http).await? - seen_before;
        let sent = report.sent() as f64;
        let load = seen as f64 / sent;
        // Without a budget, 3 tries each would triple the load.
        let allowed = 1.0 + RATIO + MIN_PER_SECOND * 10.0 / sent;
        println!(
            "100 % failures at {RATE}/s: {sent} requests sent, the app saw {seen}: {load:.3}x the load (budget allows {allowed:.3}x; without it 3x)"
        );
        ctx.record(
            "retry load at 100 % failures (ratio 0.2, min 1/s)",
            &format!("{load:.3}x of {sent} requests"),
        );
        ensure!(report.hits.is_empty(), "the app failed every request");
        ensure!(load > 1.05, "retries happened: {load:.3}x");
        ensure!(
            load <= allowed + 0.05,
            "{load:.3}x is over the budget ({allowed:.3}x)"
        );
        let clusters = client.sidecar.clusters().await?;
        let retries = retries_of(&clusters)?;
        println!("/clusters users retries: {retries}");
        ensure!(
            retries["budget_exhausted_total"].as_u64() > Some(0),
            "budget exhaustion is counted: {retries}"
        );
        Ok(())
    });
}

#[test]
fn per_try_and_overall_timeouts_answer_504_at_the_configured_time() {
    run(|ctx| async move {
        let mesh = Mesh::start(&ctx).await?;
        let _users = mesh.plain_instance("users", "users-1").await?;
        let client = mesh.client().await?;
        mesh.put_document(
            "destinations/users",
            &json!({ "retries": { "max_attempts": 1 } }),
        )
        .await?;
        // One route per case: a route's retries replace the destination's,
        // a route's timeout its request_timeout.
        mesh.put_document(
            "routes/users",
            &json!({ "routes": [
                { "match": { "headers": { "x-case": "per-try" } }, "destination": "users",
                  "retries": { "max_attempts": 2, "per_try_timeout": "300ms",
                               "backoff": { "base": "1ms", "max": "1ms" } } },
                { "match": { "headers": { "x-case": "overall" } }, "destination": "users",
                  "timeout": "500ms",
                  "retries": { "max_attempts": 3, "retry_on": ["5xx"] } },
                { "destination": "users" } ] }),
        )
        .await?;
        let call = |case: &'static str| {
            Call::get("users", "/delay/2000").headers(match case {
                "per-try" => &[("x-case", "per-try")],
                _ => &[("x-case", "overall")],
            })
        };
        // The routes are in force once a per-try call says two tries.
        eventually(SETUP_TIMEOUT, "the timeout routes apply", || async {
            let reply = mesh
                .http
                .call(client.sidecar.outbound, call("per-try"))
                .await?;
            ensure!(attempts(&reply) == Some(2), "{:?}", reply.headers);
            Ok(())
        })
        .await?;

        for (case, expected, tries) in [
            ("per-try", Duration::from_millis(600), Some(2)),
            ("overall", Duration::from_millis(500), None),
        ] {
            for _ in 0..3 {
                let start = Instant::now();
                let reply = mesh.http.call(client.sidecar.outbound, call(case)).await?;
                let took = start.elapsed();
                println!(
                    "{case}: {} x-weft-error={:?} x-weft-attempts={:?} after {took:?} (expected {expected:?})",
                    reply.status,
                    reply.weft_error(),
                    attempts(&reply)
                );
                ctx.measured(&format!("{case} timeout: 504 after"), took);
                ensure!(
                    reply.status.as_u16() == 504 && reply.weft_error() == Some("timeout"),
                    "{case}: {} {}",
                    reply.status,
                    reply.text()
                );
                ensure!(
                    took >= expected && took < expected + Duration::from_millis(250),
                    "{case}: 504 after {took:?}, configured {expected:?}"
                );
                ensure!(attempts(&reply) == tries, "{case}: {:?}", reply.headers);
            }
        }
        Ok(())
    });
}

#[test]
fn a_retry_policy_change_applies_within_1s_without_a_failed_request() {
    run(|ctx| async move {
        let mesh = Mesh::start(&ctx).await?;
        let (_users_1, _users_2, client) = two_users(&mesh).await?;
        let traffic = Traffic::start(
            mesh.http.clone(),
            TrafficSpec::get(client.sidecar.outbound, "users", 100),
        );
        let start = Instant::now();
        traffic.reaches("users-1", start).await?;
        traffic.reaches("users-2", start).await?;
        // Steady traffic around each change (the scenario, not a wait).
        let steady = Duration::from_millis(500);
        tokio::time::sleep(steady).await;
        let on = with_retries(&mesh, &client, json!({ "max_attempts": 3 })).await?;
        ctx.measured("retry policy added: in force after", on);
        tokio::time::sleep(steady).await;
        let off = apply(&mesh, &client, json!({}), |r| {
            r.status.is_success() && attempts(r).is_none()
        })
        .await?;
        ctx.measured("retry policy removed: gone after", off);
        tokio::time::sleep(steady).await;
        let report = traffic.stop().await;
        println!("traffic: {}", report.summary());
        report.assert_no_failures()?;
        ensure!(on < BUDGET && off < BUDGET, "took {on:?} and {off:?}");
        Ok(())
    });
}

#[test]
fn an_invalid_retry_policy_is_rejected_with_key_field_and_reason() {
    run(|ctx| async move {
        let mesh = Mesh::start(&ctx).await?;
        let (_users_1, _users_2, client) = two_users(&mesh).await?;
        with_retries(&mesh, &client, json!({ "max_attempts": 2 })).await?;
        let invalid = json!({ "retries": { "max_attempts": 0, "retry_on": ["sometimes"],
            "backoff": { "base": "1s", "max": "10ms" } } });
        mesh.put_document("destinations/users", &invalid).await?;
        let said = eventually(SETUP_TIMEOUT, "the invalid policy is rejected", || async {
            let status = mesh.agent.status().await?;
            let rejection = status["rejected_documents"]
                .as_array()
                .context("no rejected_documents")?
                .iter()
                .find(|r| {
                    r["key"]
                        .as_str()
                        .is_some_and(|k| k.ends_with("destinations/users"))
                })
                .cloned()
                .context("not rejected yet")?;
            Ok(rejection)
        })
        .await?;
        println!("rejection: {said}");
        let errors = said["errors"].as_array().context("no errors")?;
        ensure!(
            errors.iter().any(|e| e["field"]
                .as_str()
                .is_some_and(|f| f.starts_with("retries."))
                && e["reason"].as_str().is_some_and(|r| !r.is_empty())),
            "no error names a retries field with a reason: {said}"
        );
        // The last good policy keeps serving.
        let reply = mesh
            .http
            .call_get(client.sidecar.outbound, "users", "/")
            .await?;
        reply.echo()?;
        ensure!(attempts(&reply) == Some(1), "{:?}", reply.headers);
        Ok(())
    });
}

#[test]
fn over_mtls_between_sidecars_a_failed_try_is_retried_on_the_other_instance_body_included() {
    run(|ctx| async move {
        let ca = MeshCa::create(&ctx.log_dir, &["client", "users"])?;
        let mesh = Mesh::start_with(&ctx, &ca.agent_args("1h")).await?;
        let users_1 = mesh
            .meshed_instance_with("users", "users-1", &ca.sidecar_args("users"))
            .await?;
        let _users_2 = mesh
            .meshed_instance_with("users", "users-2", &ca.sidecar_args("users"))
            .await?;
        let client = mesh
            .meshed_instance_with("client", "client-1", &ca.sidecar_args("client"))
            .await?;
        both_users_answer(&mesh, &client).await?;
        mesh.put_document(
            "destinations/users",
            &json!({ "retries": { "max_attempts": 2, "retry_non_idempotent": true } }),
        )
        .await?;
        policy_says(&client, "retry_non_idempotent", json!(true)).await?;

        // users-1's app resets every connection: its sidecar answers 502
        // upstream-reset over the mTLS hop, a gateway error the caller's
        // sidecar retries on users-2, body and all, over HTTP/2.
        users_1.app.inject(&mesh.http, Fault::Reset, None).await?;
        let post = Call::get("users", "/orders").post("{\"item\":7}");
        let mut retried = 0;
        for _ in 0..20 {
            let reply = mesh
                .http
                .call(client.sidecar.outbound, post.clone())
                .await?;
            let echo = reply.echo()?;
            ensure!(
                echo.instance == "users-2" && echo.body == "{\"item\":7}",
                "{echo:?}"
            );
            ensure!(
                echo.header("x-weft-peer-identity")
                    .is_some_and(|id| id.ends_with("/svc/client")),
                "over mTLS: {echo:?}"
            );
            if attempts(&reply) == Some(2) {
                retried += 1;
            }
        }
        println!("over mTLS: 20 POSTs, {retried} retried on users-2");
        ensure!(retried > 0, "no POST tried users-1 first");
        Ok(())
    });
}

fn echo(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        repeat: 0,
    }
}

/// `x-weft-attempts` in a gRPC answer's metadata (its head).
fn grpc_attempts(metadata: &tonic::metadata::MetadataMap) -> Option<u32> {
    metadata.get(ATTEMPTS)?.to_str().ok()?.parse().ok()
}

#[test]
fn a_grpc_unavailable_is_retried_on_the_other_endpoint_only_when_the_policy_lists_it() {
    run(|ctx| async move {
        let mesh = Mesh::start(&ctx).await?;
        let (users_1, _users_2, client) = two_users(&mesh).await?;
        let mut grpc = echo_client(client.sidecar.outbound, "users").await?;
        // gRPC calls are POSTs: retried only with retry_non_idempotent.
        let retries = |statuses: &[&str]| {
            json!({ "retries": { "max_attempts": 2, "retry_non_idempotent": true,
                                 "retriable_grpc_statuses": statuses } })
        };
        mesh.put_document("destinations/users", &retries(&["unavailable"]))
            .await?;
        policy_says(&client, "grpc_statuses", json!([14])).await?;

        // users-1 fails every call before it starts: UNAVAILABLE in a
        // trailers-only answer.
        users_1
            .inject(&mesh.http, Fault::GrpcStatus(14), None)
            .await?;
        let seen = users_1.grpc_requests_seen(&mesh.http).await?;
        let (mut retried, mut first_time) = (0u64, 0u64);
        for i in 0..20 {
            let reply = grpc
                .unary(echo(&format!("call {i}")))
                .await
                .with_context(|| format!("call {i}, users-1 failing, unavailable listed"))?;
            match grpc_attempts(reply.metadata()) {
                Some(2) => retried += 1,
                Some(1) => first_time += 1,
                other => anyhow::bail!("call {i}: x-weft-attempts {other:?}"),
            }
            let reply = reply.into_inner();
            ensure!(
                reply.served_by == "users-2" && reply.message == format!("call {i}"),
                "call {i}: {reply:?}"
            );
        }
        let failed_on_1 = users_1.grpc_requests_seen(&mesh.http).await? - seen;
        println!(
            "unavailable listed: 20 calls succeeded, {retried} retried (x-weft-attempts: 2), {first_time} first time; users-1 saw {failed_on_1}"
        );
        ensure!(retried > 0, "no call ever tried users-1 first");
        ensure!(
            failed_on_1 == retried,
            "each retried call failed once on users-1: {failed_on_1} calls there, {retried} retried"
        );

        // Not listed: the caller gets users-1's UNAVAILABLE, tried once.
        mesh.put_document("destinations/users", &retries(&["resource_exhausted"]))
            .await?;
        policy_says(&client, "grpc_statuses", json!([8])).await?;
        let seen = users_1.grpc_requests_seen(&mesh.http).await?;
        let (mut failed, mut succeeded) = (0u64, 0u64);
        for i in 0..20 {
            match grpc.unary(echo(&format!("call {i}"))).await {
                Ok(reply) => {
                    ensure!(
                        grpc_attempts(reply.metadata()) == Some(1),
                        "call {i}: {:?}",
                        reply.metadata()
                    );
                    ensure!(reply.into_inner().served_by == "users-2", "call {i}");
                    succeeded += 1;
                }
                Err(status) => {
                    ensure!(
                        status.code() == tonic::Code::Unavailable
                            && status.message() == "injected fault"
                            && grpc_attempts(status.metadata()) == Some(1),
                        "call {i}: users-1's own answer, tried once: {status:?}"
                    );
                    failed += 1;
                }
            }
        }
        let reached_1 = users_1.grpc_requests_seen(&mesh.http).await? - seen;
        println!(
            "unavailable not listed: {failed} of 20 calls got UNAVAILABLE (x-weft-attempts: 1), {succeeded} succeeded; users-1 saw {reached_1}"
        );
        ensure!(failed > 0, "no call went to users-1");
        ensure!(
            reached_1 == failed,
            "no call was sent twice: users-1 saw {reached_1}, {failed} failed"
        );
        let retries = retries_of(&client.sidecar.clusters().await?)?;
        ensure!(
            retries["retries_total"].as_u64() == Some(retried),
            "only the listed status was retried: {retries}"
        );
        Ok(())
    });
}

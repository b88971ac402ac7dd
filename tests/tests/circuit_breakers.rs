//! Circuit breakers and outlier ejection, caller side, over real processes:
//! Consul, the agent, sidecars and test apps that fail on command.
//!
//! - a concurrency threshold trips at exactly its value (503 `overflow`,
//!   `x-weft-overflow: requests`) and recovers;
//! - the breaker goes closed -> open -> half-open -> open (a failed probe,
//!   with a doubled interval) -> half-open -> closed, at the configured
//!   counts and times, as callers and `/clusters` see it;
//! - a gRPC status in the trailers (after a reply) opens it when
//!   `breaker.grpc_statuses` lists it, and not when it does not;
//! - the failure-ratio trigger opens it once the share of failures in the
//!   window is reached over at least `min_requests`, never below;
//! - an endpoint that keeps failing is ejected (and stays so across an
//!   endpoint set change) and returns after its ejection time, and never
//!   more than `max_ejection_percent` are out;
//! - a KV change applies within 1 s with no restart, keeps an open
//!   breaker open when it changes something else, and an invalid document
//!   is rejected naming key, field and reason while the last good one serves.

use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;
use weft_e2e::echo::EchoRequest;
use weft_e2e::echo::echo_client::EchoClient;
use weft_e2e::harness::app::{App, Fault};
use weft_e2e::harness::grpc::{echo_client, streamed_messages};
use weft_e2e::harness::mesh::{MeshedInstance, SETUP_TIMEOUT};
use weft_e2e::harness::sidecar::Sidecar;
use weft_e2e::{Call, HttpClient, Mesh, eventually, plain_users_behind_client, run};

/// Timer tolerance for the open interval and ejection times, on 2 shared
/// cores (a poll every 20 ms, plus scheduling).
const TOLERANCE: Duration = Duration::from_millis(400);

/// The client sidecar's view of cluster `name` in `/clusters`.
async fn cluster(sidecar: &Sidecar, name: &str) -> anyhow::Result<Value> {
    sidecar.outbound_cluster(name).await
}

/// Waits until `/clusters` shows `what` of cluster `name`.
async fn until_cluster(
    sidecar: &Sidecar,
    name: &str,
    what: &str,
    holds: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    eventually(SETUP_TIMEOUT, what, || async {
        let c = cluster(sidecar, name).await?;
        ensure!(holds(&c), "{c}");
        Ok(c)
    })
    .await
}

fn breaker_state(c: &Value) -> &str {
    c["breaker"]["state"].as_str().unwrap_or("none")
}

/// Consul, the agent, plain `users` instances with these ids, the
/// destination document (if any), and the client whose sidecar reaches
/// every instance.
async fn users_behind_client(
    ctx: &weft_e2e::TestCtx,
    ids: &[&str],
    destination: Option<Value>,
) -> anyhow::Result<(Mesh, Vec<App>, MeshedInstance)> {
    plain_users_behind_client(ctx, ids, destination.as_ref()).await
}

async fn get(http: &HttpClient, sidecar: &Sidecar, path: &str) -> anyhow::Result<weft_e2e::Reply> {
    http.call(sidecar.outbound, Call::get("users", path)).await
}

#[test]
fn max_requests_trips_at_exactly_its_value_and_recovers() {
    run(|ctx| async move {
        let (mesh, apps, client) = users_behind_client(
            &ctx,
            &["users-1"],
            Some(json!({ "connection_pool": { "max_requests": 3 } })),
        )
        .await?;
        let (users, sidecar) = (&apps[0], &client.sidecar);
        until_cluster(sidecar, "users", "max_requests 3 applied", |c| {
            c["max_requests"] == 3
        })
        .await?;

        // Three requests held in flight by the app.
        users
            .inject(&mesh.http, Fault::Delay(Duration::from_secs(2)), Some(3))
            .await?;
        let held: Vec<_> = (0..3)
            .map(|_| {
                let http = mesh.http.clone();
                let outbound = sidecar.outbound;
                tokio::spawn(async move { http.call(outbound, Call::get("users", "/held")).await })
            })
            .collect();
        until_cluster(sidecar, "users", "3 requests in flight", |c| {
            c["in_flight"] == 3
        })
        .await?;

        // The fourth fails fast, naming the threshold.
        let start = Instant::now();
        let reply = get(&mesh.http, sidecar, "/fourth").await?;
        let took = start.elapsed();
        ensure!(
            reply.is_overflow("requests"),
            "the 4th request: {} {:?} {}",
            reply.status,
            reply.headers,
            reply.text()
        );
        ctx.measured("overflow answer (max_requests reached)", took);
        ensure!(took < Duration::from_millis(500), "not fast: {took:?}");

        for h in held {
            h.await??.echo().context("a held request")?;
        }
        // Recovered: slots are free again, and the app saw exactly 3 + 1.
        get(&mesh.http, sidecar, "/after").await?.echo()?;
        ensure!(
            users.requests_seen(&mesh.http).await? == 1 + 3 + 1,
            "the overflowing request reached the app"
        );
        let c = cluster(sidecar, "users").await?;
        ensure!(c["overflows_total"] == 1 && c["in_flight"] == 0, "{c}");
        Ok(())
    });
}

/// Polls (every 20 ms) until a request gets through the breaker, i.e. is
/// not refused with `circuit-open`; returns that reply and when it came.
async fn until_admitted(
    http: &HttpClient,
    sidecar: &Sidecar,
) -> anyhow::Result<(weft_e2e::Reply, Instant)> {
    eventually(SETUP_TIMEOUT, "a request passes the breaker", || async {
        let reply = get(http, sidecar, "/probe").await?;
        if reply.weft_error() == Some("circuit-open") {
            bail!("still refused: {}", reply.text());
        }
        Ok((reply, Instant::now()))
    })
    .await
}

fn within(what: &str, got: Duration, want: Duration) -> anyhow::Result<()> {
    ensure!(
        got + Duration::from_millis(50) >= want && got <= want + TOLERANCE,
        "{what}: {got:?}, configured {want:?} (tolerance +{TOLERANCE:?})"
    );
    Ok(())
}

#[test]
fn the_breaker_opens_probes_reopens_with_backoff_and_closes() {
    run(|ctx| async move {
        let (mesh, apps, client) = users_behind_client(
            &ctx,
            &["users-1"],
            Some(
                json!({ "breaker": { "consecutive_failures": 3, "open_interval": "1s",
                                      "max_open_interval": "5s", "half_open_probes": 2 } }),
            ),
        )
        .await?;
        let (users, sidecar) = (&apps[0], &client.sidecar);
        until_cluster(sidecar, "users", "the breaker is configured", |c| {
            breaker_state(c) == "closed"
        })
        .await?;

        // Closed: the app's failures reach the caller, the third opens it.
        users.inject(&mesh.http, Fault::Status(503), None).await?;
        for _ in 0..3 {
            let reply = get(&mesh.http, sidecar, "/fail").await?;
            ensure!(
                reply.status == 503 && reply.weft_error().is_none(),
                "the app's own 503 passes while closed: {:?}",
                reply.headers
            );
        }
        let opened = Instant::now();
        let seen = users.requests_seen(&mesh.http).await?;

        // Open: refused without reaching the app.
        let reply = get(&mesh.http, sidecar, "/refused").await?;
        ensure!(
            reply.status == 503 && reply.weft_error() == Some("circuit-open"),
            "{} {:?} {}",
            reply.status,
            reply.weft_error(),
            reply.text()
        );
        let c = cluster(sidecar, "users").await?;
        ensure!(
            breaker_state(&c) == "open" && c["breaker"]["opened_total"] == 1,
            "{c}"
        );

        // After 1 s a probe goes through; it fails: open again for 2 s.
        let (probe, probed) = until_admitted(&mesh.http, sidecar).await?;
        ensure!(
            probe.status == 503 && probe.weft_error().is_none(),
            "{probe:?}"
        );
        within(
            "open -> first probe",
            probed - opened,
            Duration::from_secs(1),
        )?;
        ctx.measured("breaker open interval (configured 1 s)", probed - opened);
        ensure!(
            users.requests_seen(&mesh.http).await? == seen + 1,
            "only the probe reached the app while open"
        );
        let c = cluster(sidecar, "users").await?;
        ensure!(breaker_state(&c) == "open", "a failed probe reopens: {c}");
        let remaining = c["breaker"]["open_remaining_ms"].as_u64().unwrap_or(0);
        ensure!(
            (1500..=2000).contains(&remaining),
            "reopened for the doubled interval (2 s), {remaining} ms left"
        );

        // The app recovers; after 2 s the 2 probes succeed and close it.
        users.clear_fault(&mesh.http).await?;
        let (probe, probed_again) = until_admitted(&mesh.http, sidecar).await?;
        probe.echo()?;
        within(
            "reopen -> next probe",
            probed_again - probed,
            Duration::from_secs(2),
        )?;
        ctx.measured(
            "breaker reopened interval (doubled, 2 s)",
            probed_again - probed,
        );
        get(&mesh.http, sidecar, "/second-probe").await?.echo()?;
        let c = cluster(sidecar, "users").await?;
        ensure!(
            breaker_state(&c) == "closed"
                && c["breaker"]["closed_total"] == 1
                && c["breaker"]["half_opened_total"] == 2
                && c["breaker"]["opened_total"] == 2,
            "{c}"
        );
        for _ in 0..5 {
            get(&mesh.http, sidecar, "/ok").await?.echo()?;
        }
        let log = sidecar.log()?;
        for event in [
            "circuit breaker opened",
            "circuit breaker half-open",
            "circuit breaker reopened",
            "circuit breaker closed",
        ] {
            ensure!(
                log.lines()
                    .any(|l| l.contains(event) && l.contains("users")),
                "no '{event}' line naming the cluster in the sidecar's log"
            );
        }
        Ok(())
    });
}

fn ejected(c: &Value) -> Vec<String> {
    c["endpoints"]
        .as_array()
        .map(|eps| {
            eps.iter()
                .filter(|e| !e["ejected_for_ms"].is_null())
                .filter_map(|e| e["instance_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_failing_endpoint_is_ejected_across_eds_updates_and_returns_and_the_share_is_never_exceeded() {
    run(|ctx| async move {
        let (mesh, apps, client) = users_behind_client(
            &ctx,
            &["users-1", "users-2", "users-3"],
            Some(json!({ "load_balancer": "round_robin",
                         "outlier_detection": { "consecutive_5xx": 2, "base_ejection_time": "2s",
                                                "max_ejection_percent": 50 } })),
        )
        .await?;
        let sidecar = &client.sidecar;

        // Two of three fail; 50 % allows one ejection (2 of 3 is 67 %).
        apps[0].inject(&mesh.http, Fault::Status(503), None).await?;
        apps[1].inject(&mesh.http, Fault::Status(503), None).await?;
        let mut first_ejection = None;
        for _ in 0..60 {
            get(&mesh.http, sidecar, "/").await?;
            let out = ejected(&cluster(sidecar, "users").await?);
            ensure!(out.len() <= 1, "more than 50 % ejected: {out:?}");
            if first_ejection.is_none() && out.len() == 1 {
                first_ejection = Some((out[0].clone(), Instant::now()));
            }
        }
        let (out, ejected_at) = first_ejection.context("no endpoint was ejected")?;
        ensure!(
            out == "users-1" || out == "users-2",
            "a healthy endpoint was ejected: {out}"
        );
        let log = sidecar.log()?;
        ensure!(
            log.lines()
                .any(|l| l.contains("outlier endpoint ejected") && l.contains("users")),
            "no ejection line in the sidecar's log"
        );
        ensure!(
            log.lines()
                .any(|l| l.contains("outlier endpoint kept") && l.contains("max_ejection_percent")),
            "no line saying why the second failing endpoint stayed"
        );

        // The endpoint set changes (a 4th instance): the ejection stays.
        let _users_4 = mesh.plain_instance("users", "users-4").await?;
        let c = until_cluster(sidecar, "users", "users-4 joins the endpoints", |c| {
            c["endpoints"].as_array().is_some_and(|e| e.len() == 4)
        })
        .await?;
        ensure!(
            ejected(&c) == [out.clone()],
            "the ejection did not survive the endpoint update: {c}"
        );
        ctx.measured("EDS update applied while ejected", ejected_at.elapsed());

        // Healed, the ejected endpoint gets traffic again after ~2 s.
        apps[0].clear_fault(&mesh.http).await?;
        apps[1].clear_fault(&mesh.http).await?;
        let returned = eventually(
            SETUP_TIMEOUT,
            "the ejected endpoint answers again",
            || async {
                let echo = get(&mesh.http, sidecar, "/").await?.echo()?;
                ensure!(echo.instance == out, "answered by {}", echo.instance);
                Ok(Instant::now())
            },
        )
        .await?;
        let took = returned - ejected_at;
        ctx.measured("outlier ejection length (configured 2 s)", took);
        ensure!(
            took + Duration::from_millis(100) >= Duration::from_secs(2)
                && took <= Duration::from_secs(2) + TOLERANCE,
            "returned after {took:?}, configured 2 s"
        );
        let c = cluster(sidecar, "users").await?;
        ensure!(ejected(&c).is_empty(), "{c}");
        Ok(())
    });
}

#[test]
fn breaker_settings_apply_from_kv_within_1s_and_an_open_breaker_survives_unrelated_changes() {
    run(|ctx| async move {
        let (mesh, apps, mut client) = users_behind_client(&ctx, &["users-1"], None).await?;
        let users = &apps[0];
        users.inject(&mesh.http, Fault::Status(503), None).await?;
        let reply = get(&mesh.http, &client.sidecar, "/").await?;
        ensure!(
            reply.status == 503 && reply.weft_error().is_none(),
            "no breaker yet"
        );

        // A breaker from KV: callers see it open within 1 s of the write.
        let breaker = json!({ "consecutive_failures": 2, "open_interval": "30s" });
        mesh.put_document("destinations/users", &json!({ "breaker": breaker }))
            .await?;
        let written = Instant::now();
        eventually(SETUP_TIMEOUT, "the breaker from KV opens", || async {
            let reply = get(&mesh.http, &client.sidecar, "/").await?;
            ensure!(
                reply.weft_error() == Some("circuit-open"),
                "{}",
                reply.status
            );
            Ok(())
        })
        .await?;
        let took = written.elapsed();
        ctx.measured("KV breaker -> callers see circuit-open", took);
        ensure!(took < Duration::from_secs(1), "took {took:?}");

        // Another field changes: the breaker stays open.
        mesh.put_document(
            "destinations/users",
            &json!({ "breaker": breaker, "connection_pool": { "max_requests": 7 } }),
        )
        .await?;
        until_cluster(&client.sidecar, "users", "max_requests 7 applied", |c| {
            c["max_requests"] == 7
        })
        .await?;
        let c = cluster(&client.sidecar, "users").await?;
        ensure!(
            breaker_state(&c) == "open" && c["breaker"]["opened_total"] == 1,
            "{c}"
        );
        let reply = get(&mesh.http, &client.sidecar, "/").await?;
        ensure!(
            reply.weft_error() == Some("circuit-open"),
            "{}",
            reply.status
        );

        // An invalid breaker is rejected, naming key, field and reason; the
        // last good one keeps serving.
        mesh.put_document(
            "destinations/users",
            &json!({ "breaker": { "failure_ratio": 1.5 } }),
        )
        .await?;
        let rejection = eventually(
            SETUP_TIMEOUT,
            "the invalid document is rejected",
            || async {
                let status = mesh.agent.status().await?;
                status["rejected_documents"]
                    .as_array()
                    .and_then(|list| {
                        list.iter().find(|r| {
                            r["key"]
                                .as_str()
                                .is_some_and(|k| k.ends_with("destinations/users"))
                        })
                    })
                    .cloned()
                    .with_context(|| format!("not rejected yet: {}", status["rejected_documents"]))
            },
        )
        .await?;
        let errors = rejection["errors"].as_array().context("no errors")?;
        ensure!(
            errors.iter().any(|e| e["field"] == "breaker.failure_ratio"
                && e["reason"].as_str().is_some_and(|r| !r.is_empty())),
            "{rejection}"
        );
        let reply = get(&mesh.http, &client.sidecar, "/").await?;
        ensure!(
            reply.weft_error() == Some("circuit-open"),
            "the last good breaker serves"
        );

        // Removed from KV: no breaker, the app's answers pass again.
        mesh.put_document("destinations/users", &json!({})).await?;
        let written = Instant::now();
        eventually(SETUP_TIMEOUT, "the breaker is gone", || async {
            let reply = get(&mesh.http, &client.sidecar, "/").await?;
            ensure!(
                reply.status == 503 && reply.weft_error().is_none(),
                "{:?}",
                reply.weft_error()
            );
            Ok(())
        })
        .await?;
        ensure!(
            written.elapsed() < Duration::from_secs(1),
            "took {:?}",
            written.elapsed()
        );
        client.sidecar.check_running()?;
        Ok(())
    });
}

#[test]
fn only_what_failure_on_names_counts_and_timeouts_do() {
    run(|ctx| async move {
        let (mesh, apps, client) = users_behind_client(
            &ctx,
            &["users-1"],
            Some(json!({ "request_timeout": "200ms",
                         "breaker": { "consecutive_failures": 2, "failure_on": ["timeout"],
                                      "open_interval": "30s" } })),
        )
        .await?;
        let (users, sidecar) = (&apps[0], &client.sidecar);
        until_cluster(sidecar, "users", "the breaker is configured", |c| {
            breaker_state(c) == "closed"
        })
        .await?;

        // 500s are not timeouts: they pass and do not count.
        users
            .inject(&mesh.http, Fault::Status(500), Some(3))
            .await?;
        for _ in 0..3 {
            let reply = get(&mesh.http, sidecar, "/").await?;
            ensure!(reply.status == 500, "{}", reply.status);
        }
        let c = cluster(sidecar, "users").await?;
        ensure!(breaker_state(&c) == "closed", "{c}");

        // Two timeouts (504 from the sidecar) in a row open it.
        users
            .inject(&mesh.http, Fault::Delay(Duration::from_secs(1)), None)
            .await?;
        for _ in 0..2 {
            let reply = get(&mesh.http, sidecar, "/").await?;
            ensure!(
                reply.status == 504 && reply.weft_error() == Some("timeout"),
                "{} {:?}",
                reply.status,
                reply.weft_error()
            );
        }
        let reply = get(&mesh.http, sidecar, "/").await?;
        ensure!(
            reply.status == 503 && reply.weft_error() == Some("circuit-open"),
            "{} {:?}",
            reply.status,
            reply.weft_error()
        );
        let c = cluster(sidecar, "users").await?;
        ensure!(breaker_state(&c) == "open", "{c}");
        Ok(())
    });
}

#[test]
fn the_failure_ratio_opens_the_breaker_only_over_min_requests() {
    run(|ctx| async move {
        let (mesh, apps, client) = users_behind_client(&ctx, &["users-1"], None).await?;
        let (users, sidecar) = (&apps[0], &client.sidecar);
        // Written once the client has warmed up, so that the window holds
        // only the requests below.
        mesh.put_document(
            "destinations/users",
            &json!({ "breaker": { "consecutive_failures": 0, "failure_ratio": 0.5,
                                  "window": "10s", "min_requests": 10,
                                  "open_interval": "30s" } }),
        )
        .await?;
        until_cluster(sidecar, "users", "the breaker is configured", |c| {
            breaker_state(c) == "closed"
        })
        .await?;

        // 5 failures of 9 requests: over half, but fewer than 10 requests.
        users
            .inject(&mesh.http, Fault::Status(503), Some(5))
            .await?;
        for i in 0..9 {
            let reply = get(&mesh.http, sidecar, "/").await?;
            let want = if i < 5 { 503 } else { 200 };
            ensure!(
                reply.status == want && reply.weft_error().is_none(),
                "request {i}: the app's own answer passes: {} {:?}",
                reply.status,
                reply.weft_error()
            );
        }
        let c = cluster(sidecar, "users").await?;
        ensure!(
            breaker_state(&c) == "closed"
                && c["breaker"]["window_requests"] == 9
                && c["breaker"]["window_failures"] == 5,
            "5 of 9 failed, below min_requests: {c}"
        );

        // The 10th request fails: 6 of 10, the ratio with enough requests.
        users
            .inject(&mesh.http, Fault::Status(503), Some(1))
            .await?;
        let reply = get(&mesh.http, sidecar, "/").await?;
        ensure!(
            reply.status == 503 && reply.weft_error().is_none(),
            "the 10th is the app's answer: {:?}",
            reply.weft_error()
        );
        let seen = users.requests_seen(&mesh.http).await?;
        let reply = get(&mesh.http, sidecar, "/").await?;
        ensure!(
            reply.status == 503 && reply.weft_error() == Some("circuit-open"),
            "open after 6 of 10: {} {:?} {}",
            reply.status,
            reply.weft_error(),
            reply.text()
        );
        ensure!(
            users.requests_seen(&mesh.http).await? == seen,
            "a refused request never reaches the app"
        );
        let c = cluster(sidecar, "users").await?;
        ensure!(
            breaker_state(&c) == "open" && c["breaker"]["opened_total"] == 1,
            "{c}"
        );
        let log = sidecar.log()?;
        ensure!(
            log.lines()
                .any(|l| l.contains("circuit breaker opened")
                    && l.contains("6 of 10 requests failed")),
            "no log line gives the ratio that opened it"
        );
        Ok(())
    });
}

/// One unary echo call, and the status it ends with (OK included).
async fn grpc_status_of(grpc: &mut EchoClient<Channel>, message: &str) -> tonic::Status {
    let call = EchoRequest {
        message: message.into(),
        repeat: 0,
    };
    match grpc.unary(call).await {
        Ok(_) => tonic::Status::new(Code::Ok, ""),
        Err(status) => status,
    }
}

/// A gRPC caller's view of a call the breaker refuses: UNAVAILABLE (what
/// gRPC clients fail over and retry on), the reason in the message, and
/// `x-weft-error: circuit-open` in the metadata.
async fn grpc_refused_by_the_breaker(grpc: &mut EchoClient<Channel>) -> anyhow::Result<()> {
    let call = EchoRequest {
        message: "refused?".into(),
        repeat: 0,
    };
    let status = match grpc.unary(call).await {
        Ok(_) => bail!("not refused by the breaker"),
        Err(status) => status,
    };
    let error = status
        .metadata()
        .get("x-weft-error")
        .and_then(|v| v.to_str().ok());
    ensure!(
        status.code() == Code::Unavailable
            && error == Some("circuit-open")
            && status.message().contains("circuit"),
        "{status:?}"
    );
    Ok(())
}

#[test]
fn a_grpc_status_in_the_trailers_opens_the_breaker_only_when_grpc_statuses_lists_it() {
    run(|ctx| async move {
        let (mesh, apps, client) = users_behind_client(&ctx, &["users-1"], None).await?;
        let (users, sidecar) = (&apps[0], &client.sidecar);
        let mut grpc = echo_client(sidecar.outbound, "users").await?;
        let breaker = |grpc_statuses: &[u32]| {
            json!({ "breaker": { "consecutive_failures": 3, "open_interval": "30s",
                                 "grpc_statuses": grpc_statuses } })
        };
        mesh.put_document("destinations/users", &breaker(&[]))
            .await?;
        until_cluster(sidecar, "users", "the breaker is configured", |c| {
            breaker_state(c) == "closed" && c["breaker"]["grpc_statuses"] == json!([])
        })
        .await?;

        // A healthy stream passes whole and counts when it ends, as answered.
        let replies = streamed_messages(&mut grpc, "tick", 3).await?;
        ensure!(replies == ["tick-0", "tick-1", "tick-2"], "{replies:?}");

        // Every call gets one reply, then UNAVAILABLE in the trailers.
        users
            .inject(&mesh.http, Fault::GrpcStatusInTrailers(14), None)
            .await?;
        for i in 0..5 {
            let status = grpc_status_of(&mut grpc, &format!("unlisted {i}")).await;
            ensure!(
                status.code() == Code::Unavailable && status.message() == "injected fault",
                "call {i}: {status:?}"
            );
        }
        let c = cluster(sidecar, "users").await?;
        ensure!(
            breaker_state(&c) == "closed"
                && c["breaker"]["window_requests"] == 6
                && c["breaker"]["window_failures"] == 0,
            "not listed: 6 calls answered, none failed: {c}"
        );

        // Listed: the third such call in a row opens it.
        mesh.put_document("destinations/users", &breaker(&[14]))
            .await?;
        until_cluster(sidecar, "users", "grpc_statuses [14] applied", |c| {
            c["breaker"]["grpc_statuses"] == json!([14])
        })
        .await?;
        for i in 0..3 {
            let status = grpc_status_of(&mut grpc, &format!("listed {i}")).await;
            ensure!(
                status.code() == Code::Unavailable && status.message() == "injected fault",
                "the app's own answers pass while closed; call {i}: {status:?}"
            );
        }
        let c = cluster(sidecar, "users").await?;
        ensure!(
            breaker_state(&c) == "open" && c["breaker"]["opened_total"] == 1,
            "{c}"
        );
        let seen = users.grpc_requests_seen(&mesh.http).await?;
        grpc_refused_by_the_breaker(&mut grpc).await?;
        ensure!(
            users.grpc_requests_seen(&mesh.http).await? == seen,
            "a refused call never reaches the app"
        );
        let log = sidecar.log()?;
        ensure!(
            log.lines().any(|l| l.contains("circuit breaker opened")
                && l.contains("users")
                && l.contains("grpc: Some(14)")),
            "no log line says the gRPC status opened it"
        );
        Ok(())
    });
}

//! The JSON access log over real processes (Consul, the agent, a meshed
//! `users` and a client): the client's sidecar logs with sampling 0, so
//! its successful calls leave no line while every failure does, naming its
//! cause (`no-route`, `connect-failed` from a dead app) with the request's
//! trace id and request id; `users`' sidecar logs everything (sampling 1),
//! with the bytes it sent. Over mTLS, an inbound denial's line names the
//! caller's SPIFFE ID.

use std::path::Path;

use anyhow::{Context as _, ensure};
use serde_json::{Value, json};
use weft_e2e::harness::identity::MeshCa;
use weft_e2e::harness::mesh::{SETUP_TIMEOUT, wait_for_instances};
use weft_e2e::{Call, Mesh, eventually, run};

const TRACE_503: &str = "0af7651916cd43dd8448eb211c80319c";
const TRACE_DEAD: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Every line of a log file as JSON (none yet if it is still empty).
fn lines(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| serde_json::from_str(line).with_context(|| format!("not JSON: {line}")))
        .collect()
}

/// The line of the request with this `x-request-id`.
fn line_of<'a>(lines: &'a [Value], request_id: &str) -> Option<&'a Value> {
    lines.iter().find(|l| l["request_id"] == request_id)
}

/// `2026-11-29T11:04:30.123Z`.
fn is_rfc3339_utc_millis(time: &str) -> bool {
    let b = time.as_bytes();
    let digits = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22];
    b.len() == 24
        && digits.iter().all(|&i| b[i].is_ascii_digit())
        && [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
            (23, b'Z'),
        ]
        .iter()
        .all(|&(i, c)| b[i] == c)
}

#[test]
fn failures_are_logged_with_their_cause_and_ids_and_sampling_zero_skips_successes() {
    run(|ctx| async move {
        let mesh = Mesh::start(&ctx).await?;
        let client_log = ctx.log_dir.join("client-access.jsonl");
        let users_log = ctx.log_dir.join("users-access.jsonl");
        let arg = |p: &Path| p.display().to_string();
        let mut users = mesh
            .meshed_instance_with(
                "users",
                "users-1",
                &["--access-log".into(), arg(&users_log)],
            )
            .await?;
        let client = mesh
            .meshed_instance_with(
                "client",
                "client-1",
                &[
                    "--access-log".into(),
                    arg(&client_log),
                    "--access-log-sampling".into(),
                    "0".into(),
                ],
            )
            .await?;
        let outbound = client.sidecar.outbound;
        wait_for_instances(&mesh.http, outbound, Call::get("users", "/"), &["users-1"]).await?;

        let mut ok_bytes = 0;
        for i in 0..5 {
            let id = format!("ok-{i}");
            let headers = [("x-request-id", id.as_str())];
            let reply = mesh
                .http
                .call(outbound, Call::get("users", "/hello").headers(&headers))
                .await?;
            ensure!(reply.status == 200, "{}", reply.status);
            ok_bytes = reply.body.len();
        }
        let tp_503 = format!("00-{TRACE_503}-00f067aa0ba902b7-01");
        let headers = [
            ("x-request-id", "app-503"),
            ("traceparent", tp_503.as_str()),
        ];
        let reply = mesh
            .http
            .call(
                outbound,
                Call::get("users", "/status/503").headers(&headers),
            )
            .await?;
        ensure!(reply.status == 503, "{}", reply.status);
        let headers = [("x-request-id", "no-route-1")];
        let reply = mesh
            .http
            .call(outbound, Call::get("nobody", "/").headers(&headers))
            .await?;
        ensure!(
            reply.weft_error() == Some("no-route"),
            "{:?}",
            reply.weft_error()
        );
        // Its app gone, users' sidecar answers 503 connect-failed.
        users.app.kill();
        let tp_dead = format!("00-{TRACE_DEAD}-00f067aa0ba902b7-00");
        let headers = [
            ("x-request-id", "dead-1"),
            ("traceparent", tp_dead.as_str()),
        ];
        let reply = mesh
            .http
            .call(outbound, Call::get("users", "/orders/7").headers(&headers))
            .await?;
        ensure!(
            reply.weft_error() == Some("connect-failed"),
            "{} {:?}",
            reply.status,
            reply.weft_error()
        );

        // Lines are written by a thread of their own, off the request path.
        let client_lines = eventually(SETUP_TIMEOUT, "the client's three failures", || async {
            let all = lines(&client_log)?;
            ensure!(all.len() >= 3, "{} lines so far", all.len());
            Ok(all)
        })
        .await?;
        ensure!(
            client_lines.len() == 3,
            "sampling 0 logged more than the failures: {client_lines:#?}"
        );
        for line in &client_lines {
            let time = line["time"].as_str().unwrap_or_default();
            ensure!(
                line.as_object().is_some_and(|o| o.len() == 18) && is_rfc3339_utc_millis(time),
                "not a complete line with an RFC 3339 UTC time: {line}"
            );
        }
        let app_503 = line_of(&client_lines, "app-503").context("no line for app-503")?;
        ensure!(
            app_503["status"] == 503
                && app_503["weft_error"].is_null()
                && app_503["trace_id"] == TRACE_503
                && app_503["destination"] == "users"
                && app_503["route"] == "default"
                && app_503["direction"] == "outbound"
                && app_503["method"] == "GET"
                && app_503["path"] == "/status/503"
                && app_503["endpoint"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("127.0.0.1:")),
            "the app's 503: {app_503}"
        );
        let no_route = line_of(&client_lines, "no-route-1").context("no line for no-route-1")?;
        ensure!(
            no_route["status"] == 404
                && no_route["weft_error"] == "no-route"
                && no_route["destination"].is_null()
                && no_route["endpoint"].is_null(),
            "the no-route refusal: {no_route}"
        );
        let dead = line_of(&client_lines, "dead-1").context("no line for dead-1")?;
        ensure!(
            dead["status"] == 503
                && dead["weft_error"] == "connect-failed"
                && dead["trace_id"] == TRACE_DEAD,
            "the dead app's 503 on the client: {dead}"
        );

        // users' sidecar (sampling 1) logged its side of each: the
        // successes with the bytes it sent, and the same failure, where it
        // happened (the app's address as the endpoint).
        let users_lines = eventually(SETUP_TIMEOUT, "users' lines", || async {
            let all = lines(&users_log)?;
            ensure!(
                line_of(&all, "dead-1").is_some(),
                "{} lines so far",
                all.len()
            );
            Ok(all)
        })
        .await?;
        let ok = line_of(&users_lines, "ok-4").context("no line for ok-4 on users")?;
        ensure!(
            ok["status"] == 200
                && ok["direction"] == "inbound"
                && ok["destination"] == "users"
                && ok["bytes_sent"] == ok_bytes
                && ok["bytes_received"] == 0
                && ok["weft_error"].is_null(),
            "a success on users: {ok} (sent {ok_bytes} bytes)"
        );
        let dead = line_of(&users_lines, "dead-1").context("no line for dead-1 on users")?;
        let app_port = users.app.port();
        ensure!(
            dead["weft_error"] == "connect-failed"
                && dead["trace_id"] == TRACE_DEAD
                && dead["endpoint"] == format!("127.0.0.1:{app_port}"),
            "the dead app's 503 on users: {dead}"
        );
        let page = client.sidecar.metrics().await?;
        ensure!(
            page.value("weft_access_log_lines_total", &[]) == 3.0
                && page.value("weft_access_log_dropped_total", &[]) == 0.0,
            "access log counters: {:?}",
            page.samples
                .iter()
                .filter(|s| s.name.starts_with("weft_access_log"))
                .collect::<Vec<_>>()
        );
        Ok(())
    });
}

#[test]
fn an_inbound_denial_is_logged_with_the_callers_identity_and_its_cause() {
    run(|ctx| async move {
        let ca = MeshCa::create(&ctx.log_dir, &["client", "users"])?;
        let mesh = Mesh::start_with(&ctx, &ca.agent_args("1h")).await?;
        let users_log = ctx.log_dir.join("users-access.jsonl");
        let mut users_args = ca.sidecar_args("users");
        users_args.extend(["--access-log".into(), users_log.display().to_string()]);
        let _users = mesh
            .meshed_instance_with("users", "users-1", &users_args)
            .await?;
        let client = mesh
            .meshed_instance_with("client", "client-1", &ca.sidecar_args("client"))
            .await?;
        let outbound = client.sidecar.outbound;
        wait_for_instances(&mesh.http, outbound, Call::get("users", "/"), &["users-1"]).await?;
        mesh.put_document("policies/users", &json!({ "default": "deny" }))
            .await?;
        let headers = [("x-request-id", "to-be-denied")];
        eventually(
            SETUP_TIMEOUT,
            "users' sidecar denies the client",
            || async {
                let reply = mesh
                    .http
                    .call(outbound, Call::get("users", "/private").headers(&headers))
                    .await?;
                ensure!(reply.weft_error() == Some("denied"), "{}", reply.status);
                Ok(())
            },
        )
        .await?;
        let denied = eventually(SETUP_TIMEOUT, "the denial's line", || async {
            let all = lines(&users_log)?;
            all.into_iter()
                .find(|l| l["request_id"] == "to-be-denied" && l["weft_error"] == "denied")
                .context("no line yet")
        })
        .await?;
        let caller = denied["source_identity"].as_str().unwrap_or_default();
        ensure!(
            denied["status"] == 403
                && denied["direction"] == "inbound"
                && denied["path"] == "/private"
                && caller.starts_with("spiffe://")
                && caller.ends_with("/svc/client")
                && denied["endpoint"].is_null(),
            "the denial: {denied}"
        );
        Ok(())
    });
}

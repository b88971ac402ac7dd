//! Route documents in Consul KV: a change reaches the sidecars within 1 s;
//! an invalid document is rejected (with key, field and reason in the
//! agent's /status and log) while its last good version keeps serving and
//! the other documents are unaffected.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use serde_json::{Value, json};
use tokio::time::Instant;
use weft_e2e::harness::fixtures::all_to;
use weft_e2e::harness::mesh::SETUP_TIMEOUT;
use weft_e2e::{Call, Mesh, Traffic, TrafficSpec, eventually, run, wait_for_route};

const BUDGET: Duration = Duration::from_secs(1);

#[test]
fn a_kv_route_change_applies_within_1s() {
    run(|ctx| async move {
        let mesh = Mesh::start(&ctx).await?;
        let _users = mesh.plain_instance("users", "users-1").await?;
        let _users_v2 = mesh.plain_instance("users-v2", "users-v2-1").await?;
        let client = mesh.client().await?;
        wait_for_route(
            &mesh.http,
            client.sidecar.outbound,
            Call::get("users", "/"),
            "users is routed",
            |e| e.instance == "users-1",
        )
        .await?;
        let traffic = Traffic::start(
            mesh.http.clone(),
            TrafficSpec::get(client.sidecar.outbound, "users", 200),
        );

        mesh.put_document("routes/users", &all_to("users-v2"))
            .await?;
        let written = Instant::now();
        let latency = eventually(
            SETUP_TIMEOUT,
            "the new route sends users to users-v2",
            || async {
                let report = traffic.report();
                let hit = report.first_hit("users-v2-1", written).context("not yet")?;
                Ok(hit.saturating_duration_since(written))
            },
        )
        .await?;
        ctx.measured("KV route change applied", latency);

        let report = traffic.stop().await;
        report.assert_no_failures()?;
        ensure!(latency < BUDGET, "the route change took {latency:?}");
        Ok(())
    });
}

/// One invalid version of `routes/users`, and words its rejection must name.
struct Invalid {
    what: &'static str,
    document: String,
    /// At least one of these appears in the rejection's field or reason.
    mentions: &'static [&'static str],
}

fn invalid_documents() -> Vec<Invalid> {
    let route = |route: Value| json!({ "routes": [route] }).to_string();
    vec![
        Invalid {
            what: "bad JSON",
            document: r#"{ "routes": [ "#.into(),
            mentions: &["json", "JSON", "EOF", "eof", "parse", "syntax"],
        },
        Invalid {
            what: "an unknown field",
            document: json!({ "routes": [], "colour": "blue" }).to_string(),
            mentions: &["colour"],
        },
        Invalid {
            what: "a bad regex",
            document: route(
                json!({ "match": { "path_regex": "/users/([0-9]+" }, "destination": "users" }),
            ),
            mentions: &["path_regex", "regex"],
        },
        Invalid {
            what: "weights that sum to 0",
            document: route(json!({ "split": [
                { "destination": "users", "weight": 0 }, { "destination": "users-v2", "weight": 0 } ] })),
            mentions: &["weight", "split"],
        },
        Invalid {
            what: "an unknown destination",
            document: route(json!({ "destination": "no-such-service" })),
            mentions: &["no-such-service"],
        },
    ]
}

#[test]
fn an_invalid_kv_document_is_rejected_and_the_last_good_one_keeps_serving() {
    run(|ctx| async move {
        let mut mesh = Mesh::start(&ctx).await?;
        let _users = mesh.plain_instance("users", "users-1").await?;
        let _users_v2 = mesh.plain_instance("users-v2", "users-v2-1").await?;
        let _orders = mesh.plain_instance("orders", "orders-1").await?;
        let _orders_v2 = mesh.plain_instance("orders-v2", "orders-v2-1").await?;
        let client = mesh.client().await?;
        let outbound = client.sidecar.outbound;

        // The last good version: users -> users-v2.
        mesh.put_document("routes/users", &all_to("users-v2"))
            .await?;
        wait_for_route(
            &mesh.http,
            outbound,
            Call::get("users", "/"),
            "the good route applies",
            |e| e.service == "users-v2",
        )
        .await?;
        let traffic = Traffic::start(mesh.http.clone(), TrafficSpec::get(outbound, "users", 100));

        let mut previous: Option<Value> = None;
        for invalid in invalid_documents() {
            mesh.put_raw_document("routes/users", &invalid.document)
                .await?;
            let written = Instant::now();
            let rejection = eventually(
                SETUP_TIMEOUT,
                &format!("{} is rejected in /status", invalid.what),
                || async {
                    let status = mesh.agent.status().await?;
                    let rejection = rejection_of(&status, "routes/users")?;
                    ensure!(
                        Some(&rejection) != previous.as_ref(),
                        "still the previous rejection: {rejection}"
                    );
                    Ok(rejection)
                },
            )
            .await?;
            ctx.measured(
                &format!("rejection of {} visible in /status", invalid.what),
                written.elapsed(),
            );
            let errors = rejection["errors"]
                .as_array()
                .context("rejection without errors")?;
            ensure!(
                !errors.is_empty(),
                "{}: no errors listed: {rejection}",
                invalid.what
            );
            let said = errors
                .iter()
                .map(|error| {
                    format!(
                        "{} {}",
                        error["field"].as_str().unwrap_or(""),
                        error["reason"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            for error in errors {
                ensure!(
                    error["reason"]
                        .as_str()
                        .is_some_and(|reason| !reason.is_empty())
                        && error.get("field").is_some(),
                    "{}: an error without field or reason: {rejection}",
                    invalid.what
                );
            }
            ensure!(
                invalid.mentions.iter().any(|word| said.contains(word)),
                "{}: the rejection names none of {:?}: {said}",
                invalid.what,
                invalid.mentions
            );
            previous = Some(rejection);

            // The last good version still routes users to users-v2.
            let echo = mesh.http.call_get(outbound, "users", "/").await?.echo()?;
            ensure!(
                echo.service == "users-v2",
                "after {}: users went to {}",
                invalid.what,
                echo.service
            );
        }

        // Another document changes meanwhile: it applies.
        mesh.put_document("routes/orders", &all_to("orders-v2"))
            .await?;
        wait_for_route(
            &mesh.http,
            outbound,
            Call::get("orders", "/"),
            "another document still applies",
            |e| e.service == "orders-v2",
        )
        .await?;

        let status = mesh.agent.status().await?;
        let rejected_total = status["counters"]["documents_rejected_total"]
            .as_u64()
            .unwrap_or_default();
        ensure!(
            rejected_total >= 5,
            "documents_rejected_total is {rejected_total} after 5 rejections: {status}"
        );
        let log = std::fs::read_to_string(mesh.agent.process().log_path())?;
        ensure!(
            log.lines()
                .any(|line| line.contains("rejected") && line.contains("routes/users")),
            "the agent's log names no rejection of routes/users"
        );

        // A valid version replaces the rejected one and clears it from /status.
        mesh.put_document("routes/users", &all_to("users")).await?;
        wait_for_route(
            &mesh.http,
            outbound,
            Call::get("users", "/"),
            "a fixed document applies",
            |e| e.service == "users",
        )
        .await?;
        eventually(SETUP_TIMEOUT, "the rejection leaves /status", || async {
            let status = mesh.agent.status().await?;
            ensure!(
                rejection_of(&status, "routes/users").is_err(),
                "still listed: {status}"
            );
            Ok(())
        })
        .await?;

        let report = traffic.stop().await;
        // Until the fix, every request went to users-v2; none failed.
        report.assert_no_failures()?;
        Ok(())
    });
}

/// The entry of `rejected_documents` whose key names `key`.
fn rejection_of(status: &Value, key: &str) -> anyhow::Result<Value> {
    status["rejected_documents"]
        .as_array()
        .context("/status has no rejected_documents list")?
        .iter()
        .find(|entry| entry["key"].as_str().is_some_and(|k| k.ends_with(key)))
        .cloned()
        .with_context(|| {
            format!(
                "no rejection of {key} in /status: {}",
                status["rejected_documents"]
            )
        })
}

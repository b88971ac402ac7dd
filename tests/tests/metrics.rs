//! `/metrics` on the sidecars' admin port, over real processes (Consul,
//! the agent, a meshed `users` and a client): the page is OpenMetrics
//! text, and after known traffic it shows exactly that traffic per
//! direction, destination, method and status class, with latency
//! histograms whose counts match; a breaker's state and trips, the
//! connections and overflows of a destination, the config stream, and the
//! process's own CPU, memory and descriptors show in their series.

use anyhow::ensure;
use serde_json::json;
use weft_e2e::harness::app::Fault;
use weft_e2e::harness::mesh::SETUP_TIMEOUT;
use weft_e2e::harness::metrics::MetricsPage;
use weft_e2e::{Call, Mesh, eventually, run};

const REQUESTS: &str = "weft_requests_total";
const DURATION_COUNT: &str = "weft_request_duration_seconds_count";
const DURATION_BUCKET: &str = "weft_request_duration_seconds_bucket";

fn requests(page: &MetricsPage, direction: &str, method: &str, class: &str) -> f64 {
    page.value(
        REQUESTS,
        &[
            ("direction", direction),
            ("destination", "users"),
            ("method", method),
            ("status_class", class),
        ],
    )
}

/// The duration histogram of `direction` to users is well-formed: buckets
/// never decrease, and `+Inf` holds every observation.
fn histogram_is_consistent(page: &MetricsPage, direction: &str) -> anyhow::Result<f64> {
    let labels = [("direction", direction), ("destination", "users")];
    let count = page.value(DURATION_COUNT, &labels);
    let mut previous = 0.0;
    let mut inf = None;
    for bucket in page
        .named(DURATION_BUCKET)
        .filter(|s| s.labels.get("direction").is_some_and(|d| d == direction))
    {
        ensure!(bucket.value >= previous, "buckets decrease: {bucket:?}");
        previous = bucket.value;
        if bucket.labels.get("le").is_some_and(|le| le == "+Inf") {
            inf = Some(bucket.value);
        }
    }
    ensure!(inf == Some(count), "+Inf bucket {inf:?}, count {count}");
    Ok(count)
}

#[test]
fn metrics_count_known_traffic_per_direction_destination_method_and_status_class() {
    run(|ctx| async move {
        let mesh = Mesh::start(&ctx).await?;
        let (users, client) = mesh.users_and_client().await?;
        let out_before = client.sidecar.metrics().await?;
        let in_before = users.sidecar.metrics().await?;

        let outbound = client.sidecar.outbound;
        for _ in 0..20 {
            mesh.http
                .call(outbound, Call::get("users", "/"))
                .await?
                .echo()?;
        }
        for _ in 0..5 {
            let reply = mesh
                .http
                .call(outbound, Call::get("users", "/status/503"))
                .await?;
            ensure!(reply.status == 503, "{}", reply.status);
        }
        for _ in 0..3 {
            mesh.http
                .call(outbound, Call::get("users", "/").post("{}"))
                .await?
                .echo()?;
        }

        let out_after = client.sidecar.metrics().await?;
        let in_after = users.sidecar.metrics().await?;
        for (side, before, after) in [
            ("outbound", &out_before, &out_after),
            ("inbound", &in_before, &in_after),
        ] {
            let delta = |method, class| {
                requests(after, side, method, class) - requests(before, side, method, class)
            };
            ensure!(
                (
                    delta("GET", "2xx"),
                    delta("GET", "5xx"),
                    delta("POST", "2xx")
                ) == (20.0, 5.0, 3.0),
                "{side}: GET 2xx {}, GET 5xx {}, POST 2xx {} (want 20, 5, 3)",
                delta("GET", "2xx"),
                delta("GET", "5xx"),
                delta("POST", "2xx")
            );
            let observed =
                histogram_is_consistent(after, side)? - histogram_is_consistent(before, side)?;
            ensure!(
                observed == 28.0,
                "{side}: {observed} latencies observed, want 28"
            );
        }
        Ok(())
    });
}

/// `page[name]{labels}` minus `before[name]{labels}`.
fn delta(before: &MetricsPage, after: &MetricsPage, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.value(name, labels) - before.value(name, labels)
}

/// A trace id the sidecars must carry into the latency buckets as an
/// exemplar (sampled flag set).
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn sizes_routes_refusals_without_a_destination_and_trace_exemplars_show_after_known_traffic() {
    run(|ctx| async move {
        let mesh = Mesh::start(&ctx).await?;
        let (users, client) = mesh.users_and_client().await?;
        // A named route, an unnamed one, and nothing for other paths.
        mesh.put_document(
            "routes/users",
            &json!({ "routes": [
                { "name": "api", "match": { "path_prefix": "/api/" }, "destination": "users",
                  "response_headers": { "set": { "x-route": "api" } } },
                { "match": { "path_prefix": "/open/" }, "destination": "users" } ] }),
        )
        .await?;
        let outbound = client.sidecar.outbound;
        eventually(SETUP_TIMEOUT, "the named route serves /api/", || async {
            let reply = mesh
                .http
                .call(outbound, Call::get("users", "/api/ready"))
                .await?;
            ensure!(
                reply.headers.contains_key("x-route"),
                "not yet: {}",
                reply.status
            );
            Ok(())
        })
        .await?;
        let before = client.sidecar.metrics().await?;
        let in_before = users.sidecar.metrics().await?;

        let body = "x".repeat(100);
        let mut sent_back = 0;
        for _ in 0..4 {
            let reply = mesh
                .http
                .call(outbound, Call::get("users", "/api/items").post(&body))
                .await?;
            ensure!(reply.status == 200, "{}", reply.status);
            sent_back += reply.body.len();
        }
        for _ in 0..3 {
            let reply = mesh
                .http
                .call(outbound, Call::get("users", "/open/x"))
                .await?;
            ensure!(reply.status == 200, "{}", reply.status);
            sent_back += reply.body.len();
        }
        for _ in 0..2 {
            let reply = mesh
                .http
                .call(outbound, Call::get("users", "/nowhere"))
                .await?;
            ensure!(
                reply.weft_error() == Some("no-route"),
                "{:?}",
                reply.weft_error()
            );
        }

        // Bodies count when the sidecar drops them, a moment after the
        // client has read the last byte.
        let counted = || async {
            let after = client.sidecar.metrics().await?;
            let in_after = users.sidecar.metrics().await?;
            let out_users = [("direction", "outbound"), ("destination", "users")];
            let route = |name, class| {
                delta(
                    &before,
                    &after,
                    "weft_route_requests_total",
                    &[
                        ("destination", "users"),
                        ("route", name),
                        ("status_class", class),
                    ],
                )
            };
            ensure!(
                (route("api", "2xx"), route("", "2xx")) == (4.0, 3.0),
                "by route: api {}, unnamed {} (want 4, 3)",
                route("api", "2xx"),
                route("", "2xx")
            );
            // Refused before any destination: counted with destination "".
            let unrouted = [("direction", "outbound"), ("destination", "")];
            let no_route = [("destination", ""), ("cause", "no-route")];
            ensure!(
                delta(
                    &before,
                    &after,
                    REQUESTS,
                    &[unrouted[0], unrouted[1], ("status_class", "4xx")]
                ) == 2.0
                    && delta(&before, &after, "weft_refusals_total", &no_route) == 2.0,
                "the no-route answers are not counted: {:?}",
                after
                    .samples
                    .iter()
                    .filter(|s| s.labels.get("destination").is_some_and(|d| d.is_empty()))
                    .collect::<Vec<_>>()
            );
            // Sizes, both sides: 4 bodies of 100 bytes (64 < 100 <= 256) and 3
            // empty ones; the response bytes are exactly what the client read.
            for (side, page_before, page_after) in [
                ("outbound", &before, &after),
                ("inbound", &in_before, &in_after),
            ] {
                let labels = |le| [("direction", side), ("destination", "users"), ("le", le)];
                let requests = |name: &str, le| delta(page_before, page_after, name, &labels(le));
                let received = "weft_request_size_bytes_bucket";
                ensure!(
                    (
                        requests(received, "0.0"),
                        requests(received, "64.0"),
                        requests(received, "256.0")
                    ) == (3.0, 3.0, 7.0),
                    "{side}: request size buckets 0 {}, 64 {}, 256 {} (want 3, 3, 7)",
                    requests(received, "0.0"),
                    requests(received, "64.0"),
                    requests(received, "256.0")
                );
                let sums = |name: &str| {
                    delta(
                        page_before,
                        page_after,
                        name,
                        &[("direction", side), ("destination", "users")],
                    )
                };
                ensure!(
                    sums("weft_request_size_bytes_sum") == 400.0
                        && sums("weft_request_size_bytes_count") == 7.0
                        && sums("weft_response_size_bytes_count") == 7.0
                        && sums("weft_response_size_bytes_sum") == sent_back as f64,
                    "{side}: request bytes {} in {}, response bytes {} in {} (want 400 in 7, {sent_back} in 7)",
                    sums("weft_request_size_bytes_sum"),
                    sums("weft_request_size_bytes_count"),
                    sums("weft_response_size_bytes_sum"),
                    sums("weft_response_size_bytes_count")
                );
            }
            ensure!(
                after.value(DURATION_COUNT, &out_users) - before.value(DURATION_COUNT, &out_users)
                    == 7.0,
                "7 latencies to users"
            );
            Ok(())
        };
        eventually(SETUP_TIMEOUT, "the traffic shows in /metrics", counted).await?;

        // A sampled trace's id lands on a latency bucket as its exemplar
        // (one per bucket per second: other traced traffic in the same
        // second may take the bucket first, so ask until it shows).
        eventually(
            SETUP_TIMEOUT,
            "the trace id shows as an exemplar",
            || async {
                let headers = [("traceparent", TRACEPARENT)];
                mesh.http
                    .call(
                        outbound,
                        Call::get("users", "/api/traced").headers(&headers),
                    )
                    .await?;
                for (side, sidecar) in [("outbound", &client.sidecar), ("inbound", &users.sidecar)]
                {
                    let page = sidecar.metrics().await?;
                    let exemplar = page
                        .named(DURATION_BUCKET)
                        .filter(|s| s.labels.get("direction").is_some_and(|d| d == side))
                        .filter_map(|s| s.exemplar.as_ref().map(|e| (s, e)))
                        .find(|(_, e)| e.labels.get("trace_id").is_some_and(|t| t == TRACE_ID));
                    let Some((bucket, e)) = exemplar else {
                        anyhow::bail!("{side}: no exemplar with the trace id yet");
                    };
                    let le = bucket.labels["le"].parse::<f64>().unwrap_or(f64::INFINITY);
                    ensure!(
                        e.value <= le && e.timestamp.is_some(),
                        "{side}: exemplar {e:?} does not fit its bucket {le}"
                    );
                }
                Ok(())
            },
        )
        .await?;
        Ok(())
    });
}

#[test]
fn breaker_trips_overflows_and_the_process_show_in_their_series() {
    run(|ctx| async move {
        let mesh = Mesh::start(&ctx).await?;
        let (users, client) = mesh.users_and_client().await?;
        mesh.put_document(
            "destinations/users",
            &json!({ "breaker": { "consecutive_failures": 2, "open_interval": "30s" } }),
        )
        .await?;
        let sidecar = &client.sidecar;
        eventually(SETUP_TIMEOUT, "the breaker shows, closed", || async {
            let page = sidecar.metrics().await?;
            let closed = [("destination", "users"), ("state", "closed")];
            ensure!(page.value("weft_breaker_state", &closed) == 1.0, "not yet");
            Ok(())
        })
        .await?;

        users
            .app
            .inject(&mesh.http, Fault::Status(503), None)
            .await?;
        for _ in 0..3 {
            mesh.http
                .call(sidecar.outbound, Call::get("users", "/"))
                .await?;
        }
        let page = sidecar.metrics().await?;
        let users_only = [("destination", "users")];
        let open = [("destination", "users"), ("state", "open")];
        ensure!(
            page.value("weft_breaker_state", &open) == 1.0
                && page.value("weft_breaker_opened_total", &users_only) == 1.0
                && page.value("weft_breaker_rejected_total", &users_only) == 1.0,
            "breaker series: {:?}",
            page.samples
                .iter()
                .filter(|s| s.name.starts_with("weft_breaker"))
                .collect::<Vec<_>>()
        );
        let refused = [("destination", "users"), ("cause", "circuit-open")];
        ensure!(
            page.value("weft_refusals_total", &refused) == 1.0,
            "the circuit-open refusal is not in weft_refusals_total"
        );
        // The refused request counts as a 5xx outbound answer too.
        let class_5xx = [
            ("direction", "outbound"),
            ("destination", "users"),
            ("status_class", "5xx"),
        ];
        ensure!(
            page.value(REQUESTS, &class_5xx) == 3.0,
            "{}",
            page.value(REQUESTS, &class_5xx)
        );
        ensure!(
            page.value("weft_upstream_connections_opened_total", &users_only) >= 1.0
                && page.value("weft_overflows_total", &[("threshold", "requests")]) == 0.0,
            "connection and overflow series missing or wrong"
        );
        ensure!(
            page.value("weft_config_connected", &[]) == 1.0
                && page.value("weft_config_ready", &[]) == 1.0
                && page.value("weft_config_accepted_total", &[("type", "Cluster")]) >= 1.0
                && page.value("weft_config_rejected_total", &[]) == 0.0
                && page.named("weft_config_version").count() >= 3,
            "config stream series missing or wrong"
        );
        // CPU time is there, but may read 0: the kernel charges it in
        // 10 ms ticks, by sampling, and a young sidecar with little
        // traffic can have been charged none yet.
        ensure!(
            page.named("process_cpu_seconds_total").count() == 1,
            "process_cpu_seconds_total missing"
        );
        for name in ["process_resident_memory_bytes", "process_open_fds"] {
            ensure!(page.value(name, &[]) > 0.0, "{name} missing or zero");
        }
        Ok(())
    });
}

#[test]
fn the_agent_counts_its_sidecars_snapshots_pushes_push_latency_and_consul_errors() {
    run(|ctx| async move {
        let mut mesh = Mesh::start(&ctx).await?;
        let (_users, _client) = mesh.users_and_client().await?;
        let page = mesh.agent.metrics().await?;
        let value = |name: &str| page.value(name, &[]);
        ensure!(
            value("weft_discovery_connected_sidecars") == 2.0
                && value("weft_discovery_snapshot_builds_total") >= 1.0
                && value("weft_discovery_snapshot_build_seconds_count") >= 1.0
                && value("weft_discovery_responses_sent_total") >= 2.0
                && value("weft_discovery_nacks_received_total") == 0.0,
            "agent metrics: {:?}",
            page.samples
                .iter()
                .filter(|s| !s.name.contains("bucket"))
                .collect::<Vec<_>>()
        );

        // A KV change reaches the client's sidecar as a new Cluster; its
        // ACK ends one push latency observation.
        let cluster = [("type", "Cluster")];
        let before = page.value("weft_discovery_push_latency_seconds_count", &cluster);
        mesh.put_document("destinations/users", &json!({ "request_timeout": "3s" }))
            .await?;
        let agent = &mesh.agent;
        let page = eventually(SETUP_TIMEOUT, "the Cluster push is timed", || async {
            let page = agent.metrics().await?;
            let count = page.value("weft_discovery_push_latency_seconds_count", &cluster);
            ensure!(count > before, "{count} pushes timed");
            Ok(page)
        })
        .await?;
        let count = page.value("weft_discovery_push_latency_seconds_count", &cluster) - before;
        let seconds = page.value("weft_discovery_push_latency_seconds_sum", &cluster);
        ctx.measured(
            "KV change -> sidecar ACK (agent push latency, mean)",
            std::time::Duration::from_secs_f64(seconds / count.max(1.0)),
        );
        ensure!(
            seconds / count.max(1.0) < 1.0,
            "a push took {seconds} s for {count} ACKs"
        );
        ensure!(
            page.value("weft_discovery_consul_watch_errors_total", &[]) == 0.0,
            "watch errors before Consul stopped"
        );

        // The same change converged once the last sidecar it concerned
        // ACKed, and `weftctl status` shows the estimate.
        eventually(
            SETUP_TIMEOUT,
            "the change's convergence is observed",
            || async {
                let page = agent.metrics().await?;
                let count = page.value("weft_discovery_convergence_seconds_count", &[]);
                ensure!(count >= 1.0, "{count} changes converged");
                Ok(())
            },
        )
        .await?;
        let status = std::process::Command::new(weft_e2e::harness::binaries::binary("weftctl")?)
            .args(["status", "--admin", &agent.admin_url()])
            .output()?;
        let text = String::from_utf8_lossy(&status.stdout);
        ensure!(
            status.status.success() && text.contains("convergence (change -> last ACK): p50 "),
            "weftctl status: {text}{}",
            String::from_utf8_lossy(&status.stderr)
        );

        // Consul goes away: every watch's read fails and is retried.
        mesh.consul.stop();
        eventually(
            SETUP_TIMEOUT,
            "the agent counts Consul watch errors",
            || async {
                let page = agent.metrics().await?;
                let kv_errors = [("watch", "kv"), ("kind", "connect")];
                let errors = page.value("weft_discovery_consul_watch_errors_total", &kv_errors);
                let retries = page.value(
                    "weft_discovery_consul_watch_retries_total",
                    &[("watch", "kv")],
                );
                ensure!(
                    errors >= 1.0 && retries >= errors,
                    "kv watch: {errors} connect errors, {retries} retries"
                );
                Ok(())
            },
        )
        .await?;
        Ok(())
    });
}

//! Distributed tracing over real processes (Consul, the agent, sidecars,
//! apps that forward the trace headers) and a real OTLP receiver: a
//! request through a -> b -> c is one trace whose spans chain hop by hop
//! with each sidecar's service name; W3C and B3 (single and multi) context
//! from the caller is continued, and B3 answered in its style; a failed
//! request's span says why; with the collector down, requests are
//! unaffected and the sidecar's memory stays bounded; spans still queued
//! when the sidecar stops are sent before it exits.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use futures_util::StreamExt as _;
use weft_e2e::harness::identity::MeshCa;
use weft_e2e::harness::mesh::{MeshedInstance, wait_for_instances};
use weft_e2e::harness::otlp::{
    OtlpReceiver, ReceivedSpan, SPAN_KIND_CLIENT, SPAN_KIND_SERVER, STATUS_ERROR,
};
use weft_e2e::harness::ports::free_port;
use weft_e2e::{Call, Echo, Mesh, eventually, run};

/// Spans leave a sidecar in batches at most 5 s apart (the OTLP default).
const SPANS_TIMEOUT: Duration = Duration::from_secs(30);

fn export_to(endpoint: &str, protocol: &str) -> Vec<String> {
    vec![
        "--otlp-endpoint".into(),
        endpoint.into(),
        "--otlp-protocol".into(),
        protocol.into(),
    ]
}

/// `traceparent`'s trace id and span id.
fn ids(traceparent: &str) -> anyhow::Result<(String, String)> {
    let parts: Vec<&str> = traceparent.split('-').collect();
    ensure!(
        parts.len() == 4 && parts[1].len() == 32 && parts[2].len() == 16,
        "not a traceparent: {traceparent:?}"
    );
    Ok((parts[1].to_owned(), parts[2].to_owned()))
}

/// The one span of `trace_id` from `service`'s sidecar of `kind`.
fn span<'a>(
    spans: &'a [ReceivedSpan],
    trace_id: &str,
    service: &str,
    kind: i32,
) -> anyhow::Result<&'a ReceivedSpan> {
    let found: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == trace_id && s.service == service && s.kind == kind)
        .collect();
    match found.as_slice() {
        [one] => Ok(one),
        [] => bail!("no {kind} span of {service} in trace {trace_id} yet"),
        more => bail!(
            "{} spans of kind {kind} of {service}: {more:#?}",
            more.len()
        ),
    }
}

fn downstream(reply_json: &serde_json::Value) -> anyhow::Result<Echo> {
    serde_json::from_value(reply_json["downstream"].clone())
        .with_context(|| format!("no downstream echo in {reply_json}"))
}

#[test]
fn a_request_through_three_services_is_one_trace_chained_hop_by_hop() {
    run(|ctx| async move {
        let receiver = OtlpReceiver::start().await?;
        let ca = MeshCa::create(&ctx.log_dir, &["a", "b", "c"])?;
        let mesh = Mesh::start_with(&ctx, &ca.agent_args("24h")).await?;
        let export = export_to(&receiver.grpc_endpoint(), "grpc");
        let mut instances = Vec::new();
        for service in ["c", "b", "a"] {
            let args = [ca.sidecar_args(service), export.clone()].concat();
            instances.push(
                mesh.meshed_instance_with(service, &format!("{service}-1"), &args)
                    .await?,
            );
        }
        let (b, a) = (&instances[1], &instances[2]);
        routed(&mesh, a, "b").await?;
        routed(&mesh, b, "c").await?;

        // The test is app a: it sends no trace context, so a's sidecar
        // starts the trace.
        let reply = mesh
            .http
            .call(a.sidecar.outbound, Call::get("b", "/call/c/hello"))
            .await?;
        ensure!(reply.status == 200, "{}", reply.text());
        let json = reply.json()?;
        let at_b: Echo = serde_json::from_value(json.clone())?;
        let at_c = downstream(&json)?;
        let (trace_id, b_server_id) = ids(at_b
            .header("traceparent")
            .context("b's app got no traceparent")?)?;
        let (c_trace_id, c_server_id) = ids(at_c
            .header("traceparent")
            .context("c's app got no traceparent")?)?;
        ensure!(
            c_trace_id == trace_id,
            "c is in trace {c_trace_id}, b in {trace_id}"
        );

        let chain = receiver
            .wait_for(
                SPANS_TIMEOUT,
                "the four spans of the a -> b -> c request",
                |spans| {
                    Ok([
                        span(spans, &trace_id, "a", SPAN_KIND_CLIENT)?.clone(),
                        span(spans, &trace_id, "b", SPAN_KIND_SERVER)?.clone(),
                        span(spans, &trace_id, "b", SPAN_KIND_CLIENT)?.clone(),
                        span(spans, &trace_id, "c", SPAN_KIND_SERVER)?.clone(),
                    ])
                },
            )
            .await?;
        let [a_client, b_server, b_client, c_server] = &chain;
        ensure!(
            a_client.parent_span_id.is_empty(),
            "a's client span is the root: {a_client:#?}"
        );
        ensure!(
            b_server.parent_span_id == a_client.span_id,
            "b's server span's parent: {b_server:#?}"
        );
        ensure!(
            b_client.parent_span_id == b_server.span_id,
            "b's client span's parent: {b_client:#?}"
        );
        ensure!(
            c_server.parent_span_id == b_client.span_id,
            "c's server span's parent: {c_server:#?}"
        );
        // The apps saw the span of the sidecar in front of them.
        ensure!(b_server.span_id == b_server_id && c_server.span_id == c_server_id);
        for s in &chain {
            ensure!(s.attr("http.request.method") == Some("GET"), "{s:#?}");
            ensure!(s.attr("http.response.status_code") == Some("200"), "{s:#?}");
            ensure!(s.attr("network.protocol.version").is_some(), "{s:#?}");
            ensure!(s.status_code != STATUS_ERROR, "{s:#?}");
            ensure!(s.via == "grpc");
        }
        ensure!(
            a_client.attr("url.path") == Some("/call/c/hello"),
            "{a_client:#?}"
        );
        ensure!(
            a_client.attr("server.address") == Some("b"),
            "{a_client:#?}"
        );
        ensure!(a_client.attr("peer.service") == Some("b"), "{a_client:#?}");
        ensure!(b_client.attr("peer.service") == Some("c"), "{b_client:#?}");
        ensure!(c_server.attr("url.path") == Some("/hello"), "{c_server:#?}");
        // Server spans name the caller by its verified SPIFFE identity.
        ensure!(
            b_server.attr("weft.peer.identity") == Some(MeshCa::identity_of("a").as_str()),
            "{b_server:#?}"
        );
        ensure!(b_server.attr("peer.service") == Some("a"), "{b_server:#?}");
        ensure!(
            c_server.attr("weft.peer.identity") == Some(MeshCa::identity_of("b").as_str()),
            "{c_server:#?}"
        );
        Ok(())
    });
}

/// Waits until `from`'s sidecar reaches `<to>-1`.
async fn routed(mesh: &Mesh, from: &MeshedInstance, to: &str) -> anyhow::Result<()> {
    let instance = format!("{to}-1");
    let call = Call::get(to, "/");
    wait_for_instances(&mesh.http, from.sidecar.outbound, call, &[&instance]).await
}

/// A meshed `a` (the test is its app) calling a meshed `b`, both sidecars
/// exporting over HTTP/protobuf.
async fn two_hops(
    mesh: &Mesh,
    receiver: &OtlpReceiver,
) -> anyhow::Result<(MeshedInstance, MeshedInstance)> {
    let export = export_to(&receiver.http_endpoint(), "http/protobuf");
    let b = mesh.meshed_instance_with("b", "b-1", &export).await?;
    let a = mesh.meshed_instance_with("a", "a-1", &export).await?;
    routed(mesh, &a, "b").await?;
    Ok((a, b))
}

#[test]
fn callers_w3c_and_b3_contexts_are_continued_and_b3_is_answered_in_its_style() {
    run(|ctx| async move {
        let receiver = OtlpReceiver::start().await?;
        let mesh = Mesh::start(&ctx).await?;
        let (a, _b) = two_hops(&mesh, &receiver).await?;
        let outbound = a.sidecar.outbound;

        // W3C: same trace, a's span is the caller's child, tracestate kept.
        let w3c_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let traceparent = format!("00-{w3c_trace}-00f067aa0ba902b7-01");
        let headers = [
            ("traceparent", traceparent.as_str()),
            ("tracestate", "vendor=opaque"),
        ];
        let at_b = mesh
            .http
            .call(outbound, Call::get("b", "/w3c").headers(&headers))
            .await?
            .echo()?;
        let (trace, _) = ids(at_b.header("traceparent").context("no traceparent at b")?)?;
        ensure!(trace == w3c_trace, "b's app is in trace {trace}");
        ensure!(
            at_b.header("tracestate") == Some("vendor=opaque"),
            "{:?}",
            at_b.headers
        );
        ensure!(
            at_b.header("b3").is_none() && at_b.header("x-b3-traceid").is_none(),
            "no B3 for a W3C caller"
        );

        // B3 single header: the app gets B3 single back, with b's span.
        let b3_trace = "80f198ee56343ba864fe8b2a57d3eff7";
        let b3 = format!("{b3_trace}-e457b5a2e4d86bd1-1");
        let headers = [("b3", b3.as_str())];
        let at_b = mesh
            .http
            .call(outbound, Call::get("b", "/b3-single").headers(&headers))
            .await?
            .echo()?;
        let (trace, b_server) = ids(at_b.header("traceparent").context("no traceparent at b")?)?;
        ensure!(trace == b3_trace);
        let single = at_b.header("b3").context("no b3 header at b")?;
        ensure!(
            single.starts_with(&format!("{b3_trace}-{b_server}-1-")),
            "b3 at b: {single}"
        );

        // B3 multi with a 64-bit trace id: answered in multi, 64-bit.
        let short_trace = "a3ce929d0e0e4736";
        let headers = [
            ("x-b3-traceid", short_trace),
            ("x-b3-spanid", "05e3ac9a4f6e3b90"),
            ("x-b3-sampled", "1"),
        ];
        let at_b = mesh
            .http
            .call(outbound, Call::get("b", "/b3-multi").headers(&headers))
            .await?
            .echo()?;
        ensure!(
            at_b.header("x-b3-traceid") == Some(short_trace),
            "{:?}",
            at_b.headers
        );
        let (trace, b_server_multi) =
            ids(at_b.header("traceparent").context("no traceparent at b")?)?;
        ensure!(trace == format!("0000000000000000{short_trace}"));
        ensure!(at_b.header("x-b3-spanid") == Some(b_server_multi.as_str()));
        ensure!(at_b.header("x-b3-sampled") == Some("1"));

        for (trace, caller_span, path) in [
            (w3c_trace.to_owned(), "00f067aa0ba902b7", "/w3c"),
            (b3_trace.to_owned(), "e457b5a2e4d86bd1", "/b3-single"),
            (
                format!("0000000000000000{short_trace}"),
                "05e3ac9a4f6e3b90",
                "/b3-multi",
            ),
        ] {
            let (client, server) = receiver
                .wait_for(SPANS_TIMEOUT, &format!("the spans of {path}"), |spans| {
                    Ok((
                        span(spans, &trace, "a", SPAN_KIND_CLIENT)?.clone(),
                        span(spans, &trace, "b", SPAN_KIND_SERVER)?.clone(),
                    ))
                })
                .await?;
            ensure!(
                client.parent_span_id == caller_span,
                "{path}: a's span continues the caller's: {client:#?}"
            );
            ensure!(
                server.parent_span_id == client.span_id,
                "{path}: {server:#?}"
            );
            ensure!(client.attr("url.path") == Some(path) && client.via == "http");
        }
        Ok(())
    });
}

#[test]
fn a_failed_requests_spans_have_error_status_and_the_weft_cause() {
    run(|ctx| async move {
        let receiver = OtlpReceiver::start().await?;
        let mesh = Mesh::start(&ctx).await?;
        let (a, mut b) = two_hops(&mesh, &receiver).await?;
        // b's sidecar cannot reach its app: it answers for it, with a cause.
        b.app.kill();
        let reply = mesh
            .http
            .call(a.sidecar.outbound, Call::get("b", "/doomed"))
            .await?;
        ensure!(
            reply.status.is_server_error(),
            "{} {}",
            reply.status,
            reply.text()
        );
        let cause = reply
            .weft_error()
            .context("no x-weft-error on the failed answer")?
            .to_owned();
        let (client, server) = receiver
            .wait_for(SPANS_TIMEOUT, "the spans of the failed request", |spans| {
                let server = spans
                    .iter()
                    .find(|s| {
                        s.service == "b"
                            && s.kind == SPAN_KIND_SERVER
                            && s.attr("url.path") == Some("/doomed")
                    })
                    .context("no server span of /doomed yet")?;
                Ok((
                    span(spans, &server.trace_id, "a", SPAN_KIND_CLIENT)?.clone(),
                    server.clone(),
                ))
            })
            .await?;
        for s in [&client, &server] {
            ensure!(s.status_code == STATUS_ERROR, "{s:#?}");
            ensure!(
                s.attr("weft.error") == Some(cause.as_str()),
                "cause {cause}: {s:#?}"
            );
            ensure!(s.attr("error.type") == Some(cause.as_str()), "{s:#?}");
            ensure!(
                s.attr("http.response.status_code") == Some(reply.status.as_str()),
                "{s:#?}"
            );
        }
        Ok(())
    });
}

/// Resident memory of a sidecar, from its /metrics.
async fn resident_bytes(instance: &MeshedInstance) -> anyhow::Result<f64> {
    let page = instance.sidecar.metrics().await?;
    let rss = page.value("process_resident_memory_bytes", &[]);
    ensure!(rss > 0.0, "no process_resident_memory_bytes on /metrics");
    Ok(rss)
}

#[test]
fn with_the_collector_down_requests_are_unaffected_and_memory_stays_bounded() {
    run(|ctx| async move {
        // Nothing listens there: every export fails at once.
        let closed = format!("http://127.0.0.1:{}", free_port()?);
        let mesh = Mesh::start(&ctx).await?;
        let users = mesh
            .meshed_instance_with("users", "users-1", &export_to(&closed, "http/protobuf"))
            .await?;
        let client = mesh
            .meshed_instance_with("client", "client-1", &export_to(&closed, "grpc"))
            .await?;
        routed(&mesh, &client, "users").await?;

        let burst = |count: usize| {
            let http = &mesh.http;
            let outbound = client.sidecar.outbound;
            async move {
                let latencies: Vec<anyhow::Result<Duration>> = futures_util::stream::iter(0..count)
                    .map(|_| async move {
                        let start = Instant::now();
                        let reply = http.call(outbound, Call::get("users", "/")).await?;
                        ensure!(reply.status == 200, "{} {}", reply.status, reply.text());
                        Ok(start.elapsed())
                    })
                    .buffer_unordered(16)
                    .collect()
                    .await;
                let mut latencies = latencies.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
                latencies.sort();
                Ok::<_, anyhow::Error>(latencies[latencies.len() * 99 / 100])
            }
        };
        // Past the queue's 2048 spans, so it is full from here on.
        burst(3_000).await?;
        let before = (
            resident_bytes(&client).await?,
            resident_bytes(&users).await?,
        );
        let p99 = burst(6_000).await?;
        let after = (
            resident_bytes(&client).await?,
            resident_bytes(&users).await?,
        );
        ctx.measured("p99 with the collector down", p99);
        // A request waiting on an export would take its 10 s deadline.
        ensure!(
            p99 < Duration::from_secs(1),
            "p99 {p99:?} with the collector down"
        );
        for (name, before, after) in [("client", before.0, after.0), ("users", before.1, after.1)] {
            let grown = (after - before) / (1024.0 * 1024.0);
            ctx.record(
                &format!("{name} sidecar RSS growth over 6000 requests, collector down"),
                &format!("{grown:.1} MiB"),
            );
            ensure!(
                grown < 16.0,
                "{name}'s sidecar grew by {grown:.1} MiB over 6000 requests"
            );
        }
        for instance in [&client, &users] {
            let page = instance.sidecar.metrics().await?;
            let dropped = page.value(
                "weft_trace_spans_dropped_total",
                &[("reason", "queue-full")],
            ) + page.value(
                "weft_trace_spans_dropped_total",
                &[("reason", "export-failed")],
            );
            ensure!(
                dropped > 0.0,
                "{}: no dropped spans counted",
                instance.sidecar.service
            );
            ensure!(page.value("weft_trace_spans_exported_total", &[]) == 0.0);
        }
        Ok(())
    });
}

#[test]
fn spans_still_queued_when_the_sidecar_stops_are_sent_before_it_exits() {
    run(|ctx| async move {
        let receiver = OtlpReceiver::start().await?;
        let mesh = Mesh::start(&ctx).await?;
        let export = export_to(&receiver.grpc_endpoint(), "grpc");
        let _b = mesh.meshed_instance_with("b", "b-1", &export).await?;
        // A 1 s drain: a request still running then keeps a's stack (and
        // its span queue) alive past the drain.
        let a_args = [export.clone(), vec!["--drain-timeout".into(), "1s".into()]].concat();
        let mut a = mesh.meshed_instance_with("a", "a-1", &a_args).await?;
        routed(&mesh, &a, "b").await?;
        let before = receiver.spans().len();
        // One request: its span waits in a's batch for up to 5 s (the
        // OTLP default schedule delay) when the sidecar is told to stop.
        let reply = mesh
            .http
            .call(a.sidecar.outbound, Call::get("b", "/last-words"))
            .await?;
        ensure!(reply.status.is_success(), "{}", reply.status);
        // And one that outlives the drain.
        let (http, outbound) = (mesh.http.clone(), a.sidecar.outbound);
        let slow =
            tokio::spawn(async move { http.call(outbound, Call::get("b", "/delay/20000")).await });
        eventually(SPANS_TIMEOUT, "the slow request in flight at a", || async {
            let clusters = a.sidecar.clusters().await?;
            let in_flight = clusters["clusters"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["name"] == "b" && c["direction"] == "outbound")
                .and_then(|c| c["in_flight"].as_u64());
            ensure!(in_flight == Some(1), "in flight at b: {in_flight:?}");
            Ok(())
        })
        .await?;
        let stopping = Instant::now();
        let status = a
            .sidecar
            .process()
            .terminate(Duration::from_secs(10))
            .await?
            .context("a's sidecar did not exit within 10 s of SIGTERM")?;
        let stopped_in = stopping.elapsed();
        slow.abort();
        ensure!(status.success(), "a's sidecar exited with {status}");
        // The receiver took the export before answering it, and the
        // sidecar waited for that answer: no waiting here.
        let spans = receiver.spans();
        ensure!(
            spans[before..].iter().any(|s| s.service == "a"
                && s.kind == SPAN_KIND_CLIENT
                && s.attr("url.path") == Some("/last-words")),
            "a's span of the last request was lost at shutdown (exit after {stopped_in:?}); new spans: {:#?}",
            &spans[before..]
        );
        ensure!(
            stopped_in < Duration::from_secs(5),
            "the sidecar took {stopped_in:?} to exit: it waited for the batch timer"
        );
        ctx.measured("SIGTERM -> exit, the last span sent", stopped_in);
        Ok(())
    });
}

//! The agent's service map over real processes: Consul, the agent, and
//! three meshed services a, b and c whose sidecars report their calls.
//! After traffic a -> b (some of it failing) and b -> c, `/ui/graph.json`
//! has exactly those two edges with the counts the sidecars themselves
//! counted, and the page at `/ui`, loaded in headless Chromium, draws the
//! three services and both edges: in its DOM after its script ran, and in
//! a screenshot, where the edges' colour appears only once there are calls.

use std::time::Instant;

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;
use weft_e2e::harness::browser;
use weft_e2e::harness::consul::Registration;
use weft_e2e::harness::mesh::SETUP_TIMEOUT;
use weft_e2e::{Call, Mesh, MeshedInstance, eventually, run, wait_for_instances};

/// The edges' stroke colour in the page (ui.html, `--edge`).
const EDGE_RGB: [u8; 3] = [0xf2, 0x6b, 0x1d];
const WINDOW: (u32, u32) = (1100, 700);
/// A service name that is markup: Consul takes it, the page must show it
/// as text.
const HOSTILE: &str = "<b id=\"injected\">";

/// Fast reports, so the test waits about a second for its edges.
fn report_every_second() -> Vec<String> {
    vec!["--call-report-interval".into(), "1s".into()]
}

async fn fetch_graph(mesh: &Mesh) -> anyhow::Result<Value> {
    let url = format!("{}/ui/graph.json", mesh.agent.admin_url());
    let reply = mesh.http.get(&url).await?;
    ensure!(reply.status.is_success(), "{url} answered {}", reply.status);
    reply.json().context("/ui/graph.json")
}

fn edge<'a>(graph: &'a Value, source: &str, destination: &str) -> Option<&'a Value> {
    graph["edges"]
        .as_array()?
        .iter()
        .find(|edge| edge["source"] == source && edge["destination"] == destination)
}

/// Outbound requests to `destination` as the sidecar's own /metrics counts them.
async fn counted(
    instance: &MeshedInstance,
    destination: &str,
    class: Option<&str>,
) -> anyhow::Result<f64> {
    let page = instance.sidecar.metrics().await?;
    let mut labels = vec![("direction", "outbound"), ("destination", destination)];
    labels.extend(class.map(|class| ("status_class", class)));
    Ok(page.value("weft_requests_total", &labels))
}

/// Pixels of the screenshot within a small distance of the edge colour
/// (anti-aliasing blends the line's rim; its core keeps the colour).
fn edge_coloured_pixels(png_bytes: &[u8]) -> anyhow::Result<usize> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().context("decoding the screenshot")?;
    let mut pixels = vec![
        0;
        reader
            .output_buffer_size()
            .context("screenshot too large")?
    ];
    let info = reader.next_frame(&mut pixels)?;
    let channels = info.color_type.samples();
    ensure!(channels >= 3, "a {:?} screenshot", info.color_type);
    Ok(pixels[..info.buffer_size()]
        .chunks_exact(channels)
        .filter(|pixel| {
            pixel[..3]
                .iter()
                .zip(EDGE_RGB)
                .all(|(have, want)| have.abs_diff(want) <= 24)
        })
        .count())
}

#[test]
fn the_service_map_shows_services_and_the_calls_between_them() {
    run(|ctx| async move {
        let started = Instant::now();
        browser::chromium_binary()?;
        let mut mesh = Mesh::start(&ctx).await?;
        let args = report_every_second();
        let a = mesh.meshed_instance_with("a", "a-1", &args).await?;
        let b = mesh.meshed_instance_with("b", "b-1", &args).await?;
        let _c = mesh.meshed_instance_with("c", "c-1", &args).await?;
        mesh.consul
            .register(&Registration::plain(HOSTILE, "hostile-1", 9))
            .await?;
        let page_url = format!("{}/ui", mesh.agent.admin_url());
        let profile = ctx.log_dir.join("chromium-profile");

        // Before any call: the services (and Consul itself), no edge.
        eventually(SETUP_TIMEOUT, "the map lists every service", || async {
            let graph = fetch_graph(&mesh).await?;
            let names: Vec<&str> = graph["services"]
                .as_array()
                .context("services")?
                .iter()
                .filter_map(|service| service["name"].as_str())
                .collect();
            ensure!(
                names == [HOSTILE, "a", "b", "c", "consul"],
                "services {names:?}"
            );
            ensure!(
                graph["edges"] == serde_json::json!([]),
                "edges before any call"
            );
            Ok(())
        })
        .await?;
        let before = browser::screenshot(
            &page_url,
            &ctx.log_dir.join("service-map-before.png"),
            WINDOW,
            &profile,
        )
        .await?;

        // Calls: a -> b (20 answered, 5 failing with 503), b -> c (10).
        wait_for_instances(
            &mesh.http,
            a.sidecar.outbound,
            Call::get("b", "/"),
            &["b-1"],
        )
        .await?;
        wait_for_instances(
            &mesh.http,
            b.sidecar.outbound,
            Call::get("c", "/"),
            &["c-1"],
        )
        .await?;
        for _ in 0..20 {
            mesh.http
                .call(a.sidecar.outbound, Call::get("b", "/"))
                .await?
                .echo()?;
        }
        for _ in 0..5 {
            let reply = mesh
                .http
                .call(a.sidecar.outbound, Call::get("b", "/status/503"))
                .await?;
            ensure!(reply.status == 503, "{}", reply.status);
        }
        for _ in 0..10 {
            mesh.http
                .call(b.sidecar.outbound, Call::get("c", "/"))
                .await?
                .echo()?;
        }
        let traffic_done = Instant::now();
        // The map must agree with the sidecars' own counters (the setup
        // calls above count too).
        let a_to_b = counted(&a, "b", None).await?;
        let a_to_b_5xx = counted(&a, "b", Some("5xx")).await?;
        let b_to_c = counted(&b, "c", None).await?;
        ensure!(
            a_to_b >= 25.0 && a_to_b_5xx == 5.0 && b_to_c >= 10.0,
            "{a_to_b} {a_to_b_5xx} {b_to_c}"
        );

        let graph = eventually(SETUP_TIMEOUT, "both edges with every call", || async {
            let graph = fetch_graph(&mesh).await?;
            let (Some(ab), Some(bc)) = (edge(&graph, "a", "b"), edge(&graph, "b", "c")) else {
                bail!("edges so far: {}", graph["edges"]);
            };
            ensure!(
                ab["requests"] == a_to_b && bc["requests"] == b_to_c,
                "a -> b {} of {a_to_b}, b -> c {} of {b_to_c}",
                ab["requests"],
                bc["requests"]
            );
            Ok(graph)
        })
        .await?;
        ctx.measured("calls -> edges in /ui/graph.json", traffic_done.elapsed());
        let ab = edge(&graph, "a", "b").context("a -> b")?;
        let bc = edge(&graph, "b", "c").context("b -> c")?;
        let ratio = ab["error_ratio"].as_f64().unwrap_or_default();
        ensure!(
            ab["errors"] == 5 && (ratio - 5.0 / a_to_b).abs() < 1e-9,
            "a -> b errors: {ab}"
        );
        ensure!(
            bc["errors"] == 0 && bc["error_ratio"] == 0.0,
            "b -> c errors: {bc}"
        );
        for edge in [ab, bc] {
            let rate = edge["rate_rps"].as_f64().unwrap_or_default();
            let p99 = edge["p99_ms"].as_f64().unwrap_or_default();
            ensure!(
                rate > 0.0 && p99 > 0.0 && p99 < 1000.0,
                "rate and p99: {edge}"
            );
        }
        ensure!(
            graph["edges"].as_array().map(Vec::len) == Some(2),
            "only the two edges: {}",
            graph["edges"]
        );
        let sidecars = graph["sidecars"].as_array().context("sidecars")?;
        ensure!(sidecars.len() == 3, "{} sidecars", sidecars.len());
        ctx.record(
            "a -> b in the map",
            &format!(
                "{:.2} req/s, p99 {:.2} ms",
                ab["rate_rps"].as_f64().unwrap_or_default(),
                ab["p99_ms"].as_f64().unwrap_or_default()
            ),
        );

        // The page, after its script fetched the graph, names the
        // services and draws both edges.
        let dom = browser::dump_dom(&page_url, &profile).await?;
        for service in ["a", "b", "c"] {
            ensure!(
                dom.contains(&format!("data-service=\"{service}\"")),
                "no node for {service} in the page:\n{dom}"
            );
        }
        for (source, destination) in [("a", "b"), ("b", "c")] {
            ensure!(
                dom.contains(&format!(
                    "data-source=\"{source}\" data-destination=\"{destination}\""
                )),
                "no edge {source} -> {destination} in the page:\n{dom}"
            );
        }
        // Markup in a name stays text: escaped in the label, no element made.
        ensure!(
            dom.contains("&lt;b id=\"injected\"&gt;") && !dom.contains(HOSTILE),
            "the service name {HOSTILE} is not shown as text:\n{dom}"
        );
        // It polls: within Chromium's virtual 3 s it drew more than once,
        // without a reload.
        let updates: u32 = dom
            .split_once("data-updates=\"")
            .and_then(|(_, rest)| rest.split('"').next())
            .and_then(|count| count.parse().ok())
            .unwrap_or_default();
        ensure!(updates >= 2, "the page drew {updates} times:\n{dom}");
        ctx.record("page redraws within 3 s (virtual)", &updates.to_string());

        // The screenshot: the edge colour appears with the calls.
        let after = browser::screenshot(
            &page_url,
            &ctx.log_dir.join("service-map-after.png"),
            WINDOW,
            &profile,
        )
        .await?;
        let (edge_before, edge_after) = (
            edge_coloured_pixels(&before)?,
            edge_coloured_pixels(&after)?,
        );
        ctx.record(
            "edge-coloured pixels before/after the calls",
            &format!("{edge_before}/{edge_after}"),
        );
        ensure!(
            edge_before < 20,
            "{edge_before} edge-coloured pixels before any call"
        );
        ensure!(
            edge_after > 500,
            "only {edge_after} edge-coloured pixels once a -> b and b -> c were called (see {})",
            ctx.log_dir.join("service-map-after.png").display()
        );
        ctx.measured("service map test", started.elapsed());

        // The agent restarts (its call window is gone): the sidecars find
        // it again and, started within the window, their calls count again.
        let restarted = Instant::now();
        mesh.agent.restart().await?;
        eventually(
            SETUP_TIMEOUT,
            "the edges are back after an agent restart",
            || async {
                let graph = fetch_graph(&mesh).await?;
                let requests = edge(&graph, "a", "b").and_then(|ab| ab["requests"].as_f64());
                ensure!(requests == Some(a_to_b), "a -> b: {requests:?} of {a_to_b}");
                Ok(())
            },
        )
        .await?;
        ctx.measured("agent restart -> edges back", restarted.elapsed());
        Ok(())
    });
}

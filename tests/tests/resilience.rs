//! Static stability: the data path never depends on the control plane being
//! up. With Consul frozen for 10 s, or the agent killed and restarted, steady
//! traffic sees zero failed requests, and the mesh resyncs afterwards.
//! When the control plane is away, a sidecar retries the agent and the
//! agent retries Consul with backoffs whose first wait and ceiling are
//! documented (docs/CONTROL-PLANE.md, "When things fail").

use std::time::Duration;

use anyhow::{Context as _, ensure};
use tokio::time::Instant;
use weft_e2e::harness::consul::Registration;
use weft_e2e::harness::fixtures::all_to;
use weft_e2e::harness::mesh::SETUP_TIMEOUT;
use weft_e2e::harness::ports::free_port;
use weft_e2e::harness::sidecar::{Sidecar, SidecarSpec};
use weft_e2e::{Call, Mesh, Traffic, TrafficSpec, eventually, run, wait_for_instances};

const RATE: u32 = 100;

#[test]
fn consul_stopped_for_10s_under_steady_traffic_fails_no_request() {
    run(|ctx| async move {
        let mut mesh = Mesh::start(&ctx).await?;
        let _users_1 = mesh.meshed_instance("users", "users-1").await?;
        let _users_2 = mesh.meshed_instance("users", "users-2").await?;
        let _users_v2 = mesh.plain_instance("users-v2", "users-v2-1").await?;
        let client = mesh.client().await?;
        wait_for_instances(
            &mesh.http,
            client.sidecar.outbound,
            Call::get("users", "/"),
            &["users-1", "users-2"],
        )
        .await?;
        let traffic = Traffic::start(
            mesh.http.clone(),
            TrafficSpec::get(client.sidecar.outbound, "users", RATE),
        );
        let start = Instant::now();
        traffic.reaches("users-1", start).await?;
        traffic.reaches("users-2", start).await?;

        mesh.consul.pause()?;
        let paused = Instant::now();
        // The outage itself: 10 s, as the issue specifies (this sleep is the
        // scenario, not a wait for something to happen).
        tokio::time::sleep(Duration::from_secs(10)).await;
        let during = traffic.report();
        mesh.consul.resume()?;
        let resumed = Instant::now();

        // Both instances kept serving during the outage: no endpoint set was
        // emptied or shrunk because Consul was unreachable.
        for instance in ["users-1", "users-2"] {
            let last = during.last_hit(instance).context("never hit")?;
            ensure!(
                last > paused + Duration::from_secs(9),
                "{instance} stopped getting traffic {:?} into the outage",
                last.saturating_duration_since(paused)
            );
        }

        // When Consul is back, the agent resyncs: a KV change applies.
        mesh.put_document("routes/users", &all_to("users-v2"))
            .await?;
        let written = Instant::now();
        let latency = traffic.reaches("users-v2-1", written).await?;
        ctx.measured("KV change applied after Consul resumed", latency);
        ctx.measured(
            "Consul resumed -> KV change applied",
            written.saturating_duration_since(resumed) + latency,
        );

        let report = traffic.stop().await;
        println!("traffic: {}", report.summary());
        report.assert_no_failures()?;
        let expected = f64::from(RATE) * resumed.saturating_duration_since(start).as_secs_f64();
        ensure!(
            report.sent() as f64 > 0.8 * expected,
            "only {} requests sent, expected about {expected:.0}: the driver stalled",
            report.sent()
        );
        ensure!(
            latency < Duration::from_secs(1),
            "KV change after the outage took {latency:?}"
        );
        Ok(())
    });
}

#[test]
fn the_agent_restarted_under_steady_traffic_fails_no_request_and_sidecars_resync() {
    run(|ctx| async move {
        let mut mesh = Mesh::start(&ctx).await?;
        let _users_1 = mesh.meshed_instance("users", "users-1").await?;
        let _users_2 = mesh.meshed_instance("users", "users-2").await?;
        let _users_v2 = mesh.plain_instance("users-v2", "users-v2-1").await?;
        let client = mesh.client().await?;
        wait_for_instances(
            &mesh.http,
            client.sidecar.outbound,
            Call::get("users", "/"),
            &["users-1", "users-2"],
        )
        .await?;
        let traffic = Traffic::start(
            mesh.http.clone(),
            TrafficSpec::get(client.sidecar.outbound, "users", RATE),
        );
        let start = Instant::now();
        traffic.reaches("users-1", start).await?;
        traffic.reaches("users-2", start).await?;

        // SIGKILL, like a crash: no stream gets a goodbye.
        let killed = Instant::now();
        mesh.agent.restart().await?;
        let ready = Instant::now();
        ctx.measured(
            "agent restart until /readyz",
            ready.saturating_duration_since(killed),
        );

        // The sidecars reconnect and ACK what the new agent sends.
        eventually(
            SETUP_TIMEOUT,
            "the client's sidecar is back on the agent",
            || async {
                let status = mesh.agent.status().await?;
                let sidecars = status["sidecars"].as_array().context("no sidecars list")?;
                let client_status = sidecars
                    .iter()
                    .find(|sidecar| sidecar["instance"] == "client-1")
                    .with_context(|| format!("client-1 not connected: {}", status["sidecars"]))?;
                let types = client_status["types"].as_object().context("no types")?;
                ensure!(
                    types.len() >= 3
                        && types
                            .values()
                            .all(|t| t["acked_version"].as_str().is_some_and(|v| !v.is_empty())),
                    "not everything ACKed yet: {client_status}"
                );
                Ok(())
            },
        )
        .await?;
        ctx.measured(
            "agent ready -> client sidecar reconnected and ACKed",
            ready.elapsed(),
        );

        // The resynced stream carries changes again.
        mesh.put_document("routes/users", &all_to("users-v2"))
            .await?;
        let written = Instant::now();
        let latency = traffic.reaches("users-v2-1", written).await?;
        ctx.measured("KV change applied after the agent restart", latency);

        let report = traffic.stop().await;
        println!("traffic: {}", report.summary());
        report.assert_no_failures()?;
        ensure!(
            latency < Duration::from_secs(1),
            "KV change after the restart took {latency:?}"
        );
        Ok(())
    });
}

/// The sidecar's reconnect backoff to the agent, as docs/CONTROL-PLANE.md
/// states it: the first retry within 100 ms, then a ceiling that doubles
/// (200 ms, 400 ms, ...) up to 5 s, each wait drawn uniformly below it
/// (full jitter) so a fleet that lost the agent together does not return
/// in lock-step.
#[test]
fn a_sidecar_retries_the_agent_within_100ms_then_backs_off_to_at_most_5s() {
    run(|ctx| async move {
        // An agent address that accepts and hangs up at once: each accept
        // is one attempt of the sidecar.
        let refusing = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let spec = SidecarSpec {
            service: "web".into(),
            instance: "web-1".into(),
            discovery: format!("http://{}", refusing.local_addr()?),
            app_port: free_port()?,
            inbound_port: None,
            extra_args: Vec::new(),
        };
        let _sidecar = Sidecar::spawn_under(&ctx.log_dir, spec, &[])?;
        let mut attempts = Vec::new();
        let watched = Duration::from_secs(10);
        let mut start = None;
        while start.is_none_or(|start: Instant| start.elapsed() < watched) {
            // The cap plus scheduling slack: a longer silence is a bug.
            let (stream, _) = tokio::time::timeout(CAP + SLACK, refusing.accept())
                .await
                .with_context(|| {
                    format!(
                        "no attempt within {:?} after attempt {}: the backoff exceeds its cap",
                        CAP + SLACK,
                        attempts.len()
                    )
                })??;
            let now = Instant::now();
            start.get_or_insert(now);
            attempts.push(now);
            drop(stream);
        }
        let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
        for (i, gap) in gaps.iter().enumerate() {
            // Retry i+1 waits below min(5 s, 100 ms x 2^i).
            let ceiling = FIRST.saturating_mul(1 << i.min(16)).min(CAP);
            ensure!(
                *gap <= ceiling + SLACK,
                "retry {} came after {gap:?}, above its ceiling {ceiling:?}: {gaps:?}",
                i + 1
            );
        }
        ensure!(
            attempts.len() >= 5,
            "only {} attempts in {watched:?}: {gaps:?}",
            attempts.len()
        );
        ctx.measured("sidecar -> absent agent: first retry", gaps[0]);
        ctx.measured(
            "sidecar -> absent agent: longest wait in 10 s",
            gaps.iter().copied().max().unwrap_or_default(),
        );
        ctx.record(
            "sidecar -> absent agent: attempts in 10 s",
            &attempts.len().to_string(),
        );
        Ok(())
    });

    const FIRST: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(5);
    /// Connection setup, the h2 handshake's failure and a busy machine.
    const SLACK: Duration = Duration::from_millis(400);
}

/// How soon the agent finds Consul again after an outage: each watch
/// retries with a doubling ceiling (50 ms up to 5 s, full jitter), so once
/// Consul answers again the agent reads it within 5 s, and at once it
/// notices a restarted Consul's lower index (it reads afresh after an error).
#[test]
fn after_a_consul_outage_the_agent_reads_consul_again_within_its_5s_backoff_cap() {
    run(|ctx| async move {
        let mut mesh = Mesh::start(&ctx).await?;
        let app = mesh
            .plain_instance("before-outage", "before-outage-1")
            .await?;
        eventually(
            SETUP_TIMEOUT,
            "the agent lists the first service",
            || async {
                let graph = mesh.agent.graph().await?.to_string();
                ensure!(graph.contains("\"before-outage\""), "{graph}");
                Ok(())
            },
        )
        .await?;

        mesh.consul.stop();
        // The outage itself: 8 s, long enough for the watches' backoff to
        // reach its 5 s ceiling (the scenario, not a wait for an event).
        tokio::time::sleep(Duration::from_secs(8)).await;
        mesh.consul.start_again().await?;
        let back = Instant::now();
        // A crashed dev Consul comes back empty: what the agent lists now
        // can only come from reading it again.
        mesh.consul
            .register(&Registration::plain(
                "after-outage",
                "after-outage-1",
                app.port(),
            ))
            .await?;
        mesh.consul
            .kv_put("weft/routes/after-outage", "{ not json")
            .await?;
        let seen_service = std::cell::Cell::new(None);
        let seen_document = std::cell::Cell::new(None);
        eventually(
            CAP + SETUP_TIMEOUT,
            "the agent reads the restarted Consul",
            || async {
                if seen_service.get().is_none()
                    && mesh
                        .agent
                        .graph()
                        .await?
                        .to_string()
                        .contains("\"after-outage\"")
                {
                    seen_service.set(Some(back.elapsed()));
                }
                if seen_document.get().is_none()
                    && mesh
                        .agent
                        .status()
                        .await?
                        .to_string()
                        .contains("routes/after-outage")
                {
                    seen_document.set(Some(back.elapsed()));
                }
                ensure!(
                    seen_service.get().is_some() && seen_document.get().is_some(),
                    "service seen after {:?}, document after {:?}",
                    seen_service.get(),
                    seen_document.get()
                );
                Ok(())
            },
        )
        .await?;
        let (service, document) = (
            seen_service.get().unwrap_or_default(),
            seen_document.get().unwrap_or_default(),
        );
        ctx.measured("Consul back -> a new service in the agent", service);
        ctx.measured("Consul back -> a new KV document in the agent", document);
        for (what, latency) in [("service", service), ("document", document)] {
            ensure!(
                latency <= CAP + Duration::from_millis(500),
                "the agent saw the {what} {latency:?} after Consul was back (cap {CAP:?})"
            );
        }
        Ok(())
    });

    const CAP: Duration = Duration::from_secs(5);
}

//! Endpoints follow Consul: a new instance gets traffic within 1 s of its
//! registration, and an instance that is deregistered or turns critical
//! stops getting it within 1 s of Consul knowing (measured from the moment
//! the Consul API call returned), with no failed request on the way.
//!
//! Traffic is a steady 200 req/s from the client app, so a convergence time
//! is known to about 10 ms.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use tokio::time::Instant;
use weft_e2e::harness::consul::Registration;
use weft_e2e::harness::mesh::SETUP_TIMEOUT;
use weft_e2e::{
    Call, Mesh, Traffic, TrafficSpec, eventually, run, wait_for_instances, wait_for_route,
};

/// The budget the issue sets for Consul -> sidecar convergence.
const BUDGET: Duration = Duration::from_secs(1);
const RATE: u32 = 200;

fn traffic_to_users(mesh: &Mesh, outbound: std::net::SocketAddr) -> Traffic {
    Traffic::start(mesh.http.clone(), TrafficSpec::get(outbound, "users", RATE))
}

/// Waits until `instance` has had no request for a full second of traffic
/// (after `since`), and returns when, relative to `since`, the last request
/// it answered was sent (zero if none after `since`).
async fn last_hit_before_silence(
    traffic: &Traffic,
    instance: &str,
    since: Instant,
) -> anyhow::Result<Duration> {
    eventually(
        SETUP_TIMEOUT,
        &format!("{instance} stops receiving traffic"),
        || async {
            let report = traffic.report();
            let last_hit = report.last_hit(instance).unwrap_or(since).max(since);
            let last_sent = report.last_sent().context("no traffic at all")?;
            ensure!(
                last_sent.saturating_duration_since(last_hit) >= Duration::from_secs(1),
                "{instance} still answered a request sent {:?} after the change",
                last_hit.saturating_duration_since(since)
            );
            Ok(last_hit.saturating_duration_since(since))
        },
    )
    .await
}

#[test]
fn a_registered_instance_receives_traffic_within_1s() {
    run(|ctx| async move {
        let mesh = Mesh::start(&ctx).await?;
        let _users_1 = mesh.plain_instance("users", "users-1").await?;
        let client = mesh.client().await?;
        wait_for_route(
            &mesh.http,
            client.sidecar.outbound,
            Call::get("users", "/"),
            "users is routed",
            |_| true,
        )
        .await?;
        let traffic = traffic_to_users(&mesh, client.sidecar.outbound);

        let app = weft_e2e::harness::app::App::start(&ctx.log_dir, "users", "users-2").await?;
        mesh.consul
            .register(&Registration::plain("users", "users-2", app.port()))
            .await?;
        let registered = Instant::now();
        let latency = traffic.reaches("users-2", registered).await?;
        ctx.measured("new instance receives traffic after registration", latency);

        let report = traffic.stop().await;
        report.assert_no_failures()?;
        ensure!(
            latency < BUDGET,
            "users-2 got its first request {latency:?} after registration"
        );
        Ok(())
    });
}

#[test]
fn a_deregistered_instance_stops_receiving_traffic_within_1s() {
    run(|ctx| async move {
        let mesh = Mesh::start(&ctx).await?;
        // The app keeps running after deregistration: requests still sent
        // to it would succeed, so only the routing can stop them.
        let _users_1 = mesh.plain_instance("users", "users-1").await?;
        let _users_2 = mesh.plain_instance("users", "users-2").await?;
        let client = mesh.client().await?;
        wait_for_instances(
            &mesh.http,
            client.sidecar.outbound,
            Call::get("users", "/"),
            &["users-1", "users-2"],
        )
        .await?;
        let traffic = traffic_to_users(&mesh, client.sidecar.outbound);

        mesh.consul.deregister("users-2").await?;
        let deregistered = Instant::now();
        let latency = last_hit_before_silence(&traffic, "users-2", deregistered).await?;
        ctx.measured("deregistered instance stops receiving traffic", latency);

        let report = traffic.stop().await;
        report.assert_no_failures()?;
        ensure!(
            latency < BUDGET,
            "users-2 still got requests {latency:?} after deregistration"
        );
        Ok(())
    });
}

#[test]
fn an_instance_whose_check_turns_critical_stops_receiving_traffic_within_1s() {
    run(|ctx| async move {
        let mesh = Mesh::start(&ctx).await?;
        let _users_1 = mesh.plain_instance("users", "users-1").await?;
        let _users_2 = mesh.plain_instance("users", "users-2").await?;
        let client = mesh.client().await?;
        wait_for_instances(
            &mesh.http,
            client.sidecar.outbound,
            Call::get("users", "/"),
            &["users-1", "users-2"],
        )
        .await?;
        let traffic = traffic_to_users(&mesh, client.sidecar.outbound);

        mesh.consul
            .set_check(
                &Registration::plain("users", "users-2", 0).check_id(),
                false,
            )
            .await?;
        let critical = Instant::now();
        let latency = last_hit_before_silence(&traffic, "users-2", critical).await?;
        ctx.measured("critical instance stops receiving traffic", latency);

        // And it comes back when its check passes again.
        mesh.consul
            .set_check(&Registration::plain("users", "users-2", 0).check_id(), true)
            .await?;
        let passing = Instant::now();
        let back = traffic.reaches("users-2", passing).await?;
        ctx.measured("recovered instance receives traffic again", back);

        let report = traffic.stop().await;
        report.assert_no_failures()?;
        ensure!(
            latency < BUDGET,
            "users-2 still got requests {latency:?} after turning critical"
        );
        ensure!(
            back < BUDGET,
            "users-2 got traffic again only {back:?} after passing"
        );
        Ok(())
    });
}

/// The same through Consul Connect: the instances are meshed, the client's
/// sidecar sends to their sidecars (`connect-proxy` services), and the
/// instance's proxy turning critical takes it out.
#[test]
fn a_meshed_instance_whose_check_turns_critical_stops_receiving_traffic_within_1s() {
    run(|ctx| async move {
        let mesh = Mesh::start(&ctx).await?;
        let _users_1 = mesh.meshed_instance("users", "users-1").await?;
        let users_2 = mesh.meshed_instance("users", "users-2").await?;
        let client = mesh.client().await?;
        wait_for_instances(
            &mesh.http,
            client.sidecar.outbound,
            Call::get("users", "/"),
            &["users-1", "users-2"],
        )
        .await?;
        let traffic = traffic_to_users(&mesh, client.sidecar.outbound);

        mesh.consul.set_health(&users_2.registration, false).await?;
        let critical = Instant::now();
        let latency = last_hit_before_silence(&traffic, "users-2", critical).await?;
        ctx.measured("critical meshed instance stops receiving traffic", latency);

        mesh.consul.set_health(&users_2.registration, true).await?;
        let passing = Instant::now();
        let back = traffic.reaches("users-2", passing).await?;
        ctx.measured("meshed instance receives traffic again after passing", back);

        mesh.consul.deregister("users-1").await?;
        let deregistered = Instant::now();
        let gone = last_hit_before_silence(&traffic, "users-1", deregistered).await?;
        ctx.measured("deregistered meshed instance stops receiving traffic", gone);

        let report = traffic.stop().await;
        report.assert_no_failures()?;
        ensure!(
            latency < BUDGET,
            "users-2 still got requests {latency:?} after turning critical"
        );
        ensure!(
            back < BUDGET,
            "users-2 got traffic again only {back:?} after passing"
        );
        ensure!(
            gone < BUDGET,
            "users-1 still got requests {gone:?} after deregistration"
        );
        Ok(())
    });
}

//! On-demand discovery: a sidecar holds the clusters of the destinations
//! its app calls (plus its preloads), not of every service in the catalog;
//! the first call to a new destination waits for its discovery and is
//! answered; an idle destination is dropped and comes back with the next
//! call. The catalog holds 1,000 services, as in issue 12's measurement:
//! 30 that answer (plain Consul instances sharing two `weft-testapp`
//! processes; each has its own registration and route table, and the
//! echo's Host header says which one a call went to), and 970 Connect
//! services registered straight into the catalog, which nothing calls.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use weft_e2e::harness::app::App;
use weft_e2e::harness::consul::Registration;
use weft_e2e::harness::mesh::SETUP_TIMEOUT;
use weft_e2e::{Mesh, MeshedInstance, eventually, run};

/// Services that answer calls.
const SERVICES: usize = 30;
/// Every service in the catalog.
const CATALOG: usize = 1_000;

fn service(i: usize) -> String {
    format!("svc-{i:02}")
}

/// Consul with `CATALOG` services (`SERVICES` of them on two apps), the
/// agent, and a client (with `client_args`) whose sidecar has every
/// service's route table.
async fn big_catalog(
    ctx: &weft_e2e::TestCtx,
    client_args: &[&str],
) -> anyhow::Result<(Mesh, Vec<App>, MeshedInstance)> {
    let mesh = Mesh::start(ctx).await?;
    let apps = vec![
        App::start(&ctx.log_dir, "backend", "backend-a").await?,
        App::start(&ctx.log_dir, "backend", "backend-b").await?,
    ];
    for i in 0..SERVICES {
        let app = &apps[i % apps.len()];
        let registration =
            Registration::plain(&service(i), &format!("{}-1", service(i)), app.port());
        mesh.consul.register(&registration).await?;
    }
    // The rest of the catalog: Connect services with no process behind
    // them (their addresses are never dialled: nothing calls them).
    mesh.consul
        .register_synthetic("bulk", CATALOG - SERVICES, 1, 10)
        .await?;
    let args: Vec<String> = client_args.iter().map(|a| a.to_string()).collect();
    let client = mesh
        .meshed_instance_with("client", "client-1", &args)
        .await?;
    let sidecar = &client.sidecar;
    eventually(
        SETUP_TIMEOUT,
        "every service's route table reaches the client",
        || async {
            let dump = sidecar.config_dump().await?;
            let tables = dump["RouteConfiguration"]["resources"]
                .as_array()
                .map_or(0, Vec::len);
            ensure!(tables > CATALOG, "{tables} route tables");
            Ok(())
        },
    )
    .await?;
    Ok((mesh, apps, client))
}

/// The clusters a sidecar subscribes to, per its /config_dump.
async fn subscribed(client: &MeshedInstance) -> anyhow::Result<BTreeSet<String>> {
    let dump = client.sidecar.config_dump().await?;
    names(&dump["subscribed_clusters"])
}

/// The outbound clusters in its routing table, per /clusters.
async fn in_table(client: &MeshedInstance) -> anyhow::Result<BTreeSet<String>> {
    let clusters = client.sidecar.clusters().await?;
    Ok(clusters["clusters"]
        .as_array()
        .context("/clusters lists clusters")?
        .iter()
        .filter(|c| c["direction"] == "outbound")
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect())
}

/// The Cluster names the agent's /status says the client subscribes to.
async fn agent_view(mesh: &Mesh) -> anyhow::Result<BTreeSet<String>> {
    let status = mesh.agent.status().await?;
    let sidecar = status["sidecars"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["service"] == "client")
        .context("the client's sidecar in the agent's /status")?;
    names(&sidecar["types"]["Cluster"]["subscribed"])
}

fn names(list: &serde_json::Value) -> anyhow::Result<BTreeSet<String>> {
    Ok(list
        .as_array()
        .with_context(|| format!("a list of names, not {list}"))?
        .iter()
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect())
}

fn set<'a>(names: impl IntoIterator<Item = &'a String>) -> BTreeSet<String> {
    names.into_iter().cloned().collect()
}

/// Calls `host` through the client's sidecar; the answer must come from
/// the app, addressed to `host`. Returns how long it took.
async fn call(mesh: &Mesh, client: &MeshedInstance, host: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let reply = mesh
        .http
        .call_get(client.sidecar.outbound, host, "/")
        .await?;
    let took = started.elapsed();
    let echo = reply.echo().with_context(|| format!("calling {host}"))?;
    ensure!(
        echo.header("host") == Some(host),
        "a call to {host} reached the app as {:?}",
        echo.header("host")
    );
    Ok(took)
}

#[test]
fn a_sidecar_holds_only_the_destinations_its_app_calls_and_its_preloads() {
    run(|ctx| async move {
        let preload = service(SERVICES - 1);
        // 5 s rather than the 1 s default: this machine may be loaded by
        // parallel builds; the latency itself is measured and recorded.
        let (mesh, _apps, client) = big_catalog(
            &ctx,
            &["--upstreams", &preload, "--discovery-timeout", "5s"],
        )
        .await?;

        // Ready means the preload arrived; nothing else is held yet.
        ensure!(
            subscribed(&client).await? == set([&preload]),
            "before any call: {:?}",
            subscribed(&client).await?
        );
        ensure!(
            in_table(&client).await? == set([&preload]),
            "an --upstreams destination is held from the start: {:?}",
            in_table(&client).await?
        );
        let held_call = call(&mesh, &client, &preload).await?;

        // The app calls 5 services: each first call is answered.
        let mut first_calls = Vec::new();
        let called: Vec<String> = (0..5).map(service).collect();
        for host in &called {
            first_calls.push(call(&mesh, &client, host).await?);
        }
        let mut expected = set(&called);
        expected.insert(preload.clone());
        ensure!(
            subscribed(&client).await? == expected,
            "subscribed: {:?}",
            subscribed(&client).await?
        );
        ensure!(
            in_table(&client).await? == expected,
            "/clusters: {:?}",
            in_table(&client).await?
        );
        eventually(
            SETUP_TIMEOUT,
            "the agent sees the client's subscription",
            || async {
                let seen = agent_view(&mesh).await?;
                ensure!(seen == expected, "agent /status: {seen:?}");
                Ok(())
            },
        )
        .await?;
        let dump = client.sidecar.config_dump().await?;
        for held in dump["held_clusters"].as_array().context("held_clusters")? {
            let want = if held["name"] == preload.as_str() {
                "preload"
            } else {
                "on-demand"
            };
            ensure!(held["reason"] == want, "{held}");
            ensure!(held["in_table"] == true, "{held}");
            ensure!(held["last_use_seconds_ago"].is_u64(), "used: {held}");
        }

        // 15 more first calls: the first-call latency over 20 destinations.
        for host in (5..20).map(service) {
            first_calls.push(call(&mesh, &client, &host).await?);
        }
        let second_call = call(&mesh, &client, &service(0)).await?;
        first_calls.sort();
        ctx.measured(
            "first call to a new destination, p50 of 20",
            first_calls[first_calls.len() / 2],
        );
        ctx.measured(
            "first call to a new destination, max of 20",
            first_calls[first_calls.len() - 1],
        );
        ctx.measured(
            "a call to a held destination (one sample)",
            second_call.min(held_call),
        );
        ensure!(
            subscribed(&client).await?.len() == 21,
            "20 called and the preload"
        );

        // A host no route table serves is still the caller's mistake.
        let reply = mesh
            .http
            .call_get(client.sidecar.outbound, "nobody", "/")
            .await?;
        ensure!(
            reply.status == 404 && reply.weft_error() == Some("no-route"),
            "unknown host: {} {:?} {}",
            reply.status,
            reply.weft_error(),
            reply.text()
        );
        ensure!(
            subscribed(&client).await?.len() == 21,
            "404s subscribe nothing"
        );
        Ok(())
    });
}

#[test]
fn an_idle_destination_leaves_the_subscription_and_the_next_call_brings_it_back() {
    run(|ctx| async move {
        let preload = service(SERVICES - 1);
        let (mesh, _apps, client) = big_catalog(
            &ctx,
            &[
                "--upstreams",
                &preload,
                "--discovery-idle-timeout",
                "2s",
                "--discovery-timeout",
                "5s",
            ],
        )
        .await?;
        let host = service(7);
        call(&mesh, &client, &host).await?;
        ensure!(subscribed(&client).await?.contains(&host));
        let called_at = Instant::now();

        // Not called for 2 s: it leaves the sidecar and the agent's view.
        eventually(
            Duration::from_secs(15),
            "the idle destination is dropped",
            || async {
                let now = subscribed(&client).await?;
                if now.contains(&host) {
                    bail!("still subscribed: {now:?}");
                }
                ensure!(
                    !in_table(&client).await?.contains(&host),
                    "still in /clusters"
                );
                ensure!(
                    !agent_view(&mesh).await?.contains(&host),
                    "still in the agent's /status"
                );
                Ok(())
            },
        )
        .await?;
        let idle = called_at.elapsed();
        ensure!(
            idle >= Duration::from_secs(2),
            "dropped after {idle:?}, before the idle timeout"
        );
        ctx.measured("idle destination dropped after (timeout 2 s)", idle);
        ensure!(
            subscribed(&client).await? == set([&preload]),
            "the preload stays: {:?}",
            subscribed(&client).await?
        );

        // The next call discovers it again, and is answered.
        let again = call(&mesh, &client, &host).await?;
        ctx.measured("first call after an idle drop", again);
        ensure!(subscribed(&client).await?.contains(&host));
        Ok(())
    });
}

//! The agent against a Consul datacenter bigger than one connection per
//! service allows: Consul caps HTTP connections per client address
//! (`limits.http_max_conns_per_client`, 200 by default), and an agent that
//! held one long poll per catalog name never finished its first sync at 100
//! Connect services. Here 150 Connect services (300 catalog names) sync on
//! a handful of connections, changes of every kind still arrive within 2 s,
//! and a Consul that refuses connections is named as the cause.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use tokio::time::Instant;
use weft_e2e::harness::agent::{Agent, Backend};
use weft_e2e::harness::consul::{Consul, SyntheticInstance};
use weft_e2e::harness::process::tcp_connections;
use weft_e2e::{eventually, run};

/// Connect services in the catalog: 300 names, over the 200 connections
/// Consul gives one client address.
const SERVICES: usize = 150;
/// What the agent is allowed: well under the default 32, to show the limit
/// holds with room to spare.
const MAX_CONNECTIONS: usize = 12;
/// The budget for a change in Consul to reach the agent.
const BUDGET: Duration = Duration::from_secs(2);
/// Time for the first sync of 150 services (about a second on a laptop;
/// the rest is for a loaded CI machine).
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// A thread counting a process's connections to a port until stopped.
struct ConnectionSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<(usize, usize)>>,
}

impl ConnectionSampler {
    fn start(pid: u32, port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut peak, mut samples) = (0, 0);
            while !stopping.load(Ordering::Relaxed) {
                peak = peak.max(tcp_connections(pid, port)?);
                samples += 1;
                // A sample takes about a millisecond; leave the cores to the agent.
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok((peak, samples))
        });
        Self { stop, thread }
    }

    /// The highest count seen and the number of samples.
    fn stop(self) -> anyhow::Result<(usize, usize)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the sampling thread panicked"))?
    }
}

/// The instances of `service` the agent serves, as `graph.json` lists them.
fn instances(graph: &serde_json::Value, service: &str) -> Vec<serde_json::Value> {
    graph["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|node| node["name"] == service && node["in_catalog"] == true)
        .and_then(|node| node["instances"].as_array().cloned())
        .unwrap_or_default()
}

/// Waits until the agent's `graph.json` satisfies `check`; returns how long
/// it took from `since`.
async fn agent_shows(
    agent: &Agent,
    since: Instant,
    what: &str,
    check: impl Fn(&serde_json::Value) -> anyhow::Result<()>,
) -> anyhow::Result<Duration> {
    let check = &check;
    eventually(BUDGET, what, || async move {
        let graph = agent.graph().await?;
        check(&graph)?;
        Ok(since.elapsed())
    })
    .await
}

#[test]
fn an_agent_syncs_150_connect_services_on_its_connection_limit_and_follows_every_change() {
    run(|ctx| async move {
        let consul = Consul::start(&ctx.log_dir).await?;
        let port = consul
            .address()
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .parse::<u16>()?;
        let registered = Instant::now();
        let catalog = consul.register_synthetic("svc", SERVICES, 1, 3).await?;
        ctx.measured(
            "registering 150 Connect services (300 names)",
            registered.elapsed(),
        );

        let started = Instant::now();
        let mut agent = Agent::spawn(
            &ctx.log_dir,
            &Backend::Consul(consul.address()),
            &[
                "--consul-max-connections".to_owned(),
                MAX_CONNECTIONS.to_string(),
            ],
        )?;
        // Sample the agent's connections to Consul's HTTP port, as often as
        // /proc can be read, on a thread of its own while the agent syncs:
        // at no point may there be more than it was allowed.
        let sampler = ConnectionSampler::start(agent.process().pid()?, port);
        let agent_ref = &agent;
        let ready = eventually(
            SYNC_TIMEOUT,
            "the agent's first full sync (/readyz 200)",
            || async move {
                let status = agent_ref.readyz().await?;
                ensure!(status.is_success(), "/readyz {status}");
                Ok(())
            },
        )
        .await;
        // A crash explains a missing sync better than the timeout does.
        agent.process().check_running()?;
        ready?;
        let synced = started.elapsed();
        ctx.measured(
            "first sync of 150 Connect services (process start to /readyz 200)",
            synced,
        );
        let (peak, samples) = sampler.stop()?;
        ctx.record(
            "connections to Consul during the first sync (peak, of 12 allowed)",
            &format!("{peak} ({samples} samples)"),
        );
        ensure!(
            peak <= MAX_CONNECTIONS,
            "the agent held {peak} connections to Consul, over --consul-max-connections {MAX_CONNECTIONS}"
        );
        // The sampling sees the agent's sockets at all: its five watches
        // hold one each for as long as it runs.
        ensure!(
            peak >= 4,
            "sampling found only {peak} connections; is it looking at the agent?"
        );

        // Every service is served, meshed through its proxy.
        let graph = agent.graph().await?;
        for instance in &catalog {
            let served = instances(&graph, &instance.service);
            ensure!(
                served.len() == 1
                    && served[0]["address"] == instance.proxy_address()
                    && served[0]["meshed"] == true
                    && served[0]["healthy"] == true,
                "{} served as {served:?}, expected its proxy at {}",
                instance.service,
                instance.proxy_address()
            );
        }

        // A health change.
        let sick = &catalog[7];
        let since = Instant::now();
        consul.set_synthetic_health(sick, false).await?;
        let took = agent_shows(&agent, since, "svc-7 turns unhealthy", |graph| {
            let served = instances(graph, &sick.service);
            ensure!(
                served.iter().all(|i| i["healthy"] == false) && !served.is_empty(),
                "{served:?}"
            );
            Ok(())
        })
        .await?;
        ctx.measured("a check turning critical reaches the agent", took);

        // A new instance (with checks).
        let new = SyntheticInstance {
            id: "svc-8-extra".into(),
            proxy_port: 22000,
            ..catalog[8].clone()
        };
        let since = Instant::now();
        consul.register_synthetic_instance(&new).await?;
        let took = agent_shows(&agent, since, "a second svc-8 instance", |graph| {
            let served = instances(graph, &new.service);
            ensure!(served.len() == 2, "{served:?}");
            Ok(())
        })
        .await?;
        ctx.measured("a new instance reaches the agent", took);

        // A deregistration (the service's only instance: the name goes).
        let gone = &catalog[9];
        let since = Instant::now();
        consul.deregister_synthetic(gone).await?;
        let took = agent_shows(&agent, since, "svc-9 leaves", |graph| {
            let served = instances(graph, &gone.service);
            ensure!(served.is_empty(), "{served:?}");
            Ok(())
        })
        .await?;
        ctx.measured("a deregistration reaches the agent", took);

        // A registration without any check: only the catalog's index moves.
        let checkless = SyntheticInstance {
            id: "svc-10-checkless".into(),
            proxy_port: 23000,
            ..catalog[10].clone()
        };
        let since = Instant::now();
        consul.register_synthetic_checkless(&checkless).await?;
        let took = agent_shows(&agent, since, "a checkless svc-10 instance", |graph| {
            let served = instances(graph, &checkless.service);
            ensure!(
                served
                    .iter()
                    .any(|i| i["address"] == checkless.proxy_address()),
                "{served:?}"
            );
            Ok(())
        })
        .await?;
        ctx.measured("a registration without checks reaches the agent", took);

        let open = agent.process().tcp_connections_to(port)?;
        ensure!(
            open <= MAX_CONNECTIONS,
            "{open} connections after the changes"
        );
        // The agent's own count agrees: its watches' connections at least.
        let gauge = agent
            .metrics()
            .await?
            .value("weft_discovery_consul_connections", &[]);
        ensure!(
            (4.0..=MAX_CONNECTIONS as f64).contains(&gauge),
            "weft_discovery_consul_connections {gauge}"
        );
        Ok(())
    });
}

#[test]
fn over_a_consul_with_a_low_connection_limit_the_log_names_the_limit() {
    run(|ctx| async move {
        // Fewer than the agent's five blocking watches: it cannot sync.
        let consul =
            Consul::start_with_hcl(&ctx.log_dir, "limits { http_max_conns_per_client = 3 }")
                .await?;
        let mut agent = Agent::spawn(&ctx.log_dir, &Backend::Consul(consul.address()), &[])?;
        let log = agent.process().log_path().to_owned();
        let text = eventually(
            Duration::from_secs(10),
            "the agent names Consul's limit",
            || {
                let log = log.clone();
                async move {
                    let text = std::fs::read_to_string(&log).context("reading the agent's log")?;
                    ensure!(text.contains("http_max_conns_per_client"), "not yet");
                    Ok(text)
                }
            },
        )
        .await?;
        ensure!(
            !text.contains("is Consul running"),
            "the log blames reachability although Consul is up:\n{text}"
        );
        ensure!(
            text.contains(&consul.address()),
            "the log does not name Consul's address"
        );
        agent.process().check_running()?;
        let readyz = agent.readyz().await?;
        ensure!(
            readyz == http::StatusCode::SERVICE_UNAVAILABLE,
            "/readyz {readyz}"
        );
        Ok(())
    });
}

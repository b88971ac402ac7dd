//! The Consul backend against a real `consul agent -dev`: what Consul knows
//! reaches the `MeshStore` within a second, and an outage changes nothing.

mod consul_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::ensure;
use consul_support::DevConsul;
use weft_discovery::consul::{
    CheckRegistration, ConnectRegistration, ProxyConfig, ServiceRegistration, Upstream,
};
use weft_discovery::model::{Endpoint, Health, MeshState};
use weft_discovery::source::consul::{ConsulSource, ConsulSourceOptions};
use weft_discovery::store::MeshStore;
use weft_test_support::eventually::watch_until;

type TestResult = anyhow::Result<()>;

/// The latency budget from a write in Consul to the store.
const WITHIN: Duration = Duration::from_secs(1);

/// A running `ConsulSource`, stopped when dropped.
struct Source {
    store: Arc<MeshStore>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Source {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the source with a short `wait` (so quiet watches cycle during the
/// test too) and waits for its first full sync.
async fn start_source(consul: &DevConsul, options: ConsulSourceOptions) -> anyhow::Result<Source> {
    // The source's logs (warnings during outages) show with --nocapture.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("weft_discovery=debug")
        .with_test_writer()
        .try_init();
    let store = Arc::new(MeshStore::new());
    assert!(!store.is_synced());
    let task =
        tokio::spawn(ConsulSource::with_options(consul.client.clone(), options).run(store.clone()));
    let source = Source { store, task };
    let mut synced = source.store.subscribe_synced();
    tokio::time::timeout(Duration::from_secs(10), synced.wait_for(|synced| *synced))
        .await
        .map_err(|_| anyhow::anyhow!("no first sync within 10 s"))??;
    Ok(source)
}

fn options() -> ConsulSourceOptions {
    ConsulSourceOptions {
        wait: Duration::from_secs(2),
        ..ConsulSourceOptions::default()
    }
}

/// Waits, on the store's change signal (no polling), until `check` holds;
/// returns how long it took.
async fn store_reaches(
    store: &MeshStore,
    within: Duration,
    what: &str,
    check: impl Fn(&MeshState) -> bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    watch_until(within, what, &mut store.subscribe(), |_| {
        let state = store.state();
        ensure!(check(&state), "store: {state:#?}");
        Ok(())
    })
    .await?;
    Ok(started.elapsed())
}

fn endpoints<'a>(state: &'a MeshState, service: &str) -> &'a [Endpoint] {
    state.services.get(service).map_or(&[], Vec::as_slice)
}

/// An instance of `web` on 127.0.0.1 with a passing TTL check `<id>-ttl`.
fn web(id: &str, port: u16) -> ServiceRegistration {
    ServiceRegistration {
        id: id.to_owned(),
        name: "web".into(),
        address: "127.0.0.1".into(),
        port,
        checks: Some(vec![ttl_check(&format!("{id}-ttl"))]),
        ..ServiceRegistration::default()
    }
}

fn ttl_check(id: &str) -> CheckRegistration {
    CheckRegistration {
        check_id: id.to_owned(),
        name: "alive".into(),
        ttl: Some(Duration::from_secs(60)),
        status: "passing".into(),
        ..CheckRegistration::default()
    }
}

#[tokio::test]
async fn registrations_and_deregistrations_reach_the_store_within_a_second() -> TestResult {
    let consul = DevConsul::start().await?;
    let source = start_source(&consul, options()).await?;
    let store = &source.store;
    assert!(!store.state().services.contains_key("web"));

    consul
        .client
        .agent_service_register(&web("web-1", 8080))
        .await?;
    let took = store_reaches(store, WITHIN, "web-1 registered", |state| {
        endpoints(state, "web").len() == 1
    })
    .await?;
    let state = store.state();
    let endpoint = &endpoints(&state, "web")[0];
    assert_eq!(
        (endpoint.address.as_str(), endpoint.port),
        ("127.0.0.1", 8080)
    );
    assert_eq!(endpoint.health, Health::Healthy);
    assert_eq!(endpoint.instance_id, "web-1");
    assert_eq!(endpoint.weight, 1, "Consul's default weight");
    assert!(!endpoint.meshed);
    eprintln!("registration reached the store in {took:?}");

    consul
        .client
        .agent_service_register(&web("web-2", 8081))
        .await?;
    store_reaches(store, WITHIN, "web-2 registered", |state| {
        endpoints(state, "web").len() == 2
    })
    .await?;

    consul.client.agent_service_deregister("web-1").await?;
    store_reaches(store, WITHIN, "web-1 deregistered", |state| {
        endpoints(state, "web").iter().map(|e| e.port).eq([8081])
    })
    .await?;

    consul.client.agent_service_deregister("web-2").await?;
    store_reaches(store, WITHIN, "web gone from the catalog", |state| {
        !state.services.contains_key("web")
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_check_turning_critical_makes_the_endpoint_unhealthy_within_a_second() -> TestResult {
    let consul = DevConsul::start().await?;
    consul
        .client
        .agent_service_register(&web("web-1", 8080))
        .await?;
    let source = start_source(&consul, options()).await?;
    let store = &source.store;
    assert_eq!(endpoints(&store.state(), "web")[0].health, Health::Healthy);

    consul.client.agent_check_fail("web-1-ttl", "down").await?;
    let took = store_reaches(store, WITHIN, "web-1 unhealthy", |state| {
        endpoints(state, "web")
            .iter()
            .all(|e| e.health == Health::Unhealthy)
    })
    .await?;
    eprintln!("critical check reached the store in {took:?}");
    // Known but unhealthy: the endpoint stays, marked, not removed.
    assert_eq!(endpoints(&store.state(), "web").len(), 1);

    consul.client.agent_check_pass("web-1-ttl", "").await?;
    store_reaches(store, WITHIN, "web-1 healthy again", |state| {
        endpoints(state, "web")
            .iter()
            .all(|e| e.health == Health::Healthy)
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_service_with_a_connect_sidecar_is_meshed_through_the_proxy_port() -> TestResult {
    let consul = DevConsul::start().await?;
    let source = start_source(&consul, options()).await?;
    let store = &source.store;

    consul
        .client
        .agent_service_register(&web("plain-1", 9000))
        .await?;
    let mut meshed = ServiceRegistration {
        name: "users".into(),
        ..web("users-1", 8080)
    };
    meshed.connect = Some(ConnectRegistration {
        sidecar_service: Some(Box::new(ServiceRegistration {
            port: 21000,
            // Consul's default sidecar checks probe the port over TCP every
            // 10 s; a TTL check keeps this test about our logic, not timers.
            checks: Some(vec![ttl_check("users-1-sidecar-ttl")]),
            ..ServiceRegistration::default()
        })),
        ..ConnectRegistration::default()
    });
    consul.client.agent_service_register(&meshed).await?;

    store_reaches(store, WITHIN, "users meshed", |state| {
        endpoints(state, "users").iter().any(|e| e.meshed)
    })
    .await?;
    let state = store.state();
    let users = endpoints(&state, "users");
    assert_eq!(users.len(), 1, "only the proxy, not the app: {users:?}");
    assert_eq!(
        (users[0].address.as_str(), users[0].port),
        ("127.0.0.1", 21000)
    );
    assert_eq!(users[0].instance_id, "users-1-sidecar-proxy");
    assert_eq!(users[0].health, Health::Healthy);
    assert!(
        !state.services.contains_key("users-sidecar-proxy"),
        "a proxy is not a destination: {:?}",
        state.services.keys()
    );
    let web = endpoints(&state, "web");
    assert!(web.iter().all(|e| !e.meshed && e.port == 9000), "{web:?}");

    // The app behind the sidecar failing makes the meshed endpoint unhealthy.
    consul
        .client
        .agent_check_fail("users-1-ttl", "app down")
        .await?;
    store_reaches(store, WITHIN, "meshed users unhealthy", |state| {
        endpoints(state, "users")
            .iter()
            .all(|e| e.health == Health::Unhealthy && e.meshed)
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn kv_documents_appear_with_keys_relative_to_the_prefix_starting_from_nothing() -> TestResult
{
    let consul = DevConsul::start().await?;
    // The prefix is empty (Consul answers 404), yet the source syncs.
    let source = start_source(&consul, options()).await?;
    let store = &source.store;
    assert!(store.state().documents.is_empty());

    let route = r#"{"routes":[{"match":{"path_prefix":"/"},"destination":"users"}]}"#;
    consul.client.kv_put("weft/routes/users", route).await?;
    consul.client.kv_put("weft/routes/", "").await?; // a folder key
    consul.client.kv_put("other/routes/x", "{}").await?; // outside the prefix
    let took = store_reaches(store, WITHIN, "routes/users document", |state| {
        state.documents.contains_key("routes/users")
    })
    .await?;
    eprintln!("KV write reached the store in {took:?}");
    let state = store.state();
    assert_eq!(state.documents.keys().collect::<Vec<_>>(), ["routes/users"]);
    let document = &state.documents["routes/users"];
    assert_eq!(&document.value[..], route.as_bytes());
    assert_eq!(document.origin, "consul kv weft/routes/users");
    assert!(!document.yaml);

    consul.client.kv_put("weft/routes/users", "{}").await?;
    store_reaches(store, WITHIN, "routes/users updated", |state| {
        state
            .documents
            .get("routes/users")
            .is_some_and(|d| &d.value[..] == b"{}")
    })
    .await?;

    consul.client.kv_delete("weft/routes/users").await?;
    store_reaches(store, WITHIN, "routes/users deleted", |state| {
        state.documents.is_empty()
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_frozen_consul_keeps_the_last_endpoints_and_resyncs_when_it_returns() -> TestResult {
    let mut consul = DevConsul::start().await?;
    consul
        .client
        .agent_service_register(&web("web-1", 8080))
        .await?;
    consul.client.kv_put("weft/routes/web", "{}").await?;
    let source = start_source(
        &consul,
        ConsulSourceOptions {
            wait: Duration::from_secs(1),
            backoff_max: Duration::from_secs(1),
            ..ConsulSourceOptions::default()
        },
    )
    .await?;
    let store = source.store.clone();
    let before = store.state();
    assert_eq!(endpoints(&before, "web").len(), 1);

    // Every state the store takes while Consul is frozen must still have
    // web's endpoint and the document.
    let watcher_store = store.clone();
    let mut changes = store.subscribe();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(async move {
        let mut bad = Vec::new();
        loop {
            tokio::select! {
                _ = &mut stopped => return bad,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return bad;
                    }
                    let state = watcher_store.state();
                    if endpoints(&state, "web").is_empty() || state.documents.is_empty() {
                        bad.push(state);
                    }
                }
            }
        }
    });

    consul.freeze()?;
    // Longer than a watch's request timeout (wait 1 s + jitter + 5 s margin),
    // so every watch times out and retries at least once.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        store.state(),
        before,
        "nothing changes while Consul is away"
    );
    consul.thaw()?;

    consul
        .client
        .agent_service_register(&web("web-2", 8081))
        .await?;
    let took = store_reaches(
        &store,
        Duration::from_secs(5),
        "web-2 after the outage",
        |state| endpoints(state, "web").len() == 2,
    )
    .await?;
    eprintln!("resynced {took:?} after Consul came back");

    let _ = stop.send(());
    let bad = watcher.await?;
    assert!(bad.is_empty(), "states without web's endpoint: {bad:#?}");
    Ok(())
}

#[tokio::test]
async fn a_consul_that_restarts_with_a_lower_index_is_followed() -> TestResult {
    let mut consul = DevConsul::start().await?;
    consul
        .client
        .agent_service_register(&web("web-1", 8080))
        .await?;
    // Push the indexes well above what a fresh agent starts with.
    for round in 0..30 {
        consul
            .client
            .kv_put("weft/routes/web", format!("{{\"round\":{round}}}"))
            .await?;
    }
    let source = start_source(
        &consul,
        ConsulSourceOptions {
            // Long enough that a watch still blocking on the old, higher
            // index would miss the 5 s budget below.
            wait: Duration::from_secs(60),
            backoff_max: Duration::from_secs(1),
            ..ConsulSourceOptions::default()
        },
    )
    .await?;
    let store = &source.store;
    assert_eq!(endpoints(&store.state(), "web").len(), 1);

    // A fresh dev agent knows nothing: its answers carry lower indexes,
    // which the watches must accept instead of blocking on the old ones.
    consul.restart().await?;
    consul
        .client
        .agent_service_register(&web("web-2", 8081))
        .await?;
    consul.client.kv_put("weft/routes/fresh", "{}").await?;
    let took = store_reaches(
        store,
        Duration::from_secs(5),
        "the new Consul's state",
        |state| {
            endpoints(state, "web").iter().map(|e| e.port).eq([8081])
                && state.documents.keys().eq(["routes/fresh"])
        },
    )
    .await?;
    eprintln!("followed the restarted Consul in {took:?}");
    Ok(())
}

/// Registrations that write no check move only the catalog's index; the
/// source must notice them all the same (they are not explained by any
/// check change, so it re-reads the catalog).
#[tokio::test]
async fn an_instance_without_checks_and_a_new_port_reach_the_store_within_a_second() -> TestResult {
    let consul = DevConsul::start().await?;
    let source = start_source(&consul, options()).await?;
    let store = &source.store;
    consul
        .client
        .agent_service_register(&web("web-1", 8080))
        .await?;
    store_reaches(store, WITHIN, "web-1 registered", |state| {
        endpoints(state, "web").len() == 1
    })
    .await?;

    let checkless = |port: u16| ServiceRegistration {
        id: "web-2".into(),
        name: "web".into(),
        address: "127.0.0.1".into(),
        port,
        ..ServiceRegistration::default()
    };
    consul
        .client
        .agent_service_register(&checkless(8081))
        .await?;
    let took = store_reaches(store, WITHIN, "checkless web-2 registered", |state| {
        endpoints(state, "web")
            .iter()
            .map(|e| e.port)
            .eq([8080, 8081])
    })
    .await?;
    eprintln!("a registration without checks reached the store in {took:?}");

    consul
        .client
        .agent_service_register(&checkless(9091))
        .await?;
    store_reaches(
        store,
        WITHIN,
        "web-2 re-registered on a new port",
        |state| {
            endpoints(state, "web")
                .iter()
                .map(|e| e.port)
                .eq([8080, 9091])
        },
    )
    .await?;

    consul.client.agent_service_deregister("web-2").await?;
    store_reaches(store, WITHIN, "checkless web-2 deregistered", |state| {
        endpoints(state, "web").iter().map(|e| e.port).eq([8080])
    })
    .await?;
    Ok(())
}

fn upstream(name: &str, port: u16) -> Upstream {
    Upstream {
        destination_name: name.into(),
        local_bind_port: port,
        ..Upstream::default()
    }
}

/// Upstreams declared on a Connect sidecar registration reach the store
/// under the service the sidecar fronts.
#[tokio::test]
async fn a_sidecars_declared_upstreams_reach_the_store() -> TestResult {
    let consul = DevConsul::start().await?;
    let source = start_source(&consul, options()).await?;
    let store = &source.store;
    let mut registration = web("web-1", 8080);
    registration.connect = Some(ConnectRegistration {
        sidecar_service: Some(Box::new(ServiceRegistration {
            port: 21000,
            checks: Some(vec![ttl_check("web-1-sidecar-ttl")]),
            proxy: Some(ProxyConfig {
                upstreams: vec![upstream("users", 9001), upstream("db", 9002)],
                ..ProxyConfig::default()
            }),
            ..ServiceRegistration::default()
        })),
        ..ConnectRegistration::default()
    });
    consul.client.agent_service_register(&registration).await?;
    store_reaches(store, WITHIN, "web's upstreams", |state| {
        state
            .upstreams
            .get("web")
            .is_some_and(|upstreams| upstreams.iter().eq(["db", "users"]))
    })
    .await?;
    Ok(())
}

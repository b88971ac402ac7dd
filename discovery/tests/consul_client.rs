//! The typed Consul client against a real `consul agent -dev` (1.8.7 here).

mod consul_support;

use std::time::{Duration, Instant};

use consul_support::DevConsul;
use weft_discovery::consul::{
    CheckRegistration, CheckStatus, ConfigEntry, ConnectRegistration, ConsulClient, ConsulConfig,
    ConsulError, Intention, QueryOptions, ServiceKind, ServiceRegistration, Weights, next_index,
};

type TestResult = anyhow::Result<()>;

/// A service `web-1` with a TTL check `web-1-ttl` that starts passing.
fn web(id: &str, port: u16) -> ServiceRegistration {
    ServiceRegistration {
        id: id.to_owned(),
        name: "web".into(),
        address: "127.0.0.1".into(),
        port,
        weights: Some(Weights {
            passing: 5,
            warning: 1,
        }),
        checks: Some(vec![CheckRegistration {
            check_id: format!("{id}-ttl"),
            name: "app alive".into(),
            ttl: Some(Duration::from_secs(60)),
            status: "passing".into(),
            ..CheckRegistration::default()
        }]),
        ..ServiceRegistration::default()
    }
}

#[tokio::test]
async fn kv_put_get_cas_list_and_delete_round_trip() -> TestResult {
    let consul = DevConsul::start().await?;
    let kv = &consul.client;

    assert!(kv.kv_put("weft/routes/users", r#"{"routes":[]}"#).await?);
    // Binary values survive the base64 round trip.
    assert!(kv.kv_put("weft/blob", vec![0u8, 159, 255]).await?);

    let (pair, _) = kv
        .kv_get("weft/routes/users", &QueryOptions::default())
        .await?;
    let pair = pair.ok_or_else(|| anyhow::anyhow!("key just written is missing"))?;
    assert_eq!(&pair.value[..], br#"{"routes":[]}"#);

    // Check-and-set succeeds with the current index only.
    assert!(
        !kv.kv_cas("weft/routes/users", "stale", pair.modify_index - 1)
            .await?
    );
    assert!(
        kv.kv_cas("weft/routes/users", "fresh", pair.modify_index)
            .await?
    );
    // cas=0 creates only if absent.
    assert!(!kv.kv_cas("weft/routes/users", "again", 0).await?);

    let (pairs, meta) = kv.kv_list("weft/", &QueryOptions::default()).await?;
    let keys: Vec<_> = pairs.iter().map(|pair| pair.key.as_str()).collect();
    assert_eq!(keys, ["weft/blob", "weft/routes/users"]);
    assert_eq!(&pairs[0].value[..], &[0u8, 159, 255]);
    assert_eq!(&pairs[1].value[..], b"fresh");
    assert!(meta.index > 0 && meta.known_leader);

    assert!(kv.kv_delete("weft/blob").await?);
    let (missing, _) = kv.kv_get("weft/blob", &QueryOptions::default()).await?;
    assert_eq!(missing, None);
    assert!(kv.kv_delete_tree("weft/").await?);
    let (pairs, _) = kv.kv_list("weft/", &QueryOptions::default()).await?;
    assert!(pairs.is_empty());
    Ok(())
}

#[tokio::test]
async fn an_empty_prefix_answers_no_keys_with_an_index_that_blocks_until_the_first_key()
-> TestResult {
    let consul = DevConsul::start().await?;
    let (pairs, meta) = consul
        .client
        .kv_list("nothing-here/", &QueryOptions::default())
        .await?;
    assert!(pairs.is_empty());
    assert!(meta.index > 0, "Consul's 404 carries X-Consul-Index");

    let index = next_index(0, meta.index);
    let watcher = consul.client.clone();
    let blocked = tokio::spawn(async move {
        let options = QueryOptions::blocking(index, Duration::from_secs(30));
        let answer = watcher.kv_list("nothing-here/", &options).await;
        (answer, Instant::now())
    });
    // Give the query time to reach Consul and block; it must not answer
    // before the write below (asserted through its content).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !blocked.is_finished(),
        "a blocking query on an unchanged prefix must wait"
    );

    let written = Instant::now();
    consul.client.kv_put("nothing-here/first", "1").await?;
    let (answer, woke) = blocked.await?;
    let (pairs, woke_meta) = answer?;
    assert_eq!(pairs.len(), 1);
    assert!(woke_meta.index > index);
    let latency = woke.saturating_duration_since(written);
    assert!(
        latency < Duration::from_secs(1),
        "woke {latency:?} after the write"
    );
    Ok(())
}

#[tokio::test]
async fn a_catalog_query_blocks_until_a_registration_and_wakes_within_a_second() -> TestResult {
    let consul = DevConsul::start().await?;
    let (services, meta) = consul
        .client
        .catalog_services(&QueryOptions::default())
        .await?;
    assert!(services.contains_key("consul"));
    assert!(!services.contains_key("web"));

    let watcher = consul.client.clone();
    let index = meta.index;
    let blocked = tokio::spawn(async move {
        let options = QueryOptions::blocking(index, Duration::from_secs(30));
        (watcher.catalog_services(&options).await, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!blocked.is_finished());

    let registered = Instant::now();
    consul
        .client
        .agent_service_register(&web("web-1", 8080))
        .await?;
    let (answer, woke) = blocked.await?;
    let (services, _) = answer?;
    assert!(services.contains_key("web"));
    let latency = woke.saturating_duration_since(registered);
    assert!(
        latency < Duration::from_secs(1),
        "woke {latency:?} after the registration"
    );
    Ok(())
}

#[tokio::test]
async fn a_blocking_query_that_sees_no_change_returns_after_its_wait() -> TestResult {
    let consul = DevConsul::start().await?;
    let (_, meta) = consul
        .client
        .kv_list("quiet/", &QueryOptions::default())
        .await?;
    let started = Instant::now();
    let options = QueryOptions::blocking(meta.index, Duration::from_millis(500));
    let (_, again) = consul.client.kv_list("quiet/", &options).await?;
    let waited = started.elapsed();
    assert_eq!(again.index, meta.index, "nothing changed");
    // Consul adds up to wait/16 of jitter; the request timeout is far longer.
    assert!(
        waited >= Duration::from_millis(450),
        "returned after {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "returned after {waited:?}");
    Ok(())
}

#[tokio::test]
async fn a_registered_instance_shows_in_health_with_its_checks_and_ttl_controls_them() -> TestResult
{
    let consul = DevConsul::start().await?;
    let client = &consul.client;
    client.agent_service_register(&web("web-1", 8080)).await?;

    let (entries, _) = client
        .health_service("web", &QueryOptions::default())
        .await?;
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!(entry.service.id, "web-1");
    assert_eq!(entry.service.kind, ServiceKind::Typical);
    assert_eq!((entry.address(), entry.service.port), ("127.0.0.1", 8080));
    assert_eq!(entry.service.weights.map(|w| w.passing), Some(5));
    assert!(entry.is_passing(), "{:?}", entry.checks);
    assert!(
        entry
            .checks
            .iter()
            .any(|check| check.check_id == "serfHealth")
    );

    client
        .agent_check_fail("web-1-ttl", "broken on purpose")
        .await?;
    let (entries, _) = client
        .health_service("web", &QueryOptions::default())
        .await?;
    let ttl = entries[0]
        .checks
        .iter()
        .find(|check| check.check_id == "web-1-ttl")
        .ok_or_else(|| anyhow::anyhow!("TTL check missing"))?;
    assert_eq!(ttl.status, CheckStatus::Critical);
    assert_eq!(ttl.output, "broken on purpose");
    assert!(!entries[0].is_passing());

    client.agent_check_pass("web-1-ttl", "").await?;
    let (entries, _) = client
        .health_service("web", &QueryOptions::default())
        .await?;
    assert!(entries[0].is_passing());

    client.agent_service_deregister("web-1").await?;
    let (entries, _) = client
        .health_service("web", &QueryOptions::default())
        .await?;
    assert!(entries.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_sidecar_registration_creates_a_connect_proxy_found_by_health_connect() -> TestResult {
    let consul = DevConsul::start().await?;
    let client = &consul.client;
    let mut registration = web("web-1", 8080);
    registration.connect = Some(ConnectRegistration {
        sidecar_service: Some(Box::new(ServiceRegistration {
            port: 21000,
            ..ServiceRegistration::default()
        })),
        ..ConnectRegistration::default()
    });
    client.agent_service_register(&registration).await?;

    let (proxies, _) = client
        .health_connect("web", &QueryOptions::default())
        .await?;
    assert_eq!(proxies.len(), 1);
    let proxy = &proxies[0];
    assert_eq!(proxy.service.kind, ServiceKind::ConnectProxy);
    assert_eq!(proxy.service.service, "web-sidecar-proxy");
    assert_eq!(proxy.service.port, 21000);
    let config = proxy.service.proxy.clone().unwrap_or_default();
    assert_eq!(config.destination_service_name, "web");
    assert_eq!(config.destination_service_id, "web-1");
    assert_eq!(config.local_service_port, 8080);

    // The proxy is also a catalog name of its own.
    let (services, _) = client.catalog_services(&QueryOptions::default()).await?;
    assert!(services.contains_key("web-sidecar-proxy"));
    let (as_service, _) = client
        .health_service("web-sidecar-proxy", &QueryOptions::default())
        .await?;
    assert_eq!(as_service[0].service.kind, ServiceKind::ConnectProxy);
    // A plain service has no proxies.
    let (none, _) = client
        .health_connect("nope", &QueryOptions::default())
        .await?;
    assert!(none.is_empty());
    Ok(())
}

#[tokio::test]
async fn connect_ca_gives_roots_and_a_spiffe_leaf() -> TestResult {
    let consul = DevConsul::start().await?;
    let (roots, meta) = consul
        .client
        .connect_ca_roots(&QueryOptions::default())
        .await?;
    assert!(meta.index > 0);
    assert!(
        roots.trust_domain.ends_with(".consul"),
        "{}",
        roots.trust_domain
    );
    let active = roots
        .roots
        .iter()
        .find(|root| root.id == roots.active_root_id)
        .ok_or_else(|| anyhow::anyhow!("no active root in {roots:?}"))?;
    assert!(active.active);
    assert!(active.root_cert.starts_with("-----BEGIN CERTIFICATE-----"));

    let (leaf, _) = consul
        .client
        .connect_ca_leaf("web", &QueryOptions::default())
        .await?;
    assert_eq!(leaf.service, "web");
    assert!(
        leaf.service_uri.starts_with("spiffe://"),
        "{}",
        leaf.service_uri
    );
    assert!(
        leaf.service_uri.ends_with("/svc/web"),
        "{}",
        leaf.service_uri
    );
    assert!(leaf.cert_pem.contains("BEGIN CERTIFICATE"));
    assert!(leaf.private_key_pem.contains("PRIVATE KEY"));
    Ok(())
}

#[tokio::test]
async fn intentions_are_created_listed_and_deleted() -> TestResult {
    let consul = DevConsul::start().await?;
    let client = &consul.client;
    let id = client
        .intention_create(&Intention {
            source_name: "web".into(),
            destination_name: "users".into(),
            source_type: "consul".into(),
            action: "deny".into(),
            ..Intention::default()
        })
        .await?;
    assert!(!id.is_empty());

    let (intentions, _) = client.intentions(&QueryOptions::default()).await?;
    assert_eq!(intentions.len(), 1);
    let intention = &intentions[0];
    assert_eq!(intention.id, id);
    assert_eq!(
        (
            intention.source_name.as_str(),
            intention.destination_name.as_str()
        ),
        ("web", "users")
    );
    assert_eq!(intention.action, "deny");

    client.intention_delete(&id).await?;
    let (intentions, _) = client.intentions(&QueryOptions::default()).await?;
    assert!(intentions.is_empty());
    Ok(())
}

#[tokio::test]
async fn config_entries_are_put_read_listed_and_deleted() -> TestResult {
    let consul = DevConsul::start().await?;
    let client = &consul.client;
    let (missing, _) = client
        .config_entry("service-defaults", "web", &QueryOptions::default())
        .await?;
    assert_eq!(missing, None, "a missing entry is None, not an error");

    let mut entry = ConfigEntry {
        kind: "service-defaults".into(),
        name: "web".into(),
        ..ConfigEntry::default()
    };
    entry.fields.insert("Protocol".into(), "http".into());
    assert!(client.config_entry_put(&entry).await?);

    let (read, _) = client
        .config_entry("service-defaults", "web", &QueryOptions::default())
        .await?;
    let read = read.ok_or_else(|| anyhow::anyhow!("entry just written is missing"))?;
    assert_eq!(read.fields.get("Protocol"), Some(&"http".into()));

    let (all, _) = client
        .config_entries("service-defaults", &QueryOptions::default())
        .await?;
    assert_eq!(
        all.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["web"]
    );

    client
        .config_entry_delete("service-defaults", "web")
        .await?;
    let (gone, _) = client
        .config_entry("service-defaults", "web", &QueryOptions::default())
        .await?;
    assert_eq!(gone, None);
    Ok(())
}

#[tokio::test]
async fn consul_errors_name_the_request_status_and_consuls_message() -> TestResult {
    let consul = DevConsul::start().await?;
    let error = consul
        .client
        .agent_check_pass("no-such-check", "")
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("passing an unknown check must fail"))?;
    assert_eq!(error.path(), Some("/v1/agent/check/pass/no-such-check"));
    assert!(error.status().is_some_and(|status| status.as_u16() >= 400));
    let message = error.to_string();
    assert!(message.contains("no-such-check"), "{message}");
    assert!(
        message.contains("does not have associated TTL"),
        "Consul's text: {message}"
    );
    Ok(())
}

#[tokio::test]
async fn an_unreachable_consul_is_a_retryable_error_with_a_hint() -> TestResult {
    // A port nothing listens on.
    let port = consul_support::free_port()?;
    let address = format!("http://127.0.0.1:{port}");
    let client = ConsulClient::new(ConsulConfig::new(&address, None, None)?)?;
    let error = client
        .catalog_services(&QueryOptions::default())
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("nothing listens on {port}"))?;
    assert!(matches!(error, ConsulError::Connect { .. }), "{error:?}");
    assert!(error.is_retryable());
    let message = error.to_string();
    assert!(message.contains("/v1/catalog/services"), "{message}");
    assert!(message.contains("is Consul running at"), "{message}");
    Ok(())
}

#[tokio::test]
async fn a_consul_address_given_as_a_host_name_is_resolved() -> TestResult {
    let consul = DevConsul::start().await?;
    // `localhost` comes from /etc/hosts through hickory, not getaddrinfo.
    let address = format!("http://localhost:{}", consul.http_port);
    let client = ConsulClient::new(ConsulConfig::new(&address, None, None)?)?;
    let leader = client.status_leader().await?;
    assert!(!leader.is_empty());
    Ok(())
}

/// Consul 1.8.7 over `limits.http_max_conns_per_client` accepts the TCP
/// connection and closes it at once, without an HTTP status: the error must
/// say so, not send the operator looking for a stopped Consul.
#[tokio::test]
async fn a_connection_over_consuls_per_client_limit_names_the_limit() -> TestResult {
    let consul = DevConsul::start_with_hcl("limits { http_max_conns_per_client = 5 }").await?;
    let address = format!("http://127.0.0.1:{}", consul.http_port);
    // A client allowed more connections than Consul gives this address.
    let client =
        ConsulClient::new(ConsulConfig::new(&address, None, None)?.with_max_connections(40)?)?;
    let (_, meta) = client.catalog_services(&QueryOptions::default()).await?;
    // Blocking reads that nothing wakes hold their connections for 2 s.
    let reads = (0..8).map(|_| {
        let client = client.clone();
        async move {
            client
                .catalog_services(&QueryOptions::blocking(meta.index, Duration::from_secs(2)))
                .await
        }
    });
    let results = futures_util::future::join_all(reads).await;
    let refused: Vec<ConsulError> = results.into_iter().filter_map(Result::err).collect();
    assert!(!refused.is_empty(), "8 connections where Consul allows 5");
    for error in &refused {
        assert!(matches!(error, ConsulError::Closed { .. }), "{error:?}");
        assert!(error.is_retryable());
        assert_eq!(error.kind(), "closed");
        let message = error.to_string();
        assert!(message.contains("http_max_conns_per_client"), "{message}");
        assert!(message.contains(&address), "{message}");
        assert!(!message.contains("is Consul running"), "{message}");
    }
    Ok(())
}

/// However many requests callers make at once, the client holds at most
/// `max_connections` to Consul: a Consul that allows barely more than that
/// (the test's own set-up client holds one idle connection) serves them all.
#[tokio::test]
async fn the_client_never_opens_more_connections_than_its_limit() -> TestResult {
    let consul = DevConsul::start_with_hcl("limits { http_max_conns_per_client = 8 }").await?;
    let address = format!("http://127.0.0.1:{}", consul.http_port);
    let client =
        ConsulClient::new(ConsulConfig::new(&address, None, None)?.with_max_connections(7)?)?;
    assert_eq!(client.max_connections(), 7);
    assert_eq!(
        client.short_request_capacity(),
        2,
        "5 kept for blocking queries"
    );
    let (_, meta) = client.catalog_services(&QueryOptions::default()).await?;
    let blocking = (0..7).map(|_| {
        let client = client.clone();
        async move {
            client
                .catalog_services(&QueryOptions::blocking(
                    meta.index,
                    Duration::from_millis(800),
                ))
                .await
                .map(drop)
        }
    });
    let short = (0..40).map(|_| {
        let client = client.clone();
        async move {
            client
                .health_service("consul", &QueryOptions::default())
                .await
                .map(drop)
        }
    });
    let started = Instant::now();
    let (blocking, short) = futures_util::future::join(
        futures_util::future::join_all(blocking),
        futures_util::future::join_all(short),
    )
    .await;
    for result in blocking.into_iter().chain(short) {
        result?;
    }
    assert!(
        client.connections_open() <= 7,
        "{} open",
        client.connections_open()
    );
    // Short reads never waited behind the long polls (their own lane).
    eprintln!("46 requests on 7 connections in {:?}", started.elapsed());
    Ok(())
}

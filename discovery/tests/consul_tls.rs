//! HTTPS to a real Consul (1.8.7 here) serving certificates from a CA minted
//! per test: server verification against `CONSUL_CACERT`, client
//! certificates for `verify_incoming`, and errors that say what to fix.

mod consul_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use consul_support::DevConsul;
use weft_discovery::consul::{
    CheckRegistration, ConsulClient, ConsulConfig, ConsulError, QueryOptions, ServiceRegistration,
};
use weft_discovery::source::consul::{ConsulSource, ConsulSourceOptions};
use weft_discovery::store::MeshStore;
use weft_test_support::certs::TestPki;

type TestResult = anyhow::Result<()>;

/// A client from `CONSUL_*` variables (the environment path, as an operator
/// would configure it).
fn client(vars: &[(&str, String)]) -> anyhow::Result<ConsulClient> {
    let config = ConsulConfig::from_vars(|name| {
        vars.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.clone())
    })?;
    Ok(ConsulClient::new(config)?)
}

fn path(pki: &TestPki, name: &str) -> String {
    pki.path(name).display().to_string()
}

/// The error of a request expected to fail.
async fn kv_error(client: &ConsulClient) -> anyhow::Result<ConsulError> {
    match client.kv_get("weft/x", &QueryOptions::default()).await {
        Ok(_) => bail!("a request to {} succeeded", client.address()),
        Err(error) => {
            // What an operator would read (shown with --nocapture).
            eprintln!("{error}");
            Ok(error)
        }
    }
}

#[tokio::test]
async fn kv_round_trip_and_a_blocking_query_over_https_verified_with_consul_cacert() -> TestResult {
    let pki = TestPki::mint()?;
    let consul = DevConsul::start_https(&pki.https(false)).await?;
    let kv = client(&[
        ("CONSUL_HTTP_ADDR", consul.https_address()),
        ("CONSUL_CACERT", path(&pki, "ca.pem")),
    ])?;
    assert!(kv.address().starts_with("https://"), "{}", kv.address());

    assert!(kv.kv_put("weft/routes/users", r#"{"routes":[]}"#).await?);
    let (pair, meta) = kv
        .kv_get("weft/routes/users", &QueryOptions::default())
        .await?;
    let pair = pair.ok_or_else(|| anyhow::anyhow!("key just written over HTTPS is missing"))?;
    assert_eq!(&pair.value[..], br#"{"routes":[]}"#);

    // With nothing changing, a blocking read over HTTPS is held for its
    // whole wait and comes back with the same index.
    let started = Instant::now();
    let (_, quiet) = kv
        .kv_get(
            "weft/routes/users",
            &QueryOptions::blocking(meta.index, Duration::from_secs(1)),
        )
        .await?;
    let held = started.elapsed();
    assert_eq!(quiet.index, meta.index);
    assert!(held >= Duration::from_millis(900), "not held: {held:?}");

    // A blocking read parks until the key changes, then wakes with the new
    // value, well before its wait runs out.
    let wait = Duration::from_secs(10);
    let blocked = tokio::spawn({
        let kv = kv.clone();
        async move {
            let started = Instant::now();
            let answer = kv
                .kv_get(
                    "weft/routes/users",
                    &QueryOptions::blocking(meta.index, wait),
                )
                .await;
            (answer, started.elapsed())
        }
    });
    // Give the read time to reach Consul and park (there is no signal for
    // "parked"; if it arrives late it returns at once, and the assertions
    // below hold either way).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(kv.kv_put("weft/routes/users", "v2").await?);
    let (answer, took) = blocked.await?;
    let (pair, woke) = answer?;
    assert_eq!(pair.map(|pair| pair.value.to_vec()), Some(b"v2".to_vec()));
    assert!(woke.index > meta.index, "{} -> {}", meta.index, woke.index);
    assert!(
        took < wait,
        "blocking read did not wake on the change: {took:?}"
    );
    Ok(())
}

#[tokio::test]
async fn consul_http_ssl_and_consul_tls_server_name_work_as_in_consuls_cli() -> TestResult {
    let pki = TestPki::mint()?;
    let consul = DevConsul::start_https(&pki.https(false)).await?;
    let port = consul.https_port.unwrap_or_default();

    // A bare host:port with CONSUL_HTTP_SSL=true, verified by name
    // (localhost is a SAN) while connecting to the IP.
    let by_name = client(&[
        ("CONSUL_HTTP_ADDR", format!("127.0.0.1:{port}")),
        ("CONSUL_HTTP_SSL", "true".into()),
        ("CONSUL_CACERT", path(&pki, "ca.pem")),
        ("CONSUL_TLS_SERVER_NAME", "localhost".into()),
    ])?;
    assert_eq!(by_name.address(), format!("https://127.0.0.1:{port}"));
    assert!(by_name.kv_put("weft/ssl", "yes").await?);

    // A name the certificate does not carry is refused, naming the setting.
    let misnamed = client(&[
        ("CONSUL_HTTP_ADDR", consul.https_address()),
        ("CONSUL_CACERT", path(&pki, "ca.pem")),
        ("CONSUL_TLS_SERVER_NAME", "server.dc1.consul".into()),
    ])?;
    let error = kv_error(&misnamed).await?;
    let message = error.to_string();
    assert!(matches!(error, ConsulError::Tls { .. }), "{message}");
    assert!(message.contains("server.dc1.consul"), "{message}");
    assert!(message.contains("CONSUL_TLS_SERVER_NAME"), "{message}");

    // HTTPS to Consul's plain HTTP port: a hint, not a mystery.
    let wrong_port = client(&[
        (
            "CONSUL_HTTP_ADDR",
            format!("https://127.0.0.1:{}", consul.http_port),
        ),
        ("CONSUL_CACERT", path(&pki, "ca.pem")),
    ])?;
    let error = kv_error(&wrong_port).await?;
    let message = error.to_string();
    assert!(matches!(error, ConsulError::Tls { .. }), "{message}");
    assert!(message.contains("HTTPS port"), "{message}");
    Ok(())
}

#[tokio::test]
async fn a_ca_that_did_not_sign_consuls_certificate_is_rejected_with_a_hint() -> TestResult {
    let pki = TestPki::mint()?;
    let consul = DevConsul::start_https(&pki.https(false)).await?;
    let address = consul.https_address();

    let wrong_ca = client(&[
        ("CONSUL_HTTP_ADDR", address.clone()),
        ("CONSUL_CACERT", path(&pki, "other-ca.pem")),
    ])?;
    let error = kv_error(&wrong_ca).await?;
    let message = error.to_string();
    assert!(matches!(error, ConsulError::Tls { .. }), "{message}");
    assert!(message.contains(&address), "{message}");
    assert!(
        message.contains(
            "certificate not trusted: is CONSUL_CACERT the CA that signed Consul's certificate?"
        ),
        "{message}"
    );
    assert!(message.contains("other-ca.pem"), "{message}");
    assert!(
        !error.is_retryable(),
        "a wrong CA needs an operator: {message}"
    );

    // Without CONSUL_CACERT the system bundle is used, and it does not know
    // a private CA either (or, with no bundle, the client says to set one).
    let system = client(&[("CONSUL_HTTP_ADDR", address.clone())]);
    match system {
        Ok(system) => {
            let message = kv_error(&system).await?.to_string();
            assert!(message.contains("certificate not trusted"), "{message}");
            assert!(message.contains("CONSUL_CACERT is not set"), "{message}");
        }
        Err(error) => {
            assert!(error.to_string().contains("CONSUL_CACERT"), "{error}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_client_certificate_is_presented_when_consul_requires_one() -> TestResult {
    let pki = TestPki::mint()?;
    let consul = DevConsul::start_https(&pki.https(true)).await?;
    let with_cert = client(&[
        ("CONSUL_HTTP_ADDR", consul.https_address()),
        ("CONSUL_CACERT", path(&pki, "ca.pem")),
        ("CONSUL_CLIENT_CERT", path(&pki, "client.pem")),
        ("CONSUL_CLIENT_KEY", path(&pki, "client-key.pem")),
    ])?;
    assert!(with_cert.kv_put("weft/mtls", "ok").await?);
    let (pair, _) = with_cert
        .kv_get("weft/mtls", &QueryOptions::default())
        .await?;
    assert_eq!(pair.map(|pair| pair.value.to_vec()), Some(b"ok".to_vec()));
    Ok(())
}

#[tokio::test]
async fn consul_requiring_a_client_certificate_refuses_one_without_with_a_clear_error() -> TestResult
{
    let pki = TestPki::mint()?;
    let consul = DevConsul::start_https(&pki.https(true)).await?;

    let without_cert = client(&[
        ("CONSUL_HTTP_ADDR", consul.https_address()),
        ("CONSUL_CACERT", path(&pki, "ca.pem")),
    ])?;
    let error = kv_error(&without_cert).await?;
    let message = error.to_string();
    assert!(matches!(error, ConsulError::Tls { .. }), "{message}");
    assert!(
        message.contains("requires a client certificate"),
        "{message}"
    );
    assert!(message.contains("CONSUL_CLIENT_CERT"), "{message}");
    assert!(message.contains(&consul.https_address()), "{message}");

    // A certificate from a CA Consul does not trust is refused too, and the
    // error points at the certificate, not at its absence.
    let stranger = client(&[
        ("CONSUL_HTTP_ADDR", consul.https_address()),
        ("CONSUL_CACERT", path(&pki, "ca.pem")),
        ("CONSUL_CLIENT_CERT", path(&pki, "stranger.pem")),
        ("CONSUL_CLIENT_KEY", path(&pki, "stranger-key.pem")),
    ])?;
    let message = kv_error(&stranger).await?.to_string();
    assert!(
        message.contains("rejected the client certificate"),
        "{message}"
    );
    assert!(message.contains("stranger.pem"), "{message}");
    Ok(())
}

#[tokio::test]
async fn consul_source_watches_work_over_https_with_a_client_certificate() -> TestResult {
    let pki = TestPki::mint()?;
    let consul = DevConsul::start_https(&pki.https(true)).await?;
    let https = client(&[
        ("CONSUL_HTTP_ADDR", consul.https_address()),
        ("CONSUL_CACERT", path(&pki, "ca.pem")),
        ("CONSUL_CLIENT_CERT", path(&pki, "client.pem")),
        ("CONSUL_CLIENT_KEY", path(&pki, "client-key.pem")),
    ])?;

    let store = Arc::new(MeshStore::new());
    let options = ConsulSourceOptions {
        wait: Duration::from_secs(2),
        ..ConsulSourceOptions::default()
    };
    let task = tokio::spawn(ConsulSource::with_options(https.clone(), options).run(store.clone()));
    let _stop = AbortOnDrop(task);
    let mut synced = store.subscribe_synced();
    tokio::time::timeout(Duration::from_secs(10), synced.wait_for(|synced| *synced))
        .await
        .map_err(|_| anyhow::anyhow!("no first sync over HTTPS within 10 s"))??;

    let mut changes = store.subscribe();
    https
        .agent_service_register(&ServiceRegistration {
            id: "web-1".into(),
            name: "web".into(),
            address: "127.0.0.1".into(),
            port: 8080,
            checks: Some(vec![CheckRegistration {
                check_id: "web-1-ttl".into(),
                name: "alive".into(),
                ttl: Some(Duration::from_secs(60)),
                status: "passing".into(),
                ..CheckRegistration::default()
            }]),
            ..ServiceRegistration::default()
        })
        .await?;
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let state = store.state();
        let ports: Vec<u16> = state
            .services
            .get("web")
            .map(|endpoints| endpoints.iter().map(|endpoint| endpoint.port).collect())
            .unwrap_or_default();
        if ports == [8080] {
            break;
        }
        match tokio::time::timeout_at(deadline.into(), changes.changed()).await {
            Ok(Ok(())) => {}
            _ => bail!("web-1 did not reach the store over HTTPS within 1 s: {state:#?}"),
        }
    }
    Ok(())
}

/// Stops the source when the test ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

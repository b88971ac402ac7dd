//! Consul's Connect CA as the mesh's certificate source, over a real
//! Consul with ACLs on (default deny): sidecars started with
//! `--identity-source consul` take leaf and roots from Consul, call each
//! other over mTLS with Consul's SPIFFE IDs, are refused with Consul's
//! reason when their token may not write the service, and ride through a
//! Connect CA root rotation with no failed request.

use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use weft_discovery::consul::Intention;
use weft_e2e::harness::consul::Consul;
use weft_e2e::harness::eventually::eventually;
use weft_e2e::harness::mesh::MeshedInstance;
use weft_e2e::{Call, Mesh, TestCtx, Traffic, TrafficSpec, run, wait_for_instances};

const MASTER_TOKEN: &str = "weft-e2e-master-token";

/// Consul (ACLs on, Connect CA ready) and the agent naming identities in
/// Consul's form; returns the mesh and Consul's trust domain.
async fn consul_mesh(ctx: &TestCtx) -> anyhow::Result<(Mesh, String)> {
    let consul = Consul::start_with_acls(&ctx.log_dir, MASTER_TOKEN).await?;
    let roots = consul.connect_ca_ready().await?;
    let trust_domain = roots["TrustDomain"]
        .as_str()
        .context("no TrustDomain in Consul's roots")?
        .to_owned();
    let agent_args = [
        "--consul-token",
        MASTER_TOKEN,
        "--identity-source",
        "consul",
    ]
    .map(str::to_owned);
    let mesh = Mesh::start_on(ctx, consul, &agent_args).await?;
    Ok((mesh, trust_domain))
}

/// The sidecar flags for `service` with a Consul token whose policy is
/// `rules` (default: `service:write` on `service` itself).
async fn consul_sidecar_args(
    mesh: &Mesh,
    service: &str,
    rules: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let own = format!(r#"service "{service}" {{ policy = "write" }}"#);
    let token = mesh
        .consul
        .acl_token(&format!("{service}-sidecar"), rules.unwrap_or(&own))
        .await?;
    Ok(vec![
        "--identity-source".into(),
        "consul".into(),
        "--consul".into(),
        mesh.consul.address(),
        "--consul-token".into(),
        token,
    ])
}

async fn instance(mesh: &Mesh, service: &str) -> anyhow::Result<MeshedInstance> {
    let args = consul_sidecar_args(mesh, service, None).await?;
    mesh.meshed_instance_with(service, &format!("{service}-1"), &args)
        .await
}

/// `users` and `client` on Consul's CA, each able to call the other.
async fn users_and_client(mesh: &Mesh) -> anyhow::Result<(MeshedInstance, MeshedInstance)> {
    let users = instance(mesh, "users").await?;
    let client = instance(mesh, "client").await?;
    reachable(mesh, &[(&client, "users"), (&users, "client")]).await?;
    Ok((users, client))
}

/// Waits until each caller reaches its callee's instance (`<callee>-1`).
async fn reachable(mesh: &Mesh, pairs: &[(&MeshedInstance, &str)]) -> anyhow::Result<()> {
    for (caller, callee) in pairs {
        wait_for_instances(
            &mesh.http,
            caller.sidecar.outbound,
            Call::get(callee, "/"),
            &[&format!("{callee}-1")],
        )
        .await?;
    }
    Ok(())
}

/// Consul's form of a service identity.
fn consul_identity(trust_domain: &str, service: &str) -> String {
    format!("spiffe://{trust_domain}/ns/default/dc/dc1/svc/{service}")
}

#[test]
fn sidecars_on_consuls_ca_talk_mtls_and_the_app_sees_consuls_spiffe_id() {
    run(|ctx| async move {
        let (mesh, trust_domain) = consul_mesh(&ctx).await?;
        let (users, client) = users_and_client(&mesh).await?;

        for (caller, callee) in [(&client, "users"), (&users, "client")] {
            let echo = mesh
                .http
                .call(caller.sidecar.outbound, Call::get(callee, "/hello"))
                .await?
                .echo()?;
            let expected = consul_identity(&trust_domain, &caller.sidecar.service);
            ensure!(
                echo.header("x-weft-peer-identity") == Some(expected.as_str()),
                "{callee} saw {:?}, expected {expected}",
                echo.header("x-weft-peer-identity")
            );
        }
        let identity = users.sidecar.identity().await?;
        ensure!(
            identity["spiffe_id"] == consul_identity(&trust_domain, "users"),
            "{identity}"
        );

        // Intentions match by service name, so Consul's form is
        // authorized like Weft's: a deny intention turns client away.
        mesh.consul
            .client()
            .intention_create(&Intention {
                source_name: "client".into(),
                destination_name: "users".into(),
                source_type: "consul".into(),
                action: "deny".into(),
                ..Intention::default()
            })
            .await?;
        eventually(
            Duration::from_secs(5),
            "the deny intention applies",
            || async {
                let reply = mesh
                    .http
                    .call(client.sidecar.outbound, Call::get("users", "/"))
                    .await?;
                ensure!(
                    reply.status == 403 && reply.weft_error() == Some("denied"),
                    "{} {}",
                    reply.status,
                    reply.text()
                );
                ensure!(reply.text().contains("client"), "{}", reply.text());
                Ok(())
            },
        )
        .await?;
        Ok(())
    });
}

#[test]
fn a_token_without_service_write_is_refused_with_consuls_reason() {
    run(|ctx| async move {
        let (mesh, _) = consul_mesh(&ctx).await?;
        // A token that may write another service only.
        let args = consul_sidecar_args(
            &mesh,
            "users",
            Some(r#"service "client" { policy = "write" }"#),
        )
        .await?;
        let attempt = mesh.meshed_instance_with("users", "users-1", &args).await;
        let Err(error) = attempt else {
            bail!("a sidecar started without service:write on its service");
        };
        let log = format!("{error:#}");
        ensure!(
            log.contains("Consul refused to sign a certificate for users")
                && log.contains("403")
                && log.contains("Permission denied"),
            "the failure does not carry Consul's reason: {log}"
        );
        Ok(())
    });
}

#[test]
fn a_connect_ca_root_rotation_under_traffic_fails_no_request_and_brings_new_roots_and_leaves() {
    run(|ctx| async move {
        let (mesh, _) = consul_mesh(&ctx).await?;
        let (users, client) = users_and_client(&mesh).await?;
        let before = [users.sidecar.trust().await?, client.sidecar.trust().await?];

        let to_users = Traffic::start(
            mesh.http.clone(),
            TrafficSpec::get(client.sidecar.outbound, "users", 100),
        );
        let to_client = Traffic::start(
            mesh.http.clone(),
            TrafficSpec::get(users.sidecar.outbound, "client", 100),
        );
        // A new signing key for the built-in provider: Consul 1.8 makes a
        // new root from it, cross-signs it with the old one, and keeps the
        // old root in the bundle. (The same config without a new key is
        // no rotation at all.)
        let key = rcgen::KeyPair::generate().context("generating a CA key")?;
        let rotated = tokio::time::Instant::now();
        mesh.consul
            .api_put(
                "/v1/connect/ca/configuration",
                &serde_json::json!({
                    "Provider": "consul",
                    "Config": {
                        "LeafCertTTL": "72h",
                        "RotationPeriod": "2160h",
                        "IntermediateCertTTL": "8760h",
                        "PrivateKey": key.serialize_pem(),
                    }
                }),
            )
            .await?;
        // The agent endpoint answers from the Consul agent's cache, which
        // follows the servers' roots by a blocking query: on a loaded
        // machine it lags the PUT (CI once read one root right after it).
        eventually(
            Duration::from_secs(10),
            "Consul's agent serves both roots",
            || async {
                let roots = mesh.consul.api_get("/v1/agent/connect/ca/roots").await?;
                ensure!(
                    roots["Roots"].as_array().is_some_and(|r| r.len() == 2),
                    "Consul did not rotate: {roots}"
                );
                Ok(())
            },
        )
        .await?;

        // Consul re-signs leaves after a rotation with up to 30 s of
        // jitter (to spare its servers a stampede): wait for that.
        eventually(
            Duration::from_secs(60),
            "both sidecars trust both roots and hold a leaf from the new one",
            || async {
                for (instance, old) in [&users, &client].iter().zip(&before) {
                    let now = instance.sidecar.trust().await?;
                    // The new root comes twice: self-signed, and
                    // cross-signed by the old one (same subject and key).
                    let new_root: Vec<&String> = now
                        .roots
                        .iter()
                        .filter(|r| !old.roots.contains(r))
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    ensure!(
                        now.roots.len() >= 2 && new_root.len() == 1,
                        "{} trusts {:?}",
                        instance.sidecar.instance,
                        now.roots
                    );
                    ensure!(
                        now.serial != old.serial && now.issuer == *new_root[0],
                        "{} still has its old leaf (issuer {})",
                        instance.sidecar.instance,
                        now.issuer
                    );
                }
                Ok(())
            },
        )
        .await?;

        ctx.measured(
            "Consul CA rotation: new roots and leaves on every sidecar",
            rotated.elapsed(),
        );

        // New handshakes with the new leaves work both ways too: a sidecar
        // started now, and the two that rotated.
        let orders = instance(&mesh, "orders").await?;
        reachable(
            &mesh,
            &[(&client, "orders"), (&orders, "users"), (&orders, "client")],
        )
        .await?;

        // Requests kept flowing all along.
        let since = tokio::time::Instant::now();
        to_users.reaches("users-1", since).await?;
        to_client.reaches("client-1", since).await?;
        for (what, traffic) in [
            ("client -> users", to_users),
            ("users -> client", to_client),
        ] {
            let report = traffic.stop().await;
            println!("{what}: {}", report.summary());
            report.assert_no_failures()?;
        }
        Ok(())
    });
}

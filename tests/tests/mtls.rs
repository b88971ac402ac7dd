//! Mesh identity and mTLS between sidecars, over real processes: Consul,
//! the agent with a CA made by `weftctl ca init`, sidecars that obtain
//! their certificates with join tokens. Every hop between sidecars is
//! mutual TLS; the app learns who called; nothing else gets in.

use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use weft_e2e::harness::identity::MeshCa;
use weft_e2e::harness::mesh::{SETUP_TIMEOUT, mtls_users_and_client};
use weft_e2e::{Call, Mesh, Traffic, TrafficSpec, eventually, run};

/// Sends a plaintext HTTP request straight to `addr` and returns what came
/// back before the connection closed (empty if nothing did).
async fn plaintext_exchange(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: users\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(15), stream.read(&mut buf))
            .await
            .context("the listener neither answered nor closed")?;
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[test]
fn calls_between_sidecars_are_mutual_tls_and_the_app_learns_the_caller() {
    run(|ctx| async move {
        let (_ca, mesh, users, client) = mtls_users_and_client(&ctx, "24h").await?;
        let echo = mesh
            .http
            .call(client.sidecar.outbound, Call::get("users", "/hello"))
            .await?
            .echo()?;
        ensure!(echo.path == "/hello", "{echo:?}");
        // HTTP/2 on the tunnel only: the app gets the HTTP/1.1 its caller spoke.
        ensure!(echo.version == "HTTP/1.1", "the app saw {}", echo.version);
        // The caller's identity, from the handshake, reaches the app.
        ensure!(
            echo.header("x-weft-peer-identity") == Some(MeshCa::identity_of("client").as_str()),
            "the app saw x-weft-peer-identity {:?}",
            echo.header("x-weft-peer-identity")
        );
        // A caller cannot forge it.
        let forged = mesh
            .http
            .call(
                client.sidecar.outbound,
                Call::get("users", "/")
                    .headers(&[("x-weft-peer-identity", "spiffe://evil/ns/x/svc/admin")]),
            )
            .await?
            .echo()?;
        ensure!(
            forged.header("x-weft-peer-identity") == Some(MeshCa::identity_of("client").as_str()),
            "a forged identity got through: {forged:?}"
        );

        // Each sidecar holds a leaf for its own service only.
        let identity = users.sidecar.identity().await?;
        ensure!(
            identity["spiffe_id"] == MeshCa::identity_of("users"),
            "{identity}"
        );

        // The inbound listener is mTLS only: plaintext gets no answer.
        let plain = plaintext_exchange(users.sidecar.inbound).await?;
        ensure!(
            !plain.starts_with("HTTP/"),
            "a plaintext request was answered in STRICT mode: {plain:?}"
        );
        Ok(())
    });
}

/// Whether a plaintext request to `addr` was answered (PERMISSIVE) or
/// not (STRICT), after which it returns the answer.
async fn until_plaintext(
    addr: std::net::SocketAddr,
    answered: bool,
    what: &str,
) -> anyhow::Result<(String, Duration)> {
    let start = Instant::now();
    let answer = eventually(SETUP_TIMEOUT, what, || async {
        let plain = plaintext_exchange(addr).await?;
        ensure!(
            plain.starts_with("HTTP/") == answered,
            "plaintext answered: {plain:?}"
        );
        Ok(plain)
    })
    .await?;
    Ok((answer, start.elapsed()))
}

#[test]
fn the_inbound_mtls_mode_comes_from_the_policy_and_switches_without_a_restart() {
    run(|ctx| async move {
        let (_ca, mesh, users, client) = mtls_users_and_client(&ctx, "24h").await?;
        // STRICT by default: tested in the first test above.

        // PERMISSIVE from users' policy document: a caller outside the
        // mesh gets in over plaintext, with no identity, within a second.
        mesh.put_document("policies/users", &json!({ "mtls": "permissive" }))
            .await?;
        let (plain, took_permissive) =
            until_plaintext(users.sidecar.inbound, true, "users turns permissive").await?;
        ctx.measured("mtls permissive in KV -> plaintext served", took_permissive);
        ensure!(plain.starts_with("HTTP/1.1 200"), "{plain:?}");
        ensure!(
            !plain.to_ascii_lowercase().contains("x-weft-peer-identity"),
            "{plain}"
        );
        // Meshed callers still come over mTLS, with their identity.
        let echo = mesh
            .http
            .call(client.sidecar.outbound, Call::get("users", "/"))
            .await?
            .echo()?;
        ensure!(
            echo.header("x-weft-peer-identity") == Some(MeshCa::identity_of("client").as_str()),
            "{echo:?}"
        );

        // Back to STRICT: plaintext is refused again.
        mesh.put_document("policies/users", &json!({ "mtls": "strict" }))
            .await?;
        let (_, took_strict) =
            until_plaintext(users.sidecar.inbound, false, "users turns strict").await?;
        ctx.measured("mtls strict in KV -> plaintext refused", took_strict);
        let refused = users.sidecar.metrics().await?.value(
            "weft_tls_handshake_failures_total",
            &[("direction", "inbound"), ("reason", "protocol-error")],
        );
        ensure!(refused >= 1.0, "the refused plaintext is not in /metrics");
        ensure!(
            took_permissive < Duration::from_secs(1) && took_strict < Duration::from_secs(1),
            "the mode took {took_permissive:?} / {took_strict:?} to switch"
        );

        // The mesh-wide default applies to a service whose document sets
        // none, and a document's own mode wins over it.
        mesh.put_document("defaults", &json!({ "mtls": "permissive" }))
            .await?;
        mesh.put_document("policies/users", &json!({})).await?;
        until_plaintext(users.sidecar.inbound, true, "the mesh default applies").await?;
        mesh.put_document("policies/users", &json!({ "mtls": "strict" }))
            .await?;
        until_plaintext(users.sidecar.inbound, false, "the document wins").await?;
        Ok(())
    });
}

#[test]
fn a_sidecar_whose_token_is_for_another_service_gets_no_certificate() {
    run(|ctx| async move {
        let ca = MeshCa::create(&ctx.log_dir, &["client", "users"])?;
        let mesh = Mesh::start_with(&ctx, &ca.agent_args("24h")).await?;
        // users' sidecar presenting client's join token.
        let attempt = mesh
            .meshed_instance_with("users", "users-1", &ca.sidecar_args("client"))
            .await;
        let Err(error) = attempt else {
            bail!("the sidecar started with another service's token");
        };
        let log = format!("{error:#}");
        ensure!(
            log.contains("refused to sign a certificate for users"),
            "the sidecar's failure does not say why: {log}"
        );
        Ok(())
    });
}

#[test]
fn leaves_rotate_under_steady_traffic_without_a_failed_request() {
    run(|ctx| async move {
        // 6 s leaves: each sidecar renews about every 4 s.
        let (_ca, mesh, users, client) = mtls_users_and_client(&ctx, "6s").await?;
        let first_users = users.sidecar.identity().await?["serial"].clone();
        let first_client = client.sidecar.identity().await?["serial"].clone();

        let traffic = Traffic::start(
            mesh.http.clone(),
            TrafficSpec::get(client.sidecar.outbound, "users", 100),
        );
        let start = Instant::now();
        // Wait (by polling the sidecars' own state) until both have renewed
        // twice, which also outlives the first leaves: new connections must
        // have been made with renewed leaves.
        let mut renewals = (0, 0);
        let (mut last_users, mut last_client) = (first_users.clone(), first_client.clone());
        while renewals.0 < 2 || renewals.1 < 2 {
            ensure!(
                start.elapsed() < Duration::from_secs(30),
                "leaves were not renewed: {renewals:?} renewals in 30 s"
            );
            let u = users.sidecar.identity().await?["serial"].clone();
            let c = client.sidecar.identity().await?["serial"].clone();
            if u != last_users {
                renewals.0 += 1;
                last_users = u;
            }
            if c != last_client {
                renewals.1 += 1;
                last_client = c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let report = traffic.stop().await;
        println!("traffic: {}", report.summary());
        report.assert_no_failures()?;
        ensure!(
            report.sent() > 500,
            "only {} requests sent: the driver stalled",
            report.sent()
        );
        ctx.record(
            "leaf rotations under traffic (users, client)",
            &format!("{renewals:?} in {:?}, 0 failed requests", start.elapsed()),
        );
        Ok(())
    });
}

//! A root rotation (`weftctl ca rotate`) reaches every sidecar over ADS,
//! not with its next leaf: within a second every sidecar trusts old and
//! new root, under steady traffic with no failed request, and sidecars
//! holding leaves from either root call each other both ways.

use std::time::Duration;

use anyhow::ensure;
use tokio::time::Instant;
use weft_e2e::harness::eventually::eventually;
use weft_e2e::harness::identity::MeshCa;
use weft_e2e::harness::sidecar::Sidecar;
use weft_e2e::{Call, Traffic, TrafficSpec, run, wait_for_instances};

/// How long a new root may take to reach every sidecar: the agent's
/// 100 ms file debounce, the snapshot debounce and one push.
const BUDGET: Duration = Duration::from_secs(1);

/// Asks `caller` to call `callee` and checks the callee saw `from`'s
/// identity, proven by the mTLS handshake.
async fn calls(
    mesh: &weft_e2e::Mesh,
    caller: &Sidecar,
    callee: &str,
    instance: &str,
) -> anyhow::Result<()> {
    wait_for_instances(
        &mesh.http,
        caller.outbound,
        Call::get(callee, "/"),
        &[instance],
    )
    .await?;
    let echo = mesh
        .http
        .call(caller.outbound, Call::get(callee, "/who"))
        .await?
        .echo()?;
    let expected = MeshCa::identity_of(&caller.service);
    ensure!(
        echo.header("x-weft-peer-identity") == Some(expected.as_str()),
        "{} saw {:?}, not {expected}",
        callee,
        echo.header("x-weft-peer-identity")
    );
    Ok(())
}

#[test]
fn a_rotated_root_reaches_every_sidecar_at_once_and_old_and_new_leaves_talk_both_ways() {
    run(|ctx| async move {
        // Day-long leaves: nothing renews during the test, so only the
        // pushed bundle can teach the old sidecars the new root.
        let ca = MeshCa::create(&ctx.log_dir, &["client", "users", "orders"])?;
        let mesh = weft_e2e::Mesh::start_with(&ctx, &ca.agent_args("24h")).await?;
        let users = mesh
            .meshed_instance_with("users", "users-1", &ca.sidecar_args("users"))
            .await?;
        let client = mesh
            .meshed_instance_with("client", "client-1", &ca.sidecar_args("client"))
            .await?;
        calls(&mesh, &client.sidecar, "users", "users-1").await?;
        calls(&mesh, &users.sidecar, "client", "client-1").await?;
        let old_leaf = users.sidecar.trust().await?;
        let old_roots = old_leaf.roots.clone();
        ensure!(old_roots.len() == 1, "one root before: {old_leaf:?}");
        ensure!(old_leaf.issuer == old_roots[0], "{old_leaf:?}");

        let to_users = Traffic::start(
            mesh.http.clone(),
            TrafficSpec::get(client.sidecar.outbound, "users", 100),
        );
        let to_client = Traffic::start(
            mesh.http.clone(),
            TrafficSpec::get(users.sidecar.outbound, "client", 100),
        );
        let rotated = Instant::now();
        ca.rotate()?;
        let sidecars = [&users.sidecar, &client.sidecar];
        let new_root = eventually(BUDGET, "every sidecar trusts old and new root", || {
            let old_roots = &old_roots;
            async move {
                let mut new_roots = Vec::new();
                for sidecar in sidecars {
                    let roots = sidecar.trust().await?.roots;
                    ensure!(
                        roots.len() == 2 && roots.contains(&old_roots[0]),
                        "{} trusts {roots:?}",
                        sidecar.instance
                    );
                    new_roots.extend(roots.into_iter().filter(|root| *root != old_roots[0]));
                }
                new_roots.dedup();
                ensure!(new_roots.len() == 1, "different new roots: {new_roots:?}");
                Ok(new_roots.remove(0))
            }
        })
        .await?;
        let took = rotated.elapsed();
        ensure!(
            users.sidecar.trust().await?.serial == old_leaf.serial,
            "users renewed its leaf: this test is about the bundle alone"
        );

        // A sidecar started now gets a leaf from the new root; it and the
        // sidecars with old-root leaves accept each other both ways.
        let orders = mesh
            .meshed_instance_with("orders", "orders-1", &ca.sidecar_args("orders"))
            .await?;
        let fresh = orders.sidecar.trust().await?;
        ensure!(
            fresh.issuer == new_root,
            "the new sidecar's leaf is not from the new root {new_root}: {fresh:?}"
        );
        calls(&mesh, &client.sidecar, "orders", "orders-1").await?;
        calls(&mesh, &orders.sidecar, "users", "users-1").await?;
        calls(&mesh, &orders.sidecar, "client", "client-1").await?;

        // The steady traffic ran across the rotation and the new sidecar's
        // start; let it run on until a couple of hundred requests each way
        // have crossed connections made before and after the rotation.
        for traffic in [&to_users, &to_client] {
            eventually(Duration::from_secs(10), "200 requests sent", || async {
                let sent = traffic.report().sent();
                ensure!(sent >= 200, "{sent} sent");
                Ok(())
            })
            .await?;
        }
        for (what, traffic) in [
            ("client -> users", to_users),
            ("users -> client", to_client),
        ] {
            let report = traffic.stop().await;
            println!("{what}: {}", report.summary());
            report.assert_no_failures()?;
            ensure!(
                report.sent() > 100,
                "{what}: only {} requests sent",
                report.sent()
            );
        }

        ctx.measured("new root trusted by every sidecar", took);
        ctx.record(
            "root rotation under traffic",
            &format!("both roots on every sidecar after {took:?}, 0 failed requests"),
        );
        Ok(())
    });
}

//! Authorization between services, over real processes: who may call a
//! service is decided by its sidecar from the caller's mTLS identity, with
//! intentions from Weft's KV policy documents and from Consul's own
//! intentions (created through Consul's HTTP API, as `consul intention
//! create` does). A denied request gets 403 with the reason and never
//! reaches the app.

use std::time::Duration;

use anyhow::ensure;
use serde_json::json;
use tokio::time::Instant;
use weft_discovery::consul::Intention;
use weft_e2e::harness::identity::MeshCa;
use weft_e2e::harness::mesh::MeshedInstance;
use weft_e2e::{Call, Mesh, eventually, run, wait_for_instances};

/// users, and two callers (web, billing), all meshed with mTLS.
async fn users_web_billing(
    ctx: &weft_e2e::TestCtx,
) -> anyhow::Result<(Mesh, MeshedInstance, MeshedInstance, MeshedInstance)> {
    let ca = MeshCa::create(&ctx.log_dir, &["users", "web", "billing"])?;
    let mesh = Mesh::start_with(ctx, &ca.agent_args("24h")).await?;
    let users = mesh
        .meshed_instance_with("users", "users-1", &ca.sidecar_args("users"))
        .await?;
    let web = mesh
        .meshed_instance_with("web", "web-1", &ca.sidecar_args("web"))
        .await?;
    let billing = mesh
        .meshed_instance_with("billing", "billing-1", &ca.sidecar_args("billing"))
        .await?;
    for caller in [&web, &billing] {
        wait_for_instances(
            &mesh.http,
            caller.sidecar.outbound,
            Call::get("users", "/"),
            &["users-1"],
        )
        .await?;
    }
    Ok((mesh, users, web, billing))
}

/// The status and `x-weft-error` of `caller` calling users at `method path`.
async fn verdict(
    mesh: &Mesh,
    caller: &MeshedInstance,
    method: &str,
    path: &str,
) -> anyhow::Result<(u16, String, String)> {
    let mut call = Call::get("users", path);
    if method == "POST" {
        call = call.post("{}");
    }
    let reply = mesh.http.call(caller.sidecar.outbound, call).await?;
    Ok((
        reply.status.as_u16(),
        reply.weft_error().unwrap_or_default().to_owned(),
        reply.text(),
    ))
}

/// Waits until `caller`'s `method path` to users gets `status`.
async fn until_status(
    mesh: &Mesh,
    caller: &MeshedInstance,
    method: &str,
    path: &str,
    status: u16,
) -> anyhow::Result<(String, String)> {
    eventually(
        Duration::from_secs(10),
        &format!("{} {method} {path} -> {status}", caller.sidecar.service),
        || async {
            let (got, error, body) = verdict(mesh, caller, method, path).await?;
            ensure!(got == status, "got {got} {error} {body}");
            Ok((error, body))
        },
    )
    .await
}

#[test]
fn kv_intentions_decide_by_the_callers_identity_and_default_deny_covers_the_rest() {
    run(|ctx| async move {
        let (mesh, _users, web, billing) = users_web_billing(&ctx).await?;
        mesh.put_document(
            "policies/users",
            &json!({ "default": "deny", "intentions": [ { "source": "web", "action": "allow" } ] }),
        )
        .await?;
        let written = Instant::now();
        let (error, body) = until_status(&mesh, &billing, "GET", "/", 403).await?;
        ctx.measured("KV policy -> enforced", written.elapsed());
        ensure!(error == "denied", "x-weft-error {error:?}");
        ensure!(
            body.contains("billing") && body.contains("default is deny"),
            "the reason does not say who and why: {body}"
        );
        // The 403 came from users' sidecar: the app never saw the request.
        ensure!(!body.contains("\"instance\""), "{body}");
        let (status, _, body) = verdict(&mesh, &web, "GET", "/").await?;
        ensure!(status == 200, "web was refused: {body}");
        Ok(())
    });
}

#[test]
fn l7_permissions_allow_only_the_paths_and_methods_they_name() {
    run(|ctx| async move {
        let (mesh, _users, web, billing) = users_web_billing(&ctx).await?;
        mesh.put_document(
            "policies/users",
            &json!({ "intentions": [ { "source": "web", "permissions": [
                { "action": "deny", "path_prefix": "/public/admin" },
                { "action": "allow", "path_prefix": "/public/", "methods": ["GET"] }
            ] } ] }),
        )
        .await?;
        until_status(&mesh, &web, "GET", "/private", 403).await?;
        for (method, path, status) in [
            ("GET", "/public/x", 200),
            ("POST", "/public/x", 403),
            ("GET", "/public/admin", 403),
            ("GET", "/private", 403),
        ] {
            let (got, error, body) = verdict(&mesh, &web, method, path).await?;
            ensure!(
                got == status,
                "web {method} {path}: {got} {error} {body}, expected {status}"
            );
        }
        // billing has no intention and the default is allow.
        let (got, _, body) = verdict(&mesh, &billing, "POST", "/private").await?;
        ensure!(got == 200, "billing: {got} {body}");
        Ok(())
    });
}

#[test]
fn a_consul_intention_takes_effect_within_a_second_and_its_removal_too() {
    run(|ctx| async move {
        let (mesh, _users, web, billing) = users_web_billing(&ctx).await?;
        let consul = mesh.consul.client();
        let id = consul
            .intention_create(&Intention {
                source_name: "billing".into(),
                destination_name: "users".into(),
                source_type: "consul".into(),
                action: "deny".into(),
                ..Default::default()
            })
            .await?;
        let created = Instant::now();
        let (error, body) = until_status(&mesh, &billing, "GET", "/", 403).await?;
        let took = created.elapsed();
        ctx.measured("Consul intention created -> enforced", took);
        ensure!(
            error == "denied" && body.contains(&format!("consul:{id}")),
            "{error} {body}"
        );
        let (status, _, _) = verdict(&mesh, &web, "GET", "/").await?;
        ensure!(status == 200, "web is not concerned by billing's intention");

        consul.intention_delete(&id).await?;
        let deleted = Instant::now();
        until_status(&mesh, &billing, "GET", "/", 200).await?;
        let took_delete = deleted.elapsed();
        ctx.measured("Consul intention deleted -> lifted", took_delete);
        ensure!(
            took < Duration::from_secs(1) && took_delete < Duration::from_secs(1),
            "intentions took {took:?} / {took_delete:?} to apply"
        );
        Ok(())
    });
}

//! Opaque TCP through the mesh, with a real Redis: the destination is
//! marked `protocol: tcp`, the caller's app talks RESP to its sidecar's
//! `--tcp-upstream` port, the bytes cross an HTTP/2 CONNECT stream on the
//! mTLS connection between the sidecars, and Redis's sidecar decides by L4
//! intentions (KV policy documents and Consul's intentions) whether they
//! reach Redis at all.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};
use weft_discovery::consul::Intention;
use weft_e2e::harness::identity::MeshCa;
use weft_e2e::harness::mesh::{MeshedInstance, SETUP_TIMEOUT};
use weft_e2e::harness::ports::free_port;
use weft_e2e::harness::redis::{Redis, RespConn};
use weft_e2e::harness::sidecar::Sidecar;
use weft_e2e::{Call, Mesh, eventually, run};

/// Redis behind its meshed sidecar, and a meshed `client` whose sidecar
/// serves Redis on a local port (`tcp`).
struct RedisMesh {
    mesh: Mesh,
    redis: Redis,
    redis_sidecar: Sidecar,
    client: MeshedInstance,
    tcp: SocketAddr,
}

async fn redis_mesh(ctx: &weft_e2e::TestCtx) -> anyhow::Result<RedisMesh> {
    let ca = MeshCa::create(&ctx.log_dir, &["redis", "client"])?;
    let mesh = Mesh::start_with(ctx, &ca.agent_args("24h")).await?;
    mesh.put_document("destinations/redis", &json!({ "protocol": "tcp" }))
        .await?;
    let redis = Redis::start(&ctx.log_dir).await?;
    let (redis_sidecar, _) = mesh
        .sidecar_for("redis", "redis-1", redis.port(), &ca.sidecar_args("redis"))
        .await?;
    let tcp = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut args = ca.sidecar_args("client");
    args.extend(["--tcp-upstream".to_owned(), format!("redis={tcp}")]);
    let client = mesh
        .meshed_instance_with("client", "client-1", &args)
        .await?;
    // Setup: Redis's endpoint and both policies have reached the sidecars.
    eventually(SETUP_TIMEOUT, "PING through the mesh", || async move {
        RespConn::connect(tcp)
            .await?
            .expect_simple(&[b"PING"], "PONG")
            .await
    })
    .await?;
    Ok(RedisMesh {
        mesh,
        redis,
        redis_sidecar,
        client,
        tcp,
    })
}

/// The `/tcp` counters of `caller` on the callee's sidecar.
async fn inbound_counters(sidecar: &Sidecar, caller: &str) -> anyhow::Result<Value> {
    let stats = sidecar.tcp_stats().await?;
    Ok(stats["inbound"][caller].clone())
}

/// Waits until a connection through the tunnel port is closed without an
/// answer (the policy took effect).
async fn until_denied(tcp: SocketAddr, what: &str) -> anyhow::Result<()> {
    eventually(Duration::from_secs(10), what, || async move {
        let mut conn = RespConn::connect(tcp).await?;
        conn.send(&[b"PING"]).await?;
        conn.closed_by_peer().await
    })
    .await
}

/// Waits until PING through the tunnel port is answered again.
async fn until_allowed(tcp: SocketAddr, what: &str) -> anyhow::Result<()> {
    eventually(Duration::from_secs(10), what, || async move {
        RespConn::connect(tcp)
            .await?
            .expect_simple(&[b"PING"], "PONG")
            .await
    })
    .await
}

/// A denied connection is closed and Redis never sees it: no connection
/// reaches Redis, and the command's key does not exist.
async fn denied_before_redis(m: &RedisMesh, key: &str) -> anyhow::Result<()> {
    let mut direct = m.redis.direct().await?;
    let connections = direct.info("stats", "total_connections_received").await?;
    let mut conn = RespConn::connect(m.tcp).await?;
    conn.send(&[b"SET", key.as_bytes(), b"1"]).await?;
    conn.closed_by_peer().await?;
    ensure!(
        direct.integer(&[b"EXISTS", key.as_bytes()]).await? == 0,
        "the denied SET {key} reached Redis"
    );
    let after = direct.info("stats", "total_connections_received").await?;
    ensure!(
        after == connections,
        "Redis received a connection while the caller was denied ({connections} -> {after})"
    );
    Ok(())
}

#[test]
fn redis_commands_cross_the_mtls_tunnel_and_redis_side_knows_the_caller() {
    run(|ctx| async move {
        let m = redis_mesh(&ctx).await?;
        let mut conn = RespConn::connect(m.tcp).await?;
        conn.expect_simple(&[b"PING"], "PONG").await?;
        conn.expect_simple(&[b"SET", b"greeting", b"hello"], "OK")
            .await?;
        let got = conn.bulk(&[b"GET", b"greeting"]).await?;
        ensure!(got.as_deref() == Some(&b"hello"[..]), "GET: {got:?}");
        // It is the real Redis: a direct connection reads the same key.
        let mut direct = m.redis.direct().await?;
        let direct_got = direct.bulk(&[b"GET", b"greeting"]).await?;
        ensure!(
            direct_got.as_deref() == Some(&b"hello"[..]),
            "{direct_got:?}"
        );

        // 4 MiB each way through bounded buffers, byte for byte.
        let big: Vec<u8> = (0..4u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        conn.expect_simple(&[b"SET", b"big", &big], "OK").await?;
        ensure!(direct.integer(&[b"STRLEN", b"big"]).await? == big.len() as i64);
        let back = conn.bulk(&[b"GET", b"big"]).await?.context("big is gone")?;
        ensure!(
            back == big,
            "the 4 MiB value came back altered ({} bytes)",
            back.len()
        );

        // Redis's sidecar knows who is on the other end: its counters are
        // per calling service, and its log maps the connection Redis sees
        // (CLIENT LIST) to the caller's verified identity.
        let counters = inbound_counters(&m.redis_sidecar, "client").await?;
        ensure!(counters["active"] == 1, "/tcp inbound client: {counters}");
        ensure!(
            counters["bytes_sent_total"].as_u64().unwrap_or(0) > 0,
            "{counters}"
        );
        let opened = m
            .redis_sidecar
            .log()?
            .lines()
            .filter(|l| l.contains("tcp tunnel opened") && l.contains("client"))
            .filter_map(|l| l.split("app_side=").nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(|addr| addr.trim_matches('"').to_owned())
            .collect::<Vec<_>>();
        let redis_clients = direct.client_addrs().await?;
        let ours = opened
            .iter()
            .find(|addr| redis_clients.contains(addr))
            .with_context(|| {
                format!("no tunnel of client in Redis's CLIENT LIST {redis_clients:?}; the log names {opened:?}")
            })?
            .clone();
        let outbound = m.client.sidecar.tcp_stats().await?;
        ensure!(outbound["outbound"][0]["active"] == 1, "{outbound}");

        // HTTP to an opaque TCP destination is refused, not sent as bytes.
        let reply = m
            .mesh
            .http
            .call(m.client.sidecar.outbound, Call::get("redis", "/"))
            .await?;
        ensure!(
            reply.status.as_u16() == 501 && reply.weft_error() == Some("unsupported"),
            "HTTP to redis: {} {:?} {}",
            reply.status,
            reply.weft_error(),
            reply.text()
        );

        // Closing the client closes the server side: the connection leaves
        // Redis's CLIENT LIST and the tunnel is no longer active.
        drop(conn);
        eventually(
            Duration::from_secs(5),
            "the tunnel closes on both sides",
            || {
                let redis = &m.redis;
                let ours = &ours;
                let sidecar = &m.redis_sidecar;
                async move {
                    let clients = redis.direct().await?.client_addrs().await?;
                    ensure!(
                        !clients.contains(ours),
                        "Redis still has {ours}: {clients:?}"
                    );
                    let counters = inbound_counters(sidecar, "client").await?;
                    ensure!(counters["active"] == 0, "{counters}");
                    Ok(())
                }
            },
        )
        .await?;
        Ok(())
    });
}

#[test]
fn an_l4_deny_closes_the_connection_before_redis_and_an_allow_reopens_it_live() {
    run(|ctx| async move {
        let mut m = redis_mesh(&ctx).await?;
        let pids = (
            m.redis_sidecar.process().pid()?,
            m.client.sidecar.process().pid()?,
        );

        // A KV policy document denies the caller.
        m.mesh
            .put_document(
                "policies/redis",
                &json!({ "intentions": [ { "source": "client", "action": "deny" } ] }),
            )
            .await?;
        until_denied(m.tcp, "KV deny of client -> redis").await?;
        denied_before_redis(&m, "denied-by-kv").await?;
        let counters = inbound_counters(&m.redis_sidecar, "client").await?;
        ensure!(
            counters["denied_total"].as_u64().unwrap_or(0) >= 1,
            "{counters}"
        );
        let outbound = m.client.sidecar.tcp_stats().await?;
        ensure!(
            outbound["outbound"][0]["denied_total"]
                .as_u64()
                .unwrap_or(0)
                >= 1,
            "{outbound}"
        );
        let log = m.client.sidecar.log()?;
        ensure!(
            log.lines().any(|l| l.contains("tcp connection refused")
                && l.contains("client is denied by intention kv:weft/policies/redis")),
            "the caller's log does not give the reason"
        );

        // Allowed again: works, nothing restarted.
        m.mesh
            .put_document(
                "policies/redis",
                &json!({ "intentions": [ { "source": "client", "action": "allow" } ] }),
            )
            .await?;
        until_allowed(m.tcp, "KV allow of client -> redis").await?;

        // An L7 intention cannot judge bytes: it denies opaque TCP.
        m.mesh
            .put_document(
                "policies/redis",
                &json!({ "intentions": [ { "source": "client", "permissions": [
                    { "action": "allow", "path_prefix": "/" } ] } ] }),
            )
            .await?;
        until_denied(m.tcp, "an L7 intention for client -> redis").await?;
        m.mesh.put_document("policies/redis", &json!({})).await?;
        until_allowed(m.tcp, "no intention (default allow)").await?;

        // A Consul intention, created through Consul's HTTP API.
        let consul = m.mesh.consul.client();
        let id = consul
            .intention_create(&Intention {
                source_name: "client".into(),
                destination_name: "redis".into(),
                source_type: "consul".into(),
                action: "deny".into(),
                ..Default::default()
            })
            .await?;
        until_denied(m.tcp, "Consul deny of client -> redis").await?;
        denied_before_redis(&m, "denied-by-consul").await?;
        let log = m.client.sidecar.log()?;
        ensure!(
            log.contains(&format!("consul:{id}")),
            "the caller's log does not name the Consul intention {id}"
        );
        consul.intention_delete(&id).await?;
        until_allowed(m.tcp, "Consul intention deleted").await?;
        let mut conn = RespConn::connect(m.tcp).await?;
        conn.expect_simple(&[b"SET", b"allowed", b"1"], "OK")
            .await?;
        if m.redis
            .direct()
            .await?
            .integer(&[b"EXISTS", b"allowed"])
            .await?
            != 1
        {
            bail!("the allowed SET did not reach Redis");
        }
        let now = (
            m.redis_sidecar.process().pid()?,
            m.client.sidecar.process().pid()?,
        );
        ensure!(now == pids, "a sidecar was restarted: {pids:?} -> {now:?}");
        m.redis_sidecar.check_running()?;
        m.client.sidecar.check_running()?;
        Ok(())
    });
}

//! gRPC (unary, server streaming, bidirectional) and WebSocket through two
//! sidecars: the test is app A, sending to its sidecar's outbound listener;
//! sidecar A sends to sidecar B's inbound listener (the `connect-proxy` that
//! Consul lists for `echo`), which forwards to app B.
//!
//! With mTLS between the sidecars (HTTP/2 only on that hop) a WebSocket
//! crosses it as an extended CONNECT; the callee's sidecar judges the
//! upgrade request (intentions, JWT) like any other before its app sees it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, ensure};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use weft_e2e::echo::EchoRequest;
use weft_e2e::harness::grpc::{
    echo_client, echo_one_by_one, websocket, websocket_refusal, websocket_with,
};
use weft_e2e::harness::identity::MeshCa;
use weft_e2e::harness::mesh::{SETUP_TIMEOUT, mtls_users_and_client};
use weft_e2e::{Call, Mesh, MeshedInstance, eventually, run, wait_for_route};

/// Consul, the agent, a meshed `echo` service and a meshed client, with the
/// route to `echo` in place.
async fn two_sidecars(
    ctx: &weft_e2e::TestCtx,
) -> anyhow::Result<(Mesh, MeshedInstance, MeshedInstance)> {
    let mesh = Mesh::start(ctx).await?;
    let echo = mesh.meshed_instance("echo", "echo-1").await?;
    let client = mesh.client().await?;
    let answer = wait_for_route(
        &mesh.http,
        client.sidecar.outbound,
        Call::get("echo", "/"),
        "echo is routed",
        |e| e.instance == "echo-1",
    )
    .await?;
    // Through sidecar B: the app sees its sidecar as the peer that forwarded.
    ensure!(
        answer.header("x-forwarded-for").is_some(),
        "no x-forwarded-for: {:?}",
        answer.headers
    );
    Ok((mesh, client, echo))
}

#[test]
fn grpc_unary_and_streaming_calls_pass_through_two_sidecars() {
    run(|ctx| async move {
        let (_mesh, client, _echo) = two_sidecars(&ctx).await?;
        let mut grpc = echo_client(client.sidecar.outbound, "echo").await?;

        let reply = grpc
            .unary(EchoRequest {
                message: "hello".into(),
                repeat: 0,
            })
            .await?
            .into_inner();
        ensure!(
            reply.message == "hello" && reply.served_by == "echo-1",
            "unary: {reply:?}"
        );

        let replies: Vec<String> = grpc
            .server_stream(EchoRequest {
                message: "tick".into(),
                repeat: 5,
            })
            .await?
            .into_inner()
            .map(|reply| reply.map(|reply| reply.message))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        ensure!(
            replies == ["tick-0", "tick-1", "tick-2", "tick-3", "tick-4"],
            "server stream: {replies:?}"
        );

        // Bidi: each message is answered before the next one is sent, so the
        // stream is really interactive end to end (not buffered until close).
        let (requests, outgoing) = tokio::sync::mpsc::channel(1);
        let mut incoming = grpc
            .bidi_stream(tokio_stream::wrappers::ReceiverStream::new(outgoing))
            .await?
            .into_inner();
        for i in 0..5 {
            requests
                .send(EchoRequest {
                    message: format!("m{i}"),
                    repeat: 0,
                })
                .await?;
            let reply = incoming
                .message()
                .await?
                .context("bidi stream ended early")?;
            ensure!(
                reply.message == format!("m{i}") && reply.served_by == "echo-1",
                "bidi: {reply:?}"
            );
        }
        drop(requests);
        ensure!(
            incoming.message().await?.is_none(),
            "bidi stream did not end with the requests"
        );
        Ok(())
    });
}

#[test]
fn a_websocket_echo_passes_through_two_sidecars() {
    run(|ctx| async move {
        let (_mesh, client, _echo) = two_sidecars(&ctx).await?;
        let mut socket = websocket(client.sidecar.outbound, "echo", "/ws").await?;
        echo_one_by_one(&mut socket).await?;
        socket.close(None).await?;
        Ok(())
    });
}

/// How many WebSocket upgrades the app has been asked for.
fn upgrades_seen(app: &weft_e2e::harness::app::App) -> anyhow::Result<usize> {
    Ok(app
        .log()?
        .lines()
        .filter(|l| l.contains("websocket upgrade requested"))
        .count())
}

/// Sends every message, then reads the echoes: both directions are busy
/// at once, and each echo must come back whole and in order.
async fn echo_burst(
    socket: &mut WebSocketStream<TcpStream>,
    messages: &[Message],
) -> anyhow::Result<()> {
    for message in messages {
        socket.send(message.clone()).await?;
    }
    for message in messages {
        let reply = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .context("no echo within 10 s")?
            .context("socket closed")??;
        ensure!(
            &reply == message,
            "sent {} bytes, got back {} bytes ({:?}...)",
            message.len(),
            reply.len(),
            reply.to_string().chars().take(40).collect::<String>()
        );
    }
    Ok(())
}

#[test]
fn a_websocket_crosses_the_mtls_hop_between_sidecars_and_echoes_both_ways() {
    run(|ctx| async move {
        let (_ca, _mesh, users, client) = mtls_users_and_client(&ctx, "24h").await?;
        let mut socket = websocket(client.sidecar.outbound, "users", "/ws").await?;
        // Larger than 64 KiB each, so they span many HTTP/2 DATA frames,
        // flow-control windows and copy buffers.
        let big_binary: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        echo_burst(
            &mut socket,
            &[
                Message::text("hello"),
                Message::binary(vec![0u8, 1, 2, 255]),
                Message::text("x".repeat(70_000)),
                Message::binary(big_binary),
            ],
        )
        .await?;
        for i in 0..5 {
            echo_burst(&mut socket, &[Message::text(format!("turn {i}"))]).await?;
        }
        // The close handshake crosses too: the app answers it and the
        // stream ends.
        socket.close(None).await?;
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(_)) = socket.next().await {}
        })
        .await;
        ensure!(ended.is_ok(), "the socket did not end after the close");
        ensure!(upgrades_seen(&users.app)? == 1, "{}", users.app.log()?);
        Ok(())
    });
}

/// Checks a refused handshake's status and `x-weft-error` (`None`: the
/// app's own answer, no sidecar error), and returns its body.
fn refused_with(
    refusal: &http::Response<Option<Vec<u8>>>,
    status: u16,
    weft_error: Option<&str>,
) -> anyhow::Result<String> {
    let body = String::from_utf8_lossy(refusal.body().as_deref().unwrap_or_default()).into_owned();
    let error = refusal
        .headers()
        .get("x-weft-error")
        .and_then(|v| v.to_str().ok());
    ensure!(
        refusal.status().as_u16() == status && error == weft_error,
        "expected {status} {weft_error:?}, got {} {error:?}: {body}",
        refusal.status()
    );
    Ok(body)
}

/// Waits until a plain `GET path` from client to users gets `status`.
async fn until_enforced(
    mesh: &Mesh,
    client: &MeshedInstance,
    path: &str,
    status: u16,
) -> anyhow::Result<()> {
    eventually(
        SETUP_TIMEOUT,
        &format!("GET {path} -> {status}"),
        || async {
            let reply = mesh
                .http
                .call(client.sidecar.outbound, Call::get("users", path))
                .await?;
            ensure!(
                reply.status.as_u16() == status,
                "got {} {}",
                reply.status,
                reply.text()
            );
            Ok(())
        },
    )
    .await
}

#[test]
fn an_upgrade_over_mtls_is_judged_by_the_callees_intentions_and_jwt_before_its_app_sees_it() {
    run(|ctx| async move {
        let (_ca, mesh, users, client) = mtls_users_and_client(&ctx, "24h").await?;

        // Only GET /ws is allowed: the callee judges the request the app
        // sent (GET), not the CONNECT that carried it.
        mesh.put_document(
            "policies/users",
            &json!({ "intentions": [ { "source": "client", "permissions": [
                { "action": "allow", "path_exact": "/ws", "methods": ["GET"] } ] } ] }),
        )
        .await?;
        until_enforced(&mesh, &client, "/elsewhere", 403).await?;
        let mut socket = websocket(client.sidecar.outbound, "users", "/ws").await?;
        echo_burst(&mut socket, &[Message::text("allowed")]).await?;
        drop(socket);

        // An L7 intention denies the path: 403 from users' sidecar, and
        // the app is never asked.
        mesh.put_document(
            "policies/users",
            &json!({ "intentions": [ { "source": "client", "permissions": [
                { "action": "deny", "path_exact": "/ws" },
                { "action": "allow", "path_prefix": "/" } ] } ] }),
        )
        .await?;
        until_enforced(&mesh, &client, "/ws", 403).await?;
        let before = upgrades_seen(&users.app)?;
        let refusal = websocket_refusal(client.sidecar.outbound, "users", "/ws", &[]).await?;
        let body = refused_with(&refusal, 403, Some("denied"))?;
        ensure!(
            body.contains("client") && body.contains("GET /ws"),
            "the reason does not name the caller and the request: {body}"
        );

        // JWT: without a token 401, with one the socket opens.
        let secret = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
        mesh.put_document(
            "policies/users",
            &json!({ "jwt": {
                "providers": [ { "name": "corp", "issuer": "https://idp.weft.test",
                                 "audiences": ["users"], "shared_secret": secret } ],
                "rules": [ { "match": { "path_prefix": "/status/" }, "public": true } ] } }),
        )
        .await?;
        until_enforced(&mesh, &client, "/ws", 401).await?;
        let refusal = websocket_refusal(client.sidecar.outbound, "users", "/ws", &[]).await?;
        refused_with(&refusal, 401, Some("jwt-missing"))?;
        ensure!(
            upgrades_seen(&users.app)? == before,
            "a refused upgrade reached the app: {}",
            users.app.log()?
        );
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({ "iss": "https://idp.weft.test", "aud": "users", "sub": "alice",
                     "iat": now, "exp": now + 300 }),
            &jsonwebtoken::EncodingKey::from_base64_secret(secret)?,
        )?;
        let bearer = format!("Bearer {token}");
        let mut socket = websocket_with(
            client.sidecar.outbound,
            "users",
            "/ws",
            &[("authorization", &bearer)],
        )
        .await?;
        echo_burst(&mut socket, &[Message::text("with a token")]).await?;
        ensure!(upgrades_seen(&users.app)? == before + 1);
        Ok(())
    });
}

#[test]
fn an_upgrade_the_app_declines_over_mtls_gets_the_apps_own_answer() {
    run(|ctx| async move {
        let (_ca, mesh, users, client) = mtls_users_and_client(&ctx, "24h").await?;

        // The app refuses: its status and body, not a sidecar error.
        let refusal =
            websocket_refusal(client.sidecar.outbound, "users", "/status/403", &[]).await?;
        let body = refused_with(&refusal, 403, None)?;
        ensure!(body.contains("\"instance\":\"users-1\""), "{body}");

        // The app ignores the Upgrade and answers 200: the client gets that
        // 200 and its body. The app saw the request as its caller sent it.
        let answer = mesh
            .http
            .call(
                client.sidecar.outbound,
                Call::get("users", "/plain")
                    .headers(&[("connection", "upgrade"), ("upgrade", "websocket")]),
            )
            .await?;
        ensure!(answer.status == 200, "{} {}", answer.status, answer.text());
        let echo = answer.echo()?;
        ensure!(
            echo.method == "GET" && echo.path == "/plain" && echo.version == "HTTP/1.1",
            "{echo:?}"
        );
        ensure!(echo.header("upgrade") == Some("websocket"), "{echo:?}");
        ensure!(
            echo.header("x-weft-peer-identity") == Some(MeshCa::identity_of("client").as_str()),
            "{echo:?}"
        );
        ensure!(
            answer.headers.get("x-weft-orig-status").is_none(),
            "{:?}",
            answer.headers
        );
        ensure!(upgrades_seen(&users.app)? == 2, "{}", users.app.log()?);
        Ok(())
    });
}

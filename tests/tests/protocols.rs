//! gRPC (unary, server streaming, bidirectional) and WebSocket through two
//! sidecars: the test is app A, sending to its sidecar's outbound listener;
//! sidecar A sends to sidecar B's inbound listener (the `connect-proxy` that
//! Consul lists for `echo`), which forwards to app B.

use anyhow::{Context as _, ensure};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;
use weft_e2e::echo::EchoRequest;
use weft_e2e::harness::grpc::{echo_client, websocket};
use weft_e2e::{Call, Mesh, MeshedInstance, run, wait_for_route};

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
        for message in [
            Message::text("hello"),
            Message::binary(vec![0u8, 1, 2, 255]),
            Message::text("x".repeat(70_000)),
        ] {
            socket.send(message.clone()).await?;
            let reply = socket.next().await.context("socket closed")??;
            ensure!(
                reply == message,
                "sent {} bytes, got back {:?}",
                message.len(),
                reply
            );
        }
        socket.close(None).await?;
        Ok(())
    });
}

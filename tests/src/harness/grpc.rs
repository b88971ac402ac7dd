//! gRPC and WebSocket clients that reach a service by name through a
//! sidecar's outbound listener.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tonic::transport::{Channel, Endpoint};

use crate::echo::echo_client::EchoClient;

/// An Echo client connected to `via` (an outbound listener, or an app
/// directly) whose requests carry `:authority = authority`, the way an app
/// addresses a service by name over HTTP/2 with prior knowledge.
pub async fn echo_client(via: SocketAddr, authority: &str) -> anyhow::Result<EchoClient<Channel>> {
    let origin: http::Uri = format!("http://{authority}")
        .parse()
        .with_context(|| format!("{authority:?} is not a valid authority"))?;
    let channel = Endpoint::from_shared(format!("http://{via}"))
        .with_context(|| format!("gRPC endpoint for {via}"))?
        .origin(origin)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("connecting a gRPC channel to {via} for {authority}"))?;
    Ok(EchoClient::new(channel))
}

/// A server-streaming echo of `message`, `repeat` times: the messages of
/// every reply, once the stream has ended (an error if it failed).
pub async fn streamed_messages(
    grpc: &mut EchoClient<Channel>,
    message: &str,
    repeat: u32,
) -> anyhow::Result<Vec<String>> {
    let request = crate::echo::EchoRequest {
        message: message.into(),
        repeat,
    };
    let mut stream = grpc
        .server_stream(request)
        .await
        .with_context(|| format!("server stream of {message:?}"))?
        .into_inner();
    let mut messages = Vec::new();
    while let Some(reply) = stream
        .message()
        .await
        .with_context(|| format!("server stream of {message:?}, after {messages:?}"))?
    {
        messages.push(reply.message);
    }
    Ok(messages)
}

/// Opens a WebSocket to `ws://host{path}` over a TCP connection to `via`.
pub async fn websocket(
    via: SocketAddr,
    host: &str,
    path: &str,
) -> anyhow::Result<WebSocketStream<TcpStream>> {
    websocket_with(via, host, path, &[]).await
}

/// Like [`websocket`], with more request headers (a token, say).
pub async fn websocket_with(
    via: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<WebSocketStream<TcpStream>> {
    match handshake(via, host, path, headers).await? {
        Ok(socket) => Ok(socket),
        Err(refusal) => anyhow::bail!(
            "WebSocket handshake with {host}{path} answered {}: {}",
            refusal.status(),
            String::from_utf8_lossy(refusal.body().as_deref().unwrap_or_default())
        ),
    }
}

/// Sends a text, a binary and a 70 kB text message (larger than one
/// 64 KiB read or frame) one at a time, each echo read before the next:
/// an error unless each comes back whole within 10 s.
pub async fn echo_one_by_one(socket: &mut WebSocketStream<TcpStream>) -> anyhow::Result<()> {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    for message in [
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::text("x".repeat(70_000)),
    ] {
        socket.send(message.clone()).await?;
        let reply = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .context("no echo within 10 s")?
            .context("socket closed")??;
        anyhow::ensure!(
            reply == message,
            "sent {} bytes, got back {:?}",
            message.len(),
            reply
        );
    }
    Ok(())
}

/// The answer to a WebSocket handshake that must not switch protocols
/// (status, headers, body); an error if it did.
pub async fn websocket_refusal(
    via: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<http::Response<Option<Vec<u8>>>> {
    match handshake(via, host, path, headers).await? {
        Ok(_) => anyhow::bail!("the WebSocket handshake with {host}{path} succeeded"),
        Err(refusal) => Ok(refusal),
    }
}

/// A WebSocket handshake: the socket, or the answer that refused it.
async fn handshake(
    via: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Result<WebSocketStream<TcpStream>, http::Response<Option<Vec<u8>>>>> {
    let mut request = format!("ws://{host}{path}")
        .into_client_request()
        .with_context(|| format!("building a WebSocket request for {host}{path}"))?;
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes())?,
            http::HeaderValue::from_str(value)?,
        );
    }
    let tcp = TcpStream::connect(via)
        .await
        .with_context(|| format!("connecting to {via} for a WebSocket to {host}"))?;
    tcp.set_nodelay(true)?;
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(request, tcp),
    )
    .await
    .with_context(|| format!("WebSocket handshake with {host}{path} via {via} timed out"))?;
    match answer {
        Ok((socket, response)) => {
            anyhow::ensure!(
                response.status() == http::StatusCode::SWITCHING_PROTOCOLS,
                "WebSocket handshake answered {}",
                response.status()
            );
            Ok(Ok(socket))
        }
        Err(WsError::Http(refusal)) => Ok(Err(refusal)),
        Err(e) => {
            Err(e).with_context(|| format!("WebSocket handshake with {host}{path} via {via}"))
        }
    }
}

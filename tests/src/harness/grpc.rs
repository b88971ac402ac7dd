//! gRPC and WebSocket clients that reach a service by name through a
//! sidecar's outbound listener.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
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

/// Opens a WebSocket to `ws://host{path}` over a TCP connection to `via`.
pub async fn websocket(
    via: SocketAddr,
    host: &str,
    path: &str,
) -> anyhow::Result<WebSocketStream<TcpStream>> {
    let tcp = TcpStream::connect(via)
        .await
        .with_context(|| format!("connecting to {via} for a WebSocket to {host}"))?;
    tcp.set_nodelay(true)?;
    let (socket, response) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(format!("ws://{host}{path}"), tcp),
    )
    .await
    .with_context(|| format!("WebSocket handshake with {host}{path} via {via} timed out"))?
    .with_context(|| format!("WebSocket handshake with {host}{path} via {via}"))?;
    anyhow::ensure!(
        response.status() == http::StatusCode::SWITCHING_PROTOCOLS,
        "WebSocket handshake answered {}",
        response.status()
    );
    Ok(socket)
}

//! The caller's side: one local listener per `--tcp-upstream`. Each
//! connection the app opens is carried to one endpoint of the destination's
//! cluster, picked by the cluster's balancer:
//!
//! * a meshed endpoint: an HTTP/2 CONNECT stream (RFC 9113 §8.5) on the
//!   mTLS connection to its sidecar, `:authority` = the destination
//!   service. The handshake checks the peer's SPIFFE ID, as for HTTP; the
//!   peer answers 200 (then the stream carries the bytes) or refuses with
//!   403 and the reason;
//! * a plain endpoint (an app outside the mesh): a direct TCP connection.
//!
//! A connection that cannot be carried (no cluster, not marked `tcp`, no
//! healthy endpoint, the limit of open connections, connect failure, a
//! refusal) is closed right after the accept: the app sees the close. Each
//! is counted and logged with the reason.
//!
//! The endpoint comes from the routing table through [`Destinations`],
//! which the table implements (`table/tcp.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use weft_runtime::AcceptErrors;

use super::Counters;
use super::copy::{self, End};
use crate::error::peer_refusal_code;
use crate::shutdown::{DrainToken, accept};
use crate::upstream::{Connector, Dns, EndpointAddr, TunnelClient};

/// How much of a refusal's body is kept for the log.
const REASON_LIMIT: usize = 1024;

/// Where the app's connections go, as the routing table knows it.
pub trait Destinations: Send + Sync + 'static {
    type Endpoint: TcpEndpoint;
    /// An endpoint of `service`'s cluster for a new connection, counted as
    /// open (against the cluster's limit, and in flight on the endpoint)
    /// until it drops, with the cluster's connect timeout; or why there is
    /// none.
    fn pick(&self, service: &str) -> Result<(Self::Endpoint, Duration), String>;
}

/// A picked endpoint, as a connection to it needs it.
pub trait TcpEndpoint: Send + Sync + 'static {
    fn addr(&self) -> &EndpointAddr;
    /// Behind a sidecar: reached by a tunnel on its mTLS connection.
    fn meshed(&self) -> bool;
    /// The client of that connection, when this sidecar has mesh mTLS.
    fn tunnel(&self) -> Option<&TunnelClient>;
    /// Counts a connection that failed against the endpoint.
    fn count_failure(&self);
}

/// One `--tcp-upstream`: the destination and what its connections need.
pub struct Upstream<D> {
    pub service: Arc<str>,
    pub table: Arc<D>,
    pub dns: Dns,
    /// A tunnel or connection with no byte either way for this long is closed.
    pub idle_timeout: Duration,
    pub counters: Arc<Counters>,
}

/// Accepts the app's connections until `shutdown` turns true; each holds a
/// drain token until it has closed.
pub async fn serve<D: Destinations>(
    listener: TcpListener,
    upstream: Arc<Upstream<D>>,
    mut shutdown: watch::Receiver<bool>,
    drain: DrainToken,
) {
    let mut errors = AcceptErrors::new(format!("tcp-upstream {}", upstream.service));
    while let Some((app, client)) = accept(&listener, &mut errors, &mut shutdown).await {
        let upstream = upstream.clone();
        let token = drain.clone();
        tokio::spawn(async move {
            let _token = token;
            upstream.proxy(app, client).await;
        });
    }
}

/// Why a connection was not carried.
struct Refusal {
    /// The destination's policy refused it (403 from its sidecar).
    denied: bool,
    reason: String,
}

impl Refusal {
    fn failed(reason: impl Into<String>) -> Self {
        Self {
            denied: false,
            reason: reason.into(),
        }
    }
}

/// The far side of an app's connection, with the endpoint (which counts
/// it as open).
struct Opened<E> {
    stream: Far,
    endpoint: E,
}

enum Far {
    Tunnel(TokioIo<hyper::upgrade::Upgraded>),
    Direct(TcpStream),
}

impl<D: Destinations> Upstream<D> {
    async fn proxy(&self, mut app: TcpStream, client: SocketAddr) {
        let opened = match self.open().await {
            Ok(opened) => opened,
            Err(refusal) => {
                let counter = if refusal.denied {
                    &self.counters.denied
                } else {
                    &self.counters.failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    upstream = %self.service,
                    %client,
                    denied = refusal.denied,
                    reason = %refusal.reason,
                    "tcp connection refused; closing it"
                );
                // Dropping `app` closes the app's connection.
                return;
            }
        };
        let _active = self.counters.open();
        let endpoint = opened.endpoint.addr().to_string();
        tracing::debug!(upstream = %self.service, %client, %endpoint, "tcp connection opened");
        let bridged = match opened.stream {
            Far::Tunnel(mut tunnel) => copy::bridge(&mut app, &mut tunnel, self.idle_timeout).await,
            Far::Direct(mut tcp) => copy::bridge(&mut app, &mut tcp, self.idle_timeout).await,
        };
        self.counters.record(&bridged);
        if let End::Failed(_) = bridged.end {
            opened.endpoint.count_failure();
        }
        tracing::debug!(
            upstream = %self.service,
            %client,
            %endpoint,
            sent = bridged.a_to_b,
            received = bridged.b_to_a,
            end = ?bridged.end,
            "tcp connection closed"
        );
    }

    /// Picks an endpoint and opens the far side.
    async fn open(&self) -> Result<Opened<D::Endpoint>, Refusal> {
        let service = &*self.service;
        let (endpoint, connect_timeout) = self.table.pick(service).map_err(Refusal::failed)?;
        let far = if endpoint.meshed() {
            let tunnel = endpoint.tunnel().ok_or_else(|| {
                Refusal::failed(format!(
                    "{} is a meshed endpoint of {service}: opaque TCP to it needs mesh mTLS \
                     (an --identity-token on this sidecar and a CA on the agent)",
                    endpoint.addr()
                ))
            })?;
            open_tunnel(tunnel, service, endpoint.addr(), connect_timeout)
                .await
                .map(Far::Tunnel)
        } else {
            Connector::new(endpoint.addr().clone(), connect_timeout, self.dns.clone())
                .connect()
                .await
                .map(Far::Direct)
                .map_err(|e| Refusal::failed(e.to_string()))
        };
        match far {
            Ok(stream) => Ok(Opened { stream, endpoint }),
            Err(refusal) => {
                if !refusal.denied {
                    endpoint.count_failure();
                }
                Err(refusal)
            }
        }
    }
}

/// Opens a CONNECT stream to `service` on the endpoint's mTLS connection.
async fn open_tunnel(
    client: &TunnelClient,
    service: &str,
    endpoint: &EndpointAddr,
    connect_timeout: Duration,
) -> Result<TokioIo<hyper::upgrade::Upgraded>, Refusal> {
    let request = Uri::builder()
        .scheme("http")
        .authority(service)
        .path_and_query("/")
        .build()
        .and_then(|uri| {
            Request::builder()
                .method(Method::CONNECT)
                .uri(uri)
                .version(Version::HTTP_2)
                .body(Empty::<Bytes>::new())
        })
        .map_err(|e| Refusal::failed(format!("cannot build a CONNECT for {service}: {e}")))?;
    // One connect timeout to reach the peer sidecar (TCP and the mTLS
    // handshake, bounded by the connector), one for it to reach its app.
    let answer = tokio::time::timeout(2 * connect_timeout, client.request(request))
        .await
        .map_err(|_| {
            Refusal::failed(format!(
                "the tunnel to {} was not opened within {:?}",
                endpoint,
                2 * connect_timeout
            ))
        })?
        .map_err(|e| {
            Refusal::failed(format!(
                "cannot open a tunnel to {}: {}",
                endpoint,
                error_chain(&e)
            ))
        })?;
    match answer.status() {
        StatusCode::OK => hyper::upgrade::on(answer)
            .await
            .map(TokioIo::new)
            .map_err(|e| Refusal::failed(format!("the tunnel to {} broke: {e}", endpoint))),
        status => {
            let denied = status == StatusCode::FORBIDDEN;
            let reason = refusal_reason(answer).await;
            Err(Refusal {
                denied,
                reason: format!("{} refused the tunnel ({status}): {reason}", endpoint),
            })
        }
    }
}

/// The peer sidecar's `x-weft-error` and the start of the body of its
/// refusal.
async fn refusal_reason(answer: Response<Incoming>) -> String {
    let code = peer_refusal_code(&answer)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let body = Limited::new(answer.into_body(), REASON_LIMIT).collect();
    let text = match tokio::time::timeout(Duration::from_secs(1), body).await {
        Ok(Ok(collected)) => String::from_utf8_lossy(&collected.to_bytes())
            .trim()
            .to_owned(),
        _ => "(no readable reason)".to_owned(),
    };
    format!("{code}: {text}")
}

/// An error and its sources, `a: b: c` (hyper's top-level messages alone
/// say little).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

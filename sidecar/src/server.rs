//! The HTTP server shared by the inbound and outbound listeners: HTTP/1.1
//! and HTTP/2 (prior knowledge) on one port via hyper-util's auto builder,
//! a header-read timeout, upgrades, and graceful shutdown.
//!
//! Each accepted connection is one task. On shutdown the accept loop stops
//! and every connection is told to finish its in-flight requests and close
//! (HTTP/1 after the current response, HTTP/2 with GOAWAY);
//! [`Drain`](crate::shutdown::Drain) waits
//! for the last one.
//!
//! An mTLS listener hands each accepted connection to
//! [`crate::mtls::MtlsAcceptor`] for the handshake (and PERMISSIVE's
//! plaintext) and serves what it lets in, with the caller's identity.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::task::AtomicWaker;
use http::{HeaderValue, Method, Request, Version, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use weft_runtime::AcceptErrors;

use crate::body::RequestBody;
use crate::model::{Direction, PeerIdentity, ProxyResponse};
use crate::mtls::{Accepted, MtlsAcceptor};
use crate::shutdown::{DrainToken, accept, shutdown_signal};
use crate::table::RoutingTable;
use crate::table::request::{BridgeSettings, HttpStack, ProxyRequest, Received, RequestCtx};

/// Wakes the connection task for the shutdown signal and records that it
/// was this signal that woke it.
struct ShutdownWake {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ShutdownWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub header_read_timeout: Duration,
    /// An upgraded connection (WebSocket) with no byte either way for this
    /// long is closed (`--tcp-idle-timeout`).
    pub upgrade_idle_timeout: Duration,
}

/// What a listener speaks on the wire.
#[derive(Clone)]
pub enum Transport {
    /// Plaintext HTTP (the app's outbound listener; inbound without mTLS).
    Plain,
    /// Mesh mTLS ([`crate::mtls::server`]), in PERMISSIVE mode plaintext
    /// too; the mode is read once per accepted connection, so the policy
    /// can change it at any time without touching open connections.
    Mtls {
        acceptor: MtlsAcceptor,
        /// The mode is the table's inbound policy's (`table.inbound.mtls`).
        policy: Arc<ArcSwap<RoutingTable>>,
    },
    /// TLS from outside clients (a gateway's HTTPS listener): the
    /// certificate is chosen by SNI, HTTP/2 or HTTP/1.1 by ALPN, and no
    /// client certificate is asked for.
    Edge { acceptor: tokio_rustls::TlsAcceptor },
}

impl Transport {
    pub fn mtls(
        store: &Arc<weft_certs::IdentityStore>,
        policy: Arc<ArcSwap<RoutingTable>>,
    ) -> Self {
        Self::Mtls {
            acceptor: MtlsAcceptor::new(store),
            policy,
        }
    }
}

/// TLS handshakes with outside clients ([`Transport::Edge`]), process-wide
/// (`gateway::metrics` encodes them).
#[derive(Debug, Default)]
pub struct EdgeHandshakes {
    pub completed: AtomicU64,
    /// Refused by TLS itself: an alert, no shared version or cipher, not
    /// TLS at all.
    pub failed: AtomicU64,
    /// The client hung up before the handshake finished, or as it
    /// finished (`openssl s_time` and TCP health checks do, without
    /// reading the session tickets): its business, not a TLS problem.
    pub closed: AtomicU64,
    pub timed_out: AtomicU64,
}

pub static EDGE_HANDSHAKES: EdgeHandshakes = EdgeHandshakes {
    completed: AtomicU64::new(0),
    failed: AtomicU64::new(0),
    closed: AtomicU64::new(0),
    timed_out: AtomicU64::new(0),
};

/// An I/O error that says the peer closed or reset the connection, as
/// opposed to TLS refusing it (rustls's errors come as `InvalidData`).
fn client_went_away(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
    )
}

/// Adapts a tower stack to hyper for one connection.
struct ConnService<S> {
    stack: S,
    direction: Direction,
    client_addr: SocketAddr,
    client_ip: HeaderValue,
    /// The verified caller, for a connection that arrived over mTLS.
    peer: Option<PeerIdentity>,
    /// Handed to requests that may switch protocols: their bridge outlives
    /// the connection's task (HTTP/1) and must hold off the drain itself.
    bridge: BridgeSettings,
}

/// An HTTP/1.1 Upgrade or a CONNECT: the requests that may end up bridged.
fn may_upgrade(req: &Request<Incoming>) -> bool {
    (req.version() == Version::HTTP_11 && req.headers().contains_key(header::UPGRADE))
        || req.method() == Method::CONNECT
}

impl<S: HttpStack> hyper::service::Service<Request<Incoming>> for ConnService<S> {
    type Response = ProxyResponse;
    type Error = Infallible;
    type Future = S::Future;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let mut ctx = RequestCtx::new(self.direction, self.client_addr, self.client_ip.clone());
        ctx.peer_identity = self.peer.clone();
        if may_upgrade(&req) {
            ctx.bridge = Some(self.bridge.clone());
        }
        // Stacks are always ready (see crate::proxy), so no poll_ready.
        tower::Service::call(
            &mut self.stack.clone(),
            ProxyRequest {
                http: req.map(RequestBody::from),
                ctx,
                target: Received,
            },
        )
    }
}

fn builder(settings: &ServerSettings, direction: Direction) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        // Bounded: a client cannot open unlimited streams at once.
        .max_concurrent_streams(1024)
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    if direction == Direction::Inbound {
        // RFC 8441: a peer sidecar carries an HTTP/1.1 Upgrade (WebSocket)
        // over the mTLS HTTP/2 connection as an extended CONNECT.
        b.http2().enable_connect_protocol();
    }
    b
}

/// Accepts on `listener` until `shutdown` turns true; each connection holds
/// a token of `drain` until it has closed.
pub async fn serve<S: HttpStack>(
    listener: TcpListener,
    stack: S,
    direction: Direction,
    transport: Transport,
    settings: ServerSettings,
    mut shutdown: watch::Receiver<bool>,
    drain: DrainToken,
) {
    let builder = Arc::new(builder(&settings, direction));
    let mut errors = AcceptErrors::new(format!("{direction:?}").to_lowercase());
    while let Some((stream, addr)) = accept(&listener, &mut errors, &mut shutdown).await {
        let svc = ConnService {
            stack: stack.clone(),
            direction,
            client_addr: addr,
            client_ip: HeaderValue::from_str(&addr.ip().to_string())
                .unwrap_or(HeaderValue::from_static("unknown")),
            peer: None,
            bridge: BridgeSettings {
                drain: Some(drain.clone()),
                idle_timeout: settings.upgrade_idle_timeout,
            },
        };
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        let token = drain.clone();
        match &transport {
            Transport::Plain => {
                tokio::spawn(serve_connection(stream, svc, builder, shutdown, token));
            }
            Transport::Mtls { acceptor, policy } => {
                let acceptor = acceptor.clone();
                let mode = policy.load().inbound.mtls;
                // The handshake shares the request head's deadline, so a
                // silent client cannot hold a connection open either way.
                let deadline = settings.header_read_timeout;
                tokio::spawn(async move {
                    match acceptor.accept(stream, mode, deadline, addr).await {
                        Some(Accepted::Tls { stream, peer }) => {
                            let svc = ConnService {
                                peer: peer.map(PeerIdentity::new),
                                ..svc
                            };
                            serve_connection(stream, svc, builder, shutdown, token).await
                        }
                        Some(Accepted::Plain(tcp)) => {
                            serve_connection(tcp, svc, builder, shutdown, token).await
                        }
                        // Counted and logged by the acceptor.
                        None => {}
                    }
                });
            }
            Transport::Edge { acceptor } => {
                let accept = acceptor.accept(stream);
                // The handshake shares the request head's deadline.
                let deadline = settings.header_read_timeout;
                tokio::spawn(async move {
                    let counts = &EDGE_HANDSHAKES;
                    match tokio::time::timeout(deadline, accept).await {
                        Ok(Ok(tls)) => {
                            counts.completed.fetch_add(1, Ordering::Relaxed);
                            serve_connection(tls, svc, builder, shutdown, token).await
                        }
                        Ok(Err(e)) if client_went_away(&e) => {
                            counts.closed.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(client = %addr, error = %e, "client closed during the TLS handshake")
                        }
                        Ok(Err(e)) => {
                            counts.failed.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(client = %addr, error = %e, "TLS handshake failed")
                        }
                        Err(_) => {
                            counts.timed_out.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(client = %addr, "TLS handshake timed out")
                        }
                    }
                });
            }
        }
    }
}

/// Serves one connection until it closes; once `shutdown` turns true it is
/// asked to finish gracefully.
async fn serve_connection<S, I>(
    io: I,
    svc: ConnService<S>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    mut shutdown: watch::Receiver<bool>,
    token: DrainToken,
) where
    S: HttpStack,
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let _token = token;
    let client = svc.client_addr;
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    // Once `shutdown` turns true, ask the connection to finish
    // gracefully. The signal is polled only after it has woken the task,
    // not on each of the connection's read and write wakes.
    let flag = Arc::new(ShutdownWake {
        // Poll the signal once at the start to register its waker.
        woken: AtomicBool::new(true),
        task: AtomicWaker::new(),
    });
    let signal_waker = Waker::from(flag.clone());
    let mut signal = std::pin::pin!(shutdown_signal(&mut shutdown));
    let mut draining = false;
    let result = std::future::poll_fn(|cx| {
        if !draining {
            flag.task.register(cx.waker());
            if flag.woken.swap(false, Ordering::AcqRel)
                && signal
                    .as_mut()
                    .poll(&mut Context::from_waker(&signal_waker))
                    .is_ready()
            {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
        }
        conn.as_mut().poll(cx)
    })
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, %client, "connection ended with an error");
    }
}

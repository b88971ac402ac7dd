//! A bounded pool of HTTP/1.1 connections to one endpoint.
//!
//! Cheaper per request than hyper-util's general-purpose pool: no pool key
//! hashing, and no task spawned per request to notice when a connection is
//! free again. Instead the response body hands its connection back when it
//! reaches its end ([`PooledBody`]); a body dropped early closes it (unread
//! bytes would corrupt the next response). The lock is per endpoint and
//! held only to push or pop one entry.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{Builder, SendRequest};
use tokio::time::Instant;
use tower::Service;

use super::{ConnectError, Connector, PoolSettings};

/// Why an HTTP/1 exchange failed.
#[derive(Debug)]
pub enum H1Error {
    /// No connection could be made; the request was not sent.
    Connect(ConnectError),
    /// The HTTP/1 handshake on a new connection failed.
    Handshake(hyper::Error),
    /// The connection failed while sending or awaiting the response.
    Send(hyper::Error),
}

impl std::fmt::Display for H1Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "{e}"),
            Self::Handshake(e) => write!(f, "HTTP/1 handshake: {e}"),
            Self::Send(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for H1Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(e) => Some(e),
            Self::Handshake(e) | Self::Send(e) => Some(e),
        }
    }
}

struct Idle {
    tx: SendRequest<Incoming>,
    since: Instant,
}

struct Inner {
    idle: Mutex<Vec<Idle>>,
    connector: Connector,
    settings: PoolSettings,
    reaper_started: AtomicBool,
}

#[derive(Clone)]
pub struct H1Pool {
    inner: Arc<Inner>,
}

impl H1Pool {
    pub fn new(connector: Connector, settings: PoolSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                idle: Mutex::new(Vec::new()),
                connector,
                settings,
                reaper_started: AtomicBool::new(false),
            }),
        }
    }

    /// Idle connections currently pooled.
    pub fn idle_count(&self) -> usize {
        self.inner.lock().len()
    }

    async fn connect(&self) -> Result<SendRequest<Incoming>, H1Error> {
        let io = self
            .inner
            .connector
            .clone()
            .call(http::Uri::default())
            .await
            .map_err(H1Error::Connect)?;
        let (tx, conn) = Builder::new()
            .handshake(io)
            .await
            .map_err(H1Error::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(tx)
    }

    /// Sends `req` (origin-form URI, Host set) on a pooled or new connection.
    pub async fn send(&self, mut req: Request<Incoming>) -> Result<Response<PooledBody>, H1Error> {
        loop {
            let (mut tx, reused) = match self.inner.checkout() {
                Some(tx) => (tx, true),
                None => (self.connect().await?, false),
            };
            if reused && tx.ready().await.is_err() {
                continue; // closed while idle; try the next one
            }
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    // An upgraded connection belongs to the upgrade now.
                    let keep = resp.status() != StatusCode::SWITCHING_PROTOCOLS;
                    let ret = keep.then(|| (tx, self.clone()));
                    return Ok(resp.map(|body| PooledBody { body, ret }));
                }
                Err(mut e) => match e.take_message() {
                    // The pooled connection closed before the request left:
                    // sending it on another connection is safe.
                    Some(r) if reused => req = r,
                    _ => return Err(H1Error::Send(e.into_error())),
                },
            }
        }
    }

    fn put(&self, tx: SendRequest<Incoming>) {
        if tx.is_closed() {
            return;
        }
        let mut idle = self.inner.lock();
        if idle.len() >= self.inner.settings.max_idle_per_endpoint {
            return; // over the bound: the connection closes when dropped
        }
        idle.push(Idle {
            tx,
            since: Instant::now(),
        });
        drop(idle);
        if !self.inner.reaper_started.swap(true, Ordering::Relaxed) {
            tokio::spawn(reap(Arc::downgrade(&self.inner)));
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // Entries are plain handles; a panic elsewhere cannot leave them
        // half-updated, so a poisoned lock is still usable.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used live connection (warmest), if any.
    fn checkout(&self) -> Option<SendRequest<Incoming>> {
        let mut idle = self.lock();
        while let Some(entry) = idle.pop() {
            if !entry.tx.is_closed() && entry.since.elapsed() < self.settings.idle_timeout {
                return Some(entry.tx);
            }
        }
        None
    }

    fn prune(&self) {
        let timeout = self.settings.idle_timeout;
        self.lock()
            .retain(|e| !e.tx.is_closed() && e.since.elapsed() < timeout);
    }
}

/// Closes idle connections past the idle timeout, until the pool is gone.
async fn reap(pool: Weak<Inner>) {
    loop {
        let period = match pool.upgrade() {
            Some(p) => (p.settings.idle_timeout / 2).max(std::time::Duration::from_secs(1)),
            None => return,
        };
        tokio::time::sleep(period).await;
        match pool.upgrade() {
            Some(p) => p.prune(),
            None => return,
        }
    }
}

/// A response body that returns its connection to the pool at its end.
pub struct PooledBody {
    body: Incoming,
    ret: Option<(SendRequest<Incoming>, H1Pool)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((tx, pool)) = self.ret.take() {
            pool.put(tx);
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body the server never polled because it was empty from the
        // start (HEAD, 204, 304) is complete; anything else is not, and its
        // connection must not be reused.
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.body).poll_frame(cx);
        match &res {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.ret = None,
            _ => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

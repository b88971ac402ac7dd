//! The sidecar's own HTTP/1.1 client: a bounded pool of keep-alive
//! connections to one endpoint, and exchanges driven inside the task of
//! the request that owns them.
//!
//! Why not hyper's client: its connection runs as a task of its own, so
//! each request crossed two channels and woke a second task (request to
//! the connection task, response head and every body chunk back). Measured
//! on the peerbench setup that hand-off and hyper's client dispatcher were
//! 40 % of the sidecar's user-space instructions per request. Here the
//! request's task writes the request and reads the response itself; the
//! wire format is httparse's parser plus the framing rules in [`codec`].
//! HTTP/2 stays on hyper (multiplexing is not worth re-doing).
//!
//! A connection is in exactly one place: idle in the pool, inside an
//! exchange, or inside the [`ResponseBody`] streaming its response, which
//! returns it at the body's end. The pool's lock is per endpoint and held
//! only to push or pop one entry.
//!
//! Under the cluster's `max_connections` (see `connection_limit`), a
//! request that finds no idle connection and no free slot waits for
//! whichever comes first: a connection of this endpoint coming back, or a
//! slot. A connection coming back while only other endpoints' requests
//! wait is closed, which frees its slot for them.

mod body;
mod codec;
mod conn;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Body;

pub use body::{ResponseBody, Upgraded};
pub use codec::ProtocolError;
use codec::RequestFraming;
use conn::Connection;

use super::connection_limit::{ConnectionLimit, ConnectionSlot, IdleConnections};
use super::{ConnectError, Connector, PoolSettings};
use crate::request_body::RequestBody;

/// Why an HTTP/1 exchange failed.
#[derive(Debug)]
pub enum H1Error {
    /// No connection could be made; the request was not sent.
    Connect(ConnectError),
    /// The connection closed or reset before any byte of a response: the
    /// request may or may not have been processed.
    Closed(std::io::Error),
    /// Writing the request failed.
    Write(std::io::Error),
    /// Reading the response head failed part-way.
    Read(std::io::Error),
    /// Not sent: the cluster's connections are all busy and
    /// `max_pending_requests` requests already wait for one.
    Pending(ConnectError),
    /// The upstream's response is not valid HTTP/1.1.
    Protocol(ProtocolError),
    /// The downstream's request body failed (the client went away).
    RequestBody(Box<dyn std::error::Error + Send + Sync>),
}

impl std::fmt::Display for H1Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) | Self::Pending(e) => write!(f, "{e}"),
            Self::Closed(e) => write!(f, "connection closed before a response: {e}"),
            Self::Write(e) => write!(f, "writing the request: {e}"),
            Self::Read(e) => write!(f, "reading the response: {e}"),
            Self::Protocol(e) => write!(f, "{e}"),
            Self::RequestBody(e) => write!(f, "request body: {e}"),
        }
    }
}

impl std::error::Error for H1Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(e) | Self::Pending(e) => Some(e),
            Self::Closed(e) | Self::Write(e) | Self::Read(e) => Some(e),
            Self::Protocol(e) => Some(e),
            Self::RequestBody(e) => Some(e.as_ref()),
        }
    }
}

struct Idle {
    conn: Connection,
    since: Instant,
}

struct Inner {
    idle: Mutex<Vec<Idle>>,
    connector: Connector,
    settings: PoolSettings,
    reaper_started: AtomicBool,
    /// Requests of this endpoint waiting for a connection (cluster cap
    /// reached), and the signal a returned connection gives them.
    waiting: AtomicUsize,
    returned: tokio::sync::Notify,
}

/// What a request waiting under the connection cap got first.
enum Room {
    Returned(Connection),
    Slot(ConnectionSlot),
}

#[derive(Clone)]
pub struct H1Pool {
    inner: Arc<Inner>,
}

impl H1Pool {
    pub fn new(connector: Connector, settings: PoolSettings) -> Self {
        let inner = Arc::new(Inner {
            idle: Mutex::new(Vec::new()),
            connector,
            settings,
            reaper_started: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            returned: tokio::sync::Notify::new(),
        });
        if let Some(limit) = inner.connector.limit() {
            let weak: Weak<dyn IdleConnections> = Arc::downgrade(&inner) as _;
            limit.register(weak);
        }
        Self { inner }
    }

    /// Idle connections currently pooled.
    pub fn idle_count(&self) -> usize {
        self.inner.lock().len()
    }

    /// Sends `req` (origin-form URI, Host set) on a pooled or new
    /// connection and returns the response head; the body streams from the
    /// connection as it is polled.
    ///
    /// A pooled connection the upstream closed just before reuse fails
    /// with no response byte. The request is then sent again on another
    /// connection, but only if it is idempotent and has no body (RFC 9110
    /// §9.2.2): it may have been processed, and a streamed body cannot be
    /// replayed.
    pub async fn send(&self, req: Request<RequestBody>) -> Result<Response<ResponseBody>, H1Error> {
        let (parts, mut body) = req.into_parts();
        let mut headers = parts.headers;
        let framing = codec::request_framing(&mut headers, body.size_hint().exact());
        let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let replayable = framing == RequestFraming::Empty && parts.method.is_idempotent();

        let (mut conn, mut reused) = self.checkout_or_connect().await?;
        conn.write_buf.clear();
        codec::encode_request_head(&parts.method, path, &headers, framing, &mut conn.write_buf);
        loop {
            match conn.exchange(&parts.method, &mut body, framing).await {
                Ok(head) => {
                    let mut resp =
                        Response::new(ResponseBody::new(conn, head.framing, head.keep_alive, self));
                    *resp.status_mut() = head.status;
                    *resp.version_mut() = head.version;
                    *resp.headers_mut() = head.headers;
                    return Ok(resp);
                }
                Err(H1Error::Closed(_)) if reused && replayable => {
                    tracing::debug!("pooled connection was closed by the upstream; resending");
                    let request = std::mem::take(&mut conn.write_buf);
                    (conn, reused) = self.checkout_or_connect().await?;
                    conn.write_buf = request;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn checkout_or_connect(&self) -> Result<(Connection, bool), H1Error> {
        if let Some(conn) = self.inner.checkout() {
            return Ok((conn, true));
        }
        let slot = match self.inner.connector.limit() {
            Some(limit) => match limit.try_open() {
                Some(slot) => Some(slot),
                None => match Box::pin(self.wait_for_room(limit)).await? {
                    Room::Returned(conn) => return Ok((conn, true)),
                    Room::Slot(slot) => Some(slot),
                },
            },
            None => None,
        };
        // Boxed: dialing (DNS resolution included) is a large future, and
        // it would otherwise be part of every request's future, moved and
        // copied with it, though pooled connections never need it.
        let io = Box::pin(self.inner.connector.dial(slot))
            .await
            .map_err(H1Error::Connect)?;
        Ok((Connection::new(io), false))
    }

    /// Under the cluster's connection cap: the first of a connection of
    /// this endpoint coming back and a free slot.
    async fn wait_for_room(&self, limit: &Arc<ConnectionLimit>) -> Result<Room, H1Error> {
        let _waiting = WaitingHere::new(&self.inner.waiting);
        let slot = limit.acquire();
        tokio::pin!(slot);
        loop {
            let returned = self.inner.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(conn) = self.inner.checkout() {
                return Ok(Room::Returned(conn));
            }
            tokio::select! {
                slot = &mut slot => {
                    return slot.map(Room::Slot).map_err(|overflow| {
                        H1Error::Pending(self.inner.connector.overflow_error(overflow))
                    });
                }
                () = &mut returned => {}
            }
        }
    }

    fn put(&self, conn: Connection) {
        let waiting_here = self.inner.waiting.load(Ordering::SeqCst) > 0;
        if !waiting_here
            && self
                .inner
                .connector
                .limit()
                .is_some_and(|limit| limit.has_waiters())
        {
            // Requests of other endpoints wait for a slot: closing this
            // connection gives them one.
            return;
        }
        let mut idle = self.inner.lock();
        if idle.len() >= self.inner.settings.max_idle_per_endpoint {
            return; // over the bound: the connection closes when dropped
        }
        idle.push(Idle {
            conn,
            since: Instant::now(),
        });
        drop(idle);
        if waiting_here {
            self.inner.returned.notify_one();
        }
        if !self.inner.reaper_started.swap(true, Ordering::Relaxed) {
            tokio::spawn(reap(Arc::downgrade(&self.inner)));
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // Entries are plain connections; a panic elsewhere cannot leave
        // them half-updated, so a poisoned lock is still usable.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used live connection (warmest), if any.
    fn checkout(&self) -> Option<Connection> {
        let mut idle = self.lock();
        while let Some(mut entry) = idle.pop() {
            if entry.since.elapsed() < self.settings.idle_timeout && entry.conn.is_reusable() {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Closes connections idle too long or closed by the upstream.
    fn prune(&self) {
        let timeout = self.settings.idle_timeout;
        self.lock()
            .retain_mut(|e| e.since.elapsed() < timeout && e.conn.is_reusable());
    }
}

/// A request of this endpoint waiting for a connection, counted until
/// dropped (also when its wait is cancelled).
struct WaitingHere<'a>(&'a AtomicUsize);

impl<'a> WaitingHere<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for WaitingHere<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl IdleConnections for Inner {
    fn close_one_idle(&self) -> bool {
        let mut idle = self.lock();
        if idle.is_empty() {
            return false;
        }
        // The oldest: the least likely to be reused soon.
        let closed = idle.remove(0);
        drop(idle);
        drop(closed);
        true
    }
}

/// Prunes the pool periodically, until the pool is gone.
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

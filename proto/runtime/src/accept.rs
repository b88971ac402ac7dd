//! Accept loops that survive running out of file descriptors.
//!
//! When a process has no descriptor left, `accept` fails with EMFILE at once
//! and the listener stays readable (the pending connection is still in the
//! queue), so a loop that logs and retries spins a core and writes a line
//! per spin. Here a resource error (EMFILE, ENFILE, ENOBUFS, ENOMEM) pauses
//! accepting, 5 ms doubling to 1 s and back to nothing after the next
//! success: pending clients wait in the kernel's queue instead, and
//! connections that close meanwhile free descriptors. An error that belongs
//! to one connection (it was reset or aborted before it was accepted) is
//! retried at once. Every line goes through a [`LogLimiter`]: at most one per
//! second per cause, with the count of the repeats left out.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::Stream;
use rustix::io::Errno;
use tokio::net::{TcpListener, TcpStream};

use crate::LogLimiter;

/// The first pause after a resource error: long enough that a loop out of
/// descriptors costs nothing, short enough that one freed descriptor is used
/// almost at once.
pub const FIRST_PAUSE: Duration = Duration::from_millis(5);

/// The longest pause: a process that recovers accepts again within a second.
pub const MAX_PAUSE: Duration = Duration::from_secs(1);

/// What an accept error means for the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptErrorKind {
    /// Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM):
    /// retrying at once fails the same way, so pause.
    Resource,
    /// One pending connection failed before it was accepted (ECONNABORTED,
    /// ECONNRESET, and the network errors Linux's accept(2) passes on from
    /// the new socket): the next one is fine, retry at once.
    Connection,
    /// Anything else: pause as for a resource error, since an error that
    /// repeats must not spin either.
    Other,
}

impl AcceptErrorKind {
    pub fn of(error: &io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock => return Self::Connection,
            io::ErrorKind::OutOfMemory => return Self::Resource,
            _ => {}
        }
        match Errno::from_io_error(error) {
            Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM) => Self::Resource,
            // accept(2) on Linux: "already-pending network errors on the new
            // socket" are reported by accept and should be retried.
            Some(
                Errno::PROTO
                | Errno::PERM
                | Errno::NETDOWN
                | Errno::NETUNREACH
                | Errno::HOSTDOWN
                | Errno::HOSTUNREACH
                | Errno::NOPROTOOPT
                | Errno::OPNOTSUPP
                | Errno::TIMEDOUT,
            ) => Self::Connection,
            _ => Self::Other,
        }
    }
}

/// What the log limiter tells apart: each error (kind and errno), and the
/// "accepting again" line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    Error(io::ErrorKind, Option<i32>),
    Recovered,
}

/// The error state of one listener's accept loop: its pause and its log
/// limiter. Owned by the loop (`&mut`), so nothing here is shared.
#[derive(Debug)]
pub struct AcceptErrors {
    /// Names the listener in the log ("admin", "inbound", ...).
    listener: String,
    /// The pause after the next resource error.
    next_pause: Duration,
    /// Failed accepts since the last success, and when the first failed.
    failures: u64,
    failing_since: Option<Instant>,
    log: LogLimiter<Cause>,
}

impl AcceptErrors {
    pub fn new(listener: impl Into<String>) -> Self {
        Self {
            listener: listener.into(),
            next_pause: FIRST_PAUSE,
            failures: 0,
            failing_since: None,
            log: LogLimiter::per_second(),
        }
    }

    /// A connection was accepted: the pause starts over. One branch when
    /// nothing failed before.
    pub fn accepted(&mut self) {
        if self.failures == 0 {
            return;
        }
        let failed_for = self.failing_since.map(|since| since.elapsed());
        // Only after a pause: a client that gave up before its accept is
        // no news worth a line when the next one is accepted.
        let paused = self.next_pause > FIRST_PAUSE;
        if paused && let Some(suppressed) = self.log.admit(Cause::Recovered) {
            tracing::info!(
                listener = %self.listener,
                failed = self.failures,
                failed_for = ?failed_for.unwrap_or_default(),
                suppressed,
                "accepting again"
            );
        }
        self.failures = 0;
        self.failing_since = None;
        self.next_pause = FIRST_PAUSE;
    }

    /// An accept failed: logs it (rate-limited) and returns how long to wait
    /// before the next accept (zero: at once).
    pub fn failed(&mut self, error: &io::Error) -> Duration {
        self.failures += 1;
        self.failing_since.get_or_insert_with(Instant::now);
        let kind = AcceptErrorKind::of(error);
        let pause = match kind {
            AcceptErrorKind::Connection => Duration::ZERO,
            AcceptErrorKind::Resource | AcceptErrorKind::Other => {
                let pause = self.next_pause;
                self.next_pause = (pause * 2).min(MAX_PAUSE);
                pause
            }
        };
        let cause = Cause::Error(error.kind(), error.raw_os_error());
        if let Some(suppressed) = self.log.admit(cause) {
            let listener = &self.listener;
            match kind {
                // A client gave up before we got to it: nothing to act on.
                AcceptErrorKind::Connection => tracing::debug!(
                    %listener, %error, suppressed,
                    "accept failed: the connection closed before it was accepted"
                ),
                AcceptErrorKind::Resource => tracing::warn!(
                    %listener, %error, suppressed, ?pause,
                    "accept failed: out of file descriptors or memory, pausing accepts \
                     (see the open-file limit logged at start)"
                ),
                AcceptErrorKind::Other => tracing::warn!(
                    %listener, %error, suppressed, ?pause,
                    "accept failed, pausing accepts"
                ),
            }
        }
        pause
    }
}

/// Runs `attempt` until it succeeds, pausing after errors as
/// [`AcceptErrors::failed`] says. [`accept`] with any accept function.
pub async fn accept_with<T, F, Fut>(errors: &mut AcceptErrors, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    loop {
        match attempt().await {
            Ok(accepted) => {
                errors.accepted();
                return accepted;
            }
            Err(error) => {
                let pause = errors.failed(&error);
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// The next connection on `listener`; errors are logged and paused on, never
/// returned. Cancel-safe (dropping it mid-pause loses only the pause).
pub async fn accept(listener: &TcpListener, errors: &mut AcceptErrors) -> (TcpStream, SocketAddr) {
    accept_with(errors, || listener.accept()).await
}

/// The connections of `listener` as a stream that never yields an error (it
/// pauses on them as [`accept`] does), with TCP_NODELAY: for tonic's
/// `serve_with_incoming`, whose own loop skips an accept error and polls
/// again at once, spinning while descriptors are out.
pub fn incoming(
    listener: TcpListener,
    name: impl Into<String>,
) -> impl Stream<Item = io::Result<TcpStream>> + Send + 'static {
    let errors = AcceptErrors::new(name);
    futures_util::stream::unfold((listener, errors), |(listener, mut errors)| async move {
        let (stream, _) = accept(&listener, &mut errors).await;
        // Small gRPC frames must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        Some((Ok(stream), (listener, errors)))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use futures_util::StreamExt as _;
    use tokio::time::Instant;

    use super::*;

    fn errno(errno: Errno) -> io::Error {
        io::Error::from_raw_os_error(errno.raw_os_error())
    }

    /// Runs a scripted accept loop under the paused clock and returns, for
    /// each attempt, the time since the previous one.
    async fn gaps(script: Vec<io::Result<u32>>, errors: &mut AcceptErrors) -> (u32, Vec<Duration>) {
        let mut script: VecDeque<_> = script.into();
        let mut gaps = Vec::new();
        let mut last = Instant::now();
        let value = accept_with(errors, || {
            let now = Instant::now();
            gaps.push(now - last);
            last = now;
            let next = script.pop_front().expect("the script ends in Ok");
            async move { next }
        })
        .await;
        (value, gaps)
    }

    #[tokio::test(start_paused = true)]
    async fn resource_errors_pause_longer_each_time_up_to_a_second() {
        let mut errors = AcceptErrors::new("test");
        let mut script: Vec<io::Result<u32>> = (0..12).map(|_| Err(errno(Errno::MFILE))).collect();
        script.push(Ok(7));
        let (value, gaps) = gaps(script, &mut errors).await;
        assert_eq!(value, 7);
        let ms: Vec<u128> = gaps.iter().map(Duration::as_millis).collect();
        assert_eq!(
            ms,
            [0, 5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000, 1000]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_starts_the_pause_over() {
        let mut errors = AcceptErrors::new("test");
        let script = vec![
            Err(errno(Errno::NFILE)),
            Err(errno(Errno::NOBUFS)),
            Err(errno(Errno::NOMEM)),
            Ok(1),
        ];
        let (_, gaps1) = gaps(script, &mut errors).await;
        assert_eq!(gaps1.last(), Some(&Duration::from_millis(20)));
        let (_, gaps2) = gaps(vec![Err(errno(Errno::MFILE)), Ok(2)], &mut errors).await;
        assert_eq!(gaps2, [Duration::ZERO, FIRST_PAUSE]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_connection_is_retried_at_once() {
        let mut errors = AcceptErrors::new("test");
        let script = vec![
            Err(errno(Errno::CONNABORTED)),
            Err(io::Error::from(io::ErrorKind::ConnectionReset)),
            Err(errno(Errno::PROTO)),
            Ok(3),
        ];
        let (value, gaps) = gaps(script, &mut errors).await;
        assert_eq!(value, 3);
        assert!(gaps.iter().all(Duration::is_zero), "{gaps:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_error_pauses_too() {
        let mut errors = AcceptErrors::new("test");
        let script = vec![Err(errno(Errno::INVAL)), Err(errno(Errno::INVAL)), Ok(4)];
        let (_, gaps) = gaps(script, &mut errors).await;
        assert_eq!(gaps, [Duration::ZERO, FIRST_PAUSE, FIRST_PAUSE * 2]);
    }

    #[test]
    fn errors_are_told_apart() {
        use AcceptErrorKind::*;
        for (error, kind) in [
            (errno(Errno::MFILE), Resource),
            (errno(Errno::NFILE), Resource),
            (errno(Errno::NOBUFS), Resource),
            (errno(Errno::NOMEM), Resource),
            (errno(Errno::CONNABORTED), Connection),
            (errno(Errno::CONNRESET), Connection),
            (errno(Errno::HOSTUNREACH), Connection),
            (errno(Errno::BADF), Other),
            (io::Error::other("no errno"), Other),
        ] {
            assert_eq!(AcceptErrorKind::of(&error), kind, "{error}");
        }
    }

    #[tokio::test]
    async fn incoming_yields_the_listeners_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Box::pin(incoming(listener, "test"));
        let client = TcpStream::connect(addr).await.unwrap();
        let server = incoming.next().await.unwrap().unwrap();
        assert_eq!(server.peer_addr().unwrap(), client.local_addr().unwrap());
        assert!(server.nodelay().unwrap());
    }
}

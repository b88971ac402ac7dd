//! Whether the local app accepts connections, as `/ready` reports it.
//!
//! The inbound path tells [`AppHealth`] when a connect to the app fails
//! (one atomic load when it already knows). From then on `/ready` answers
//! 503 naming the app's address, and one task tries a connect to the app
//! every [`PROBE_INTERVAL`], each bounded by [`PROBE_TIMEOUT`], until one
//! succeeds; then `/ready` is 200 again and the task ends. While the app
//! is healthy nothing runs. So a Kubernetes readiness probe or a Consul
//! HTTP check pointed at `/ready` takes an instance whose app died out of
//! every caller's endpoints, while its sidecar (and registration) live on.
//!
//! Only an app that was reached once counts: a sidecar starts before its
//! app (a Kubernetes native sidecar's startup probe on `/ready` holds the
//! app back until it passes), so a refused connect before the app's first
//! answer must not make `/ready` wait for an app that waits for it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;

/// How often an unreachable app is tried: about as often as a readiness
/// probe looks (Kubernetes' default period is 10 s, Consul checks are
/// commonly 1-10 s), so `/ready` is never more than a second behind.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A connect to a local app that takes longer is as good as refused.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct AppHealth {
    addr: SocketAddr,
    unreachable: AtomicBool,
    /// The app answered once (a request, or a probe): from then on a
    /// refused connect means it went away.
    reached: AtomicBool,
    /// Why the last connect failed; written on failures only.
    last_error: Mutex<String>,
}

impl AppHealth {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            unreachable: AtomicBool::new(false),
            reached: AtomicBool::new(false),
            last_error: Mutex::new(String::new()),
        }
    }

    /// The app answered a request: one load once it has.
    pub fn answered(&self) {
        if !self.reached.load(Ordering::Relaxed) {
            self.reached.store(true, Ordering::Relaxed);
        }
    }

    /// A request's connect to the app failed: marks the app unreachable
    /// and starts probing it, unless that is already under way.
    pub fn connect_failed(self: &Arc<Self>, error: &(dyn std::error::Error + 'static)) {
        if self.unreachable.load(Ordering::Acquire) || !self.reached.load(Ordering::Relaxed) {
            return;
        }
        if self
            .unreachable
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        // The innermost cause says it best ("Connection refused (os error
        // 111)"); the layers above it repeat the address.
        let mut cause = error;
        while let Some(source) = cause.source() {
            cause = source;
        }
        self.note_error(cause.to_string());
        tracing::warn!(
            app = %self.addr,
            error = %cause,
            "the app refuses connections: /ready answers 503 until it accepts one again"
        );
        tokio::spawn(probe_until_reachable(self.clone()));
    }

    /// `Some(reason)` while the app is unreachable.
    pub fn unreachable(&self) -> Option<String> {
        if !self.unreachable.load(Ordering::Acquire) {
            return None;
        }
        let error = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        Some(format!(
            "the app at {} refuses connections ({error})",
            self.addr
        ))
    }

    fn note_error(&self, error: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }
}

async fn probe_until_reachable(health: Arc<AppHealth>) {
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(health.addr)).await {
            Ok(Ok(_)) => break,
            Ok(Err(e)) => health.note_error(e.to_string()),
            Err(_) => health.note_error(format!("no connect within {PROBE_TIMEOUT:?}")),
        }
    }
    health.unreachable.store(false, Ordering::Release);
    tracing::info!(app = %health.addr, "the app accepts connections again: ready");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_app_that_answered_once_then_refuses_is_reported_until_it_listens_again() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let health = Arc::new(AppHealth::new(addr));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        health.connect_failed(&refused);
        assert_eq!(health.unreachable(), None, "not started yet: still ready");
        health.answered();
        health.connect_failed(&refused);
        let reason = health.unreachable().expect("unreachable after a failure");
        assert!(reason.contains(&addr.to_string()), "{reason}");
        assert!(reason.contains("refused"), "{reason}");
        let _app = tokio::net::TcpListener::bind(addr).await.unwrap();
        let start = tokio::time::Instant::now();
        while health.unreachable().is_some() {
            assert!(
                start.elapsed() < 3 * PROBE_INTERVAL,
                "never reachable again"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

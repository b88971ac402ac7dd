//! Shutdown, as every listener and background task sees it: the signal
//! ([`shutdown_signal`]), accepting until it comes ([`accept`]), and
//! waiting for connections to end: each connection task (and each bridge
//! of an upgraded one) holds a [`DrainToken`], and [`Drain::wait`] returns
//! when the last is dropped. A bottom module: the HTTP server, opaque TCP,
//! the admin listener, the xDS client and the request model use it, and
//! none of them should import another for it.

use std::convert::Infallible;
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use weft_runtime::AcceptErrors;

/// Resolves once `rx` reads true (or its sender is gone).
pub async fn shutdown_signal(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it right here.
    let _ = rx.wait_for(|s| *s).await.is_ok();
}

/// The next connection (with TCP_NODELAY), or `None` once `shutdown` turns
/// true. Accept errors never end the loop: `errors` (one per listener, kept
/// across calls) pauses on running out of descriptors and rate-limits the
/// log lines (see `weft_runtime::accept`).
pub async fn accept(
    listener: &TcpListener,
    errors: &mut AcceptErrors,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    tokio::select! {
        (stream, addr) = weft_runtime::accept(listener, errors) => {
            let _ = stream.set_nodelay(true);
            Some((stream, addr))
        }
        _ = shutdown_signal(shutdown) => None,
    }
}

/// Counts live connections; [`Drain::wait`] returns when all are gone.
pub struct Drain {
    tx: mpsc::Sender<Infallible>,
    rx: mpsc::Receiver<Infallible>,
}

/// Held by each connection task (dropped when it ends).
#[derive(Clone)]
pub struct DrainToken(#[allow(dead_code)] mpsc::Sender<Infallible>);

impl Default for Drain {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(1);
        Self { tx, rx }
    }
}

/// Makes tokens while the drain has not begun, without holding it off
/// itself: for listeners started later (a gateway's, as its config says).
#[derive(Clone)]
pub struct LateTokens(mpsc::WeakSender<Infallible>);

impl LateTokens {
    /// `None` once the drain is waiting for the last connections: too late
    /// to start a listener.
    pub fn token(&self) -> Option<DrainToken> {
        self.0.upgrade().map(DrainToken)
    }
}

impl Drain {
    pub fn token(&self) -> DrainToken {
        DrainToken(self.tx.clone())
    }

    pub fn late_tokens(&self) -> LateTokens {
        LateTokens(self.tx.downgrade())
    }

    /// Waits until every token is dropped.
    pub async fn wait(self) {
        let Self { tx, mut rx } = self;
        drop(tx);
        // `recv` returns None once all senders are gone (nothing is ever sent).
        let _ = rx.recv().await;
    }
}

//! Waiting for connections to end at shutdown: each connection task (and
//! each bridge of an upgraded one) holds a [`DrainToken`], and
//! [`Drain::wait`] returns when the last is dropped. A bottom module: the
//! server, opaque TCP, the admin listener and the request model hold
//! tokens, and none of them should import another for it.

use std::convert::Infallible;

use tokio::sync::mpsc;

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

impl Drain {
    pub fn token(&self) -> DrainToken {
        DrainToken(self.tx.clone())
    }

    /// Waits until every token is dropped.
    pub async fn wait(self) {
        let Self { tx, mut rx } = self;
        drop(tx);
        // `recv` returns None once all senders are gone (nothing is ever sent).
        let _ = rx.recv().await;
    }
}

//! The builder loop: waits for store changes, lets a burst of them settle
//! (debounce), rebuilds, and publishes the new snapshot to every stream.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{Snapshot, SnapshotBuilder};
use crate::metrics::Metrics;
use crate::store::MeshStore;

#[derive(Clone, Copy, Debug)]
pub struct DebounceConfig {
    /// Quiet time after the last change before building: one Consul change
    /// often arrives as several watch results within a few ms.
    pub quiet: Duration,
    /// Longest a change may wait for quiet: a flapping source must not
    /// starve every sidecar of updates.
    pub max_delay: Duration,
}

impl Default for DebounceConfig {
    fn default() -> Self {
        Self {
            quiet: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
        }
    }
}

/// Runs forever. Publishes nothing until the store's first full sync, so a
/// restarted agent never serves a partial catalog (which would read as
/// "endpoints gone" to every sidecar).
pub async fn run_builder(
    store: Arc<MeshStore>,
    debounce: DebounceConfig,
    publish: watch::Sender<Option<Arc<Snapshot>>>,
    metrics: Arc<Metrics>,
) {
    run_builder_with(SnapshotBuilder::new(), store, debounce, publish, metrics).await;
}

/// [`run_builder`] with a builder set up by the caller (e.g.
/// [`SnapshotBuilder::with_trust_domain`]).
pub async fn run_builder_with(
    mut builder: SnapshotBuilder,
    store: Arc<MeshStore>,
    debounce: DebounceConfig,
    publish: watch::Sender<Option<Arc<Snapshot>>>,
    metrics: Arc<Metrics>,
) {
    let mut changes = store.subscribe();
    let mut synced = store.subscribe_synced();
    if synced.wait_for(|synced| *synced).await.is_err() {
        return;
    }
    loop {
        changes.borrow_and_update();
        let started = Instant::now();
        let changed_at = store.take_change_time();
        let (mut snapshot, newly_rejected) = builder.build(&store.state());
        snapshot.changed_at = changed_at;
        metrics
            .snapshot_build_seconds
            .observe(started.elapsed().as_secs_f64());
        for rejected in &newly_rejected {
            for error in &rejected.errors {
                tracing::warn!(
                    key = %error.key,
                    field = %error.field,
                    reason = %error.reason,
                    origin = %rejected.origin,
                    serving = rejected.serving,
                    "document rejected"
                );
            }
            metrics.documents_rejected.inc();
        }
        metrics.snapshot_builds.inc();
        // Before the streams can see it, so each stream connected now is
        // waited for.
        metrics
            .convergence
            .published(snapshot.generation(), snapshot.changed_at);
        publish.send_replace(Some(Arc::new(snapshot)));

        if changes.changed().await.is_err() {
            return;
        }
        let deadline = Instant::now() + debounce.max_delay;
        loop {
            let quiet_until = (Instant::now() + debounce.quiet).min(deadline);
            match tokio::time::timeout_at(quiet_until, changes.changed()).await {
                Ok(Ok(())) if Instant::now() < deadline => continue,
                Ok(Err(_)) => return,
                _ => break,
            }
        }
    }
}

//! The aggregated discovery service: one task per sidecar stream, each
//! serving the subset of the current snapshot its sidecar subscribed to.

mod status;
mod stream;
mod wire;

pub use status::{SidecarRegistry, SidecarStatus, TypeStatus, unix_now};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, watch};
use tonic::Streaming;
use weft_proto::discovery::v1::{DiscoveryRequest, DiscoveryResponse};

use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

pub use wire::AdsService;

/// Responses waiting to be written to one sidecar. Small: a sidecar that
/// does not read makes its own stream task wait, never the agent's memory
/// grow. Each holds references to the snapshot's resources, not copies.
const OUTBOX_CAPACITY: usize = 4;

#[derive(Clone)]
pub struct AdsServer {
    snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    registry: Arc<SidecarRegistry>,
    metrics: Arc<Metrics>,
    next_stream_id: Arc<AtomicU64>,
}

impl AdsServer {
    pub fn new(
        snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
        registry: Arc<SidecarRegistry>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            snapshots,
            registry,
            metrics,
            next_stream_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// The service to add to the gRPC server.
    pub fn into_service(self) -> AdsService {
        AdsService::new(self)
    }

    /// Starts the task of one sidecar's stream; returns its responses.
    fn open_stream(
        &self,
        peer: String,
        requests: Streaming<DiscoveryRequest>,
    ) -> mpsc::Receiver<DiscoveryResponse> {
        let (outbox, responses) = mpsc::channel(OUTBOX_CAPACITY);
        let stream_id = self.next_stream_id.fetch_add(1, Ordering::Relaxed);
        let task = stream::SidecarStream::new(
            stream_id,
            peer,
            self.snapshots.clone(),
            self.registry.clone(),
            self.metrics.clone(),
        );
        tokio::spawn(task.run(requests, outbox));
        responses
    }
}

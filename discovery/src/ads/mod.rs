//! The aggregated discovery service: one task per sidecar stream, each
//! serving the subset of the current snapshot its sidecar subscribed to.

mod status;
mod stream;

pub use status::{SidecarRegistry, SidecarStatus, TypeStatus, unix_now};

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use weft_proto::discovery::v1::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use weft_proto::discovery::v1::{DiscoveryRequest, DiscoveryResponse};

use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

/// Responses waiting to be written to one sidecar. Small: a sidecar that
/// does not read makes its own stream task wait, never the agent's memory grow.
const OUTBOX_CAPACITY: usize = 8;

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

    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamResourcesStream = ResponseStream;

    async fn stream_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamResourcesStream>, Status> {
        let peer = request
            .remote_addr()
            .map(|addr| addr.to_string())
            .unwrap_or_else(|| "unknown".to_string());
        let requests = request.into_inner();
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
        let mut response: Response<Self::StreamResourcesStream> =
            Response::new(Box::pin(ReceiverStream::new(responses)));
        // Sidecars that list these features get them (proto/README.md).
        response.metadata_mut().insert(
            weft_proto::client_features::AGENT_FEATURES_HEADER,
            tonic::metadata::MetadataValue::from_static(weft_proto::client_features::INCREMENTAL),
        );
        Ok(response)
    }
}

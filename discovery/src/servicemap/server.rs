//! `weft.telemetry.v1.CallReports`: takes each sidecar's call report into
//! the [`CallMap`]. Unary: every report stands alone (its counters are
//! cumulative), so there is no stream state to lose when either side
//! restarts, and each call has its own deadline.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tonic::{Request, Response, Status};
use weft_proto::telemetry::v1::call_reports_server::{CallReports, CallReportsServer};
use weft_proto::telemetry::v1::{CallReport, CallReportAck};

use super::calls::{CallMap, ReportError};
use crate::metrics::Metrics;

/// Largest report accepted: 256 destinations with their buckets are
/// about 60 KiB.
const MAX_REPORT_BYTES: usize = 256 * 1024;

#[derive(Clone)]
pub struct CallReportsService {
    calls: Arc<CallMap>,
    metrics: Arc<Metrics>,
}

impl CallReportsService {
    pub fn new(calls: Arc<CallMap>, metrics: Arc<Metrics>) -> Self {
        Self { calls, metrics }
    }

    pub fn into_service(self) -> CallReportsServer<Self> {
        CallReportsServer::new(self).max_decoding_message_size(MAX_REPORT_BYTES)
    }
}

#[tonic::async_trait]
impl CallReports for CallReportsService {
    async fn report(
        &self,
        request: Request<CallReport>,
    ) -> Result<Response<CallReportAck>, Status> {
        let report = request.into_inner();
        let now_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or_default();
        match self.calls.record(&report, Instant::now(), now_unix_ms) {
            Ok(()) => {
                self.metrics.call_reports.inc();
                Ok(Response::new(CallReportAck {}))
            }
            Err(error @ ReportError::Invalid(_)) => {
                tracing::debug!(node = %report.node_id, %error, "call report refused");
                Err(Status::invalid_argument(error.to_string()))
            }
            Err(error @ ReportError::Full) => {
                tracing::debug!(node = %report.node_id, %error, "call report dropped");
                Err(Status::resource_exhausted(error.to_string()))
            }
        }
    }
}

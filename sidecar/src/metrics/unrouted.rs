//! Outbound requests the sidecar refused before a destination was known:
//! no Host, no route for the host or the path (404 `no-route`), a route
//! to a cluster the table does not have yet. They never reach the metrics
//! layer (it sits below `split`, where the destination's stats are), so
//! `route` and `split` report them here as they refuse: counted under the
//! destination `""` with their cause, and logged (a refusal is a failure,
//! always logged). Nothing here runs for a routed request.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use super::requests::{RequestStats, cause_of, method_index};
use crate::access_log::{self, Outcome, Record};
use crate::error::ProxyError;
use crate::metrics::sizes::Side;
use crate::table::request::ProxyRequest;

/// The stats of requests without a destination.
pub static UNROUTED: LazyLock<RequestStats> = LazyLock::new(RequestStats::default);

/// `req` is answered with `error` before it has a destination.
pub fn refused(req: &ProxyRequest, error: &ProxyError) {
    let status = error.kind.status();
    let code = error.kind.code();
    UNROUTED.count(method_index(req.http.method()), status);
    UNROUTED.record_refusal(cause_of(error.kind), status);
    if let Some(log) = access_log::installed() {
        let record = Arc::new(Record::new(log, req, None, None));
        record.add_bytes(Side::Response, error.reason.len() as u64 + 1);
        record.answered(Outcome {
            status: status.as_u16(),
            cause: Some(code),
            attempts: None,
            response_head: Duration::ZERO,
        });
        // Dropped here: the line goes to the writer.
    }
}

//! Reports this sidecar's outbound calls to the agent for its service map
//! (`weft.telemetry.v1.CallReports`): every `--call-report-interval`, per
//! destination, the requests, errors and latency buckets counted since
//! start, read from the clusters' request stats (the same atomics as
//! `/metrics`; nothing is added to the request path).
//!
//! Reporting never affects requests: it runs in its own task, each call has
//! a deadline, a failed call is logged and the next interval tries again
//! on a fresh connection (so a restarted agent is found again).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use weft_proto::telemetry::v1::call_reports_client::CallReportsClient;
use weft_proto::telemetry::v1::{CallReport, DestinationCalls};

use crate::metrics::histogram::BOUNDS_SECONDS;
use crate::metrics::requests::RequestStats;
use crate::table::RoutingTable;
use crate::upstream::Dns;
use crate::xds::client::{ClientSettings, connect};

/// Destinations per report, the busiest first (the agent's own limit).
pub const MAX_DESTINATIONS: usize = 256;
/// Deadline of one report call: far above a loopback or in-DC round trip,
/// well under the interval.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Who reports, and where to.
pub struct CallReporter {
    pub agent: ClientSettings,
    pub dns: Dns,
    pub table: Arc<ArcSwap<RoutingTable>>,
    /// The ADS node id: the agent's name for this sidecar process.
    pub node_id: String,
    pub service: String,
    pub instance: String,
    pub interval: Duration,
}

impl CallReporter {
    /// Reports every interval until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let started_at_unix_ms = unix_ms();
        let mut client = None;
        let mut failing = false;
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.interval) => {}
                _ = crate::shutdown::shutdown_signal(&mut shutdown) => return,
            }
            let report = self.report(started_at_unix_ms);
            if report.destinations.is_empty() {
                continue;
            }
            let sent = tokio::time::timeout(CALL_TIMEOUT, self.send(&mut client, report)).await;
            let error = match sent {
                Ok(Ok(())) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!(agent = %self.agent.discovery, "call reports reach the agent again");
                    }
                    continue;
                }
                Ok(Err(error)) => error,
                Err(_) => format!("no answer within {CALL_TIMEOUT:?}"),
            };
            // Next time on a new connection: the agent may have restarted.
            client = None;
            if !std::mem::replace(&mut failing, true) {
                tracing::warn!(agent = %self.agent.discovery, %error, "cannot report calls to the agent (the service map misses this sidecar until it can); requests are not affected");
            } else {
                tracing::debug!(%error, "call report failed again");
            }
        }
    }

    async fn send(
        &self,
        client: &mut Option<CallReportsClient<tonic::transport::Channel>>,
        report: CallReport,
    ) -> Result<(), String> {
        let client = match client {
            Some(client) => client,
            None => client.insert(CallReportsClient::new(
                connect(&self.agent, &self.dns).await?,
            )),
        };
        let mut request = tonic::Request::new(report);
        request.set_timeout(CALL_TIMEOUT);
        client
            .report(request)
            .await
            .map(|_| ())
            .map_err(|status| format!("{}: {}", status.code(), status.message()))
    }

    /// The calls of every outbound destination with any.
    fn report(&self, started_at_unix_ms: u64) -> CallReport {
        let table = self.table.load();
        let mut destinations: Vec<DestinationCalls> = table
            .clusters
            .iter()
            .filter_map(|(name, cluster)| destination_calls(name, &cluster.shared.requests))
            .collect();
        if destinations.len() > MAX_DESTINATIONS {
            destinations.sort_by_key(|calls| std::cmp::Reverse(calls.requests));
            destinations.truncate(MAX_DESTINATIONS);
        }
        CallReport {
            node_id: self.node_id.clone(),
            service: self.service.clone(),
            instance: self.instance.clone(),
            started_at_unix_ms,
            latency_bounds_seconds: BOUNDS_SECONDS.to_vec(),
            destinations,
        }
    }
}

/// One destination's counters; None before its first request.
fn destination_calls(destination: &str, stats: &RequestStats) -> Option<DestinationCalls> {
    let mut requests = 0;
    let mut errors = 0;
    for (_, class, count) in stats.counts() {
        requests += count;
        if class == "5xx" {
            errors += count;
        }
    }
    if requests == 0 {
        return None;
    }
    // Refusals answered below 500 are failures the caller saw all the same.
    errors += stats.refusals_below_500();
    let latency = stats.duration.snapshot();
    Some(DestinationCalls {
        destination: destination.to_owned(),
        requests,
        errors: errors.min(requests),
        latency_buckets: latency.buckets.iter().map(|(_, count)| *count).collect(),
    })
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;
    use crate::error::{AuthnErrorKind, ErrorKind};
    use crate::metrics::requests::{cause_of, method_index};

    #[test]
    fn a_destination_reports_its_requests_5xx_and_4xx_refusals_as_errors_and_its_buckets() {
        let stats = RequestStats::default();
        assert!(
            destination_calls("users", &stats).is_none(),
            "no calls, no entry"
        );
        let get = method_index(&http::Method::GET);
        for _ in 0..7 {
            stats.record(get, StatusCode::OK, Duration::from_millis(2));
        }
        stats.record(
            get,
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_millis(2),
        );
        stats.record(
            get,
            StatusCode::TOO_MANY_REQUESTS,
            Duration::from_micros(10),
        );
        stats.record_refusal(
            cause_of(ErrorKind::RateLimited),
            StatusCode::TOO_MANY_REQUESTS,
        );
        stats.record(get, StatusCode::NOT_FOUND, Duration::from_micros(10));
        let Some(calls) = destination_calls("users", &stats) else {
            panic!("calls were made");
        };
        assert_eq!(
            (calls.requests, calls.errors),
            (10, 2),
            "the 503 and the 429 refusal; not the app's 404"
        );
        assert_eq!(calls.latency_buckets.len(), BOUNDS_SECONDS.len() + 1);
        assert_eq!(calls.latency_buckets.iter().sum::<u64>(), 10);
    }

    #[test]
    fn refusals_count_as_errors_by_the_status_they_were_answered_with() {
        let stats = RequestStats::default();
        let get = method_index(&http::Method::GET);
        let refusals = [
            ErrorKind::RateLimited,
            ErrorKind::Jwt(AuthnErrorKind::Expired),
            // Fails closed with 429: below 500, yet the caller failed.
            ErrorKind::RateLimitUnavailable {
                status: StatusCode::TOO_MANY_REQUESTS,
            },
            ErrorKind::CircuitOpen,
            ErrorKind::Timeout,
        ];
        for kind in refusals {
            stats.record(get, kind.status(), Duration::from_micros(10));
            stats.record_refusal(cause_of(kind), kind.status());
        }
        let calls = destination_calls("users", &stats).unwrap();
        assert_eq!(
            (calls.requests, calls.errors),
            (5, 5),
            "three 4xx refusals and two 5xx"
        );
    }
}

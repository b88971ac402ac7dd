//! The `metrics` tower layer: counts each request and its time to the
//! response head, by method and status class, in the stats of its
//! destination (outbound: the cluster `split` chose; inbound: the local
//! app). An error answer counts with the status it becomes, and the
//! sidecar's own refusals also by cause (`x-weft-error`: denied,
//! jwt-expired, rate-limited, circuit-open, ...); a request abandoned
//! before its answer (the caller went away) is not counted.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower::{Layer, Service};

use super::requests::{cause_index, method_index};
use crate::error::{ERROR_HEADER, ProxyError};
use crate::proxy::{ProxyRequest, ProxyResponse};
use crate::table::cluster::ClusterShared;

/// Whose stats a request counts in.
#[derive(Clone)]
enum StatsOf {
    /// The cluster in the request's context (outbound, after `split`).
    Destination,
    /// Always these (inbound: the local app's).
    Fixed(Arc<ClusterShared>),
}

#[derive(Clone)]
pub struct RequestMetricsLayer {
    of: StatsOf,
}

impl RequestMetricsLayer {
    /// Outbound: counts in the destination cluster's stats.
    pub fn outbound() -> Self {
        Self {
            of: StatsOf::Destination,
        }
    }

    /// Inbound: counts in `app`'s stats, whatever the request becomes
    /// (denials included).
    pub fn inbound(app: Arc<ClusterShared>) -> Self {
        Self {
            of: StatsOf::Fixed(app),
        }
    }
}

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics {
            of: self.of.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct RequestMetrics<S> {
    of: StatsOf,
    inner: S,
}

impl<S> Service<ProxyRequest> for RequestMetrics<S>
where
    S: Service<ProxyRequest, Response = ProxyResponse, Error = ProxyError>,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = Counted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ProxyRequest) -> Self::Future {
        let stats = match &self.of {
            StatsOf::Destination => req.ctx.cluster.as_ref().map(|c| c.shared.clone()),
            StatsOf::Fixed(app) => Some(app.clone()),
        };
        let method = method_index(req.http.method());
        Counted {
            inner: self.inner.call(req),
            stats,
            method,
            start: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct Counted<F> {
        #[pin]
        inner: F,
        stats: Option<Arc<ClusterShared>>,
        method: usize,
        start: Instant,
    }
}

impl<F> Future for Counted<F>
where
    F: Future<Output = Result<ProxyResponse, ProxyError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Some(stats) = this.stats.take() {
            let (status, cause) = match &result {
                // The sidecar's own answers (401, 429, ...) say so in
                // `x-weft-error`; only error statuses are looked at.
                Ok(response) => (
                    response.status(),
                    (response.status().as_u16() >= 400)
                        .then(|| response.headers().get(ERROR_HEADER))
                        .flatten()
                        .map(|code| cause_index(code.as_bytes())),
                ),
                Err(error) => (
                    error.kind.status(),
                    Some(cause_index(error.kind.code().as_bytes())),
                ),
            };
            stats
                .requests
                .record(*this.method, status, this.start.elapsed());
            if let Some(cause) = cause {
                stats.requests.record_refusal(cause);
            }
        }
        Poll::Ready(result)
    }
}

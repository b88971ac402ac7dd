//! What the retry layer (`crate::retry`) reads of a request and of its
//! cluster, and how it makes each try of a request.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Request};

use super::{Attempt, Concrete, ProxyRequest, RequestCtx, RouteRef};
use crate::body::{BufferedBody, RequestBody};
use crate::breaker::thresholds::RetryGuard;
use crate::retry::{RetryDestination, RetryPolicy, RetryState, RetryTarget};
use crate::table::{Cluster, Endpoint};

impl RetryTarget for ProxyRequest<Concrete<RouteRef>> {
    type Destination = Cluster;
    type Endpoint = Arc<Endpoint>;

    #[inline]
    fn destination(&self) -> &Arc<Cluster> {
        &self.target.cluster
    }

    #[inline]
    fn route_retry_policy(&self) -> Option<&Arc<RetryPolicy>> {
        self.target.route.route().action.retry.as_ref()
    }

    #[inline]
    fn is_upgrade(&self) -> bool {
        self.ctx.upgrade.is_some()
    }

    #[inline]
    fn next_try(&self, body: BufferedBody, attempt: Arc<Attempt>) -> Self {
        let mut ctx = ctx_for_attempt(&self.ctx);
        ctx.attempt = Some(attempt);
        ProxyRequest {
            http: request_for_attempt(&self.http, body),
            ctx,
            target: self.target.clone(),
        }
    }
}

/// What a try needs of the request's context; the per-try parts (guards)
/// start empty.
fn ctx_for_attempt(ctx: &RequestCtx) -> RequestCtx {
    let mut attempt = RequestCtx::new(ctx.direction, ctx.client_addr, ctx.client_ip.clone());
    attempt.peer_identity = ctx.peer_identity.clone();
    attempt.access_log = ctx.access_log.clone();
    attempt
}

/// A copy of `original`'s head, with `body`.
fn request_for_attempt(
    original: &Request<RequestBody>,
    body: BufferedBody,
) -> Request<RequestBody> {
    let mut request = Request::new(RequestBody::Buffered(body));
    *request.method_mut() = original.method().clone();
    *request.uri_mut() = original.uri().clone();
    *request.version_mut() = original.version();
    *request.headers_mut() = original.headers().clone();
    *request.extensions_mut() = original.extensions().clone();
    request
}

impl RetryDestination for Cluster {
    type RetrySlot = RetryGuard;
    const OVERFLOW_HEADER: HeaderName = crate::breaker::thresholds::OVERFLOW_HEADER;

    #[inline]
    fn name(&self) -> &str {
        &self.name
    }

    #[inline]
    fn retry_policy(&self) -> Option<&Arc<RetryPolicy>> {
        self.settings.retry.as_ref()
    }

    #[inline]
    fn retry_state(&self) -> &RetryState {
        &self.shared.retry
    }

    #[inline]
    fn retry_slot(&self) -> Option<RetryGuard> {
        // The refusal (503 `overflow`) is for the breaker's own callers:
        // the retry layer answers with the failed try instead.
        self.try_retry().ok()
    }

    #[inline]
    fn ejects_unreachable(&self) -> bool {
        self.settings
            .outlier
            .as_ref()
            .is_some_and(|o| o.consecutive_unreachable > 0)
    }

    #[inline]
    fn unreachable_seen_within(&self, window: Duration) -> bool {
        self.shared
            .unreachable_seen
            .within(window, tokio::time::Instant::now)
    }

    #[inline]
    fn serving_endpoints(&self) -> usize {
        self.serving.len()
    }
}

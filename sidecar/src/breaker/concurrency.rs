//! Per-cluster limit on requests in flight (`max_requests`): past it the
//! request fails fast with 503 `overflow` instead of queueing, so a slow
//! upstream cannot pile up unbounded work in the sidecar.

use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use super::thresholds::Overflow;
use crate::error::ProxyError;
use crate::model::{Exchange, ProxyResponse};

/// What the concurrency limit needs of a request. Implemented by the
/// proxy's request (`crate::table::request`).
pub trait ConcurrencyTarget: Exchange {
    /// Takes one of the destination's `max_requests` slots, held by the
    /// request until it ends; when every slot is taken (counted as an
    /// overflow), the destination's name and its `max_requests`.
    fn take_request_slot(&mut self) -> Result<(), RequestsFull<'_>>;
}

/// A destination with `max_requests` requests in flight already.
pub struct RequestsFull<'a> {
    pub destination: &'a str,
    pub max_requests: usize,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ConcurrencyLimitLayer;

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit { inner }
    }
}

#[derive(Clone, Debug)]
pub struct ConcurrencyLimit<S> {
    inner: S,
}

impl<S, R> Service<R> for ConcurrencyLimit<S>
where
    R: ConcurrencyTarget,
    S: Service<R, Response = ProxyResponse, Error = ProxyError>,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = Either<Ready<Result<ProxyResponse, ProxyError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: R) -> Self::Future {
        let refusal = match req.take_request_slot() {
            Err(full) => Overflow::Requests.error(
                full.destination,
                full.max_requests,
                "connection_pool.max_requests",
            ),
            Ok(()) => return Either::Right(self.inner.call(req)),
        };
        Either::Left(ready(Err(refusal)))
    }
}

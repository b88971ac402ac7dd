//! Turns every [`ProxyError`] from the layers below into a response with
//! `x-weft-error`: the one place where errors become responses.

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures_util::future::{FutureExt, Map};
use tower::{Layer, Service};

use super::{ProxyRequest, ProxyResponse};
use crate::error::{ErrorSource, ProxyError};

#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorResponseLayer;

impl<S> Layer<S> for ErrorResponseLayer {
    type Service = ErrorResponse<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ErrorResponse { inner }
    }
}

#[derive(Clone, Debug)]
pub struct ErrorResponse<S> {
    inner: S,
}

type Respond = fn(Result<ProxyResponse, ProxyError>) -> Result<ProxyResponse, Infallible>;

fn respond(result: Result<ProxyResponse, ProxyError>) -> Result<ProxyResponse, Infallible> {
    Ok(result.unwrap_or_else(|e| {
        // Debug, not info: an unreachable upstream under load would flood
        // the log; the response header and body already tell the caller.
        match e.source_side() {
            ErrorSource::Upstream => tracing::debug!(error = %e, "upstream error"),
            _ => tracing::debug!(error = %e, "request failed"),
        }
        e.to_response()
    }))
}

impl<S> Service<ProxyRequest> for ErrorResponse<S>
where
    S: Service<ProxyRequest, Response = ProxyResponse, Error = ProxyError>,
{
    type Response = ProxyResponse;
    type Error = Infallible;
    type Future = Map<S::Future, Respond>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Inner layers are always ready (see proxy/mod.rs).
        match self.inner.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: ProxyRequest) -> Self::Future {
        self.inner.call(req).map(respond as Respond)
    }
}

//! Bounds the wait for response headers by the request's deadline (the
//! route's timeout, else the cluster's); a miss is 504 `timeout`. The body
//! may stream for longer (downloads, gRPC streams).

use std::task::{Context, Poll};

use futures_util::future::Either;
use tower::{Layer, Service};

use super::{BoxFuture, ProxyRequest, ProxyResponse};
use crate::error::{ErrorKind, ProxyError};

#[derive(Clone, Copy, Debug, Default)]
pub struct TimeoutLayer;

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Timeout { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
}

impl<S> Service<ProxyRequest> for Timeout<S>
where
    S: Service<ProxyRequest, Response = ProxyResponse, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = Either<S::Future, BoxFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ProxyRequest) -> Self::Future {
        let Some(limit) = req.ctx.timeout else {
            return Either::Left(self.inner.call(req));
        };
        let cluster = req.ctx.cluster.as_ref().map(|c| c.name.clone());
        let fut = self.inner.call(req);
        Either::Right(Box::pin(async move {
            match tokio::time::timeout(limit, fut).await {
                Ok(result) => result,
                Err(_) => Err(ProxyError::new(
                    ErrorKind::Timeout,
                    format!(
                        "no response from {} within {limit:?}",
                        cluster.as_deref().unwrap_or("upstream")
                    ),
                )),
            }
        }))
    }
}

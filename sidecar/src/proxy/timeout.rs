//! Bounds the wait for response headers by the request's deadline (the
//! route's timeout, else the cluster's); a miss is 504 `timeout`. The body
//! may stream for longer (downloads, gRPC streams).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::Either;
use tower::{Layer, Service};

use crate::error::{ErrorKind, ProxyError};
use crate::model::ProxyResponse;
use crate::table::Cluster;
use crate::table::request::{Concrete, ProxyRequest};

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

pin_project_lite::pin_project! {
    /// The inner future under a deadline, without a boxed wrapper.
    pub struct Deadline<F> {
        #[pin]
        inner: tokio::time::Timeout<F>,
        limit: Duration,
        // Only read on a miss, for the message.
        cluster: Option<Arc<Cluster>>,
    }
}

impl<F> Future for Deadline<F>
where
    F: Future<Output = Result<ProxyResponse, ProxyError>>,
{
    type Output = Result<ProxyResponse, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            Poll::Ready(Err(_)) => Poll::Ready(Err(ProxyError::new(
                ErrorKind::Timeout,
                format!(
                    "no response from {} within {:?}",
                    this.cluster.as_ref().map_or("upstream", |c| &*c.name),
                    this.limit
                ),
            ))),
        }
    }
}

impl<S, R> Service<ProxyRequest<Concrete<R>>> for Timeout<S>
where
    S: Service<ProxyRequest<Concrete<R>>, Response = ProxyResponse, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = Either<S::Future, Deadline<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ProxyRequest<Concrete<R>>) -> Self::Future {
        let Some(limit) = req.target.timeout else {
            return Either::Left(self.inner.call(req));
        };
        let cluster = Some(req.target.cluster.clone());
        let fut = self.inner.call(req);
        Either::Right(Deadline {
            inner: tokio::time::timeout(limit, fut),
            limit,
            cluster,
        })
    }
}

//! What a finished (or abandoned) request counts as, for the breaker and
//! for outlier ejection. A request is finished when its response head
//! arrives, except a gRPC answer without `grpc-status` in its head: that
//! one is finished by its trailers (`crate::body::grpc`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::body::grpc::{Pending, settle_on_trailers};
use crate::error::{ErrorKind, ProxyError};

use super::{FailureOn, grpc};

// The enum is declared with the gRPC answer's body, below the breaker,
// because that body reports it; what an outcome counts as is the
// breaker's, here (and outlier ejection's, `crate::ejection::outcome`).
pub use crate::body::grpc::Outcome;

impl Outcome {
    pub fn of_error(e: &ProxyError) -> Self {
        match e.kind {
            ErrorKind::ConnectFailed => Self::ConnectFailure,
            ErrorKind::UpstreamReset | ErrorKind::UpstreamProtocol => Self::Reset,
            ErrorKind::Timeout => Self::Timeout,
            _ => Self::Neutral,
        }
    }

    /// Whether the breaker counts this as a failure. gRPC statuses count
    /// only when `grpc_statuses` lists them (`5xx` is about HTTP statuses).
    pub fn is_failure(self, on: &FailureOn) -> bool {
        match self {
            Self::Response { status, grpc } => {
                (on.server_error && status >= 500)
                    || (on.gateway_error && matches!(status, 502..=504))
                    || grpc.is_some_and(|g| on.grpc_statuses.contains(&g))
            }
            Self::ConnectFailure => on.connect_failure,
            Self::Reset => on.server_error || on.gateway_error,
            Self::Timeout => on.timeout,
            Self::Neutral => false,
        }
    }

    /// Whether the breaker counts this as a success (neutral outcomes and
    /// failures it was not told to count are neither).
    pub fn is_success(self) -> bool {
        matches!(self, Self::Response { .. })
    }
}

/// Told how a request ended: the breaker and outlier ejection.
pub trait Observer {
    fn finished(self, outcome: Outcome);
    /// Dropped before its response head arrived (a deadline above it, or
    /// the caller left).
    fn abandoned(self);
    /// Whether a gRPC answer's trailers may change this observer's verdict;
    /// if not, the head is its outcome and the body carries nothing.
    fn needs_trailers(&self) -> bool {
        true
    }
}

/// Boxed in a gRPC answer's body until its trailers tell the outcome.
impl<O: Observer + Send + 'static> Pending for O {
    fn settle(self: Box<Self>, outcome: Outcome) {
        (*self).finished(outcome);
    }
}

pin_project_lite::pin_project! {
    /// A request's future that tells its observer how it ended, once.
    pub struct Observed<F, O: Observer> {
        #[pin]
        inner: F,
        observer: Option<O>,
    }

    impl<F, O: Observer> PinnedDrop for Observed<F, O> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(observer) = this.project().observer.take() {
                observer.abandoned();
            }
        }
    }
}

impl<F, O: Observer> Observed<F, O> {
    pub fn new(inner: F, observer: Option<O>) -> Self {
        Self { inner, observer }
    }
}

impl<F, O> Future for Observed<F, O>
where
    F: Future<Output = Result<crate::model::ProxyResponse, ProxyError>>,
    O: Observer + Send + 'static,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = std::task::ready!(this.inner.poll(cx));
        if let Some(observer) = this.observer.take() {
            match &mut result {
                Ok(response) => match grpc::read_head(response) {
                    grpc::Head::Known(outcome) => observer.finished(outcome),
                    // The head says nothing yet: the trailers will.
                    grpc::Head::AwaitsTrailers if observer.needs_trailers() => {
                        settle_on_trailers(response, Box::new(observer));
                    }
                    grpc::Head::AwaitsTrailers => observer.finished(Outcome::Response {
                        status: 200,
                        grpc: None,
                    }),
                },
                Err(e) => observer.finished(Outcome::of_error(e)),
            }
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(s: u16) -> Outcome {
        Outcome::Response {
            status: s,
            grpc: None,
        }
    }

    #[test]
    fn what_counts_as_failure_follows_failure_on() {
        let default = FailureOn::default();
        assert!(status(500).is_failure(&default));
        assert!(!status(404).is_failure(&default));
        assert!(Outcome::Timeout.is_failure(&default));
        assert!(Outcome::ConnectFailure.is_failure(&default));
        assert!(!Outcome::Neutral.is_failure(&default));

        let gateway_only = FailureOn {
            server_error: false,
            gateway_error: true,
            connect_failure: false,
            timeout: false,
            grpc_statuses: vec![14],
        };
        assert!(!status(500).is_failure(&gateway_only));
        assert!(status(503).is_failure(&gateway_only));
        assert!(!Outcome::Timeout.is_failure(&gateway_only));
        let unavailable = Outcome::Response {
            status: 200,
            grpc: Some(14),
        };
        assert!(unavailable.is_failure(&gateway_only));
        assert!(unavailable.is_success());
    }
}

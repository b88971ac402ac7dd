//! A gRPC answer's body that reports how the call ended. A gRPC call
//! carries its status in `grpc-status`: in the response head when it fails
//! before any message (a trailers-only answer, which the breaker judges
//! from the head: `crate::breaker::grpc`), otherwise in the trailers after
//! the body. For the latter, [`GrpcOutcomeBody`] holds the breaker's and
//! the balancer's observers until the trailers come (as Envoy's router
//! defers a gRPC call's success to its trailers), so a plain HTTP answer
//! never carries it.
//!
//! How the body ends decides the outcome:
//! - trailers with `grpc-status`: that status, on the head's HTTP status;
//! - trailers without one, an end without trailers, or an error (the
//!   upstream reset the stream): [`Outcome::Reset`], as a gRPC client
//!   would fail the call;
//! - dropped before its end (the caller went away): [`Outcome::Neutral`],
//!   which frees a half-open probe slot and counts neither way.
//!
//! [`Outcome`] is declared here, with the body that reports it; what an
//! outcome counts as (a failure, a 5xx) is the breaker's policy, in
//! `crate::breaker::outcome`.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use hyper::body::{Body, Frame, SizeHint};

use super::{ProxyBody, ProxyBodyKind};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The result of one request, as far as resilience cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers arrived; `grpc` is the call's `grpc-status`, from
    /// them (a trailers-only gRPC answer) or from the trailers.
    Response { status: u16, grpc: Option<u32> },
    /// The endpoint could not be reached: a refused or timed-out connect,
    /// or its sidecar's answer that its app could not be
    /// (`x-weft-unreached`). No app saw the request.
    ConnectFailure,
    /// Reset, closed or invalid HTTP before a response.
    Reset,
    /// No response headers in time.
    Timeout,
    /// Not the endpoint's doing (the sidecar's own limits, a bad request):
    /// counts neither way.
    Neutral,
}

pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The `grpc-status` among `headers` (a response head or trailers).
pub fn status_in(headers: &HeaderMap) -> Option<u32> {
    headers
        .get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// An observer a gRPC answer's body carries until its trailers, boxed so
/// that one body can carry the breaker's and the balancer's (the breaker
/// implements it for its observers).
pub trait Pending: Send {
    fn settle(self: Box<Self>, outcome: Outcome);
}

/// Makes `response`'s body tell `observer` how the call ended, once its
/// trailers (or its end) arrive. A body already watched (by a layer below)
/// takes one more observer instead of a second wrapper.
pub fn settle_on_trailers(response: &mut http::Response<ProxyBody>, observer: Box<dyn Pending>) {
    let status = response.status().as_u16();
    let body = std::mem::replace(response.body_mut(), ProxyBody::empty());
    *response.body_mut() = match body.kind {
        ProxyBodyKind::Grpc(mut watched) => {
            watched.observers.push(observer);
            ProxyBodyKind::Grpc(watched).into()
        }
        other => ProxyBodyKind::Grpc(Box::new(GrpcOutcomeBody::new(
            other.into(),
            status,
            observer,
        )))
        .into(),
    };
}

/// A gRPC answer's body, streamed through untouched, that tells its
/// observers how the call ended (see the module docs).
pub struct GrpcOutcomeBody<B = ProxyBody> {
    inner: B,
    /// The HTTP status of the answer's head.
    status: u16,
    /// Emptied once told.
    observers: Vec<Box<dyn Pending>>,
}

impl<B> GrpcOutcomeBody<B> {
    pub fn new(inner: B, status: u16, observer: Box<dyn Pending>) -> Self {
        // Room for the breaker's observer besides the balancer's.
        let mut observers = Vec::with_capacity(2);
        observers.push(observer);
        Self {
            inner,
            status,
            observers,
        }
    }

    fn settle(&mut self, outcome: Outcome) {
        for observer in self.observers.drain(..) {
            observer.settle(outcome);
        }
    }
}

impl<B> Drop for GrpcOutcomeBody<B> {
    fn drop(&mut self) {
        // Not read to its end: the caller went away.
        self.settle(Outcome::Neutral);
    }
}

impl<B> Body for GrpcOutcomeBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled =
            ready!(Pin::new(&mut this.inner).poll_frame(cx)).map(|r| r.map_err(Into::into));
        if !this.observers.is_empty() {
            match &polled {
                Some(Ok(frame)) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        let outcome = match status_in(trailers) {
                            Some(grpc) => Outcome::Response {
                                status: this.status,
                                grpc: Some(grpc),
                            },
                            None => Outcome::Reset,
                        };
                        this.settle(outcome);
                    } else if this.inner.is_end_stream() {
                        // The last data frame: the server (hyper's) will
                        // not poll again, and no trailers are coming.
                        this.settle(Outcome::Reset);
                    }
                }
                Some(Err(_)) | None => this.settle(Outcome::Reset),
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http_body_util::{BodyExt as _, StreamBody};

    use super::*;
    use crate::breaker::FailureOn;
    use crate::breaker::outcome::Observer;

    /// Notes every outcome it is told.
    #[derive(Clone, Default)]
    struct Told(Arc<Mutex<Vec<Outcome>>>);

    impl Observer for Told {
        fn finished(self, outcome: Outcome) {
            self.0.lock().unwrap().push(outcome);
        }
        fn abandoned(self) {
            panic!("a body is never abandoned, only dropped (neutral)");
        }
    }

    impl Told {
        fn outcomes(&self) -> Vec<Outcome> {
            self.0.lock().unwrap().clone()
        }
    }

    type Frames = Vec<Result<Frame<Bytes>, BoxError>>;

    fn body(
        frames: Frames,
        told: &Told,
    ) -> GrpcOutcomeBody<impl Body<Data = Bytes, Error = BoxError> + Unpin> {
        let stream = StreamBody::new(futures_util::stream::iter(frames));
        GrpcOutcomeBody::new(stream, 200, Box::new(told.clone()))
    }

    fn message() -> Result<Frame<Bytes>, BoxError> {
        Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi")))
    }

    fn trailers(grpc_status: Option<&'static str>) -> Result<Frame<Bytes>, BoxError> {
        let mut map = HeaderMap::new();
        if let Some(code) = grpc_status {
            map.insert(GRPC_STATUS, code.parse().unwrap());
        }
        Ok(Frame::trailers(map))
    }

    /// Breaker settings counting UNAVAILABLE.
    fn unavailable_fails() -> FailureOn {
        FailureOn {
            grpc_statuses: vec![14],
            ..FailureOn::default()
        }
    }

    #[tokio::test]
    async fn unavailable_in_the_trailers_is_a_failure_when_listed() {
        let told = Told::default();
        let collected = body(vec![message(), trailers(Some("14"))], &told)
            .collect()
            .await
            .unwrap();
        assert_eq!(
            collected.trailers().and_then(status_in),
            Some(14),
            "the trailers pass through"
        );
        let outcomes = told.outcomes();
        assert_eq!(
            outcomes,
            [Outcome::Response {
                status: 200,
                grpc: Some(14)
            }]
        );
        assert!(outcomes[0].is_failure(&unavailable_fails()));
        assert!(
            !outcomes[0].is_failure(&FailureOn::default()),
            "not listed: not a breaker failure"
        );
    }

    #[tokio::test]
    async fn ok_in_the_trailers_is_a_success() {
        let told = Told::default();
        let collected = body(vec![message(), trailers(Some("0"))], &told)
            .collect()
            .await
            .unwrap();
        assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x02hi");
        let outcome = told.outcomes()[0];
        assert!(outcome.is_success() && !outcome.is_failure(&unavailable_fails()));
        assert!(!outcome.is_5xx() && !outcome.is_gateway_error());
    }

    #[tokio::test]
    async fn an_end_without_status_or_with_an_error_is_a_reset() {
        for frames in [
            vec![message()],
            vec![message(), trailers(None)],
            vec![message(), Err(BoxError::from("stream reset"))],
            vec![],
        ] {
            let told = Told::default();
            let mut watched = body(frames, &told);
            while let Some(Ok(_)) = watched.frame().await {}
            drop(watched);
            assert_eq!(told.outcomes(), [Outcome::Reset]);
            assert!(Outcome::Reset.is_failure(&FailureOn::default()));
        }
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_is_neutral() {
        let told = Told::default();
        let mut watched = body(vec![message(), trailers(Some("14"))], &told);
        watched.frame().await.unwrap().unwrap();
        assert!(told.outcomes().is_empty(), "nothing known yet");
        drop(watched);
        assert_eq!(told.outcomes(), [Outcome::Neutral]);
    }

    #[tokio::test]
    async fn each_observer_is_told_once() {
        let (balancer, breaker) = (Told::default(), Told::default());
        let mut response = http::Response::new(ProxyBody::empty());
        settle_on_trailers(&mut response, Box::new(balancer.clone()));
        settle_on_trailers(&mut response, Box::new(breaker.clone()));
        assert!(
            matches!(&response.body().kind, ProxyBodyKind::Grpc(b) if b.observers.len() == 2),
            "one wrapper for both"
        );
        let _ = response.into_body().collect().await;
        assert_eq!(balancer.outcomes(), [Outcome::Reset]);
        assert_eq!(breaker.outcomes(), [Outcome::Reset]);
    }
}

//! gRPC answers as outcomes. A gRPC call carries its status in
//! `grpc-status`: in the response head when it fails before any message
//! (a trailers-only answer), otherwise in the trailers after the body. The
//! head case is judged when the head arrives, like any HTTP answer; for the
//! other, [`GrpcOutcomeBody`] holds the breaker's and the balancer's
//! observers until the trailers come (as Envoy's router defers a gRPC
//! call's success to its trailers), so a plain HTTP answer never carries it.
//!
//! How the body ends decides the outcome:
//! - trailers with `grpc-status`: that status, on the head's HTTP status;
//! - trailers without one, an end without trailers, or an error (the
//!   upstream reset the stream): [`Outcome::Reset`], as a gRPC client
//!   would fail the call;
//! - dropped before its end (the caller went away): [`Outcome::Neutral`],
//!   which frees a half-open probe slot and counts neither way.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode, header};
use hyper::body::{Body, Frame, SizeHint};

use super::{Outcome, Pending};
use crate::body::{ProxyBody, ProxyBodyKind};
use crate::error::UNREACHED_HEADER;
use crate::model::ProxyResponse;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The `grpc-status` among `headers` (a response head or trailers).
pub fn status_in(headers: &HeaderMap) -> Option<u32> {
    headers
        .get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// What a response head says of its outcome.
pub enum Head {
    /// Known now: the status, and a `grpc-status` in the head of a gRPC
    /// answer (a trailers-only one).
    Known(Outcome),
    /// A gRPC answer (200, `application/grpc*`) without `grpc-status` in
    /// its head: only its trailers will tell.
    AwaitsTrailers,
}

/// Reads a response head: one content-type lookup for a plain HTTP
/// answer (the common case), `grpc-status` only on a gRPC one.
pub fn read_head(response: &ProxyResponse) -> Head {
    let status = response.status();
    let is_grpc = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let grpc = if is_grpc {
        status_in(response.headers())
    } else {
        None
    };
    // The endpoint's sidecar could not reach its app: as unreachable as a
    // refused connect (a gRPC caller gets it as UNAVAILABLE).
    let unreached = (status == StatusCode::SERVICE_UNAVAILABLE || grpc == Some(14))
        && response.headers().contains_key(UNREACHED_HEADER);
    if unreached {
        return Head::Known(Outcome::ConnectFailure);
    }
    if is_grpc && grpc.is_none() && status == StatusCode::OK {
        return Head::AwaitsTrailers;
    }
    Head::Known(Outcome::Response {
        status: status.as_u16(),
        grpc,
    })
}

/// The HTTP status a gRPC status stands for where only HTTP statuses are
/// understood (outlier ejection's 5xx and gateway errors). The mapping of
/// Google's API design guide, the one Envoy applies for outlier detection
/// (`Grpc::Utility::grpcToHttpStatus`): only UNKNOWN, INTERNAL, DATA_LOSS
/// (500), UNIMPLEMENTED (501), UNAVAILABLE (503), DEADLINE_EXCEEDED (504)
/// and unknown codes (500) are server errors; the rest are the caller's.
pub fn as_http_status(code: u32) -> u16 {
    match code {
        0 => 200,  // OK
        1 => 499,  // CANCELLED: the client closed the request
        2 => 500,  // UNKNOWN
        3 => 400,  // INVALID_ARGUMENT
        4 => 504,  // DEADLINE_EXCEEDED
        5 => 404,  // NOT_FOUND
        6 => 409,  // ALREADY_EXISTS
        7 => 403,  // PERMISSION_DENIED
        8 => 429,  // RESOURCE_EXHAUSTED
        9 => 400,  // FAILED_PRECONDITION
        10 => 409, // ABORTED
        11 => 400, // OUT_OF_RANGE
        12 => 501, // UNIMPLEMENTED
        13 => 500, // INTERNAL
        14 => 503, // UNAVAILABLE
        15 => 500, // DATA_LOSS
        16 => 401, // UNAUTHENTICATED
        _ => 500,
    }
}

/// Makes `response`'s body tell `observer` how the call ended, once its
/// trailers (or its end) arrive. A body already watched (by a layer below)
/// takes one more observer instead of a second wrapper.
pub fn settle_on_trailers(response: &mut ProxyResponse, observer: Box<dyn Pending>) {
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

    /// Whether this answer's outcome is only known from its trailers.
    fn awaits_trailers(response: &ProxyResponse) -> bool {
        matches!(read_head(response), Head::AwaitsTrailers)
    }

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

    #[test]
    fn a_peer_sidecars_unreached_answer_is_a_connect_failure_and_an_apps_503_is_not() {
        let answer = |status: u16, grpc: Option<&str>, unreached: bool| {
            let mut r = ProxyResponse::new(ProxyBody::empty());
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            if let Some(code) = grpc {
                let h = r.headers_mut();
                h.insert(header::CONTENT_TYPE, "application/grpc".parse().unwrap());
                h.insert(GRPC_STATUS, code.parse().unwrap());
            }
            if unreached {
                r.headers_mut()
                    .insert(UNREACHED_HEADER, "app".parse().unwrap());
            }
            match read_head(&r) {
                Head::Known(outcome) => outcome,
                Head::AwaitsTrailers => panic!("a status in the head"),
            }
        };
        assert_eq!(answer(503, None, true), Outcome::ConnectFailure);
        assert_eq!(answer(200, Some("14"), true), Outcome::ConnectFailure);
        let app_503 = answer(503, None, false);
        assert_eq!(
            app_503,
            Outcome::Response {
                status: 503,
                grpc: None
            }
        );
        assert!(app_503.is_gateway_error());
        assert_ne!(
            answer(500, None, true),
            Outcome::ConnectFailure,
            "only a 503 says unreached"
        );
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

    #[test]
    fn only_grpc_answers_without_a_status_in_their_head_wait_for_trailers() {
        let answer = |status: u16, content_type: &'static str, grpc: Option<&'static str>| {
            let mut r = http::Response::new(ProxyBody::empty());
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            r.headers_mut()
                .insert(header::CONTENT_TYPE, content_type.parse().unwrap());
            if let Some(g) = grpc {
                r.headers_mut().insert(GRPC_STATUS, g.parse().unwrap());
            }
            r
        };
        assert!(awaits_trailers(&answer(200, "application/grpc", None)));
        assert!(awaits_trailers(&answer(
            200,
            "application/grpc+proto",
            None
        )));
        assert!(!awaits_trailers(&answer(
            200,
            "application/grpc",
            Some("14")
        )));
        assert!(!awaits_trailers(&answer(503, "application/grpc", None)));
        assert!(!awaits_trailers(&answer(200, "application/json", None)));
    }

    #[test]
    fn server_side_grpc_statuses_are_5xx_and_unavailable_a_gateway_error() {
        let grpc = |code| Outcome::Response {
            status: 200,
            grpc: Some(code),
        };
        for code in [2, 4, 12, 13, 14, 15, 99] {
            assert!(grpc(code).is_5xx(), "{code}");
        }
        for code in [0, 1, 3, 5, 6, 7, 8, 9, 10, 11, 16] {
            assert!(
                !grpc(code).is_5xx() && !grpc(code).is_gateway_error(),
                "{code}"
            );
        }
        assert!(grpc(14).is_gateway_error() && grpc(4).is_gateway_error());
        assert!(!grpc(13).is_gateway_error());
    }
}

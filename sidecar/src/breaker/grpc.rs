//! gRPC answers as outcomes. A gRPC call carries its status in
//! `grpc-status`: in the response head when it fails before any message
//! (a trailers-only answer), otherwise in the trailers after the body. The
//! head case is judged here when the head arrives ([`read_head`]), like any
//! HTTP answer; the other waits for the trailers in the answer's body
//! (`crate::body::grpc`, which declares [`Outcome`] and reports it).

use http::{StatusCode, header};

use super::Outcome;
use crate::body::grpc::status_in;
use crate::error::UNREACHED_HEADER;
use crate::model::ProxyResponse;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::ProxyBody;
    use crate::body::grpc::GRPC_STATUS;

    /// Whether this answer's outcome is only known from its trailers.
    fn awaits_trailers(response: &ProxyResponse) -> bool {
        matches!(read_head(response), Head::AwaitsTrailers)
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
}

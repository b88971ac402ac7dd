//! What a finished request counts as for outlier ejection: Envoy's
//! `consecutive_5xx` and `consecutive_gateway_errors` judge HTTP statuses,
//! so a gRPC status stands for the HTTP status it maps to.

// The enum is declared with the gRPC answer's body (`crate::body::grpc`),
// which reports it; the breaker and ejection each say what it counts as.
use crate::body::grpc::Outcome;

impl Outcome {
    /// The HTTP status outlier ejection judges: a gRPC status stands for
    /// the HTTP status it maps to (as Envoy's outlier detection sees it).
    fn outlier_status(status: u16, grpc: Option<u32>) -> u16 {
        grpc.map_or(status, as_http_status)
    }

    /// 5xx or nothing at all from the endpoint (outlier `consecutive_5xx`);
    /// gRPC UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
    /// UNAVAILABLE and DATA_LOSS count as 5xx.
    pub fn is_5xx(self) -> bool {
        match self {
            Self::Response { status, grpc } => Self::outlier_status(status, grpc) >= 500,
            Self::ConnectFailure | Self::Reset => true,
            Self::Timeout | Self::Neutral => false,
        }
    }

    /// 502/503/504 or nothing at all (outlier `consecutive_gateway_errors`);
    /// gRPC UNAVAILABLE (503) and DEADLINE_EXCEEDED (504) count too.
    pub fn is_gateway_error(self) -> bool {
        match self {
            Self::Response { status, grpc } => {
                matches!(Self::outlier_status(status, grpc), 502..=504)
            }
            Self::ConnectFailure | Self::Reset => true,
            Self::Timeout | Self::Neutral => false,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> Outcome {
        Outcome::Response { status, grpc: None }
    }

    #[test]
    fn outlier_kinds() {
        assert!(status(500).is_5xx() && !status(500).is_gateway_error());
        assert!(status(503).is_gateway_error());
        assert!(Outcome::Reset.is_gateway_error() && Outcome::ConnectFailure.is_5xx());
        assert!(!Outcome::Timeout.is_5xx());
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

//! The trace id of a request, read from its W3C `traceparent` header
//! (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`), for latency
//! exemplars and access-log lines. Reading only: propagation and spans are
//! the tracing layer's.

use http::HeaderMap;
use http::header::HeaderName;

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// A request's trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    /// The `sampled` flag: the trace is recorded, so an exemplar may point
    /// at it.
    pub sampled: bool,
}

impl TraceContext {
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        Self::parse(headers.get(TRACEPARENT)?.as_bytes())
    }

    /// Version 00's layout (and any later version's first four fields, as
    /// the spec asks); `None` for anything malformed or the all-zero id.
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        if value.len() > 55 && (value[..2] == *b"00" || value[55] != b'-') {
            return None;
        }
        let trace_id = hex(&value[3..35])?;
        let _span_id = hex(&value[36..52])?;
        let flags = hex(&value[53..55])?;
        (trace_id != 0 && value[..2] != *b"ff").then_some(Self {
            trace_id,
            sampled: flags & 1 == 1,
        })
    }
}

/// Lower-case hex digits (as the spec requires) as a number.
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |n, d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u128::from(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_gives_its_trace_id_and_sampled_flag() {
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::parse(tp).unwrap();
        assert_eq!(
            format!("{:032x}", ctx.trace_id),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(ctx.sampled);
        let unsampled = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!TraceContext::parse(unsampled).unwrap().sampled);
    }

    #[test]
    fn malformed_or_zero_trace_ids_are_none() {
        for bad in [
            &b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(
                TraceContext::parse(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

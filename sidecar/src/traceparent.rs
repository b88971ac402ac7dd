//! The W3C `traceparent` header and its parser: the one piece of trace
//! context that layers other than `trace` read (metrics' exemplars and
//! access-log lines take the trace id the `trace` layer above has written).
//!
//! It sits at the bottom of the sidecar, importing nothing from it, so that
//! those readers do not import the `trace` feature; `trace::context`
//! re-exports it beside B3 and the writers. Parsing is strict and total: a
//! malformed header is `None`, never a panic.
//!
//! [`TraceContext`] is what those readers keep: the trace id and sampled
//! flag of the span the `trace` layer wrote.

use http::HeaderMap;
use http::header::HeaderName;

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The caller's span, as read from a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    /// Never zero.
    pub trace_id: u128,
    /// Never zero.
    pub span_id: u64,
    /// The caller's sampling decision; `None` when B3 defers it.
    pub sampled: Option<bool>,
    /// True when it came from a valid `traceparent` (so `tracestate`
    /// belongs to it and is kept).
    pub w3c: bool,
    /// A B3 64-bit trace id: B3 is answered with 16 hex digits again.
    pub short_b3_trace_id: bool,
}

/// `version-traceid-parentid-flags`, W3C Trace Context level 1: version
/// `00` is exactly 55 characters; a later version may append fields after
/// a `-`; version `ff`, upper-case hex and all-zero ids are invalid.
pub fn parse_traceparent(v: &[u8]) -> Option<Parent> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex_u64(&v[0..2])?;
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace_id = hex_u128(&v[3..35]).filter(|id| *id != 0)?;
    let span_id = hex_u64(&v[36..52]).filter(|id| *id != 0)?;
    let flags = hex_u64(&v[53..55])?;
    Some(Parent {
        trace_id,
        span_id,
        sampled: Some(flags & 1 == 1),
        w3c: true,
        short_b3_trace_id: false,
    })
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

pub(crate) fn hex_u64(v: &[u8]) -> Option<u64> {
    v.iter()
        .try_fold(0u64, |n, b| Some(n << 4 | u64::from(hex_digit(*b)?)))
}

pub(crate) fn hex_u128(v: &[u8]) -> Option<u128> {
    let (hi, lo) = v.split_at(v.len().checked_sub(16)?);
    Some(u128::from(hex_u64(hi)?) << 64 | u128::from(hex_u64(lo)?))
}

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
        let parent = parse_traceparent(headers.get(TRACEPARENT)?.as_bytes())?;
        Some(Self {
            trace_id: parent.trace_id,
            sampled: parent.sampled == Some(true),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_gives_its_trace_id_and_sampled_flag() {
        let mut headers = HeaderMap::new();
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        headers.insert(TRACEPARENT, tp.parse().unwrap());
        let ctx = TraceContext::of(&headers).unwrap();
        assert_eq!(
            format!("{:032x}", ctx.trace_id),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(ctx.sampled);
        headers.insert(TRACEPARENT, tp.replace("-01", "-00").parse().unwrap());
        assert!(!TraceContext::of(&headers).unwrap().sampled);
        headers.insert(TRACEPARENT, "00-zz".parse().unwrap());
        assert_eq!(TraceContext::of(&headers), None);
    }
}

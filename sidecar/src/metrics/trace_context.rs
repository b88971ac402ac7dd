//! The trace id of a request, for latency exemplars and access-log lines:
//! read from the `traceparent` the `trace` layer above has written (this
//! span's), with its parser.

use http::HeaderMap;

use crate::traceparent::{TRACEPARENT, parse_traceparent};

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

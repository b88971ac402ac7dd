//! Trace context on the wire: W3C Trace Context (`traceparent`,
//! `tracestate`) and Zipkin's B3, single (`b3`) and multi (`x-b3-*`)
//! header. Parsing is strict and total: a malformed header is treated as
//! absent (the request then starts a new trace), never refused, never a
//! panic.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

// The W3C parser sits in a bottom module so that metrics (exemplars) and
// access logs can read a trace id without importing this feature.
pub use crate::traceparent::{Parent, TRACEPARENT, parse_traceparent};
use crate::traceparent::{hex_u64, hex_u128};

pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub const B3: HeaderName = HeaderName::from_static("b3");
pub const X_B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub const X_B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub const X_B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub const X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub const X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// The headers an app must copy from the request it serves onto the
/// requests it makes, for its calls to join the trace.
pub const FORWARDED_HEADERS: [&str; 8] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

/// Which B3 style a request came with: the one to answer in, so that
/// B3-only apps keep working.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum B3Style {
    None,
    Single,
    Multi,
}

/// What a request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extracted {
    /// The caller's span: W3C first, then B3.
    pub parent: Option<Parent>,
    /// The B3 style to answer in.
    pub b3: B3Style,
    /// A `tracestate` header is present.
    pub tracestate: bool,
}

// Which trace headers a request has, found in one pass over its names.
const HAS_TRACEPARENT: u8 = 1;
const HAS_TRACESTATE: u8 = 1 << 1;
const HAS_B3: u8 = 1 << 2;
const HAS_B3_MULTI: u8 = 1 << 3;

/// One pass over the header names (a request has a handful) instead of a
/// hashed lookup per trace header, most of which are absent.
fn present(headers: &HeaderMap) -> u8 {
    let mut found = 0;
    for name in headers.keys() {
        let name = name.as_str();
        found |= match name.len() {
            11 if name == "traceparent" => HAS_TRACEPARENT,
            10 if name == "tracestate" => HAS_TRACESTATE,
            2 if name == "b3" => HAS_B3,
            12 if name == "x-b3-traceid" => HAS_B3_MULTI,
            _ => 0,
        };
    }
    found
}

pub fn extract(headers: &HeaderMap) -> Extracted {
    let found = present(headers);
    if found == 0 {
        return Extracted {
            parent: None,
            b3: B3Style::None,
            tracestate: false,
        };
    }
    let w3c = (found & HAS_TRACEPARENT != 0)
        .then(|| single(headers, &TRACEPARENT).and_then(|v| parse_traceparent(v.as_bytes())))
        .flatten();
    let (b3, style) = if found & HAS_B3 != 0 {
        (
            headers.get(B3).and_then(|v| parse_b3_single(v.as_bytes())),
            B3Style::Single,
        )
    } else if found & HAS_B3_MULTI != 0 {
        (parse_b3_multi(headers), B3Style::Multi)
    } else {
        (None, B3Style::None)
    };
    let parent = match (w3c, b3) {
        // The same trace in both: keep B3's width for the B3 answer.
        (Some(mut w3c), Some(b3)) => {
            w3c.short_b3_trace_id = b3.short_b3_trace_id && b3.trace_id == w3c.trace_id;
            Some(w3c)
        }
        (w3c, b3) => w3c.or(b3),
    };
    Extracted {
        parent,
        b3: style,
        tracestate: found & HAS_TRACESTATE != 0,
    }
}

/// The one value of a header that must not repeat (W3C: two
/// `traceparent`s make the context invalid).
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    values.next().is_none().then_some(first)
}

/// `b3: {traceid}-{spanid}[-{sampled}[-{parentspanid}]]`; a lone sampling
/// decision (`b3: 0`) carries no span and counts as absent.
pub fn parse_b3_single(v: &[u8]) -> Option<Parent> {
    let mut parts = v.split(|b| *b == b'-');
    let (trace_id, short) = b3_trace_id(parts.next()?)?;
    let span_id = b3_span_id(parts.next()?)?;
    let sampled = match parts.next() {
        None => None,
        Some(s) => Some(b3_sampled(s)?),
    };
    if let Some(parent) = parts.next() {
        b3_span_id(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled,
        w3c: false,
        short_b3_trace_id: short,
    })
}

/// `X-B3-TraceId` and `X-B3-SpanId` (both required), `X-B3-Sampled`,
/// `X-B3-Flags: 1` (debug, which implies sampled).
pub fn parse_b3_multi(headers: &HeaderMap) -> Option<Parent> {
    let (trace_id, short) = b3_trace_id(headers.get(X_B3_TRACE_ID)?.as_bytes())?;
    let span_id = b3_span_id(headers.get(X_B3_SPAN_ID)?.as_bytes())?;
    let debug = headers
        .get(X_B3_FLAGS)
        .is_some_and(|f| f.as_bytes() == b"1");
    let sampled = match headers.get(X_B3_SAMPLED) {
        _ if debug => Some(true),
        None => None,
        Some(s) => match s.as_bytes() {
            b"1" | b"true" => Some(true),
            b"0" | b"false" => Some(false),
            _ => return None,
        },
    };
    Some(Parent {
        trace_id,
        span_id,
        sampled,
        w3c: false,
        short_b3_trace_id: short,
    })
}

fn b3_trace_id(v: &[u8]) -> Option<(u128, bool)> {
    let id = match v.len() {
        16 => hex_u64(v).map(u128::from)?,
        32 => hex_u128(v)?,
        _ => return None,
    };
    (id != 0).then_some((id, v.len() == 16))
}

fn b3_span_id(v: &[u8]) -> Option<u64> {
    (v.len() == 16)
        .then(|| hex_u64(v))
        .flatten()
        .filter(|id| *id != 0)
}

fn b3_sampled(v: &[u8]) -> Option<bool> {
    match v {
        b"1" | b"d" => Some(true),
        b"0" => Some(false),
        _ => None,
    }
}

/// Two hex digits per byte value, for writing ids a byte at a time.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    pairs
};

/// `out.len() / 2` low bytes of `n` as lower-case hex (`out.len()` even).
fn put_hex(out: &mut [u8], n: u128) {
    let bytes = n.to_be_bytes();
    let bytes = &bytes[16 - out.len() / 2..];
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[*byte as usize]);
    }
}

fn header(bytes: &[u8]) -> HeaderValue {
    // Hex digits and '-' are always a valid header value.
    HeaderValue::from_bytes(bytes).unwrap_or(HeaderValue::from_static("0"))
}

/// The span a request carries on: written into the request passed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Current {
    pub trace_id: u128,
    pub span_id: u64,
    /// The caller's span (B3's parent span id), if any.
    pub parent_id: Option<u64>,
    pub sampled: bool,
    pub short_b3_trace_id: bool,
}

pub fn traceparent(c: &Current) -> HeaderValue {
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
    put_hex(&mut buf[3..35], c.trace_id);
    put_hex(&mut buf[36..52], u128::from(c.span_id));
    buf[54] = if c.sampled { b'1' } else { b'0' };
    header(&buf)
}

fn b3_trace_id_hex(c: &Current, out: &mut [u8; 32]) -> usize {
    put_hex(out, c.trace_id);
    if c.short_b3_trace_id { 16 } else { 32 }
}

/// Writes the current span into `headers`: always `traceparent`, and B3
/// in `style` (replacing what the caller sent).
pub fn inject(headers: &mut HeaderMap, c: &Current, style: B3Style) {
    headers.insert(TRACEPARENT, traceparent(c));
    if style == B3Style::None {
        return;
    }
    let mut trace = [0u8; 32];
    let trace_len = b3_trace_id_hex(c, &mut trace);
    let trace = &trace[32 - trace_len..];
    let mut span = [0u8; 16];
    put_hex(&mut span, u128::from(c.span_id));
    let sampled: &[u8] = if c.sampled { b"1" } else { b"0" };
    match style {
        B3Style::None => {}
        B3Style::Single => {
            // Apps that speak B3 only: rare enough for a small Vec.
            let mut v = Vec::with_capacity(70);
            v.extend_from_slice(trace);
            v.push(b'-');
            v.extend_from_slice(&span);
            v.push(b'-');
            v.extend_from_slice(sampled);
            if let Some(parent) = c.parent_id {
                let mut p = [0u8; 16];
                put_hex(&mut p, u128::from(parent));
                v.push(b'-');
                v.extend_from_slice(&p);
            }
            headers.insert(B3, header(&v));
        }
        B3Style::Multi => {
            headers.insert(X_B3_TRACE_ID, header(trace));
            headers.insert(X_B3_SPAN_ID, header(&span));
            match c.parent_id {
                Some(parent) => {
                    let mut p = [0u8; 16];
                    put_hex(&mut p, u128::from(parent));
                    headers.insert(X_B3_PARENT_SPAN_ID, header(&p));
                }
                None => {
                    headers.remove(X_B3_PARENT_SPAN_ID);
                }
            }
            headers.insert(X_B3_SAMPLED, header(sampled));
            // The decision is explicit now: debug would override it.
            headers.remove(X_B3_FLAGS);
        }
    }
}

/// A random non-zero id (thread-local CSPRNG: no lock, no syscall).
pub fn new_span_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

pub fn new_trace_id() -> u128 {
    loop {
        let id: u128 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn a_valid_traceparent_is_the_parent() {
        let p = parse_traceparent(TP.as_bytes()).unwrap();
        assert_eq!(p.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(p.span_id, 0x00f067aa0ba902b7);
        assert_eq!(p.sampled, Some(true));
        assert!(p.w3c);
        let unsampled = TP.replace("-01", "-00");
        assert_eq!(
            parse_traceparent(unsampled.as_bytes()).unwrap().sampled,
            Some(false)
        );
    }

    #[test]
    fn malformed_traceparents_are_absent() {
        let bad = [
            "",
            "00",
            // all-zero trace id / span id
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // upper case, non-hex
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            // version ff, version 00 with extra fields, wrong separators
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            // a later version's extra fields must follow a '-'
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ];
        for v in bad {
            assert_eq!(parse_traceparent(v.as_bytes()), None, "{v:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_as_version_00() {
        let v = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future";
        assert_eq!(
            parse_traceparent(v.as_bytes()).unwrap().span_id,
            0x00f067aa0ba902b7
        );
    }

    #[test]
    fn two_traceparents_are_invalid_and_b3_is_used_instead() {
        let h = headers(&[
            ("traceparent", TP),
            ("traceparent", TP),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ]);
        let e = extract(&h);
        assert_eq!(
            e.parent.unwrap().trace_id,
            0x80f198ee56343ba864fe8b2a57d3eff7
        );
        assert_eq!(e.b3, B3Style::Single);
    }

    #[test]
    fn traceparent_wins_over_b3_but_b3_is_still_answered() {
        let h = headers(&[
            ("traceparent", TP),
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ]);
        let e = extract(&h);
        assert!(e.parent.unwrap().w3c);
        assert_eq!(e.b3, B3Style::Multi);
    }

    #[test]
    fn a_64_bit_b3_trace_id_stays_64_bit_beside_its_traceparent() {
        let h = headers(&[
            (
                "traceparent",
                "00-0000000000000000a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
        ]);
        let parent = extract(&h).parent.unwrap();
        assert!(parent.w3c && parent.short_b3_trace_id);
    }

    #[test]
    fn b3_single_forms() {
        let p = parse_b3_single(
            b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )
        .unwrap();
        assert_eq!(p.span_id, 0xe457b5a2e4d86bd1);
        assert_eq!(p.sampled, Some(true));
        let p = parse_b3_single(b"a3ce929d0e0e4736-e457b5a2e4d86bd1").unwrap();
        assert_eq!(p.trace_id, 0xa3ce929d0e0e4736);
        assert!(p.short_b3_trace_id);
        assert_eq!(p.sampled, None);
        assert_eq!(
            parse_b3_single(b"a3ce929d0e0e4736-e457b5a2e4d86bd1-d")
                .unwrap()
                .sampled,
            Some(true)
        );
        for bad in [
            &b"0"[..],
            b"1",
            b"a3ce929d0e0e4736",
            b"a3ce929d0e0e4736-e457b5a2e4d86bd1-2",
            b"a3ce929d0e0e4736-e457b5a2e4d86bd1-1-zz",
            b"a3ce929d0e0e4736-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-x",
            b"0000000000000000-e457b5a2e4d86bd1",
            b"a3ce929d0e0e473-e457b5a2e4d86bd1",
        ] {
            assert_eq!(
                parse_b3_single(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn b3_multi_needs_trace_and_span_ids() {
        let h = headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "0"),
        ]);
        assert_eq!(parse_b3_multi(&h).unwrap().sampled, Some(false));
        let debug = headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "0"),
            ("x-b3-flags", "1"),
        ]);
        assert_eq!(parse_b3_multi(&debug).unwrap().sampled, Some(true));
        let no_span = headers(&[("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124")]);
        assert_eq!(parse_b3_multi(&no_span), None);
        let e = extract(&no_span);
        assert_eq!((e.parent, e.b3), (None, B3Style::Multi));
    }

    #[test]
    fn injected_headers_read_back() {
        let c = Current {
            trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
            span_id: 0x1,
            parent_id: Some(0x00f067aa0ba902b7),
            sampled: true,
            short_b3_trace_id: false,
        };
        let mut h = HeaderMap::new();
        inject(&mut h, &c, B3Style::Single);
        assert_eq!(
            h[TRACEPARENT],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000001-01"
        );
        assert_eq!(
            h[B3],
            "4bf92f3577b34da6a3ce929d0e0e4736-0000000000000001-1-00f067aa0ba902b7"
        );
        let mut h = HeaderMap::new();
        h.insert(X_B3_FLAGS, HeaderValue::from_static("1"));
        let short = Current {
            trace_id: 0xa3ce929d0e0e4736,
            sampled: false,
            short_b3_trace_id: true,
            parent_id: None,
            ..c
        };
        inject(&mut h, &short, B3Style::Multi);
        assert_eq!(h[X_B3_TRACE_ID], "a3ce929d0e0e4736");
        assert_eq!(h[X_B3_SPAN_ID], "0000000000000001");
        assert_eq!(h[X_B3_SAMPLED], "0");
        assert!(!h.contains_key(X_B3_FLAGS) && !h.contains_key(X_B3_PARENT_SPAN_ID));
        let back = parse_traceparent(h[TRACEPARENT].as_bytes()).unwrap();
        assert_eq!((back.trace_id, back.span_id), (0xa3ce929d0e0e4736, 1));
        assert_eq!(back.sampled, Some(false));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        for len in 0..120 {
            let v: Vec<u8> = (0..len)
                .map(|i| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    // Mostly hex and dashes, to reach the deep branches.
                    b"0123456789abcdef-fF"[(seed >> 33) as usize % 19]
                        .wrapping_add(if i % 17 == 0 { 1 } else { 0 })
                })
                .collect();
            let _ = parse_traceparent(&v);
            let _ = parse_b3_single(&v);
        }
    }
}

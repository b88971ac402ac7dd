//! An [`Entry`] as one JSON line. Field names are the README's ("Access
//! logs"); absent facts are `null`, so every line has the same keys.

use serde::Serialize;

use super::Entry;
use crate::proxy::Direction;

#[derive(Serialize)]
struct Line<'a> {
    /// RFC 3339, UTC, milliseconds.
    time: String,
    trace_id: Option<String>,
    request_id: Option<&'a str>,
    direction: &'static str,
    /// The caller's SPIFFE ID (inbound over mTLS).
    source_identity: Option<String>,
    source_address: String,
    destination: Option<&'a str>,
    route: Option<&'a str>,
    /// The upstream address of the (last) try.
    endpoint: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    status: u16,
    /// `x-weft-error`: why the sidecar answered itself.
    weft_error: Option<&'static str>,
    /// Tries beyond the first (routes with a retry policy).
    retries: Option<u32>,
    /// To the response head, and to the end of the response body.
    response_head_ms: f64,
    duration_ms: f64,
    bytes_received: u64,
    bytes_sent: u64,
}

fn millis(d: std::time::Duration) -> f64 {
    // Microsecond precision is plenty for a log and keeps lines short.
    (d.as_micros() as f64) / 1000.0
}

/// Appends `entry` as one JSON line (with its newline) to `out`.
pub fn write(entry: &Entry, out: &mut Vec<u8>) -> serde_json::Result<()> {
    let line = Line {
        time: humantime::format_rfc3339_millis(entry.time).to_string(),
        trace_id: entry.trace_id.map(|id| format!("{id:032x}")),
        request_id: entry.request_id.as_ref().and_then(|v| v.to_str().ok()),
        direction: match entry.direction {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        },
        source_identity: entry.source_identity.as_ref().map(|id| id.to_string()),
        source_address: entry.client.to_string(),
        destination: entry.destination.as_deref(),
        route: entry.route.as_ref().map(|r| r.route().name.as_str()),
        endpoint: entry.endpoint.as_ref().map(|e| e.authority.as_str()),
        method: entry.method.as_str(),
        path: entry.uri.path(),
        status: entry.status,
        weft_error: entry.cause,
        retries: entry.attempts.map(|a| a.saturating_sub(1)),
        response_head_ms: millis(entry.response_head),
        duration_ms: millis(entry.duration),
        bytes_received: entry.bytes_received,
        bytes_sent: entry.bytes_sent,
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.push(b'\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn a_line_is_one_json_object_with_every_field() {
        let entry = Entry {
            time: UNIX_EPOCH + Duration::from_millis(1_764_417_600_123),
            direction: Direction::Outbound,
            method: http::Method::GET,
            uri: "http://users/orders/7?secret=1".parse().unwrap(),
            request_id: Some(http::HeaderValue::from_static("r-1")),
            trace_id: Some(0x4bf92f3577b34da6a3ce929d0e0e4736),
            source_identity: None,
            client: "127.0.0.1:5000".parse().unwrap(),
            destination: Some("users".into()),
            route: None,
            endpoint: None,
            status: 503,
            cause: Some("connect-failed"),
            attempts: Some(2),
            response_head: Duration::from_micros(1500),
            duration: Duration::from_micros(1700),
            bytes_received: 0,
            bytes_sent: 42,
        };
        let mut out = Vec::new();
        write(&entry, &mut out).unwrap();
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["time"], "2025-11-29T12:00:00.123Z");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["path"], "/orders/7", "no query string in the log");
        assert_eq!(v["weft_error"], "connect-failed");
        assert_eq!(v["retries"], 1);
        assert_eq!(v["response_head_ms"], 1.5);
        assert!(v["route"].is_null() && v["endpoint"].is_null());
        assert_eq!(v.as_object().unwrap().len(), 18);
    }
}

//! An [`Entry`] as one JSON line. Field names are the README's ("Access
//! logs"); absent facts are `null`, so every line has the same keys. Written
//! by hand into the writer's buffer (no intermediate strings): the writer
//! formats every line of a busy sidecar.

use std::io::Write as _;

use super::Entry;
use crate::model::Direction;

/// Appends `entry` as one JSON line (with its newline) to `out`.
pub fn write(entry: &Entry, out: &mut Vec<u8>) -> std::io::Result<()> {
    write!(
        out,
        "{{\"time\":\"{}\"",
        humantime::format_rfc3339_millis(entry.time)
    )?;
    out.extend_from_slice(b",\"trace_id\":");
    match entry.trace_id {
        Some(id) => {
            out.push(b'"');
            out.extend((0..32).rev().map(|i| HEX[((id >> (i * 4)) & 0xf) as usize]));
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    field(
        out,
        "request_id",
        entry.request_id.as_ref().map(|v| v.as_bytes()),
    );
    let direction = match entry.direction {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
    };
    field(out, "direction", Some(direction.as_bytes()));
    out.extend_from_slice(b",\"source_identity\":");
    match &entry.source_identity {
        // A SPIFFE ID is a URI: nothing in it needs escaping.
        Some(id) => write!(out, "\"{id}\"")?,
        None => out.extend_from_slice(b"null"),
    }
    write!(out, ",\"source_address\":\"{}\"", entry.client)?;
    field(
        out,
        "destination",
        entry.destination.as_deref().map(str::as_bytes),
    );
    field(out, "route", entry.route.as_deref().map(str::as_bytes));
    let endpoint = entry.endpoint.as_ref().map(|e| e.as_str().as_bytes());
    field(out, "endpoint", endpoint);
    field(out, "method", Some(entry.method.as_str().as_bytes()));
    field(out, "path", Some(entry.uri.path().as_bytes()));
    out.extend_from_slice(b",\"status\":");
    integer(out, u64::from(entry.status));
    field(out, "weft_error", entry.cause.map(str::as_bytes));
    out.extend_from_slice(b",\"retries\":");
    match entry.attempts {
        Some(a) => integer(out, u64::from(a.saturating_sub(1))),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"response_head_ms\":");
    millis(out, entry.response_head);
    out.extend_from_slice(b",\"duration_ms\":");
    millis(out, entry.duration);
    out.extend_from_slice(b",\"bytes_received\":");
    integer(out, entry.bytes_received);
    out.extend_from_slice(b",\"bytes_sent\":");
    integer(out, entry.bytes_sent);
    out.extend_from_slice(b"}\n");
    Ok(())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Milliseconds with microsecond precision (plenty for a log, and short).
fn millis(out: &mut Vec<u8>, d: std::time::Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    integer(out, micros / 1000);
    let fraction = micros % 1000;
    if fraction > 0 {
        let digits = [fraction / 100, fraction / 10 % 10, fraction % 10];
        let used = if fraction % 10 != 0 {
            3
        } else if fraction % 100 != 0 {
            2
        } else {
            1
        };
        out.push(b'.');
        out.extend(digits[..used].iter().map(|d| b'0' + *d as u8));
    }
}

/// A decimal number, without the formatting machinery (the writer formats
/// a dozen numbers per line).
fn integer(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// `,"name":"value"` (escaped), or `,"name":null`.
fn field(out: &mut Vec<u8>, name: &str, value: Option<&[u8]>) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    match value {
        Some(value) => string(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string. Header values and paths are visible ASCII or opaque
/// bytes: quotes, backslashes and control bytes are escaped, bytes that are
/// not UTF-8 become U+FFFD, so every line parses.
fn string(out: &mut Vec<u8>, value: &[u8]) {
    out.push(b'"');
    let plain = |b: &u8| *b >= 0x20 && *b != b'"' && *b != b'\\' && *b < 0x7f;
    if value.iter().all(plain) {
        out.extend_from_slice(value);
    } else {
        for c in String::from_utf8_lossy(value).chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                c if (c as u32) < 0x20 || c == '\u{7f}' => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => {
                    let mut utf8 = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                }
            }
        }
    }
    out.push(b'"');
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
        assert_eq!(v["duration_ms"], 1.7);
        assert_eq!(v["bytes_sent"], 42);
        assert!(v["route"].is_null() && v["endpoint"].is_null());
        assert_eq!(v.as_object().unwrap().len(), 18);
    }

    #[test]
    fn durations_are_milliseconds_to_the_microsecond() {
        for (micros, text) in [
            (0, "0"),
            (1, "0.001"),
            (1500, "1.5"),
            (12_340, "12.34"),
            (7_000_000, "7000"),
        ] {
            let mut out = Vec::new();
            millis(&mut out, std::time::Duration::from_micros(micros));
            assert_eq!(String::from_utf8(out).unwrap(), text);
        }
    }

    #[test]
    fn odd_bytes_in_values_are_escaped_and_the_line_still_parses() {
        let mut out = Vec::new();
        string(&mut out, b"a\"b\\c\x01\xffd\x7f");
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, "a\"b\\c\u{1}\u{fffd}d\u{7f}");
    }
}

//! OTLP's `ExportTraceServiceRequest` in protobuf, written directly from
//! [`SpanRecord`]s: one resource (this sidecar), one scope, the batch's
//! spans. Attribute keys are static bytes and values are written from the
//! record's fields, so a span costs no allocation of its own here (the
//! generic path, SDK `SpanData` -> opentelemetry-proto structs -> prost,
//! measured ~17,000 instructions per span: an owned `String` per key and
//! value, grouping by resource and scope, nested length passes).
//!
//! Field numbers are opentelemetry-proto's (`trace/v1/trace.proto`,
//! `common/v1/common.proto`, `resource/v1/resource.proto`); the unit tests
//! decode the output with the generated types.

use super::span::{Cause, SpanKind, SpanRecord};

/// Protobuf wire types.
const LEN: u8 = 2;
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const FIXED32: u8 = 5;

fn tag(out: &mut Vec<u8>, field: u8, wire: u8) {
    out.push(field << 3 | wire);
}

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn varint_len(n: u64) -> usize {
    (64 - (n | 1).leading_zeros() as usize).div_ceil(7)
}

fn bytes_field(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    tag(out, field, LEN);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Writes `field` as a length-delimited message whose body `write` appends.
fn message(out: &mut Vec<u8>, field: u8, write: impl FnOnce(&mut Vec<u8>)) {
    tag(out, field, LEN);
    // Bodies here are small: reserve one length byte, widen if needed.
    let at = out.len();
    out.push(0);
    write(out);
    let len = out.len() - at - 1;
    if len < 0x80 {
        out[at] = len as u8;
    } else {
        let mut prefix = Vec::with_capacity(4);
        varint(&mut prefix, len as u64);
        out.splice(at..at + 1, prefix);
    }
}

/// The head of an attribute: `KeyValue { key = 1, value = 2: AnyValue }`
/// up to the `AnyValue`'s body, which is `any` bytes long.
fn attr_head(out: &mut Vec<u8>, key: &str, any: usize) {
    let kv = 1 + varint_len(key.len() as u64) + key.len() + 1 + varint_len(any as u64) + any;
    tag(out, ATTRIBUTES, LEN);
    varint(out, kv as u64);
    bytes_field(out, 1, key.as_bytes());
    tag(out, 2, LEN);
    varint(out, any as u64);
}

/// `AnyValue { string_value = 1 }`.
fn attr_str(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    attr_head(out, key, 1 + varint_len(value.len() as u64) + value.len());
    bytes_field(out, 1, value);
}

/// `AnyValue { int_value = 3 }`.
fn attr_int(out: &mut Vec<u8>, key: &str, value: i64) {
    attr_head(out, key, 1 + varint_len(value as u64));
    tag(out, 3, VARINT);
    varint(out, value as u64);
}

/// `Span.attributes` and `Resource.attributes` share field 9 / 1; the
/// helpers above write the span's (9). Resource attributes use field 1.
const ATTRIBUTES: u8 = 9;

/// Who is exporting: the resource of every span.
#[derive(Clone, Debug)]
pub struct Resource {
    pub service: String,
    pub instance: String,
}

/// One request body: the resource, the scope and `spans`.
pub fn encode(resource: &Resource, spans: &[SpanRecord], out: &mut Vec<u8>) {
    out.clear();
    // ExportTraceServiceRequest.resource_spans = 1
    message(out, 1, |out| {
        // ResourceSpans.resource = 1
        message(out, 1, |out| {
            for (key, value) in [
                ("service.name", resource.service.as_str()),
                ("service.instance.id", resource.instance.as_str()),
                ("service.version", env!("CARGO_PKG_VERSION")),
                ("telemetry.sdk.name", "weft-sidecar"),
            ] {
                // Resource.attributes = 1: written as a span attribute,
                // then its tag byte corrected.
                let at = out.len();
                attr_str(out, key, value.as_bytes());
                out[at] = 1 << 3 | LEN;
            }
        });
        // ResourceSpans.scope_spans = 2
        message(out, 2, |out| {
            // ScopeSpans.scope = 1
            message(out, 1, |out| {
                bytes_field(out, 1, b"weft-sidecar");
                bytes_field(out, 2, env!("CARGO_PKG_VERSION").as_bytes());
            });
            // Spans are a few hundred bytes: each is written to a scratch
            // buffer and copied after its length, cheaper than widening a
            // one-byte length in place.
            let mut scratch = Vec::with_capacity(1024);
            for span in spans {
                scratch.clear();
                encode_span(span, &mut scratch);
                // ScopeSpans.spans = 2
                bytes_field(out, 2, &scratch);
            }
        });
    });
}

fn encode_span(s: &SpanRecord, out: &mut Vec<u8>) {
    bytes_field(out, 1, &s.trace_id.to_be_bytes());
    bytes_field(out, 2, &s.span_id.to_be_bytes());
    if let Some(state) = &s.tracestate {
        bytes_field(out, 3, state.as_bytes());
    }
    if let Some(parent) = s.parent_id {
        bytes_field(out, 4, &parent.to_be_bytes());
    }
    // Span.name = 5: `{method}` or `{method} {route}`.
    let method = s.method_name();
    match s.route_name() {
        Some(route) => {
            tag(out, 5, LEN);
            varint(out, (method.len() + 1 + route.len()) as u64);
            out.extend_from_slice(method.as_bytes());
            out.push(b' ');
            out.extend_from_slice(route.as_bytes());
        }
        None => bytes_field(out, 5, method.as_bytes()),
    }
    tag(out, 6, VARINT);
    out.push(match s.kind {
        SpanKind::Server => 2,
        SpanKind::Client => 3,
    });
    tag(out, 7, FIXED64);
    out.extend_from_slice(&s.start_unix_nanos.to_le_bytes());
    tag(out, 8, FIXED64);
    out.extend_from_slice(&s.end_unix_nanos.to_le_bytes());

    attr_str(out, "http.request.method", method.as_bytes());
    if method == "_OTHER" {
        attr_str(
            out,
            "http.request.method_original",
            s.method.as_str().as_bytes(),
        );
    }
    attr_str(out, "url.path", s.uri.path().as_bytes());
    attr_str(out, "url.scheme", b"http");
    if let Some(version) = s.protocol_version() {
        attr_str(out, "network.protocol.version", version.as_bytes());
    }
    if let Some(authority) = s.authority() {
        attr_str(out, "server.address", authority.host().as_bytes());
        if let Some(port) = authority.port_u16() {
            attr_int(out, "server.port", i64::from(port));
        }
    }
    if let Some(id) = &s.request_id {
        attr_str(out, "weft.request_id", id.as_bytes());
    }
    if let Some(ip) = s.client_ip {
        let mut text = [0u8; 45];
        let len = {
            use std::io::Write as _;
            let mut cursor = std::io::Cursor::new(&mut text[..]);
            let _ = write!(cursor, "{ip}");
            cursor.position() as usize
        };
        attr_str(out, "client.address", &text[..len]);
    }
    if let Some(peer) = &s.peer {
        attr_str(out, "peer.service", peer.id.service().as_bytes());
        attr_str(out, "weft.peer.identity", peer.header.as_bytes());
    }
    if let Some(route) = s.route_name() {
        attr_str(out, "http.route", route.as_bytes());
    }
    if let Some(cluster) = &s.cluster {
        attr_str(out, "peer.service", cluster.as_bytes());
        attr_str(out, "weft.destination.cluster", cluster.as_bytes());
    }
    attr_int(out, "http.response.status_code", i64::from(s.status));
    if let Some(tries) = s.attempts.filter(|n| *n > 1) {
        // One span per request; its retries are counted on it.
        attr_int(out, "http.request.resend_count", i64::from(tries - 1));
    }
    let cause = s.cause.as_ref().map(Cause::as_bytes);
    if s.failed() {
        let status_text;
        let error_type = match cause {
            Some(cause) => cause,
            None => {
                status_text = s.status.to_string();
                status_text.as_bytes()
            }
        };
        attr_str(out, "error.type", error_type);
        if let Some(cause) = cause {
            attr_str(out, "weft.error", cause);
        }
        // Span.status = 15: Status { message = 2, code = 3 (ERROR) }
        message(out, 15, |out| {
            if let Some(cause) = cause {
                bytes_field(out, 2, cause);
            }
            tag(out, 3, VARINT);
            out.push(2);
        });
    }
    // Span.flags = 16: sampled, and whether the parent is remote.
    let mut flags: u32 = 0x01 | 0x100;
    if s.parent_id.is_some() {
        flags |= 0x200;
    }
    // Field 16 needs a two-byte tag.
    varint(out, 16 << 3 | u64::from(FIXED32));
    out.extend_from_slice(&flags.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_match_protobuf() {
        for (n, bytes) in [
            (0u64, &[0u8][..]),
            (1, &[1]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (300, &[0xac, 0x02]),
        ] {
            let mut out = Vec::new();
            varint(&mut out, n);
            assert_eq!(out, bytes);
            assert_eq!(varint_len(n), bytes.len());
        }
    }

    fn record(status: u16, cause: Option<Cause>) -> SpanRecord {
        SpanRecord {
            kind: SpanKind::Server,
            trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
            span_id: 0x1,
            parent_id: Some(0x00f067aa0ba902b7),
            tracestate: Some(http::HeaderValue::from_static("vendor=x")),
            method: http::Method::GET,
            uri: "/users/42?q=1".parse().unwrap(),
            version: http::Version::HTTP_11,
            host: Some(http::HeaderValue::from_static("users:8080")),
            request_id: Some(http::HeaderValue::from_static("abc")),
            client_ip: Some("10.0.0.7".parse().unwrap()),
            peer: None,
            route: None,
            cluster: None,
            start_unix_nanos: 1_000,
            end_unix_nanos: 2_500,
            status,
            cause,
            attempts: Some(3),
        }
    }

    #[test]
    fn the_generated_otlp_types_read_what_is_written() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        use prost::Message as _;

        let resource = Resource {
            service: "users".into(),
            instance: "users-1".into(),
        };
        // Enough spans that the outer lengths need several bytes.
        let spans: Vec<SpanRecord> = (0..40)
            .map(|_| record(200, None))
            .chain([record(
                503,
                Some(Cause::Refused(crate::error::ErrorKind::ConnectFailed)),
            )])
            .collect();
        let mut out = Vec::new();
        encode(&resource, &spans, &mut out);
        let request = ExportTraceServiceRequest::decode(&out[..]).unwrap();
        let rs = &request.resource_spans[0];
        let attr = |kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue], key: &str| {
            kvs.iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.value.clone()?.value)
        };
        assert_eq!(
            attr(&rs.resource.as_ref().unwrap().attributes, "service.name"),
            Some(Value::StringValue("users".into()))
        );
        let scope = &rs.scope_spans[0];
        assert_eq!(scope.scope.as_ref().unwrap().name, "weft-sidecar");
        assert_eq!(scope.spans.len(), 41);
        let ok = &scope.spans[0];
        assert_eq!(
            ok.trace_id,
            0x4bf92f3577b34da6a3ce929d0e0e4736u128.to_be_bytes()
        );
        assert_eq!(ok.span_id, 1u64.to_be_bytes());
        assert_eq!(ok.parent_span_id, 0x00f067aa0ba902b7u64.to_be_bytes());
        assert_eq!((ok.name.as_str(), ok.kind), ("GET", 2));
        assert_eq!(ok.trace_state, "vendor=x");
        assert_eq!(
            (ok.start_time_unix_nano, ok.end_time_unix_nano),
            (1_000, 2_500)
        );
        assert_eq!(ok.flags, 0x301);
        let text = |v: &str| Some(Value::StringValue(v.to_owned()));
        let expected = [
            ("url.path", text("/users/42")),
            ("server.address", text("users")),
            ("server.port", Some(Value::IntValue(8080))),
            ("client.address", text("10.0.0.7")),
            ("http.response.status_code", Some(Value::IntValue(200))),
            ("http.request.resend_count", Some(Value::IntValue(2))),
        ];
        for (key, value) in expected {
            assert_eq!(attr(&ok.attributes, key), value, "{key}");
        }
        assert!(ok.status.is_none() && attr(&ok.attributes, "error.type").is_none());
        let failed = &scope.spans[40];
        let status = failed.status.as_ref().unwrap();
        assert_eq!(
            (status.code, status.message.as_str()),
            (2, "connect-failed")
        );
        for key in ["weft.error", "error.type"] {
            assert_eq!(
                attr(&failed.attributes, key),
                text("connect-failed"),
                "{key}"
            );
        }
    }

    #[test]
    fn a_long_message_gets_a_wide_length_prefix() {
        let mut out = Vec::new();
        message(&mut out, 1, |out| out.extend_from_slice(&[7u8; 300]));
        assert_eq!(&out[..3], &[1 << 3 | LEN, 0xac, 0x02]);
        assert_eq!(out.len(), 303);
    }
}

//! A finished span as the request path leaves it: ids, times, and cheap
//! clones of what describes the request (reference-counted URI, header
//! values, route and cluster names, peer identity). Turning it into attributes and
//! protobuf is the export task's work (`otlp.rs`), off the request path.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderValue, Method, Uri, Version};

use crate::error::ErrorKind;
use crate::model::PeerIdentity;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Client,
}

/// The Weft error cause of an answer.
#[derive(Clone, Debug)]
pub enum Cause {
    /// This sidecar's own refusal, by its kind.
    Refused(ErrorKind),
    /// A peer sidecar's refusal, as its answer's `x-weft-error` says
    /// (`crate::error::peer_refusal_code`).
    Peer(HeaderValue),
}

impl Cause {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Cause::Refused(kind) => kind.code().as_bytes(),
            Cause::Peer(value) => value.as_bytes(),
        }
    }
}

pub struct SpanRecord {
    pub kind: SpanKind,
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_id: Option<u64>,
    pub tracestate: Option<HeaderValue>,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub host: Option<HeaderValue>,
    pub request_id: Option<HeaderValue>,
    /// Inbound: the caller's address.
    pub client_ip: Option<IpAddr>,
    /// Inbound with mTLS: the caller's verified identity.
    pub peer: Option<PeerIdentity>,
    /// Outbound: the names of the route and destination cluster `split`
    /// chose (a route's may be empty).
    pub route: Option<Arc<str>>,
    pub cluster: Option<Arc<str>>,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub status: u16,
    pub cause: Option<Cause>,
    /// Tries it took (`x-weft-attempts`), with a retry policy.
    pub attempts: Option<u16>,
}

impl SpanRecord {
    /// The method as the conventions name it: a known one, else `_OTHER`
    /// (with `http.request.method_original`), so names stay a bounded set.
    pub fn method_name(&self) -> &'static str {
        match self.method {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::DELETE => "DELETE",
            Method::HEAD => "HEAD",
            Method::OPTIONS => "OPTIONS",
            Method::PATCH => "PATCH",
            Method::TRACE => "TRACE",
            Method::CONNECT => "CONNECT",
            _ => "_OTHER",
        }
    }

    pub fn route_name(&self) -> Option<&str> {
        self.route.as_deref().filter(|name| !name.is_empty())
    }

    pub fn protocol_version(&self) -> Option<&'static str> {
        match self.version {
            Version::HTTP_10 => Some("1.0"),
            Version::HTTP_11 => Some("1.1"),
            Version::HTTP_2 => Some("2"),
            Version::HTTP_3 => Some("3"),
            _ => None,
        }
    }

    /// `Host`, else the URI's authority (HTTP/2).
    pub fn authority(&self) -> Option<http::uri::Authority> {
        match &self.host {
            Some(host) => host.to_str().ok()?.parse().ok(),
            None => self.uri.authority().cloned(),
        }
    }

    /// The conventions: a 5xx always, a 4xx on a CLIENT span; and any
    /// answer the sidecar made itself (it names a cause).
    pub fn failed(&self) -> bool {
        self.status >= 500
            || (self.status >= 400 && self.kind == SpanKind::Client)
            || self.cause.is_some()
    }
}

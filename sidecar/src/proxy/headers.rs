//! Proxy headers (RFC 9110 §7.6): strips hop-by-hop headers in both
//! directions, sets `x-forwarded-for` / `x-forwarded-proto`, and recognises
//! an HTTP/1.1 Upgrade (WebSocket), whose `Upgrade` / `Connection: upgrade`
//! are kept so the upstream can switch protocols (see `forward`).

use std::task::{Context, Poll};

use futures_util::future::{FutureExt, Map};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};
use tower::{Layer, Service};

use super::upgrade::ORIGINAL_PROTOCOL;
use crate::error::ProxyError;
use crate::model::{Direction, ProxyResponse};
use crate::table::request::ProxyRequest;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// The caller's SPIFFE ID as verified by the inbound mTLS handshake, for
/// the app (like Linkerd's `l5d-client-id`). Only the sidecar sets it.
pub const X_WEFT_PEER_IDENTITY: HeaderName = HeaderName::from_static("x-weft-peer-identity");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

#[derive(Clone, Copy, Debug, Default)]
pub struct ProxyHeadersLayer;

impl<S> Layer<S> for ProxyHeadersLayer {
    type Service = ProxyHeaders<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ProxyHeaders { inner }
    }
}

#[derive(Clone, Debug)]
pub struct ProxyHeaders<S> {
    inner: S,
}

/// True for an HTTP/1.1 request asking to switch protocols.
pub fn is_upgrade_request(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(header::UPGRADE)
        && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

// One bit per hop-by-hop header, to find which are present in one pass.
const HOP_CONNECTION: u8 = 1;
const HOP_KEEP_ALIVE: u8 = 1 << 1;
const HOP_PROXY_CONNECTION: u8 = 1 << 2;
const HOP_PROXY_AUTHORIZATION: u8 = 1 << 3;
const HOP_TRANSFER_ENCODING: u8 = 1 << 4;
const HOP_TE: u8 = 1 << 5;
const HOP_UPGRADE: u8 = 1 << 6;

fn hop_by_hop_present(headers: &HeaderMap) -> u8 {
    let mut present = 0;
    for name in headers.keys() {
        present |= if name == header::CONNECTION {
            HOP_CONNECTION
        } else if name == KEEP_ALIVE {
            HOP_KEEP_ALIVE
        } else if name == PROXY_CONNECTION {
            HOP_PROXY_CONNECTION
        } else if name == header::PROXY_AUTHORIZATION {
            HOP_PROXY_AUTHORIZATION
        } else if name == header::TRANSFER_ENCODING {
            HOP_TRANSFER_ENCODING
        } else if name == header::TE {
            HOP_TE
        } else if name == header::UPGRADE {
            HOP_UPGRADE
        } else {
            0
        };
    }
    present
}

/// True for the common `Connection: keep-alive`, which names no header
/// beyond `Keep-Alive` (always removed).
fn only_keep_alive(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::CONNECTION).iter();
    matches!(
        (values.next(), values.next()),
        (Some(v), None) if v.as_bytes().eq_ignore_ascii_case(b"keep-alive")
    )
}

/// Removes the headers that only concern one connection. With `upgrading`,
/// keeps `Upgrade` and sends `Connection: upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    // One scan instead of a lookup per name: usually none or only
    // `Connection` is present.
    let present = hop_by_hop_present(headers);
    // Headers the sender named in Connection are hop-by-hop too. This is
    // rare, so the common path allocates nothing.
    if present & HOP_CONNECTION != 0 && !only_keep_alive(headers) {
        // `keep-alive` (the usual token) is removed below anyway; skipping
        // it here saves parsing it into an allocated custom name.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|n| !(upgrading && n == header::UPGRADE))
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    if present & HOP_CONNECTION != 0 {
        headers.remove(header::CONNECTION);
    }
    // A bit clear means the header was absent from the start (removing the
    // named ones above cannot add any), so its removal would be a no-op.
    if present & HOP_KEEP_ALIVE != 0 {
        headers.remove(KEEP_ALIVE);
    }
    if present & HOP_PROXY_CONNECTION != 0 {
        headers.remove(PROXY_CONNECTION);
    }
    if present & HOP_PROXY_AUTHORIZATION != 0 {
        headers.remove(header::PROXY_AUTHORIZATION);
    }
    if present & HOP_TRANSFER_ENCODING != 0 {
        headers.remove(header::TRANSFER_ENCODING);
    }
    // TE is hop-by-hop, but `TE: trailers` must reach gRPC servers.
    if present & HOP_TE != 0 {
        if let Some(te) = headers.get(header::TE)
            && !te.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        {
            headers.remove(header::TE);
        } else if headers.contains_key(header::TE) {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    if upgrading {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if present & HOP_UPGRADE != 0 {
        headers.remove(header::UPGRADE);
    }
}

type OnResponse = fn(Result<ProxyResponse, ProxyError>) -> Result<ProxyResponse, ProxyError>;

fn on_response(result: Result<ProxyResponse, ProxyError>) -> Result<ProxyResponse, ProxyError> {
    result.map(|mut resp| {
        let upgrading = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        strip_hop_by_hop(resp.headers_mut(), upgrading);
        resp
    })
}

impl<S, T> Service<ProxyRequest<T>> for ProxyHeaders<S>
where
    S: Service<ProxyRequest<T>, Response = ProxyResponse, Error = ProxyError>,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = Map<S::Future, OnResponse>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: ProxyRequest<T>) -> Self::Future {
        let upgrading = is_upgrade_request(req.http.version(), req.http.headers());
        if upgrading {
            req.ctx.upgrade = Some(hyper::upgrade::on(&mut req.http));
        }
        let headers = req.http.headers_mut();
        strip_hop_by_hop(headers, upgrading);
        append_forwarded_for(headers, &req.ctx.client_ip);
        if !headers.contains_key(X_FORWARDED_PROTO) {
            // What the app's own client spoke: mTLS between sidecars is
            // the mesh's business, not the request's scheme.
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        }
        if req.ctx.direction == Direction::Inbound {
            // Never trust a caller's copy: only a verified handshake says who
            // called.
            match &req.ctx.peer_identity {
                Some(peer) => {
                    headers.insert(X_WEFT_PEER_IDENTITY, peer.header.clone());
                }
                None => {
                    headers.remove(X_WEFT_PEER_IDENTITY);
                }
            }
            // What the app is spoken to comes from the service's own
            // configuration (`static_target`), never from this header of
            // older calling sidecars; it never reaches the app.
            headers.remove(ORIGINAL_PROTOCOL);
        }
        self.inner.call(req).map(on_response as OnResponse)
    }
}

/// `x-forwarded-for: <existing>, <client ip>`.
pub fn append_forwarded_for(headers: &mut HeaderMap, client_ip: &HeaderValue) {
    match headers.get(X_FORWARDED_FOR) {
        None => {
            headers.insert(X_FORWARDED_FOR, client_ip.clone());
        }
        Some(existing) => {
            let mut v = Vec::with_capacity(existing.len() + 2 + client_ip.len());
            v.extend_from_slice(existing.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(client_ip.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                headers.insert(X_FORWARDED_FOR, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
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
    fn hop_by_hop_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic eA=="),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "gzip"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn plain_keep_alive_connection_is_removed() {
        let mut h = map(&[
            ("connection", "Keep-Alive"),
            ("keep-alive", "timeout=5"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
        let mut h = map(&[("x-kept", "yes")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[test]
    fn te_trailers_survives_for_grpc() {
        let mut h = map(&[("te", "trailers")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["te"], "trailers");
        let mut h = map(&[("te", "gzip, trailers")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn upgrade_keeps_upgrade_and_connection() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade_request(Version::HTTP_11, &h));
        assert!(!is_upgrade_request(Version::HTTP_2, &h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn forwarded_for_appends() {
        let ip = HeaderValue::from_static("10.0.0.2");
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, &ip);
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.2");
        let mut h = map(&[("x-forwarded-for", "1.2.3.4")]);
        append_forwarded_for(&mut h, &ip);
        assert_eq!(h[X_FORWARDED_FOR], "1.2.3.4, 10.0.0.2");
    }
}

//! `x-forwarded-for`, `-proto` and `-host` at the edge (RFC 7239's de
//! facto headers), by the number of proxies trusted in front of the
//! gateway.
//!
//! With no trusted hop the connection's peer is the client: whatever the
//! request claims about earlier hops is dropped, and the gateway says what
//! it saw. With N trusted hops the last N entries of `x-forwarded-for` were
//! appended by those proxies and are kept (the first of them is the client
//! as the outermost proxy saw it); entries before them, which anyone could
//! have written, are dropped. Their `-proto` and `-host` are kept when
//! present. The peer's address is then appended by `proxy::headers`, so
//! the app can read the client as the first entry.

use std::task::{Context, Poll};

use http::HeaderValue;
use http::header::HeaderMap;
use tower::{Layer, Service};

use super::policy::SharedListenerPolicy;
use crate::outbound::route::request_authority;
use crate::proxy::headers::{X_FORWARDED_FOR, X_FORWARDED_PROTO};
use crate::table::request::ProxyRequest;

pub const X_FORWARDED_HOST: http::HeaderName = http::HeaderName::from_static("x-forwarded-host");

#[derive(Clone)]
pub struct ForwardedLayer {
    policy: SharedListenerPolicy,
}

impl ForwardedLayer {
    pub fn new(policy: SharedListenerPolicy) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for ForwardedLayer {
    type Service = Forwarded<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Forwarded {
            policy: self.policy.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct Forwarded<S> {
    policy: SharedListenerPolicy,
    inner: S,
}

/// Keeps the last `trusted` entries of `x-forwarded-for` (over all its
/// lines), as one line; none: the header goes.
pub fn keep_trusted_entries(headers: &mut HeaderMap, trusted: u32) {
    if trusted == 0 || !headers.contains_key(X_FORWARDED_FOR) {
        headers.remove(X_FORWARDED_FOR);
        return;
    }
    let entries: Vec<String> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect();
    let keep = &entries[entries.len().saturating_sub(trusted as usize)..];
    headers.remove(X_FORWARDED_FOR);
    if let Ok(value) = HeaderValue::from_str(&keep.join(", "))
        && !keep.is_empty()
    {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

impl<S> Service<ProxyRequest> for Forwarded<S>
where
    S: Service<ProxyRequest>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: ProxyRequest) -> Self::Future {
        let policy = self.policy.load();
        let host = request_authority(&req.http).and_then(|a| HeaderValue::from_str(a).ok());
        let headers = req.http.headers_mut();
        keep_trusted_entries(headers, policy.trusted_hops);
        let trust_earlier = policy.trusted_hops > 0;
        if !(trust_earlier && headers.contains_key(X_FORWARDED_PROTO)) {
            let proto = if policy.https { "https" } else { "http" };
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        }
        if !(trust_earlier && headers.contains_key(X_FORWARDED_HOST)) {
            match host {
                Some(host) => headers.insert(X_FORWARDED_HOST, host),
                None => headers.remove(X_FORWARDED_HOST),
            };
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded_for(lines: &[&str], trusted: u32) -> Option<String> {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(X_FORWARDED_FOR, HeaderValue::from_str(line).unwrap());
        }
        keep_trusted_entries(&mut headers, trusted);
        headers
            .get(X_FORWARDED_FOR)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn no_trusted_hop_drops_what_the_client_claims() {
        assert_eq!(forwarded_for(&["6.6.6.6"], 0), None);
    }

    #[test]
    fn trusted_hops_keep_only_the_entries_their_proxies_appended() {
        // A client forged 6.6.6.6; the one trusted proxy appended 1.2.3.4.
        assert_eq!(
            forwarded_for(&["6.6.6.6, 1.2.3.4"], 1).as_deref(),
            Some("1.2.3.4")
        );
        assert_eq!(
            forwarded_for(&["6.6.6.6", "1.2.3.4", "10.0.0.2"], 2).as_deref(),
            Some("1.2.3.4, 10.0.0.2")
        );
        // Fewer entries than trusted hops: all kept.
        assert_eq!(forwarded_for(&["1.2.3.4"], 3).as_deref(), Some("1.2.3.4"));
        assert_eq!(forwarded_for(&[], 3), None);
    }
}

//! A gateway listener routes only the hosts bound to it: any other Host is
//! answered 404 here, before a route table is consulted, so an outside
//! client cannot reach a mesh service by its internal name (`Host: users`).

use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use super::policy::SharedListenerPolicy;
use crate::error::{ErrorKind, ProxyError};
use crate::model::ProxyResponse;
use crate::outbound::route::{refused, request_authority};
use crate::table::request::ProxyRequest;
use crate::table::strip_port;

#[derive(Clone)]
pub struct BoundHostsLayer {
    policy: SharedListenerPolicy,
}

impl BoundHostsLayer {
    pub fn new(policy: SharedListenerPolicy) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for BoundHostsLayer {
    type Service = BoundHosts<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BoundHosts {
            policy: self.policy.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct BoundHosts<S> {
    policy: SharedListenerPolicy,
    inner: S,
}

/// Whether `authority` (with or without port, any case) is one of `hosts`.
pub fn is_bound(hosts: &std::collections::HashSet<String>, authority: &str) -> bool {
    let host = strip_port(authority);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        hosts.contains(&host.to_ascii_lowercase())
    } else {
        hosts.contains(host)
    }
}

impl<S> Service<ProxyRequest> for BoundHosts<S>
where
    S: Service<ProxyRequest, Response = ProxyResponse, Error = ProxyError>,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = Either<Ready<Result<ProxyResponse, ProxyError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ProxyRequest) -> Self::Future {
        let refusal = match request_authority(&req.http) {
            Some(authority) if is_bound(&self.policy.load().hosts, authority) => None,
            Some(authority) => Some(ProxyError::new(
                ErrorKind::NoRoute,
                format!(
                    "this gateway listener serves no host {:?}",
                    strip_port(authority)
                ),
            )),
            None => Some(ProxyError::new(
                ErrorKind::BadRequest,
                "request names no host: send a Host header",
            )),
        };
        match refusal {
            None => Either::Right(self.inner.call(req)),
            Some(e) => {
                refused(&req, None, &e);
                Either::Left(ready(Err(e)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_bound_hosts_pass_whatever_their_port_or_case() {
        let hosts = ["api.example.com".to_string()].into_iter().collect();
        assert!(is_bound(&hosts, "api.example.com"));
        assert!(is_bound(&hosts, "API.Example.com:8443"));
        assert!(!is_bound(&hosts, "users"));
        assert!(!is_bound(&hosts, "api.example.com.evil.test"));
    }
}

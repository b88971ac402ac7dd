//! Applies the route's rewrites: path prefix, Host / :authority, and the
//! request and response header mutations.

use std::task::{Context, Poll};

use futures_util::future::Either;
use http::header;
use http::uri::{Authority, PathAndQuery, Uri};
use tower::{Layer, Service};

use crate::error::{ErrorKind, ProxyError};
use crate::model::{BoxFuture, ProxyResponse};
use crate::table::PrefixRewrite;
use crate::table::request::{Concrete, ProxyRequest, RouteRef};

#[derive(Clone, Copy, Debug, Default)]
pub struct RewriteLayer;

impl<S> Layer<S> for RewriteLayer {
    type Service = Rewrite<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Rewrite { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Rewrite<S> {
    inner: S,
}

/// `/api/v1/users/42?x=1` with prefix `/api/v1/users/` -> `/` gives `/42?x=1`.
pub fn rewrite_path(pq: &PathAndQuery, rw: &PrefixRewrite) -> Option<PathAndQuery> {
    let rest = pq.path().strip_prefix(rw.matched_prefix.as_str())?;
    let mut path = String::with_capacity(rw.replacement.len() + rest.len() + 1);
    path.push_str(&rw.replacement);
    // Avoid `//` when both sides bring a slash, and an empty path.
    if path.ends_with('/') && rest.starts_with('/') {
        path.push_str(&rest[1..]);
    } else {
        path.push_str(rest);
    }
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    if let Some(q) = pq.query() {
        path.push('?');
        path.push_str(q);
    }
    PathAndQuery::try_from(path).ok()
}

fn set_uri(uri: &Uri, authority: Option<Authority>, pq: Option<PathAndQuery>) -> Option<Uri> {
    let mut parts = uri.clone().into_parts();
    if let Some(pq) = pq {
        parts.path_and_query = Some(pq);
    }
    if parts.authority.is_some()
        && let Some(a) = authority
    {
        parts.authority = Some(a);
    }
    Uri::from_parts(parts).ok()
}

/// Rewrites the request as its route says; whether the route also edits
/// the response.
fn apply(req: &mut ProxyRequest<Concrete<RouteRef>>) -> bool {
    let route = req.target.route.route();
    let action = &route.action;
    let new_pq = match (&action.prefix_rewrite, req.http.uri().path_and_query()) {
        (Some(rw), Some(pq)) => rewrite_path(pq, rw),
        _ => None,
    };
    let new_authority = action
        .host_rewrite
        .as_ref()
        .and_then(|h| Authority::try_from(h.as_bytes()).ok());
    if (new_pq.is_some() || (new_authority.is_some() && req.http.uri().authority().is_some()))
        && let Some(uri) = set_uri(req.http.uri(), new_authority, new_pq)
    {
        *req.http.uri_mut() = uri;
    }
    if let Some(host) = &action.host_rewrite {
        req.http.headers_mut().insert(header::HOST, host.clone());
    }
    if !route.request_headers.is_empty() {
        route.request_headers.apply(req.http.headers_mut());
    }
    !route.response_headers.is_empty()
}

impl<S> Service<ProxyRequest<Concrete<RouteRef>>> for Rewrite<S>
where
    S: Service<ProxyRequest<Concrete<RouteRef>>, Response = ProxyResponse, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = Either<S::Future, BoxFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: ProxyRequest<Concrete<RouteRef>>) -> Self::Future {
        if !apply(&mut req) {
            return Either::Left(self.inner.call(req));
        }
        // Only routes with response mutations pay for the box.
        let route = req.target.route.clone();
        let fut = self.inner.call(req);
        Either::Right(Box::pin(async move {
            match fut.await {
                Ok(mut resp) => {
                    route.route().response_headers.apply(resp.headers_mut());
                    Ok(resp)
                }
                Err(error) => Err(edit_rate_limit_refusal(error, route)),
            }
        }))
    }
}

/// A refusal by the destination's rate limit (the layer right below)
/// answers for the route: its response gets the route's response header
/// mutations, as the upstream's answers do (it always has, when the limit
/// made its 429 itself). Failures further down (timeouts, an open breaker,
/// an unreachable endpoint) are the sidecar's, and keep their own headers.
fn edit_rate_limit_refusal(mut error: ProxyError, route: RouteRef) -> ProxyError {
    let limited = matches!(
        error.kind,
        ErrorKind::RateLimited | ErrorKind::RateLimitUnavailable { .. }
    );
    if limited {
        error.header_edits = Some(Box::new(move |headers| {
            route.route().response_headers.apply(headers)
        }));
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(prefix: &str, repl: &str, path: &str) -> String {
        let pq = PathAndQuery::try_from(path).unwrap();
        rewrite_path(
            &pq,
            &PrefixRewrite {
                matched_prefix: prefix.into(),
                replacement: repl.into(),
            },
        )
        .unwrap()
        .to_string()
    }

    #[test]
    fn prefix_rewrites() {
        assert_eq!(rw("/api/v1/users/", "/", "/api/v1/users/42"), "/42");
        assert_eq!(rw("/api/v1/users/", "/", "/api/v1/users/"), "/");
        assert_eq!(rw("/api/v1/users", "/", "/api/v1/users/42"), "/42");
        assert_eq!(rw("/old", "/new", "/old/x?a=1"), "/new/x?a=1");
        assert_eq!(rw("/old/", "", "/old/x"), "/x");
    }

    #[test]
    fn a_rate_limit_refusal_gets_the_routes_response_header_mutations_and_others_do_not() {
        use std::sync::Arc;

        use http::{HeaderName, HeaderValue};

        use crate::table::{
            Destination, HeaderMutation, Route, RouteAction, RouteMatch, VirtualHost,
        };
        let route = crate::table::request::RouteRef {
            vhost: Arc::new(VirtualHost {
                name: "users/users".into(),
                routes: vec![Route {
                    name: "all".into(),
                    matcher: RouteMatch::any(),
                    action: RouteAction {
                        destination: Destination::Cluster("users".into()),
                        prefix_rewrite: None,
                        host_rewrite: None,
                        timeout: None,
                        retry: None,
                    },
                    request_headers: HeaderMutation::default(),
                    response_headers: HeaderMutation {
                        set: vec![(
                            HeaderName::from_static("x-served-by"),
                            HeaderValue::from_static("mesh"),
                        )],
                        ..HeaderMutation::default()
                    },
                    cors: None,
                    compression: None,
                    cache: None,
                    validation: None,
                }],
            }),
            index: 0,
        };
        let limited = crate::ratelimit::headers::limited(
            "per-key",
            &HeaderValue::from_static("\"per-key\";q=1;w=1"),
            std::time::Duration::from_secs(1),
        );
        let response = edit_rate_limit_refusal(limited, route.clone()).to_response();
        assert_eq!(response.headers()["x-served-by"], "mesh");
        assert_eq!(response.headers()["x-weft-error"], "rate-limited");
        let timeout = ProxyError::new(ErrorKind::Timeout, "no answer");
        let response = edit_rate_limit_refusal(timeout, route).to_response();
        assert!(response.headers().get("x-served-by").is_none());
    }
}

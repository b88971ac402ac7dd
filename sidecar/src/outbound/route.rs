//! Picks the virtual host by authority (`users`, `users:80`, `users.weft`,
//! or the authority of an absolute-form URI) and the first matching route in
//! it. Loads the current routing table once; the request keeps that table
//! until it finishes.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::{Either, Ready, ready};
use http::header;
use tower::{Layer, Service};

use crate::access_log::{self, Record};
use crate::error::{ErrorKind, ProxyError};
use crate::metrics::requests::{cause_of, method_index};
use crate::metrics::unrouted::UNROUTED;
use crate::model::Exchange;
use crate::model::{Answer, ProxyResponse};
use crate::request_body::Side;
use crate::table::RoutingTable;
use crate::table::request::{ProxyRequest, RouteRef, Routed};

#[derive(Clone)]
pub struct RouteLayer {
    table: Arc<ArcSwap<RoutingTable>>,
}

impl RouteLayer {
    pub fn new(table: Arc<ArcSwap<RoutingTable>>) -> Self {
        Self { table }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Route {
            table: self.table.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct Route<S> {
    table: Arc<ArcSwap<RoutingTable>>,
    inner: S,
}

/// The authority a request is addressed to: the URI's (absolute form, or
/// HTTP/2 `:authority`), else the Host header.
pub fn request_authority<B>(req: &http::Request<B>) -> Option<&str> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty())
}

fn select(table: &Arc<RoutingTable>, req: &ProxyRequest) -> Result<RouteRef, ProxyError> {
    let Some(authority) = request_authority(&req.http) else {
        return Err(ProxyError::new(
            ErrorKind::BadRequest,
            "request names no destination: send a Host header or an absolute URI",
        ));
    };
    let Some(vhost) = table.virtual_host(authority) else {
        return Err(ProxyError::new(
            ErrorKind::NoRoute,
            format!(
                "no route table serves host {:?} (known services answer to NAME or NAME.weft)",
                crate::table::strip_port(authority)
            ),
        ));
    };
    let Some(index) = vhost.route_for(&req.http) else {
        return Err(ProxyError::new(
            ErrorKind::NoRoute,
            format!(
                "no route of {} matches {} {}",
                vhost.name,
                req.http.method(),
                req.http.uri().path()
            ),
        ));
    };
    Ok(RouteRef {
        vhost: vhost.clone(),
        index,
    })
}

impl<S> Service<ProxyRequest> for Route<S>
where
    S: Service<ProxyRequest<Routed>, Response = ProxyResponse, Error = ProxyError>,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = Either<Ready<Result<ProxyResponse, ProxyError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ProxyRequest) -> Self::Future {
        let table = self.table.load_full();
        match select(&table, &req) {
            Ok(route) => {
                let routed = Routed { table, route };
                Either::Right(self.inner.call(req.to(routed)))
            }
            Err(e) => {
                refused(&req, None, &e);
                Either::Left(ready(Err(e)))
            }
        }
    }
}

/// `req` is answered with `error` before it has a destination: counted in
/// [`UNROUTED`] and logged (a refusal is a failure, always logged).
pub(crate) fn refused(req: &impl Exchange, route: Option<&RouteRef>, error: &ProxyError) {
    let status = error.kind.status();
    let code = error.kind.code();
    UNROUTED.count(method_index(req.http().method()), status);
    UNROUTED.record_refusal(cause_of(error.kind), status);
    if let Some(log) = access_log::installed() {
        let route = route.map(|r| r.route().name.clone());
        let record = Arc::new(Record::new(log, req, route, None, None));
        record.add_bytes(Side::Response, error.reason.len() as u64 + 1);
        record.answered(Answer {
            status: status.as_u16(),
            cause: Some(code),
            attempts: None,
            response_head: Duration::ZERO,
        });
        // Dropped here: the line goes to the writer.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_from_uri_or_host() {
        let r = http::Request::get("http://users/x").body(()).unwrap();
        assert_eq!(request_authority(&r), Some("users"));
        let r = http::Request::get("/x")
            .header("host", "users:80")
            .body(())
            .unwrap();
        assert_eq!(request_authority(&r), Some("users:80"));
        let r = http::Request::get("/x").body(()).unwrap();
        assert_eq!(request_authority(&r), None);
    }
}

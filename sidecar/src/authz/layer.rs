//! The tower layer: a denied request fails here (403 `denied`, answered by
//! `error_response`) and never reaches the app; an allowed one goes on
//! untouched. The intentions are those of the request's inbound snapshot
//! (`inbound::snapshot`), read without a load of their own: the
//! request hands them over through [`AuthzTarget`].

use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use super::AuthzPolicy;
use crate::error::{ErrorKind, ProxyError};
use crate::model::{Exchange, ProxyResponse};

/// What authorizing reads of a request beyond [`Exchange`]: the intentions
/// it is judged by.
pub trait AuthzTarget: Exchange {
    fn authz_policy(&self) -> &AuthzPolicy;
}

#[derive(Clone, Copy, Debug, Default)]
pub struct AuthorizeLayer;

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authorize { inner }
    }
}

#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
}

impl<S, R> Service<R> for Authorize<S>
where
    R: AuthzTarget,
    S: Service<R, Response = ProxyResponse, Error = ProxyError>,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = Either<S::Future, Ready<Result<ProxyResponse, ProxyError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let source = req.peer_identity().map(|p| p.id.service());
        match req.authz_policy().decide(source, req.http()) {
            Ok(()) => Either::Left(self.inner.call(req)),
            Err(denial) => {
                tracing::info!(
                    caller = source.unwrap_or("-"),
                    client = %req.client_addr(),
                    method = %req.http().method(),
                    path = req.http().uri().path(),
                    rule = %denial.origin,
                    "request denied"
                );
                Either::Right(ready(Err(ProxyError::new(
                    ErrorKind::Denied,
                    denial.reason,
                ))))
            }
        }
    }
}

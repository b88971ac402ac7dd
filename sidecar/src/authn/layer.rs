//! The tower layer: checks each request against the service's current JWT
//! policy before it goes further down the stack.
//!
//! A denied request never reaches the next layer; it fails here with
//! [`AuthnError::into_proxy_error`] (its kind and `WWW-Authenticate`), which
//! `error_response` answers like every other refusal.
//! An admitted one continues with forged claim headers removed, claim
//! headers set from the verified token, and `Arc<VerifiedClaims>` in its
//! extensions. The policy is the one in the request's inbound snapshot
//! (`inbound::snapshot`: the same version the intentions and rate
//! limits below judge it by); with no JWT policy, requests pass and only
//! `x-weft-jwt-*` headers are removed.
//!
//! The common case (keys at hand) adds no allocation for the future; only a
//! request waiting for a key refetch is boxed.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use http::Request;
use tower::{Layer, Service};

use super::authenticator::{Admission, Authenticator, Pending, RequestHead, strip_claim_headers};
use super::error::AuthnError;
use crate::body::RequestBody;
use crate::error::ProxyError;
use crate::model::{Exchange, ProxyResponse};

/// What JWT authentication reads of a request beyond [`Exchange`]: the
/// JWT policy it is judged by (`None`: the service has none).
pub trait AuthnTarget: Exchange {
    /// The policy and the HTTP request, borrowed apart: admitting a request
    /// rewrites its headers while the policy is in hand.
    fn authenticator_and_http(
        &mut self,
    ) -> (Option<&Arc<Authenticator>>, &mut Request<RequestBody>);
}

/// Checks each request's credentials against the JWT policy of its
/// inbound snapshot.
#[derive(Clone, Copy, Debug, Default)]
pub struct JwtAuthnLayer;

impl<S> Layer<S> for JwtAuthnLayer {
    type Service = JwtAuthn<S>;
    fn layer(&self, inner: S) -> Self::Service {
        JwtAuthn { inner }
    }
}

#[derive(Clone)]
pub struct JwtAuthn<S> {
    inner: S,
}

pub type WaitForKeys = Pin<Box<dyn Future<Output = Result<ProxyResponse, ProxyError>> + Send>>;

fn denied(
    authenticator: &Authenticator,
    error: AuthnError,
    client: SocketAddr,
    req: &Request<RequestBody>,
) -> ProxyError {
    // Debug: a scanner sending junk tokens must not flood the log; the
    // caller gets the reason in the response.
    tracing::debug!(
        client = %client,
        path = req.uri().path(),
        error = %error,
        "request denied by the JWT policy"
    );
    error.into_proxy_error(authenticator.service())
}

impl<S, R> Service<R> for JwtAuthn<S>
where
    R: AuthnTarget,
    S: Service<R, Response = ProxyResponse, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = Either<Either<S::Future, Ready<Result<ProxyResponse, ProxyError>>>, WaitForKeys>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: R) -> Self::Future {
        let client = req.client_addr();
        // A borrow of the snapshot's policy: no reference count traffic,
        // except for a request that has to wait for keys.
        let (authenticator, http) = req.authenticator_and_http();
        let Some(authenticator) = authenticator else {
            strip_claim_headers(http.headers_mut(), &[]);
            return Either::Left(Either::Left(self.inner.call(req)));
        };
        match authenticator.check(RequestHead::of(http)) {
            Ok(admission) => {
                authenticator.admit(admission, http);
                Either::Left(Either::Left(self.inner.call(req)))
            }
            Err(Pending::Denied(error)) => {
                let error = denied(authenticator, error, client, http);
                Either::Left(Either::Right(ready(Err(error))))
            }
            Err(Pending::NeedsKeys(remote, first_error)) => {
                // Take the ready service for this request (tower's
                // clone-and-swap), leaving a fresh clone behind.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let authenticator = authenticator.clone();
                Either::Right(Box::pin(async move {
                    let verdict: Result<Admission, AuthnError> = if remote.refetch().await {
                        match authenticator.check(RequestHead::of(req.http())) {
                            Ok(admission) => Ok(admission),
                            Err(Pending::Denied(e) | Pending::NeedsKeys(_, e)) => Err(e),
                        }
                    } else {
                        Err(first_error)
                    };
                    match verdict {
                        Ok(admission) => {
                            authenticator.admit(admission, req.http_mut());
                            inner.call(req).await
                        }
                        Err(error) => Err(denied(&authenticator, error, client, req.http())),
                    }
                }))
            }
        }
    }
}

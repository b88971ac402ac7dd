//! The tower layer: checks each request against the service's current JWT
//! policy before it goes further down the stack.
//!
//! A denied request never reaches the next layer; it fails here with
//! [`AuthnError::into_proxy_error`] (its kind and `WWW-Authenticate`), which
//! `error_response` answers like every other refusal.
//! An admitted one continues with forged claim headers removed, claim
//! headers set from the verified token, and `Arc<VerifiedClaims>` in its
//! extensions. The policy is read with one atomic load per request, so the
//! discovery client can swap it at any time ([`AuthnPolicy::set`]); with no
//! policy set, requests pass and only `x-weft-jwt-*` headers are removed.
//!
//! The common case (keys at hand) adds no allocation for the future; only a
//! request waiting for a key refetch is boxed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwapOption;
use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use super::authenticator::{Admission, Authenticator, Pending, RequestHead, strip_claim_headers};
use super::error::AuthnError;
use crate::error::ProxyError;
use crate::proxy::{ProxyRequest, ProxyResponse};

/// The service's current JWT policy, shared by the layer and whoever
/// updates it. Cheap to clone.
#[derive(Clone, Default)]
pub struct AuthnPolicy {
    current: Arc<ArcSwapOption<Authenticator>>,
}

impl AuthnPolicy {
    pub fn new(authenticator: Option<Authenticator>) -> Self {
        Self {
            current: Arc::new(ArcSwapOption::from_pointee(authenticator)),
        }
    }

    /// Replaces the policy for every request from now on (`None`: no JWT
    /// checks).
    pub fn set(&self, authenticator: Option<Authenticator>) {
        self.current.store(authenticator.map(Arc::new));
    }

    pub fn get(&self) -> Option<Arc<Authenticator>> {
        self.current.load_full()
    }
}

#[derive(Clone)]
pub struct JwtAuthnLayer {
    policy: AuthnPolicy,
}

impl JwtAuthnLayer {
    pub fn new(policy: AuthnPolicy) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for JwtAuthnLayer {
    type Service = JwtAuthn<S>;
    fn layer(&self, inner: S) -> Self::Service {
        JwtAuthn {
            policy: self.policy.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct JwtAuthn<S> {
    policy: AuthnPolicy,
    inner: S,
}

pub type WaitForKeys = Pin<Box<dyn Future<Output = Result<ProxyResponse, ProxyError>> + Send>>;

fn denied(authenticator: &Authenticator, error: AuthnError, req: &ProxyRequest) -> ProxyError {
    // Debug: a scanner sending junk tokens must not flood the log; the
    // caller gets the reason in the response.
    tracing::debug!(
        client = %req.ctx.client_addr,
        path = req.http.uri().path(),
        error = %error,
        "request denied by the JWT policy"
    );
    error.into_proxy_error(authenticator.service())
}

impl<S> Service<ProxyRequest> for JwtAuthn<S>
where
    S: Service<ProxyRequest, Response = ProxyResponse, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = Either<Either<S::Future, Ready<Result<ProxyResponse, ProxyError>>>, WaitForKeys>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: ProxyRequest) -> Self::Future {
        // A guard, not a clone: no reference count traffic per request.
        let current = self.policy.current.load();
        let Some(authenticator) = current.as_ref() else {
            strip_claim_headers(req.http.headers_mut(), &[]);
            return Either::Left(Either::Left(self.inner.call(req)));
        };
        match authenticator.check(RequestHead::of(&req.http)) {
            Ok(admission) => {
                authenticator.admit(admission, &mut req.http);
                Either::Left(Either::Left(self.inner.call(req)))
            }
            Err(Pending::Denied(error)) => {
                let error = denied(authenticator, error, &req);
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
                        match authenticator.check(RequestHead::of(&req.http)) {
                            Ok(admission) => Ok(admission),
                            Err(Pending::Denied(e) | Pending::NeedsKeys(_, e)) => Err(e),
                        }
                    } else {
                        Err(first_error)
                    };
                    match verdict {
                        Ok(admission) => {
                            authenticator.admit(admission, &mut req.http);
                            inner.call(req).await
                        }
                        Err(error) => Err(denied(&authenticator, error, &req)),
                    }
                }))
            }
        }
    }
}

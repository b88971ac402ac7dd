//! The tower layer: judges a request's `Origin` against the policy the
//! request hands over ([`CorsTarget`]), answers preflights, and sets (or
//! strips) the CORS headers of the answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, ready};
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, HeaderMap,
    ORIGIN, VARY,
};
use http::{HeaderValue, Response, StatusCode};
use tower::{Layer, Service};

use super::metrics::{INBOUND, OUTBOUND, OriginCounts};
use super::policy::CorsPolicy;
use crate::body::ProxyBody;
use crate::error::{ErrorKind, ProxyError};
use crate::matcher::is_cors_preflight;
use crate::model::{BoxFuture, Exchange, ProxyResponse};

/// What CORS reads of a request beyond [`Exchange`]: the policy that
/// applies to it (its route's, or its service's), if any.
pub trait CorsTarget: Exchange {
    fn cors_policy(&self) -> Option<&Arc<CorsPolicy>>;
}

#[derive(Clone, Copy)]
pub struct CorsLayer {
    counts: &'static OriginCounts,
}

impl CorsLayer {
    /// Route policies, on the app's calls out.
    pub fn outbound() -> Self {
        Self { counts: &OUTBOUND }
    }

    /// The service's policy, on calls to the app.
    pub fn inbound() -> Self {
        Self { counts: &INBOUND }
    }
}

impl<S> Layer<S> for CorsLayer {
    type Service = CorsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CorsService {
            inner,
            counts: self.counts,
        }
    }
}

#[derive(Clone)]
pub struct CorsService<S> {
    inner: S,
    counts: &'static OriginCounts,
}

impl<S, R> Service<R> for CorsService<S>
where
    R: CorsTarget,
    S: Service<R, Response = ProxyResponse, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    /// A request no policy judges goes on in the inner future itself, so
    /// an unconfigured route pays one `None` check and no larger future;
    /// a judged one is boxed with its verdict.
    type Future = Either<S::Future, BoxFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let Some(policy) = req.cors_policy() else {
            return Either::Left(self.inner.call(req));
        };
        let Some(origin) = req.http().headers().get(ORIGIN) else {
            return Either::Left(self.inner.call(req));
        };
        let allowed = policy.allows(origin);
        self.counts.count(allowed);
        let verdict = Verdict {
            policy: policy.clone(),
            origin: origin.clone(),
            allowed,
        };
        if is_cors_preflight(req.http()) {
            return Either::Right(Box::pin(ready(verdict.preflight())));
        }
        Either::Right(Box::pin(Decorated {
            inner: self.inner.call(req),
            verdict: Some(verdict),
        }))
    }
}

/// The policy's judgement of one request's origin.
struct Verdict {
    policy: Arc<CorsPolicy>,
    origin: HeaderValue,
    allowed: bool,
}

impl Verdict {
    /// The answer to a preflight: 204 with the lists, or the refusal.
    fn preflight(&self) -> Result<ProxyResponse, ProxyError> {
        if !self.allowed {
            return Err(ProxyError::new(
                ErrorKind::CorsOriginRefused,
                "this origin may not call this route (CORS)",
            )
            .with_header(VARY, HeaderValue::from_static("Origin")));
        }
        let mut response = Response::new(ProxyBody::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let headers = response.headers_mut();
        self.allow(headers);
        let policy = &self.policy;
        headers.insert(ACCESS_CONTROL_ALLOW_METHODS, policy.allow_methods.clone());
        if let Some(allowed) = &policy.allow_headers {
            headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, allowed.clone());
        }
        if let Some(max_age) = &policy.max_age {
            headers.insert(ACCESS_CONTROL_MAX_AGE, max_age.clone());
        }
        Ok(response)
    }

    /// The allowing headers every answer to an allowed origin carries.
    fn allow(&self, headers: &mut HeaderMap) {
        let policy = &self.policy;
        let allow_origin = if policy.any_origin {
            HeaderValue::from_static("*")
        } else {
            self.origin.clone()
        };
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        if policy.allow_credentials {
            headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        vary_on_origin(headers);
    }

    /// The app's (or a refusal's) answer, with the policy's CORS headers in
    /// place of any it had.
    fn decorate(self, headers: &mut HeaderMap) {
        for name in [
            ACCESS_CONTROL_ALLOW_ORIGIN,
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            ACCESS_CONTROL_EXPOSE_HEADERS,
        ] {
            headers.remove(name);
        }
        if !self.allowed {
            vary_on_origin(headers);
            return;
        }
        self.allow(headers);
        if let Some(exposed) = &self.policy.expose_headers {
            headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, exposed.clone());
        }
    }
}

/// Adds `Vary: Origin` unless the answer already varies on it (or on
/// everything).
fn vary_on_origin(headers: &mut HeaderMap) {
    let varies = headers.get_all(VARY).iter().any(|value| {
        value.to_str().is_ok_and(|list| {
            list.split(',')
                .map(str::trim)
                .any(|name| name == "*" || name.eq_ignore_ascii_case("origin"))
        })
    });
    if !varies {
        headers.append(VARY, HeaderValue::from_static("Origin"));
    }
}

pin_project_lite::pin_project! {
    /// The inner service's answer, decorated when it arrives. A refusal
    /// made below (a 503, a 429) gets the headers too, so the page can
    /// read why.
    struct Decorated<F> {
        #[pin]
        inner: F,
        verdict: Option<Verdict>,
    }
}

impl<F> Future for Decorated<F>
where
    F: Future<Output = Result<ProxyResponse, ProxyError>>,
{
    type Output = Result<ProxyResponse, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = std::task::ready!(this.inner.poll(cx));
        if let Some(verdict) = this.verdict.take() {
            match &mut result {
                Ok(response) => verdict.decorate(response.headers_mut()),
                Err(error) => {
                    let mut headers = HeaderMap::new();
                    verdict.decorate(&mut headers);
                    error.headers.extend(
                        headers
                            .iter()
                            .map(|(name, value)| (name.clone(), value.clone())),
                    );
                }
            }
        }
        Poll::Ready(result)
    }
}

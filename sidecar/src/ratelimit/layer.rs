//! The `ratelimit` tower layers. Outbound (after `rewrite`): the limits of
//! the cluster `split` chose, keyed with this sidecar's own service as the
//! source. Inbound (after `authorize`): the service's own limits, keyed
//! with the caller's verified identity. A refused request fails here with
//! its typed refusal (429, or the fail-closed status: `headers.rs`), which
//! `error_response` answers; it never reaches the layers below, the
//! upstream or the app. A request with no limits costs one load.
//!
//! The layers read the request through [`RateLimitTarget`]: its limits,
//! the route it took and who sent it.

use std::borrow::Cow;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use tower::{Layer, Service};

use super::{RateLimiter, RequestFacts};
use crate::error::ProxyError;
use crate::model::{BoxFuture, Exchange, ProxyResponse};

/// What rate limiting reads of a request beyond [`Exchange`].
pub trait RateLimitTarget: Exchange {
    /// Outbound: the limits of the cluster `split` chose, if it has any.
    fn cluster_rate_limits(&self) -> Option<&Arc<RateLimiter>>;
    /// Inbound: the service's own limits, from the request's inbound
    /// snapshot.
    fn inbound_rate_limits(&self) -> Option<&Arc<RateLimiter>>;
    /// The route the request took: its name (empty when it has none) and
    /// its position in its virtual host.
    fn route_name_and_index(&self) -> Option<(&str, usize)>;
}

/// The route's name for the `route` key (its position in its table when
/// it has none); only worked out when a limit keys on it.
fn route_name(req: &impl RateLimitTarget, limiter: &RateLimiter) -> Option<Cow<'static, str>> {
    if !limiter.keys_on_route() {
        return None;
    }
    req.route_name_and_index().map(|(name, index)| {
        if name.is_empty() {
            Cow::Owned(index.to_string())
        } else {
            Cow::Owned(name.to_owned())
        }
    })
}

/// The caller's service for the `source` key: this sidecar's own
/// (outbound), else the verified peer's (inbound).
fn source_of<'a>(req: &'a impl Exchange, own: Option<&'a str>) -> Option<&'a str> {
    own.or_else(|| req.peer_identity().map(|p| p.id.service()))
}

fn facts<'a>(
    req: &'a impl Exchange,
    route: Option<&'a str>,
    source: Option<&'a str>,
) -> RequestFacts<'a> {
    RequestFacts {
        route,
        source,
        headers: req.http().headers(),
        client_ip: req.client_ip().to_str().unwrap_or_default(),
    }
}

/// Local limits only: decided here and now, then `inner` is called
/// directly (no boxed future, no await on the request path).
fn locally_limited_call<S, R>(
    limiter: &RateLimiter,
    source: Option<&str>,
    inner: &mut S,
    req: R,
) -> Either<S::Future, BoxFuture>
where
    R: RateLimitTarget,
    S: Service<R, Response = ProxyResponse, Error = ProxyError>,
{
    let route = route_name(&req, limiter);
    let decision = limiter.check_local(&facts(&req, route.as_deref(), source_of(&req, source)));
    match decision {
        Ok(()) => Either::Left(inner.call(req)),
        Err(refusal) => {
            let error = refusal.into_error();
            Either::Right(Box::pin(async move { Err(error) }))
        }
    }
}

/// With a global limit: runs `limiter` (which may wait for Redis) on
/// `req`, then `inner` if every limit allows it.
fn limited_call<S, R>(
    limiter: Arc<RateLimiter>,
    source: Option<Arc<str>>,
    inner: &mut S,
    req: R,
) -> BoxFuture
where
    // Sync: the request is borrowed across the wait for Redis.
    R: RateLimitTarget + Sync,
    S: Service<R, Response = ProxyResponse, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    // The clone that was polled ready goes into the future (tower's rule).
    let clone = inner.clone();
    let mut inner = std::mem::replace(inner, clone);
    Box::pin(async move {
        let route = route_name(&req, &limiter);
        let decision = limiter
            .check(&facts(
                &req,
                route.as_deref(),
                source_of(&req, source.as_deref()),
            ))
            .await;
        match decision {
            Ok(()) => inner.call(req).await,
            Err(refusal) => Err(refusal.into_error()),
        }
    })
}

/// Where a request's limits come from: the side of the proxy.
pub trait LimitSource: Clone {
    /// The limits for `req` and, when the side knows it regardless of the
    /// request, the `source` key's value.
    fn limits_for(
        &self,
        req: &impl RateLimitTarget,
    ) -> Option<(Arc<RateLimiter>, Option<Arc<str>>)>;
}

/// Outbound: the destination's limits (`Cluster.rate_limits`, on the
/// cluster `split` chose); the source is this sidecar's own service.
#[derive(Clone)]
pub struct Outbound {
    service: Arc<str>,
}

impl LimitSource for Outbound {
    fn limits_for(
        &self,
        req: &impl RateLimitTarget,
    ) -> Option<(Arc<RateLimiter>, Option<Arc<str>>)> {
        let limiter = req.cluster_rate_limits()?.clone();
        Some((limiter, Some(self.service.clone())))
    }
}

/// Inbound: the service's own limits (`InboundPolicy.rate_limits`, from
/// the request's inbound snapshot); the source is the caller's verified
/// identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct Inbound;

impl LimitSource for Inbound {
    fn limits_for(
        &self,
        req: &impl RateLimitTarget,
    ) -> Option<(Arc<RateLimiter>, Option<Arc<str>>)> {
        let limiter = req.inbound_rate_limits()?;
        Some((limiter.clone(), None))
    }
}

#[derive(Clone)]
pub struct RateLimitLayer<L> {
    source: L,
}

pub type OutboundRateLimitLayer = RateLimitLayer<Outbound>;
pub type InboundRateLimitLayer = RateLimitLayer<Inbound>;

impl RateLimitLayer<Outbound> {
    /// `service`: this sidecar's, the `source` key of its calls.
    pub fn new(service: &str) -> Self {
        Self {
            source: Outbound {
                service: service.into(),
            },
        }
    }
}

impl RateLimitLayer<Inbound> {
    pub fn inbound() -> Self {
        Self { source: Inbound }
    }
}

impl<S, L: LimitSource> Layer<S> for RateLimitLayer<L> {
    type Service = RateLimit<S, L>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            source: self.source.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct RateLimit<S, L> {
    source: L,
    inner: S,
}

impl<S, L, R> Service<R> for RateLimit<S, L>
where
    R: RateLimitTarget + Sync,
    S: Service<R, Response = ProxyResponse, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    L: LimitSource,
{
    type Response = ProxyResponse;
    type Error = ProxyError;
    type Future = Either<S::Future, BoxFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        match self.source.limits_for(&req) {
            None => Either::Left(self.inner.call(req)),
            Some((limiter, source)) if limiter.is_local_only() => {
                locally_limited_call(&limiter, source.as_deref(), &mut self.inner, req)
            }
            Some((limiter, source)) => {
                Either::Right(limited_call(limiter, source, &mut self.inner, req))
            }
        }
    }
}

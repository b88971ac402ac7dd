//! The service's inbound policy as the data path reads it: who may call
//! (intentions), who the end user must be (JWT), how often (rate limits),
//! what the listener accepts (mTLS mode) and what to speak to the app. It
//! lives in the [`super::RoutingTable`], so the xDS client publishes a new
//! policy and the routes in one swap of one `Arc`, and a request that has
//! loaded the table (the inbound snapshot layer, once per request) sees
//! every part of one policy: never new intentions with old JWT rules.

use std::fmt;
use std::sync::Arc;

use crate::authn::Authenticator;
use crate::authz::AuthzPolicy;
use crate::compression::CompressionPolicy;
use crate::cors::CorsPolicy;
use crate::mtls::MtlsMode;
use crate::ratelimit::RateLimiter;
use crate::table::cluster::Protocol;
use crate::validation::ValidationPolicy;

/// One compiled, immutable inbound policy.
pub struct InboundPolicy {
    pub authz: AuthzPolicy,
    /// `None`: no `jwt` section, so no JWT checks.
    pub authn: Option<Arc<Authenticator>>,
    /// `None`: no inbound rate limits.
    pub rate_limits: Option<Arc<RateLimiter>>,
    /// Read by the inbound listener once per accepted connection.
    pub mtls: MtlsMode,
    /// What to speak to the app (`inbound/static_target.rs`).
    pub app_protocol: Protocol,
    /// `None`: no CORS for the service (`crate::cors`).
    pub cors: Option<Arc<CorsPolicy>>,
    /// `None`: no compression for the service (`crate::compression`).
    pub compression: Option<Arc<CompressionPolicy>>,
    /// `None`: no response cache for the service (`crate::cache`).
    pub cache: Option<Arc<crate::cache::CachePolicy>>,
    /// `None`: no validation for the service (`crate::validation`).
    pub validation: Option<Arc<ValidationPolicy>>,
}

impl Default for InboundPolicy {
    /// No policy (before the first, or an empty answer): allow every
    /// caller, no JWT, no limits, mTLS only, `auto` to the app.
    fn default() -> Self {
        Self {
            authz: AuthzPolicy::default(),
            authn: None,
            rate_limits: None,
            mtls: MtlsMode::Strict,
            app_protocol: Protocol::Auto,
            cors: None,
            compression: None,
            cache: None,
            validation: None,
        }
    }
}

impl fmt::Debug for InboundPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundPolicy")
            .field("authz", &self.authz)
            .field("jwt", &self.authn.is_some())
            .field("rate_limits", &self.rate_limits.is_some())
            .field("mtls", &self.mtls)
            .field("app_protocol", &self.app_protocol)
            .field("cors", &self.cors.is_some())
            .field("compression", &self.compression.is_some())
            .field("cache", &self.cache.is_some())
            .field("validation", &self.validation.is_some())
            .finish()
    }
}

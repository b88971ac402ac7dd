//! The service's inbound policy compiled as one unit: intentions (for the
//! authorize layer), JWT authentication (for the authn layer) and the mTLS
//! mode (for the inbound listener). Either all of it compiles and all of it
//! is swapped in, or the policy is refused (NACK) with every problem and
//! the last good one keeps serving, all three parts of it.

use weft_proto::config::v1 as pb;

use crate::authn::{Authenticator, AuthnConfig, ConfigErrors};
use crate::authz::AuthzPolicy;
use crate::mtls::MtlsMode;
use crate::ratelimit::RateLimiter;
use crate::table::cluster::Protocol;
use crate::upstream::Dns;

/// A policy ready to be swapped in.
pub(crate) struct CompiledInbound {
    pub authz: AuthzPolicy,
    /// `None`: the policy has no `jwt` section, so no JWT checks.
    pub authn: Option<Authenticator>,
    pub mtls: MtlsMode,
    /// `None`: the policy sets no rate limits.
    pub rate_limits: Option<RateLimiter>,
    /// What to speak to the app (`inbound/static_target.rs`).
    pub app_protocol: Protocol,
    /// `None`: the policy sets no CORS.
    pub cors: Option<crate::cors::CorsPolicy>,
    /// `None`: the policy sets no compression.
    pub compression: Option<crate::compression::CompressionPolicy>,
    /// `None`: the policy sets no response cache.
    pub cache: Option<crate::cache::CachePolicy>,
    /// `None`: the policy sets no validation.
    pub validation: Option<crate::validation::ValidationPolicy>,
}

impl Default for CompiledInbound {
    /// No policy (an empty answer, or before the first): allow every
    /// caller, no JWT, mTLS only.
    fn default() -> Self {
        Self {
            authz: AuthzPolicy::default(),
            authn: None,
            mtls: MtlsMode::Strict,
            rate_limits: None,
            app_protocol: Protocol::Auto,
            cors: None,
            compression: None,
            cache: None,
            validation: None,
        }
    }
}

/// Compiles `policy`. `previous` is the JWT policy in force: key sets
/// fetched from a URL whose settings did not change are kept, so an update
/// causes no refetch and no moment without keys. Errors are `field:
/// reason`, with the `jwt` section's fields under `jwt.` as in the policy
/// document. Must run inside a tokio runtime when the policy fetches a
/// JWKS from a URL (the xDS client does).
pub(crate) fn compile(
    policy: &pb::InboundPolicy,
    previous: Option<&Authenticator>,
    dns: &Dns,
) -> Result<CompiledInbound, Vec<String>> {
    let mut errors = Vec::new();
    let authz = crate::authz::compile(policy)
        .map_err(|e| errors.extend(e))
        .ok();
    let mtls = MtlsMode::from_proto(policy.mtls_mode)
        .map_err(|e| errors.push(format!("mtls_mode: {e}")))
        .ok();
    let app_protocol = crate::xds::compile::protocol(policy.app_protocol)
        .map_err(|e| errors.push(format!("app_protocol: {e}")))
        .ok();
    let rate_limits = match &policy.rate_limits {
        None => None,
        Some(limits) => RateLimiter::compile(limits, &format!("in:{}", policy.service))
            .map_err(|e| errors.extend(e))
            .ok(),
    };
    let cors = policy.cors.as_ref().and_then(|cors| {
        let mut errs = crate::nack::Errors(Vec::new());
        let compiled = crate::cors::compile(cors, "cors", &mut errs);
        errors.extend(errs.0);
        compiled
    });
    let compression = policy.compression.as_ref().and_then(|compression| {
        let mut errs = crate::nack::Errors(Vec::new());
        let compiled = crate::compression::compile(compression, "compression", &mut errs);
        errors.extend(errs.0);
        compiled
    });
    let cache = policy.cache.as_ref().and_then(|cache| {
        let mut errs = crate::nack::Errors(Vec::new());
        let compiled = crate::cache::compile(cache, "cache", &mut errs);
        errors.extend(errs.0);
        compiled
    });
    let validation = policy.validation.as_ref().and_then(|validation| {
        let mut errs = crate::nack::Errors(Vec::new());
        let compiled = crate::validation::compile(validation, "validation", &mut errs);
        errors.extend(errs.0);
        compiled
    });
    let jwt = policy.jwt.as_ref().and_then(|jwt| {
        AuthnConfig::from_proto(jwt)
            .and_then(|config| config.validate().map(|()| config))
            .map_err(|e| errors.extend(jwt_errors(&e)))
            .ok()
    });
    // Only once everything else is known to be good: building the
    // authenticator starts the JWKS fetches.
    let (Some(authz), Some(mtls), Some(app_protocol), true) =
        (authz, mtls, app_protocol, errors.is_empty())
    else {
        return Err(errors);
    };
    let authn = match jwt {
        None => None,
        Some(config) => {
            let built = match previous {
                Some(previous) if previous.service() == policy.service => {
                    previous.update(&config, dns.clone())
                }
                _ => Authenticator::with_dns(&policy.service, &config, dns.clone()),
            };
            Some(built.map_err(|e| jwt_errors(&e))?)
        }
    };
    Ok(CompiledInbound {
        authz,
        authn,
        mtls,
        rate_limits,
        app_protocol,
        cors,
        compression,
        cache,
        validation,
    })
}

fn jwt_errors(errors: &ConfigErrors) -> Vec<String> {
    errors
        .0
        .iter()
        .map(|e| format!("{}: {}", jwt_field(&e.field), e.reason))
        .collect()
}

/// `providers[0].jwks` -> `jwt.providers[0].jwks`; the section as a whole
/// (`(document)`, or serde's `?` where the JSON broke off) -> `jwt`.
fn jwt_field(field: &str) -> String {
    match field {
        "(document)" | "" | "?" | "." => "jwt".to_owned(),
        f if f.starts_with('(') => format!("jwt {f}"),
        f => format!("jwt.{f}"),
    }
}

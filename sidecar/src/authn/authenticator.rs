//! The verification core: given a request's method, URI and headers, decide
//! whether it may pass, and with which verified claims. Independent of the
//! body type and of tower, so it is tested with plain `http::Request<()>`s.

use std::sync::Arc;

use http::header::{HeaderMap, HeaderName};
use http::request::Parts;
use http::{Method, Request, Uri};

use super::claims::{VerifiedClaims, header_value};
use super::compile::{CLAIM_HEADER_PREFIX, Compiled, compile};
use super::config::AuthnConfig;
use super::error::{AuthnError, AuthnErrorKind, ConfigError, ConfigErrors};
use super::provider::{Provider, ProviderKeys, Rejection, unverified_issuer};
use super::rules::{self, Rule};
use super::token::TokenSource;
use crate::upstream::Dns;

/// A compiled JWT policy for one service. Cheap to clone (one `Arc`);
/// immutable: a new policy is a new `Authenticator` (see
/// [`Authenticator::update`]), swapped in whole.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    service: Box<str>,
    providers: Vec<Provider>,
    rules: Vec<Rule>,
    sources: Vec<TokenSource>,
    strip: Vec<HeaderName>,
}

/// What the authenticator reads from a request.
#[derive(Clone, Copy, Debug)]
pub struct RequestHead<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
}

impl<'a> RequestHead<'a> {
    pub fn of<B>(request: &'a Request<B>) -> Self {
        Self {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
        }
    }
}

impl<'a> From<&'a Parts> for RequestHead<'a> {
    fn from(parts: &'a Parts) -> Self {
        Self {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
        }
    }
}

/// A request the policy lets through: with the claims of its verified
/// token, or without any (a public path). Apply it to the request with
/// [`Authenticator::admit`] before forwarding.
#[derive(Debug)]
pub struct Admission {
    claims: Option<Arc<VerifiedClaims>>,
    /// Index of the provider that verified the token.
    provider: Option<usize>,
    /// Index of the token source the token came from.
    source: Option<usize>,
}

impl Admission {
    fn anonymous() -> Self {
        Self {
            claims: None,
            provider: None,
            source: None,
        }
    }

    /// The verified claims; `None` on a public path without a valid token.
    pub fn claims(&self) -> Option<&Arc<VerifiedClaims>> {
        self.claims.as_ref()
    }
}

/// A verdict that may still change after a key refetch.
pub(crate) enum Pending {
    Denied(AuthnError),
    /// Refetch these keys, then check again; if that does not help, answer
    /// with the error.
    NeedsKeys(Arc<super::jwks::RemoteJwks>, AuthnError),
}

impl Authenticator {
    /// Compiles `config` for `service` (the `realm` of challenges) and
    /// starts fetching remote key sets. Must be called inside a tokio
    /// runtime when the policy has a JWKS `uri`. Resolves JWKS hosts with a
    /// resolver of its own; see [`Authenticator::with_dns`].
    pub fn new(service: &str, config: &AuthnConfig) -> Result<Self, ConfigErrors> {
        Self::build(service, config, Dns::default(), None)
    }

    /// Like [`Authenticator::new`], resolving JWKS hosts with the sidecar's
    /// shared resolver.
    pub fn with_dns(service: &str, config: &AuthnConfig, dns: Dns) -> Result<Self, ConfigErrors> {
        Self::build(service, config, dns, None)
    }

    /// A new policy for the same service that keeps the fetched key sets
    /// (and their fetch tasks) of every JWKS URL whose settings did not
    /// change, so a policy update causes no refetch and no window without
    /// keys.
    pub fn update(&self, config: &AuthnConfig, dns: Dns) -> Result<Self, ConfigErrors> {
        Self::build(&self.inner.service, config, dns, Some(self))
    }

    fn build(
        service: &str,
        config: &AuthnConfig,
        dns: Dns,
        previous: Option<&Authenticator>,
    ) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        if service.is_empty()
            || !service
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            errors.push(ConfigError::new(
                "(service)",
                format!("`{service}` is not a service name (letters, digits, `.`, `_`, `-`)"),
            ));
        }
        let compiled = compile(config);
        let mut compiled = match (compiled, errors.is_empty()) {
            (Ok(c), true) => c,
            (Ok(_), false) => return Err(ConfigErrors(errors)),
            (Err(ConfigErrors(more)), _) => {
                errors.extend(more);
                return Err(ConfigErrors(errors));
            }
        };
        let has_remote = compiled
            .providers
            .iter()
            .any(|p| matches!(p.keys, ProviderKeys::Remote(_)));
        if has_remote && tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigErrors(vec![ConfigError::new(
                "(runtime)",
                "a JWKS `uri` is fetched in the background: build the Authenticator inside a tokio runtime",
            )]));
        }
        for provider in &mut compiled.providers {
            let ProviderKeys::Remote(remote) = &mut provider.keys else {
                continue;
            };
            match previous.and_then(|p| p.remote_with(remote.settings())) {
                Some(kept) => *remote = kept,
                None => remote.start(dns.clone()),
            }
        }
        let Compiled {
            providers,
            rules,
            sources,
            strip,
        } = compiled;
        Ok(Self {
            inner: Arc::new(Inner {
                service: service.into(),
                providers,
                rules,
                sources,
                strip,
            }),
        })
    }

    fn remote_with(
        &self,
        settings: &super::jwks::RemoteSettings,
    ) -> Option<Arc<super::jwks::RemoteJwks>> {
        self.inner.providers.iter().find_map(|p| match &p.keys {
            ProviderKeys::Remote(r) if r.settings() == settings => Some(r.clone()),
            _ => None,
        })
    }

    /// The service name, used as the challenges' realm.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// Decides on a request. When the token names a key that a remote key
    /// set lacks (a key rotation at the IdP) or the keys were never fetched,
    /// waits for a rate-limited refetch (at most the fetch timeout) and
    /// decides again.
    pub async fn authenticate(&self, head: RequestHead<'_>) -> Result<Admission, AuthnError> {
        match self.check(head) {
            Ok(admission) => Ok(admission),
            Err(Pending::Denied(e)) => Err(e),
            Err(Pending::NeedsKeys(remote, e)) => {
                if !remote.refetch().await {
                    return Err(e);
                }
                match self.check(head) {
                    Ok(admission) => Ok(admission),
                    Err(Pending::Denied(e) | Pending::NeedsKeys(_, e)) => Err(e),
                }
            }
        }
    }

    /// Decides with the keys at hand, without waiting.
    pub(crate) fn check(&self, head: RequestHead<'_>) -> Result<Admission, Pending> {
        let Some(path) = weft_rules::path::normalized(head.uri.path()) else {
            return Err(Pending::Denied(AuthnError::new(
                AuthnErrorKind::PathNotNormalized,
                "the path has dot segments, `//`, backslashes or encoded slashes: send it normalized",
            )));
        };
        let rule = rules::find(&self.inner.rules, head.method, &path);
        let public = rule.is_some_and(|r| r.public);
        let verdict = self.verify_token(head, rule);
        match verdict {
            Ok(admission) => Ok(admission),
            // A public path does not judge tokens: a bad or unverifiable
            // one just brings no claims.
            Err(_) if public => Ok(Admission::anonymous()),
            Err(e) => Err(e),
        }
    }

    fn verify_token(
        &self,
        head: RequestHead<'_>,
        rule: Option<&Rule>,
    ) -> Result<Admission, Pending> {
        let mut found = None;
        for (index, source) in self.inner.sources.iter().enumerate() {
            if let Some(token) = source
                .find(head.uri, head.headers)
                .map_err(Pending::Denied)?
            {
                found = Some((index, token));
                break;
            }
        }
        let Some((source, token)) = found else {
            return Err(Pending::Denied(AuthnError::new(
                AuthnErrorKind::Missing,
                "this path needs a token and the request has none",
            )));
        };
        let provider = self.provider_for(&token, source).map_err(Pending::Denied)?;
        let claims = match self.inner.providers[provider].verify(&token) {
            Ok(claims) => claims,
            Err(Rejection::Denied(e)) => return Err(Pending::Denied(e)),
            Err(Rejection::NeedsKeys(remote, e)) => return Err(Pending::NeedsKeys(remote, e)),
        };
        if let Some(roles) = rule.and_then(|r| r.roles.as_ref())
            && let Err(missing) = roles.check(&claims)
        {
            let rule_name = rule.and_then(|r| r.name.as_deref()).unwrap_or("this path");
            return Err(Pending::Denied(AuthnError::new(
                AuthnErrorKind::InsufficientRole,
                format!("{rule_name} requires the role(s) {}", missing.join(", ")),
            )));
        }
        let name = self.inner.providers[provider].name.clone();
        Ok(Admission {
            claims: Some(Arc::new(VerifiedClaims::new(name, claims))),
            provider: Some(provider),
            source: Some(source),
        })
    }

    /// The provider for a token found in `source`: the only one reading
    /// that place, or the one whose issuer the token names.
    fn provider_for(&self, token: &str, source: usize) -> Result<usize, AuthnError> {
        let mut candidates = self
            .inner
            .providers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.sources.contains(&source));
        let first = candidates.next().map(|(i, _)| i);
        let Some(first) = first else {
            // Every source belongs to some provider.
            return Err(AuthnError::new(
                AuthnErrorKind::Missing,
                "no provider reads this token",
            ));
        };
        if candidates.next().is_none() {
            return Ok(first);
        }
        let iss = unverified_issuer(token)?;
        let iss = iss.as_deref().unwrap_or_default();
        self.inner
            .providers
            .iter()
            .position(|p| p.sources.contains(&source) && &*p.issuer == iss)
            .ok_or_else(|| {
                AuthnError::new(
                    AuthnErrorKind::WrongIssuer,
                    "the token's `iss` is none of the configured providers' issuers",
                )
            })
    }

    /// Makes the request's headers what the app may trust: removes every
    /// header a claim map could set (and any `x-weft-jwt-*`), sets them from
    /// the verified claims, and removes the token's header if its provider
    /// does not forward it.
    pub fn apply_headers(&self, admission: &Admission, headers: &mut HeaderMap) {
        strip_claim_headers(headers, &self.inner.strip);
        let (Some(claims), Some(provider)) = (&admission.claims, admission.provider) else {
            return;
        };
        let provider = &self.inner.providers[provider];
        for (claim, header) in &provider.claim_headers {
            if let Some(value) = claims.get(claim).and_then(header_value) {
                headers.insert(header.clone(), value);
            }
        }
        if !provider.forward_token
            && let Some(header) = admission
                .source
                .and_then(|s| self.inner.sources[s].header())
        {
            headers.remove(header);
        }
    }

    /// [`Authenticator::apply_headers`], and the claims put in the request's
    /// extensions (as `Arc<VerifiedClaims>`) for later layers.
    pub fn admit<B>(&self, admission: Admission, request: &mut Request<B>) {
        self.apply_headers(&admission, request.headers_mut());
        if let Some(claims) = admission.claims {
            request.extensions_mut().insert(claims);
        }
    }
}

/// Removes `x-weft-jwt-*` and the policy's other claim headers. The usual
/// request has none: one scan without allocating, then nothing.
pub(crate) fn strip_claim_headers(headers: &mut HeaderMap, also: &[HeaderName]) {
    for name in also {
        headers.remove(name);
    }
    if headers
        .keys()
        .any(|k| k.as_str().starts_with(CLAIM_HEADER_PREFIX))
    {
        let forged: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with(CLAIM_HEADER_PREFIX))
            .cloned()
            .collect();
        for name in forged {
            headers.remove(name);
        }
    }
}

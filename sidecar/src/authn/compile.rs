//! From a policy document to the structures requests are checked against,
//! validating everything on the way and reporting every problem at once
//! (field path and reason). Nothing is fetched or started here (the only
//! I/O is reading a JWKS `ca_file`), so `AuthnConfig::validate` and
//! `weftctl`-style checks can use it.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;

use http::Uri;
use http::header::HeaderName;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::config::{AuthnConfig, JwksConfig, ProviderConfig, RequiredClaim, RuleConfig};
use super::error::{ConfigError, ConfigErrors};
use super::jwks::{RemoteJwks, RemoteSettings};
use super::jwks_tls::{CaSource, JwksTls};
use super::keys::KeySet;
use super::provider::{ClaimRequirement, Provider, ProviderKeys};
use super::rules::{PathMatch, RoleRequirement, Rule};
use super::token::TokenSource;
use crate::upstream::EndpointAddr;

/// A compiled policy: everything but the service name.
pub(crate) struct Compiled {
    pub providers: Vec<Provider>,
    pub rules: Vec<Rule>,
    /// Every distinct place any provider reads a token from, in order of
    /// first mention.
    pub sources: Vec<TokenSource>,
    /// Claim headers outside `x-weft-jwt-*` (those are removed by prefix).
    pub strip: Vec<HeaderName>,
}

/// The asymmetric algorithms, the default of a provider with a JWKS (the
/// names and which key each needs are `weft_rules::jwt`'s).
const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The prefix of the headers the sidecar sets from claims (the rules of
/// claim headers are `weft_rules::jwt`'s).
pub(crate) use weft_rules::jwt::CLAIM_HEADER_PREFIX;

struct Errors(Vec<ConfigError>);

impl Errors {
    fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(ConfigError::new(field, reason));
    }
}

pub(crate) fn compile(config: &AuthnConfig) -> Result<Compiled, ConfigErrors> {
    let mut errors = Errors(Vec::new());
    let mut sources: Vec<TokenSource> = Vec::new();
    let mut providers = Vec::with_capacity(config.providers.len());
    if let Err(reason) = weft_rules::jwt::check_providers_listed(config.providers.len()) {
        errors.add("providers", reason);
    }
    let mut names = HashSet::new();
    let mut issuers = HashSet::new();
    for (i, p) in config.providers.iter().enumerate() {
        let field = format!("providers[{i}]");
        if !p.name.is_empty() && !names.insert(p.name.as_str()) {
            errors.add(
                format!("{field}.name"),
                weft_rules::jwt::duplicate_provider_name(&p.name),
            );
        }
        if !p.issuer.is_empty() && !issuers.insert(p.issuer.as_str()) {
            errors.add(
                format!("{field}.issuer"),
                weft_rules::jwt::duplicate_issuer(&p.issuer),
            );
        }
        if let Some(provider) = compile_provider(p, &field, &mut sources, &mut errors) {
            providers.push(provider);
        }
    }
    let rules = config
        .rules
        .iter()
        .enumerate()
        .filter_map(|(i, r)| compile_rule(r, &format!("rules[{i}]"), &mut errors))
        .collect();
    if !errors.0.is_empty() {
        return Err(ConfigErrors(errors.0));
    }
    let mut strip: Vec<HeaderName> = Vec::new();
    for (_, header) in providers.iter().flat_map(|p: &Provider| &p.claim_headers) {
        if !header.as_str().starts_with(CLAIM_HEADER_PREFIX) && !strip.contains(header) {
            strip.push(header.clone());
        }
    }
    Ok(Compiled {
        providers,
        rules,
        sources,
        strip,
    })
}

fn compile_provider(
    p: &ProviderConfig,
    field: &str,
    sources: &mut Vec<TokenSource>,
    errors: &mut Errors,
) -> Option<Provider> {
    let before = errors.0.len();
    if let Err(reason) = weft_rules::jwt::check_provider_name(&p.name) {
        errors.add(format!("{field}.name"), reason);
    }
    if let Err(reason) = weft_rules::jwt::check_issuer(&p.issuer) {
        errors.add(format!("{field}.issuer"), reason);
    }
    if let Err(reason) = weft_rules::jwt::check_audiences_listed(p.audiences.len()) {
        errors.add(format!("{field}.audiences"), reason);
    }
    for (j, a) in p.audiences.iter().enumerate() {
        if let Err(reason) = weft_rules::jwt::check_audience(a) {
            errors.add(format!("{field}.audiences[{j}]"), reason);
        }
    }

    let secret = p.shared_secret.as_ref().and_then(|s| {
        weft_rules::jwt::decode_shared_secret(&s.0)
            .map(|bytes| DecodingKey::from_secret(&bytes))
            .map_err(|reason| errors.add(format!("{field}.shared_secret"), reason))
            .ok()
    });

    let keys = match &p.jwks {
        None => {
            if p.shared_secret.is_none() {
                errors.add(
                    format!("{field}.jwks"),
                    "missing: give `jwks` (inline or uri), or a `shared_secret` for HS256",
                );
            }
            ProviderKeys::None
        }
        Some(jwks) => compile_jwks(jwks, &format!("{field}.jwks"), errors),
    };

    let algorithms = compile_algorithms(p, field, errors);

    if p.from.is_empty() {
        errors.add(
            format!("{field}.from"),
            "empty: say where the token is (default: the Authorization: Bearer header)",
        );
    }
    let mut source_indices = Vec::with_capacity(p.from.len());
    for (j, s) in p.from.iter().enumerate() {
        if let Some(source) = compile_source(s, &format!("{field}.from[{j}]"), errors) {
            let index = match sources.iter().position(|x| *x == source) {
                Some(index) => index,
                None => {
                    sources.push(source);
                    sources.len() - 1
                }
            };
            if !source_indices.contains(&index) {
                source_indices.push(index);
            }
        }
    }

    if let Err(reason) = weft_rules::jwt::check_clock_leeway(p.clock_leeway) {
        errors.add(format!("{field}.clock_leeway"), reason);
    }

    let mut required_claims = Vec::with_capacity(p.required_claims.len());
    for (name, want) in &p.required_claims {
        let field = format!("{field}.required_claims.{name}");
        if let Err(reason) = weft_rules::jwt::check_claim_name(name) {
            errors.add(field, reason);
            continue;
        }
        match want {
            RequiredClaim::Present(p) if p.present => {
                required_claims.push((name.as_str().into(), ClaimRequirement::Present));
            }
            RequiredClaim::Present(_) => errors.add(
                field,
                "`present: false` requires nothing: remove the claim from the list",
            ),
            RequiredClaim::Equals(
                v @ (serde_json::Value::String(_)
                | serde_json::Value::Number(_)
                | serde_json::Value::Bool(_)),
            ) => required_claims.push((name.as_str().into(), ClaimRequirement::Equals(v.clone()))),
            RequiredClaim::Equals(other) => errors.add(
                field,
                format!("expected a string, number, boolean or {{\"present\": true}}, not {other}"),
            ),
        }
    }

    let mut claim_headers = Vec::with_capacity(p.claim_headers.len());
    for (claim, header) in &p.claim_headers {
        let field = format!("{field}.claim_headers.{claim}");
        if let Err(reason) = weft_rules::jwt::check_claim_name(claim) {
            errors.add(field, reason);
            continue;
        }
        match weft_rules::jwt::check_claim_header(header) {
            Err(reason) => errors.add(field, reason),
            Ok(name) => claim_headers.push((claim.as_str().into(), name)),
        }
    }

    if errors.0.len() > before {
        return None;
    }
    let leeway = p.clock_leeway.as_secs() + u64::from(p.clock_leeway.subsec_nanos() > 0);
    let validations = algorithms
        .iter()
        .map(|&alg| (alg, validation(alg, p, leeway)))
        .collect();
    Some(Provider {
        name: Arc::from(p.name.as_str()),
        issuer: p.issuer.as_str().into(),
        keys,
        secret,
        validations,
        sources: source_indices,
        required_claims,
        forward_token: p.forward_token,
        claim_headers,
    })
}

/// What jsonwebtoken checks after the signature, for tokens with `alg`.
fn validation(alg: Algorithm, p: &ProviderConfig, leeway: u64) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = leeway;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = true;
    v.set_issuer(&[&p.issuer]);
    v.set_audience(&p.audiences);
    // Without `exp` a token would be valid forever; `iss` and `aud` are
    // checked only when present unless required.
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v
}

fn compile_algorithms(p: &ProviderConfig, field: &str, errors: &mut Errors) -> Vec<Algorithm> {
    let has_keys = p.jwks.is_some();
    let has_secret = p.shared_secret.is_some();
    let Some(names) = &p.algorithms else {
        let mut algs = Vec::new();
        if has_keys {
            algs.extend(ASYMMETRIC);
        }
        if has_secret {
            algs.push(Algorithm::HS256);
        }
        return algs;
    };
    let field = format!("{field}.algorithms");
    if names.is_empty() {
        errors.add(
            &field,
            "empty: no token could ever be accepted; leave it out for the default",
        );
    }
    let mut algs = Vec::with_capacity(names.len());
    for (j, name) in names.iter().enumerate() {
        let field = format!("{field}[{j}]");
        if let Err(reason) = weft_rules::jwt::check_algorithm(name, has_keys, has_secret) {
            errors.add(field, reason);
            continue;
        }
        let Ok(alg) = Algorithm::from_str(name) else {
            // weft-rules knows every name jsonwebtoken does.
            errors.add(field, format!("unknown algorithm `{name}`"));
            continue;
        };
        if !algs.contains(&alg) {
            algs.push(alg);
        }
    }
    if let Err(reason) = weft_rules::jwt::check_secret_is_used(has_secret, names) {
        errors.add(field, reason);
    }
    algs
}

fn compile_jwks(jwks: &JwksConfig, field: &str, errors: &mut Errors) -> ProviderKeys {
    match (&jwks.inline, &jwks.uri) {
        (Some(_), Some(_)) => {
            errors.add(field, "both `inline` and `uri`: give one");
            ProviderKeys::None
        }
        (None, None) => {
            errors.add(field, "neither `inline` nor `uri`: give one");
            ProviderKeys::None
        }
        (Some(doc), None) => {
            if let Some(duration) = jwks.cache_duration
                && let Err(reason) = weft_rules::jwt::check_cache_duration(duration, true)
            {
                errors.add(format!("{field}.cache_duration"), reason);
            }
            refuse_cas(jwks, field, None, errors);
            match KeySet::from_value(doc) {
                Ok((set, skipped)) => {
                    for s in skipped {
                        tracing::warn!(field, key = %s, "inline JWKS key skipped");
                    }
                    ProviderKeys::Static(set)
                }
                Err(e) => {
                    errors.add(format!("{field}.inline"), e);
                    ProviderKeys::None
                }
            }
        }
        (None, Some(uri)) => {
            let before = errors.0.len();
            if let Some(duration) = jwks.cache_duration
                && let Err(reason) = weft_rules::jwt::check_cache_duration(duration, false)
            {
                errors.add(format!("{field}.cache_duration"), reason);
            }
            if let Err(reason) = weft_rules::jwt::check_fetch_timeout(jwks.fetch_timeout) {
                errors.add(format!("{field}.fetch_timeout"), reason);
            }
            if let Err(reason) =
                weft_rules::jwt::check_min_refetch_interval(jwks.min_refetch_interval)
            {
                errors.add(format!("{field}.min_refetch_interval"), reason);
            }
            let target = parse_jwks_uri(uri).map_err(|e| errors.add(format!("{field}.uri"), e));
            let tls = match &target {
                Ok((uri, _)) if uri.scheme_str() == Some("https") => {
                    compile_tls(jwks, uri, field, errors).map(Arc::new)
                }
                Ok(_) => {
                    refuse_cas(jwks, field, Some(uri.as_str()), errors);
                    None
                }
                Err(()) => None,
            };
            match target {
                Ok((uri, addr)) if errors.0.len() == before => {
                    ProviderKeys::Remote(RemoteJwks::new(RemoteSettings {
                        uri,
                        addr,
                        tls,
                        cache_duration: jwks.cache_duration,
                        fetch_timeout: jwks.fetch_timeout,
                        min_refetch_interval: jwks.min_refetch_interval,
                    }))
                }
                _ => ProviderKeys::None,
            }
        }
    }
}

/// The TLS client of an `https://` JWKS URL: the provider's own CAs
/// (`ca_pem`, `ca_file`), else the system trust store; `None` after adding
/// the errors.
fn compile_tls(jwks: &JwksConfig, uri: &Uri, field: &str, errors: &mut Errors) -> Option<JwksTls> {
    let before = errors.0.len();
    let mut own = Vec::new();
    if let Some(pem) = &jwks.ca_pem {
        match CaSource::from_pem(pem) {
            Ok(source) => own.push(source),
            Err(e) => errors.add(format!("{field}.ca_pem"), e),
        }
    }
    if let Some(path) = &jwks.ca_file {
        match CaSource::from_file(path) {
            Ok(source) => own.push(source),
            Err(e) => errors.add(format!("{field}.ca_file"), e),
        }
    }
    if errors.0.len() > before {
        return None;
    }
    JwksTls::new(bare_host(uri), own)
        .map_err(|e| errors.add(format!("{field}.uri"), e))
        .ok()
}

/// `ca_pem` and `ca_file` where no TLS happens: a CA that is never used
/// is a mistake (the operator thinks the fetch is verified).
fn refuse_cas(jwks: &JwksConfig, field: &str, uri: Option<&str>, errors: &mut Errors) {
    let Err(reason) = weft_rules::jwt::check_ca_use(uri) else {
        return;
    };
    let given = [
        ("ca_pem", jwks.ca_pem.is_some()),
        ("ca_file", jwks.ca_file.is_some()),
    ];
    for (name, _) in given.into_iter().filter(|(_, given)| *given) {
        errors.add(format!("{field}.{name}"), reason.clone());
    }
}

/// The host of `uri` as TLS and DNS want it: `[::1]` is `::1`.
fn bare_host(uri: &Uri) -> &str {
    uri.host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
}

/// An `https://` or `http://` `host[:port]/path` URL and the address to dial.
fn parse_jwks_uri(text: &str) -> Result<(Uri, EndpointAddr), String> {
    let uri = weft_rules::jwt::check_jwks_uri(text)?;
    let default_port = if uri.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    let host = uri.host().unwrap_or_default();
    let port = uri.port_u16().unwrap_or(default_port);
    let bare = bare_host(&uri);
    let addr = match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => EndpointAddr::Ip((ip, port).into()),
        Err(_) => EndpointAddr::Name {
            host: Arc::from(host),
            port,
        },
    };
    Ok((uri, addr))
}

fn compile_source(
    s: &super::config::TokenSourceConfig,
    field: &str,
    errors: &mut Errors,
) -> Option<TokenSource> {
    let given = [s.header.is_some(), s.cookie.is_some(), s.query.is_some()];
    if given.iter().filter(|g| **g).count() != 1 {
        errors.add(field, "give exactly one of `header`, `cookie`, `query`");
        return None;
    }
    if s.prefix.is_some() && s.header.is_none() {
        errors.add(format!("{field}.prefix"), "only with `header`");
        return None;
    }
    if let Some(header) = &s.header {
        let name = match weft_rules::header::check_name(header) {
            Ok(name) => name,
            Err(reason) => {
                errors.add(format!("{field}.header"), reason);
                return None;
            }
        };
        return Some(TokenSource::Header {
            name,
            prefix: s.prefix.as_deref().map(Into::into),
        });
    }
    let (kind, name) = match (&s.cookie, &s.query) {
        (Some(c), _) => ("cookie", c),
        (_, Some(q)) => ("query", q),
        _ => return None,
    };
    if let Err(reason) = weft_rules::jwt::check_parameter_name(kind, name) {
        errors.add(format!("{field}.{kind}"), reason);
        return None;
    }
    Some(if kind == "cookie" {
        TokenSource::Cookie(name.as_str().into())
    } else {
        TokenSource::Query(name.as_str().into())
    })
}

fn compile_rule(r: &RuleConfig, field: &str, errors: &mut Errors) -> Option<Rule> {
    let before = errors.0.len();
    let m = &r.matches;
    let path = match (&m.path_prefix, &m.path_exact) {
        (Some(_), Some(_)) => {
            errors.add(
                format!("{field}.match"),
                "both `path_prefix` and `path_exact`: give one",
            );
            PathMatch::Any
        }
        (Some(p), None) => {
            check_rule_path(p, &format!("{field}.match.path_prefix"), errors);
            PathMatch::Prefix(p.as_str().into())
        }
        (None, Some(p)) => {
            check_rule_path(p, &format!("{field}.match.path_exact"), errors);
            PathMatch::Exact(p.as_str().into())
        }
        (None, None) => PathMatch::Any,
    };
    let mut methods = Vec::with_capacity(m.methods.len());
    for (j, name) in m.methods.iter().enumerate() {
        match weft_rules::method::check(name) {
            Ok(method) => methods.push(method),
            Err(reason) => errors.add(format!("{field}.match.methods[{j}]"), reason),
        }
    }
    if let Err(reason) = weft_rules::jwt::check_public_rule(r.public, &r.required_roles) {
        errors.add(format!("{field}.required_roles"), reason);
    }
    for (j, role) in r.required_roles.iter().enumerate() {
        if let Err(reason) = weft_rules::jwt::check_role(role) {
            errors.add(format!("{field}.required_roles[{j}]"), reason);
        }
    }
    if let Some(claim) = &r.roles_claim
        && let Err(reason) = weft_rules::jwt::check_claim_name(claim)
    {
        errors.add(format!("{field}.roles_claim"), reason);
    }
    if errors.0.len() > before {
        return None;
    }
    let roles = (!r.required_roles.is_empty()).then(|| RoleRequirement {
        roles: r.required_roles.iter().map(|s| s.as_str().into()).collect(),
        claim: r.roles_claim.as_deref().map(Into::into),
        all: r.roles_match == super::config::RolesMatch::All,
    });
    Some(Rule {
        name: r.name.as_deref().map(Into::into),
        path,
        methods,
        public: r.public,
        roles,
    })
}

fn check_rule_path(path: &str, field: &str, errors: &mut Errors) {
    if let Err(reason) = weft_rules::jwt::check_rule_path(path) {
        errors.add(field, reason);
    }
}

// Parsing with validation lives with the compile step, not in `config`:
// `config` only describes the document, so it depends on nothing here and
// this module is the one place that knows what makes a policy valid.
impl AuthnConfig {
    /// Parses a JSON policy and validates it, reporting every problem.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigErrors> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let config: Self = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "(document)".to_owned()
            } else {
                path
            };
            ConfigErrors(vec![ConfigError::new(field, e.into_inner().to_string())])
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Every problem that would make `Authenticator::new` reject this
    /// config, without starting anything.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        compile(self).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::config::{Secret, TokenSourceConfig};
    use base64::Engine as _;
    use serde_json::json;

    fn errors_of(config: serde_json::Value) -> Vec<(String, String)> {
        let bytes = serde_json::to_vec(&config).unwrap();
        match AuthnConfig::from_json(&bytes) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|e| (e.field, e.reason)).collect(),
        }
    }

    fn has(errors: &[(String, String)], field: &str, reason_part: &str) -> bool {
        errors
            .iter()
            .any(|(f, r)| f == field && r.contains(reason_part))
    }

    fn inline_jwks() -> serde_json::Value {
        json!({ "inline": { "keys": [ { "kty": "RSA", "kid": "k", "n": "AQAB", "e": "AQAB" } ] } })
    }

    #[test]
    fn a_valid_policy_compiles() {
        let e = errors_of(json!({ "providers": [ {
            "name": "idp", "issuer": "https://idp", "audiences": ["users"], "jwks": inline_jwks(),
            "algorithms": ["RS256", "PS256"],
            "from": [ { "header": "authorization", "prefix": "Bearer " }, { "cookie": "s" }, { "query": "t" } ],
            "required_claims": { "tenant": "acme", "email": { "present": true }, "level": 3 },
            "claim_headers": { "sub": "x-weft-jwt-sub", "email": "x-user-email" } } ],
            "rules": [ { "match": { "path_prefix": "/public/" }, "public": true },
                       { "match": { "path_exact": "/admin", "methods": ["POST"] },
                         "required_roles": ["admin"], "roles_match": "any" } ] }));
        assert!(e.is_empty(), "{e:?}");
    }

    #[test]
    fn every_problem_is_reported_with_field_and_reason() {
        let e = errors_of(json!({ "providers": [
            { "name": "", "issuer": "", "audiences": [], "jwks": inline_jwks(),
              "algorithms": ["HS256", "none", "RS999", "ES256"] },
            { "name": "b", "issuer": "https://b", "audiences": ["x"],
              "from": [ { "header": "a", "cookie": "b" }, { "cookie": "x;y" } ],
              "clock_leeway": "1h",
              "required_claims": { "t": { "present": false }, "u": ["a"] },
              "claim_headers": { "sub": "host", "email": "x-weft-error", "n": "bad header" } } ],
            "rules": [ { "match": { "path_prefix": "/a", "path_exact": "/b" } },
                       { "match": { "path_prefix": "/x/../y", "methods": ["get"] } },
                       { "public": true, "required_roles": ["admin", "two words"] } ] }));
        for (field, reason) in [
            ("providers[0].name", "empty"),
            ("providers[0].issuer", "empty"),
            ("providers[0].audiences", "empty"),
            ("providers[0].algorithms[0]", "needs `shared_secret`"),
            ("providers[0].algorithms[1]", "never allowed"),
            ("providers[0].algorithms[2]", "unknown algorithm `RS999`"),
            ("providers[1].jwks", "missing"),
            ("providers[1].from[0]", "exactly one"),
            ("providers[1].from[1].cookie", "not a cookie name"),
            ("providers[1].clock_leeway", "long expired"),
            ("providers[1].required_claims.t", "requires nothing"),
            ("providers[1].required_claims.u", "expected a string"),
            ("providers[1].claim_headers.sub", "reserved"),
            ("providers[1].claim_headers.email", "reserved"),
            ("providers[1].claim_headers.n", "not a valid header name"),
            ("rules[0].match", "both"),
            ("rules[1].match.path_prefix", "not a normalized path"),
            ("rules[1].match.methods[0]", "in upper case"),
            ("rules[2].required_roles", "public rule"),
            ("rules[2].required_roles[1]", "not a role"),
        ] {
            assert!(
                has(&e, field, reason),
                "no `{field}: ..{reason}..` in {e:#?}"
            );
        }
        // ES256 with a JWKS is fine.
        assert!(
            !e.iter().any(|(f, _)| f == "providers[0].algorithms[3]"),
            "{e:#?}"
        );
    }

    #[test]
    fn hmac_needs_a_long_enough_secret_and_an_hs_algorithm() {
        let mut p = ProviderConfig::new("idp", "https://idp", &["users"], None);
        p.shared_secret = Some(Secret("c2hvcnQ=".into()));
        let errs = compile(&AuthnConfig {
            providers: vec![p.clone()],
            rules: vec![],
        })
        .err()
        .unwrap();
        assert_eq!(errs.0[0].field, "providers[0].shared_secret");
        assert!(errs.0[0].reason.contains("too short"), "{errs}");

        p.shared_secret = Some(Secret(
            base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
        ));
        p.algorithms = Some(vec![]);
        let errs = compile(&AuthnConfig {
            providers: vec![p.clone()],
            rules: vec![],
        })
        .err()
        .unwrap();
        assert_eq!(errs.0[0].field, "providers[0].algorithms");

        p.algorithms = None;
        let compiled = compile(&AuthnConfig {
            providers: vec![p],
            rules: vec![],
        })
        .ok()
        .unwrap();
        let algs: Vec<Algorithm> = compiled.providers[0]
            .validations
            .iter()
            .map(|(a, _)| *a)
            .collect();
        assert_eq!(algs, [Algorithm::HS256]);
    }

    #[test]
    fn jwks_urls_are_checked() {
        for (uri, reason) in [
            ("ftp://idp/jwks", "not an https:// or http:// URL"),
            ("https:///jwks", "not a URL"),
            ("not a url", "not a URL"),
        ] {
            let e = errors_of(
                json!({ "providers": [ { "name": "a", "issuer": "i", "audiences": ["x"],
                "jwks": { "uri": uri } } ] }),
            );
            assert!(has(&e, "providers[0].jwks.uri", reason), "{uri}: {e:?}");
        }
        let e = errors_of(
            json!({ "providers": [ { "name": "a", "issuer": "i", "audiences": ["x"],
            "jwks": { "uri": "http://127.0.0.1:9/k", "fetch_timeout": "5m", "cache_duration": "0s" } } ] }),
        );
        assert!(
            has(&e, "providers[0].jwks.fetch_timeout", "at most"),
            "{e:?}"
        );
        assert!(
            has(&e, "providers[0].jwks.cache_duration", "above 0"),
            "{e:?}"
        );
    }

    #[test]
    fn https_jwks_urls_trust_the_system_store_or_the_providers_own_cas() {
        let provider = |jwks: serde_json::Value| json!({ "providers": [ { "name": "a", "issuer": "i", "audiences": ["x"], "jwks": jwks } ] });
        // The system trust store (this host has one).
        let e = errors_of(provider(json!({ "uri": "https://idp.example.com/jwks" })));
        assert!(e.is_empty(), "{e:?}");
        let e = errors_of(provider(json!({ "uri": "https://[::1]:8443/jwks" })));
        assert!(e.is_empty(), "{e:?}");

        let ca = crate::authn::jwks_tls::test_ca::TestCa::new("idp").pem();
        let e = errors_of(provider(
            json!({ "uri": "https://idp.internal/jwks", "ca_pem": ca }),
        ));
        assert!(e.is_empty(), "{e:?}");

        // A bad CA is an error naming its field; so are CAs where nothing
        // is verified.
        let e = errors_of(provider(json!({ "uri": "https://idp.internal/jwks",
            "ca_pem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "ca_file": "/nonexistent/weft/idp-ca.pem" })));
        assert!(
            has(&e, "providers[0].jwks.ca_pem", "cannot be a trust anchor"),
            "{e:?}"
        );
        assert!(
            has(
                &e,
                "providers[0].jwks.ca_file",
                "/nonexistent/weft/idp-ca.pem"
            ),
            "{e:?}"
        );
        let e = errors_of(provider(
            json!({ "uri": "http://idp.internal/jwks", "ca_pem": ca }),
        ));
        assert!(
            has(&e, "providers[0].jwks.ca_pem", "only with an https://"),
            "{e:?}"
        );
        let e = errors_of(provider(
            json!({ "inline": { "keys": [] }, "ca_file": "/etc/ca.pem" }),
        ));
        assert!(
            has(&e, "providers[0].jwks.ca_file", "only with an https://"),
            "{e:?}"
        );
    }

    #[test]
    fn shared_token_sources_are_read_once() {
        let mut a = ProviderConfig::new(
            "a",
            "https://a",
            &["x"],
            Some(JwksConfig::inline(
                json!({ "keys": [ { "kty": "RSA", "kid": "k", "n": "AQAB", "e": "AQAB" } ] }),
            )),
        );
        let mut b = a.clone();
        b.name = "b".into();
        b.issuer = "https://b".into();
        b.from.push(TokenSourceConfig::cookie("s"));
        a.claim_headers.insert("email".into(), "x-email".into());
        let c = compile(&AuthnConfig {
            providers: vec![a, b],
            rules: vec![],
        })
        .ok()
        .unwrap();
        assert_eq!(c.sources.len(), 2);
        assert_eq!(c.providers[0].sources, [0]);
        assert_eq!(c.providers[1].sources, [0, 1]);
        assert_eq!(c.strip, [HeaderName::from_static("x-email")]);
    }

    #[test]
    fn two_providers_cannot_share_an_issuer_or_a_name() {
        let a = ProviderConfig::new(
            "a",
            "https://a",
            &["x"],
            Some(JwksConfig::inline(
                json!({ "keys": [ { "kty": "RSA", "kid": "k", "n": "AQAB", "e": "AQAB" } ] }),
            )),
        );
        let errs = compile(&AuthnConfig {
            providers: vec![a.clone(), a],
            rules: vec![],
        })
        .err()
        .unwrap();
        let fields: Vec<&str> = errs.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["providers[1].name", "providers[1].issuer"]);
    }
}

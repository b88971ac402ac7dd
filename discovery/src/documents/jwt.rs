//! The `jwt` section of policy documents: the rules the schema cannot
//! express (`weft_rules::jwt`, the sidecar's own) and the translation into
//! the protocol's typed `JwtPolicy`.
//!
//! The section stays a JSON value in the typed model ([`PolicyDocument::jwt`]):
//! its structure is the schema's to check, and both functions here read
//! values only where they have the type the schema requires, so they never
//! fail on a section the schema refused.
//!
//! [`PolicyDocument::jwt`]: super::PolicyDocument::jwt

use std::collections::BTreeSet;

use serde_json::Value;
use weft_proto::config::v1 as proto;

use super::error::{FieldError, join};

/// The rules of a `jwt` section that the schema cannot express and a
/// sidecar applies before it builds a verifier: unique provider names and
/// issuers, shared secrets long enough (never quoted), algorithms that have
/// their kind of key, bounded leeway, JWKS settings that fit where the keys
/// come from, claim headers outside the reserved names, no roles on a
/// public rule. Keys and certificates are the sidecar's to judge.
pub(super) fn check(key: &str, jwt: &Value) -> Vec<FieldError> {
    use weft_rules::jwt;
    let mut errors = Vec::new();
    let mut error =
        |field: String, reason: String| errors.push(FieldError::new(key, field, reason));
    let mut names = BTreeSet::new();
    let mut issuers = BTreeSet::new();
    if let Some(Value::Array(providers)) = jwt.get("providers")
        && let Err(reason) = jwt::check_providers_listed(providers.len())
    {
        error("jwt.providers".into(), reason);
    }
    for (index, provider) in array(jwt, "providers").iter().enumerate() {
        let at = format!("jwt.providers[{index}]");
        if let Some(Value::Array(audiences)) = provider.get("audiences") {
            if let Err(reason) = jwt::check_audiences_listed(audiences.len()) {
                error(join(&at, "audiences"), reason);
            }
            for (number, audience) in audiences.iter().enumerate() {
                if let Some(audience) = audience.as_str()
                    && let Err(reason) = jwt::check_audience(audience)
                {
                    error(format!("{at}.audiences[{number}]"), reason);
                }
            }
        }
        if let Some(name) = text(provider, "name")
            && let Err(reason) = jwt::check_provider_name(name)
        {
            error(join(&at, "name"), reason);
        }
        if let Some(issuer) = text(provider, "issuer")
            && let Err(reason) = jwt::check_issuer(issuer)
        {
            error(join(&at, "issuer"), reason);
        }
        for (number, from) in array(provider, "from").iter().enumerate() {
            for kind in ["cookie", "query"] {
                if let Some(name) = text(from, kind)
                    && let Err(reason) = jwt::check_parameter_name(kind, name)
                {
                    error(format!("{at}.from[{number}].{kind}"), reason);
                }
            }
        }
        for section in ["required_claims", "claim_headers"] {
            if let Some(Value::Object(claims)) = provider.get(section) {
                for claim in claims.keys() {
                    if let Err(reason) = jwt::check_claim_name(claim) {
                        error(join(&join(&at, section), claim), reason);
                    }
                }
            }
        }
        if let Some(name) = text(provider, "name")
            && !name.is_empty()
            && !names.insert(name)
        {
            error(join(&at, "name"), jwt::duplicate_provider_name(name));
        }
        if let Some(issuer) = text(provider, "issuer")
            && !issuer.is_empty()
            && !issuers.insert(issuer)
        {
            error(join(&at, "issuer"), jwt::duplicate_issuer(issuer));
        }
        if let Some(secret) = text(provider, "shared_secret")
            && let Err(reason) = jwt::decode_shared_secret(secret)
        {
            error(join(&at, "shared_secret"), reason);
        }
        if let Some(leeway) = duration(provider, "clock_leeway")
            && let Err(reason) = jwt::check_clock_leeway(leeway)
        {
            error(join(&at, "clock_leeway"), reason);
        }
        let has_jwks = provider.get("jwks").is_some();
        let has_secret = provider.get("shared_secret").is_some();
        if provider.get("algorithms").is_some() {
            let names = strings(provider, "algorithms");
            for (number, name) in names.iter().enumerate() {
                if let Err(reason) = jwt::check_algorithm(name, has_jwks, has_secret) {
                    error(format!("{at}.algorithms[{number}]"), reason);
                }
            }
            if let Err(reason) = jwt::check_secret_is_used(has_secret, &names) {
                error(join(&at, "algorithms"), reason);
            }
        }
        if let Some(jwks) = provider.get("jwks") {
            for (field, reason) in jwks_errors(jwks) {
                error(join(&join(&at, "jwks"), field), reason);
            }
        }
        if let Some(Value::Object(headers)) = provider.get("claim_headers") {
            for (claim, header) in headers {
                if let Some(header) = header.as_str()
                    && let Err(reason) = jwt::check_claim_header(header)
                {
                    error(join(&join(&at, "claim_headers"), claim), reason);
                }
            }
        }
    }
    for (index, rule) in array(jwt, "rules").iter().enumerate() {
        let at = format!("jwt.rules[{index}]");
        let matches = rule.get("match").unwrap_or(&Value::Null);
        for kind in ["path_prefix", "path_exact"] {
            if let Some(path) = text(matches, kind)
                && let Err(reason) = jwt::check_rule_path(path)
            {
                error(format!("{at}.match.{kind}"), reason);
            }
        }
        if let Some(claim) = text(rule, "roles_claim")
            && let Err(reason) = jwt::check_claim_name(claim)
        {
            error(join(&at, "roles_claim"), reason);
        }
        for (number, method) in array(matches, "methods").iter().enumerate() {
            if let Some(method) = method.as_str()
                && let Err(reason) = weft_rules::method::check(method)
            {
                error(format!("{at}.match.methods[{number}]"), reason);
            }
        }
        let public = rule.get("public").and_then(Value::as_bool) == Some(true);
        let roles = strings(rule, "required_roles");
        for (number, role) in array(rule, "required_roles").iter().enumerate() {
            if let Some(role) = role.as_str()
                && let Err(reason) = jwt::check_role(role)
            {
                error(format!("{at}.required_roles[{number}]"), reason);
            }
        }
        if let Err(reason) = jwt::check_public_rule(public, &roles) {
            error(join(&at, "required_roles"), reason);
        }
    }
    errors
}

/// The rules of a provider's `jwks` that depend on where the keys come
/// from, as (field, reason). Both `inline` and `uri` is the schema's to
/// refuse.
fn jwks_errors(jwks: &Value) -> Vec<(&'static str, String)> {
    use weft_rules::jwt;
    let mut errors = Vec::new();
    let uri = match (jwks.get("inline"), text(jwks, "uri")) {
        (Some(_), None) => None,
        (None, Some(uri)) => Some(uri),
        _ => return errors,
    };
    let inline = uri.is_none();
    if let Some(uri) = uri
        && let Err(reason) = jwt::check_jwks_uri(uri)
    {
        errors.push(("uri", reason));
    }
    if let Some(pem) = text(jwks, "ca_pem")
        && let Err(reason) = weft_rules::pem::check_has_certificate(pem)
    {
        errors.push(("ca_pem", reason));
    }
    if let Some(path) = text(jwks, "ca_file")
        && let Err(reason) = jwt::check_ca_file(std::path::Path::new(path))
    {
        errors.push(("ca_file", reason));
    }
    if let Some(cache) = duration(jwks, "cache_duration")
        && let Err(reason) = jwt::check_cache_duration(cache, inline)
    {
        errors.push(("cache_duration", reason));
    }
    for field in ["ca_pem", "ca_file"] {
        if jwks.get(field).is_some()
            && let Err(reason) = jwt::check_ca_use(uri)
        {
            errors.push((field, reason));
        }
    }
    // Only keys fetched from a URL have a fetch to bound.
    if !inline {
        if let Some(timeout) = duration(jwks, "fetch_timeout")
            && let Err(reason) = jwt::check_fetch_timeout(timeout)
        {
            errors.push(("fetch_timeout", reason));
        }
        if let Some(interval) = duration(jwks, "min_refetch_interval")
            && let Err(reason) = jwt::check_min_refetch_interval(interval)
        {
            errors.push(("min_refetch_interval", reason));
        }
    }
    errors
}

/// The section as the protocol carries it, field for field; a field the
/// document leaves out stays unset, so the sidecar applies the default the
/// document promises.
pub fn to_proto(jwt: &Value) -> proto::JwtPolicy {
    proto::JwtPolicy {
        providers: array(jwt, "providers").iter().map(provider).collect(),
        rules: array(jwt, "rules").iter().map(rule).collect(),
    }
}

fn provider(provider: &Value) -> proto::JwtProvider {
    proto::JwtProvider {
        name: text(provider, "name").unwrap_or_default().into(),
        issuer: text(provider, "issuer").unwrap_or_default().into(),
        audiences: strings(provider, "audiences"),
        jwks: provider.get("jwks").map(jwks),
        algorithms: strings(provider, "algorithms"),
        shared_secret: text(provider, "shared_secret").unwrap_or_default().into(),
        from: array(provider, "from").iter().map(token_source).collect(),
        clock_leeway: duration(provider, "clock_leeway").map(weft_rules::duration::to_proto),
        required_claims: provider
            .get("required_claims")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(name, want)| Some((name.clone(), claim_requirement(want)?)))
            .collect(),
        forward_token: provider.get("forward_token").and_then(Value::as_bool),
        claim_headers: provider
            .get("claim_headers")
            .and_then(Value::as_object)
            .map(|headers| proto::ClaimHeaders {
                headers: headers
                    .iter()
                    .filter_map(|(claim, header)| Some((claim.clone(), header.as_str()?.into())))
                    .collect(),
            }),
    }
}

fn jwks(jwks: &Value) -> proto::JwksSource {
    use proto::jwks_source::Source;
    let source = match (jwks.get("inline"), text(jwks, "uri")) {
        (Some(inline), _) => Some(Source::InlineJson(inline.to_string())),
        (None, Some(uri)) => Some(Source::Uri(uri.into())),
        (None, None) => None,
    };
    let timeout = |name| duration(jwks, name).map(weft_rules::duration::to_proto);
    proto::JwksSource {
        source,
        ca_pem: text(jwks, "ca_pem").unwrap_or_default().into(),
        ca_file: text(jwks, "ca_file").unwrap_or_default().into(),
        cache_duration: timeout("cache_duration"),
        fetch_timeout: timeout("fetch_timeout"),
        min_refetch_interval: timeout("min_refetch_interval"),
    }
}

fn token_source(from: &Value) -> proto::TokenSource {
    use proto::token_source::Source;
    let source = if let Some(header) = text(from, "header") {
        Some(Source::Header(proto::HeaderTokenSource {
            name: header.into(),
            prefix: text(from, "prefix").unwrap_or_default().into(),
        }))
    } else if let Some(cookie) = text(from, "cookie") {
        Some(Source::Cookie(cookie.into()))
    } else {
        text(from, "query").map(|query| Source::Query(query.into()))
    };
    proto::TokenSource { source }
}

fn claim_requirement(want: &Value) -> Option<proto::ClaimRequirement> {
    use proto::claim_requirement::Requirement;
    let requirement = match want {
        Value::Object(object) => Requirement::Present(object.get("present")?.as_bool()?),
        Value::String(value) => Requirement::StringValue(value.clone()),
        Value::Bool(value) => Requirement::BoolValue(*value),
        Value::Number(number) => match number.as_i64() {
            Some(integer) => Requirement::IntegerValue(integer),
            None => Requirement::NumberValue(number.as_f64()?),
        },
        Value::Null | Value::Array(_) => return None,
    };
    Some(proto::ClaimRequirement {
        requirement: Some(requirement),
    })
}

fn rule(rule: &Value) -> proto::JwtRule {
    use proto::jwt_rule::{Path, RolesMatch};
    let matches = rule.get("match").unwrap_or(&Value::Null);
    let path = match (text(matches, "path_prefix"), text(matches, "path_exact")) {
        (Some(prefix), _) => Some(Path::PathPrefix(prefix.into())),
        (None, Some(exact)) => Some(Path::PathExact(exact.into())),
        (None, None) => None,
    };
    let roles_match = match text(rule, "roles_match") {
        Some("any") => RolesMatch::Any,
        _ => RolesMatch::All,
    };
    proto::JwtRule {
        name: text(rule, "name").unwrap_or_default().into(),
        path,
        methods: strings(matches, "methods"),
        public: rule.get("public").and_then(Value::as_bool).unwrap_or(false),
        required_roles: strings(rule, "required_roles"),
        roles_claim: text(rule, "roles_claim").unwrap_or_default().into(),
        roles_match: roles_match.into(),
    }
}

fn text<'v>(value: &'v Value, name: &str) -> Option<&'v str> {
    value.get(name).and_then(Value::as_str)
}

fn array<'v>(value: &'v Value, name: &str) -> &'v [Value] {
    value
        .get(name)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn strings(value: &Value, name: &str) -> Vec<String> {
    array(value, name)
        .iter()
        .filter_map(|item| item.as_str().map(str::to_string))
        .collect()
}

fn duration(value: &Value, name: &str) -> Option<std::time::Duration> {
    text(value, name).and_then(|text| weft_rules::duration::parse(text).ok())
}

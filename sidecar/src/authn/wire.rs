//! The protocol's `JwtPolicy` (policy.proto) and the policy model
//! ([`AuthnConfig`]) the compile step reads: the message mirrors the policy
//! document's `jwt` section field for field, an unset field meaning the
//! document's default, so the conversion only fills those defaults in.

use std::collections::BTreeMap;

use weft_proto::config::v1 as pb;

use super::config::{
    AuthnConfig, JwksConfig, Presence, ProviderConfig, RequiredClaim, RolesMatch, RuleConfig,
    RuleMatch, Secret, TokenSourceConfig, default_claim_headers,
};
use super::error::{ConfigError, ConfigErrors};

impl AuthnConfig {
    /// The policy a `JwtPolicy` carries, not yet validated (see
    /// [`AuthnConfig::validate`]). Fails only on an inline JWKS that is not
    /// JSON, naming its field as the document does.
    pub fn from_proto(policy: &pb::JwtPolicy) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let providers = policy
            .providers
            .iter()
            .enumerate()
            .map(|(index, provider)| {
                provider_config(provider, &format!("providers[{index}]"), &mut errors)
            })
            .collect();
        let rules = policy.rules.iter().map(rule_config).collect();
        if errors.is_empty() {
            Ok(Self { providers, rules })
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The `JwtPolicy` that carries this policy (what the agent sends for a
    /// document with this `jwt` section).
    pub fn to_proto(&self) -> pb::JwtPolicy {
        pb::JwtPolicy {
            providers: self.providers.iter().map(provider_proto).collect(),
            rules: self.rules.iter().map(rule_proto).collect(),
        }
    }
}

fn provider_config(
    p: &pb::JwtProvider,
    field: &str,
    errors: &mut Vec<ConfigError>,
) -> ProviderConfig {
    let defaults = ProviderConfig::new(&p.name, &p.issuer, &[], None);
    ProviderConfig {
        audiences: p.audiences.clone(),
        jwks: p
            .jwks
            .as_ref()
            .map(|jwks| jwks_config(jwks, &format!("{field}.jwks"), errors)),
        algorithms: (!p.algorithms.is_empty()).then(|| p.algorithms.clone()),
        shared_secret: (!p.shared_secret.is_empty()).then(|| Secret(p.shared_secret.clone())),
        from: if p.from.is_empty() {
            defaults.from.clone()
        } else {
            p.from.iter().map(token_source_config).collect()
        },
        clock_leeway: p
            .clock_leeway
            .as_ref()
            .map_or(Ok(defaults.clock_leeway), weft_rules::duration::from_proto)
            .unwrap_or_else(|reason| {
                errors.push(ConfigError::new(format!("{field}.clock_leeway"), reason));
                defaults.clock_leeway
            }),
        required_claims: p
            .required_claims
            .iter()
            .filter_map(|(name, want)| Some((name.clone(), required_claim(want)?)))
            .collect(),
        forward_token: p.forward_token.unwrap_or(defaults.forward_token),
        claim_headers: p
            .claim_headers
            .as_ref()
            .map_or_else(default_claim_headers, |c| {
                c.headers
                    .iter()
                    .map(|(claim, header)| (claim.clone(), header.clone()))
                    .collect()
            }),
        ..defaults
    }
}

fn jwks_config(jwks: &pb::JwksSource, field: &str, errors: &mut Vec<ConfigError>) -> JwksConfig {
    use pb::jwks_source::Source;
    let mut config = JwksConfig::uri("");
    match &jwks.source {
        Some(Source::InlineJson(text)) => match serde_json::from_str(text) {
            Ok(document) => config.inline = Some(document),
            Err(error) => errors.push(ConfigError::new(
                format!("{field}.inline"),
                format!("not a JWKS document (JSON): {error}"),
            )),
        },
        Some(Source::Uri(uri)) => config.uri = Some(uri.clone()),
        None => {}
    }
    config.ca_pem = (!jwks.ca_pem.is_empty()).then(|| jwks.ca_pem.clone());
    config.ca_file = (!jwks.ca_file.is_empty()).then(|| jwks.ca_file.clone().into());
    let mut duration = |value: Option<&prost_types::Duration>, name: &str| {
        value.and_then(|d| {
            weft_rules::duration::from_proto(d)
                .map_err(|reason| errors.push(ConfigError::new(format!("{field}.{name}"), reason)))
                .ok()
        })
    };
    config.cache_duration = duration(jwks.cache_duration.as_ref(), "cache_duration");
    if let Some(timeout) = duration(jwks.fetch_timeout.as_ref(), "fetch_timeout") {
        config.fetch_timeout = timeout;
    }
    if let Some(interval) = duration(jwks.min_refetch_interval.as_ref(), "min_refetch_interval") {
        config.min_refetch_interval = interval;
    }
    config
}

fn token_source_config(source: &pb::TokenSource) -> TokenSourceConfig {
    use pb::token_source::Source;
    match &source.source {
        Some(Source::Header(header)) if header.prefix.is_empty() => {
            TokenSourceConfig::header(&header.name)
        }
        Some(Source::Header(header)) => {
            TokenSourceConfig::header_with_prefix(&header.name, &header.prefix)
        }
        Some(Source::Cookie(name)) => TokenSourceConfig::cookie(name),
        Some(Source::Query(name)) => TokenSourceConfig::query(name),
        // Names no place: the compile step says so for this source.
        None => TokenSourceConfig::default(),
    }
}

fn required_claim(want: &pb::ClaimRequirement) -> Option<RequiredClaim> {
    use pb::claim_requirement::Requirement;
    Some(match want.requirement.as_ref()? {
        Requirement::Present(present) => RequiredClaim::Present(Presence { present: *present }),
        Requirement::StringValue(value) => RequiredClaim::Equals(value.clone().into()),
        Requirement::IntegerValue(value) => RequiredClaim::Equals((*value).into()),
        Requirement::NumberValue(value) => RequiredClaim::Equals((*value).into()),
        Requirement::BoolValue(value) => RequiredClaim::Equals((*value).into()),
    })
}

fn rule_config(rule: &pb::JwtRule) -> RuleConfig {
    use pb::jwt_rule::Path;
    let (path_prefix, path_exact) = match &rule.path {
        Some(Path::PathPrefix(prefix)) => (Some(prefix.clone()), None),
        Some(Path::PathExact(exact)) => (None, Some(exact.clone())),
        None => (None, None),
    };
    RuleConfig {
        name: (!rule.name.is_empty()).then(|| rule.name.clone()),
        matches: RuleMatch {
            path_prefix,
            path_exact,
            methods: rule.methods.clone(),
        },
        public: rule.public,
        required_roles: rule.required_roles.clone(),
        roles_claim: (!rule.roles_claim.is_empty()).then(|| rule.roles_claim.clone()),
        roles_match: match pb::jwt_rule::RolesMatch::try_from(rule.roles_match) {
            Ok(pb::jwt_rule::RolesMatch::Any) => RolesMatch::Any,
            // An unknown value from a newer agent: `all` asks more, never less.
            _ => RolesMatch::All,
        },
    }
}

fn provider_proto(p: &ProviderConfig) -> pb::JwtProvider {
    pb::JwtProvider {
        name: p.name.clone(),
        issuer: p.issuer.clone(),
        audiences: p.audiences.clone(),
        jwks: p.jwks.as_ref().map(jwks_proto),
        algorithms: p.algorithms.clone().unwrap_or_default(),
        shared_secret: p
            .shared_secret
            .as_ref()
            .map(|s| s.0.clone())
            .unwrap_or_default(),
        from: p.from.iter().map(token_source_proto).collect(),
        clock_leeway: Some(weft_rules::duration::to_proto(p.clock_leeway)),
        required_claims: p
            .required_claims
            .iter()
            .filter_map(|(name, want)| Some((name.clone(), claim_proto(want)?)))
            .collect(),
        forward_token: Some(p.forward_token),
        claim_headers: Some(pb::ClaimHeaders {
            headers: p
                .claim_headers
                .iter()
                .map(|(claim, header)| (claim.clone(), header.clone()))
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .collect(),
        }),
    }
}

fn jwks_proto(jwks: &JwksConfig) -> pb::JwksSource {
    use pb::jwks_source::Source;
    let source = match (&jwks.inline, &jwks.uri) {
        (Some(document), _) => Some(Source::InlineJson(document.to_string())),
        (None, Some(uri)) => Some(Source::Uri(uri.clone())),
        (None, None) => None,
    };
    pb::JwksSource {
        source,
        ca_pem: jwks.ca_pem.clone().unwrap_or_default(),
        ca_file: jwks
            .ca_file
            .as_ref()
            .map(|path| path.display().to_string())
            .unwrap_or_default(),
        cache_duration: jwks.cache_duration.map(weft_rules::duration::to_proto),
        fetch_timeout: Some(weft_rules::duration::to_proto(jwks.fetch_timeout)),
        min_refetch_interval: Some(weft_rules::duration::to_proto(jwks.min_refetch_interval)),
    }
}

fn token_source_proto(source: &TokenSourceConfig) -> pb::TokenSource {
    use pb::token_source::Source;
    let source = if let Some(name) = &source.header {
        Some(Source::Header(pb::HeaderTokenSource {
            name: name.clone(),
            prefix: source.prefix.clone().unwrap_or_default(),
        }))
    } else if let Some(name) = &source.cookie {
        Some(Source::Cookie(name.clone()))
    } else {
        source.query.clone().map(Source::Query)
    };
    pb::TokenSource { source }
}

fn claim_proto(want: &RequiredClaim) -> Option<pb::ClaimRequirement> {
    use pb::claim_requirement::Requirement;
    use serde_json::Value;
    let requirement = match want {
        RequiredClaim::Present(presence) => Requirement::Present(presence.present),
        RequiredClaim::Equals(Value::String(value)) => Requirement::StringValue(value.clone()),
        RequiredClaim::Equals(Value::Bool(value)) => Requirement::BoolValue(*value),
        RequiredClaim::Equals(Value::Number(number)) => match number.as_i64() {
            Some(integer) => Requirement::IntegerValue(integer),
            None => Requirement::NumberValue(number.as_f64()?),
        },
        RequiredClaim::Equals(_) => return None,
    };
    Some(pb::ClaimRequirement {
        requirement: Some(requirement),
    })
}

fn rule_proto(rule: &RuleConfig) -> pb::JwtRule {
    use pb::jwt_rule::Path;
    let path = match (&rule.matches.path_prefix, &rule.matches.path_exact) {
        (Some(prefix), _) => Some(Path::PathPrefix(prefix.clone())),
        (None, Some(exact)) => Some(Path::PathExact(exact.clone())),
        (None, None) => None,
    };
    pb::JwtRule {
        name: rule.name.clone().unwrap_or_default(),
        path,
        methods: rule.matches.methods.clone(),
        public: rule.public,
        required_roles: rule.required_roles.clone(),
        roles_claim: rule.roles_claim.clone().unwrap_or_default(),
        roles_match: match rule.roles_match {
            RolesMatch::All => pb::jwt_rule::RolesMatch::All,
            RolesMatch::Any => pb::jwt_rule::RolesMatch::Any,
        }
        .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_policy_survives_the_wire() {
        let config: AuthnConfig = serde_json::from_value(json!({
            "providers": [
                { "name": "corp", "issuer": "https://idp", "audiences": ["users"],
                  "jwks": { "uri": "https://idp/jwks", "ca_file": "/etc/ca.pem",
                            "cache_duration": "10m", "fetch_timeout": "3s" },
                  "algorithms": ["RS256"],
                  "from": [ { "header": "authorization", "prefix": "Bearer " },
                            { "header": "x-token" }, { "cookie": "s" }, { "query": "t" } ],
                  "clock_leeway": "30s",
                  "required_claims": { "tenant": "acme", "level": 3, "ratio": 0.5,
                                       "ok": true, "email": { "present": true } },
                  "forward_token": false,
                  "claim_headers": {} },
                { "name": "ci", "issuer": "ci", "audiences": ["users"],
                  "shared_secret": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA",
                  "jwks": { "inline": { "keys": [] } } } ],
            "rules": [
                { "name": "health", "match": { "path_prefix": "/health" }, "public": true },
                { "match": { "path_exact": "/admin", "methods": ["POST"] },
                  "required_roles": ["admin"], "roles_claim": "realm.roles", "roles_match": "any" } ]
        }))
        .unwrap();
        assert_eq!(AuthnConfig::from_proto(&config.to_proto()).unwrap(), config);
    }

    #[test]
    fn unset_fields_are_the_documents_defaults() {
        let sent = pb::JwtPolicy {
            providers: vec![pb::JwtProvider {
                name: "ci".into(),
                issuer: "ci".into(),
                audiences: vec!["users".into()],
                ..Default::default()
            }],
            rules: Vec::new(),
        };
        let config = AuthnConfig::from_proto(&sent).unwrap();
        let defaults = ProviderConfig::new("ci", "ci", &["users"], None);
        assert_eq!(config.providers[0], defaults);
    }

    #[test]
    fn an_inline_jwks_that_is_not_json_names_its_field() {
        let sent = pb::JwtPolicy {
            providers: vec![pb::JwtProvider {
                jwks: Some(pb::JwksSource {
                    source: Some(pb::jwks_source::Source::InlineJson("{".into())),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            rules: Vec::new(),
        };
        let errors = AuthnConfig::from_proto(&sent).unwrap_err();
        assert_eq!(errors.0[0].field, "providers[0].jwks.inline");
    }
}

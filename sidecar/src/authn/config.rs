//! The JWT authentication policy of one service, as a document writes it.
//!
//! Field names are snake_case like every Weft KV document
//! (`docs/KV-SCHEMA.md`), durations are strings (`"2s"`, `"500ms"`), and
//! unknown fields are rejected so that a typo never silently weakens a
//! policy. [`AuthnConfig::from_json`] parses and validates in one go and
//! reports every problem with its field path; `Authenticator::new` (in
//! `verify`) validates again, so a config built in code is checked too.
//!
//! ```json
//! { "providers": [
//!     { "name": "corp", "issuer": "https://idp.example.com", "audiences": ["users"],
//!       "jwks": { "uri": "https://idp.example.com/.well-known/jwks.json", "fetch_timeout": "2s" },
//!       "algorithms": ["RS256", "ES256"],
//!       "from": [ { "header": "authorization", "prefix": "Bearer " }, { "cookie": "session" } ],
//!       "clock_leeway": "60s",
//!       "required_claims": { "tenant": "acme", "email": { "present": true } },
//!       "forward_token": true,
//!       "claim_headers": { "sub": "x-weft-jwt-sub", "iss": "x-weft-jwt-iss" } } ],
//!   "rules": [
//!     { "match": { "path_prefix": "/health" }, "public": true },
//!     { "match": { "path_prefix": "/admin/" }, "required_roles": ["admin"] } ] }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The JWT policy of one service's inbound side.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthnConfig {
    /// The identity providers whose tokens the service accepts. At least
    /// one. With several, a token goes to the provider whose `issuer` equals
    /// its `iss` claim.
    pub providers: Vec<ProviderConfig>,
    /// Per-path requirements, tried in order; the first whose `match` fits
    /// applies. A request no rule matches must carry a valid token of any
    /// provider and needs no role: the safe default for a path nobody
    /// thought of.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

/// One identity provider (an OpenID Connect issuer, or a shared-secret
/// signer).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Unique within the policy; shown in logs.
    pub name: String,
    /// The exact `iss` claim its tokens carry. Required and checked on every
    /// token.
    pub issuer: String,
    /// Accepted `aud` values; a token must name at least one. Required: a
    /// token minted for another service must not be replayable here.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Where the public keys come from. Required unless the provider only
    /// uses a `shared_secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwksConfig>,
    /// Accepted `alg` header values. Default: every asymmetric algorithm
    /// (`RS256`, `RS384`, `RS512`, `PS256`, `PS384`, `PS512`, `ES256`,
    /// `ES384`, `EdDSA`) when `jwks` is set, plus `HS256` when
    /// `shared_secret` is set; the key type narrows it further. HS* only with
    /// a `shared_secret`; `none` never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithms: Option<Vec<String>>,
    /// The HMAC key for HS256/384/512, base64 (standard or URL-safe alphabet,
    /// padding optional), at least 32 bytes decoded. Only this enables HS*.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_secret: Option<Secret>,
    /// Where the token is read from, tried in order. Default
    /// `[{ "header": "authorization", "prefix": "Bearer " }]`.
    #[serde(default = "default_from")]
    pub from: Vec<TokenSourceConfig>,
    /// Clock skew tolerated on `exp` and `nbf`. Default 60 s: clocks of
    /// hosts synced by NTP rarely drift more, and tokens live minutes.
    #[serde(default = "default_leeway", with = "duration_text")]
    pub clock_leeway: Duration,
    /// Claims that must be present (`{ "present": true }`) or equal a value
    /// (a string, number or boolean; a string also matches an array claim
    /// that contains it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub required_claims: BTreeMap<String, RequiredClaim>,
    /// Send the header that carried the token on to the app (default
    /// `true`). `false` removes it (`authorization` or the named header);
    /// tokens in a cookie or query parameter are forwarded as they came.
    #[serde(default = "yes")]
    pub forward_token: bool,
    /// Verified claims copied into request headers for the app: claim name
    /// -> header name. Default `{ "sub": "x-weft-jwt-sub", "iss":
    /// "x-weft-jwt-iss" }`; a map given here replaces it. Callers can never
    /// set these headers themselves: they are removed from every request.
    #[serde(default = "default_claim_headers")]
    pub claim_headers: BTreeMap<String, String>,
}

/// The public keys of a provider: a JWKS document inline, or fetched from a
/// URL and cached.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    /// A JWKS document (`{ "keys": [ ... ] }`) as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<serde_json::Value>,
    /// An `https://` (or `http://`) URL serving the JWKS document. Over
    /// https the server's certificate is always verified, against the
    /// system trust store unless `ca_pem` or `ca_file` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Only with an `https://` `uri`: PEM certificates of the CA(s) that
    /// sign the JWKS server's certificate, for a private IdP. With this (or
    /// `ca_file`) the system trust store is not used for this provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Only with an `https://` `uri`: the absolute path of a PEM file of such
    /// CA certificates on the sidecar's host, read when the policy is
    /// applied. Trusted together with `ca_pem` when both are given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// How long fetched keys are used before a refresh. Default: the
    /// response's `Cache-Control: max-age`, bounded to 30 s – 24 h, or 5
    /// minutes without one.
    #[serde(
        default,
        with = "duration_text::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub cache_duration: Option<Duration>,
    /// Bound on one fetch (connect, request, whole body). Default 2 s: a
    /// request waiting for keys waits at most this long.
    #[serde(default = "default_fetch_timeout", with = "duration_text")]
    pub fetch_timeout: Duration,
    /// A token naming a key the set lacks (a rotation at the IdP) triggers a
    /// refetch at most this often. Default 30 s: tokens with random `kid`s
    /// must not turn into a flood of fetches.
    #[serde(default = "default_refetch_interval", with = "duration_text")]
    pub min_refetch_interval: Duration,
}

/// One place a token may be: a header (with an optional scheme prefix such
/// as `Bearer `), a cookie or a query parameter. Exactly one of `header`,
/// `cookie`, `query`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSourceConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Only with `header`: the value must start with this (compared without
    /// regard to case, as HTTP auth schemes are); the rest is the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// What a required claim must be.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RequiredClaim {
    /// `{ "present": true }`: any value.
    Present(Presence),
    /// Equal to this value (string, number or boolean).
    Equals(serde_json::Value),
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Presence {
    pub present: bool,
}

/// What requests matching `match` need.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Free-form, shown in logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "match", default)]
    pub matches: RuleMatch,
    /// No token needed. A valid token still sets the claim headers; an
    /// invalid one is ignored (the request goes on without claims).
    #[serde(default)]
    pub public: bool,
    /// Roles (or OAuth scopes) the token must carry; missing ones are 403.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_roles: Vec<String>,
    /// The claim holding the roles: an array of strings or a space-separated
    /// string; a dotted name walks into objects (`realm_access.roles`).
    /// Default: `roles`, `scope` and `scp` are all read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles_claim: Option<String>,
    /// `all` (default) or `any` of `required_roles`.
    #[serde(default)]
    pub roles_match: RolesMatch,
}

/// Which requests a rule is for, in the vocabulary of route documents.
/// At most one of `path_prefix` and `path_exact`; neither means every path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_exact: Option<String>,
    /// Upper-case methods; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RolesMatch {
    #[default]
    All,
    Any,
}

/// A secret that never shows in logs or debug output.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl ProviderConfig {
    /// A provider with every default: Bearer tokens, 60 s leeway,
    /// `sub`/`iss` headers, the token forwarded.
    pub fn new(name: &str, issuer: &str, audiences: &[&str], jwks: Option<JwksConfig>) -> Self {
        Self {
            name: name.to_owned(),
            issuer: issuer.to_owned(),
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            jwks,
            algorithms: None,
            shared_secret: None,
            from: default_from(),
            clock_leeway: default_leeway(),
            required_claims: BTreeMap::new(),
            forward_token: true,
            claim_headers: default_claim_headers(),
        }
    }
}

impl JwksConfig {
    pub fn inline(jwks: serde_json::Value) -> Self {
        Self {
            inline: Some(jwks),
            ..Self::uri("")
        }
    }

    pub fn uri(uri: &str) -> Self {
        Self {
            inline: None,
            uri: (!uri.is_empty()).then(|| uri.to_owned()),
            ca_pem: None,
            ca_file: None,
            cache_duration: None,
            fetch_timeout: default_fetch_timeout(),
            min_refetch_interval: default_refetch_interval(),
        }
    }
}

impl TokenSourceConfig {
    pub fn bearer() -> Self {
        Self::header_with_prefix("authorization", "Bearer ")
    }

    pub fn header(name: &str) -> Self {
        Self {
            header: Some(name.to_owned()),
            ..Self::default()
        }
    }

    pub fn header_with_prefix(name: &str, prefix: &str) -> Self {
        Self {
            header: Some(name.to_owned()),
            prefix: Some(prefix.to_owned()),
            ..Self::default()
        }
    }

    pub fn cookie(name: &str) -> Self {
        Self {
            cookie: Some(name.to_owned()),
            ..Self::default()
        }
    }

    pub fn query(name: &str) -> Self {
        Self {
            query: Some(name.to_owned()),
            ..Self::default()
        }
    }
}

fn yes() -> bool {
    true
}

fn default_from() -> Vec<TokenSourceConfig> {
    vec![TokenSourceConfig::bearer()]
}

fn default_leeway() -> Duration {
    Duration::from_secs(60)
}

fn default_fetch_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_refetch_interval() -> Duration {
    Duration::from_secs(30)
}

/// The `sub` and `iss` headers every provider sets unless told otherwise.
pub fn default_claim_headers() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("sub".to_owned(), "x-weft-jwt-sub".to_owned()),
        ("iss".to_owned(), "x-weft-jwt-iss".to_owned()),
    ])
}

/// Durations written as strings (`"2s"`, `"500ms"`), read as the
/// sidecar's settings are (`weft_rules::duration::parse_setting`: the one
/// parser, a bare number being seconds).
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn format(d: Duration) -> String {
        if d.subsec_nanos() == 0 {
            format!("{}s", d.as_secs())
        } else {
            format!("{}ms", d.as_secs_f64() * 1000.0)
        }
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        weft_rules::duration::parse_setting(&text)
            .map_err(|e| serde::de::Error::custom(format!("`{text}`: {e}")))
    }

    pub mod option {
        use std::time::Duration;

        use serde::{Deserializer, Serializer};

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            super::deserialize(d).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_provider_gets_every_default() {
        let config = AuthnConfig::from_json(
            br#"{ "providers": [ { "name": "idp", "issuer": "https://idp", "audiences": ["users"],
                  "jwks": { "uri": "http://127.0.0.1:1/jwks" } } ] }"#,
        )
        .unwrap();
        let p = &config.providers[0];
        assert_eq!(p.from, vec![TokenSourceConfig::bearer()]);
        assert_eq!(p.clock_leeway, Duration::from_secs(60));
        assert!(p.forward_token);
        assert_eq!(p.claim_headers, default_claim_headers());
        let jwks = p.jwks.as_ref().unwrap();
        assert_eq!(jwks.fetch_timeout, Duration::from_secs(2));
        assert_eq!(jwks.min_refetch_interval, Duration::from_secs(30));
        assert_eq!(jwks.cache_duration, None);
        assert!(config.rules.is_empty());
    }

    #[test]
    fn parse_errors_name_the_field() {
        let err = AuthnConfig::from_json(
            br#"{ "providers": [ { "name": "idp", "issuer": "x", "audiences": ["a"],
                  "clock_leway": "5s" } ] }"#,
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].field, "providers[0].clock_leway");
        assert!(err.0[0].reason.contains("unknown field"), "{err}");

        let err = AuthnConfig::from_json(
            br#"{ "providers": [ { "name": "idp", "issuer": "x", "audiences": ["a"],
                  "clock_leeway": "soon" } ] }"#,
        )
        .unwrap_err();
        assert_eq!(err.0[0].field, "providers[0].clock_leeway");
    }

    /// The agent validates policy documents with the published JSON Schema
    /// before they reach a sidecar: its `jwt_*` definitions must name
    /// exactly the fields this module reads, or a valid policy would be
    /// refused (or a typo let through to the sidecar).
    #[test]
    fn the_published_schema_knows_exactly_these_fields() {
        let schema: serde_json::Value = serde_json::from_str(include_str!(
            "../../../discovery/schema/weft-kv.schema.json"
        ))
        .unwrap();
        let mut provider = ProviderConfig::new("idp", "https://idp", &["users"], None);
        provider.jwks = Some(JwksConfig {
            inline: Some(serde_json::json!({ "keys": [] })),
            uri: Some("https://idp/jwks".into()),
            ca_pem: Some("-----BEGIN CERTIFICATE-----".into()),
            ca_file: Some("/etc/weft/idp-ca.pem".into()),
            cache_duration: Some(Duration::from_secs(60)),
            ..JwksConfig::uri("")
        });
        provider.algorithms = Some(vec!["RS256".into()]);
        provider.shared_secret = Some(Secret("s".into()));
        provider.required_claims =
            BTreeMap::from([("tenant".to_owned(), RequiredClaim::Equals("acme".into()))]);
        provider.from = vec![TokenSourceConfig {
            header: Some("authorization".into()),
            prefix: Some("Bearer ".into()),
            cookie: Some("session".into()),
            query: Some("token".into()),
        }];
        let config = AuthnConfig {
            providers: vec![provider],
            rules: vec![RuleConfig {
                name: Some("admin".into()),
                matches: RuleMatch {
                    path_prefix: Some("/a".into()),
                    path_exact: Some("/a".into()),
                    methods: vec!["GET".into()],
                },
                public: false,
                required_roles: vec!["admin".into()],
                roles_claim: Some("roles".into()),
                roles_match: RolesMatch::Any,
            }],
        };
        let written = serde_json::to_value(&config).unwrap();
        let fields = |value: &serde_json::Value| -> Vec<String> {
            let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
            keys.sort();
            keys
        };
        let published = |definition: &str| fields(&schema["$defs"][definition]["properties"]);
        let provider = &written["providers"][0];
        let rule = &written["rules"][0];
        for (definition, value) in [
            ("jwt_policy", &written),
            ("jwt_provider", provider),
            ("jwt_jwks", &provider["jwks"]),
            ("jwt_token_source", &provider["from"][0]),
            ("jwt_rule", rule),
            ("jwt_rule_match", &rule["match"]),
        ] {
            assert_eq!(published(definition), fields(value), "{definition}");
        }
    }

    #[test]
    fn round_trips_through_json_without_showing_secrets_in_debug() {
        let mut p = ProviderConfig::new("idp", "https://idp", &["users"], None);
        p.shared_secret = Some(Secret("c2VjcmV0".into()));
        p.algorithms = Some(vec!["HS256".into()]);
        let config = AuthnConfig {
            providers: vec![p],
            rules: vec![RuleConfig {
                matches: RuleMatch {
                    path_prefix: Some("/admin/".into()),
                    ..RuleMatch::default()
                },
                required_roles: vec!["admin".into()],
                ..RuleConfig::default()
            }],
        };
        let json = serde_json::to_vec(&config).unwrap();
        let back: AuthnConfig = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, config);
        assert!(!format!("{config:?}").contains("c2VjcmV0"));
    }
}

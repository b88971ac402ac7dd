//! Policy documents (`policies/<service>`): who may call a service
//! (intentions, L4 or L7), what happens to everybody else (`default`),
//! whether its inbound listener also takes plaintext (`mtls`), and how end
//! users authenticate (`jwt`); and the mesh-wide defaults document
//! (`defaults`). Their translation to protocol messages is here too;
//! merging them with Consul's intentions into one `InboundPolicy` is the
//! snapshot builder's job.
//!
//! The `jwt` section's structure is checked here against the schema (which
//! mirrors the sidecar's `authn::config`); it is kept as written and passed
//! on as JSON, and the sidecar, which compiles it, checks its meaning.
//!
//! Unknown fields are rejected, so that a policy written for a newer agent
//! is never silently ignored by an older one.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use weft_proto::config::v1 as proto;

use super::error::{FieldError, from_serde, join, with_rule_reasons};
use super::rate_limit::{RateLimitsSection, Side};
use super::{DocumentKind, PathMatch, StringMatch, schema};

/// `*`: as a source, every caller (also callers without a mesh identity);
/// as a Consul intention's destination, every service.
pub const ANY_SERVICE: &str = "*";

/// The decision an intention or a default makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Deny,
}

impl From<Action> for proto::Action {
    fn from(action: Action) -> Self {
        match action {
            Action::Allow => proto::Action::Allow,
            Action::Deny => proto::Action::Deny,
        }
    }
}

/// What a service's inbound listener accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MtlsMode {
    /// Only mutual TLS with a leaf of the mesh's CA.
    Strict,
    /// Also plaintext from callers outside the mesh (for migration).
    Permissive,
}

impl From<MtlsMode> for proto::MtlsMode {
    fn from(mode: MtlsMode) -> Self {
        match mode {
            MtlsMode::Strict => proto::MtlsMode::Strict,
            MtlsMode::Permissive => proto::MtlsMode::Permissive,
        }
    }
}

/// The inbound policy of one service, as its document says it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    /// What happens to a request no intention matches. Default: the
    /// mesh-wide `defaults` document's, else allow.
    #[serde(default, rename = "default")]
    pub default_action: Option<Action>,
    /// At most one per source. Their order in the document does not decide
    /// anything: exact sources always come before `*`.
    #[serde(default)]
    pub intentions: Vec<PolicyIntention>,
    /// Whether the inbound listener also takes plaintext. Default: the
    /// mesh-wide `defaults` document's, else strict.
    #[serde(default)]
    pub mtls: Option<MtlsMode>,
    /// JWT authentication, as written (structure checked by the schema;
    /// the sidecar compiles it and checks the rest).
    #[serde(default)]
    pub jwt: Option<Value>,
    /// Limits the service's sidecars enforce on requests to it.
    #[serde(default)]
    pub rate_limits: Option<RateLimitsSection>,
    /// CORS for every request to the service. Boxed: most policies have
    /// none, and it would double the size of every `Document`.
    #[serde(default)]
    pub cors: Option<Box<super::cors::CorsDocument>>,
    /// Compression of the service's responses. Boxed, like `cors`.
    #[serde(default)]
    pub compression: Option<Box<super::compression::CompressionDocument>>,
    /// The service's response cache. Boxed, like `cors`.
    #[serde(default)]
    pub cache: Option<Box<super::cache::CacheDocument>>,
    /// Validation of the service's requests. Boxed, like `cors`.
    #[serde(default)]
    pub validation: Option<Box<super::validation::ValidationDocument>>,
}

/// The mesh-wide defaults (key `defaults`, the file `defaults.*` at the
/// root of the config dir).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsDocument {
    /// The default of every service whose policy document sets none.
    /// Default: allow (as Consul with ACLs off).
    #[serde(default, rename = "default")]
    pub default_action: Option<Action>,
    /// The mTLS mode of every service whose policy document sets none.
    /// Default: strict.
    #[serde(default)]
    pub mtls: Option<MtlsMode>,
}

/// Whether one source may call the service.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "IntentionWire")]
pub struct PolicyIntention {
    /// A service name, or [`ANY_SERVICE`].
    pub source: String,
    pub rule: IntentionRule,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IntentionRule {
    /// L4: this decision for every request from the source.
    Action(Action),
    /// L7: the first permission that matches decides; none matching denies.
    /// Never empty.
    Permissions(Vec<Permission>),
}

/// One L7 rule: every condition given must hold.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "PermissionWire")]
pub struct Permission {
    pub action: Action,
    /// None: any path.
    pub path: Option<PathMatch>,
    /// Upper case; empty: any method.
    pub methods: Vec<String>,
    /// Lower-case header name -> matcher; all must match.
    pub headers: BTreeMap<String, StringMatch>,
}

// ---- Wire forms, turned into the model by TryFrom so that impossible
// combinations cannot exist in it. The schema rejects them first, with
// better messages; these guard code that deserializes without the schema.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IntentionWire {
    source: String,
    #[serde(default)]
    action: Option<Action>,
    #[serde(default)]
    permissions: Option<Vec<Permission>>,
}

impl TryFrom<IntentionWire> for PolicyIntention {
    type Error = String;

    fn try_from(wire: IntentionWire) -> Result<Self, String> {
        let rule = match (wire.action, wire.permissions) {
            (Some(action), None) => IntentionRule::Action(action),
            (None, Some(permissions)) if !permissions.is_empty() => {
                IntentionRule::Permissions(permissions)
            }
            (None, Some(_)) => return Err("`permissions` must not be empty".into()),
            (Some(_), Some(_)) => return Err("set only one of `action` or `permissions`".into()),
            (None, None) => return Err("needs one of `action` or `permissions`".into()),
        };
        Ok(Self {
            source: wire.source,
            rule,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PermissionWire {
    action: Action,
    #[serde(default)]
    path_exact: Option<String>,
    #[serde(default)]
    path_prefix: Option<String>,
    #[serde(default)]
    path_regex: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    headers: BTreeMap<String, super::route::MatcherObject>,
}

impl TryFrom<PermissionWire> for Permission {
    type Error = String;

    fn try_from(wire: PermissionWire) -> Result<Self, String> {
        let path = match (wire.path_exact, wire.path_prefix, wire.path_regex) {
            (None, None, None) => None,
            (Some(exact), None, None) => Some(PathMatch::Exact(exact)),
            (None, Some(prefix), None) => Some(PathMatch::Prefix(prefix)),
            (None, None, Some(regex)) => Some(PathMatch::Regex(regex)),
            _ => return Err("set at most one of `path_exact`, `path_prefix`, `path_regex`".into()),
        };
        let headers = wire
            .headers
            .into_iter()
            .map(|(name, matcher)| {
                let matcher = matcher
                    .into_match()
                    .map_err(|why| format!("header `{name}`: {why}"))?;
                Ok((name, matcher))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            action: wire.action,
            path,
            methods: wire.methods,
            headers,
        })
    }
}

// ---- Parse and check.

/// Schema, then the checks the schema cannot express, then the typed
/// parse; every error of the first two at once.
pub(super) fn parse(key: &str, value: &Value) -> Result<PolicyDocument, Vec<FieldError>> {
    let typed = serde_path_to_error::deserialize::<_, PolicyDocument>(value);
    let mut rules = semantic_errors(key, value);
    if let Ok(document) = &typed {
        rules.extend(
            document
                .rate_limits
                .iter()
                .flat_map(|limits| limits.check(key, Side::Policy)),
        );
        if let Some(cors) = &document.cors {
            rules.extend(cors.check(key, "cors"));
        }
        if let Some(compression) = &document.compression {
            rules.extend(compression.check(key, "compression"));
        }
        if let Some(cache) = &document.cache {
            rules.extend(cache.check(key, "cache"));
        }
        if let Some(validation) = &document.validation {
            rules.extend(validation.check(key, "validation"));
        }
    }
    let errors = with_rule_reasons(schema::validate(key, DocumentKind::Policy, value), rules);
    if !errors.is_empty() {
        return Err(errors);
    }
    typed.map_err(|error| vec![from_serde(key, "", error)])
}

/// The defaults document: its schema, then the typed parse.
pub(super) fn parse_defaults(
    key: &str,
    value: &Value,
) -> Result<DefaultsDocument, Vec<FieldError>> {
    let errors = schema::validate(key, DocumentKind::Defaults, value);
    if !errors.is_empty() {
        return Err(errors);
    }
    serde_path_to_error::deserialize(value).map_err(|error| vec![from_serde(key, "", error)])
}

/// The checks a schema cannot express, on the untyped document so that
/// they also run where the schema found something else wrong: one source
/// per document, regexes compile (as the sidecar compiles them), header
/// names are valid and written in lower case (policies name headers as
/// HTTP/2 sends them and the sidecar compares them: a policy never depends
/// on how a caller spelled a name, and one header cannot be named twice in
/// different case). Only values that are strings
/// are looked at; the schema reports the others.
fn semantic_errors(key: &str, document: &Value) -> Vec<FieldError> {
    let mut errors = document
        .get("jwt")
        .map(|jwt| super::jwt::check(key, jwt))
        .unwrap_or_default();
    let Some(intentions) = document.get("intentions").and_then(Value::as_array) else {
        return errors;
    };
    let mut first_index_of: BTreeMap<&str, usize> = BTreeMap::new();
    for (index, intention) in intentions.iter().enumerate() {
        let at = format!("intentions[{index}]");
        if let Some(source) = intention.get("source").and_then(Value::as_str) {
            if let Err(reason) = weft_rules::name::check_intention_source(source) {
                errors.push(FieldError::new(key, join(&at, "source"), reason));
            } else if let Some(first) = first_index_of.get(source) {
                errors.push(FieldError::new(
                    key,
                    join(&at, "source"),
                    format!(
                        "`{source}` already has an intention at intentions[{first}]: one intention per source (put its permissions in one list)"
                    ),
                ));
            } else {
                first_index_of.insert(source, index);
            }
        }
        let Some(permissions) = intention.get("permissions").and_then(Value::as_array) else {
            continue;
        };
        for (number, permission) in permissions.iter().enumerate() {
            let at = format!("{at}.permissions[{number}]");
            if let Some(Value::Array(methods)) = permission.get("methods") {
                for (index, method) in methods.iter().enumerate() {
                    if let Some(method) = method.as_str()
                        && let Err(reason) = weft_rules::method::check(method)
                    {
                        errors.push(FieldError::new(
                            key,
                            format!("{at}.methods[{index}]"),
                            reason,
                        ));
                    }
                }
            }
            if let Some(pattern) = permission.get("path_regex").and_then(Value::as_str)
                && let Err(reason) = weft_rules::regex::check(pattern)
            {
                errors.push(FieldError::new(key, join(&at, "path_regex"), reason));
            }
            let Some(headers) = permission.get("headers").and_then(Value::as_object) else {
                continue;
            };
            for (name, matcher) in headers {
                let at = join(&join(&at, "headers"), name);
                if let Err(reason) = weft_rules::header::check_lower_case_name(name) {
                    errors.push(FieldError::new(key, at.clone(), reason));
                }
                if let Some(pattern) = matcher.get("regex").and_then(Value::as_str)
                    && let Err(reason) = weft_rules::regex::check(pattern)
                {
                    errors.push(FieldError::new(key, join(&at, "regex"), reason));
                }
            }
        }
    }
    errors
}

// ---- Translation.

impl PolicyIntention {
    /// The protocol's intention, with `origin` naming where it came from.
    pub fn to_proto(&self, origin: &str) -> proto::Intention {
        let (action, permissions) = match &self.rule {
            IntentionRule::Action(action) => (*action, Vec::new()),
            // With permissions, the action is unused: a request no
            // permission matches is denied. DENY says so in config dumps.
            IntentionRule::Permissions(permissions) => (
                Action::Deny,
                permissions.iter().map(Permission::to_proto).collect(),
            ),
        };
        proto::Intention {
            source: self.source.clone(),
            action: proto::Action::from(action).into(),
            permissions,
            origin: origin.to_string(),
        }
    }

    /// The decision this intention makes when it has no permissions.
    pub fn action(&self) -> Option<Action> {
        match self.rule {
            IntentionRule::Action(action) => Some(action),
            IntentionRule::Permissions(_) => None,
        }
    }
}

impl Permission {
    fn to_proto(&self) -> proto::Permission {
        use proto::permission::Path;
        use proto::string_matcher::Pattern;

        let path = self.path.as_ref().map(|path| match path {
            PathMatch::Exact(exact) => Path::PathExact(exact.clone()),
            PathMatch::Prefix(prefix) => Path::PathPrefix(prefix.clone()),
            PathMatch::Regex(regex) => Path::PathRegex(regex.clone()),
        });
        let headers = self
            .headers
            .iter()
            .map(|(name, matcher)| proto::HeaderMatcher {
                name: name.clone(),
                matcher: Some(proto::StringMatcher {
                    pattern: Some(match matcher {
                        StringMatch::Exact(value) => Pattern::Exact(value.clone()),
                        StringMatch::Prefix(value) => Pattern::Prefix(value.clone()),
                        StringMatch::Regex(value) => Pattern::Regex(value.clone()),
                        StringMatch::Present => Pattern::Present(true),
                    }),
                }),
                invert: false,
            })
            .collect();
        proto::Permission {
            action: proto::Action::from(self.action).into(),
            path,
            methods: self.methods.clone(),
            headers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::permission::Path;
    use proto::string_matcher::Pattern;
    use serde_json::json;

    const KEY: &str = "policies/users";

    fn parse_ok(value: Value) -> PolicyDocument {
        parse(KEY, &value).unwrap_or_else(|errors| panic!("{errors:#?}"))
    }

    /// Every error as `field: reason`, each checked to name the key.
    fn parse_err(value: Value) -> Vec<String> {
        parse(KEY, &value)
            .expect_err("the document is invalid")
            .into_iter()
            .map(|error| {
                assert_eq!(error.key, KEY);
                format!("{}: {}", error.field, error.reason)
            })
            .collect()
    }

    fn fields(errors: &[String]) -> Vec<&str> {
        errors
            .iter()
            .map(|error| error.split(": ").next().unwrap_or_default())
            .collect()
    }

    #[test]
    fn an_empty_policy_sets_nothing() {
        assert_eq!(parse_ok(json!({})), PolicyDocument::default());
    }

    #[test]
    fn l4_and_l7_intentions_parse_into_the_model() {
        let document = parse_ok(json!({
            "default": "deny",
            "intentions": [
                { "source": "web", "action": "allow" },
                { "source": "*", "action": "deny" },
                { "source": "admin", "permissions": [
                    { "action": "allow", "path_prefix": "/admin/", "methods": ["GET", "POST"],
                      "headers": { "x-role": { "exact": "ops" }, "x-trace": { "present": true },
                                   "x-v": { "regex": "v[0-9]+" }, "x-t": { "prefix": "abc" } } },
                    { "action": "deny", "path_regex": "/internal/.*" },
                    { "action": "allow", "path_exact": "/health" },
                    { "action": "deny" } ] } ] }));
        assert_eq!(document.default_action, Some(Action::Deny));
        assert_eq!(document.intentions.len(), 3);
        assert_eq!(document.intentions[0].source, "web");
        assert_eq!(
            document.intentions[0].rule,
            IntentionRule::Action(Action::Allow)
        );
        assert_eq!(document.intentions[1].source, ANY_SERVICE);
        let IntentionRule::Permissions(permissions) = &document.intentions[2].rule else {
            panic!("the admin intention is L7");
        };
        assert_eq!(permissions.len(), 4);
        assert_eq!(
            permissions[0].path,
            Some(PathMatch::Prefix("/admin/".into()))
        );
        assert_eq!(permissions[0].methods, ["GET", "POST"]);
        assert_eq!(
            permissions[0].headers["x-role"],
            StringMatch::Exact("ops".into())
        );
        assert_eq!(permissions[0].headers["x-trace"], StringMatch::Present);
        assert_eq!(
            permissions[1].path,
            Some(PathMatch::Regex("/internal/.*".into()))
        );
        assert_eq!(permissions[3].path, None, "no path: any path");
    }

    #[test]
    fn translation_keeps_permission_order_and_names_the_origin() {
        let document = parse_ok(json!({ "intentions": [
            { "source": "web", "action": "allow" },
            { "source": "admin", "permissions": [
                { "action": "deny", "path_exact": "/admin/keys", "methods": ["DELETE"] },
                { "action": "allow", "path_prefix": "/admin/", "headers": { "x-role": { "exact": "ops" } } } ] } ] }));
        let web = document.intentions[0].to_proto("kv:weft/policies/users");
        assert_eq!(web.source, "web");
        assert_eq!(web.action(), proto::Action::Allow);
        assert!(web.permissions.is_empty());
        assert_eq!(web.origin, "kv:weft/policies/users");

        let admin = document.intentions[1].to_proto("kv:weft/policies/users");
        assert_eq!(
            admin.action(),
            proto::Action::Deny,
            "with permissions, no match is a deny"
        );
        assert_eq!(admin.permissions.len(), 2);
        assert_eq!(admin.permissions[0].action(), proto::Action::Deny);
        assert_eq!(
            admin.permissions[0].path,
            Some(Path::PathExact("/admin/keys".into()))
        );
        assert_eq!(admin.permissions[0].methods, ["DELETE"]);
        let header = &admin.permissions[1].headers[0];
        assert_eq!(header.name, "x-role");
        assert_eq!(
            header.matcher.as_ref().and_then(|m| m.pattern.clone()),
            Some(Pattern::Exact("ops".into()))
        );
        assert!(!header.invert);
    }

    #[test]
    fn an_intention_needs_exactly_one_of_action_or_permissions() {
        assert_eq!(
            parse_err(json!({ "intentions": [ { "source": "web" } ] })),
            ["intentions[0]: needs one of `action`, `permissions`"]
        );
        assert_eq!(
            parse_err(
                json!({ "intentions": [ { "source": "web", "action": "allow",
                "permissions": [ { "action": "deny" } ] } ] })
            ),
            ["intentions[0].permissions: not allowed together with `action`"]
        );
        let errors = parse_err(json!({ "intentions": [ { "source": "web", "permissions": [] } ] }));
        assert_eq!(fields(&errors), ["intentions[0].permissions"], "{errors:?}");
        assert!(errors[0].contains("less than 1 item"), "{errors:?}");
    }

    #[test]
    fn a_source_is_a_service_name_or_a_star() {
        let errors = parse_err(json!({ "intentions": [
            { "source": "web/1", "action": "allow" },
            { "source": "", "action": "allow" },
            { "source": "web*", "action": "allow" } ] }));
        assert_eq!(
            fields(&errors),
            [
                "intentions[0].source",
                "intentions[1].source",
                "intentions[2].source"
            ],
            "{errors:?}"
        );
        assert!(
            errors[0].ends_with("is not a service name (letters, digits, `.`, `_` and `-`, starting and ending with a letter or digit), or `*` for any caller"),
            "{errors:?}"
        );
        assert_eq!(
            parse_err(json!({ "intentions": [ { "action": "allow" } ] })),
            ["intentions[0].source: required field is missing"]
        );
    }

    #[test]
    fn a_source_twice_is_rejected_naming_both_intentions() {
        let errors = parse_err(json!({ "intentions": [
            { "source": "web", "action": "allow" },
            { "source": "*", "action": "deny" },
            { "source": "web", "action": "deny" } ] }));
        assert_eq!(
            errors,
            [
                "intentions[2].source: `web` already has an intention at intentions[0]: one intention per source (put its permissions in one list)"
            ]
        );
    }

    #[test]
    fn actions_are_allow_or_deny() {
        let errors = parse_err(json!({ "default": "reject",
            "intentions": [ { "source": "web", "action": "ALLOW" } ] }));
        assert_eq!(
            fields(&errors),
            ["default", "intentions[0].action"],
            "{errors:?}"
        );
        assert!(errors[0].contains("is not one of"), "{errors:?}");
    }

    #[test]
    fn bad_regexes_are_rejected_as_the_sidecar_compiles_them() {
        let errors = parse_err(json!({ "intentions": [ { "source": "web", "permissions": [
            { "action": "allow", "path_regex": "/items/[0-9+" },
            { "action": "allow", "headers": { "x-v": { "regex": "a)(b" } } } ] } ] }));
        assert_eq!(
            errors,
            [
                "intentions[0].permissions[0].path_regex: invalid regex `/items/[0-9+`: unclosed character class",
                "intentions[0].permissions[1].headers.x-v.regex: invalid regex `a)(b`: unopened group",
            ]
        );
    }

    #[test]
    fn methods_are_known_upper_case_tokens_named_once() {
        let errors = parse_err(json!({ "intentions": [ { "source": "web", "permissions": [
            { "action": "allow", "methods": ["get"] },
            { "action": "allow", "methods": ["FETCH"] },
            { "action": "allow", "methods": ["GET", "GET"] },
            { "action": "allow", "methods": [] } ] } ] }));
        assert_eq!(
            fields(&errors),
            [
                "intentions[0].permissions[0].methods[0]",
                "intentions[0].permissions[1].methods[0]",
                "intentions[0].permissions[2].methods",
                "intentions[0].permissions[3].methods",
            ],
            "{errors:?}"
        );
        // The sidecar's reason (weft_rules::method), not the schema's list.
        assert!(
            errors[0].ends_with("`get` is not an HTTP method in upper case, like GET"),
            "{errors:?}"
        );
        assert!(errors[1].contains("\"FETCH\" is not one of"), "{errors:?}");
    }

    #[test]
    fn header_names_are_valid_and_lower_case() {
        let errors = parse_err(json!({ "intentions": [ { "source": "web", "permissions": [
            { "action": "allow", "headers": { "X-Role": { "exact": "ops" }, "bad name": { "present": true } } } ] } ] }));
        assert_eq!(
            errors,
            [
                "intentions[0].permissions[0].headers.X-Role: header names are written in lower case here: `x-role`",
                "intentions[0].permissions[0].headers.bad name: `bad name` is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)",
            ]
        );
    }

    #[test]
    fn header_matchers_take_exactly_one_form() {
        let errors = parse_err(json!({ "intentions": [ { "source": "web", "permissions": [
            { "action": "allow", "headers": {
                "x-a": { "exact": "1", "prefix": "2" },
                "x-b": { "present": false },
                "x-c": "plain",
                "x-d": {} } } ] } ] }));
        assert_eq!(
            fields(&errors),
            [
                "intentions[0].permissions[0].headers.x-a.prefix",
                "intentions[0].permissions[0].headers.x-b.present",
                "intentions[0].permissions[0].headers.x-c",
                "intentions[0].permissions[0].headers.x-d",
            ],
            "{errors:?}"
        );
    }

    #[test]
    fn one_path_condition_at_most() {
        assert_eq!(
            parse_err(json!({ "intentions": [ { "source": "web", "permissions": [
                { "action": "allow", "path_prefix": "/a", "path_exact": "/a" } ] } ] })),
            ["intentions[0].permissions[0].path_exact: not allowed together with `path_prefix`"]
        );
        let errors = parse_err(json!({ "intentions": [ { "source": "web", "permissions": [
            { "action": "allow", "path_prefix": "api" } ] } ] }));
        assert_eq!(
            errors,
            [
                "intentions[0].permissions[0].path_prefix: \"api\" is not a URL path, starting with /"
            ]
        );
    }

    #[test]
    fn a_permission_needs_an_action_and_knows_its_fields() {
        let errors = parse_err(json!({ "intentions": [ { "source": "web", "permissions": [
            { "path_prefix": "/" }, { "action": "allow", "path": "/" } ] } ] }));
        assert_eq!(
            fields(&errors),
            [
                "intentions[0].permissions[0].action",
                "intentions[0].permissions[1].path"
            ],
            "{errors:?}"
        );
        assert!(
            errors[1].contains("unknown field (allowed here: "),
            "{errors:?}"
        );
    }

    #[test]
    fn unknown_fields_are_rejected_and_listed() {
        let errors = parse_err(json!({ "allow": ["web"] }));
        assert_eq!(fields(&errors), ["allow"], "{errors:?}");
        assert!(
            errors[0].contains("`default`, `intentions`, `jwt`, `mtls`"),
            "{errors:?}"
        );
    }

    #[test]
    fn the_mtls_mode_is_strict_or_permissive() {
        assert_eq!(
            parse_ok(json!({ "mtls": "permissive" })).mtls,
            Some(MtlsMode::Permissive)
        );
        assert_eq!(parse_ok(json!({})).mtls, None);
        let errors = parse_err(json!({ "mtls": "off" }));
        assert_eq!(fields(&errors), ["mtls"], "{errors:?}");
        assert!(errors[0].contains("is not one of"), "{errors:?}");
    }

    /// A JWT section with every field the sidecar's `authn::config` knows.
    fn full_jwt() -> Value {
        json!({
            "providers": [
                { "name": "corp", "issuer": "https://idp.example.com", "audiences": ["users"],
                  "jwks": { "uri": "http://idp.internal:8080/jwks.json", "cache_duration": "10m",
                            "fetch_timeout": "2s", "min_refetch_interval": "30s" },
                  "algorithms": ["RS256", "ES256", "EdDSA"],
                  "from": [ { "header": "authorization", "prefix": "Bearer " },
                            { "cookie": "session" }, { "query": "access_token" } ],
                  "clock_leeway": "30s",
                  "required_claims": { "tenant": "acme", "level": 3, "verified": true,
                                       "email": { "present": true } },
                  "forward_token": false,
                  "claim_headers": { "sub": "x-weft-jwt-sub", "email": "x-weft-jwt-email" } },
                { "name": "private", "issuer": "https://sso.internal", "audiences": ["users"],
                  "jwks": { "uri": "https://sso.internal/certs",
                            "ca_pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
                            "ca_file": "/etc/weft/sso-ca.pem" } },
                { "name": "ci", "issuer": "ci", "audiences": ["users"],
                  "shared_secret": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA",
                  "algorithms": ["HS256"] },
                { "name": "static", "issuer": "static", "audiences": ["users"],
                  "jwks": { "inline": { "keys": [ { "kty": "OKP", "crv": "Ed25519", "x": "abc" } ] } } } ],
            "rules": [
                { "name": "health", "match": { "path_prefix": "/health" }, "public": true },
                { "match": { "path_exact": "/admin", "methods": ["POST", "PURGE"] },
                  "required_roles": ["admin", "ops"], "roles_claim": "realm_access.roles",
                  "roles_match": "any" } ]
        })
    }

    #[test]
    fn a_jwt_section_is_kept_as_written() {
        let document = parse_ok(json!({ "jwt": full_jwt() }));
        assert_eq!(document.jwt, Some(full_jwt()));
    }

    #[test]
    fn a_structurally_invalid_jwt_section_is_rejected_field_by_field() {
        let errors = parse_err(json!({ "jwt": {
            "providers": [
                { "name": "a", "issuer": "x", "audiences": [],
                  "jwks": { "inline": { "keys": [] }, "uri": "http://idp/jwks" },
                  "algorithms": ["none"], "clock_leway": "5s" },
                { "name": "b", "issuer": "y", "audiences": ["u"],
                  "jwks": { "uri": "ftp://idp/jwks", "fetch_timeout": "soon", "ca_file": "ca.pem" },
                  "from": [ { "header": "authorization", "cookie": "s" }, { "prefix": "Bearer " } ],
                  "required_claims": { "email": { "present": false } },
                  "claim_headers": { "sub": "bad header" } },
                { "name": "c", "issuer": "z", "audiences": ["u"] } ],
            "rules": [ { "match": { "path_prefix": "/a", "path_exact": "/a", "methods": ["get"] },
                         "required_roles": ["two words"], "roles_match": "some" } ] } }));
        assert_eq!(
            fields(&errors),
            [
                "jwt.providers[0].algorithms[0]",
                "jwt.providers[0].audiences",
                "jwt.providers[0].jwks.uri",
                "jwt.providers[0].clock_leway",
                "jwt.providers[1].claim_headers.sub",
                "jwt.providers[1].from[0].cookie",
                "jwt.providers[1].from[1]",
                "jwt.providers[1].jwks.ca_file",
                "jwt.providers[1].jwks.fetch_timeout",
                "jwt.providers[1].jwks.uri",
                "jwt.providers[1].required_claims.email.present",
                "jwt.providers[2]",
                "jwt.rules[0].match.methods[0]",
                "jwt.rules[0].match.path_exact",
                "jwt.rules[0].required_roles[0]",
                "jwt.rules[0].roles_match",
            ],
            "{errors:#?}"
        );
        let said = errors.join("\n");
        for reason in [
            "jwt.providers[0].jwks.uri: not allowed together with `inline`",
            "jwt.providers[0].clock_leway: unknown field (allowed here: ",
            "jwt.providers[1].from[1]: needs one of `header`, `cookie`, `query`",
            "jwt.providers[2]: needs one of `jwks`, `shared_secret`",
            "jwt.providers[1].jwks.uri: `ftp://idp/jwks` is not an https:// or http:// URL",
            "jwt.providers[1].jwks.ca_file: `ca.pem` is not an absolute path",
        ] {
            assert!(said.contains(reason), "missing {reason:?} in {said}");
        }
    }

    #[test]
    fn a_jwt_section_needs_providers() {
        assert_eq!(
            parse_err(json!({ "jwt": {} })),
            ["jwt.providers: required field is missing"]
        );
        let errors = parse_err(json!({ "jwt": { "providers": [] } }));
        assert_eq!(fields(&errors), ["jwt.providers"], "{errors:?}");
    }

    #[test]
    fn a_short_shared_secret_is_refused_and_never_quoted() {
        // The sidecar refuses it with the same reason (weft_rules::jwt), so
        // the agent does too, without showing the secret.
        let errors = parse_err(
            json!({ "jwt": { "providers": [ { "name": "ci", "issuer": "ci",
            "audiences": ["u"], "shared_secret": "hunter22" } ] } }),
        );
        assert_eq!(
            fields(&errors),
            ["jwt.providers[0].shared_secret"],
            "{errors:?}"
        );
        assert!(errors[0].contains("6 bytes is too short"), "{errors:?}");
        assert!(!errors[0].contains("hunter22"), "{errors:?}");
    }

    #[test]
    fn jwt_rules_the_schema_cannot_express_are_checked_as_the_sidecar_does() {
        let errors = parse_err(json!({ "jwt": {
            "providers": [
                { "name": "a", "issuer": "x", "audiences": ["u"], "clock_leeway": "10m",
                  "jwks": { "uri": "https://idp/jwks", "fetch_timeout": "2m" },
                  "claim_headers": { "sub": "authorization", "email": "x-weft-route" } },
                { "name": "a", "issuer": "x", "audiences": ["u"], "jwks": { "uri": "https://idp/jwks" } } ],
            "rules": [ { "public": true, "required_roles": ["admin"] } ] } }));
        assert_eq!(
            fields(&errors),
            [
                "jwt.providers[0].clock_leeway",
                "jwt.providers[0].jwks.fetch_timeout",
                "jwt.providers[0].claim_headers.email",
                "jwt.providers[0].claim_headers.sub",
                "jwt.providers[1].name",
                "jwt.providers[1].issuer",
                "jwt.rules[0].required_roles",
            ],
            "{errors:#?}"
        );
    }

    #[test]
    fn every_error_of_a_document_is_reported_at_once() {
        // A schema error in intention 0, a semantic one in 1, both in 2.
        let errors = parse_err(json!({ "intentions": [
            { "source": "web", "action": "maybe" },
            { "source": "api", "permissions": [ { "action": "allow", "path_regex": "(" } ] },
            { "source": "web", "permissions": [ { "action": "allow", "methods": ["get"],
                "headers": { "X-A": { "regex": "[" } } } ] } ] }));
        assert_eq!(
            fields(&errors),
            [
                "intentions[0].action",
                "intentions[2].permissions[0].methods[0]",
                "intentions[1].permissions[0].path_regex",
                "intentions[2].source",
                "intentions[2].permissions[0].headers.X-A",
                "intentions[2].permissions[0].headers.X-A.regex",
            ],
            "{errors:#?}"
        );
    }

    #[test]
    fn the_defaults_document_sets_the_mesh_wide_default() {
        assert_eq!(
            parse_defaults("defaults", &json!({ "default": "deny" })),
            Ok(DefaultsDocument {
                default_action: Some(Action::Deny),
                mtls: None,
            })
        );
        assert_eq!(
            parse_defaults("defaults", &json!({})),
            Ok(DefaultsDocument::default())
        );
        assert_eq!(
            parse_defaults("defaults", &json!({ "mtls": "permissive" })),
            Ok(DefaultsDocument {
                default_action: None,
                mtls: Some(MtlsMode::Permissive)
            })
        );
        let errors = parse_defaults(
            "defaults",
            &json!({ "default": "nope", "mtls": "loose", "intentions": [] }),
        )
        .expect_err("invalid");
        let found: Vec<_> = errors
            .iter()
            .map(|e| (e.key.as_str(), e.field.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                ("defaults", "default"),
                ("defaults", "mtls"),
                ("defaults", "intentions")
            ]
        );
    }

    #[test]
    fn the_typed_model_refuses_impossible_intentions_without_the_schema() {
        for (intention, reason) in [
            (json!({ "source": "a" }), "needs one of"),
            (
                json!({ "source": "a", "action": "allow", "permissions": [ { "action": "deny" } ] }),
                "only one of",
            ),
            (
                json!({ "source": "a", "permissions": [] }),
                "must not be empty",
            ),
            (
                json!({ "source": "a", "permissions": [ { "action": "deny", "path_exact": "/", "path_regex": "x" } ] }),
                "at most one of",
            ),
            (
                json!({ "source": "a", "permissions": [ { "action": "deny", "headers": { "x": { "present": false } } } ] }),
                "`present: false` is not supported",
            ),
            (
                json!({ "source": "a", "permissions": [ { "action": "deny", "headers": { "x": { "exact": "1", "prefix": "2" } } } ] }),
                "exactly one of",
            ),
        ] {
            let error = serde_json::from_value::<PolicyIntention>(intention.clone())
                .expect_err("impossible")
                .to_string();
            assert!(error.contains(reason), "{intention}: {error}");
        }
    }
}

//! Route documents (`routes/<host>`): the typed model, the checks the schema
//! cannot express, and the translation to a `RouteConfiguration`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use weft_proto::config::v1 as proto;

use super::cache::CacheDocument;
use super::compression::CompressionDocument;
use super::cors::CorsDocument;
use super::error::{FieldError, from_serde, join, with_rule_reasons};
use super::retry::RetryDocument;
use super::validation::ValidationDocument;
use super::{DocumentKind, duration, schema};

/// The route table for requests addressed to one host.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDocument {
    /// Extra authorities this table serves besides `<host>` and
    /// `<host>.weft`. Default: none.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Tried in order; the first match wins; no match is a 404.
    pub routes: Vec<Route>,
}

/// One route: which requests, and where they go.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RouteWire")]
pub struct Route {
    /// Free-form, for logs and config dumps. Default: none.
    pub name: Option<String>,
    /// Default: every request (path prefix `/`).
    pub matches: RouteMatch,
    pub target: RouteTarget,
    /// Replaces the matched path prefix. Only with [`PathMatch::Prefix`].
    pub rewrite_prefix: Option<String>,
    /// Replaces the Host / :authority sent upstream. Default: unchanged.
    pub host_rewrite: Option<String>,
    /// Overrides the destination's request timeout. Default: the destination's.
    pub timeout: Option<Duration>,
    /// Replaces the destination's retry policy. Default: the destination's.
    pub retries: Option<RetryDocument>,
    pub request_headers: HeaderMutation,
    pub response_headers: HeaderMutation,
    /// CORS for this route's requests. Default: none.
    pub cors: Option<CorsDocument>,
    /// Compression of this route's responses. Default: none.
    pub compression: Option<CompressionDocument>,
    /// The response cache of this route. Default: none.
    pub cache: Option<CacheDocument>,
    /// Request validation for this route. Default: none.
    pub validation: Option<ValidationDocument>,
}

/// Where a route sends its requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteTarget {
    /// Every request to one service.
    Destination(String),
    /// Each request to one of several services, with probability weight / sum.
    Split(Vec<WeightedDestination>),
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedDestination {
    pub destination: String,
    /// Relative weight; 0 takes no traffic (but the sum must be > 0).
    pub weight: u32,
}

/// What a request must look like; every condition must hold.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "MatchWire")]
pub struct RouteMatch {
    pub path: PathMatch,
    /// Header name (as written) -> matcher. Default: none.
    pub headers: BTreeMap<String, HeaderMatcher>,
    /// Any of these methods; empty = any method.
    pub methods: Vec<String>,
    /// Query parameter name -> matcher. Default: none.
    pub query: BTreeMap<String, StringMatch>,
}

impl Default for RouteMatch {
    /// A route without `match` takes every request.
    fn default() -> Self {
        Self {
            path: PathMatch::Prefix("/".into()),
            headers: BTreeMap::new(),
            methods: Vec::new(),
            query: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    /// Must match the whole path (without query).
    Regex(String),
}

/// How a header or query parameter value is matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
    /// Present, whatever the value.
    Present,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderMatcher {
    pub matcher: StringMatch,
    /// Matches when `matcher` does not (with `Present`: the header is absent).
    pub invert: bool,
}

/// Header changes. Default: none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMutation {
    /// Name -> value, replacing existing values.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Name -> value, appended to existing values.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Names removed.
    #[serde(default)]
    pub remove: Vec<String>,
}

impl HeaderMutation {
    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

// ---- Wire forms: the document's shape, turned into the typed model by
// TryFrom so that impossible combinations cannot exist in the model. The
// schema rejects them first, with better messages; these are the guard for
// code that deserializes without the schema.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteWire {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "match")]
    matches: RouteMatch,
    #[serde(default)]
    destination: Option<String>,
    #[serde(default)]
    split: Option<Vec<WeightedDestination>>,
    #[serde(default)]
    rewrite_prefix: Option<String>,
    #[serde(default)]
    host_rewrite: Option<String>,
    #[serde(default, deserialize_with = "duration::text::deserialize_option")]
    timeout: Option<Duration>,
    #[serde(default)]
    retries: Option<RetryDocument>,
    #[serde(default)]
    request_headers: HeaderMutation,
    #[serde(default)]
    response_headers: HeaderMutation,
    #[serde(default)]
    cors: Option<CorsDocument>,
    #[serde(default)]
    compression: Option<CompressionDocument>,
    #[serde(default)]
    cache: Option<CacheDocument>,
    validation: Option<ValidationDocument>,
}

impl TryFrom<RouteWire> for Route {
    type Error = String;

    fn try_from(wire: RouteWire) -> Result<Self, String> {
        let target = match (wire.destination, wire.split) {
            (Some(destination), None) => RouteTarget::Destination(destination),
            (None, Some(split)) => RouteTarget::Split(split),
            (Some(_), Some(_)) => return Err("set only one of `destination` or `split`".into()),
            (None, None) => return Err("needs one of `destination` or `split`".into()),
        };
        if wire.rewrite_prefix.is_some() && !matches!(wire.matches.path, PathMatch::Prefix(_)) {
            return Err("`rewrite_prefix` needs a `path_prefix` match".into());
        }
        Ok(Route {
            name: wire.name,
            matches: wire.matches,
            target,
            rewrite_prefix: wire.rewrite_prefix,
            host_rewrite: wire.host_rewrite,
            timeout: wire.timeout,
            retries: wire.retries,
            request_headers: wire.request_headers,
            response_headers: wire.response_headers,
            cors: wire.cors,
            compression: wire.compression,
            cache: wire.cache,
            validation: wire.validation,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchWire {
    #[serde(default)]
    path_prefix: Option<String>,
    #[serde(default)]
    path_exact: Option<String>,
    #[serde(default)]
    path_regex: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, MatcherWire>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    query: BTreeMap<String, MatcherWire>,
}

impl TryFrom<MatchWire> for RouteMatch {
    type Error = String;

    fn try_from(wire: MatchWire) -> Result<Self, String> {
        let path = match (wire.path_prefix, wire.path_exact, wire.path_regex) {
            (None, None, None) => PathMatch::Prefix("/".into()),
            (Some(prefix), None, None) => PathMatch::Prefix(prefix),
            (None, Some(exact), None) => PathMatch::Exact(exact),
            (None, None, Some(regex)) => PathMatch::Regex(regex),
            _ => return Err("set at most one of `path_prefix`, `path_exact`, `path_regex`".into()),
        };
        let headers = wire
            .headers
            .into_iter()
            .map(|(name, matcher)| {
                let invert = matcher.invert();
                matcher
                    .into_match()
                    .map(|matcher| (name, HeaderMatcher { matcher, invert }))
            })
            .collect::<Result<_, _>>()?;
        let query = wire
            .query
            .into_iter()
            .map(|(name, matcher)| {
                if matcher.invert() {
                    return Err(format!(
                        "query parameter `{name}`: `invert` is for headers only"
                    ));
                }
                matcher.into_match().map(|matcher| (name, matcher))
            })
            .collect::<Result<_, _>>()?;
        Ok(RouteMatch {
            path,
            headers,
            methods: wire.methods,
            query,
        })
    }
}

/// A plain string (exact) or `{exact|prefix|regex|present, invert?}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum MatcherWire {
    Plain(String),
    Object(MatcherObject),
}

/// `{exact|prefix|regex|present, invert?}`: header and query matchers of
/// routes, and header matchers of policy permissions (their schema has no
/// `invert`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MatcherObject {
    #[serde(default)]
    exact: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    present: Option<bool>,
    #[serde(default)]
    invert: Option<bool>,
}

impl MatcherWire {
    fn invert(&self) -> bool {
        matches!(
            self,
            MatcherWire::Object(MatcherObject {
                invert: Some(true),
                ..
            })
        )
    }

    fn into_match(self) -> Result<StringMatch, String> {
        match self {
            MatcherWire::Plain(value) => Ok(StringMatch::Exact(value)),
            MatcherWire::Object(object) => object.into_match(),
        }
    }
}

impl MatcherObject {
    pub(super) fn into_match(self) -> Result<StringMatch, String> {
        match (self.exact, self.prefix, self.regex, self.present) {
            (Some(exact), None, None, None) => Ok(StringMatch::Exact(exact)),
            (None, Some(prefix), None, None) => Ok(StringMatch::Prefix(prefix)),
            (None, None, Some(regex), None) => Ok(StringMatch::Regex(regex)),
            (None, None, None, Some(true)) => Ok(StringMatch::Present),
            (None, None, None, Some(false)) => {
                Err("`present: false` is not supported; use `present: true, invert: true`".into())
            }
            _ => Err("set exactly one of `exact`, `prefix`, `regex`, `present`".into()),
        }
    }
}

// ---- Parse and check.

/// Schema, then typed parse, then semantic checks; every error at once.
pub(super) fn parse(key: &str, value: &Value) -> Result<RouteDocument, Vec<FieldError>> {
    let schema_errors = schema::validate(key, DocumentKind::Route, value);
    let typed = serde_path_to_error::deserialize::<_, RouteDocument>(value);
    if schema_errors.is_empty() {
        let errors = match typed {
            Ok(document) => {
                let errors = document.check(key);
                if errors.is_empty() {
                    return Ok(document);
                }
                errors
            }
            Err(error) => vec![from_serde(key, "", error)],
        };
        return Err(errors);
    }
    // The schema found problems. Still apply the rules wherever the typed
    // model reads the document, so that one pass reports every error, and
    // a field both refuse gets the rule's reason (a sidecar's).
    let rules = match typed {
        Ok(document) => document.check(key),
        Err(_) => value
            .get("routes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
            .flat_map(|(index, route)| {
                let field = format!("routes[{index}]");
                match Route::deserialize(route) {
                    Ok(route) => route.check(key, &field),
                    // Not typed: its regexes can still be checked where they are strings.
                    Err(_) => regex_errors(key, &field, route),
                }
            })
            .collect(),
    };
    Err(with_rule_reasons(schema_errors, rules))
}

/// The regex checks of [`Route::check`] on an untyped route (one the schema
/// rejected for something else).
fn regex_errors(key: &str, field: &str, route: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let Some(matches) = route.get("match") else {
        return errors;
    };
    let at = join(field, "match");
    let mut candidates = vec![(join(&at, "path_regex"), matches.get("path_regex"))];
    for section in ["headers", "query"] {
        if let Some(Value::Object(entries)) = matches.get(section) {
            for (name, matcher) in entries {
                let field = join(&join(&join(&at, section), name), "regex");
                candidates.push((field, matcher.get("regex")));
            }
        }
    }
    for (field, pattern) in candidates {
        if let Some(Value::String(pattern)) = pattern
            && let Err(reason) = weft_rules::regex::check(pattern)
        {
            errors.push(FieldError::new(key, field, reason));
        }
    }
    errors
}

impl RouteDocument {
    /// The checks the schema cannot express, for every route.
    fn check(&self, key: &str) -> Vec<FieldError> {
        let aliases = self
            .aliases
            .iter()
            .enumerate()
            .filter_map(|(index, alias)| {
                weft_rules::name::check_domain(&alias.to_ascii_lowercase())
                    .err()
                    .map(|reason| FieldError::new(key, format!("aliases[{index}]"), reason))
            });
        let routes = self
            .routes
            .iter()
            .enumerate()
            .flat_map(|(index, route)| route.check(key, &format!("routes[{index}]")));
        aliases.chain(routes).collect()
    }

    /// Every service this table routes to (for the reference check against the catalog).
    pub fn destinations(&self) -> BTreeSet<String> {
        self.destination_fields()
            .into_iter()
            .map(|(_, service)| service)
            .collect()
    }

    /// Every (field, service) reference, in document order.
    pub(super) fn destination_fields(&self) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        for (index, route) in self.routes.iter().enumerate() {
            match &route.target {
                RouteTarget::Destination(service) => {
                    fields.push((format!("routes[{index}].destination"), service.clone()));
                }
                RouteTarget::Split(split) => {
                    for (entry, weighted) in split.iter().enumerate() {
                        fields.push((
                            format!("routes[{index}].split[{entry}].destination"),
                            weighted.destination.clone(),
                        ));
                    }
                }
            }
        }
        fields
    }

    /// The route table for `host`: one virtual host serving `host`,
    /// `host.weft` and the aliases (lower case, without duplicates), with
    /// the routes in document order.
    pub fn to_route_configuration(&self, host: &str) -> proto::RouteConfiguration {
        route_configuration(
            host,
            &self.aliases,
            self.routes.iter().map(Route::to_proto).collect(),
        )
    }
}

/// The route table of a host without a route document: everything goes to
/// the service of the same name.
pub fn default_route_configuration(host: &str) -> proto::RouteConfiguration {
    let route = proto::Route {
        name: "default".into(),
        r#match: Some(proto::RouteMatch {
            path: Some(proto::route_match::Path::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(proto::RouteAction {
            destination: Some(proto::route_action::Destination::Cluster(host.into())),
            ..Default::default()
        }),
        ..Default::default()
    };
    route_configuration(host, &[], vec![route])
}

fn route_configuration(
    host: &str,
    aliases: &[String],
    routes: Vec<proto::Route>,
) -> proto::RouteConfiguration {
    let mut domains: Vec<String> = Vec::new();
    let candidates = [host.to_string(), format!("{host}.weft")]
        .into_iter()
        .chain(aliases.iter().cloned());
    for domain in candidates {
        let domain = domain.to_ascii_lowercase();
        if !domains.contains(&domain) {
            domains.push(domain);
        }
    }
    proto::RouteConfiguration {
        name: host.into(),
        virtual_hosts: vec![proto::VirtualHost {
            name: host.into(),
            domains,
            routes,
        }],
    }
}

impl Route {
    /// The checks the schema cannot express; `field` is this route's path
    /// (`routes[2]`).
    fn check(&self, key: &str, field: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut error = |at: String, reason: String| errors.push(FieldError::new(key, at, reason));
        let matches = join(field, "match");

        if let PathMatch::Regex(pattern) = &self.matches.path
            && let Err(reason) = weft_rules::regex::check(pattern)
        {
            error(join(&matches, "path_regex"), reason);
        }
        let mut lower_names = BTreeSet::new();
        for (name, matcher) in &self.matches.headers {
            let at = join(&join(&matches, "headers"), name);
            if let Err(reason) = weft_rules::header::check_name(name) {
                error(at.clone(), reason);
            } else if !lower_names.insert(name.to_ascii_lowercase()) {
                error(
                    at.clone(),
                    "header named twice (names are case-insensitive)".into(),
                );
            }
            if let StringMatch::Regex(pattern) = &matcher.matcher
                && let Err(reason) = weft_rules::regex::check(pattern)
            {
                error(join(&at, "regex"), reason);
            }
        }
        for (index, method) in self.matches.methods.iter().enumerate() {
            if let Err(reason) = weft_rules::method::check(method) {
                error(format!("{matches}.methods[{index}]"), reason);
            }
        }
        for (name, matcher) in &self.matches.query {
            if let Err(reason) = weft_rules::name::check_query_parameter_name(name) {
                error(join(&join(&matches, "query"), name), reason);
            }
            if let StringMatch::Regex(pattern) = matcher
                && let Err(reason) = weft_rules::regex::check(pattern)
            {
                error(join(&join(&join(&matches, "query"), name), "regex"), reason);
            }
        }

        if let RouteTarget::Split(split) = &self.target
            && let Err(reason) =
                weft_rules::split::check_weights(split.iter().map(|entry| entry.weight))
        {
            error(join(field, "split"), reason);
        }
        if let Some(timeout) = self.timeout
            && let Err(reason) = weft_rules::duration::check_positive(timeout)
        {
            error(join(field, "timeout"), reason);
        }
        if let Some(retries) = &self.retries {
            for e in retries.check(key, &join(field, "retries")) {
                error(e.field, e.reason);
            }
        }
        if let Some(cors) = &self.cors {
            for e in cors.check(key, &join(field, "cors")) {
                error(e.field, e.reason);
            }
        }
        if let Some(compression) = &self.compression {
            for e in compression.check(key, &join(field, "compression")) {
                error(e.field, e.reason);
            }
        }
        if let Some(cache) = &self.cache {
            for e in cache.check(key, &join(field, "cache")) {
                error(e.field, e.reason);
            }
        }
        if let Some(validation) = &self.validation {
            for e in validation.check(key, &join(field, "validation")) {
                error(e.field, e.reason);
            }
        }
        if let Some(host) = &self.host_rewrite
            && let Err(reason) = weft_rules::name::check_authority(host)
        {
            error(join(field, "host_rewrite"), reason);
        }
        for (which, mutation) in [
            ("request_headers", &self.request_headers),
            ("response_headers", &self.response_headers),
        ] {
            let at = join(field, which);
            for (list, entries) in [("set", &mutation.set), ("add", &mutation.add)] {
                for (name, value) in entries {
                    let at = join(&join(&at, list), name);
                    if let Err(reason) = weft_rules::header::check_name(name) {
                        error(at.clone(), reason);
                    }
                    if let Err(reason) = weft_rules::header::check_value(value) {
                        error(at, reason);
                    }
                }
            }
            for (index, name) in mutation.remove.iter().enumerate() {
                if let Err(reason) = weft_rules::header::check_name(name) {
                    error(format!("{at}.remove[{index}]"), reason);
                }
            }
        }
        errors
    }

    fn to_proto(&self) -> proto::Route {
        use proto::route_action::Destination;
        use proto::route_match::Path;

        let path = match &self.matches.path {
            PathMatch::Prefix(prefix) => Path::Prefix(prefix.clone()),
            PathMatch::Exact(exact) => Path::Exact(exact.clone()),
            PathMatch::Regex(regex) => Path::Regex(regex.clone()),
        };
        let headers = self
            .matches
            .headers
            .iter()
            .map(|(name, matcher)| proto::HeaderMatcher {
                name: name.to_ascii_lowercase(),
                matcher: Some(string_matcher(&matcher.matcher)),
                invert: matcher.invert,
            })
            .collect();
        let query_parameters = self
            .matches
            .query
            .iter()
            .map(|(name, matcher)| proto::QueryParameterMatcher {
                name: name.clone(),
                matcher: Some(string_matcher(matcher)),
            })
            .collect();
        let destination = match &self.target {
            RouteTarget::Destination(service) => Destination::Cluster(service.clone()),
            RouteTarget::Split(split) => Destination::WeightedClusters(proto::WeightedClusters {
                clusters: split
                    .iter()
                    .map(|entry| proto::ClusterWeight {
                        name: entry.destination.clone(),
                        weight: entry.weight,
                    })
                    .collect(),
            }),
        };
        proto::Route {
            name: self.name.clone().unwrap_or_default(),
            r#match: Some(proto::RouteMatch {
                path: Some(path),
                headers,
                methods: self.matches.methods.clone(),
                query_parameters,
            }),
            action: Some(proto::RouteAction {
                destination: Some(destination),
                prefix_rewrite: self.rewrite_prefix.clone().unwrap_or_default(),
                host_rewrite: self.host_rewrite.clone().unwrap_or_default(),
                timeout: self.timeout.map(weft_rules::duration::to_proto),
                retry_policy: self.retries.as_ref().map(RetryDocument::to_proto),
            }),
            request_headers: header_mutation(&self.request_headers),
            response_headers: header_mutation(&self.response_headers),
            cors: self.cors.as_ref().map(CorsDocument::to_proto),
            compression: self.compression.as_ref().map(CompressionDocument::to_proto),
            cache: self.cache.as_ref().map(CacheDocument::to_proto),
            validation: self.validation.as_ref().map(ValidationDocument::to_proto),
        }
    }
}

fn string_matcher(matcher: &StringMatch) -> proto::StringMatcher {
    use proto::string_matcher::Pattern;
    let pattern = match matcher {
        StringMatch::Exact(value) => Pattern::Exact(value.clone()),
        StringMatch::Prefix(value) => Pattern::Prefix(value.clone()),
        StringMatch::Regex(value) => Pattern::Regex(value.clone()),
        StringMatch::Present => Pattern::Present(true),
    };
    proto::StringMatcher {
        pattern: Some(pattern),
    }
}

/// `None` when there is nothing to change, so that an unchanged route
/// encodes (and hashes) the same whether or not the document spelled out
/// empty header sections.
fn header_mutation(mutation: &HeaderMutation) -> Option<proto::HeaderMutation> {
    if mutation.is_empty() {
        return None;
    }
    let values = |entries: &BTreeMap<String, String>| {
        entries
            .iter()
            .map(|(name, value)| proto::HeaderValue {
                name: name.to_ascii_lowercase(),
                value: value.clone(),
            })
            .collect()
    };
    Some(proto::HeaderMutation {
        set: values(&mutation.set),
        add: values(&mutation.add),
        remove: mutation
            .remove
            .iter()
            .map(|name| name.to_ascii_lowercase())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::route_action::Destination;
    use proto::route_match::Path;
    use proto::string_matcher::Pattern;
    use serde_json::json;

    /// The example of the issue, plus every matcher and action form.
    fn full_example() -> Value {
        json!({
          "aliases": ["Users.Example.com"],
          "routes": [
            { "name": "v2-by-header",
              "match": { "path_prefix": "/api/v1/users/", "headers": { "x-api-version": "v2" } },
              "destination": "users-v2", "rewrite_prefix": "/" },
            { "match": { "path_prefix": "/api/v1/users/" }, "destination": "users", "rewrite_prefix": "/" },
            { "match": { "path_exact": "/health" }, "destination": "users" },
            { "match": { "path_regex": "^/items/[0-9]+$", "methods": ["GET", "HEAD"],
                         "query": { "debug": { "present": true } },
                         "headers": { "X-A": { "prefix": "abc" }, "x-b": { "regex": "^v[0-9]$" },
                                      "x-c": { "present": true }, "x-d": { "exact": "1" },
                                      "x-e": { "present": true, "invert": true } } },
              "destination": "users", "timeout": "2s", "host_rewrite": "users.internal",
              "request_headers": { "set": { "X-K": "v" }, "add": { "x-k2": "v" }, "remove": ["X-Drop"] },
              "response_headers": { "set": { "x-served-by": "weft" } } },
            { "match": { "path_prefix": "/" },
              "split": [ { "destination": "orders", "weight": 90 }, { "destination": "orders-v2", "weight": 10 } ] }
          ]
        })
    }

    fn parse_ok(value: Value) -> RouteDocument {
        parse("routes/users", &value).unwrap_or_else(|errors| panic!("{errors:#?}"))
    }

    fn parse_err(value: Value) -> Vec<String> {
        parse("routes/users", &value)
            .expect_err("the document is invalid")
            .into_iter()
            .map(|e| {
                assert_eq!(e.key, "routes/users");
                format!("{}: {}", e.field, e.reason)
            })
            .collect()
    }

    #[test]
    fn the_issue_example_parses_into_the_typed_model() {
        let document = parse_ok(full_example());
        assert_eq!(document.routes.len(), 5);
        let first = &document.routes[0];
        assert_eq!(first.name.as_deref(), Some("v2-by-header"));
        assert_eq!(
            first.matches.path,
            PathMatch::Prefix("/api/v1/users/".into())
        );
        assert_eq!(
            first.matches.headers["x-api-version"],
            HeaderMatcher {
                matcher: StringMatch::Exact("v2".into()),
                invert: false
            }
        );
        assert_eq!(first.target, RouteTarget::Destination("users-v2".into()));
        assert_eq!(first.rewrite_prefix.as_deref(), Some("/"));
        assert_eq!(document.routes[3].timeout, Some(Duration::from_secs(2)));
        assert_eq!(
            document.routes[4].target,
            RouteTarget::Split(vec![
                WeightedDestination {
                    destination: "orders".into(),
                    weight: 90
                },
                WeightedDestination {
                    destination: "orders-v2".into(),
                    weight: 10
                },
            ])
        );
        assert_eq!(
            document.destinations().into_iter().collect::<Vec<_>>(),
            ["orders", "orders-v2", "users", "users-v2"]
        );
    }

    #[test]
    fn a_route_without_match_takes_every_request() {
        let document = parse_ok(json!({ "routes": [ { "destination": "users" } ] }));
        assert_eq!(document.routes[0].matches, RouteMatch::default());
        assert_eq!(
            document.routes[0].matches.path,
            PathMatch::Prefix("/".into())
        );
    }

    #[test]
    fn translation_keeps_order_and_lowercases_domains_and_header_names() {
        let config = parse_ok(full_example()).to_route_configuration("users");
        assert_eq!(config.name, "users");
        assert_eq!(config.virtual_hosts.len(), 1);
        let host = &config.virtual_hosts[0];
        assert_eq!(host.domains, ["users", "users.weft", "users.example.com"]);
        assert_eq!(host.routes.len(), 5);

        let first = &host.routes[0];
        assert_eq!(first.name, "v2-by-header");
        let matches = first.r#match.as_ref().unwrap();
        assert_eq!(matches.path, Some(Path::Prefix("/api/v1/users/".into())));
        assert_eq!(matches.headers[0].name, "x-api-version");
        assert_eq!(
            matches.headers[0].matcher.as_ref().unwrap().pattern,
            Some(Pattern::Exact("v2".into()))
        );
        let action = first.action.as_ref().unwrap();
        assert_eq!(
            action.destination,
            Some(Destination::Cluster("users-v2".into()))
        );
        assert_eq!(action.prefix_rewrite, "/");
        assert_eq!(
            first.request_headers, None,
            "no header changes: no mutation message"
        );

        let items = &host.routes[3];
        let matches = items.r#match.as_ref().unwrap();
        assert_eq!(matches.path, Some(Path::Regex("^/items/[0-9]+$".into())));
        assert_eq!(matches.methods, ["GET", "HEAD"]);
        let headers: Vec<_> = matches
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.as_str(),
                    h.matcher.as_ref().unwrap().pattern.clone().unwrap(),
                    h.invert,
                )
            })
            .collect();
        assert_eq!(
            headers,
            [
                ("x-a", Pattern::Prefix("abc".into()), false),
                ("x-b", Pattern::Regex("^v[0-9]$".into()), false),
                ("x-c", Pattern::Present(true), false),
                ("x-d", Pattern::Exact("1".into()), false),
                ("x-e", Pattern::Present(true), true),
            ]
        );
        assert_eq!(matches.query_parameters[0].name, "debug");
        assert_eq!(
            matches.query_parameters[0]
                .matcher
                .as_ref()
                .unwrap()
                .pattern,
            Some(Pattern::Present(true))
        );
        let action = items.action.as_ref().unwrap();
        assert_eq!(action.host_rewrite, "users.internal");
        assert_eq!(
            action.timeout,
            Some(prost_types::Duration {
                seconds: 2,
                nanos: 0
            })
        );
        let request = items.request_headers.as_ref().unwrap();
        assert_eq!(
            (request.set[0].name.as_str(), request.set[0].value.as_str()),
            ("x-k", "v")
        );
        assert_eq!(request.add[0].name, "x-k2");
        assert_eq!(request.remove, ["x-drop"]);
        assert_eq!(
            items.response_headers.as_ref().unwrap().set[0].name,
            "x-served-by"
        );

        let split = host.routes[4].action.as_ref().unwrap();
        assert_eq!(
            split.destination,
            Some(Destination::WeightedClusters(proto::WeightedClusters {
                clusters: vec![
                    proto::ClusterWeight {
                        name: "orders".into(),
                        weight: 90
                    },
                    proto::ClusterWeight {
                        name: "orders-v2".into(),
                        weight: 10
                    },
                ]
            }))
        );
        assert_eq!(
            split.timeout, None,
            "no route timeout: the cluster's applies"
        );
    }

    #[test]
    fn the_default_route_table_sends_everything_to_the_same_name() {
        let config = default_route_configuration("Orders");
        let host = &config.virtual_hosts[0];
        assert_eq!(host.domains, ["orders", "orders.weft"]);
        assert_eq!(host.routes.len(), 1);
        assert_eq!(
            host.routes[0].r#match.as_ref().unwrap().path,
            Some(Path::Prefix("/".into()))
        );
        assert_eq!(
            host.routes[0].action.as_ref().unwrap().destination,
            Some(Destination::Cluster("Orders".into()))
        );
    }

    #[test]
    fn a_bad_regex_is_rejected_with_its_field() {
        let errors = parse_err(json!({ "routes": [
            { "match": { "path_regex": "^/items/[0-9+$" }, "destination": "users" } ] }));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("routes[0].match.path_regex: invalid regex `^/items/[0-9+$`: unclosed character class"), "{errors:?}");
    }

    #[test]
    fn bad_header_and_query_regexes_are_rejected_too() {
        let errors = parse_err(json!({ "routes": [ { "destination": "users", "match": {
            "headers": { "x-b": { "regex": "(" } }, "query": { "q": { "regex": "[" } } } } ] }));
        let fields: Vec<_> = errors
            .iter()
            .map(|e| e.split(": ").next().unwrap())
            .collect();
        assert_eq!(
            fields,
            [
                "routes[0].match.headers.x-b.regex",
                "routes[0].match.query.q.regex"
            ]
        );
    }

    #[test]
    fn weights_summing_to_zero_are_rejected() {
        let errors = parse_err(json!({ "routes": [ { "split": [
            { "destination": "orders", "weight": 0 }, { "destination": "orders-v2", "weight": 0 } ] } ] }));
        assert_eq!(
            errors,
            [
                "routes[0].split: the weights sum to 0: give at least one destination a weight above 0"
            ]
        );
    }

    #[test]
    fn both_destination_and_split_are_rejected() {
        let errors = parse_err(json!({ "routes": [ { "destination": "users",
            "split": [ { "destination": "orders", "weight": 1 } ] } ] }));
        assert_eq!(
            errors,
            ["routes[0].split: not allowed together with `destination`"]
        );
    }

    #[test]
    fn an_unknown_field_is_rejected_with_the_allowed_ones() {
        let errors = parse_err(
            json!({ "routes": [ { "destination": "users", "match": { "path_prefx": "/" } } ] }),
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("routes[0].match.path_prefx: unknown field (allowed here: "),
            "{errors:?}"
        );
        assert!(errors[0].contains("`path_prefix`"), "{errors:?}");
    }

    #[test]
    fn a_routes_retries_translate_and_are_checked_with_their_field() {
        let document = parse_ok(json!({ "routes": [
            { "destination": "users", "retries": { "max_attempts": 3, "retry_non_idempotent": true } },
            { "destination": "users" } ] }));
        let rc = document.to_route_configuration("users");
        let action = |i: usize| rc.virtual_hosts[0].routes[i].action.clone().unwrap();
        let policy = action(0).retry_policy.unwrap();
        assert_eq!(policy.max_attempts, 3);
        assert!(policy.retry_non_idempotent);
        assert!(
            action(1).retry_policy.is_none(),
            "the destination's applies"
        );
        let errors = parse_err(json!({ "routes": [
            { "destination": "users", "retries": { "backoff": { "base": "1s", "max": "1ms" } } } ] }));
        assert!(
            errors[0].starts_with("routes[0].retries.backoff.max:"),
            "{errors:?}"
        );
    }

    #[test]
    fn bad_and_zero_durations_are_rejected() {
        let errors = parse_err(json!({ "routes": [
            { "destination": "users", "timeout": "2 s" },
            { "destination": "users", "timeout": "0ms" } ] }));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("routes[0].timeout: \"2 s\" is not a positive duration"),
            "{errors:?}"
        );
        assert_eq!(errors[1], "routes[1].timeout: must be greater than 0");
    }

    #[test]
    fn header_names_values_and_host_rewrites_are_checked() {
        let errors = parse_err(json!({ "routes": [ {
            "destination": "users",
            "host_rewrite": "bad host",
            "match": { "headers": { "bad name": "x" } },
            "request_headers": { "set": { "x-ok": "line\nbreak" }, "remove": ["bad:name"] },
            "response_headers": { "add": { "(x)": "v" } } } ] }));
        let fields: Vec<_> = errors
            .iter()
            .map(|e| e.split(": ").next().unwrap())
            .collect();
        assert_eq!(
            fields,
            [
                "routes[0].match.headers.bad name",
                "routes[0].host_rewrite",
                "routes[0].request_headers.set.x-ok",
                "routes[0].request_headers.remove[0]",
                "routes[0].response_headers.add.(x)",
            ],
            "{errors:#?}"
        );
    }

    #[test]
    fn header_names_differing_only_in_case_are_one_header() {
        let errors = parse_err(json!({ "routes": [ { "destination": "users",
            "match": { "headers": { "X-A": "1", "x-a": "2" } } } ] }));
        assert_eq!(
            errors,
            ["routes[0].match.headers.x-a: header named twice (names are case-insensitive)"]
        );
    }

    #[test]
    fn every_error_of_a_document_is_reported_at_once() {
        // Route 0 breaks the schema, route 1 a semantic rule, route 2 both
        // kinds at once, route 3 is fine.
        let errors = parse_err(json!({ "routes": [
            { "destination": "users", "colour": "blue" },
            { "destination": "users", "match": { "path_regex": "(" } },
            { "split": [], "match": { "path_regex": "(", "headers": { "x": { "regex": "[" } } } },
            { "destination": "users" } ] }));
        let fields: Vec<_> = errors
            .iter()
            .map(|e| e.split(": ").next().unwrap())
            .collect();
        assert_eq!(
            fields,
            [
                "routes[0].colour",
                "routes[2].split",
                "routes[1].match.path_regex",
                "routes[2].match.path_regex",
                "routes[2].match.headers.x.regex",
            ],
            "{errors:#?}"
        );
    }

    #[test]
    fn the_typed_model_refuses_impossible_routes_without_the_schema() {
        // Code that deserializes a Route directly (without `parse`) still
        // cannot build a route the schema would reject.
        for (route, reason) in [
            (
                json!({ "destination": "a", "split": [] }),
                "set only one of",
            ),
            (json!({ "name": "x" }), "needs one of"),
            (
                json!({ "destination": "a", "rewrite_prefix": "/", "match": { "path_exact": "/a" } }),
                "needs a `path_prefix`",
            ),
            (
                json!({ "destination": "a", "match": { "path_exact": "/a", "path_regex": "a" } }),
                "at most one of",
            ),
            (
                json!({ "destination": "a", "match": { "headers": { "x": { "present": false } } } }),
                "invert: true",
            ),
            (
                json!({ "destination": "a", "match": { "query": { "x": { "present": true, "invert": true } } } }),
                "headers only",
            ),
        ] {
            let error = serde_json::from_value::<Route>(route.clone())
                .unwrap_err()
                .to_string();
            assert!(error.contains(reason), "{route}: {error}");
        }
    }
}

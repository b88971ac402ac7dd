//! Compiled request matchers, for the routing table's routes and the
//! intentions' permissions (`authz`), so they sit below both. Regexes are
//! compiled once, when a route table or policy is accepted, and anchored
//! so that they must match the whole value (as Envoy's `safe_regex` does):
//! `/users/[0-9]+` does not match `/users/1/x`.

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;
use weft_proto::config::v1 as pb;

use crate::nack::Errors;

/// How a route matches the request path (without the query).
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// No path condition.
    Any,
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(p) => path == p,
            Self::Prefix(p) => path.starts_with(p.as_str()),
            Self::Regex(re) => re.is_match(path),
        }
    }
}

/// How a header value or query parameter value matches.
#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
    /// Present with any value.
    Present,
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(e) => value == e,
            Self::Prefix(p) => value.starts_with(p.as_str()),
            Self::Regex(re) => re.is_match(value),
            Self::Present => true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub matcher: StringMatch,
    /// Match when the header does NOT match (or is absent).
    pub invert: bool,
}

impl HeaderMatch {
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter().peekable();
        let hit = if values.peek().is_none() {
            false
        } else {
            // A repeated header matches if any of its values does; a value
            // that is not visible ASCII never matches a text pattern.
            values.any(|v| v.to_str().is_ok_and(|v| self.matcher.matches(v)))
        };
        hit != self.invert
    }
}

#[derive(Debug, Clone)]
pub struct QueryMatch {
    pub name: String,
    pub matcher: StringMatch,
}

impl QueryMatch {
    /// Matches against the raw query string (`a=1&b=2`). Names and values
    /// are compared as sent (not percent-decoded): that is what the route
    /// author sees in their own requests.
    pub fn matches(&self, query: Option<&str>) -> bool {
        let Some(query) = query else { return false };
        query.split('&').any(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            name == self.name && self.matcher.matches(value)
        })
    }
}

/// Everything a route requires of a request; all conditions must hold.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub headers: Vec<HeaderMatch>,
    /// Empty = any method.
    pub methods: Vec<Method>,
    pub query: Vec<QueryMatch>,
}

impl RouteMatch {
    /// A match for every request (test tables).
    #[cfg(test)]
    pub(crate) fn any() -> Self {
        RouteMatch {
            path: PathMatch::Any,
            headers: Vec::new(),
            methods: Vec::new(),
            query: Vec::new(),
        }
    }

    pub fn matches<B>(&self, req: &http::Request<B>) -> bool {
        let uri = req.uri();
        self.path.matches(uri.path())
            && (self.methods.is_empty() || self.matches_method(req))
            && self.headers.iter().all(|h| h.matches(req.headers()))
            && self.query.iter().all(|q| q.matches(uri.query()))
    }

    /// The request's method is one of the route's; a CORS preflight
    /// (`OPTIONS` with `Origin`, asking for a method) counts as the method
    /// it asks about, so that a `PUT`-only route gets, and can answer
    /// (`crate::cors`), the preflights of its own calls.
    fn matches_method<B>(&self, req: &http::Request<B>) -> bool {
        if self.methods.contains(req.method()) {
            return true;
        }
        is_cors_preflight(req)
            && req
                .headers()
                .get(http::header::ACCESS_CONTROL_REQUEST_METHOD)
                .is_some_and(|asked| self.methods.iter().any(|m| m.as_str() == asked))
    }
}

/// A CORS preflight: `OPTIONS` with `Origin`, asking whether a method may
/// be used. The browser's question, never the app's business; read by
/// route matching and by `crate::cors`.
pub fn is_cors_preflight<B>(req: &http::Request<B>) -> bool {
    let headers = req.headers();
    req.method() == Method::OPTIONS
        && headers.contains_key(http::header::ORIGIN)
        && headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

// Compiling matchers from the protocol lives beside the types it builds:
// routes (xds) and authorization permissions (authz) both compile header
// and method conditions, and neither should import the other for them.

pub(crate) fn string_match(
    m: Option<&pb::StringMatcher>,
    path: &str,
    errs: &mut Errors,
) -> Option<StringMatch> {
    use pb::string_matcher::Pattern;
    match m.and_then(|m| m.pattern.as_ref()) {
        // No pattern: match on presence, as `present: true` would.
        None | Some(Pattern::Present(_)) => Some(StringMatch::Present),
        Some(Pattern::Exact(e)) => Some(StringMatch::Exact(e.clone())),
        Some(Pattern::Prefix(p)) => Some(StringMatch::Prefix(p.clone())),
        Some(Pattern::Regex(r)) => match weft_rules::regex::compile_full(r) {
            Ok(re) => Some(StringMatch::Regex(re)),
            Err(reason) => {
                errs.at(&format!("{path}.regex"), reason);
                None
            }
        },
    }
}

pub(crate) fn header_name(name: &str, path: &str, errs: &mut Errors) -> Option<HeaderName> {
    weft_rules::header::check_name(name)
        .map_err(|reason| errs.at(path, reason))
        .ok()
}

/// Header conditions (routes, authorization permissions); `path` names the
/// list in errors (`routes[0].match.headers`).
pub(crate) fn header_matches(
    list: &[pb::HeaderMatcher],
    path: &str,
    errs: &mut Errors,
) -> Vec<HeaderMatch> {
    let mut headers = Vec::new();
    for (i, h) in list.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let name = header_name(&h.name, &format!("{p}.name"), errs);
        let matcher = string_match(h.matcher.as_ref(), &p, errs);
        if let (Some(name), Some(matcher)) = (name, matcher) {
            headers.push(HeaderMatch {
                name,
                matcher,
                invert: h.invert,
            });
        }
    }
    headers
}

/// HTTP methods, written in upper case as requests carry them
/// (`weft_rules::method`).
pub(crate) fn methods(list: &[String], path: &str, errs: &mut Errors) -> Vec<Method> {
    let mut methods = Vec::new();
    for (i, name) in list.iter().enumerate() {
        match weft_rules::method::check(name) {
            Ok(method) => methods.push(method),
            Err(reason) => errs.at(&format!("{path}[{i}]"), reason),
        }
    }
    methods
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::Request<()> {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn path_matchers() {
        assert!(PathMatch::Exact("/health".into()).matches("/health"));
        assert!(!PathMatch::Exact("/health".into()).matches("/health/x"));
        assert!(PathMatch::Prefix("/api/".into()).matches("/api/v1"));
        assert!(!PathMatch::Prefix("/api/".into()).matches("/ap"));
        let re = PathMatch::Regex(weft_rules::regex::compile_full("/users/[0-9]+").unwrap());
        assert!(re.matches("/users/42"));
        assert!(
            !re.matches("/users/42/orders"),
            "regex must match the whole path"
        );
    }

    #[test]
    fn header_matchers_and_invert() {
        let m = HeaderMatch {
            name: HeaderName::from_static("x-api-version"),
            matcher: StringMatch::Exact("v2".into()),
            invert: false,
        };
        assert!(m.matches(req("GET", "/", &[("x-api-version", "v2")]).headers()));
        assert!(!m.matches(req("GET", "/", &[("x-api-version", "v1")]).headers()));
        assert!(!m.matches(req("GET", "/", &[]).headers()));
        let inv = HeaderMatch { invert: true, ..m };
        assert!(inv.matches(req("GET", "/", &[]).headers()));
        assert!(!inv.matches(req("GET", "/", &[("x-api-version", "v2")]).headers()));

        let present = HeaderMatch {
            name: HeaderName::from_static("x-debug"),
            matcher: StringMatch::Present,
            invert: false,
        };
        assert!(present.matches(req("GET", "/", &[("x-debug", "")]).headers()));
        let prefix = HeaderMatch {
            name: HeaderName::from_static("user-agent"),
            matcher: StringMatch::Prefix("curl/".into()),
            invert: false,
        };
        assert!(prefix.matches(req("GET", "/", &[("user-agent", "curl/8.0")]).headers()));
        let regex = HeaderMatch {
            name: HeaderName::from_static("x-tenant"),
            matcher: StringMatch::Regex(weft_rules::regex::compile_full("t-[a-z]+").unwrap()),
            invert: false,
        };
        assert!(regex.matches(req("GET", "/", &[("x-tenant", "t-acme")]).headers()));
        assert!(!regex.matches(req("GET", "/", &[("x-tenant", "t-acme1")]).headers()));
    }

    #[test]
    fn methods_and_query() {
        let mut m = RouteMatch::any();
        m.methods = vec![Method::POST];
        assert!(m.matches(&req("POST", "/", &[])));
        assert!(!m.matches(&req("GET", "/", &[])));
        // A browser's preflight for a POST goes where the POST would.
        let preflight = |asked| {
            req(
                "OPTIONS",
                "/",
                &[
                    ("origin", "https://app.example"),
                    ("access-control-request-method", asked),
                ],
            )
        };
        assert!(m.matches(&preflight("POST")));
        assert!(!m.matches(&preflight("DELETE")));
        assert!(!m.matches(&req(
            "OPTIONS",
            "/",
            &[("access-control-request-method", "POST")]
        )));

        let mut q = RouteMatch::any();
        q.query = vec![QueryMatch {
            name: "debug".into(),
            matcher: StringMatch::Exact("1".into()),
        }];
        assert!(q.matches(&req("GET", "/x?a=2&debug=1", &[])));
        assert!(!q.matches(&req("GET", "/x?debug=0", &[])));
        assert!(!q.matches(&req("GET", "/x", &[])));
    }
}

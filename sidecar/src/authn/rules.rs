//! Which requirement applies to a request (public, token, roles), chosen by
//! path and method, and the role check itself.
//!
//! Rules match the path the way the app will understand it, or not at all:
//! percent-encoded unreserved characters are decoded first (`/%61dmin` is
//! `/admin`), and a path with dot segments, `//`, backslashes or an encoded
//! slash is refused, since whether `/public/../admin` is public would
//! otherwise depend on how the app normalises it.

use http::Method;
use serde_json::Value;

use super::claims::lookup;

/// The compiled form of a `RuleConfig`.
#[derive(Clone, Debug)]
pub(crate) struct Rule {
    pub name: Option<Box<str>>,
    pub path: PathMatch,
    /// Empty: any method.
    pub methods: Vec<Method>,
    pub public: bool,
    pub roles: Option<RoleRequirement>,
}

#[derive(Clone, Debug)]
pub(crate) enum PathMatch {
    Any,
    Prefix(Box<str>),
    Exact(Box<str>),
}

impl Rule {
    fn matches(&self, method: &Method, path: &str) -> bool {
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Prefix(p) => path.starts_with(&**p),
            PathMatch::Exact(p) => path == &**p,
        };
        path_ok && (self.methods.is_empty() || self.methods.contains(method))
    }
}

/// The first rule for this request, if any.
pub(crate) fn find<'r>(rules: &'r [Rule], method: &Method, path: &str) -> Option<&'r Rule> {
    rules.iter().find(|r| r.matches(method, path))
}

/// Roles (or scopes) a token must carry.
#[derive(Clone, Debug)]
pub(crate) struct RoleRequirement {
    pub roles: Vec<Box<str>>,
    /// `None`: the default claims.
    pub claim: Option<Box<str>>,
    /// All of `roles`, or any one.
    pub all: bool,
}

/// Where roles are read from unless a rule names its claim: `roles` (an
/// array, as Keycloak clients and Azure app roles have it), OAuth's
/// space-separated `scope`, and `scp` (Azure's scope claim).
const DEFAULT_ROLE_CLAIMS: [&str; 3] = ["roles", "scope", "scp"];

impl RoleRequirement {
    /// `Err` with the roles the token lacks (all of them for `any`).
    pub fn check(&self, claims: &serde_json::Map<String, Value>) -> Result<(), Vec<&str>> {
        let has = |role: &str| match &self.claim {
            Some(claim) => claim_has(lookup(claims, claim), role),
            None => DEFAULT_ROLE_CLAIMS
                .iter()
                .any(|c| claim_has(lookup(claims, c), role)),
        };
        let missing: Vec<&str> = self
            .roles
            .iter()
            .map(|r| &**r)
            .filter(|r| !has(r))
            .collect();
        let ok = if self.all {
            missing.is_empty()
        } else {
            missing.len() < self.roles.len()
        };
        if ok { Ok(()) } else { Err(missing) }
    }
}

/// True if the claim is an array containing `role`, or a space-separated
/// string with `role` as one of its words.
fn claim_has(value: Option<&Value>, role: &str) -> bool {
    match value {
        Some(Value::Array(items)) => items.iter().any(|v| v.as_str() == Some(role)),
        Some(Value::String(s)) => s.split_ascii_whitespace().any(|w| w == role),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(path: PathMatch, methods: &[Method]) -> Rule {
        Rule {
            name: None,
            path,
            methods: methods.to_vec(),
            public: false,
            roles: None,
        }
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let rules = [
            rule(PathMatch::Exact("/health".into()), &[]),
            rule(PathMatch::Prefix("/admin/".into()), &[Method::POST]),
            rule(PathMatch::Any, &[]),
        ];
        let idx = |m: Method, p: &str| {
            find(&rules, &m, p).map(|r| rules.iter().position(|x| std::ptr::eq(x, r)).unwrap())
        };
        assert_eq!(idx(Method::GET, "/health"), Some(0));
        assert_eq!(idx(Method::GET, "/healthz"), Some(2));
        assert_eq!(idx(Method::POST, "/admin/x"), Some(1));
        assert_eq!(idx(Method::GET, "/admin/x"), Some(2));
        assert!(find(&rules[..2], &Method::GET, "/x").is_none());
    }

    #[test]
    fn roles_come_from_an_array_or_a_scope_string() {
        let req = |roles: &[&str], claim: Option<&str>, all: bool| RoleRequirement {
            roles: roles.iter().map(|r| (*r).into()).collect(),
            claim: claim.map(Into::into),
            all,
        };
        let claims = json!({ "roles": ["reader", "admin"], "scope": "orders:read orders:write",
                             "realm_access": { "roles": ["ops"] } });
        let claims = claims.as_object().unwrap();
        assert!(req(&["admin"], None, true).check(claims).is_ok());
        assert!(
            req(&["orders:write", "reader"], None, true)
                .check(claims)
                .is_ok()
        );
        assert_eq!(
            req(&["admin", "root"], None, true).check(claims),
            Err(vec!["root"])
        );
        assert!(req(&["admin", "root"], None, false).check(claims).is_ok());
        assert!(
            req(&["ops"], Some("realm_access.roles"), true)
                .check(claims)
                .is_ok()
        );
        // A named claim is the only one read.
        assert!(req(&["admin"], Some("scope"), true).check(claims).is_err());
        // A substring of a scope is not the scope.
        assert!(req(&["orders"], None, true).check(claims).is_err());
    }
}

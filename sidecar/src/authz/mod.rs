//! Authorization at the inbound side: may this caller make this request?
//!
//! The agent sends the service's [`InboundPolicy`](pb::InboundPolicy): the
//! intentions that apply (from Weft's KV policy document and Consul's
//! intentions), already ordered most precise first, and a default action.
//! The sidecar compiles it once per update into an [`AuthzPolicy`], swapped
//! in atomically; per request, the first intention whose source matches
//! the caller's verified identity decides (its L7 permissions in order, if
//! it has any), else the default.
//!
//! The caller is who the mTLS handshake proved (the request's
//! `peer_identity`, [`crate::model::Exchange`]); a caller without one
//! (plaintext in PERMISSIVE mode) matches only `*` intentions. Headers a
//! caller sends never say who it is.

mod layer;

pub use layer::{Authorize, AuthorizeLayer, AuthzTarget};

use std::sync::Arc;

use http::Method;
use weft_proto::config::v1 as pb;

use crate::matcher::{HeaderMatch, PathMatch, header_matches, methods};
use crate::nack::Errors;

/// The compiled policy of one service; immutable, shared.
#[derive(Debug)]
pub struct AuthzPolicy {
    pub default: Decision,
    /// The service speaks opaque TCP: CONNECT tunnels are accepted (and
    /// decided by [`AuthzPolicy::decide_tcp`]); otherwise refused.
    pub opaque_tcp: bool,
    intentions: Vec<Intention>,
    /// Where the default comes from, for the 403's reason.
    default_origin: Arc<str>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
}

#[derive(Debug)]
struct Intention {
    /// `None` = `*`.
    source: Option<String>,
    action: Decision,
    permissions: Vec<Permission>,
    origin: Arc<str>,
}

#[derive(Debug)]
struct Permission {
    action: Decision,
    path: PathMatch,
    methods: Vec<Method>,
    headers: Vec<HeaderMatch>,
}

/// Why a request was denied: which rule, for the caller and the log.
#[derive(Debug, PartialEq, Eq)]
pub struct Denial {
    /// "kv:weft/policies/users", "consul:<id>", or "default".
    pub origin: Arc<str>,
    pub reason: String,
}

impl Default for AuthzPolicy {
    /// Before the agent's first policy (and in static mode): allow, as a
    /// mesh without policies does.
    fn default() -> Self {
        Self {
            default: Decision::Allow,
            opaque_tcp: false,
            intentions: Vec::new(),
            default_origin: "default".into(),
        }
    }
}

impl AuthzPolicy {
    /// Decides for a request from `source` (the caller's service, `None`
    /// when it has no verified identity).
    pub fn decide<B>(&self, source: Option<&str>, req: &http::Request<B>) -> Result<(), Denial> {
        let caller = source.unwrap_or("an unauthenticated caller");
        if let Some(intention) = self.intention_for(source) {
            if intention.permissions.is_empty() {
                return intention.l4(caller);
            }
            let matched = intention.permissions.iter().find(|p| p.matches(req));
            return match matched.map(|p| p.action) {
                Some(Decision::Allow) => Ok(()),
                Some(Decision::Deny) => Err(Denial {
                    origin: intention.origin.clone(),
                    reason: format!(
                        "{caller} is denied {} {} by a permission of intention {}",
                        req.method(),
                        req.uri().path(),
                        intention.origin
                    ),
                }),
                // L7 intentions allow only what a permission allows.
                None => Err(Denial {
                    origin: intention.origin.clone(),
                    reason: format!(
                        "no permission of intention {} allows {caller} {} {}",
                        intention.origin,
                        req.method(),
                        req.uri().path()
                    ),
                }),
            };
        }
        self.by_default(caller)
    }

    /// Decides for an opaque TCP connection from `source`: L4 only. An
    /// intention with L7 permissions cannot judge bytes, so it denies
    /// (Consul refuses L7 intentions for a tcp service outright; denying
    /// here keeps a tunnel from being wider than the rules meant).
    pub fn decide_tcp(&self, source: Option<&str>) -> Result<(), Denial> {
        let caller = source.unwrap_or("an unauthenticated caller");
        match self.intention_for(source) {
            Some(intention) if !intention.permissions.is_empty() => Err(Denial {
                origin: intention.origin.clone(),
                reason: format!(
                    "intention {} for {caller} has L7 permissions, which cannot apply to opaque TCP",
                    intention.origin
                ),
            }),
            Some(intention) => intention.l4(caller),
            None => self.by_default(caller),
        }
    }

    /// The first intention whose source matches the caller.
    fn intention_for(&self, source: Option<&str>) -> Option<&Intention> {
        self.intentions
            .iter()
            .find(|intention| match &intention.source {
                None => true,
                Some(name) => source == Some(name.as_str()),
            })
    }

    fn by_default(&self, caller: &str) -> Result<(), Denial> {
        match self.default {
            Decision::Allow => Ok(()),
            Decision::Deny => Err(Denial {
                origin: self.default_origin.clone(),
                reason: format!("no intention allows {caller}, and the default is deny"),
            }),
        }
    }
}

impl Intention {
    /// The decision of an intention without permissions.
    fn l4(&self, caller: &str) -> Result<(), Denial> {
        match self.action {
            Decision::Allow => Ok(()),
            Decision::Deny => Err(Denial {
                origin: self.origin.clone(),
                reason: format!("{caller} is denied by intention {}", self.origin),
            }),
        }
    }
}

impl Permission {
    fn matches<B>(&self, req: &http::Request<B>) -> bool {
        self.path.matches(req.uri().path())
            && (self.methods.is_empty() || self.methods.contains(req.method()))
            && self.headers.iter().all(|h| h.matches(req.headers()))
    }
}

fn action(value: i32, path: &str, errs: &mut Errors) -> Decision {
    match pb::Action::try_from(value) {
        Ok(pb::Action::Allow) => Decision::Allow,
        Ok(pb::Action::Deny) => Decision::Deny,
        Err(_) => {
            errs.at(path, format!("unknown action {value}"));
            Decision::Deny
        }
    }
}

/// Compiles an InboundPolicy; every problem is reported (for the NACK).
pub fn compile(policy: &pb::InboundPolicy) -> Result<AuthzPolicy, Vec<String>> {
    let mut errs = Errors(Vec::new());
    let default = action(policy.default_action, "default_action", &mut errs);
    let mut intentions = Vec::new();
    for (i, it) in policy.intentions.iter().enumerate() {
        let at = format!("intentions[{i}]");
        let source = match it.source.as_str() {
            "*" => None,
            name => match weft_rules::name::check_intention_source(name) {
                Ok(()) => Some(name.to_owned()),
                Err(reason) => {
                    errs.at(&format!("{at}.source"), reason);
                    None
                }
            },
        };
        let mut permissions = Vec::new();
        for (j, p) in it.permissions.iter().enumerate() {
            let pat = format!("{at}.permissions[{j}]");
            use pb::permission::Path;
            let path = match &p.path {
                None => PathMatch::Any,
                Some(Path::PathExact(e)) => PathMatch::Exact(e.clone()),
                Some(Path::PathPrefix(e)) => PathMatch::Prefix(e.clone()),
                Some(Path::PathRegex(r)) => match weft_rules::regex::compile_full(r) {
                    Ok(re) => PathMatch::Regex(re),
                    Err(reason) => {
                        errs.at(&format!("{pat}.path_regex"), reason);
                        PathMatch::Any
                    }
                },
            };
            permissions.push(Permission {
                action: action(p.action, &format!("{pat}.action"), &mut errs),
                path,
                methods: methods(&p.methods, &format!("{pat}.methods"), &mut errs),
                headers: header_matches(&p.headers, &format!("{pat}.headers"), &mut errs),
            });
        }
        intentions.push(Intention {
            source,
            action: action(it.action, &format!("{at}.action"), &mut errs),
            permissions,
            origin: if it.origin.is_empty() {
                format!("#{i}").into()
            } else {
                it.origin.as_str().into()
            },
        });
    }
    if !errs.0.is_empty() {
        return Err(errs.0);
    }
    Ok(AuthzPolicy {
        default,
        opaque_tcp: policy.opaque_tcp,
        intentions,
        default_origin: format!("default of {}", policy.service).into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l4(source: &str, action: pb::Action, origin: &str) -> pb::Intention {
        pb::Intention {
            source: source.into(),
            action: action as i32,
            permissions: vec![],
            origin: origin.into(),
        }
    }

    fn policy(default: pb::Action, intentions: Vec<pb::Intention>) -> AuthzPolicy {
        compile(&pb::InboundPolicy {
            service: "users".into(),
            default_action: default as i32,
            intentions,
            jwt: None,
            mtls_mode: pb::MtlsMode::Strict.into(),
            opaque_tcp: true,
            rate_limits: None,
            upstreams: Vec::new(),
            app_protocol: 0,
            cors: None,
            compression: None,
            cache: None,
            validation: None,
        })
        .unwrap()
    }

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> http::Request<()> {
        let mut b = http::Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn the_first_intention_whose_source_matches_decides_else_the_default() {
        let p = policy(
            pb::Action::Deny,
            vec![
                l4("web", pb::Action::Allow, "kv:weft/policies/users"),
                l4("*", pb::Action::Deny, "consul:abc"),
            ],
        );
        let r = req("GET", "/", &[]);
        assert_eq!(p.decide(Some("web"), &r), Ok(()));
        let denied = p.decide(Some("billing"), &r).unwrap_err();
        assert_eq!(&*denied.origin, "consul:abc");
        assert!(denied.reason.contains("billing"), "{}", denied.reason);
        // No identity (plaintext) matches only `*`.
        assert_eq!(&*p.decide(None, &r).unwrap_err().origin, "consul:abc");

        let open = policy(pb::Action::Allow, vec![l4("web", pb::Action::Deny, "kv:x")]);
        assert_eq!(open.decide(Some("billing"), &r), Ok(()));
        let closed = policy(pb::Action::Deny, vec![]);
        assert!(
            closed
                .decide(Some("web"), &r)
                .unwrap_err()
                .reason
                .contains("default is deny")
        );
    }

    #[test]
    fn l7_permissions_allow_only_what_they_match() {
        let read_only = pb::Intention {
            source: "web".into(),
            action: pb::Action::Deny as i32,
            permissions: vec![
                pb::Permission {
                    action: pb::Action::Deny as i32,
                    path: Some(pb::permission::Path::PathPrefix("/admin".into())),
                    ..Default::default()
                },
                pb::Permission {
                    action: pb::Action::Allow as i32,
                    path: Some(pb::permission::Path::PathRegex("/users/[0-9]+".into())),
                    methods: vec!["GET".into()],
                    headers: vec![pb::HeaderMatcher {
                        name: "x-tenant".into(),
                        matcher: Some(pb::StringMatcher {
                            pattern: Some(pb::string_matcher::Pattern::Exact("acme".into())),
                        }),
                        invert: false,
                    }],
                },
            ],
            origin: "kv:weft/policies/users".into(),
        };
        let p = policy(pb::Action::Allow, vec![read_only]);
        let tenant = [("x-tenant", "acme")];
        assert_eq!(
            p.decide(Some("web"), &req("GET", "/users/42", &tenant)),
            Ok(())
        );
        for (method, path, headers) in [
            ("POST", "/users/42", &tenant[..]),
            ("GET", "/users/42/x", &tenant[..]),
            ("GET", "/users/42", &[][..]),
            ("GET", "/admin/users/42", &tenant[..]),
        ] {
            let d = p.decide(Some("web"), &req(method, path, headers));
            assert!(d.is_err(), "{method} {path} {headers:?} was allowed");
        }
        // Other callers are not concerned by web's intention.
        assert_eq!(p.decide(Some("ops"), &req("POST", "/admin", &[])), Ok(()));
    }

    #[test]
    fn tcp_connections_are_decided_by_l4_intentions_and_an_l7_one_denies() {
        let l7 = pb::Intention {
            permissions: vec![pb::Permission {
                action: pb::Action::Allow as i32,
                ..Default::default()
            }],
            ..l4("reports", pb::Action::Allow, "kv:weft/policies/redis")
        };
        let p = policy(
            pb::Action::Deny,
            vec![
                l4("web", pb::Action::Allow, "kv:weft/policies/redis"),
                l4("billing", pb::Action::Deny, "consul:abc"),
                l7,
            ],
        );
        assert_eq!(p.decide_tcp(Some("web")), Ok(()));
        let denied = p.decide_tcp(Some("billing")).unwrap_err();
        assert_eq!(&*denied.origin, "consul:abc");
        let l7_denied = p.decide_tcp(Some("reports")).unwrap_err();
        assert!(
            l7_denied.reason.contains("L7 permissions"),
            "{}",
            l7_denied.reason
        );
        // Nobody else is named: the default (deny) decides, also without identity.
        assert!(
            p.decide_tcp(Some("ops"))
                .unwrap_err()
                .reason
                .contains("default is deny")
        );
        assert!(p.decide_tcp(None).is_err());
        assert!(p.opaque_tcp);
    }

    #[test]
    fn invalid_policies_name_every_problem() {
        let bad = pb::InboundPolicy {
            service: "users".into(),
            default_action: 7,
            intentions: vec![pb::Intention {
                source: String::new(),
                action: 0,
                permissions: vec![pb::Permission {
                    action: 0,
                    path: Some(pb::permission::Path::PathRegex("(".into())),
                    methods: vec![String::new()],
                    headers: vec![],
                }],
                origin: String::new(),
            }],
            jwt: None,
            mtls_mode: pb::MtlsMode::Strict.into(),
            opaque_tcp: false,
            rate_limits: None,
            upstreams: Vec::new(),
            app_protocol: 0,
            cors: None,
            compression: None,
            cache: None,
            validation: None,
        };
        let errors = compile(&bad).unwrap_err().join("\n");
        for want in [
            "default_action: unknown action 7",
            "intentions[0].source: must not be empty",
            "intentions[0].permissions[0].path_regex: invalid regex",
            "intentions[0].permissions[0].methods[0]",
        ] {
            assert!(errors.contains(want), "missing {want:?} in:\n{errors}");
        }
    }
}

//! SPIFFE IDs as Weft uses them: the identity a leaf certificate carries.
//!
//! Weft names a workload `spiffe://<trust-domain>/ns/<namespace>/svc/<service>`.
//! Consul Connect leaves add the datacenter:
//! `spiffe://<trust-domain>/ns/<namespace>/dc/<dc>/svc/<service>`. Both parse
//! to a [`SpiffeId`]; authorization compares trust domain, namespace and
//! service only ([`SpiffeId::same_service`]), because the same service in
//! another datacenter is the same workload for policy purposes.
//!
//! The syntax rules are the SPIFFE spec's (lower-case trust domain; path
//! segments of letters, digits, `.`, `-`, `_`; no `.`/`..` segments, no
//! query, fragment, port or user info) plus Weft's fixed path layout.

use std::fmt;
use std::str::FromStr;

/// The URI scheme of every SPIFFE ID.
const SCHEME: &str = "spiffe://";
/// The SPIFFE spec caps a SPIFFE ID at 2048 bytes and a trust domain at 255.
const MAX_ID_LEN: usize = 2048;
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Which part of a SPIFFE ID an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The `spiffe://` prefix, or the ID as a whole (length).
    Scheme,
    /// The authority: `spiffe://<trust-domain>/...`.
    TrustDomain,
    /// The path layout (`/ns/<ns>/svc/<svc>` or `/ns/<ns>/dc/<dc>/svc/<svc>`).
    Path,
    /// The value after `/ns/`.
    Namespace,
    /// The value after `/dc/`.
    Datacenter,
    /// The value after `/svc/`.
    Service,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Scheme => "scheme",
            Part::TrustDomain => "trust domain",
            Part::Path => "path",
            Part::Namespace => "namespace",
            Part::Datacenter => "datacenter",
            Part::Service => "service",
        })
    }
}

/// A SPIFFE ID or trust domain that Weft cannot accept: says which input,
/// which part of it and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid SPIFFE ID {input:?}: {part}: {reason}")]
pub struct SpiffeIdError {
    input: String,
    part: Part,
    reason: String,
}

impl SpiffeIdError {
    fn new(input: &str, part: Part, reason: impl Into<String>) -> Self {
        Self {
            input: input.to_owned(),
            part,
            reason: reason.into(),
        }
    }

    /// The text that was rejected.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// The part of it that is wrong.
    pub fn part(&self) -> Part {
        self.part
    }
}

/// A validated trust domain (`example.org`, `<cluster-uuid>.consul`): the
/// set of workloads one CA (or one bundle of roots) vouches for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// The trust domain as written (`example.org`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID (`spiffe://example.org`), which a
    /// Weft CA certificate carries as its URI SAN.
    pub fn id(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        check_trust_domain(input, input)?;
        Ok(TrustDomain(input.to_owned()))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A workload identity: `spiffe://<td>/ns/<ns>[/dc/<dc>]/svc/<service>`.
///
/// Equality (`==`) compares every part, including the datacenter; use
/// [`SpiffeId::same_service`] for authorization decisions.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    namespace: String,
    datacenter: Option<String>,
    service: String,
}

impl SpiffeId {
    /// The identity Weft gives a service: `spiffe://<td>/ns/<ns>/svc/<svc>`.
    pub fn service_identity(
        trust_domain: &str,
        namespace: &str,
        service: &str,
    ) -> Result<Self, SpiffeIdError> {
        Self::from_str(&format!(
            "{SCHEME}{trust_domain}/ns/{namespace}/svc/{service}"
        ))
    }

    /// The trust domain (`example.org`).
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The namespace (`default` in Consul OSS).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The datacenter, present in Consul Connect identities only.
    pub fn datacenter(&self) -> Option<&str> {
        self.datacenter.as_deref()
    }

    /// True when both name the same service: same trust domain, namespace
    /// and service. The datacenter is ignored on purpose: a Consul leaf from
    /// `dc2` is the same workload as the one from `dc1`, and a Weft identity
    /// (no dc) matches a Consul identity of the same service.
    pub fn same_service(&self, other: &SpiffeId) -> bool {
        self.trust_domain == other.trust_domain
            && self.namespace == other.namespace
            && self.service == other.service
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::new(
                input,
                Part::Scheme,
                format!("longer than {MAX_ID_LEN} bytes"),
            ));
        }
        let rest = match input.get(..SCHEME.len()) {
            Some(prefix) if prefix == SCHEME => &input[SCHEME.len()..],
            Some(prefix) if prefix.eq_ignore_ascii_case(SCHEME) => {
                return Err(SpiffeIdError::new(
                    input,
                    Part::Scheme,
                    "the scheme must be lower-case \"spiffe://\"",
                ));
            }
            _ => {
                return Err(SpiffeIdError::new(
                    input,
                    Part::Scheme,
                    "must start with \"spiffe://\"",
                ));
            }
        };
        if let Some(at) = rest.find(['?', '#']) {
            let what = if rest.as_bytes()[at] == b'?' {
                "a query"
            } else {
                "a fragment"
            };
            return Err(SpiffeIdError::new(
                input,
                Part::Path,
                format!("{what} is not allowed"),
            ));
        }
        let (trust_domain, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        check_trust_domain(input, trust_domain)?;
        let trust_domain = TrustDomain(trust_domain.to_owned());

        if path.is_empty() {
            return Err(SpiffeIdError::new(
                input,
                Part::Path,
                "missing: a workload ID needs /ns/<namespace>/svc/<service> (this is a trust domain ID)",
            ));
        }
        let segments: Vec<&str> = path[1..].split('/').collect();
        for segment in &segments {
            match *segment {
                "" => {
                    return Err(SpiffeIdError::new(
                        input,
                        Part::Path,
                        "empty path segment (a double or trailing '/')",
                    ));
                }
                "." | ".." => {
                    return Err(SpiffeIdError::new(
                        input,
                        Part::Path,
                        format!("{segment:?} segments are not allowed"),
                    ));
                }
                _ => {}
            }
        }
        let (namespace, datacenter, service) = match segments.as_slice() {
            ["ns", ns, "svc", svc] => (*ns, None, *svc),
            ["ns", ns, "dc", dc, "svc", svc] => (*ns, Some(*dc), *svc),
            _ => {
                return Err(SpiffeIdError::new(
                    input,
                    Part::Path,
                    format!(
                        "{path:?} is not /ns/<namespace>/svc/<service> or /ns/<namespace>/dc/<dc>/svc/<service>"
                    ),
                ));
            }
        };
        check_value(input, Part::Namespace, namespace)?;
        if let Some(dc) = datacenter {
            check_value(input, Part::Datacenter, dc)?;
        }
        check_value(input, Part::Service, service)?;
        Ok(SpiffeId {
            trust_domain,
            namespace: namespace.to_owned(),
            datacenter: datacenter.map(str::to_owned),
            service: service.to_owned(),
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/ns/{}", self.trust_domain, self.namespace)?;
        if let Some(dc) = &self.datacenter {
            write!(f, "/dc/{dc}")?;
        }
        write!(f, "/svc/{}", self.service)
    }
}

impl fmt::Debug for SpiffeId {
    /// The URI, not the parts: it shows up inside rustls error messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SpiffeId").field(&self.to_string()).finish()
    }
}

fn check_trust_domain(input: &str, trust_domain: &str) -> Result<(), SpiffeIdError> {
    let fail = |reason: String| Err(SpiffeIdError::new(input, Part::TrustDomain, reason));
    if trust_domain.is_empty() {
        return fail("empty".into());
    }
    if trust_domain.len() > MAX_TRUST_DOMAIN_LEN {
        return fail(format!("longer than {MAX_TRUST_DOMAIN_LEN} bytes"));
    }
    if let Some(bad) = trust_domain
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        let why = match bad {
            ':' => "a port is not allowed".to_string(),
            '@' => "user info is not allowed".to_string(),
            c if c.is_ascii_uppercase() => {
                format!("{trust_domain:?} has upper-case letters (trust domains are lower-case)")
            }
            c => format!(
                "{trust_domain:?} contains {c:?}; only lower-case letters, digits, '.', '-' and '_' are allowed"
            ),
        };
        return fail(why);
    }
    Ok(())
}

/// A namespace, datacenter or service: one path segment of the SPIFFE spec's
/// character set.
fn check_value(input: &str, part: Part, value: &str) -> Result<(), SpiffeIdError> {
    match value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        Some(c) => Err(SpiffeIdError::new(
            input,
            part,
            format!("{value:?} contains {c:?}; only letters, digits, '.', '-' and '_' are allowed"),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &str) -> Result<SpiffeId, SpiffeIdError> {
        input.parse()
    }

    #[test]
    fn a_weft_service_identity_round_trips() {
        let id = parse("spiffe://example.org/ns/default/svc/users").unwrap();
        assert_eq!(id.trust_domain().as_str(), "example.org");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service(), "users");
        assert_eq!(id.datacenter(), None);
        assert_eq!(id.to_string(), "spiffe://example.org/ns/default/svc/users");
        assert_eq!(
            SpiffeId::service_identity("example.org", "default", "users").unwrap(),
            id
        );
    }

    #[test]
    fn a_consul_connect_identity_keeps_its_datacenter() {
        let text = "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/web";
        let id = parse(text).unwrap();
        assert_eq!(id.datacenter(), Some("dc1"));
        assert_eq!(id.service(), "web");
        assert_eq!(id.to_string(), text);
    }

    #[test]
    fn authorization_ignores_the_datacenter_but_not_the_rest() {
        let dc1 = parse("spiffe://c.consul/ns/default/dc/dc1/svc/web").unwrap();
        let dc2 = parse("spiffe://c.consul/ns/default/dc/dc2/svc/web").unwrap();
        let no_dc = parse("spiffe://c.consul/ns/default/svc/web").unwrap();
        assert!(dc1.same_service(&dc2) && dc1.same_service(&no_dc));
        assert_ne!(dc1, dc2, "equality still sees the datacenter");
        for other in [
            "spiffe://other.consul/ns/default/svc/web",
            "spiffe://c.consul/ns/prod/svc/web",
            "spiffe://c.consul/ns/default/svc/api",
        ] {
            assert!(!dc1.same_service(&parse(other).unwrap()), "{other}");
        }
    }

    #[test]
    fn errors_name_the_wrong_part_and_why() {
        let cases = [
            ("http://example.org/ns/a/svc/b", Part::Scheme, "spiffe://"),
            (
                "SPIFFE://example.org/ns/a/svc/b",
                Part::Scheme,
                "lower-case",
            ),
            ("spiffe:///ns/a/svc/b", Part::TrustDomain, "empty"),
            (
                "spiffe://Example.org/ns/a/svc/b",
                Part::TrustDomain,
                "upper-case",
            ),
            (
                "spiffe://example.org:443/ns/a/svc/b",
                Part::TrustDomain,
                "port",
            ),
            (
                "spiffe://me@example.org/ns/a/svc/b",
                Part::TrustDomain,
                "user info",
            ),
            ("spiffe://example.org", Part::Path, "trust domain ID"),
            (
                "spiffe://example.org/ns/a/svc/b/",
                Part::Path,
                "empty path segment",
            ),
            ("spiffe://example.org/ns/../svc/b", Part::Path, "\"..\""),
            ("spiffe://example.org/ns/a/svc/b?x=1", Part::Path, "query"),
            ("spiffe://example.org/ns/a/svc/b%20", Part::Service, "'%'"),
            ("spiffe://example.org/ns/a b/svc/b", Part::Namespace, "' '"),
            (
                "spiffe://c.consul/ns/a/dc/d+1/svc/b",
                Part::Datacenter,
                "'+'",
            ),
            (
                "spiffe://example.org/svc/b",
                Part::Path,
                "/ns/<namespace>/svc/<service>",
            ),
            (
                "spiffe://example.org/ns/a/dc/d/svc/b/extra",
                Part::Path,
                "/dc/<dc>",
            ),
        ];
        for (input, part, reason) in cases {
            let error = parse(input).expect_err(input);
            assert_eq!(error.part(), part, "{input}: {error}");
            assert!(error.to_string().contains(reason), "{input}: {error}");
            assert!(error.to_string().contains(input), "{error} names its input");
        }
    }

    #[test]
    fn a_trust_domain_alone_is_validated_too() {
        assert_eq!(
            "example.org".parse::<TrustDomain>().unwrap().id(),
            "spiffe://example.org"
        );
        assert!("Example.org".parse::<TrustDomain>().is_err());
        assert!("".parse::<TrustDomain>().is_err());
        assert!(SpiffeId::service_identity("example.org", "default", "a/b").is_err());
    }
}

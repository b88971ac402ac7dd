//! The credential check: may the holder of this token act as this service?
//!
//! Two kinds of credential: a join token from `--join-tokens` (checked
//! locally, so a sidecar with a join token does not depend on Consul), and
//! a Consul ACL token when the agent runs with `--consul`. A service listed
//! in the join-token file accepts only its join tokens: otherwise, on a
//! Consul without ACLs (where every token has service:write), anyone could
//! take an identity the operator meant to guard with a token.

use std::fmt;

use super::consul_acl::{ConsulAclCheck, ConsulVerdict};
use super::join_tokens::JoinTokens;
use super::refusal::{Refusal, RefusalReason};

/// Which credential let a request through (for the issuance log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    JoinToken,
    ConsulAcl,
}

impl fmt::Display for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Credential::JoinToken => "join token",
            Credential::ConsulAcl => "consul acl token",
        })
    }
}

/// The credential sources the agent was started with (at least one).
#[derive(Debug)]
pub struct Credentials {
    join_tokens: Option<JoinTokens>,
    consul: Option<ConsulAclCheck>,
}

impl Credentials {
    /// Refuses a setup with no way to authenticate anyone: every request
    /// would be refused, which is a configuration mistake to report at
    /// start, not per request.
    pub fn new(
        join_tokens: Option<JoinTokens>,
        consul: Option<ConsulAclCheck>,
    ) -> Result<Self, String> {
        match (&join_tokens, &consul) {
            (None, None) => Err(
                "no way to authenticate sidecars: give --join-tokens FILE (or WEFT_JOIN_TOKENS), or run with --consul to accept Consul ACL tokens"
                    .into(),
            ),
            (Some(tokens), None) if tokens.is_empty() => Err(format!(
                "join tokens file {} lists no service, and without --consul no other credential exists: every request would be refused",
                tokens.path().display()
            )),
            _ => Ok(Self {
                join_tokens,
                consul,
            }),
        }
    }

    /// What the agent accepts, for the start-up log.
    pub fn describe(&self) -> String {
        let mut kinds = Vec::new();
        if let Some(tokens) = &self.join_tokens {
            kinds.push(format!(
                "join tokens from {} ({} service(s))",
                tokens.path().display(),
                tokens.services().count()
            ));
        }
        if let Some(consul) = &self.consul {
            kinds.push(format!(
                "consul acl tokens with service:write (checked at {})",
                consul.address()
            ));
        }
        kinds.join(", ")
    }

    /// Decides whether `token` may act as `service` (an already validated
    /// name). The refusal's message is for the sidecar and the log; it
    /// never contains the token.
    pub async fn authorize(&self, service: &str, token: &str) -> Result<Credential, Refusal> {
        if token.is_empty() {
            return Err(Refusal::new(
                RefusalReason::MissingToken,
                format!("no token: send {}", self.expected_credential(service)),
            ));
        }
        if let Some(tokens) = &self.join_tokens {
            if tokens.accepts(service, token) {
                return Ok(Credential::JoinToken);
            }
            if tokens.services().any(|listed| listed == service) {
                return Err(Refusal::new(
                    RefusalReason::Denied,
                    format!(
                        "the token is not a join token of service {service:?} (a service with join tokens accepts only those)"
                    ),
                ));
            }
        }
        let Some(consul) = &self.consul else {
            return Err(Refusal::new(
                RefusalReason::Denied,
                format!("the token is not a join token of service {service:?}"),
            ));
        };
        match consul.check(service, token).await {
            ConsulVerdict::Granted => Ok(Credential::ConsulAcl),
            ConsulVerdict::Denied(consul_says) => Err(Refusal::new(
                RefusalReason::Denied,
                format!(
                    "Consul refused this token service:write on {service} ({consul_says}){}",
                    if self.join_tokens.is_some() {
                        ", and it is not a join token of the service"
                    } else {
                        ""
                    }
                ),
            )),
            ConsulVerdict::Unavailable(why) => Err(Refusal::new(
                RefusalReason::CheckUnavailable,
                format!("cannot check the token with Consul right now, retry later: {why}"),
            )),
            ConsulVerdict::Malformed => Err(Refusal::new(
                RefusalReason::MalformedToken,
                "the token contains characters a Consul ACL token cannot have",
            )),
        }
    }

    fn expected_credential(&self, service: &str) -> String {
        match (&self.join_tokens, &self.consul) {
            (Some(_), Some(_)) => format!(
                "the join token of service {service:?} or a Consul ACL token with service:write on it"
            ),
            (Some(_), None) => format!("the join token of service {service:?}"),
            _ => format!("a Consul ACL token with service:write on {service:?}"),
        }
    }
}

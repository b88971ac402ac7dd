//! Why a policy was rejected ([`ConfigErrors`]) and why a request was
//! denied ([`AuthnError`]), and what its refusal carries: a
//! [`ProxyError`] of kind [`ErrorKind::Jwt`] with the `WWW-Authenticate`
//! challenge, answered by `error_response` like every other refusal.

use std::fmt;

use http::HeaderValue;
use http::header::WWW_AUTHENTICATE;

pub use crate::error::AuthnErrorKind;
use crate::error::{ErrorKind, ProxyError};

/// One problem in a policy: where (`providers[0].algorithms[1]`) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Every problem in a policy, reported together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A denied request: the kind, and a one-line detail for the response body
/// and the log (never the token itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthnError {
    pub kind: AuthnErrorKind,
    pub detail: Box<str>,
}

impl AuthnError {
    pub fn new(kind: AuthnErrorKind, detail: impl Into<Box<str>>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750 §3) for `realm`, which
    /// must be a valid quoted-string body (the service name is).
    pub fn challenge(&self, realm: &str) -> Option<HeaderValue> {
        let error = match self.kind {
            AuthnErrorKind::Missing => {
                return HeaderValue::try_from(format!("Bearer realm=\"{realm}\"")).ok();
            }
            AuthnErrorKind::InsufficientRole => "insufficient_scope",
            AuthnErrorKind::KeysUnavailable | AuthnErrorKind::PathNotNormalized => return None,
            _ => "invalid_token",
        };
        HeaderValue::try_from(format!(
            "Bearer realm=\"{realm}\", error=\"{error}\", error_description=\"{}\"",
            self.kind.description()
        ))
        .ok()
    }

    /// The refusal of a denied request: its kind, the detail as the
    /// reason (the response body) and the challenge for `realm`, which
    /// `error_response` turns into status, `x-weft-error`,
    /// `WWW-Authenticate` and a one-line text body.
    pub fn into_proxy_error(self, realm: &str) -> ProxyError {
        let challenge = self.challenge(realm);
        let error = ProxyError::new(ErrorKind::Jwt(self.kind), self.detail);
        match challenge {
            Some(challenge) => error.with_header(WWW_AUTHENTICATE, challenge),
            None => error,
        }
    }
}

impl fmt::Display for AuthnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.detail)
    }
}

impl std::error::Error for AuthnError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ERROR_HEADER;

    impl AuthnError {
        fn to_response(&self, realm: &str) -> http::Response<crate::body::ProxyBody> {
            self.clone().into_proxy_error(realm).to_response()
        }
    }

    #[test]
    fn missing_token_challenges_with_the_realm_only() {
        let resp = AuthnError::new(AuthnErrorKind::Missing, "no bearer token").to_response("users");
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()[WWW_AUTHENTICATE], "Bearer realm=\"users\"");
        assert_eq!(resp.headers()[ERROR_HEADER], "jwt-missing");
        let names: Vec<&str> = resp.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-weft-error", "content-type", "www-authenticate"]);
    }

    #[test]
    fn invalid_and_insufficient_tokens_name_the_rfc_6750_error() {
        let resp =
            AuthnError::new(AuthnErrorKind::Expired, "expired 2 minutes ago").to_response("users");
        assert_eq!(resp.status(), 401);
        assert_eq!(
            resp.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"users\", error=\"invalid_token\", error_description=\"the token expired\""
        );
        assert_eq!(resp.headers()[ERROR_HEADER], "jwt-expired");

        let resp =
            AuthnError::new(AuthnErrorKind::InsufficientRole, "needs admin").to_response("users");
        assert_eq!(resp.status(), 403);
        assert!(
            resp.headers()[WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .contains("error=\"insufficient_scope\"")
        );
    }

    #[test]
    fn config_errors_print_one_per_line() {
        let e = ConfigErrors(vec![
            ConfigError::new("providers[0].issuer", "empty"),
            ConfigError::new("providers[1].algorithms[0]", "unknown algorithm `RS999`"),
        ]);
        assert_eq!(
            e.to_string(),
            "providers[0].issuer: empty\nproviders[1].algorithms[0]: unknown algorithm `RS999`"
        );
    }
}

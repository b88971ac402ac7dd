//! Why a policy was rejected ([`ConfigErrors`]) and why a request was
//! denied ([`AuthnError`]), and the one place a denial becomes a response.

use std::fmt;

use http::header::WWW_AUTHENTICATE;
use http::{HeaderValue, Response, StatusCode};

use crate::body::ProxyBody;
use crate::error::error_response;

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

/// What was wrong with a request's credentials, as a caller can act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthnErrorKind {
    /// No token where the policy looks for one. 401.
    Missing,
    /// Not three base64url segments of JSON, or a header without `alg`. 401.
    Malformed,
    /// `alg` is `none`, unknown, or not in the provider's list. 401.
    AlgorithmNotAllowed,
    /// No key in the provider's set matches the token's `kid` and `alg`. 401.
    UnknownKid,
    /// The signature does not verify with the key. 401.
    BadSignature,
    /// `exp` is past (beyond the leeway). 401.
    Expired,
    /// `nbf` is ahead (beyond the leeway). 401.
    NotYetValid,
    /// `iss` is missing or names no configured provider. 401.
    WrongIssuer,
    /// `aud` is missing or names none of the provider's audiences. 401.
    WrongAudience,
    /// A required claim (or `exp`) is missing or has another value. 401.
    ClaimMismatch,
    /// The token is valid but lacks a role the path requires. 403.
    InsufficientRole,
    /// The provider's keys could never be fetched, so no token can be
    /// checked. 503: the caller may retry later.
    KeysUnavailable,
    /// The path has dot segments, `//` or encoded dots or backslashes, so
    /// which rule applies would depend on how the app normalises it. 400.
    PathNotNormalized,
}

impl AuthnErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            Self::InsufficientRole => StatusCode::FORBIDDEN,
            Self::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::PathNotNormalized => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The `x-weft-error` value.
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "jwt-missing",
            Self::Malformed => "jwt-malformed",
            Self::AlgorithmNotAllowed => "jwt-algorithm-not-allowed",
            Self::UnknownKid => "jwt-unknown-kid",
            Self::BadSignature => "jwt-bad-signature",
            Self::Expired => "jwt-expired",
            Self::NotYetValid => "jwt-not-yet-valid",
            Self::WrongIssuer => "jwt-wrong-issuer",
            Self::WrongAudience => "jwt-wrong-audience",
            Self::ClaimMismatch => "jwt-claim-mismatch",
            Self::InsufficientRole => "jwt-insufficient-role",
            Self::KeysUnavailable => "jwt-keys-unavailable",
            Self::PathNotNormalized => "path-not-normalized",
        }
    }

    /// The RFC 6750 `error_description`: fixed text, so no token content
    /// is ever echoed into a header.
    pub fn description(self) -> &'static str {
        match self {
            Self::Missing => "no token",
            Self::Malformed => "the token is malformed",
            Self::AlgorithmNotAllowed => "the token's algorithm is not allowed",
            Self::UnknownKid => "the token's signing key is unknown",
            Self::BadSignature => "the token's signature is invalid",
            Self::Expired => "the token expired",
            Self::NotYetValid => "the token is not valid yet",
            Self::WrongIssuer => "the token's issuer is not accepted",
            Self::WrongAudience => "the token is not meant for this service",
            Self::ClaimMismatch => "a required claim is missing or has another value",
            Self::InsufficientRole => "the token lacks a role this path requires",
            Self::KeysUnavailable => "the signing keys are not available",
            Self::PathNotNormalized => "the path is not normalized",
        }
    }
}

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

    /// The response for a denied request: status, `WWW-Authenticate`,
    /// `x-weft-error`, and the detail as a one-line text body, like every
    /// other response the sidecar makes itself.
    pub fn to_response(&self, realm: &str) -> Response<ProxyBody> {
        let mut resp = error_response(self.kind.status(), self.kind.code(), &self.detail);
        if let Some(challenge) = self.challenge(realm) {
            resp.headers_mut().insert(WWW_AUTHENTICATE, challenge);
        }
        resp
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

    #[test]
    fn missing_token_challenges_with_the_realm_only() {
        let resp = AuthnError::new(AuthnErrorKind::Missing, "no bearer token").to_response("users");
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()[WWW_AUTHENTICATE], "Bearer realm=\"users\"");
        assert_eq!(resp.headers()[ERROR_HEADER], "jwt-missing");
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

//! Verifying one token against one provider: shape, algorithm, key,
//! signature, times, issuer, audience, required claims, in that order.
//!
//! The token's header is read here first, so that `alg: none`, unknown
//! algorithms and algorithms the provider does not allow are refused before
//! any key is looked up or any signature computed; jsonwebtoken then
//! verifies with a `Validation` that allows exactly that one algorithm and
//! a key whose type fits it (so an RSA public key can never be used as an
//! HMAC secret: HMAC only ever uses the configured `shared_secret`).

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::HeaderName;
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::claims::lookup;
use super::error::{AuthnError, AuthnErrorKind};
use super::jwks::RemoteJwks;
use super::keys::{KeySet, Lookup};

/// Tokens are sent in headers; anything this long is not a JWT we issue.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The compiled form of a `ProviderConfig`.
pub(crate) struct Provider {
    pub name: Arc<str>,
    pub issuer: Box<str>,
    pub keys: ProviderKeys,
    /// The HMAC key, only when the provider configures one.
    pub secret: Option<DecodingKey>,
    /// One `Validation` per allowed algorithm, built once.
    pub validations: Vec<(Algorithm, Validation)>,
    /// Indices into the authenticator's token sources.
    pub sources: Vec<usize>,
    pub required_claims: Vec<(Box<str>, ClaimRequirement)>,
    pub forward_token: bool,
    /// Claim name -> header set from it.
    pub claim_headers: Vec<(Box<str>, HeaderName)>,
}

pub(crate) enum ProviderKeys {
    /// HMAC only.
    None,
    /// An inline JWKS.
    Static(KeySet),
    /// A JWKS fetched from a URL and refreshed in the background.
    Remote(Arc<RemoteJwks>),
}

#[derive(Clone, Debug)]
pub(crate) enum ClaimRequirement {
    Present,
    Equals(Value),
}

/// Why a token was not accepted.
pub(crate) enum Rejection {
    Denied(AuthnError),
    /// The remote key set lacks the token's key (or was never fetched): a
    /// refetch may help. Carries the error to answer if it does not.
    NeedsKeys(Arc<RemoteJwks>, AuthnError),
}

impl From<AuthnError> for Rejection {
    fn from(e: AuthnError) -> Self {
        Self::Denied(e)
    }
}

fn deny(kind: AuthnErrorKind, detail: impl Into<Box<str>>) -> Rejection {
    Rejection::Denied(AuthnError::new(kind, detail))
}

#[derive(Deserialize)]
struct JoseHeader<'a> {
    #[serde(borrow, default)]
    alg: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct IssuerOnly<'a> {
    #[serde(borrow, default)]
    iss: Option<Cow<'a, str>>,
}

/// The header and payload segments of a compact JWS (`h.p.s`).
pub(crate) fn segments(token: &str) -> Result<(&str, &str), AuthnError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthnError::new(
            AuthnErrorKind::Malformed,
            format!("the token is longer than {MAX_TOKEN_LEN} bytes"),
        ));
    }
    let mut parts = token.split('.');
    let (header, payload, signature) =
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(h), Some(p), Some(s), None) => (h, p, s),
            _ => {
                return Err(AuthnError::new(
                    AuthnErrorKind::Malformed,
                    format!(
                        "a JWT has 3 dot-separated parts, this one has {}",
                        token.split('.').count()
                    ),
                ));
            }
        };
    // Checked before any verification: a payload or signature that is not
    // base64url would otherwise fail as a signature that does not verify
    // (jwt-bad-signature), hiding a client's encoding bug behind what looks
    // like a forgery.
    for (segment, what) in [(payload, "payload"), (signature, "signature")] {
        if !is_base64url(segment) {
            return Err(AuthnError::new(
                AuthnErrorKind::Malformed,
                format!("the {what} is not base64url (RFC 7515: unpadded, `A-Z a-z 0-9 - _`)"),
            ));
        }
    }
    Ok((header, payload))
}

/// Whether `segment` can be unpadded base64url: its alphabet, and a length
/// that is not 1 more than a multiple of 4 (no whole byte fits 6 bits).
fn is_base64url(segment: &str) -> bool {
    segment.len() % 4 != 1
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn decode_segment(segment: &str, what: &str) -> Result<Vec<u8>, AuthnError> {
    URL_SAFE_NO_PAD.decode(segment).map_err(|e| {
        AuthnError::new(
            AuthnErrorKind::Malformed,
            format!("the {what} is not base64url: {e}"),
        )
    })
}

fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, AuthnError> {
    serde_json::from_slice(bytes).map_err(|e| {
        AuthnError::new(
            AuthnErrorKind::Malformed,
            format!("the {what} is not a JSON object: {e}"),
        )
    })
}

/// The `iss` of a token before verification, to pick its provider among
/// several. Nothing else of an unverified token is ever used.
pub(crate) fn unverified_issuer(token: &str) -> Result<Option<String>, AuthnError> {
    let (_, payload) = segments(token)?;
    let bytes = decode_segment(payload, "payload")?;
    let claims: IssuerOnly = parse_json(&bytes, "payload")?;
    Ok(claims.iss.map(Cow::into_owned))
}

impl Provider {
    fn validation(&self, alg: Algorithm) -> Option<&Validation> {
        self.validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
    }

    /// The verified claims of `token`, or why not.
    pub fn verify(&self, token: &str) -> Result<Map<String, Value>, Rejection> {
        let (header, _) = segments(token)?;
        let header_bytes = decode_segment(header, "header")?;
        let header: JoseHeader = parse_json(&header_bytes, "header")?;
        let Some(alg_name) = header.alg.as_deref() else {
            return Err(deny(AuthnErrorKind::Malformed, "the header has no `alg`"));
        };
        if alg_name.eq_ignore_ascii_case("none") {
            return Err(deny(
                AuthnErrorKind::AlgorithmNotAllowed,
                "unsigned tokens (`alg: none`) are never accepted",
            ));
        }
        let Ok(alg) = Algorithm::from_str(alg_name) else {
            return Err(deny(
                AuthnErrorKind::AlgorithmNotAllowed,
                "the token's `alg` is not an algorithm the sidecar knows",
            ));
        };
        let Some(validation) = self.validation(alg) else {
            return Err(deny(
                AuthnErrorKind::AlgorithmNotAllowed,
                format!("{alg:?} is not among provider {}'s algorithms", self.name),
            ));
        };
        let kid = header.kid.as_deref();
        let claims = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                // Allowed only with a secret (checked when compiling).
                let Some(secret) = &self.secret else {
                    return Err(deny(
                        AuthnErrorKind::AlgorithmNotAllowed,
                        "HMAC needs a shared secret",
                    ));
                };
                decode(token, secret, validation)?
            }
            _ => match &self.keys {
                ProviderKeys::None => {
                    return Err(deny(
                        AuthnErrorKind::AlgorithmNotAllowed,
                        format!("provider {} has no public keys", self.name),
                    ));
                }
                ProviderKeys::Static(set) => self.verify_with(set, token, kid, alg, validation)?,
                ProviderKeys::Remote(remote) => {
                    let Some(set) = remote.current() else {
                        return Err(Rejection::NeedsKeys(
                            remote.clone(),
                            AuthnError::new(
                                AuthnErrorKind::KeysUnavailable,
                                format!(
                                    "the keys of provider {} could not be fetched yet",
                                    self.name
                                ),
                            ),
                        ));
                    };
                    match self.verify_with(&set, token, kid, alg, validation) {
                        Err(AuthnError {
                            kind: AuthnErrorKind::UnknownKid,
                            detail,
                        }) => {
                            return Err(Rejection::NeedsKeys(
                                remote.clone(),
                                AuthnError {
                                    kind: AuthnErrorKind::UnknownKid,
                                    detail,
                                },
                            ));
                        }
                        other => other?,
                    }
                }
            },
        };
        self.check_required_claims(&claims)?;
        Ok(claims)
    }

    fn verify_with(
        &self,
        set: &KeySet,
        token: &str,
        kid: Option<&str>,
        alg: Algorithm,
        validation: &Validation,
    ) -> Result<Map<String, Value>, AuthnError> {
        match set.find(kid, alg) {
            Lookup::Found(key) => decode(token, key, validation),
            Lookup::UnknownKid => Err(AuthnError::new(
                AuthnErrorKind::UnknownKid,
                match kid {
                    Some(_) => format!("provider {} has no key with the token's `kid`", self.name),
                    None => format!(
                        "the token has no `kid` and provider {} has no {alg:?} key",
                        self.name
                    ),
                },
            )),
            Lookup::WrongAlgorithm => Err(AuthnError::new(
                AuthnErrorKind::AlgorithmNotAllowed,
                format!("the key the token names is not a {alg:?} key"),
            )),
            Lookup::Ambiguous(n) => Err(AuthnError::new(
                AuthnErrorKind::UnknownKid,
                format!(
                    "the token has no `kid` and {n} of provider {}'s keys fit {alg:?}",
                    self.name
                ),
            )),
        }
    }

    fn check_required_claims(&self, claims: &Map<String, Value>) -> Result<(), AuthnError> {
        for (name, want) in &self.required_claims {
            let ok = match (lookup(claims, name), want) {
                (None, _) => false,
                (Some(_), ClaimRequirement::Present) => true,
                (Some(Value::Array(items)), ClaimRequirement::Equals(v)) => items.contains(v),
                (Some(have), ClaimRequirement::Equals(v)) => have == v,
            };
            if !ok {
                return Err(AuthnError::new(
                    AuthnErrorKind::ClaimMismatch,
                    format!("the token's `{name}` claim is missing or not the required value"),
                ));
            }
        }
        Ok(())
    }
}

/// jsonwebtoken's verification, its errors turned into ours.
fn decode<T: DeserializeOwned>(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<T, AuthnError> {
    jsonwebtoken::decode::<T>(token, key, validation)
        .map(|data| data.claims)
        .map_err(|e| {
            use AuthnErrorKind as K;
            let (kind, detail): (K, Cow<'static, str>) = match e.kind() {
                JwtErrorKind::InvalidSignature | JwtErrorKind::Crypto(_) => {
                    (K::BadSignature, "the signature does not verify".into())
                }
                JwtErrorKind::InvalidEcdsaKey
                | JwtErrorKind::InvalidRsaKey(_)
                | JwtErrorKind::InvalidKeyFormat => (
                    K::BadSignature,
                    format!("the key cannot verify this token: {e}").into(),
                ),
                JwtErrorKind::ExpiredSignature => (K::Expired, "`exp` is in the past".into()),
                JwtErrorKind::ImmatureSignature => {
                    (K::NotYetValid, "`nbf` is in the future".into())
                }
                JwtErrorKind::InvalidIssuer => {
                    (K::WrongIssuer, "`iss` is not the provider's issuer".into())
                }
                JwtErrorKind::InvalidAudience => (
                    K::WrongAudience,
                    "`aud` names none of the accepted audiences".into(),
                ),
                JwtErrorKind::MissingRequiredClaim(c) => match c.as_str() {
                    "iss" => (K::WrongIssuer, "the token has no `iss`".into()),
                    "aud" => (K::WrongAudience, "the token has no `aud`".into()),
                    _ => (
                        K::ClaimMismatch,
                        format!("the token has no valid `{c}` claim").into(),
                    ),
                },
                JwtErrorKind::InvalidSubject => (K::ClaimMismatch, "`sub` is not accepted".into()),
                JwtErrorKind::InvalidAlgorithm
                | JwtErrorKind::MissingAlgorithm
                | JwtErrorKind::InvalidAlgorithmName => (
                    K::AlgorithmNotAllowed,
                    "the algorithm does not fit the key".into(),
                ),
                JwtErrorKind::InvalidToken
                | JwtErrorKind::Base64(_)
                | JwtErrorKind::Json(_)
                | JwtErrorKind::Utf8(_) => (K::Malformed, format!("malformed token: {e}").into()),
                _ => (K::Malformed, format!("{e}").into()),
            };
            AuthnError::new(kind, detail)
        })
}

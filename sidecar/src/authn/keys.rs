//! A provider's public keys, parsed once from a JWKS document (RFC 7517)
//! into ready-to-use verification keys, and looked up per token by `kid`
//! and `alg`.
//!
//! Keys are parsed one by one, so one key of a type we do not use (an
//! encryption key, a P-521 curve, an `oct` secret) is skipped with a reason
//! instead of rejecting the whole set. `oct` keys are never used: HMAC
//! algorithms need the provider's explicit `shared_secret`, so a JWKS can
//! never turn a public key into an HMAC secret.

use std::str::FromStr;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

/// What a key can verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyType {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyType {
    fn accepts(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            Self::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            Self::P256 => alg == ES256,
            Self::P384 => alg == ES384,
            Self::Ed25519 => alg == EdDSA,
        }
    }
}

struct Key {
    kid: Option<Box<str>>,
    /// The key's own `alg`, when the JWK names one: then only that.
    alg: Option<Algorithm>,
    key_type: KeyType,
    decoding: DecodingKey,
}

impl Key {
    fn accepts(&self, alg: Algorithm) -> bool {
        self.key_type.accepts(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// The usable keys of one JWKS document. Immutable; a refresh builds a new
/// one and swaps it in whole.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

/// The outcome of looking a token's key up.
pub enum Lookup<'a> {
    Found(&'a DecodingKey),
    /// No key has the token's `kid` (or, without a `kid`, none fits `alg`):
    /// a refetch may find it.
    UnknownKid,
    /// The key with that `kid` is for another algorithm.
    WrongAlgorithm,
    /// No `kid`, and several keys fit `alg`.
    Ambiguous(usize),
}

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// Parses a JWKS document. Returns the set and why each skipped key was
    /// skipped; a document that is not JSON with a `keys` array, or has no
    /// usable key, is an error.
    pub fn from_json(bytes: &[u8]) -> Result<(Self, Vec<String>), String> {
        let doc: JwksDocument = serde_json::from_slice(bytes)
            .map_err(|e| format!("not a JWKS document (JSON with a `keys` array): {e}"))?;
        Self::from_keys(&doc.keys)
    }

    /// Like [`KeySet::from_json`], for a document already parsed.
    pub fn from_value(doc: &serde_json::Value) -> Result<(Self, Vec<String>), String> {
        let doc = JwksDocument::deserialize(doc)
            .map_err(|e| format!("not a JWKS document (an object with a `keys` array): {e}"))?;
        Self::from_keys(&doc.keys)
    }

    fn from_keys(values: &[serde_json::Value]) -> Result<(Self, Vec<String>), String> {
        let mut keys = Vec::with_capacity(values.len());
        let mut skipped = Vec::new();
        for (i, value) in values.iter().enumerate() {
            match parse_key(value) {
                Ok(key) => keys.push(key),
                Err(reason) => {
                    let kid = value.get("kid").and_then(|k| k.as_str()).unwrap_or("-");
                    skipped.push(format!("keys[{i}] (kid {kid}): {reason}"));
                }
            }
        }
        if keys.is_empty() {
            let why = if skipped.is_empty() {
                "the `keys` array is empty".to_owned()
            } else {
                skipped.join("; ")
            };
            return Err(format!("no usable signing key: {why}"));
        }
        Ok((Self { keys }, skipped))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key for a token with this `kid` (if any) and `alg`.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Lookup<'_> {
        match kid {
            Some(kid) => {
                let mut named = self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid));
                let Some(first) = named.next() else {
                    return Lookup::UnknownKid;
                };
                std::iter::once(first)
                    .chain(named)
                    .find(|k| k.accepts(alg))
                    .map_or(Lookup::WrongAlgorithm, |k| Lookup::Found(&k.decoding))
            }
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.accepts(alg));
                match (fitting.next(), fitting.count()) {
                    (None, _) => Lookup::UnknownKid,
                    (Some(k), 0) => Lookup::Found(&k.decoding),
                    (Some(_), more) => Lookup::Ambiguous(more + 1),
                }
            }
        }
    }
}

fn parse_key(value: &serde_json::Value) -> Result<Key, String> {
    let jwk = Jwk::deserialize(value).map_err(|e| format!("not a JWK we can read: {e}"))?;
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return Err("not a signing key (`use` is not `sig`)".into());
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Err("`key_ops` does not allow `verify`".into());
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        // KeyAlgorithm also names encryption algorithms (RSA-OAEP...), which
        // Algorithm does not: those keys are not for us.
        Some(ka) => Some(
            Algorithm::from_str(&ka.to_string())
                .map_err(|_| format!("`alg` {ka} is not a signature algorithm"))?,
        ),
    };
    let key_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyType::Rsa,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => KeyType::P256,
            EllipticCurve::P384 => KeyType::P384,
            ref other => return Err(format!("unsupported EC curve {other:?}")),
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => KeyType::Ed25519,
            ref other => return Err(format!("unsupported OKP curve {other:?}")),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err(
                "symmetric (`oct`) keys are never taken from a JWKS; HS* needs `shared_secret`"
                    .into(),
            );
        }
    };
    if let Some(alg) = alg
        && !key_type.accepts(alg)
    {
        return Err(format!("`alg` {alg:?} does not fit a {key_type:?} key"));
    }
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| format!("bad key material: {e}"))?;
    Ok(Key {
        kid: jwk.common.key_id.map(String::into_boxed_str),
        alg,
        key_type,
        decoding,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rsa_jwk(kid: &str) -> serde_json::Value {
        // A syntactically valid (not real) RSA public key: lookup never
        // touches the numbers.
        json!({ "kty": "RSA", "kid": kid, "n": "AQAB", "e": "AQAB" })
    }

    #[test]
    fn skips_keys_it_cannot_use_and_keeps_the_rest() {
        let doc = json!({ "keys": [
            rsa_jwk("sig-1"),
            { "kty": "RSA", "kid": "enc-1", "use": "enc", "n": "AQAB", "e": "AQAB" },
            { "kty": "RSA", "kid": "oaep", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB" },
            { "kty": "oct", "kid": "hmac", "k": "c2VjcmV0" },
            { "kty": "EC", "kid": "p521", "crv": "P-521", "x": "AQAB", "y": "AQAB" },
            { "kty": "WAT", "kid": "odd" },
        ]});
        let (set, skipped) = KeySet::from_value(&doc).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(skipped.len(), 5, "{skipped:?}");
        assert!(skipped[2].contains("oct"), "{skipped:?}");
    }

    #[test]
    fn a_set_without_usable_keys_is_an_error() {
        let err = KeySet::from_value(&json!({ "keys": [] })).err().unwrap();
        assert!(err.contains("empty"), "{err}");
        assert!(KeySet::from_json(b"{\"nope\": 1}").is_err());
        assert!(KeySet::from_json(b"<html>").is_err());
    }

    #[test]
    fn lookup_by_kid_and_algorithm() {
        let doc = json!({ "keys": [ rsa_jwk("a"), rsa_jwk("b"),
            { "kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AQAB" } ]});
        let (set, _) = KeySet::from_value(&doc).unwrap();
        assert!(matches!(
            set.find(Some("a"), Algorithm::RS256),
            Lookup::Found(_)
        ));
        assert!(matches!(
            set.find(Some("a"), Algorithm::PS256),
            Lookup::Found(_)
        ));
        assert!(matches!(
            set.find(Some("c"), Algorithm::RS256),
            Lookup::UnknownKid
        ));
        assert!(matches!(
            set.find(Some("a"), Algorithm::ES256),
            Lookup::WrongAlgorithm
        ));
        assert!(matches!(
            set.find(Some("ed"), Algorithm::EdDSA),
            Lookup::Found(_)
        ));
        // Without a kid, only an unambiguous key is used.
        assert!(matches!(set.find(None, Algorithm::EdDSA), Lookup::Found(_)));
        assert!(matches!(
            set.find(None, Algorithm::RS256),
            Lookup::Ambiguous(2)
        ));
        assert!(matches!(
            set.find(None, Algorithm::ES256),
            Lookup::UnknownKid
        ));
    }

    #[test]
    fn a_key_with_its_own_alg_verifies_only_that() {
        let doc = json!({ "keys": [
            { "kty": "RSA", "kid": "a", "alg": "PS256", "n": "AQAB", "e": "AQAB" } ]});
        let (set, _) = KeySet::from_value(&doc).unwrap();
        assert!(matches!(
            set.find(Some("a"), Algorithm::PS256),
            Lookup::Found(_)
        ));
        assert!(matches!(
            set.find(Some("a"), Algorithm::RS256),
            Lookup::WrongAlgorithm
        ));
    }
}

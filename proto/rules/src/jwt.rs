//! JWT authentication policies: the rules on a policy's values that need no
//! key material and no network (keys, certificates and URLs are the
//! sidecar's to check when it builds the verifier).

use std::time::Duration;

use http::HeaderName;

/// HMAC keys shorter than the hash output weaken HS256 (RFC 7518 §3.2).
pub const MIN_SECRET_BYTES: usize = 32;
/// More skew than this accepts tokens long expired.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);
/// A JWKS fetch slower than this holds requests too long to be useful.
pub const MAX_FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// The prefix of the headers the sidecar sets from claims; callers can
/// never send them.
pub const CLAIM_HEADER_PREFIX: &str = "x-weft-jwt-";
/// Headers a claim must never overwrite: routing, framing, the proxy's own
/// headers, and the credentials themselves.
pub const RESERVED_HEADERS: [&str; 14] = [
    "host",
    "authorization",
    "proxy-authorization",
    "cookie",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-weft-error",
];

/// A shared secret decoded: standard or URL-safe base64, padding optional,
/// at least [`MIN_SECRET_BYTES`]. The reason never quotes the secret.
pub fn decode_shared_secret(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let trimmed = text.trim().trim_end_matches('=');
    let decoded = if trimmed.contains(['-', '_']) {
        URL_SAFE_NO_PAD.decode(trimmed)
    } else {
        STANDARD
            .decode(text.trim())
            .or_else(|_| STANDARD_NO_PAD.decode(trimmed))
    };
    match decoded {
        Ok(bytes) if bytes.len() >= MIN_SECRET_BYTES => Ok(bytes),
        Ok(bytes) => Err(format!(
            "{} bytes is too short for an HMAC key: use at least {MIN_SECRET_BYTES} random bytes",
            bytes.len()
        )),
        Err(error) => Err(format!("not base64: {error}")),
    }
}

/// The clock skew tolerated on `exp` and `nbf`: at most [`MAX_LEEWAY`].
pub fn check_clock_leeway(leeway: Duration) -> Result<(), String> {
    if leeway > MAX_LEEWAY {
        return Err(format!(
            "{leeway:?} is more than {MAX_LEEWAY:?}: that accepts tokens long expired; fix the clocks instead"
        ));
    }
    Ok(())
}

/// The bound on one JWKS fetch: above 0, at most [`MAX_FETCH_TIMEOUT`].
pub fn check_fetch_timeout(timeout: Duration) -> Result<(), String> {
    if timeout.is_zero() || timeout > MAX_FETCH_TIMEOUT {
        return Err(format!("must be above 0 and at most {MAX_FETCH_TIMEOUT:?}"));
    }
    Ok(())
}

/// A header a verified claim is copied into: a valid name, none of the
/// [`RESERVED_HEADERS`], and of the sidecar's own `x-weft-*` headers only
/// the `x-weft-jwt-*` ones.
pub fn check_claim_header(header: &str) -> Result<HeaderName, String> {
    let name = crate::header::check_name(header)?;
    if RESERVED_HEADERS.contains(&name.as_str()) {
        return Err(format!(
            "`{name}` is reserved: a claim must not overwrite it; use an `{CLAIM_HEADER_PREFIX}*` name"
        ));
    }
    if name.as_str().starts_with("x-weft-") && !name.as_str().starts_with(CLAIM_HEADER_PREFIX) {
        return Err(format!(
            "`{name}`: the sidecar's own `x-weft-*` headers are reserved, except `{CLAIM_HEADER_PREFIX}*`"
        ));
    }
    Ok(name)
}

/// A public rule lets requests in without a token, so it cannot also ask
/// for roles.
pub fn check_public_rule(public: bool, required_roles: &[String]) -> Result<(), String> {
    if public && !required_roles.is_empty() {
        return Err("a public rule cannot require roles: drop `public` or the roles".into());
    }
    Ok(())
}

/// The HMAC algorithms: keys only from a `shared_secret`.
pub const HMAC_ALGORITHMS: [&str; 3] = ["HS256", "HS384", "HS512"];
/// The asymmetric algorithms: keys only from a JWKS.
pub const ASYMMETRIC_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// One accepted `alg` of a provider that has keys from a JWKS
/// (`has_jwks`) and/or a shared secret (`has_secret`).
pub fn check_algorithm(name: &str, has_jwks: bool, has_secret: bool) -> Result<(), String> {
    if name.eq_ignore_ascii_case("none") {
        return Err("`none` is never allowed: tokens must be signed".into());
    }
    if HMAC_ALGORITHMS.contains(&name) {
        if !has_secret {
            return Err(format!(
                "{name} needs `shared_secret`: an HMAC key is never taken from the JWKS"
            ));
        }
    } else if ASYMMETRIC_ALGORITHMS.contains(&name) {
        if !has_jwks {
            return Err(format!("{name} needs `jwks` with public keys"));
        }
    } else {
        return Err(format!(
            "unknown algorithm `{name}` (known: {}, {} (HS* with shared_secret only))",
            ASYMMETRIC_ALGORITHMS.join(", "),
            HMAC_ALGORITHMS.join(", ")
        ));
    }
    Ok(())
}

/// A provider with a shared secret and an explicit algorithm list must
/// allow an HS algorithm, or its secret is never used.
pub fn check_secret_is_used(has_secret: bool, algorithms: &[String]) -> Result<(), String> {
    if has_secret
        && !algorithms.is_empty()
        && !algorithms
            .iter()
            .any(|name| HMAC_ALGORITHMS.contains(&name.as_str()))
    {
        return Err(
            "`shared_secret` is set but no HS algorithm is allowed: add HS256 or remove the secret"
                .into(),
        );
    }
    Ok(())
}

/// Where JWKS CAs (`ca_pem`, `ca_file`) make sense: with an https `uri`
/// (`None`: the keys are inline). A `uri` that is neither http nor https
/// is refused for itself, not here.
pub fn check_ca_use(uri: Option<&str>) -> Result<(), String> {
    let why = match uri {
        None => "inline keys are not fetched",
        Some(uri) if uri.starts_with("http://") => {
            "a plain http fetch has no certificate to verify"
        }
        Some(_) => return Ok(()),
    };
    Err(format!("only with an https:// `uri`: {why}"))
}

/// How long fetched keys are used (`cache_duration`): only for a `uri`
/// (`inline`: the keys are in the policy), and above 0.
pub fn check_cache_duration(duration: std::time::Duration, inline: bool) -> Result<(), String> {
    if inline {
        return Err("only with `uri`: inline keys are never refreshed".into());
    }
    if duration.is_zero() {
        return Err("must be above 0".into());
    }
    Ok(())
}

/// How often a token naming an unknown key may cause a refetch: above 0.
pub fn check_min_refetch_interval(interval: std::time::Duration) -> Result<(), String> {
    if interval.is_zero() {
        return Err("must be above 0: tokens with made-up `kid`s would each cause a fetch".into());
    }
    Ok(())
}

/// A policy lists at least one provider.
pub fn check_providers_listed(count: usize) -> Result<(), String> {
    if count == 0 {
        return Err("no provider: list at least one identity provider".into());
    }
    Ok(())
}

/// A provider lists the audiences it accepts.
pub fn check_audiences_listed(count: usize) -> Result<(), String> {
    if count == 0 {
        return Err(
            "empty: list the `aud` values this service accepts (usually its own name), \
             so a token minted for another service is refused"
                .into(),
        );
    }
    Ok(())
}

/// One accepted audience: not empty.
pub fn check_audience(audience: &str) -> Result<(), String> {
    if audience.is_empty() {
        return Err("empty audience".into());
    }
    Ok(())
}

/// A role a rule requires: one word (scope claims are split at spaces).
pub fn check_role(role: &str) -> Result<(), String> {
    if role.is_empty() || role.contains(char::is_whitespace) {
        return Err(format!(
            "`{role}` is not a role: roles are single words (scopes are split at spaces)"
        ));
    }
    Ok(())
}

/// Where a JWKS is fetched from: an `https://` or `http://` URL with a host.
pub fn check_jwks_uri(text: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("https" | "http")) {
        return Err(format!("`{text}` is not an https:// or http:// URL"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{text}` has no host"));
    }
    Ok(uri)
}

/// A CA file for a JWKS server: an absolute path (read by the sidecar, on
/// its own host, from its own working directory).
pub fn check_ca_file(path: &std::path::Path) -> Result<(), String> {
    if !path.is_absolute() {
        return Err(format!(
            "`{}` is not an absolute path: the sidecar's working directory is not yours",
            path.display()
        ));
    }
    Ok(())
}

/// A provider's name: not blank.
pub fn check_provider_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("empty: give the provider a name".into());
    }
    Ok(())
}

/// A provider's issuer: not blank.
pub fn check_issuer(issuer: &str) -> Result<(), String> {
    if issuer.trim().is_empty() {
        return Err("empty: give the exact `iss` of the provider's tokens".into());
    }
    Ok(())
}

/// The name of a claim a provider requires or copies into a header.
pub fn check_claim_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty claim name".into());
    }
    Ok(())
}

/// A cookie or query parameter a token is read from (`kind` says which):
/// no `=`, `;`, `&` or space, which would split it.
pub fn check_parameter_name(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains(['=', ';', '&', ' ']) {
        return Err(format!("`{name}` is not a {kind} name"));
    }
    Ok(())
}

/// A rule's `path_prefix` or `path_exact`: starts with `/` and is already
/// normalized ([`crate::path::normalized`]), or it could never match a
/// request.
pub fn check_rule_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("`{path}` does not start with `/`"));
    }
    if crate::path::normalized(path).as_deref() != Some(path) {
        return Err(format!(
            "`{path}` is not a normalized path (dot segments, `//`, backslashes or \
             percent-encoded letters never match a request)"
        ));
    }
    Ok(())
}

/// The reason for a provider named like an earlier one.
pub fn duplicate_provider_name(name: &str) -> String {
    format!("`{name}` names two providers")
}

/// The reason for a provider with the issuer of an earlier one.
pub fn duplicate_issuer(issuer: &str) -> String {
    format!("`{issuer}` is the issuer of two providers: tokens are matched to providers by issuer")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_audiences_roles_and_where_keys_come_from() {
        assert!(check_providers_listed(0).is_err());
        assert!(check_audiences_listed(0).is_err());
        assert!(check_audience("").is_err());
        assert!(check_role("admin").is_ok());
        assert!(check_role("a b").is_err());
        assert!(check_jwks_uri("https://idp.example/jwks").is_ok());
        assert!(check_jwks_uri("ftp://idp.example/jwks").is_err());
        assert!(check_jwks_uri("https:///jwks").is_err());
        assert!(check_ca_file("/etc/weft/idp.pem".as_ref()).is_ok());
        assert!(check_ca_file("idp.pem".as_ref()).is_err());
    }

    #[test]
    fn secrets_are_base64_of_enough_bytes() {
        let long = "a".repeat(44);
        assert_eq!(decode_shared_secret(&long).unwrap().len(), 33);
        let reason = decode_shared_secret("c2hvcnQ=").unwrap_err();
        assert!(reason.starts_with("5 bytes is too short"), "{reason}");
        assert!(!reason.contains("c2hvcnQ"));
        assert!(
            decode_shared_secret("not base64!")
                .unwrap_err()
                .starts_with("not base64")
        );
    }

    #[test]
    fn claim_headers_stay_out_of_reserved_names() {
        assert!(check_claim_header("x-weft-jwt-sub").is_ok());
        assert!(check_claim_header("x-user").is_ok());
        assert!(
            check_claim_header("Authorization")
                .unwrap_err()
                .contains("reserved")
        );
        assert!(
            check_claim_header("x-weft-error")
                .unwrap_err()
                .contains("reserved")
        );
        assert!(
            check_claim_header("x-weft-route")
                .unwrap_err()
                .contains("x-weft-*")
        );
        assert!(check_claim_header("bad name").is_err());
    }

    #[test]
    fn algorithms_need_their_kind_of_key() {
        assert!(check_algorithm("RS256", true, false).is_ok());
        assert!(check_algorithm("HS256", false, true).is_ok());
        assert!(
            check_algorithm("HS256", true, false)
                .unwrap_err()
                .contains("needs `shared_secret`")
        );
        assert!(
            check_algorithm("ES256", false, true)
                .unwrap_err()
                .contains("needs `jwks`")
        );
        assert!(
            check_algorithm("NONE", true, true)
                .unwrap_err()
                .contains("never allowed")
        );
        assert!(
            check_algorithm("XX1", true, true)
                .unwrap_err()
                .starts_with("unknown algorithm")
        );
        assert!(check_secret_is_used(true, &["RS256".into()]).is_err());
        assert!(check_secret_is_used(true, &[]).is_ok());
        assert!(check_secret_is_used(true, &["RS256".into(), "HS512".into()]).is_ok());
    }

    #[test]
    fn jwks_settings_fit_where_the_keys_come_from() {
        assert!(check_ca_use(None).unwrap_err().contains("inline keys"));
        assert!(
            check_ca_use(Some("http://idp/jwks"))
                .unwrap_err()
                .contains("plain http")
        );
        assert!(check_ca_use(Some("https://idp/jwks")).is_ok());
        assert!(check_cache_duration(Duration::from_secs(60), true).is_err());
        assert!(check_cache_duration(Duration::ZERO, false).is_err());
        assert!(check_min_refetch_interval(Duration::ZERO).is_err());
    }

    #[test]
    fn names_and_paths() {
        assert!(check_provider_name(" ").is_err());
        assert!(check_issuer("").is_err());
        assert!(check_claim_name("").is_err());
        assert!(
            check_parameter_name("cookie", "a=b")
                .unwrap_err()
                .contains("cookie name")
        );
        assert!(check_rule_path("/public/").is_ok());
        assert!(
            check_rule_path("public")
                .unwrap_err()
                .contains("start with")
        );
        assert!(
            check_rule_path("/a/../b")
                .unwrap_err()
                .contains("normalized")
        );
        assert!(
            check_rule_path("/%61dmin")
                .unwrap_err()
                .contains("normalized")
        );
    }

    #[test]
    fn bounds() {
        assert!(check_clock_leeway(Duration::from_secs(301)).is_err());
        assert!(check_clock_leeway(Duration::from_secs(60)).is_ok());
        assert!(check_fetch_timeout(Duration::ZERO).is_err());
        assert!(check_fetch_timeout(Duration::from_secs(61)).is_err());
        assert!(check_public_rule(true, &["admin".into()]).is_err());
        assert!(check_public_rule(true, &[]).is_ok());
    }
}

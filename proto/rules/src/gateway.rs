//! Edge gateways (`gateways/<name>` documents, `Gateway` resources) and the
//! TLS certificates their listeners serve (`certificates/<name>`).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// More trusted proxies than this in front of a gateway is a mistake: a
/// client could then choose the address the gateway believes it has.
pub const MAX_TRUSTED_HOPS: u32 = 10;

/// A port a listener binds: 1-65535.
pub fn check_port(port: u32) -> Result<u16, String> {
    match u16::try_from(port) {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("{port} is not a port: 1-65535")),
    }
}

/// The address a listener binds: an IP literal (empty: every address).
pub fn check_bind_address(address: &str) -> Result<std::net::IpAddr, String> {
    if address.is_empty() {
        return Ok(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    }
    address
        .parse()
        .map_err(|_| format!("`{address}` is not an IP address (leave it out for every address)"))
}

/// A listener serves at least one host: a request for any other is refused.
pub fn check_hosts_listed(count: usize) -> Result<(), String> {
    if count == 0 {
        return Err(
            "no host: list the host names clients call this listener by (each one's routes are `routes/<host>`)"
                .into(),
        );
    }
    Ok(())
}

/// A host a listener serves: a lower-case domain without port.
pub fn check_host(host: &str) -> Result<(), String> {
    crate::name::check_domain(host)?;
    if host.contains(':') && !host.starts_with('[') && host.parse::<std::net::Ipv6Addr>().is_err() {
        return Err(format!("`{host}` names a port: list the host alone"));
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("`{host}` must be lower case"));
    }
    Ok(())
}

/// What a listener's certificates must be: an HTTPS listener serves at
/// least one, a plaintext one none.
pub fn check_certificates_for(https: bool, count: usize) -> Result<(), String> {
    match (https, count) {
        (true, 0) => Err("an https listener needs at least one certificate (files or `kv`)".into()),
        (false, n) if n > 0 => Err(
            "an http listener serves no certificate: set `protocol: https` or remove them".into(),
        ),
        _ => Ok(()),
    }
}

/// The number of trusted proxies in front of the gateway: at most
/// [`MAX_TRUSTED_HOPS`].
pub fn check_trusted_hops(hops: u32) -> Result<(), String> {
    if hops > MAX_TRUSTED_HOPS {
        return Err(format!(
            "{hops} is more than {MAX_TRUSTED_HOPS}: count only the proxies you run in front of the gateway"
        ));
    }
    Ok(())
}

/// A listener's name: a valid name, unique in its gateway.
pub fn check_listener_name(name: &str) -> Result<(), String> {
    if !crate::name::is_valid_name(name) || name.len() > 64 {
        return Err(format!(
            "`{name}` is not a listener name: 1-64 letters, digits, `.`, `_` or `-`"
        ));
    }
    Ok(())
}

/// Two listeners on one address and port.
pub fn duplicate_listener(address: &str, port: u16) -> String {
    let address = if address.is_empty() { "*" } else { address };
    format!("a second listener on {address}:{port}: each address and port is one listener")
}

/// A path to a certificate or key file: absolute, since the gateway and
/// the agent do not share a working directory.
pub fn check_file_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("`{path}` is not an absolute path"));
    }
    Ok(())
}

/// A certificate chain and its private key, as PEM: the chain holds at
/// least one certificate, the key is one rustls can sign with, and the key
/// is the leaf's. Returns them ready to serve.
pub fn parse_certificate(chain_pem: &str, key_pem: &str) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the chain is not valid PEM: {e}"))?;
    if chain.is_empty() {
        return Err(
            "the chain holds no certificate (no \"-----BEGIN CERTIFICATE-----\" block)".into(),
        );
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
        format!("the private key is not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}")
    })?;
    let key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("the private key cannot sign: {e}"))?;
    let certified = CertifiedKey::new(chain, key);
    certified.keys_match().map_err(|_| {
        "the private key is not the leaf certificate's (the chain's first)".to_string()
    })?;
    Ok(certified)
}

/// Two listeners of one gateway with the same name.
pub fn duplicate_listener_name(name: &str) -> String {
    format!("a second listener named `{name}`: each listener's name is unique in its gateway")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_1_to_65535() {
        assert!(check_port(0).is_err());
        assert!(check_port(70000).is_err());
        assert_eq!(check_port(8443), Ok(8443));
    }

    #[test]
    fn hosts_are_lower_case_domains_without_port() {
        assert!(check_host("api.example.com").is_ok());
        assert!(check_host("127.0.0.1").is_ok());
        assert!(check_host("API.example.com").is_err());
        assert!(check_host("api.example.com:443").is_err());
        assert!(check_host("").is_err());
    }

    #[test]
    fn https_listeners_need_a_certificate_and_http_ones_take_none() {
        assert!(check_certificates_for(true, 0).is_err());
        assert!(check_certificates_for(false, 1).is_err());
        assert!(check_certificates_for(true, 2).is_ok());
        assert!(check_certificates_for(false, 0).is_ok());
    }

    #[test]
    fn a_certificate_must_match_its_key() {
        let a = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.test".into()]).unwrap();
        let chain = a.cert.pem();
        assert!(parse_certificate(&chain, &a.signing_key.serialize_pem()).is_ok());
        let mismatch = parse_certificate(&chain, &b.signing_key.serialize_pem()).unwrap_err();
        assert!(mismatch.contains("not the leaf"), "{mismatch}");
        assert!(parse_certificate("junk", &a.signing_key.serialize_pem()).is_err());
        assert!(parse_certificate(&chain, "junk").is_err());
    }
}

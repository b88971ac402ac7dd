//! Reading certificates and PEM: the one place that knows x509-parser and the
//! PEM format, so the other modules deal in DER and typed facts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;

use crate::error::Error;
use crate::spiffe::SpiffeId;

/// Every certificate in `pem`, in order; an error if there is none.
pub(crate) fn certificates_from_pem(
    what: &str,
    pem: &str,
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| Error::pem(what, format!("cannot decode the PEM: {error}")))?;
    if certificates.is_empty() {
        return Err(Error::pem(what, "no CERTIFICATE block found"));
    }
    Ok(certificates)
}

/// The private key in `pem` (PKCS#8, SEC1 or PKCS#1).
pub(crate) fn private_key_from_pem(what: &str, pem: &str) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|error| Error::pem(what, format!("no usable PRIVATE KEY block found: {error}")))
}

/// `der` as a PEM block with `\n` line endings (what operators expect in
/// files on Linux).
pub(crate) fn to_pem(tag: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Parses one DER certificate; `what` names it in the error.
pub(crate) fn parse<'a>(what: &str, der: &'a [u8]) -> Result<X509Certificate<'a>, Error> {
    match X509Certificate::from_der(der) {
        Ok(([], certificate)) => Ok(certificate),
        Ok(_) => Err(Error::certificate(
            what,
            "trailing bytes after the certificate",
        )),
        Err(error) => Err(Error::certificate(
            what,
            format!("not a valid X.509 certificate: {error}"),
        )),
    }
}

/// The SPIFFE ID of a leaf: its one URI SAN. The SPIFFE X.509-SVID spec
/// allows exactly one URI SAN, so a certificate with two URIs (or none) has
/// no identity rather than a guessed one. The error is the reason, for
/// handshake failures and operator messages.
pub(crate) fn spiffe_id(certificate: &X509Certificate<'_>) -> Result<SpiffeId, String> {
    let san = certificate
        .subject_alternative_name()
        .map_err(|error| format!("unreadable subjectAltName extension: {error}"))?
        .ok_or("no subjectAltName extension (a SPIFFE leaf carries its ID as a URI SAN)")?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [uri] => uri.parse().map_err(|error| format!("{error}")),
        [] => Err("no URI SAN (a SPIFFE leaf carries its ID as a URI SAN)".into()),
        many => Err(format!(
            "{} URI SANs ({}); a SPIFFE leaf has exactly one",
            many.len(),
            many.join(", ")
        )),
    }
}

/// The SPIFFE ID of a DER leaf certificate.
pub(crate) fn spiffe_id_of_der(der: &[u8]) -> Result<SpiffeId, String> {
    let certificate = parse("certificate", der).map_err(|error| error.to_string())?;
    spiffe_id(&certificate)
}

/// An ASN.1 time as a `SystemTime` (times before 1970 clamp to the epoch;
/// no certificate Weft deals with is that old).
pub(crate) fn system_time(time: ASN1Time) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(time.timestamp()).unwrap_or(0))
}

/// True when the certificate names itself as issuer and its signature
/// verifies with its own key: a root, as opposed to an intermediate.
pub(crate) fn is_self_signed(certificate: &X509Certificate<'_>) -> bool {
    certificate.subject().as_raw() == certificate.issuer().as_raw()
        && certificate.verify_signature(None).is_ok()
}

/// Lower-case hex of `bytes` (serial numbers in messages and `LeafInfo`).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

//! Certificate documents (`certificates/<name>`): a TLS certificate chain
//! and its private key, as PEM, which gateway listeners name with
//! `{"kv": "<name>"}` and the agent inlines into their `Gateway` resource.
//!
//! The private key is a secret: no error, log line or `Debug` output of
//! this module quotes it (nor the chain, which is no secret but is noise).

use std::fmt;

use serde::Deserialize;
use serde_json::Value;
use weft_proto::config::v1 as proto;

use super::error::{FieldError, from_serde};
use super::{DocumentKind, schema};

/// A certificate chain (leaf first) and the leaf's private key.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateDocument {
    pub chain_pem: String,
    pub private_key_pem: String,
}

impl fmt::Debug for CertificateDocument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateDocument")
            .field(
                "chain_pem",
                &format_args!("<{} bytes>", self.chain_pem.len()),
            )
            .field("private_key_pem", &format_args!("<redacted>"))
            .finish()
    }
}

impl CertificateDocument {
    /// The PEM a gateway listener serves, as the resource carries it.
    pub fn to_pem(&self) -> proto::CertificatePem {
        proto::CertificatePem {
            chain_pem: self.chain_pem.clone(),
            private_key_pem: self.private_key_pem.clone(),
        }
    }

    /// The rule a gateway applies when it loads the certificate
    /// (`weft_rules::gateway::parse_certificate`), with its reason, on the
    /// field the reason is about: the chain's on `chain_pem`, the key's
    /// (and a key that is not the leaf's) on `private_key_pem`.
    fn check(&self, key: &str) -> Vec<FieldError> {
        match weft_rules::gateway::parse_certificate(&self.chain_pem, &self.private_key_pem) {
            Ok(_) => Vec::new(),
            Err(reason) => {
                let field = if reason.starts_with("the chain") {
                    "chain_pem"
                } else {
                    "private_key_pem"
                };
                vec![FieldError::new(key, field, reason)]
            }
        }
    }
}

/// Schema, then typed parse, then the certificate rule; every error at once.
pub(super) fn parse(key: &str, value: &Value) -> Result<CertificateDocument, Vec<FieldError>> {
    let schema_errors: Vec<FieldError> = schema::validate(key, DocumentKind::Certificate, value)
        .into_iter()
        .map(without_values)
        .collect();
    if !schema_errors.is_empty() {
        return Err(schema_errors);
    }
    let document = serde_path_to_error::deserialize::<_, CertificateDocument>(value)
        .map_err(|error| vec![without_values(from_serde(key, "", error))])?;
    let errors = document.check(key);
    if errors.is_empty() {
        Ok(document)
    } else {
        Err(errors)
    }
}

/// A schema or serde error about one of the PEM fields may quote the value
/// (a short enough one, as a wrong type): it says what was expected instead.
fn without_values(mut error: FieldError) -> FieldError {
    if matches!(error.field.as_str(), "chain_pem" | "private_key_pem")
        && error.reason != "required field is missing"
    {
        error.reason = "must be a string of PEM text".into();
    }
    error
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn self_signed(host: &str) -> (String, String) {
        let certified = rcgen::generate_simple_self_signed(vec![host.into()])
            .unwrap_or_else(|error| panic!("{error}"));
        (certified.cert.pem(), certified.signing_key.serialize_pem())
    }

    fn errors(value: Value) -> Vec<(String, String)> {
        parse("certificates/api", &value)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|error| (error.field, error.reason))
            .collect()
    }

    #[test]
    fn a_chain_and_its_key_are_a_certificate_document() {
        let (chain, key) = self_signed("api.example.com");
        let document = parse(
            "certificates/api",
            &json!({ "chain_pem": chain, "private_key_pem": key }),
        )
        .unwrap_or_else(|errors| panic!("{errors:?}"));
        assert_eq!(document.to_pem().chain_pem, chain);
        assert_eq!(document.to_pem().private_key_pem, key);
    }

    #[test]
    fn a_chain_that_is_not_pem_is_refused_on_chain_pem() {
        let (_, key) = self_signed("api.example.com");
        let found = errors(json!({ "chain_pem": "junk", "private_key_pem": key }));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "chain_pem");
        assert!(
            found[0].1.starts_with("the chain holds no certificate"),
            "{found:?}"
        );
    }

    #[test]
    fn a_key_that_is_not_the_leafs_is_refused_on_private_key_pem_without_quoting_it() {
        let (chain, _) = self_signed("api.example.com");
        let (_, other_key) = self_signed("other.example.com");
        let found = errors(json!({ "chain_pem": chain, "private_key_pem": other_key }));
        assert_eq!(
            found,
            [(
                "private_key_pem".to_string(),
                "the private key is not the leaf certificate's (the chain's first)".to_string()
            )]
        );
        let found = errors(json!({ "chain_pem": chain, "private_key_pem": "junk" }));
        assert_eq!(found[0].0, "private_key_pem");
        assert!(
            found[0]
                .1
                .starts_with("the private key is not a PEM private key"),
            "{found:?}"
        );
    }

    #[test]
    fn both_fields_are_required_and_a_wrong_type_is_not_quoted() {
        let found = errors(json!({ "chain_pem": "x" }));
        assert_eq!(
            found,
            [(
                "private_key_pem".to_string(),
                "required field is missing".to_string()
            )]
        );
        let secret = ["MIIEsecretkeymaterial"];
        let found = errors(json!({ "chain_pem": "x", "private_key_pem": secret }));
        assert_eq!(
            found,
            [(
                "private_key_pem".to_string(),
                "must be a string of PEM text".to_string()
            )]
        );
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let (chain, key) = self_signed("api.example.com");
        let document = CertificateDocument {
            chain_pem: chain,
            private_key_pem: key.clone(),
        };
        let shown = format!("{document:?}");
        assert!(
            !shown.contains(&key) && shown.contains("<redacted>"),
            "{shown}"
        );
    }
}

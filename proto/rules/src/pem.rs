//! PEM text of CA certificates in documents (a private IdP's or Redis's).

/// The marker every PEM certificate starts with.
const CERTIFICATE_MARKER: &str = "-----BEGIN CERTIFICATE-----";

/// Text that holds at least one certificate block. Whether the blocks are
/// usable certificates is the sidecar's to judge when it builds the trust
/// store; a text without any is refused by both ends alike.
pub fn check_has_certificate(pem: &str) -> Result<(), String> {
    if !pem.contains(CERTIFICATE_MARKER) {
        return Err(format!(
            "holds no certificate (no \"{CERTIFICATE_MARKER}\" block)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_text_holds_a_certificate_block() {
        assert!(check_has_certificate("junk").is_err());
        assert!(check_has_certificate("").is_err());
        assert!(
            check_has_certificate("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
                .is_ok()
        );
    }
}

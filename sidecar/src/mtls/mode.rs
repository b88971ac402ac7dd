//! The inbound listener's mTLS mode, from the service's policy: STRICT
//! (mutual TLS only) or PERMISSIVE (also plaintext from callers outside the
//! mesh, told apart by the first byte). It is part of the service's
//! `InboundPolicy` in the routing table, swapped in with the rest of the
//! policy; the listener reads it once per accepted connection,
//! so a change applies to new connections at once and never touches open
//! ones. STRICT until the first policy arrives: nothing gets in without a
//! certificate until someone said so.

use weft_proto::config::v1 as pb;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MtlsMode {
    /// Only mTLS with a leaf from the mesh's CA.
    #[default]
    Strict,
    /// mTLS, and plaintext from callers outside the mesh.
    Permissive,
}

impl MtlsMode {
    /// The mode a policy's `mtls_mode` names; an unknown value (from a
    /// newer agent) is an error, never a silent STRICT or PERMISSIVE.
    pub fn from_proto(value: i32) -> Result<Self, String> {
        match pb::MtlsMode::try_from(value) {
            Ok(pb::MtlsMode::Strict) => Ok(Self::Strict),
            Ok(pb::MtlsMode::Permissive) => Ok(Self::Permissive),
            Err(_) => Err(format!("unknown value {value} (known: STRICT, PERMISSIVE)")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "STRICT",
            Self::Permissive => "PERMISSIVE",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_until_told_otherwise_and_unknown_values_are_errors() {
        assert_eq!(MtlsMode::default(), MtlsMode::Strict);
        assert_eq!(MtlsMode::from_proto(0), Ok(MtlsMode::Strict));
        assert_eq!(MtlsMode::from_proto(1), Ok(MtlsMode::Permissive));
        assert!(
            MtlsMode::from_proto(7)
                .unwrap_err()
                .contains("unknown value 7")
        );
    }
}

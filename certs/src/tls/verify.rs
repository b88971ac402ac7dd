//! Certificate verifiers for SPIFFE leaves, and the resolver presenting
//! our own leaf.
//!
//! The stock webpki verifiers check a DNS name or IP the leaf does not
//! have (a SPIFFE leaf's only SAN is its URI), so both sides verify the
//! chain with rustls's webpki functions and then read the URI SAN
//! themselves. Roots come from the [`IdentityStore`] at handshake time.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::rejection::PeerRejection;
use super::store::IdentityStore;
use crate::spiffe::SpiffeId;
use crate::x509;

/// The handshake-signature methods both verifier traits require: the same
/// for client and server (the provider's algorithms, nothing SPIFFE-specific).
macro_rules! handshake_signatures {
    () => {
        handshake_signatures!(@verify verify_tls12_signature);
        handshake_signatures!(@verify verify_tls13_signature);

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.store
                .provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
    // One signature method: each has the name of the rustls function that
    // does its work.
    (@verify $method:ident) => {
        fn $method(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algorithms = &self.store.provider.signature_verification_algorithms;
            rustls::crypto::$method(message, cert, dss, algorithms)
        }
    };
}

/// Server side: a client must present a leaf chaining to the bundle (with
/// clientAuth usage) and carrying a SPIFFE ID. Which IDs may call what is
/// the caller's policy, applied after the handshake via `peer_identity`.
#[derive(Debug)]
pub(super) struct SpiffeClientVerifier {
    pub(super) store: Arc<IdentityStore>,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No hints: each sidecar holds one leaf, so there is nothing for the
    /// client to choose between, and the bundle may change under us.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let trust = self.store.trust.load();
        trust
            .client_chain
            .verify_client_cert(end_entity, intermediates, now)?;
        x509::spiffe_id_of_der(end_entity)
            .map_err(|reason| PeerRejection::NoSpiffeId { reason }.into_tls_error())?;
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

/// Client side: the server's leaf must chain to the bundle (with
/// serverAuth usage) and name the service we meant to reach. The TLS server
/// name is not checked: the SPIFFE ID is the server's identity.
#[derive(Debug)]
pub(super) struct SpiffeServerVerifier {
    pub(super) store: Arc<IdentityStore>,
    pub(super) expected: SpiffeId,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let leaf = ParsedCertificate::try_from(end_entity)?;
        let trust = self.store.trust.load();
        verify_server_cert_signed_by_trust_anchor(
            &leaf,
            &trust.roots,
            intermediates,
            now,
            self.store.provider.signature_verification_algorithms.all,
        )?;
        let presented = x509::spiffe_id_of_der(end_entity)
            .map_err(|reason| PeerRejection::NoSpiffeId { reason }.into_tls_error())?;
        if !presented.same_service(&self.expected) {
            return Err(PeerRejection::WrongIdentity {
                expected: self.expected.clone(),
                presented,
            }
            .into_tls_error());
        }
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

/// Presents whatever leaf the store holds at handshake time, as server
/// certificate and as client certificate.
#[derive(Debug)]
pub(super) struct CurrentLeaf {
    pub(super) store: Arc<IdentityStore>,
}

impl CurrentLeaf {
    fn current(&self) -> Arc<CertifiedKey> {
        self.store.leaf.load().certified.clone()
    }
}

impl ResolvesServerCert for CurrentLeaf {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for CurrentLeaf {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

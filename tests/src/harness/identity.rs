//! A mesh CA for identity tests, made the way an operator makes one:
//! `weftctl ca init`, plus a join-token file for the services.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use super::binaries::binary;

/// The trust domain of test meshes.
pub const TRUST_DOMAIN: &str = "weft.test";

/// A CA directory and a join token per service.
pub struct MeshCa {
    pub dir: PathBuf,
    pub tokens_file: PathBuf,
    tokens: BTreeMap<String, String>,
}

impl MeshCa {
    /// `weftctl ca init` into `<log_dir>/ca`, and a join token for each of
    /// `services` in `<log_dir>/join-tokens.json`.
    pub fn create(log_dir: &Path, services: &[&str]) -> anyhow::Result<Self> {
        let dir = log_dir.join("ca");
        weftctl(
            &["ca", "init", "--trust-domain", TRUST_DOMAIN, "--out"],
            &dir,
        )?;
        let tokens: BTreeMap<String, String> = services
            .iter()
            .map(|s| {
                (
                    (*s).to_owned(),
                    format!("join-{s}-{:016x}", rand::random::<u64>()),
                )
            })
            .collect();
        let tokens_file = log_dir.join("join-tokens.json");
        std::fs::write(&tokens_file, serde_json::to_string_pretty(&tokens)?)
            .with_context(|| format!("writing {}", tokens_file.display()))?;
        Ok(Self {
            dir,
            tokens_file,
            tokens,
        })
    }

    /// The agent flags that turn issuance on, with leaves valid `leaf_ttl`.
    pub fn agent_args(&self, leaf_ttl: &str) -> Vec<String> {
        vec![
            "--ca-dir".into(),
            self.dir.display().to_string(),
            "--join-tokens".into(),
            self.tokens_file.display().to_string(),
            "--leaf-ttl".into(),
            leaf_ttl.into(),
        ]
    }

    /// The sidecar flags for `service`'s identity.
    pub fn sidecar_args(&self, service: &str) -> Vec<String> {
        vec!["--identity-token".into(), self.token(service).to_owned()]
    }

    pub fn token(&self, service: &str) -> &str {
        self.tokens
            .get(service)
            .map(String::as_str)
            .unwrap_or("no-such-token")
    }

    /// `weftctl ca rotate`: a new signing root, the old one still trusted.
    pub fn rotate(&self) -> anyhow::Result<()> {
        weftctl(&["ca", "rotate", "--dir"], &self.dir)
    }

    /// A TLS client holding a leaf this CA issued to `service`, the way a
    /// sidecar holds one, that expects `server`'s leaf and offers `alpn`:
    /// for raw connections (any bytes, any frames) to an inbound listener.
    pub fn connector(
        &self,
        service: &str,
        server: &str,
        alpn: &[&[u8]],
    ) -> anyhow::Result<tokio_rustls::TlsConnector> {
        let ca = weft_certs::Ca::load(&self.dir)?;
        let identity: weft_certs::SpiffeId = Self::identity_of(service).parse()?;
        let key = weft_certs::LeafKey::generate()?;
        let chain = ca.sign_csr(
            key.csr_pem(&identity)?.as_bytes(),
            &identity,
            std::time::Duration::from_secs(3600),
        )?;
        let store =
            weft_certs::IdentityStore::new(&chain, &key.private_key_pem(), ca.bundle().clone())?;
        let expected: weft_certs::SpiffeId = Self::identity_of(server).parse()?;
        let config = weft_certs::tls::client_config(&store, &expected, alpn);
        Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
            config,
        )))
    }

    /// The SPIFFE ID the mesh gives `service`.
    pub fn identity_of(service: &str) -> String {
        format!("spiffe://{TRUST_DOMAIN}/ns/default/svc/{service}")
    }
}

fn weftctl(args: &[&str], dir: &Path) -> anyhow::Result<()> {
    let out = Command::new(binary("weftctl")?)
        .args(args)
        .arg(dir)
        .output()
        .context("running weftctl")?;
    if !out.status.success() {
        bail!(
            "weftctl {} {} failed: {}{}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

//! Certificate issuance for sidecars: `weft.identity.v1.IdentityService`,
//! served on the same port as the discovery stream.
//!
//! A sidecar sends its service name, a CSR for a key it generated itself,
//! and a credential. The agent checks the credential ([`credentials`]: a
//! join token, or a Consul ACL token Consul grants `service:write` on the
//! service), signs a leaf whose only identity is
//! `spiffe://<trust domain>/ns/default/svc/<service>` with the mesh CA
//! ([`authority`], reloaded when `weftctl ca rotate` rewrites it), and
//! answers with the chain, the trust bundle, the identity and the expiry
//! ([`server`]).
//!
//! [`Identity::start`] validates the whole setup at start, so a wrong
//! directory or token file stops the agent with file and reason instead of
//! failing sidecars one request at a time.

pub mod authority;
pub mod consul_acl;
pub mod consul_ca;
pub mod credentials;
pub mod join_tokens;
pub mod naming;
pub mod refusal;
pub mod server;
pub mod service_name;

pub use authority::{CertificateAuthority, LoadError, ReloadStatus};
pub use consul_acl::{CONSUL_CHECK_TIMEOUT, ConsulAclCheck};
pub use credentials::{Credential, Credentials};
pub use join_tokens::JoinTokens;
pub use naming::ServiceIdentities;
pub use refusal::{Refusal, RefusalReason};
pub use server::IdentityServer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use weft_certs::TrustDomain;
use weft_proto::config::v1::TrustBundle;
use weft_proto::identity::v1::identity_service_server::IdentityServiceServer;

use crate::consul::ConsulClient;
use crate::metrics::Metrics;

/// The namespace of every Weft identity (Consul OSS has one namespace).
pub const NAMESPACE: &str = "default";

/// Leaves shorter-lived than this are allowed (tests use seconds) but
/// warned about: sidecars renew at two thirds of the lifetime, so the CA
/// sees a request per sidecar every 40 s at one minute.
pub const SHORT_LEAF_TTL: Duration = Duration::from_secs(60);

/// Who signs the mesh's leaves (`--identity-source`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum IdentitySource {
    /// The agent's own CA (`--ca-dir`), sidecars ask the agent.
    #[default]
    Weft,
    /// Consul's Connect CA: sidecars ask Consul, and Clusters name
    /// identities in Consul's form and trust domain.
    Consul,
}

/// The identity settings (`--identity-source`, `--ca-dir`,
/// `--join-tokens`, `--leaf-ttl`).
#[derive(Clone, Debug)]
pub struct IdentityConfig {
    /// Who signs leaves.
    pub source: IdentitySource,
    /// The CA directory; `None` turns issuance off.
    pub ca_dir: Option<PathBuf>,
    /// The join tokens file.
    pub join_tokens: Option<PathBuf>,
    /// How long each leaf is valid (clipped to the CA's own expiry).
    pub leaf_ttl: Duration,
}

/// Issuance as set up at start: the CA (if any) and the gRPC service.
pub struct Identity {
    authority: Option<CertificateAuthority>,
    server: IdentityServer,
    /// Consul's identities, with `--identity-source consul`.
    consul_identities: Option<ServiceIdentities>,
}

impl Identity {
    /// Validates `config` and sets issuance up: loads the CA, reads the
    /// join tokens, and starts watching the CA directory for rotations.
    /// `consul` is the agent's Consul client when it runs with `--consul`:
    /// its address is where ACL tokens are checked (never with its own
    /// token). Must run inside the tokio runtime.
    pub fn start(
        config: &IdentityConfig,
        consul: Option<ConsulClient>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        if config.source == IdentitySource::Consul {
            return Err(
                "--identity-source consul needs Consul's identities: use Identity::start_consul"
                    .into(),
            );
        }
        let Some(dir) = &config.ca_dir else {
            if let Some(tokens) = &config.join_tokens {
                return Err(format!(
                    "--join-tokens {} is set but --ca-dir is not: without a CA the agent issues no certificates; set --ca-dir DIR (WEFT_CA_DIR) too, or drop --join-tokens",
                    tokens.display()
                ));
            }
            tracing::info!(
                "no --ca-dir: certificate issuance is off and clusters carry no identity (plaintext mesh)"
            );
            return Ok(Self {
                authority: None,
                server: IdentityServer::disabled(metrics),
                consul_identities: None,
            });
        };
        if config.leaf_ttl.is_zero() {
            return Err("--leaf-ttl must be longer than zero".into());
        }
        let authority = CertificateAuthority::load(dir).map_err(|error| error.to_string())?;
        let join_tokens = config
            .join_tokens
            .as_deref()
            .map(JoinTokens::load)
            .transpose()?;
        let credentials = Credentials::new(join_tokens, consul.map(ConsulAclCheck::new))?;
        authority.watch_dir()?;

        if config.leaf_ttl < SHORT_LEAF_TTL {
            tracing::warn!(
                leaf_ttl = %humantime::format_duration(config.leaf_ttl),
                "--leaf-ttl is under a minute: fine for tests, but every sidecar will ask for a new certificate at two thirds of it"
            );
        }
        let ca = authority.current();
        if ca.not_after() < SystemTime::now() + config.leaf_ttl {
            tracing::warn!(
                ca_not_after = %humantime::format_rfc3339_seconds(ca.not_after()),
                "the CA certificate expires within --leaf-ttl: leaves are cut short to its expiry; rotate it with `weftctl ca rotate`"
            );
        }
        tracing::info!(
            ca_dir = %dir.display(),
            trust_domain = %authority.trust_domain(),
            roots = ca.bundle().len(),
            leaf_ttl = %humantime::format_duration(config.leaf_ttl),
            credentials = %credentials.describe(),
            "issuing certificates"
        );
        let server =
            IdentityServer::issuing(authority.clone(), credentials, config.leaf_ttl, metrics);
        Ok(Self {
            authority: Some(authority),
            server,
            consul_identities: None,
        })
    }

    /// `--identity-source consul`: no CA here (sidecars take leaves and
    /// roots from Consul); learns Consul's trust domain and datacenter,
    /// waiting while Consul cannot answer yet. Refuses settings that
    /// belong to the agent's own CA, and a setup without Consul.
    pub async fn start_consul(
        config: &IdentityConfig,
        consul: Option<&ConsulClient>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        if let Some(dir) = &config.ca_dir {
            return Err(format!(
                "--identity-source consul and --ca-dir {} are both set: with Consul's Connect CA the agent signs nothing; drop --ca-dir, or use --identity-source weft",
                dir.display()
            ));
        }
        if let Some(tokens) = &config.join_tokens {
            return Err(format!(
                "--identity-source consul and --join-tokens {} are both set: sidecars authenticate to Consul with ACL tokens; drop --join-tokens",
                tokens.display()
            ));
        }
        let Some(consul) = consul else {
            return Err(
                "--identity-source consul needs Consul: set --consul URL (CONSUL_HTTP_ADDR); the file backend has no Connect CA"
                    .into(),
            );
        };
        let identities = consul_ca::consul_identities(consul).await?;
        tracing::info!(
            consul = %consul.address(),
            trust_domain = %identities.trust_domain(),
            example = %identities.of("web").map(|id| id.to_string()).unwrap_or_default(),
            "identities from Consul's Connect CA: sidecars take leaves and roots from Consul"
        );
        Ok(Self {
            authority: None,
            server: IdentityServer::consul_ca(metrics),
            consul_identities: Some(identities),
        })
    }

    /// How Clusters name their destination's identity: in the agent CA's
    /// trust domain, or in Consul's form; `None` for a plaintext mesh.
    pub fn service_identities(&self) -> Option<ServiceIdentities> {
        self.consul_identities.clone().or_else(|| {
            self.authority
                .as_ref()
                .map(|authority| ServiceIdentities::Weft(authority.trust_domain().clone()))
        })
    }

    /// The mesh's trust domain, when issuing: the snapshot builder names
    /// every Cluster's identity in it.
    pub fn trust_domain(&self) -> Option<TrustDomain> {
        self.authority
            .as_ref()
            .map(|authority| authority.trust_domain().clone())
    }

    /// The current trust bundle as a `TrustBundle` resource, updated when a
    /// CA reload changes the roots; `None` when not issuing.
    pub fn trust_bundle(&self) -> Option<watch::Receiver<TrustBundle>> {
        self.authority
            .as_ref()
            .map(CertificateAuthority::trust_bundle)
    }

    /// The CA, when issuing (its reload status, current CA...).
    pub fn authority(&self) -> Option<&CertificateAuthority> {
        self.authority.as_ref()
    }

    /// The gRPC service to add beside ADS.
    pub fn service(&self) -> IdentityServiceServer<IdentityServer> {
        self.server.clone().into_service()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consul_config(ca_dir: Option<&str>, join_tokens: Option<&str>) -> IdentityConfig {
        IdentityConfig {
            source: IdentitySource::Consul,
            ca_dir: ca_dir.map(PathBuf::from),
            join_tokens: join_tokens.map(PathBuf::from),
            leaf_ttl: Duration::from_secs(3600),
        }
    }

    #[tokio::test]
    async fn consuls_ca_refuses_the_agent_ca_settings_and_a_mesh_without_consul() {
        let metrics = Arc::new(Metrics::new());
        let refused = |result: Result<Identity, String>| match result {
            Ok(_) => panic!("accepted"),
            Err(reason) => reason,
        };
        let both = refused(
            Identity::start_consul(
                &consul_config(Some("/etc/weft/ca"), None),
                None,
                metrics.clone(),
            )
            .await,
        );
        assert!(both.contains("drop --ca-dir"), "{both}");
        let tokens = refused(
            Identity::start_consul(&consul_config(None, Some("/t.json")), None, metrics.clone())
                .await,
        );
        assert!(tokens.contains("drop --join-tokens"), "{tokens}");
        let no_consul = refused(
            Identity::start_consul(&consul_config(None, None), None, metrics.clone()).await,
        );
        assert!(no_consul.contains("set --consul"), "{no_consul}");
        let wrong_entry = refused(Identity::start(&consul_config(None, None), None, metrics));
        assert!(wrong_entry.contains("start_consul"), "{wrong_entry}");
    }
}

//! The mesh CA the agent signs with (`--ca-dir DIR`), reloaded when its
//! files change.
//!
//! `weftctl ca rotate` rewrites the directory (each file replaced
//! atomically); the agent watches it, waits for the writes to settle, and
//! loads the whole directory again. A directory that does not load (a
//! half-copied key, a certificate that does not match its key, another
//! trust domain, an expired CA) is refused with file and reason, and the
//! CA already loaded keeps signing. The trust bundle is published on a
//! `watch` channel so it can be pushed to sidecars as it changes.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use weft_certs::ca::files;
use weft_certs::{Ca, TrustBundle, TrustDomain};
use weft_proto::config::v1 as config;

/// Quiet time after the last file event before the directory is read
/// again: `weftctl ca rotate` writes four files in a row, and reading in
/// the middle would see a new certificate with the old key.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(100);

/// Why a CA directory did not load: the file at fault (when one is) and
/// the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError {
    pub dir: PathBuf,
    pub file: Option<PathBuf>,
    pub reason: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CA directory {}: ", self.dir.display())?;
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        f.write_str(&self.reason)
    }
}

impl std::error::Error for LoadError {}

/// What the last reload attempts came to (for tests and status pages).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Reloads attempted since start; a burst of file events is one.
    pub attempts: u64,
    /// Why the last attempt was refused (the previous CA kept signing);
    /// `None` when it loaded, or when nothing changed.
    pub last_error: Option<String>,
}

/// The current CA, shared by the signing service and the reloader.
#[derive(Clone)]
pub struct CertificateAuthority {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    trust_domain: TrustDomain,
    current: watch::Sender<Arc<Ca>>,
    bundle: watch::Sender<config::TrustBundle>,
    reloads: watch::Sender<ReloadStatus>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("dir", &self.inner.dir)
            .field("ca", &*self.inner.current.borrow())
            .finish()
    }
}

impl CertificateAuthority {
    /// Loads `dir` (as written by `weftctl ca init`).
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let ca = load_ca(dir)?;
        let trust_domain = ca.trust_domain().clone();
        let bundle = bundle_resource(&ca);
        Ok(Self {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                trust_domain,
                current: watch::Sender::new(Arc::new(ca)),
                bundle: watch::Sender::new(bundle),
                reloads: watch::Sender::new(ReloadStatus::default()),
            }),
        })
    }

    /// The CA directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The trust domain: fixed for the agent's lifetime (every identity
    /// the mesh knows is in it).
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.inner.trust_domain
    }

    /// The CA to sign with now.
    pub fn current(&self) -> Arc<Ca> {
        self.inner.current.borrow().clone()
    }

    /// The trust bundle as the `TrustBundle` resource (trust domain and
    /// every root, PEM); changes when a reload brings new roots.
    pub fn trust_bundle(&self) -> watch::Receiver<config::TrustBundle> {
        self.inner.bundle.subscribe()
    }

    /// The outcome of reloads so far.
    pub fn reload_status(&self) -> watch::Receiver<ReloadStatus> {
        self.inner.reloads.subscribe()
    }

    /// Loads the directory again and, if it holds a valid CA that differs
    /// from the current one, signs with it from now on. Returns whether the
    /// CA changed; on error the current CA stays.
    pub fn reload(&self) -> Result<bool, LoadError> {
        let outcome = self.try_reload();
        self.inner.reloads.send_modify(|status| {
            status.attempts += 1;
            status.last_error = outcome.as_ref().err().map(ToString::to_string);
        });
        outcome
    }

    fn try_reload(&self) -> Result<bool, LoadError> {
        let dir = &self.inner.dir;
        let next = load_ca(dir)?;
        if next.trust_domain() != &self.inner.trust_domain {
            return Err(LoadError {
                dir: dir.clone(),
                file: Some(dir.join(files::TRUST_DOMAIN)),
                reason: format!(
                    "the trust domain changed from {} to {}; every issued identity and every Cluster names {}, so restart the agent to change trust domains",
                    self.inner.trust_domain,
                    next.trust_domain(),
                    self.inner.trust_domain
                ),
            });
        }
        let current = self.current();
        if next.certificate() == current.certificate() && next.bundle() == current.bundle() {
            return Ok(false);
        }
        let bundle = bundle_resource(&next);
        tracing::info!(
            dir = %dir.display(),
            signing_root = %fingerprint(next.certificate()),
            previous = %fingerprint(current.certificate()),
            roots = next.bundle().len(),
            not_after = %humantime::format_rfc3339_seconds(next.not_after()),
            "CA reloaded: new leaves are signed by the new CA"
        );
        self.inner.current.send_replace(Arc::new(next));
        self.inner.bundle.send_if_modified(|published| {
            let changed = *published != bundle;
            *published = bundle;
            changed
        });
        Ok(true)
    }

    /// Watches the directory and reloads after each burst of changes, in a
    /// task that runs as long as the runtime. Fails only when the directory
    /// cannot be watched at all.
    pub fn watch_dir(&self) -> Result<(), String> {
        let dir = self.inner.dir.clone();
        let (events, mut changes) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // The receiver is gone only when the reload task has ended.
                let _ = events.send(event);
            })
            .map_err(|error| {
                format!(
                    "CA directory {}: cannot start a file watcher (inotify): {error}",
                    dir.display()
                )
            })?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|error| format!("CA directory {}: cannot watch it: {error}", dir.display()))?;
        let authority = self.clone();
        tokio::spawn(async move {
            // Owned by the task: dropping it would stop the events.
            let _watcher = watcher;
            loop {
                loop {
                    match changes.recv().await {
                        Some(event) if crate::fs_watch::is_relevant(&event, "CA directory") => {
                            break;
                        }
                        Some(_) => continue,
                        None => return,
                    }
                }
                while let Ok(Some(_)) = tokio::time::timeout(RELOAD_DEBOUNCE, changes.recv()).await
                {
                }
                let reloading = authority.clone();
                match tokio::task::spawn_blocking(move || reloading.reload()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => tracing::error!(
                        dir = %error.dir.display(),
                        file = %error.file.as_deref().map(|file| file.display().to_string()).unwrap_or_default(),
                        reason = %error.reason,
                        "CA reload refused; the current CA keeps signing"
                    ),
                    Err(error) => tracing::error!("CA reload task failed: {error}"),
                }
            }
        });
        Ok(())
    }
}

/// Loads a CA directory, attributing each problem to its file, and refuses
/// an expired CA (every leaf it signed would be rejected).
fn load_ca(dir: &Path) -> Result<Ca, LoadError> {
    let fail = |file: Option<&str>, reason: String| LoadError {
        dir: dir.to_owned(),
        file: file.map(|name| dir.join(name)),
        reason,
    };
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).map_err(|error| {
            let hint = if error.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "; create a CA with `weftctl ca init --trust-domain <domain> --out {}`",
                    dir.display()
                )
            } else {
                String::new()
            };
            fail(Some(name), format!("cannot read it: {error}{hint}"))
        })
    };
    if !dir.is_dir() {
        return Err(fail(
            None,
            format!(
                "not a directory (or not readable); create a CA with `weftctl ca init --trust-domain <domain> --out {}`",
                dir.display()
            ),
        ));
    }
    read(files::TRUST_DOMAIN)?
        .trim()
        .parse::<TrustDomain>()
        .map_err(|error| fail(Some(files::TRUST_DOMAIN), error.to_string()))?;
    read(files::CA_CERT)?;
    read(files::CA_KEY)?;
    TrustBundle::from_pem(&read(files::BUNDLE)?)
        .map_err(|error| fail(Some(files::BUNDLE), error.to_string()))?;
    // The certificate and key name their own paths in their errors.
    let ca = Ca::load(dir).map_err(|error| fail(None, error.to_string()))?;
    if ca.not_after() <= SystemTime::now() {
        return Err(fail(
            Some(files::CA_CERT),
            format!(
                "the CA certificate expired at {}; rotate it with `weftctl ca rotate --dir {}`",
                humantime::format_rfc3339_seconds(ca.not_after()),
                dir.display()
            ),
        ));
    }
    Ok(ca)
}

fn bundle_resource(ca: &Ca) -> config::TrustBundle {
    config::TrustBundle {
        trust_domain: ca.trust_domain().to_string(),
        roots_pem: ca.bundle().to_pem(),
    }
}

/// The first 16 hex digits of the certificate's SHA-256 (what `weftctl ca`
/// prints in full), to tell roots apart in logs.
fn fingerprint(der: &[u8]) -> String {
    hex::encode(&Sha256::digest(der)[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("weft-authority-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn new_ca(dir: &Path, trust_domain: &str) -> Ca {
        let ca =
            Ca::generate_root(&trust_domain.parse().unwrap(), Duration::from_secs(3600)).unwrap();
        ca.save(dir).unwrap();
        ca
    }

    #[test]
    fn a_missing_file_is_named_with_how_to_create_the_ca() {
        let dir = scratch("missing");
        new_ca(&dir, "mesh.test");
        std::fs::remove_file(dir.join(files::CA_KEY)).unwrap();
        let error = CertificateAuthority::load(&dir)
            .expect_err("no key")
            .to_string();
        assert!(
            error.contains(&dir.join("ca.key").display().to_string()),
            "{error}"
        );
        assert!(error.contains("weftctl ca init"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bad_bundle_is_named() {
        let dir = scratch("bundle");
        new_ca(&dir, "mesh.test");
        std::fs::write(dir.join(files::BUNDLE), "not a certificate").unwrap();
        let error = CertificateAuthority::load(&dir).expect_err("bad bundle");
        assert_eq!(error.file, Some(dir.join("bundle.pem")), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_reload_keeps_the_current_ca_when_the_new_files_do_not_load() {
        let dir = scratch("reload");
        let first = new_ca(&dir, "mesh.test");
        let authority = CertificateAuthority::load(&dir).unwrap();

        // A certificate whose key is not there yet.
        let second =
            Ca::generate_root(&"mesh.test".parse().unwrap(), Duration::from_secs(3600)).unwrap();
        let other = scratch("reload-other");
        second.save(&other).unwrap();
        std::fs::copy(other.join(files::CA_CERT), dir.join(files::CA_CERT)).unwrap();
        assert!(authority.reload().is_err());
        assert_eq!(authority.current().certificate(), first.certificate());
        let status = authority.reload_status().borrow().clone();
        assert_eq!(status.attempts, 1);
        assert!(status.last_error.is_some_and(|error| error.contains("key")));

        // Another trust domain is refused too.
        new_ca(&dir, "other.test");
        let error = authority.reload().expect_err("trust domain changed");
        assert!(error.reason.contains("restart the agent"), "{error}");
        assert_eq!(authority.current().certificate(), first.certificate());

        // A rotation goes through and publishes both roots.
        first.save(&dir).unwrap();
        let rotated = first.rotate_root(Duration::from_secs(3600)).unwrap();
        rotated.save(&dir).unwrap();
        assert_eq!(authority.reload(), Ok(true));
        assert_eq!(authority.current().certificate(), rotated.certificate());
        let bundle = authority.trust_bundle().borrow().clone();
        assert_eq!(bundle.trust_domain, "mesh.test");
        assert_eq!(
            TrustBundle::from_pem(&bundle.roots_pem).unwrap().len(),
            2,
            "old and new roots"
        );
        assert_eq!(authority.reload(), Ok(false), "nothing changed since");
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&other);
    }
}

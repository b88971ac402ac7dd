//! The gateway's listeners, kept as its `Gateway` resource says.
//!
//! Each accepted version is applied whole and at once, from the xDS
//! client's task: new ports are bound first (a port that cannot be bound
//! NACKs the version, and nothing changes), then listeners still listed
//! get their new hosts and certificates in place (open connections are
//! untouched), new ones start, and the ones no longer listed stop
//! accepting and drain their connections.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::certificates::{CertificateSet, ServedCertificate, SniCertificates};
use super::compile::{CertificateFiles, CompiledGateway, CompiledListener, FileStamp, read_files};
use super::metrics::CERTIFICATE_RELOADS;
use super::policy::{ListenerPolicy, SharedListenerPolicy};
use crate::model::Direction;
use crate::server::{self, ServerSettings, Transport};
use crate::shutdown::LateTokens;
use crate::table::request::HttpStack;

/// How often certificate files are checked for a change: cheap (two
/// `stat`s per certificate), and a renewed certificate is served within
/// this long.
pub const CERTIFICATE_FILE_CHECK: Duration = Duration::from_secs(2);

/// Everything a listener needs besides its own config.
pub struct ListenerContext<F> {
    /// Builds the stack of a listener that reads `policy`.
    pub stack: F,
    pub server: ServerSettings,
    pub shutdown: watch::Receiver<bool>,
    pub drain: LateTokens,
}

/// An HTTPS listener's certificates: the set handshakes read, and which
/// of them come from files.
struct ListenerCertificates {
    resolver: Arc<SniCertificates>,
    files: Mutex<Vec<CertificateFiles>>,
}

struct RunningListener {
    name: String,
    https: bool,
    policy: SharedListenerPolicy,
    certificates: Option<Arc<ListenerCertificates>>,
    /// Dropped (or sent) to stop accepting.
    stop: Arc<watch::Sender<bool>>,
}

/// The running listeners, by address.
pub struct GatewayListeners<F> {
    context: ListenerContext<F>,
    running: BTreeMap<SocketAddr, RunningListener>,
}

/// A listener bound for a version not applied yet.
struct Bound {
    listener: std::net::TcpListener,
}

impl<F, S> GatewayListeners<F>
where
    F: Fn(SharedListenerPolicy) -> S,
    S: HttpStack,
{
    pub fn new(context: ListenerContext<F>) -> Self {
        Self {
            context,
            running: BTreeMap::new(),
        }
    }

    /// The addresses listened on now, by listener name.
    pub fn addresses(&self) -> BTreeMap<String, SocketAddr> {
        self.running
            .iter()
            .map(|(addr, l)| (l.name.clone(), *addr))
            .collect()
    }

    /// Applies `gateway`; on a bind failure nothing changes and the
    /// reasons are returned (a NACK).
    pub fn apply(&mut self, gateway: CompiledGateway) -> Result<(), Vec<String>> {
        // Bind every new address first: all or nothing.
        let mut bound = BTreeMap::new();
        let mut errors = Vec::new();
        for (i, listener) in gateway.listeners.iter().enumerate() {
            let reuse = self
                .running
                .get(&listener.addr)
                .is_some_and(|r| r.https == listener.tls.is_some());
            if reuse {
                continue;
            }
            match bind(listener.addr, self.running.contains_key(&listener.addr)) {
                Ok(b) => {
                    bound.insert(listener.addr, b);
                }
                Err(e) => errors.push(format!("listeners[{i}].port: {e}")),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let listed: std::collections::BTreeSet<SocketAddr> =
            gateway.listeners.iter().map(|l| l.addr).collect();
        // Gone, or changing protocol on the same address: stop the old one
        // (it drains) before the new one takes over its socket.
        self.running.retain(|addr, running| {
            let keep = listed.contains(addr) && !bound.contains_key(addr);
            if !keep {
                tracing::info!(listener = %running.name, %addr, "gateway listener stops; draining its connections");
                running.stop.send_replace(true);
            }
            keep
        });
        for listener in gateway.listeners {
            let policy = ListenerPolicy {
                hosts: listener.hosts.clone(),
                trusted_hops: gateway.trusted_hops,
                https: listener.tls.is_some(),
            };
            match bound.remove(&listener.addr) {
                Some(new) => self.start(listener, policy, new),
                None => {
                    if let Some(running) = self.running.get_mut(&listener.addr) {
                        update(running, listener, policy);
                    }
                }
            }
        }
        Ok(())
    }

    fn start(&mut self, listener: CompiledListener, policy: ListenerPolicy, bound: Bound) {
        let Some(drain) = self.context.drain.token() else {
            // Shutting down: no new listener.
            return;
        };
        let addr = listener.addr;
        let https = listener.tls.is_some();
        let policy: SharedListenerPolicy = Arc::new(ArcSwap::from_pointee(policy));
        let (stop, stopped) = watch::channel(false);
        let stop = Arc::new(stop);
        // The global shutdown stops this listener too.
        let forward = stop.clone();
        let mut global = self.context.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = global.wait_for(|s| *s) => { forward.send_replace(true); }
                _ = forward.closed() => {}
            }
        });
        let (transport, certificates) = match listener.tls {
            Some(tls) => {
                let resolver =
                    Arc::new(SniCertificates::new(CertificateSet::new(tls.certificates)));
                let certificates = Arc::new(ListenerCertificates {
                    resolver: resolver.clone(),
                    files: Mutex::new(tls.files),
                });
                tokio::spawn(watch_files(
                    listener.name.clone(),
                    certificates.clone(),
                    stopped.clone(),
                ));
                (
                    Transport::Edge {
                        acceptor: edge_acceptor(resolver),
                    },
                    Some(certificates),
                )
            }
            None => (Transport::Plain, None),
        };
        let tcp = match bound
            .listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(bound.listener))
        {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::error!(listener = %listener.name, %addr, error = %e, "gateway listener cannot start");
                return;
            }
        };
        tracing::info!(listener = %listener.name, %addr, https, "gateway listener started");
        tokio::spawn(server::serve(
            tcp,
            (self.context.stack)(policy.clone()),
            Direction::Outbound,
            transport,
            self.context.server.clone(),
            stopped,
            drain,
        ));
        self.running.insert(
            addr,
            RunningListener {
                name: listener.name,
                https,
                policy,
                certificates,
                stop,
            },
        );
    }
}

/// A listener still listed: its new hosts and certificates, in place.
fn update(running: &mut RunningListener, listener: CompiledListener, policy: ListenerPolicy) {
    running.name = listener.name;
    running.policy.store(Arc::new(policy));
    if let (Some(certificates), Some(tls)) = (&running.certificates, listener.tls) {
        certificates
            .resolver
            .replace(CertificateSet::new(tls.certificates));
        *certificates.files.lock().unwrap_or_else(|e| e.into_inner()) = tls.files;
    }
}

fn bind(addr: SocketAddr, taking_over: bool) -> Result<Bound, String> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        if taking_over {
            format!("cannot bind {addr} for the listener's new protocol: {e}")
        } else {
            format!("cannot bind {addr}: {e}")
        }
    })?;
    Ok(Bound { listener })
}

/// TLS for outside clients: TLS 1.2 and 1.3 with rustls's (ring's) safe
/// defaults, HTTP/2 preferred by ALPN, no client certificate.
fn edge_acceptor(resolver: Arc<SniCertificates>) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Reads a listener's certificate files again when they change, until
/// the listener stops. A bad new file is logged once and the certificate
/// being served stays.
async fn watch_files(
    listener: String,
    certificates: Arc<ListenerCertificates>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(CERTIFICATE_FILE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let changed = {
            let mut files = certificates.files.lock().unwrap_or_else(|e| e.into_inner());
            reread_changed(&listener, &mut files)
        };
        if changed.is_empty() {
            continue;
        }
        let current = certificates.resolver.current();
        let mut served: Vec<ServedCertificate> = current.certificates().to_vec();
        for (index, certificate) in changed {
            if let Some(slot) = served.get_mut(index) {
                tracing::info!(%listener, source = %certificate.source, names = ?certificate.names, "certificate reloaded; new handshakes get it");
                *slot = certificate;
            }
        }
        certificates.resolver.replace(CertificateSet::new(served));
    }
}

/// The certificates whose files changed since last read, read again; a
/// bad one is logged, and its new stamp kept so it is not read again
/// until it changes once more.
fn reread_changed(
    listener: &str,
    files: &mut [CertificateFiles],
) -> Vec<(usize, ServedCertificate)> {
    let mut changed = Vec::new();
    for entry in files.iter_mut() {
        let stamp = FileStamp::of(&entry.chain, &entry.private_key);
        if stamp == entry.stamp {
            continue;
        }
        entry.stamp = stamp;
        match read_files(&entry.chain, &entry.private_key) {
            Ok(certificate) => {
                CERTIFICATE_RELOADS.applied.fetch_add(1, Ordering::Relaxed);
                changed.push((entry.index, certificate))
            }
            Err(e) => {
                CERTIFICATE_RELOADS.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                %listener,
                chain = %entry.chain.display(),
                error = %e,
                "changed certificate files cannot be served; keeping the current certificate"
                )
            }
        }
    }
    changed
}

//! DNS for hostname endpoints, through hickory-resolver: async, with a
//! TTL-respecting cache, and never a blocking `getaddrinfo` on the runtime.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use hickory_resolver::TokioResolver;
use tokio::sync::OnceCell;

/// A shared resolver, built on first use from the system configuration
/// (`/etc/resolv.conf`), so a sidecar whose endpoints are all IPs never
/// reads it.
#[derive(Clone, Default)]
pub struct Dns {
    resolver: Arc<OnceCell<Result<TokioResolver, String>>>,
}

impl Dns {
    pub async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        let resolver = self
            .resolver
            .get_or_init(|| async {
                TokioResolver::builder_tokio()
                    .and_then(|b| b.build())
                    .map_err(|e| e.to_string())
            })
            .await
            .as_ref()
            .map_err(|e| {
                io::Error::other(format!(
                    "no DNS resolver (is /etc/resolv.conf readable?): {e}"
                ))
            })?;
        let lookup = resolver.lookup_ip(host).await.map_err(|e| {
            io::Error::other(format!(
                "resolving {host}: {e} (is the DNS server reachable?)"
            ))
        })?;
        let addrs: Vec<SocketAddr> = lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        if addrs.is_empty() {
            return Err(io::Error::other(format!("{host} has no A/AAAA record")));
        }
        Ok(addrs)
    }
}

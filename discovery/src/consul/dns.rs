//! Host-name resolution for the Consul address through hickory-resolver:
//! asynchronous, TTL-cached, and never a blocking `getaddrinfo` (hyper-util's
//! default resolver runs one on a blocking thread per connection).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hickory_resolver::TokioResolver;
use hyper_util::client::legacy::connect::dns::Name;
use tokio::sync::OnceCell;

/// A resolver for hyper-util's `HttpConnector`. Built on first use from the
/// system configuration (`/etc/resolv.conf`, `/etc/hosts`), so an agent that
/// reaches Consul by IP (the common case) never reads it. Clones share one
/// resolver and its cache.
#[derive(Clone, Default)]
pub(crate) struct HickoryResolver {
    resolver: Arc<OnceCell<Result<TokioResolver, String>>>,
}

impl HickoryResolver {
    async fn resolve(self, host: String) -> io::Result<std::vec::IntoIter<SocketAddr>> {
        let resolver = self
            .resolver
            .get_or_init(|| async {
                TokioResolver::builder_tokio()
                    .and_then(|builder| builder.build())
                    .map_err(|error| error.to_string())
            })
            .await
            .as_ref()
            .map_err(|error| {
                io::Error::other(format!(
                    "no DNS resolver for the Consul address (is /etc/resolv.conf readable?): {error}"
                ))
            })?;
        let lookup = resolver.lookup_ip(host.as_str()).await.map_err(|error| {
            io::Error::other(format!(
                "resolving Consul host {host:?}: {error} (is the DNS server reachable?)"
            ))
        })?;
        // Port 0: the connector puts the URI's port in.
        let addresses: Vec<SocketAddr> = lookup.iter().map(|ip| SocketAddr::new(ip, 0)).collect();
        if addresses.is_empty() {
            return Err(io::Error::other(format!(
                "Consul host {host:?} has no A/AAAA record"
            )));
        }
        Ok(addresses.into_iter())
    }
}

impl tower::Service<Name> for HickoryResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        Box::pin(self.clone().resolve(name.as_str().to_owned()))
    }
}

//! Where an endpoint is: an address, or a name resolved at connect time.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EndpointAddr {
    Ip(SocketAddr),
    /// A DNS name, resolved at connect time through hickory's TTL cache.
    Name {
        host: Arc<str>,
        port: u16,
    },
}

impl fmt::Display for EndpointAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(a) => write!(f, "{a}"),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

//! What one listener's layers read per request: its hosts and the
//! gateway's trusted hops, swapped whole when the `Gateway` resource
//! changes, so a request sees one version.

use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::ArcSwap;

#[derive(Debug, Default)]
pub struct ListenerPolicy {
    /// The hosts the listener serves, lower case.
    pub hosts: HashSet<String>,
    /// Proxies in front of the gateway trusted with `x-forwarded-*`.
    pub trusted_hops: u32,
    /// Whether the listener terminates TLS (`x-forwarded-proto`).
    pub https: bool,
}

pub type SharedListenerPolicy = Arc<ArcSwap<ListenerPolicy>>;

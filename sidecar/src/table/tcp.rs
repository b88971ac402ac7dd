//! The table as a `--tcp-upstream` reads it (`tcp::outbound`): an endpoint
//! of the destination's cluster for each of the app's connections, picked
//! by the cluster's balancer and counted like a request.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::cluster::Protocol;
use super::request::{ClusterGuard, InFlightGuard};
use super::{Endpoint, EndpointAddr, RoutingTable};
use crate::tcp::outbound::{Destinations, TcpEndpoint};
use crate::upstream::TunnelClient;

/// An endpoint picked for one connection, with what counts it as open.
pub struct TcpPick {
    endpoint: Arc<Endpoint>,
    _cluster_slot: ClusterGuard,
    _in_flight: InFlightGuard,
}

impl Destinations for ArcSwap<RoutingTable> {
    type Endpoint = TcpPick;

    fn pick(&self, service: &str) -> Result<(TcpPick, Duration), String> {
        let table = self.load_full();
        let cluster = table.cluster(service).ok_or_else(|| {
            format!("no cluster {service} from the agent yet (is the service registered?)")
        })?;
        if cluster.settings.protocol != Protocol::Tcp {
            return Err(format!(
                "{service} is not an opaque TCP service: set \"protocol\": \"tcp\" in weft/destinations/{service}"
            ));
        }
        let slot = ClusterGuard::admit(&cluster.shared, cluster.settings.max_requests).ok_or_else(
            || {
                format!(
                    "{} connections to {service} are open, its connection_pool.max_requests",
                    cluster.settings.max_requests
                )
            },
        )?;
        let endpoint = cluster.pick().cloned().ok_or_else(|| {
            format!(
                "{service} has no healthy endpoint ({} known, none HEALTHY or UNKNOWN)",
                cluster.endpoints.len()
            )
        })?;
        let in_flight = InFlightGuard::enter(&endpoint);
        let pick = TcpPick {
            endpoint,
            _cluster_slot: slot,
            _in_flight: in_flight,
        };
        Ok((pick, cluster.settings.pool.connect_timeout))
    }
}

impl TcpEndpoint for TcpPick {
    fn addr(&self) -> &EndpointAddr {
        &self.endpoint.addr
    }

    fn meshed(&self) -> bool {
        self.endpoint.meshed
    }

    fn tunnel(&self) -> Option<&TunnelClient> {
        self.endpoint.client.tunnel.as_ref()
    }

    fn count_failure(&self) {
        self.endpoint.stats.failures.fetch_add(1, Ordering::Relaxed);
    }
}

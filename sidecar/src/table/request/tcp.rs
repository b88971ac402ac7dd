//! What the tunnel layer reads of a request: the opaque TCP side of the
//! intentions of its inbound snapshot.

use super::{ProxyRequest, Snapshot};
use crate::tcp::inbound::{TunnelDenial, TunnelTarget};

impl TunnelTarget for ProxyRequest<Snapshot> {
    #[inline]
    fn takes_tunnels(&self) -> bool {
        self.target.inbound_policy().authz.opaque_tcp
    }

    #[inline]
    fn decide_tunnel(&self, caller: &str) -> Result<(), TunnelDenial> {
        self.target
            .inbound_policy()
            .authz
            .decide_tcp(Some(caller))
            .map_err(|denial| TunnelDenial {
                origin: denial.origin,
                reason: denial.reason,
            })
    }
}

//! What the breaker's layers (`crate::breaker`: the circuit breaker and
//! the `max_requests` limit) read of a request and of its cluster.

use std::sync::Arc;
use std::time::Duration;

use super::{ClusterGuard, ProxyRequest};
use crate::breaker::circuit::BreakerState;
use crate::breaker::{
    BreakerDestination, BreakerSettings, BreakerTarget, ConcurrencyTarget, RequestsFull,
};
use crate::table::Cluster;

impl BreakerTarget for ProxyRequest {
    type Destination = Cluster;

    #[inline]
    fn breaker_destination(&self) -> Option<&Arc<Cluster>> {
        self.ctx.cluster.as_ref()
    }

    #[inline]
    fn response_timeout(&self) -> Option<Duration> {
        self.ctx.timeout
    }
}

impl BreakerDestination for Cluster {
    #[inline]
    fn name(&self) -> &str {
        &self.name
    }

    #[inline]
    fn breaker_settings(&self) -> Option<&BreakerSettings> {
        self.settings.breaker.as_ref()
    }

    #[inline]
    fn breaker_state(&self) -> &BreakerState {
        &self.shared.breaker
    }
}

impl ConcurrencyTarget for ProxyRequest {
    #[inline]
    fn take_request_slot(&mut self) -> Option<Result<(), RequestsFull<'_>>> {
        let cluster = self.ctx.cluster.as_ref()?;
        let max = cluster.settings.max_requests;
        match ClusterGuard::admit(&cluster.shared, max) {
            Some(guard) => {
                self.ctx.cluster_guard = Some(guard);
                Some(Ok(()))
            }
            None => Some(Err(RequestsFull {
                destination: &cluster.name,
                max_requests: max,
            })),
        }
    }
}

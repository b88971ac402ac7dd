//! What the breaker's layers (`crate::breaker`: the circuit breaker and
//! the `max_requests` limit) read of a request and of its cluster.

use std::sync::Arc;
use std::time::Duration;

use super::{ClusterGuard, Concrete, ProxyRequest, ToEndpoint};
use crate::breaker::circuit::BreakerState;
use crate::breaker::{
    BreakerDestination, BreakerSettings, BreakerTarget, ConcurrencyTarget, RequestsFull,
};
use crate::table::Cluster;

impl<R: Send + 'static> BreakerTarget for ProxyRequest<Concrete<R>> {
    type Destination = Cluster;

    #[inline]
    fn breaker_destination(&self) -> &Arc<Cluster> {
        &self.target.cluster
    }

    #[inline]
    fn response_timeout(&self) -> Option<Duration> {
        self.target.timeout
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

impl<R: Send + 'static> ConcurrencyTarget for ProxyRequest<ToEndpoint<R>> {
    #[inline]
    fn take_request_slot(&mut self) -> Result<(), RequestsFull<'_>> {
        let cluster = &self.target.concrete.cluster;
        let max = cluster.settings.max_requests;
        match ClusterGuard::admit(&cluster.shared, max) {
            Some(guard) => {
                self.ctx.cluster_guard = Some(guard);
                Ok(())
            }
            None => Err(RequestsFull {
                destination: &cluster.name,
                max_requests: max,
            }),
        }
    }
}

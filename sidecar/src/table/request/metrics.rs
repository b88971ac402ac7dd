//! What the metrics layer reads of a [`ProxyRequest`]: the stats it counts
//! in (the local app's, or its destination's), and its route's name. With
//! the access log on, the request's record starts here, where the
//! destination is known, and stays in the context for the layers below.

use std::sync::Arc;

use super::ProxyRequest;
use crate::access_log::{self, Record};
use crate::metrics::layer::MetricsTarget;
use crate::metrics::sizes::Sink;

impl MetricsTarget for ProxyRequest {
    #[inline]
    fn metrics_sink(&mut self, fixed: Option<&Sink>) -> Option<Sink> {
        let stats = match fixed {
            Some(app) => app.stats()?.clone(),
            None => self.ctx.cluster.as_ref()?.shared.clone(),
        };
        let Some(log) = access_log::installed() else {
            return Some(Sink::Stats(stats));
        };
        let name = self.ctx.cluster.as_ref().map(|c| c.name.clone());
        let record = Arc::new(Record::new(log, self, name, Some(stats)));
        self.ctx.access_log = Some(record.clone());
        Some(Sink::Logged(record))
    }

    #[inline]
    fn route_name(&self) -> Option<&str> {
        self.ctx.route.as_ref().map(|r| &*r.route().name)
    }
}

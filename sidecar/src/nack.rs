//! The NACK error collector: every problem found while compiling one
//! resource, each as `field.path: reason`, so one NACK tells the operator
//! everything.
//!
//! It also reads the durations of those resources, the same way for all.
//!
//! It sits at the bottom of the sidecar, beside nothing it depends on,
//! because every feature's compile step (routes in `xds`, permissions in
//! `authz`, thresholds in `breaker`, ...) reports into it: were it in `xds`,
//! each feature would import the xDS client for one small type.

pub(crate) struct Errors(pub(crate) Vec<String>);

impl Errors {
    /// `value` when nothing was reported, else every report (the NACK).
    pub(crate) fn into_result<T>(self, value: T) -> Result<T, Vec<String>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }

    pub(crate) fn at(&mut self, path: &str, msg: impl std::fmt::Display) {
        self.0.push(format!("{path}: {msg}"));
    }

    /// A set duration, or `default` when unset or zero (cluster.proto's
    /// "0 or unset means the documented default"); a bad one is reported
    /// at `path` and the default used.
    pub(crate) fn duration_or(
        &mut self,
        d: Option<&prost_types::Duration>,
        default: std::time::Duration,
        path: &str,
    ) -> std::time::Duration {
        match d.map(weft_rules::duration::from_proto) {
            Some(Ok(d)) if !d.is_zero() => d,
            Some(Err(e)) => {
                self.at(path, e);
                default
            }
            _ => default,
        }
    }
}

//! The NACK error collector: every problem found while compiling one
//! resource, each as `field.path: reason`, so one NACK tells the operator
//! everything.
//!
//! It sits at the bottom of the sidecar, beside nothing it depends on,
//! because every feature's compile step (routes in `xds`, permissions in
//! `authz`, thresholds in `breaker`, ...) reports into it: were it in `xds`,
//! each feature would import the xDS client for one small type.

pub(crate) struct Errors(pub(crate) Vec<String>);

impl Errors {
    pub(crate) fn at(&mut self, path: &str, msg: impl std::fmt::Display) {
        self.0.push(format!("{path}: {msg}"));
    }
}

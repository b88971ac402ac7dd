//! Cluster fields 12-13 (breaker.proto) into the breaker's settings
//! ([`Compiled`], which the xDS compile puts into the cluster's settings):
//! 0 or unset means the documented default, as elsewhere in cluster.proto.
//! Field 14, `outlier_detection`, is outlier ejection's
//! (`crate::ejection::compile`).

use weft_proto::config::v1 as pb;

use super::{BreakerSettings, FailureOn, Thresholds};
use crate::nack::Errors;

/// A cluster's breaker sections, compiled.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub thresholds: Thresholds,
    pub breaker: Option<BreakerSettings>,
}

pub(crate) fn compile(c: &pb::Cluster, errs: &mut Errors) -> Compiled {
    let thresholds = match &c.circuit_breakers {
        Some(t) => Thresholds {
            max_retries: (t.max_retries > 0).then_some(t.max_retries as usize),
            max_connections: (t.max_connections > 0).then_some(t.max_connections as usize),
            max_pending_requests: t.max_pending_requests.map(|n| n as usize),
        },
        None => Thresholds::default(),
    };
    let breaker = c.breaker.as_ref().map(|b| breaker(b, errs));
    Compiled {
        thresholds,
        breaker,
    }
}

fn nonzero_or(v: u32, default: u32) -> u32 {
    if v == 0 { default } else { v }
}

fn breaker(b: &pb::Breaker, errs: &mut Errors) -> BreakerSettings {
    let d = BreakerSettings::default();
    if let Err(reason) = weft_rules::breaker::check_failure_ratio(b.failure_ratio) {
        errs.at("breaker.failure_ratio", reason);
    }
    let mut failure_on = if b.failure_on.is_empty() {
        FailureOn::default()
    } else {
        FailureOn {
            server_error: false,
            gateway_error: false,
            connect_failure: false,
            timeout: false,
            grpc_statuses: Vec::new(),
        }
    };
    for (i, f) in b.failure_on.iter().enumerate() {
        match pb::breaker::Failure::try_from(*f) {
            Ok(pb::breaker::Failure::ServerError) => failure_on.server_error = true,
            Ok(pb::breaker::Failure::GatewayError) => failure_on.gateway_error = true,
            Ok(pb::breaker::Failure::ConnectFailure) => failure_on.connect_failure = true,
            Ok(pb::breaker::Failure::Timeout) => failure_on.timeout = true,
            Ok(pb::breaker::Failure::Unspecified) | Err(_) => {
                errs.at(
                    &format!("breaker.failure_on[{i}]"),
                    format!("unknown value {f}"),
                );
            }
        }
    }
    for (i, g) in b.grpc_statuses.iter().enumerate() {
        if let Err(reason) = weft_rules::grpc::check_status(*g) {
            errs.at(&format!("breaker.grpc_statuses[{i}]"), reason);
        }
    }
    failure_on.grpc_statuses = b.grpc_statuses.clone();
    let consecutive_failures = b.consecutive_failures;
    let failure_ratio = b.failure_ratio.clamp(0.0, 1.0);
    if let Err(reason) =
        weft_rules::breaker::check_can_open(consecutive_failures, Some(failure_ratio))
    {
        errs.at("breaker.consecutive_failures", reason);
    }
    BreakerSettings {
        consecutive_failures,
        failure_ratio,
        window: errs.duration_or(b.window.as_ref(), d.window, "breaker.window"),
        min_requests: nonzero_or(b.min_requests, d.min_requests),
        open_interval: errs.duration_or(
            b.open_interval.as_ref(),
            d.open_interval,
            "breaker.open_interval",
        ),
        max_open_interval: errs.duration_or(
            b.max_open_interval.as_ref(),
            d.max_open_interval,
            "breaker.max_open_interval",
        ),
        half_open_probes: nonzero_or(b.half_open_probes, d.half_open_probes),
        failure_on,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(c: pb::Cluster) -> Result<Compiled, Vec<String>> {
        let mut errs = Errors(Vec::new());
        let s = compile(&c, &mut errs);
        errs.into_result(s)
    }

    #[test]
    fn absent_means_off_and_zeros_mean_defaults() {
        let s = compiled(pb::Cluster::default()).unwrap();
        assert!(s.breaker.is_none());
        assert_eq!(s.thresholds.max_retries, None);
        let s = compiled(pb::Cluster {
            breaker: Some(pb::Breaker {
                consecutive_failures: 3,
                ..Default::default()
            }),
            circuit_breakers: Some(pb::CircuitBreakerThresholds {
                max_retries: 4,
                max_connections: 0,
                max_pending_requests: Some(0),
            }),
            ..Default::default()
        })
        .unwrap();
        let b = s.breaker.unwrap();
        assert_eq!(b.consecutive_failures, 3);
        assert_eq!(b.open_interval, BreakerSettings::default().open_interval);
        assert_eq!(b.failure_on, FailureOn::default());
        assert_eq!(s.thresholds.max_retries, Some(4));
        assert_eq!(s.thresholds.max_connections, None, "0 is no cap");
        assert_eq!(
            s.thresholds.max_pending_requests,
            Some(0),
            "0 is none may wait"
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        let errs = compiled(pb::Cluster {
            breaker: Some(pb::Breaker {
                failure_ratio: 1.5,
                failure_on: vec![0, 9],
                grpc_statuses: vec![17],
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap_err();
        let joined = errs.join("\n");
        for field in [
            "breaker.failure_ratio:",
            "breaker.failure_on[0]:",
            "breaker.failure_on[1]:",
            "breaker.grpc_statuses[0]:",
        ] {
            assert!(joined.contains(field), "{field} missing in {joined}");
        }
    }
}

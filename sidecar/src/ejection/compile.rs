//! Cluster field 14, `outlier_detection` (breaker.proto), into outlier
//! ejection's settings, which the xDS compile puts into the cluster's
//! settings: 0 or unset means the documented default, as elsewhere in
//! cluster.proto.

use weft_proto::config::v1 as pb;

use super::settings::{EjectionBackoff, OutlierSettings};
use crate::nack::Errors;

/// A cluster's outlier ejection; `None` = none.
pub(crate) fn compile(c: &pb::Cluster, errs: &mut Errors) -> Option<OutlierSettings> {
    match &c.outlier_detection {
        Some(o) => outlier(o, errs),
        // No section: unreachable endpoints are still ejected at once.
        None => Some(OutlierSettings::unreachable_default()),
    }
}

/// A section's settings; `None` when it turns every count off (explicitly
/// `consecutive_unreachable: 0`): no ejection at all.
fn outlier(o: &pb::OutlierDetection, errs: &mut Errors) -> Option<OutlierSettings> {
    let d = OutlierSettings::default();
    if let Err(reason) = weft_rules::ejection::check_max_ejection_percent(o.max_ejection_percent) {
        errs.at("outlier_detection.max_ejection_percent", reason);
    }
    let consecutive_unreachable = o
        .consecutive_unreachable
        .unwrap_or(d.consecutive_unreachable);
    if o.consecutive_5xx == 0 && o.consecutive_gateway_errors == 0 && consecutive_unreachable == 0 {
        return None;
    }
    Some(OutlierSettings {
        consecutive_5xx: o.consecutive_5xx,
        consecutive_gateway_errors: o.consecutive_gateway_errors,
        consecutive_unreachable,
        base_ejection_time: errs.duration_or(
            o.base_ejection_time.as_ref(),
            d.base_ejection_time,
            "outlier_detection.base_ejection_time",
        ),
        max_ejection_time: errs.duration_or(
            o.max_ejection_time.as_ref(),
            d.max_ejection_time,
            "outlier_detection.max_ejection_time",
        ),
        max_ejection_percent: o.max_ejection_percent.min(100),
        backoff: EjectionBackoff::Linear,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn compiled(c: pb::Cluster) -> Result<Option<OutlierSettings>, Vec<String>> {
        let mut errs = Errors(Vec::new());
        let s = compile(&c, &mut errs);
        errs.into_result(s)
    }

    #[test]
    fn absent_means_the_unreachable_default_and_zeros_mean_defaults() {
        assert_eq!(
            compiled(pb::Cluster::default()).unwrap(),
            Some(OutlierSettings::unreachable_default()),
            "no section: unreachable endpoints are ejected at once"
        );
        let o = compiled(pb::Cluster {
            outlier_detection: Some(pb::OutlierDetection {
                consecutive_5xx: 2,
                max_ejection_percent: 50,
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(o.base_ejection_time, Duration::from_secs(30));
        assert_eq!(o.consecutive_unreachable, 1, "unset: at once");
    }

    #[test]
    fn an_outlier_section_with_every_count_zero_turns_ejection_off() {
        let off = pb::OutlierDetection {
            consecutive_5xx: 0,
            consecutive_unreachable: Some(0),
            ..Default::default()
        };
        let s = compiled(pb::Cluster {
            outlier_detection: Some(off),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s, None);
        let unreachable_only = pb::OutlierDetection {
            consecutive_unreachable: None,
            ..off
        };
        let s = compiled(pb::Cluster {
            outlier_detection: Some(unreachable_only),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.unwrap().consecutive_unreachable, 1);
    }

    #[test]
    fn bad_values_name_their_field() {
        let errs = compiled(pb::Cluster {
            outlier_detection: Some(pb::OutlierDetection {
                max_ejection_percent: 101,
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap_err();
        let joined = errs.join("\n");
        assert!(
            joined.contains("outlier_detection.max_ejection_percent:"),
            "{joined}"
        );
    }
}

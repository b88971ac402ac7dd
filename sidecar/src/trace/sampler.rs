//! Which requests record a span: the OpenTelemetry samplers named by
//! `OTEL_TRACES_SAMPLER`, decided from the trace id alone so that every
//! sidecar of a trace decides alike.

/// A root decision and whether a caller's decision is followed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampler {
    /// Follow the caller's sampled flag when there is one
    /// (`parentbased_*`).
    pub parent_based: bool,
    pub root: Root,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Root {
    Always,
    Never,
    /// Sampled when the trace id's low 64 bits (its random part, W3C
    /// level 2) are below this.
    Ratio(u64),
}

impl Default for Sampler {
    /// `parentbased_always_on`: the OpenTelemetry default.
    fn default() -> Self {
        Self {
            parent_based: true,
            root: Root::Always,
        }
    }
}

impl Sampler {
    /// `parentbased_traceidratio` with `ratio` (0..=1) of new traces.
    pub fn parent_based_ratio(ratio: f64) -> Self {
        Self {
            parent_based: true,
            root: Root::ratio(ratio),
        }
    }

    /// From `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
    pub fn parse(name: &str, arg: Option<&str>) -> Result<Self, String> {
        let ratio = || -> Result<Root, String> {
            match arg {
                None => Ok(Root::Always),
                Some(a) => parse_ratio(a)
                    .map(Root::ratio)
                    .map_err(|e| format!("OTEL_TRACES_SAMPLER_ARG {a:?}: {e}")),
            }
        };
        let (parent_based, root) = match name {
            "always_on" => (false, Root::Always),
            "always_off" => (false, Root::Never),
            "traceidratio" => (false, ratio()?),
            "parentbased_always_on" => (true, Root::Always),
            "parentbased_always_off" => (true, Root::Never),
            "parentbased_traceidratio" => (true, ratio()?),
            other => {
                return Err(format!(
                    "unknown sampler {other:?}: expected always_on, always_off, traceidratio, \
                     parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
                ));
            }
        };
        Ok(Self { parent_based, root })
    }

    /// Whether to record a span of `trace_id` whose caller decided
    /// `parent` (`None`: no caller, or one that deferred the decision).
    pub fn sample(&self, parent: Option<bool>, trace_id: u128) -> bool {
        if self.parent_based
            && let Some(decided) = parent
        {
            return decided;
        }
        match self.root {
            Root::Always => true,
            Root::Never => false,
            Root::Ratio(below) => (trace_id as u64) < below,
        }
    }
}

impl Root {
    fn ratio(ratio: f64) -> Self {
        if ratio >= 1.0 {
            Root::Always
        } else if ratio <= 0.0 {
            Root::Never
        } else {
            // Exact enough: 2^64 * ratio, below u64::MAX since ratio < 1.
            Root::Ratio((ratio * 18_446_744_073_709_551_616.0) as u64)
        }
    }
}

/// A sampling ratio from 0 to 1.
pub fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err("expected a ratio from 0 to 1, e.g. 0.01".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_based_samplers_follow_the_caller() {
        let s = Sampler::parse("parentbased_traceidratio", Some("0")).unwrap();
        assert!(s.sample(Some(true), 1));
        assert!(!s.sample(Some(false), 1));
        assert!(!s.sample(None, 1));
        let s = Sampler::parse("traceidratio", Some("1")).unwrap();
        assert!(s.sample(Some(false), 1));
    }

    #[test]
    fn a_ratio_samples_about_that_share_of_new_traces() {
        let s = Sampler::parent_based_ratio(0.25);
        let sampled = (0..10_000u128)
            .filter(|i| s.sample(None, i.wrapping_mul(0x9e3779b97f4a7c15_f39cc0605cedc835)))
            .count();
        assert!((2_000..3_000).contains(&sampled), "{sampled}");
    }

    #[test]
    fn bad_names_and_ratios_are_explained() {
        assert!(
            Sampler::parse("jaeger_remote", None)
                .unwrap_err()
                .contains("unknown sampler")
        );
        assert!(
            Sampler::parse("traceidratio", Some("2"))
                .unwrap_err()
                .contains("0 to 1")
        );
        assert_eq!(
            Sampler::parse("always_off", None).unwrap().root,
            Root::Never
        );
    }
}

//! The latency histograms written by hand in OpenMetrics text, with their
//! trace-id exemplars. prometheus-client 0.26 encodes exemplars only for
//! its own `HistogramWithExemplars` (a lock per observation); an
//! `Exemplar` cannot be built for a custom collector's histogram. So this
//! family is written here, in the same format the crate uses (floats
//! through `dtoa`, as it does), after the registry and before `# EOF`.

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use super::histogram::{Exemplar, HistogramSnapshot};

/// `# HELP`, `# TYPE` and `# UNIT` of a histogram family named `name`
/// (with its unit suffix).
pub fn histogram_header(out: &mut String, name: &str, help: &str, unit: &str) -> fmt::Result {
    writeln!(out, "# HELP {name} {help}")?;
    writeln!(out, "# TYPE {name} histogram")?;
    writeln!(out, "# UNIT {name} {unit}")
}

/// The `_sum`, `_count` and `_bucket` lines of one labelled histogram;
/// `exemplars[i]` goes on bucket `i`'s line.
pub fn histogram(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    h: &HistogramSnapshot,
    exemplars: &[Option<Arc<Exemplar>>],
) -> fmt::Result {
    let mut floats = dtoa::Buffer::new();
    write!(out, "{name}_sum")?;
    label_set(out, labels, None)?;
    writeln!(out, " {}", floats.format(h.sum_seconds))?;
    write!(out, "{name}_count")?;
    label_set(out, labels, None)?;
    writeln!(out, " {}", h.count)?;
    let mut cumulative = 0;
    for (i, (bound, count)) in h.buckets.iter().enumerate() {
        cumulative += count;
        write!(out, "{name}_bucket")?;
        let le = if bound.is_infinite() {
            "+Inf"
        } else {
            floats.format(*bound)
        };
        label_set(out, labels, Some(le))?;
        write!(out, " {cumulative}")?;
        if let Some(Some(e)) = exemplars.get(i) {
            let mut value = dtoa::Buffer::new();
            write!(
                out,
                " # {{trace_id=\"{:032x}\"}} {}",
                e.trace_id,
                value.format(e.seconds)
            )?;
            if let Ok(at) = e.at.duration_since(UNIX_EPOCH) {
                write!(out, " {}", value.format(at.as_secs_f64()))?;
            }
        }
        out.push('\n');
    }
    Ok(())
}

/// `{le="..",name="value",...}`: `le` first, as prometheus-client writes it.
fn label_set(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) -> fmt::Result {
    out.push('{');
    let le = le.map(|le| ("le", le));
    for (i, (name, value)) in le.iter().chain(labels).enumerate() {
        if i > 0 {
            out.push(',');
        }
        write!(out, "{name}=\"")?;
        escape(out, value);
        out.push('"');
    }
    out.push('}');
    Ok(())
}

/// OpenMetrics label value escaping: backslash, double quote, newline.
fn escape(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use prometheus_client::collector::Collector;
    use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
    use prometheus_client::metrics::MetricType;
    use prometheus_client::registry::{Registry, Unit};

    use super::*;
    use crate::metrics::histogram::LatencyHistogram;

    const HELP: &str = "Time to the response head.";

    #[derive(Debug)]
    struct Reference(HistogramSnapshot);

    impl Collector for Reference {
        fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
            let mut family = encoder.encode_descriptor(
                "weft_request_duration",
                HELP,
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            let labels = [("direction", "outbound"), ("destination", "a\"b")];
            let h = &self.0;
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets, None)
        }
    }

    fn observed() -> LatencyHistogram {
        let h = LatencyHistogram::default();
        for micros in [30, 700, 3_000, 60_000_000] {
            h.observe(Duration::from_micros(micros));
        }
        h
    }

    #[test]
    fn without_exemplars_the_text_is_prometheus_clients() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Reference(observed().snapshot())));
        let mut reference = String::new();
        prometheus_client::encoding::text::encode_registry(&mut reference, &registry).unwrap();

        let mut ours = String::new();
        let name = "weft_request_duration_seconds";
        histogram_header(&mut ours, name, HELP, "seconds").unwrap();
        let labels = [("direction", "outbound"), ("destination", "a\"b")];
        histogram(&mut ours, name, &labels, &observed().snapshot(), &[]).unwrap();
        assert_eq!(ours, reference);
    }

    #[test]
    fn an_exemplar_follows_its_bucket_count() {
        let h = observed();
        h.observe_traced(
            Duration::from_millis(3),
            Some(0x4bf92f3577b34da6a3ce929d0e0e4736),
            7,
        );
        let exemplars: Vec<_> = h.exemplars().collect();
        let mut out = String::new();
        histogram(&mut out, "d", &[], &h.snapshot(), &exemplars).unwrap();
        let line = out
            .lines()
            .find(|l| l.starts_with("d_bucket{le=\"0.005\"}"))
            .unwrap();
        let (count, exemplar) = line.split_once(" # ").unwrap();
        assert!(count.ends_with(" 4"), "{line}");
        let (labels, rest) = exemplar.split_once("} ").unwrap();
        assert_eq!(labels, "{trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"");
        let (value, at) = rest.split_once(' ').unwrap();
        assert_eq!(value, "0.003");
        let at: f64 = at.parse().unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        assert!((now.as_secs_f64() - at).abs() < 60.0, "{at}");
    }
}

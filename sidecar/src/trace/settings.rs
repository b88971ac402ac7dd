//! Where spans go and which are recorded: the sidecar's flags
//! (`--otlp-endpoint`, `--otlp-protocol`, `--trace-sampling`) over the
//! standard `OTEL_*` variables. No endpoint anywhere = no spans (trace
//! headers are still propagated).

use std::collections::BTreeMap;
use std::time::Duration;

use super::sampler::Sampler;

#[derive(Clone, Debug, Default)]
pub struct TraceSettings {
    /// `None`: tracing off, nothing recorded or exported.
    pub export: Option<ExportSettings>,
    pub sampler: Sampler,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

#[derive(Clone, Debug)]
pub struct ExportSettings {
    /// The complete URL spans are sent to (HTTP: with `/v1/traces`).
    pub endpoint: String,
    pub protocol: Protocol,
    /// Finished spans waiting for export; more are dropped and counted
    /// (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2048 as in the spec).
    pub queue_size: usize,
    /// Spans per export call (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, 512).
    pub batch_size: usize,
    /// Longest wait for a batch to fill (`OTEL_BSP_SCHEDULE_DELAY`, ms,
    /// default 5000).
    pub schedule_delay: Duration,
    /// Deadline of one export call, connecting included (no retries)
    /// (`OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` / `OTEL_EXPORTER_OTLP_TIMEOUT`,
    /// ms, default 10000).
    pub timeout: Duration,
}

/// `grpc` or `http/protobuf` (`--otlp-protocol`).
pub fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        "http/json" => Err("http/json is not supported; use grpc or http/protobuf".into()),
        _ => Err("expected grpc or http/protobuf".into()),
    }
}

/// An `http://HOST:PORT[/path]` URL (no TLS to the collector: run it, or
/// an OpenTelemetry Collector, beside the sidecar).
pub fn parse_endpoint(s: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = s.parse().map_err(|e| {
        format!("not a URL ({e}); expected http://HOST:PORT, e.g. http://127.0.0.1:4317")
    })?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err("https is not supported: send to a local collector over http://".into());
        }
        _ => return Err("expected an http:// URL, e.g. http://127.0.0.1:4317".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("missing host, e.g. http://127.0.0.1:4317".into());
    }
    Ok(uri)
}

impl TraceSettings {
    /// `endpoint`, `protocol` and `ratio` are the sidecar's own settings
    /// (flag, `WEFT_*`, file), already parsed; `env` gives the `OTEL_*`
    /// variables under them. Problems go to `errors`.
    pub fn resolve(
        endpoint: Option<http::Uri>,
        protocol: Option<Protocol>,
        ratio: Option<f64>,
        env: &BTreeMap<String, String>,
        errors: &mut Vec<String>,
    ) -> Self {
        let var = |name: &str| env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let mut invalid = |name: &str, value: &str, why: String| {
            errors.push(format!("{name}: invalid value {value:?}: {why}"));
        };

        let sampler = match (ratio, var("OTEL_TRACES_SAMPLER")) {
            (Some(ratio), _) => Sampler::parent_based_ratio(ratio),
            (None, Some(name)) => match Sampler::parse(name, var("OTEL_TRACES_SAMPLER_ARG")) {
                Ok(s) => s,
                Err(why) => {
                    invalid("OTEL_TRACES_SAMPLER", name, why);
                    Sampler::default()
                }
            },
            (None, None) => Sampler::default(),
        };

        let protocol = protocol.or_else(|| {
            let (name, value) = [
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ]
            .into_iter()
            .find_map(|n| var(n).map(|v| (n, v)))?;
            parse_protocol(value)
                .map_err(|why| invalid(name, value, why))
                .ok()
        });
        // The spec's default.
        let protocol = protocol.unwrap_or(Protocol::HttpProtobuf);

        let disabled =
            var("OTEL_SDK_DISABLED") == Some("true") || var("OTEL_TRACES_EXPORTER") == Some("none");
        let mut from_env = |name: &str| -> Option<http::Uri> {
            let value = var(name)?;
            parse_endpoint(value)
                .map_err(|why| invalid(name, value, why))
                .ok()
        };
        let endpoint = match endpoint {
            Some(uri) => Some(signal_url(&uri, protocol, false)),
            None => match from_env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
                Some(uri) => Some(uri.to_string()),
                None => from_env("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .map(|uri| signal_url(&uri, protocol, true)),
            },
        };
        let millis = |names: &[&str], default: u64, errors: &mut Vec<String>| -> u64 {
            let Some((name, value)) = names.iter().find_map(|n| var(n).map(|v| (*n, v))) else {
                return default;
            };
            value.parse().unwrap_or_else(|_| {
                errors.push(format!(
                    "{name}: invalid value {value:?}: expected milliseconds"
                ));
                default
            })
        };
        let export = match endpoint {
            Some(endpoint) if !disabled => Some(ExportSettings {
                endpoint,
                protocol,
                queue_size: millis(&["OTEL_BSP_MAX_QUEUE_SIZE"], 2048, errors).max(1) as usize,
                batch_size: millis(&["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"], 512, errors).max(1)
                    as usize,
                schedule_delay: Duration::from_millis(millis(
                    &["OTEL_BSP_SCHEDULE_DELAY"],
                    5000,
                    errors,
                )),
                timeout: Duration::from_millis(
                    millis(
                        &[
                            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                            "OTEL_EXPORTER_OTLP_TIMEOUT",
                        ],
                        10_000,
                        errors,
                    )
                    .max(1),
                ),
            }),
            _ => None,
        };
        Self { export, sampler }
    }
}

/// The URL to send spans to. HTTP: `OTEL_EXPORTER_OTLP_ENDPOINT` is a base
/// that always gets `v1/traces` (the spec's rule); a URL of our own gets
/// it only when it has no path. gRPC: the URL as is.
fn signal_url(uri: &http::Uri, protocol: Protocol, base: bool) -> String {
    let text = uri.to_string();
    if protocol == Protocol::Grpc || (!base && uri.path() != "/") {
        return text;
    }
    format!("{}/v1/traces", text.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::sampler::Root;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_endpoint_means_tracing_off() {
        let mut errors = Vec::new();
        let s = TraceSettings::resolve(None, None, None, &env(&[]), &mut errors);
        assert!(s.export.is_none() && errors.is_empty());
        assert_eq!(s.sampler, Sampler::default());
    }

    #[test]
    fn otel_variables_are_read_like_the_spec_says() {
        let mut errors = Vec::new();
        let s = TraceSettings::resolve(
            None,
            None,
            None,
            &env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/base/"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
            ]),
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let export = s.export.unwrap();
        assert_eq!(export.endpoint, "http://collector:4318/base/v1/traces");
        assert_eq!(export.protocol, Protocol::HttpProtobuf);
        assert!(matches!(s.sampler.root, Root::Ratio(_)) && s.sampler.parent_based);

        let s = TraceSettings::resolve(
            None,
            None,
            None,
            &env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:1"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://collector:4318/custom",
                ),
            ]),
            &mut errors,
        );
        assert_eq!(s.export.unwrap().endpoint, "http://collector:4318/custom");
    }

    #[test]
    fn flags_override_the_environment() {
        let mut errors = Vec::new();
        let s = TraceSettings::resolve(
            Some(parse_endpoint("http://127.0.0.1:4317").unwrap()),
            Some(Protocol::Grpc),
            Some(0.01),
            &env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_TRACES_SAMPLER", "always_off"),
            ]),
            &mut errors,
        );
        let export = s.export.unwrap();
        assert_eq!(
            (export.endpoint.as_str(), export.protocol),
            ("http://127.0.0.1:4317/", Protocol::Grpc)
        );
        assert_eq!(s.sampler, Sampler::parent_based_ratio(0.01));
    }

    #[test]
    fn bad_variables_are_all_reported() {
        let mut errors = Vec::new();
        TraceSettings::resolve(
            None,
            None,
            None,
            &env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
                ("OTEL_TRACES_SAMPLER", "sometimes"),
            ]),
            &mut errors,
        );
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("OTEL_TRACES_SAMPLER"));
    }

    #[test]
    fn sdk_disabled_turns_export_off() {
        let mut errors = Vec::new();
        let s = TraceSettings::resolve(
            Some(parse_endpoint("http://127.0.0.1:4318").unwrap()),
            None,
            None,
            &env(&[("OTEL_SDK_DISABLED", "true")]),
            &mut errors,
        );
        assert!(s.export.is_none());
    }
}

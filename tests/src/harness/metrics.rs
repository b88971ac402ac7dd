//! Reads a `/metrics` page: checks it is well-formed OpenMetrics text and
//! gives its samples by name and labels.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail, ensure};

/// One sample: `name{labels} value`, and its exemplar if it has one.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    pub exemplar: Option<Exemplar>,
}

/// An OpenMetrics exemplar: ` # {labels} value [timestamp]` after a
/// histogram bucket's (or a counter's) value.
#[derive(Clone, Debug, PartialEq)]
pub struct Exemplar {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    pub timestamp: Option<f64>,
}

/// A parsed page.
#[derive(Debug, Default)]
pub struct MetricsPage {
    pub samples: Vec<Sample>,
    /// Every family the page declares (`# TYPE name type`), samples or not.
    pub families: BTreeMap<String, String>,
}

impl MetricsPage {
    /// Parses OpenMetrics text strictly enough to catch a broken page:
    /// every line is a `# TYPE/HELP/UNIT` comment, a sample, or the final
    /// `# EOF`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut samples = Vec::new();
        let mut families = BTreeMap::new();
        let mut lines = text.lines().peekable();
        let mut saw_eof = false;
        while let Some(line) = lines.next() {
            if line == "# EOF" {
                ensure!(lines.peek().is_none(), "text after # EOF");
                saw_eof = true;
                break;
            }
            if let Some(comment) = line.strip_prefix("# ") {
                let kind = comment.split(' ').next().unwrap_or_default();
                ensure!(
                    matches!(kind, "TYPE" | "HELP" | "UNIT"),
                    "unexpected comment line: {line}"
                );
                if let Some(declared) = comment.strip_prefix("TYPE ") {
                    let (name, kind) = declared
                        .split_once(' ')
                        .with_context(|| format!("TYPE without a type: {line}"))?;
                    families.insert(name.to_owned(), kind.to_owned());
                }
                continue;
            }
            samples.push(parse_sample(line).with_context(|| format!("line {line:?}"))?);
        }
        ensure!(saw_eof, "no `# EOF` line: not OpenMetrics text");
        Ok(Self { samples, families })
    }

    /// The value of the sample `name` whose labels include all of `labels`
    /// (0 when there is none: counters start absent).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|have| have == v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Whether the page declares the series `name` (a sample name: a
    /// counter's `_total`, a histogram's `_bucket`/`_sum`/`_count`), even
    /// with no sample yet.
    pub fn declares(&self, name: &str) -> bool {
        let family_of = |suffixes: &[&str], kinds: &[&str]| {
            suffixes.iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .and_then(|family| self.families.get(family))
                    .is_some_and(|kind| kinds.contains(&kind.as_str()))
            })
        };
        self.families
            .get(name)
            .is_some_and(|kind| kind == "gauge" || kind == "unknown")
            || family_of(&["_total"], &["counter"])
            || family_of(&["_bucket", "_sum", "_count"], &["histogram"])
            || self.samples.iter().any(|s| s.name == name)
    }

    /// The samples called `name`.
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }
}

fn parse_sample(line: &str) -> anyhow::Result<Sample> {
    let name_end = line.find([' ', '{']).context("no value")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        bail!("bad metric name {name:?}");
    }
    let (labels, rest) = parse_label_set(&line[name_end..])?;
    let rest = rest.strip_prefix(' ').context("no value")?;
    let (value_part, exemplar) = match rest.split_once(" # ") {
        None => (rest, None),
        Some((value_part, exemplar)) => (value_part, Some(parse_exemplar(name, exemplar)?)),
    };
    // `value [timestamp]`.
    let mut fields = value_part.split(' ');
    let value = parse_float(fields.next().context("no value")?)?;
    if let Some(timestamp) = fields.next() {
        parse_float(timestamp).context("sample timestamp")?;
    }
    ensure!(
        fields.next().is_none(),
        "text after the value and timestamp"
    );
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
        exemplar,
    })
}

fn parse_float(v: &str) -> anyhow::Result<f64> {
    Ok(match v {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().with_context(|| format!("value {v:?}"))?,
    })
}

/// `{a="x",b="y"}rest` (or no braces at all) -> the labels and `rest`.
fn parse_label_set(text: &str) -> anyhow::Result<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let Some(body) = text.strip_prefix('{') else {
        return Ok((labels, text));
    };
    // The closing brace: the first `}` outside a quoted value.
    let (mut quoted, mut escaped, mut end) = (false, false, None);
    for (i, c) in body.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => {
                end = Some(i);
                break;
            }
            _ => {}
        }
    }
    let end = end.context("unclosed label set")?;
    for pair in split_labels(&body[..end])? {
        let (k, v) = pair.split_once('=').context("label without =")?;
        ensure!(
            !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad label name {k:?}"
        );
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .context("unquoted label value")?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    Ok((labels, &body[end + 1..]))
}

/// `{labels} value [timestamp]`, strictly: only on a bucket or a counter's
/// `_total`, label names and values of at most 128 characters in all.
fn parse_exemplar(sample: &str, text: &str) -> anyhow::Result<Exemplar> {
    ensure!(
        sample.ends_with("_bucket") || sample.ends_with("_total"),
        "an exemplar on {sample}, which is neither a histogram bucket nor a counter"
    );
    ensure!(
        text.starts_with('{'),
        "exemplar without a label set: {text:?}"
    );
    let (labels, rest) = parse_label_set(text)?;
    let runes: usize = labels.iter().map(|(k, v)| k.len() + v.len()).sum();
    ensure!(runes <= 128, "exemplar labels over 128 characters");
    let rest = rest.strip_prefix(' ').context("exemplar without a value")?;
    let mut fields = rest.split(' ');
    let value = parse_float(fields.next().context("exemplar without a value")?)?;
    let timestamp = fields.next().map(parse_float).transpose()?;
    ensure!(fields.next().is_none(), "text after the exemplar");
    Ok(Exemplar {
        labels,
        value,
        timestamp,
    })
}

/// Splits `a="x",b="y,z"` at the commas outside quotes.
fn split_labels(body: &str) -> anyhow::Result<Vec<&str>> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in body.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    ensure!(!quoted, "unterminated label value");
    if start < body.len() {
        parts.push(&body[start..]);
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_parses_into_samples_and_a_broken_one_does_not() {
        let page = MetricsPage::parse(
            "# HELP weft_requests x.\n# TYPE weft_requests counter\n\
             weft_requests_total{direction=\"outbound\",destination=\"a,b\"} 3\n\
             weft_x_bucket{le=\"+Inf\"} 2\n# EOF\n",
        )
        .unwrap();
        assert_eq!(
            page.value("weft_requests_total", &[("destination", "a,b")]),
            3.0
        );
        assert_eq!(
            page.value("weft_requests_total", &[("destination", "c")]),
            0.0
        );
        assert!(page.declares("weft_requests_total"));
        assert!(
            !page.declares("weft_requests"),
            "a counter's samples end in _total"
        );
        assert!(!page.declares("weft_other_total"));
        assert!(
            MetricsPage::parse("weft_requests_total 1\n").is_err(),
            "no EOF"
        );
        assert!(MetricsPage::parse("weft requests 1\n# EOF\n").is_err());
    }

    #[test]
    fn exemplars_parse_strictly() {
        let page = MetricsPage::parse(
            "d_bucket{le=\"0.005\",destination=\"a}b\"} 4 # {trace_id=\"4bf9\"} 0.003 1764417600.5\n\
             d_bucket{le=\"+Inf\"} 5 # {trace_id=\"77\"} 61.0\n# EOF\n",
        )
        .unwrap();
        let first = &page.samples[0];
        assert_eq!(
            (first.value, first.labels["destination"].as_str()),
            (4.0, "a}b")
        );
        let e = first.exemplar.as_ref().unwrap();
        assert_eq!(e.labels["trace_id"], "4bf9");
        assert_eq!((e.value, e.timestamp), (0.003, Some(1764417600.5)));
        assert_eq!(page.samples[1].exemplar.as_ref().unwrap().timestamp, None);
        for broken in [
            "d_sum 4 # {trace_id=\"1\"} 1\n# EOF\n",
            "d_bucket{le=\"1\"} 4 # trace_id=\"1\" 1\n# EOF\n",
            "d_bucket{le=\"1\"} 4 # {trace_id=\"1\"}\n# EOF\n",
            "d_bucket{le=\"1\"} 4 # {trace_id=\"1\"} 1 2 3\n# EOF\n",
        ] {
            assert!(MetricsPage::parse(broken).is_err(), "{broken}");
        }
    }
}

//! The one error type of document validation.

use std::fmt;

/// One problem in one document: which document (`key`, e.g. `routes/users`),
/// where in it (`field`, e.g. `routes[1].match.path_regex`, or `(document)`
/// for the document as a whole), and why, with a hint where one helps.
///
/// This is what the agent logs, shows in `/status` and `weftctl` prints.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct FieldError {
    pub key: String,
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(
        key: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            key: key.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.key, self.field, self.reason)
    }
}

impl std::error::Error for FieldError {}

/// Joins a field path and a property name: `routes[0]` + `match` =
/// `routes[0].match`; the root (empty) + `routes` = `routes`.
pub(crate) fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

/// The schema's errors and the rules' (`weft-rules`, the checks a sidecar
/// applies) for one document, as one list. Where both refuse a field, the
/// rule's reason replaces the schema's: it is the one a sidecar gives, so a
/// problem reads the same whichever end finds it.
pub(crate) fn with_rule_reasons(
    mut errors: Vec<FieldError>,
    rules: Vec<FieldError>,
) -> Vec<FieldError> {
    let schema_errors = errors.len();
    let mut replaced = vec![false; schema_errors];
    for rule in rules {
        let same_field =
            (0..schema_errors).find(|&i| !replaced[i] && errors[i].field == rule.field);
        match same_field {
            Some(i) => {
                replaced[i] = true;
                errors[i].reason = rule.reason;
            }
            None => errors.push(rule),
        }
    }
    errors
}

/// Turns the typed-parse error of serde into a field error, keeping the path
/// serde_path_to_error tracked (it prints paths as `routes[0].match`, the
/// same form as ours).
pub(crate) fn from_serde(
    key: &str,
    prefix: &str,
    error: serde_path_to_error::Error<serde_json::Error>,
) -> FieldError {
    let path = error.path().to_string();
    let field = match (prefix.is_empty(), path == ".") {
        (_, true) => prefix.to_string(),
        (true, false) => path,
        (false, false) if path.starts_with('[') => format!("{prefix}{path}"),
        (false, false) => join(prefix, &path),
    };
    let field = if field.is_empty() {
        super::DOCUMENT_FIELD.to_string()
    } else {
        field
    };
    FieldError::new(key, field, error.into_inner().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_reason_replaces_the_schema_reason_for_its_field() {
        let schema = vec![
            FieldError::new("k", "a", "schema says a"),
            FieldError::new("k", "b", "schema says b"),
        ];
        let rules = vec![
            FieldError::new("k", "b", "rule says b"),
            FieldError::new("k", "c", "rule says c"),
        ];
        let reasons: Vec<String> = with_rule_reasons(schema, rules)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            reasons,
            [
                "k: a: schema says a",
                "k: b: rule says b",
                "k: c: rule says c"
            ]
        );
    }

    #[test]
    fn display_is_key_field_reason() {
        let error = FieldError::new("routes/users", "routes[1].match.path_regex", "bad regex");
        assert_eq!(
            error.to_string(),
            "routes/users: routes[1].match.path_regex: bad regex"
        );
    }

    #[test]
    fn join_builds_dotted_paths() {
        assert_eq!(join("", "routes"), "routes");
        assert_eq!(join("routes[0]", "match"), "routes[0].match");
    }
}

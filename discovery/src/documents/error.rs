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

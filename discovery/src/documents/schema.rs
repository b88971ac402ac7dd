//! Structural validation against the published JSON Schema
//! (`discovery/schema/weft-kv.schema.json`, draft 2020-12), so that the
//! schema operators use in their editors and CI is exactly the one the agent
//! enforces.
//!
//! The `jsonschema` crate reports errors in JSON Schema terms ("False schema
//! does not allow ...", "... is not valid under any of the schemas listed in
//! the 'anyOf' keyword"). [`validate`] rewrites each into a [`FieldError`]
//! with a dotted field path and a reason an operator can act on, using the
//! schema itself (property lists, descriptions, `dependentSchemas` names)
//! for the hints, so that a schema change needs no code change here.

use std::sync::LazyLock;

use jsonschema::Validator;
use jsonschema::error::ValidationErrorKind;
use serde_json::Value;

use super::error::{FieldError, join};
use super::{DOCUMENT_FIELD, DocumentKind};

/// The schema text, embedded at build time.
pub const SCHEMA: &str = include_str!("../../schema/weft-kv.schema.json");

/// Values longer than this are not quoted in error messages.
const MAX_QUOTED_VALUE: usize = 60;

struct Compiled {
    schema: Value,
    route: Validator,
    destination: Validator,
    policy: Validator,
    defaults: Validator,
    gateway: Validator,
    certificate: Validator,
}

/// Compiled once. A failure is a bug in the embedded schema (a unit test
/// compiles it), reported on every document rather than panicking the agent.
static COMPILED: LazyLock<Result<Compiled, String>> = LazyLock::new(compile);

fn compile() -> Result<Compiled, String> {
    let schema: Value = serde_json::from_str(SCHEMA)
        .map_err(|e| format!("the embedded schema is not JSON: {e}"))?;
    let validator = |definition: &str| {
        // The same schema, its root pointed at one definition: the `$defs`
        // stay in place so that internal `$ref`s resolve.
        let mut root = schema.clone();
        if let Some(object) = root.as_object_mut() {
            object.insert(
                "$ref".into(),
                Value::String(format!("#/$defs/{definition}")),
            );
        }
        jsonschema::draft202012::new(&root)
            .map_err(|e| format!("the embedded schema does not compile ({definition}): {e}"))
    };
    Ok(Compiled {
        route: validator("route_document")?,
        destination: validator("destination_document")?,
        policy: validator("policy_document")?,
        defaults: validator("defaults_document")?,
        gateway: validator("gateway_document")?,
        certificate: validator("certificate_document")?,
        schema,
    })
}

/// Compiles the schema now rather than on the first document: compiling
/// takes a few hundred milliseconds in a debug build, which must not delay
/// the first route change an operator makes.
pub fn precompile() -> Result<(), String> {
    COMPILED.as_ref().map(|_| ()).map_err(Clone::clone)
}

/// The parsed schema document (for tools that want to print or inspect it).
pub fn schema_value() -> Result<&'static Value, String> {
    COMPILED
        .as_ref()
        .map(|compiled| &compiled.schema)
        .map_err(Clone::clone)
}

/// Validates `value` as a document of `kind`; returns every structural error.
pub fn validate(key: &str, kind: DocumentKind, value: &Value) -> Vec<FieldError> {
    let compiled = match COMPILED.as_ref() {
        Ok(compiled) => compiled,
        Err(reason) => return vec![FieldError::new(key, DOCUMENT_FIELD, reason.clone())],
    };
    let validator = match kind {
        DocumentKind::Route => &compiled.route,
        DocumentKind::Destination => &compiled.destination,
        DocumentKind::Policy => &compiled.policy,
        DocumentKind::Defaults => &compiled.defaults,
        DocumentKind::Gateway => &compiled.gateway,
        DocumentKind::Certificate => &compiled.certificate,
    };
    let mut errors: Vec<FieldError> = validator
        .iter_errors(value)
        .flat_map(|error| explain(key, &compiled.schema, kind, value, &error))
        .collect();
    errors.dedup();
    errors
}

/// Rewrites one schema error into field errors (an unknown-properties error
/// names several fields).
fn explain(
    key: &str,
    schema: &Value,
    kind: DocumentKind,
    document: &Value,
    error: &jsonschema::ValidationError<'_>,
) -> Vec<FieldError> {
    let field = field_path(document, error.instance_path.as_str());
    let at = |field: String, reason: String| {
        let field = if field.is_empty() {
            DOCUMENT_FIELD.to_string()
        } else {
            field
        };
        FieldError::new(key, field, reason)
    };
    let keyword_path = error.schema_path.as_str();
    // The schema object that holds the failing keyword.
    let holder = resolve(schema, kind, parent_pointer(keyword_path));
    match &error.kind {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let allowed = holder
                .and_then(|h| h.get("properties"))
                .and_then(Value::as_object)
                .map(|props| props.keys().map(|k| format!("`{k}`")).collect::<Vec<_>>());
            let reason = match allowed {
                Some(allowed) if allowed.is_empty() => {
                    "unknown field: no fields are allowed here yet".to_string()
                }
                Some(allowed) => format!("unknown field (allowed here: {})", allowed.join(", ")),
                None => "unknown field".to_string(),
            };
            unexpected
                .iter()
                .map(|name| at(join(&field, name), reason.clone()))
                .collect()
        }
        ValidationErrorKind::Required { property } => {
            let name = property
                .as_str()
                .map_or_else(|| property.to_string(), str::to_string);
            vec![at(join(&field, &name), "required field is missing".into())]
        }
        ValidationErrorKind::AnyOf { context } => {
            // `anyOf: [{required: [a]}, {required: [b]}]` means "needs a or b".
            let alternatives: Option<Vec<String>> = context
                .iter()
                .map(|branch| match branch.as_slice() {
                    [only] => match &only.kind {
                        ValidationErrorKind::Required { property } => {
                            Some(format!("`{}`", property.as_str().unwrap_or_default()))
                        }
                        _ => None,
                    },
                    _ => None,
                })
                .collect();
            let reason = match alternatives {
                Some(names) if !names.is_empty() => format!("needs one of {}", names.join(", ")),
                _ => describe(error, holder),
            };
            vec![at(field, reason)]
        }
        ValidationErrorKind::FalseSchema => {
            // Only `dependentSchemas: {a: {properties: {b: false}}}` uses
            // `false` here: b may not appear together with a.
            let reason = match dependent_on(keyword_path) {
                Some(other) => format!("not allowed together with `{other}`"),
                None => "not allowed here".to_string(),
            };
            vec![at(field, reason)]
        }
        ValidationErrorKind::Pattern { .. } => vec![at(field, describe(error, holder))],
        ValidationErrorKind::Constant { expected_value } => {
            vec![at(field, format!("must be {expected_value}"))]
        }
        _ => vec![at(field, describe(error, holder))],
    }
}

/// The crate's message (large values elided), followed by what the schema
/// says the value should be (its description), when it says.
fn describe(error: &jsonschema::ValidationError<'_>, holder: Option<&Value>) -> String {
    let quoted = error.instance.to_string();
    let short = quoted.len() <= MAX_QUOTED_VALUE;
    let description = holder
        .and_then(|h| h.get("description"))
        .and_then(Value::as_str)
        .map(sentence_part);
    match (&error.kind, description) {
        // "does not match \"^[A-Z]+$\"" helps nobody; every patterned schema
        // describes itself as a noun phrase ("An HTTP method in upper case").
        (ValidationErrorKind::Pattern { .. }, Some(description)) => {
            let value = if short { quoted.as_str() } else { "the value" };
            format!("{value} is not {description}")
        }
        (_, description) => {
            let message = if short {
                error.to_string()
            } else {
                error.masked_with("the value").to_string()
            };
            match description {
                Some(description) => format!("{message} ({description})"),
                None => message,
            }
        }
    }
}

/// "A URL path, starting with /." -> "a URL path, starting with /".
fn sentence_part(description: &str) -> String {
    let trimmed = description.trim().trim_end_matches('.');
    let mut chars = trimmed.chars();
    match chars.next() {
        // Keep acronyms ("HTTP ...", "URL ...") as they are.
        Some(first) if !chars.next().is_some_and(char::is_uppercase) => first
            .to_lowercase()
            .chain(trimmed.chars().skip(1))
            .collect(),
        _ => trimmed.to_string(),
    }
}

/// `/routes/1/match` in `document` -> `routes[1].match` (array indices in
/// brackets, object members after dots; `~1` and `~0` unescaped).
pub(crate) fn field_path(document: &Value, pointer: &str) -> String {
    let mut field = String::new();
    let mut current = Some(document);
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        match current {
            Some(Value::Array(items)) => {
                field.push_str(&format!("[{segment}]"));
                current = segment.parse::<usize>().ok().and_then(|i| items.get(i));
            }
            Some(Value::Object(members)) => {
                current = members.get(&segment);
                field = join(&field, &segment);
            }
            _ => {
                current = None;
                field = join(&field, &segment);
            }
        }
    }
    field
}

fn parent_pointer(keyword_path: &str) -> &str {
    keyword_path
        .rsplit_once('/')
        .map_or("", |(parent, _)| parent)
}

/// The name `a` in a keyword path through `.../dependentSchemas/a/...`.
fn dependent_on(keyword_path: &str) -> Option<String> {
    let mut segments = keyword_path.split('/');
    while let Some(segment) = segments.next() {
        if segment == "dependentSchemas" {
            return segments
                .next()
                .map(|s| s.replace("~1", "/").replace("~0", "~"));
        }
    }
    None
}

/// Follows a keyword path (a JSON pointer through the schema that may pass
/// through `$ref`s) from the root of the validator for `kind` to the schema
/// object it names.
fn resolve<'s>(schema: &'s Value, kind: DocumentKind, keyword_path: &str) -> Option<&'s Value> {
    let definition = match kind {
        DocumentKind::Route => "route_document",
        DocumentKind::Destination => "destination_document",
        DocumentKind::Policy => "policy_document",
        DocumentKind::Defaults => "defaults_document",
        DocumentKind::Gateway => "gateway_document",
        DocumentKind::Certificate => "certificate_document",
    };
    // The validator's root is `{"$ref": "#/$defs/<definition>", ...}`.
    let mut current = schema.get("$defs")?.get(definition)?;
    let mut segments = keyword_path.split('/').skip(1).peekable();
    // The root `$ref` itself appears as the first segment.
    if segments.peek() == Some(&"$ref") {
        segments.next();
    }
    for segment in segments {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        current = if segment == "$ref" {
            let target = current.get("$ref")?.as_str()?.strip_prefix('#')?;
            schema.pointer(target)?
        } else {
            match current {
                Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
                _ => current.get(&segment)?,
            }
        };
    }
    Some(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(kind: DocumentKind, value: Value) -> Vec<String> {
        validate("routes/users", kind, &value)
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.reason))
            .collect()
    }

    #[test]
    fn the_embedded_schema_compiles() {
        assert!(COMPILED.is_ok(), "{:?}", COMPILED.as_ref().err());
    }

    #[test]
    fn field_paths_use_brackets_for_indices_and_dots_for_members() {
        let doc = json!({ "routes": [ {}, { "match": { "headers": { "a/b": "x" } } } ] });
        assert_eq!(field_path(&doc, ""), "");
        assert_eq!(field_path(&doc, "/routes/1/match"), "routes[1].match");
        assert_eq!(
            field_path(&doc, "/routes/1/match/headers/a~1b"),
            "routes[1].match.headers.a/b"
        );
    }

    #[test]
    fn unknown_fields_list_the_allowed_ones() {
        let found = errors(
            DocumentKind::Route,
            json!({ "routes": [ { "destination": "users", "mach": {} } ] }),
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("routes[0].mach: unknown field (allowed here: "),
            "{found:?}"
        );
        assert!(found[0].contains("`match`"), "{found:?}");
    }

    #[test]
    fn exclusive_fields_name_each_other() {
        let found = errors(
            DocumentKind::Route,
            json!({ "routes": [ { "destination": "a", "split": [ { "destination": "b", "weight": 1 } ] } ] }),
        );
        assert_eq!(
            found,
            ["routes[0].split: not allowed together with `destination`"]
        );

        let found = errors(
            DocumentKind::Route,
            json!({ "routes": [ { "match": { "path_prefix": "/a", "path_exact": "/b" }, "destination": "a" } ] }),
        );
        assert_eq!(
            found,
            ["routes[0].match.path_exact: not allowed together with `path_prefix`"]
        );
    }

    #[test]
    fn a_route_without_destination_or_split_says_it_needs_one() {
        let found = errors(
            DocumentKind::Route,
            json!({ "routes": [ { "name": "x" } ] }),
        );
        assert_eq!(found, ["routes[0]: needs one of `destination`, `split`"]);
    }

    #[test]
    fn rewrite_prefix_is_for_prefix_matches_only() {
        let found = errors(
            DocumentKind::Route,
            json!({ "routes": [ { "match": { "path_exact": "/a" }, "destination": "a", "rewrite_prefix": "/" } ] }),
        );
        assert_eq!(
            found,
            ["routes[0].match.path_exact: not allowed together with `rewrite_prefix`"]
        );
    }

    #[test]
    fn malformed_durations_quote_the_schema_description() {
        let found = errors(
            DocumentKind::Destination,
            json!({ "connect_timeout": "2 seconds" }),
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0],
            "connect_timeout: \"2 seconds\" is not a positive duration: a number and a unit, ms, s, m or h (\"250ms\", \"2s\", \"1.5m\")"
        );
    }

    #[test]
    fn wrong_types_and_enums_are_explained() {
        let found = errors(
            DocumentKind::Destination,
            json!({ "load_balancer": "fastest", "connection_pool": { "max_requests": "many" } }),
        );
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found
                .iter()
                .any(|e| e.starts_with("load_balancer: \"fastest\" is not one of"))
        );
        assert!(
            found
                .iter()
                .any(|e| e.starts_with("connection_pool.max_requests: \"many\" is not of type"))
        );
    }

    #[test]
    fn every_pattern_is_described_as_a_noun_phrase() {
        // `describe` turns a pattern failure into "<value> is not <description>".
        fn visit(node: &Value, at: &str) {
            match node {
                Value::Object(members) => {
                    if members.contains_key("pattern") {
                        let description = members
                            .get("description")
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        assert!(
                            description.starts_with("A ") || description.starts_with("An "),
                            "{at}: a patterned schema needs a description like \"A ...\", has {description:?}"
                        );
                    }
                    for (name, child) in members {
                        visit(child, &format!("{at}/{name}"));
                    }
                }
                Value::Array(items) => items
                    .iter()
                    .enumerate()
                    .for_each(|(i, child)| visit(child, &format!("{at}/{i}"))),
                _ => {}
            }
        }
        visit(schema_value().unwrap(), "");
    }

    #[test]
    fn descriptions_read_as_part_of_a_sentence() {
        assert_eq!(
            sentence_part("A URL path, starting with /."),
            "a URL path, starting with /"
        );
        assert_eq!(sentence_part("HTTP method."), "HTTP method");
    }

    #[test]
    fn pattern_failures_say_what_was_expected() {
        let found = errors(
            DocumentKind::Route,
            json!({ "routes": [ { "destination": "users", "match": { "path_prefix": "api", "methods": ["get"] } } ] }),
        );
        assert_eq!(
            found,
            [
                "routes[0].match.methods[0]: \"get\" is not an HTTP method in upper case, like GET",
                "routes[0].match.path_prefix: \"api\" is not a URL path, starting with /",
            ]
        );
    }

    #[test]
    fn a_missing_routes_list_is_named() {
        assert_eq!(
            errors(DocumentKind::Route, json!({})),
            ["routes: required field is missing"]
        );
    }

    #[test]
    fn the_whole_document_has_a_name_too() {
        let found = errors(DocumentKind::Route, json!([1, 2]));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("(document): "), "{found:?}");
    }
}

//! The KV document parser on generated input (proptest, a bounded number of
//! cases so CI time stays fixed). Documents are untrusted bytes: anybody
//! with write access to Consul KV writes them. Whatever the bytes, the
//! parser answers (accepted, or every error naming the key, a field and a
//! reason) and never panics: a panic would take the agent down for every
//! sidecar. Generated documents use the field names and enum values of the
//! published JSON Schema, so most of them get deep into the checks; others
//! are the repository's examples with one value replaced or removed.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use serde_json::Value;
use weft_discovery::documents::parse_document;
use weft_discovery::model::RawDocument;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const KEYS: &[&str] = &[
    "routes/users",
    "destinations/users",
    "policies/users",
    "defaults",
];

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// Every property name and string enum value in the published schema.
fn schema_words() -> Vec<String> {
    fn walk(value: &Value, words: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::Object(properties)) = map.get("properties") {
                    words.extend(properties.keys().cloned());
                }
                if let Some(Value::Array(values)) = map.get("enum") {
                    words.extend(values.iter().filter_map(|v| v.as_str().map(String::from)));
                }
                map.values().for_each(|v| walk(v, words));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, words)),
            _ => {}
        }
    }
    let path = repository().join("discovery/schema/weft-kv.schema.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
    let mut words = Vec::new();
    walk(&schema, &mut words);
    words.sort();
    words.dedup();
    assert!(words.len() > 50, "only {} words in the schema", words.len());
    words
}

/// The example documents, as (key, JSON value).
fn examples() -> Vec<(String, Value)> {
    let root = repository().join("examples/config");
    let mut found = Vec::new();
    for folder in ["routes", "destinations", "policies"] {
        let dir = root.join(folder);
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            let text = std::fs::read_to_string(&path).expect("an example file");
            let value: Value = match path.extension().and_then(|e| e.to_str()) {
                Some("json") => serde_json::from_str(&text).expect("example JSON"),
                _ => serde_yaml::from_str(&text).expect("example YAML"),
            };
            let name = path.file_stem().and_then(|s| s.to_str()).expect("a name");
            found.push((format!("{folder}/{name}"), value));
        }
    }
    assert!(found.len() >= 3, "examples: {found:?}");
    found
}

/// JSON whose object keys and strings are mostly the schema's own words,
/// with numbers around the edges that checks care about.
fn schema_shaped_json(words: Vec<String>) -> impl Strategy<Value = Value> {
    let word = prop::sample::select(words);
    let string = prop_oneof![
        4 => word.clone(),
        1 => "[ -~]{0,12}",
        1 => "[0-9]{1,4}(ms|s|m|h|x)?",
        1 => Just("^/(a|b)+$".to_string()),
        1 => Just("(".to_string()),
    ];
    let number = prop_oneof![
        Just(Value::from(0)),
        Just(Value::from(-1)),
        Just(Value::from(1)),
        Just(Value::from(u64::MAX)),
        Just(Value::from(1e300)),
        Just(Value::from(0.5)),
        any::<i64>().prop_map(Value::from),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number,
        string.clone().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(word.clone(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Replaces (or, with `None`, removes) the value at the `at`-th node of a
/// depth-first walk of `document`.
fn replace_nth(document: &mut Value, at: &mut usize, with: &Option<Value>) -> bool {
    let children: Vec<String> = match document {
        Value::Object(map) => map.keys().cloned().collect(),
        Value::Array(items) => (0..items.len()).map(|i| i.to_string()).collect(),
        _ => return false,
    };
    for child in children {
        if *at == 0 {
            match (document, with) {
                (Value::Object(map), Some(value)) => {
                    map.insert(child, value.clone());
                }
                (Value::Object(map), None) => {
                    map.remove(&child);
                }
                (Value::Array(items), Some(value)) => {
                    items[child.parse::<usize>().expect("an index")] = value.clone();
                }
                (Value::Array(items), None) => {
                    items.remove(child.parse::<usize>().expect("an index"));
                }
                _ => unreachable!("only containers have children"),
            }
            return true;
        }
        *at -= 1;
        let next = match document {
            Value::Object(map) => map.get_mut(&child),
            Value::Array(items) => child.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
            _ => None,
        };
        if let Some(next) = next
            && replace_nth(next, at, with)
        {
            return true;
        }
    }
    false
}

/// Parses `bytes` as the document at `key` and checks the verdict's form.
fn judged(key: &str, bytes: Vec<u8>, yaml: bool) -> Result<bool, TestCaseError> {
    let raw = RawDocument {
        key: key.to_string(),
        value: bytes.into(),
        origin: format!("consul kv weft/{key}"),
        yaml,
    };
    match parse_document(&raw) {
        Ok(_) => Ok(true),
        Err(errors) => {
            prop_assert!(!errors.is_empty(), "refused with no error");
            for error in &errors {
                prop_assert_eq!(&error.key, key);
                prop_assert!(!error.field.is_empty(), "no field in {:?}", error);
                prop_assert!(!error.reason.is_empty(), "no reason in {:?}", error);
            }
            Ok(false)
        }
    }
}

proptest! {
    #![proptest_config(config(768))]

    #[test]
    fn any_schema_shaped_document_is_judged_and_every_error_names_key_field_and_reason(
        key in prop::sample::select(KEYS),
        document in schema_shaped_json(schema_words()),
    ) {
        judged(key, serde_json::to_vec(&document).expect("JSON"), false)?;
    }

    #[test]
    fn an_example_with_one_value_replaced_or_removed_is_judged(
        example in prop::sample::select(examples()),
        at in 0usize..64,
        with in prop::option::of(schema_shaped_json(schema_words())),
    ) {
        let (key, mut document) = example;
        let mut at = at;
        replace_nth(&mut document, &mut at, &with);
        judged(&key, serde_json::to_vec(&document).expect("JSON"), false)?;
    }

    #[test]
    fn any_bytes_as_json_or_yaml_are_judged(
        key in prop::sample::select(KEYS),
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        yaml in any::<bool>(),
    ) {
        judged(key, bytes, yaml)?;
    }
}

#[test]
fn every_example_document_is_accepted() {
    for (key, document) in examples() {
        let raw = RawDocument {
            key: key.clone(),
            value: serde_json::to_vec(&document).expect("JSON").into(),
            origin: key.clone(),
            yaml: false,
        };
        if let Err(errors) = parse_document(&raw) {
            panic!("{key}: {errors:?}");
        }
    }
}

//! The published artefacts agree with each other: the schema file on disk
//! is a valid draft 2020-12 schema that accepts every example document and
//! rejects broken ones, the example config dir is valid end to end
//! (documents, references, endpoints).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde_json::{Value, json};
use weft_discovery::documents::{self, Document, DocumentKey};
use weft_discovery::model::RawDocument;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn examples() -> PathBuf {
    repo().join("examples/config")
}

/// Every document of the example dir, keyed as the file backend keys them.
fn example_documents() -> Vec<RawDocument> {
    let mut documents = Vec::new();
    for folder in ["routes", "destinations", "policies"] {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(examples().join(folder))
            .unwrap_or_else(|e| panic!("examples/config/{folder}: {e}"))
            .map(|entry| entry.expect("a directory entry").path())
            .collect();
        paths.sort();
        for path in paths {
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .expect("a UTF-8 name");
            documents.push(RawDocument {
                key: format!("{folder}/{stem}"),
                value: Bytes::from(std::fs::read(&path).expect("read an example")),
                origin: path.display().to_string(),
                yaml: path.extension().is_some_and(|ext| ext != "json"),
            });
        }
    }
    documents
}

/// The service names of examples/config/endpoints.yaml.
fn example_services() -> BTreeSet<String> {
    let text =
        std::fs::read_to_string(examples().join("endpoints.yaml")).expect("read endpoints.yaml");
    let value: Value = serde_yaml::from_str(&text).expect("endpoints.yaml is YAML");
    value["services"]
        .as_object()
        .expect("a services map")
        .keys()
        .cloned()
        .collect()
}

fn as_json(document: &RawDocument) -> Value {
    if document.yaml {
        serde_yaml::from_slice(&document.value).expect("an example is YAML")
    } else {
        serde_json::from_slice(&document.value).expect("an example is JSON")
    }
}

#[test]
fn every_example_document_is_valid_and_references_only_example_services() {
    let services = example_services();
    assert_eq!(
        services.iter().map(String::as_str).collect::<Vec<_>>(),
        ["orders", "orders-v2", "users", "users-v2", "web"]
    );
    let documents = example_documents();
    assert!(documents.len() >= 5, "the examples cover every kind");
    let mut kinds = BTreeSet::new();
    for raw in &documents {
        let document = documents::parse_document(raw)
            .unwrap_or_else(|errors| panic!("{}: {errors:#?}", raw.origin));
        let errors =
            documents::validate_references(&raw.key, &document, &|name| services.contains(name));
        assert!(errors.is_empty(), "{}: {errors:#?}", raw.origin);
        kinds.insert(
            DocumentKey::parse(&raw.key)
                .expect("an example key")
                .kind()
                .folder(),
        );
        if let Document::Route(routes) = &document {
            let host = raw.key.trim_start_matches("routes/");
            let config = routes.to_route_configuration(host);
            assert_eq!(config.virtual_hosts[0].routes.len(), routes.routes.len());
        }
    }
    assert_eq!(
        kinds.len(),
        3,
        "routes, destinations and policies all have an example"
    );
}

/// A validator built from the schema file on disk (what an editor or a CI
/// job uses), independent of the copy embedded in the agent.
fn disk_validator(definition: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(repo().join("discovery/schema/weft-kv.schema.json"))
        .expect("read the schema");
    let mut schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
    jsonschema::meta::validate(&schema).expect("the schema is a valid JSON Schema");
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    schema["$ref"] = json!(format!("#/$defs/{definition}"));
    jsonschema::draft202012::new(&schema).expect("the schema compiles")
}

#[test]
fn the_schema_file_accepts_every_example() {
    for raw in example_documents() {
        let kind = DocumentKey::parse(&raw.key).expect("an example key").kind();
        let definition = match kind.folder() {
            "routes" => "route_document",
            "destinations" => "destination_document",
            _ => "policy_document",
        };
        let validator = disk_validator(definition);
        let instance = as_json(&raw);
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", raw.origin);
    }
}

#[test]
fn the_schema_file_rejects_what_the_agent_rejects_structurally() {
    let routes = disk_validator("route_document");
    for (why, document) in [
        (
            "unknown field",
            json!({ "routes": [ { "destination": "a", "colour": "blue" } ] }),
        ),
        (
            "destination and split",
            json!({ "routes": [ { "destination": "a", "split": [ { "destination": "b", "weight": 1 } ] } ] }),
        ),
        (
            "neither destination nor split",
            json!({ "routes": [ { "match": { "path_prefix": "/" } } ] }),
        ),
        (
            "two path matchers",
            json!({ "routes": [ { "destination": "a", "match": { "path_prefix": "/", "path_exact": "/" } } ] }),
        ),
        (
            "rewrite without prefix",
            json!({ "routes": [ { "destination": "a", "rewrite_prefix": "/", "match": { "path_regex": "x" } } ] }),
        ),
        (
            "malformed duration",
            json!({ "routes": [ { "destination": "a", "timeout": "2 seconds" } ] }),
        ),
        (
            "negative weight",
            json!({ "routes": [ { "split": [ { "destination": "a", "weight": -1 } ] } ] }),
        ),
    ] {
        assert!(!routes.is_valid(&document), "the schema file accepts {why}");
        let raw = RawDocument {
            key: "routes/x".into(),
            value: Bytes::from(document.to_string()),
            origin: "test".into(),
            yaml: false,
        };
        assert!(
            documents::parse_document(&raw).is_err(),
            "the agent accepts {why}"
        );
    }
    assert!(!disk_validator("policy_document").is_valid(&json!({ "allow": [] })));
    assert!(
        !disk_validator("destination_document").is_valid(&json!({ "load_balancer": "random" }))
    );
}

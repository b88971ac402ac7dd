//! Join tokens (`--join-tokens FILE`): the credential a sidecar presents
//! when there is no Consul to vouch for it.
//!
//! The file is a JSON object from service name to one token or a list of
//! tokens (several let an operator roll a token without a gap):
//!
//! ```json
//! { "users": "3f6c0d0b9a5e4c7e", "web": ["old-token-being-retired", "new-token"] }
//! ```
//!
//! Only SHA-256 digests of the tokens are kept in memory, and a presented
//! token is compared with every token of the service in constant time, so
//! neither a memory dump nor response timing gives a token away.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use sha2::{Digest, Sha256};

use super::service_name::check_service_name;

/// Tokens shorter than this are accepted with a warning: they can be
/// guessed. 16 random characters are about 95 bits.
const SHORT_TOKEN_CHARS: usize = 16;

type TokenDigest = [u8; 32];

/// The join tokens of every service, as digests.
pub struct JoinTokens {
    path: PathBuf,
    by_service: HashMap<String, Vec<TokenDigest>>,
}

impl fmt::Debug for JoinTokens {
    /// Services only: never tokens, nor their digests.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut services: Vec<&str> = self.services().collect();
        services.sort_unstable();
        f.debug_struct("JoinTokens")
            .field("path", &self.path)
            .field("services", &services)
            .finish()
    }
}

impl JoinTokens {
    /// Reads and validates the file. The error names the file, the service
    /// and the reason (never a token).
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            format!(
                "join tokens file {}: cannot read it: {error}",
                path.display()
            )
        })?;
        Self::parse(path, &text)
            .map_err(|reason| format!("join tokens file {}: {reason}", path.display()))
    }

    /// Validates `text`, the contents of the file at `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, String> {
        let entries: Entries = serde_json::from_str(text).map_err(|error| error.to_string())?;
        let mut by_service: HashMap<String, Vec<TokenDigest>> = HashMap::new();
        // Which service each token belongs to, to refuse a shared token.
        let mut owners: BTreeMap<TokenDigest, String> = BTreeMap::new();
        for (service, value) in entries.0 {
            check_service_name(&service).map_err(|reason| format!("key {service:?}: {reason}"))?;
            if by_service.contains_key(&service) {
                return Err(format!(
                    "service {service:?} is listed twice; put all its tokens in one list"
                ));
            }
            let tokens = tokens_of(&service, value)?;
            let mut digests = Vec::with_capacity(tokens.len());
            for (index, token) in tokens.iter().enumerate() {
                check_token(token).map_err(|reason| {
                    format!("service {service:?}, token #{}: {reason}", index + 1)
                })?;
                if token.chars().count() < SHORT_TOKEN_CHARS {
                    tracing::warn!(
                        file = %path.display(),
                        %service,
                        token = index + 1,
                        "join token shorter than {SHORT_TOKEN_CHARS} characters: it can be guessed; use e.g. `openssl rand -hex 16`"
                    );
                }
                let digest = digest(token);
                match owners.get(&digest) {
                    Some(owner) if owner != &service => {
                        return Err(format!(
                            "service {service:?}, token #{}: it is also a token of service {owner:?}; each service needs its own tokens, or either could act as the other",
                            index + 1
                        ));
                    }
                    Some(_) => continue,
                    None => {
                        owners.insert(digest, service.clone());
                    }
                }
                digests.push(digest);
            }
            by_service.insert(service, digests);
        }
        Ok(Self {
            path: path.to_owned(),
            by_service,
        })
    }

    /// Whether `token` is one of `service`'s tokens. Every token of the
    /// service is compared, each in constant time.
    pub fn accepts(&self, service: &str, token: &str) -> bool {
        let Some(digests) = self.by_service.get(service) else {
            return false;
        };
        let presented = digest(token);
        digests.iter().fold(false, |found, known| {
            found | constant_time_eq(known, &presented)
        })
    }

    /// The services that have join tokens.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.by_service.keys().map(String::as_str)
    }

    /// True when no service has a token.
    pub fn is_empty(&self) -> bool {
        self.by_service.is_empty()
    }

    /// The file the tokens came from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn tokens_of(service: &str, value: serde_json::Value) -> Result<Vec<String>, String> {
    match value {
        serde_json::Value::String(token) => Ok(vec![token]),
        serde_json::Value::Array(items) if items.is_empty() => Err(format!(
            "service {service:?} has an empty token list; add a token or remove the service"
        )),
        serde_json::Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(index, item)| match item {
                serde_json::Value::String(token) => Ok(token),
                other => Err(format!(
                    "service {service:?}, token #{}: expected a string, found {}",
                    index + 1,
                    kind(&other)
                )),
            })
            .collect(),
        other => Err(format!(
            "service {service:?}: expected a token string or a list of token strings, found {}",
            kind(&other)
        )),
    }
}

fn check_token(token: &str) -> Result<(), &'static str> {
    if token.trim().is_empty() {
        return Err("empty tokens are not allowed");
    }
    if token.trim() != token {
        // A sidecar reading the token from a file or variable may or may
        // not trim it: refuse the ambiguity rather than fail later.
        return Err("it starts or ends with whitespace; remove it");
    }
    Ok(())
}

fn kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares every byte whatever the first difference: the time taken says
/// nothing about how much of a guess was right.
fn constant_time_eq(a: &TokenDigest, b: &TokenDigest) -> bool {
    let difference = a
        .iter()
        .zip(b)
        .fold(0u8, |difference, (x, y)| difference | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// The file's entries in order, duplicates kept (a JSON map would keep
/// only the last of two entries for one service, silently).
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a JSON object {"<service>": "<token>" | ["<token>", ...]}"#)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<JoinTokens, String> {
        JoinTokens::parse(Path::new("tokens.json"), text)
    }

    #[test]
    fn a_service_accepts_any_of_its_tokens_and_nothing_else() {
        let tokens = parse(
            r#"{ "web": "web-token-0123456789", "db": ["db-old-0123456789", "db-new-0123456789"] }"#,
        )
        .unwrap();
        assert!(tokens.accepts("web", "web-token-0123456789"));
        assert!(tokens.accepts("db", "db-old-0123456789"));
        assert!(tokens.accepts("db", "db-new-0123456789"));
        assert!(
            !tokens.accepts("web", "db-new-0123456789"),
            "another service's token"
        );
        assert!(!tokens.accepts("web", "web-token-012345678"), "a prefix");
        assert!(!tokens.accepts("web", ""));
        assert!(
            !tokens.accepts("api", "web-token-0123456789"),
            "an unknown service"
        );
    }

    #[test]
    fn mistakes_are_reported_with_service_and_reason() {
        let cases = [
            ("[]", "a JSON object"),
            (r#"{ "web": "" }"#, r#"service "web", token #1: empty"#),
            (
                r#"{ "web": ["ok-token", "  "] }"#,
                r#"service "web", token #2: empty"#,
            ),
            (r#"{ "web": " padded " }"#, "whitespace"),
            (r#"{ "web": [] }"#, "empty token list"),
            (r#"{ "web": 42 }"#, "found a number"),
            (
                r#"{ "web": ["a-token", 7] }"#,
                "token #2: expected a string",
            ),
            (r#"{ "we b": "a-token" }"#, r#"key "we b""#),
            (r#"{ "web": "a", "web": "b" }"#, "listed twice"),
            (
                r#"{ "web": "shared-token", "db": "shared-token" }"#,
                r#"also a token of service "web""#,
            ),
            (r#"{ "web": "a-token" "#, "EOF"),
        ];
        for (text, reason) in cases {
            let error = parse(text).map(|_| ()).expect_err(text);
            assert!(error.contains(reason), "{text}: {error}");
            assert!(!error.contains("shared-token"), "never the token: {error}");
        }
    }

    #[test]
    fn load_names_the_file() {
        let error = JoinTokens::load(Path::new("/nonexistent/weft-tokens.json"))
            .map(|_| ())
            .expect_err("missing file");
        assert!(error.contains("/nonexistent/weft-tokens.json"), "{error}");
    }

    #[test]
    fn debug_output_never_shows_tokens() {
        let tokens = parse(r#"{ "web": "very-secret-token-123" }"#).unwrap();
        let debug = format!("{tokens:?}");
        assert!(
            debug.contains("web") && !debug.contains("very-secret"),
            "{debug}"
        );
    }
}

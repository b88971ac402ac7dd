//! Inbound policies: one `InboundPolicy` per service, merging the service's
//! policy document (`policies/<service>`), the mesh-wide `defaults` and
//! Consul's intentions.
//!
//! # Order
//!
//! A sidecar applies the first intention whose source matches the caller,
//! so the order is the decision. It is Consul's:
//!
//! 1. precedence, highest first: exact destination and exact source 9,
//!    exact destination and `*` source 8, `*` destination and exact source
//!    6, `*` and `*` 5 (Consul's numbers for the default namespace; a
//!    policy document's destination is always exact);
//! 2. at equal precedence, a deny before an allow (an intention with
//!    permissions counts as an allow: it lets some requests in);
//! 3. then Weft's documents before Consul's intentions;
//! 4. then by source name, then by Consul ID, so that equal inputs always
//!    give equal bytes (and equal versions).
//!
//! `default_action` is the document's `default`, else the `defaults`
//! document's, else ALLOW: a mesh with no policies behaves like Consul with
//! ACLs off, so turning Weft on never breaks traffic. Production meshes
//! should write `{"default": "deny"}` to `defaults`.
//!
//! `mtls_mode` is the document's `mtls`, else the `defaults` document's,
//! else STRICT: a sidecar with mTLS on never takes plaintext unless someone
//! said so. `jwt` is the document's `jwt` section, field for field (unset
//! without one); the sidecar compiles it.

use std::cmp::Reverse;

use weft_proto::config::v1 as proto;

use crate::documents::{ANY_SERVICE, Action, DefaultsDocument, MtlsMode, PolicyDocument};
use crate::model::{Intention, IntentionAction};

/// The action of a mesh with no policy anywhere.
pub const MESH_DEFAULT_ACTION: Action = Action::Allow;

/// The inbound mTLS mode of a mesh with no policy anywhere.
pub const MESH_DEFAULT_MTLS: MtlsMode = MtlsMode::Strict;

/// Consul's precedence of an intention from `source` to `destination`
/// (either may be `*`).
pub fn precedence(source: &str, destination: &str) -> u8 {
    match (destination == ANY_SERVICE, source == ANY_SERVICE) {
        (false, false) => 9,
        (false, true) => 8,
        (true, false) => 6,
        (true, true) => 5,
    }
}

/// The origin a sidecar reports for an intention of a policy document.
pub fn document_origin(service: &str) -> String {
    format!("kv:weft/policies/{service}")
}

/// The origin a sidecar reports for a Consul intention.
pub fn consul_origin(id: &str) -> String {
    format!("consul:{id}")
}

/// The inbound policy of `service`: `document` is its last good policy
/// document (if any), `defaults` the last good `defaults` document (if
/// any), and `intentions` every Consul intention (those for other
/// destinations are skipped here).
pub fn inbound_policy(
    service: &str,
    document: Option<&PolicyDocument>,
    defaults: Option<&DefaultsDocument>,
    intentions: &[Intention],
) -> proto::InboundPolicy {
    let mut ranked: Vec<Ranked> = Vec::new();
    if let Some(document) = document {
        let origin = document_origin(service);
        for intention in &document.intentions {
            ranked.push(Ranked {
                precedence: precedence(&intention.source, service),
                denies: intention.action() == Some(Action::Deny),
                from_consul: false,
                source: intention.source.clone(),
                id: String::new(),
                intention: intention.to_proto(&origin),
            });
        }
    }
    for intention in intentions.iter().filter(|intention| {
        intention.destination == service || intention.destination == ANY_SERVICE
    }) {
        let action = match intention.action {
            IntentionAction::Allow => proto::Action::Allow,
            IntentionAction::Deny => proto::Action::Deny,
        };
        ranked.push(Ranked {
            precedence: precedence(&intention.source, &intention.destination),
            denies: intention.action == IntentionAction::Deny,
            from_consul: true,
            source: intention.source.clone(),
            id: intention.id.clone(),
            intention: proto::Intention {
                source: intention.source.clone(),
                action: action.into(),
                permissions: Vec::new(),
                origin: consul_origin(&intention.id),
            },
        });
    }
    ranked.sort_by(|a, b| a.key().cmp(&b.key()));

    let default_action = document
        .and_then(|document| document.default_action)
        .or(defaults.and_then(|defaults| defaults.default_action))
        .unwrap_or(MESH_DEFAULT_ACTION);
    let mtls = document
        .and_then(|document| document.mtls)
        .or(defaults.and_then(|defaults| defaults.mtls))
        .unwrap_or(MESH_DEFAULT_MTLS);
    proto::InboundPolicy {
        service: service.to_string(),
        default_action: proto::Action::from(default_action).into(),
        intentions: ranked.into_iter().map(|ranked| ranked.intention).collect(),
        jwt: document
            .and_then(|document| document.jwt.as_ref())
            .map(crate::documents::jwt::to_proto),
        mtls_mode: proto::MtlsMode::from(mtls).into(),
        // Set by the snapshot builder from the destination document.
        opaque_tcp: false,
        rate_limits: document
            .and_then(|document| document.rate_limits.as_ref())
            .map(|limits| limits.to_proto()),
        // Set by the snapshot builder from the catalog's registrations.
        upstreams: Vec::new(),
        // Set by the snapshot builder from the destination document.
        app_protocol: 0,
        cors: document
            .and_then(|document| document.cors.as_ref())
            .map(|cors| cors.to_proto()),
        compression: document
            .and_then(|document| document.compression.as_ref())
            .map(|compression| compression.to_proto()),
        cache: document
            .and_then(|document| document.cache.as_ref())
            .map(|cache| cache.to_proto()),
        validation: document
            .and_then(|document| document.validation.as_ref())
            .map(|validation| validation.to_proto()),
    }
}

/// One intention with what orders it.
struct Ranked {
    precedence: u8,
    denies: bool,
    from_consul: bool,
    source: String,
    id: String,
    intention: proto::Intention,
}

impl Ranked {
    fn key(&self) -> (Reverse<u8>, bool, bool, &str, &str) {
        (
            Reverse(self.precedence),
            !self.denies,
            self.from_consul,
            &self.source,
            &self.id,
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::documents::{Document, parse_document};
    use crate::model::RawDocument;

    fn consul(id: &str, source: &str, destination: &str, action: IntentionAction) -> Intention {
        Intention {
            id: id.into(),
            source: source.into(),
            destination: destination.into(),
            action,
        }
    }

    fn document(value: serde_json::Value) -> PolicyDocument {
        let raw = RawDocument {
            key: "policies/db".into(),
            value: value.to_string().into(),
            origin: "test".into(),
            yaml: false,
        };
        match parse_document(&raw) {
            Ok(Document::Policy(policy)) => policy,
            other => panic!("not a valid policy: {other:?}"),
        }
    }

    /// The policy's intentions as `source action origin`.
    fn order(policy: &proto::InboundPolicy) -> Vec<String> {
        policy
            .intentions
            .iter()
            .map(|intention| {
                let action = if intention.permissions.is_empty() {
                    format!("{:?}", intention.action()).to_lowercase()
                } else {
                    "l7".to_string()
                };
                format!("{} {action} {}", intention.source, intention.origin)
            })
            .collect()
    }

    #[test]
    fn precedence_is_consuls_for_the_default_namespace() {
        for (source, destination, expected) in [
            ("web", "db", 9),
            ("*", "db", 8),
            ("web", "*", 6),
            ("*", "*", 5),
        ] {
            assert_eq!(
                precedence(source, destination),
                expected,
                "{source} -> {destination}"
            );
        }
    }

    #[test]
    fn intentions_are_ordered_by_precedence_then_deny_then_kv_before_consul() {
        use IntentionAction::{Allow, Deny};
        let policy_document = document(json!({ "intentions": [
            { "source": "*", "action": "allow" },
            { "source": "web", "action": "allow" },
            { "source": "api", "permissions": [ { "action": "allow", "path_prefix": "/v1/" } ] },
            { "source": "batch", "action": "deny" } ] }));
        let intentions = [
            consul("c1", "*", "*", Deny),
            consul("c2", "web", "*", Allow),
            consul("c3", "*", "db", Deny),
            consul("c4", "web", "db", Deny),
            consul("c5", "api", "db", Allow),
            consul("c6", "ops", "*", Deny),
            consul("c7", "web", "users", Deny),
            consul("c8", "batch", "db", Deny),
        ];
        let policy = inbound_policy("db", Some(&policy_document), None, &intentions);
        assert_eq!(policy.service, "db");
        assert_eq!(
            order(&policy),
            [
                // 9: exact -> exact; denies first, then KV before Consul.
                "batch deny kv:weft/policies/db",
                "batch deny consul:c8",
                "web deny consul:c4",
                "api l7 kv:weft/policies/db",
                "web allow kv:weft/policies/db",
                "api allow consul:c5",
                // 8: * -> exact.
                "* deny consul:c3",
                "* allow kv:weft/policies/db",
                // 6: exact -> *.
                "ops deny consul:c6",
                "web allow consul:c2",
                // 5: * -> *.
                "* deny consul:c1",
            ]
        );
    }

    #[test]
    fn the_order_does_not_depend_on_the_order_of_the_inputs() {
        use IntentionAction::{Allow, Deny};
        let mut intentions = vec![
            consul("b", "web", "db", Allow),
            consul("a", "api", "db", Allow),
            consul("c", "*", "*", Deny),
        ];
        let first = inbound_policy("db", None, None, &intentions);
        intentions.reverse();
        assert_eq!(inbound_policy("db", None, None, &intentions), first);
        assert_eq!(
            order(&first),
            [
                "api allow consul:a",
                "web allow consul:b",
                "* deny consul:c"
            ]
        );
    }

    #[test]
    fn the_default_comes_from_the_document_then_the_mesh_then_allow() {
        let deny = proto::Action::Deny;
        let allow = proto::Action::Allow;
        let with_default = document(json!({ "default": "allow" }));
        let without_default = document(json!({ "intentions": [] }));
        let mesh_deny = DefaultsDocument {
            default_action: Some(Action::Deny),
            mtls: None,
        };
        for (document, defaults, expected) in [
            (Some(&with_default), Some(&mesh_deny), allow),
            (Some(&without_default), Some(&mesh_deny), deny),
            (None, Some(&mesh_deny), deny),
            (Some(&without_default), None, allow),
            (None, None, allow),
        ] {
            let policy = inbound_policy("db", document, defaults, &[]);
            assert_eq!(
                policy.default_action(),
                expected,
                "document {document:?}, defaults {defaults:?}"
            );
            assert!(policy.intentions.is_empty());
            assert!(policy.jwt.is_none(), "no document sets `jwt`");
        }
    }

    #[test]
    fn the_mtls_mode_comes_from_the_document_then_the_mesh_then_strict() {
        let strict = proto::MtlsMode::Strict;
        let permissive = proto::MtlsMode::Permissive;
        let strict_document = document(json!({ "mtls": "strict" }));
        let silent_document = document(json!({}));
        let mesh_permissive = DefaultsDocument {
            default_action: None,
            mtls: Some(MtlsMode::Permissive),
        };
        for (document, defaults, expected) in [
            (Some(&strict_document), Some(&mesh_permissive), strict),
            (Some(&silent_document), Some(&mesh_permissive), permissive),
            (None, Some(&mesh_permissive), permissive),
            (Some(&silent_document), None, strict),
            (None, None, strict),
        ] {
            let policy = inbound_policy("db", document, defaults, &[]);
            assert_eq!(
                policy.mtls_mode(),
                expected,
                "document {document:?}, defaults {defaults:?}"
            );
        }
    }

    #[test]
    fn the_jwt_section_travels_field_for_field() {
        use proto::jwt_rule::Path;
        let jwt = json!({ "providers": [ { "name": "idp", "issuer": "https://idp",
            "audiences": ["db"], "jwks": { "uri": "http://127.0.0.1:9/jwks", "fetch_timeout": "3s" },
            "from": [ { "header": "x-token" }, { "cookie": "session" } ],
            "required_claims": { "tenant": "acme", "level": 3, "email": { "present": true } },
            "forward_token": false, "claim_headers": {} } ],
            "rules": [ { "match": { "path_prefix": "/health" }, "public": true } ] });
        let policy = inbound_policy("db", Some(&document(json!({ "jwt": jwt }))), None, &[]);
        let sent = policy.jwt.expect("the document sets `jwt`");
        let provider = &sent.providers[0];
        assert_eq!(
            (provider.name.as_str(), provider.issuer.as_str()),
            ("idp", "https://idp")
        );
        let jwks = provider.jwks.as_ref().expect("jwks");
        assert_eq!(
            jwks.source,
            Some(proto::jwks_source::Source::Uri(
                "http://127.0.0.1:9/jwks".into()
            ))
        );
        assert_eq!(jwks.fetch_timeout.map(|d| d.seconds), Some(3));
        assert_eq!(jwks.min_refetch_interval, None, "unset: the default");
        assert_eq!(provider.from.len(), 2);
        assert_eq!(provider.required_claims.len(), 3);
        assert_eq!(provider.forward_token, Some(false));
        assert_eq!(provider.clock_leeway, None, "unset: the default");
        assert_eq!(
            provider.claim_headers,
            Some(proto::ClaimHeaders::default()),
            "an empty map is not the default"
        );
        assert_eq!(sent.rules[0].path, Some(Path::PathPrefix("/health".into())));
        assert!(sent.rules[0].public);
    }

    #[test]
    fn intentions_for_other_destinations_are_not_included() {
        let intentions = [
            consul("1", "web", "users", IntentionAction::Deny),
            consul("2", "web", "*", IntentionAction::Deny),
        ];
        let policy = inbound_policy("db", None, None, &intentions);
        assert_eq!(order(&policy), ["web deny consul:2"]);
    }
}

//! Weft's wire protocol: the aggregated discovery service and the config
//! resources it carries. Generated from `proto/` at build time.
#![forbid(unsafe_code)]

/// `google.protobuf.Any`, wire-identical to `prost_types::Any`, with its
/// value in [`bytes::Bytes`]: a resource encoded once by the agent is shared
/// by every stream's response (cloning it counts a reference, copies nothing).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Any {
    /// e.g. `type.googleapis.com/weft.config.v1.Cluster`.
    #[prost(string, tag = "1")]
    pub type_url: String,
    /// The encoded message.
    #[prost(bytes = "bytes", tag = "2")]
    pub value: bytes::Bytes,
}

impl Any {
    /// `message` encoded, under its own type URL.
    pub fn from_msg<M: prost::Name>(message: &M) -> Self {
        Self {
            type_url: M::type_url(),
            value: message.encode_to_vec().into(),
        }
    }
}

/// The protocol extensions a sidecar may list in `Node.client_features`.
pub mod client_features {
    /// Responses carry only what changed, plus `removed_resources`
    /// (proto/README.md, "Incremental responses").
    pub const INCREMENTAL: &str = "weft.incremental";

    /// Response metadata (a gRPC initial header) of the discovery stream:
    /// the features, comma-separated, the agent uses with a sidecar that
    /// lists them. A sidecar applies responses incrementally only when its
    /// agent sends this with `weft.incremental` (an older agent, or a test
    /// double, sends state of the world whatever the sidecar lists).
    pub const AGENT_FEATURES_HEADER: &str = "weft-agent-features";
}

pub mod discovery {
    pub mod v1 {
        tonic::include_proto!("weft.discovery.v1");
    }
}

pub mod config {
    pub mod v1 {
        tonic::include_proto!("weft.config.v1");
    }
}

pub mod identity {
    pub mod v1 {
        tonic::include_proto!("weft.identity.v1");
    }
}

pub mod telemetry {
    pub mod v1 {
        tonic::include_proto!("weft.telemetry.v1");
    }
}

/// Type URLs of the resource types, as carried in `DiscoveryRequest.type_url`
/// and in each resource's `Any`.
pub mod type_url {
    pub const CLUSTER: &str = "type.googleapis.com/weft.config.v1.Cluster";
    pub const CLUSTER_LOAD_ASSIGNMENT: &str =
        "type.googleapis.com/weft.config.v1.ClusterLoadAssignment";
    pub const ROUTE_CONFIGURATION: &str = "type.googleapis.com/weft.config.v1.RouteConfiguration";
    pub const TRUST_BUNDLE: &str = "type.googleapis.com/weft.config.v1.TrustBundle";
    pub const INBOUND_POLICY: &str = "type.googleapis.com/weft.config.v1.InboundPolicy";
    pub const GATEWAY: &str = "type.googleapis.com/weft.config.v1.Gateway";

    /// The types the agent serves, in subscription order.
    /// INBOUND_POLICY is subscribed by name: the sidecar's own service.
    /// TRUST_BUNDLE is subscribed by name too (the sidecar's trust domain),
    /// and only by sidecars whose certificate comes from the agent: the
    /// bundle also arrives with each certificate, but a root rotation
    /// reaches them over ADS at once.
    /// GATEWAY is subscribed by name, and only by gateways: their own.
    pub const ALL: [&str; 6] = [
        ROUTE_CONFIGURATION,
        CLUSTER,
        CLUSTER_LOAD_ASSIGNMENT,
        INBOUND_POLICY,
        TRUST_BUNDLE,
        GATEWAY,
    ];

    /// The short name used in logs and /status ("Cluster").
    pub fn short(type_url: &str) -> &str {
        type_url.rsplit('.').next().unwrap_or(type_url)
    }
}

#[cfg(test)]
mod tests {
    use prost::Name;

    use super::config::v1::{
        Cluster, ClusterLoadAssignment, Gateway, InboundPolicy, RouteConfiguration, TrustBundle,
    };
    use super::type_url;

    #[test]
    fn generated_type_urls_are_the_ones_on_the_wire() {
        assert_eq!(Cluster::type_url(), type_url::CLUSTER);
        assert_eq!(
            ClusterLoadAssignment::type_url(),
            type_url::CLUSTER_LOAD_ASSIGNMENT
        );
        assert_eq!(
            RouteConfiguration::type_url(),
            type_url::ROUTE_CONFIGURATION
        );
        assert_eq!(TrustBundle::type_url(), type_url::TRUST_BUNDLE);
        assert_eq!(InboundPolicy::type_url(), type_url::INBOUND_POLICY);
        assert_eq!(Gateway::type_url(), type_url::GATEWAY);
    }
}

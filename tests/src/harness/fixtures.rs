//! Documents the tests share.

use serde_json::{Value, json};

/// The route document of the issue, served for the host `api`: a header
/// match and a prefix rewrite to `users-v2`, a prefix rewrite to `users`, an
/// exact path, and a 90/10 split of everything else between `orders` and
/// `orders-v2`.
pub fn api_routes() -> Value {
    json!({ "routes": [
        { "match": { "path_prefix": "/api/v1/users/", "headers": { "x-api-version": "v2" } },
          "destination": "users-v2", "rewrite_prefix": "/" },
        { "match": { "path_prefix": "/api/v1/users/" }, "destination": "users", "rewrite_prefix": "/" },
        { "match": { "path_exact": "/health" }, "destination": "users" },
        { "match": { "path_prefix": "/" },
          "split": [ { "destination": "orders", "weight": 90 }, { "destination": "orders-v2", "weight": 10 } ] }
    ] })
}

/// The services [`api_routes`] names, each served by one instance `<svc>-1`.
pub const API_SERVICES: [&str; 4] = ["users", "users-v2", "orders", "orders-v2"];

/// A route table sending everything for a host to one service.
pub fn all_to(destination: &str) -> Value {
    json!({ "routes": [ { "match": { "path_prefix": "/" }, "destination": destination } ] })
}

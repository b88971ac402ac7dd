//! A compiled cache policy: its bounds and freshness default, made once
//! when the policy arrives (a new policy starts with an empty store).

use std::sync::Arc;
use std::time::Duration;

use super::store::Store;

/// One route's (or one service's) cache policy.
#[derive(Debug)]
pub struct CachePolicy {
    pub(super) max_body_bytes: u64,
    /// Zero: answers without their own freshness are not stored.
    pub(super) default_ttl: Duration,
    /// GET, HEAD or both; never empty.
    pub(super) methods: Vec<http::Method>,
    pub(super) store: Arc<Store>,
}

impl CachePolicy {
    pub(super) fn new(
        max_entries: u64,
        max_bytes: u64,
        max_body_bytes: u64,
        default_ttl: Duration,
        methods: Vec<http::Method>,
    ) -> Self {
        Self {
            store: Store::new(max_entries, max_bytes),
            max_body_bytes,
            default_ttl,
            methods,
        }
    }
}

//! Blocking queries: the options a read sends, the metadata every read
//! returns, and Consul's documented rules for the next index.
//!
//! See Consul's "Blocking Queries" API docs: a read carries `index` (the
//! `X-Consul-Index` of the previous answer) and `wait`; Consul holds the
//! request until the data's index passes `index` or `wait` (plus up to
//! `wait/16` of random jitter) elapses, and answers either way.

use std::time::Duration;

/// Consul's default `wait` when a query carries an `index` but no `wait`.
pub const CONSUL_DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);

/// Consul's upper bound on `wait`; longer values are cut to this by Consul.
pub const CONSUL_MAX_WAIT: Duration = Duration::from_secs(10 * 60);

/// Added to every request timeout on top of `wait` and Consul's jitter, for
/// the network and a busy server. Five seconds tells a slow answer from a
/// dead agent without making outage detection sluggish.
pub const TIMEOUT_MARGIN: Duration = Duration::from_secs(5);

/// Timeout of a request that does not block (no `index`) and of writes.
pub const NON_BLOCKING_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of one read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryOptions {
    /// Block until the data's index is greater than this. `None` or
    /// `Some(0)` reads immediately.
    pub index: Option<u64>,
    /// Longest time Consul may block (default 5 min, max 10 min on Consul's
    /// side). Only meaningful with `index`.
    pub wait: Option<Duration>,
    /// A Consul filter expression (`?filter=`), on endpoints that support it.
    pub filter: Option<String>,
    /// The datacenter to ask; `None` is the agent's own.
    pub datacenter: Option<String>,
}

impl QueryOptions {
    /// A blocking read waiting on `index` for at most `wait`.
    pub fn blocking(index: u64, wait: Duration) -> Self {
        Self {
            index: Some(index),
            wait: Some(wait),
            ..Self::default()
        }
    }

    /// Whether Consul will hold this request.
    pub fn is_blocking(&self) -> bool {
        self.index.is_some_and(|index| index > 0)
    }

    /// How long to wait for the answer: Consul's wait, plus the `wait/16`
    /// jitter Consul adds, plus [`TIMEOUT_MARGIN`]. A timeout shorter than
    /// the wait would turn every quiet period into an error.
    pub fn request_timeout(&self) -> Duration {
        if !self.is_blocking() {
            return NON_BLOCKING_TIMEOUT;
        }
        let wait = self
            .wait
            .unwrap_or(CONSUL_DEFAULT_WAIT)
            .min(CONSUL_MAX_WAIT);
        wait + wait / 16 + TIMEOUT_MARGIN
    }

    /// The query-string pairs for these options.
    pub(crate) fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        if let Some(index) = self.index.filter(|index| *index > 0) {
            pairs.push(("index", index.to_string()));
            if let Some(wait) = self.wait {
                // Consul parses Go durations; milliseconds keep sub-second waits exact.
                pairs.push(("wait", format!("{}ms", wait.as_millis().max(1))));
            }
        }
        if let Some(filter) = &self.filter {
            pairs.push(("filter", filter.clone()));
        }
        if let Some(dc) = &self.datacenter {
            pairs.push(("dc", dc.clone()));
        }
        pairs
    }
}

/// What Consul says about the answer to a read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryMeta {
    /// `X-Consul-Index`: pass it back (through [`next_index`]) to block for
    /// the next change. 0 when Consul sent none.
    pub index: u64,
    /// `X-Consul-LastContact`: how stale the answering server may be.
    pub last_contact: Duration,
    /// `X-Consul-KnownLeader`: whether the answering server knew a leader.
    pub known_leader: bool,
}

/// The index to send with the next blocking read, from the one sent before
/// (`previous`, 0 for a first read) and the one Consul just returned.
///
/// Consul's documented rules, in one place for every watch:
/// - the index went backwards (a snapshot restore, a new cluster, a KV prefix
///   whose last key was deleted): reset to 0, i.e. read afresh without blocking;
/// - the index must be greater than 0: a 0 (a Consul bug, still seen on old
///   versions) would make the next read return at once, forever, so use 1,
///   which is always safe to wait on.
pub fn next_index(previous: u64, returned: u64) -> u64 {
    if returned < previous {
        0
    } else if returned == 0 {
        1
    } else {
        returned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_follows_consul_forward() {
        assert_eq!(next_index(0, 17), 17);
        assert_eq!(next_index(17, 17), 17);
        assert_eq!(next_index(17, 42), 42);
    }

    #[test]
    fn index_that_goes_backwards_resets_to_a_fresh_read() {
        assert_eq!(next_index(42, 17), 0);
        assert_eq!(next_index(42, 0), 0);
    }

    #[test]
    fn index_zero_from_consul_becomes_one_never_a_hot_loop() {
        assert_eq!(next_index(0, 0), 1);
        assert!(next_index(0, 0) > 0);
    }

    #[test]
    fn request_timeout_outlasts_wait_and_jitter() {
        let options = QueryOptions::blocking(5, Duration::from_secs(160));
        assert_eq!(
            options.request_timeout(),
            Duration::from_secs(160 + 10) + TIMEOUT_MARGIN
        );
        // Consul's default wait applies when only an index is given.
        let options = QueryOptions {
            index: Some(5),
            ..QueryOptions::default()
        };
        assert!(options.request_timeout() > CONSUL_DEFAULT_WAIT);
        // A first read (index 0) does not block.
        let options = QueryOptions::blocking(0, Duration::from_secs(300));
        assert_eq!(options.request_timeout(), NON_BLOCKING_TIMEOUT);
    }

    #[test]
    fn wait_is_sent_only_with_an_index() {
        let options = QueryOptions::blocking(0, Duration::from_millis(250));
        assert!(options.pairs().is_empty());
        let options = QueryOptions::blocking(9, Duration::from_millis(250));
        assert_eq!(
            options.pairs(),
            vec![("index", "9".to_owned()), ("wait", "250ms".to_owned())]
        );
    }
}

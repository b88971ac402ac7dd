//! Local token buckets, one per key, bounded in number and lock-light.
//!
//! Each bucket is GCRA (the generic cell rate algorithm): a token bucket
//! stored as one number, the *theoretical arrival time* (TAT) of the next
//! request were the bucket empty. A request at `now` is allowed when
//! `max(tat, now) + interval - now <= burst * interval`, and then moves
//! TAT by one `interval`. That is exactly a bucket of `burst` tokens
//! refilled one token per `interval`, updated with one compare-and-swap
//! and no timer. A bucket whose TAT is in the past is full, the same as a
//! bucket never seen: forgetting it loses nothing.
//!
//! Keys live in [`SHARDS`] shards, each a map behind its own `RwLock`
//! taken only for a lookup (read) or to add a key (write), never across
//! an await; the bucket itself is an atomic. Each shard holds at most its
//! share of `max_keys`: a new key past that evicts a full bucket if a small
//! sample has one, else the least recently used of the sample.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Enough shards that 2-16 workers rarely meet on one lock.
pub const SHARDS: usize = 16;
/// How many entries an eviction looks at: approximate LRU, O(1).
const EVICTION_SAMPLE: usize = 8;

/// A token bucket's rate: `burst` tokens, one more every `interval`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketRate {
    /// Nanoseconds per token (at least 1).
    pub interval: u64,
    /// Bucket size, at least 1.
    pub burst: u64,
}

impl BucketRate {
    /// `requests` per `per`, up to `burst` at once.
    pub fn new(requests: u32, per: Duration, burst: u32) -> Self {
        let nanos = u64::try_from(per.as_nanos()).unwrap_or(u64::MAX);
        Self {
            interval: (nanos / u64::from(requests.max(1))).max(1),
            burst: u64::from(burst.max(1)),
        }
    }

    /// Time to refill the whole bucket.
    fn tolerance(&self) -> u64 {
        self.interval.saturating_mul(self.burst)
    }
}

/// What one request is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// Allowed; `remaining` tokens are left.
    Allowed { remaining: u64 },
    /// Refused; a token is back after `retry_after`.
    Limited { retry_after: Duration },
}

/// One key's state: the TAT in nanoseconds on the limiter's clock (0 =
/// never used, i.e. full), and when it was last used (for eviction).
#[derive(Debug, Default)]
pub struct Bucket {
    tat: AtomicU64,
    last_seen: AtomicU64,
}

impl Bucket {
    /// Takes one token at `now` (nanoseconds), lock-free.
    pub fn take(&self, rate: BucketRate, now: u64) -> Take {
        self.last_seen.store(now, Ordering::Relaxed);
        let tolerance = rate.tolerance();
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let next = tat.max(now).saturating_add(rate.interval);
            let ahead = next - now;
            if ahead > tolerance {
                return Take::Limited {
                    retry_after: Duration::from_nanos(ahead - tolerance),
                };
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Take::Allowed {
                        remaining: (tolerance - ahead) / rate.interval,
                    };
                }
                Err(current) => tat = current,
            }
        }
    }

    fn is_full(&self, now: u64) -> bool {
        self.tat.load(Ordering::Relaxed) <= now
    }
}

/// Buckets by key, at most about `max_keys` of them.
#[derive(Debug)]
pub struct KeyedBuckets {
    shards: Vec<RwLock<HashMap<Box<str>, Bucket>>>,
    per_shard: usize,
}

impl KeyedBuckets {
    pub fn new(max_keys: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
        }
    }

    /// Takes a token from `key`'s bucket, making the bucket if needed.
    pub fn take(&self, key: &str, rate: BucketRate, now: u64) -> Take {
        let shard = &self.shards[shard_of(key)];
        {
            let map = shard
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(bucket) = map.get(key) {
                return bucket.take(rate, now);
            }
        }
        let mut map = shard
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !map.contains_key(key) && map.len() >= self.per_shard {
            evict_one(&mut map, now);
        }
        map.entry(key.into()).or_default().take(rate, now)
    }

    /// How many keys are tracked now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn shard_of(key: &str) -> usize {
    // FNV-1a: the shard only spreads lock contention, so it needs no
    // flood resistance (each shard's map hashes keys with SipHash), and
    // this costs a tenth of a second SipHash pass on every request.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash as usize) % SHARDS
}

/// Removes a full bucket from a sample of the map, else the one of the
/// sample used longest ago. HashMap iteration order is arbitrary, so the
/// sample is a cheap stand-in for a random one.
fn evict_one(map: &mut HashMap<Box<str>, Bucket>, now: u64) {
    let mut victim: Option<(&Box<str>, u64)> = None;
    for (key, bucket) in map.iter().take(EVICTION_SAMPLE) {
        if bucket.is_full(now) {
            victim = Some((key, 0));
            break;
        }
        let seen = bucket.last_seen.load(Ordering::Relaxed);
        if victim.is_none_or(|(_, oldest)| seen < oldest) {
            victim = Some((key, seen));
        }
    }
    if let Some(key) = victim.map(|(key, _)| key.clone()) {
        map.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000 * MS;

    fn allowed(take: Take) -> bool {
        matches!(take, Take::Allowed { .. })
    }

    #[test]
    fn a_full_bucket_allows_its_burst_then_refills_at_the_rate() {
        // 10 per second, burst 5.
        let rate = BucketRate::new(10, Duration::from_secs(1), 5);
        let bucket = Bucket::default();
        let now = 100 * SEC;
        let remaining: Vec<Take> = (0..6).map(|_| bucket.take(rate, now)).collect();
        assert_eq!(remaining[0], Take::Allowed { remaining: 4 });
        assert_eq!(remaining[4], Take::Allowed { remaining: 0 });
        assert_eq!(
            remaining[5],
            Take::Limited {
                retry_after: Duration::from_millis(100)
            }
        );
        // One token per 100 ms.
        assert!(!allowed(bucket.take(rate, now + 99 * MS)));
        assert!(allowed(bucket.take(rate, now + 100 * MS)));
        assert!(!allowed(bucket.take(rate, now + 150 * MS)));
        // After a quiet second the bucket is full again, never fuller.
        let later = now + 10 * SEC;
        assert_eq!(bucket.take(rate, later), Take::Allowed { remaining: 4 });
    }

    #[test]
    fn sustained_load_gets_exactly_the_rate() {
        // 100 per second, burst 1, offered 1000 per second for 10 s.
        let rate = BucketRate::new(100, Duration::from_secs(1), 1);
        let bucket = Bucket::default();
        let start = 5 * SEC;
        let passed = (0..10_000)
            .filter(|i| allowed(bucket.take(rate, start + i * MS)))
            .count();
        assert_eq!(passed, 1000);
    }

    #[test]
    fn per_minute_rates_keep_their_precision() {
        let rate = BucketRate::new(3, Duration::from_secs(60), 3);
        let bucket = Bucket::default();
        let now = SEC;
        for _ in 0..3 {
            assert!(allowed(bucket.take(rate, now)));
        }
        assert_eq!(
            bucket.take(rate, now),
            Take::Limited {
                retry_after: Duration::from_secs(20)
            }
        );
    }

    #[test]
    fn keys_are_limited_independently_and_bounded_in_number() {
        let rate = BucketRate::new(1, Duration::from_secs(1), 1);
        let buckets = KeyedBuckets::new(64);
        let now = SEC;
        assert!(allowed(buckets.take("alice", rate, now)));
        assert!(!allowed(buckets.take("alice", rate, now)));
        assert!(allowed(buckets.take("bob", rate, now)));
        // A flood of distinct keys never holds more than the cap (plus
        // rounding to whole shards).
        for i in 0..10_000 {
            buckets.take(&format!("key-{i}"), rate, now + i);
        }
        assert!(buckets.len() <= 64 + SHARDS, "{} keys", buckets.len());
    }

    #[test]
    fn eviction_prefers_full_buckets() {
        let rate = BucketRate::new(1, Duration::from_secs(1), 1);
        let mut map: HashMap<Box<str>, Bucket> = HashMap::new();
        let drained = Bucket::default();
        drained.take(rate, 10 * SEC);
        map.insert("drained".into(), drained);
        let refilled = Bucket::default();
        refilled.take(rate, SEC);
        map.insert("refilled".into(), refilled);
        evict_one(&mut map, 10 * SEC);
        assert!(map.contains_key("drained"), "a drained bucket is kept");
        assert!(!map.contains_key("refilled"));
    }
}

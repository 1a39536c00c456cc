//! Per-caller state in a bounded, sharded map: a flood of distinct callers cannot grow it past
//! `MAX_CALLERS` entries, and worker threads rarely meet on one lock (a request locks one of
//! `SHARDS` shards for a few counter updates, never across an await).

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Mutex;

use lru::LruCache;

/// Shards: with a handful of worker threads, two rarely want the same one at once.
const SHARDS: usize = 64;
/// Callers (each under each of its quotas) kept per process, in-process counts and shared
/// leases each. An entry is about 100 bytes (key, value, the LRU's links and the hash table's
/// slot), so each map stays under 64 MiB however many callers there are. Past it the least
/// recently seen caller of the shard is forgotten: its next request starts a fresh count.
pub const MAX_CALLERS: usize = 1 << 19;
const PER_SHARD: usize = MAX_CALLERS / SHARDS;

/// A bounded map from a caller's hash to `V`, least recently used out first.
pub struct Counters<V> {
    shards: Box<[Mutex<LruCache<u64, V, PreHashed>>]>,
    hasher: ahash::RandomState,
}

/// The keys are hashes already: the map uses them as they are.
#[derive(Clone, Copy, Default)]
struct PreHashed;

struct KeyHasher(u64);

impl BuildHasher for PreHashed {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl<V: Default> Counters<V> {
    pub fn new() -> Counters<V> {
        Counters {
            // Unbounded as the LRU sees it (so no table is allocated up front); `with` keeps
            // each shard within `PER_SHARD`.
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::unbounded_with_hasher(PreHashed)))
                .collect(),
            hasher: ahash::RandomState::new(),
        }
    }

    /// The key of `caller` under quota `quota_id`: a 64-bit hash with a per-process random
    /// seed (a collision, about one in 2^64 per pair, would share a count).
    pub fn key(&self, quota_id: u64, caller: &impl Hash) -> u64 {
        let mut h = self.hasher.build_hasher();
        quota_id.hash(&mut h);
        caller.hash(&mut h);
        h.finish()
    }

    /// The shard of `key`: middle bits (the table inside uses the lowest and the top 7).
    fn shard(&self, key: u64) -> &Mutex<LruCache<u64, V, PreHashed>> {
        &self.shards[(key >> 32) as usize % SHARDS]
    }

    /// Run `f` on the entry of `key`, made when missing.
    pub fn with<R>(&self, key: u64, f: impl FnOnce(&mut V) -> R) -> R {
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = shard.get_mut(&key) {
            return f(v);
        }
        if shard.len() >= PER_SHARD {
            shard.pop_lru();
        }
        f(shard.get_or_insert_mut(key, V::default))
    }

    /// Run `f` on the entry of `key` if there is one.
    pub fn with_existing<R>(&self, key: u64, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        shard.get_mut(&key).map(f)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

impl<V: Default> Default for Counters<V> {
    fn default() -> Self {
        Counters::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_callers_stays_within_the_bound_and_forgets_the_least_recent() {
        let c: Counters<u32> = Counters::new();
        let first = c.key(1, &"caller-0");
        c.with(first, |v| *v = 7);
        for n in 1..(MAX_CALLERS + 10_000) {
            c.with(c.key(1, &format!("caller-{n}")), |v| *v += 1);
        }
        assert!(c.len() <= MAX_CALLERS, "{}", c.len());
        assert_eq!(c.with_existing(first, |v| *v), None);
        // The entry itself is small: key, a window of 11 counters and its head.
        assert!(std::mem::size_of::<(u64, super::super::window::Window)>() <= 64);
    }
}

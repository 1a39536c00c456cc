//! Per-caller state in a bounded, sharded map: a flood of distinct callers cannot grow it past
//! `MAX_CALLERS` entries, and worker threads rarely meet on one lock (a request locks one of
//! `SHARDS` shards for a few counter updates, never across an await).

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Mutex;

use lru::LruCache;

/// Shards: with a handful of worker threads, two rarely want the same one at once.
const SHARDS: usize = 64;
/// Callers (each under each of its quotas) kept per process, in-process counts and shared
/// leases each. An entry is about 110 bytes (key, value, the LRU's links and the hash table's
/// slot), so each map stays under 64 MiB however many callers there are. Past it the least
/// recently seen caller of the shard is forgotten (to within `REORDER_AFTER` of its shard's
/// accesses): its next request starts a fresh count.
pub const MAX_CALLERS: usize = 1 << 19;
const PER_SHARD: usize = MAX_CALLERS / SHARDS;

/// A caller seen again is moved to the front of its shard's order only when more than this
/// many accesses to the shard came since it last was: moving an entry touches three others in
/// memory, which with many callers is most of an access's cost. An entry placed within the
/// last `REORDER_AFTER` accesses is among the `REORDER_AFTER` nearest the front, and each
/// access moves it back by one at most, so the one forgotten was seen by none of the last
/// `PER_SHARD - REORDER_AFTER` accesses to its shard.
const REORDER_AFTER: u32 = (PER_SHARD / 4) as u32;

/// One shard: the map, and its accesses counted (the clock `REORDER_AFTER` is told in).
struct Shard<V> {
    map: LruCache<u64, Slot<V>, PreHashed>,
    tick: u32,
}

struct Slot<V> {
    value: V,
    /// The shard's `tick` when the entry was last moved to the front.
    placed: u32,
}

/// A bounded map from a caller's hash to `V`, least recently used out first.
pub struct Counters<V> {
    shards: Box<[Mutex<Shard<V>>]>,
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
                .map(|_| {
                    Mutex::new(Shard {
                        map: LruCache::unbounded_with_hasher(PreHashed),
                        tick: 0,
                    })
                })
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
    fn shard(&self, key: u64) -> &Mutex<Shard<V>> {
        &self.shards[(key >> 32) as usize % SHARDS]
    }

    /// Run `f` on the entry of `key`, made when missing.
    pub fn with<R>(&self, key: u64, f: impl FnOnce(&mut V) -> R) -> R {
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        let shard = &mut *shard;
        shard.tick = shard.tick.wrapping_add(1);
        let tick = shard.tick;
        let stale = match shard.map.peek_mut(&key) {
            Some(slot) if tick.wrapping_sub(slot.placed) <= REORDER_AFTER => {
                return f(&mut slot.value)
            }
            Some(slot) => {
                slot.placed = tick;
                true
            }
            None => false,
        };
        if stale {
            // `get_mut` moves it to the front.
            if let Some(slot) = shard.map.get_mut(&key) {
                return f(&mut slot.value);
            }
        }
        if shard.map.len() >= PER_SHARD {
            shard.map.pop_lru();
        }
        let slot = shard.map.get_or_insert_mut(key, || Slot {
            value: V::default(),
            placed: tick,
        });
        f(&mut slot.value)
    }

    /// Run `f` on the entry of `key` if there is one (its place in the order unchanged: taking
    /// a count back is not seeing the caller).
    pub fn with_existing<R>(&self, key: u64, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        shard.map.peek_mut(&key).map(|slot| f(&mut slot.value))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.len())
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
        // Twice the bound: the shards' seeded hashing spreads callers unevenly (a shard gets
        // about 2 * PER_SHARD of them, give or take 1 %), and the first caller's shard must see
        // more than PER_SHARD newcomers however the seed falls.
        for n in 1..(2 * MAX_CALLERS) {
            c.with(c.key(1, &format!("caller-{n}")), |v| *v += 1);
        }
        assert!(c.len() <= MAX_CALLERS, "{}", c.len());
        assert_eq!(c.with_existing(first, |v| *v), None);
        // The entry itself is small: key, a window of 11 counters and its head.
        assert!(std::mem::size_of::<(u64, Slot<super::super::window::Window>)>() <= 72);
        // A shared lease's, with the LRU's links and slot, about 230 bytes (README, "Memory").
        assert!(std::mem::size_of::<(u64, Slot<super::super::shared::Lease>)>() <= 184);
    }

    #[test]
    fn a_caller_seen_again_is_kept_over_those_not_seen_since() {
        let c: Counters<u32> = Counters::new();
        // Keys of shard 0 (bits 32..38 zero), spread over the table's own bits.
        let k = |i: u64| (i << 38) | (i.wrapping_mul(0x9E37_79B9) & 0xFFFF_FFFF);
        for i in 0..PER_SHARD as u64 {
            c.with(k(i), |v| *v = 1);
        }
        // The least recently seen caller comes back, then one more fills the shard past its
        // bound: the one forgotten is the next least recently seen.
        c.with(k(0), |v| *v += 1);
        c.with(k(PER_SHARD as u64), |v| *v = 1);
        assert_eq!(c.with_existing(k(0), |v| *v), Some(2));
        assert_eq!(c.with_existing(k(1), |v| *v), None);
        // Seen again right after it was placed, a caller keeps its place near the front, and
        // its count goes on.
        c.with(k(2), |v| *v += 5);
        c.with(k(2), |v| *v += 5);
        assert_eq!(c.with_existing(k(2), |v| *v), Some(11));
        // The bound at its worst: a caller placed at the front, then `REORDER_AFTER - 1`
        // newcomers, is seen again and not moved (it is `REORDER_AFTER`th from the front). It
        // is kept through `PER_SHARD - REORDER_AFTER` newcomers after that, and only then,
        // being the last, forgotten.
        let x = k(3 * PER_SHARD as u64);
        let newcomers = |from: u64, n: u64| {
            for i in 0..n {
                c.with(k(from + i), |v| *v = 1);
            }
        };
        c.with(x, |v| *v = 1);
        newcomers(4 * PER_SHARD as u64, u64::from(REORDER_AFTER) - 1);
        c.with(x, |v| *v += 1);
        newcomers(
            5 * PER_SHARD as u64,
            (PER_SHARD as u64) - u64::from(REORDER_AFTER),
        );
        assert_eq!(
            c.with_existing(x, |v| *v),
            Some(2),
            "seen within the bound: kept"
        );
        newcomers(6 * PER_SHARD as u64, 1);
        assert_eq!(
            c.with_existing(x, |v| *v),
            None,
            "not moved when seen again that soon"
        );
    }
}

//! Per-caller state in a bounded, sharded map: a flood of distinct callers cannot grow it past
//! `MAX_CALLERS` entries, and worker threads rarely meet on one lock (a request locks one of
//! `SHARDS` shards for a few counter updates, never across an await).
//!
//! Each shard is two generations of one flat table each, entries stored inline (a caller's key
//! and counts share a 64-byte line): a request that finds its caller in the young generation
//! touches the table's control bytes and that line, nothing else (no list of recency to keep).
//! A caller found in the old generation moves to the young one. When the young generation is
//! full, the old one is forgotten and the young one becomes old: a caller is forgotten only
//! when it was not seen during a whole generation, while `GENERATION` others of its shard were.

use std::hash::Hash;
use std::sync::Mutex;

use hashbrown::HashTable;

/// Shards: with a handful of worker threads, two rarely want the same one at once.
const SHARDS: usize = 64;
/// Callers of a generation of one shard: 7/8 of 4,096, so a full generation's table has 4,096
/// slots (the table grows by doubling and keeps at most 7/8 of its slots in use).
pub const GENERATION: usize = 3_584;
/// Callers (each under each of its quotas) kept per process, in each map: in-process counts,
/// and shared leases. An in-process count is one 64-byte line and a control byte in a table
/// of at most 4,096 slots a generation, so the map stays under 34 MiB however many callers
/// there are (leases: 192 bytes a slot, under 100 MiB).
pub const MAX_CALLERS: usize = SHARDS * 2 * GENERATION;

/// One shard: callers seen in this generation, and those seen in the one before.
struct Shard<V> {
    young: HashTable<Entry<V>>,
    old: HashTable<Entry<V>>,
}

/// A caller's key and state, on cache lines of their own.
#[repr(align(64))]
struct Entry<V> {
    key: u64,
    value: V,
}

/// A bounded map from a caller's hash to `V`, callers not seen for a generation out first.
pub struct Counters<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    hasher: ahash::RandomState,
}

/// The table's hash of an entry: its key, a seeded hash already.
fn hash_of<V>(entry: &Entry<V>) -> u64 {
    entry.key
}

impl<V: Default> Counters<V> {
    pub fn new() -> Counters<V> {
        Counters {
            // No table is allocated up front: each grows to its generation's size.
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        young: HashTable::new(),
                        old: HashTable::new(),
                    })
                })
                .collect(),
            hasher: ahash::RandomState::new(),
        }
    }

    /// The key of `caller` under quota `quota_id`: a 64-bit hash with a per-process random
    /// seed (a collision, about one in 2^64 per pair, would share a count).
    pub fn key(&self, quota_id: u64, caller: &impl Hash) -> u64 {
        self.hasher.hash_one((quota_id, caller))
    }

    /// The shard of `key`: middle bits (the table inside uses the lowest and the top 7).
    fn shard(&self, key: u64) -> &Mutex<Shard<V>> {
        &self.shards[(key >> 32) as usize % SHARDS]
    }

    /// Run `f` on the entry of `key`, made when missing.
    pub fn with<R>(&self, key: u64, f: impl FnOnce(&mut V) -> R) -> R {
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        let shard = &mut *shard;
        let eq = |e: &Entry<V>| e.key == key;
        if let Some(entry) = shard.young.find_mut(key, eq) {
            return f(&mut entry.value);
        }
        let value = match shard.old.find_entry(key, eq) {
            Ok(seen) => seen.remove().0.value,
            Err(_) => V::default(),
        };
        if shard.young.len() >= GENERATION {
            // The old generation's callers, not seen during this one, are forgotten; its
            // table (cleared, its memory kept) takes the next generation.
            shard.old.clear();
            std::mem::swap(&mut shard.young, &mut shard.old);
        }
        let entry = shard
            .young
            .insert_unique(key, Entry { key, value }, hash_of);
        f(&mut entry.into_mut().value)
    }

    /// Run `f` on the entry of `key` if there is one (its generation unchanged: taking a count
    /// back is not seeing the caller).
    pub fn with_existing<R>(&self, key: u64, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        let shard = &mut *shard;
        let eq = |e: &Entry<V>| e.key == key;
        let entry = match shard.young.find_mut(key, eq) {
            Some(entry) => Some(entry),
            None => shard.old.find_mut(key, eq),
        };
        entry.map(|e| f(&mut e.value))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                s.young.len() + s.old.len()
            })
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
        // about 2 * MAX_CALLERS / SHARDS of them, give or take 1 %), and the first caller's
        // shard must see more than two generations of newcomers however the seed falls.
        for n in 1..(2 * MAX_CALLERS) {
            c.with(c.key(1, &format!("caller-{n}")), |v| *v += 1);
        }
        assert!(c.len() <= MAX_CALLERS, "{}", c.len());
        assert_eq!(c.with_existing(first, |v| *v), None);
        // An in-process count is one cache line: key, a window of 11 counters and its head.
        assert_eq!(
            std::mem::size_of::<Entry<super::super::window::Window>>(),
            64
        );
        // A shared lease's entry, three lines (README, "Memory").
        assert_eq!(
            std::mem::size_of::<Entry<super::super::shared::Lease>>(),
            192
        );
    }

    #[test]
    fn a_caller_is_forgotten_only_once_a_generation_of_others_came_after_it() {
        let c: Counters<u32> = Counters::new();
        // Keys of shard 0 (bits 32..38 zero), spread over the table's own bits.
        let k = |i: u64| (i << 38) | (i.wrapping_mul(0x9E37_79B9) & 0xFFFF_FFFF);
        let gen = GENERATION as u64;
        let newcomers = |from: u64, n: u64| {
            for i in 0..n {
                c.with(k(from + i), |v| *v = 1);
            }
        };
        // The bound at its worst: `x` fills the young generation, so the next newcomer makes
        // it old at once. It is kept through `GENERATION` newcomers after it, and forgotten
        // with the next one.
        newcomers(1_000_000, gen - 1);
        let x = k(1);
        c.with(x, |v| *v = 1);
        newcomers(2_000_000, gen);
        assert_eq!(c.with_existing(x, |v| *v), Some(1), "kept");
        newcomers(3_000_000, 1);
        assert_eq!(c.with_existing(x, |v| *v), None, "forgotten");

        // Seen again while old, a caller moves to the young generation with its count, and
        // outlives the next change of generation; taking a count back does not move it.
        let (y, z) = (k(2), k(3));
        c.with(y, |v| *v = 5);
        c.with(z, |v| *v = 5);
        newcomers(4_000_000, gen); // y and z are old now
        c.with(y, |v| *v += 1);
        assert_eq!(c.with_existing(z, |v| *v - 1), Some(4));
        newcomers(5_000_000, gen);
        assert_eq!(c.with_existing(y, |v| *v), Some(6), "moved up: kept");
        assert_eq!(c.with_existing(z, |v| *v), None, "not seen: forgotten");
        assert!(c.len() <= 2 * GENERATION);
    }
}

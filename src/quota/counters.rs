//! Per-caller state in a bounded, sharded map: a flood of distinct callers cannot grow it past
//! `MAX_CALLERS` entries, and worker threads rarely meet on one lock (a request locks one of
//! `SHARDS` shards for a few counter updates, never across an await).
//!
//! Each shard is two generations of one flat table each: open addressing with linear probing,
//! the caller's key stored in its entry, beside its counts, on cache lines of their own. A
//! request that finds its caller reads one line (the next one or two when the first holds
//! another caller), nothing else: no separate control bytes, no list of recency to keep. With
//! many callers, each line touched is a likely cache and TLB miss, which is most of what a
//! quota costs a request. A caller found in the old generation moves to the young one. When
//! the young generation is full, the old one is forgotten and the young one becomes old: a
//! caller is forgotten only when it was not seen during a whole generation, while
//! `GENERATION` others of its shard were.

use std::hash::Hash;
use std::sync::Mutex;

/// Shards: with a handful of worker threads, two rarely want the same one at once.
const SHARDS: usize = 64;
/// The most entries a generation's table has (it starts small and doubles, at most half full,
/// until it has this many).
const MAX_SLOTS: usize = 4_096;
/// Callers of a generation of one shard: three quarters of a full table (a probe then reads
/// about 2.5 entries for a caller it finds; fewer callers, a half-full table or less: 1.5).
pub const GENERATION: usize = MAX_SLOTS / 4 * 3;
/// Callers (each under each of its quotas) kept per process, in each map: in-process counts,
/// and shared leases. An in-process count is a 64-byte entry, so the map holds at most
/// `SHARDS * 2 * MAX_SLOTS * 64` bytes = 32 MiB however many callers there are (a lease's
/// entry is 192 bytes: 96 MiB), and a shard whose young table is doubling holds the smaller
/// one too for that moment.
pub const MAX_CALLERS: usize = SHARDS * 2 * GENERATION;

/// A free entry's key; `GONE`, one whose caller moved to the young generation (a probe goes
/// on past it). A caller's key that is one of them is moved past them (two keys of 2^64 then
/// share a count, like any hash collision).
const FREE: u64 = 0;
const GONE: u64 = 1;

/// A caller's key and state, on cache lines of their own.
#[repr(align(64))]
#[derive(Default)]
struct Entry<V> {
    key: u64,
    value: V,
}

/// One generation: a table of `2^k` entries (none until its first caller).
#[derive(Default)]
struct Table<V> {
    entries: Box<[Entry<V>]>,
    /// Entries in use (moved-out ones included).
    used: usize,
}

impl<V: Default> Table<V> {
    fn with_slots(n: usize) -> Table<V> {
        Table {
            entries: (0..n).map(|_| Entry::default()).collect(),
            used: 0,
        }
    }

    /// Where `key` is, or the free entry that ends its probe.
    fn probe(&self, key: u64) -> Result<usize, usize> {
        let mask = self.entries.len() - 1;
        // The top bits: the shard is chosen by the middle ones.
        let mut i = (key >> 44) as usize & mask;
        loop {
            match self.entries[i].key {
                k if k == key => return Ok(i),
                FREE => return Err(i),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Where `key` is, if it is here (an empty table has no entry to probe).
    fn position(&self, key: u64) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        self.probe(key).ok()
    }

    fn find(&mut self, key: u64) -> Option<&mut V> {
        let i = self.position(key)?;
        Some(&mut self.entries[i].value)
    }

    /// Take the value of `key` out, if it is here.
    fn take(&mut self, key: u64) -> Option<V> {
        let entry = &mut self.entries[self.position(key)?];
        entry.key = GONE;
        Some(std::mem::take(&mut entry.value))
    }

    /// Add `key` (not here) with `value`, doubling the table first when half of it is used.
    fn insert(&mut self, key: u64, value: V) -> &mut V {
        let slots = self.entries.len();
        if slots == 0 || (self.used >= slots / 2 && slots < MAX_SLOTS) {
            let mut bigger = Table::with_slots((slots * 2).max(16));
            for e in self.entries.iter_mut().filter(|e| e.key > GONE) {
                bigger.insert(e.key, std::mem::take(&mut e.value));
            }
            *self = bigger;
        }
        let Err(i) = self.probe(key) else {
            unreachable!("inserted twice")
        };
        self.used += 1;
        self.entries[i].key = key;
        self.entries[i].value = value;
        &mut self.entries[i].value
    }
}

/// One shard: callers seen in this generation, and those seen in the one before.
struct Shard<V> {
    young: Table<V>,
    old: Table<V>,
}

/// A bounded map from a caller's hash to `V`, callers not seen for a generation out first.
pub struct Counters<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    hasher: ahash::RandomState,
}

impl<V: Default> Counters<V> {
    pub fn new() -> Counters<V> {
        Counters {
            // No table is allocated up front: each grows with its generation.
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        young: Table::default(),
                        old: Table::default(),
                    })
                })
                .collect(),
            hasher: ahash::RandomState::new(),
        }
    }

    /// The key of `caller` under quota `quota_id`: a 64-bit hash with a per-process random
    /// seed (a collision, about one in 2^64 per pair, would share a count).
    pub fn key(&self, quota_id: u64, caller: &impl Hash) -> u64 {
        self.hasher.hash_one((quota_id, caller)).max(GONE + 1)
    }

    /// The shard of `key`: middle bits (the table inside uses the top ones).
    fn shard(&self, key: u64) -> &Mutex<Shard<V>> {
        &self.shards[(key >> 32) as usize % SHARDS]
    }

    /// Run `f` on the entry of `key` (as `Counters::key` makes it), made when missing.
    pub fn with<R>(&self, key: u64, f: impl FnOnce(&mut V) -> R) -> R {
        debug_assert!(key > GONE, "a key not made by `key`");
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        let shard = &mut *shard;
        if let Some(value) = shard.young.find(key) {
            return f(value);
        }
        let value = shard.old.take(key).unwrap_or_default();
        if shard.young.used >= GENERATION {
            // The old generation's callers, not seen during this one, are forgotten.
            shard.old = std::mem::take(&mut shard.young);
        }
        f(shard.young.insert(key, value))
    }

    /// Run `f` on the entry of `key` if there is one (its generation unchanged: taking a count
    /// back is not seeing the caller).
    pub fn with_existing<R>(&self, key: u64, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        debug_assert!(key > GONE, "a key not made by `key`");
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        let shard = &mut *shard;
        let value = match shard.young.find(key) {
            Some(value) => Some(value),
            None => shard.old.find(key),
        };
        value.map(f)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        let live = |t: &Table<V>| t.entries.iter().filter(|e| e.key > GONE).count();
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                live(&s.young) + live(&s.old)
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
        let k = |i: u64| (i + 2).wrapping_mul(0x9E37_79B9_7F4A_7C15) & !(0x3F << 32);
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

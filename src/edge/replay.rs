//! DPoP replay detection (RFC 9449 §11.1): every proof that passed its checks is recorded by
//! its `jti` for as long as its `iat` is accepted, and a proof recorded before is refused. In
//! the shared store when there is one (so a proof used on one replica is refused on every
//! other), else in this process. A check that cannot be made refuses the request (503): a
//! skipped replay check is no check.
//!
//! What the record cannot have seen is refused as a possible replay: after a reload widened
//! `dpop_max_age_seconds`, a proof issued before the reload that is older than the old window
//! (its record may have expired under the old one). An in-process record starts empty: like a
//! replay to another replica, one across a restart is caught only with the shared store (SPEC:
//! a `jti` is a replay when it "was seen before within the window", and a client whose clock
//! runs a little behind must not be refused for minutes after every restart).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::auth::dpop::Proof;
use crate::shared_state::SharedStore;

/// Proofs remembered in-process at most (16 bytes each, in two generations per shard: about
/// 80 MB at the bound). Past it, DPoP requests are refused (503) until older proofs expire.
pub const MAX_LOCAL_PROOFS: usize = 4 << 20;
const SHARDS: usize = 16;

/// What the replay check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Never seen: recorded now.
    Fresh,
    Replayed,
    /// The store could not be asked, or the in-process record is full.
    Unavailable,
}

/// One shard of the in-process record: two generations, each kept for at least `period`
/// seconds after the last insert into it, so a proof is remembered for at least its TTL.
#[derive(Default)]
struct Generations {
    current: HashSet<u128>,
    previous: HashSet<u128>,
    rotated_at: u64,
    /// The longest TTL seen (never shrinks: an entry's TTL must hold until it is dropped).
    period: u64,
}

impl Generations {
    fn insert(&mut self, key: u128, ttl: u64, now: u64) -> Seen {
        self.period = self.period.max(ttl);
        if now >= self.rotated_at.saturating_add(self.period) {
            // What `previous` held was inserted before the last rotation, at least `period`
            // seconds ago: dropped. What `current` holds is kept for another `period`.
            self.previous = std::mem::take(&mut self.current);
            self.rotated_at = now;
        }
        if self.previous.contains(&key) || self.current.contains(&key) {
            return Seen::Replayed;
        }
        if self.previous.len() + self.current.len() >= MAX_LOCAL_PROOFS / SHARDS {
            return Seen::Unavailable;
        }
        self.current.insert(key);
        Seen::Fresh
    }
}

/// The windows proofs have been accepted under: the widest so far, and the last widening.
#[derive(Debug, Default)]
struct Windows {
    widest: u64,
    /// When a proof first came under a wider window than any before, and that older width.
    widened: Option<(u64, u64)>,
}

impl Windows {
    /// Whether `proof` may have been accepted, and its record forgotten, under a narrower
    /// window than its own (before a reload widened it).
    fn outgrown(&mut self, proof: &Proof, now: u64) -> bool {
        if proof.max_age > self.widest {
            if self.widest > 0 {
                self.widened = Some((now, self.widest));
            }
            self.widest = proof.max_age;
        }
        match self.widened {
            Some((at, old)) => {
                proof.iat <= at.saturating_add(proof.leeway) && now > proof.iat.saturating_add(old)
            }
            None => false,
        }
    }
}

/// The process's replay record.
pub struct Replays {
    local: Vec<Mutex<Generations>>,
    store: Option<Arc<SharedStore>>,
    full_logged: AtomicBool,
    windows: Mutex<Windows>,
    /// Picks a proof's shard with a key of this process, so no caller can aim its proofs at one.
    shard_of: ahash::RandomState,
}

impl Replays {
    pub fn new(store: Option<Arc<SharedStore>>) -> Replays {
        Replays {
            local: (0..SHARDS).map(|_| Mutex::default()).collect(),
            store,
            full_logged: AtomicBool::new(false),
            windows: Mutex::default(),
            shard_of: ahash::RandomState::new(),
        }
    }

    /// Record `proof` at `now` (Unix seconds), saying whether it was seen before.
    pub async fn check(&self, proof: &Proof, now: u64) -> Seen {
        let outgrown = self
            .windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .outgrown(proof, now);
        if outgrown {
            return Seen::Replayed;
        }
        if let Some(store) = &self.store {
            if !store.usable() {
                store.skipped("replay");
                return Seen::Unavailable;
            }
            return match store.replay_insert(proof.replay_key_hex(), proof.ttl).await {
                Some(true) => Seen::Fresh,
                Some(false) => Seen::Replayed,
                None => Seen::Unavailable,
            };
        }
        self.check_local(proof, now)
    }

    fn check_local(&self, proof: &Proof, now: u64) -> Seen {
        let key = u128::from_be_bytes(proof.replay_key);
        let shard = &self.local[(self.shard_of.hash_one(key) as usize) % SHARDS];
        let seen = shard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, proof.ttl, now);
        if seen == Seen::Unavailable && !self.full_logged.swap(true, Ordering::Relaxed) {
            tracing::error!(
                max = MAX_LOCAL_PROOFS,
                "the in-process DPoP replay record is full: DPoP requests get 503 until older proofs expire (use [shared_state] for more)"
            );
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proof(n: u8, ttl: u64) -> Proof {
        Proof {
            replay_key: [n; 16],
            ttl,
            iat: 0,
            max_age: ttl - 1,
            leeway: 0,
        }
    }

    #[test]
    fn proofs_the_record_cannot_have_seen_are_refused() {
        let mut w = Windows::default();
        let at = |iat, max_age| Proof {
            iat,
            max_age,
            ..proof(1, max_age + 1)
        };
        assert!(!w.outgrown(&at(1_000, 60), 1_000));
        // Widened to 300 at 2_000: a proof from before then, older than 60 s, may have been
        // used and forgotten; fresh ones and those within the old window are fine.
        assert!(!w.outgrown(&at(2_000, 300), 2_000));
        assert!(w.outgrown(&at(1_900, 300), 2_000));
        assert!(!w.outgrown(&at(1_950, 300), 2_000));
        assert!(!w.outgrown(&at(2_100, 300), 2_200));
        // In-process, a proof issued before the process started and never seen is not a
        // replay (it is one the second time).
        let r = Replays::new(None);
        let old = Proof {
            iat: 4_800,
            ..proof(2, 301)
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(r.check(&old, 5_001)), Seen::Fresh);
        assert_eq!(rt.block_on(r.check(&old, 5_002)), Seen::Replayed);
    }

    #[test]
    fn a_proof_is_refused_again_for_at_least_its_ttl_and_forgotten_after_two() {
        let r = Replays::new(None);
        let p = proof(1, 100);
        assert_eq!(r.check_local(&p, 1_000), Seen::Fresh);
        for t in [1_000, 1_050, 1_099, 1_100, 1_150, 1_199] {
            assert_eq!(r.check_local(&p, t), Seen::Replayed, "at {t}");
        }
        // Other inserts rotate the generations; by 2 periods after its last sighting it is gone.
        assert_eq!(r.check_local(&proof(2, 100), 1_400), Seen::Fresh);
        assert_eq!(r.check_local(&proof(2, 100), 1_401), Seen::Replayed);
        assert_eq!(r.check_local(&p, 1_600), Seen::Fresh);
    }

    #[test]
    fn a_longer_ttl_after_a_reload_is_honoured() {
        let r = Replays::new(None);
        assert_eq!(r.check_local(&proof(1, 10), 0), Seen::Fresh);
        assert_eq!(r.check_local(&proof(3, 1_000), 5), Seen::Fresh);
        assert_eq!(r.check_local(&proof(3, 1_000), 900), Seen::Replayed);
    }
}

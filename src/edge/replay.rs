//! DPoP replay detection (RFC 9449 §11.1): every proof that passed its checks is recorded by
//! its `jti` for as long as its `iat` is accepted, and a proof recorded before is refused. In
//! the shared store when there is one (so a proof used on one replica is refused on every
//! other), else in this process. A check that cannot be made refuses the request (503): a
//! skipped replay check is no check.

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

/// The process's replay record.
pub struct Replays {
    local: Vec<Mutex<Generations>>,
    store: Option<Arc<SharedStore>>,
    full_logged: AtomicBool,
}

impl Replays {
    pub fn new(store: Option<Arc<SharedStore>>) -> Replays {
        Replays {
            local: (0..SHARDS).map(|_| Mutex::default()).collect(),
            store,
            full_logged: AtomicBool::new(false),
        }
    }

    /// Record `proof` at `now` (Unix seconds), saying whether it was seen before.
    pub async fn check(&self, proof: &Proof, now: u64) -> Seen {
        if let Some(store) = &self.store {
            if !store.usable() {
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
        let shard = &self.local[(key as usize) % SHARDS];
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
        }
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

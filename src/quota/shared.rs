//! Quotas shared by every replica through `[shared_state]`, without a store round trip per
//! request: leases of a sub-bucket's budget.
//!
//! The store keeps, per quota and caller, one counter per sub-bucket (on the store's clock,
//! `TIME`), expiring on its own. A replica takes a lease of `want` requests for the current
//! sub-bucket `i` with one atomic script: it sums buckets `i-SUB_BUCKETS..=i` (the same
//! conservative window as in-process counting), grants `min(want, limit - sum)`, and adds the
//! grant to bucket `i` before answering. The replica then allows requests from the lease,
//! without I/O, until the lease is spent or bucket `i` ends.
//!
//! The bound: every request any replica allows spends a permit that was counted in the store's
//! bucket `i` before it was allowed, and it is allowed while bucket `i` still runs on the
//! store's clock: the lease's end is taken as the replica's time when it *asked* plus the time
//! the store said was left, which is never later than the real end. So the store's counts
//! cover every allowed request in its own bucket, and the in-process proof (see `window`)
//! applies to the store's counts: together, the replicas never allow more than `limit` in any
//! window (no clock needs to agree with another). Permits a replica leased but did not use
//! stay counted until it hands them back once their bucket is over, so a lease may refuse
//! others early, never allow more. The +5 % SPEC tolerates is not needed.
//!
//! Cost on the request path: a lease is asked for synchronously (at most `timeout_ms`) when
//! a caller's first request in a sub-bucket finds none. It is sized from what the caller used
//! in its last sub-bucket, with half again for headroom (a caller new to the replica: 4, up to
//! a tenth of the limit), and the unused rest of the expired
//! lease is handed back by the same call (one store operation per caller and sub-bucket for a
//! steady caller, not three). A lease that would run dry before its bucket ends at the rate it
//! is being spent asks for more in the background (twice its size, up to a tenth of the
//! limit); only a caller that outruns that waits a second time.

use super::window::SUB_BUCKETS;
use crate::shared_state::Grant;

/// One caller's lease under one quota, on this replica.
#[derive(Debug, Clone, Default)]
pub struct Lease {
    bucket: u64,
    /// When the lease was asked for (local ms): its spending rate is `used` since then.
    since_ms: u64,
    /// The lease may be used before this (local ms).
    until_ms: u64,
    granted: u32,
    used: u32,
    /// Used of the lease of the previous bucket: the next first lease's size.
    demand: u32,
    /// The store refused: refused here too until then, without asking.
    denied_until_ms: u64,
    /// When the count over the window drops (local ms).
    free_at_ms: u64,
    /// Requests the store counted over the window at the last grant.
    counted: u64,
    /// A top-up is on its way.
    refilling: bool,
}

/// What a lease says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Allowed {
        bucket: u64,
        remaining: u64,
        reset_ms: u64,
        /// Ask the store for this many more in the background.
        refill: Option<u32>,
    },
    Refused {
        retry_ms: u64,
    },
    /// No usable lease: ask the store for this many (and wait), handing back the unused rest
    /// of the expired lease (its bucket, how many) in the same call.
    Ask {
        want: u32,
        give_back: Option<(u64, u32)>,
    },
}

/// A caller's first lease on a replica (at most `max_lease`): a caller that comes back is
/// then served from it and tops it up in the background, instead of waiting on the store for
/// its second request and again for its fourth.
const FIRST_LEASE: u32 = 4;

/// The largest lease: a tenth of the limit, so one replica's unused permits never hold much
/// of the window from the others.
fn max_lease(limit: u64) -> u32 {
    (limit / (SUB_BUCKETS + 1)).clamp(1, u32::MAX as u64) as u32
}

impl Lease {
    /// A request at `now_ms`.
    pub fn take(&mut self, limit: u64, now_ms: u64) -> Step {
        if now_ms < self.denied_until_ms {
            return Step::Refused {
                retry_ms: self.free_at_ms.saturating_sub(now_ms).max(1),
            };
        }
        if now_ms < self.until_ms && self.used < self.granted {
            self.used += 1;
            let left = self.granted - self.used;
            // At the rate it has been spent since it was asked for (the requests after the
            // first, over the time since), would the lease run dry before its bucket ends?
            // Then top it up now, in the background.
            let spent_in = now_ms.saturating_sub(self.since_ms).max(1);
            let dry =
                u64::from(left) * spent_in < u64::from(self.used - 1) * (self.until_ms - now_ms);
            let refill = (!self.refilling && dry).then(|| {
                self.refilling = true;
                self.granted.saturating_mul(2).min(max_lease(limit))
            });
            return Step::Allowed {
                bucket: self.bucket,
                remaining: self.remaining(limit),
                reset_ms: self.free_at_ms.saturating_sub(now_ms),
                refill,
            };
        }
        if now_ms < self.until_ms {
            // Spent within its bucket: a busier caller than the lease was sized for.
            return Step::Ask {
                want: self.granted.saturating_mul(2).clamp(1, max_lease(limit)),
                give_back: None,
            };
        }
        // Its bucket is over: what it did not use goes back with the next ask (and is no
        // longer this lease's to hand back), and the next is sized from what it used. A
        // caller new to this replica starts with a few, so its next requests need no wait.
        let unused = self.granted - self.used;
        self.granted = self.used;
        let used = self.demand.max(self.used);
        let want = if self.until_ms == 0 {
            FIRST_LEASE
        } else {
            used.saturating_add(used / 2).saturating_add(1)
        };
        Step::Ask {
            want: want.clamp(1, max_lease(limit)),
            give_back: (unused > 0).then_some((self.bucket, unused)),
        }
    }

    /// The store's answer to a request made at `asked_ms`; with `take_one`, for a request
    /// waiting on it. Returns the request's step (when `take_one`) and unused permits of an
    /// older bucket to hand back.
    pub fn install(
        &mut self,
        grant: Grant,
        limit: u64,
        asked_ms: u64,
        take_one: bool,
    ) -> (Option<Step>, Option<(u64, u32)>) {
        let until = asked_ms + grant.ms_left;
        // A top-up that arrives after a newer bucket's lease: handed back whole.
        if !take_one && grant.bucket < self.bucket {
            self.refilling = false;
            return (
                None,
                (grant.granted > 0).then_some((grant.bucket, grant.granted)),
            );
        }
        let mut give_back = None;
        if grant.bucket == self.bucket && self.until_ms > asked_ms {
            self.granted += grant.granted;
            self.until_ms = self.until_ms.min(until);
        } else {
            let unused = self.granted - self.used;
            if unused > 0 && grant.bucket != self.bucket {
                give_back = Some((self.bucket, unused));
            }
            self.demand = self.used;
            self.bucket = grant.bucket;
            self.since_ms = asked_ms;
            self.until_ms = until;
            self.granted = grant.granted;
            self.used = 0;
        }
        self.counted = grant.counted;
        self.free_at_ms = asked_ms + grant.free_in_ms;
        if !take_one {
            self.refilling = false;
            return (None, give_back);
        }
        let step = if self.used < self.granted {
            self.used += 1;
            Step::Allowed {
                bucket: self.bucket,
                remaining: self.remaining(limit),
                reset_ms: grant.free_in_ms,
                refill: None,
            }
        } else {
            // Used up until this bucket ends (counts only drop when a bucket leaves).
            self.denied_until_ms = until;
            Step::Refused {
                retry_ms: grant.free_in_ms.max(1),
            }
        };
        (Some(step), give_back)
    }

    /// A top-up that did not come.
    pub fn refill_failed(&mut self) {
        self.refilling = false;
    }

    /// Give back a request allowed from the lease of `bucket` (another quota refused it).
    pub fn undo(&mut self, bucket: u64) {
        if bucket == self.bucket && self.used > 0 {
            self.used -= 1;
        }
    }

    /// What is left for the caller, as far as this replica knows: the window's room at the
    /// last grant, plus what this lease still holds.
    fn remaining(&self, limit: u64) -> u64 {
        limit.saturating_sub(self.counted) + (self.granted - self.used) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(granted: u32, bucket: u64, ms_left: u64, counted: u64) -> Grant {
        Grant {
            granted,
            bucket,
            ms_left,
            free_in_ms: 900,
            counted,
        }
    }

    #[test]
    fn a_lease_serves_until_spent_or_its_bucket_ends_and_tops_up_before_it_runs_dry() {
        let mut l = Lease::default();
        // A caller new here asks for a first lease of 4.
        assert_eq!(
            l.take(100, 1_000),
            Step::Ask {
                want: 4,
                give_back: None
            }
        );
        // A lease of 4 asked at 1_000 for a bucket that ends at 1_100.
        let (step, back) = l.install(grant(4, 10, 100, 4), 100, 1_000, true);
        assert!(
            matches!(step, Some(Step::Allowed { remaining: 99, .. })),
            "{step:?}"
        );
        assert_eq!(back, None);
        // 2 used in 20 ms, 2 left for 80 ms: at that rate it runs dry, so it tops up (twice
        // its size), one top-up at a time.
        assert!(matches!(
            l.take(100, 1_020),
            Step::Allowed {
                refill: Some(8),
                ..
            }
        ));
        assert!(matches!(
            l.take(100, 1_021),
            Step::Allowed { refill: None, .. }
        ));
        assert!(matches!(l.take(100, 1_022), Step::Allowed { .. }));
        // Spent within its bucket: ask for twice as many, nothing to hand back.
        assert_eq!(
            l.take(100, 1_040),
            Step::Ask {
                want: 8,
                give_back: None
            }
        );
        // The bucket ends at 1_090 (asked at 1_040 + 50 left): never used past it.
        l.install(grant(8, 10, 50, 12), 100, 1_040, false);
        assert!(matches!(l.take(100, 1_089), Step::Allowed { .. }));
        // Over: the next is sized from what was used (5, and half again), and the unused 7
        // go back with that same ask, once.
        assert_eq!(
            l.take(100, 1_090),
            Step::Ask {
                want: 8,
                give_back: Some((10, 7))
            }
        );
        let (_, back) = l.install(grant(8, 11, 100, 13), 100, 1_090, true);
        assert_eq!(back, None);
        // A late top-up of the old bucket goes back whole; the new lease stays.
        let (_, back) = l.install(grant(3, 10, 0, 17), 100, 1_040, false);
        assert_eq!(back, Some((10, 3)));
        assert!(matches!(
            l.take(100, 1_095),
            Step::Allowed { bucket: 11, .. }
        ));
    }

    #[test]
    fn a_steady_caller_whose_lease_lasts_its_bucket_does_not_top_up() {
        let mut l = Lease::default();
        // 15 granted at 0 for a bucket ending at 1_000 (sized for 10 with half again); one
        // request every 100 ms uses 10.
        l.install(grant(15, 5, 1_000, 15), 1_000, 0, true);
        for t in 1..10 {
            assert!(
                matches!(l.take(1_000, t * 100), Step::Allowed { refill: None, .. }),
                "at {} ms",
                t * 100
            );
        }
    }

    #[test]
    fn a_refused_caller_is_refused_here_until_the_bucket_ends() {
        let mut l = Lease::default();
        let (step, _) = l.install(grant(0, 10, 30, 10), 10, 1_000, true);
        assert_eq!(step, Some(Step::Refused { retry_ms: 900 }));
        assert_eq!(l.take(10, 1_029), Step::Refused { retry_ms: 871 });
        assert_eq!(
            l.take(10, 1_030),
            Step::Ask {
                want: 1,
                give_back: None
            }
        );
    }
}

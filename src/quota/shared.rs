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
//! a caller's first request in a sub-bucket finds none; a lease half spent asks for the next
//! one in the background (twice the size, up to a tenth of the limit), so a steady caller
//! meets the store once per sub-bucket at most, and a burst a few times.

use super::window::SUB_BUCKETS;
use crate::shared_state::Grant;

/// One caller's lease under one quota, on this replica.
#[derive(Debug, Clone, Default)]
pub struct Lease {
    bucket: u64,
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
    /// No usable lease: ask the store for this many (and wait).
    Ask {
        want: u32,
    },
}

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
            let refill = (!self.refilling && left <= self.granted / 2).then(|| {
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
        let want = if now_ms < self.until_ms {
            // Spent within its bucket: a busier caller than the lease was sized for.
            self.granted.saturating_mul(2)
        } else {
            self.demand.max(self.used)
        };
        Step::Ask {
            want: want.clamp(1, max_lease(limit)),
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
    fn a_lease_serves_until_spent_or_its_bucket_ends_and_tops_up_half_way() {
        let mut l = Lease::default();
        assert_eq!(l.take(100, 1_000), Step::Ask { want: 1 });
        let (step, back) = l.install(grant(4, 10, 50, 4), 100, 1_000, true);
        assert!(
            matches!(step, Some(Step::Allowed { remaining: 99, .. })),
            "{step:?}"
        );
        assert_eq!(back, None);
        assert!(matches!(
            l.take(100, 1_010),
            Step::Allowed {
                refill: Some(8),
                ..
            }
        ));
        // Only one top-up at a time.
        assert!(matches!(
            l.take(100, 1_020),
            Step::Allowed { refill: None, .. }
        ));
        assert!(matches!(l.take(100, 1_030), Step::Allowed { .. }));
        // Spent within its bucket: ask for twice as many.
        assert_eq!(l.take(100, 1_040), Step::Ask { want: 8 });
        // The bucket ends at 1_050 (asked at 1_000 + 50 left): never used past it.
        l.install(grant(8, 10, 40, 12), 100, 1_040, false);
        assert!(matches!(l.take(100, 1_049), Step::Allowed { .. }));
        assert_eq!(l.take(100, 1_050), Step::Ask { want: 5 });
        // The next bucket's lease hands back what the old one did not use.
        let (_, back) = l.install(grant(5, 11, 100, 17), 100, 1_050, true);
        assert_eq!(back, Some((10, 7)));
        // A late top-up of the old bucket goes back whole; the new lease stays.
        let (_, back) = l.install(grant(3, 10, 0, 17), 100, 1_040, false);
        assert_eq!(back, Some((10, 3)));
        assert!(matches!(
            l.take(100, 1_060),
            Step::Allowed { bucket: 11, .. }
        ));
    }

    #[test]
    fn a_refused_caller_is_refused_here_until_the_bucket_ends() {
        let mut l = Lease::default();
        let (step, _) = l.install(grant(0, 10, 30, 10), 10, 1_000, true);
        assert_eq!(step, Some(Step::Refused { retry_ms: 900 }));
        assert_eq!(l.take(10, 1_029), Step::Refused { retry_ms: 871 });
        assert_eq!(l.take(10, 1_030), Step::Ask { want: 1 });
    }
}

//! Quotas shared by every replica through `[shared_state]`, without a store round trip per
//! request: leases of a sub-bucket's budget.
//!
//! The store keeps, per quota and caller, one counter per sub-bucket (on the store's clock,
//! `TIME`), expiring on its own. A replica takes a lease of `want` requests with one atomic
//! script, either of the current sub-bucket `i` or, ahead of it, of the next one `i+1`: it
//! sums the counts of every bucket that shares a window (B+1 sub-buckets, B = `SUB_BUCKETS`)
//! with the one asked for that exist yet (`i-B..=i+1` for `i`, `i+1-B..=i+1` for `i+1`),
//! grants `min(want, limit - sum)`, and adds the grant to that bucket before answering. The
//! replica then allows requests from the lease, without I/O, while its bucket runs.
//!
//! The bound. (1) Every request any replica allows from a lease spends a permit that was
//! counted in the store before it was allowed, in the bucket that runs on the store's clock
//! when it is allowed: a lease of bucket `i` is used from its answer's arrival (a lease taken ahead: from
//! its arrival plus the time the store said was left of bucket `i`, never before `i+1` begins)
//! until the time the replica *asked* plus what was left (plus a bucket, for one taken ahead),
//! less a millisecond for the store's rounding: never after the bucket ends. (2) No B+1
//! consecutive buckets `k-B..=k` ever count more than `limit`: take the last grant into any of
//! them, into bucket `j`. When it was made, no bucket after `j+1` had a count (grants go to the
//! current bucket or the next), and its sum covered `j-B..=j+1` (current) or `j-B..=j` (ahead,
//! then nothing after `j` had a count): in both, every bucket of `k-B..=k` with a count, so
//! the sum it kept under the limit bounds them, and later grants go elsewhere; hand-backs only
//! lower counts. A window of `window_seconds` lies within some B+1 consecutive buckets, so
//! with (1), together the replicas never allow more than `limit` in any window (no clock needs
//! to agree with another). Permits a replica leased but did not use stay counted until it
//! hands them back once their bucket is over, so a lease may refuse others early, never allow
//! more.
//!
//! Credit: the +5 % SPEC tolerates, spent so that callers far from their limit need no store
//! call, and one back after a pause need not wait. A request that finds no usable lease is
//! allowed at once on credit while there is some: each replica allows at most
//! `credit(limit, n)` = limit / (40 n (B+1)) on credit per caller in each of its own
//! sub-buckets (of its own clock), `n` being the replicas sharing the store as this one last
//! heard from it (`SharedStore::replicas`: a replica spends credit only once every other has
//! counted it, and stops when it has not been heard). Once more than half of a sub-bucket's
//! credit is spent, the caller's lease is asked for in the background (a caller that needs
//! more has it before the credit runs out), and that ask, like any other, reports what the
//! sub-bucket spent on credit so far, counted in the store's sums from then on; what a caller
//! spent on credit without ever needing an ask is not counted in the store. The bound: a
//! window overlaps at most B+1 of a replica's sub-buckets, so with the set of replicas fixed
//! they together allow at most limit / 40 (2.5 %) on credit in any window, reported or not. A
//! change of the set (any number of replicas joining or leaving at once) lets each replica
//! spend at its old share for at most the one sub-bucket it is in, limit / (40 (B+1)) over
//! them all: up to ten changes within one window stay within the other 2.5 %. Leases keep (2)
//! (reported credit only lowers later grants), so together: at most the limit plus 5 %. Below
//! 440 requests per window the credit is 0: every lease is asked for as without credit.
//!
//! Cost on the request path: a request that finds no usable lease and no credit (a caller's
//! first request on a replica, a request that finds its lease spent or over with none taken
//! ahead) waits for a lease (at most `timeout_ms`). A lease is sized to what the caller is
//! expected to use, with half again for headroom (a caller new to the replica: 4; never more
//! than a tenth of the limit); the unused rest of an ended lease is handed back by the next
//! call. In the background, off the request path: a
//! lease that would run dry before its bucket ends, at the rate it is being spent, is topped
//! up; in the last quarter of its bucket, a lease in use takes the next bucket's ahead. So a
//! steady caller waits on the store once, when it first comes, and costs one background store
//! call per sub-bucket.

use super::window::SUB_BUCKETS;
use crate::shared_state::Grant;

/// One caller's lease under one quota, on this replica.
#[derive(Debug, Clone, Default)]
pub struct Lease {
    bucket: u64,
    /// When the lease was first used (local ms): its spending rate is `used` since then.
    since_ms: u64,
    /// When it was last used (local ms).
    last_ms: u64,
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
    /// A background ask (a top-up or the next bucket's lease) is on its way.
    refilling: bool,
    /// A request of this caller is waiting for the store's answer: the others wait for it
    /// too, instead of asking the store each.
    asking: bool,
    /// The next bucket's lease, taken ahead.
    next: Option<Next>,
    /// An ended lease's unused rest, handed back with the next ask.
    back: Option<(u64, u32)>,
    /// The sub-bucket (of this replica's clock) `credit_used` counts in.
    credit_bucket: u64,
    /// Requests allowed on credit in it.
    credit_used: u32,
    /// Requests allowed on credit the store has not been told of: reported with the next ask.
    unreported: u32,
}

/// The bucket of a request allowed on credit (no lease's).
pub const CREDIT: u64 = u64::MAX;

/// Requests a replica may allow on credit per caller and sub-bucket of its own, when `replicas`
/// share the store: a 40th of the limit (half the SPEC's 5 %) over the replicas and the B+1
/// sub-buckets a window overlaps (see the module's bound).
pub fn credit(limit: u64, replicas: u64) -> u32 {
    (limit / (40 * replicas.max(1) * (SUB_BUCKETS + 1))).min(u64::from(u32::MAX)) as u32
}

/// The smallest limit with any credit (for one replica).
pub const CREDIT_FROM: u64 = 40 * (SUB_BUCKETS + 1);

/// A lease of the next sub-bucket, taken while the current one still runs.
#[derive(Debug, Clone, Copy)]
struct Next {
    bucket: u64,
    /// Usable from (local ms): never before the bucket starts on the store's clock.
    from_ms: u64,
    /// And before this: never after it ends.
    until_ms: u64,
    granted: u32,
    counted: u64,
    free_at_ms: u64,
}

/// What a lease says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Allowed {
        bucket: u64,
        remaining: u64,
        reset_ms: u64,
        /// Ask the store in the background.
        refill: Option<Refill>,
    },
    Refused {
        retry_ms: u64,
    },
    /// No usable lease, and a request of this caller is asking the store already: wait for
    /// its answer, then take again.
    Join,
    /// No usable lease: ask the store for this many (and wait), handing back the unused rest
    /// of an ended lease (its bucket, how many) in the same call.
    Ask {
        want: u32,
        give_back: Option<(u64, u32)>,
        /// Requests allowed on credit, to count in the store.
        report: u32,
    },
}

/// A background ask: more of the current bucket, or the next bucket's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refill {
    pub want: u32,
    /// `TopUp`, `Next`, or `Credit`: the lease of a request allowed on credit.
    pub kind: Asked,
    pub give_back: Option<(u64, u32)>,
    /// Requests allowed on credit, to count in the store.
    pub report: u32,
}

/// What a grant was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// By a request that waits for it (and takes one of it).
    Waiting,
    /// More of the current bucket, in the background.
    TopUp,
    /// The next bucket's lease, in the background.
    Next,
    /// A lease for a caller whose request was allowed on credit, in the background (the
    /// caller's other requests without a usable lease wait for it, or spend credit too).
    Credit,
}

/// Permits to hand back to the store (at most two: an ended lease's and a stale one's).
pub type GiveBacks = [Option<(u64, u32)>; 2];

/// A caller's first lease on a replica (at most `max_lease`): a caller that comes back is
/// then served from it and tops it up in the background, instead of waiting on the store for
/// its second request and again for its fourth.
const FIRST_LEASE: u32 = 4;

/// The largest lease: a tenth of the limit, so one replica's unused permits never hold much
/// of the window from the others.
fn max_lease(limit: u64) -> u32 {
    (limit / (SUB_BUCKETS + 1)).clamp(1, u32::MAX as u64) as u32
}

/// Half again `n`, and one: what a lease is sized to when `n` is what it should last for.
fn headroom(n: u64, limit: u64) -> u32 {
    n.saturating_add(n / 2)
        .saturating_add(1)
        .clamp(1, u64::from(max_lease(limit))) as u32
}

impl Lease {
    /// A request at `now_ms`, under a quota of `limit` per window of sub-buckets `width_ms`,
    /// with `credit()` requests a sub-bucket this replica may allow before the store counts
    /// them (asked only when no lease serves the request).
    pub fn take(
        &mut self,
        limit: u64,
        width_ms: u64,
        now_ms: u64,
        credit: impl FnOnce() -> u32,
    ) -> Step {
        if now_ms < self.denied_until_ms {
            return Step::Refused {
                retry_ms: self.free_at_ms.saturating_sub(now_ms).max(1),
            };
        }
        if now_ms >= self.until_ms {
            self.move_on(now_ms);
        }
        if now_ms < self.until_ms && self.used < self.granted {
            self.used += 1;
            self.last_ms = now_ms;
            let refill = (!self.refilling)
                .then(|| self.refill(limit, width_ms, now_ms))
                .flatten();
            if refill.is_some() {
                self.refilling = true;
            }
            return Step::Allowed {
                bucket: self.bucket,
                remaining: self.remaining(limit),
                reset_ms: self.free_at_ms.saturating_sub(now_ms),
                refill,
            };
        }
        // Nothing usable: allowed on credit while this sub-bucket has some, asking the store
        // for a lease, in the background, once more than half of it is spent (a caller that
        // needs more then has its lease before the credit runs out; one that needs no more
        // costs no store call). Then one request asks the store, the others wait for it.
        let credit = credit();
        if self.on_credit(credit, width_ms, now_ms) {
            let ask = (!self.asking && 2 * self.credit_used > credit).then(|| {
                self.asking = true;
                let (want, give_back) = self.ask_for(limit, width_ms, now_ms);
                Refill {
                    want,
                    kind: Asked::Credit,
                    give_back,
                    report: std::mem::take(&mut self.unreported),
                }
            });
            return self.allowed_on_credit(limit, now_ms, ask);
        }
        if self.asking {
            return Step::Join;
        }
        self.asking = true;
        let (want, give_back) = self.ask_for(limit, width_ms, now_ms);
        Step::Ask {
            want,
            give_back,
            report: std::mem::take(&mut self.unreported),
        }
    }

    /// Allow a request on credit, if this sub-bucket (of `width_ms`, on this replica's clock)
    /// has some left.
    fn on_credit(&mut self, credit: u32, width_ms: u64, now_ms: u64) -> bool {
        // A request that started earlier may come after one of a later sub-bucket: it counts
        // in the later one (a sub-bucket's credit is never given twice).
        let bucket = now_ms / width_ms.max(1);
        if bucket > self.credit_bucket {
            // What the last one spent and no ask reported stays unreported (see the bound).
            self.credit_bucket = bucket;
            self.credit_used = 0;
            self.unreported = 0;
        }
        if self.credit_used >= credit {
            return false;
        }
        self.credit_used += 1;
        self.unreported += 1;
        true
    }

    fn allowed_on_credit(&mut self, limit: u64, now_ms: u64, refill: Option<Refill>) -> Step {
        self.last_ms = now_ms;
        Step::Allowed {
            bucket: CREDIT,
            remaining: self.remaining(limit),
            reset_ms: self.free_at_ms.saturating_sub(now_ms),
            refill,
        }
    }

    /// What to ask the store for when nothing is usable at `now_ms`: how many, and the unused
    /// rest of an ended lease to hand back with it.
    fn ask_for(&mut self, limit: u64, width_ms: u64, now_ms: u64) -> (u32, Option<(u64, u32)>) {
        if now_ms < self.until_ms {
            // Spent within its bucket: a busier caller than the lease was sized for.
            return (
                self.granted.saturating_mul(2).clamp(1, max_lease(limit)),
                self.back.take(),
            );
        }
        // Its bucket is over: what it did not use goes back with the next ask (and is no
        // longer this lease's to hand back), and the next is sized from what it used, or
        // from the rate it was used at over a whole bucket (at most twice what it used), so
        // that a caller back after a pause need not top up. A caller new to this replica
        // starts with a few, so its next requests need no wait.
        let unused = self.granted - self.used;
        self.granted = self.used;
        let want = if self.until_ms == 0 {
            FIRST_LEASE.clamp(1, max_lease(limit))
        } else {
            let used = u64::from(self.demand.max(self.used));
            let spent_in = self.last_ms.saturating_sub(self.since_ms).max(1);
            let at_rate = u64::from(self.used.saturating_sub(1)) * width_ms / spent_in;
            headroom(at_rate.min(2 * used).max(used), limit)
        };
        let give_back = match unused {
            0 => self.back.take(),
            n => Some((self.bucket, n)),
        };
        (want, give_back)
    }

    /// The current lease is over at `now_ms`: the next bucket's, when one was taken ahead and
    /// its bucket has begun, takes its place; what the old one did not use is handed back.
    fn move_on(&mut self, now_ms: u64) {
        let Some(next) = self.next else {
            return;
        };
        if now_ms < next.from_ms {
            return;
        }
        self.next = None;
        if now_ms >= next.until_ms {
            // Taken for a bucket the caller sat out: all of it goes back.
            self.back = Some((next.bucket, next.granted));
            return;
        }
        let unused = self.granted - self.used;
        if unused > 0 {
            self.back = Some((self.bucket, unused));
        }
        self.demand = self.used;
        self.bucket = next.bucket;
        self.since_ms = now_ms;
        self.until_ms = next.until_ms;
        self.granted = next.granted;
        self.used = 0;
        self.counted = next.counted;
        self.free_at_ms = next.free_at_ms;
    }

    /// What to ask for in the background after a request allowed at `now_ms`, if anything.
    /// At the rate the lease has been spent since its first request (the requests after the
    /// first, over the time since): a lease that would run dry before its bucket ends is
    /// topped up to last it with half again; in the last quarter of its bucket, a lease still
    /// in use takes the next bucket's lease ahead, sized to a whole bucket at that rate.
    fn refill(&mut self, limit: u64, width_ms: u64, now_ms: u64) -> Option<Refill> {
        let left = u64::from(self.granted - self.used);
        let spent = u64::from(self.used - 1);
        let spent_in = now_ms.saturating_sub(self.since_ms).max(1);
        let to_go = self.until_ms - now_ms;
        if left * spent_in < spent * to_go {
            // At most twice the lease at a time: two quick requests are not a rate.
            let need = spent * to_go / spent_in;
            let want = headroom(need, limit).saturating_sub(left as u32);
            return Some(Refill {
                want: want.min(self.granted.saturating_mul(2)).max(1),
                kind: Asked::TopUp,
                give_back: self.back.take(),
                report: std::mem::take(&mut self.unreported),
            });
        }
        if self.next.is_none() && to_go <= width_ms / 4 {
            let whole = (spent * width_ms / spent_in)
                .min(2 * u64::from(self.granted))
                .max(u64::from(self.used));
            return Some(Refill {
                want: headroom(whole, limit),
                kind: Asked::Next,
                give_back: self.back.take(),
                report: std::mem::take(&mut self.unreported),
            });
        }
        None
    }

    /// The store's answer to an ask made at `asked_ms`, received at `received_ms`. Returns
    /// the waiting request's step (when `Asked::Waiting`) and permits to hand back.
    pub fn install(
        &mut self,
        grant: Grant,
        limit: u64,
        width_ms: u64,
        (asked_ms, received_ms): (u64, u64),
        asked: Asked,
    ) -> (Option<Step>, GiveBacks) {
        let mut back: GiveBacks = [None, None];
        self.ask_over(asked);
        // The store's answer came after the ask and before it arrived (one ms off for the
        // store's rounding). The current bucket ends `ms_left` after that answer; the next
        // bucket, asked for ahead, starts then and ends a bucket later.
        let start_by = received_ms + grant.ms_left + 1;
        let mut ends_after = (asked_ms + grant.ms_left).saturating_sub(1);
        if asked == Asked::Next {
            ends_after += width_ms;
        }
        if asked == Asked::Next && grant.bucket > self.bucket {
            // One taken ahead before (for another bucket, the store's clock having moved on
            // meanwhile) goes back whole.
            back[0] = self.next.take().map(|old| (old.bucket, old.granted));
            if grant.granted > 0 {
                self.next = Some(Next {
                    bucket: grant.bucket,
                    from_ms: start_by,
                    until_ms: ends_after,
                    granted: grant.granted,
                    counted: grant.counted,
                    free_at_ms: asked_ms + grant.free_in_ms,
                });
            }
            return (None, back);
        }
        // A background grant that arrives after a newer bucket's lease: handed back whole.
        if asked != Asked::Waiting && grant.bucket < self.bucket {
            back[0] = (grant.granted > 0).then_some((grant.bucket, grant.granted));
            return (None, back);
        }
        back[1] = self.store_moved_on(grant.bucket, received_ms, ends_after);
        if grant.bucket == self.bucket && self.until_ms > asked_ms {
            self.granted += grant.granted;
            self.until_ms = self.until_ms.min(ends_after);
        } else {
            let unused = self.granted - self.used;
            if unused > 0 && grant.bucket != self.bucket {
                back[0] = Some((self.bucket, unused));
            }
            self.demand = self.used;
            self.bucket = grant.bucket;
            self.since_ms = asked_ms;
            self.until_ms = ends_after;
            self.granted = grant.granted;
            self.used = 0;
        }
        self.counted = grant.counted;
        self.free_at_ms = asked_ms + grant.free_in_ms;
        if asked == Asked::Credit && self.used >= self.granted {
            // Nothing granted for a caller allowed on credit: refused here until the bucket
            // ends, as a waiting request would have been.
            self.denied_until_ms = ends_after;
        }
        if asked != Asked::Waiting {
            return (None, back);
        }
        self.last_ms = asked_ms;
        (
            Some(self.take_granted(limit, grant.free_in_ms, ends_after)),
            back,
        )
    }

    /// The store answered in `bucket`, received at `received_ms`: a lease taken ahead for that
    /// bucket serves from now (its bucket has begun), until `ends_after` at the latest; one
    /// for an older bucket is returned, to hand back.
    fn store_moved_on(
        &mut self,
        bucket: u64,
        received_ms: u64,
        ends_after: u64,
    ) -> Option<(u64, u32)> {
        let next = self.next?;
        if next.bucket == bucket {
            self.move_on(next.from_ms.max(received_ms));
            self.until_ms = self.until_ms.min(ends_after);
        } else if next.bucket < bucket {
            self.next = None;
            return Some((next.bucket, next.granted));
        }
        None
    }

    /// The waiting request's step once a grant is in: one of it, or refused until the
    /// bucket ends (counts only drop when a bucket leaves).
    fn take_granted(&mut self, limit: u64, free_in_ms: u64, ends_after: u64) -> Step {
        if self.used < self.granted {
            self.used += 1;
            Step::Allowed {
                bucket: self.bucket,
                remaining: self.remaining(limit),
                reset_ms: free_in_ms,
                refill: None,
            }
        } else {
            self.denied_until_ms = ends_after;
            Step::Refused {
                retry_ms: free_in_ms.max(1),
            }
        }
    }

    /// An ask is over (answered, or without a grant: failed, or its request gone): the next
    /// request that needs one asks again.
    pub fn ask_over(&mut self, asked: Asked) {
        match asked {
            Asked::Waiting | Asked::Credit => self.asking = false,
            Asked::TopUp | Asked::Next => self.refilling = false,
        }
    }

    /// Give back a request allowed from the lease of `bucket`, or on credit (another quota
    /// refused it).
    pub fn undo(&mut self, bucket: u64) {
        if bucket == CREDIT {
            self.credit_used = self.credit_used.saturating_sub(1);
            self.unreported = self.unreported.saturating_sub(1);
        } else if bucket == self.bucket && self.used > 0 {
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

    /// Sub-buckets of a second: the last quarter is its last 250 ms.
    const W: u64 = 1_000;

    fn grant(granted: u32, bucket: u64, ms_left: u64, counted: u64) -> Grant {
        Grant {
            granted,
            bucket,
            ms_left,
            free_in_ms: 900,
            counted,
        }
    }

    fn allowed(step: Step) -> (u64, Option<Refill>) {
        match step {
            Step::Allowed { bucket, refill, .. } => (bucket, refill),
            other => panic!("not allowed: {other:?}"),
        }
    }

    #[test]
    fn a_lease_serves_until_spent_or_its_bucket_ends_and_tops_up_before_it_runs_dry() {
        let mut l = Lease::default();
        // A caller new here asks for a first lease of 4.
        assert_eq!(
            l.take(100, W, 1_000, || 0),
            Step::Ask {
                want: 4,
                give_back: None,
                report: 0
            }
        );
        // A lease of 4 asked at 1_000 for a bucket with 100 ms left: used before 1_099.
        let (step, back) = l.install(grant(4, 10, 100, 4), 100, W, (1_000, 1_000), Asked::Waiting);
        assert!(
            matches!(step, Some(Step::Allowed { remaining: 99, .. })),
            "{step:?}"
        );
        assert_eq!(back, [None, None]);
        // 2 used in 20 ms, 2 left for 79: at that rate it runs dry, so it is topped up to
        // last (3 more, half again, less the 2 left), one top-up at a time.
        let top_up = Refill {
            want: 3,
            kind: Asked::TopUp,
            give_back: None,
            report: 0,
        };
        assert_eq!(allowed(l.take(100, W, 1_020, || 0)), (10, Some(top_up)));
        assert_eq!(allowed(l.take(100, W, 1_021, || 0)), (10, None));
        assert_eq!(allowed(l.take(100, W, 1_022, || 0)), (10, None));
        // Spent within its bucket: ask for twice as many, nothing to hand back.
        assert_eq!(
            l.take(100, W, 1_040, || 0),
            Step::Ask {
                want: 8,
                give_back: None,
                report: 0
            }
        );
        // Meanwhile another request of the caller waits for that answer instead of asking.
        assert_eq!(l.take(100, W, 1_040, || 0), Step::Join);
        // The request that asked gave up waiting (its ask is over); the grant comes as a
        // top-up would. The bucket ends at 1_089 (asked at 1_040 + 50 left, less a ms): never
        // used past it. In its last quarter, the next bucket's lease is asked for ahead.
        l.ask_over(Asked::Waiting);
        l.install(grant(8, 10, 50, 12), 100, W, (1_040, 1_041), Asked::TopUp);
        let (_, refill) = allowed(l.take(100, W, 1_088, || 0));
        assert!(
            matches!(
                refill,
                Some(Refill {
                    kind: Asked::Next,
                    ..
                })
            ),
            "{refill:?}"
        );
        // Over with none ahead: the next is sized from the rate it was used at (5 in 88 ms,
        // so a whole bucket would take more than twice 5: twice 5 with half again, capped at
        // a tenth of the limit, 9), and the unused 7 go back with that same ask, once.
        assert_eq!(
            l.take(100, W, 1_089, || 0),
            Step::Ask {
                want: 9,
                give_back: Some((10, 7)),
                report: 0
            }
        );
        assert_eq!(l.take(100, W, 1_089, || 0), Step::Join);
        let (_, back) = l.install(
            grant(8, 11, 100, 13),
            100,
            W,
            (1_089, 1_090),
            Asked::Waiting,
        );
        assert_eq!(back, [None, None]);
        // Answered: the request that waited for it is served from the new lease.
        assert_eq!(allowed(l.take(100, W, 1_090, || 0)).0, 11);
        // A late top-up of the old bucket goes back whole; the new lease stays.
        let (_, back) = l.install(grant(3, 10, 0, 17), 100, W, (1_040, 1_095), Asked::TopUp);
        assert_eq!(back, [Some((10, 3)), None]);
        assert_eq!(allowed(l.take(100, W, 1_095, || 0)).0, 11);
    }

    #[test]
    fn a_steady_caller_does_not_top_up_and_takes_the_next_lease_in_the_last_quarter() {
        let mut l = Lease::default();
        // 15 granted at 0 for a bucket ending at 999 (sized for 10 with half again); one
        // request every 100 ms uses 10.
        l.install(grant(15, 5, 1_000, 15), 1_000, W, (0, 0), Asked::Waiting);
        for t in 1..8 {
            assert_eq!(
                allowed(l.take(1_000, W, t * 100, || 0)),
                (5, None),
                "at {}",
                t * 100
            );
        }
        // 8 used in 800 ms: 10 a bucket, with half again.
        let ahead = Refill {
            want: 16,
            kind: Asked::Next,
            give_back: None,
            report: 0,
        };
        assert_eq!(allowed(l.take(1_000, W, 800, || 0)), (5, Some(ahead)));
        assert_eq!(allowed(l.take(1_000, W, 900, || 0)), (5, None));
    }

    #[test]
    fn a_lease_taken_ahead_serves_from_its_bucket_on_without_a_wait() {
        let mut l = Lease::default();
        l.install(grant(5, 10, 1_000, 5), 100, W, (0, 0), Asked::Waiting);
        assert_eq!(allowed(l.take(100, W, 400, || 0)), (10, None));
        let (_, refill) = allowed(l.take(100, W, 800, || 0));
        assert_eq!(
            refill,
            Some(Refill {
                want: 5,
                kind: Asked::Next,
                give_back: None,
                report: 0
            })
        );
        // Asked at 800, answered by 810 with 150 ms left: bucket 11 begins by 961 and ends
        // after 1_949; bucket 10's lease still serves until 999.
        let (_, back) = l.install(grant(5, 11, 150, 8), 100, W, (800, 810), Asked::Next);
        assert_eq!(back, [None, None]);
        assert_eq!(allowed(l.take(100, W, 950, || 0)), (10, None));
        // Bucket 10's lease is over: bucket 11's takes its place, no ask.
        assert_eq!(allowed(l.take(100, W, 999, || 0)), (11, None));
        assert_eq!(allowed(l.take(100, W, 1_400, || 0)), (11, None));
        // What bucket 10's lease left (one) goes back with the next ask ahead.
        let (_, refill) = allowed(l.take(100, W, 1_800, || 0));
        assert!(
            matches!(
                refill,
                Some(Refill {
                    kind: Asked::Next,
                    give_back: Some((10, 1)),
                    ..
                })
            ),
            "{refill:?}"
        );
    }

    #[test]
    fn a_lease_taken_ahead_for_a_bucket_the_caller_sat_out_goes_back_whole() {
        let mut l = Lease::default();
        l.install(grant(5, 10, 1_000, 5), 100, W, (0, 0), Asked::Waiting);
        let (_, refill) = allowed(l.take(100, W, 800, || 0));
        assert!(matches!(
            refill,
            Some(Refill {
                kind: Asked::Next,
                ..
            })
        ));
        l.install(grant(4, 11, 150, 9), 100, W, (800, 800), Asked::Next);
        // Back at 2_500: bucket 11 is over too. Bucket 10's rest goes back with the ask,
        // bucket 11's whole lease with the next.
        assert_eq!(
            l.take(100, W, 2_500, || 0),
            Step::Ask {
                want: 4,
                give_back: Some((10, 3)),
                report: 0
            }
        );
        l.install(grant(4, 12, 500, 4), 100, W, (2_500, 2_501), Asked::Waiting);
        let (_, refill) = allowed(l.take(100, W, 2_900, || 0));
        assert!(
            matches!(
                refill,
                Some(Refill {
                    give_back: Some((11, 4)),
                    ..
                })
            ),
            "{refill:?}"
        );
    }

    #[test]
    fn a_grant_for_the_bucket_of_a_lease_taken_ahead_joins_it() {
        let mut l = Lease::default();
        l.install(grant(5, 10, 1_000, 5), 100, W, (0, 0), Asked::Waiting);
        // Taken ahead at 700, answered by 900 with 200 ms left: usable from 1_101 only.
        l.install(grant(4, 11, 200, 9), 100, W, (700, 900), Asked::Next);
        // At 1_000 bucket 10's lease is over and bucket 11's not yet sure to have begun: ask.
        assert_eq!(
            l.take(100, W, 1_000, || 0),
            Step::Ask {
                want: 2,
                give_back: Some((10, 4)),
                report: 0
            }
        );
        // The store says bucket 11 has begun: its lease taken ahead and the grant are one.
        let (step, back) = l.install(
            grant(2, 11, 950, 11),
            100,
            W,
            (1_000, 1_002),
            Asked::Waiting,
        );
        assert_eq!(back, [None, None]);
        assert_eq!(allowed(step.unwrap()).0, 11);
        for t in 1..6 {
            assert_eq!(allowed(l.take(100, W, 1_000 + t, || 0)).0, 11);
        }
        assert!(matches!(l.take(100, W, 1_010, || 0), Step::Ask { .. }));
    }

    #[test]
    fn a_caller_back_after_a_pause_gets_a_lease_for_its_rate_over_a_whole_bucket() {
        let mut l = Lease::default();
        // 3 requests, 200 ms apart, from a lease of 4 in a bucket of 1_000 ms: 2 in 400 ms
        // is 5 a bucket, within twice the 3 used; with half again, 8.
        l.install(grant(4, 10, 1_000, 4), 1_000, W, (0, 0), Asked::Waiting);
        allowed(l.take(1_000, W, 200, || 0));
        allowed(l.take(1_000, W, 400, || 0));
        assert_eq!(
            l.take(1_000, W, 5_000, || 0),
            Step::Ask {
                want: 8,
                give_back: Some((10, 1)),
                report: 0
            }
        );
    }

    #[test]
    fn a_caller_without_a_lease_is_allowed_on_credit_while_its_lease_comes_in_the_background() {
        let credit_ask = |report| Refill {
            want: 4,
            kind: Asked::Credit,
            give_back: None,
            report,
        };
        let mut l = Lease::default();
        // A new caller with a credit of 3 a sub-bucket: allowed at once, and no store call
        // while at most half of the credit is spent.
        assert_eq!(allowed(l.take(1_000, W, 1_000, || 3)), (CREDIT, None));
        // Past half: its first lease is asked for in the background, reporting both.
        assert_eq!(
            allowed(l.take(1_000, W, 1_001, || 3)),
            (CREDIT, Some(credit_ask(2)))
        );
        // While it is on its way: the last of the credit, then the next request waits.
        assert_eq!(allowed(l.take(1_000, W, 1_002, || 3)), (CREDIT, None));
        assert_eq!(l.take(1_000, W, 1_003, || 3), Step::Join);
        // The lease comes (no request waited on it as its own): served from it; the third
        // request on credit is reported with the next ask, the top-up.
        let (step, back) = l.install(
            grant(4, 10, 500, 6),
            1_000,
            W,
            (1_001, 1_004),
            Asked::Credit,
        );
        assert_eq!((step, back), (None, [None, None]));
        assert_eq!(allowed(l.take(1_000, W, 1_004, || 3)), (10, None));
        let (bucket, refill) = allowed(l.take(1_000, W, 1_005, || 3));
        assert_eq!(bucket, 10);
        assert!(
            matches!(
                refill,
                Some(Refill {
                    kind: Asked::TopUp,
                    report: 1,
                    ..
                })
            ),
            "{refill:?}"
        );
        allowed(l.take(1_000, W, 1_006, || 3));
        allowed(l.take(1_000, W, 1_007, || 3));
        // Spent, with this sub-bucket's credit spent too: it asks, and waits.
        assert!(matches!(
            l.take(1_000, W, 1_008, || 3),
            Step::Ask { report: 0, .. }
        ));

        // Another quota refused a request allowed on credit: taken back, it is not reported.
        let mut l = Lease::default();
        let (bucket, _) = allowed(l.take(1_000, W, 5_000, || 3));
        l.undo(bucket);
        assert_eq!(allowed(l.take(1_000, W, 5_001, || 3)), (CREDIT, None));
        assert_eq!(
            allowed(l.take(1_000, W, 5_002, || 3)),
            (CREDIT, Some(credit_ask(2)))
        );
        assert_eq!(allowed(l.take(1_000, W, 5_003, || 3)), (CREDIT, None));
        assert_eq!(l.take(1_000, W, 5_004, || 3), Step::Join);
        // The store grants nothing (other replicas used the quota up): refused here until the
        // bucket ends, credit or not; in the next sub-bucket there is credit again.
        l.install(
            grant(0, 14, 300, 1_000),
            1_000,
            W,
            (5_002, 5_003),
            Asked::Credit,
        );
        assert!(matches!(
            l.take(1_000, W, 5_100, || 3),
            Step::Refused { .. }
        ));
        assert!(matches!(
            l.take(1_000, W, 5_300, || 3),
            Step::Refused { .. }
        ));
        assert_eq!(allowed(l.take(1_000, W, 6_000, || 3)), (CREDIT, None));
        // What a sub-bucket spent on credit and no ask reported is not carried to the next.
        assert_eq!(allowed(l.take(1_000, W, 7_000, || 3)), (CREDIT, None));
        assert_eq!(
            allowed(l.take(1_000, W, 7_001, || 3)).1.map(|r| r.report),
            Some(2)
        );
        // A request that started in the sub-bucket before (and came late) spends this one's
        // credit, not a fresh one of its own.
        assert_eq!(allowed(l.take(1_000, W, 6_999, || 3)), (CREDIT, None));
        assert_eq!(l.take(1_000, W, 6_998, || 3), Step::Join);
    }

    #[test]
    fn credit_is_a_fortieth_of_the_limit_over_the_replicas_and_sub_buckets() {
        assert_eq!(CREDIT_FROM, 440);
        assert_eq!(credit(439, 1), 0);
        assert_eq!(credit(440, 1), 1);
        assert_eq!(credit(880, 2), 1);
        assert_eq!(credit(879, 2), 0);
        assert_eq!(credit(44_000, 4), 25);
        assert_eq!(credit(1_000_000, 1), 2_272);
    }

    #[test]
    fn a_refused_caller_is_refused_here_until_the_bucket_ends() {
        let mut l = Lease::default();
        let (step, _) = l.install(grant(0, 10, 30, 10), 10, W, (1_000, 1_000), Asked::Waiting);
        assert_eq!(step, Some(Step::Refused { retry_ms: 900 }));
        assert_eq!(l.take(10, W, 1_028, || 0), Step::Refused { retry_ms: 872 });
        assert_eq!(
            l.take(10, W, 1_029, || 0),
            Step::Ask {
                want: 1,
                give_back: None,
                report: 0
            }
        );
    }
}

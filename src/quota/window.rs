//! One caller's count under one quota: a sliding window of `SUB_BUCKETS` sub-buckets, counted
//! conservatively. The time is passed in (milliseconds on a monotonic clock), so every edge is
//! tested without sleeping.
//!
//! The window is cut into sub-buckets of `width = window / SUB_BUCKETS`; bucket `i` holds the
//! requests allowed in `[i*width, (i+1)*width)`. At time `t` in bucket `i` the count is the sum
//! of buckets `i-SUB_BUCKETS..=i`: the whole window before `t`, plus the part of the oldest
//! bucket that is already older than a window. A request is allowed when that sum is below the
//! limit. Why never more than `limit` in any window `(s - window, s]`: every request in it lies
//! in buckets `idx(s)-SUB_BUCKETS..=idx(s)`, so when the last of them was allowed (at `t <= s`,
//! bucket `idx(t) <= idx(s)`) all earlier ones were in the sum, which was below `limit`. The
//! price: up to one sub-bucket's worth of requests (those of the oldest bucket already out of
//! the window) still counts, so a caller may be refused up to `width` early, never allowed more.

/// Sub-buckets per window: the count may hold requests up to a tenth of a window too old.
pub const SUB_BUCKETS: u64 = crate::shared_state::SUB_BUCKETS;
/// Buckets `i-SUB_BUCKETS..=i`.
const SLOTS: usize = SUB_BUCKETS as usize + 1;

/// The counts of the buckets a window overlaps, as a ring.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// The newest bucket counted into.
    head: u64,
    counts: [u32; SLOTS],
}

/// What `Window::take` decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Counted in `bucket`; `remaining` more fit now; in `reset_ms` a counted request leaves.
    Allowed {
        bucket: u64,
        remaining: u64,
        reset_ms: u64,
    },
    /// Over the limit; in `retry_ms` one more request fits.
    Refused { retry_ms: u64 },
}

impl Window {
    /// Count a request at `now_ms` if it fits under `limit`.
    pub fn take(&mut self, limit: u64, width_ms: u64, now_ms: u64) -> Take {
        let i = self.advance(now_ms / width_ms.max(1));
        let sum: u64 = self.counts.iter().map(|&c| c as u64).sum();
        if sum >= limit {
            return Take::Refused {
                retry_ms: self.free_in(i, limit, width_ms, now_ms, sum),
            };
        }
        let slot = &mut self.counts[(i % SLOTS as u64) as usize];
        *slot = slot.saturating_add(1);
        Take::Allowed {
            bucket: i,
            remaining: limit - sum - 1,
            reset_ms: self.free_in(i, limit, width_ms, now_ms, sum + 1),
        }
    }

    /// Take back a request counted in `bucket` (another quota of the route refused it).
    pub fn undo(&mut self, bucket: u64) {
        if bucket + SUB_BUCKETS >= self.head && bucket <= self.head {
            let slot = &mut self.counts[(bucket % SLOTS as u64) as usize];
            *slot = slot.saturating_sub(1);
        }
    }

    /// Whether nothing it counted is in the window at bucket `i` any more.
    pub fn expired(&self, now_ms: u64, width_ms: u64) -> bool {
        now_ms / width_ms.max(1) > self.head + SUB_BUCKETS
    }

    /// Move to bucket `i`, clearing the buckets that left the window. A clock that went back
    /// counts into the newest bucket (counts are never lost).
    fn advance(&mut self, i: u64) -> u64 {
        if i > self.head {
            let stale = (i - self.head).min(SLOTS as u64);
            for k in 1..=stale {
                self.counts[((self.head + k) % SLOTS as u64) as usize] = 0;
            }
            self.head = i;
        }
        self.head
    }

    /// Milliseconds until the count drops: below `limit` when it is at or over it, else by the
    /// next counted request that leaves. Bucket `i-SUB_BUCKETS+k` leaves when bucket `i+k+1`
    /// starts.
    fn free_in(&self, i: u64, limit: u64, width_ms: u64, now_ms: u64, sum: u64) -> u64 {
        let mut left = sum;
        for k in 0..SLOTS as u64 {
            let c = self.counts[((i + 1 + k) % SLOTS as u64) as usize] as u64;
            left -= c;
            if (sum >= limit && left < limit) || (sum < limit && c > 0) {
                return ((i + k + 1) * width_ms).saturating_sub(now_ms);
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 100; // a 1 s window: 10 sub-buckets of 100 ms

    fn allowed(t: Take) -> bool {
        matches!(t, Take::Allowed { .. })
    }

    #[test]
    fn the_limit_th_request_is_allowed_and_the_next_refused_until_a_sub_bucket_leaves() {
        let mut w = Window::default();
        // 10 at t = 5_050 ms (bucket 50), limit 10.
        for n in 0..10 {
            let t = w.take(10, W, 5_050);
            assert!(allowed(t), "request {n}");
            if n == 9 {
                assert_eq!(
                    t,
                    Take::Allowed {
                        bucket: 50,
                        remaining: 0,
                        reset_ms: 6_100 - 5_050
                    }
                );
            }
        }
        // The 11th is refused; bucket 50 leaves the sum when bucket 61 starts (6_100 ms).
        assert_eq!(w.take(10, W, 5_050), Take::Refused { retry_ms: 1_050 });
        assert_eq!(w.take(10, W, 6_099), Take::Refused { retry_ms: 1 });
        // At 6_050 the requests of 5_050 are exactly one window old: counted conservatively
        // (their sub-bucket overlaps the window), so still refused. Never more than 10 in any
        // window, at the price of up to one sub-bucket early.
        assert!(!allowed(w.take(10, W, 6_050)));
        // Recovered: the whole limit again.
        for _ in 0..10 {
            assert!(allowed(w.take(10, W, 6_100)));
        }
        assert!(!allowed(w.take(10, W, 6_100)));
    }

    #[test]
    fn a_sliding_window_never_allows_more_than_the_limit_in_any_window() {
        // One request every 7 ms for 5 s, limit 20 per 1 s: check every window of allowed ones.
        let mut w = Window::default();
        let mut times = Vec::new();
        let mut t = 0;
        while t < 5_000 {
            if allowed(w.take(20, W, t)) {
                times.push(t);
            }
            t += 7;
        }
        for (a, &start) in times.iter().enumerate() {
            let in_window = times[a..]
                .iter()
                .take_while(|&&x| x < start + 1_000)
                .count();
            assert!(in_window <= 20, "{in_window} within a window from {start}");
        }
        // And not far below it (about 18 a second once steady: the conservative sub-bucket).
        assert!(times.len() >= 85, "{}", times.len());
    }

    #[test]
    fn retry_after_counts_from_the_oldest_bucket_that_brings_the_sum_below_the_limit() {
        let mut w = Window::default();
        assert!(allowed(w.take(3, W, 1_000))); // bucket 10
        assert!(allowed(w.take(3, W, 1_250))); // bucket 12
        assert!(allowed(w.take(3, W, 1_250)));
        // At bucket 15: sum 3; bucket 10 leaves at bucket 21 (2_100 ms).
        assert_eq!(w.take(3, W, 1_500), Take::Refused { retry_ms: 600 });
        // An undo frees a place at once.
        w.undo(12);
        assert!(allowed(w.take(3, W, 1_500)));
    }

    #[test]
    fn a_long_pause_clears_every_bucket_and_a_clock_going_back_loses_no_count() {
        let mut w = Window::default();
        for _ in 0..5 {
            assert!(allowed(w.take(5, W, 10_000)));
        }
        assert!(!allowed(w.take(5, W, 9_000)));
        assert!(!w.expired(11_000, W));
        assert!(w.expired(11_100, W));
        assert!(allowed(w.take(5, W, 1_000_000)));
    }
}

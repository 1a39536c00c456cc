//! Wall-clock time derived from a monotonic reading a request has already taken, so a request
//! reads the clock twice (start and end) instead of once more for its token checks and once
//! more for its access-log timestamp. Each worker re-anchors to the system clock once a
//! second, so a step of the system clock shows within a second.

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long an anchor serves before the system clock is read again.
const ANCHOR_FOR: Duration = Duration::from_secs(1);

thread_local! {
    /// A monotonic reading and the system time taken with it.
    static ANCHOR: Cell<Option<(Instant, SystemTime)>> = const { Cell::new(None) };
}

/// The system time at the monotonic instant `at`.
pub fn wall_at(at: Instant) -> SystemTime {
    ANCHOR.with(|anchor| {
        let (mono, wall) = match anchor.get() {
            Some((mono, wall)) if distance(at, mono) < ANCHOR_FOR => (mono, wall),
            _ => {
                let fresh = (Instant::now(), SystemTime::now());
                anchor.set(Some(fresh));
                fresh
            }
        };
        if at >= mono {
            wall + (at - mono)
        } else {
            wall - (mono - at)
        }
    })
}

/// Unix seconds at `at`.
pub fn unix_at(at: Instant) -> u64 {
    wall_at(at)
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn distance(a: Instant, b: Instant) -> Duration {
    if a >= b {
        a - b
    } else {
        b - a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: SystemTime, b: SystemTime) -> bool {
        let d = a.duration_since(b).or_else(|e| Ok::<_, ()>(e.duration()));
        d.unwrap() < Duration::from_millis(50)
    }

    #[test]
    fn wall_time_follows_the_system_clock_for_past_and_later_instants() {
        let (mono, wall) = (Instant::now(), SystemTime::now());
        assert!(close(wall_at(mono), wall));
        // An instant before the anchor, and one past its second (re-anchored).
        let later = mono + Duration::from_secs(5);
        assert!(close(wall_at(later), wall + Duration::from_secs(5)));
        assert!(close(wall_at(mono), wall));
        let expected = (wall + Duration::from_secs(5))
            .duration_since(UNIX_EPOCH)
            .unwrap();
        assert!(unix_at(later).abs_diff(expected.as_secs()) <= 1);
    }
}

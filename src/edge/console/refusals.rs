//! The last refusals (4xx answers scopegate decided itself), for the console. Each worker thread
//! writes into a bounded ring of its own, behind a lock only the console's reader ever contends
//! for; the reader merges the rings, newest first. A request that is not refused never touches
//! it.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// How many refusals the console lists (and each worker's ring keeps).
pub const KEPT: usize = 200;

/// Longest text kept of a request's path, host or `sub` (the rest is cut, marked `…`).
const MAX_TEXT: usize = 256;

/// One refused request: what the access log says of it. Never a token.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Refused {
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    pub method: String,
    pub host: String,
    pub path: String,
    pub route: String,
    pub status: u16,
    pub decision: &'static str,
    pub reason: Option<&'static str>,
    pub sub: Option<String>,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&super::super::access_log::Rfc3339(*t))
}

/// What one refusal is made from (borrowed from the request's record).
pub struct RefusedRef<'a> {
    pub time: SystemTime,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub decision: &'static str,
    pub reason: Option<&'static str>,
    pub sub: Option<&'a str>,
}

type Ring = Arc<Mutex<VecDeque<Refused>>>;

/// Every worker's ring.
pub struct RefusalLog {
    /// Tells this log's rings from another's in a thread's registry.
    id: usize,
    rings: Mutex<Vec<Ring>>,
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's ring in each refusal log it wrote to (in practice one).
    static MINE: RefCell<Vec<(usize, Ring)>> = const { RefCell::new(Vec::new()) };
}

fn cut(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_string();
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog::new()
    }
}

impl RefusalLog {
    pub fn new() -> RefusalLog {
        RefusalLog {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            rings: Mutex::new(Vec::new()),
        }
    }

    /// Keep a refusal in this thread's ring (the oldest goes when it is full).
    pub fn record(&self, r: &RefusedRef<'_>) {
        let refused = Refused {
            time: r.time,
            method: cut(r.method),
            host: cut(r.host),
            path: cut(r.path),
            route: r.route.to_string(),
            status: r.status,
            decision: r.decision,
            reason: r.reason,
            sub: r.sub.map(cut),
        };
        MINE.with(|mine| {
            let mut mine = mine.borrow_mut();
            let ring = match mine.iter().position(|(id, _)| *id == self.id) {
                Some(i) => &mine[i].1,
                None => {
                    let ring: Ring = Arc::new(Mutex::new(VecDeque::with_capacity(KEPT)));
                    self.rings
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(ring.clone());
                    mine.push((self.id, ring));
                    &mine[mine.len() - 1].1
                }
            };
            let mut ring = ring.lock().unwrap_or_else(|p| p.into_inner());
            if ring.len() == KEPT {
                ring.pop_front();
            }
            ring.push_back(refused);
        });
    }

    /// The last `KEPT` refusals of every worker, newest first.
    pub fn latest(&self) -> Vec<Refused> {
        let rings: Vec<Ring> = self.rings.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut all: Vec<Refused> = rings
            .iter()
            .flat_map(|r| r.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect();
        all.sort_by_key(|r| std::cmp::Reverse(r.time));
        all.truncate(KEPT);
        all
    }
}

impl Drop for RefusalLog {
    fn drop(&mut self) {
        let id = self.id;
        let _ = MINE.try_with(|mine| mine.borrow_mut().retain(|(i, _)| *i != id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn refused(at: u64, path: &str) -> RefusedRef<'_> {
        RefusedRef {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(at),
            method: "GET",
            host: "api.test",
            path,
            route: "GET /contacts",
            status: 403,
            decision: "forbidden",
            reason: Some("insufficient_scope"),
            sub: Some("u1"),
        }
    }

    #[test]
    fn every_workers_refusals_are_merged_newest_first_and_bounded() {
        let log = Arc::new(RefusalLog::new());
        log.record(&refused(10, "/a"));
        let other = log.clone();
        std::thread::spawn(move || other.record(&refused(20, "/b")))
            .join()
            .unwrap();
        log.record(&refused(30, "/c"));
        let paths: Vec<String> = log.latest().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["/c", "/b", "/a"]);
        for i in 0..(KEPT as u64 + 50) {
            log.record(&refused(100 + i, "/d"));
        }
        let latest = log.latest();
        assert_eq!(latest.len(), KEPT);
        assert_eq!(
            latest[0].time,
            SystemTime::UNIX_EPOCH + Duration::from_secs(100 + KEPT as u64 + 49)
        );
    }

    #[test]
    fn long_texts_are_cut() {
        let log = RefusalLog::new();
        let long = "/é".repeat(400);
        log.record(&refused(1, &long));
        let path = &log.latest()[0].path;
        assert!(
            path.len() <= MAX_TEXT + "…".len() && path.ends_with('…'),
            "{path}"
        );
    }
}

//! The access log: one line per request on stderr, `text` or `json`, written off the request
//! path. Each worker thread formats its line straight into a buffer of its own (behind a lock
//! only the writer ever contends for, once per batch): no allocation, no channel, no wake-up
//! per line. One writer thread wakes every 20 ms, swaps every worker's buffer for an empty one
//! and writes the lot to stderr. A worker's buffer holds at most `MAX_PENDING` bytes: under a
//! burst that outruns stderr, lines are dropped and counted (`scopegate_access_log_dropped_total`),
//! never queued without bound, and a slow terminal or pipe never stalls a worker.
//! Lines stay whole, and in order per worker (and so per connection).
//!
//! Why not a bounded channel of `String`s (the first version): an allocation per line, freed on
//! another thread, and a channel slot, cost a worker about a microsecond per request.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::IntCounter;

use crate::config::AccessLogFormat;

/// Bytes a worker's buffer may hold between two writes; a line past it is dropped.
const MAX_PENDING: usize = 2 * 1024 * 1024;

/// A buffer kept after a write is cut back to this when it grew past it, so a burst does
/// not hold memory for good.
const KEEP_CAPACITY: usize = 256 * 1024;

/// What one line says.
pub struct Entry<'a> {
    /// When the request ended.
    pub ts: SystemTime,
    pub method: &'a str,
    pub host: &'a str,
    /// Normalized, without the query.
    pub path: &'a str,
    pub route: &'a str,
    pub decision: &'a str,
    /// Report-only: the decision it would have had.
    pub would_be: Option<&'a str>,
    /// A token rejection reason, `insufficient_scope`, `access_denied` or `cors_rejected`.
    pub reason: Option<&'a str>,
    pub status: u16,
    pub upstream: Option<&'a str>,
    pub latency_us: u64,
    /// The `sub` of a valid token.
    pub sub: Option<&'a str>,
    /// The client address scopegate believes (SPEC "Behind a load balancer"), no port.
    pub client: Option<std::net::IpAddr>,
    /// The trace of a sampled request (`[tracing]`), 32 hex digits.
    pub trace_id: Option<&'a str>,
}

/// One worker's pending lines.
type Shard = Arc<Mutex<Vec<u8>>>;

/// What the workers and the writer share.
struct Shared {
    /// Every worker's buffer, registered on its first line.
    shards: Mutex<Vec<Shard>>,
    stop: AtomicBool,
}

pub struct AccessLog {
    /// How a line is written (text or JSON).
    line: Format,
    /// Tells this log's buffers from another's in a thread's registry.
    id: usize,
    shared: Option<Arc<Shared>>,
    writer: Option<std::thread::JoinHandle<()>>,
    dropped: IntCounter,
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's buffer in each access log it wrote to (in practice one).
    static MINE: RefCell<Vec<(usize, Shard)>> = const { RefCell::new(Vec::new()) };
}

impl AccessLog {
    /// Starts the writer thread unless the format is `off`.
    pub fn start(format: AccessLogFormat, dropped: IntCounter) -> AccessLog {
        let shared = (format != AccessLogFormat::Off).then(|| {
            Arc::new(Shared {
                shards: Mutex::new(Vec::new()),
                stop: AtomicBool::new(false),
            })
        });
        let writer = shared.clone().map(|shared| {
            std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || write_lines(&shared))
                .expect("access log thread")
        });
        AccessLog {
            line: match format {
                AccessLogFormat::Json => json_line,
                _ => text_line,
            },
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shared,
            writer,
            dropped,
        }
    }

    pub fn record(&self, e: &Entry<'_>) {
        let Some(shared) = &self.shared else {
            return;
        };
        let kept = MINE.with(|mine| {
            let mut mine = mine.borrow_mut();
            let shard = match mine.iter().position(|(id, _)| *id == self.id) {
                Some(i) => &mine[i].1,
                None => {
                    mine.push((self.id, register(shared)));
                    &mine[mine.len() - 1].1
                }
            };
            let mut pending = shard.lock().unwrap_or_else(|p| p.into_inner());
            append_line(&mut pending, MAX_PENDING, self.line, e)
        });
        if !kept {
            self.dropped.inc();
        }
    }
}

/// A new buffer for this thread, registered with the writer.
fn register(shared: &Shared) -> Shard {
    let shard: Shard = Arc::new(Mutex::new(Vec::with_capacity(16 * 1024)));
    shared
        .shards
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(shard.clone());
    shard
}

impl Drop for AccessLog {
    /// What is pending is written before the log goes.
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.stop.store(true, Ordering::Relaxed);
        }
        if let Some(writer) = self.writer.take() {
            writer.thread().unpark();
            let _ = writer.join();
        }
        let id = self.id;
        let _ = MINE.try_with(|mine| mine.borrow_mut().retain(|(i, _)| *i != id));
    }
}

type Format = fn(&mut Vec<u8>, &Entry<'_>);

/// Formats `e` at the end of `pending`, unless that takes it past `max` bytes: then the line
/// is taken back and `false` returned.
fn append_line(pending: &mut Vec<u8>, max: usize, format: Format, e: &Entry<'_>) -> bool {
    let before = pending.len();
    format(pending, e);
    if pending.len() > max {
        pending.truncate(before);
        return false;
    }
    true
}

/// How long the writer sleeps between batches: workers never wake it (a wake-up per line was
/// a third of a worker's time), and a line waits at most this long.
const WRITE_EVERY: Duration = Duration::from_millis(20);

fn write_lines(shared: &Shared) {
    let mut spare: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        std::thread::park_timeout(WRITE_EVERY);
        let stopping = shared.stop.load(Ordering::Relaxed);
        let shards: Vec<Shard> = shared
            .shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for shard in shards {
            {
                let mut pending = shard.lock().unwrap_or_else(|p| p.into_inner());
                if pending.is_empty() {
                    continue;
                }
                std::mem::swap(&mut *pending, &mut spare);
            }
            // Whole lines only, and one writer: they cannot interleave with one another.
            let _ = std::io::stderr().lock().write_all(&spare);
            spare.clear();
            if spare.capacity() > KEEP_CAPACITY {
                spare.shrink_to(KEEP_CAPACITY);
            }
        }
        if stopping {
            return;
        }
    }
}

/// `v` as a quoted string, escaped as Rust's `{:?}` does (so a request cannot forge a line);
/// plain printable ASCII, the usual case, is copied as it is.
fn push_quoted(out: &mut Vec<u8>, v: &str) {
    if v.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push(b'"');
        out.extend_from_slice(v.as_bytes());
        out.push(b'"');
    } else {
        let _ = write!(out, "{v:?}");
    }
}

/// `ts access method="GET" host="api.example" path="/contacts" route="GET /contacts"
/// decision="allowed" status=200 upstream="contacts" latency_us=812 sub="user-1"`; strings are
/// quoted and escaped, so a request cannot forge a line.
pub fn text_line(s: &mut Vec<u8>, e: &Entry<'_>) {
    push_timestamp(s, e.ts);
    let optional = [(" would_be=", e.would_be), (" reason=", e.reason)];
    let trace = [(" trace_id=", e.trace_id)];
    for (key, value) in [
        (" access method=", Some(e.method)),
        (" host=", Some(e.host)),
        (" path=", Some(e.path)),
        (" route=", Some(e.route)),
        (" decision=", Some(e.decision)),
    ]
    .into_iter()
    .chain(optional)
    {
        if let Some(value) = value {
            s.extend_from_slice(key.as_bytes());
            push_quoted(s, value);
        }
    }
    let _ = write!(s, " status={} upstream=", e.status);
    match e.upstream {
        Some(u) => push_quoted(s, u),
        None => s.push(b'-'),
    }
    let _ = write!(s, " latency_us={} sub=", e.latency_us);
    match e.sub {
        Some(sub) => push_quoted(s, sub),
        None => s.push(b'-'),
    }
    s.extend_from_slice(b" client=");
    match e.client {
        Some(ip) => {
            let _ = write!(s, "{ip}");
        }
        None => s.push(b'-'),
    }
    for (key, value) in trace {
        if let Some(value) = value {
            s.extend_from_slice(key.as_bytes());
            push_quoted(s, value);
        }
    }
    s.push(b'\n');
}

/// One JSON object with exactly SPEC's keys; strings escaped by serde_json.
pub fn json_line(s: &mut Vec<u8>, e: &Entry<'_>) {
    s.extend_from_slice(b"{\"ts\":\"");
    push_timestamp(s, e.ts);
    s.push(b'"');
    let strings = [
        (",\"method\":", Some(e.method)),
        (",\"host\":", Some(e.host)),
        (",\"path\":", Some(e.path)),
        (",\"route\":", Some(e.route)),
        (",\"decision\":", Some(e.decision)),
    ];
    for (key, value) in strings {
        s.extend_from_slice(key.as_bytes());
        let _ = serde_json::to_writer(&mut *s, &value);
    }
    let _ = write!(s, ",\"status\":{},\"upstream\":", e.status);
    let _ = serde_json::to_writer(&mut *s, &e.upstream);
    let _ = write!(s, ",\"latency_us\":{},\"sub\":", e.latency_us);
    let _ = serde_json::to_writer(&mut *s, &e.sub);
    s.extend_from_slice(b",\"client\":");
    match e.client {
        Some(ip) => {
            let _ = write!(s, "\"{ip}\"");
        }
        None => s.extend_from_slice(b"null"),
    }
    for (key, value) in [
        (",\"would_be\":", e.would_be),
        (",\"reason\":", e.reason),
        (",\"trace_id\":", e.trace_id),
    ] {
        if let Some(v) = value {
            s.extend_from_slice(key.as_bytes());
            let _ = serde_json::to_writer(&mut *s, v);
        }
    }
    s.extend_from_slice(b"}\n");
}

thread_local! {
    /// The second last written and its text: a worker formats the date once a second.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// `at` as `Rfc3339` writes it, with the date and time of day formatted once a second.
fn push_timestamp(out: &mut Vec<u8>, at: SystemTime) {
    let d = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    SECOND.with(|second| {
        let mut second = second.borrow_mut();
        if second.0 != d.as_secs() {
            second.1.clear();
            let _ = write!(second.1, "{}", Seconds(d.as_secs()));
            second.0 = d.as_secs();
        }
        out.extend_from_slice(second.1.as_bytes());
    });
    let _ = write!(out, ".{:06}Z", d.subsec_micros());
}

/// `2026-11-23T22:25:35.123456Z` (RFC 3339, UTC), written where it is displayed.
pub struct Rfc3339(pub SystemTime);

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        write!(f, "{}.{:06}Z", Seconds(d.as_secs()), d.subsec_micros())
    }
}

/// `2026-11-23T22:25:35`: a Unix second as a UTC date and time of day.
struct Seconds(u64);

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (days, rem) = (self.0 / 86_400, self.0 % 86_400);
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn line_of(format: Format, e: &Entry<'_>) -> String {
        line(format, e)
    }

    fn line(format: Format, e: &Entry<'_>) -> String {
        let mut s = Vec::new();
        format(&mut s, e);
        String::from_utf8(s).unwrap()
    }

    fn entry() -> Entry<'static> {
        Entry {
            ts: SystemTime::now(),
            method: "GET",
            host: "api.test",
            path: "/contacts",
            route: "GET /contacts",
            decision: "report_only",
            would_be: Some("forbidden"),
            reason: Some("insufficient_scope"),
            status: 200,
            upstream: None,
            latency_us: 42,
            sub: None,
            client: Some(std::net::IpAddr::from([192, 0, 2, 7])),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(
            Rfc3339(UNIX_EPOCH).to_string(),
            "1970-01-01T00:00:00.000000Z"
        );
        let t = UNIX_EPOCH + Duration::from_secs(1_795_476_335) + Duration::from_micros(7);
        assert_eq!(Rfc3339(t).to_string(), "2026-11-23T23:25:35.000007Z");
        assert_eq!(
            Rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)).to_string(),
            "2000-02-29T00:00:00.000000Z"
        );
    }

    #[test]
    fn json_lines_have_exactly_the_spec_keys() {
        let v: serde_json::Value = serde_json::from_str(&line(json_line, &entry())).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "ts",
                "method",
                "host",
                "path",
                "route",
                "decision",
                "status",
                "upstream",
                "latency_us",
                "sub",
                "client",
                "would_be",
                "reason",
                "trace_id"
            ]
        );
        assert_eq!(v["upstream"], serde_json::Value::Null);
        assert_eq!(v["client"], "192.0.2.7");
        let mut plain = entry();
        plain.would_be = None;
        plain.reason = None;
        plain.trace_id = None;
        let v: serde_json::Value = serde_json::from_str(&line(json_line, &plain)).unwrap();
        assert!(v.get("would_be").is_none() && v.get("reason").is_none());
        assert!(
            v.get("trace_id").is_none(),
            "only for a request with a trace"
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut e = entry();
        e.path = "/a\"b\\c\u{1}é";
        let v: serde_json::Value = serde_json::from_str(&line(json_line, &e)).unwrap();
        assert_eq!(v["path"], "/a\"b\\c\u{1}é");
    }

    #[test]
    fn text_lines_quote_what_a_client_sent() {
        let mut e = entry();
        e.host = "evil\n2026-01-01T00:00:00Z access forged";
        let line = line(text_line, &e);
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.contains(
            "decision=\"report_only\" would_be=\"forbidden\" reason=\"insufficient_scope\""
        ));
        assert!(
            line.ends_with(
                " sub=- client=192.0.2.7 trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"\n"
            ),
            "{line}"
        );
        let mut untraced = entry();
        untraced.trace_id = None;
        assert!(!line_of(text_line, &untraced).contains("trace_id"));
    }

    #[test]
    fn a_full_buffer_drops_whole_lines_only() {
        let one = line(text_line, &entry()).len();
        let mut pending = Vec::new();
        assert!(append_line(&mut pending, 2 * one + 4, text_line, &entry()));
        assert!(append_line(&mut pending, 2 * one + 4, text_line, &entry()));
        assert!(!append_line(&mut pending, 2 * one + 4, text_line, &entry()));
        assert_eq!(pending.split(|&b| b == b'\n').count(), 3, "two whole lines");
        assert!(pending.ends_with(b"\n"));
    }

    #[test]
    fn lines_start_with_the_time_the_request_ended() {
        let before = Rfc3339(SystemTime::now()).to_string();
        let mut e = entry();
        e.ts = SystemTime::now();
        let text = line(text_line, &e);
        let after = Rfc3339(SystemTime::now()).to_string();
        let ts = &text[..before.len()];
        assert!(
            before.as_str() <= ts && ts <= after.as_str(),
            "{ts} not in {before}..{after}"
        );
        assert!(text[before.len()..].starts_with(" access method=\"GET\""));
    }

    #[test]
    fn text_escapes_as_debug_does_for_anything_but_plain_ascii() {
        let mut e = entry();
        e.path = "/caf\u{e9}\t\"x\"";
        let text = line(text_line, &e);
        assert!(text.contains(&format!(" path={:?} ", e.path)), "{text}");
    }
}

//! The access log: one line per request on stderr, `text` or `json`, written off the request
//! path. A request formats its line and hands it to a bounded queue (`try_send`, never
//! waiting); one writer thread wakes every 20 ms, drains the queue and writes it to stderr in
//! one batch (no wake-up per line). Under a burst that outruns stderr, lines are dropped and counted
//! (`scopegate_access_log_dropped_total`), never queued without bound. A queue to a thread,
//! rather than a non-blocking writer on each worker, keeps lines whole and in order whatever
//! the number of workers, and a slow terminal or pipe never stalls a worker.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::IntCounter;

use crate::config::AccessLogFormat;

/// Lines that may wait for the writer; beyond this they are dropped.
const QUEUE: usize = 16 * 1024;

/// What one line says.
pub struct Entry<'a> {
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
}

pub struct AccessLog {
    format: AccessLogFormat,
    queue: Option<SyncSender<String>>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Starts the writer thread unless the format is `off`.
    pub fn start(format: AccessLogFormat, dropped: IntCounter) -> AccessLog {
        let queue = (format != AccessLogFormat::Off).then(|| {
            let (tx, rx) = sync_channel::<String>(QUEUE);
            std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || write_lines(rx))
                .expect("access log thread");
            tx
        });
        AccessLog {
            format,
            queue,
            dropped,
        }
    }

    pub fn record(&self, e: &Entry<'_>) {
        let Some(queue) = &self.queue else {
            return;
        };
        let line = match self.format {
            AccessLogFormat::Json => json_line(e),
            _ => text_line(e),
        };
        if let Err(TrySendError::Full(_)) = queue.try_send(line) {
            self.dropped.inc();
        }
    }
}

/// How long the writer sleeps between batches: senders never wake it (a wake-up per line was
/// a third of a worker's time), and a line waits at most this long.
const WRITE_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

fn write_lines(rx: Receiver<String>) {
    let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        std::thread::sleep(WRITE_EVERY);
        loop {
            match rx.try_recv() {
                Ok(line) => {
                    batch.extend_from_slice(line.as_bytes());
                    if batch.len() >= 256 * 1024 {
                        write_batch(&mut batch);
                    }
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    write_batch(&mut batch);
                    return;
                }
            }
        }
        write_batch(&mut batch);
    }
}

/// Locked only while a batch is written, so other writers' lines stay whole too.
fn write_batch(batch: &mut Vec<u8>) {
    if !batch.is_empty() {
        let _ = std::io::stderr().lock().write_all(batch);
        batch.clear();
    }
}

/// `ts access method="GET" host="api.example" path="/contacts" route="GET /contacts"
/// decision="allowed" status=200 upstream="contacts" latency_us=812 sub="user-1"`; strings are
/// quoted and escaped, so a request cannot forge a line.
pub fn text_line(e: &Entry<'_>) -> String {
    let mut s = String::with_capacity(192 + e.path.len());
    let _ = write!(
        s,
        "{} access method={:?} host={:?} path={:?} route={:?} decision={:?}",
        Rfc3339(SystemTime::now()),
        e.method,
        e.host,
        e.path,
        e.route,
        e.decision
    );
    if let Some(w) = e.would_be {
        let _ = write!(s, " would_be={w:?}");
    }
    if let Some(r) = e.reason {
        let _ = write!(s, " reason={r:?}");
    }
    let _ = write!(s, " status={}", e.status);
    match e.upstream {
        Some(u) => {
            let _ = write!(s, " upstream={u:?}");
        }
        None => s.push_str(" upstream=-"),
    }
    let _ = write!(s, " latency_us={}", e.latency_us);
    match e.sub {
        Some(sub) => {
            let _ = write!(s, " sub={sub:?}");
        }
        None => s.push_str(" sub=-"),
    }
    s.push('\n');
    s
}

/// One JSON object with exactly SPEC's keys, written straight into the line.
pub fn json_line(e: &Entry<'_>) -> String {
    let mut s = String::with_capacity(224 + e.path.len());
    let _ = write!(s, "{{\"ts\":\"{}\"", Rfc3339(SystemTime::now()));
    for (key, value) in [
        ("method", e.method),
        ("host", e.host),
        ("path", e.path),
        ("route", e.route),
        ("decision", e.decision),
    ] {
        let _ = write!(s, ",\"{key}\":");
        push_json_str(&mut s, value);
    }
    let _ = write!(s, ",\"status\":{},\"upstream\":", e.status);
    push_json_opt(&mut s, e.upstream);
    let _ = write!(s, ",\"latency_us\":{},\"sub\":", e.latency_us);
    push_json_opt(&mut s, e.sub);
    for (key, value) in [("would_be", e.would_be), ("reason", e.reason)] {
        if let Some(v) = value {
            let _ = write!(s, ",\"{key}\":");
            push_json_str(&mut s, v);
        }
    }
    s.push_str("}\n");
    s
}

fn push_json_opt(out: &mut String, value: Option<&str>) {
    match value {
        Some(v) => push_json_str(out, v),
        None => out.push_str("null"),
    }
}

/// A JSON string (RFC 8259 §7): quotes, backslashes and control characters escaped.
fn push_json_str(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `2026-11-23T22:25:35.123456Z` (RFC 3339, UTC), written where it is displayed.
pub struct Rfc3339(pub SystemTime);

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
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
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            d.subsec_micros()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry() -> Entry<'static> {
        Entry {
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
        let v: serde_json::Value = serde_json::from_str(&json_line(&entry())).unwrap();
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
                "would_be",
                "reason"
            ]
        );
        assert_eq!(v["upstream"], serde_json::Value::Null);
        let mut plain = entry();
        plain.would_be = None;
        plain.reason = None;
        let v: serde_json::Value = serde_json::from_str(&json_line(&plain)).unwrap();
        assert!(v.get("would_be").is_none() && v.get("reason").is_none());
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut e = entry();
        e.path = "/a\"b\\c\u{1}é";
        let v: serde_json::Value = serde_json::from_str(&json_line(&e)).unwrap();
        assert_eq!(v["path"], "/a\"b\\c\u{1}é");
    }

    #[test]
    fn text_lines_quote_what_a_client_sent() {
        let mut e = entry();
        e.host = "evil\n2026-01-01T00:00:00Z access forged";
        let line = text_line(&e);
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.contains(
            "decision=\"report_only\" would_be=\"forbidden\" reason=\"insufficient_scope\""
        ));
    }
}

//! Limits on client connections, which Pingora leaves open: how many may be open at once, how
//! long a request header may take to arrive as a whole, how large it may be, and how long a
//! keep-alive connection may sit idle. Slow-header and idle-connection floods then cost bounded
//! memory and file descriptors.
//!
//! `Limited` drives the proxy's HTTP/1 connections (plain and TLS; HTTP/2 it hands on whole):
//! it counts connections and closes one over the limit at once; it waits for each request's
//! first byte at most `keepalive` (after the first request) and then gives the whole header
//! `header` to arrive, reading it into a small buffer of its own before Pingora's per-request
//! state (tens of kilobytes) exists. It only looks for the blank line that ends a header; the
//! bytes go to Pingora's parser untouched, as the start of the request (`set_pipelined_prefix`:
//! parsed where they lie, neither copied nor read again). Pingora's session is the one parser
//! of every request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, timeout_at, Instant};

use super::coalesce::Coalesced;

/// The `[server]` limits, in force from process start.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header: Duration,
    pub keepalive: Duration,
}

/// Client connections open now, across listeners.
pub static OPEN_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

/// How long an idle keep-alive connection still waits for a request once shutdown has begun.
const SHUTDOWN_IDLE: Duration = Duration::from_secs(1);

/// The largest request header accepted (SPEC: beyond it, 431).
pub const MAX_HEADER: usize = 64 * 1024;

/// The buffer a request header is first read into (Pingora's own first size): it becomes the
/// parser's buffer, so most headers are read with one `recv` into one allocation.
const FIRST_READ: usize = 4096;

/// RFC 6585 §5, sent before any of the request is parsed; the connection is closed after it.
const TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\n\
content-type: application/json\r\ncontent-length: 91\r\ncache-control: no-store\r\nconnection: close\r\n\r\n\
{\"error\":\"header_too_large\",\"error_description\":\"the request header is larger than 64 KiB\"}";

pub struct Limited<A> {
    pub inner: Arc<A>,
    pub limits: ConnLimits,
    /// HTTPS listeners: the TLS handshake, done here under the connection limit.
    pub tls: Option<Arc<pingora_core::listeners::tls::Acceptor>>,
    /// Where a request answered here (a 431 before any parse) is counted, logged and listed
    /// among the console's refusals, as every request the proxy answers is.
    pub gate: Option<Arc<super::proxy::Gate>>,
}

struct Open;

impl Drop for Open {
    fn drop(&mut self) {
        OPEN_CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why the header wait ended without a request.
enum NoRequest {
    Closed,
    Late,
    TooLarge,
}

/// Read until the request header is complete (a blank line) and return what was read. The
/// first byte may take until `first_by`; the whole header, `header` from then on.
async fn preread_header(
    stream: &mut Stream,
    first_by: Instant,
    header: Duration,
    stopping: &mut ShutdownWatch,
) -> Result<(BytesMut, usize), NoRequest> {
    let mut buf = BytesMut::new();
    // Once the server is shutting down, an idle connection waits a moment for a request
    // already on its way, then closes.
    let mut deadline = if *stopping.borrow() {
        first_by.min(Instant::now() + SHUTDOWN_IDLE)
    } else {
        first_by
    };
    let mut started = false;
    // Over TLS the first byte is read alone: rustls holds the rest of its record, so the buffer
    // exists only once a request comes, at no extra system call. (In plain TCP it would cost one.)
    let tls = stream.get_ssl().is_some();
    let mut one = [0u8; 1];
    loop {
        let scan_from = buf.len().saturating_sub(2);
        let first_alone = tls && buf.is_empty();
        if !first_alone && buf.capacity() == buf.len() {
            let grow = if buf.is_empty() {
                FIRST_READ
            } else {
                buf.len()
            };
            buf.reserve(grow.min(MAX_HEADER + 1 - buf.len()));
        }
        let read = tokio::select! {
            biased;
            read = timeout_at(deadline, async {
                if first_alone {
                    stream.read(&mut one).await
                } else {
                    stream.read_buf(&mut buf).await
                }
            }) => read,
            // Shutdown began while idle: shorten the wait, then read on.
            _ = stopping.changed(), if !started && !*stopping.borrow() => {
                deadline = deadline.min(Instant::now() + SHUTDOWN_IDLE);
                continue;
            }
        };
        match read {
            Err(_) => return Err(NoRequest::Late),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(NoRequest::Closed),
            Ok(Ok(_)) if first_alone => {
                buf.reserve(FIRST_READ);
                buf.extend_from_slice(&one);
            }
            Ok(Ok(_)) => {}
        };
        if !started {
            started = true;
            deadline = Instant::now() + header;
        }
        if let Some(end) = header_end(&buf, scan_from) {
            return if end > MAX_HEADER {
                Err(NoRequest::TooLarge)
            } else {
                Ok((buf, end))
            };
        }
        if buf.len() > MAX_HEADER {
            return Err(NoRequest::TooLarge);
        }
    }
}

/// Where the header in `buf` ends (searched from `from`): at the first empty line, CRLF or
/// bare LF as HTTP/1.1 parsers accept (RFC 9112 §2.2). Only line ends are looked at (`memchr`).
fn header_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(found) = memchr::memchr(b'\n', &buf[at..]) {
        let i = at + found;
        match (buf.get(i + 1), buf.get(i + 2)) {
            (Some(b'\n'), _) => return Some(i + 2),
            // `\n\r` is a blank line only when `\n` follows.
            (Some(b'\r'), Some(b'\n')) => return Some(i + 3),
            (None, _) | (Some(b'\r'), None) => return None,
            _ => at = i + 1,
        }
    }
    None
}

/// Set by the proxy once Pingora has parsed the header of a request a client pipelined (one
/// whose header Pingora's session reads: `ProxyHttp::on_connection_reuse`), carried there as the
/// connection's user context.
#[derive(Debug, Default)]
pub struct HeaderParsed(pub std::sync::atomic::AtomicBool);

impl<A: HttpServerApp + Send + Sync + 'static> Limited<A> {
    /// HTTP/1 requests on one connection, each header under the deadlines.
    ///
    /// Each request's header is read here before Pingora's session exists (the first byte may
    /// take `header` on a new connection, `keepalive` on a kept-alive one; the whole header
    /// `header` from its first byte, and at most 64 KiB), so an idle connection holds no
    /// session. After a response, Pingora may already hold the start of the next request (a
    /// client pipelining: RFC 9112 §9.3.2) where this loop cannot read it: that request's header
    /// is read by Pingora's session, and the connection is closed if it is not parsed within
    /// `keepalive` + `header`. Its size is the decision's to check.
    async fn serve_http1(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) {
        let mut stream: Stream = Box::new(Coalesced::new(stream));
        let mut persistent: Option<pingora_core::apps::HttpPersistentSettings> = None;
        let mut stopping = shutdown.clone();
        // Whether the last session was given exactly one request header and read nothing more:
        // then Pingora holds no byte of a next request (what `holds_pipelined_bytes` would
        // find out from the settings' text, at a cost on every request).
        let mut nothing_more = false;
        loop {
            let mut session;
            let mut parsed = None;
            let mut whole_header = false;
            match persistent.take() {
                Some(mut settings) if !nothing_more && holds_pipelined_bytes(&settings) => {
                    let flag = Arc::new(HeaderParsed::default());
                    settings.set_user_context(Box::new(flag.clone()));
                    parsed = Some(flag);
                    session = ServerSession::new_http1(stream);
                    settings.apply_to_session(&mut session);
                }
                settings => {
                    let wait = match settings {
                        Some(_) => self.limits.keepalive,
                        None => self.limits.header,
                    };
                    let Some((read, whole)) = self
                        .next_header(&mut stream, Instant::now() + wait, &mut stopping)
                        .await
                    else {
                        return;
                    };
                    whole_header = whole;
                    session = ServerSession::new_http1(stream);
                    if let Some(settings) = settings {
                        settings.apply_to_session(&mut session);
                    }
                    session.set_pipelined_prefix(read);
                }
            }
            let read_before = session.stream().and_then(Coalesced::read_so_far);
            session.set_pipelining_enabled(true);
            // Set on every session: Pingora's own carries no idle timeout over to the next.
            if *shutdown.borrow() {
                session.set_keepalive(None);
            } else {
                session.set_keepalive(Some(self.limits.keepalive.as_secs().max(1)));
            }
            let serving = self.inner.process_new_http(session, shutdown);
            let done = match parsed {
                Some(parsed) => {
                    let deadline = Instant::now() + self.limits.keepalive + self.limits.header;
                    tokio::pin!(serving);
                    tokio::select! {
                        biased;
                        done = &mut serving => done,
                        _ = tokio::time::sleep_until(deadline) => {
                            if !parsed.0.load(Ordering::Relaxed) {
                                tracing::debug!("no complete request header in time: connection closed");
                                return;
                            }
                            serving.await
                        }
                    }
                }
                None => serving.await,
            };
            let Some(reused) = done else {
                return;
            };
            let (next, settings) = reused.consume();
            stream = next;
            nothing_more = whole_header
                && read_before.is_some()
                && Coalesced::read_so_far(&stream) == read_before;
            // A session that cannot be reused hands back no settings: the next request then
            // starts as a first one would.
            persistent = settings;
        }
    }

    /// The next request's header, read whole (`preread_header`), and whether it is all that
    /// was read (no byte past its empty line); `None` when the connection is done with: closed
    /// by the client, late (closed here), or over 64 KiB (a 431, then closed).
    async fn next_header(
        &self,
        stream: &mut Stream,
        first_by: Instant,
        stopping: &mut ShutdownWatch,
    ) -> Option<(BytesMut, bool)> {
        match preread_header(stream, first_by, self.limits.header, stopping).await {
            Ok((read, end)) => {
                let whole = end == read.len();
                Some((read, whole))
            }
            Err(NoRequest::Closed) => None,
            Err(NoRequest::Late) => {
                tracing::debug!("no complete request header in time: connection closed");
                None
            }
            Err(NoRequest::TooLarge) => {
                // Its latency, like every request's, runs from its decision to the answer sent.
                let answering = std::time::Instant::now();
                let _ = stream.write_all(TOO_LARGE).await;
                let _ = stream.flush().await;
                let _ = stream.shutdown().await;
                if let Some(gate) = &self.gate {
                    // Nothing of it was parsed: no method, host or path to name.
                    let peer = stream
                        .get_socket_digest()
                        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet().map(|a| a.ip())));
                    gate.answered_unparsed(431, peer, answering);
                }
                None
            }
        }
    }
}

/// Whether the settings Pingora hands over with a kept-alive connection carry bytes it read of
/// the client's next request (a pipelining client), which only its next session can take.
/// Pingora 0.9 says so only in the settings' `Debug` text (`pipelined_prefix: None` when it
/// keeps none); anything else counts as holding bytes, which costs only the early wait.
fn holds_pipelined_bytes(settings: &pingora_core::apps::HttpPersistentSettings) -> bool {
    use std::fmt::Write;
    /// Keeps the start of the text; a longer one (bytes printed) stops the formatting.
    struct Start {
        buf: [u8; 256],
        len: usize,
    }
    impl Write for Start {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let end = self.len + s.len();
            if end > self.buf.len() {
                return Err(std::fmt::Error);
            }
            self.buf[self.len..end].copy_from_slice(s.as_bytes());
            self.len = end;
            Ok(())
        }
    }
    let mut text = Start {
        buf: [0; 256],
        len: 0,
    };
    if write!(text, "{settings:?}").is_err() {
        return true;
    }
    memchr::memmem::find(&text.buf[..text.len], b"pipelined_prefix: None").is_none()
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for Limited<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if OPEN_CONNECTIONS.fetch_add(1, Ordering::Relaxed) >= self.limits.max_connections {
            OPEN_CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(
                max = self.limits.max_connections,
                "server.max_connections reached: connection closed"
            );
            return None; // dropping the stream closes it
        }
        let _open = Open;
        let stream = match &self.tls {
            // The handshake is bounded like a request header: a client that stalls in it holds a
            // counted connection for `header` at most.
            Some(acceptor) => {
                let Ok(tcp) = stream.into_any().downcast::<L4Stream>() else {
                    return None;
                };
                // Boxed: a plain connection's future does not carry a handshake's state.
                let handshake = Box::pin(acceptor.tls_handshake(*tcp));
                match timeout(self.limits.header, handshake).await {
                    Ok(Ok(tls)) => Box::new(tls) as Stream,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return None;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake not done in time: connection closed");
                        return None;
                    }
                }
            }
            None => stream,
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // HTTP/2 multiplexes: Pingora's own loop, with `h2_idle_timeout` set to keepalive.
            return self.inner.process_new(stream, shutdown).await;
        }
        self.serve_http1(stream, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_core::apps::HttpPersistentSettings;
    use proptest::prelude::*;

    /// The end of the header by the plain reading of RFC 9112 §2.2: the first `\n` that an
    /// empty line (`\n` or `\r\n`) follows.
    fn header_end_spelled_out(buf: &[u8], from: usize) -> Option<usize> {
        (from..buf.len()).find_map(|i| {
            if buf[i] != b'\n' {
                return None;
            }
            match (buf.get(i + 1), buf.get(i + 2)) {
                (Some(b'\n'), _) => Some(i + 2),
                (Some(b'\r'), Some(b'\n')) => Some(i + 3),
                _ => None,
            }
        })
    }

    #[test]
    fn a_header_ends_at_its_first_empty_line() {
        let h = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody";
        assert_eq!(header_end(h, 0), Some(h.len() - 4));
        assert_eq!(header_end(b"GET / HTTP/1.1\nHost: a\n\nrest", 0), Some(24));
        assert_eq!(
            header_end(b"GET / HTTP/1.1\r\nX: a\n\rb\r\n\r\n", 0),
            Some(27)
        );
        assert_eq!(header_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r", 0), None);
        assert_eq!(header_end(b"GET / HTTP/1.1\r\n", 0), None);
    }

    proptest! {
        #[test]
        fn header_end_finds_what_the_rfc_reading_finds(
            buf in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'a')], 0..64),
            from in 0usize..8,
        ) {
            let from = from.min(buf.len());
            prop_assert_eq!(header_end(&buf, from), header_end_spelled_out(&buf, from));
        }
    }

    #[tokio::test]
    async fn pipelined_bytes_pingora_keeps_are_seen_in_its_settings() {
        let (near, _far) = tokio::io::duplex(64);
        let session = ServerSession::new_http1(Box::new(near));
        let mut settings = HttpPersistentSettings::for_session(&session);
        assert!(!holds_pipelined_bytes(&settings), "{settings:?}");
        settings.set_user_context(Box::new(Arc::new(HeaderParsed::default())));
        assert!(!holds_pipelined_bytes(&settings), "{settings:?}");
        settings.set_pipelined_prefix(BytesMut::from(&b"GET /next HTTP/1.1\r\n"[..]));
        assert!(holds_pipelined_bytes(&settings), "{settings:?}");
        // A long prefix stops the formatting early and still counts.
        let mut long = HttpPersistentSettings::for_session(&session);
        long.set_pipelined_prefix(BytesMut::from(&[b'x'; 10_000][..]));
        assert!(holds_pipelined_bytes(&long));
    }
}

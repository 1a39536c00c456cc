//! Limits on client connections, which Pingora leaves open: how many may be open at once, how
//! long a request header may take to arrive as a whole, and how long a keep-alive connection
//! may sit idle. Slow-header and idle-connection floods then cost bounded memory and file
//! descriptors.
//!
//! `Limited` drives the proxy's HTTP/1 connections itself (HTTP/2 it hands on whole): it counts
//! connections and closes one over the limit at once; it waits for each request's first byte
//! at most `keepalive` (after the first request) and then gives the whole header `header` to
//! arrive, reading it into a small buffer of its own before Pingora's per-request state (tens
//! of kilobytes) exists, and handing that buffer to Pingora's parser as the start of the
//! request (`set_pipelined_prefix`: parsed where it lies, neither copied nor read again).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as TcpStream;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use tokio::io::AsyncReadExt;
use tokio::time::{timeout_at, Instant};

use super::lane::{Conn, Lane, Served};

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

/// Headers larger than this are left to Pingora to read (and refuse past its own limit).
const PREREAD_MAX: usize = 64 * 1024;

/// The buffer a request header is first read into (Pingora's own first size): it becomes the
/// parser's buffer, so most headers are read with one `recv` into one allocation.
const FIRST_READ: usize = 4096;

pub struct Limited<A> {
    pub inner: Arc<A>,
    pub limits: ConnLimits,
    /// The lean lane for the common HTTP/1 request; what it declines goes to `inner`.
    pub lane: Option<Lane>,
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
}

/// Read until the request header is complete (`\r\n\r\n`) and return what was read, after
/// `buf` (what followed the previous request). The first byte may take until `first_by`; the
/// whole header, `header` from then on.
async fn preread_header(
    stream: &mut TcpStream,
    mut buf: BytesMut,
    first_by: Instant,
    header: Duration,
    stopping: &mut ShutdownWatch,
) -> Result<BytesMut, NoRequest> {
    // A pipelined request may be there already.
    if complete_header(&buf, 0) {
        return Ok(buf);
    }
    // Once the server is shutting down, an idle connection waits a moment for a request
    // already on its way, then closes.
    let mut deadline = if *stopping.borrow() {
        first_by.min(Instant::now() + SHUTDOWN_IDLE)
    } else {
        first_by
    };
    let mut started = !buf.is_empty();
    if started {
        deadline = Instant::now() + header;
    }
    loop {
        let scan_from = buf.len().saturating_sub(3);
        if buf.capacity() == buf.len() {
            buf.reserve(if buf.is_empty() {
                FIRST_READ
            } else {
                buf.len()
            });
        }
        let read = tokio::select! {
            biased;
            read = timeout_at(deadline, stream.read_buf(&mut buf)) => read,
            // Shutdown began while idle: shorten the wait, then read on.
            _ = stopping.changed(), if !started && !*stopping.borrow() => {
                deadline = deadline.min(Instant::now() + SHUTDOWN_IDLE);
                continue;
            }
        };
        match read {
            Err(_) => return Err(NoRequest::Late),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(NoRequest::Closed),
            Ok(Ok(_)) => {}
        };
        if !started {
            started = true;
            deadline = Instant::now() + header;
        }
        if complete_header(&buf, scan_from) {
            return Ok(buf);
        }
    }
}

/// The buffer holds a whole request header (searched from `from`), or as much as is read ahead.
fn complete_header(buf: &[u8], from: usize) -> bool {
    buf[from..].windows(4).any(|w| w == b"\r\n\r\n") || buf.len() >= PREREAD_MAX
}

impl<A: HttpServerApp + Send + Sync + 'static> Limited<A> {
    /// HTTP/1 requests on one connection, each header under the deadlines.
    async fn serve_http1(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) {
        let mut stream = stream;
        let mut persistent = None;
        let mut first_by = Instant::now() + self.limits.header;
        let mut header = None;
        let mut stopping = shutdown.clone();
        let mut lane_conn = Conn::default();
        // What followed the last request the lane served (pipelined requests).
        let mut carried = BytesMut::new();
        loop {
            // Only a plain TCP stream can be read ahead and rewound; TLS ones get Pingora's
            // per-read timeouts.
            if stream.as_any().is::<TcpStream>() {
                let Ok(mut tcp) = stream.into_any().downcast::<TcpStream>() else {
                    return;
                };
                let after = std::mem::take(&mut carried);
                match preread_header(&mut tcp, after, first_by, self.limits.header, &mut stopping)
                    .await
                {
                    Ok(mut read) => {
                        if let Some(lane) = &self.lane {
                            let stopping = *shutdown.borrow();
                            // Boxed: an idle connection's future does not carry the
                            // lane's request state (kilobytes), only one being served does.
                            let serving =
                                Box::pin(lane.serve(&mut tcp, &mut read, &mut lane_conn, stopping));
                            match serving.await {
                                Served::KeepAlive => {
                                    carried = read;
                                    stream = tcp;
                                    first_by = Instant::now() + self.limits.keepalive;
                                    continue;
                                }
                                Served::Close => return,
                                Served::Declined => {}
                            }
                        }
                        stream = tcp;
                        header = Some(read);
                    }
                    Err(NoRequest::Closed) => return,
                    Err(NoRequest::Late) => {
                        tracing::debug!("no complete request header in time: connection closed");
                        return;
                    }
                }
            }
            let mut session = ServerSession::new_http1(stream);
            if *shutdown.borrow() {
                session.set_keepalive(None);
            } else {
                session.set_keepalive(Some(self.limits.keepalive.as_secs().max(1)));
            }
            if let Some(settings) = persistent.take() {
                pingora_core::apps::HttpPersistentSettings::apply_to_session(
                    settings,
                    &mut session,
                );
            }
            if let Some(read) = header.take() {
                session.set_pipelined_prefix(read);
            }
            let Some(reused) = self.inner.process_new_http(session, shutdown).await else {
                return;
            };
            let (next, settings) = reused.consume();
            stream = next;
            persistent = settings;
            first_by = Instant::now() + self.limits.keepalive;
        }
    }
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

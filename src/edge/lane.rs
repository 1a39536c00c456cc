//! The lean HTTP/1 lane: the common request (HTTP/1.1 over plain TCP, origin-form target, no
//! body, no upgrade) decided and forwarded in the connection's own task, on an upstream
//! connection the task keeps between requests, with the request and response headers copied
//! once from buffer to buffer.
//!
//! Pingora's `ProxyHttp` path spends more per request than the whole auth check (a session
//! with its header maps, a task per direction and channels between them, a pool lookup with a
//! `getpeername` per reused connection, timers per read): see issue 12's profiles. Everything
//! else stays with Pingora, which gets the request's bytes untouched when the lane declines
//! (`set_pipelined_prefix`): request bodies, `Expect`, upgrades, HTTP/1.0, absolute-form
//! targets, TLS upstreams, a key refetch for an unknown `kid`, headers the lane does not parse.
//! The decision, the headers the upstream receives, the answers, the access log and the
//! metrics are the same on both paths (`Gate` is shared).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use http::header::{ACCESS_CONTROL_REQUEST_METHOD, AUTHORIZATION, CACHE_CONTROL, HOST, ORIGIN};
use http::{HeaderMap, HeaderValue, Method};
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::protocols::l4::stream::Stream as ClientStream;
use pingora_core::protocols::GetSocketDigest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at};

use super::proxy::{failure_answer, forwarded_for, not_forwarded, Done, Gate, Outcome, RequestCtx};
use super::Live;
use crate::decision::{Answer, Request};
use crate::upstream::UpstreamPool;

/// Headers a request may carry on the lane; more go to Pingora.
const MAX_HEADERS: usize = 96;

/// A response header larger than this is refused (502), as Pingora's limit does.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Idle upstream connections each worker keeps per upstream server.
const IDLE_PER_SERVER: usize = 128;

/// What became of the request at the start of the buffer.
pub enum Served {
    /// Answered; the connection may carry the next request (the buffer holds what followed).
    KeepAlive,
    /// Answered or failed; the connection is to be closed.
    Close,
    /// Not for the lane: the buffer is untouched, for Pingora.
    Declined,
}

/// One client connection's state on the lane.
#[derive(Default)]
pub struct Conn {
    /// The upstream connection of the last request, kept for the next.
    held: Option<Upstream>,
    /// The client's address as an `X-Forwarded-For` value, read once.
    client: Option<Option<HeaderValue>>,
    /// Upstream reads, then the bytes written to the client.
    rbuf: BytesMut,
    out: Vec<u8>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(up) = self.held.take() {
            park(up);
        }
    }
}

struct Upstream {
    addr: SocketAddr,
    stream: TcpStream,
    idle_since: Instant,
}

thread_local! {
    /// This worker's idle upstream connections (a worker is one thread with its own runtime,
    /// and a connection belongs to the runtime that opened it).
    static IDLE: RefCell<HashMap<SocketAddr, Vec<Upstream>>> = RefCell::new(HashMap::new());
}

/// How long a pooled upstream connection may sit idle (as Pingora's pool: `super::Live`).
const UPSTREAM_IDLE: Duration = super::UPSTREAM_IDLE;

fn park(mut up: Upstream) {
    up.idle_since = Instant::now();
    // Not after the worker's thread has begun to end.
    let _ = IDLE.try_with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.entry(up.addr).or_default();
        list.retain(|u| u.idle_since.elapsed() < UPSTREAM_IDLE);
        if list.len() < IDLE_PER_SERVER {
            list.push(up);
        }
    });
}

/// An idle connection to `addr` that has not been closed by the other side.
fn reuse(conn: &mut Conn, addr: SocketAddr, now: Instant) -> Option<Upstream> {
    let candidate = match conn.held.take() {
        Some(up) if up.addr == addr => Some(up),
        other => {
            if let Some(up) = other {
                park(up);
            }
            None
        }
    };
    let mut candidate = candidate.or_else(|| take_idle(addr));
    while let Some(up) = candidate {
        let idle = now.saturating_duration_since(up.idle_since);
        if idle < UPSTREAM_IDLE && still_open(&up.stream) {
            return Some(up);
        }
        candidate = take_idle(addr);
    }
    None
}

fn take_idle(addr: SocketAddr) -> Option<Upstream> {
    IDLE.try_with(|idle| idle.borrow_mut().get_mut(&addr).and_then(Vec::pop))
        .ok()
        .flatten()
}

/// An idle connection has nothing to read: end of stream or stray bytes make it unusable.
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Why no response came from the upstream.
enum UpstreamError {
    /// 504.
    Timeout,
    /// 502.
    Failed,
}

/// How the response body is delimited.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Body {
    None,
    Length(u64),
    Chunked,
    /// Until the upstream closes: sent on to the client chunked.
    UntilClose,
}

/// The parts of a parsed request the lane needs after parsing.
struct Parsed<'b> {
    method: Method,
    /// The target as received.
    target: &'b str,
    path: &'b str,
    query: Option<&'b str>,
    host: Option<&'b str>,
    close: bool,
    /// The headers the decision reads.
    decision_headers: HeaderMap,
    head_len: usize,
}

/// The request at the start of `buf`, when the lane takes it.
fn parse<'b>(
    buf: &'b [u8],
    headers: &'b mut [httparse::Header<'b>],
) -> Option<(Parsed<'b>, &'b [httparse::Header<'b>])> {
    let mut req = httparse::Request::new(headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    if req.version != Some(1) {
        return None;
    }
    let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
    let target = req.path?;
    if !target.starts_with('/') {
        return None;
    }
    // Pingora refuses what `http::Uri` does not accept; the lane leaves those to it.
    http::uri::PathAndQuery::try_from(target).ok()?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut close = false;
    let mut host = None;
    let mut decision_headers = HeaderMap::with_capacity(4);
    let headers: &'b [httparse::Header<'b>] = req.headers;
    for h in headers {
        let name = h.name.as_bytes();
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("content-length") {
            if h.value != b"0" {
                return None;
            }
        } else if is("transfer-encoding") || is("upgrade") || is("expect") {
            return None;
        } else if is("connection") {
            for token in h.value.split(|&c| c == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
                    // Other hop-by-hop headers named: Pingora's handling.
                    return None;
                }
            }
        } else if is("host") {
            decision_headers.append(HOST, HeaderValue::from_bytes(h.value).ok()?);
            host = std::str::from_utf8(h.value).ok();
        } else if is("authorization") {
            decision_headers.append(AUTHORIZATION, HeaderValue::from_bytes(h.value).ok()?);
        } else if is("origin") {
            decision_headers.append(ORIGIN, HeaderValue::from_bytes(h.value).ok()?);
        } else if is("access-control-request-method") {
            decision_headers.append(
                ACCESS_CONTROL_REQUEST_METHOD,
                HeaderValue::from_bytes(h.value).ok()?,
            );
        }
    }
    Some((
        Parsed {
            method,
            target,
            path,
            query,
            host,
            close,
            decision_headers,
            head_len,
        },
        headers,
    ))
}

fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

pub struct Lane {
    pub gate: Arc<Gate>,
}

impl Lane {
    /// Serve the request at the start of `buf` (a complete header), or decline it.
    pub async fn serve(
        &self,
        client: &mut ClientStream,
        buf: &mut BytesMut,
        conn: &mut Conn,
        shutting_down: bool,
    ) -> Served {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let Some((req, raw)) = parse(buf, &mut headers) else {
            return Served::Declined;
        };
        let mut ctx = RequestCtx::new();
        let live = self.gate.live.load_full();
        let request = Request {
            method: &req.method,
            path: req.path,
            headers: &req.decision_headers,
            authority: None,
            host_required: true,
            https: false,
        };
        let outcome = self.gate.decide_and_record(request, &live, &mut ctx);
        let keep_alive = !req.close && !shutting_down;
        let (status, failed, keep_alive) = match outcome {
            Outcome::RefreshKeys(..) => return Served::Declined,
            Outcome::Reply(answer) => {
                let status = answer.status;
                conn.out.clear();
                answer_bytes(
                    &mut conn.out,
                    &answer,
                    req.method == Method::HEAD,
                    keep_alive,
                );
                let sent = write(client, &conn.out).await;
                (status, sent.is_err(), keep_alive && sent.is_ok())
            }
            Outcome::Forward => {
                let Some(forward) = ctx.forward.as_ref() else {
                    return Served::Declined;
                };
                if live.snapshot.upstreams[forward.upstream].tls {
                    return Served::Declined;
                }
                if conn.client.is_none() {
                    conn.client = Some(client_ip(client));
                }
                ctx.live = Some(live.clone());
                self.forward(client, conn, &live, &req, raw, &mut ctx, keep_alive)
                    .await
            }
        };
        ctx.live.get_or_insert(live);
        let done = Done {
            method: req.method.as_str(),
            host: req.host.unwrap_or(""),
            path: req.path,
            status,
            failed,
        };
        self.gate.record(&mut ctx, &done);
        let head_len = req.head_len;
        drop(req);
        buf.advance(head_len);
        if keep_alive {
            Served::KeepAlive
        } else {
            Served::Close
        }
    }

    /// Forward an allowed request; (status written, failed, connection reusable).
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        client: &mut ClientStream,
        conn: &mut Conn,
        live: &Live,
        req: &Parsed<'_>,
        raw: &[httparse::Header<'_>],
        ctx: &mut RequestCtx,
        keep_alive: bool,
    ) -> (u16, bool, bool) {
        let Some(forward) = ctx.forward.as_ref() else {
            return (0, true, false);
        };
        let snapshot = &live.snapshot;
        let pool = &snapshot.upstreams[forward.upstream];
        // The upstream receives exactly the path that was authorized, in origin form.
        let mut out = std::mem::take(&mut conn.out);
        out.clear();
        out.extend_from_slice(req.method.as_str().as_bytes());
        out.push(b' ');
        match &forward.rewritten_path {
            Some(path) => {
                out.extend_from_slice(path.as_bytes());
                if let Some(q) = req.query {
                    out.push(b'?');
                    out.extend_from_slice(q.as_bytes());
                }
            }
            None => out.extend_from_slice(req.target.as_bytes()),
        }
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for h in raw {
            // The lane answers for the client connection itself: its `Connection` goes too.
            if !not_forwarded(h.name, snapshot) && !h.name.eq_ignore_ascii_case("connection") {
                put_header(&mut out, h.name.as_bytes(), h.value);
            }
        }
        if let Some(principal) = &forward.principal {
            for (name, value) in &principal.forward_headers {
                put_header(&mut out, name.as_str().as_bytes(), value.as_bytes());
            }
        }
        if let Some(Some(ip)) = &conn.client {
            put_header(&mut out, b"x-forwarded-for", ip.as_bytes());
        }
        put_header(&mut out, b"x-forwarded-proto", b"http");
        if let Some(host) = req.host {
            put_header(&mut out, b"x-forwarded-host", host.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        let sent = exchange(conn, pool, ctx, &out).await;
        conn.out = out;
        let up = match sent {
            Ok(up) => up,
            Err(e) => {
                let head_request = req.method == Method::HEAD;
                return fail(client, &mut conn.out, ctx, e, head_request).await;
            }
        };
        relay(client, conn, up, req, ctx, pool.read_timeout, keep_alive).await
    }
}

/// The 502 or 504 of an upstream that failed before answering; (status, failed, reusable).
async fn fail(
    client: &mut ClientStream,
    out: &mut Vec<u8>,
    ctx: &RequestCtx,
    e: UpstreamError,
    head_request: bool,
) -> (u16, bool, bool) {
    let code = match e {
        UpstreamError::Timeout => 504,
        UpstreamError::Failed => 502,
    };
    let mut answer = failure_answer(code);
    answer.headers.extend(ctx.cors_headers.iter().cloned());
    out.clear();
    answer_bytes(out, &answer, head_request, false);
    let _ = write(client, out).await;
    (code, true, false)
}

/// The client's address as an `X-Forwarded-For` value.
fn client_ip(client: &ClientStream) -> Option<HeaderValue> {
    let digest = client.get_socket_digest()?;
    match digest.peer_addr()? {
        PingoraAddr::Inet(a) => forwarded_for(a.ip()),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

async fn write(client: &mut ClientStream, bytes: &[u8]) -> io::Result<()> {
    client.write_all(bytes).await?;
    client.flush().await
}

/// An answer of scopegate's own, as Pingora would have written it.
fn answer_bytes(out: &mut Vec<u8>, answer: &Answer, head_only: bool, keep_alive: bool) {
    let status = http::StatusCode::from_u16(answer.status)
        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    status_line(
        out,
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
    );
    let body = answer.body_text();
    if let Some(body) = &body {
        put_header(out, b"content-type", b"application/json");
        put_header(out, b"content-length", body.len().to_string().as_bytes());
    }
    put_header(
        out,
        CACHE_CONTROL.as_str().as_bytes(),
        answer.cache_control().as_bytes(),
    );
    for (name, value) in &answer.headers {
        put_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    end_head(out, keep_alive);
    if let (Some(body), false) = (body, head_only) {
        out.extend_from_slice(body.as_bytes());
    }
}

fn status_line(out: &mut Vec<u8>, code: &str, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(code.as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `Date` and `Connection`, which Pingora sets on every response, and the blank line.
fn end_head(out: &mut Vec<u8>, keep_alive: bool) {
    let date = pingora_core::protocols::http::date::get_cached_date();
    put_header(out, b"date", date.as_bytes());
    put_header(
        out,
        b"connection",
        if keep_alive { b"keep-alive" } else { b"close" },
    );
    out.extend_from_slice(b"\r\n");
}

/// Send the request on a kept or new connection and read until a whole final response header
/// is in `conn.rbuf`. A kept connection that fails before answering is replaced once by a new
/// one (it was closed by the upstream while idle); a server that cannot be reached is marked
/// failed and the next one tried, as `fail_to_connect` does on Pingora's path.
async fn exchange(
    conn: &mut Conn,
    pool: &UpstreamPool,
    ctx: &mut RequestCtx,
    request: &[u8],
) -> Result<Upstream, UpstreamError> {
    let mut fresh_only = false;
    loop {
        ctx.server = pool.pick();
        let addr = pool.servers[ctx.server].addr;
        let kept = if fresh_only {
            None
        } else {
            reuse(conn, addr, ctx.started)
        };
        let reused = kept.is_some();
        let mut up = match kept {
            Some(up) => up,
            None => match connect(addr, pool.connect_timeout).await {
                Ok(up) => up,
                Err(e) => {
                    pool.mark_failed(ctx.server);
                    ctx.connect_failures += 1;
                    if ctx.connect_failures < pool.servers.len() {
                        continue;
                    }
                    return Err(e);
                }
            },
        };
        conn.rbuf.clear();
        // The response header is due `read_timeout` after the request came in (no clock read).
        let deadline = tokio::time::Instant::from_std(ctx.started) + pool.read_timeout;
        match send_and_read_head(&mut up.stream, request, &mut conn.rbuf, deadline).await {
            Ok(()) => return Ok(up),
            Err(UpstreamError::Failed) if reused && conn.rbuf.is_empty() => fresh_only = true,
            Err(e) => return Err(e),
        }
    }
}

async fn connect(addr: SocketAddr, limit: Duration) -> Result<Upstream, UpstreamError> {
    let stream = match timeout(limit, TcpStream::connect(addr)).await {
        Err(_) => return Err(UpstreamError::Timeout),
        Ok(Err(_)) => return Err(UpstreamError::Failed),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    Ok(Upstream {
        addr,
        stream,
        idle_since: Instant::now(),
    })
}

async fn send_and_read_head(
    stream: &mut TcpStream,
    request: &[u8],
    rbuf: &mut BytesMut,
    deadline: tokio::time::Instant,
) -> Result<(), UpstreamError> {
    match timeout_at(deadline, stream.write_all(request)).await {
        Err(_) => return Err(UpstreamError::Timeout),
        Ok(Err(_)) => return Err(UpstreamError::Failed),
        Ok(Ok(())) => {}
    }
    loop {
        let scan_from = rbuf.len().saturating_sub(3);
        read_by(stream, rbuf, deadline).await?;
        if rbuf[scan_from..].windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(());
        }
        if rbuf.len() > MAX_RESPONSE_HEAD {
            return Err(UpstreamError::Failed);
        }
    }
}

/// One read (at least one byte) under the read timeout.
async fn read_some(
    stream: &mut TcpStream,
    rbuf: &mut BytesMut,
    limit: Duration,
) -> Result<usize, UpstreamError> {
    read_by(stream, rbuf, tokio::time::Instant::now() + limit).await
}

/// One read (at least one byte) before `deadline`.
async fn read_by(
    stream: &mut TcpStream,
    rbuf: &mut BytesMut,
    deadline: tokio::time::Instant,
) -> Result<usize, UpstreamError> {
    if rbuf.capacity() - rbuf.len() < 1024 {
        rbuf.reserve(4096);
    }
    match timeout_at(deadline, stream.read_buf(rbuf)).await {
        Err(_) => Err(UpstreamError::Timeout),
        Ok(Ok(0)) | Ok(Err(_)) => Err(UpstreamError::Failed),
        Ok(Ok(n)) => Ok(n),
    }
}

/// The response head, with what the lane needs of it.
struct Head {
    len: usize,
    /// 1xx: an interim response, skipped (nothing was written to `out`).
    status: u16,
    body: Body,
    /// The upstream keeps the connection open after this response.
    reusable: bool,
}

/// Write the response header (filtered as on Pingora's path) into `out`; `None` when the
/// response is not one the lane passes on (502).
fn response_head(
    rbuf: &[u8],
    out: &mut Vec<u8>,
    head_request: bool,
    ctx: &RequestCtx,
    keep_alive: bool,
) -> Option<Result<Head, ()>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(rbuf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return None,
        Err(_) => return Some(Err(())),
    };
    let code = resp.code.unwrap_or(0);
    // Interim responses (100, 103) are not passed on; 101 was not asked for.
    if (100..200).contains(&code) {
        if code == 101 {
            return Some(Err(()));
        }
        return Some(Ok(Head {
            len,
            status: code,
            body: Body::None,
            reusable: true,
        }));
    }
    let Ok((body, coded, reusable)) = framing(&resp, code, head_request) else {
        return Some(Err(()));
    };
    let _ = write!(out, "HTTP/1.1 {code} {}\r\n", resp.reason.unwrap_or(""));
    for h in resp.headers.iter() {
        let name = h.name;
        let hop = ["connection", "keep-alive", "proxy-connection", "date"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n));
        let theirs_cors = ctx.cors_api
            && name.len() > 15
            && name.as_bytes()[..15].eq_ignore_ascii_case(b"access-control-");
        let stale_length = coded && name.eq_ignore_ascii_case("content-length");
        let recoded = body == Body::UntilClose && name.eq_ignore_ascii_case("transfer-encoding");
        if !(hop || theirs_cors || stale_length || recoded) {
            put_header(out, name.as_bytes(), h.value);
        }
    }
    if body == Body::UntilClose {
        put_header(out, b"transfer-encoding", b"chunked");
    }
    for (name, value) in &ctx.cors_headers {
        put_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    end_head(out, keep_alive);
    Some(Ok(Head {
        len,
        status: code,
        body,
        reusable,
    }))
}

/// How the body of a final response is delimited (RFC 9112 §6.3), whether it had a
/// `Transfer-Encoding`, and whether the upstream connection can carry another request after it.
fn framing(
    resp: &httparse::Response<'_, '_>,
    code: u16,
    head_request: bool,
) -> Result<(Body, bool, bool), ()> {
    let mut reusable = resp.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut coded = false;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            coded = true;
            chunked = h
                .value
                .rsplit(|&c| c == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let n: u64 = std::str::from_utf8(h.value)
                .map_err(|_| ())?
                .trim()
                .parse()
                .map_err(|_| ())?;
            if length.is_some_and(|l| l != n) {
                return Err(());
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"connection")
            && h.value
                .split(|&c| c == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        {
            reusable = false;
        }
    }
    let body = if head_request || code == 204 || code == 304 {
        Body::None
    } else if coded && chunked {
        Body::Chunked
    } else if coded {
        Body::UntilClose
    } else if let Some(n) = length {
        Body::Length(n)
    } else {
        Body::UntilClose
    };
    if body == Body::UntilClose || (coded && !chunked) {
        reusable = false;
    }
    Ok((body, coded, reusable))
}

/// Pass the response in `conn.rbuf` (and what follows of it) to the client; (status,
/// failed, client connection reusable).
async fn relay(
    client: &mut ClientStream,
    conn: &mut Conn,
    mut up: Upstream,
    req: &Parsed<'_>,
    ctx: &RequestCtx,
    limit: Duration,
    keep_alive: bool,
) -> (u16, bool, bool) {
    let head_request = req.method == Method::HEAD;
    let mut out = std::mem::take(&mut conn.out);
    let head = loop {
        out.clear();
        match response_head(&conn.rbuf, &mut out, head_request, ctx, keep_alive) {
            Some(Ok(head)) if head.status < 200 => {
                conn.rbuf.advance(head.len);
                if conn.rbuf.windows(4).any(|w| w == b"\r\n\r\n") {
                    continue;
                }
            }
            Some(Ok(head)) => break Ok(head),
            Some(Err(())) => break Err(UpstreamError::Failed),
            None => {}
        }
        if conn.rbuf.len() > MAX_RESPONSE_HEAD {
            break Err(UpstreamError::Failed);
        }
        if let Err(e) = read_some(&mut up.stream, &mut conn.rbuf, limit).await {
            break Err(e);
        }
    };
    let head = match head {
        Ok(h) => h,
        Err(e) => {
            conn.out = out;
            return fail(client, &mut conn.out, ctx, e, head_request).await;
        }
    };
    let status = head.status;
    conn.rbuf.advance(head.len);
    let result = relay_body(client, &mut up, &mut conn.rbuf, &mut out, head.body, limit).await;
    conn.out = out;
    match result {
        Ok(clean) => {
            if clean && head.reusable {
                up.idle_since = ctx.started;
                conn.held = Some(up);
            }
            (status, false, keep_alive)
        }
        Err(()) => (status, true, false),
    }
}

/// Write the head in `out` and the body after it; Ok(true) when the upstream connection
/// ended exactly at the body's end.
async fn relay_body(
    client: &mut ClientStream,
    up: &mut Upstream,
    rbuf: &mut BytesMut,
    out: &mut Vec<u8>,
    body: Body,
    limit: Duration,
) -> Result<bool, ()> {
    match body {
        Body::None => {
            write(client, out).await.map_err(|_| ())?;
            Ok(rbuf.is_empty())
        }
        Body::Length(n) => {
            let mut left = n;
            loop {
                let take = (rbuf.len() as u64).min(left) as usize;
                out.extend_from_slice(&rbuf[..take]);
                rbuf.advance(take);
                left -= take as u64;
                write(client, out).await.map_err(|_| ())?;
                out.clear();
                if left == 0 {
                    return Ok(rbuf.is_empty());
                }
                rbuf.clear();
                read_some(&mut up.stream, rbuf, limit)
                    .await
                    .map_err(|_| ())?;
            }
        }
        Body::Chunked => {
            let mut chunks = Chunks::default();
            loop {
                let end = chunks.feed(rbuf)?;
                let take = end.unwrap_or(rbuf.len());
                out.extend_from_slice(&rbuf[..take]);
                rbuf.advance(take);
                write(client, out).await.map_err(|_| ())?;
                out.clear();
                if end.is_some() {
                    return Ok(rbuf.is_empty());
                }
                rbuf.clear();
                read_some(&mut up.stream, rbuf, limit)
                    .await
                    .map_err(|_| ())?;
            }
        }
        Body::UntilClose => loop {
            if !rbuf.is_empty() {
                out.extend_from_slice(format!("{:x}\r\n", rbuf.len()).as_bytes());
                out.extend_from_slice(rbuf);
                out.extend_from_slice(b"\r\n");
                rbuf.clear();
            }
            match read_some(&mut up.stream, rbuf, limit).await {
                Ok(_) => {
                    write(client, out).await.map_err(|_| ())?;
                    out.clear();
                }
                Err(UpstreamError::Failed) => {
                    out.extend_from_slice(b"0\r\n\r\n");
                    write(client, out).await.map_err(|_| ())?;
                    return Ok(false);
                }
                Err(UpstreamError::Timeout) => {
                    let _ = write(client, out).await;
                    return Err(());
                }
            }
        },
    }
}

/// Where a chunked body ends (RFC 9112 §7.1), found while its bytes pass through unchanged.
#[derive(Default)]
struct Chunks {
    state: ChunkState,
    size: u64,
    digits: u8,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    FinalLf,
}

impl Chunks {
    /// Feed the next bytes; the offset just past the body's end once it is in `data`.
    fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, ()> {
        use ChunkState::*;
        let mut i = 0;
        while i < data.len() {
            if self.state == Data {
                let take = (self.size.min((data.len() - i) as u64)) as usize;
                self.size -= take as u64;
                i += take;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let c = data[i];
            i += 1;
            self.state = match (self.state, c) {
                (Size, c) if c.is_ascii_hexdigit() => {
                    if self.digits >= 15 {
                        return Err(());
                    }
                    self.digits += 1;
                    self.size = self.size * 16 + (c as char).to_digit(16).unwrap_or(0) as u64;
                    Size
                }
                (Size, b';' | b' ' | b'\t') if self.digits > 0 => Extension,
                (Size, b'\r') if self.digits > 0 => SizeLf,
                (Extension, b'\r') => SizeLf,
                (Extension, b'\n') => return Err(()),
                (Extension, _) => Extension,
                (SizeLf, b'\n') if self.size == 0 => TrailerStart,
                (SizeLf, b'\n') => Data,
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => {
                    self.digits = 0;
                    Size
                }
                (TrailerStart, b'\r') => FinalLf,
                (TrailerStart, b'\n') => return Err(()),
                (TrailerStart, _) | (Trailer, _) if c != b'\r' => Trailer,
                (Trailer, b'\r') => TrailerLf,
                (TrailerLf, b'\n') => TrailerStart,
                (FinalLf, b'\n') => return Ok(Some(i)),
                _ => return Err(()),
            };
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end_of(parts: &[&[u8]]) -> Result<Option<usize>, ()> {
        let mut c = Chunks::default();
        let mut seen = 0;
        for p in parts {
            if let Some(end) = c.feed(p)? {
                return Ok(Some(seen + end));
            }
            seen += p.len();
        }
        Ok(None)
    }

    #[test]
    fn the_end_of_a_chunked_body_is_found_however_it_is_split() {
        let body: &[u8] =
            b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        assert_eq!(end_of(&[body]), Ok(Some(end)));
        for split in 1..body.len() - 1 {
            assert_eq!(
                end_of(&[&body[..split], &body[split..]]),
                Ok(Some(end)),
                "{split}"
            );
        }
        assert_eq!(end_of(&[b"0\r\n\r\n"]), Ok(Some(5)));
        assert_eq!(end_of(&[b"5\r\nhel"]), Ok(None));
    }

    #[test]
    fn a_malformed_chunked_body_is_an_error() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloX",
            b"5\nhello\r\n",
            b"ffffffffffffffff1\r\n",
        ] {
            assert_eq!(
                end_of(&[bad]),
                Err(()),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn requests_the_lane_leaves_to_pingora() {
        let declined = [
            &b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"[..],
            b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET /a HTTP/1.0\r\nHost: h\r\n\r\n",
            b"GET http://h/a HTTP/1.1\r\nHost: h\r\n\r\n",
            b"PUT /a HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, x-secret\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: h\r\n",
        ];
        let takes = |raw: &[u8]| {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            parse(raw, &mut headers).is_some()
        };
        for d in declined {
            assert!(!takes(d), "{}", String::from_utf8_lossy(d));
        }
        let taken = [
            &b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n"[..],
            b"DELETE /a HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ];
        for t in taken {
            assert!(takes(t), "{}", String::from_utf8_lossy(t));
        }
    }
}

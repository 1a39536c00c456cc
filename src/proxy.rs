//! The Pingora layer: loads the live snapshot once per request, asks `decide`, and carries out
//! the answer (an error response, or forwarding to the route's upstream).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HOST,
    WWW_AUTHENTICATE,
};
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::decision::{decide, Decision};
use crate::metrics::Metrics;
use crate::snapshot::{quoted, Snapshot};
use crate::token::{Principal, Rejection};

pub struct ScopeGate {
    pub live: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    pub fetcher: Arc<crate::jwks::JwksFetcher>,
}

/// Requests between their header being read and their context being dropped; the shutdown
/// drain waits for this to reach zero.
pub static IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Per-request state, from `request_filter` to `logging`.
pub struct RequestCtx {
    started: Instant,
    snapshot: Option<Arc<Snapshot>>,
    route: Option<usize>,
    decision: &'static str,
    /// The normalized path when it differs from the one received.
    rewritten_path: Option<String>,
    principal: Option<Arc<Principal>>,
    upstream: usize,
    server: usize,
    connect_failures: usize,
    /// Why the token was refused, for `scopegate_token_rejections_total`.
    rejection: Option<&'static str>,
}

impl Drop for RequestCtx {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// An error response: status, the headers that go with it, and the JSON body.
pub struct ErrorResponse {
    pub status: u16,
    pub headers: Vec<(http::HeaderName, HeaderValue)>,
    pub error: &'static str,
    pub description: &'static str,
}

impl ErrorResponse {
    fn plain(status: u16, error: &'static str, description: &'static str) -> ErrorResponse {
        ErrorResponse {
            status,
            headers: Vec::new(),
            error,
            description,
        }
    }

    pub fn body(&self) -> Bytes {
        let body =
            serde_json::json!({ "error": self.error, "error_description": self.description });
        Bytes::from(body.to_string())
    }

    fn header(&self) -> pingora_core::Result<ResponseHeader> {
        let mut resp = ResponseHeader::build(self.status, Some(4 + self.headers.len()))?;
        resp.insert_header(CONTENT_TYPE, "application/json")?;
        resp.insert_header(CACHE_CONTROL, "no-store")?;
        for (name, value) in &self.headers {
            resp.append_header(name.clone(), value.clone())?;
        }
        Ok(resp)
    }
}

/// The response for a decision that is not "forward".
pub fn error_response(snapshot: &Snapshot, decision: &Decision<'_>) -> Option<ErrorResponse> {
    Some(match decision {
        Decision::Forward { .. } => return None,
        Decision::BadRequest { description } => {
            ErrorResponse::plain(400, "invalid_request", description)
        }
        // RFC 6750 §3.1: no error code when the request had no token at all.
        Decision::Unauthenticated {
            rejection: Rejection::Missing,
            ..
        } => ErrorResponse {
            status: 401,
            headers: vec![(WWW_AUTHENTICATE, snapshot.challenge.clone())],
            error: "unauthorized",
            description: Rejection::Missing.description(),
        },
        Decision::Unauthenticated { rejection: r, .. } => {
            let challenge = format!(
                "Bearer realm={}, error=\"invalid_token\", error_description={}",
                quoted(&snapshot.realm),
                quoted(r.description())
            );
            ErrorResponse {
                status: 401,
                headers: vec![(WWW_AUTHENTICATE, HeaderValue::from_str(&challenge).ok()?)],
                error: "invalid_token",
                description: r.description(),
            }
        }
        Decision::NotFound => ErrorResponse::plain(404, "not_found", "no route for this path"),
        Decision::MethodNotAllowed { allow } => ErrorResponse {
            status: 405,
            headers: vec![(ALLOW, HeaderValue::from_str(allow.as_ref()).ok()?)],
            error: "method_not_allowed",
            description: "the path has no route for this method",
        },
        Decision::Forbidden { route } => ErrorResponse {
            status: 403,
            headers: vec![(
                WWW_AUTHENTICATE,
                snapshot.routes[*route].insufficient_scope_challenge.clone(),
            )],
            error: "insufficient_scope",
            description: "the token lacks a scope this route requires",
        },
    })
}

async fn send_error(session: &mut Session, resp: &ErrorResponse) -> pingora_core::Result<()> {
    let body = resp.body();
    let mut header = resp.header()?;
    header.insert_header(CONTENT_LENGTH, body.len())?;
    // A request body we did not read would be taken for the next request on this connection.
    if !session.is_body_empty() {
        session.set_keepalive(None);
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(header), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

fn client_ip(session: &Session) -> Option<String> {
    match session.client_addr()? {
        PingoraAddr::Inet(a) => Some(a.ip().to_string()),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

impl ScopeGate {
    /// Decide, note the outcome in `ctx`, and return the error response to send (if any) and
    /// the issuer whose key set lacked the token's `kid` (if that was the reason).
    fn decide_and_record(
        &self,
        session: &Session,
        snapshot: &Arc<Snapshot>,
        ctx: &mut RequestCtx,
    ) -> (Option<ErrorResponse>, Option<usize>) {
        let req = session.req_header();
        let decision = decide(snapshot, &req.method, req.uri.path(), &req.headers);
        ctx.decision = decision.label();
        ctx.route = decision.route();
        ctx.rejection = match &decision {
            Decision::Unauthenticated { rejection, .. } => Some(rejection.reason()),
            _ => None,
        };
        let unknown_key = match &decision {
            Decision::Unauthenticated {
                rejection: Rejection::UnknownKey(i),
                ..
            } => Some(*i),
            _ => None,
        };
        let response = match decision {
            Decision::Forward {
                route,
                path,
                principal,
            } => {
                if let std::borrow::Cow::Owned(p) = path {
                    ctx.rewritten_path = Some(p);
                }
                ctx.principal = principal;
                ctx.upstream = snapshot.routes[route].upstream;
                None
            }
            other => error_response(snapshot, &other),
        };
        (response, unknown_key)
    }
}

#[async_trait]
impl ProxyHttp for ScopeGate {
    type CTX = RequestCtx;

    // No response compression module: an edge auth proxy passes bodies through as they are,
    // and the (disabled) default module still costs a context per request.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        IN_FLIGHT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        RequestCtx {
            started: Instant::now(),
            snapshot: None,
            route: None,
            decision: "bad_request",
            rewritten_path: None,
            principal: None,
            upstream: 0,
            server: 0,
            connect_failures: 0,
            rejection: None,
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora_core::Result<bool> {
        let snapshot = self.live.load_full();
        let (mut outcome, unknown_key) = self.decide_and_record(session, &snapshot, ctx);
        // An unknown `kid` may be a key the provider has just rotated in: refetch (once for all
        // requests waiting on it, at most once per cooldown) and decide again.
        if let Some(i) = unknown_key {
            let issuer = &snapshot.issuers[i];
            if self
                .fetcher
                .refresh_for_unknown_kid(issuer, issuer.keys.version())
                .await
            {
                outcome = self.decide_and_record(session, &snapshot, ctx).0;
            }
        }
        ctx.snapshot = Some(snapshot);
        match outcome {
            None => Ok(false),
            Some(resp) => {
                send_error(session, &resp).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora_core::Result<Box<HttpPeer>> {
        let snapshot = ctx
            .snapshot
            .as_ref()
            .ok_or_else(|| Error::new(ErrorType::InternalError))?;
        let pool = &snapshot.upstreams[ctx.upstream];
        ctx.server = pool.pick();
        let mut peer = HttpPeer::new(pool.servers[ctx.server].addr, pool.tls, pool.sni.clone());
        peer.options.connection_timeout = Some(pool.connect_timeout);
        peer.options.total_connection_timeout = Some(pool.connect_timeout);
        peer.options.read_timeout = Some(pool.read_timeout);
        peer.options.write_timeout = Some(pool.read_timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        peer.options.ca = pool.ca.clone();
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora_core::Result<()> {
        let Some(snapshot) = ctx.snapshot.as_ref() else {
            return Error::e_explain(ErrorType::InternalError, "no snapshot");
        };
        // The upstream receives exactly the path that was authorized, in origin form.
        if ctx.rewritten_path.is_some() || upstream.uri.authority().is_some() {
            let path = ctx
                .rewritten_path
                .as_deref()
                .unwrap_or_else(|| upstream.uri.path());
            let target = match upstream.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_string(),
            };
            let uri: http::Uri = target
                .parse()
                .map_err(|_| Error::new(ErrorType::InvalidHTTPHeader))?;
            upstream.set_uri(uri);
        }

        // Claim headers are ours alone: drop whatever the client sent under those names.
        for (_, name) in &snapshot.forward.claim_headers {
            upstream.remove_header(name);
        }
        if let Some(principal) = &ctx.principal {
            for (name, value) in &principal.forward_headers {
                upstream.insert_header(name.clone(), value.clone())?;
            }
        }
        if snapshot.forward.strip_token {
            upstream.remove_header(&AUTHORIZATION);
        }

        // We are the edge: forwarding headers from the client are replaced, not trusted.
        if let Some(ip) = client_ip(session) {
            upstream.insert_header("x-forwarded-for", ip)?;
        } else {
            upstream.remove_header("x-forwarded-for");
        }
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        upstream.insert_header("x-forwarded-proto", if tls { "https" } else { "http" })?;
        let host = session.req_header().headers.get(HOST).cloned().or_else(|| {
            session
                .req_header()
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        match host {
            Some(h) => upstream.insert_header("x-forwarded-host", h)?,
            None => {
                upstream.remove_header("x-forwarded-host");
            }
        }
        upstream.remove_header("forwarded");
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(snapshot) = &ctx.snapshot {
            let pool = &snapshot.upstreams[ctx.upstream];
            pool.mark_failed(ctx.server);
            ctx.connect_failures += 1;
            // Nothing was sent yet, so another server can take the request.
            if ctx.connect_failures < pool.servers.len() {
                e.set_retry(true);
            }
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if *e.esource() == ErrorSource::Upstream =>
            {
                504
            }
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 {
            let resp = match code {
                502 => {
                    ErrorResponse::plain(502, "bad_gateway", "the upstream could not be reached")
                }
                504 => ErrorResponse::plain(
                    504,
                    "gateway_timeout",
                    "the upstream did not answer in time",
                ),
                400 => {
                    ErrorResponse::plain(400, "invalid_request", "the request could not be read")
                }
                _ => ErrorResponse::plain(
                    code,
                    "internal_error",
                    "the request could not be completed",
                ),
            };
            let body = resp.body();
            if let Ok(mut header) = resp.header() {
                let _ = header.insert_header(CONTENT_LENGTH, body.len());
                let _ = session
                    .downstream_session
                    .write_error_response(header, body)
                    .await;
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.started.elapsed();
        let snapshot = ctx.snapshot.as_deref();
        let route_label = match (snapshot, ctx.route) {
            (Some(s), Some(r)) => s.routes[r].label.as_str(),
            _ => "none",
        };
        let upstream = match (snapshot, ctx.decision) {
            (Some(s), "allowed" | "public") => Some(&s.upstreams[ctx.upstream]),
            _ => None,
        };
        let labels = snapshot.map(|s| &s.labels);
        self.metrics
            .request(labels, ctx.route, route_label, ctx.decision, elapsed);
        if let Some(reason) = ctx.rejection {
            self.metrics.token_rejected(reason);
        }
        if let Some(pool) = upstream {
            let class = if e.is_some() && status >= 500 && status != 503 {
                "error"
            } else {
                match status {
                    200..=299 => "2xx",
                    100..=199 => "1xx",
                    300..=399 => "3xx",
                    400..=499 => "4xx",
                    500..=599 => "5xx",
                    _ => "error",
                }
            };
            self.metrics
                .upstream_response(labels, ctx.upstream, &pool.name, class);
        }
        // One line per request; the token itself is never logged, only who it names.
        tracing::info!(
            target: "scopegate::access",
            method = %session.req_header().method,
            route = route_label,
            decision = ctx.decision,
            status,
            upstream = upstream.map(|p| p.name.as_str()).unwrap_or("-"),
            latency_us = elapsed.as_micros() as u64,
            sub = ctx.principal.as_ref().and_then(|p| p.sub.as_deref()).unwrap_or("-"),
            error = e.map(|e| e.etype().as_str()).unwrap_or("-"),
        );
    }
}

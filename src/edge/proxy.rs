//! The `ProxyHttp`: loads the live config once per request, asks `decide`, and carries out the
//! answer (an error response, or forwarding to the route's upstream).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HOST,
};
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use super::access_log::{AccessLog, Entry};
use super::clock::{unix_at, wall_at};
use super::console::refusals::{RefusalLog, RefusedRef};
use super::metrics::Metrics;
use super::traces::{Finished, RequestTrace, Traces};
use super::{Live, LiveConfig};
use crate::auth::dpop::Proof;
use crate::auth::jwks::JwksFetcher;
use crate::auth::{Principal, Rejection, RejectionReason};
use crate::decision::{
    decide, replay_refusal, Answer, Decision, DecisionLabel, Refusal, Report, Request, TargetFlaw,
};
use crate::snapshot::Snapshot;
use crate::upstream::ResponseClass;

/// What every request needs: the live config, metrics, the key fetcher and the access log.
pub struct Gate {
    pub live: LiveConfig,
    pub metrics: Arc<Metrics>,
    pub fetcher: Arc<JwksFetcher>,
    pub access_log: AccessLog,
    /// Per-caller quota counts (step 7b), kept across reloads.
    pub quotas: crate::quota::Quotas,
    /// The console's last refusals.
    pub refusals: Arc<RefusalLog>,
    /// `[tracing]`; `None`: no tracing work at all.
    pub traces: Option<Traces>,
    /// DPoP proofs seen (replay detection), in the shared store or in-process.
    pub replays: super::replay::Replays,
}

/// The `ProxyHttp` that carries out decisions.
#[derive(Clone)]
pub struct ScopeGate(pub Arc<Gate>);

impl std::ops::Deref for ScopeGate {
    type Target = Gate;
    fn deref(&self) -> &Gate {
        &self.0
    }
}

/// Requests between their header being read and their context being dropped; the shutdown
/// drain waits for this to reach zero.
pub static IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many requests may be in flight at once, each holding at most one upstream connection,
/// within the process's descriptors (set at start, see `server::connection_budget`). Past it a
/// request is answered 503 instead of an upstream connect failing with EMFILE.
pub static FORWARD_BUDGET: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(usize::MAX);

/// What an allowed decision hands on to the forwarding callbacks. Only made from a `ForwardTo`.
pub(super) struct Forwarding {
    pub(super) upstream: usize,
    /// The route allows `Upgrade: websocket`.
    websocket: bool,
    /// The normalized path when it differs from the one received.
    pub(super) rewritten_path: Option<String>,
    pub(super) principal: Option<Arc<Principal>>,
}

/// Per-request state, from `request_filter` to `logging`.
pub struct RequestCtx {
    pub(super) started: Instant,
    pub(super) live: Option<Arc<Live>>,
    pub(super) route: Option<usize>,
    pub(super) decision: DecisionLabel,
    /// Set only when the decision was to forward.
    pub(super) forward: Option<Forwarding>,
    pub(super) server: usize,
    pub(super) connect_failures: usize,
    /// Why the token was refused, for `scopegate_token_rejections_total`.
    pub(super) rejection: Option<RejectionReason>,
    /// The request's API has `cors`: the upstream's own `Access-Control-*` headers are dropped.
    pub(super) cors_api: bool,
    /// CORS headers for an allowed origin, added to every answer.
    pub(super) cors_headers: Vec<(HeaderName, HeaderValue)>,
    /// Report-only: what the decision would have been.
    pub(super) report: Option<Report>,
    /// The access log's `reason`.
    pub(super) reason: Option<&'static str>,
    /// Who a valid token named (also on a refusal), for the access log.
    pub(super) principal: Option<Arc<Principal>>,
    /// The normalized path when it differs from the one received, for the access log.
    pub(super) normalized: Option<String>,
    /// What became of the upstream's response, when it broke HTTP framing.
    pub(super) upstream_failure: Option<UpstreamFailure>,
    /// The client scopegate believes, for the access log.
    pub(super) client: Option<std::net::IpAddr>,
    /// `RateLimit-Policy` and `RateLimit` for an allowed request under a quota.
    pub(super) rate_limit: super::quota::RateLimitFields,
    /// The request's spans, with `[tracing]`.
    pub(super) trace: Option<Box<RequestTrace>>,
    /// A DPoP proof that passed its checks, to be recorded against replay, and the API its
    /// settings come from.
    pub(super) proof: Option<(Proof, Option<usize>)>,
    /// The request's API has `dpop_nonce`: every answer carries a fresh `DPoP-Nonce`.
    pub(super) dpop_nonce: bool,
}

/// An upstream response that broke HTTP framing (SPEC "Requests on the wire").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UpstreamFailure {
    /// Before anything was sent to the client: answered 502, counted as the 5xx it is.
    Framing,
    /// After the head was sent: the client connection was closed mid-body.
    Body,
}

impl Drop for RequestCtx {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What `request_filter` does next.
pub(super) enum Outcome {
    Forward,
    /// 200 with a JSON document (protected resource metadata).
    Reply(Answer),
    /// A 401 for an unknown `kid` of this issuer: refetch its keys, then decide again.
    RefreshKeys(usize, Answer),
}

fn response_header(resp: &Answer, body: Option<&Bytes>) -> pingora_core::Result<ResponseHeader> {
    let mut header = ResponseHeader::build(resp.status, Some(4 + resp.headers.len()))?;
    if let Some(body) = body {
        header.insert_header(CONTENT_TYPE, "application/json")?;
        header.insert_header(CONTENT_LENGTH, body.len())?;
    }
    header.insert_header(CACHE_CONTROL, resp.cache_control())?;
    for (name, value) in &resp.headers {
        header.append_header(name.clone(), value.clone())?;
    }
    Ok(header)
}

async fn send_answer(session: &mut Session, resp: &Answer) -> pingora_core::Result<()> {
    let body = resp.body_text().map(Bytes::from);
    let header = response_header(resp, body.as_ref())?;
    // A request body we did not read would be taken for the next request on this connection.
    if !session.is_body_empty() {
        session.set_keepalive(None);
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    let body = body.filter(|_| !head_only);
    session
        .write_response_header(Box::new(header), body.is_none())
        .await?;
    if let Some(body) = body {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// The answer to a request that failed after its decision (upstream unreachable or slow, a
/// request that could not be read).
fn failure_answer(code: u16) -> Answer {
    match code {
        502 => Answer::error(502, "bad_gateway", "the upstream could not be reached"),
        504 => Answer::error(
            504,
            "gateway_timeout",
            "the upstream did not answer in time",
        ),
        400 => Answer::error(400, "invalid_request", "the request could not be read"),
        _ => Answer::error(code, "internal_error", "the request could not be completed"),
    }
}

/// RFC 6455 §4.2.2: the accept value is base64(SHA-1(key + the protocol's GUID)).
fn websocket_accept_matches(key: Option<&HeaderValue>, accept: Option<&HeaderValue>) -> bool {
    use base64::Engine;
    let (Some(key), Some(accept)) = (key, accept) else {
        return false;
    };
    let mut input = key.as_bytes().to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    let expected = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    accept.as_bytes() == expected.as_bytes()
}

thread_local! {
    /// The last client address this worker rendered, and its `X-Forwarded-For` value: requests
    /// come in runs from one address (keep-alive connections, a load balancer in front).
    static LAST_CLIENT: std::cell::RefCell<Option<(std::net::IpAddr, HeaderValue)>> =
        const { std::cell::RefCell::new(None) };
}

/// The address of the connection's peer.
fn peer_ip(session: &Session) -> Option<std::net::IpAddr> {
    match session.client_addr()? {
        PingoraAddr::Inet(a) => Some(a.ip()),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// The peer is one of `[server] trusted_proxies`: its forwarding headers are believed.
fn from_trusted(session: &Session, snapshot: &Snapshot) -> bool {
    let trusted = &snapshot.process.trusted_proxies;
    !trusted.is_empty() && peer_ip(session).is_some_and(|ip| trusted.contains(ip))
}

/// The client scopegate believes: the peer, or behind trusted proxies the rightmost
/// `X-Forwarded-For` entry that is not one of them.
pub(super) fn believed_client(session: &Session, snapshot: &Snapshot) -> Option<std::net::IpAddr> {
    let peer = peer_ip(session)?;
    let trusted = &snapshot.process.trusted_proxies;
    if trusted.is_empty() {
        return Some(peer);
    }
    let chain = session
        .req_header()
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok());
    Some(trusted.client(peer, chain))
}

/// `ip` as an `X-Forwarded-For` value, rendered once per run of requests from one address.
fn forwarded_for(ip: std::net::IpAddr) -> Option<HeaderValue> {
    LAST_CLIENT.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((seen, value)) if *seen == ip => Some(value.clone()),
            _ => {
                let value = HeaderValue::try_from(ip.to_string()).ok()?;
                *last = Some((ip, value.clone()));
                Some(value)
            }
        }
    })
}

/// A request header never passed on as the client sent it: claim headers (ours alone), the
/// token and its DPoP proof when `strip_token`, forwarding headers (we are the edge: replaced, not trusted),
/// hop-by-hop and proxy headers, and names with `_`, which CGI and WSGI backends read as `-`
/// (nginx drops them by default, for the same reason). Pingora's upstream request policy
/// strips hop-by-hop headers and those `Connection` names before this runs; the list holds
/// them too, so what is never forwarded is written down in one place. `Connection` and
/// `Upgrade` are Pingora's: it keeps them for a websocket handshake only, and they are removed
/// again for a route without `websocket = true`.
pub(super) fn not_forwarded(name: &str, snapshot: &Snapshot, trusted_peer: bool) -> bool {
    // From a trusted load balancer, its `X-Forwarded-*` and `Client-Cert` (RFC 9440) are
    // passed on; from anyone else they are a client's claims about itself.
    let forwarding = name.len() > 12 && name[..12].eq_ignore_ascii_case("x-forwarded-")
        || name.eq_ignore_ascii_case("client-cert")
        || name.eq_ignore_ascii_case("client-cert-chain");
    if forwarding {
        return !trusted_peer;
    }
    const ALWAYS: [&str; 8] = [
        "forwarded",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "http2-settings",
    ];
    name.contains('_')
        || ALWAYS.iter().any(|a| name.eq_ignore_ascii_case(a))
        || (snapshot.forward.strip_token
            && (name.eq_ignore_ascii_case(AUTHORIZATION.as_str())
                || name.eq_ignore_ascii_case(crate::sender::DPOP.as_str())))
        || snapshot
            .verifier
            .claim_headers()
            .any(|c| name.eq_ignore_ascii_case(c.as_str()))
}

/// Response fields that describe the upstream's connection, never passed on to the client.
const HOP_BY_HOP_RESPONSE: [&str; 5] = [
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
];

/// The upstream receives exactly the target that was decided on, in origin form: the bytes
/// Pingora would send are compared with it, and replaced when they differ (absolute form, a
/// path that was normalized).
fn set_decided_target(
    upstream: &mut RequestHeader,
    rewritten: Option<&str>,
) -> pingora_core::Result<()> {
    let (path, query) = forwarded_target(&upstream.uri, rewritten);
    let wire = upstream.raw_path();
    let same = match query {
        None => wire == path.as_bytes(),
        Some(q) => {
            wire.len() == path.len() + 1 + q.len()
                && wire.starts_with(path.as_bytes())
                && wire[path.len()] == b'?'
                && wire.ends_with(q.as_bytes())
        }
    };
    if !same {
        let target = match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        let uri: http::Uri = target
            .parse()
            .map_err(|_| Error::new(ErrorType::InvalidHTTPHeader))?;
        upstream.set_uri(uri);
    }

    Ok(())
}

/// `X-Forwarded-For`/`-Proto`/`-Host`: from the connection, or behind a trusted balancer its
/// own (the chain with the balancer appended).
fn set_forwarding_headers(
    session: &Session,
    upstream: &mut RequestHeader,
    trusted: bool,
) -> pingora_core::Result<()> {
    let peer = peer_ip(session);
    if trusted {
        // The balancer's chain, with the balancer itself appended.
        let mut chain: Vec<u8> = Vec::new();
        for v in session.req_header().headers.get_all("x-forwarded-for") {
            if !chain.is_empty() {
                chain.extend_from_slice(b", ");
            }
            chain.extend_from_slice(v.as_bytes());
        }
        if let Some(ip) = peer {
            if !chain.is_empty() {
                chain.extend_from_slice(b", ");
            }
            chain.extend_from_slice(ip.to_string().as_bytes());
        }
        if let Ok(v) = HeaderValue::from_bytes(&chain) {
            upstream.insert_header("x-forwarded-for", v)?;
        }
    } else if let Some(ip) = peer.and_then(forwarded_for) {
        upstream.insert_header("x-forwarded-for", ip)?;
    }
    if !trusted || !upstream.headers.contains_key("x-forwarded-proto") {
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        upstream.insert_header("x-forwarded-proto", if tls { "https" } else { "http" })?;
    }
    if !trusted || !upstream.headers.contains_key("x-forwarded-host") {
        let host = session.req_header().headers.get(HOST).cloned().or_else(|| {
            session
                .req_header()
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        if let Some(h) = host {
            upstream.insert_header("x-forwarded-host", h)?;
        }
    }
    Ok(())
}

/// The request as the decision reads it: the values Pingora's session parsed, and what of the
/// target's wire form the parsed value does not show.
fn request_of<'s>(
    session: &'s Session,
    snapshot: &Snapshot,
    target_flaw: Option<TargetFlaw>,
    client_cert: Option<&'s str>,
) -> Request<'s> {
    let req = session.req_header();
    // Behind a trusted balancer, the scheme the client used is the one it names.
    let https = match req.headers.get("x-forwarded-proto") {
        Some(proto) if from_trusted(session, snapshot) => {
            proto.as_bytes().eq_ignore_ascii_case(b"https")
        }
        _ => session.digest().is_some_and(|d| d.ssl_digest.is_some()),
    };
    Request {
        method: &req.method,
        path: req.uri.path(),
        headers: &req.headers,
        authority: req.uri.authority().map(|a| a.as_str()),
        host_required: req.version == http::Version::HTTP_11,
        https,
        target_flaw,
        client_cert,
    }
}

/// The SHA-256 thumbprint (base64url, as `cnf["x5t#S256"]` names it) of the client's
/// certificate: from a trusted proxy its RFC 9440 `Client-Cert` (`:base64-DER:`), else the
/// one the client presented in this connection's TLS handshake.
fn client_cert_thumbprint(session: &Session, snapshot: &Snapshot) -> Option<String> {
    use base64::Engine;
    let b64url = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    if from_trusted(session, snapshot) {
        let mut values = session.req_header().headers.get_all("client-cert").iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return None;
        };
        let inner = value.as_bytes().strip_prefix(b":")?.strip_suffix(b":")?;
        let der = base64::engine::general_purpose::STANDARD
            .decode(inner)
            .ok()?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
        return Some(b64url(digest.as_ref()));
    }
    let digest = session.digest()?.ssl_digest.clone()?;
    (!digest.cert_digest.is_empty()).then(|| b64url(&digest.cert_digest))
}

/// What of the request's wire form its parsed value does not show, read once per request.
struct WireForm {
    /// The header's size: HTTP/1 bytes as received, or an HTTP/2 header list as RFC 9113
    /// §6.5.2 counts it (names, values and 32 bytes a field).
    header_bytes: usize,
    target_flaw: Option<TargetFlaw>,
}

fn wire_form(session: &Session) -> WireForm {
    let req = session.req_header();
    let lossy = (!req.raw_path_is_utf8()).then_some(TargetFlaw::NotUtf8);
    match session.as_downstream().as_http1() {
        Some(h1) => {
            let raw = h1.get_headers_raw_bytes();
            // The parsed target has dropped a fragment; the request line as received still
            // shows it (a method and `HTTP/1.x` have no `#`, so one on the line is in the target).
            let line = raw.split(|&b| b == b'\n').next().unwrap_or_default();
            let fragment = line.contains(&b'#').then_some(TargetFlaw::Fragment);
            WireForm {
                header_bytes: raw.len(),
                target_flaw: lossy.or(fragment),
            }
        }
        None => WireForm {
            header_bytes: req
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 32)
                .sum(),
            target_flaw: lossy,
        },
    }
}

/// The target the upstream receives: the path that was decided on (normalized) and the query,
/// in origin form, whatever form the client sent.
fn forwarded_target<'a>(
    uri: &'a http::Uri,
    rewritten: Option<&'a str>,
) -> (&'a str, Option<&'a str>) {
    (rewritten.unwrap_or_else(|| uri.path()), uri.query())
}

/// One request's line in the access log and its metrics.
pub(super) struct Done<'a> {
    pub method: &'a str,
    pub host: &'a str,
    /// As received (the normalized one, when it differs, is in the context).
    pub path: &'a str,
    /// The status written to the client (0: none).
    pub status: u16,
    /// The request failed after the decision (upstream error, client gone).
    pub failed: bool,
}

impl RequestCtx {
    pub(super) fn new() -> RequestCtx {
        IN_FLIGHT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        RequestCtx {
            started: Instant::now(),
            live: None,
            route: None,
            decision: DecisionLabel::BadRequest,
            forward: None,
            server: 0,
            connect_failures: 0,
            rejection: None,
            cors_api: false,
            cors_headers: Vec::new(),
            report: None,
            reason: None,
            principal: None,
            normalized: None,
            upstream_failure: None,
            client: None,
            rate_limit: None,
            trace: None,
            proof: None,
            dpop_nonce: false,
        }
    }
}

impl Gate {
    /// Steps 1-7 for the request of `session`. An unknown `kid` may be a key the provider has
    /// just rotated in: its keys are refetched (once for all requests waiting on it, at most
    /// once per cooldown) and the request decided again.
    async fn decide_request(
        &self,
        session: &Session,
        live: &Live,
        target_flaw: Option<TargetFlaw>,
        ctx: &mut RequestCtx,
    ) -> Outcome {
        let client_cert = client_cert_thumbprint(session, &live.snapshot);
        let request = || request_of(session, &live.snapshot, target_flaw, client_cert.as_deref());
        let outcome = self.decide_and_record(request(), live, ctx);
        let Outcome::RefreshKeys(i, response) = outcome else {
            return outcome;
        };
        let issuer = &live.snapshot.verifier.issuers[i];
        if self
            .fetcher
            .refresh_for_unknown_kid(issuer, issuer.keys.version())
            .await
        {
            self.decide_and_record(request(), live, ctx)
        } else {
            Outcome::Reply(response)
        }
    }

    /// The replay check of a request's DPoP proof: the 401 (`dpop_replay`) when it was used
    /// before, the 503 when that cannot be known; `None` when the request goes on.
    async fn replay_step(
        &self,
        session: &Session,
        live: &Live,
        ctx: &mut RequestCtx,
    ) -> Option<Answer> {
        let (proof, api) = ctx.proof.take()?;
        let rejection = match self.replays.check(&proof, unix_at(ctx.started)).await {
            super::replay::Seen::Fresh => return None,
            super::replay::Seen::Replayed => Rejection::DpopReplay,
            super::replay::Seen::Unavailable => Rejection::ReplayStoreUnavailable,
        };
        let request = request_of(session, &live.snapshot, None, None);
        let refusal = replay_refusal(&live.snapshot, &request, api, ctx.route, rejection);
        ctx.forward = None;
        ctx.report = None;
        ctx.decision = refusal.label();
        ctx.reason = refusal.reason();
        ctx.rejection = refusal.rejection();
        let mut answer = refusal.response(&live.snapshot);
        answer.headers.extend(ctx.cors_headers.iter().cloned());
        Some(answer)
    }

    /// A fresh `DPoP-Nonce` for an answer on an API with `dpop_nonce`.
    fn dpop_nonce(&self, ctx: &RequestCtx) -> Option<HeaderValue> {
        if !ctx.dpop_nonce {
            return None;
        }
        let live = ctx.live.as_ref()?;
        HeaderValue::from_str(&live.snapshot.nonces.issue(unix_at(ctx.started))).ok()
    }

    /// Decide, and note the outcome in `ctx`.
    pub(super) fn decide_and_record(
        &self,
        request: Request<'_>,
        live: &Live,
        ctx: &mut RequestCtx,
    ) -> Outcome {
        let verdict = decide(&live.snapshot, request, unix_at(ctx.started));
        let decision = verdict.decision;
        let dpop = verdict.sender.dpop;
        ctx.proof = verdict.sender.proof.map(|p| (p, verdict.sender.api));
        ctx.dpop_nonce = verdict.sender.nonce;
        ctx.principal = verdict.principal;
        ctx.normalized = verdict.normalized;
        ctx.reason = None;
        ctx.decision = decision.label();
        ctx.route = decision.route();
        ctx.cors_api = verdict.cors.is_some();
        ctx.cors_headers = verdict
            .cors
            .map(|c| c.response_headers())
            .unwrap_or_default();
        ctx.forward = None;
        ctx.rejection = None;
        ctx.report = None;
        let refusal = match decision {
            Decision::Forward(to) => {
                ctx.report = to.report();
                ctx.reason = ctx.report.map(|r| r.reason);
                ctx.rejection = ctx.report.and_then(|r| r.rejection);
                let (route, upstream, rewritten_path, principal) = to.into_parts();
                ctx.forward = Some(Forwarding {
                    upstream,
                    websocket: live.snapshot.routes[route].websocket,
                    rewritten_path,
                    principal,
                });
                return Outcome::Forward;
            }
            Decision::Refuse(refusal) => refusal,
            // A preflight's answer carries its own CORS headers (and `cors_headers` is empty).
            answered => {
                let Some(mut answer) = answered.answer(&live.snapshot) else {
                    return Outcome::Forward;
                };
                answer.headers.extend(ctx.cors_headers.iter().cloned());
                return Outcome::Reply(answer);
            }
        };
        ctx.reason = refusal.reason();
        ctx.rejection = refusal.rejection();
        let mut response = refusal.response_as(&live.snapshot, dpop);
        response.headers.extend(ctx.cors_headers.iter().cloned());
        match refusal {
            Refusal::Unauthenticated {
                rejection: Rejection::UnknownKey(i),
                ..
            } => Outcome::RefreshKeys(i, response),
            _ => Outcome::Reply(response),
        }
    }
}

#[async_trait]
impl ProxyHttp for ScopeGate {
    type CTX = RequestCtx;

    // No response compression module: an edge auth proxy passes bodies through as they are,
    // and the (disabled) default module still costs a context per request.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    // The header of a request a client pipelined, read by Pingora's session, is parsed: the
    // connection loop's deadline for it is met (see `limits::Limited::serve_http1`).
    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        prev_ctx: Box<dyn std::any::Any + Send + Sync>,
    ) {
        if let Ok(parsed) = prev_ctx.downcast::<Arc<super::limits::HeaderParsed>>() {
            parsed.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora_core::Result<bool> {
        let live = self.live.load_full();
        if let Some(traces) = &self.traces {
            ctx.trace =
                Some(traces.start_request(&session.req_header().headers, wall_at(ctx.started)));
        }
        // A header read by Pingora's session on a reused connection was held to its own, larger
        // limit: past 64 KiB it is refused here as the first read of a connection is.
        let wire = wire_form(session);
        if wire.header_bytes > super::limits::MAX_HEADER {
            ctx.live = Some(live);
            ctx.decision = DecisionLabel::BadRequest;
            let answer = Answer::error(
                431,
                "header_too_large",
                "the request header is larger than 64 KiB",
            );
            send_answer(session, &answer).await?;
            return Ok(true);
        }
        let mut outcome = self
            .decide_request(session, &live, wire.target_flaw, ctx)
            .await;
        // A DPoP proof is good once: recorded now, refused when it was recorded before.
        if let Some(answer) = self.replay_step(session, &live, ctx).await {
            outcome = Outcome::Reply(answer);
        }
        ctx.live = Some(live);
        // Each request in flight may hold an upstream connection: past the descriptors there
        // are for them, refuse here rather than fail a connect with EMFILE.
        if matches!(outcome, Outcome::Forward)
            && IN_FLIGHT.load(std::sync::atomic::Ordering::Relaxed)
                > FORWARD_BUDGET.load(std::sync::atomic::Ordering::Relaxed)
        {
            ctx.forward = None;
            outcome = Outcome::Reply(Answer::error(
                503,
                "overloaded",
                "too many requests in flight; try again",
            ));
        }
        // 7b. Quotas count only what is about to be forwarded: a refused request spends none.
        if matches!(outcome, Outcome::Forward) {
            if let Some(answer) = self.quota_step(session, ctx).await {
                outcome = Outcome::Reply(answer);
            }
        }
        match outcome {
            Outcome::Forward => Ok(false),
            Outcome::Reply(mut resp) | Outcome::RefreshKeys(_, mut resp) => {
                if let Some(nonce) = self.dpop_nonce(ctx) {
                    resp.headers.push((crate::sender::DPOP_NONCE, nonce));
                }
                send_answer(session, &resp).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora_core::Result<Box<HttpPeer>> {
        let (Some(live), Some(forward)) = (ctx.live.as_ref(), ctx.forward.as_ref()) else {
            return Error::e_explain(ErrorType::InternalError, "no forwarding decision");
        };
        ctx.server = live.snapshot.upstreams[forward.upstream].pick();
        Ok(Box::new(live.peers[forward.upstream][ctx.server].clone()))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora_core::Result<()> {
        let (Some(live), Some(forward)) = (ctx.live.as_ref(), ctx.forward.as_ref()) else {
            return Error::e_explain(ErrorType::InternalError, "no forwarding decision");
        };
        let snapshot = &live.snapshot;
        set_decided_target(upstream, forward.rewritten_path.as_deref())?;

        let trusted = from_trusted(session, snapshot);
        let dropped: Vec<HeaderName> = upstream
            .headers
            .keys()
            .filter(|n| not_forwarded(n.as_str(), snapshot, trusted))
            .cloned()
            .collect();
        for name in dropped {
            upstream.remove_header(&name);
        }
        if let Some(principal) = &forward.principal {
            for (name, value) in &principal.forward_headers {
                upstream.insert_header(name.clone(), value.clone())?;
            }
        }
        set_forwarding_headers(session, upstream, trusted)?;
        // A tunnel is never checked again: only routes that say so may switch protocols. The
        // `Connection: Upgrade` Pingora writes for a websocket handshake (and only then: it
        // strips every client `Connection`) goes with it.
        if !forward.websocket && upstream.remove_header(&http::header::UPGRADE).is_some() {
            upstream.remove_header(&http::header::CONNECTION);
        }
        if let (Some(traces), Some(trace)) = (&self.traces, ctx.trace.as_mut()) {
            let server = snapshot.upstreams[forward.upstream].servers[ctx.server].addr;
            traces.start_upstream(trace, server, upstream);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora_core::Result<()> {
        if upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS {
            let websocket = ctx.forward.as_ref().is_some_and(|f| f.websocket);
            let key = session.req_header().headers.get("sec-websocket-key");
            let accept = upstream_response.headers.get("sec-websocket-accept");
            if !websocket || !websocket_accept_matches(key, accept) {
                return Err(Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    "101 without a websocket route or with a wrong Sec-WebSocket-Accept",
                )
                .into_up());
            }
        }
        // SPEC: a response header over 64 KiB breaks framing like a malformed one (502).
        let head_bytes: usize = upstream_response
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        if head_bytes > super::limits::MAX_HEADER {
            return Err(Error::explain(
                ErrorType::InvalidHTTPHeader,
                "upstream response header larger than 64 KiB",
            )
            .into_up());
        }
        if let Some(nonce) = self.dpop_nonce(ctx) {
            upstream_response.insert_header(crate::sender::DPOP_NONCE_FIELD, nonce)?;
        }
        if let Some((policy, limit)) = &ctx.rate_limit {
            use crate::decision::{RATELIMIT_FIELD, RATELIMIT_POLICY_FIELD};
            upstream_response.insert_header(RATELIMIT_POLICY_FIELD, policy.clone())?;
            upstream_response.insert_header(RATELIMIT_FIELD, limit.clone())?;
        }
        // Hop-by-hop fields of the upstream's connection are not the client's (RFC 9110
        // §7.6.1); Pingora writes `Connection` itself.
        for name in HOP_BY_HOP_RESPONSE {
            upstream_response.remove_header(name);
        }
        if ctx.cors_api {
            // For an API with `cors`, only scopegate speaks CORS: an origin not in its list
            // gets no Access-Control-* header, whatever the upstream says.
            let theirs: Vec<HeaderName> = upstream_response
                .headers
                .keys()
                .filter(|n| n.as_str().starts_with("access-control-"))
                .cloned()
                .collect();
            for name in theirs {
                upstream_response.remove_header(&name);
            }
            for (name, value) in &ctx.cors_headers {
                upstream_response.append_header(name.clone(), value.clone())?;
            }
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(live), Some(forward)) = (&ctx.live, &ctx.forward) {
            let pool = &live.snapshot.upstreams[forward.upstream];
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
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let from_upstream = *e.esource() == ErrorSource::Upstream;
        // The head was sent: nothing can be said any more; the connection is closed so the
        // client sees no body that looks complete.
        if from_upstream && session.response_written().is_some() {
            ctx.upstream_failure = Some(UpstreamFailure::Body);
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        if from_upstream
            && matches!(
                e.etype(),
                ErrorType::InvalidHTTPHeader
                    | ErrorType::H1Error
                    | ErrorType::H2Error
                    | ErrorType::InvalidH2
            )
        {
            ctx.upstream_failure = Some(UpstreamFailure::Framing);
        }
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
            let mut resp = failure_answer(code);
            resp.headers.extend(ctx.cors_headers.iter().cloned());
            if let Some(nonce) = self.dpop_nonce(ctx) {
                resp.headers.push((crate::sender::DPOP_NONCE, nonce));
            }
            let body = Bytes::from(resp.body_text().unwrap_or_default());
            if let Ok(header) = response_header(&resp, Some(&body)) {
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
        if let Some(live) = &ctx.live {
            ctx.client = believed_client(session, &live.snapshot);
        } else {
            ctx.client = peer_ip(session);
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let req = session.req_header();
        let host = req
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()))
            .unwrap_or("");
        let done = Done {
            method: req.method.as_str(),
            host,
            path: req.uri.path(),
            status,
            failed: e.is_some(),
        };
        self.record(ctx, &done);
    }
}

impl Gate {
    /// A request answered before anything of it was parsed (a header over 64 KiB): counted,
    /// logged and listed as a refusal with no method, host, path or route.
    pub(super) fn answered_unparsed(
        &self,
        status: u16,
        client: Option<std::net::IpAddr>,
        started: Instant,
    ) {
        let mut ctx = RequestCtx::new();
        ctx.started = started;
        ctx.decision = DecisionLabel::BadRequest;
        ctx.client = client;
        let done = Done {
            method: "",
            host: "",
            path: "",
            status,
            failed: false,
        };
        self.record(&mut ctx, &done);
    }

    /// Metrics and the access-log line of a request that is over.
    pub(super) fn record(&self, ctx: &mut RequestCtx, done: &Done<'_>) {
        let end = Instant::now();
        let elapsed = end.saturating_duration_since(ctx.started);
        // Without a decision (the request failed before it) the current config names nothing.
        let live = ctx
            .live
            .get_or_insert_with(|| self.live.load_full())
            .clone();
        let route_label = match ctx.route {
            Some(r) => live.snapshot.routes[r].label.as_str(),
            None => "none",
        };
        self.metrics
            .request(&live.labels, ctx.route, route_label, ctx.decision, elapsed);
        if let Some(reason) = ctx.rejection {
            self.metrics.token_rejected(reason);
        }
        let upstream = ctx.forward.as_ref().map(|f| f.upstream);
        if ctx.upstream_failure == Some(UpstreamFailure::Body) {
            ctx.reason = Some("upstream_body_error");
        }
        if let Some(u) = upstream {
            let class = match ctx.upstream_failure {
                Some(UpstreamFailure::Body) => ResponseClass::Error,
                // The upstream's answer was a broken one: a 5xx of its own, not unreachable.
                Some(UpstreamFailure::Framing) => ResponseClass::of(done.status, false),
                None => ResponseClass::of(done.status, done.failed),
            };
            let name = &live.snapshot.upstreams[u].name;
            self.metrics.upstream_response(&live.labels, u, name, class);
        }
        // One line per request; the token itself is never logged, only who it names.
        // Normalized by the decision; a request that failed before it is logged as received.
        let path = ctx.normalized.as_deref().unwrap_or(done.path);
        let upstream_name = upstream.map(|u| live.snapshot.upstreams[u].name.as_str());
        let trace_id = ctx.trace.take().and_then(|trace| {
            let finished = Finished {
                method: done.method,
                path,
                route: route_label,
                status: done.status,
                decision: ctx.decision.as_str(),
                reason: ctx.reason,
                upstream: upstream_name,
            };
            trace.finish(&finished, wall_at(end))
        });
        // The console's last refusals: only the 4xx answers scopegate gave itself.
        if ctx.forward.is_none() && (400..500).contains(&done.status) {
            self.refusals.record(&RefusedRef {
                time: wall_at(end),
                method: done.method,
                host: done.host,
                path,
                route: route_label,
                status: done.status,
                decision: ctx.decision.as_str(),
                reason: ctx.reason,
                sub: ctx.principal.as_ref().and_then(|p| p.sub.as_deref()),
            });
        }
        self.access_log.record(&Entry {
            ts: wall_at(end),
            method: done.method,
            host: done.host,
            path,
            route: route_label,
            decision: ctx.decision.as_str(),
            would_be: ctx.report.map(|r| r.would_be.as_str()),
            reason: ctx.reason,
            status: done.status,
            upstream: upstream_name,
            latency_us: elapsed.as_micros() as u64,
            sub: ctx.principal.as_ref().and_then(|p| p.sub.as_deref()),
            client: ctx.client,
            trace_id: trace_id.as_deref(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_websocket_accept_value_is_checked() {
        // The example of RFC 6455 §1.3.
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        let good = HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let bad = HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOX=");
        assert!(websocket_accept_matches(Some(&key), Some(&good)));
        assert!(!websocket_accept_matches(Some(&key), Some(&bad)));
        assert!(!websocket_accept_matches(None, Some(&good)));
    }
}

//! The ordered decision of SPEC ("Decisions, in this order") as a pure function of the snapshot,
//! the request and the clock: `decide(snapshot, request, now)`. No I/O: the edge only carries
//! out the answer. A request is forwarded only with a `ForwardTo`, which only an allowed
//! decision produces.

use std::borrow::Cow;
use std::sync::Arc;

use http::header::{
    HeaderName, HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS,
    ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, ALLOW, HOST, ORIGIN, RETRY_AFTER, VARY,
    WWW_AUTHENTICATE,
};
use http::{HeaderMap, Method};

use crate::auth::dpop::{DpopPolicy, Proof, Target};
use crate::auth::{credentials, BearerError, Principal, Rejection, RejectionReason, Scheme};
use crate::routing::hosts::is_valid_host;
use crate::routing::{normalize, Lookup, PathError};
use crate::sender::{self, Challenge, Presented};
use crate::snapshot::{Cors, RouteSet, Snapshot};

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// The same names as written on a forwarded response: Pingora's `insert_header` keeps a
/// `&'static str` as it is, where a non-standard `HeaderName` is copied into a new buffer on
/// every call.
pub const RATELIMIT_POLICY_FIELD: &str = "RateLimit-Policy";
pub const RATELIMIT_FIELD: &str = "RateLimit";

/// The request as far as the decision reads it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'r> {
    pub method: &'r Method,
    /// The path part of the request target (no query).
    pub path: &'r str,
    pub headers: &'r HeaderMap,
    /// The authority of an absolute-form target (or HTTP/2's `:authority`).
    pub authority: Option<&'r str>,
    /// HTTP/1.1, which must name its host (RFC 9112 §3.2).
    pub host_required: bool,
    /// Received over TLS (for the URLs scopegate puts in its answers).
    pub https: bool,
    /// What the wire form of the target had that its parsed form no longer shows.
    pub target_flaw: Option<TargetFlaw>,
    /// The SHA-256 thumbprint (base64url) of the client's TLS certificate, or of the
    /// `Client-Cert` a trusted proxy passed on (RFC 8705, RFC 9440).
    pub client_cert: Option<&'r str>,
}

/// A request-target the parser accepted but scopegate refuses (400): something in its bytes
/// that the parsed target drops or replaces, so an upstream could read it differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetFlaw {
    /// RFC 9112 §3.2: a fragment is not part of a request-target; parsers drop it or keep it.
    Fragment,
    /// Bytes that are not UTF-8, which the parsed target holds only as replacements.
    NotUtf8,
}

impl TargetFlaw {
    fn description(self) -> &'static str {
        match self {
            TargetFlaw::Fragment => "a fragment ('#') in the request target",
            TargetFlaw::NotUtf8 => "the request target is not valid UTF-8",
        }
    }
}

impl<'r> Request<'r> {
    /// A request in origin form with its headers (the host read from them).
    pub fn new(method: &'r Method, path: &'r str, headers: &'r HeaderMap) -> Request<'r> {
        Request {
            method,
            path,
            headers,
            authority: None,
            host_required: false,
            https: false,
            target_flaw: None,
            client_cert: None,
        }
    }

    /// The host the request names: its `Host` header, else the target's authority. 400 when
    /// they disagree, when `Host` is repeated, or when HTTP/1.1 names none.
    fn host(&self) -> Result<Option<&'r str>, &'static str> {
        let mut hosts = self.headers.get_all(HOST).iter();
        let header = match (hosts.next(), hosts.next()) {
            (Some(_), Some(_)) => return Err("more than one Host header"),
            (Some(h), None) => Some(h.to_str().map_err(|_| "the Host header is not ASCII")?),
            (None, _) => None,
        };
        let host = match (header, self.authority) {
            (Some(h), Some(a)) if !h.eq_ignore_ascii_case(a) => {
                return Err("the target's authority differs from the Host header")
            }
            (None, None) if self.host_required => {
                return Err("an HTTP/1.1 request needs a Host header")
            }
            (h, a) => h.or(a),
        };
        // RFC 9112 §3.2: a Host that is not `uri-host [":" port]` is a 400; an upstream could
        // take another host (or a path) out of it than the one the API was selected by.
        match host {
            Some(h) if !h.is_empty() && !is_valid_host(h.as_bytes()) => {
                Err("the Host is not a valid host[:port]")
            }
            h => Ok(h),
        }
    }

    /// `Origin`, when the request carries exactly one.
    fn origin(&self) -> Option<&'r str> {
        let mut values = self.headers.get_all(ORIGIN).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => v.to_str().ok(),
            _ => None,
        }
    }
}

/// The `decision` label of `scopegate_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionLabel {
    Allowed,
    Public,
    Unauthenticated,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    BadRequest,
    Preflight,
    ReportOnly,
    RateLimited,
}

impl DecisionLabel {
    pub const ALL: [DecisionLabel; 10] = [
        DecisionLabel::Allowed,
        DecisionLabel::Public,
        DecisionLabel::Unauthenticated,
        DecisionLabel::Forbidden,
        DecisionLabel::NotFound,
        DecisionLabel::MethodNotAllowed,
        DecisionLabel::BadRequest,
        DecisionLabel::Preflight,
        DecisionLabel::ReportOnly,
        DecisionLabel::RateLimited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DecisionLabel::Allowed => "allowed",
            DecisionLabel::Public => "public",
            DecisionLabel::Unauthenticated => "unauthenticated",
            DecisionLabel::Forbidden => "forbidden",
            DecisionLabel::NotFound => "not_found",
            DecisionLabel::MethodNotAllowed => "method_not_allowed",
            DecisionLabel::BadRequest => "bad_request",
            DecisionLabel::Preflight => "preflight",
            DecisionLabel::ReportOnly => "report_only",
            DecisionLabel::RateLimited => "rate_limited",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Permission to forward: the route, its upstream, the normalized path and who is calling.
/// Its fields are private, so only `decide` (and `authorize`) can make one.
#[derive(Debug, Clone)]
pub struct ForwardTo<'r> {
    route: usize,
    upstream: usize,
    path: Cow<'r, str>,
    principal: Option<Arc<Principal>>,
    /// Report-only: what would have been decided, had the route been enforced.
    report: Option<Report>,
}

/// A 401 or 403 that a report-only route forwarded instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub would_be: DecisionLabel,
    /// A token rejection reason, `insufficient_scope` or `access_denied`.
    pub reason: &'static str,
    /// For a would-be 401: why the token was refused (for `scopegate_token_rejections_total`).
    pub rejection: Option<RejectionReason>,
}

impl<'r> ForwardTo<'r> {
    pub fn route(&self) -> usize {
        self.route
    }
    pub fn upstream(&self) -> usize {
        self.upstream
    }
    /// The normalized path: what was authorized is what is forwarded.
    pub fn path(&self) -> &str {
        &self.path
    }
    /// `None` on a public route (and for an invalid token on a report-only one).
    pub fn principal(&self) -> Option<&Arc<Principal>> {
        self.principal.as_ref()
    }
    pub fn report(&self) -> Option<Report> {
        self.report
    }
    pub fn into_parts(self) -> (usize, usize, Option<String>, Option<Arc<Principal>>) {
        let path = match self.path {
            Cow::Owned(p) => Some(p),
            Cow::Borrowed(_) => None,
        };
        (self.route, self.upstream, path, self.principal)
    }
}

/// Why a request is answered here instead of forwarded.
#[derive(Debug, Clone)]
pub enum Refusal<'r> {
    /// 400: the request target or credentials cannot be read safely.
    BadRequest { description: &'static str },
    /// 401; `route` is the route the request would have matched, for metrics and logs only
    /// (the response never tells).
    Unauthenticated {
        rejection: Rejection,
        route: Option<usize>,
        /// RFC 9728: where the API's protected resource metadata is, for the challenge.
        resource_metadata: Option<String>,
        /// Bearer, DPoP or both (RFC 9449 §7.1).
        challenge: Challenge<'r>,
    },
    /// 404 (after authentication).
    NotFound,
    /// 405 with `Allow` (after authentication).
    MethodNotAllowed { allow: Cow<'r, str> },
    /// 403 for this route: a scope is missing.
    Forbidden { route: usize },
    /// 403 for this route: the scopes are there, this claim condition does not hold.
    AccessDenied { route: usize, condition: usize },
    /// 403 to a CORS preflight from an origin not allowed, or for a method without a route.
    CorsRejected { route: Option<usize> },
    /// 429 (step 7b): over quota `quota` (index into `Snapshot::quotas`); one more request
    /// fits in `retry_after` seconds.
    RateLimited {
        route: usize,
        quota: usize,
        retry_after: u64,
    },
}

/// What to do with a request.
#[derive(Debug, Clone)]
pub enum Decision<'r> {
    Forward(ForwardTo<'r>),
    Refuse(Refusal<'r>),
    /// 204 to a CORS preflight, answered here (it carries no token).
    Preflight(Preflight),
    /// 200 with this API's RFC 9728 protected resource metadata (no token needed).
    Metadata {
        api: usize,
    },
}

/// The answer to an allowed CORS preflight.
#[derive(Debug, Clone)]
pub struct Preflight {
    /// The route of the requested method.
    pub route: usize,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// The CORS policy that applies to a request's answer: the API's, and the request's origin
/// when the API allows it.
#[derive(Debug, Clone, Copy)]
pub struct CorsScope<'r> {
    pub cors: &'r Cors,
    pub allowed_origin: Option<&'r str>,
}

impl CorsScope<'_> {
    /// The headers every answer to an allowed origin carries (forwarded or not).
    pub fn response_headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let Some(origin) = self
            .allowed_origin
            .and_then(|o| HeaderValue::from_str(o).ok())
        else {
            return Vec::new();
        };
        let mut h = vec![
            (ACCESS_CONTROL_ALLOW_ORIGIN, origin),
            (VARY, HeaderValue::from_static("Origin")),
            (
                ACCESS_CONTROL_EXPOSE_HEADERS,
                self.cors.expose_headers.clone(),
            ),
        ];
        if self.cors.allow_credentials {
            h.push((
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        h
    }
}

/// A decision and the CORS policy its answer follows (`None`: no API with `cors` is involved).
#[derive(Debug, Clone)]
pub struct Verdict<'r> {
    pub decision: Decision<'r>,
    pub cors: Option<CorsScope<'r>>,
    /// Who the request's valid token names, also when it was refused (for the access log).
    pub principal: Option<Arc<Principal>>,
    /// The normalized path, when it differs from the one received (for the access log).
    pub normalized: Option<String>,
    /// DPoP: the proof to record against replay, the scheme answers use, the nonce to send.
    pub sender: SenderOutcome<'r>,
}

/// What the decision leaves to the edge about sender-constrained tokens.
#[derive(Debug, Clone, Default)]
pub struct SenderOutcome<'r> {
    /// A DPoP proof that passed every check but replay: the edge records its `jti` and refuses
    /// the request (`dpop_replay`) when it was seen before.
    pub proof: Option<Proof>,
    /// The API the proof was checked for (its settings answer a replay).
    pub api: Option<usize>,
    /// The request used the DPoP scheme: 403 challenges are said in it.
    pub dpop: Option<&'r DpopPolicy>,
    /// The request's API has `dpop_nonce`: every answer carries a fresh `DPoP-Nonce`.
    pub nonce: bool,
}

impl Refusal<'_> {
    /// Why the token was refused, for a 401.
    pub fn rejection(&self) -> Option<RejectionReason> {
        match self {
            Refusal::Unauthenticated { rejection, .. } => Some(rejection.reason()),
            _ => None,
        }
    }

    /// The access log's `reason`: a token rejection reason, or why a valid token was refused.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Refusal::Unauthenticated { rejection, .. } => Some(rejection.reason().as_str()),
            Refusal::Forbidden { .. } => Some("insufficient_scope"),
            Refusal::AccessDenied { .. } => Some("access_denied"),
            Refusal::CorsRejected { .. } => Some("cors_rejected"),
            _ => None,
        }
    }
}

impl Decision<'_> {
    pub fn label(&self) -> DecisionLabel {
        match self {
            Decision::Forward(f) if f.report.is_some() => DecisionLabel::ReportOnly,
            Decision::Forward(f) if f.principal.is_none() => DecisionLabel::Public,
            Decision::Forward(_) => DecisionLabel::Allowed,
            Decision::Refuse(r) => r.label(),
            Decision::Preflight(_) => DecisionLabel::Preflight,
            Decision::Metadata { .. } => DecisionLabel::Public,
        }
    }

    /// The route the decision is counted under, if any.
    pub fn route(&self) -> Option<usize> {
        match self {
            Decision::Forward(f) => Some(f.route),
            Decision::Refuse(r) => r.route(),
            Decision::Preflight(p) => Some(p.route),
            Decision::Metadata { .. } => None,
        }
    }
}

impl Refusal<'_> {
    pub fn label(&self) -> DecisionLabel {
        match self {
            Refusal::BadRequest { .. } => DecisionLabel::BadRequest,
            Refusal::Unauthenticated { .. } => DecisionLabel::Unauthenticated,
            Refusal::NotFound => DecisionLabel::NotFound,
            Refusal::MethodNotAllowed { .. } => DecisionLabel::MethodNotAllowed,
            Refusal::Forbidden { .. }
            | Refusal::AccessDenied { .. }
            | Refusal::CorsRejected { .. } => DecisionLabel::Forbidden,
            Refusal::RateLimited { .. } => DecisionLabel::RateLimited,
        }
    }

    pub fn route(&self) -> Option<usize> {
        match self {
            Refusal::Forbidden { route }
            | Refusal::AccessDenied { route, .. }
            | Refusal::RateLimited { route, .. } => Some(*route),
            Refusal::CorsRejected { route } => *route,
            Refusal::Unauthenticated { route, .. } => *route,
            _ => None,
        }
    }

    /// The answer to a request that used the DPoP scheme with `policy` (`None`: Bearer): a
    /// 403's challenge is said in the scheme the request used (RFC 9449 §7.1).
    pub fn response_as(&self, snapshot: &Snapshot, dpop: Option<&DpopPolicy>) -> Answer {
        let mut answer = self.response(snapshot);
        if let (Some(policy), Refusal::Forbidden { .. } | Refusal::AccessDenied { .. }) =
            (dpop, self)
        {
            for (name, value) in answer.headers.iter_mut() {
                if *name == WWW_AUTHENTICATE {
                    *value = sender::as_dpop(value, &snapshot.challenges.realm, policy);
                }
            }
        }
        answer
    }

    /// The answer: status, headers (built at load where they can be) and JSON error code.
    pub fn response(&self, snapshot: &Snapshot) -> Answer {
        match self {
            Refusal::BadRequest { description } => {
                Answer::error(400, "invalid_request", *description)
            }
            Refusal::Unauthenticated {
                rejection,
                resource_metadata,
                challenge,
                ..
            } => unauthenticated(snapshot, rejection, resource_metadata.as_deref(), challenge),
            Refusal::NotFound => Answer::error(404, "not_found", "no route for this path"),
            Refusal::MethodNotAllowed { allow } => {
                let r = Answer::error(
                    405,
                    "method_not_allowed",
                    "the path has no route for this method",
                );
                // Method names are tokens, always a valid header value.
                match HeaderValue::from_str(allow) {
                    Ok(v) => r.with(ALLOW, v),
                    Err(_) => r,
                }
            }
            Refusal::Forbidden { route } => Answer::error(
                403,
                "insufficient_scope",
                "the token lacks a scope this route requires",
            )
            .with(
                WWW_AUTHENTICATE,
                snapshot.routes[*route].insufficient_scope_challenge.clone(),
            ),
            Refusal::AccessDenied { route, condition } => {
                let (challenge, description) = &snapshot.routes[*route].access_denied[*condition];
                Answer::error(403, "access_denied", description.clone())
                    .with(WWW_AUTHENTICATE, challenge.clone())
            }
            Refusal::CorsRejected { .. } => Answer::error(
                403,
                "cors_rejected",
                "the origin or the requested method is not allowed",
            ),
            Refusal::RateLimited {
                quota, retry_after, ..
            } => {
                let q = &snapshot.quotas[*quota];
                let description = format!(
                    "quota {:?} allows {} requests per {} s; retry after {retry_after} s",
                    q.name, q.limit, q.window_seconds
                );
                // draft-ietf-httpapi-ratelimit-headers: the policy exceeded and where it stands.
                let mut answer = Answer::error(429, "rate_limited", description)
                    .with(RETRY_AFTER, HeaderValue::from(*retry_after))
                    .with(RATELIMIT_POLICY, q.policy.clone());
                if let Some(v) = q.rate_limit(0, *retry_after) {
                    answer = answer.with(RATELIMIT, v);
                }
                answer
            }
        }
    }
}

/// A 401 (a 503 when the replay store could not be asked) with its challenge.
fn unauthenticated(
    snapshot: &Snapshot,
    rejection: &Rejection,
    resource_metadata: Option<&str>,
    challenge: &Challenge<'_>,
) -> Answer {
    if *rejection == Rejection::ReplayStoreUnavailable {
        return Answer::error(503, rejection.error_code(), rejection.description())
            .with(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    let base = snapshot.challenges.for_rejection(rejection);
    // RFC 9728 §5.1: the challenge names the metadata of the resource.
    let bearer = || {
        resource_metadata
            .and_then(|url| {
                let mut v = base.as_bytes().to_vec();
                v.extend_from_slice(b", resource_metadata=");
                v.extend_from_slice(crate::snapshot::quoted(url).as_bytes());
                HeaderValue::from_bytes(&v).ok()
            })
            .unwrap_or_else(|| base.clone())
    };
    let value = match challenge {
        Challenge::Bearer => bearer(),
        Challenge::Dpop(policy) => {
            let text = sender::dpop_challenge(policy, rejection, resource_metadata);
            HeaderValue::from_str(&text).unwrap_or_else(|_| bearer())
        }
        Challenge::Both(policy) => {
            let dpop = sender::dpop_challenge(policy, rejection, resource_metadata);
            let both = format!("{}, {dpop}", bearer().to_str().unwrap_or_default());
            HeaderValue::from_str(&both).unwrap_or_else(|_| bearer())
        }
    };
    Answer::error(401, rejection.error_code(), rejection.description())
        .with(WWW_AUTHENTICATE, value)
}

/// An answer scopegate gives itself: a refusal with its JSON error body, an answered CORS
/// preflight (no body), or a protected resource metadata document.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: AnswerBody,
}

#[derive(Debug, Clone)]
pub enum AnswerBody {
    /// `{"error": ..., "error_description": ...}`, never cached.
    Error {
        error: &'static str,
        description: Cow<'static, str>,
    },
    /// A JSON document that clients may cache for a while.
    Document(String),
    Empty,
}

impl Answer {
    pub fn error(
        status: u16,
        error: &'static str,
        description: impl Into<Cow<'static, str>>,
    ) -> Answer {
        let body = AnswerBody::Error {
            error,
            description: description.into(),
        };
        Answer {
            status,
            headers: Vec::new(),
            body,
        }
    }

    pub fn with(mut self, name: HeaderName, value: HeaderValue) -> Answer {
        self.headers.push((name, value));
        self
    }

    /// The body's bytes, or `None` for no body.
    pub fn body_text(&self) -> Option<String> {
        match &self.body {
            AnswerBody::Error { error, description } => {
                #[derive(serde::Serialize)]
                struct Body<'a> {
                    error: &'a str,
                    error_description: &'a str,
                }
                let body = Body {
                    error,
                    error_description: description,
                };
                serde_json::to_string(&body).ok()
            }
            AnswerBody::Document(doc) => Some(doc.clone()),
            AnswerBody::Empty => None,
        }
    }

    /// `Cache-Control`: refusals and preflight answers are per request; documents are stable.
    pub fn cache_control(&self) -> &'static str {
        match self.body {
            AnswerBody::Document(_) => "max-age=300",
            _ => "no-store",
        }
    }
}

impl Decision<'_> {
    /// What scopegate answers itself; `None` when the request is forwarded.
    pub fn answer(&self, snapshot: &Snapshot) -> Option<Answer> {
        match self {
            Decision::Forward(_) => None,
            Decision::Refuse(r) => Some(r.response(snapshot)),
            // RFC 9110 §15.3.5: a 204 has no body.
            Decision::Preflight(p) => Some(Answer {
                status: 204,
                headers: p.headers.clone(),
                body: AnswerBody::Empty,
            }),
            Decision::Metadata { api } => {
                let doc = snapshot.apis[*api]
                    .metadata
                    .as_ref()
                    .map(|m| m.document.clone());
                Some(Answer {
                    status: 200,
                    headers: Vec::new(),
                    body: AnswerBody::Document(doc.unwrap_or_default()),
                })
            }
        }
    }
}

/// A token that passed step 5.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub principal: Arc<Principal>,
    pub scheme: Scheme,
    /// The API that accepted it (`None` when the host has no API).
    pub api: Option<usize>,
    /// Its DPoP proof, to be checked for replay.
    pub proof: Option<Proof>,
}

/// Step 5: the request's token (or the caller given), verified, meant for one of `apis` (in
/// config order), and presented as its binding requires. When it fits no API, the first
/// API's reason is given.
pub fn authenticate(
    snapshot: &Snapshot,
    apis: &[usize],
    req: &Request<'_>,
    target: Target<'_>,
    caller: Caller<'_>,
    now: u64,
) -> Result<Authenticated, AuthError> {
    let (scheme, token, principal) = match caller {
        Caller::Bearer => {
            let (scheme, token) = match credentials(req.headers) {
                Ok(Some(c)) => c,
                Ok(None) => return Err(AuthError::Rejected(Rejection::Missing, None)),
                Err(BearerError::Ambiguous) => return Err(AuthError::Ambiguous),
            };
            let principal = snapshot.verifier.verify(token, now);
            (scheme, Some(token), principal)
        }
        Caller::Verified(verified) | Caller::Pasted(verified) => {
            (Scheme::Bearer, None, verified.clone())
        }
    };
    let refused = |rejection| AuthError::Rejected(rejection, Some(scheme));
    let principal = principal.map_err(refused)?;
    let mut first = None;
    let accepted = apis.iter().copied().find(|&api| {
        let verdict = snapshot.apis[api].accept(&principal);
        if let Err(r) = verdict {
            first.get_or_insert(r);
        }
        verdict.is_ok()
    });
    // With no API at all for this host, a valid token can only learn that nothing is here.
    if let (None, Some(r)) = (accepted, first) {
        return Err(refused(r));
    }
    // A described token (policy tests) is taken as presented with whatever binds it; a real
    // one given to explain, as presented in a `Bearer` header (so a bound one is refused).
    if token.is_none() && principal.binding.is_bound() {
        return Err(refused(Rejection::UnboundUse));
    }
    if matches!(caller, Caller::Pasted(_)) {
        sender::require_binding(snapshot, accepted, &principal).map_err(refused)?;
    }
    let proof = match token {
        Some(token) => {
            let presented = Presented {
                scheme,
                token,
                headers: req.headers,
                target,
                client_cert: req.client_cert,
            };
            sender::check_binding(snapshot, accepted, &principal, &presented, now)
                .map_err(refused)?
        }
        None => None,
    };
    Ok(Authenticated {
        principal,
        scheme,
        api: accepted,
        proof,
    })
}

/// Why `authenticate` found no principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// Two `Authorization` headers: a 400, not a 401.
    Ambiguous,
    /// A 401, and the scheme the token came with (`None`: no token).
    Rejected(Rejection, Option<Scheme>),
}

/// Steps 6-7: with an authenticated principal, the route lookup decides: scopes first, then
/// claim conditions.
pub fn authorize<'r>(
    snapshot: &Snapshot,
    lookup: Lookup<'r>,
    path: Cow<'r, str>,
    principal: Arc<Principal>,
) -> Decision<'r> {
    match lookup {
        Lookup::NotFound => Decision::Refuse(Refusal::NotFound),
        Lookup::MethodNotAllowed(allow) => Decision::Refuse(Refusal::MethodNotAllowed { allow }),
        Lookup::Found(route) => {
            let r = &snapshot.routes[route];
            if !r.required.satisfied_by(&principal.scopes) {
                return Decision::Refuse(Refusal::Forbidden { route });
            }
            if let Some(condition) = r
                .conditions
                .iter()
                .position(|c| !c.holds(&principal.claims, &path))
            {
                return Decision::Refuse(Refusal::AccessDenied { route, condition });
            }
            Decision::Forward(forward_to(snapshot, route, path, Some(principal)))
        }
    }
}

/// Step 8's permission, with the API's `strip_prefix` taken off the normalized path.
fn forward_to<'r>(
    snapshot: &Snapshot,
    route: usize,
    path: Cow<'r, str>,
    principal: Option<Arc<Principal>>,
) -> ForwardTo<'r> {
    let r = &snapshot.routes[route];
    let path = match &snapshot.apis[r.api].strip_prefix {
        // The route matched, so the path starts with the prefix at a segment boundary.
        Some(prefix) => match path.get(prefix.len()..) {
            Some(rest) if !rest.is_empty() => Cow::Owned(rest.to_string()),
            _ => Cow::Owned("/".to_string()),
        },
        None => path,
    };
    ForwardTo {
        route,
        upstream: r.upstream,
        path,
        principal,
        report: None,
    }
}

/// The API whose CORS policy answers a request on this path: the route's, else that of a route
/// on the path for another method, else the first API of the set with `cors`.
fn cors_scope<'s>(
    snapshot: &'s Snapshot,
    set: &RouteSet,
    lookup: &Lookup<'_>,
    path: &str,
    origin: Option<&'s str>,
) -> Option<CorsScope<'s>> {
    let route = match lookup {
        Lookup::Found(r) => Some(*r),
        _ => set.router.owner(path),
    };
    cors_of(snapshot, set, route, origin)
}

/// The CORS of `route`'s API, or without a route, of the host's first API that has one.
fn cors_of<'s>(
    snapshot: &'s Snapshot,
    set: &RouteSet,
    route: Option<usize>,
    origin: Option<&'s str>,
) -> Option<CorsScope<'s>> {
    let cors = match route {
        Some(r) => snapshot.apis[snapshot.routes[r].api].cors.as_ref()?,
        None => set
            .apis
            .iter()
            .find_map(|&a| snapshot.apis[a].cors.as_ref())?,
    };
    Some(CorsScope {
        cors,
        allowed_origin: origin.filter(|o| cors.allows(o)),
    })
}

/// Step 3: a CORS preflight to an API with `cors` is answered here, without a token.
fn preflight<'r>(
    set: &RouteSet,
    path: &str,
    scope: CorsScope<'_>,
    requested: &HeaderValue,
) -> Decision<'r> {
    let method = Method::from_bytes(requested.as_bytes()).ok();
    let route = method
        .as_ref()
        .and_then(|m| match set.router.lookup(m, path) {
            Lookup::Found(r) => Some(r),
            _ => None,
        });
    let (Some(route), Some(origin)) = (route, scope.allowed_origin) else {
        return Decision::Refuse(Refusal::CorsRejected { route });
    };
    let methods = match set.router.allowed(path) {
        Some((mut list, any)) => {
            if any {
                list.push(requested.to_str().unwrap_or(""));
            }
            list.sort_unstable();
            list.dedup();
            list.join(", ")
        }
        None => String::new(),
    };
    let (Ok(origin), Ok(methods)) = (
        HeaderValue::from_str(origin),
        HeaderValue::from_str(&methods),
    ) else {
        return Decision::Refuse(Refusal::CorsRejected { route: Some(route) });
    };
    let mut headers = vec![
        (ACCESS_CONTROL_ALLOW_ORIGIN, origin),
        (ACCESS_CONTROL_ALLOW_METHODS, methods),
        (
            ACCESS_CONTROL_ALLOW_HEADERS,
            scope.cors.allow_headers.clone(),
        ),
        (ACCESS_CONTROL_MAX_AGE, scope.cors.max_age.clone()),
        (VARY, HeaderValue::from_static("Origin")),
    ];
    if scope.cors.allow_credentials {
        headers.push((
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        ));
    }
    Decision::Preflight(Preflight { route, headers })
}

/// Who step 5 finds behind a request.
#[derive(Debug, Clone, Copy)]
pub enum Caller<'r> {
    /// The bearer token of the request's headers, verified by the snapshot's verifier (the proxy).
    Bearer,
    /// What verifying a token would have given: for tokens described rather than signed
    /// (`scopegate test`, `explain --scopes`), so no key is needed.
    Verified(&'r Result<Arc<Principal>, Rejection>),
    /// A real token verified by the caller (the console's explain, which caches none), taken
    /// as sent in a `Bearer` header with no proof: bound, or unbound on an API that requires
    /// binding, it is refused as the proxy refuses it.
    Pasted(&'r Result<Arc<Principal>, Rejection>),
}

/// Decide a request at `now` (Unix seconds).
pub fn decide<'r>(snapshot: &'r Snapshot, req: Request<'r>, now: u64) -> Verdict<'r> {
    decide_as(snapshot, req, Caller::Bearer, now)
}

/// `decide`, with the caller of step 5 given.
pub fn decide_as<'r>(
    snapshot: &'r Snapshot,
    req: Request<'r>,
    caller: Caller<'_>,
    now: u64,
) -> Verdict<'r> {
    let early = |decision, normalized| answered_early(snapshot, &req, decision, normalized);
    let bad = |description, normalized| {
        early(
            Decision::Refuse(Refusal::BadRequest { description }),
            normalized,
        )
    };
    // 1-2. A target we cannot normalize safely, or whose host is unclear, is refused first.
    if let Some(flaw) = req.target_flaw {
        return bad(flaw.description(), None);
    }
    if *req.method == Method::CONNECT {
        return early(connect_refused(snapshot, &req), None);
    }
    let path = match normalize(req.path) {
        Ok(p) => p,
        Err(e) => return bad(path_error_text(e), None),
    };
    let normalized = match &path {
        Cow::Owned(p) => Some(p.clone()),
        Cow::Borrowed(_) => None,
    };
    let host = match req.host() {
        Ok(h) => h,
        Err(description) => return bad(description, normalized),
    };
    let set = snapshot.route_set(host);
    let lookup = set.router.lookup(req.method, &path);
    // Most hosts have no CORS at all: no header or route looked at for it then.
    let cors = if set.has_cors {
        cors_scope(snapshot, set, &lookup, &path, req.origin())
    } else {
        None
    };

    // 3. CORS preflight (RFC 9110 OPTIONS with Origin and Access-Control-Request-Method).
    if let (Some(scope), true) = (cors, *req.method == Method::OPTIONS) {
        if let (Some(_), Some(requested)) =
            (req.origin(), req.headers.get(ACCESS_CONTROL_REQUEST_METHOD))
        {
            let decision = preflight(set, &path, scope, requested);
            let mut verdict = Verdict::answered(decision, None, normalized);
            verdict.sender.nonce = wants_nonce(
                snapshot,
                verdict.decision.route().map(|r| snapshot.routes[r].api),
            );
            return verdict;
        }
    }
    // RFC 9728 metadata of the host's APIs, served without a token.
    if matches!(*req.method, Method::GET | Method::HEAD) {
        if let Some(&(_, api)) = set.metadata.iter().find(|(p, _)| *p == path) {
            let mut verdict = Verdict::answered(Decision::Metadata { api }, cors, normalized);
            verdict.sender.nonce = wants_nonce(snapshot, Some(api));
            return verdict;
        }
    }
    let authenticate = |apis: &[usize], target: Target<'_>| {
        authenticate(snapshot, apis, &req, target, caller, now)
    };
    let (decision, principal, sender) =
        decide_route(snapshot, set, req, host, lookup, path, authenticate);
    Verdict {
        decision,
        cors,
        principal,
        normalized,
        sender,
    }
}

impl<'r> SenderOutcome<'r> {
    /// What step 5 found: the proof to record, and the scheme 403s are said in.
    fn authenticated(&mut self, snapshot: &'r Snapshot, auth: &Authenticated) {
        self.proof = auth.proof;
        self.api = auth.api;
        self.dpop = (auth.scheme == Scheme::Dpop).then(|| sender::dpop_policy(snapshot, auth.api));
    }
}

/// `api` has `dpop_nonce`: every answer carries a fresh `DPoP-Nonce`.
fn wants_nonce(snapshot: &Snapshot, api: Option<usize>) -> bool {
    api.and_then(|a| snapshot.apis[a].pop.as_ref())
        .is_some_and(|p| p.dpop.nonce)
}

impl<'r> Verdict<'r> {
    /// A decision made before any token was looked at.
    fn answered(
        decision: Decision<'r>,
        cors: Option<CorsScope<'r>>,
        normalized: Option<String>,
    ) -> Verdict<'r> {
        Verdict {
            decision,
            cors,
            principal: None,
            normalized,
            sender: SenderOutcome::default(),
        }
    }
}

/// A decision made before any route: a `dpop_nonce` API of the host still puts a nonce on it,
/// and when the host is a valid one, a CORS API of it answers an allowed origin with its CORS
/// headers, as every other answer (SPEC "CORS").
fn answered_early<'r>(
    snapshot: &'r Snapshot,
    req: &Request<'r>,
    decision: Decision<'r>,
    normalized: Option<String>,
) -> Verdict<'r> {
    let host = req.host();
    let set = snapshot.route_set(host.ok().flatten());
    // The API of the path's routes when the path can be read (CONNECT's 405), as a 405's is;
    // else the host's first CORS API, as a 404's is.
    let cors = match host {
        Ok(_) if set.has_cors => {
            let owner = normalize(req.path).ok().and_then(|p| set.router.owner(&p));
            cors_of(snapshot, set, owner, req.origin())
        }
        _ => None,
    };
    let mut verdict = Verdict::answered(decision, cors, normalized);
    verdict.sender.nonce = wants_nonce(snapshot, set.apis.first().copied());
    verdict
}

/// scopegate never tunnels: CONNECT is refused before any route (an `ANY` one included) can
/// take it, naming the methods the path's routes allow (none for an authority-form target, or
/// HTTP/2's CONNECT, which has no path).
fn connect_refused<'r>(snapshot: &Snapshot, req: &Request<'_>) -> Decision<'r> {
    let set = snapshot.route_set(req.host().ok().flatten());
    let allow = normalize(req.path)
        .ok()
        .and_then(|p| set.router.allowed(&p))
        .map(|(mut methods, any)| {
            // A route for any method takes every method but CONNECT: the standard ones named.
            if any {
                methods.extend([
                    "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
                ]);
                methods.sort_unstable();
                methods.dedup();
            }
            methods.join(", ")
        })
        .unwrap_or_default();
    Decision::Refuse(Refusal::MethodNotAllowed {
        allow: Cow::Owned(allow),
    })
}

/// Steps 4-7 for a request whose host selected `set`; `authenticate` is step 5 for some APIs.
fn decide_route<'r>(
    snapshot: &'r Snapshot,
    set: &RouteSet,
    req: Request<'r>,
    host: Option<&str>,
    lookup: Lookup<'r>,
    path: Cow<'r, str>,
    authenticate: impl FnOnce(&[usize], Target<'_>) -> Result<Authenticated, AuthError>,
) -> (Decision<'r>, Option<Arc<Principal>>, SenderOutcome<'r>) {
    let matched = match &lookup {
        Lookup::Found(r) => Some(*r),
        _ => None,
    };
    let api = matched
        .map(|r| snapshot.routes[r].api)
        .or_else(|| set.apis.first().copied());
    let mut sender = SenderOutcome {
        nonce: wants_nonce(snapshot, api),
        ..SenderOutcome::default()
    };
    // 4. Public routes need no token.
    if let Some(route) = matched.filter(|&r| snapshot.routes[r].public) {
        let to = forward_to(snapshot, route, path, None);
        return (Decision::Forward(to), None, sender);
    }
    let report_only = match matched {
        Some(r) => snapshot.routes[r].report_only,
        None => set.all_report_only,
    };
    // Report-only enforces 404 and 405 as usual, without asking for a token first.
    if report_only && matched.is_none() {
        return (authorize_missing(lookup), None, sender);
    }
    // 5. Authenticate before revealing whether the path exists: for the route's API, or for
    // any API of the host when no route matched (the first one's reason when none fits).
    let route_api;
    let apis: &[usize] = match matched {
        Some(r) => {
            route_api = [snapshot.routes[r].api];
            &route_api
        }
        None => &set.apis,
    };
    let target = Target {
        method: req.method.as_str(),
        https: req.https,
        host: host.unwrap_or(""),
        path: &path,
    };
    let (principal, decision) = match authenticate(apis, target) {
        Ok(auth) => {
            sender.authenticated(snapshot, &auth);
            let decision = authorize(snapshot, lookup, path.clone(), auth.principal.clone());
            (Some(auth.principal), decision)
        }
        Err(AuthError::Ambiguous) => {
            let refusal = Refusal::BadRequest {
                description: "more than one Authorization header",
            };
            return (Decision::Refuse(refusal), None, sender);
        }
        Err(AuthError::Rejected(rejection, scheme)) => {
            sender.nonce |= rejection == Rejection::DpopNonce;
            let refusal = Refusal::Unauthenticated {
                rejection,
                route: matched,
                resource_metadata: resource_metadata(snapshot, &req, host, apis),
                challenge: sender::challenge(snapshot, apis.first().copied(), scheme, &rejection),
            };
            (None, Decision::Refuse(refusal))
        }
    };
    match (report_only, matched, decision) {
        (true, Some(route), Decision::Refuse(refusal)) => {
            let (decision, principal) = report_instead(snapshot, route, path, principal, refusal);
            (decision, principal, sender)
        }
        (_, _, decision) => (decision, principal, sender),
    }
}

/// RFC 9728: the URL of the first of `apis`' protected resource metadata, for a 401's challenge.
fn resource_metadata(
    snapshot: &Snapshot,
    req: &Request<'_>,
    host: Option<&str>,
    apis: &[usize],
) -> Option<String> {
    let api = &snapshot.apis[*apis.first()?];
    api.metadata.as_ref().map(|m| {
        let scheme = if req.https { "https" } else { "http" };
        format!("{scheme}://{}{}", host.unwrap_or(""), m.path)
    })
}

/// The 401 (`dpop_replay`) of a request whose DPoP proof was used before, or the 503
/// (`replay_store_unavailable`) when that could not be known: the edge's replay check.
pub fn replay_refusal<'s>(
    snapshot: &'s Snapshot,
    req: &Request<'_>,
    api: Option<usize>,
    route: Option<usize>,
    rejection: Rejection,
) -> Refusal<'s> {
    // The 401 challenges the DPoP way, with the API's metadata URL as every other 401 of it.
    let host = req.host().ok().flatten();
    Refusal::Unauthenticated {
        rejection,
        route,
        resource_metadata: resource_metadata(snapshot, req, host, api.as_slice()),
        challenge: Challenge::Dpop(sender::dpop_policy(snapshot, api)),
    }
}

/// Report-only: a 401 or 403 becomes a forward that says what it would have been.
fn report_instead<'r>(
    snapshot: &Snapshot,
    route: usize,
    path: Cow<'r, str>,
    principal: Option<Arc<Principal>>,
    refusal: Refusal<'r>,
) -> (Decision<'r>, Option<Arc<Principal>>) {
    let reason = match &refusal {
        Refusal::Unauthenticated { .. }
        | Refusal::Forbidden { .. }
        | Refusal::AccessDenied { .. } => refusal.reason().unwrap_or(""),
        _ => return (Decision::Refuse(refusal), principal),
    };
    let mut to = forward_to(snapshot, route, path, principal.clone());
    to.report = Some(Report {
        would_be: refusal.label(),
        reason,
        rejection: refusal.rejection(),
    });
    (Decision::Forward(to), principal)
}

/// 404 or 405 for a path that matched no route.
fn authorize_missing(lookup: Lookup<'_>) -> Decision<'_> {
    match lookup {
        Lookup::MethodNotAllowed(allow) => Decision::Refuse(Refusal::MethodNotAllowed { allow }),
        _ => Decision::Refuse(Refusal::NotFound),
    }
}

fn path_error_text(e: PathError) -> &'static str {
    match e {
        PathError::NotAbsolute => "the request target must be an absolute path",
        PathError::BadPercentEncoding => "malformed percent-encoding in the path",
        PathError::EncodedSeparator => "encoded '/' or '\\' in the path",
        PathError::Backslash => "backslash in the path",
        PathError::ControlCharacter => "NUL or control character in the path",
        PathError::NotUtf8 => "the path is not valid UTF-8 after decoding",
        PathError::DotSegmentWithParameters => "dot or empty segment with parameters in the path",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_indexed_by_their_position() {
        for (i, d) in DecisionLabel::ALL.iter().enumerate() {
            assert_eq!(d.index(), i, "{}", d.as_str());
        }
    }
}

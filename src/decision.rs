//! The ordered decision of SPEC ("Decisions, in this order") as a pure function of the snapshot,
//! the request and the clock: `decide(snapshot, request, now)`. No I/O: the edge only carries
//! out the answer. A request is forwarded only with a `ForwardTo`, which only an allowed
//! decision produces.

use std::borrow::Cow;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue, ALLOW, WWW_AUTHENTICATE};
use http::{HeaderMap, Method};

use crate::auth::{bearer, BearerError, Principal, Rejection};
use crate::routing::{normalize, Lookup, PathError};
use crate::snapshot::Snapshot;

/// The request as far as the decision reads it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'r> {
    pub method: &'r Method,
    /// The path part of the request target (no query).
    pub path: &'r str,
    pub headers: &'r HeaderMap,
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
}

impl DecisionLabel {
    pub const ALL: [DecisionLabel; 7] = [
        DecisionLabel::Allowed,
        DecisionLabel::Public,
        DecisionLabel::Unauthenticated,
        DecisionLabel::Forbidden,
        DecisionLabel::NotFound,
        DecisionLabel::MethodNotAllowed,
        DecisionLabel::BadRequest,
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
    /// The normalized path when it differs from the one received.
    pub fn rewritten_path(self) -> Option<String> {
        match self.path {
            Cow::Owned(p) => Some(p),
            Cow::Borrowed(_) => None,
        }
    }
    /// `None` on a public route.
    pub fn principal(&self) -> Option<&Arc<Principal>> {
        self.principal.as_ref()
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
    },
    /// 404 (after authentication).
    NotFound,
    /// 405 with `Allow` (after authentication).
    MethodNotAllowed { allow: Cow<'r, str> },
    /// 403 for this route.
    Forbidden { route: usize },
}

/// What to do with a request.
#[derive(Debug, Clone)]
pub enum Decision<'r> {
    Forward(ForwardTo<'r>),
    Refuse(Refusal<'r>),
}

impl Decision<'_> {
    pub fn label(&self) -> DecisionLabel {
        match self {
            Decision::Forward(f) if f.principal.is_none() => DecisionLabel::Public,
            Decision::Forward(_) => DecisionLabel::Allowed,
            Decision::Refuse(r) => r.label(),
        }
    }

    /// The route the decision is counted under, if any.
    pub fn route(&self) -> Option<usize> {
        match self {
            Decision::Forward(f) => Some(f.route),
            Decision::Refuse(r) => r.route(),
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
            Refusal::Forbidden { .. } => DecisionLabel::Forbidden,
        }
    }

    pub fn route(&self) -> Option<usize> {
        match self {
            Refusal::Forbidden { route } => Some(*route),
            Refusal::Unauthenticated { route, .. } => *route,
            _ => None,
        }
    }

    /// The answer: status, headers (built at load where they can be) and JSON error code.
    pub fn response(&self, snapshot: &Snapshot) -> ErrorResponse {
        match self {
            Refusal::BadRequest { description } => {
                ErrorResponse::new(400, "invalid_request", description)
            }
            Refusal::Unauthenticated { rejection, .. } => {
                // RFC 6750 §3.1: no error code when the request had no token at all.
                let error = match rejection {
                    Rejection::Missing => "unauthorized",
                    _ => "invalid_token",
                };
                ErrorResponse::new(401, error, rejection.description()).with(
                    WWW_AUTHENTICATE,
                    snapshot.challenges.for_rejection(rejection).clone(),
                )
            }
            Refusal::NotFound => ErrorResponse::new(404, "not_found", "no route for this path"),
            Refusal::MethodNotAllowed { allow } => {
                let r = ErrorResponse::new(
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
            Refusal::Forbidden { route } => ErrorResponse::new(
                403,
                "insufficient_scope",
                "the token lacks a scope this route requires",
            )
            .with(
                WWW_AUTHENTICATE,
                snapshot.routes[*route].insufficient_scope_challenge.clone(),
            ),
        }
    }
}

/// An answer given by the proxy itself: status, headers, and `{"error", "error_description"}`.
#[derive(Debug, Clone)]
pub struct ErrorResponse {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub error: &'static str,
    pub description: &'static str,
}

impl ErrorResponse {
    pub fn new(status: u16, error: &'static str, description: &'static str) -> ErrorResponse {
        ErrorResponse {
            status,
            headers: Vec::new(),
            error,
            description,
        }
    }

    pub fn with(mut self, name: HeaderName, value: HeaderValue) -> ErrorResponse {
        self.headers.push((name, value));
        self
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::json!({ "error": self.error, "error_description": self.description })
            .to_string()
    }
}

/// Step 5: the request's bearer token, verified and meant for these routes.
pub fn authenticate(
    snapshot: &Snapshot,
    headers: &HeaderMap,
    now: u64,
) -> Result<Arc<Principal>, AuthError> {
    let token = match bearer(headers) {
        Ok(Some(t)) => t,
        Ok(None) => return Err(AuthError::Rejected(Rejection::Missing)),
        Err(BearerError::Ambiguous) => return Err(AuthError::Ambiguous),
    };
    let principal = snapshot
        .verifier
        .verify(token, now)
        .map_err(AuthError::Rejected)?;
    if !snapshot.audiences.accept(&principal) {
        return Err(AuthError::Rejected(Rejection::WrongAudience));
    }
    Ok(principal)
}

/// Why `authenticate` found no principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// Two `Authorization` headers: a 400, not a 401.
    Ambiguous,
    Rejected(Rejection),
}

/// Steps 6-7: with an authenticated principal, the route lookup decides.
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
            if r.required.satisfied_by(&principal.scopes) {
                Decision::Forward(ForwardTo {
                    route,
                    upstream: r.upstream,
                    path,
                    principal: Some(principal),
                })
            } else {
                Decision::Refuse(Refusal::Forbidden { route })
            }
        }
    }
}

/// Decide a request at `now` (Unix seconds).
pub fn decide<'r>(snapshot: &'r Snapshot, req: Request<'r>, now: u64) -> Decision<'r> {
    // 1-2. A target we cannot normalize safely is refused before anything else.
    let path = match normalize(req.path) {
        Ok(p) => p,
        Err(e) => {
            return Decision::Refuse(Refusal::BadRequest {
                description: path_error_text(e),
            })
        }
    };
    let lookup = snapshot.router.lookup(req.method, &path);
    let matched = match &lookup {
        Lookup::Found(r) => Some(*r),
        _ => None,
    };

    // 4. Public routes need no token.
    if let Some(route) = matched.filter(|&r| snapshot.routes[r].public) {
        return Decision::Forward(ForwardTo {
            route,
            upstream: snapshot.routes[route].upstream,
            path,
            principal: None,
        });
    }

    // 5. Authenticate before revealing whether the path exists.
    match authenticate(snapshot, req.headers, now) {
        Ok(principal) => authorize(snapshot, lookup, path, principal),
        Err(AuthError::Ambiguous) => Decision::Refuse(Refusal::BadRequest {
            description: "more than one Authorization header",
        }),
        Err(AuthError::Rejected(rejection)) => Decision::Refuse(Refusal::Unauthenticated {
            rejection,
            route: matched,
        }),
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
        PathError::DotSegmentWithParameters => "dot segment with parameters in the path",
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

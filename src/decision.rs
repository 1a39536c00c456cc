//! The ordered decision of SPEC ("Decisions, in this order") as one function of the request's
//! method, target and headers and the snapshot. No I/O: the proxy layer only carries it out.

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderMap, Method};

use crate::path::{normalize, PathError};
use crate::router::Lookup;
use crate::snapshot::{RequiredScopes, Snapshot};
use crate::token::{bearer, BearerError, Principal, Rejection, ScopeSet};

/// What to do with a request.
#[derive(Debug, Clone)]
pub enum Decision<'r> {
    /// Forward to the route's upstream with this (normalized) path.
    Forward {
        route: usize,
        path: Cow<'r, str>,
        principal: Option<Arc<Principal>>,
    },
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

impl Decision<'_> {
    /// The `decision` label of `scopegate_requests_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Forward {
                principal: None, ..
            } => "public",
            Decision::Forward { .. } => "allowed",
            Decision::BadRequest { .. } => "bad_request",
            Decision::Unauthenticated { .. } => "unauthenticated",
            Decision::NotFound => "not_found",
            Decision::MethodNotAllowed { .. } => "method_not_allowed",
            Decision::Forbidden { .. } => "forbidden",
        }
    }

    pub fn route(&self) -> Option<usize> {
        match self {
            Decision::Forward { route, .. } | Decision::Forbidden { route } => Some(*route),
            Decision::Unauthenticated { route, .. } => *route,
            _ => None,
        }
    }
}

/// Whether the granted scopes satisfy a route: all of `all`, and one of `any` when given.
pub fn scopes_satisfy(granted: &ScopeSet, required: &RequiredScopes) -> bool {
    required.all.iter().all(|s| granted.contains(s))
        && (required.any.is_empty() || required.any.iter().any(|s| granted.contains(s)))
}

/// Decide a request. `path` is the path part of the request target (no query).
pub fn decide<'r>(
    snapshot: &'r Snapshot,
    method: &Method,
    path: &'r str,
    headers: &HeaderMap,
) -> Decision<'r> {
    // 1-2. A target we cannot normalize safely is refused before anything else.
    let path = match normalize(path) {
        Ok(p) => p,
        Err(e) => {
            return Decision::BadRequest {
                description: path_error_text(e),
            }
        }
    };
    let lookup = snapshot.router.lookup(method, &path);

    // 3. Public routes need no token.
    if let Lookup::Found(route) = &lookup {
        let route = *route;
        if snapshot.routes[route].public {
            return Decision::Forward {
                route,
                path,
                principal: None,
            };
        }
    }

    // 4. Authenticate before revealing whether the path exists.
    let matched = match &lookup {
        Lookup::Found(r) => Some(*r),
        _ => None,
    };
    let token = match bearer(headers) {
        Ok(Some(t)) => t,
        Ok(None) => {
            return Decision::Unauthenticated {
                rejection: Rejection::Missing,
                route: matched,
            }
        }
        Err(BearerError::Ambiguous) => {
            return Decision::BadRequest {
                description: "more than one Authorization header",
            }
        }
    };
    let principal = match snapshot.verify_token(token) {
        Ok(p) => p,
        Err(rejection) => {
            return Decision::Unauthenticated {
                rejection,
                route: matched,
            }
        }
    };

    // 5-6.
    match lookup {
        Lookup::NotFound => Decision::NotFound,
        Lookup::MethodNotAllowed(allow) => Decision::MethodNotAllowed { allow },
        Lookup::Found(route) => {
            if scopes_satisfy(&principal.scopes, &snapshot.routes[route].required) {
                Decision::Forward {
                    route,
                    path,
                    principal: Some(principal),
                }
            } else {
                Decision::Forbidden { route }
            }
        }
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

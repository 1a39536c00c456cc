//! `scopegate explain`: which route a request matches, what it requires, and the decision.

use std::fmt::Write;
use std::sync::Arc;

use http::header::{HeaderValue, AUTHORIZATION};
use http::{HeaderMap, Method};

use crate::decision::{decide, scopes_satisfy, Decision};
use crate::path::normalize;
use crate::router::Lookup;
use crate::snapshot::Snapshot;
use crate::token::{Principal, Rejection, ScopeSet};

/// What the caller presents: a real token, or just a list of scopes to try.
pub enum Credentials<'a> {
    None,
    Token(&'a str),
    Scopes(&'a str),
}

fn describe(snapshot: &Snapshot, d: &Decision<'_>) -> String {
    match d {
        Decision::Forward {
            route,
            principal: None,
            ..
        } => {
            format!(
                "200 forward to upstream {:?} (public route)",
                snapshot.upstreams[snapshot.routes[*route].upstream].name
            )
        }
        Decision::Forward { route, .. } => {
            format!(
                "200 forward to upstream {:?} (token carries the required scopes)",
                snapshot.upstreams[snapshot.routes[*route].upstream].name
            )
        }
        Decision::BadRequest { description } => format!("400 bad request: {description}"),
        Decision::Unauthenticated {
            rejection: Rejection::Missing,
            ..
        } => "401 unauthenticated: no bearer token".to_string(),
        Decision::Unauthenticated { rejection: r, .. } => {
            format!("401 invalid token ({}): {}", r.reason(), r.description())
        }
        Decision::NotFound => "404 no route for this path".to_string(),
        Decision::MethodNotAllowed { allow } => format!("405 method not allowed (Allow: {allow})"),
        Decision::Forbidden { route } => {
            let r = &snapshot.routes[*route];
            format!(
                "403 insufficient scope: needs all of [{}]{}",
                r.required.all.join(" "),
                if r.required.any.is_empty() {
                    String::new()
                } else {
                    format!(" and one of [{}]", r.required.any.join(" "))
                }
            )
        }
    }
}

pub fn explain(snapshot: &Snapshot, method: &str, target: &str, creds: Credentials<'_>) -> String {
    let mut out = String::new();
    let method = match Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
        Ok(m) => m,
        Err(_) => return format!("decision: 400 bad request: {method:?} is not an HTTP method\n"),
    };
    let path = target.split_once('?').map(|(p, _)| p).unwrap_or(target);
    let normalized = match normalize(path) {
        Ok(p) => p.into_owned(),
        Err(e) => return format!("request:  {method} {target}\ndecision: 400 bad request: {e}\n"),
    };
    let _ = writeln!(out, "request:  {method} {target}");
    if normalized != path {
        let _ = writeln!(out, "path:     {normalized} (normalized)");
    }
    match snapshot.router.lookup(&method, &normalized) {
        Lookup::Found(i) => {
            let r = &snapshot.routes[i];
            let _ = writeln!(out, "route:    {}", r.label);
            if r.public {
                let _ = writeln!(out, "requires: nothing (public)");
            } else {
                let _ = writeln!(
                    out,
                    "requires: a valid token{}{}",
                    if r.required.all.is_empty() {
                        String::new()
                    } else {
                        format!(", all of [{}]", r.required.all.join(" "))
                    },
                    if r.required.any.is_empty() {
                        String::new()
                    } else {
                        format!(", one of [{}]", r.required.any.join(" "))
                    }
                );
            }
            let _ = writeln!(out, "upstream: {}", snapshot.upstreams[r.upstream].name);
        }
        Lookup::MethodNotAllowed(allow) => {
            let _ = writeln!(out, "route:    none for {method} (path allows {allow})");
        }
        Lookup::NotFound => {
            let _ = writeln!(out, "route:    none");
        }
    }
    let decision_text = match creds {
        Credentials::Scopes(scopes) => {
            let granted = ScopeSet::from_words(scopes.split_whitespace());
            match snapshot.router.lookup(&method, &normalized) {
                Lookup::Found(i) if snapshot.routes[i].public => describe(
                    snapshot,
                    &Decision::Forward {
                        route: i,
                        path: normalized.clone().into(),
                        principal: None,
                    },
                ),
                Lookup::Found(i) if scopes_satisfy(&granted, &snapshot.routes[i].required) => {
                    let p = Principal {
                        issuer: 0,
                        sub: None,
                        scopes: granted,
                        exp: 0,
                        forward_headers: Vec::new(),
                    };
                    describe(
                        snapshot,
                        &Decision::Forward {
                            route: i,
                            path: normalized.clone().into(),
                            principal: Some(Arc::new(p)),
                        },
                    )
                }
                Lookup::Found(i) => describe(snapshot, &Decision::Forbidden { route: i }),
                Lookup::MethodNotAllowed(allow) => {
                    describe(snapshot, &Decision::MethodNotAllowed { allow })
                }
                Lookup::NotFound => describe(snapshot, &Decision::NotFound),
            }
        }
        Credentials::Token(_) | Credentials::None => {
            let mut headers = HeaderMap::new();
            if let Credentials::Token(t) = creds {
                match HeaderValue::from_str(&format!("Bearer {t}")) {
                    Ok(v) => {
                        headers.insert(AUTHORIZATION, v);
                    }
                    Err(_) => return out + "decision: 401 invalid token: not a header value\n",
                }
            }
            describe(snapshot, &decide(snapshot, &method, path, &headers))
        }
    };
    let _ = writeln!(out, "decision: {decision_text}");
    out
}

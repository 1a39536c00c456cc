//! `scopegate explain`: which route a request matches, what it requires, and the decision, by
//! the same code the proxy runs (`decide`; for `--scopes`, with a token described, not signed).

use std::fmt::Write;

use http::header::{HeaderValue, AUTHORIZATION, HOST};
use http::{HeaderMap, Method};

use crate::auth::Rejection;
use crate::decision::{decide, decide_as, Caller, Decision, Refusal, Request};
use crate::policy::token::{self, TokenDescription};
use crate::routing::{normalize, Lookup};
use crate::snapshot::{unix_now, Snapshot};

/// What the caller presents: a real token, or just a list of scopes to try.
pub enum Credentials<'a> {
    None,
    Token(&'a str),
    Scopes(&'a str),
}

fn describe(snapshot: &Snapshot, d: &Decision<'_>) -> String {
    match d {
        Decision::Forward(f) => match f.report() {
            Some(r) => format!(
                "forward to upstream {:?} (report-only: would be {} {})",
                snapshot.upstreams[f.upstream()].name,
                r.would_be.as_str(),
                r.reason
            ),
            None => format!(
                "200 forward to upstream {:?} ({})",
                snapshot.upstreams[f.upstream()].name,
                if f.principal().is_some() {
                    "token carries the required scopes and claims"
                } else {
                    "public route"
                }
            ),
        },
        Decision::Metadata { api } => format!(
            "200 protected resource metadata of API {}",
            snapshot.apis[*api].display_name()
        ),
        Decision::Refuse(Refusal::AccessDenied { route, condition }) => format!(
            "403 access denied: {}",
            snapshot.routes[*route].conditions[*condition].describe()
        ),
        Decision::Refuse(Refusal::BadRequest { description }) => {
            format!("400 bad request: {description}")
        }
        Decision::Refuse(Refusal::Unauthenticated {
            rejection: Rejection::Missing,
            ..
        }) => "401 unauthenticated: no bearer token".to_string(),
        Decision::Refuse(Refusal::Unauthenticated { rejection: r, .. }) => format!(
            "401 invalid token ({}): {}",
            r.reason().as_str(),
            r.description()
        ),
        Decision::Refuse(Refusal::NotFound) => "404 no route for this path".to_string(),
        Decision::Refuse(Refusal::MethodNotAllowed { allow }) => {
            format!("405 method not allowed (Allow: {allow})")
        }
        Decision::Refuse(Refusal::Forbidden { route }) => format!(
            "403 insufficient scope: needs {}",
            snapshot.routes[*route].required
        ),
        Decision::Refuse(Refusal::CorsRejected { .. }) => {
            "403 CORS preflight rejected (origin or method not allowed)".to_string()
        }
        Decision::Preflight(_) => "204 CORS preflight answered".to_string(),
        Decision::Refuse(Refusal::RateLimited { quota, .. }) => format!(
            "429 rate limited by quota {}",
            snapshot.quotas[*quota].label
        ),
    }
}

/// The route part of the explanation: what matched and what it requires.
fn describe_route(out: &mut String, snapshot: &Snapshot, method: &Method, lookup: &Lookup<'_>) {
    match lookup {
        Lookup::Found(i) => {
            let r = &snapshot.routes[*i];
            let _ = writeln!(out, "route:    {}", r.label);
            if r.public {
                let _ = writeln!(out, "requires: nothing (public)");
            } else {
                let _ = writeln!(out, "requires: a valid token: {}", r.required);
                for c in &r.conditions {
                    let _ = writeln!(out, "claim:    {}", c.describe());
                }
                let pop = snapshot.apis[r.api].pop.as_ref().filter(|p| p.required);
                if let Some(pop) = pop {
                    let how = match pop.mechanism {
                        crate::snapshot::Mechanism::Dpop => "DPoP (RFC 9449)",
                        crate::snapshot::Mechanism::Mtls => "its client certificate (RFC 8705)",
                    };
                    let _ = writeln!(out, "binding:  the token bound to {how}");
                }
            }
            let _ = writeln!(out, "upstream: {}", snapshot.upstreams[r.upstream].name);
            for &q in &r.quotas {
                let _ = writeln!(out, "quota:    {}", snapshot.quotas[q].describe());
            }
        }
        Lookup::MethodNotAllowed(allow) => {
            let _ = writeln!(out, "route:    none for {method} (path allows {allow})");
        }
        Lookup::NotFound => {
            let _ = writeln!(out, "route:    none");
        }
    }
}

pub fn explain(
    snapshot: &Snapshot,
    method: &str,
    target: &str,
    host: Option<&str>,
    creds: Credentials<'_>,
) -> String {
    let mut out = String::new();
    let method = match Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
        Ok(m) => m,
        Err(_) => return format!("decision: 400 bad request: {method:?} is not an HTTP method\n"),
    };
    let path = target.split_once('?').map(|(p, _)| p).unwrap_or(target);
    let normalized = match normalize(path) {
        Ok(p) => p,
        Err(e) => return format!("request:  {method} {target}\ndecision: 400 bad request: {e}\n"),
    };
    let _ = writeln!(out, "request:  {method} {target}");
    if normalized != path {
        let _ = writeln!(out, "path:     {normalized} (normalized)");
    }
    let mut headers = HeaderMap::new();
    if let Some(h) = host {
        match HeaderValue::from_str(h) {
            Ok(v) => headers.insert(HOST, v),
            Err(_) => return out + "decision: 400 bad request: the host is not a header value\n",
        };
    }
    let set = snapshot.route_set(host);
    let apis: Vec<&str> = set
        .apis
        .iter()
        .map(|&a| snapshot.apis[a].display_name())
        .collect();
    let _ = writeln!(
        out,
        "host:     {} -> {}",
        host.unwrap_or("(none)"),
        if apis.is_empty() {
            "no API".to_string()
        } else {
            apis.join(", ")
        }
    );
    let lookup = set.router.lookup(&method, &normalized);
    describe_route(&mut out, snapshot, &method, &lookup);
    let decision = match creds {
        // The scopes stand for a valid token meant for the route's API: decided as one.
        Credentials::Scopes(scopes) => {
            let api = token::api_for(snapshot, &method, host, path);
            let verified = token::verified(snapshot, api, &TokenDescription::with_scopes(scopes));
            let request = Request::new(&method, path, &headers);
            decide_as(snapshot, request, Caller::Verified(&verified), unix_now()).decision
        }
        Credentials::Token(t) => match HeaderValue::from_str(&format!("Bearer {t}")) {
            Ok(v) => {
                headers.insert(AUTHORIZATION, v);
                decide(snapshot, Request::new(&method, path, &headers), unix_now()).decision
            }
            Err(_) => return out + "decision: 401 invalid token: not a header value\n",
        },
        Credentials::None => {
            decide(snapshot, Request::new(&method, path, &headers), unix_now()).decision
        }
    };
    let _ = writeln!(out, "decision: {}", describe(snapshot, &decision));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{build, parse_for_test, TEST_PREAMBLE};

    /// SPEC: explain says "what they require": the scopes, each claim condition, and a
    /// binding the route's API requires.
    #[test]
    fn the_route_part_names_every_requirement() {
        let routes = r#"
[[routes]]
methods = ["GET"]
path = "/contacts/{id}"
scopes = ["read:contacts"]
claims = { sub = "{id}" }
[apis.pay]
audience = "https://pay.test"
hosts = ["pay.test"]
upstream = "one"
[apis.pay.proof_of_possession]
mechanism = "dpop"
[[apis.pay.routes]]
methods = ["GET"]
path = "/p"
scopes = ["pay"]
"#;
        let text = format!("{TEST_PREAMBLE}{routes}");
        let snap = build(&parse_for_test(&text), 1).unwrap();
        let out = explain(&snap, "GET", "/contacts/7", None, Credentials::None);
        let claim = snap
            .routes
            .iter()
            .find(|r| r.path == "/contacts/{id}")
            .unwrap();
        assert!(
            out.contains(&format!("claim:    {}", claim.conditions[0].describe())),
            "{out}"
        );
        assert!(!out.contains("binding:"), "{out}");
        let out = explain(&snap, "GET", "/p", Some("pay.test"), Credentials::None);
        assert!(out.contains("binding:  the token bound to DPoP"), "{out}");
    }
}

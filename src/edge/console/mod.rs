//! The operator console on the admin listener: one page (`/`, with `/console.css` and
//! `/console.js`, no other asset and no inline script) and the JSON it reads: `/api/routes`,
//! `/api/refusals`, `/api/keys`, `/api/reloads`, and `POST /api/explain`, which decides a request
//! with the proxy's own decision code. Nothing here imports Pingora: `admin.rs` serves it.

pub mod refusals;
pub mod reloads;

use std::collections::BTreeMap;

use http::header::{HeaderValue, HOST};
use http::{HeaderMap, Method};
use serde::Deserialize;
use serde_json::{json, Value};

use super::access_log::Rfc3339;
use crate::auth::keys::KeySource;
use crate::auth::Rejection;
use crate::decision::{decide_as, Caller, Request};
use crate::policy::cases::outcome;
use crate::policy::token::{self, TokenDescription};
use crate::snapshot::{Accepts, Api, Snapshot};

pub const INDEX_HTML: &str = include_str!("assets/index.html");
pub const CONSOLE_CSS: &str = include_str!("assets/console.css");
pub const CONSOLE_JS: &str = include_str!("assets/console.js");

/// The page's policy: its own origin only, no inline script, no eval, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `GET /api/routes`: every API with its routes as the snapshot has them, and the live count of
/// each route's requests by decision (`counts`: route label, decision, count).
pub fn routes(snapshot: &Snapshot, counts: &[(String, String, u64)]) -> Value {
    let mut by_route: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for (route, decision, n) in counts {
        by_route.entry(route).or_default().insert(decision, *n);
    }
    let issuers = &snapshot.verifier.issuers;
    let apis: Vec<Value> = snapshot
        .apis
        .iter()
        .enumerate()
        .map(|(a, api)| {
            let (audiences, trusted): (Vec<&str>, Vec<&str>) = match &api.accepts {
                Accepts::Audience {
                    audience,
                    issuers: i,
                } => (
                    vec![audience.as_str()],
                    i.iter().map(|&i| issuers[i].issuer.as_str()).collect(),
                ),
                Accepts::PerIssuer(per_issuer) => {
                    let mut auds: Vec<&str> = Vec::new();
                    let mut trusted = Vec::new();
                    for (i, list) in per_issuer.iter().enumerate() {
                        if !list.is_empty() {
                            trusted.push(issuers[i].issuer.as_str());
                        }
                        for aud in list {
                            if !auds.contains(&aud.as_str()) {
                                auds.push(aud);
                            }
                        }
                    }
                    (auds, trusted)
                }
            };
            let routes: Vec<Value> = snapshot
                .routes
                .iter()
                .filter(|r| r.api == a)
                .map(|r| {
                    json!({
                        "label": r.label,
                        "methods": r.methods.iter().map(Method::as_str).collect::<Vec<_>>(),
                        "path": r.path,
                        "scopes": r.required.all,
                        "any_scopes": r.required.any,
                        "claims": r.conditions.iter().map(|c| c.describe()).collect::<Vec<_>>(),
                        "public": r.public,
                        "report_only": r.report_only,
                        "websocket": r.websocket,
                        "upstream": snapshot.upstreams[r.upstream].name,
                        "quotas": r.quotas.iter().map(|&q| {
                            let q = &snapshot.quotas[q];
                            format!("{} {}/{}s", q.name, q.limit, q.window_seconds)
                        }).collect::<Vec<_>>(),
                        "counts": by_route.get(r.label.as_str()).cloned().unwrap_or_default(),
                    })
                })
                .collect();
            json!({
                "name": api.name,
                "display_name": api.display_name(),
                "audience": configured_audience(api),
                "audiences": audiences,
                "issuers": trusted,
                "hosts": api.hosts.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "strip_prefix": api.strip_prefix,
                "report_only": api.report_only,
                "cors_origins": api.cors.as_ref().map(|c| c.origins.clone()),
                "routes": routes,
            })
        })
        .collect();
    json!({
        "generation": snapshot.generation,
        "apis": apis,
        "unrouted": by_route.get("none").cloned().unwrap_or_default(),
    })
}

/// `GET /api/keys`: per issuer, where its keys come from, each key's `kid` and `alg`, when they
/// were loaded and fetched, and the fetches that failed.
pub fn keys(snapshot: &Snapshot) -> Value {
    let time = |t: Option<std::time::SystemTime>| t.map(|t| Rfc3339(t).to_string());
    let issuers: Vec<Value> = snapshot
        .verifier
        .issuers
        .iter()
        .map(|i| {
            let source = match &i.keys.source {
                KeySource::Url(u) => json!({ "jwks_url": u }),
                KeySource::Discovery(issuer) => json!({ "discovery": issuer }),
                KeySource::File(p) => json!({ "jwks_file": p.display().to_string() }),
                KeySource::SecretEnv(var) => json!({ "hs256_secret_env": var }),
            };
            let keys: Vec<Value> = i
                .keys
                .keys()
                .keys
                .iter()
                .map(|k| {
                    json!({
                        "kid": k.kid,
                        "alg": k.alg.map(|a| format!("{a:?}")).unwrap_or_else(|| format!("{:?} family", k.family)),
                    })
                })
                .collect();
            let status = i.keys.refresh_status();
            json!({
                "issuer": i.issuer,
                "source": source,
                "keys": keys,
                "loaded": i.keys.is_loaded(),
                "loaded_at": time(status.loaded_at),
                "last_refresh": time(status.last_attempt),
                "next_refresh": time(status.next_due),
                "failures": status.failures,
                "failing_in_a_row": status.failing_in_a_row,
                "last_error": status.last_error,
            })
        })
        .collect();
    json!({ "issuers": issuers })
}

/// `POST /api/explain`: a request to decide, with a pasted token or a list of scopes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    pub method: String,
    #[serde(default)]
    pub host: Option<String>,
    pub path: String,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
}

/// Why a request to explain cannot be decided (a 400 of the console's API).
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("the body is not {{\"method\", \"host\", \"path\", \"token\" or \"scopes\"}}: {0}")]
    Body(String),
    #[error("{0:?} is not an HTTP method")]
    Method(String),
    #[error("give a token or scopes, not both")]
    TokenAndScopes,
    #[error("the host is not a header value")]
    Host,
}

/// An API's `audience` as configured (`None` for the issuers' own `audiences`).
fn configured_audience(api: &Api) -> Option<&str> {
    match &api.accepts {
        Accepts::Audience { audience, .. } => Some(audience.as_str()),
        Accepts::PerIssuer(_) => None,
    }
}

/// Decide the request as the proxy would, at `now`: `{"status", "decision", "reason", "route"}`
/// as the access log names them. A pasted token is verified without the token cache, so it is
/// kept nowhere once the answer is written (and it is never logged).
pub fn explain(snapshot: &Snapshot, body: &[u8], now: u64) -> Result<Value, ExplainError> {
    let req: ExplainRequest =
        serde_json::from_slice(body).map_err(|e| ExplainError::Body(e.to_string()))?;
    let method = Method::from_bytes(req.method.trim().to_ascii_uppercase().as_bytes())
        .map_err(|_| ExplainError::Method(req.method.clone()))?;
    let host = req.host.as_deref().map(str::trim).filter(|h| !h.is_empty());
    let path = req.path.trim();
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let mut headers = HeaderMap::new();
    if let Some(h) = host {
        headers.insert(
            HOST,
            HeaderValue::from_str(h).map_err(|_| ExplainError::Host)?,
        );
    }
    let verified = match (&req.token, &req.scopes) {
        (Some(_), Some(_)) => return Err(ExplainError::TokenAndScopes),
        (Some(t), None) => {
            let t = t.trim();
            let t = t.strip_prefix("Bearer ").unwrap_or(t).trim();
            if t.is_empty() {
                Err(Rejection::Missing)
            } else {
                snapshot.verifier.verify_uncached(t.as_bytes(), now)
            }
        }
        // The scopes stand for a valid token meant for the request's API.
        (None, Some(scopes)) => {
            let api = token::api_for(snapshot, &method, host, path);
            let described = TokenDescription {
                scopes: scopes.clone(),
                ..TokenDescription::default()
            };
            token::verified(snapshot, api, &described)
        }
        (None, None) => Err(Rejection::Missing),
    };
    let request = Request::new(&method, path, &headers);
    // A pasted token is decided as sent in a `Bearer` header; scopes, as a token described.
    let caller = if req.token.is_some() {
        Caller::Pasted(&verified)
    } else {
        Caller::Verified(&verified)
    };
    let verdict = decide_as(snapshot, request, caller, now);
    let o = outcome(snapshot, &verdict.decision);
    Ok(json!({
        "status": o.status,
        "decision": o.decision.as_str(),
        "reason": o.reason,
        "route": o.route,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{build, parse_for_test, TEST_PREAMBLE};

    const ROUTES: &str = r#"
[[routes]]
methods = ["GET"]
path = "/contacts/{id}"
scopes = ["read:contacts"]

[[routes]]
path = "/open"
public = true
"#;

    /// `TEST_PREAMBLE` and `ROUTES`.
    fn config() -> String {
        format!("{TEST_PREAMBLE}{ROUTES}")
    }

    fn ask(body: Value) -> Value {
        let snap = build(&parse_for_test(&config()), 1).unwrap();
        explain(&snap, body.to_string().as_bytes(), 1_000).unwrap()
    }

    #[test]
    fn explain_decides_as_the_proxy_and_names_it_as_the_access_log() {
        let ok = ask(json!({"method": "get", "path": "/contacts/7", "scopes": ["read:contacts"]}));
        assert_eq!(
            ok,
            json!({"status": 200, "decision": "allowed", "reason": null, "route": "GET /contacts/{id}"})
        );
        let denied = ask(json!({"method": "GET", "path": "/contacts/7", "scopes": ["x"]}));
        assert_eq!(denied["status"], 403);
        assert_eq!(denied["reason"], "insufficient_scope");
        let none = ask(json!({"method": "GET", "host": "", "path": "/contacts/7"}));
        assert_eq!(
            (none["status"].as_u64(), none["decision"].as_str()),
            (Some(401), Some("unauthenticated"))
        );
        let bad = ask(json!({"method": "GET", "path": "/contacts/7", "token": "Bearer not.a.jwt"}));
        assert_eq!(
            (bad["status"].as_u64(), bad["reason"].as_str()),
            (Some(401), Some("malformed"))
        );
        let public = ask(json!({"method": "POST", "path": "/open"}));
        assert_eq!(public["decision"], "public");
        let missing = ask(json!({"method": "GET", "path": "/nope", "scopes": []}));
        assert_eq!(
            (missing["status"].as_u64(), missing["route"].as_str()),
            (Some(404), Some("none"))
        );
    }

    #[test]
    fn explain_refuses_what_it_cannot_decide() {
        let snap = build(&parse_for_test(&config()), 1).unwrap();
        for body in [
            json!({"method": "GET"}),
            json!({"method": "G E T", "path": "/"}),
            json!({"method": "GET", "path": "/", "token": "t", "scopes": []}),
            json!({"method": "GET", "path": "/", "tokn": "t"}),
        ] {
            assert!(
                explain(&snap, body.to_string().as_bytes(), 0).is_err(),
                "{body}"
            );
        }
    }

    #[test]
    fn routes_lists_each_api_with_its_routes_and_counts() {
        let snap = build(&parse_for_test(&config()), 1).unwrap();
        let counts = vec![
            ("GET /contacts/{id}".to_string(), "forbidden".to_string(), 3),
            ("none".to_string(), "not_found".to_string(), 2),
        ];
        let v = routes(&snap, &counts);
        let route = &v["apis"][0]["routes"][0];
        assert_eq!(route["label"], "GET /contacts/{id}");
        assert_eq!(route["scopes"], json!(["read:contacts"]));
        assert_eq!(route["counts"]["forbidden"], 3);
        assert_eq!(v["apis"][0]["routes"][1]["public"], true);
        assert_eq!(v["apis"][0]["issuers"], json!(["https://a.test/"]));
        assert_eq!(v["unrouted"]["not_found"], 2);
        // The top-level routes take the issuers' audiences; an API has its one `audience`.
        let top = v["apis"][0].as_object().unwrap();
        assert_eq!(top.get("audience"), Some(&Value::Null), "{top:?}");
        assert_eq!(v["apis"][0]["audiences"], json!(["https://top.test"]));
        let with_api = format!(
            "{}\n[apis.pay]\naudience = \"https://pay.test\"\nhosts = [\"pay.test\"]\nupstream = \"one\"\n\
             [[apis.pay.routes]]\nmethods = [\"GET\"]\npath = \"/p\"\nscopes = [\"pay\"]\n",
            config()
        );
        let snap = build(&parse_for_test(&with_api), 1).unwrap();
        let v = routes(&snap, &[]);
        let pay = v["apis"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == "pay")
            .unwrap();
        assert_eq!(pay["audience"], "https://pay.test");
        assert_eq!(pay["audiences"], json!(["https://pay.test"]));
    }
}

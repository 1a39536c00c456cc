//! `scopegate test CASES.toml`: policy test cases, each a request, an optional host and a token
//! described by what it carries (or `"none"`), run through the proxy's own `decide` with no
//! network, and checked against the expected status (and optionally reason and route).

use std::fmt;
use std::path::Path;

use http::header::{HeaderValue, HOST};
use http::{HeaderMap, Method};
use serde::Deserialize;
use toml::Spanned;

use super::token::{self, TokenDescription};
use crate::auth::{Rejection, RejectionReason};
use crate::compile::edit_distance;
use crate::config::{read_regular, ConfigError, Source};
use crate::decision::{decide_as, Caller, Decision, DecisionLabel, Request};
use crate::snapshot::{unix_now, Snapshot};

/// The reasons a case may expect besides the token rejection reasons.
const REFUSAL_REASONS: [&str; 3] = ["insufficient_scope", "access_denied", "cors_rejected"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesFile {
    #[serde(default, rename = "case")]
    cases: Vec<CaseConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseConfig {
    name: Spanned<String>,
    /// `METHOD TARGET`.
    request: Spanned<String>,
    host: Option<Spanned<String>>,
    #[serde(default)]
    token: Token,
    expect: Spanned<u16>,
    reason: Option<Spanned<String>>,
    route: Option<Spanned<String>>,
}

/// `token = "none"`, or a table describing the token.
#[derive(Debug, Clone, Default)]
enum Token {
    #[default]
    None,
    Described(TokenDescription),
}

impl<'de> Deserialize<'de> for Token {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Token;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"none\" or a table like { scopes = [\"read:contacts\"] }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Token, E> {
                match v {
                    "none" => Ok(Token::None),
                    other => Err(E::custom(format!(
                        "token {other:?}: write \"none\" for no token, or describe it: {{ scopes = [...], sub = \"...\" }}"
                    ))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Token, A::Error> {
                TokenDescription::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(Token::Described)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// One case, checked against the config it runs on.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    method: Method,
    target: String,
    host: Option<String>,
    token: Token,
    expect: u16,
    reason: Option<String>,
    /// A route label, or `none`.
    route: Option<String>,
}

/// What the proxy's decision was for a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The status scopegate answers, or 200 for a forwarded request.
    pub status: u16,
    pub decision: DecisionLabel,
    /// The access log's reason (for report-only, the one it would have had).
    pub reason: Option<&'static str>,
    /// The route label, `none` without a route.
    pub route: String,
}

/// The result of a whole file.
#[derive(Debug, Default)]
pub struct Report {
    pub passed: usize,
    /// One `FAIL name: expected ..., got ...` line per failing case.
    pub failures: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.failures {
            writeln!(f, "{line}")?;
        }
        writeln!(f, "{} passed, {} failed", self.passed, self.failures.len())
    }
}

/// Read and check a cases file against the config it will run on.
pub fn load(path: &Path, snapshot: &Snapshot) -> Result<Vec<Case>, ConfigError> {
    let name = path.display().to_string();
    let cannot = |message: String| ConfigError {
        file: name.clone(),
        line: 1,
        col: 1,
        message: format!("cannot read cases file: {message}"),
    };
    let bytes = read_regular(path).map_err(|e| cannot(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| cannot("not UTF-8".into()))?;
    parse(&Source { name, text }, snapshot)
}

/// Parse cases; every error is `file:line:col: message`.
pub fn parse(source: &Source, snapshot: &Snapshot) -> Result<Vec<Case>, ConfigError> {
    let file: CasesFile = toml::from_str(&source.text)
        .map_err(|e| source.error(e.span(), e.message().trim().to_string()))?;
    if file.cases.is_empty() {
        return Err(source.error(None, "no [[case]] in the file"));
    }
    let mut cases: Vec<Case> = Vec::with_capacity(file.cases.len());
    for c in file.cases {
        let err = |s: std::ops::Range<usize>, m: String| source.error(Some(s), m);
        let name = c.name.get_ref().clone();
        if cases.iter().any(|k| k.name == name) {
            return Err(err(
                c.name.span(),
                format!("case {name:?} is defined twice"),
            ));
        }
        let (method, target) = request(c.request.get_ref())
            .map_err(|m| err(c.request.span(), format!("case {name:?}: {m}")))?;
        let expect = *c.expect.get_ref();
        if !(100..=599).contains(&expect) {
            return Err(err(
                c.expect.span(),
                format!("case {name:?}: expect = {expect} is not an HTTP status"),
            ));
        }
        if let Some(r) = &c.reason {
            let known = known_reasons();
            if !known.contains(&r.get_ref().as_str()) {
                return Err(err(
                    r.span(),
                    format!(
                        "case {name:?}: reason {:?} is not one scopegate gives{}",
                        r.get_ref(),
                        closest(r.get_ref(), known.iter().copied())
                    ),
                ));
            }
        }
        if let Some(r) = &c.route {
            let labels = snapshot.routes.iter().map(|r| r.label.as_str());
            if r.get_ref() != "none" && !labels.clone().any(|l| l == r.get_ref()) {
                return Err(err(
                    r.span(),
                    format!(
                        "case {name:?}: the config has no route {:?} (routes are named as `check` and the metrics name them, or \"none\"){}",
                        r.get_ref(),
                        closest(r.get_ref(), labels)
                    ),
                ));
            }
        }
        if let Some(h) = &c.host {
            HeaderValue::from_str(h.get_ref()).map_err(|_| {
                err(
                    h.span(),
                    format!("case {name:?}: the host is not a header value"),
                )
            })?;
        }
        cases.push(Case {
            name,
            method,
            target,
            host: c.host.map(Spanned::into_inner),
            token: c.token,
            expect,
            reason: c.reason.map(Spanned::into_inner),
            route: c.route.map(Spanned::into_inner),
        });
    }
    Ok(cases)
}

/// `DELETE /contacts/7` -> (method, target).
fn request(text: &str) -> Result<(Method, String), String> {
    let (method, target) = text.trim().split_once(' ').ok_or_else(|| {
        format!("request {text:?} must be \"METHOD TARGET\", like \"GET /contacts/7\"")
    })?;
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("{method:?} is not an HTTP method"))?;
    let target = target.trim();
    if !target.starts_with('/') {
        return Err(format!(
            "target {target:?} must be a path, like /contacts/7"
        ));
    }
    Ok((method, target.to_string()))
}

fn known_reasons() -> Vec<&'static str> {
    RejectionReason::ALL
        .iter()
        .map(|r| r.as_str())
        .chain(REFUSAL_REASONS)
        .collect()
}

/// `; did you mean "x"?` when a known name is close to `wrong`.
fn closest<'a>(wrong: &str, known: impl Iterator<Item = &'a str>) -> String {
    known
        .map(|k| (edit_distance(wrong, k), k))
        .filter(|(d, k)| *d <= k.len() / 3 + 1)
        .min()
        .map(|(_, k)| format!("; did you mean {k:?}?"))
        .unwrap_or_default()
}

/// Decide one case with the proxy's own decision code.
pub fn run(snapshot: &Snapshot, case: &Case) -> Outcome {
    let path = case
        .target
        .split_once('?')
        .map_or(case.target.as_str(), |(p, _)| p);
    let mut headers = HeaderMap::new();
    if let Some(h) = case
        .host
        .as_deref()
        .and_then(|h| HeaderValue::from_str(h).ok())
    {
        headers.insert(HOST, h);
    }
    let verified: Result<_, Rejection> = match &case.token {
        Token::None => Err(Rejection::Missing),
        Token::Described(t) => {
            let api = token::api_for(snapshot, &case.method, case.host.as_deref(), path);
            token::verified(snapshot, api, t)
        }
    };
    let request = Request::new(&case.method, path, &headers);
    let verdict = decide_as(snapshot, request, Caller::Verified(&verified), unix_now());
    outcome(snapshot, &verdict.decision)
}

/// Status, decision label, reason and route of a decision, as the access log names them.
pub fn outcome(snapshot: &Snapshot, decision: &Decision<'_>) -> Outcome {
    let status = decision.answer(snapshot).map_or(200, |a| a.status);
    let reason = match decision {
        Decision::Refuse(r) => r.reason(),
        Decision::Forward(f) => f.report().map(|r| r.reason),
        _ => None,
    };
    Outcome {
        status,
        decision: decision.label(),
        reason,
        route: decision
            .route()
            .map_or_else(|| "none".to_string(), |r| snapshot.routes[r].label.clone()),
    }
}

/// The `FAIL` line of a case whose outcome is not the expected one.
pub fn failure(case: &Case, got: &Outcome) -> Option<String> {
    let status_ok = got.status == case.expect;
    let reason_ok = case
        .reason
        .as_ref()
        .is_none_or(|r| got.reason == Some(r.as_str()));
    let route_ok = case.route.as_ref().is_none_or(|r| *r == got.route);
    if status_ok && reason_ok && route_ok {
        return None;
    }
    let head = format!(
        "FAIL {}: expected {}{}, got {} (route {}, decision {}",
        case.name,
        case.expect,
        if status_ok {
            expected_detail(case)
        } else {
            String::new()
        },
        got.status,
        got.route,
        got.decision.as_str()
    );
    // A wrong status is said in SPEC's words alone; with the right one, what else differed.
    let reason = match got.reason {
        Some(r) if status_ok => format!(", reason {r}"),
        _ => String::new(),
    };
    Some(format!("{head}{reason})"))
}

/// ` (reason R, route T)`: what a case expects beside its status, when it expects any.
fn expected_detail(case: &Case) -> String {
    let mut expected = vec![];
    if let Some(r) = &case.reason {
        expected.push(format!("reason {r}"));
    }
    if let Some(r) = &case.route {
        expected.push(format!("route {r}"));
    }
    if expected.is_empty() {
        String::new()
    } else {
        format!(" ({})", expected.join(", "))
    }
}

/// Run every case.
pub fn run_all(snapshot: &Snapshot, cases: &[Case]) -> Report {
    let mut report = Report::default();
    for case in cases {
        match failure(case, &run(snapshot, case)) {
            Some(line) => report.failures.push(line),
            None => report.passed += 1,
        }
    }
    report
}

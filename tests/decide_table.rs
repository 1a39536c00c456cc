//! SPEC "Decisions, in this order", in process: one row per rule, against a snapshot compiled
//! from a TOML string, with the clock passed in (expiry and not-before without waiting).

mod common;

use common::{claims, key, now, other_key, sign, sign_with, AUD, ISS, KID};
use http::header::{HeaderValue, AUTHORIZATION};
use http::{HeaderMap, Method};
use scopegate::auth::keys::KeySet;
use scopegate::auth::Rejection;
use scopegate::config::{parse, Source};
use scopegate::decision::{decide, Decision, DecisionLabel, Refusal, Request};
use scopegate::snapshot::Snapshot;
use serde_json::json;

/// The server, the test issuer (no leeway) and upstream `api`; the routes follow.
fn preamble() -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:1"
[[issuers]]
issuer = "{ISS}"
audiences = ["{AUD}"]
jwks_file = "jwks.json"
leeway_seconds = 0
[upstreams.api]
servers = ["127.0.0.1:2"]
"#
    )
}

fn snapshot() -> (Snapshot, tempfile::TempDir) {
    let text = format!(
        r#"{}
[[routes]]
methods = ["GET"]
path = "/health"
public = true
[[routes]]
methods = ["GET"]
path = "/contacts"
scopes = ["read:contacts"]
[[routes]]
methods = ["POST"]
path = "/contacts"
scopes = ["write:contacts"]
[[routes]]
methods = ["DELETE"]
path = "/contacts/{{id}}"
scopes = ["delete:contacts"]
any_scopes = ["admin", "owner"]
"#,
        preamble()
    );
    snapshot_of(&text)
}

/// A snapshot of `text`, with the test key's JWKS as `jwks.json` beside it.
fn snapshot_of(text: &str) -> (Snapshot, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), &key().jwks).unwrap();
    let source = Source {
        name: "t.toml".into(),
        text: text.to_string(),
    };
    let loaded = parse(source, dir.path().to_path_buf()).unwrap();
    (scopegate::compile::build(&loaded, 1).unwrap(), dir)
}

/// What a row expects: the decision label, and for refusals the status and (for 401s) reason.
fn outcome(snap: &Snapshot, d: &Decision<'_>) -> (DecisionLabel, u16, Option<&'static str>) {
    match d {
        Decision::Forward(_) => (d.label(), 200, None),
        Decision::Preflight(_) => (d.label(), 204, None),
        Decision::Metadata { .. } => (d.label(), 200, None),
        Decision::Refuse(r) => {
            let reason = match r {
                Refusal::Unauthenticated { rejection, .. } => Some(rejection.reason().as_str()),
                _ => None,
            };
            (d.label(), r.response(snap).status, reason)
        }
    }
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.append(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

#[test]
fn every_decision_in_spec_order() {
    use DecisionLabel::*;
    let (snap, _dir) = snapshot();
    let now = common::now();
    let read = sign(&claims("read:contacts"));
    let delete_only = sign(&claims("delete:contacts"));
    let delete_admin = sign(&claims("delete:contacts admin"));
    let mut later = claims("read:contacts");
    later["nbf"] = json!(now + 3600);
    let not_yet = sign(&later);
    let mut other_aud = claims("read:contacts");
    other_aud["aud"] = json!("https://billing.test");
    let wrong_aud = sign(&other_aud);
    let mut two = bearer(&read);
    two.append(AUTHORIZATION, HeaderValue::from_static("Bearer x"));
    let none = HeaderMap::new();

    let rows: Vec<(
        &str,
        Method,
        &str,
        HeaderMap,
        u64,
        (DecisionLabel, u16, Option<&str>),
    )> = vec![
        (
            "1 malformed target",
            Method::GET,
            "/contacts%2f1",
            bearer(&read),
            now,
            (BadRequest, 400, None),
        ),
        (
            "1 encoded dot-dot behind ;",
            Method::GET,
            "/a/..;/contacts",
            none.clone(),
            now,
            (BadRequest, 400, None),
        ),
        (
            "2 normalized before matching",
            Method::GET,
            "/health/../contacts",
            none.clone(),
            now,
            (Unauthenticated, 401, Some("missing")),
        ),
        (
            "4 public route, no token",
            Method::GET,
            "/health",
            none.clone(),
            now,
            (Public, 200, None),
        ),
        (
            "4 public route, broken token",
            Method::GET,
            "/health",
            bearer("x.y.z"),
            now,
            (Public, 200, None),
        ),
        (
            "5 no token",
            Method::GET,
            "/contacts",
            none.clone(),
            now,
            (Unauthenticated, 401, Some("missing")),
        ),
        (
            "5 two Authorization headers",
            Method::GET,
            "/contacts",
            two,
            now,
            (BadRequest, 400, None),
        ),
        (
            "5 not a JWS",
            Method::GET,
            "/contacts",
            bearer("abc"),
            now,
            (Unauthenticated, 401, Some("malformed")),
        ),
        (
            "5 expired (clock past exp)",
            Method::GET,
            "/contacts",
            bearer(&read),
            now + 601,
            (Unauthenticated, 401, Some("expired")),
        ),
        (
            "5 not yet valid",
            Method::GET,
            "/contacts",
            bearer(&not_yet),
            now,
            (Unauthenticated, 401, Some("not_yet_valid")),
        ),
        (
            "5 wrong audience",
            Method::GET,
            "/contacts",
            bearer(&wrong_aud),
            now,
            (Unauthenticated, 401, Some("wrong_audience")),
        ),
        (
            "6 anonymous callers cannot map the API",
            Method::GET,
            "/nope",
            none.clone(),
            now,
            (Unauthenticated, 401, Some("missing")),
        ),
        (
            "6 no route: 404",
            Method::GET,
            "/nope",
            bearer(&read),
            now,
            (NotFound, 404, None),
        ),
        (
            "6 no route for the method: 405",
            Method::PATCH,
            "/contacts",
            bearer(&read),
            now,
            (MethodNotAllowed, 405, None),
        ),
        (
            "7 scope missing",
            Method::POST,
            "/contacts",
            bearer(&read),
            now,
            (Forbidden, 403, None),
        ),
        (
            "7 any_scopes ANDed with scopes",
            Method::DELETE,
            "/contacts/7",
            bearer(&delete_only),
            now,
            (Forbidden, 403, None),
        ),
        (
            "8 allowed",
            Method::GET,
            "/contacts",
            bearer(&read),
            now,
            (Allowed, 200, None),
        ),
        (
            "8 allowed, HEAD through GET",
            Method::HEAD,
            "/contacts",
            bearer(&read),
            now,
            (Allowed, 200, None),
        ),
        (
            "8 allowed with one of any_scopes",
            Method::DELETE,
            "/contacts/7",
            bearer(&delete_admin),
            now,
            (Allowed, 200, None),
        ),
        // The verified token is cached now; the cache must not outlive `exp`.
        (
            "5 cached token past exp",
            Method::GET,
            "/contacts",
            bearer(&read),
            now + 601,
            (Unauthenticated, 401, Some("expired")),
        ),
    ];
    for (rule, method, path, headers, at, want) in rows {
        let d = decide(&snap, Request::new(&method, path, &headers), at).decision;
        assert_eq!(outcome(&snap, &d), want, "{rule}: {d:?}");
    }
}

#[test]
fn forwarding_carries_the_normalized_path_and_the_principal() {
    let (snap, _dir) = snapshot();
    let h = bearer(&sign(&claims("read:contacts")));
    let req = Request::new(&Method::GET, "//api/../contacts", &h);
    let Decision::Forward(to) = decide(&snap, req, common::now()).decision else {
        panic!("not forwarded");
    };
    assert_eq!(to.path(), "/contacts");
    assert!(to
        .principal()
        .is_some_and(|p| p.sub.as_deref() == Some("user-1")));
}

#[test]
fn refusals_carry_their_challenges() {
    let (snap, _dir) = snapshot();
    let h = bearer(&sign(&claims("read:contacts")));
    let req = Request::new(&Method::POST, "/contacts", &h);
    let Decision::Refuse(r) = decide(&snap, req, common::now()).decision else {
        panic!("forwarded");
    };
    let resp = r.response(&snap);
    assert_eq!(
        resp.headers[0].1,
        "Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"write:contacts\""
    );
    let expired = Refusal::Unauthenticated {
        rejection: Rejection::Expired,
        route: None,
        resource_metadata: None,
        challenge: scopegate::sender::Challenge::Bearer,
    };
    assert_eq!(
        expired.response(&snap).headers[0].1,
        "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"the token has expired\""
    );
}

/// Two issuers share a key file; the API takes tokens from the second only, and lets its one
/// origin send credentials.
const TWO_ISSUERS: &str = r#"
[server]
listen = "127.0.0.1:1"
[[issuers]]
issuer = "https://issuer.test/"
jwks_file = "jwks.json"
[[issuers]]
issuer = "https://second.test/"
jwks_file = "jwks.json"
[upstreams.api]
servers = ["127.0.0.1:2"]
[apis.billing]
audience = "https://contacts.test"
issuers = ["https://second.test/"]
[apis.billing.cors]
origins = ["https://app.test"]
allow_credentials = true
[[apis.billing.routes]]
methods = ["GET"]
path = "/invoices"
"#;

#[test]
fn an_api_takes_tokens_from_its_issuers_only() {
    let (snap, _dir) = snapshot_of(TWO_ISSUERS);
    let now = common::now();
    let mut second = claims("");
    second["iss"] = json!("https://second.test/");
    for (token, want) in [
        (
            sign(&claims("")),
            (DecisionLabel::Unauthenticated, 401, Some("wrong_issuer")),
        ),
        (sign(&second), (DecisionLabel::Allowed, 200, None)),
    ] {
        let h = bearer(&token);
        let d = decide(&snap, Request::new(&Method::GET, "/invoices", &h), now).decision;
        assert_eq!(outcome(&snap, &d), want);
    }
}

#[test]
fn credentials_are_allowed_only_when_configured() {
    let (snap, _dir) = snapshot_of(TWO_ISSUERS);
    let mut h = HeaderMap::new();
    h.insert("origin", HeaderValue::from_static("https://app.test"));
    h.insert(
        "access-control-request-method",
        HeaderValue::from_static("GET"),
    );
    let v = decide(
        &snap,
        Request::new(&Method::OPTIONS, "/invoices", &h),
        common::now(),
    );
    let Decision::Preflight(p) = &v.decision else {
        panic!("{:?}", v.decision);
    };
    let credentials = |headers: &[(http::HeaderName, HeaderValue)]| {
        headers
            .iter()
            .find(|(n, _)| n == "access-control-allow-credentials")
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        credentials(&p.headers),
        Some(HeaderValue::from_static("true"))
    );
    // And on the answers to requests from that origin (a 401 here).
    let v = decide(
        &snap,
        Request::new(&Method::GET, "/invoices", &h),
        common::now(),
    );
    let cors = v.cors.expect("the API has cors").response_headers();
    assert_eq!(credentials(&cors), Some(HeaderValue::from_static("true")));
    // Without `allow_credentials`, never.
    let (snap, _dir) = snapshot_of(&TWO_ISSUERS.replace("allow_credentials = true\n", ""));
    let v = decide(
        &snap,
        Request::new(&Method::OPTIONS, "/invoices", &h),
        common::now(),
    );
    let Decision::Preflight(p) = &v.decision else {
        panic!("{:?}", v.decision);
    };
    assert_eq!(credentials(&p.headers), None);
}

#[test]
fn a_refused_signature_is_remembered_only_while_the_key_set_lasts() {
    let (snap, _dir) = snapshot();
    let verifier = &snap.verifier;
    // Signed by a key the issuer does not publish, under the kid it does.
    let forged = sign_with(other_key(), Some(KID), &claims("read:contacts"));
    let t = now();
    for _ in 0..2 {
        assert_eq!(
            verifier.verify(forged.as_bytes(), t).unwrap_err(),
            Rejection::BadSignature
        );
    }
    // The issuer's key set changes: the remembered refusal must not outlive it.
    let (keys, _) = KeySet::from_jwks(other_key().jwks.as_bytes()).unwrap();
    verifier.issuers[0].keys.replace(keys);
    assert!(verifier.verify(forged.as_bytes(), t).is_ok());
    let good = sign(&claims("read:contacts"));
    assert_eq!(
        verifier.verify(good.as_bytes(), t).unwrap_err(),
        Rejection::BadSignature
    );
}

/// SPEC: "`CONNECT` gets `Allow` with the methods of the path's routes". A route for any method
/// takes every method but CONNECT: its `Allow` names the standard ones, not an empty value
/// (which says the path has no route).
#[test]
fn connect_on_a_route_for_any_method_allows_the_standard_methods() {
    let (snap, _dir) = snapshot_of(&format!(
        r#"{}
[[routes]]
path = "/any"
scopes = ["x"]
[[routes]]
methods = ["GET", "POST"]
path = "/some"
scopes = ["x"]
"#,
        preamble()
    ));
    let headers = HeaderMap::new();
    let allow =
        |path: &str| match decide(&snap, Request::new(&Method::CONNECT, path, &headers), now())
            .decision
        {
            Decision::Refuse(Refusal::MethodNotAllowed { allow }) => allow.into_owned(),
            other => panic!("CONNECT {path}: {:?}", other.label()),
        };
    assert_eq!(
        allow("/any"),
        "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT, TRACE"
    );
    assert_eq!(allow("/some"), "GET, HEAD, POST");
    assert_eq!(allow("/none"), "");
}

/// SPEC "CORS": every other answer to an allowed origin carries its headers, those refused before
/// any route too; an answer about a path names the CORS of the API the path's routes belong to.
#[test]
fn answers_refused_before_any_route_carry_the_cors_of_the_paths_api() {
    let (snap, _dir) = snapshot_of(&format!(
        r#"{}
[apis.a]
audience = "https://a.test"
[apis.a.cors]
origins = ["https://a.app"]
[[apis.a.routes]]
path = "/a/x"
[apis.b]
audience = "https://b.test"
[apis.b.cors]
origins = ["https://b.app"]
[[apis.b.routes]]
path = "/b/x"
"#,
        preamble()
    ));
    let allowed = |method: &Method, path: &str, origin: &'static str| {
        let mut h = HeaderMap::new();
        h.insert("origin", HeaderValue::from_static(origin));
        let v = decide(&snap, Request::new(method, path, &h), now());
        let origin = v.cors.and_then(|c| {
            c.response_headers()
                .into_iter()
                .find(|(n, _)| n == "access-control-allow-origin")
                .map(|(_, v)| v.to_str().unwrap().to_string())
        });
        (v.decision.label(), origin)
    };
    let refused = DecisionLabel::MethodNotAllowed;
    let b = Some("https://b.app".to_string());
    assert_eq!(
        allowed(&Method::CONNECT, "/b/x", "https://b.app"),
        (refused, b)
    );
    assert_eq!(
        allowed(&Method::CONNECT, "/b/x", "https://a.app"),
        (refused, None)
    );
    // A path that cannot be read belongs to no route: the host's first CORS API, as a 404.
    let bad = DecisionLabel::BadRequest;
    let a = Some("https://a.app".to_string());
    assert_eq!(allowed(&Method::GET, "/b/%zz", "https://a.app"), (bad, a));
    assert_eq!(
        allowed(&Method::GET, "/b/%zz", "https://evil.app"),
        (bad, None)
    );
}

//! Many APIs behind one gateway, end to end: the real binary, real upstreams, real tokens.

mod common;

use common::*;
use serde_json::json;

const CONTACTS_AUD: &str = AUD;
const BILLING_AUD: &str = "https://billing.test";

/// contacts and billing on api.test (by prefix), admin on `*.admin.test`, top-level /health
/// for every other host.
fn apis_config(
    port: u16,
    admin: u16,
    c: std::net::SocketAddr,
    b: std::net::SocketAddr,
    a: std::net::SocketAddr,
    extra_api: &str,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
threads = 1

[[issuers]]
issuer = "{ISS}"
audiences = ["{CONTACTS_AUD}"]
jwks_file = "jwks.json"
token_types = ["at+jwt", "JWT"]

[upstreams.contacts]
servers = ["{c}"]
[upstreams.billing]
servers = ["{b}"]
[upstreams.admin]
servers = ["{a}"]

[[routes]]
methods = ["GET"]
path = "/health"
public = true
upstream = "admin"

[apis.contacts]
audience = "{CONTACTS_AUD}"
hosts = ["api.test"]
upstream = "contacts"
strip_prefix = "/contacts"
scopes = {{ "read:contacts" = "Read", "write:contacts" = "Write" }}

[apis.contacts.cors]
origins = ["https://app.test"]
allow_headers = ["content-type"]
expose_headers = ["x-request-id"]

[[apis.contacts.routes]]
methods = ["GET"]
path = "/contacts"
scopes = ["read:contacts"]

[[apis.contacts.routes]]
methods = ["GET", "PUT"]
path = "/contacts/{{id}}"
scopes = ["read:contacts"]

[apis.billing]
audience = "{BILLING_AUD}"
hosts = ["api.test"]
upstream = "billing"
strip_prefix = "/billing"

[[apis.billing.routes]]
methods = ["GET"]
path = "/billing/invoices/{{id}}"
scopes = ["read:invoices"]

[[apis.billing.routes]]
methods = ["GET"]
path = "/billing"
scopes = ["read:invoices"]

[apis.ops]
audience = "https://ops.test"
hosts = ["*.admin.test"]
upstream = "admin"

[[apis.ops.routes]]
methods = ["GET"]
path = "/contacts"
{extra_api}
"#
    )
}

struct Setup {
    proxy: Proxy,
    admin: u16,
}

fn setup() -> Setup {
    let (c, b, a) = (
        start_echo("contacts"),
        start_echo("billing"),
        start_echo("admin"),
    );
    let (port, admin) = (free_port(), free_port());
    let proxy = Proxy::start(&apis_config(port, admin, c, b, a, ""), port);
    Setup { proxy, admin }
}

fn token_for(aud: &str, scope: &str) -> String {
    token_with(scope, json!({ "aud": aud }))
}

fn get(p: &Proxy, host: &str, target: &str, token: Option<&str>) -> Response {
    p.request_on("GET", host, target, token, "")
}

fn metrics(admin: u16) -> String {
    String::from_utf8_lossy(&http_get(admin_addr(admin), "/metrics").body).into_owned()
}

#[test]
fn a_token_for_one_api_is_refused_on_another_cached_or_not() {
    let s = setup();
    let contacts = token_for(CONTACTS_AUD, "read:contacts read:invoices");
    let billing = token_for(BILLING_AUD, "read:contacts read:invoices");
    let before = metric(
        &metrics(s.admin),
        "scopegate_token_rejections_total{reason=\"wrong_audience\"}",
    );
    // Twice each: the second pass answers from the verified-token cache.
    for pass in ["uncached", "cached"] {
        for (token, path, want) in [
            (&contacts, "/contacts", 200),
            (&contacts, "/billing/invoices/7", 401),
            (&billing, "/billing/invoices/7", 200),
            (&billing, "/contacts", 401),
        ] {
            let r = get(&s.proxy, "api.test", path, Some(token));
            assert_eq!(r.status, want, "{pass}: {path}");
            if want == 401 {
                assert!(
                    r.header("www-authenticate")
                        .unwrap()
                        .contains("error=\"invalid_token\""),
                    "{pass}"
                );
                assert_eq!(
                    r.json()["error_description"],
                    "the token audience is not accepted"
                );
            }
        }
    }
    let rejected = || {
        metric(
            &metrics(s.admin),
            "scopegate_token_rejections_total{reason=\"wrong_audience\"}",
        ) - before
    };
    assert!(eventually(10, || rejected() == 4.0), "{}", rejected());
    // Both audiences in one token: valid for both.
    let mut both = claims("read:contacts read:invoices");
    both["aud"] = json!([CONTACTS_AUD, BILLING_AUD]);
    let both = sign(&both);
    assert_eq!(
        get(&s.proxy, "api.test", "/contacts", Some(&both)).status,
        200
    );
    assert_eq!(
        get(&s.proxy, "api.test", "/billing/invoices/1", Some(&both)).status,
        200
    );
}

#[test]
fn hosts_select_the_routes_searched() {
    let s = setup();
    let c = token_for(CONTACTS_AUD, "read:contacts");
    let ops = token_for("https://ops.test", "");
    // Port and case do not matter.
    for host in ["api.test", "API.Test:8443", "api.test."] {
        let r = get(&s.proxy, host, "/contacts", Some(&c));
        assert_eq!(r.status, 200, "{host}");
        assert_eq!(r.json()["upstream"], "contacts");
    }
    // `*.admin.test` matches one or more labels before it, not admin.test itself.
    for host in ["x.admin.test", "a.b.admin.test"] {
        let r = get(&s.proxy, host, "/contacts", Some(&ops));
        assert_eq!(r.status, 200, "{host}");
        assert_eq!(r.json()["upstream"], "admin");
        // The contacts API is never searched on that host.
        assert_eq!(
            get(&s.proxy, host, "/contacts", Some(&c)).status,
            401,
            "{host}"
        );
    }
    // Other hosts get the top-level routes only.
    for host in ["admin.test", "elsewhere.test"] {
        assert_eq!(get(&s.proxy, host, "/health", None).status, 200, "{host}");
        assert_eq!(
            get(&s.proxy, host, "/contacts", Some(&c)).status,
            404,
            "{host}"
        );
    }
    assert_eq!(
        get(&s.proxy, "api.test", "/health", None).status,
        401,
        "not on api.test"
    );
    // HTTP/1.1 needs a Host; HTTP/1.0 without one gets the routes of no particular host.
    let r = s.proxy.send("GET /health HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_request");
    let r = s.proxy.send("GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("host"), None);
}

#[test]
fn prefixes_are_stripped_and_targets_forwarded_in_origin_form() {
    let s = setup();
    let b = token_for(BILLING_AUD, "read:invoices");
    let r = get(&s.proxy, "api.test", "/billing/invoices/7?x=%2F1", Some(&b));
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_target(), "/invoices/7?x=%2F1");
    let r = get(&s.proxy, "api.test", "/billing", Some(&b));
    assert_eq!(r.upstream_target(), "/");
    let r = get(
        &s.proxy,
        "api.test",
        "/billing/./invoices/../invoices/8",
        Some(&b),
    );
    assert_eq!(r.upstream_target(), "/invoices/8");
    // Absolute form: forwarded as path and query; its authority must be the Host (Pingora
    // compares them byte for byte before any hook runs, so a case difference is a 400 too).
    let auth = format!("Authorization: Bearer {b}\r\n");
    let r = s.proxy.send(&format!(
        "GET http://api.test/billing/invoices/9?q=1 HTTP/1.1\r\nHost: api.test\r\n{auth}\r\n"
    ));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.upstream_target(), "/invoices/9?q=1");
    let r = s.proxy.send(&format!(
        "GET http://other.test/billing/invoices/9 HTTP/1.1\r\nHost: api.test\r\n{auth}\r\n"
    ));
    assert_eq!(r.status, 400);
    let c = token_for(CONTACTS_AUD, "read:contacts");
    let r = s.proxy.send(&format!(
        "GET http://api.test/contacts HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {c}\r\n\r\n"
    ));
    assert_eq!(r.upstream_target(), "/");
}

#[test]
fn token_types_are_checked_when_configured() {
    let s = setup();
    let c = claims("read:contacts");
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(key().pem.as_bytes()).unwrap();
    let with_typ = |typ: Option<&str>| {
        let mut h = json!({"alg": "RS256", "kid": KID});
        if let Some(t) = typ {
            h["typ"] = json!(t);
        }
        signed_jws(&h, &c, &key, jsonwebtoken::Algorithm::RS256)
    };
    for ok in ["at+jwt", "application/AT+JWT", "jwt"] {
        assert_eq!(
            get(&s.proxy, "api.test", "/contacts", Some(&with_typ(Some(ok)))).status,
            200,
            "{ok}"
        );
    }
    let before = metric(
        &metrics(s.admin),
        "scopegate_token_rejections_total{reason=\"wrong_type\"}",
    );
    for bad in [Some("id+jwt"), Some("application/jose"), None] {
        let r = get(&s.proxy, "api.test", "/contacts", Some(&with_typ(bad)));
        assert_eq!(r.status, 401, "{bad:?}");
    }
    let rejected = || {
        metric(
            &metrics(s.admin),
            "scopegate_token_rejections_total{reason=\"wrong_type\"}",
        ) - before
    };
    assert!(eventually(10, || rejected() == 3.0), "{}", rejected());
}

#[test]
fn cors_preflights_are_answered_at_the_edge() {
    let s = setup();
    let preflight = |origin: &str, method: &str, path: &str| {
        s.proxy.send(&format!(
            "OPTIONS {path} HTTP/1.1\r\nHost: api.test\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: {method}\r\nAccess-Control-Request-Headers: authorization\r\n\r\n"
        ))
    };
    let r = preflight("https://app.test", "PUT", "/contacts/1");
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.test")
    );
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, HEAD, PUT")
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("authorization, content-type")
    );
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert_eq!(r.header("vary"), Some("Origin"));
    assert_eq!(r.header("access-control-allow-credentials"), None);
    for (origin, method, path) in [
        ("https://evil.test", "GET", "/contacts"),
        ("https://app.test", "DELETE", "/contacts/1"),
    ] {
        let r = preflight(origin, method, path);
        assert_eq!(r.status, 403, "{origin} {method}");
        assert_eq!(r.json()["error"], "cors_rejected");
        assert!(r
            .headers
            .iter()
            .all(|(n, _)| !n.to_ascii_lowercase().starts_with("access-control-")));
    }
    // Counted after the answer is written: wait for the counters, not for time.
    let counted = |m: &str| {
        metric(m, "scopegate_requests_total{decision=\"preflight\",route=\"contacts GET,PUT /contacts/{id}\"}") == 1.0
            && metric(m, "scopegate_requests_total{decision=\"forbidden\",route=\"contacts GET /contacts\"}") == 1.0
            && metric(m, "scopegate_requests_total{decision=\"forbidden\",route=\"none\"}") == 1.0
    };
    assert!(
        eventually(10, || counted(&metrics(s.admin))),
        "{}",
        metrics(s.admin)
    );
    // An API without `cors` treats OPTIONS like any other method: authenticate first.
    let r = s.proxy.send("OPTIONS /billing HTTP/1.1\r\nHost: api.test\r\nOrigin: https://app.test\r\nAccess-Control-Request-Method: GET\r\n\r\n");
    assert_eq!(r.status, 401);
}

#[test]
fn cors_headers_go_on_every_answer_to_an_allowed_origin_and_only_ours() {
    let (c, b, a) = (
        spawn_upstream(std::sync::Arc::new(|req: &EchoRequest| EchoResponse {
            status: 200,
            body: req.to_json().to_string().into_bytes(),
            headers: vec![
                ("Access-Control-Allow-Origin".into(), "*".into()),
                ("Access-Control-Allow-Credentials".into(), "true".into()),
            ],
            delay: None,
        }))
        .unwrap(),
        start_echo("billing"),
        start_echo("admin"),
    );
    let (port, admin) = (free_port(), free_port());
    let p = Proxy::start(&apis_config(port, admin, c, b, a, ""), port);
    let t = token_for(CONTACTS_AUD, "read:contacts");
    let send = |origin: &str, path: &str, token: Option<&str>| {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        p.send(&format!(
            "GET {path} HTTP/1.1\r\nHost: api.test\r\nOrigin: {origin}\r\n{auth}\r\n"
        ))
    };
    for (path, token, status) in [
        ("/contacts", Some(t.as_str()), 200),
        ("/contacts", None, 401),
        (
            "/contacts/1",
            Some(&token_for(CONTACTS_AUD, "write:contacts")),
            403,
        ),
        ("/contacts/1/x", Some(t.as_str()), 404),
        // Refused before any route, for a path that cannot be read: still the host's CORS API.
        ("/contacts/%zz", Some(t.as_str()), 400),
    ] {
        let r = send("https://app.test", path, token);
        assert_eq!(r.status, status, "{path}");
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://app.test"),
            "{path}"
        );
        assert_eq!(
            r.header("access-control-expose-headers"),
            Some("www-authenticate, x-request-id")
        );
        assert_eq!(
            r.header("access-control-allow-credentials"),
            None,
            "upstream's dropped: {path}"
        );
        let r = send("https://evil.test", path, token);
        assert_eq!(r.status, status, "{path}");
        assert!(
            r.headers
                .iter()
                .all(|(n, _)| !n.to_ascii_lowercase().starts_with("access-control-")),
            "{path}: {:?}",
            r.headers
        );
    }
}

#[test]
fn routes_clashing_within_one_host_are_refused_at_load() {
    let base = |hosts_a: &str, hosts_b: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n[[issuers]]\nissuer = \"{ISS}\"\njwks_file = \"jwks.json\"\n[upstreams.u]\nservers = [\"127.0.0.1:2\"]\n\
             [apis.a]\naudience = \"a\"\n{hosts_a}\n[[apis.a.routes]]\nmethods = [\"GET\"]\npath = \"/x\"\n\
             [apis.b]\naudience = \"b\"\n{hosts_b}\n[[apis.b.routes]]\nmethods = [\"GET\", \"POST\"]\npath = \"/x\"\n"
        )
    };
    let jwks = [("jwks.json", key().jwks.as_str())];
    for (a, b) in [
        (
            "hosts = [\"h.test\"]",
            "hosts = [\"H.test\", \"other.test\"]",
        ),
        ("hosts = [\"*.h.test\"]", "hosts = [\"*.h.test\"]"),
        ("", ""),
    ] {
        let (ok, _, err, _, _) = check(&base(a, b), &jwks);
        assert!(!ok, "{a} / {b}");
        assert!(
            err.contains(":19:8: duplicate route")
                && err.contains("GET /x is already defined by `a GET /x`"),
            "{err}"
        );
    }
    // Different sets never clash: an exact host and a wildcard, or a host and no host.
    for (a, b) in [
        ("hosts = [\"h.test\"]", "hosts = [\"*.h.test\"]"),
        ("hosts = [\"h.test\"]", ""),
    ] {
        let (ok, out, err, _, _) = check(&base(a, b), &jwks);
        assert!(ok, "{err}");
        assert!(out.contains("API a (audience a, hosts h.test)"), "{out}");
    }
}

#[test]
fn undeclared_scopes_are_config_errors_naming_the_closest() {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:1\"\n[[issuers]]\nissuer = \"{ISS}\"\njwks_file = \"jwks.json\"\n[upstreams.u]\nservers = [\"127.0.0.1:2\"]\n\
         [apis.billing]\naudience = \"b\"\nscopes = {{ \"read:invoices\" = \"Read\", \"pay:invoices\" = \"Pay\" }}\n\
         [[apis.billing.routes]]\nmethods = [\"GET\"]\npath = \"/i\"\nscopes = [\"read:invoice\"]\n"
    );
    let (ok, _, err, path, _) = check(&text, &[("jwks.json", key().jwks.as_str())]);
    assert!(!ok);
    let want = format!("{}:11:1: route GET /i: scope \"read:invoice\" is not declared in the API's `scopes`; did you mean \"read:invoices\"?", path.display());
    assert!(err.contains(&want), "{err}");
}

#[test]
fn the_shipped_two_api_example_passes_check() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/two-apis.toml"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("API billing (audience https://billing.example, hosts api.example.com, strip_prefix /billing, cors)"), "{text}");
    assert!(
        text.contains("API admin (audience https://admin.example, hosts admin.example.com)"),
        "{text}"
    );
}

#[test]
fn a_reload_moves_a_route_between_apis_under_traffic() {
    let (c, b, a) = (
        start_echo("contacts"),
        start_echo("billing"),
        start_echo("admin"),
    );
    let (port, admin) = (free_port(), free_port());
    let first = apis_config(port, admin, c, b, a, "");
    let p = Proxy::start(&first, port);
    let ops = token_for("https://ops.test", "");
    let reports = token_for(BILLING_AUD, "read:invoices");
    // /reports moves from ops (*.admin.test) to billing (api.test, prefix /billing).
    let ops_route = "\n[[apis.ops.routes]]\nmethods = [\"GET\"]\npath = \"/reports\"\n";
    let with_ops = apis_config(port, admin, c, b, a, ops_route);
    let with_billing = first.replace(
        "[apis.ops]",
        "[[apis.billing.routes]]\nmethods = [\"GET\"]\npath = \"/billing/reports\"\nscopes = [\"read:invoices\"]\n\n[apis.ops]",
    );
    let write = |text: &str| {
        let tmp = p.config_path().with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, p.config_path()).unwrap();
    };
    write(&with_ops);
    assert!(
        eventually(10, || get(&p, "x.admin.test", "/reports", Some(&ops))
            .status
            == 200),
        "{}",
        p.log()
    );
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let traffic = scope.spawn(|| {
            let mut seen = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 20_000 {
                let r1 = get(&p, "x.admin.test", "/reports", Some(&ops)).status;
                let r2 = get(&p, "api.test", "/billing/reports", Some(&reports)).status;
                seen.push((r1, r2));
                n += 1;
            }
            seen
        });
        write(&with_billing);
        let moved = eventually(10, || {
            get(&p, "api.test", "/billing/reports", Some(&reports)).status == 200
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let seen = traffic.join().unwrap();
        assert!(moved, "{}", p.log());
        // Every answer is one config's or the other's (never a 5xx or a 401), and once the
        // route has left ops it never comes back; never is it served by neither.
        let mut moved_at = None;
        for (i, (r1, r2)) in seen.iter().enumerate() {
            assert!(
                matches!(r1, 200 | 404) && matches!(r2, 200 | 404),
                "{r1} {r2}"
            );
            assert!((*r1, *r2) != (404, 404), "served by neither at {i}");
            if *r1 == 404 {
                moved_at.get_or_insert(i);
            }
            assert!(moved_at.is_none() || *r1 == 404, "moved back at {i}");
        }
    });
    assert_eq!(get(&p, "x.admin.test", "/reports", Some(&ops)).status, 404);
    assert_eq!(
        get(&p, "api.test", "/billing/reports", Some(&reports)).upstream_target(),
        "/reports"
    );
}

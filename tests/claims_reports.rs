//! Claim conditions and report-only rollout, end to end.

mod common;

use common::*;
use serde_json::json;

fn config(port: u16, admin: u16, upstream: std::net::SocketAddr) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
threads = 1

[[issuers]]
issuer = "{ISS}"
jwks_file = "jwks.json"

[upstreams.app]
servers = ["{upstream}"]

[forward]
claims = {{ sub = "X-Auth-Subject" }}

[apis.users]
audience = "{AUD}"
hosts = ["api.test"]

[[apis.users.routes]]
methods = ["GET"]
path = "/users/{{id}}"
scopes = ["read:users"]
claims = {{ sub = "{{id}}" }}

[[apis.users.routes]]
methods = ["GET"]
path = "/orgs/{{org}}/projects"
claims = {{ "https://example.com/org" = "{{org}}", email_verified = true }}

[[apis.users.routes]]
methods = ["GET"]
path = "/levels"
claims = {{ level = 3 }}

[[apis.users.routes]]
methods = ["GET"]
path = "/audit/{{id}}"
scopes = ["audit"]
claims = {{ sub = "{{id}}" }}
report_only = true

[apis.beta]
audience = "https://beta.test"
hosts = ["beta.test"]
report_only = true

[[apis.beta.routes]]
methods = ["GET"]
path = "/items"
scopes = ["read:beta"]
"#
    )
}

fn get(p: &Proxy, host: &str, target: &str, token: Option<&str>, extra: &str) -> Response {
    p.request_on("GET", host, target, token, extra)
}

#[test]
fn claim_conditions_hold_or_the_answer_is_access_denied() {
    let upstream = start_echo("app");
    let (port, admin) = (free_port(), free_port());
    let p = Proxy::start(&config(port, admin, upstream), port);
    let alice = token_with(
        "read:users",
        json!({"sub": "alice@x.org", "https://example.com/org": ["acme", "beta"], "email_verified": true, "level": 3}),
    );
    let unverified = token_with(
        "",
        json!({"https://example.com/org": "acme", "email_verified": "true"}),
    );
    let no_claims = token_with("read:users", json!({}));
    // Twice: the second pass answers from the verified-token cache, conditions still checked.
    for pass in ["uncached", "cached"] {
        for (target, token, want) in [
            ("/users/alice%40x.org", &alice, 200), // the decoded parameter is compared
            ("/users/bob", &alice, 403),           // mismatch
            ("/users/user-1", &no_claims, 200),    // `sub` of the default claims
            ("/users/alice%40x.org", &no_claims, 403),
            ("/orgs/beta/projects", &alice, 200), // an array claim contains the value
            ("/orgs/other/projects", &alice, 403),
            ("/orgs/acme/projects", &unverified, 403), // "true" is not true
            ("/levels", &alice, 200),
            ("/levels", &unverified, 403), // absent claim
        ] {
            let r = get(&p, "api.test", target, Some(token), "");
            assert_eq!(r.status, want, "{pass}: {target}");
            if want == 403 {
                assert_eq!(r.json()["error"], "access_denied", "{pass}: {target}");
                let challenge = r.header("www-authenticate").unwrap();
                assert!(
                    challenge.starts_with("Bearer realm=\"api\", error=\"insufficient_scope\", error_description=\"claim "),
                    "{challenge}"
                );
                assert!(!challenge.contains("scope=\""), "{challenge}");
            }
        }
    }
    // Scopes come first: a missing scope is a 403 insufficient_scope with `scope=`.
    let r = get(
        &p,
        "api.test",
        "/users/user-1",
        Some(&token_with("", json!({}))),
        "",
    );
    assert_eq!(r.json()["error"], "insufficient_scope");
}

#[test]
fn report_only_forwards_what_it_would_refuse_and_counts_it() {
    let upstream = start_echo("app");
    let (port, admin) = (free_port(), free_port());
    let p = Proxy::start(&config(port, admin, upstream), port);
    let spoof = "X-Auth-Subject: root\r\n";
    let beta = |scope: &str| {
        let mut c = claims(scope);
        c["aud"] = json!("https://beta.test");
        sign(&c)
    };
    // One flipped character inside the signature (not the last, whose low bits are padding).
    let mut forged = beta("read:beta").into_bytes();
    let i = forged.len() - 5;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    for (token, would_be, reason, subject) in [
        (None, "unauthenticated", "missing", None),
        (
            Some(forged.as_str()),
            "unauthenticated",
            "bad_signature",
            None,
        ),
        (
            Some(&beta("other") as &str),
            "forbidden",
            "insufficient_scope",
            Some("user-1"),
        ),
    ] {
        let r = get(&p, "beta.test", "/items", token, spoof);
        assert_eq!(r.status, 200, "{reason}");
        assert_eq!(r.json()["upstream"], "app");
        // Claim headers only from a valid token; the client's copy is always removed.
        assert_eq!(
            r.upstream_header("x-auth-subject").as_deref(),
            subject,
            "{reason}"
        );
        let line = format!("decision=\"report_only\" would_be=\"{would_be}\" reason=\"{reason}\"");
        assert!(
            eventually(10, || p.log().contains(&line)),
            "{line} in {}",
            p.log()
        );
    }
    // A route of an enforced API can be report-only on its own; claim conditions too.
    let audit = token_with("audit", json!({}));
    let r = get(&p, "api.test", "/audit/someone-else", Some(&audit), "");
    assert_eq!(r.status, 200);
    assert!(eventually(10, || p
        .log()
        .contains("would_be=\"forbidden\" reason=\"access_denied\"")));
    // 400, 404 and 405 are enforced as usual, without a token when every API is report-only.
    assert_eq!(get(&p, "beta.test", "/nope", None, "").status, 404);
    assert_eq!(
        p.send("POST /items HTTP/1.1\r\nHost: beta.test\r\nContent-Length: 0\r\n\r\n")
            .status,
        405
    );
    assert_eq!(get(&p, "beta.test", "/items%2f", None, "").status, 400);
    let counted = || {
        let m = String::from_utf8_lossy(&http_get(admin_addr(admin), "/metrics").body).into_owned();
        metric(
            &m,
            "scopegate_requests_total{decision=\"report_only\",route=\"beta GET /items\"}",
        )
    };
    assert!(eventually(10, || counted() == 3.0), "{}", counted());
    // The would-be 401s are counted as token rejections too.
    let rejected = || {
        let m = String::from_utf8_lossy(&http_get(admin_addr(admin), "/metrics").body).into_owned();
        metric(
            &m,
            "scopegate_token_rejections_total{reason=\"bad_signature\"}",
        )
    };
    assert!(eventually(10, || rejected() == 1.0), "{}", rejected());
    // A valid token with the scope is simply allowed.
    assert_eq!(
        get(&p, "beta.test", "/items", Some(&beta("read:beta")), "").status,
        200
    );
}

#[test]
fn explain_and_token_speak_claims() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), &key().jwks).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key().pem).unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, config(1, 2, "127.0.0.1:3".parse().unwrap())).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_scopegate"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let key_path = dir.path().join("key.pem").display().to_string();
    let t = run(&[
        "token",
        "--key",
        &key_path,
        "--kid",
        KID,
        "--iss",
        ISS,
        "--aud",
        AUD,
        "--scope",
        "",
        "--claim",
        "email_verified=true",
        "--claim",
        "https://example.com/org=acme",
    ]);
    let cfg = cfg.display().to_string();
    let out = run(&[
        "explain",
        "--config",
        &cfg,
        "--host",
        "api.test",
        "GET",
        "/orgs/acme/projects",
        "--token",
        &t,
    ]);
    assert!(out.contains("decision: 200"), "{out}");
    let out = run(&[
        "explain",
        "--config",
        &cfg,
        "--host",
        "api.test",
        "GET",
        "/orgs/other/projects",
        "--token",
        &t,
    ]);
    assert!(out.contains("decision: 403 access denied: claim \"https://example.com/org\" must equal the path parameter {org}"), "{out}");
}

#[test]
fn a_condition_naming_a_missing_parameter_is_a_config_error() {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:1\"\n[[issuers]]\nissuer = \"{ISS}\"\njwks_file = \"jwks.json\"\n[upstreams.u]\nservers = [\"127.0.0.1:2\"]\n[apis.a]\naudience = \"a\"\n[[apis.a.routes]]\npath = \"/users/{{id}}\"\nclaims = {{ sub = \"{{user}}\" }}\n"
    );
    let (ok, _, err, path, _) = check(&text, &[("jwks.json", key().jwks.as_str())]);
    assert!(!ok);
    let want = format!("{}:10:1: route ANY /users/{{id}}: claim \"sub\" names {{user}}, which the path \"/users/{{id}}\" does not have", path.display());
    assert!(err.contains(&want), "{err}");
}

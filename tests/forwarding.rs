//! What the upstream receives: the normalized path that was authorized, our claim headers and
//! never the client's copies, X-Forwarded-*, and the token only when not stripped.

mod common;

use common::*;

const CLAIMS: &str = r#"
[forward]
claims = { sub = "X-Auth-Subject", scope = "X-Auth-Scopes" }
"#;

#[test]
fn the_upstream_sees_exactly_the_normalized_path_that_was_authorized() {
    let p = Proxy::standard("");
    let t = token("read:contacts");
    // Each of these resolves to /contacts (or /contacts/1): without a token the proxy must not
    // treat it as the public route it appears to start with.
    let tricks = [
        ("/health/../contacts", "/contacts"),
        ("/health/%2e%2e/contacts", "/contacts"),
        ("/health/%2E%2E/contacts", "/contacts"),
        ("/public/../contacts", "/contacts"),
        ("/public/x/../../contacts", "/contacts"),
        ("/public/./../contacts", "/contacts"),
        ("//contacts", "/contacts"),
        ("/./contacts", "/contacts"),
        ("/cont%61cts", "/contacts"),
        ("/contacts//1", "/contacts/1"),
        ("/public/%2e%2e/contacts/1", "/contacts/1"),
    ];
    for (target, normalized) in tricks {
        let anon = p.get(target, None);
        assert_eq!(
            anon.status, 401,
            "{target} must not reach the upstream without a token"
        );
        let r = p.get(target, Some(&t));
        assert_eq!(r.status, 200, "{target}");
        assert_eq!(r.upstream_target(), normalized, "{target}");
    }
    // The query string is passed through unchanged.
    let r = p.get("/public/../contacts?q=a%2Fb&x=..", Some(&t));
    assert_eq!(r.upstream_target(), "/contacts?q=a%2Fb&x=..");
    // A public path stays public, normalized.
    let r = p.get("/public/a/./b//c", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_target(), "/public/a/b/c");
}

#[test]
fn absolute_form_targets_are_forwarded_in_origin_form() {
    let p = Proxy::standard("");
    let r = p.send(&format!(
        "GET http://api.test/public/../contacts HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {}\r\n\r\n",
        token("read:contacts")
    ));
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_target(), "/contacts");
}

#[test]
fn claim_headers_replace_whatever_the_client_sent() {
    let p = Proxy::standard(CLAIMS);
    let spoof =
        "X-Auth-Subject: admin\r\nX-Auth-Scopes: delete:contacts admin\r\nx-auth-subject: root\r\n";
    let r = p.request("GET", "/contacts", Some(&token("read:contacts")), spoof);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-auth-subject").as_deref(),
        Some("user-1")
    );
    assert_eq!(
        r.upstream_header("x-auth-scopes").as_deref(),
        Some("read:contacts")
    );

    // On a public route there is no token, so there must be no such headers at all.
    let r = p.request("GET", "/health", None, spoof);
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-auth-subject"), None);
    assert_eq!(r.upstream_header("x-auth-scopes"), None);
}

#[test]
fn x_forwarded_for_names_each_connections_own_client() {
    // One worker, clients taking turns from two addresses: each request names its own.
    let p = Proxy::standard("");
    let get = b"GET /health HTTP/1.1\r\nHost: api.test\r\n\r\n";
    for source in [
        "127.0.0.2",
        "127.0.0.1",
        "127.0.0.3",
        "127.0.0.3",
        "127.0.0.1",
    ] {
        let mut c = Client::connect_from(p.addr, source.parse().unwrap());
        let r = c.send(get);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.upstream_header("x-forwarded-for").as_deref(),
            Some(source)
        );
    }
}

/// The same request body-less and with a body (framed differently by the same session), with
/// `headers` added.
fn on_both_paths(p: &Proxy, headers: &str) -> [Response; 2] {
    let head = format!("/public/x HTTP/1.1\r\nHost: api.test\r\n{headers}");
    [
        p.send(&format!("GET {head}\r\n")),
        p.send(&format!("POST {head}Content-Length: 2\r\n\r\n{{}}")),
    ]
}

#[test]
fn forwarding_headers_are_set_by_the_proxy() {
    let p = Proxy::standard("");
    let spoof = "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\nForwarded: for=6.6.6.6\r\n";
    for r in on_both_paths(&p, spoof) {
        assert_eq!(r.status, 200);
        assert_eq!(
            r.upstream_header("x-forwarded-for").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            r.upstream_header("x-forwarded-proto").as_deref(),
            Some("http")
        );
        assert_eq!(
            r.upstream_header("x-forwarded-host").as_deref(),
            Some("api.test")
        );
        assert_eq!(r.upstream_header("forwarded"), None);
        assert_eq!(r.upstream_header("host").as_deref(), Some("api.test"));
    }
}

#[test]
fn hop_by_hop_headers_are_dropped() {
    let p = Proxy::standard("");
    let hops = "Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n";
    let named = format!("Connection: keep-alive, X-Secret-Hop\r\nX-Secret-Hop: 1\r\n{hops}");
    let plain = format!("Connection: keep-alive\r\n{hops}");
    let mut answers = on_both_paths(&p, &named).to_vec();
    answers.extend(on_both_paths(&p, &plain));
    for r in answers {
        assert_eq!(r.status, 200);
        for h in [
            "x-secret-hop",
            "keep-alive",
            "te",
            "proxy-connection",
            "connection",
        ] {
            let seen = r.upstream_header(h);
            // The upstream connection's own `Connection` may be set by the proxy, never the
            // client's list.
            if h == "connection" {
                assert!(
                    !seen.is_some_and(|v| v.to_ascii_lowercase().contains("x-secret-hop")),
                    "the client's Connection list was forwarded"
                );
            } else {
                assert_eq!(seen, None, "{h} must not be forwarded");
            }
        }
    }
}

#[test]
fn the_token_is_forwarded_unless_strip_token() {
    let t = token("read:contacts");
    let p = Proxy::standard("");
    assert_eq!(
        p.get("/contacts", Some(&t))
            .upstream_header("authorization"),
        Some(format!("Bearer {t}"))
    );

    let p = Proxy::standard("[forward]\nstrip_token = true\n");
    let r = p.get("/contacts", Some(&t));
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("authorization"), None);
}

#[test]
fn request_bodies_reach_the_upstream() {
    let p = Proxy::standard("");
    let body = r#"{"name":"Grace Hopper"}"#;
    let r = p.send(&format!(
        "POST /contacts HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        token("write:contacts"),
        body.len()
    ));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("content-length").as_deref(),
        Some(body.len().to_string().as_str())
    );
    // Refused before the body is read: the connection must not take the body for a request.
    let mut c = Client::connect(p.addr);
    let r = c.send(
        format!(
            "POST /contacts HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 401);
}

#[test]
fn claim_values_cannot_inject_headers() {
    let p = Proxy::standard(CLAIMS);
    let mut c = claims("read:contacts");
    c["sub"] = serde_json::json!("alice\r\nX-Evil: 1");
    let r = p.get("/contacts", Some(&sign(&c)));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-auth-subject"),
        None,
        "an invalid header value is left out"
    );
    assert_eq!(r.upstream_header("x-evil"), None);
    // Array claims are forwarded space-separated.
    let mut c = claims("");
    c["scope"] = serde_json::json!(["read:contacts", "write:contacts"]);
    let r = p.get("/contacts", Some(&sign(&c)));
    assert_eq!(
        r.upstream_header("x-auth-scopes").as_deref(),
        Some("read:contacts write:contacts")
    );
}

//! Every decision row of SPEC "Decisions, in this order", through the real binary, a real
//! upstream and real RS256 tokens.

mod common;

use common::*;
use serde_json::json;

fn assert_error_body(r: &Response, error: &str) {
    let body = r.json();
    assert_eq!(body["error"], error, "body {body}");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "body {body}"
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[test]
fn malformed_targets_get_400_before_anything_else() {
    let p = Proxy::standard("");
    for target in [
        "/contacts%2f1",
        "/public/..%2fcontacts",
        "/contacts%5c1",
        "/contacts%00",
        "/contacts%zz",
        "/contacts%",
        "/caf%ff",
        "/public/..;/contacts",
    ] {
        let r = p.get(target, None);
        assert_eq!(r.status, 400, "{target}");
        assert_error_body(&r, "invalid_request");
        // Still 400 with a perfectly good token: the target is refused, not the caller.
        let r = p.get(target, Some(&token("read:contacts")));
        assert_eq!(r.status, 400, "{target} with token");
    }
    // ...and the proxy keeps serving.
    assert_eq!(p.get("/health", None).status, 200);
}

#[test]
fn public_routes_need_no_token() {
    let p = Proxy::standard("");
    let r = p.get("/health", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_target(), "/health");
    let r = p.get("/public/a/b?x=1", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_target(), "/public/a/b?x=1");
    // A broken token does not matter on a public route.
    assert_eq!(p.get("/health", Some("not-a-jwt")).status, 200);
}

#[test]
fn missing_token_is_401_with_a_bare_challenge() {
    let p = Proxy::standard("");
    for raw in [
        "GET /contacts HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /contacts HTTP/1.1\r\nHost: a\r\nAuthorization: Basic dXNlcjpwYXNz\r\n\r\n",
    ] {
        let r = p.send(raw);
        assert_eq!(r.status, 401);
        // RFC 6750 §3.1: no error code when the request carried no token.
        assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"api\""));
        assert_error_body(&r, "unauthorized");
    }
}

#[test]
fn bearer_scheme_is_case_insensitive() {
    let p = Proxy::standard("");
    let t = token("read:contacts");
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let r = p.send(&format!(
            "GET /contacts HTTP/1.1\r\nHost: a\r\nAuthorization: {scheme} {t}\r\n\r\n"
        ));
        assert_eq!(r.status, 200, "{scheme}");
    }
}

#[test]
fn two_authorization_headers_are_refused() {
    let p = Proxy::standard("");
    let t = token("read:contacts");
    let r = p.send(&format!(
        "GET /contacts HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\nAuthorization: Bearer {t}\r\n\r\n"
    ));
    assert_eq!(r.status, 400);
    assert_error_body(&r, "invalid_request");
}

#[test]
fn invalid_tokens_are_401_invalid_token() {
    let p = Proxy::standard("");
    let mut expired = claims("read:contacts");
    expired["exp"] = json!(now() - 120);
    let mut not_yet = claims("read:contacts");
    not_yet["nbf"] = json!(now() + 3600);
    let mut wrong_iss = claims("read:contacts");
    wrong_iss["iss"] = json!("https://evil.test/");
    let mut wrong_aud = claims("read:contacts");
    wrong_aud["aud"] = json!("https://elsewhere.test");
    let mut no_exp = claims("read:contacts");
    no_exp.as_object_mut().unwrap().remove("exp");
    let good = token("read:contacts");
    let (h, rest) = good.split_once('.').unwrap();
    let (_payload, sig) = rest.split_once('.').unwrap();
    let mut admin = claims("read:contacts delete:contacts admin");
    admin["sub"] = json!("root");
    let tampered = format!("{h}.{}.{sig}", b64(admin.to_string().as_bytes()));

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "signed by another key",
            sign_with(other_key(), Some(KID), &claims("read:contacts")),
            "signature",
        ),
        ("expired", sign(&expired), "expired"),
        ("nbf in the future", sign(&not_yet), "not valid yet"),
        ("wrong issuer", sign(&wrong_iss), "issuer"),
        ("wrong audience", sign(&wrong_aud), "audience"),
        ("no exp", sign(&no_exp), "exp"),
        (
            "unknown kid",
            sign_with(key(), Some("nope"), &claims("read:contacts")),
            "unknown key",
        ),
        ("tampered payload", tampered, "signature"),
        (
            "alg none",
            raw_jws(
                &json!({"alg": "none", "kid": KID}),
                &claims("read:contacts"),
                "",
            ),
            "algorithm",
        ),
        ("not a jwt", "abc".to_string(), "compact"),
        ("four segments", format!("{good}.x"), "compact"),
        (
            "over 8 KiB",
            format!("{}{}", good, "A".repeat(9000)),
            "8 KiB",
        ),
    ];
    for (name, tok, description_part) in cases {
        let r = p.get("/contacts", Some(&tok));
        assert_eq!(r.status, 401, "{name}");
        let challenge = r.header("www-authenticate").unwrap_or_default().to_string();
        assert!(
            challenge
                .starts_with("Bearer realm=\"api\", error=\"invalid_token\", error_description=\""),
            "{name}: {challenge}"
        );
        assert!(challenge.contains(description_part), "{name}: {challenge}");
        assert_error_body(&r, "invalid_token");
    }
    // An audience given as an array containing ours is fine.
    let mut aud_list = claims("read:contacts");
    aud_list["aud"] = json!(["https://elsewhere.test", AUD]);
    assert_eq!(p.get("/contacts", Some(&sign(&aud_list))).status, 200);
    assert!(!p.log().contains(&good), "the token must never be logged");
}

#[test]
fn unknown_paths_and_methods_are_revealed_only_after_authentication() {
    let p = Proxy::standard("");
    let t = token("read:contacts");
    assert_eq!(
        p.get("/nope", None).status,
        401,
        "anonymous callers cannot map the API"
    );
    let r = p.get("/nope", Some(&t));
    assert_eq!(r.status, 404);
    assert_error_body(&r, "not_found");

    assert_eq!(p.request("PUT", "/contacts", None, "").status, 401);
    let r = p.request("PUT", "/contacts", Some(&t), "");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD, POST"));
    assert_error_body(&r, "method_not_allowed");
}

#[test]
fn missing_scopes_are_403_with_the_required_scopes() {
    let p = Proxy::standard("");
    let r = p.request(
        "DELETE",
        "/contacts/7",
        Some(&token("read:contacts write:contacts")),
        "",
    );
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"delete:contacts\"")
    );
    assert_error_body(&r, "insufficient_scope");
    assert_eq!(
        p.request("DELETE", "/contacts/7", Some(&token("delete:contacts")), "")
            .status,
        200
    );
}

#[test]
fn scopes_compare_as_whole_case_sensitive_words() {
    let p = Proxy::standard("");
    for granted in [
        "read:contactsX",
        "xread:contacts",
        "READ:contacts",
        "read:contacts,write",
        "read",
        "read:",
        "\"read:contacts\"",
    ] {
        assert_eq!(
            p.get("/contacts", Some(&token(granted))).status,
            403,
            "{granted:?}"
        );
    }
    for granted in [
        "read:contacts",
        "a read:contacts b",
        "write:contacts read:contacts",
    ] {
        assert_eq!(
            p.get("/contacts", Some(&token(granted))).status,
            200,
            "{granted:?}"
        );
    }
}

#[test]
fn scopes_from_scp_and_permissions_arrays() {
    let p = Proxy::standard("");
    for claim in ["scp", "permissions"] {
        let mut c = claims("");
        c.as_object_mut().unwrap().remove("scope");
        c[claim] = json!(["write:contacts", "read:contacts"]);
        assert_eq!(p.get("/contacts", Some(&sign(&c))).status, 200, "{claim}");
        c[claim] = json!(["read:contactsX"]);
        assert_eq!(p.get("/contacts", Some(&sign(&c))).status, 403, "{claim}");
    }
    // Okta/Azure style: scp as a space-separated string.
    let mut c = claims("");
    c["scp"] = json!("openid read:contacts");
    assert_eq!(p.get("/contacts", Some(&sign(&c))).status, 200);
}

#[test]
fn any_scopes_need_one_of_them_and_all_scopes() {
    let p = Proxy::standard("");
    assert_eq!(
        p.get("/admin/x", Some(&token("read:contacts admin")))
            .status,
        200
    );
    assert_eq!(
        p.get("/admin/x/y", Some(&token("read:contacts contacts:all")))
            .status,
        200
    );
    assert_eq!(p.get("/admin/x", Some(&token("read:contacts"))).status, 403);
    assert_eq!(p.get("/admin/x", Some(&token("admin"))).status, 403);
    let r = p.get("/admin/x", Some(&token("read:contacts")));
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"read:contacts admin contacts:all\"")
    );
}

#[test]
fn a_route_without_scopes_needs_any_valid_token() {
    let p = Proxy::standard("");
    assert_eq!(p.get("/me", Some(&token(""))).status, 200);
    assert_eq!(p.get("/me", None).status, 401);
}

#[test]
fn get_routes_cover_head() {
    let p = Proxy::standard("");
    let r = p.request("HEAD", "/contacts", Some(&token("read:contacts")), "");
    assert_eq!(r.status, 200);
    let r = p.request("HEAD", "/contacts", Some(&token("write:contacts")), "");
    assert_eq!(r.status, 403);
}

#[test]
fn upstream_unreachable_is_502_and_timeout_is_504() {
    let p = Proxy::standard("");
    let r = p.get("/slow", Some(&token("")));
    assert_eq!(r.status, 504);
    assert_error_body(&r, "gateway_timeout");

    let port = free_port();
    let dead = dead_addr();
    let p = Proxy::start(&config(port, &[dead], ""), port);
    let r = p.get("/contacts", Some(&token("read:contacts")));
    assert_eq!(r.status, 502);
    assert_error_body(&r, "bad_gateway");
    assert_eq!(
        p.get("/contacts", None).status,
        401,
        "auth still comes first"
    );
}

#[test]
fn requests_on_one_connection_keep_working_after_errors() {
    let p = Proxy::standard("");
    let mut c = Client::connect(p.addr);
    let t = token("read:contacts");
    for _ in 0..3 {
        assert_eq!(
            c.send(b"GET /contacts HTTP/1.1\r\nHost: a\r\n\r\n").status,
            401
        );
        assert_eq!(
            c.send(
                format!("GET /contacts HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\n\r\n")
                    .as_bytes()
            )
            .status,
            200
        );
        assert_eq!(
            c.send(
                format!("GET /nope HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\n\r\n")
                    .as_bytes()
            )
            .status,
            404
        );
        assert_eq!(
            c.send(b"GET /a%2fb HTTP/1.1\r\nHost: a\r\n\r\n").status,
            400
        );
    }
    // Garbage on another connection does not take the proxy down.
    let mut g = std::net::TcpStream::connect(p.addr).unwrap();
    std::io::Write::write_all(&mut g, b"\x00\x01garbage\r\n\r\n").unwrap();
    drop(g);
    assert_eq!(p.get("/health", None).status, 200);
}

#[test]
fn round_robin_over_servers_and_a_dead_server_is_skipped() {
    let a = start_echo("a");
    let b = start_echo("b");
    let port = free_port();
    let p = Proxy::start(&config(port, &[a, b], ""), port);
    let seen: Vec<String> = (0..6)
        .map(|_| {
            p.get("/health", None).json()["upstream"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        seen.contains(&"a".to_string()) && seen.contains(&"b".to_string()),
        "{seen:?}"
    );

    let dead = dead_addr();
    let port = free_port();
    let p = Proxy::start(&config(port, &[dead, a], ""), port);
    for i in 0..6 {
        assert_eq!(
            p.get("/health", None).status,
            200,
            "request {i}: a dead server must be retried on the live one"
        );
    }
}

//! Attacks on sender-constrained tokens (SPEC "Sender-constrained tokens (v3)" and "Behind a
//! load balancer (v3)") against the real binary, from a red-team pass: each asserts the
//! behaviour the contract asks for (the first four failed before their fixes): a 502 of a
//! `dpop_nonce` API carries a nonce, an IPv4-mapped `trusted_proxies` entry, console explain
//! of a bound token, a reload widening the window; and what held up (htu against untrusted
//! forwarding headers, odd proofs).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::dpop_call as call;
use common::*;
use serde_json::{json, Value};

fn body(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The proxy in front of an echo upstream with the top-level routes and `apis` (e.g. a
/// `dpop_api`), and no admin listener.
fn proxy_with(apis: &str) -> Proxy {
    let port = free_port();
    let text = config_full(port, None, &[start_echo("a")], &file_issuer(), apis);
    Proxy::start(&text, port)
}

/// `GET /contacts` on `host` with a DPoP-bound token and its proof.
fn dpop_get(p: &Proxy, host: &str, token: &str, proof: &str) -> Response {
    call(
        p,
        "GET",
        host,
        "/contacts",
        Some(("DPoP", token)),
        &[proof],
        "",
    )
}

/// `POST /api/explain` on the admin listener.
fn explain(admin: u16, ask: &Value) -> Response {
    let body = ask.to_string();
    Client::connect(admin_addr(admin)).send(
        format!(
            "POST /api/explain HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

/// SPEC: "Every answer of a `dpop_nonce` API carries a fresh `DPoP-Nonce`." An answer for an
/// upstream that cannot be reached (502) is one of them.
#[test]
fn a_502_of_a_dpop_nonce_api_carries_a_dpop_nonce_too() {
    let port = free_port();
    let text = config_full(
        port,
        None,
        &[dead_addr()],
        &file_issuer(),
        &dpop_api("nonce", "dpop_nonce = true"),
    );
    let p = Proxy::start(&text, port);
    let key = DpopKey::new();
    let token = key.token("read:contacts", "https://nonce.test");
    let url = "http://nonce.test/contacts";
    let dpop = Some(("DPoP", token.as_str()));
    let r = call(
        &p,
        "GET",
        "nonce.test",
        "/contacts",
        dpop,
        &[&key.proof("GET", url, &token)],
        "",
    );
    assert_eq!(r.json()["error"], "use_dpop_nonce");
    let nonce = r.header("DPoP-Nonce").unwrap().to_string();
    let mut c = key.claims("GET", url, &token);
    c["nonce"] = json!(nonce);
    let r = call(
        &p,
        "GET",
        "nonce.test",
        "/contacts",
        dpop,
        &[&key.sign(&key.header(), &c)],
        "",
    );
    assert_eq!(r.status, 502, "{}", body(&r));
    assert!(
        r.header("DPoP-Nonce").is_some(),
        "a 502 of a dpop_nonce API without DPoP-Nonce: {:?}",
        r.headers
    );
}

/// A `trusted_proxies` entry written as IPv4-mapped IPv6 (a bare `::ffff:127.0.0.1`, or the
/// block `::ffff:127.0.0.0/104`) is accepted at load; a request from an IPv4 peer must then be
/// answered, not dropped (`src/trusted.rs` `prefix_eq` slices a 4-byte address by the IPv6
/// prefix length and panics).
#[test]
fn an_ipv4_mapped_trusted_proxy_entry_does_not_drop_requests() {
    for entry in ["::ffff:127.0.0.1", "::ffff:127.0.0.0/104"] {
        let port = free_port();
        let text = config_full(port, None, &[start_echo("a")], &file_issuer(), "").replacen(
            "threads = 1",
            &format!("threads = 1\ntrusted_proxies = [\"{entry}\"]"),
            1,
        );
        let p = Proxy::start(&text, port);
        let mut s = TcpStream::connect(p.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.starts_with("HTTP/1.1 200"),
            "trusted_proxies = [{entry:?}]: no answer to a public request: {got:?}\nlog: {}",
            p.log()
                .lines()
                .filter(|l| l.contains("panic"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// SPEC "Console and traces": explain decides "by the same code as the proxy". A pasted
/// DPoP-bound token (no proof can be pasted) is what the proxy refuses as a bearer token (401
/// `unbound_use`); the console must not call it allowed.
#[test]
fn explain_does_not_call_a_bound_token_without_its_proof_allowed() {
    let admin = free_port();
    let port = free_port();
    let p = Proxy::start(
        &config_full(port, Some(admin), &[start_echo("a")], &file_issuer(), ""),
        port,
    );
    let key = DpopKey::new();
    let bound = key.token("read:contacts", AUD);
    // On the wire: a 401.
    let wire = p.get("/contacts", Some(&bound));
    assert_eq!(wire.status, 401);
    let r = explain(
        admin,
        &json!({"method": "GET", "host": "api.test", "path": "/contacts", "token": bound}),
    );
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(
        r.json()["status"],
        401,
        "explain of a DPoP-bound token without a proof: {}",
        body(&r)
    );
}

/// Pins (these hold): what an outsider controls does not change the URI a proof must name.
#[test]
fn htu_is_the_request_as_received_whatever_an_untrusted_client_claims() {
    let p = proxy_with(&dpop_api("pay", ""));
    let key = DpopKey::new();
    let token = key.token("read:contacts", "https://pay.test");
    let dpop = Some(("DPoP", token.as_str()));
    let refused = |r: &Response, what: &str| {
        assert_eq!(r.status, 401, "{what}: {}", body(r));
    };
    // X-Forwarded-Proto / Forwarded from a peer that is not a trusted proxy.
    let https = key.proof("GET", "https://pay.test/contacts", &token);
    refused(
        &call(
            &p,
            "GET",
            "pay.test",
            "/contacts",
            dpop,
            &[&https],
            "X-Forwarded-Proto: https\r\nForwarded: proto=https\r\n",
        ),
        "X-Forwarded-Proto from an untrusted peer",
    );
    // X-Forwarded-Host does not name the host.
    let other = key.proof("GET", "http://other.test/contacts", &token);
    refused(
        &call(
            &p,
            "GET",
            "pay.test",
            "/contacts",
            dpop,
            &[&other],
            "X-Forwarded-Host: other.test\r\n",
        ),
        "X-Forwarded-Host",
    );
    // A host that selects the same API (trailing dot, another port) is another URI.
    let plain = key.proof("GET", "http://pay.test/contacts", &token);
    refused(
        &call(&p, "GET", "pay.test.", "/contacts", dpop, &[&plain], ""),
        "trailing dot",
    );
    let plain = key.proof("GET", "http://pay.test/contacts", &token);
    refused(
        &call(&p, "GET", "pay.test:8080", "/contacts", dpop, &[&plain], ""),
        "port",
    );
    // Absolute-form: its authority must be the Host (else 400), and it is the host of htu.
    let plain = key.proof("GET", "http://pay.test/contacts", &token);
    let r = p.send(&format!(
        "GET http://other.test/contacts HTTP/1.1\r\nHost: pay.test\r\nAuthorization: DPoP {token}\r\nDPoP: {plain}\r\n\r\n"
    ));
    assert_eq!(r.status, 400, "{}", body(&r));
    // HTTP/1.0 without Host: no authority for htu to name.
    let plain = key.proof("GET", "http:///contacts", &token);
    let r = p.send(&format!(
        "GET /contacts HTTP/1.0\r\nAuthorization: DPoP {token}\r\nDPoP: {plain}\r\n\r\n"
    ));
    assert_ne!(r.status, 200, "{}", body(&r));
    // A proof for another path that normalizes differently, or another method.
    let sub = key.proof("GET", "http://pay.test/contacts/..", &token);
    refused(
        &call(&p, "GET", "pay.test", "/contacts", dpop, &[&sub], ""),
        "dot segments",
    );
    let post = key.proof("POST", "http://pay.test/contacts", &token);
    refused(
        &call(&p, "GET", "pay.test", "/contacts", dpop, &[&post], ""),
        "htm",
    );
    // Still good when everything is right (iat as a float, RFC 7519 NumericDate).
    let mut c = key.claims("GET", "http://pay.test/contacts", &token);
    c["iat"] = json!(now() as f64 + 0.5);
    let r = call(
        &p,
        "GET",
        "pay.test",
        "/contacts",
        dpop,
        &[&key.sign(&key.header(), &c)],
        "",
    );
    assert_eq!(r.status, 200, "{}", body(&r));
}

/// Pins (these hold): many `DPoP` headers, a huge `jwk`, deep JSON and odd numbers are refused
/// quickly, and the proxy keeps serving.
#[test]
fn odd_proofs_are_refused_and_the_proxy_keeps_serving() {
    let p = proxy_with(&dpop_api("pay", ""));
    let key = DpopKey::new();
    let token = key.token("read:contacts", "https://pay.test");
    let dpop = Some(("DPoP", token.as_str()));
    let url = "http://pay.test/contacts";
    let many: Vec<String> = (0..100).map(|_| key.proof("GET", url, &token)).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let r = call(&p, "GET", "pay.test", "/contacts", dpop, &refs, "");
    assert_eq!(r.status, 401);
    // A jwk padded to the 8 KiB limit, and one past it.
    for pad in [6000, 9000] {
        let mut h = key.header();
        h["jwk"]["pad"] = json!("x".repeat(pad));
        let r = call(
            &p,
            "GET",
            "pay.test",
            "/contacts",
            dpop,
            &[&key.sign(&h, &key.claims("GET", url, &token))],
            "",
        );
        assert_eq!(r.status, 401, "pad {pad}");
    }
    // Deep nesting in the claims.
    let deep = format!("{}1{}", "[".repeat(3000), "]".repeat(3000));
    let proof = format!(
        "{}.{}.AAAA",
        b64(key.header().to_string().as_bytes()),
        b64(deep.as_bytes())
    );
    let r = call(&p, "GET", "pay.test", "/contacts", dpop, &[&proof], "");
    assert_eq!(r.status, 401);
    for iat in [
        json!(1e300),
        json!(-1),
        json!("now"),
        json!(u64::MAX),
        json!(null),
    ] {
        let mut c = key.claims("GET", url, &token);
        c["iat"] = iat.clone();
        let r = call(
            &p,
            "GET",
            "pay.test",
            "/contacts",
            dpop,
            &[&key.sign(&key.header(), &c)],
            "",
        );
        assert_eq!(r.status, 401, "iat {iat}");
    }
    let r = call(
        &p,
        "GET",
        "pay.test",
        "/contacts",
        dpop,
        &[&key.proof("GET", url, &token)],
        "",
    );
    assert_eq!(r.status, 200, "{}", body(&r));
}

/// RFC 9449 §11.1: a proof is refused again for as long as its `iat` is accepted. The record
/// keeps it for the window in force when it was first used (`Proof::ttl`); a hot reload that
/// widens `dpop_max_age_seconds` makes proofs accepted again whose record is gone. Here a proof
/// used once under a 1 s window is forgotten (two rotations of its shard), the window becomes
/// 300 s by reload, and the same proof is taken a second time.
#[test]
fn a_reload_widening_the_window_does_not_make_used_proofs_good_again() {
    let (port, admin) = (free_port(), free_port());
    let issuer = format!("{}leeway_seconds = 0\n", file_issuer());
    let config = |max_age: u32| {
        config_full(
            port,
            Some(admin),
            &[start_echo("a")],
            &issuer,
            &dpop_api("pay", &format!("dpop_max_age_seconds = {max_age}")),
        )
    };
    let p = Proxy::start(&config(1), port);
    let key = DpopKey::new();
    let token = key.token("read:contacts", "https://pay.test");
    let dpop = Some(("DPoP", token.as_str()));
    let url = "http://pay.test/contacts";
    let used = key.proof("GET", url, &token);
    let used_at = now();
    let r = call(&p, "GET", "pay.test", "/contacts", dpop, &[&used], "");
    assert_eq!(r.status, 200, "{}", body(&r));
    let r = call(&p, "GET", "pay.test", "/contacts", dpop, &[&used], "");
    assert_eq!(r.status, 401, "a replay within the window: {}", body(&r));
    // Twice, a record period (2 s) later, enough proofs to reach every shard of the record
    // (200 among 16 shards): the generation holding the used proof is dropped.
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(2200));
        for _ in 0..200 {
            let proof = key.proof("GET", url, &token);
            let r = call(&p, "GET", "pay.test", "/contacts", dpop, &[&proof], "");
            assert_eq!(r.status, 200, "{}", body(&r));
        }
    }
    // The operator widens the window.
    std::fs::write(p.config_path(), config(300)).unwrap();
    let generation = || {
        metric(
            &String::from_utf8_lossy(&http_get(admin_addr(admin), "/metrics").body),
            "scopegate_config_generation",
        )
    };
    assert!(
        eventually(15, || generation() >= 2.0),
        "no reload: {}",
        p.log()
    );
    let r = call(&p, "GET", "pay.test", "/contacts", dpop, &[&used], "");
    assert_eq!(
        r.status,
        401,
        "a proof used {} s ago, accepted a second time after the window was widened (forwarded: {})",
        now() - used_at,
        r.status == 200
    );
}

/// SPEC "Console and traces": explain decides "by the same code as the proxy", and "A bearer
/// (unbound) token on a `required` API: 401 `invalid_token`, reason `unbound_token`". A pasted
/// unbound token on a DPoP-required API is what the proxy refuses; the console called it
/// allowed (its binding requirement was checked only for tokens sent with a scheme).
#[test]
fn explain_refuses_an_unbound_token_where_binding_is_required_as_the_proxy_does() {
    let (admin, port) = (free_port(), free_port());
    let text = config_full(
        port,
        Some(admin),
        &[start_echo("a")],
        &file_issuer(),
        &dpop_api("pay", ""),
    );
    let p = Proxy::start(&text, port);
    let plain = token_with("read:contacts", json!({ "aud": "https://pay.test" }));
    let wire = call(
        &p,
        "GET",
        "pay.test",
        "/contacts",
        Some(("Bearer", &plain)),
        &[],
        "",
    );
    assert_eq!(wire.status, 401, "{}", body(&wire));
    let ask = json!({"method": "GET", "host": "pay.test", "path": "/contacts", "token": plain});
    let r = explain(admin, &ask);
    assert_eq!(r.status, 200, "{}", body(&r));
    let v = r.json();
    assert_eq!(
        (v["status"].as_u64(), v["reason"].as_str()),
        (Some(401), Some("unbound_token")),
        "explain of an unbound token on a DPoP-required API: {v}"
    );
    // Scopes stand for a token described, taken as presented with whatever binds it.
    let described = json!({"method": "GET", "host": "pay.test", "path": "/contacts", "scopes": ["read:contacts"]});
    let r = explain(admin, &described);
    assert_eq!(r.json()["status"], 200, "{}", body(&r));
}

/// SPEC: DPoP challenges "with `resource_metadata`, they carry `resource_metadata=` as the
/// Bearer ones do". The 401 of a replayed proof (reason `dpop_replay`) is one of them.
#[test]
fn the_401_of_a_replayed_proof_names_the_resource_metadata() {
    let api = dpop_api("pay", "").replacen(
        "upstream = \"contacts\"\n",
        "upstream = \"contacts\"\nresource_metadata = true\n",
        1,
    );
    let p = proxy_with(&api);
    let key = DpopKey::new();
    let token = key.token("read:contacts", "https://pay.test");
    let proof = key.proof("GET", "http://pay.test/contacts", &token);
    let send = || dpop_get(&p, "pay.test", &token, &proof);
    assert_eq!(send().status, 200);
    let replayed = send();
    assert_eq!(replayed.status, 401, "{}", body(&replayed));
    let challenge = replayed.header("WWW-Authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("DPoP ")
            && challenge.contains("error=\"invalid_dpop_proof\"")
            && challenge.contains(
                "resource_metadata=\"http://pay.test/.well-known/oauth-protected-resource\""
            ),
        "{challenge}"
    );
}

/// SPEC: "Every answer of a `dpop_nonce` API carries a fresh `DPoP-Nonce`." Those decided before
/// any route is looked up (a target refused 400, a CONNECT refused 405) are answers of the API
/// the host selects too.
#[test]
fn answers_given_before_any_route_of_a_dpop_nonce_api_carry_a_nonce() {
    let p = proxy_with(&dpop_api("nonce", "dpop_nonce = true"));
    for (method, path, status) in [("GET", "/contacts/%2f", 400), ("CONNECT", "/contacts", 405)] {
        let r = call(&p, method, "nonce.test", path, None, &[], "");
        assert_eq!(r.status, status, "{method} {path}: {}", body(&r));
        assert!(
            r.header("DPoP-Nonce").is_some_and(|n| !n.is_empty()),
            "{method} {path}: {status} without DPoP-Nonce: {:?}",
            r.headers
        );
    }
    // Another host's answers carry none.
    let r = call(&p, "GET", "api.test", "/contacts/%2f", None, &[], "");
    assert_eq!(r.status, 400);
    assert!(r.header("DPoP-Nonce").is_none(), "{:?}", r.headers);
}

/// SPEC: a `jti` is a replay when it "was seen before within the window", and `iat` must be
/// within the window. A proof issued before the process started (a client whose clock runs
/// behind, or one minted a while ago) but never used is not a replay: it was refused as one for
/// `dpop_max_age_seconds` after every start of an in-process record.
#[test]
fn a_proof_issued_before_the_process_started_is_taken_once() {
    let p = proxy_with(&dpop_api("pay", ""));
    let key = DpopKey::new();
    let token = key.token("read:contacts", "https://pay.test");
    let mut c = key.claims("GET", "http://pay.test/contacts", &token);
    c["iat"] = json!(c["iat"].as_u64().unwrap() - 200);
    let proof = key.sign(&key.header(), &c);
    let send = || dpop_get(&p, "pay.test", &token, &proof);
    let first = send();
    assert_eq!(first.status, 200, "{}", body(&first));
    let again = send();
    assert_eq!(again.status, 401, "{}", body(&again));
}

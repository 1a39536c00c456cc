//! Behind a load balancer (SPEC v3): forwarding headers are believed from `trusted_proxies`
//! only; from anyone else they are removed and set from the connection. The client scopegate
//! believes is what the access log names.

mod common;

use common::*;

const SPOOFED: &str = "X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n\
X-Forwarded-Host: public.example\r\nX-Forwarded-Port: 443\r\nx-FORWARDED-prefix: /api\r\n\
Forwarded: for=198.51.100.1\r\nClient-Cert: :MIIB:\r\n";

fn proxy(trusted: Option<&str>) -> Proxy {
    let upstream = start_echo("lb");
    let port = free_port();
    let server = match trusted {
        Some(blocks) => format!("threads = 1\naccess_log = \"json\"\ntrusted_proxies = {blocks}\n"),
        None => "threads = 1\naccess_log = \"json\"\n".to_string(),
    };
    let text = config(port, &[upstream], "").replacen("threads = 1\n", &server, 1);
    Proxy::start(&text, port)
}

fn send_spoofed(p: &Proxy) -> Response {
    let reader = token("read:contacts");
    p.send(&format!(
        "GET /contacts HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {reader}\r\n{SPOOFED}\r\n"
    ))
}

/// The `client` of the access-log line of the last request.
fn logged_client(p: &Proxy) -> Option<String> {
    let mut found = None;
    eventually(10, || {
        found = p
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("decision").is_some())
            .last()
            .and_then(|v| v["client"].as_str().map(str::to_string));
        found.is_some()
    });
    found
}

#[test]
fn without_trusted_proxies_forwarding_headers_are_the_connections() {
    for trusted in [None, Some("[\"10.0.0.0/8\"]")] {
        let p = proxy(trusted);
        let r = send_spoofed(&p);
        assert_eq!(r.status, 200, "{trusted:?}");
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
        for gone in [
            "x-forwarded-port",
            "x-forwarded-prefix",
            "forwarded",
            "client-cert",
        ] {
            assert_eq!(
                r.upstream_header(gone),
                None,
                "{gone} from an untrusted peer ({trusted:?})"
            );
        }
        assert_eq!(
            logged_client(&p).as_deref(),
            Some("127.0.0.1"),
            "{}",
            p.log()
        );
    }
}

#[test]
fn from_a_trusted_proxy_its_headers_are_believed_and_the_chain_is_appended() {
    let p = proxy(Some("[\"127.0.0.1/32\"]"));
    let r = send_spoofed(&p);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("203.0.113.9, 127.0.0.1"),
        "the balancer's chain with the balancer appended"
    );
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("https")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-host").as_deref(),
        Some("public.example")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-port").as_deref(),
        Some("443")
    );
    assert_eq!(r.upstream_header("client-cert").as_deref(), Some(":MIIB:"));
    // `Forwarded` is never passed on (SPEC "Requests on the wire").
    assert_eq!(r.upstream_header("forwarded"), None);
    assert_eq!(
        logged_client(&p).as_deref(),
        Some("203.0.113.9"),
        "{}",
        p.log()
    );

    // A client's own entries left of the balancer's are not believed: the rightmost entry that
    // is not a trusted proxy is the client.
    let reader = token("read:contacts");
    let r = p.send(&format!(
        "GET /contacts HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {reader}\r\nX-Forwarded-For: 1.1.1.1, 198.51.100.20\r\n\r\n"
    ));
    assert_eq!(r.status, 200);
    assert!(
        eventually(10, || logged_client(&p).as_deref() == Some("198.51.100.20")),
        "{}",
        p.log()
    );
    // Without a scheme from the balancer, the connection's.
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("http")
    );
}

#[test]
fn a_bad_block_is_a_config_error_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scopegate.toml");
    let text = config(free_port(), &["127.0.0.1:9".parse().unwrap()], "").replacen(
        "threads = 1\n",
        "threads = 1\ntrusted_proxies = [\"10.0.0.0/40\"]\n",
        1,
    );
    std::fs::write(&path, text).unwrap();
    std::fs::write(dir.path().join("jwks.json"), &key().jwks).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("scopegate.toml:") && err.contains("trusted_proxies"),
        "{err}"
    );
    assert!(err.contains("prefix length"), "{err}");
}

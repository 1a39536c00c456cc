//! CORS in a real browser: headless Chromium (Debian's `chromium`) loads a page from an allowed
//! origin that calls the API with `fetch()` and a bearer token (preflight, then the request),
//! reads the JSON and a 403's `WWW-Authenticate`; from another origin the browser blocks it.
//! The page reports what it saw to the server that served it; the test waits on that report.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use common::*;
use serde_json::{json, Value};

/// A page server: GET /page serves `html`, POST /report stores the body.
fn page_server(html: String) -> (SocketAddr, Arc<Mutex<Option<Value>>>) {
    let report = Arc::new(Mutex::new(None));
    let r = report.clone();
    let addr = spawn_upstream(Arc::new(move |req: &EchoRequest| {
        if req.method == "POST" && req.target == "/report" {
            *r.lock().unwrap() = serde_json::from_slice(&req.body).ok();
            return EchoResponse {
                status: 200,
                body: b"{}".to_vec(),
                headers: Vec::new(),
                delay: None,
            };
        }
        EchoResponse {
            status: 200,
            body: html.clone().into_bytes(),
            headers: vec![("Content-Type".into(), "text/html; charset=utf-8".into())],
            delay: None,
        }
    }))
    .unwrap();
    (addr, report)
}

/// The page: calls the API, then posts what it saw to its own origin.
fn page(api: &str, read: &str, write_only: &str) -> String {
    format!(
        r#"<!doctype html><html><body><script>
(async () => {{
  const out = {{}};
  try {{
    const r = await fetch("{api}/contacts", {{ headers: {{ "Authorization": "Bearer {read}" }} }});
    out.status = r.status;
    out.body = await r.json();
  }} catch (e) {{ out.blocked = String(e); }}
  try {{
    const r = await fetch("{api}/contacts", {{ method: "POST", headers: {{ "Authorization": "Bearer {write_only}", "Content-Type": "application/json" }}, body: "{{}}" }});
    out.forbidden_status = r.status;
    out.forbidden_challenge = r.headers.get("WWW-Authenticate");
  }} catch (e) {{ out.forbidden_blocked = String(e); }}
  await fetch("/report", {{ method: "POST", body: JSON.stringify(out) }});
}})();
</script></body></html>"#
    )
}

/// The browser's processes and its throwaway profile, removed when dropped (in this order).
#[allow(dead_code)]
struct Browser(ProcessGroup, tempfile::TempDir);

fn chromium(url: &str) -> Browser {
    let bin = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect(
            "Debian's chromium is needed for this test: apt-get install chromium (.ci/run does)",
        );
    let profile = tempfile::tempdir().unwrap();
    let child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn_group()
        .unwrap();
    Browser(child, profile)
}

/// Load the page from `origin_host` and wait for its report.
fn run_page(api: &str, origin_host: &str, read: &str, write_only: &str) -> Value {
    let (addr, report) = page_server(page(api, read, write_only));
    let _browser = chromium(&format!("http://{origin_host}:{}/page", addr.port()));
    assert!(
        eventually(60, || report.lock().unwrap().is_some()),
        "the page on {origin_host} never reported"
    );
    let v = report.lock().unwrap().clone().unwrap();
    v
}

#[test]
fn a_browser_calls_the_api_from_an_allowed_origin_and_is_blocked_from_another() {
    let upstream = start_echo("contacts");
    let port = free_port();
    let read = token("read:contacts");
    let write_only = token("other:scope");
    // One proxy per run, allowing exactly the page's origin.
    let api_for = |origin: &str, port: u16| {
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
threads = 1
[[issuers]]
issuer = "{ISS}"
jwks_file = "jwks.json"
[upstreams.contacts]
servers = ["{upstream}"]
[apis.contacts]
audience = "{AUD}"
[apis.contacts.cors]
origins = ["{origin}"]
allow_headers = ["content-type"]
[[apis.contacts.routes]]
methods = ["GET"]
path = "/contacts"
scopes = ["read:contacts"]
[[apis.contacts.routes]]
methods = ["POST"]
path = "/contacts"
scopes = ["write:contacts"]
"#
        )
    };
    // Allowed: the page on 127.0.0.1:P, the proxy allowing exactly that origin.
    let (addr, report) = page_server(page(
        &format!("http://127.0.0.1:{port}"),
        &read,
        &write_only,
    ));
    let p = Proxy::start(
        &api_for(&format!("http://127.0.0.1:{}", addr.port()), port),
        port,
    );
    {
        let _browser = chromium(&format!("http://127.0.0.1:{}/page", addr.port()));
        assert!(
            eventually(60, || report.lock().unwrap().is_some()),
            "no report: {}",
            p.log()
        );
    }
    let seen = report.lock().unwrap().clone().unwrap();
    assert_eq!(seen["status"], 200, "{seen}");
    assert_eq!(
        seen["body"]["method"], "GET",
        "the page read the upstream's JSON: {seen}"
    );
    assert_eq!(seen["forbidden_status"], 403, "{seen}");
    assert_eq!(
        seen["forbidden_challenge"],
        json!("Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"write:contacts\""),
        "{seen}"
    );
    assert!(
        eventually(10, || p.log().contains("decision=\"preflight\"")),
        "the browser sent a preflight: {}",
        p.log()
    );

    // Blocked: the same page from http://localhost:Q, an origin the proxy does not allow.
    let v = run_page(
        &format!("http://127.0.0.1:{port}"),
        "localhost",
        &read,
        &write_only,
    );
    assert!(v.get("status").is_none() && v["blocked"].is_string(), "{v}");
    assert!(v["forbidden_blocked"].is_string(), "{v}");
}

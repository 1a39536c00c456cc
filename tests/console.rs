//! The operator console in a real browser: headless Chromium loads the admin listener's page from
//! a running scopegate under traffic, lets its script render the JSON endpoints, and dumps the
//! DOM; the test reads what a person would see there: the route table, counts that move, a
//! refusal with its reason, an explain answer (the form filled and submitted by the page), and a
//! failed reload's error after a bad edit. Every wait is on state, bounded.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// What Chromium showed: the DOM after the page's script ran, and what it logged (console
/// messages, CSP violations).
struct Dump {
    dom: String,
    log: String,
}

/// Load `url` in a fresh headless Chromium (its whole process tree stopped when this returns)
/// and dump the DOM once the page's fetches have settled (virtual time waits for the network).
fn dump(url: &str) -> Dump {
    let bin = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect(
            "Debian's chromium is needed for this test: apt-get install chromium (.ci/run does)",
        );
    let profile = tempfile::tempdir().unwrap();
    let log_path = profile.path().join("chromium.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut browser = Command::new(bin)
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
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=4000",
            "--dump-dom",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.path().join("profile").display()
        ))
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn_group()
        .unwrap();
    let mut stdout = browser.take_stdout().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut dom = String::new();
        let _ = stdout.read_to_string(&mut dom);
        let _ = tx.send(dom);
    });
    let dom = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("chromium dumped no DOM within 60 s");
    drop(browser);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    Dump { dom, log }
}

/// Dump `url` until `seen` holds for the DOM (the page refreshes from live data), at most 60 s.
fn dump_until(url: &str, what: &str, seen: impl Fn(&str) -> bool) -> Dump {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = dump(url);
        if seen(&d.dom) {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "the console never showed {what}; last DOM:\n{}",
            d.dom
        );
    }
}

/// The `<tr>` of a route in the scope map.
fn route_row<'a>(dom: &'a str, label: &str) -> Option<&'a str> {
    let start = dom.find(&format!("<tr data-route=\"{label}\""))?;
    let rest = &dom[start..];
    Some(&rest[..rest.find("</tr>")?])
}

/// The count a row shows for `decision` (`allowed <b>3</b>`).
fn count(row: &str, decision: &str) -> Option<u64> {
    let marker = format!("data-decision=\"{decision}\">{decision} <b>");
    let rest = &row[row.find(&marker)? + marker.len()..];
    rest[..rest.find('<')?].parse().ok()
}

/// The rows of the refusals table, each as its cells' text.
fn refusal_rows(dom: &str) -> Vec<Vec<String>> {
    let Some(start) = dom.find("<tbody id=\"refusal-rows\">") else {
        return Vec::new();
    };
    let body = &dom[start..];
    let body = &body[..body.find("</tbody>").unwrap_or(body.len())];
    body.split("<tr>")
        .skip(1)
        .map(|row| {
            row.split("<td")
                .skip(1)
                .map(|cell| text_of(&cell[cell.find('>').map_or(0, |i| i + 1)..]))
                .collect()
        })
        .collect()
}

/// The text of an HTML fragment (tags dropped, the entities Chromium writes decoded).
fn text_of(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
        .trim()
        .to_string()
}

fn post_json(addr: SocketAddr, target: &str, body: &Value) -> Response {
    let body = body.to_string();
    Client::connect(addr).send(
        format!(
            "POST {target} HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

/// Requests to the public route until told to stop (at most 3,000, one every 20 ms): the
/// console is read under traffic.
fn background_traffic(proxy: SocketAddr) -> (mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (stop, stopped) = mpsc::channel::<()>();
    let handle = std::thread::spawn(move || {
        let mut client = Client::connect(proxy);
        for _ in 0..3_000 {
            let r = client.send(b"GET /health HTTP/1.1\r\nHost: api.test\r\n\r\n");
            assert_eq!(r.status, 200);
            match stopped.recv_timeout(Duration::from_millis(20)) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
        }
    });
    (stop, handle)
}

#[test]
fn the_console_shows_routes_live_counts_refusals_explain_and_reloads_in_a_browser() {
    let upstream = start_echo("contacts");
    let (port, admin) = (free_port(), free_port());
    // Two workers: refusals are gathered from every worker's ring.
    let text = config_full(port, Some(admin), &[upstream], &file_issuer(), "")
        .replace("threads = 1", "threads = 2");
    let p = Proxy::start(&text, port);
    let admin_addr = admin_addr(admin);
    let console = format!("http://127.0.0.1:{admin}/");

    // The page and its assets: one origin, no inline script, under a strict CSP.
    let page = http_get(admin_addr, "/");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let csp = page
        .header("content-security-policy")
        .expect("a CSP")
        .to_string();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    for banned in ["unsafe-inline", "unsafe-eval", "http:", "https:", "*"] {
        assert!(!csp.contains(banned), "{banned} in {csp}");
    }
    let html = String::from_utf8(page.body.clone()).unwrap();
    assert_eq!(
        html.matches("<script").count(),
        html.matches("<script src=\"/console.js\"").count(),
        "only the script asset, no inline script: {html}"
    );
    assert!(!html.contains("style="), "no inline style either");
    for (asset, kind) in [
        ("/console.js", "text/javascript"),
        ("/console.css", "text/css"),
    ] {
        let r = http_get(admin_addr, asset);
        assert_eq!(r.status, 200, "{asset}");
        assert!(
            r.header("content-type").unwrap().starts_with(kind),
            "{asset}"
        );
    }

    let (stop, traffic) = background_traffic(p.addr);
    let reader = token("read:contacts");
    assert_eq!(p.get("/contacts", Some(&reader)).status, 200);
    assert_eq!(p.get("/contacts", None).status, 401);
    assert_eq!(
        p.request("DELETE", "/contacts/7", Some(&reader), "").status,
        403
    );

    // The route table with what each route requires, and the counts of this traffic.
    let first = dump_until(&console, "the counts of this traffic", |dom| {
        route_row(dom, "GET /contacts").is_some_and(|row| {
            count(row, "allowed") == Some(1) && count(row, "unauthenticated") == Some(1)
        }) && route_row(dom, "DELETE /contacts/{id}").and_then(|r| count(r, "forbidden")) == Some(1)
    });
    let dom = &first.dom;
    assert!(dom.contains("data-state=\"ready\""), "{dom}");
    for label in [
        "GET /health",
        "GET /contacts/{id}",
        "POST /contacts",
        "DELETE /contacts/{id}",
        "GET /admin/{*rest}",
    ] {
        assert!(
            route_row(dom, label).is_some(),
            "route {label} listed: {dom}"
        );
    }
    let delete = route_row(dom, "DELETE /contacts/{id}").unwrap();
    assert!(delete.contains("delete:contacts"), "{delete}");
    assert_eq!(count(delete, "forbidden"), Some(1), "{delete}");
    let admin_route = route_row(dom, "GET /admin/{*rest}").unwrap();
    assert!(
        text_of(admin_route).contains("one of: admin contacts:all"),
        "{admin_route}"
    );
    assert!(route_row(dom, "GET /health").unwrap().contains("public"));
    assert!(
        dom.contains(AUD) && dom.contains(ISS),
        "the API's audience and issuer"
    );
    assert!(
        !first.log.contains("Content Security Policy"),
        "the page runs under its own CSP: {}",
        first.log
    );

    // Counts that move: the public route's count grows under the background traffic, and
    // three more reads show up as they happen.
    let health = |dom: &str| route_row(dom, "GET /health").and_then(|r| count(r, "public"));
    let before = health(dom).expect("the public route has a count");
    for _ in 0..3 {
        assert_eq!(p.get("/contacts", Some(&reader)).status, 200);
    }
    let moved = dump_until(&console, "moving counts", |dom| {
        health(dom).is_some_and(|n| n > before)
            && route_row(dom, "GET /contacts").and_then(|r| count(r, "allowed")) == Some(4)
    });

    // The 403 among the last refusals, with its reason and `sub`, and never the token.
    let rows = refusal_rows(&moved.dom);
    let forbidden = rows
        .iter()
        .find(|r| r.get(5).map(String::as_str) == Some("403"))
        .unwrap_or_else(|| panic!("a 403 among the refusals: {rows:?}"));
    assert_eq!(
        &forbidden[1..],
        [
            "DELETE",
            "api.test",
            "/contacts/7",
            "DELETE /contacts/{id}",
            "403",
            "insufficient_scope",
            "user-1"
        ],
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r.get(5).map(String::as_str) == Some("401")
                && r.get(6).map(String::as_str) == Some("missing")),
        "{rows:?}"
    );
    assert!(
        rows.iter().all(|r| r[4] != "GET /health"),
        "an allowed request is no refusal: {rows:?}"
    );
    assert!(!moved.dom.contains(&reader), "no token on the page");
    let api = http_get(admin_addr, "/api/refusals").json();
    let times: Vec<&str> = api["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["time"].as_str().unwrap())
        .collect();
    assert!(
        times.len() >= 2 && times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {api}"
    );
    assert!(
        !api.to_string().contains(&reader),
        "no token in the JSON either"
    );

    // Explain: the page fills its form from the URL's fragment and submits it.
    let form = &moved.dom;
    assert!(
        form.contains("<form id=\"explain-form\""),
        "the explain form"
    );
    assert!(
        form.contains("<textarea name=\"token\""),
        "a token can be pasted"
    );
    let explained = dump_until(
        &format!("{console}#explain?method=DELETE&path=/contacts/7&scopes=read:contacts%20write:contacts"),
        "an explain answer",
        |dom| dom.contains("data-state=\"explained\""),
    );
    let answer = |class: &str| {
        let dom = &explained.dom;
        let start = dom
            .find(&format!("class=\"{class}\">"))
            .map(|i| i + class.len() + 9)?;
        Some(text_of(&dom[start..start + dom[start..].find('<')?]))
    };
    assert_eq!(
        answer("explain-status").as_deref(),
        Some("403"),
        "{}",
        explained.dom
    );
    assert_eq!(answer("explain-decision").as_deref(), Some("forbidden"));
    assert_eq!(
        answer("explain-reason").as_deref(),
        Some("insufficient_scope")
    );
    assert_eq!(
        answer("explain-route").as_deref(),
        Some("DELETE /contacts/{id}")
    );
    // The same decision through the JSON endpoint, with a pasted token, which is not logged.
    let deleter = token("delete:contacts");
    let r = post_json(
        admin_addr,
        "/api/explain",
        &json!({"method": "DELETE", "host": "api.test", "path": "/contacts/7", "token": deleter}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"status": 200, "decision": "allowed", "reason": null, "route": "DELETE /contacts/{id}"})
    );
    assert!(
        !p.log().contains(&deleter),
        "a pasted token is never logged"
    );
    let r = post_json(
        admin_addr,
        "/api/explain",
        &json!({"method": "GET", "path": "/contacts"}),
    );
    assert_eq!(r.json()["decision"], "unauthenticated");
    assert_eq!(
        post_json(admin_addr, "/api/explain", &json!({"path": "/"})).status,
        400
    );

    // A reload that narrows a route lists what changed; a bad edit lists its error.
    let good = text.replace(
        "scopes = [\"delete:contacts\"]",
        "scopes = [\"delete:contacts\", \"admin\"]",
    );
    std::fs::write(p.config_path(), &good).unwrap();
    assert!(
        eventually(30, || {
            http_get(admin_addr, "/api/reloads").json()["reloads"][0]["result"] == "ok"
        }),
        "{}",
        p.log()
    );
    let bad = good.replace(
        "scopes = [\"write:contacts\"]",
        "scopez = [\"write:contacts\"]",
    );
    std::fs::write(p.config_path(), &bad).unwrap();
    assert!(
        eventually(30, || {
            http_get(admin_addr, "/api/reloads").json()["reloads"][0]["result"] == "error"
        }),
        "{}",
        p.log()
    );
    let reloads = http_get(admin_addr, "/api/reloads").json();
    let error = reloads["reloads"][0]["error"].as_str().unwrap().to_string();
    assert!(error.contains("unknown field `scopez`"), "{reloads}");
    assert_eq!(
        reloads["reloads"][0]["generation"], 2,
        "the running config is kept"
    );
    let shown = dump_until(&console, "the failed reload", |dom| {
        dom.contains("reload failed")
    });
    let dom = &shown.dom;
    let failed = &dom[dom.find("data-result=\"error\"").expect("a failed reload")..];
    let failed = text_of(&failed[..failed.find("</li>").unwrap()]);
    assert!(failed.contains("generation 2"), "{failed}");
    assert!(failed.contains("unknown field `scopez`"), "{failed}");
    assert!(
        failed.contains("scopegate.toml:"),
        "file:line:col: {failed}"
    );
    let narrowed = &dom[dom.find("data-result=\"ok\"").expect("the good reload")..];
    let narrowed = text_of(&narrowed[..narrowed.find("</ul>").unwrap()]);
    assert!(
        narrowed.contains("narrowed DELETE /contacts/{id}") && narrowed.contains("admin"),
        "{narrowed}"
    );
    // The keys of the issuer, from jwks.json.
    assert!(
        dom.contains(KID) && dom.contains("RS256"),
        "the issuer's key: {dom}"
    );

    stop.send(()).unwrap();
    traffic.join().unwrap();
}

#[test]
fn keys_show_their_refresh_times_and_failed_fetches() {
    let jwks = JwksServer::start(&key().jwks, 1);
    let (_p, admin) = url_proxy(&jwks.url());
    let keys = || http_get(admin_addr(admin), "/api/keys").json()["issuers"][0].clone();
    assert!(
        eventually(30, || keys()["last_refresh"].is_string()),
        "{}",
        keys()
    );
    let issuer = keys();
    assert_eq!(issuer["issuer"], ISS);
    assert_eq!(issuer["source"]["jwks_url"], jwks.url());
    assert_eq!(
        issuer["keys"],
        json!([{"kid": KID, "alg": "RS256"}]),
        "{issuer}"
    );
    assert!(issuer["next_refresh"].as_str().unwrap() > issuer["last_refresh"].as_str().unwrap());
    assert_eq!(issuer["failures"], 0);
    // The provider breaks: the next refresh fails, is counted with its error, and the last good
    // keys stay.
    jwks.set("not json");
    assert!(
        eventually(30, || keys()["failures"].as_u64() >= Some(1)),
        "{}",
        keys()
    );
    let issuer = keys();
    assert!(
        issuer["last_error"].as_str().unwrap().contains(&jwks.url()),
        "{issuer}"
    );
    assert_eq!(issuer["keys"][0]["kid"], KID, "the last good keys are kept");
}

//! Live operations: hot reload under load (file rewrite and symlink swap), SIGHUP, a bad file
//! mid-run, metrics that count exactly and stay bounded, and graceful SIGTERM.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

fn metrics_text(admin: u16) -> String {
    String::from_utf8_lossy(&http_get(admin_addr(admin), "/metrics").body).into_owned()
}

fn generation(admin: u16) -> f64 {
    metric(&metrics_text(admin), "scopegate_config_generation")
}

/// The standard config, with GET /contacts requiring `scope` instead of read:contacts.
fn variant(port: u16, admin: u16, upstream: std::net::SocketAddr, scope: &str) -> String {
    config_full(port, Some(admin), &[upstream], &file_issuer(), "").replacen(
        "path = \"/contacts\"\nscopes = [\"read:contacts\"]",
        &format!("path = \"/contacts\"\nscopes = [\"{scope}\"]"),
        1,
    )
}

/// Write atomically, as editors and config management do (temp file + rename).
fn write_atomic(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn reloads_under_load_fail_no_request() {
    let upstream = start_echo("a");
    let (port, admin) = (free_port(), free_port());
    let a = variant(port, admin, upstream, "read:contacts");
    let b = variant(port, admin, upstream, "write:contacts");

    // Kubernetes layout: scopegate.toml -> ..data/scopegate.toml, ..data -> v0.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("jwks.json"), &key().jwks).unwrap();
    std::fs::create_dir(root.join("v0")).unwrap();
    std::fs::write(root.join("v0/scopegate.toml"), &a).unwrap();
    std::os::unix::fs::symlink("v0", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/scopegate.toml", root.join("scopegate.toml")).unwrap();
    let p = Proxy::start_in(dir, port);
    let root = p.dir.path().to_path_buf();
    assert!(eventually(10, || http_get(admin_addr(admin), "/readyz")
        .status
        == 200));
    assert_eq!(generation(admin), 1.0);

    let t = token("read:contacts");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, forbidden, bad) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, forbidden, bad, t, addr) = (
                stop.clone(),
                ok.clone(),
                forbidden.clone(),
                bad.clone(),
                t.clone(),
                p.addr,
            );
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let req = format!(
                    "GET /contacts HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\n\r\n"
                );
                // Bounded: at most 200k requests or until told to stop.
                for _ in 0..200_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match c.send(req.as_bytes()).status {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        403 => forbidden.fetch_add(1, Ordering::Relaxed),
                        _ => bad.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();

    let mut expected_generation = 1.0;
    for i in 1..=24 {
        let text = if i % 2 == 1 { &b } else { &a };
        if i % 4 < 2 {
            // Symlink swap: new directory, then ..data replaced atomically.
            let v = format!("v{i}");
            std::fs::create_dir(root.join(&v)).unwrap();
            std::fs::write(root.join(&v).join("scopegate.toml"), text).unwrap();
            std::os::unix::fs::symlink(&v, root.join("..data_tmp")).unwrap();
            std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        } else {
            // Rewrite of the file the symlink chain ends at.
            write_atomic(
                &std::fs::canonicalize(root.join("scopegate.toml")).unwrap(),
                text,
            );
        }
        expected_generation += 1.0;
        assert!(
            eventually(10, || generation(admin) == expected_generation),
            "reload {i} not applied\n{}",
            p.log()
        );
        // Once applied, the new rule decides.
        let want = if i % 2 == 1 { 403 } else { 200 };
        assert_eq!(
            p.get("/contacts", Some(&t)).status,
            want,
            "after reload {i}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (ok, forbidden, bad) = (
        ok.load(Ordering::Relaxed),
        forbidden.load(Ordering::Relaxed),
        bad.load(Ordering::Relaxed),
    );
    assert_eq!(
        bad, 0,
        "{bad} requests failed during reloads ({ok} allowed, {forbidden} forbidden)"
    );
    assert!(
        ok > 0 && forbidden > 0,
        "both configs served: {ok} / {forbidden}"
    );
    assert!(
        metric(
            &metrics_text(admin),
            "scopegate_config_reloads_total{result=\"ok\"}"
        ) >= 24.0
    );
}

#[test]
fn an_invalid_file_mid_run_changes_nothing() {
    let upstream = start_echo("a");
    let (port, admin) = (free_port(), free_port());
    let p = Proxy::start(&variant(port, admin, upstream, "read:contacts"), port);
    let t = token("read:contacts");
    assert_eq!(p.get("/contacts", Some(&t)).status, 200);
    let good = std::fs::read_to_string(p.config_path()).unwrap();
    let broken = good.replacen(
        "scopes = [\"read:contacts\"]",
        "scopes = [\"read:contacts\"]\nscopez = 1",
        1,
    );
    write_atomic(&p.config_path(), &broken);
    // File events may come in one batch or several: wait for the state (a failed reload),
    // not for an exact number of attempts.
    let errors = || {
        metric(
            &metrics_text(admin),
            "scopegate_config_reloads_total{result=\"error\"}",
        )
    };
    assert!(eventually(10, || errors() >= 1.0), "{}", p.log());
    assert_eq!(generation(admin), 1.0);
    assert_eq!(p.get("/contacts", Some(&t)).status, 200);
    assert_eq!(http_get(admin_addr(admin), "/readyz").status, 200);
    // The log names the file, line and column.
    let line = broken
        .lines()
        .position(|l| l.starts_with("scopez"))
        .unwrap()
        + 1;
    let want = format!(
        "{}:{line}:1: unknown field `scopez`",
        p.config_path().display()
    );
    assert!(
        p.log().contains(&want),
        "expected {want:?} in the log:\n{}",
        p.log()
    );

    // A duplicate route is caught too, and a fixed file is then taken.
    let dup = format!("{good}\n[[routes]]\nmethods = [\"GET\"]\npath = \"/contacts\"\n");
    let before = errors();
    write_atomic(&p.config_path(), &dup);
    assert!(eventually(10, || errors() > before), "{}", p.log());
    assert!(p.log().contains("duplicate route"), "{}", p.log());
    assert_eq!(generation(admin), 1.0);
    write_atomic(
        &p.config_path(),
        &good.replacen(
            "scopes = [\"read:contacts\"]",
            "scopes = [\"write:contacts\"]",
            1,
        ),
    );
    assert!(eventually(10, || generation(admin) == 2.0));
    assert_eq!(p.get("/contacts", Some(&t)).status, 403);
}

#[test]
fn a_reload_under_traffic_logs_what_it_changed_in_who_may_do_what() {
    let upstream = start_echo("a");
    let (port, admin) = (free_port(), free_port());
    let p = Proxy::start(&variant(port, admin, upstream, "read:contacts"), port);
    assert!(eventually(10, || http_get(admin_addr(admin), "/readyz")
        .status
        == 200));
    let t = token("read:contacts");
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let client = {
        let (stop, failed, addr) = (stop.clone(), failed.clone(), p.addr);
        let req = format!("GET /contacts HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\n\r\n");
        std::thread::spawn(move || {
            let mut c = Client::connect(addr);
            for _ in 0..200_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if !matches!(c.send(req.as_bytes()).status, 200 | 403) {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let edited = variant(port, admin, upstream, "write:contacts")
        + "\n[[routes]]\nmethods = [\"PUT\"]\npath = \"/contacts/{id}\"\nscopes = [\"write:contacts\"]\n";
    write_atomic(&p.config_path(), &edited);
    assert!(eventually(10, || generation(admin) == 2.0), "{}", p.log());
    let expected = [
        "+ route PUT /contacts/{id}",
        "widened GET /contacts: scope read:contacts removed",
        "narrowed GET /contacts: scope write:contacts added",
    ];
    let logged = |line: &str| {
        p.log()
            .lines()
            .any(|l| l.contains(" INFO ") && l.contains(line) && l.contains("generation=2"))
    };
    assert!(
        eventually(10, || expected.iter().all(|l| logged(l))),
        "expected {expected:?} in the log:\n{}",
        p.log()
    );
    // One line per change, and nothing else changed.
    let changes = p
        .log()
        .lines()
        .filter_map(|l| {
            l.split_once("scopegate::edge::reload: ")
                .map(|(_, m)| m.to_string())
        })
        .filter(|m| {
            ["+ route ", "- route ", "widened ", "narrowed ", "changed "]
                .iter()
                .any(|k| m.starts_with(k))
        })
        .count();
    assert_eq!(changes, expected.len(), "{}", p.log());
    assert_eq!(p.get("/contacts", Some(&t)).status, 403);
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0);
}

#[test]
fn sighup_reloads() {
    let upstream = start_echo("a");
    let (port, admin) = (free_port(), free_port());
    let mut p = Proxy::start(&variant(port, admin, upstream, "read:contacts"), port);
    let pid = p.child().id().to_string();
    assert!(eventually(5, || http_get(admin_addr(admin), "/readyz")
        .status
        == 200));
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    assert!(eventually(10, || generation(admin) == 2.0), "{}", p.log());
    assert_eq!(
        p.get("/health", None).status,
        200,
        "still serving after SIGHUP"
    );
}

#[test]
fn metrics_count_exactly_and_stay_bounded() {
    let upstream = start_echo("a");
    let (port, admin) = (free_port(), free_port());
    let p = Proxy::start(&variant(port, admin, upstream, "read:contacts"), port);
    let reader = token("read:contacts");
    let writer = token("write:contacts");
    let sends: Vec<(&str, Box<dyn Fn() -> Response>, usize, &str)> = vec![
        (
            "GET /contacts",
            Box::new(|| p.get("/contacts", Some(&reader))),
            7,
            "allowed",
        ),
        (
            "GET /contacts",
            Box::new(|| p.get("/contacts", Some(&writer))),
            5,
            "forbidden",
        ),
        (
            "GET /health",
            Box::new(|| p.get("/health", None)),
            3,
            "public",
        ),
        (
            "GET /contacts",
            Box::new(|| p.get("/contacts", None)),
            4,
            "unauthenticated",
        ),
        (
            "none",
            Box::new(|| p.get("/nowhere", None)),
            2,
            "unauthenticated",
        ),
        (
            "none",
            Box::new(|| p.get("/nowhere", Some(&reader))),
            6,
            "not_found",
        ),
        (
            "none",
            Box::new(|| p.request("PATCH", "/contacts", Some(&reader), "")),
            2,
            "method_not_allowed",
        ),
        ("none", Box::new(|| p.get("/a%2fb", None)), 3, "bad_request"),
    ];
    let series = |route: &str, decision: &str| {
        format!("scopegate_requests_total{{decision=\"{decision}\",route=\"{route}\"}}")
    };
    let before = metrics_text(admin);
    for (_, send, n, _) in &sends {
        for _ in 0..*n {
            send();
        }
    }
    let total: usize = sends.iter().map(|s| s.2).sum();
    let count = |t: &str| {
        metric(
            t,
            "scopegate_request_duration_seconds_count{route=\"GET /contacts\"}",
        )
    };
    assert!(
        eventually(5, || {
            let after = metrics_text(admin);
            sends.iter().all(|(route, _, n, decision)| {
                metric(&after, &series(route, decision)) - metric(&before, &series(route, decision))
                    == *n as f64
            })
        }),
        "counters did not move by exactly the requests sent ({total})\n{}",
        metrics_text(admin)
    );
    let after = metrics_text(admin);
    assert_eq!(
        count(&after) - count(&before),
        16.0,
        "7 allowed, 5 forbidden, 4 unauthenticated"
    );
    assert_eq!(
        metric(
            &after,
            "scopegate_token_rejections_total{reason=\"missing\"}"
        ),
        6.0
    );
    assert_eq!(
        metric(
            &after,
            "scopegate_upstream_responses_total{class=\"2xx\",upstream=\"contacts\"}"
        ),
        10.0
    );

    // 200 random paths: no new series.
    let lines = |t: &str| t.lines().filter(|l| !l.starts_with('#')).count();
    let n_before = lines(&after);
    for i in 0..200 {
        let path = format!("/random-{i}-{}/x{}", i * 7919 % 1000, i);
        assert_eq!(p.get(&path, Some(&reader)).status, 404);
        assert_eq!(p.get(&path, None).status, 401);
    }
    assert_eq!(
        lines(&metrics_text(admin)),
        n_before,
        "request paths must never become label values"
    );

    // One access-log line per request, with route and decision, never the token.
    // Written by the access-log thread: wait for the line, not for time.
    assert!(
        eventually(10, || p.log().contains("decision=\"forbidden\"")),
        "{}",
        p.log()
    );
    let log = p.log();
    assert!(!log.contains(&reader) && !log.contains(&writer));
}

#[test]
fn sigterm_lets_a_request_in_flight_finish() {
    let upstream = start_echo("a");
    let (port, admin) = (free_port(), free_port());
    let text = variant(port, admin, upstream, "read:contacts")
        .replace("read_timeout_ms = 500", "read_timeout_ms = 5000");
    let mut p = Proxy::start(&text, port);
    let t = token("");
    let addr = p.addr;
    let slow = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.send(
            format!("GET /slow HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\n\r\n")
                .as_bytes(),
        )
    });
    std::thread::sleep(Duration::from_millis(400));
    let pid = p.child().id().to_string();
    let sent = std::time::Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200, "the slow request must complete");
    // The process exits 0 once it is done, well before the 2 s grace plus slack.
    let status = loop {
        if let Some(s) = p.child().try_wait().unwrap() {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "scopegate did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}\n{}", p.log());
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "no longer accepting"
    );
}

#[test]
fn listen_threads_and_connection_limits_wait_for_a_restart_and_say_so() {
    let upstream = start_echo("a");
    let (port, admin) = (free_port(), free_port());
    let p = Proxy::start(&variant(port, admin, upstream, "read:contacts"), port);
    let text = std::fs::read_to_string(p.config_path()).unwrap();
    let other = free_port();
    let moved = text
        .replacen(
            &format!("listen = \"127.0.0.1:{port}\""),
            &format!("listen = \"127.0.0.1:{other}\""),
            1,
        )
        .replacen(
            "threads = 1",
            "threads = 2\nheader_timeout_seconds = 7\nmax_connections = 77",
            1,
        );
    write_atomic(&p.config_path(), &moved);
    assert!(eventually(10, || generation(admin) == 2.0), "{}", p.log());
    assert_eq!(
        p.get("/health", None).status,
        200,
        "still on the old address"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", other)).is_err(),
        "not yet on the new one"
    );
    let log = p.log();
    for setting in [
        "server.listen",
        "server.threads",
        "server.header_timeout_seconds",
        "server.max_connections",
    ] {
        assert!(log.contains(setting), "{setting} not named: {log}");
    }
    assert!(
        log.contains("this setting applies at the next restart"),
        "{log}"
    );
}

#[test]
fn upstream_failures_are_counted_as_errors_of_allowed_requests() {
    let (port, admin) = (free_port(), free_port());
    let p = Proxy::start(
        &config_full(port, Some(admin), &[dead_addr()], &file_issuer(), ""),
        port,
    );
    for _ in 0..3 {
        assert_eq!(
            p.get("/contacts", Some(&token("read:contacts"))).status,
            502
        );
    }
    let counted = || {
        let t = metrics_text(admin);
        metric(
            &t,
            "scopegate_upstream_responses_total{class=\"error\",upstream=\"contacts\"}",
        ) == 3.0
            && metric(
                &t,
                "scopegate_requests_total{decision=\"allowed\",route=\"GET /contacts\"}",
            ) == 3.0
    };
    assert!(eventually(5, counted), "{}", metrics_text(admin));
}

#[test]
fn the_access_log_is_json_text_or_off() {
    let upstream = start_echo("a");
    for (format, port) in [("json", free_port()), ("off", free_port())] {
        let text = config(port, &[upstream], "").replacen(
            "threads = 1\n",
            &format!("threads = 1\naccess_log = \"{format}\"\n"),
            1,
        );
        let p = Proxy::start(&text, port);
        let reader = token("read:contacts");
        assert_eq!(
            p.get("/public/../contacts//7?secret=1", Some(&reader))
                .status,
            200
        );
        assert_eq!(p.get("/contacts", None).status, 401);
        assert_eq!(
            p.request("DELETE", "/contacts/7", Some(&reader), "").status,
            403
        );
        if format == "off" {
            // Nothing to wait for: a JSON or text line would show the route.
            assert_eq!(p.get("/health", None).status, 200);
            assert!(!p.log().contains("/contacts"), "{}", p.log());
            continue;
        }
        let json_lines = || -> Vec<serde_json::Value> {
            p.log()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v.get("decision").is_some())
                .collect()
        };
        assert!(eventually(10, || json_lines().len() >= 3), "{}", p.log());
        let lines = json_lines();
        let allowed = &lines[0];
        let keys: Vec<&str> = allowed
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "ts",
                "method",
                "host",
                "path",
                "route",
                "decision",
                "status",
                "upstream",
                "latency_us",
                "sub",
                "client"
            ]
        );
        assert_eq!(
            allowed["client"], "127.0.0.1",
            "the peer: no trusted proxies"
        );
        assert_eq!(allowed["path"], "/contacts/7", "normalized, no query");
        assert_eq!(allowed["route"], "GET /contacts/{id}");
        assert_eq!(allowed["upstream"], "contacts");
        assert_eq!(allowed["sub"], "user-1");
        assert!(allowed["ts"].as_str().unwrap().ends_with('Z'));
        let missing = &lines[1];
        assert_eq!(
            (missing["status"].as_u64(), missing["reason"].as_str()),
            (Some(401), Some("missing"))
        );
        assert_eq!(missing["sub"], serde_json::Value::Null);
        assert_eq!(missing["upstream"], serde_json::Value::Null);
        let forbidden = &lines[2];
        assert_eq!(forbidden["reason"], "insufficient_scope");
        assert_eq!(
            forbidden["sub"], "user-1",
            "a valid token that lacks a scope still names its subject"
        );
        assert!(!p.log().contains(&reader));
    }
}

/// SPEC "Admin endpoints and metrics": "At least these families", `scopegate_jwks_refreshes_total`
/// among them. With keys from a `jwks_file` nothing is ever fetched; the family is there anyway,
/// each issuer's series at 0.
#[test]
fn the_jwks_refresh_family_is_exposed_when_keys_come_from_a_file() {
    let (port, admin) = (free_port(), free_port());
    let _p = Proxy::start(
        &variant(port, admin, start_echo("a"), "read:contacts"),
        port,
    );
    let text = metrics_text(admin);
    for result in ["ok", "error"] {
        let series =
            format!("scopegate_jwks_refreshes_total{{issuer=\"{ISS}\",result=\"{result}\"}} 0");
        assert!(
            text.lines().any(|l| l == series),
            "no {series} in /metrics:\n{}",
            text.lines()
                .filter(|l| l.contains("jwks"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// An issuer a reload removes takes its `scopegate_jwks_refreshes_total` series along; the
/// issuers kept keep theirs.
#[test]
fn a_reload_that_removes_an_issuer_removes_its_jwks_series() {
    let (port, admin) = (free_port(), free_port());
    let upstream = start_echo("a");
    let second = "https://second-idp.test/";
    let two = format!("{}[[issuers]]\nissuer = \"{second}\"\naudiences = [\"{AUD}\"]\njwks_file = \"jwks.json\"\n", file_issuer());
    let p = Proxy::start(&config_full(port, Some(admin), &[upstream], &two, ""), port);
    let series = |issuer: &str| {
        format!("scopegate_jwks_refreshes_total{{issuer=\"{issuer}\",result=\"ok\"}} 0")
    };
    let has = |text: &str, issuer: &str| text.lines().any(|l| l == series(issuer));
    let text = metrics_text(admin);
    assert!(has(&text, ISS) && has(&text, second), "{text}");
    write_atomic(
        &p.config_path(),
        &config_full(port, Some(admin), &[upstream], &file_issuer(), ""),
    );
    assert!(eventually(10, || generation(admin) == 2.0), "{}", p.log());
    let text = metrics_text(admin);
    assert!(
        has(&text, ISS),
        "the kept issuer's series went too:\n{text}"
    );
    assert!(
        !text.contains(second),
        "the removed issuer's series stayed:\n{text}"
    );
}

/// SPEC: the access log has "one line per request", and `/api/refusals` holds "every 4xx
/// scopegate decided". A first header over 64 KiB is answered 431 before anything of it is
/// parsed; it is counted, logged and listed all the same (no method, host, path or route).
#[test]
fn a_431_for_a_header_never_parsed_is_counted_logged_and_listed() {
    let (port, admin) = (free_port(), free_port());
    let p = Proxy::start(
        &variant(port, admin, start_echo("a"), "read:contacts"),
        port,
    );
    let big = "x".repeat(70 * 1024);
    let r = p.send(&format!(
        "GET /contacts HTTP/1.1\r\nHost: api.test\r\nX-Big: {big}\r\n\r\n"
    ));
    assert_eq!(r.status, 431);
    let refused = || {
        let api = http_get(admin_addr(admin), "/api/refusals").json();
        api["refusals"]
            .as_array()
            .is_some_and(|rows| rows.iter().any(|row| row["status"] == 431))
    };
    assert!(eventually(10, refused), "no 431 among the refusals");
    let series = "scopegate_requests_total{decision=\"bad_request\",route=\"none\"}";
    assert!(
        eventually(10, || metric(&metrics_text(admin), series) >= 1.0),
        "{}",
        metrics_text(admin)
    );
    assert!(
        eventually(10, || p.log().lines().any(|l| l.contains(" status=431 "))),
        "no access-log line for the 431:\n{}",
        p.log()
    );
    // Timed from the decision to the answer sent, as every request is (it was made after).
    let log = p.log();
    let line = log.lines().find(|l| l.contains(" status=431 ")).unwrap();
    assert!(
        !line.contains(" latency_us=0 ") && line.contains(" latency_us="),
        "{line}"
    );
}

//! Hostile clients and hostile files, against the real binary: slow headers, idle keep-alive,
//! connection floods, underscore spoofing through a real WSGI backend, websocket upgrades,
//! a FIFO at the config path.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// Raise this test process's open-file limit to its hard maximum (floods need thousands).
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn limits_config(
    port: u16,
    admin: u16,
    upstream: std::net::SocketAddr,
    server_extra: &str,
) -> String {
    config_full(port, Some(admin), &[upstream], &file_issuer(), "").replacen(
        "threads = 1\n",
        &format!("threads = 1\n{server_extra}\n"),
        1,
    )
}

/// True once the peer has closed the connection (EOF or reset), waiting at most `secs`.
fn closed_by_peer(s: &mut TcpStream, secs: u64) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(secs))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // e.g. a 408 before the close
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn slow_header_floods_cost_bounded_memory_and_normal_clients_are_served() {
    assert!(raise_fd_limit() >= 6000, "this test needs 6,000 open files");
    let upstream = start_echo("a");
    let (port, admin) = (free_port(), free_port());
    let mut p = Proxy::start(
        &limits_config(port, admin, upstream, "header_timeout_seconds = 3"),
        port,
    );
    let pid = p.child().id();
    assert_eq!(p.get("/health", None).status, 200);
    let baseline = rss_kb(pid);
    let mut slow: Vec<TcpStream> = (0..5000)
        .map(|_| {
            let mut s = TcpStream::connect(p.addr).unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\nHost: api.test\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    // Wait until the proxy holds them all (its open-file count), then look at a normal client.
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert!(eventually(30, || fds() >= 5000), "{} descriptors", fds());
    let started = Instant::now();
    assert_eq!(p.get("/health", None).status, 200);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "a normal client waited {took:?}"
    );
    let flooded = rss_kb(pid);
    eprintln!("RSS: baseline {baseline} kB, with 5,000 slow headers {flooded} kB");
    assert!(
        flooded < baseline + 100 * 1024,
        "RSS {flooded} kB with 5,000 slow headers (baseline {baseline} kB)"
    );
    // Every slow connection is closed once its header is late; RSS goes back near the baseline.
    for s in slow.iter_mut().step_by(97) {
        assert!(closed_by_peer(s, 20), "a slow header was still open");
    }
    drop(slow);
    assert!(eventually(30, || fds() < 200), "{} descriptors", fds());
    assert!(
        eventually(30, || rss_kb(pid) < baseline + 30 * 1024),
        "RSS {} kB after the flood (baseline {baseline} kB)",
        rss_kb(pid)
    );
    eprintln!("RSS after: {} kB", rss_kb(pid));
}

#[test]
fn an_idle_keep_alive_connection_is_closed_on_time() {
    let upstream = start_echo("a");
    let (port, admin) = (free_port(), free_port());
    let p = Proxy::start(
        &limits_config(
            port,
            admin,
            upstream,
            "keepalive_timeout_seconds = 1\nheader_timeout_seconds = 30",
        ),
        port,
    );
    let mut c = Client::connect(p.addr);
    assert_eq!(
        c.send(b"GET /health HTTP/1.1\r\nHost: api.test\r\n\r\n")
            .status,
        200
    );
    let idle = Instant::now();
    // Still usable right after; then closed after about a second of idling.
    let mut s = TcpStream::connect(p.addr).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .unwrap();
    let mut raw = Client::from_stream(s);
    assert_eq!(raw.read_response(false).status, 200);
    let mut stream = raw.into_stream();
    assert!(closed_by_peer(&mut stream, 10), "still open after 10 s");
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before the timeout"
    );
}

#[test]
fn connections_beyond_the_limit_are_closed_and_the_admin_port_still_answers() {
    let upstream = start_echo("a");
    let (port, admin) = (free_port(), free_port());
    let p = Proxy::start(
        &limits_config(
            port,
            admin,
            upstream,
            "max_connections = 20\nheader_timeout_seconds = 60",
        ),
        port,
    );
    // 20 keep-alive clients, each served once (so each is counted before the next test).
    let mut held: Vec<Client> = (0..20)
        .map(|_| {
            let mut c = Client::connect(p.addr);
            assert_eq!(
                c.send(b"GET /health HTTP/1.1\r\nHost: api.test\r\n\r\n")
                    .status,
                200
            );
            c
        })
        .collect();
    let mut extra = TcpStream::connect(p.addr).unwrap();
    extra
        .write_all(b"GET /health HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .unwrap();
    assert!(
        closed_by_peer(&mut extra, 10),
        "the 21st connection was served"
    );
    assert_eq!(http_get(admin_addr(admin), "/healthz").status, 200);
    assert_eq!(http_get(admin_addr(admin), "/metrics").status, 200);
    // The held ones still work; once one goes, a new client gets in.
    assert_eq!(
        held[0]
            .send(b"GET /health HTTP/1.1\r\nHost: api.test\r\n\r\n")
            .status,
        200
    );
    held.pop();
    assert!(eventually(10, || {
        let mut s = TcpStream::connect(p.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: api.test\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).is_ok() && &buf == b"HTTP/1.1 200"
    }));
}

/// A real WSGI backend (Python's wsgiref) that answers with the identity it would trust.
fn wsgi_backend() -> (ProcessGroup, std::net::SocketAddr) {
    let script = r#"
import json, sys
from wsgiref.simple_server import make_server, WSGIRequestHandler
class Quiet(WSGIRequestHandler):
    def log_message(self, *a): pass
def app(environ, start):
    body = json.dumps({"subject": environ.get("HTTP_X_AUTH_SUBJECT"), "scopes": environ.get("HTTP_X_AUTH_SCOPES")}).encode()
    start("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
srv = make_server("127.0.0.1", 0, app, handler_class=Quiet)
print(srv.server_port, flush=True)
srv.serve_forever()
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdout(std::process::Stdio::piped())
        .spawn_group()
        .expect("python3 runs the WSGI backend");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.take_stdout().unwrap()),
        &mut line,
    )
    .unwrap();
    let port: u16 = line.trim().parse().unwrap();
    (child, format!("127.0.0.1:{port}").parse().unwrap())
}

#[test]
fn underscored_headers_cannot_spoof_identity_through_a_wsgi_backend() {
    let (_wsgi, addr) = wsgi_backend();
    let port = free_port();
    let p = Proxy::start(
        &config(
            port,
            &[addr],
            "[forward]\nclaims = { sub = \"X-Auth-Subject\", scope = \"X-Auth-Scopes\" }\n",
        ),
        port,
    );
    let spoof = "X_Auth_Subject: root\r\nX_Auth_Scopes: admin\r\nx_auth_subject: root\r\n";
    // Public route: no identity at all reaches the backend.
    let r = p.request("GET", "/health", None, spoof);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        serde_json::json!({"subject": null, "scopes": null})
    );
    // Authenticated: exactly the token's identity, nothing appended.
    let r = p.request("GET", "/contacts", Some(&token("read:contacts")), spoof);
    assert_eq!(
        r.json(),
        serde_json::json!({"subject": "user-1", "scopes": "read:contacts"})
    );
}

/// A raw upstream that answers every request with a 101 carrying `accept`.
fn switching_upstream(accept: &'static str) -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                if req.contains("upgrade: websocket") {
                    let _ = s.write_all(format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").as_bytes());
                    let _ = s.write_all(b"tunnel-bytes");
                } else {
                    let body = format!(
                        "{{\"saw_upgrade\": {}, \"saw_connection\": {}}}",
                        req.contains("\r\nupgrade:"),
                        req.contains("\r\nconnection:")
                    );
                    let _ = s.write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            });
        }
    });
    addr
}

fn ws_config(port: u16, upstream: std::net::SocketAddr) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nthreads = 1\n[[issuers]]\nissuer = \"{ISS}\"\naudiences = [\"{AUD}\"]\njwks_file = \"jwks.json\"\n[upstreams.u]\nservers = [\"{upstream}\"]\n\
         [[routes]]\nmethods = [\"GET\"]\npath = \"/ws\"\npublic = true\nwebsocket = true\n[[routes]]\nmethods = [\"GET\"]\npath = \"/plain\"\npublic = true\n"
    )
}

const WS_REQUEST: &str = "HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

#[test]
fn websocket_upgrades_only_on_websocket_routes_and_only_with_the_right_accept() {
    // RFC 6455 §1.3's example key and accept.
    let good = switching_upstream("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    let port = free_port();
    let p = Proxy::start(&ws_config(port, good), port);
    let mut c = TcpStream::connect(p.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(format!("GET /ws {WS_REQUEST}").as_bytes())
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("tunnel-bytes") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // Other routes: the Upgrade never reaches the upstream, nor a `Connection: Upgrade` (SPEC:
    // `Connection` is never forwarded; Pingora writes one for a websocket handshake).
    let r = p.send(&format!("GET /plain {WS_REQUEST}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["saw_upgrade"], false);
    assert_eq!(r.json()["saw_connection"], false, "{}", r.json());

    let bad = switching_upstream("bm90IHRoZSByaWdodCBhY2NlcHQ=");
    let port = free_port();
    let p = Proxy::start(&ws_config(port, bad), port);
    let mut c = TcpStream::connect(p.addr).unwrap();
    c.write_all(format!("GET /ws {WS_REQUEST}").as_bytes())
        .unwrap();
    let mut client = Client::from_stream(c);
    assert_eq!(client.read_response(false).status, 502);
    let mut stream = client.into_stream();
    assert!(
        closed_by_peer(&mut stream, 10),
        "the connection stayed open after a bad 101"
    );
}

#[test]
fn hidden_dot_segments_and_duplicate_claims_are_refused() {
    let p = Proxy::standard("");
    assert_eq!(p.get("/public/..%3B/contacts", None).status, 400);
    assert_eq!(p.get("/public/.%3bx/../contacts", None).status, 400);
    let header = serde_json::json!({"alg": "RS256", "kid": KID});
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(key().pem.as_bytes()).unwrap();
    let c = claims("read:contacts");
    // The same token with `sub` twice: last-wins would make it root.
    let payload = c.to_string().replacen('{', "{\"sub\":\"root\",", 1);
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.as_bytes())
    );
    let sig =
        jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::RS256).unwrap();
    let r = p.get("/contacts", Some(&format!("{input}.{sig}")));
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json()["error_description"],
        "the token payload is not valid"
    );
}

#[test]
fn a_fifo_at_the_config_path_fails_a_reload_and_blocks_nothing() {
    let upstream = start_echo("a");
    let (port, admin) = (free_port(), free_port());
    let mut p = Proxy::start(
        &config_full(port, Some(admin), &[upstream], &file_issuer(), ""),
        port,
    );
    let pid = p.child().id();
    let path = p.config_path();
    let good = std::fs::read_to_string(&path).unwrap();
    let errors = || {
        metric(
            &String::from_utf8_lossy(&http_get(admin_addr(admin), "/metrics").body),
            "scopegate_config_reloads_total{result=\"error\"}",
        )
    };
    // The watcher is in place (its readiness is part of /readyz) before the file is replaced.
    assert!(
        eventually(30, || http_get(admin_addr(admin), "/readyz").status == 200),
        "{}",
        p.log()
    );
    let fifo = path.with_extension("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    std::fs::rename(&fifo, &path).unwrap();
    // The watcher normally sees the rename; in about one full-suite run in four it did not
    // within 30 s (open: see the closing note of issue 18). SIGHUP is the other way a reload is
    // asked for, and what is tested here is the reload of a FIFO, so ask for it that way too.
    if !eventually(10, || errors() >= 1.0) {
        // SAFETY: a signal to the proxy's own pid.
        unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    }
    assert!(eventually(30, || errors() >= 1.0), "{}", p.log());
    assert!(p.log().contains("not a regular file"), "{}", p.log());
    assert_eq!(p.get("/health", None).status, 200);
    // A valid edit afterwards is picked up: the watcher is not stuck in open().
    let edited = good.replacen("path = \"/health\"", "path = \"/healthy\"", 1);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, edited).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert!(
        eventually(10, || p.get("/healthy", None).status == 200),
        "{}",
        p.log()
    );
    // The same for a jwks_file turned into a FIFO.
    let jwks = p.dir.path().join("jwks.json");
    std::fs::remove_file(&jwks).unwrap();
    let c = std::ffi::CString::new(jwks.to_str().unwrap()).unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let before = errors();
    std::fs::write(&tmp, &good).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert!(eventually(10, || errors() > before), "{}", p.log());
    assert_eq!(
        p.get("/healthy", None).status,
        200,
        "the running config stays"
    );
}

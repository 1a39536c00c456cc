//! `scopegate run --upgrade`: a new process takes over the listening sockets of the running one
//! (Pingora's graceful upgrade), under load, and no request fails.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

fn spawn(dir: &std::path::Path, upgrade: bool, log: &str) -> ProcessGroup {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scopegate"));
    cmd.args(["run", "--config"])
        .arg(dir.join("scopegate.toml"));
    if upgrade {
        cmd.arg("--upgrade");
    }
    cmd.env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(log)).unwrap())
        .spawn_group()
        .unwrap()
}

/// One keep-alive client: a request fails only if it gets no 200. A request on a reused
/// connection that the server closed before any byte of the answer is sent again on a new
/// connection, as HTTP clients do for idempotent requests (RFC 9112 §9.3.1).
fn client(
    addr: SocketAddr,
    token: String,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
) {
    let request = format!(
        "GET /contacts HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    let mut conn: Option<Client> = None;
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) && sent < 100_000 {
        sent += 1;
        let reused = conn.is_some();
        let mut c = conn.take().unwrap_or_else(|| Client::connect(addr));
        let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let r = c.send(request.as_bytes());
            (
                r.status,
                r.header("connection").map(str::to_ascii_lowercase),
            )
        }));
        let answer = match answer {
            Err(_) if reused => {
                let mut fresh = Client::connect(addr);
                let r = fresh.send(request.as_bytes());
                c = fresh;
                (
                    r.status,
                    r.header("connection").map(str::to_ascii_lowercase),
                )
            }
            Err(_) => (0, None),
            Ok(a) => a,
        };
        if answer.0 == 200 {
            ok.fetch_add(1, Ordering::Relaxed);
        } else {
            failed.fetch_add(1, Ordering::Relaxed);
        }
        if answer.1.as_deref() != Some("close") {
            conn = Some(c);
        }
    }
}

#[test]
fn a_new_process_takes_over_the_sockets_under_load_and_no_request_fails() {
    let upstream = start_echo("a");
    let (port, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), &key().jwks).unwrap();
    let sock = dir.path().join("upgrade.sock");
    let config = config_full(port, Some(admin), &[upstream], &file_issuer(), "").replacen(
        "threads = 1\n",
        &format!("threads = 1\nupgrade_socket = \"{}\"\n", sock.display()),
        1,
    );
    std::fs::write(dir.path().join("scopegate.toml"), config).unwrap();
    let mut old = spawn(dir.path(), false, "old.log");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(eventually(20, || TcpStream::connect(addr).is_ok()
        && TcpStream::connect(admin_addr(admin)).is_ok()));

    let (stop, ok, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (t, s, o, f) = (
                token("read:contacts"),
                stop.clone(),
                ok.clone(),
                failed.clone(),
            );
            std::thread::spawn(move || client(addr, t, s, o, f))
        })
        .collect();
    assert!(eventually(10, || ok.load(Ordering::Relaxed) > 200));

    // The new process waits for the sockets; the old one sends them on SIGQUIT.
    let mut new = spawn(dir.path(), true, "new.log");
    assert!(
        eventually(20, || sock.exists()),
        "the new process never listened on the upgrade socket"
    );
    let served_before = ok.load(Ordering::Relaxed);
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(old.id() as i32, libc::SIGQUIT) };
    let status = loop {
        if let Some(s) = old.try_wait().unwrap() {
            break s;
        }
        assert!(
            new.try_wait().unwrap().is_none(),
            "the new process exited: {}",
            std::fs::read_to_string(dir.path().join("new.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "old process: {status}");
    // The new process serves alone now.
    let after_exit = ok.load(Ordering::Relaxed);
    assert!(eventually(10, || ok.load(Ordering::Relaxed) > after_exit + 200));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let old_log = std::fs::read_to_string(dir.path().join("old.log")).unwrap_or_default();
    assert!(old_log.contains("listener sockets sent"), "{old_log}");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests; old log: {old_log}"
    );
    assert!(ok.load(Ordering::Relaxed) > served_before + 200);
    // The admin listener moved too.
    let mut s = TcpStream::connect(admin_addr(admin)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
}

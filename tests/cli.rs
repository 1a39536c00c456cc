//! The command line: `token`, `explain`, `keygen`, and `demo` end to end.

mod common;

use std::process::{Command, Stdio};

use common::*;

fn scopegate(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn token_and_explain_agree_with_the_example_config() {
    let (ok, token) = scopegate(&[
        "token",
        "--key",
        "config/dev-signing-key.pem",
        "--kid",
        "dev-key",
        "--scope",
        "read:contacts",
    ]);
    assert!(ok, "{token}");
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3);

    let explain = |method: &str, target: &str, extra: &[&str]| {
        let mut args = vec![
            "explain",
            "--config",
            "config/scopegate.toml",
            method,
            target,
        ];
        args.extend_from_slice(extra);
        let (ok, out) = scopegate(&args);
        assert!(ok, "{out}");
        out.lines()
            .find(|l| l.starts_with("decision:"))
            .unwrap_or_default()
            .to_string()
    };
    assert!(explain("GET", "/contacts/1", &["--token", token]).starts_with("decision: 200"));
    assert!(explain("DELETE", "/contacts/1", &["--token", token]).starts_with("decision: 403"));
    assert!(
        explain("DELETE", "/contacts/1", &["--scopes", "delete:contacts"])
            .starts_with("decision: 200")
    );
    assert!(explain("GET", "/health/../contacts", &[]).starts_with("decision: 401"));
    assert!(explain("GET", "/a%2fb", &[]).starts_with("decision: 400"));
    assert!(explain("PATCH", "/contacts", &["--token", token]).starts_with("decision: 405"));
    assert!(explain("GET", "/nope", &["--token", token]).starts_with("decision: 404"));
    assert!(explain("GET", "/contacts", &["--token", "a.b.c"])
        .starts_with("decision: 401 invalid token (malformed)"));
}

#[test]
fn keygen_writes_a_key_the_proxy_trusts() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    let jwks = dir.path().join("jwks.json");
    let (ok, out) = scopegate(&[
        "keygen",
        "--kid",
        "mine",
        "--key-out",
        key.to_str().unwrap(),
        "--jwks-out",
        jwks.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let upstream = start_echo("a");
    let port = free_port();
    std::fs::write(
        dir.path().join("scopegate.toml"),
        config(port, &[upstream], ""),
    )
    .unwrap();
    let p = Proxy::start_in(dir, port);
    let (_, t) = scopegate(&[
        "token",
        "--key",
        key.to_str().unwrap(),
        "--kid",
        "mine",
        "--scope",
        "read:contacts",
        "--iss",
        ISS,
        "--aud",
        AUD,
    ]);
    assert_eq!(p.get("/contacts", Some(t.trim())).status, 200);
}

#[test]
fn the_demo_runs_with_no_setup_and_its_curl_lines_are_true() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args(["demo", "--listen", &listen])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn_group()
        .unwrap();
    // The curl lines are printed before the proxy starts; read up to the last one.
    let mut out = std::io::BufReader::new(child.take_stdout().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut l = String::new();
        if std::io::BufRead::read_line(&mut out, &mut l).unwrap() == 0
            || l.contains("mint your own")
        {
            break;
        }
        lines.push(l);
    }
    let addr = listen.parse().unwrap();
    let started = eventually(20, || std::net::TcpStream::connect(addr).is_ok());
    let tokens: Vec<String> = lines
        .iter()
        .filter_map(|l| l.split("Bearer ").nth(1))
        .map(|t| t.trim().trim_end_matches('"').to_string())
        .collect();
    assert!(started, "the demo did not listen on {listen}");
    assert_eq!(tokens.len(), 3, "{lines:?}");
    let (reader, admin) = (&tokens[0], &tokens[2]);
    let send = |raw: String| Client::connect(addr).send(raw.as_bytes());
    assert_eq!(
        send(format!(
            "GET /contacts HTTP/1.1\r\nHost: d\r\nAuthorization: Bearer {reader}\r\n\r\n"
        ))
        .status,
        200
    );
    assert_eq!(
        send("GET /contacts HTTP/1.1\r\nHost: d\r\n\r\n".into()).status,
        401
    );
    assert_eq!(
        send(format!(
            "DELETE /contacts/1 HTTP/1.1\r\nHost: d\r\nAuthorization: Bearer {reader}\r\n\r\n"
        ))
        .status,
        403
    );
    assert_eq!(
        send(format!(
            "DELETE /contacts/1 HTTP/1.1\r\nHost: d\r\nAuthorization: Bearer {admin}\r\n\r\n"
        ))
        .status,
        200
    );
    assert_eq!(
        send("GET /health HTTP/1.1\r\nHost: d\r\n\r\n".into()).status,
        200
    );
}

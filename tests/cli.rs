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

/// Exit code, stdout and stderr of a run of the binary.
fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A copy of the shipped example config, with `from` replaced by `to`, beside its jwks.json.
fn edited_example(dir: &std::path::Path, name: &str, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string("config/scopegate.toml").unwrap();
    assert!(text.contains(from), "{from:?} is not in the example config");
    std::fs::copy("config/jwks.json", dir.join("jwks.json")).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn the_example_policy_tests_pass_on_the_shipped_config() {
    let cases = std::fs::read_to_string("config/scopegate.cases.toml").unwrap();
    let n = cases.matches("[[case]]").count();
    let (code, out, err) = run(&[
        "test",
        "--config",
        "config/scopegate.toml",
        "config/scopegate.cases.toml",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, format!("{n} passed, 0 failed\n"));
}

#[test]
fn policy_tests_print_each_failing_case_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    // The one-word edit no other test notices: readers may now delete.
    let config = edited_example(
        dir.path(),
        "scopegate.toml",
        "scopes = [\"delete:contacts\"]",
        "scopes = [\"read:contacts\"]",
    );
    let cases = dir.path().join("cases.toml");
    std::fs::write(
        &cases,
        r#"
[[case]]
name = "readers read"
request = "GET /contacts/7"
token = { scopes = ["read:contacts"] }
expect = 200

[[case]]
name = "readers cannot delete"
request = "DELETE /contacts/7"
token = { scopes = ["read:contacts"], sub = "u1" }
expect = 403

[[case]]
name = "a wrong status is said as SPEC says it"
request = "GET /contacts"
token = { scopes = ["write:contacts"] }
expect = 200
reason = "insufficient_scope"

[[case]]
name = "the reason counts too"
request = "GET /contacts"
token = { scopes = ["read:contacts"], audience = "https://other.example" }
expect = 401
reason = "expired"

[[case]]
name = "and the route"
request = "GET /health"
token = "none"
expect = 200
route = "GET /contacts"
"#,
    )
    .unwrap();
    let (code, out, err) = run(&["test", "--config", &config, cases.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        out,
        "FAIL readers cannot delete: expected 403, got 200 (route DELETE /contacts/{id}, decision allowed)\n\
         FAIL a wrong status is said as SPEC says it: expected 200, got 403 (route GET /contacts, decision forbidden)\n\
         FAIL the reason counts too: expected 401 (reason expired), got 401 (route GET /contacts, decision unauthenticated, reason wrong_audience)\n\
         FAIL and the route: expected 200 (route GET /contacts), got 200 (route GET /health, decision public)\n\
         1 passed, 4 failed\n"
    );
}

#[test]
fn policy_tests_exit_2_on_an_invalid_file_with_its_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.toml");
    let cases_path = cases.to_str().unwrap();
    let rows = [
        (
            "[[case]]\nname = \"a\"\nrequest = \"GET /contacts\"\ntoken = { scope = [\"x\"] }\nexpect = 200\n",
            "4:11: unknown field `scope`, expected one of `scopes`",
        ),
        (
            "[[case]]\nname = \"a\"\nrequest = \"GET /contacts\"\nexpect = 403\nreason = \"insuficient_scope\"\n",
            "5:10: case \"a\": reason \"insuficient_scope\" is not one scopegate gives; did you mean \"insufficient_scope\"?",
        ),
        (
            "[[case]]\nname = \"a\"\nrequest = \"GET /contacts\"\nexpect = 200\nroute = \"GET /contact\"\n",
            "did you mean \"GET /contacts\"?",
        ),
        ("[[cases]]\n", "1:3: unknown field `cases`, expected `case`"),
    ];
    for (text, want) in rows {
        std::fs::write(&cases, text).unwrap();
        let (code, out, err) = run(&["test", "--config", "config/scopegate.toml", cases_path]);
        assert_eq!(code, 2, "{text}: {out}{err}");
        assert!(
            err.starts_with(&format!("{cases_path}:")) && err.contains(want),
            "{text}: expected {want:?} in {err:?}"
        );
    }
    let broken = edited_example(dir.path(), "broken.toml", "realm", "relm");
    let (code, _, err) = run(&["test", "--config", &broken, "config/scopegate.cases.toml"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("broken.toml:13:1: unknown field `relm`"),
        "{err}"
    );
}

#[test]
fn diff_prints_what_a_change_opens_and_exits_by_it() {
    let dir = tempfile::tempdir().unwrap();
    let old = "config/scopegate.toml";
    let widened = edited_example(
        dir.path(),
        "widened.toml",
        "scopes = [\"delete:contacts\"]",
        "scopes = [\"read:contacts\"]",
    );
    let (code, out, err) = run(&["diff", old, &widened]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        out,
        "widened DELETE /contacts/{id}: scope delete:contacts removed\n\
         narrowed DELETE /contacts/{id}: scope read:contacts added\n"
    );
    let (code, out, _) = run(&["diff", &widened, old]);
    assert_eq!(code, 1);
    assert_eq!(
        out,
        "widened DELETE /contacts/{id}: scope read:contacts removed\n\
         narrowed DELETE /contacts/{id}: scope delete:contacts added\n"
    );

    // The same routes in another order, and comments: access unchanged.
    let text = std::fs::read_to_string(old).unwrap();
    let (head, routes) = text.split_once("[[routes]]").unwrap();
    let mut blocks: Vec<&str> = routes.split("[[routes]]").collect();
    blocks.reverse();
    let reordered = dir.path().join("reordered.toml");
    let blocks: Vec<String> = blocks
        .iter()
        .map(|b| format!("[[routes]]{}\n", b.trim_end()))
        .collect();
    std::fs::write(
        &reordered,
        format!("{head}# reordered\n{}", blocks.join("\n")),
    )
    .unwrap();
    let (code, out, err) = run(&["diff", old, reordered.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");

    let broken = edited_example(
        dir.path(),
        "broken.toml",
        "path = \"/health\"",
        "path = \"health\"",
    );
    let (code, out, err) = run(&["diff", old, &broken]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(
        err.contains("broken.toml:") && err.contains("must start with '/'"),
        "{err}"
    );
}

/// SPEC "Policy as code": the config is read with no network. An upstream named by a name that
/// does not resolve (`.invalid`, RFC 2606; a Kubernetes service name in CI) is checked for its
/// form only by every command that reads the config without serving it.
#[test]
fn commands_that_read_the_config_look_up_no_upstream_name() {
    let dir = tempfile::tempdir().unwrap();
    let from = "servers = [\"127.0.0.1:3000\"]";
    let config = edited_example(
        dir.path(),
        "scopegate.toml",
        from,
        "servers = [\"contacts.invalid:3000\"]",
    );
    let (code, out, err) = run(&["check", "--config", &config]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(&["test", "--config", &config, "config/scopegate.cases.toml"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(&["diff", "config/scopegate.toml", &config]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let (code, out, err) = run(&["explain", "GET", "/contacts", "--config", &config]);
    assert_eq!(code, 0, "{out}{err}");
    // A malformed one is still refused, with its place in the file.
    let config = edited_example(
        dir.path(),
        "bad.toml",
        from,
        "servers = [\"contacts.invalid\"]",
    );
    let (code, _, err) = run(&["check", "--config", &config]);
    assert_eq!(code, 1);
    assert!(
        err.contains("bad.toml:24:") && err.contains("is not a host:port"),
        "{err}"
    );
}

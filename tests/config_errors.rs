//! Bad config files: `scopegate check` exits 1 with `file:line:col: message`.

mod common;

use common::*;

const JWKS: &str = "jwks.json";

fn base(extra_server: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:8080"
{extra_server}
[[issuers]]
issuer = "https://issuer.test/"
audiences = ["https://contacts.test"]
jwks_file = "jwks.json"

[upstreams.contacts]
servers = ["127.0.0.1:3000"]
"#
    )
}

/// Expect `check` to fail at `line` (1-based) with a message containing `words`.
fn expect_error(text: &str, line: usize, words: &str) {
    let (ok, _out, err, path, _dir) = check(text, &[(JWKS, &key().jwks)]);
    assert!(!ok, "config should be rejected:\n{text}");
    let first = err.lines().next().unwrap_or_default().to_string();
    let prefix = format!("{}:{line}:", path_str(&path));
    assert!(
        first.starts_with(&prefix),
        "expected {prefix}<col>: ..., got {first:?}\n{text}"
    );
    let col = first[prefix.len()..].split(':').next().unwrap();
    assert!(
        col.parse::<usize>().is_ok_and(|c| c >= 1),
        "column in {first:?}"
    );
    assert!(first.contains(words), "expected {words:?} in {first:?}");
}

#[test]
fn a_good_config_prints_the_route_table() {
    let text = format!(
        "{}\n[[routes]]\nmethods = [\"GET\"]\npath = \"/contacts\"\nscopes = [\"read:contacts\"]\n",
        base("")
    );
    let (ok, out, err, _, _dir) = check(&text, &[(JWKS, &key().jwks)]);
    assert!(ok, "{err}");
    assert!(
        out.contains("GET") && out.contains("/contacts") && out.contains("read:contacts"),
        "{out}"
    );
}

#[test]
fn the_shipped_example_config_is_valid() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args(["check", "--config", "config/scopegate.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unknown_keys_are_errors() {
    expect_error(&base("lisen = \"x\"\n"), 3, "unknown field `lisen`");
    let text = format!("{}\n[[routes]]\npath = \"/a\"\nscope = [\"x\"]\n", base(""));
    expect_error(&text, 14, "unknown field `scope`");
}

#[test]
fn syntax_errors_point_at_the_spot() {
    expect_error("[server]\nlisten = \"127.0.0.1:8080\n", 2, "");
    expect_error("[server]\nlisten = 8080\n", 2, "");
}

#[test]
fn duplicate_routes_are_errors() {
    let text = format!(
        "{}\n[[routes]]\nmethods = [\"GET\"]\npath = \"/a\"\n\n[[routes]]\nmethods = [\"get\"]\npath = \"/a\"\n",
        base("")
    );
    expect_error(&text, 18, "duplicate route");
}

#[test]
fn a_route_naming_a_missing_upstream_is_an_error() {
    let text = format!(
        "{}\n[[routes]]\npath = \"/a\"\nupstream = \"billing\"\n",
        base("")
    );
    expect_error(&text, 14, "upstream \"billing\" is not defined");
}

#[test]
fn bad_path_templates_are_errors() {
    for (path, words) in [
        ("a/b", "must start with '/'"),
        ("/a/{*rest}/b", "last segment"),
        ("/a/x{id}", "whole segment"),
        ("/a/../b", "never match"),
    ] {
        let text = format!("{}\n[[routes]]\npath = \"{path}\"\n", base(""));
        expect_error(&text, 13, words);
    }
}

#[test]
fn issuers_need_exactly_one_key_source() {
    let none = "[server]\nlisten = \"127.0.0.1:8080\"\n\n[[issuers]]\nissuer = \"https://i.test/\"\naudiences = [\"a\"]\n";
    expect_error(none, 4, "no key source");
    let two = "[server]\nlisten = \"127.0.0.1:8080\"\n\n[[issuers]]\nissuer = \"https://i.test/\"\naudiences = [\"a\"]\njwks_file = \"jwks.json\"\njwks_url = \"http://127.0.0.1:1/jwks\"\n";
    expect_error(two, 4, "2 key sources");
}

#[test]
fn algorithm_lists_are_checked() {
    let with = |algs: &str| {
        format!("[server]\nlisten = \"127.0.0.1:8080\"\n\n[[issuers]]\nissuer = \"https://i.test/\"\naudiences = [\"a\"]\njwks_file = \"jwks.json\"\nalgorithms = {algs}\n")
    };
    expect_error(&with("[\"none\"]"), 8, "never accepted");
    expect_error(&with("[\"RS256\", \"HS256\"]"), 8, "shared secret");
    expect_error(&with("[\"XX999\"]"), 8, "unknown algorithm");
}

#[test]
fn other_semantic_errors() {
    let text = format!(
        "{}\n[[routes]]\npath = \"/a\"\npublic = true\nscopes = [\"x\"]\n",
        base("")
    );
    expect_error(&text, 12, "public route cannot require scopes");
    let text = format!(
        "{}\n[[routes]]\npath = \"/a\"\nscopes = [\"has space\"]\n",
        base("")
    );
    expect_error(&text, 12, "not a valid scope");
    expect_error("[server]\nlisten = \"nowhere\"\n", 2, "not an address");
    let missing_file = "[server]\nlisten = \"127.0.0.1:1\"\n\n[[issuers]]\nissuer = \"https://i.test/\"\naudiences = [\"a\"]\njwks_file = \"missing.json\"\n";
    expect_error(missing_file, 4, "cannot read jwks_file");
    let tls =
        "[server]\nlisten = \"127.0.0.1:1\"\ntls = { cert = \"nope.pem\", key = \"nope.key\" }\n";
    expect_error(tls, 3, "server.tls: cannot read");
    let not_pem =
        "[server]\nlisten = \"127.0.0.1:1\"\ntls = { cert = \"jwks.json\", key = \"jwks.json\" }\n";
    expect_error(not_pem, 3, "server.tls:");
}

/// The line of `text` holding `marker` (1-based).
fn line_of(text: &str, marker: &str) -> usize {
    text.lines().position(|l| l.contains(marker)).unwrap() + 1
}

#[test]
fn proof_of_possession_settings_are_checked() {
    let api = |pop: &str| {
        format!(
            "{}\n[apis.pay]\naudience = \"https://pay.test\"\n[apis.pay.proof_of_possession]\n{pop}\n[[apis.pay.routes]]\npath = \"/a\"\n",
            base("")
        )
    };
    let text = api("mechanism = \"jwt\"");
    expect_error(
        &text,
        line_of(&text, "\"jwt\""),
        "must be \"dpop\" (RFC 9449) or \"mtls\"",
    );
    let text = api("mechanism = \"dpop\"\ndpop_algorithms = [\"ES256\", \"HS256\"]");
    expect_error(
        &text,
        line_of(&text, "HS256"),
        "\"HS256\" is not an asymmetric JWS algorithm",
    );
    let text = api("mechanism = \"dpop\"\ndpop_max_age_seconds = 0");
    expect_error(&text, line_of(&text, "max_age"), "must be from 1 to 86400");
    // Certificate binding needs certificates: from the TLS handshake or a trusted proxy.
    let text = api("mechanism = \"mtls\"");
    expect_error(
        &text,
        line_of(&text, "\"mtls\""),
        "needs client certificates",
    );
    let tls = |extra: &str| {
        base(&format!(
            "tls = {{ cert = \"cert.pem\", key = \"key.pem\", {extra} }}"
        ))
    };
    let text = tls("client_certificates = \"require\"");
    expect_error(&text, line_of(&text, "tls ="), "needs client_ca");
    let text = tls("client_ca = \"ca.pem\"");
    expect_error(
        &text,
        line_of(&text, "tls ="),
        "only with client_certificates = \"require\"",
    );
}

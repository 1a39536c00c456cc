//! DPoP (RFC 9449) interoperability with real parties, no mocks: node-oidc-provider (npm), with
//! its dPoP feature and token-endpoint nonces on, issues a JWT access token bound to the
//! client's key (`cnf.jkt`); panva's oauth4webapi (npm) makes the proofs, handles the provider's
//! `use_dpop_nonce` and then scopegate's (401 + `DPoP-Nonce`, one retry with the nonce it
//! cached), and the real `scopegate` binary, which found the provider by OIDC discovery,
//! forwards the retried call to an echo upstream; the next call, with the nonce cached from
//! that answer, goes through at once. The same token with the `Bearer` scheme is a
//! 401 (no downgrade) and the accepted proof sent again is a 401 `invalid_dpop_proof` (replay).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

const AUDIENCE: &str = "https://contacts.test";

/// node-oidc-provider on 127.0.0.1:`port`, requiring DPoP nonces at its token endpoint.
fn start_provider(port: u16) -> ProcessGroup {
    start_oidc_provider(port, AUDIENCE, &["dpop-nonce"])
}

/// scopegate trusting the provider (keys by discovery), with one API on host 127.0.0.1 that
/// requires DPoP with nonces, in front of an echo upstream; the proxy and its admin port.
fn start_scopegate(issuer: &str) -> (Proxy, u16) {
    let (port, admin) = (free_port(), free_port());
    let api = format!(
        r#"
[apis.contacts]
audience = "{AUDIENCE}"
hosts = ["127.0.0.1"]
upstream = "contacts"
[apis.contacts.proof_of_possession]
mechanism = "dpop"
required = true
dpop_nonce = true
[[apis.contacts.routes]]
methods = ["GET"]
path = "/contacts"
scopes = ["read:contacts"]
"#
    );
    let text = config_full(
        port,
        Some(admin),
        &[start_echo("contacts")],
        &discovery_issuer(issuer),
        &api,
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("scopegate.toml"), text).unwrap();
    let p = Proxy::start_in(dir, port);
    assert!(
        eventually(60, || http_get(admin_addr(admin), "/readyz").status == 200),
        "{}",
        p.log()
    );
    (p, admin)
}

/// Run tests/oidc/dpop_client.mjs (oauth4webapi) to its end; the JSON line it prints.
fn run_client(issuer: &str, url: &str) -> Value {
    let out = tempfile::tempdir().unwrap();
    let (stdout, stderr) = (out.path().join("stdout"), out.path().join("stderr"));
    let mut node = Command::new("node")
        .args(["dpop_client.mjs", issuer, url, AUDIENCE])
        .current_dir(oidc_dir())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn_group()
        .expect("node is needed to run the DPoP client for this test");
    let mut status = None;
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        eventually(120, || {
            status = node.try_wait().unwrap();
            status.is_some()
        }),
        "the DPoP client did not finish: {} {}",
        read(&stdout),
        read(&stderr)
    );
    let (printed, errors) = (read(&stdout), read(&stderr));
    assert!(
        status.unwrap().success(),
        "the DPoP client failed: {printed} {errors}"
    );
    let line = printed.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {printed} {errors}"))
}

#[test]
fn oauth4webapi_with_a_node_oidc_provider_dpop_token_passes_scopegate_after_one_nonce_retry() {
    let op_port = free_port();
    let _provider = start_provider(op_port);
    let issuer = format!("http://127.0.0.1:{op_port}");
    let (p, admin) = start_scopegate(&issuer);
    let url = format!("http://{}/contacts", p.addr);

    let run = run_client(&issuer, &url);
    let ctx = format!("{run:#}\n{}", p.log());

    // The provider bound the token to the client's key, after its own nonce challenge.
    let token = &run["token"];
    assert_eq!(token["token_type"], "dpop", "{ctx}");
    assert!(token["key_jkt"].is_string(), "{ctx}");
    assert_eq!(token["cnf_jkt"], token["key_jkt"], "{ctx}");
    assert_eq!(token["aud"], AUDIENCE, "{ctx}");
    assert_eq!(token["provider_nonce_retry"], true, "{ctx}");
    assert_eq!(
        token["provider_statuses"],
        serde_json::json!([400, 200]),
        "{ctx}"
    );

    // First call: scopegate asks for a nonce of its own.
    let first = &run["first"];
    assert_eq!(run["nonce_retried"], true, "{ctx}");
    assert_eq!(first["status"], 401, "{ctx}");
    assert_eq!(first["error"], "use_dpop_nonce", "{ctx}");
    assert_eq!(first["body"]["error"], "use_dpop_nonce", "{ctx}");
    assert!(first["proof_nonce"].is_null(), "{ctx}");
    let nonce = first["dpop_nonce"].as_str().expect("a DPoP-Nonce to use");
    assert!(!nonce.is_empty(), "{ctx}");

    // The retry, with the nonce the library cached, reaches the upstream.
    let retry = &run["retry"];
    assert_eq!(retry["proof_nonce"], nonce, "{ctx}");
    assert_eq!(retry["status"], 200, "{ctx}");
    assert!(retry["dpop_nonce"].is_string(), "{ctx}");
    let echo = &retry["body"];
    assert_eq!(echo["upstream"], "contacts", "{ctx}");
    assert_eq!(echo["method"], "GET", "{ctx}");
    assert_eq!(echo["target"], "/contacts", "{ctx}");
    let forwarded = echo["headers"]["authorization"]
        .as_str()
        .unwrap_or_default();
    assert!(forwarded.starts_with("DPoP "), "{ctx}");
    assert!(echo["headers"]["dpop"].is_string(), "{ctx}");

    // The next call uses the nonce cached from the last answer: no challenge.
    let second = &run["second_call"];
    assert_eq!(second["status"], 200, "{ctx}");
    assert_eq!(second["proof_nonce"], retry["dpop_nonce"], "{ctx}");
    assert_eq!(second["body"]["upstream"], "contacts", "{ctx}");

    // No downgrade: the bound token as a bearer token.
    let bearer = &run["bearer"];
    assert_eq!(bearer["authorization_scheme"], "Bearer", "{ctx}");
    assert_eq!(bearer["sent_dpop"], false, "{ctx}");
    assert_eq!(bearer["status"], 401, "{ctx}");
    assert_eq!(bearer["error"], "invalid_token", "{ctx}");
    assert_eq!(bearer["body"]["error"], "invalid_token", "{ctx}");

    // Replay: the first accepted request again, same proof.
    let replay = &run["replay"];
    assert_eq!(replay["status"], 401, "{ctx}");
    assert_eq!(replay["body"]["error"], "invalid_dpop_proof", "{ctx}");
    let challenge = replay["www_authenticate"].as_str().unwrap_or_default();
    assert!(
        challenge.starts_with("DPoP ") && challenge.contains("error=\"invalid_dpop_proof\""),
        "{ctx}"
    );

    // Each refusal was for the reason above, once.
    let metrics = || String::from_utf8(http_get(admin_addr(admin), "/metrics").body).unwrap();
    let reason = |m: &str, r: &str| {
        metric(
            m,
            &format!("scopegate_token_rejections_total{{reason=\"{r}\"}}"),
        )
    };
    assert!(
        eventually(10, || {
            let m = metrics();
            reason(&m, "dpop_nonce") == 1.0
                && reason(&m, "unbound_use") == 1.0
                && reason(&m, "dpop_replay") == 1.0
        }),
        "{}",
        metrics()
    );
}

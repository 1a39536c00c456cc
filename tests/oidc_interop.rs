//! Interoperability with a real OpenID Connect provider: node-oidc-provider (npm), started on
//! 127.0.0.1, found by OIDC discovery, issuing RS256 JWT access tokens with `scope`.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use base64::Engine;
use common::*;

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_provider(port: u16) -> Node {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
    if !dir.join("node_modules/oidc-provider").exists() {
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .expect("npm is needed to install the OIDC provider for this test (Node.js 20+)");
        assert!(status.success(), "npm install failed in {}", dir.display());
    }
    let child = Command::new("node")
        .arg("provider.mjs")
        .arg(port.to_string())
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node is needed to run the OIDC provider for this test");
    let node = Node(child);
    assert!(
        eventually(20, || std::net::TcpStream::connect(("127.0.0.1", port))
            .is_ok()),
        "provider did not start"
    );
    node
}

/// client_credentials grant against the provider's token endpoint.
fn access_token(port: u16, scope: &str) -> String {
    let body = format!(
        "grant_type=client_credentials&scope={}&resource=https%3A%2F%2Fcontacts.test",
        scope.replace(' ', "%20")
    );
    let basic = base64::engine::general_purpose::STANDARD
        .encode("scopegate-test:scopegate-test-secret-0123456789abcdef");
    let r = Client::connect(format!("127.0.0.1:{port}").parse().unwrap()).send(
        format!(
            "POST /token HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Basic {basic}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["access_token"].as_str().unwrap().to_string()
}

#[test]
fn tokens_from_node_oidc_provider_are_enforced() {
    let op_port = free_port();
    let _provider = start_provider(op_port);
    let issuer = format!("http://127.0.0.1:{op_port}");
    let (p, admin) = proxy_for_issuers(&discovery_issuer(&issuer));
    assert!(
        eventually(15, || http_get(admin_addr(admin), "/readyz").status == 200),
        "{}",
        p.log()
    );

    let reader = access_token(op_port, "read:contacts");
    let r = p.get("/contacts", Some(&reader));
    assert_eq!(r.status, 200, "{}", p.log());
    assert_eq!(
        p.request("DELETE", "/contacts/1", Some(&reader), "").status,
        403
    );

    let deleter = access_token(op_port, "read:contacts delete:contacts");
    assert_eq!(
        p.request("DELETE", "/contacts/1", Some(&deleter), "")
            .status,
        200
    );
    // One flipped character in the provider's signature.
    let mut forged = reader.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    assert_eq!(
        p.get("/contacts", Some(std::str::from_utf8(&forged).unwrap()))
            .status,
        401
    );
}

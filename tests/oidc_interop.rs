//! Interoperability with a real OpenID Connect provider: node-oidc-provider (npm), started on
//! 127.0.0.1, found by OIDC discovery, issuing RS256 JWT access tokens with `scope`.

mod common;

use base64::Engine;
use common::*;

fn start_provider(port: u16) -> ProcessGroup {
    start_provider_for(port, "https://contacts.test")
}

/// The provider, issuing tokens whose `aud` is `audience`.
fn start_provider_for(port: u16, audience: &str) -> ProcessGroup {
    start_oidc_provider(port, audience, &[])
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
        eventually(60, || http_get(admin_addr(admin), "/readyz").status == 200),
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

/// An MCP client's discovery, as the Model Context Protocol's authorization spec has it: call
/// the server, read `resource_metadata` from the 401, fetch the protected resource metadata
/// (RFC 9728), take its authorization server, fetch that server's discovery document, get a
/// token there for the resource, and call again.
#[test]
fn an_mcp_client_follows_the_discovery_chain_to_a_token() {
    let op_port = free_port();
    let audience = "https://mcp.test/mcp/";
    let _provider = start_provider_for(op_port, audience);
    let issuer = format!("http://127.0.0.1:{op_port}");
    let upstream = start_echo("mcp");
    let (port, admin) = (free_port(), free_port());
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
threads = 1
[[issuers]]
issuer = "{issuer}"
discovery = true
[upstreams.mcp]
servers = ["{upstream}"]
[apis.mcp]
audience = "{audience}"
resource_metadata = true
scopes = {{ "read:contacts" = "Read contacts", "write:contacts" = "Write contacts" }}
[[apis.mcp.routes]]
methods = ["POST"]
path = "/mcp"
scopes = ["read:contacts"]
"#
    );
    let p = Proxy::start(&config, port);
    assert!(
        eventually(60, || http_get(admin_addr(admin), "/readyz").status == 200),
        "{}",
        p.log()
    );
    let host = format!("127.0.0.1:{port}");
    let call = |token: Option<&str>| {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        p.send(&format!(
            "POST /mcp HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
        ))
    };
    // 1. The unauthenticated call names the metadata.
    let r = call(None);
    assert_eq!(r.status, 401);
    let challenge = r.header("www-authenticate").unwrap().to_string();
    let url = challenge
        .split("resource_metadata=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no resource_metadata in {challenge}"));
    assert_eq!(
        url,
        format!("http://{host}/.well-known/oauth-protected-resource/mcp")
    );
    // 2. The metadata, without a token.
    let path = url.strip_prefix(&format!("http://{host}")).unwrap();
    let meta = p.send(&format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"));
    assert_eq!(meta.status, 200);
    let meta = meta.json();
    assert_eq!(meta["resource"], audience);
    assert_eq!(
        meta["bearer_methods_supported"],
        serde_json::json!(["header"])
    );
    assert_eq!(
        meta["scopes_supported"],
        serde_json::json!(["read:contacts", "write:contacts"])
    );
    let auth_server = meta["authorization_servers"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(auth_server, issuer);
    // 3. The authorization server's own discovery document.
    let op: std::net::SocketAddr = format!("127.0.0.1:{op_port}").parse().unwrap();
    let disco = http_get(op, "/.well-known/openid-configuration").json();
    assert_eq!(disco["issuer"], auth_server.as_str());
    assert!(
        disco["token_endpoint"]
            .as_str()
            .unwrap()
            .ends_with("/token"),
        "{disco}"
    );
    // 4. A token for the resource, and the call goes through.
    let token = access_token(op_port, "read:contacts");
    let r = call(Some(&token));
    let payload = token.split('.').nth(1).unwrap();
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    assert_eq!(
        r.status,
        200,
        "{} {}",
        String::from_utf8_lossy(&r.body),
        String::from_utf8_lossy(&claims)
    );
    assert_eq!(r.json()["upstream"], "mcp");
}

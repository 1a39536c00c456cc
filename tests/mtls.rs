//! SPEC "Sender-constrained tokens (v3)", certificate-bound tokens (RFC 8705) with the real
//! binary: `cnf["x5t#S256"]` compared with the TLS client certificate over HTTP/2 and
//! HTTP/1.1 (`client_certificates = "request"` and `"require"` with `client_ca`), no
//! downgrade on any API, unbound tokens refused where binding is required, the RFC 9440
//! `Client-Cert` believed from trusted proxies only, and a token node-oidc-provider bound to a
//! certificate with its mTLS feature.

mod common;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use common::*;
use serde_json::json;

/// A certificate and its key (PEM), and its DER.
struct Cert {
    pem: String,
    key: String,
    der: Vec<u8>,
}

impl Cert {
    fn self_signed(names: &[&str]) -> Cert {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        Cert {
            pem: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// The SHA-256 thumbprint a bound token names (RFC 8705 §3.1).
    fn x5t(&self) -> String {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.der);
        URL_SAFE_NO_PAD.encode(d.as_ref())
    }

    fn identity(&self) -> reqwest::Identity {
        reqwest::Identity::from_pem(format!("{}{}", self.pem, self.key).as_bytes()).unwrap()
    }
}

/// A CA and a client certificate it signed.
fn ca_and_client() -> (Cert, Cert) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let client_key = rcgen::KeyPair::generate().unwrap();
    let mut client_params = rcgen::CertificateParams::new(vec!["client.test".to_string()]).unwrap();
    client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client = client_params.signed_by(&client_key, &issuer).unwrap();
    (
        Cert {
            pem: ca.pem(),
            key: ca_key.serialize_pem(),
            der: ca.der().to_vec(),
        },
        Cert {
            pem: client.pem(),
            key: client_key.serialize_pem(),
            der: client.der().to_vec(),
        },
    )
}

const BANK: &str = "[apis.bank]\naudience = \"https://bank.test\"\nupstream = \"contacts\"\n\
[apis.bank.proof_of_possession]\nmechanism = \"mtls\"\n\
[[apis.bank.routes]]\nmethods = [\"GET\"]\npath = \"/bank/accounts\"\nscopes = [\"read:contacts\"]\n";

/// A TLS proxy asking for client certificates as `tls_extra` says, with the bank API
/// requiring certificate-bound tokens and the standard top-level routes requiring nothing.
fn start(server: &Cert, tls_extra: &str, files: &[(&str, &str)]) -> Proxy {
    start_with(server, tls_extra, files, &file_issuer(), None)
}

fn start_with(
    server: &Cert,
    tls_extra: &str,
    files: &[(&str, &str)],
    issuers: &str,
    admin: Option<u16>,
) -> Proxy {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), &key().jwks).unwrap();
    std::fs::write(dir.path().join("cert.pem"), &server.pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &server.key).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let text = config_full(port, admin, &[start_echo("a")], issuers, BANK).replacen(
        "threads = 1",
        &format!("threads = 1\ntls = {{ cert = \"cert.pem\", key = \"key.pem\", {tls_extra} }}"),
        1,
    );
    std::fs::write(dir.path().join("scopegate.toml"), text).unwrap();
    Proxy::start_in(dir, port)
}

fn client(server: &Cert, identity: Option<&Cert>, http1: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(server.pem.as_bytes()).unwrap()])
        .pool_max_idle_per_host(0);
    if let Some(c) = identity {
        b = b.identity(c.identity());
    }
    if http1 {
        b = b.http1_only();
    }
    b.build().unwrap()
}

fn bound_to(cert: &Cert, aud: &str) -> String {
    token_with(
        "read:contacts",
        json!({ "aud": aud, "cnf": { "x5t#S256": cert.x5t() } }),
    )
}

async fn status(c: &reqwest::Client, url: &str, token: &str) -> (u16, String) {
    let r = c.get(url).bearer_auth(token).send().await.unwrap();
    let status = r.status().as_u16();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, challenge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_bound_tokens_need_their_certificate_over_http2_and_http1() {
    let server = Cert::self_signed(&["127.0.0.1"]);
    let p = start(&server, "client_certificates = \"request\"", &[]);
    let (alice, mallory) = (
        Cert::self_signed(&["alice"]),
        Cert::self_signed(&["mallory"]),
    );
    let base = format!("https://127.0.0.1:{}", p.addr.port());
    let (bank, top) = (format!("{base}/bank/accounts"), format!("{base}/contacts"));
    let bank_token = bound_to(&alice, "https://bank.test");
    let top_token = bound_to(&alice, AUD);
    for http1 in [false, true] {
        let with_alice = client(&server, Some(&alice), http1);
        let r = with_alice
            .get(&bank)
            .bearer_auth(&bank_token)
            .send()
            .await
            .unwrap();
        let version = if http1 {
            reqwest::Version::HTTP_11
        } else {
            reqwest::Version::HTTP_2
        };
        assert_eq!(r.version(), version);
        assert_eq!(r.status(), 200, "http1 {http1}");
        // Bound to a certificate: checked on every API, one without binding settings too.
        assert_eq!(status(&with_alice, &top, &top_token).await.0, 200);
        // Another certificate, or none: the token is refused (no downgrade).
        for other in [
            client(&server, Some(&mallory), http1),
            client(&server, None, http1),
        ] {
            for (url, token) in [(&bank, &bank_token), (&top, &top_token)] {
                let (s, challenge) = status(&other, url, token).await;
                assert_eq!(s, 401, "{url} http1 {http1}");
                assert!(
                    challenge.starts_with("Bearer realm=\"api\", error=\"invalid_token\""),
                    "{challenge}"
                );
            }
        }
        // An unbound token where certificate binding is required; fine where it is not.
        let plain_bank = token_with("read:contacts", json!({ "aud": "https://bank.test" }));
        assert_eq!(status(&with_alice, &bank, &plain_bank).await.0, 401);
        assert_eq!(
            status(&with_alice, &top, &token("read:contacts")).await.0,
            200
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_require_only_certificates_of_the_client_ca_are_admitted() {
    let server = Cert::self_signed(&["127.0.0.1"]);
    let (ca, signed) = ca_and_client();
    let p = start(
        &server,
        "client_certificates = \"require\", client_ca = \"ca.pem\"",
        &[("ca.pem", &ca.pem)],
    );
    let url = format!("https://127.0.0.1:{}/bank/accounts", p.addr.port());
    let token = bound_to(&signed, "https://bank.test");
    assert_eq!(
        status(&client(&server, Some(&signed), false), &url, &token)
            .await
            .0,
        200
    );
    for http1 in [false, true] {
        let stranger = Cert::self_signed(&["stranger"]);
        for c in [
            client(&server, Some(&stranger), http1),
            client(&server, None, http1),
        ] {
            assert!(
                c.get(&url).bearer_auth(&token).send().await.is_err(),
                "the handshake is refused"
            );
        }
    }
}

#[test]
fn client_cert_is_believed_from_trusted_proxies_only() {
    let alice = Cert::self_signed(&["alice"]);
    let header = format!("Client-Cert: :{}:\r\n", STANDARD.encode(&alice.der));
    let token = bound_to(&alice, "https://bank.test");
    for (trusted, expect) in [("127.0.0.1/32", 200), ("10.0.0.0/8", 401)] {
        let port = free_port();
        let extra = format!("{BANK}\n");
        let text = config_full(port, None, &[start_echo("a")], &file_issuer(), &extra).replacen(
            "threads = 1",
            &format!("threads = 1\ntrusted_proxies = [\"{trusted}\"]"),
            1,
        );
        let p = Proxy::start(&text, port);
        let r = p.request("GET", "/bank/accounts", Some(&token), &header);
        assert_eq!(
            r.status,
            expect,
            "trusted {trusted}: {}",
            String::from_utf8_lossy(&r.body)
        );
        if expect == 200 {
            // The balancer's header is passed on as it came.
            assert!(r.upstream_header("client-cert").is_some());
        } else {
            assert_eq!(r.json()["error"], "invalid_token");
        }
    }
}

/// Interop: node-oidc-provider with its mTLS feature issues a certificate-bound token for the
/// client's certificate (its own `x5t#S256`), and scopegate, which found the provider by
/// discovery, takes it only on a TLS connection with that certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_bound_token_of_node_oidc_provider_needs_its_certificate() {
    let op_port = free_port();
    let _provider = start_oidc_provider(op_port, "https://bank.test", &["mtls"]);
    let issuers = format!(
        "[[issuers]]\nissuer = \"http://127.0.0.1:{op_port}\"\naudiences = [\"{AUD}\"]\ndiscovery = true\n"
    );
    let server = Cert::self_signed(&["127.0.0.1"]);
    let admin = free_port();
    let p = start_with(
        &server,
        "client_certificates = \"request\"",
        &[],
        &issuers,
        Some(admin),
    );
    assert!(
        eventually(60, || http_get(admin_addr(admin), "/readyz").status == 200),
        "{}",
        p.log()
    );
    let alice = Cert::self_signed(&["alice"]);
    let body = "grant_type=client_credentials&scope=read:contacts&resource=https%3A%2F%2Fbank.test";
    let basic = STANDARD.encode("scopegate-test:scopegate-test-secret-0123456789abcdef");
    let r = Client::connect(format!("127.0.0.1:{op_port}").parse().unwrap()).send(
        format!(
            "POST /token HTTP/1.1\r\nHost: 127.0.0.1:{op_port}\r\nAuthorization: Basic {basic}\r\nX-Client-Cert: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            STANDARD.encode(&alice.pem),
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let token = r.json()["access_token"].as_str().unwrap().to_string();
    let payload: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        payload["cnf"]["x5t#S256"],
        alice.x5t(),
        "the provider's own thumbprint"
    );

    let url = format!("https://127.0.0.1:{}/bank/accounts", p.addr.port());
    assert_eq!(
        status(&client(&server, Some(&alice), false), &url, &token)
            .await
            .0,
        200
    );
    let mallory = Cert::self_signed(&["mallory"]);
    for c in [
        client(&server, Some(&mallory), false),
        client(&server, None, true),
    ] {
        assert_eq!(status(&c, &url, &token).await.0, 401);
    }
}

//! HTTPS listeners: TLS with HTTP/2 by ALPN, and certificates that reload with the config.

mod common;

use common::*;

/// A self-signed certificate for 127.0.0.1: (cert PEM, key PEM).
fn self_signed() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn client(trust: &str, http1: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(trust.as_bytes()).unwrap()])
        .pool_max_idle_per_host(0);
    if http1 {
        b = b.http1_only();
    }
    b.build().unwrap()
}

fn start_tls_proxy(cert: &str, key_pem: &str, admin: u16) -> Proxy {
    let upstream = start_echo("a");
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), &key().jwks).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), key_pem).unwrap();
    let text = config_full(port, Some(admin), &[upstream], &file_issuer(), "").replacen(
        "threads = 1",
        "threads = 1\ntls = { cert = \"cert.pem\", key = \"key.pem\" }",
        1,
    );
    std::fs::write(dir.path().join("scopegate.toml"), text).unwrap();
    Proxy::start_in(dir, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_http2_by_alpn_and_http1() {
    let (cert, key_pem) = self_signed();
    let admin = free_port();
    let p = start_tls_proxy(&cert, &key_pem, admin);
    let url = format!("https://127.0.0.1:{}/contacts", p.addr.port());
    let t = token("read:contacts");

    let h2 = client(&cert, false);
    let r = h2.get(&url).bearer_auth(&t).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["headers"]["x-forwarded-proto"], "https");
    assert_eq!(body["target"], "/contacts");

    let r = h2.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"api\"");
    let r = h2
        .get(format!(
            "https://127.0.0.1:{}/public/../contacts",
            p.addr.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "normalization applies over HTTP/2 too");

    let h1 = client(&cert, true);
    let r = h1.get(&url).bearer_auth(&t).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.status(), 200);

    // Plain HTTP on the TLS port gets no answer.
    assert!(
        reqwest::get(format!("http://127.0.0.1:{}/health", p.addr.port()))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_after_reload() {
    let (cert, key_pem) = self_signed();
    let admin = free_port();
    let p = start_tls_proxy(&cert, &key_pem, admin);
    let url = format!("https://127.0.0.1:{}/health", p.addr.port());
    assert_eq!(
        client(&cert, false)
            .get(&url)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let (new_cert, new_key) = self_signed();
    // Key first, then the certificate, each replaced atomically.
    for (name, text) in [("key.pem", &new_key), ("cert.pem", &new_cert)] {
        let tmp = p.dir.path().join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, p.dir.path().join(name)).unwrap();
    }
    let renewed = client(&new_cert, false);
    let mut ok = false;
    for _ in 0..100 {
        if renewed
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ok, "the renewed certificate was not served\n{}", p.log());
    assert!(
        client(&cert, false).get(&url).send().await.is_err(),
        "the old certificate is gone"
    );
}

#[test]
fn tls_to_the_upstream_is_verified_with_its_ca_file() {
    // The TLS upstream is another scopegate with an HTTPS listener, in front of the echo server.
    let (cert, key_pem) = self_signed();
    let inner = start_tls_proxy(&cert, &key_pem, free_port());
    let upstream_addr = inner.addr;

    let start_outer = |tls_lines: &str| {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("jwks.json"), &key().jwks).unwrap();
        std::fs::write(dir.path().join("upstream-ca.pem"), &cert).unwrap();
        let text = config(port, &[upstream_addr], "").replacen(
            "read_timeout_ms = 500",
            &format!("read_timeout_ms = 2000\n{tls_lines}"),
            1,
        );
        std::fs::write(dir.path().join("scopegate.toml"), text).unwrap();
        Proxy::start_in(dir, port)
    };

    let verified = start_outer("tls = true\nsni = \"localhost\"\nca_file = \"upstream-ca.pem\"");
    let r = verified.get("/contacts", Some(&token("read:contacts")));
    assert_eq!(r.status, 200, "{}", verified.log());
    // The inner proxy saw a TLS connection.
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("https")
    );

    // Without our CA the self-signed upstream is not trusted: 502, never a silent downgrade.
    let untrusted = start_outer("tls = true\nsni = \"localhost\"");
    assert_eq!(
        untrusted
            .get("/contacts", Some(&token("read:contacts")))
            .status,
        502
    );
    // Plain HTTP to a TLS port does not produce a forwarded response either.
    let plain = start_outer("");
    assert_ne!(
        plain.get("/contacts", Some(&token("read:contacts"))).status,
        200
    );
}

/// A returning client resumes its TLS session (a ticket from the first connection) instead of
/// a full handshake; a client that never finishes its handshake is closed within the header
/// deadline, under the connection limit.
#[test]
fn sessions_resume_and_a_stalled_handshake_is_cut_off() {
    use rustls_pki_types::pem::PemObject;
    use std::io::{Read, Write};
    use std::sync::Arc;

    let (cert, key_pem) = self_signed();
    let upstream = start_echo("a");
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), &key().jwks).unwrap();
    std::fs::write(dir.path().join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key_pem).unwrap();
    let text = config_full(port, None, &[upstream], &file_issuer(), "").replacen(
        "threads = 1",
        "threads = 1\nheader_timeout_seconds = 2\ntls = { cert = \"cert.pem\", key = \"key.pem\" }",
        1,
    );
    std::fs::write(dir.path().join("scopegate.toml"), text).unwrap();
    let p = Proxy::start_in(dir, port);

    let mut roots = rustls::RootCertStore::empty();
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    roots.add(der).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let connect = || {
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
        let tcp = std::net::TcpStream::connect(p.addr).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(b"GET /health HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer);
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        tls.conn.handshake_kind()
    };
    assert_eq!(connect(), Some(rustls::HandshakeKind::Full));
    assert_eq!(
        connect(),
        Some(rustls::HandshakeKind::Resumed),
        "the second connection resumes with the first one's ticket"
    );

    // A TCP connection that never sends a ClientHello.
    let started = std::time::Instant::now();
    let mut silent = std::net::TcpStream::connect(p.addr).unwrap();
    silent
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 16];
    let n = silent.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "closed after {:?}",
        started.elapsed()
    );
}

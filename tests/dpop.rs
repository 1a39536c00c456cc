//! SPEC "Sender-constrained tokens (v3)", DPoP (RFC 9449) with the real binary: every check of
//! §4.3 alone (a proof valid in all but one respect), the challenges of §7.1, nonces (§9),
//! replay, no downgrade, unbound tokens on APIs that require bound ones, 403s in the scheme
//! used, the rejection reasons counted, and two replicas sharing replay detection and nonces
//! through a real redis-server, which is then stopped.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use serde_json::{json, Value};

const PAY: &str = "https://pay.test";

/// APIs on their own hosts: `pay.test` requires DPoP, `soft.test` takes DPoP or bearer,
/// `nonce.test` requires DPoP with nonces, `ed.test` takes EdDSA proofs only; the top-level
/// routes (`api.test`) have no `proof_of_possession`.
fn apis(extra_pay: &str) -> String {
    [
        dpop_api("pay", extra_pay),
        dpop_api("soft", "required = false"),
        dpop_api("nonce", "dpop_nonce = true"),
        dpop_api("ed", "dpop_algorithms = [\"EdDSA\"]"),
    ]
    .join("\n")
}

fn start(admin: u16) -> Proxy {
    let port = free_port();
    let text = config_full(
        port,
        Some(admin),
        &[start_echo("a")],
        &file_issuer(),
        &apis(""),
    );
    Proxy::start(&text, port)
}

/// A request to `host` with `Authorization: <scheme> <token>` and `DPoP` proofs.
fn call(
    p: &Proxy,
    method: &str,
    host: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    proofs: &[&str],
) -> Response {
    dpop_call(p, method, host, path, auth, proofs, "")
}

fn assert_bad_proof(r: &Response, what: &str) {
    assert_eq!(
        r.status,
        401,
        "{what}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.json()["error"], "invalid_dpop_proof", "{what}");
    let challenge = r.header("WWW-Authenticate").unwrap();
    assert!(
        challenge.starts_with("DPoP algs=\"ES256 EdDSA PS256 RS256\", error=\"invalid_dpop_proof\", error_description="),
        "{what}: {challenge}"
    );
}

#[test]
fn a_good_proof_is_forwarded_and_every_check_of_rfc_9449_4_3_refuses_alone() {
    let admin = free_port();
    let p = start(admin);
    let key = DpopKey::new();
    let token = key.token("read:contacts", PAY);
    let url = "http://pay.test/contacts";
    let dpop = Some(("DPoP", token.as_str()));

    let r = call(
        &p,
        "GET",
        "pay.test",
        "/contacts",
        dpop,
        &[&key.proof("GET", url, &token)],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // The scheme is case-insensitive; htu is compared normalized, with a default port.
    let r = call(
        &p,
        "GET",
        "pay.test",
        "//contacts",
        Some(("dpop", &token)),
        &[&key.proof("GET", "HTTP://PAY.test:80/./contacts?x#f", &token)],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // Each proof below is good but for one thing.
    let good = || key.claims("GET", url, &token);
    let with = |k: &str, v: Value| {
        let mut c = good();
        c[k] = v;
        key.sign(&key.header(), &c)
    };
    let without = |k: &str| {
        let mut c = good();
        c.as_object_mut().unwrap().remove(k);
        key.sign(&key.header(), &c)
    };
    let header_with = |k: &str, v: Value| {
        let mut h = key.header();
        h[k] = v;
        key.sign(&h, &good())
    };
    let mut private_jwk = key.jwk.clone();
    private_jwk["d"] = json!(b64(b"not really the private key, but a private member"));
    let other = DpopKey::new();
    let mut bad_sig = key.proof("GET", url, &token);
    bad_sig.replace_range(bad_sig.len() - 4.., "AAAA");
    let unsigned = format!(
        "{}.{}.",
        b64(json!({"typ":"dpop+jwt","alg":"none","jwk":key.jwk})
            .to_string()
            .as_bytes()),
        b64(good().to_string().as_bytes())
    );
    let hs256 = signed_jws(
        &json!({"typ":"dpop+jwt","alg":"HS256","jwk":{"kty":"oct","k":b64(b"secret")}}),
        &good(),
        &jsonwebtoken::EncodingKey::from_secret(b"secret"),
        jsonwebtoken::Algorithm::HS256,
    );
    let cases: Vec<(&str, String)> = vec![
        ("typ", header_with("typ", json!("jwt"))),
        ("no typ", {
            let mut h = key.header();
            h.as_object_mut().unwrap().remove("typ");
            key.sign(&h, &good())
        }),
        ("alg none", unsigned),
        ("alg HS256 (a MAC)", hs256),
        ("private key in jwk", header_with("jwk", private_jwk)),
        ("no jwk", {
            let mut h = key.header();
            h.as_object_mut().unwrap().remove("jwk");
            key.sign(&h, &good())
        }),
        ("jwk of another key", header_with("jwk", other.jwk.clone())),
        ("signature", bad_sig),
        ("crit", header_with("crit", json!(["exp"]))),
        ("htm", with("htm", json!("POST"))),
        ("htm lowercase", with("htm", json!("get"))),
        ("htu host", with("htu", json!("http://other.test/contacts"))),
        (
            "htu scheme",
            with("htu", json!("https://pay.test/contacts")),
        ),
        ("htu path", with("htu", json!("http://pay.test/contacts/1"))),
        ("iat old", with("iat", json!(now() - 301))),
        ("iat ahead", with("iat", json!(now() + 120))),
        ("no iat", without("iat")),
        ("no jti", without("jti")),
        (
            "ath of another token",
            with("ath", json!(ath("another.token.x"))),
        ),
        ("no ath", without("ath")),
        ("not a JWS", "a.b".to_string()),
    ];
    for (what, proof) in &cases {
        assert_bad_proof(
            &call(&p, "GET", "pay.test", "/contacts", dpop, &[proof]),
            what,
        );
    }
    // The key that signed is not the one the token is bound to.
    let r = call(
        &p,
        "GET",
        "pay.test",
        "/contacts",
        dpop,
        &[&other.proof("GET", url, &token)],
    );
    assert_bad_proof(&r, "cnf.jkt");
    // Exactly one DPoP header; none at all.
    let (a, b) = (key.proof("GET", url, &token), key.proof("GET", url, &token));
    assert_bad_proof(
        &call(&p, "GET", "pay.test", "/contacts", dpop, &[&a, &b]),
        "two DPoP headers",
    );
    assert_bad_proof(
        &call(&p, "GET", "pay.test", "/contacts", dpop, &[]),
        "no DPoP header",
    );
    // A proof is good once.
    let once = key.proof("GET", url, &token);
    assert_eq!(
        call(&p, "GET", "pay.test", "/contacts", dpop, &[&once]).status,
        200
    );
    let r = call(&p, "GET", "pay.test", "/contacts", dpop, &[&once]);
    assert_bad_proof(&r, "replay");
    assert!(r
        .header("WWW-Authenticate")
        .unwrap()
        .contains("used before"));
    // An API that takes EdDSA proofs only refuses an ES256 one.
    let ed_token = key.token("read:contacts", "https://ed.test");
    let r = call(
        &p,
        "GET",
        "ed.test",
        "/contacts",
        Some(("DPoP", &ed_token)),
        &[&key.proof("GET", "http://ed.test/contacts", &ed_token)],
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "invalid_dpop_proof");
    assert!(r
        .header("WWW-Authenticate")
        .unwrap()
        .starts_with("DPoP algs=\"EdDSA\", error=\"invalid_dpop_proof\""));

    let m = String::from_utf8(http_get(admin_addr(admin), "/metrics").body).unwrap();
    let bad = cases.len() as f64 + 4.0;
    let series = "scopegate_token_rejections_total{reason=\"invalid_dpop_proof\"}";
    assert!(
        eventually(10, || metric(
            &String::from_utf8(http_get(admin_addr(admin), "/metrics").body).unwrap(),
            series
        ) == bad),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "scopegate_token_rejections_total{reason=\"dpop_replay\"}"
        ),
        1.0
    );
    // The token is never logged; the proofs neither.
    assert!(!p.log().contains(&token[token.len() - 20..]));
}

#[test]
fn no_downgrade_and_unbound_tokens_where_bound_ones_are_required() {
    let admin = free_port();
    let p = start(admin);
    let key = DpopKey::new();
    // A DPoP-bound token sent as a bearer token is refused on every API, with a DPoP API or not.
    let top = key.token("read:contacts", AUD);
    let r = p.get("/contacts", Some(&top));
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "invalid_token");
    assert!(r
        .header("WWW-Authenticate")
        .unwrap()
        .starts_with("Bearer realm=\"api\", error=\"invalid_token\""));
    let bound = key.token("read:contacts", PAY);
    let r = call(
        &p,
        "GET",
        "pay.test",
        "/contacts",
        Some(("Bearer", &bound)),
        &[&key.proof("GET", "http://pay.test/contacts", &bound)],
    );
    assert_eq!(
        r.status, 401,
        "a proof does not make a Bearer use of a bound token right"
    );
    assert_eq!(r.json()["error"], "invalid_token");
    // ... and the same token with its proof on the top-level routes is fine: binding is checked
    // on every API, configured or not.
    let r = call(
        &p,
        "GET",
        "api.test",
        "/contacts",
        Some(("DPoP", &top)),
        &[&key.proof("GET", "http://api.test/contacts", &top)],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // An unbound token with the DPoP scheme.
    let plain = token_with("read:contacts", json!({ "aud": PAY }));
    let r = call(
        &p,
        "GET",
        "pay.test",
        "/contacts",
        Some(("DPoP", &plain)),
        &[&key.proof("GET", "http://pay.test/contacts", &plain)],
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "invalid_token");
    // An unbound bearer token where DPoP is required; accepted where it is optional.
    let r = call(
        &p,
        "GET",
        "pay.test",
        "/contacts",
        Some(("Bearer", &plain)),
        &[],
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "invalid_token");
    assert!(
        r.header("WWW-Authenticate")
            .unwrap()
            .starts_with("DPoP algs=\"ES256 EdDSA PS256 RS256\", error=\"invalid_token\""),
        "{:?}",
        r.header("WWW-Authenticate")
    );
    let soft = token_with("read:contacts", json!({ "aud": "https://soft.test" }));
    assert_eq!(
        call(
            &p,
            "GET",
            "soft.test",
            "/contacts",
            Some(("Bearer", &soft)),
            &[]
        )
        .status,
        200
    );

    // No token: DPoP's challenge where it is required, both where it is optional (RFC 9449 §7.1).
    let r = call(&p, "GET", "pay.test", "/contacts", None, &[]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("WWW-Authenticate"),
        Some("DPoP algs=\"ES256 EdDSA PS256 RS256\"")
    );
    let r = call(&p, "GET", "soft.test", "/contacts", None, &[]);
    assert_eq!(
        r.header("WWW-Authenticate"),
        Some("Bearer realm=\"api\", DPoP algs=\"ES256 EdDSA PS256 RS256\"")
    );
    let r = call(&p, "GET", "api.test", "/contacts", None, &[]);
    assert_eq!(r.header("WWW-Authenticate"), Some("Bearer realm=\"api\""));

    // A 403 is said in the scheme the request used.
    let r = call(
        &p,
        "DELETE",
        "pay.test",
        "/contacts/7",
        Some(("DPoP", &bound)),
        &[&key.proof("DELETE", "http://pay.test/contacts/7", &bound)],
    );
    assert_eq!(r.status, 403);
    assert_eq!(r.header("WWW-Authenticate"), Some("DPoP error=\"insufficient_scope\", scope=\"delete:contacts\", algs=\"ES256 EdDSA PS256 RS256\""));

    let m = || String::from_utf8(http_get(admin_addr(admin), "/metrics").body).unwrap();
    assert!(
        eventually(10, || metric(
            &m(),
            "scopegate_token_rejections_total{reason=\"unbound_token\"}"
        ) == 2.0),
        "{}",
        m()
    );
    assert_eq!(
        metric(
            &m(),
            "scopegate_token_rejections_total{reason=\"unbound_use\"}"
        ),
        2.0
    );
}

#[test]
fn nonces_are_asked_for_given_on_every_answer_and_checked() {
    let p = start(free_port());
    let key = DpopKey::new();
    let token = key.token("read:contacts", "https://nonce.test");
    let url = "http://nonce.test/contacts";
    let dpop = Some(("DPoP", token.as_str()));
    // Without a nonce: use_dpop_nonce, with one to use.
    let r = call(
        &p,
        "GET",
        "nonce.test",
        "/contacts",
        dpop,
        &[&key.proof("GET", url, &token)],
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "use_dpop_nonce");
    assert!(r
        .header("WWW-Authenticate")
        .unwrap()
        .starts_with("DPoP algs=\"ES256 EdDSA PS256 RS256\", error=\"use_dpop_nonce\""));
    let nonce = r.header("DPoP-Nonce").expect("a nonce to use").to_string();
    let with_nonce = |n: &str| {
        let mut c = key.claims("GET", url, &token);
        c["nonce"] = json!(n);
        key.sign(&key.header(), &c)
    };
    let r = call(
        &p,
        "GET",
        "nonce.test",
        "/contacts",
        dpop,
        &[&with_nonce(&nonce)],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.header("DPoP-Nonce").is_some(),
        "every answer carries a fresh nonce"
    );
    // A nonce scopegate did not issue.
    let mut forged = URL_SAFE_NO_PAD.decode(&nonce).unwrap();
    forged[20] ^= 1;
    let r = call(
        &p,
        "GET",
        "nonce.test",
        "/contacts",
        dpop,
        &[&with_nonce(&URL_SAFE_NO_PAD.encode(forged))],
    );
    assert_eq!(r.json()["error"], "use_dpop_nonce");
    assert!(r.header("DPoP-Nonce").is_some());
    // A 401 without a token on that API carries one too.
    assert!(call(&p, "GET", "nonce.test", "/contacts", None, &[])
        .header("DPoP-Nonce")
        .is_some());
}

#[test]
fn replicas_share_replay_detection_and_nonces_through_redis_and_refuse_dpop_when_it_is_gone() {
    let mut redis = Redis::start();
    let upstream = start_echo("a");
    let shared = format!(
        "[shared_state]\nurl = \"redis://127.0.0.1:{}/0\"\nsecret_env = \"SG_SECRET\"\ntimeout_ms = 500\n",
        redis.port
    );
    let start_replica = |admin: u16| {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("jwks.json"), &key().jwks).unwrap();
        let text = config_full(
            port,
            Some(admin),
            &[upstream],
            &file_issuer(),
            &format!("{shared}\n{}", apis("")),
        );
        std::fs::write(dir.path().join("scopegate.toml"), text).unwrap();
        Proxy::start_in_with_env(dir, port, &[("SG_SECRET", "the same on every replica")])
    };
    let (admin_a, admin_b) = (free_port(), free_port());
    let (a, b) = (start_replica(admin_a), start_replica(admin_b));
    let key = DpopKey::new();
    let token = key.token("read:contacts", PAY);
    let dpop = Some(("DPoP", token.as_str()));
    let url = "http://pay.test/contacts";

    let proof = key.proof("GET", url, &token);
    assert_eq!(
        call(&a, "GET", "pay.test", "/contacts", dpop, &[&proof]).status,
        200
    );
    let r = call(&b, "GET", "pay.test", "/contacts", dpop, &[&proof]);
    assert_bad_proof(&r, "a proof used on the other replica");
    assert!(redis
        .command("KEYS scopegate:dpop:*")
        .contains("scopegate:dpop:"));

    // A nonce from one replica is taken by the other.
    let nonce_token = key.token("read:contacts", "https://nonce.test");
    let nurl = "http://nonce.test/contacts";
    let r = call(
        &a,
        "GET",
        "nonce.test",
        "/contacts",
        Some(("DPoP", &nonce_token)),
        &[&key.proof("GET", nurl, &nonce_token)],
    );
    let nonce = r.header("DPoP-Nonce").unwrap().to_string();
    let mut c = key.claims("GET", nurl, &nonce_token);
    c["nonce"] = json!(nonce);
    let r = call(
        &b,
        "GET",
        "nonce.test",
        "/contacts",
        Some(("DPoP", &nonce_token)),
        &[&key.sign(&key.header(), &c)],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // The store is gone: a replay check that cannot be made refuses; bearer tokens are served.
    redis.stop();
    let r = call(
        &a,
        "GET",
        "pay.test",
        "/contacts",
        dpop,
        &[&key.proof("GET", url, &token)],
    );
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    assert_eq!(
        a.get("/contacts", Some(&token_with("read:contacts", json!({}))))
            .status,
        200
    );
    let m = || String::from_utf8(http_get(admin_addr(admin_a), "/metrics").body).unwrap();
    assert!(
        eventually(10, || metric(
            &m(),
            "scopegate_token_rejections_total{reason=\"replay_store_unavailable\"}"
        ) >= 1.0),
        "{}",
        m()
    );
    assert!(metric(&m(), "scopegate_shared_state_errors_total{op=\"replay\"}") >= 1.0);
    assert!(a.log().contains("shared state unreachable"), "{}", a.log());
}

#[test]
fn strip_token_drops_the_proof_too_and_metadata_names_what_proofs_are_taken() {
    let port = free_port();
    let pay = apis("").replacen(
        "audience = \"https://pay.test\"\n",
        "audience = \"https://pay.test\"\nresource_metadata = true\n",
        1,
    );
    let extra = format!("[forward]\nstrip_token = true\n\n{pay}");
    let p = Proxy::start(
        &config_full(port, None, &[start_echo("a")], &file_issuer(), &extra),
        port,
    );
    let key = DpopKey::new();
    let token = key.token("read:contacts", PAY);
    let proof = key.proof("GET", "http://pay.test/contacts", &token);
    let r = call(
        &p,
        "GET",
        "pay.test",
        "/contacts",
        Some(("DPoP", &token)),
        &[&proof],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.upstream_header("authorization"), None);
    assert_eq!(r.upstream_header("dpop"), None);

    let r = call(
        &p,
        "GET",
        "pay.test",
        "/.well-known/oauth-protected-resource",
        None,
        &[],
    );
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(
        doc["dpop_signing_alg_values_supported"],
        json!(["ES256", "EdDSA", "PS256", "RS256"])
    );
    assert_eq!(doc["dpop_bound_access_tokens_required"], json!(true));
    let r = call(&p, "GET", "pay.test", "/contacts", None, &[]);
    assert_eq!(
        r.header("WWW-Authenticate"),
        Some("DPoP algs=\"ES256 EdDSA PS256 RS256\", resource_metadata=\"http://pay.test/.well-known/oauth-protected-resource\"")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_the_proof_names_the_https_url_and_is_good_once() {
    let key_pair = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&key_pair)
        .unwrap();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), &key().jwks).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), key_pair.serialize_pem()).unwrap();
    let text = config_full(port, None, &[start_echo("a")], &file_issuer(), "").replacen(
        "threads = 1",
        "threads = 1\ntls = { cert = \"cert.pem\", key = \"key.pem\" }",
        1,
    );
    std::fs::write(dir.path().join("scopegate.toml"), text).unwrap();
    let _p = Proxy::start_in(dir, port);
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let key = DpopKey::new();
    let token = key.token("read:contacts", AUD);
    let url = format!("https://127.0.0.1:{port}/contacts");
    let send = |proof: String| {
        client
            .get(&url)
            .header("Authorization", format!("DPoP {token}"))
            .header("DPoP", proof)
            .send()
    };
    let proof = key.proof("GET", &url, &token);
    let r = send(proof.clone()).await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let r = send(proof).await.unwrap();
    assert_eq!(r.status(), 401, "a replay over HTTP/2");
    let plain = format!("http://127.0.0.1:{port}/contacts");
    let r = send(key.proof("GET", &plain, &token)).await.unwrap();
    assert_eq!(r.status(), 401, "htu names http:// on an https listener");
}

#[test]
fn an_ed25519_proof_is_taken_under_either_of_its_names() {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
    let p = start(free_port());
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let jwk = json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref()) });
    let jkt = scopegate::auth::dpop::thumbprint(jwk.as_object().unwrap()).unwrap();
    let token = token_with(
        "read:contacts",
        json!({ "aud": "https://ed.test", "cnf": { "jkt": jkt } }),
    );
    let url = "http://ed.test/contacts";
    // `EdDSA` (RFC 8037) and `Ed25519` (RFC 9864, what oauth4webapi 3 sends) name one algorithm.
    for alg in ["EdDSA", "Ed25519"] {
        let header = json!({ "typ": "dpop+jwt", "alg": alg, "jwk": jwk });
        let claims =
            json!({ "jti": unique(), "htm": "GET", "htu": url, "iat": now(), "ath": ath(&token) });
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let proof = format!("{input}.{}", b64(pair.sign(input.as_bytes()).as_ref()));
        let r = call(
            &p,
            "GET",
            "ed.test",
            "/contacts",
            Some(("DPoP", &token)),
            &[&proof],
        );
        assert_eq!(r.status, 200, "{alg}: {}", String::from_utf8_lossy(&r.body));
    }
}

/// SPEC "Requests on the wire": a `DPoP` header beside a `Bearer` token on an API without
/// `proof_of_possession` is ignored, and forwarded (unless `strip_token`).
#[test]
fn a_dpop_header_beside_an_unbound_bearer_token_is_ignored_and_forwarded() {
    let p = start(free_port());
    let token = token("read:contacts");
    let r = call(
        &p,
        "GET",
        "api.test",
        "/contacts",
        Some(("Bearer", &token)),
        &["not.a.proof"],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.upstream_header("dpop").as_deref(), Some("not.a.proof"));
}

//! Keys from a real JWKS server over HTTP: loading, readiness, rotation, outages, discovery,
//! and the verified-token cache following the key set.

mod common;

use common::*;
use serde_json::json;

fn ready(admin: u16) -> bool {
    http_get(admin_addr(admin), "/readyz").status == 200
}

#[test]
fn keys_from_jwks_url_make_the_proxy_ready() {
    let jwks = JwksServer::start(&key().jwks, 300);
    let (p, admin) = url_proxy(&jwks.url());
    assert!(eventually(10, || ready(admin)), "{}", p.log());
    assert_eq!(
        p.get("/contacts", Some(&token("read:contacts"))).status,
        200
    );
    let m = http_get(admin_addr(admin), "/metrics");
    let text = String::from_utf8_lossy(&m.body).into_owned();
    assert!(
        metric(
            &text,
            &format!("scopegate_jwks_refreshes_total{{issuer=\"{ISS}\",result=\"ok\"}}")
        ) >= 1.0,
        "{text}"
    );
}

#[test]
fn a_rotated_key_is_accepted_within_seconds_and_a_removed_one_is_refused() {
    let jwks = JwksServer::start(&key().jwks, 3600);
    let (p, admin) = url_proxy(&jwks.url());
    assert!(eventually(10, || ready(admin)));
    let old = token("read:contacts");
    assert_eq!(
        p.get("/contacts", Some(&old)).status,
        200,
        "cached from now on"
    );

    // The provider rotates: publishes a new key and drops the old one. max-age is an hour, so
    // only the unknown kid can make the proxy look again.
    let rotated = fresh_key("test-key-2");
    jwks.set(&rotated.jwks);
    let new = sign_with(&rotated, Some("test-key-2"), &claims("read:contacts"));
    assert!(
        eventually(5, || p.get("/contacts", Some(&new)).status == 200),
        "{}",
        p.log()
    );
    // The old token was cached, but its key is gone: the cache must not outlive the key set.
    assert_eq!(p.get("/contacts", Some(&old)).status, 401);
}

#[test]
fn unknown_kids_do_not_cause_a_fetch_storm() {
    let jwks = JwksServer::start(&key().jwks, 3600);
    let (p, admin) = url_proxy(&jwks.url());
    assert!(eventually(10, || ready(admin)));
    let before = jwks.hits();
    let stranger = fresh_key("attacker");
    let t = sign_with(&stranger, Some("attacker"), &claims("read:contacts"));
    let start = std::time::Instant::now();
    let mut sent = 0;
    while start.elapsed() < std::time::Duration::from_millis(900) {
        assert_eq!(p.get("/contacts", Some(&t)).status, 401);
        sent += 1;
    }
    let fetches = jwks.hits() - before;
    assert!(sent > 10, "sent {sent}");
    // Cooldown is 1 s in this config: at most two refetches in under a second.
    assert!(fetches <= 2, "{fetches} fetches for {sent} requests");
}

#[test]
fn cached_keys_keep_working_when_the_jwks_server_goes_down() {
    let mut jwks = JwksServer::start(&key().jwks, 1);
    let (p, admin) = url_proxy(&jwks.url());
    assert!(eventually(10, || ready(admin)));
    jwks.handle.stop();
    // Refreshes now fail (max-age 1 s, refresh_min 1 s): wait for one to be counted.
    let failed = format!("scopegate_jwks_refreshes_total{{issuer=\"{ISS}\",result=\"error\"}}");
    assert!(eventually(10, || {
        let m = http_get(admin_addr(admin), "/metrics");
        metric(&String::from_utf8_lossy(&m.body), &failed) >= 1.0
    }));
    // A token never seen before (so not cached) still verifies with the last good keys.
    let mut c = claims("read:contacts");
    c["jti"] = json!("fresh");
    assert_eq!(p.get("/contacts", Some(&sign(&c))).status, 200);
    assert!(ready(admin), "the last good keys keep the proxy ready");
}

#[test]
fn down_at_start_means_not_ready_until_it_comes_up() {
    let listener_port = free_port();
    let url = format!("http://127.0.0.1:{listener_port}/keys");
    let (p, admin) = url_proxy(&url);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(http_get(admin_addr(admin), "/readyz").status, 503);
    assert_eq!(
        http_get(admin_addr(admin), "/healthz").status,
        200,
        "alive while not ready"
    );
    assert_eq!(
        p.get("/contacts", Some(&token("read:contacts"))).status,
        401
    );
    assert_eq!(
        p.get("/health", None).status,
        200,
        "public routes work without keys"
    );

    let listener = std::net::TcpListener::bind(("127.0.0.1", listener_port)).unwrap();
    let _jwks = JwksServer::start_on(listener, &key().jwks, 300);
    assert!(eventually(15, || ready(admin)), "{}", p.log());
    assert_eq!(
        p.get("/contacts", Some(&token("read:contacts"))).status,
        200
    );
}

#[test]
fn discovery_reads_jwks_uri_from_the_issuer() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let _jwks = JwksServer::start_on(listener, &key().jwks, 300);
    let (p, admin) = proxy_for_issuers(&discovery_issuer(&issuer));
    assert!(eventually(10, || ready(admin)), "{}", p.log());
    let mut c = claims("read:contacts");
    c["iss"] = json!(issuer);
    assert_eq!(p.get("/contacts", Some(&sign(&c))).status, 200);
    // The standard issuer is not trusted by this proxy.
    assert_eq!(
        p.get("/contacts", Some(&token("read:contacts"))).status,
        401
    );
}

#[test]
fn a_cached_token_is_not_accepted_past_its_exp() {
    let upstream = start_echo("a");
    let port = free_port();
    let issuer = format!("{}leeway_seconds = 0\n", file_issuer());
    let p = Proxy::start(&config_full(port, None, &[upstream], &issuer, ""), port);
    let mut c = claims("read:contacts");
    c["exp"] = json!(now() + 2);
    let t = sign(&c);
    assert_eq!(p.get("/contacts", Some(&t)).status, 200);
    assert_eq!(
        p.get("/contacts", Some(&t)).status,
        200,
        "served from the cache"
    );
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert!(eventually(2, || p.get("/contacts", Some(&t)).status == 401));
}

#[test]
fn hs256_secret_from_the_environment() {
    let secret = "an-hs256-secret-of-at-least-32-bytes!";
    let upstream = start_echo("a");
    let port = free_port();
    let issuers = format!("[[issuers]]\nissuer = \"{ISS}\"\naudiences = [\"{AUD}\"]\nhs256_secret_env = \"SCOPEGATE_TEST_SECRET\"\n");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("scopegate.toml"),
        config_full(port, None, &[upstream], &issuers, ""),
    )
    .unwrap();
    let p = Proxy::start_in_with_env(dir, port, &[("SCOPEGATE_TEST_SECRET", secret)]);
    let sign_hs = |key: &[u8]| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims("read:contacts"),
            &jsonwebtoken::EncodingKey::from_secret(key),
        )
        .unwrap()
    };
    assert_eq!(
        p.get("/contacts", Some(&sign_hs(secret.as_bytes()))).status,
        200
    );
    assert_eq!(
        p.get(
            "/contacts",
            Some(&sign_hs(b"another-secret-of-at-least-32-bytes!!"))
        )
        .status,
        401
    );
    // An RS256 token is refused outright by an HS256 issuer.
    assert_eq!(
        p.get("/contacts", Some(&token("read:contacts"))).status,
        401
    );
}

#[test]
fn concurrent_requests_with_a_new_kid_share_one_fetch() {
    let jwks = JwksServer::start(&key().jwks, 3600);
    let (p, admin) = url_proxy(&jwks.url());
    assert!(eventually(10, || ready(admin)));
    std::thread::sleep(std::time::Duration::from_millis(1100)); // past the cooldown
    let rotated = fresh_key("test-key-3");
    jwks.set(&merge_jwks(&[&key().jwks, &rotated.jwks]));
    let before = jwks.hits();
    let t = sign_with(&rotated, Some("test-key-3"), &claims("read:contacts"));
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|_| s.spawn(|| p.get("/contacts", Some(&t)).status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(jwks.hits() - before, 1, "one fetch for all 16 requests");
}

#[test]
fn keys_are_refetched_every_max_age_within_the_configured_bounds() {
    // max-age 1 s: refetched about every second with no traffic at all.
    let short = JwksServer::start(&key().jwks, 1);
    let (_p, admin) = url_proxy(&short.url());
    assert!(eventually(10, || ready(admin)));
    let before = short.hits();
    std::thread::sleep(std::time::Duration::from_millis(3500));
    assert!(
        short.hits() - before >= 2,
        "{} refetches in 3.5 s",
        short.hits() - before
    );

    // max-age one hour, clamped to refresh_max_seconds = 2.
    let long = JwksServer::start(&key().jwks, 3600);
    let (_p2, admin2) = proxy_for_issuers(&format!(
        "[[issuers]]\nissuer = \"{ISS}\"\naudiences = [\"{AUD}\"]\njwks_url = \"{}\"\nrefresh_min_seconds = 1\nrefresh_max_seconds = 2\n",
        long.url()
    ));
    assert!(eventually(10, || ready(admin2)));
    let before = long.hits();
    std::thread::sleep(std::time::Duration::from_millis(3500));
    let n = long.hits() - before;
    assert!(
        (1..=2).contains(&n),
        "{n} refetches in 3.5 s with a 2 s bound"
    );
}

#[test]
fn an_issuer_added_by_a_reload_is_fetched_without_any_request() {
    let (p, admin) = proxy_for_issuers(&file_issuer());
    assert!(eventually(10, || ready(admin)), "{}", p.log());
    let other = fresh_key("other-kid");
    let jwks = JwksServer::start(&other.jwks, 300);
    let text = std::fs::read_to_string(p.config_path()).unwrap();
    let added = text.replacen(
        "[[issuers]]",
        &format!("[[issuers]]\nissuer = \"https://second.test/\"\naudiences = [\"{AUD}\"]\njwks_url = \"{}\"\n\n[[issuers]]", jwks.url()),
        1,
    );
    let tmp = p.config_path().with_extension("tmp");
    std::fs::write(&tmp, added).unwrap();
    std::fs::rename(&tmp, p.config_path()).unwrap();
    // The refresher is woken by the reload: the new issuer's keys arrive with no token sent.
    assert!(eventually(10, || jwks.hits() >= 1), "{}", p.log());
    assert!(eventually(10, || ready(admin)), "{}", p.log());
}

//! The JWT attack corpus: every case must be refused with 401 and counted under its reason.

mod common;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

/// Sign an arbitrary JOSE header and payload with `key` (RS256).
fn sign_raw(key: &TestKey, header: &Value, payload: &Value) -> String {
    signed_jws(
        header,
        payload,
        &EncodingKey::from_rsa_pem(key.pem.as_bytes()).unwrap(),
        Algorithm::RS256,
    )
}

fn sign_hs256(secret: &[u8], header: &Value, payload: &Value) -> String {
    signed_jws(
        header,
        payload,
        &EncodingKey::from_secret(secret),
        Algorithm::HS256,
    )
}

#[test]
fn every_attack_is_refused_with_401_and_its_reason() {
    let upstream = start_echo("a");
    let (port, admin) = (free_port(), free_port());
    let p = Proxy::start(
        &config_full(port, Some(admin), &[upstream], &file_issuer(), ""),
        port,
    );

    let good_claims = claims("read:contacts delete:contacts");
    let good = sign(&good_claims);
    let parts: Vec<&str> = good.split('.').collect();
    let (h, pl, sig) = (parts[0], parts[1], parts[2]);
    let ours = json!({"alg": "RS256", "typ": "JWT", "kid": KID});

    let attacker = fresh_key("attacker");
    let attacker_jwks = JwksServer::start(&attacker.jwks, 300);
    let attacker_jwk: Value =
        serde_json::from_str::<Value>(&attacker.jwks).unwrap()["keys"][0].clone();
    let our_jwk: Value = serde_json::from_str::<Value>(&key().jwks).unwrap()["keys"][0].clone();
    let n_bytes = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        our_jwk["n"].as_str().unwrap(),
    )
    .unwrap();

    let mut expired = good_claims.clone();
    expired["exp"] = json!(now() - 3600);
    let mut ahead = good_claims.clone();
    ahead["nbf"] = json!(now() + 3600);
    let mut wrong_iss = good_claims.clone();
    wrong_iss["iss"] = json!("https://issuer.test");
    let mut wrong_aud = good_claims.clone();
    wrong_aud["aud"] = json!(["https://contacts.test/", "contacts"]);
    let mut no_exp = good_claims.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut str_exp = good_claims.clone();
    str_exp["exp"] = json!((now() + 600).to_string());
    let mut escalated = good_claims.clone();
    escalated["scope"] = json!("admin read:contacts delete:contacts");

    let mut cases: Vec<(String, String, &str)> = Vec::new();
    for none in ["none", "None", "NONE", "nOnE"] {
        let hdr = json!({"alg": none, "typ": "JWT", "kid": KID});
        cases.push((
            format!("alg {none}, no signature"),
            format!("{}.{pl}.", b64(hdr.to_string().as_bytes())),
            "disallowed_alg",
        ));
        cases.push((
            format!("alg {none}, our signature"),
            format!("{}.{pl}.{sig}", b64(hdr.to_string().as_bytes())),
            "disallowed_alg",
        ));
    }
    let hs = json!({"alg": "HS256", "typ": "JWT", "kid": KID});
    cases.push((
        "HS256 keyed with the RSA JWK".into(),
        sign_hs256(key().jwks.as_bytes(), &hs, &good_claims),
        "disallowed_alg",
    ));
    cases.push((
        "HS256 keyed with the RSA modulus".into(),
        sign_hs256(&n_bytes, &hs, &good_claims),
        "disallowed_alg",
    ));
    cases.push((
        "RS512 with an RS256-only key".into(),
        format!(
            "{}.{pl}.{sig}",
            b64(json!({"alg":"RS512","kid":KID}).to_string().as_bytes())
        ),
        "disallowed_alg",
    ));
    cases.push((
        "jku pointing at the attacker's JWKS".into(),
        sign_raw(
            &attacker,
            &json!({"alg": "RS256", "kid": "attacker", "jku": attacker_jwks.url()}),
            &good_claims,
        ),
        "unknown_key",
    ));
    cases.push((
        "jku with our kid".into(),
        sign_raw(
            &attacker,
            &json!({"alg": "RS256", "kid": KID, "jku": attacker_jwks.url()}),
            &good_claims,
        ),
        "bad_signature",
    ));
    cases.push((
        "x5u pointing at the attacker".into(),
        sign_raw(
            &attacker,
            &json!({"alg": "RS256", "kid": KID, "x5u": attacker_jwks.url()}),
            &good_claims,
        ),
        "bad_signature",
    ));
    cases.push((
        "embedded jwk of the attacker".into(),
        sign_raw(
            &attacker,
            &json!({"alg": "RS256", "kid": KID, "jwk": attacker_jwk}),
            &good_claims,
        ),
        "bad_signature",
    ));
    cases.push((
        "crit with an unknown extension".into(),
        sign_raw(
            key(),
            &json!({"alg": "RS256", "kid": KID, "crit": ["x-custom"], "x-custom": 1}),
            &good_claims,
        ),
        "malformed",
    ));
    cases.push((
        "unknown kid".into(),
        sign_raw(
            key(),
            &json!({"alg": "RS256", "kid": "other"}),
            &good_claims,
        ),
        "unknown_key",
    ));
    cases.push((
        "stripped signature".into(),
        format!("{h}.{pl}."),
        "bad_signature",
    ));
    cases.push((
        "truncated signature".into(),
        format!("{h}.{pl}.{}", &sig[..sig.len() - 6]),
        "bad_signature",
    ));
    cases.push((
        "signature of another token".into(),
        format!(
            "{h}.{pl}.{}",
            token("read:contacts").rsplit('.').next().unwrap()
        ),
        "bad_signature",
    ));
    cases.push((
        "tampered header".into(),
        format!(
            "{}.{pl}.{sig}",
            b64(json!({"alg": "RS256", "typ": "JWT", "kid": KID, "x": 1})
                .to_string()
                .as_bytes())
        ),
        "bad_signature",
    ));
    cases.push((
        "tampered payload".into(),
        format!("{h}.{}.{sig}", b64(escalated.to_string().as_bytes())),
        "bad_signature",
    ));
    cases.push(("two segments".into(), format!("{h}.{pl}"), "malformed"));
    cases.push(("four segments".into(), format!("{good}.{sig}"), "malformed"));
    cases.push(("one segment".into(), h.to_string(), "malformed"));
    cases.push(("invalid base64".into(), "!!!.@@@.###".into(), "malformed"));
    cases.push((
        "padded base64 header".into(),
        format!("{h}==.{pl}.{sig}"),
        "malformed",
    ));
    cases.push((
        "header not JSON".into(),
        format!("{}.{pl}.{sig}", b64(b"not json")),
        "malformed",
    ));
    cases.push((
        "payload not an object".into(),
        sign_raw(key(), &ours, &json!([1, 2])),
        "malformed",
    ));
    cases.push((
        "over 8 KiB".into(),
        {
            let mut big = good_claims.clone();
            big["pad"] = json!("x".repeat(9000));
            sign(&big)
        },
        "malformed",
    ));
    cases.push(("expired".into(), sign(&expired), "expired"));
    cases.push(("nbf ahead".into(), sign(&ahead), "not_yet_valid"));
    cases.push((
        "wrong iss (no trailing slash)".into(),
        sign(&wrong_iss),
        "wrong_issuer",
    ));
    cases.push((
        "wrong aud (near misses)".into(),
        sign(&wrong_aud),
        "wrong_audience",
    ));
    cases.push(("missing exp".into(), sign(&no_exp), "malformed"));
    cases.push(("exp as a string".into(), sign(&str_exp), "malformed"));
    cases.push(("empty token".into(), String::new(), "malformed"));

    let metrics =
        || String::from_utf8_lossy(&http_get(admin_addr(admin), "/metrics").body).into_owned();
    for (name, tok, reason) in &cases {
        let series = format!("scopegate_token_rejections_total{{reason=\"{reason}\"}}");
        let before = metric(&metrics(), &series);
        let r = p.send(&format!(
            "GET /contacts/1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {tok}\r\n\r\n"
        ));
        assert_eq!(r.status, 401, "{name}");
        assert!(
            r.header("www-authenticate")
                .unwrap_or_default()
                .contains("error=\"invalid_token\""),
            "{name}: {:?}",
            r.header("www-authenticate")
        );
        assert!(
            eventually(2, || metric(&metrics(), &series) == before + 1.0),
            "{name}: expected reason {reason}\n{}",
            metrics()
        );
    }
    assert_eq!(attacker_jwks.hits(), 0, "jku/x5u must never be fetched");
    // The real token still works after all that.
    assert_eq!(p.get("/contacts/1", Some(&good)).status, 200);
}

//! DPoP (RFC 9449) proofs made by hand, for the tests of scopegate's checks.

use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use super::{b64, now, token_with, Proxy, Response};

/// A DPoP key of a client, and proofs made with it (any header and claims, so one check at a
/// time can be broken).
pub struct DpopKey {
    pub pair: EcdsaKeyPair,
    pub jwk: Value,
}

impl DpopKey {
    pub fn new() -> DpopKey {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let jwk = json!({
            "kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });
        DpopKey { pair, jwk }
    }

    pub fn jkt(&self) -> String {
        scopegate::auth::dpop::thumbprint(self.jwk.as_object().unwrap()).unwrap()
    }

    pub fn token(&self, scope: &str, aud: &str) -> String {
        token_with(scope, json!({ "aud": aud, "cnf": { "jkt": self.jkt() } }))
    }

    pub fn header(&self) -> Value {
        json!({ "typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk })
    }

    pub fn claims(&self, method: &str, url: &str, token: &str) -> Value {
        json!({
            "jti": unique(),
            "htm": method,
            "htu": url,
            "iat": now(),
            "ath": ath(token),
        })
    }

    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let sig = self.pair.sign(&rng, input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    pub fn proof(&self, method: &str, url: &str, token: &str) -> String {
        self.sign(&self.header(), &self.claims(method, url, token))
    }
}

/// A fresh `jti`.
pub fn unique() -> String {
    let mut b = [0u8; 12];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    URL_SAFE_NO_PAD.encode(b)
}

/// The `ath` of a token: base64url SHA-256.
pub fn ath(token: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    URL_SAFE_NO_PAD.encode(d.as_ref())
}

/// A request to `host` with `Authorization: <scheme> <token>`, `DPoP` proofs and `extra`
/// header lines, on a new connection.
pub fn dpop_call(
    p: &Proxy,
    method: &str,
    host: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    proofs: &[&str],
    extra: &str,
) -> Response {
    let mut headers = String::new();
    if let Some((scheme, token)) = auth {
        headers.push_str(&format!("Authorization: {scheme} {token}\r\n"));
    }
    for proof in proofs {
        headers.push_str(&format!("DPoP: {proof}\r\n"));
    }
    p.send(&format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}{extra}Content-Length: 0\r\n\r\n"
    ))
}

/// `[apis.NAME]` on host `NAME.test` (audience `https://NAME.test`) requiring DPoP, with `pop`
/// added to its `proof_of_possession`: `GET`/`POST /contacts` (`read:contacts`) and
/// `DELETE /contacts/{id}` (`delete:contacts`) on the `contacts` upstream.
pub fn dpop_api(name: &str, pop: &str) -> String {
    format!(
        "[apis.{name}]\naudience = \"https://{name}.test\"\nhosts = [\"{name}.test\"]\nupstream = \"contacts\"\n\
         [apis.{name}.proof_of_possession]\nmechanism = \"dpop\"\n{pop}\n\
         [[apis.{name}.routes]]\nmethods = [\"GET\", \"POST\"]\npath = \"/contacts\"\nscopes = [\"read:contacts\"]\n\
         [[apis.{name}.routes]]\nmethods = [\"DELETE\"]\npath = \"/contacts/{{id}}\"\nscopes = [\"delete:contacts\"]\n"
    )
}

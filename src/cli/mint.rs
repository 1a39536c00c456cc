//! Minting tokens and keys for local testing, the demo and load tests (`scopegate token`).

use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// Defaults of `scopegate token`, matching the example config in `config/`.
pub const DEFAULT_ISSUER: &str = "https://issuer.scopegate.local/";
pub const DEFAULT_AUDIENCE: &str = "https://contacts.example";

/// The claims of a minted token; also the options of `scopegate token`.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenRequest {
    #[arg(long)]
    pub kid: Option<String>,
    /// Space-separated scopes.
    #[arg(long, default_value = "")]
    pub scope: String,
    #[arg(long, default_value = DEFAULT_ISSUER)]
    pub iss: String,
    #[arg(long, default_value = DEFAULT_AUDIENCE)]
    pub aud: String,
    #[arg(long, default_value = "scopegate-user")]
    pub sub: String,
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Another claim, `k=v` (repeatable); `v` is read as JSON when it parses, else as a string.
    #[arg(long = "claim", value_parser = parse_claim)]
    pub claims: Vec<(String, serde_json::Value)>,
    /// Bind the token to a DPoP key: its RFC 7638 thumbprint, as `cnf.jkt` (see `dpop-proof
    /// --thumbprint`).
    #[arg(long)]
    pub jkt: Option<String>,
    /// Bind the token to a client certificate: its SHA-256 thumbprint, as `cnf["x5t#S256"]`.
    #[arg(long)]
    pub x5t: Option<String>,
}

/// `k=v`: `v` as JSON when it parses (`true`, `3`, `["a","b"]`), else as a string.
pub fn parse_claim(s: &str) -> Result<(String, serde_json::Value), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not a claim like k=v"))?;
    if k.is_empty() {
        return Err(format!("{s:?} has no claim name"));
    }
    let value =
        serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
    Ok((k.to_string(), value))
}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("the key is neither an RSA nor an EC (P-256) private key in PEM")]
    UnsupportedKey,
    #[error("signing failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Sign a token with a PEM private key: RS256 for RSA keys, ES256 for P-256 keys.
pub fn mint(key_pem: &[u8], req: &TokenRequest, now: u64) -> Result<String, MintError> {
    let (key, alg) = if let Ok(k) = EncodingKey::from_rsa_pem(key_pem) {
        (k, Algorithm::RS256)
    } else if let Ok(k) = EncodingKey::from_ec_pem(key_pem) {
        (k, Algorithm::ES256)
    } else {
        return Err(MintError::UnsupportedKey);
    };
    let mut header = Header::new(alg);
    header.kid = req.kid.clone();
    let mut claims = serde_json::json!({
        "iss": req.iss,
        "aud": req.aud,
        "sub": req.sub,
        "scope": req.scope,
        "iat": now,
        "nbf": now,
        "exp": now + req.ttl.as_secs(),
    });
    for (k, v) in &req.claims {
        claims[k] = v.clone();
    }
    let mut cnf = serde_json::Map::new();
    if let Some(jkt) = &req.jkt {
        cnf.insert("jkt".into(), jkt.clone().into());
    }
    if let Some(x5t) = &req.x5t {
        cnf.insert("x5t#S256".into(), x5t.clone().into());
    }
    if !cnf.is_empty() {
        claims["cnf"] = serde_json::Value::Object(cnf);
    }
    Ok(jsonwebtoken::encode(&header, &claims, &key)?)
}

/// A fresh RSA-2048 signing key: (private key PEM, JWKS document holding its public half).
pub fn generate_rsa_key(kid: &str) -> (String, String) {
    let pair = KeyPair::generate(KeySize::Rsa2048).expect("RSA key generation");
    let der = pair.as_der().expect("PKCS#8 encoding");
    let pem = pem_wrap("PRIVATE KEY", der.as_ref());
    let public = pair.public_key();
    let jwks = serde_json::json!({
        "keys": [{
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
        }]
    });
    (pem, serde_json::to_string_pretty(&jwks).unwrap())
}

/// A fresh P-256 signing key: (private key PEM, JWKS document holding its public half).
pub fn generate_ec_key(kid: &str) -> (String, String) {
    use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("EC key generation");
    let der = pair.to_pkcs8v1().expect("PKCS#8 encoding");
    let pem = pem_wrap("PRIVATE KEY", der.as_ref());
    // Uncompressed point: 0x04 || x || y.
    let point = pair.public_key().as_ref().to_vec();
    let jwks = serde_json::json!({
        "keys": [{
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }]
    });
    (pem, serde_json::to_string_pretty(&jwks).unwrap())
}

fn pem_wrap(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap());
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// `90s`, `15m`, `1h`, `2d`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 15m, 1h or 2d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?} is not a duration like 90s, 15m, 1h or 2d")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_json_when_they_parse() {
        assert_eq!(
            parse_claim("a=true").unwrap(),
            ("a".into(), serde_json::json!(true))
        );
        assert_eq!(
            parse_claim("n=3").unwrap(),
            ("n".into(), serde_json::json!(3))
        );
        assert_eq!(
            parse_claim("org=acme").unwrap(),
            ("org".into(), serde_json::json!("acme"))
        );
        assert_eq!(
            parse_claim("l=[\"x\"]").unwrap(),
            ("l".into(), serde_json::json!(["x"]))
        );
        assert_eq!(
            parse_claim("e=").unwrap(),
            ("e".into(), serde_json::json!(""))
        );
        assert!(parse_claim("novalue").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("h").is_err());
    }
}

//! `scopegate dpop-proof`: DPoP proofs (RFC 9449 §4.2) signed with a P-256 key, and the
//! thumbprints bound tokens name (`cnf.jkt`, `cnf["x5t#S256"]`), so bound tokens can be tried
//! with curl.

use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Map, Value};

/// The options of `scopegate dpop-proof`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProofRequest {
    /// The request method the proof is for (`htm`).
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// The request URL the proof is for (`htu`), e.g. https://api.example/contacts.
    #[arg(long)]
    pub url: Option<String>,
    /// The access token the proof goes with (`ath`).
    #[arg(long)]
    pub token: Option<String>,
    /// A nonce the server gave in `DPoP-Nonce`.
    #[arg(long)]
    pub nonce: Option<String>,
    /// Print the key's RFC 7638 thumbprint (what `cnf.jkt` names) instead of a proof.
    #[arg(long)]
    pub thumbprint: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("the key is not an EC P-256 private key in PEM (PKCS#8 or SEC1)")]
    Key,
    #[error("the certificate file holds no PEM certificate")]
    Certificate,
    #[error("--url is needed for a proof (the URL of the request it goes with)")]
    NoUrl,
    #[error("signing failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// A P-256 key from PEM, and its public JWK.
fn load_key(pem: &[u8]) -> Result<(EcdsaKeyPair, Map<String, Value>), ProofError> {
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|_| ProofError::Key)?;
    let pair =
        EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_der())
            .map_err(|_| ProofError::Key)?;
    // Uncompressed point: 0x04 || x || y.
    let point = pair.public_key().as_ref().to_vec();
    if point.len() != 65 {
        return Err(ProofError::Key);
    }
    let jwk = json!({
        "kty": "EC",
        "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    });
    let Value::Object(jwk) = jwk else {
        unreachable!("a JSON object")
    };
    Ok((pair, jwk))
}

/// The RFC 7638 thumbprint of a P-256 key in PEM: the `cnf.jkt` of tokens bound to it.
pub fn key_thumbprint(pem: &[u8]) -> Result<String, ProofError> {
    let (_, jwk) = load_key(pem)?;
    crate::auth::dpop::thumbprint(&jwk).ok_or(ProofError::Key)
}

/// The SHA-256 thumbprint (base64url) of the first certificate in a PEM file: the
/// `cnf["x5t#S256"]` of tokens bound to it (RFC 8705 §3.1).
pub fn certificate_thumbprint(pem: &[u8]) -> Result<String, ProofError> {
    let cert = CertificateDer::pem_slice_iter(pem)
        .next()
        .and_then(Result::ok)
        .ok_or(ProofError::Certificate)?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.as_ref());
    Ok(URL_SAFE_NO_PAD.encode(digest.as_ref()))
}

/// What `scopegate dpop-proof` prints: a proof for the request, or the key's thumbprint.
pub fn dpop_proof(pem: &[u8], req: &ProofRequest, now: u64) -> Result<String, ProofError> {
    let (pair, jwk) = load_key(pem)?;
    if req.thumbprint {
        return crate::auth::dpop::thumbprint(&jwk).ok_or(ProofError::Key);
    }
    let url = req.url.as_deref().ok_or(ProofError::NoUrl)?;
    let mut jti = [0u8; 16];
    aws_lc_rs::rand::fill(&mut jti).map_err(|_| ProofError::Key)?;
    let mut claims = json!({
        "jti": URL_SAFE_NO_PAD.encode(jti),
        "htm": req.method,
        "htu": url,
        "iat": now,
    });
    if let Some(token) = &req.token {
        let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.trim().as_bytes());
        claims["ath"] = Value::String(URL_SAFE_NO_PAD.encode(hash.as_ref()));
    }
    if let Some(nonce) = &req.nonce {
        claims["nonce"] = Value::String(nonce.clone());
    }
    let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let signature = pair
        .sign(&rng, signing_input.as_bytes())
        .map_err(|_| ProofError::Key)?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.as_ref())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::dpop::{check, DpopPolicy, Expect, NonceKey, Target};

    #[test]
    fn a_printed_proof_passes_the_checks_scopegate_makes() {
        let (pem, _) = crate::cli::mint::generate_ec_key("k");
        let req = ProofRequest {
            method: "POST".into(),
            url: Some("https://api.example:443/a//b?q=1".into()),
            token: Some("tok.en.x".into()),
            nonce: None,
            thumbprint: false,
        };
        let proof = dpop_proof(pem.as_bytes(), &req, 1_000).unwrap();
        let jkt = key_thumbprint(pem.as_bytes()).unwrap();
        let target = Target {
            method: "POST",
            https: true,
            host: "api.example",
            path: "/a/b",
        };
        let expect = Expect {
            token: b"tok.en.x",
            jkt: &jkt,
            now: 1_010,
            leeway: 0,
        };
        let nonces = NonceKey::new(b"s");
        let policy = DpopPolicy::default();
        assert!(check(proof.as_bytes(), &policy, &nonces, &target, &expect).is_ok());
        let other = Expect {
            jkt: "another",
            ..expect
        };
        assert!(check(proof.as_bytes(), &policy, &nonces, &target, &other).is_err());
    }
}

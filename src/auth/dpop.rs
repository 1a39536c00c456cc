//! DPoP (RFC 9449): the proof a sender-constrained token is presented with, checked as §4.3
//! says, and the server nonces of §9. Pure: the clock, the request's method and URI and the
//! access token are passed in; replay detection (which needs a store) is the caller's, keyed
//! by `Proof::replay_key`.

use std::str::FromStr;

use aws_lc_rs::{digest, hmac};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use super::jwt::{media_type, strict_json};

/// A proof larger than this is refused before any parsing (a proof is a few hundred bytes; an
/// RSA key makes it about 1.5 KB).
pub const MAX_PROOF_BYTES: usize = 8 * 1024;

/// The algorithms a proof may be signed with when an API names none (SPEC's default).
pub const DEFAULT_ALGORITHMS: [Algorithm; 4] = [
    Algorithm::ES256,
    Algorithm::EdDSA,
    Algorithm::PS256,
    Algorithm::RS256,
];

/// Asymmetric algorithms a proof can use: a proof's key is public, so a MAC can never be one.
pub fn is_proof_algorithm(alg: Algorithm) -> bool {
    !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// A proof's (or the config's) `alg` name: the JWS names, and `Ed25519`, the fully specified
/// name of EdDSA over Ed25519 (RFC 9864) that newer clients (oauth4webapi 3) sign with. `none`
/// and MACs are never one.
pub fn proof_algorithm(name: &str) -> Option<Algorithm> {
    let alg = match name {
        "Ed25519" => Algorithm::EdDSA,
        other => Algorithm::from_str(other).ok()?,
    };
    is_proof_algorithm(alg).then_some(alg)
}

/// An API's DPoP settings (`[apis.NAME.proof_of_possession]`), or the defaults every API uses
/// for a DPoP-bound token (a bound token always needs its proof).
#[derive(Debug, Clone)]
pub struct DpopPolicy {
    pub algorithms: Vec<Algorithm>,
    /// `algs="ES256 EdDSA ..."` as the challenge names them.
    pub algs_text: String,
    pub max_age: u64,
    /// Proofs must carry a nonce scopegate issued.
    pub nonce: bool,
}

impl DpopPolicy {
    pub fn new(algorithms: Vec<Algorithm>, max_age: u64, nonce: bool) -> DpopPolicy {
        let algs_text = algorithms
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(" ");
        DpopPolicy {
            algorithms,
            algs_text,
            max_age,
            nonce,
        }
    }
}

impl Default for DpopPolicy {
    fn default() -> DpopPolicy {
        DpopPolicy::new(DEFAULT_ALGORITHMS.to_vec(), 300, false)
    }
}

/// What is wrong with a proof (the `error_description` says it, never echoing input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofFlaw {
    Missing,
    Multiple,
    Malformed,
    Type,
    Algorithm,
    Key,
    PrivateKey,
    Critical,
    Signature,
    Method,
    Uri,
    IssuedAt,
    Jti,
    AccessTokenHash,
    Thumbprint,
}

impl ProofFlaw {
    pub const ALL: [ProofFlaw; 15] = [
        ProofFlaw::Missing,
        ProofFlaw::Multiple,
        ProofFlaw::Malformed,
        ProofFlaw::Type,
        ProofFlaw::Algorithm,
        ProofFlaw::Key,
        ProofFlaw::PrivateKey,
        ProofFlaw::Critical,
        ProofFlaw::Signature,
        ProofFlaw::Method,
        ProofFlaw::Uri,
        ProofFlaw::IssuedAt,
        ProofFlaw::Jti,
        ProofFlaw::AccessTokenHash,
        ProofFlaw::Thumbprint,
    ];

    pub fn description(self) -> &'static str {
        match self {
            ProofFlaw::Missing => "the DPoP-bound token came without a DPoP proof",
            ProofFlaw::Multiple => "more than one DPoP header",
            ProofFlaw::Malformed => "the DPoP proof is not a JWS with a JSON header and claims",
            ProofFlaw::Type => "the DPoP proof's typ is not dpop+jwt",
            ProofFlaw::Algorithm => "the DPoP proof's alg is not accepted",
            ProofFlaw::Key => "the DPoP proof's jwk is not a usable public key for its alg",
            ProofFlaw::PrivateKey => "the DPoP proof's jwk holds private key material",
            ProofFlaw::Critical => "the DPoP proof has critical header extensions",
            ProofFlaw::Signature => "the DPoP proof's signature is invalid",
            ProofFlaw::Method => "the DPoP proof's htm is not the request method",
            ProofFlaw::Uri => "the DPoP proof's htu is not the request URI",
            ProofFlaw::IssuedAt => "the DPoP proof's iat is missing or outside the accepted window",
            ProofFlaw::Jti => "the DPoP proof has no usable jti",
            ProofFlaw::AccessTokenHash => "the DPoP proof's ath is not the access token's hash",
            ProofFlaw::Thumbprint => "the DPoP proof's key is not the one the token is bound to",
        }
    }
}

/// Why a proof was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpopError {
    Invalid(ProofFlaw),
    /// Valid but for its nonce: missing, stale or not one scopegate issued (`use_dpop_nonce`).
    Nonce,
}

/// The request a proof must be for.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub method: &'a str,
    pub https: bool,
    /// The request's host (`Host`), with or without a port.
    pub host: &'a str,
    /// The normalized path.
    pub path: &'a str,
}

/// What a proof is checked against besides the request.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// The access token as sent (for `ath`).
    pub token: &'a [u8],
    /// The token's `cnf.jkt`.
    pub jkt: &'a str,
    pub now: u64,
    /// The token issuer's leeway: how far ahead `iat` may be.
    pub leeway: u64,
}

/// A proof that passed every check but replay: the caller records `replay_key` for `ttl`
/// seconds and refuses the request when it was recorded before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proof {
    pub replay_key: [u8; 16],
    pub ttl: u64,
    /// The proof's `iat`, and the window it was accepted under (`dpop_max_age_seconds`, and
    /// the issuer's leeway ahead).
    pub iat: u64,
    pub max_age: u64,
    pub leeway: u64,
}

impl Proof {
    /// The key as text, for a shared store.
    pub fn replay_key_hex(&self) -> String {
        self.replay_key.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[derive(serde::Deserialize)]
struct ProofHeader {
    typ: Option<String>,
    alg: String,
    jwk: Option<Map<String, Value>>,
    crit: Option<Value>,
}

/// Check one `DPoP` header value against `policy` (RFC 9449 §4.3), in the RFC's order; the
/// nonce last, so a client is only asked for one by a proof that is otherwise good.
pub fn check(
    proof: &[u8],
    policy: &DpopPolicy,
    nonces: &NonceKey,
    target: &Target<'_>,
    expect: &Expect<'_>,
) -> Result<Proof, DpopError> {
    use ProofFlaw as F;
    let bad = |f: ProofFlaw| DpopError::Invalid(f);
    if proof.is_empty() || proof.len() > MAX_PROOF_BYTES {
        return Err(bad(F::Malformed));
    }
    let text = std::str::from_utf8(proof).map_err(|_| bad(F::Malformed))?;
    let mut parts = text.split('.');
    let (Some(h), Some(p), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(F::Malformed));
    };
    let header: ProofHeader = decode_part(h).ok_or(bad(F::Malformed))?;
    let claims: Map<String, Value> = decode_part(p).ok_or(bad(F::Malformed))?;
    let jwk = verify_jws(header, &proof[..h.len() + 1 + p.len()], signature, policy)?;
    if claims.get("htm").and_then(Value::as_str) != Some(target.method) {
        return Err(bad(F::Method));
    }
    let htu = claims
        .get("htu")
        .and_then(Value::as_str)
        .ok_or(bad(F::Uri))?;
    if !htu_matches(htu, target) {
        return Err(bad(F::Uri));
    }
    let iat = match claims.get("iat") {
        Some(Value::Number(n)) => n.as_f64().filter(|f| f.is_finite() && *f >= 0.0),
        _ => None,
    }
    .ok_or(bad(F::IssuedAt))? as u64;
    if iat > expect.now.saturating_add(expect.leeway)
        || iat.saturating_add(policy.max_age) < expect.now
    {
        return Err(bad(F::IssuedAt));
    }
    let jti = match claims.get("jti").and_then(Value::as_str) {
        Some(j) if !j.is_empty() && j.len() <= 512 => j,
        _ => return Err(bad(F::Jti)),
    };
    let ath = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, expect.token));
    if claims.get("ath").and_then(Value::as_str) != Some(ath.as_str()) {
        return Err(bad(F::AccessTokenHash));
    }
    if thumbprint(&jwk).as_deref() != Some(expect.jkt) {
        return Err(bad(F::Thumbprint));
    }
    if policy.nonce {
        let nonce = claims.get("nonce").and_then(Value::as_str);
        if !nonce.is_some_and(|n| nonces.accepts(n, expect.now, policy.max_age)) {
            return Err(DpopError::Nonce);
        }
    }
    Ok(Proof {
        replay_key: replay_key(expect.jkt, jti),
        // Long enough to outlive every `iat` still accepted.
        ttl: policy.max_age + expect.leeway + 1,
        iat,
        max_age: policy.max_age,
        leeway: expect.leeway,
    })
}

/// The proof's JOSE header checked (`typ`, `alg`, no `crit`, a public `jwk`) and the
/// signature over `signing_input` verified with that `jwk`, which is returned.
fn verify_jws(
    header: ProofHeader,
    signing_input: &[u8],
    signature: &str,
    policy: &DpopPolicy,
) -> Result<Map<String, Value>, DpopError> {
    use ProofFlaw as F;
    let bad = DpopError::Invalid;
    if header.typ.as_deref().map(media_type).as_deref() != Some("dpop+jwt") {
        return Err(bad(F::Type));
    }
    let alg = proof_algorithm(&header.alg).ok_or(bad(F::Algorithm))?;
    if !policy.algorithms.contains(&alg) {
        return Err(bad(F::Algorithm));
    }
    if header.crit.is_some() {
        return Err(bad(F::Critical));
    }
    let jwk = header.jwk.ok_or(bad(F::Key))?;
    let key = public_key(&jwk, alg)?;
    let verified = !signature.is_empty()
        && jsonwebtoken::crypto::verify(signature, signing_input, &key, alg).unwrap_or(false);
    if !verified {
        return Err(bad(F::Signature));
    }
    Ok(jwk)
}

/// A base64url JSON part, refusing duplicate member names as token parts are.
fn decode_part<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_value(strict_json(&bytes)?).ok()
}

/// Members of a JWK that only a private (or symmetric) key has (RFC 7518 §6.2.2, §6.3.2, §6.4).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

fn member<'j>(jwk: &'j Map<String, Value>, name: &str) -> Result<&'j str, DpopError> {
    match jwk.get(name).and_then(Value::as_str) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(DpopError::Invalid(ProofFlaw::Key)),
    }
}

/// The proof's `jwk` as a verification key for `alg`: public members only, of the key type
/// and curve the algorithm uses.
fn public_key(jwk: &Map<String, Value>, alg: Algorithm) -> Result<DecodingKey, DpopError> {
    let bad = DpopError::Invalid(ProofFlaw::Key);
    if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
        return Err(DpopError::Invalid(ProofFlaw::PrivateKey));
    }
    let kty = member(jwk, "kty")?;
    let key = match (kty, alg) {
        ("EC", Algorithm::ES256 | Algorithm::ES384) => {
            let (crv, size) = match alg {
                Algorithm::ES256 => ("P-256", 32),
                _ => ("P-384", 48),
            };
            let (x, y) = (member(jwk, "x")?, member(jwk, "y")?);
            let len = |c: &str| URL_SAFE_NO_PAD.decode(c).map(|b| b.len()).ok();
            if member(jwk, "crv")? != crv || len(x) != Some(size) || len(y) != Some(size) {
                return Err(bad);
            }
            DecodingKey::from_ec_components(x, y)
        }
        ("OKP", Algorithm::EdDSA) => {
            if member(jwk, "crv")? != "Ed25519" {
                return Err(bad);
            }
            DecodingKey::from_ed_components(member(jwk, "x")?)
        }
        (
            "RSA",
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => DecodingKey::from_rsa_components(member(jwk, "n")?, member(jwk, "e")?),
        _ => return Err(bad),
    };
    key.map_err(|_| bad)
}

/// The RFC 7638 SHA-256 thumbprint of a public JWK (base64url), as `cnf.jkt` names it.
pub fn thumbprint(jwk: &Map<String, Value>) -> Option<String> {
    let required: &[&str] = match jwk.get("kty")?.as_str()? {
        "EC" => &["crv", "kty", "x", "y"],
        "RSA" => &["e", "kty", "n"],
        "OKP" => &["crv", "kty", "x"],
        _ => return None,
    };
    // Lexicographic order, no whitespace, each value a JSON string (RFC 7638 §3).
    let mut canonical = String::from("{");
    for (i, name) in required.iter().enumerate() {
        let value = jwk.get(*name)?.as_str()?;
        if i > 0 {
            canonical.push(',');
        }
        canonical.push_str(&serde_json::to_string(name).ok()?);
        canonical.push(':');
        canonical.push_str(&serde_json::to_string(value).ok()?);
    }
    canonical.push('}');
    Some(URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes())))
}

/// `htu` names the request's URI (RFC 9449 §4.3 step 9): query and fragment ignored, scheme
/// and host compared case-insensitively with a default port removed, and the path normalized
/// as request paths are (so `//a//b` matches `/a/b`).
pub fn htu_matches(htu: &str, target: &Target<'_>) -> bool {
    let Some((scheme, rest)) = htu.split_once("://") else {
        return false;
    };
    let https = if scheme.eq_ignore_ascii_case("https") {
        true
    } else if scheme.eq_ignore_ascii_case("http") {
        false
    } else {
        return false;
    };
    if https != target.https {
        return false;
    }
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') || authority.is_empty() {
        return false;
    }
    let host_of = |h: &str| {
        let h = h.to_ascii_lowercase();
        let default = if https { ":443" } else { ":80" };
        match h.strip_suffix(default) {
            Some(bare) => bare.to_string(),
            None => h,
        }
    };
    if host_of(authority) != host_of(target.host) {
        return false;
    }
    match crate::routing::normalize(path) {
        Ok(p) => p == target.path,
        Err(_) => false,
    }
}

/// The key a proof is remembered by: its `jti`, for the key that signed it.
fn replay_key(jkt: &str, jti: &str) -> [u8; 16] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(jkt.as_bytes());
    ctx.update(&[0]);
    ctx.update(jti.as_bytes());
    let d = ctx.finish();
    let mut key = [0u8; 16];
    key.copy_from_slice(&d.as_ref()[..16]);
    key
}

/// Server nonces (RFC 9449 §9) without state: a nonce is the time it was issued and a MAC over
/// it, so any replica holding the same secret accepts any replica's nonce.
pub struct NonceKey(hmac::Key);

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey")
    }
}

/// Bytes of MAC a nonce carries.
const NONCE_MAC: usize = 16;

impl NonceKey {
    pub fn new(secret: &[u8]) -> NonceKey {
        // Domain-separated, so the shared secret keys nothing else the same way.
        let derived = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, secret),
            b"scopegate dpop nonce v1",
        );
        NonceKey(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
    }

    /// A key of this process alone: a random secret drawn once per process.
    pub fn per_process() -> NonceKey {
        static SECRET: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
        let secret = SECRET.get_or_init(|| {
            let mut s = [0u8; 32];
            aws_lc_rs::rand::fill(&mut s).expect("the system's random source");
            s
        });
        NonceKey::new(secret)
    }

    /// A nonce issued at `now` (Unix seconds).
    pub fn issue(&self, now: u64) -> String {
        let time = now.to_be_bytes();
        let tag = hmac::sign(&self.0, &time);
        let mut raw = [0u8; 8 + NONCE_MAC];
        raw[..8].copy_from_slice(&time);
        raw[8..].copy_from_slice(&tag.as_ref()[..NONCE_MAC]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// A nonce this key issued no more than `max_age` seconds before `now` (and not after it).
    pub fn accepts(&self, nonce: &str, now: u64, max_age: u64) -> bool {
        let Ok(raw) = URL_SAFE_NO_PAD.decode(nonce) else {
            return false;
        };
        if raw.len() != 8 + NONCE_MAC {
            return false;
        }
        let issued = u64::from_be_bytes(raw[..8].try_into().unwrap_or_default());
        let tag = hmac::sign(&self.0, &raw[..8]);
        // Constant time: the MAC is compared without telling how much of it matched.
        let same = aws_lc_rs::constant_time::verify_slices_are_equal(
            &tag.as_ref()[..NONCE_MAC],
            &raw[8..],
        )
        .is_ok();
        same && issued <= now && now - issued <= max_age
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target<'a>(host: &'a str, path: &'a str) -> Target<'a> {
        Target {
            method: "GET",
            https: true,
            host,
            path,
        }
    }

    #[test]
    fn htu_compares_scheme_host_and_normalized_path_only() {
        let t = target("API.example:443", "/a/b");
        for good in [
            "https://api.example/a/b",
            "HTTPS://Api.Example:443/a/b?x=1",
            "https://api.example//a//b#frag",
            "https://api.example/a/./c/../b",
        ] {
            assert!(htu_matches(good, &t), "{good}");
        }
        for bad in [
            "http://api.example/a/b",
            "https://api.example:8443/a/b",
            "https://other.example/a/b",
            "https://api.example/a/b/",
            "https://user@api.example/a/b",
            "https://api.example/a/%2fb",
            "api.example/a/b",
            "https:///a/b",
        ] {
            assert!(!htu_matches(bad, &t), "{bad}");
        }
        let plain = Target {
            https: false,
            ..target("h:80", "/")
        };
        assert!(htu_matches("http://h", &plain));
        assert!(htu_matches("http://h:80/", &plain));
    }

    #[test]
    fn thumbprints_follow_rfc_7638() {
        // RFC 7638 §3.1's example key and thumbprint.
        let jwk: Map<String, Value> = serde_json::from_str(
            r#"{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}"#,
        )
        .unwrap();
        assert_eq!(
            thumbprint(&jwk).as_deref(),
            Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
        );
    }

    #[test]
    fn nonces_are_accepted_within_their_age_and_by_the_same_secret_only() {
        let a = NonceKey::new(b"shared");
        let b = NonceKey::new(b"shared");
        let other = NonceKey::new(b"another");
        let n = a.issue(1_000);
        assert!(b.accepts(&n, 1_000, 300), "another replica with the secret");
        assert!(b.accepts(&n, 1_300, 300));
        assert!(!b.accepts(&n, 1_301, 300), "stale");
        assert!(!b.accepts(&n, 999, 300), "issued in the future");
        assert!(!other.accepts(&n, 1_000, 300), "another secret");
        let mut forged = URL_SAFE_NO_PAD.decode(&n).unwrap();
        forged[7] ^= 1; // another time, the same MAC
        assert!(!a.accepts(&URL_SAFE_NO_PAD.encode(forged), 1_000, 300));
        assert!(!a.accepts("", 1_000, 300));
    }

    #[test]
    fn macs_are_never_proof_algorithms() {
        assert!(!is_proof_algorithm(Algorithm::HS256));
        assert_eq!(proof_algorithm("HS256"), None);
        assert_eq!(proof_algorithm("none"), None);
        assert_eq!(proof_algorithm("Ed25519"), Some(Algorithm::EdDSA));
        assert_eq!(proof_algorithm("ES256"), Some(Algorithm::ES256));
        assert!(DEFAULT_ALGORITHMS.iter().all(|a| is_proof_algorithm(*a)));
        assert_eq!(DpopPolicy::default().algs_text, "ES256 EdDSA PS256 RS256");
    }
}

//! Bearer extraction and JWT validation: signature with the issuer's keys, `iss`, `aud`, `exp`,
//! `nbf`, then the granted scopes. Every failure is a typed `Rejection`.

use std::str::FromStr;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{HeaderMap, AUTHORIZATION};
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use crate::keys::{KeyMatch, KeyStore};

/// Tokens above this size are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why a token was not accepted. `reason()` is the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Missing,
    Malformed(&'static str),
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    /// The token names a key the issuer (index) does not publish (yet).
    UnknownKey(usize),
    DisallowedAlg,
}

impl Rejection {
    pub const REASONS: [&'static str; 9] = [
        "missing",
        "malformed",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "wrong_audience",
        "unknown_key",
        "disallowed_alg",
    ];

    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Missing => "missing",
            Rejection::Malformed(_) => "malformed",
            Rejection::BadSignature => "bad_signature",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::WrongIssuer => "wrong_issuer",
            Rejection::WrongAudience => "wrong_audience",
            Rejection::UnknownKey(_) => "unknown_key",
            Rejection::DisallowedAlg => "disallowed_alg",
        }
    }

    /// The `error_description` sent to the client: says what is wrong without echoing input.
    pub fn description(&self) -> &'static str {
        match self {
            Rejection::Missing => "no bearer token in the request",
            Rejection::Malformed(why) => why,
            Rejection::BadSignature => "the token signature is invalid",
            Rejection::Expired => "the token has expired",
            Rejection::NotYetValid => "the token is not valid yet",
            Rejection::WrongIssuer => "the token issuer is not trusted",
            Rejection::WrongAudience => "the token audience is not accepted",
            Rejection::UnknownKey(_) => "the token is signed with an unknown key",
            Rejection::DisallowedAlg => "the token algorithm is not allowed",
        }
    }
}

/// The request's `Authorization` header could not be read as one credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerError {
    /// Two or more `Authorization` headers: which one would the upstream read?
    Ambiguous,
}

/// The bearer token of a request: `Ok(None)` when there is none (no header, or another scheme).
pub fn bearer(headers: &HeaderMap) -> Result<Option<&[u8]>, BearerError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(BearerError::Ambiguous);
    }
    let v = value.as_bytes();
    // RFC 6750 §2.1: "Bearer" 1*SP b64token; the scheme is case-insensitive (RFC 9110 §11.1).
    if v.len() < 6 || !v[..6].eq_ignore_ascii_case(b"bearer") {
        return Ok(None);
    }
    let rest = &v[6..];
    if !rest.is_empty() && rest[0] != b' ' {
        return Ok(None); // e.g. "BearerX"
    }
    let start = rest.iter().position(|&c| c != b' ').unwrap_or(rest.len());
    let end = rest
        .iter()
        .rposition(|&c| c != b' ')
        .map(|i| i + 1)
        .unwrap_or(start);
    Ok(Some(&rest[start..end]))
}

/// A trusted issuer, compiled from the config.
#[derive(Debug)]
pub struct Issuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub leeway: u64,
    pub scope_claims: Vec<String>,
    pub keys: Arc<KeyStore>,
    pub refresh: crate::jwks::RefreshPolicy,
}

/// Granted scopes, sorted and deduplicated; compared as whole, case-sensitive words.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet(Vec<Box<str>>);

impl ScopeSet {
    pub fn from_words<'a>(words: impl IntoIterator<Item = &'a str>) -> ScopeSet {
        let mut v: Vec<Box<str>> = words
            .into_iter()
            .filter(|w| !w.is_empty())
            .map(Box::from)
            .collect();
        v.sort_unstable();
        v.dedup();
        ScopeSet(v)
    }

    pub fn contains(&self, scope: &str) -> bool {
        self.0.binary_search_by(|s| (**s).cmp(scope)).is_ok()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|s| &**s)
    }
}

/// A verified token.
#[derive(Debug, Clone)]
pub struct Principal {
    pub issuer: usize,
    pub sub: Option<String>,
    pub scopes: ScopeSet,
    pub exp: u64,
    /// The claim headers of `[forward] claims`, rendered once at verification (a header value
    /// that would be invalid, e.g. with CR or LF, is left out, never sent raw).
    pub forward_headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

#[derive(serde::Deserialize)]
struct JoseHeader {
    alg: String,
    kid: Option<String>,
    crit: Option<Value>,
}

fn b64_json<T: serde::de::DeserializeOwned>(
    part: &[u8],
    what: &'static str,
) -> Result<T, Rejection> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Rejection::Malformed(what))?;
    serde_json::from_slice(&bytes).map_err(|_| Rejection::Malformed(what))
}

fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, Rejection> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f >= 0.0 && f.is_finite() => Ok(Some(f as u64)),
            _ => Err(Rejection::Malformed(
                "a time claim is not a valid NumericDate",
            )),
        },
        Some(_) => Err(Rejection::Malformed("a time claim is not a number")),
    }
}

/// Scopes from the configured claims: a space-separated string or an array of strings.
fn scopes_of(claims: &Map<String, Value>, names: &[String]) -> ScopeSet {
    let mut words: Vec<&str> = Vec::new();
    for name in names {
        match claims.get(name) {
            Some(Value::String(s)) => words.extend(s.split(' ')),
            Some(Value::Array(items)) => words.extend(items.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    ScopeSet::from_words(words)
}

/// Validate a compact JWS against the trusted issuers. `forward_claims` (claim -> header) says
/// which claims to render as headers for the upstream.
pub fn verify(
    token: &[u8],
    issuers: &[Issuer],
    forward_claims: &[(String, http::HeaderName)],
    now: u64,
) -> Result<Principal, Rejection> {
    if token.is_empty() {
        return Err(Rejection::Malformed("empty bearer token"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Rejection::Malformed("the token is larger than 8 KiB"));
    }
    let token =
        std::str::from_utf8(token).map_err(|_| Rejection::Malformed("the token is not ASCII"))?;
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::Malformed(
            "the token is not a JWS in compact form",
        ));
    };
    let header: JoseHeader = b64_json(h.as_bytes(), "the token header is not valid")?;
    let claims: Map<String, Value> = b64_json(p.as_bytes(), "the token payload is not valid")?;

    // The issuer is chosen by the unverified `iss`; everything it says is checked below against
    // that issuer's own keys, so a forged `iss` only selects which keys must verify it.
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or(Rejection::WrongIssuer)?;
    let (issuer_idx, issuer) = issuers
        .iter()
        .enumerate()
        .find(|(_, i)| i.issuer == iss)
        .ok_or(Rejection::WrongIssuer)?;

    // `none` does not parse as an Algorithm, so it can never be allowed.
    let alg = Algorithm::from_str(&header.alg).map_err(|_| Rejection::DisallowedAlg)?;
    if !issuer.algorithms.contains(&alg) {
        return Err(Rejection::DisallowedAlg);
    }
    // RFC 7515 §4.1.11: a recipient must reject extensions it does not understand; we know none.
    if header.crit.is_some() {
        return Err(Rejection::Malformed(
            "the token has critical header extensions",
        ));
    }
    if sig.is_empty() {
        return Err(Rejection::BadSignature);
    }

    let keys = issuer.keys.keys();
    let candidates = match keys.find(header.kid.as_deref(), alg) {
        KeyMatch::Keys(k) => k,
        KeyMatch::UnknownKid => return Err(Rejection::UnknownKey(issuer_idx)),
        // An HMAC token checked with an RSA public key's bytes is the classic alg confusion.
        KeyMatch::WrongFamily => return Err(Rejection::DisallowedAlg),
    };
    let message = &token.as_bytes()[..h.len() + 1 + p.len()];
    let verified = candidates
        .iter()
        .any(|k| jsonwebtoken::crypto::verify(sig, message, &k.key, alg).unwrap_or(false));
    if !verified {
        return Err(Rejection::BadSignature);
    }

    let exp =
        numeric_date(&claims, "exp")?.ok_or(Rejection::Malformed("the token has no exp claim"))?;
    if now >= exp.saturating_add(issuer.leeway) {
        return Err(Rejection::Expired);
    }
    if let Some(nbf) = numeric_date(&claims, "nbf")? {
        if nbf > now.saturating_add(issuer.leeway) {
            return Err(Rejection::NotYetValid);
        }
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => issuer.audiences.iter().any(|w| w == a),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|a| issuer.audiences.iter().any(|w| w == a)),
        _ => false,
    };
    if !aud_ok {
        return Err(Rejection::WrongAudience);
    }

    Ok(Principal {
        issuer: issuer_idx,
        sub: claims
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_string),
        scopes: scopes_of(&claims, &issuer.scope_claims),
        exp,
        forward_headers: forward_claims
            .iter()
            .filter_map(|(claim, header)| {
                let value = http::HeaderValue::from_str(&claim_text(claims.get(claim)?)).ok()?;
                Some((header.clone(), value))
            })
            .collect(),
    })
}

/// Render a claim as a header value: strings as they are, arrays of strings space-separated,
/// anything else as JSON.
fn claim_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for v in ["Bearer abc", "bearer abc", "BEARER abc", "Bearer   abc  "] {
            assert_eq!(bearer(&headers(&[v])), Ok(Some(&b"abc"[..])), "{v}");
        }
    }

    #[test]
    fn other_schemes_count_as_no_token() {
        for v in ["Basic dXNlcjpwYXNz", "Bearerabc", "Token abc"] {
            assert_eq!(bearer(&headers(&[v])), Ok(None), "{v}");
        }
        assert_eq!(bearer(&HeaderMap::new()), Ok(None));
    }

    #[test]
    fn two_authorization_headers_are_ambiguous() {
        assert_eq!(
            bearer(&headers(&["Bearer a", "Bearer b"])),
            Err(BearerError::Ambiguous)
        );
    }

    #[test]
    fn scopes_compare_as_whole_words() {
        let s = ScopeSet::from_words("read:contactsX xread:contacts READ:contacts".split(' '));
        assert!(!s.contains("read:contacts"));
        assert!(s.contains("read:contactsX"));
        let s = ScopeSet::from_words(["read:contacts", "write:contacts"]);
        assert!(s.contains("read:contacts"));
        assert!(!s.contains("read"));
    }

    #[test]
    fn scopes_come_from_strings_and_arrays() {
        let claims: Map<String, Value> = serde_json::from_str(
            r#"{"scope":"a b","scp":["c","d e"],"permissions":["f"],"other":"g"}"#,
        )
        .unwrap();
        let names = vec![
            "scope".to_string(),
            "scp".to_string(),
            "permissions".to_string(),
        ];
        let set = scopes_of(&claims, &names);
        let got: Vec<&str> = set.iter().collect();
        assert_eq!(got, vec!["a", "b", "c", "d e", "f"]);
    }
}

//! JWS validation: the signature with the issuer's keys, `iss`, `exp`, `nbf`, then what the
//! token grants (scopes, audiences, claim headers). Which audience a route wants is the
//! caller's business (`Principal::has_audience`), so one verified token serves every API.
//! Every failure is a typed `Rejection`.

use std::str::FromStr;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::keys::{KeyMatch, KeyStore};
use super::{Malformed, Rejection};
use crate::routing::ScopeSet;

/// Tokens above this size are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// A trusted issuer, compiled from the config.
#[derive(Debug)]
pub struct Issuer {
    pub issuer: String,
    pub algorithms: Vec<Algorithm>,
    pub leeway: u64,
    /// When set, the JWS `typ` must be one of these (as `media_type` gives them).
    pub token_types: Option<Vec<String>>,
    pub scope_claims: Vec<String>,
    pub keys: Arc<KeyStore>,
    pub refresh: super::jwks::RefreshPolicy,
}

/// A verified token.
#[derive(Debug, Clone)]
pub struct Principal {
    pub issuer: usize,
    pub sub: Option<String>,
    pub scopes: ScopeSet,
    pub exp: u64,
    /// The `aud` claim: one string or an array of them.
    pub audiences: Vec<Box<str>>,
    /// The claims some route's conditions name (collected at load), and only those.
    pub claims: Vec<(Box<str>, Value)>,
    /// The caller each claim the verifier keeps names to a quota (`crate::quota::claim_caller`),
    /// by the claim's place in the verifier's list: hashed once at verification, not on each
    /// request. Empty for a principal no quota counts (a policy test's).
    pub callers: Box<[Option<u64>]>,
    /// The claim headers of `[forward] claims`, rendered once at verification (a header value
    /// that would be invalid, e.g. with CR or LF, is left out, never sent raw).
    pub forward_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The key the token is bound to (RFC 7800 `cnf`), if any.
    pub binding: Binding,
}

/// What a token's `cnf` claim binds it to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binding {
    /// `cnf.jkt` (RFC 9449 §6.1): the thumbprint of the key its DPoP proofs are signed with.
    pub jkt: Option<Box<str>>,
    /// `cnf["x5t#S256"]` (RFC 8705 §3.1): the thumbprint of the client's TLS certificate.
    pub x5t: Option<Box<str>>,
}

impl Binding {
    /// `cnf` as RFC 7800 writes it; a `jkt` or `x5t#S256` that is not a string is malformed
    /// (a bound token must never pass for an unbound one). Other confirmation methods are not
    /// ones scopegate checks, and bind nothing here.
    fn of(claims: &Map<String, Value>) -> Result<Binding, Rejection> {
        let Some(cnf) = claims.get("cnf") else {
            return Ok(Binding::default());
        };
        let bad = Rejection::Malformed(Malformed::Payload);
        let cnf = cnf.as_object().ok_or(bad)?;
        let text = |name: &str| match cnf.get(name) {
            None => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(Box::from(s.as_str()))),
            Some(_) => Err(bad),
        };
        Ok(Binding {
            jkt: text("jkt")?,
            x5t: text("x5t#S256")?,
        })
    }

    pub fn is_bound(&self) -> bool {
        self.jkt.is_some() || self.x5t.is_some()
    }
}

impl Principal {
    /// Heap bytes it holds, roughly (for the token cache's byte bound).
    pub fn approx_bytes(&self) -> usize {
        let claims: usize = self
            .claims
            .iter()
            .map(|(k, v)| k.len() + v.to_string().len() + 32)
            .sum();
        let headers: usize = self.forward_headers.iter().map(|(_, v)| v.len() + 48).sum();
        std::mem::size_of::<Principal>()
            + self.sub.as_ref().map_or(0, String::len)
            + self.scopes.iter().map(|s| s.len() + 16).sum::<usize>()
            + self.audiences.iter().map(|a| a.len() + 16).sum::<usize>()
            + self.callers.len() * 16
            + claims
            + headers
            + self.binding.jkt.as_ref().map_or(0, |j| j.len())
            + self.binding.x5t.as_ref().map_or(0, |x| x.len())
    }

    /// Whether `aud` names one of `accepted` (RFC 7519 §4.1.3).
    pub fn has_audience<S: AsRef<str>>(&self, accepted: &[S]) -> bool {
        self.audiences
            .iter()
            .any(|a| accepted.iter().any(|w| w.as_ref() == &**a))
    }
}

#[derive(serde::Deserialize)]
struct JoseHeader {
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
    crit: Option<Value>,
}

/// A base64url JSON part of a JWS. A member name twice in one object makes it malformed: JSON
/// parsers disagree on which one wins (RFC 8259 §4), so a backend re-reading the forwarded
/// token could see another identity than the one checked here (RFC 7519 §4).
fn b64_json<T: serde::de::DeserializeOwned>(part: &[u8], what: Malformed) -> Result<T, Rejection> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Rejection::Malformed(what))?;
    let Strict(value) = serde_json::from_slice(&bytes).map_err(|_| Rejection::Malformed(what))?;
    serde_json::from_value(value).map_err(|_| Rejection::Malformed(what))
}

/// JSON that refuses duplicate member names, at any depth (`None` when it is not JSON).
pub(crate) fn strict_json(bytes: &[u8]) -> Option<Value> {
    serde_json::from_slice::<Strict>(bytes)
        .ok()
        .map(|Strict(v)| v)
}

/// JSON that refuses duplicate member names, at any depth.
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if out.insert(key, v).is_some() {
                return Err(serde::de::Error::custom("duplicate member name"));
            }
        }
        Ok(Value::Object(out))
    }
}

fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, Rejection> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f >= 0.0 && f.is_finite() => Ok(Some(f as u64)),
            _ => Err(Rejection::Malformed(Malformed::BadNumericDate)),
        },
        Some(_) => Err(Rejection::Malformed(Malformed::TimeNotNumber)),
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

/// The three parts of a compact JWS, decoded as far as the checks need.
struct Compact<'t> {
    header: JoseHeader,
    claims: Map<String, Value>,
    /// `header.payload`, the bytes the signature covers.
    signing_input: &'t [u8],
    signature: &'t str,
}

fn split_compact(token: &[u8]) -> Result<Compact<'_>, Rejection> {
    if token.is_empty() {
        return Err(Rejection::Malformed(Malformed::Empty));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Rejection::Malformed(Malformed::TooLarge));
    }
    let text = std::str::from_utf8(token).map_err(|_| Rejection::Malformed(Malformed::NotAscii))?;
    let mut parts = text.split('.');
    let (Some(h), Some(p), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::Malformed(Malformed::NotCompact));
    };
    Ok(Compact {
        header: b64_json(h.as_bytes(), Malformed::Header)?,
        claims: b64_json(p.as_bytes(), Malformed::Payload)?,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature,
    })
}

/// The algorithm is allowed for this issuer and one of its keys signed the token.
fn check_signature(jws: &Compact<'_>, issuer: &Issuer, issuer_idx: usize) -> Result<(), Rejection> {
    // `none` does not parse as an Algorithm, so it can never be allowed.
    let alg = Algorithm::from_str(&jws.header.alg).map_err(|_| Rejection::DisallowedAlg)?;
    if !issuer.algorithms.contains(&alg) {
        return Err(Rejection::DisallowedAlg);
    }
    // RFC 7515 §4.1.11: a recipient must reject extensions it does not understand; we know none.
    if jws.header.crit.is_some() {
        return Err(Rejection::Malformed(Malformed::Critical));
    }
    if jws.signature.is_empty() {
        return Err(Rejection::BadSignature);
    }
    let keys = issuer.keys.keys();
    let candidates = match keys.find(jws.header.kid.as_deref(), alg) {
        KeyMatch::Keys(k) => k,
        KeyMatch::UnknownKid => return Err(Rejection::UnknownKey(issuer_idx)),
        // An HMAC token checked with an RSA public key's bytes is the classic alg confusion.
        KeyMatch::WrongFamily => return Err(Rejection::DisallowedAlg),
    };
    let verified = candidates.iter().any(|k| {
        jsonwebtoken::crypto::verify(jws.signature, jws.signing_input, &k.key, alg).unwrap_or(false)
    });
    if verified {
        Ok(())
    } else {
        Err(Rejection::BadSignature)
    }
}

/// A `typ` value as compared: lowercase, without `application/` (RFC 7515 §4.1.9).
pub fn media_type(typ: &str) -> String {
    let lower = typ.to_ascii_lowercase();
    match lower.strip_prefix("application/") {
        Some(rest) => rest.to_string(),
        None => lower,
    }
}

/// `exp` is required and not passed, `nbf` (if any) is not ahead, both with the leeway.
fn check_times(claims: &Map<String, Value>, leeway: u64, now: u64) -> Result<u64, Rejection> {
    let exp = numeric_date(claims, "exp")?.ok_or(Rejection::Malformed(Malformed::NoExp))?;
    if now >= exp.saturating_add(leeway) {
        return Err(Rejection::Expired);
    }
    if let Some(nbf) = numeric_date(claims, "nbf")? {
        if nbf > now.saturating_add(leeway) {
            return Err(Rejection::NotYetValid);
        }
    }
    Ok(exp)
}

/// Validate a compact JWS against the trusted issuers at `now` (Unix seconds).
/// `forward_claims` (claim -> header) says which claims to render as headers for the upstream;
/// `kept_claims` which to keep for claim conditions.
pub fn verify(
    token: &[u8],
    issuers: &[Issuer],
    forward_claims: &[(String, http::HeaderName)],
    kept_claims: &[String],
    now: u64,
) -> Result<Principal, Rejection> {
    verify_detailed(token, issuers, forward_claims, kept_claims, now).map_err(|r| r.rejection)
}

/// Why `verify_detailed` refused a token, and whose keys refused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub rejection: Rejection,
    /// The issuer whose key set judged the signature (set when the signature was checked).
    pub issuer: Option<usize>,
}

impl From<Rejection> for Refused {
    fn from(rejection: Rejection) -> Refused {
        Refused {
            rejection,
            issuer: None,
        }
    }
}

/// `verify`, also naming the issuer whose keys refused a signature: that verdict holds for as
/// long as the issuer's key set does, so the verifier may remember it.
pub fn verify_detailed(
    token: &[u8],
    issuers: &[Issuer],
    forward_claims: &[(String, http::HeaderName)],
    kept_claims: &[String],
    now: u64,
) -> Result<Principal, Refused> {
    let jws = split_compact(token)?;
    // The issuer is chosen by the unverified `iss`; everything it says is checked below against
    // that issuer's own keys, so a forged `iss` only selects which keys must verify it.
    let iss = jws
        .claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or(Rejection::WrongIssuer)?;
    let (issuer_idx, issuer) = issuers
        .iter()
        .enumerate()
        .find(|(_, i)| i.issuer == iss)
        .ok_or(Rejection::WrongIssuer)?;
    check_signature(&jws, issuer, issuer_idx).map_err(|rejection| Refused {
        rejection,
        issuer: Some(issuer_idx),
    })?;
    if let Some(types) = &issuer.token_types {
        let typ = jws.header.typ.as_deref().map(media_type);
        if !typ.is_some_and(|t| types.contains(&t)) {
            return Err(Rejection::WrongType.into());
        }
    }
    let claims = jws.claims;
    let exp = check_times(&claims, issuer.leeway, now)?;
    let audiences = match claims.get("aud") {
        Some(Value::String(a)) => vec![Box::from(a.as_str())],
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .map(Box::from)
            .collect(),
        _ => Vec::new(),
    };
    let binding = Binding::of(&claims)?;
    Ok(Principal {
        issuer: issuer_idx,
        sub: claims
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_string),
        scopes: scopes_of(&claims, &issuer.scope_claims),
        exp,
        audiences,
        claims: kept_claims
            .iter()
            .filter_map(|name| Some((Box::from(name.as_str()), claims.get(name)?.clone())))
            .collect(),
        callers: kept_claims
            .iter()
            .map(|name| claims.get(name).and_then(crate::quota::claim_caller))
            .collect(),
        forward_headers: forward_claims
            .iter()
            .filter_map(|(claim, header)| {
                let value = http::HeaderValue::from_str(&claim_text(claims.get(claim)?)).ok()?;
                Some((header.clone(), value))
            })
            .collect(),
        binding,
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

    #[test]
    fn duplicate_member_names_are_malformed_at_any_depth() {
        let enc = |s: &str| URL_SAFE_NO_PAD.encode(s);
        for bad in [
            r#"{"sub":"a","sub":"root"}"#,
            r#"{"x":{"k":1,"k":2}}"#,
            r#"[{"a":1,"a":1}]"#,
        ] {
            let r: Result<Value, _> = b64_json(enc(bad).as_bytes(), Malformed::Payload);
            assert_eq!(
                r.unwrap_err(),
                Rejection::Malformed(Malformed::Payload),
                "{bad}"
            );
        }
        let ok: Value = b64_json(
            enc(r#"{"a":[1,2.5,"x",null,true],"b":{"c":-1}}"#).as_bytes(),
            Malformed::Payload,
        )
        .unwrap();
        assert_eq!(ok["a"][1], 2.5);
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

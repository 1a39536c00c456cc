//! Verification keys per issuer. A `KeyStore` maps `kid` -> key for one issuer and can have
//! its key set replaced atomically (JWKS refresh) without disturbing requests that hold the old
//! one.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

/// One key that can verify signatures.
pub struct VerifyingKey {
    pub kid: Option<String>,
    pub key: DecodingKey,
    pub family: AlgorithmFamily,
    /// When the JWK names its `alg`, the key is used for that algorithm only.
    pub alg: Option<Algorithm>,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .field("alg", &self.alg)
            .finish()
    }
}

/// An immutable set of keys.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<VerifyingKey>,
}

/// What became of a key lookup.
pub enum KeyMatch<'a> {
    Keys(Vec<&'a VerifyingKey>),
    /// The token names a `kid` this set does not hold.
    UnknownKid,
    /// Keys exist, but none may be used with this algorithm.
    WrongFamily,
}

fn jwk_alg(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

impl KeySet {
    /// Parse a JWKS document. Keys that cannot be used (unsupported type, `use` other than
    /// `sig`, symmetric keys, unparsable) are skipped and described in the returned list, so one
    /// odd key in a provider's set does not take the others down.
    pub fn from_jwks(json: &[u8]) -> Result<(KeySet, Vec<String>), String> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc =
            serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut set = KeySet::default();
        let mut skipped = Vec::new();
        for (i, value) in doc.keys.into_iter().enumerate() {
            let kid = value
                .get("kid")
                .and_then(|k| k.as_str())
                .map(str::to_string);
            let label = kid.clone().unwrap_or_else(|| format!("#{i}"));
            let jwk: Jwk = match serde_json::from_value(value) {
                Ok(j) => j,
                Err(e) => {
                    skipped.push(format!("key {label}: unsupported or malformed ({e})"));
                    continue;
                }
            };
            if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
                skipped.push(format!("key {label}: `use` is not \"sig\""));
                continue;
            }
            let alg = match jwk.common.key_algorithm {
                None => None,
                Some(a) => match jwk_alg(a) {
                    Some(a) => Some(a),
                    None => {
                        skipped.push(format!(
                            "key {label}: `alg` {a:?} is not a signature algorithm"
                        ));
                        continue;
                    }
                },
            };
            let key = match DecodingKey::from_jwk(&jwk) {
                Ok(k) => k,
                Err(e) => {
                    skipped.push(format!("key {label}: {e}"));
                    continue;
                }
            };
            let family = key.family();
            // A JWKS publishes public keys; a symmetric secret there would let anyone who can
            // read the set mint tokens.
            if family == AlgorithmFamily::Hmac {
                skipped.push(format!(
                    "key {label}: symmetric keys are not accepted from a JWKS"
                ));
                continue;
            }
            if let Some(a) = alg {
                if a.family() != family {
                    skipped.push(format!(
                        "key {label}: `alg` {a:?} does not fit the key type"
                    ));
                    continue;
                }
            }
            set.keys.push(VerifyingKey {
                kid,
                key,
                family,
                alg,
            });
        }
        Ok((set, skipped))
    }

    pub fn from_secret(secret: &[u8]) -> KeySet {
        KeySet {
            keys: vec![VerifyingKey {
                kid: None,
                key: DecodingKey::from_secret(secret),
                family: AlgorithmFamily::Hmac,
                alg: None,
            }],
        }
    }

    /// Keys that may verify a token with this `kid` and `alg`. A key without a `kid` is a
    /// candidate for any token.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> KeyMatch<'_> {
        let named: Vec<&VerifyingKey> = self
            .keys
            .iter()
            .filter(|k| match (kid, k.kid.as_deref()) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .collect();
        if named.is_empty() {
            return KeyMatch::UnknownKid;
        }
        let usable: Vec<&VerifyingKey> = named
            .into_iter()
            .filter(|k| k.family == alg.family() && k.alg.is_none_or(|a| a == alg))
            .collect();
        if usable.is_empty() {
            KeyMatch::WrongFamily
        } else {
            KeyMatch::Keys(usable)
        }
    }
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    File(PathBuf),
    SecretEnv(String),
    Url(String),
    Discovery(String),
}

/// The live key set of one issuer.
#[derive(Debug)]
pub struct KeyStore {
    pub source: KeySource,
    current: ArcSwap<KeySet>,
    loaded: std::sync::atomic::AtomicBool,
    /// Bumped on every replacement, so cached verifications made with older keys are dropped.
    version: std::sync::atomic::AtomicU64,
    /// Held while fetching: one fetch at a time per store (single flight).
    pub(crate) fetch: tokio::sync::Mutex<FetchState>,
    /// What the console shows; never held across a fetch.
    status: std::sync::Mutex<RefreshStatus>,
}

/// When the keys were loaded and fetched, in wall-clock time (for the console).
#[derive(Debug, Clone, Default)]
pub struct RefreshStatus {
    /// The current key set was loaded (read from a file, or fetched).
    pub loaded_at: Option<std::time::SystemTime>,
    /// The last fetch, ok or not.
    pub last_attempt: Option<std::time::SystemTime>,
    /// The next periodic fetch.
    pub next_due: Option<std::time::SystemTime>,
    /// Failed fetches since start, and in a row now.
    pub failures: u64,
    pub failing_in_a_row: u32,
    /// The last failed fetch's error.
    pub last_error: Option<String>,
}

/// Bookkeeping of the fetches of one store.
#[derive(Debug, Default)]
pub struct FetchState {
    /// When the last fetch was tried (ok or not).
    pub last_attempt: Option<std::time::Instant>,
    /// When the last fetch triggered by an unknown `kid` was made.
    pub last_forced: Option<std::time::Instant>,
    /// When the next periodic refresh is due.
    pub next_due: Option<std::time::Instant>,
    /// Failed attempts in a row, for backoff.
    pub failures: u32,
    /// From discovery: where the JWKS lives.
    pub jwks_uri: Option<String>,
}

impl KeyStore {
    pub fn new(source: KeySource) -> KeyStore {
        KeyStore {
            source,
            current: ArcSwap::from_pointee(KeySet::default()),
            loaded: std::sync::atomic::AtomicBool::new(false),
            version: std::sync::atomic::AtomicU64::new(0),
            fetch: tokio::sync::Mutex::new(FetchState::default()),
            status: std::sync::Mutex::new(RefreshStatus::default()),
        }
    }

    pub fn with_keys(source: KeySource, keys: KeySet) -> KeyStore {
        let store = KeyStore::new(source);
        store.replace(keys);
        store
    }

    pub fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.current.load()
    }

    pub fn replace(&self, keys: KeySet) {
        self.status().loaded_at = Some(std::time::SystemTime::now());
        self.current.store(Arc::new(keys));
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.loaded
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The URL-based source, if keys come from the network.
    pub fn is_remote(&self) -> bool {
        matches!(self.source, KeySource::Url(_) | KeySource::Discovery(_))
    }

    fn status(&self) -> std::sync::MutexGuard<'_, RefreshStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the keys were loaded and fetched.
    pub fn refresh_status(&self) -> RefreshStatus {
        self.status().clone()
    }

    /// A fetch is over: `Err` with why it failed; the next one is due in `next`.
    pub fn note_fetch(&self, result: Result<(), &str>, next: std::time::Duration) {
        let now = std::time::SystemTime::now();
        let mut status = self.status();
        status.last_attempt = Some(now);
        status.next_due = Some(now + next);
        match result {
            Ok(()) => status.failing_in_a_row = 0,
            Err(e) => {
                status.failures += 1;
                status.failing_in_a_row = status.failing_in_a_row.saturating_add(1);
                status.last_error = Some(e.to_string());
            }
        }
    }

    /// True once a key set has been loaded (for `/readyz`).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The development key's JWKS shipped in config/ (an RSA key with `alg: RS256`).
    const DEV_JWKS: &str = include_str!("../../config/jwks.json");

    #[test]
    fn unusable_keys_are_skipped_not_fatal() {
        let mut good: serde_json::Value = serde_json::from_str(DEV_JWKS).unwrap();
        good["keys"][0]["kid"] = "good".into();
        let mut enc = good["keys"][0].clone();
        enc["kid"] = "enc".into();
        enc["use"] = "enc".into();
        let mut wrong_alg = good["keys"][0].clone();
        wrong_alg["kid"] = "wrong-alg".into();
        wrong_alg["alg"] = "ES256".into();
        let doc = serde_json::json!({ "keys": [
            good["keys"][0],
            enc,
            wrong_alg,
            { "kty": "oct", "kid": "secret", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA" },
            { "kty": "XYZ", "kid": "alien" },
            { "kty": "RSA", "kid": "broken", "n": "!!!", "e": "AQAB" },
        ]});
        let (set, skipped) = KeySet::from_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.keys.len(), 1, "{skipped:?}");
        assert_eq!(set.keys[0].kid.as_deref(), Some("good"));
        assert_eq!(skipped.len(), 5, "{skipped:?}");
        assert!(KeySet::from_jwks(b"{\"nokeys\": 1}").is_err());
    }

    #[test]
    fn kid_and_algorithm_select_keys() {
        let mut jwks: serde_json::Value = serde_json::from_str(DEV_JWKS).unwrap();
        jwks["keys"][0]["kid"] = "a".into();
        let (set, _) = KeySet::from_jwks(jwks.to_string().as_bytes()).unwrap();
        assert!(matches!(set.find(Some("a"), Algorithm::RS256), KeyMatch::Keys(k) if k.len() == 1));
        assert!(matches!(
            set.find(Some("b"), Algorithm::RS256),
            KeyMatch::UnknownKid
        ));
        // The JWK says RS256: PS256 and HS256 may not use it.
        assert!(matches!(
            set.find(Some("a"), Algorithm::PS256),
            KeyMatch::WrongFamily
        ));
        assert!(matches!(
            set.find(Some("a"), Algorithm::HS256),
            KeyMatch::WrongFamily
        ));
        assert!(matches!(
            set.find(None, Algorithm::RS256),
            KeyMatch::Keys(_)
        ));
    }
}

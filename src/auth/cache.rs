//! The verified-token cache: a token that passed signature and time checks is remembered until
//! its `exp` (never beyond), so a client reusing its token costs a hash lookup instead of an RSA
//! verification. A token whose signature the issuer's keys refused is remembered too (for
//! `BAD_SIGNATURE_TTL`), so repeating a forged token is as cheap as repeating a good one. Every
//! entry holds only while the issuer has the key set it was judged with.
//!
//! TinyUFO (the cache under Pingora's own memory cache) is used because it is lock-free with an
//! admission policy (TinyLFU) that keeps a flood of one-off tokens from evicting the hot ones.
//! It keys entries by a 64-bit hash, so each entry keeps the token bytes and a hit is only a
//! hit when they are equal: a hash collision can never lend one token's identity to another.

use std::sync::Arc;

use tinyufo::TinyUfo;

use super::{Principal, Rejection};

/// How long a refused signature is remembered at most (it is also forgotten as soon as the
/// issuer's key set changes).
pub const BAD_SIGNATURE_TTL: u64 = 300;

#[derive(Clone)]
enum Verdict {
    Valid(Arc<Principal>),
    /// The issuer's keys refused the signature.
    BadSignature,
}

#[derive(Clone)]
struct Entry {
    token: Arc<[u8]>,
    verdict: Verdict,
    /// The issuer whose key set judged the signature.
    issuer: usize,
    /// The issuer's key-set version the signature was checked with.
    key_version: u64,
    /// Unix seconds from which the entry no longer counts.
    until: u64,
}

pub struct TokenCache {
    inner: Option<TinyUfo<u64, Entry>>,
    hasher: ahash::RandomState,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("enabled", &self.inner.is_some())
            .finish()
    }
}

/// Bookkeeping of one entry besides the token and principal: the cache's node, the Arcs.
const ENTRY_OVERHEAD: usize = 160;

impl TokenCache {
    /// A cache of at most `max_bytes` (token bytes and principals, estimated) and about
    /// `max_entries` tokens; either 0 disables caching. Bounded in bytes, since tokens range
    /// from 300 bytes to 8 KiB: a flood of large distinct tokens must not grow the heap.
    pub fn new(max_entries: usize, max_bytes: usize) -> TokenCache {
        let estimated = max_entries.min(max_bytes / 1024).max(16);
        TokenCache {
            inner: (max_entries > 0 && max_bytes > 0).then(|| TinyUfo::new(max_bytes, estimated)),
            hasher: ahash::RandomState::new(),
        }
    }

    /// The verdict on a token judged earlier: its principal if it is still valid at `now`, or
    /// `BadSignature`; only while the issuer still has the key set (`key_version_of`) it was
    /// judged with.
    pub fn get(
        &self,
        token: &[u8],
        now: u64,
        key_version_of: impl Fn(usize) -> u64,
    ) -> Option<Result<Arc<Principal>, Rejection>> {
        let cache = self.inner.as_ref()?;
        let entry = cache.get(&self.hasher.hash_one(token))?;
        if *entry.token != *token || now >= entry.until {
            return None;
        }
        if key_version_of(entry.issuer) != entry.key_version {
            return None;
        }
        Some(match entry.verdict {
            Verdict::Valid(p) => Ok(p),
            Verdict::BadSignature => Err(Rejection::BadSignature),
        })
    }

    pub fn put(&self, token: &[u8], principal: Arc<Principal>, now: u64, key_version: u64) {
        let weight = token.len() + principal.approx_bytes();
        let entry = Entry {
            token: Arc::from(token),
            issuer: principal.issuer,
            key_version,
            until: principal.exp,
            verdict: Verdict::Valid(principal),
        };
        self.insert(entry, weight, now);
    }

    /// Remember that `issuer`'s key set (at `key_version`) refused the token's signature, so a
    /// client repeating a forged token costs a lookup, not a signature check.
    pub fn put_bad_signature(&self, token: &[u8], issuer: usize, now: u64, key_version: u64) {
        let entry = Entry {
            token: Arc::from(token),
            issuer,
            key_version,
            until: now.saturating_add(BAD_SIGNATURE_TTL),
            verdict: Verdict::BadSignature,
        };
        self.insert(entry, token.len(), now);
    }

    /// `weight`: the entry's bytes besides the bookkeeping every entry has.
    fn insert(&self, entry: Entry, weight: usize, now: u64) {
        let Some(cache) = self.inner.as_ref() else {
            return;
        };
        if entry.until <= now {
            return;
        }
        let weight = (weight + ENTRY_OVERHEAD).min(u16::MAX as usize);
        cache.put(self.hasher.hash_one(&*entry.token), entry, weight as u16);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_signature_is_served_until_its_ttl_and_only_for_its_key_set() {
        let cache = TokenCache::new(100, 1 << 20);
        let token = b"forged.token.bytes";
        cache.put_bad_signature(token, 0, 1_000, 7);
        let at = |now, version| cache.get(token, now, |_| version).map(|v| v.err());
        assert_eq!(at(1_000, 7), Some(Some(Rejection::BadSignature)));
        assert_eq!(
            at(1_000 + BAD_SIGNATURE_TTL - 1, 7),
            Some(Some(Rejection::BadSignature))
        );
        assert_eq!(at(1_000 + BAD_SIGNATURE_TTL, 7), None, "past its TTL");
        assert_eq!(at(1_000, 8), None, "another key set");
        assert!(cache.get(b"forged.token.bytez", 1_000, |_| 7).is_none());
    }
}

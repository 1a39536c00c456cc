//! The verified-token cache: a token that passed signature and time checks is remembered until
//! its `exp` (never beyond), so a client reusing its token costs a hash lookup instead of an RSA
//! verification.
//!
//! TinyUFO (the cache under Pingora's own memory cache) is used because it is lock-free with an
//! admission policy (TinyLFU) that keeps a flood of one-off tokens from evicting the hot ones.
//! It keys entries by a 64-bit hash, so each entry keeps the token bytes and a hit is only a
//! hit when they are equal: a hash collision can never lend one token's identity to another.

use std::sync::Arc;

use tinyufo::TinyUfo;

use super::Principal;

#[derive(Clone)]
struct Entry {
    token: Arc<[u8]>,
    principal: Arc<Principal>,
    /// The issuer's key-set version the signature was checked with.
    key_version: u64,
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

    /// The principal of a token verified earlier, if it is still valid at `now` and was
    /// verified with the key set the issuer has now (`key_version_of`).
    pub fn get(
        &self,
        token: &[u8],
        now: u64,
        key_version_of: impl Fn(usize) -> u64,
    ) -> Option<Arc<Principal>> {
        let cache = self.inner.as_ref()?;
        let entry = cache.get(&self.hasher.hash_one(token))?;
        if *entry.token != *token || now >= entry.principal.exp {
            return None;
        }
        if key_version_of(entry.principal.issuer) != entry.key_version {
            return None;
        }
        Some(entry.principal)
    }

    pub fn put(&self, token: &[u8], principal: Arc<Principal>, now: u64, key_version: u64) {
        let Some(cache) = self.inner.as_ref() else {
            return;
        };
        if principal.exp <= now {
            return;
        }
        let weight =
            (token.len() + principal.approx_bytes() + ENTRY_OVERHEAD).min(u16::MAX as usize);
        let entry = Entry {
            token: Arc::from(token),
            principal,
            key_version,
        };
        cache.put(self.hasher.hash_one(token), entry, weight as u16);
    }
}

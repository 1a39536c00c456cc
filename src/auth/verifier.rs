//! `Verifier::verify(token, now)`: the trusted issuers with their keys, and the cache of tokens
//! already verified. The clock is passed in, so expiry is tested without waiting.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderName;

use super::cache::TokenCache;
use super::keys::{KeySource, KeyStore};
use super::{jwt, Issuer, Principal, Rejection};

#[derive(Debug)]
pub struct Verifier {
    pub issuers: Vec<Issuer>,
    /// claim name -> header set from it (`[forward] claims`), rendered at verification.
    forward_claims: Vec<(String, HeaderName)>,
    /// Claims named by some route's conditions: a principal keeps these and no others.
    kept_claims: Vec<String>,
    cache: TokenCache,
}

impl Verifier {
    pub fn new(
        issuers: Vec<Issuer>,
        forward_claims: Vec<(String, HeaderName)>,
        kept_claims: Vec<String>,
        cache_size: (usize, usize),
    ) -> Verifier {
        Verifier {
            issuers,
            forward_claims,
            kept_claims,
            cache: TokenCache::new(cache_size.0, cache_size.1),
        }
    }

    /// Validate a bearer token at `now` (Unix seconds), through the verified-token cache.
    /// Audiences are not checked here: which one is wanted depends on the route.
    pub fn verify(&self, token: &[u8], now: u64) -> Result<Arc<Principal>, Rejection> {
        let version_of = |i: usize| self.issuers[i].keys.version();
        if let Some(verdict) = self.cache.get(token, now, version_of) {
            return verdict;
        }
        // Read the versions before verifying: if the keys change meanwhile, the entry is stale
        // at once rather than attributed to the new set.
        let versions: Vec<u64> = self.issuers.iter().map(|i| i.keys.version()).collect();
        let verified = jwt::verify_detailed(
            token,
            &self.issuers,
            &self.forward_claims,
            &self.kept_claims,
            now,
        );
        match verified {
            Ok(principal) => {
                let principal = Arc::new(principal);
                let version = versions[principal.issuer];
                self.cache.put(token, principal.clone(), now, version);
                Ok(principal)
            }
            Err(jwt::Refused {
                rejection: Rejection::BadSignature,
                issuer: Some(i),
            }) => {
                self.cache.put_bad_signature(token, i, now, versions[i]);
                Err(Rejection::BadSignature)
            }
            Err(refused) => Err(refused.rejection),
        }
    }

    /// `verify` without the cache, for a token that must not be kept (the console's explain).
    pub fn verify_uncached(&self, token: &[u8], now: u64) -> Result<Arc<Principal>, Rejection> {
        jwt::verify_detailed(
            token,
            &self.issuers,
            &self.forward_claims,
            &self.kept_claims,
            now,
        )
        .map(Arc::new)
        .map_err(|refused| refused.rejection)
    }

    /// The header names claims are forwarded under (removed from every client request).
    pub fn claim_headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.forward_claims.iter().map(|(_, h)| h)
    }

    /// Every issuer has keys.
    pub fn keys_ready(&self) -> bool {
        self.issuers.iter().all(|i| i.keys.is_loaded())
    }

    /// The key stores by (issuer, source), to carry over into the next snapshot.
    pub fn key_stores(&self) -> HashMap<(String, KeySource), Arc<KeyStore>> {
        self.issuers
            .iter()
            .map(|i| ((i.issuer.clone(), i.keys.source.clone()), i.keys.clone()))
            .collect()
    }
}

//! Keys from the network: `jwks_url` and OIDC discovery, refreshed in the background by
//! Cache-Control max-age (clamped), and at once on an unknown `kid` (single flight, at most once
//! per cooldown). A failed fetch keeps the last good keys.

use std::time::{Duration, Instant};

use super::keys::{FetchState, KeySet, KeySource, KeyStore};
use super::Issuer;

/// How often one issuer's keys are fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshPolicy {
    pub min: Duration,
    pub max: Duration,
    /// Minimum time between two fetches triggered by unknown `kid`s.
    pub cooldown: Duration,
}

/// Retry delay after failures: 1 s, 2 s, 4 s ... capped by the policy's minimum interval.
fn backoff(policy: &RefreshPolicy, failures: u32) -> Duration {
    let d = Duration::from_secs(1u64 << failures.min(6));
    d.min(policy.min.max(Duration::from_secs(1)))
}

/// `max-age` from a Cache-Control header value.
pub fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|d| {
        let (k, v) = d.trim().split_once('=')?;
        k.trim().eq_ignore_ascii_case("max-age").then(|| {
            v.trim()
                .trim_matches('"')
                .parse()
                .ok()
                .map(Duration::from_secs)
        })?
    })
}

/// Told of every fetch's result (the edge counts them in `scopegate_jwks_refreshes_total`).
pub type FetchObserver = Box<dyn Fn(&str, bool) + Send + Sync>;

pub struct JwksFetcher {
    /// Why there is none: e.g. no CA certificates on the system (every fetch then fails with
    /// that reason, and keys from files keep working).
    http: Result<reqwest::Client, String>,
    observe: FetchObserver,
}

impl JwksFetcher {
    /// `observe(issuer, ok)` is called after each fetch.
    pub fn new(observe: FetchObserver) -> JwksFetcher {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(3))
            .user_agent(concat!("scopegate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                let why = format!(
                    "no HTTP client for JWKS fetching: {e} (install the system's CA certificates)"
                );
                tracing::error!("{why}");
                why
            });
        JwksFetcher { http, observe }
    }

    async fn get(&self, url: &str) -> Result<(Vec<u8>, Option<Duration>), String> {
        let resp = self
            .http
            .as_ref()
            .map_err(Clone::clone)?
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("GET {url}: HTTP {status}"));
        }
        let age = resp
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        if resp.content_length().is_some_and(|l| l > 1 << 20) {
            return Err(format!("GET {url}: document larger than 1 MiB"));
        }
        let body = resp.bytes().await.map_err(|e| format!("GET {url}: {e}"))?;
        if body.len() > 1 << 20 {
            return Err(format!("GET {url}: document larger than 1 MiB"));
        }
        Ok((body.to_vec(), age))
    }

    async fn jwks_url(
        &self,
        issuer: &str,
        source: &KeySource,
        state: &mut FetchState,
    ) -> Result<String, String> {
        match source {
            KeySource::Url(u) => Ok(u.clone()),
            KeySource::Discovery(_) => {
                if let Some(u) = &state.jwks_uri {
                    return Ok(u.clone());
                }
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let (body, _) = self.get(&url).await?;
                let doc: serde_json::Value =
                    serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON: {e}"))?;
                // OIDC Discovery §4.3: the issuer in the document must be the one we asked.
                if doc.get("issuer").and_then(|v| v.as_str()) != Some(issuer) {
                    return Err(format!("{url}: `issuer` in the document is not {issuer:?}"));
                }
                let uri = doc
                    .get("jwks_uri")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| format!("{url}: no jwks_uri"))?
                    .to_string();
                state.jwks_uri = Some(uri.clone());
                Ok(uri)
            }
            KeySource::File(_) | KeySource::SecretEnv(_) => {
                Err("keys are not fetched from the network".into())
            }
        }
    }

    /// Fetch now, with the store's fetch state already locked. Returns whether it succeeded.
    async fn fetch_locked(&self, issuer: &Issuer, state: &mut FetchState) -> bool {
        let store = &issuer.keys;
        state.last_attempt = Some(Instant::now());
        let result = async {
            let url = self.jwks_url(&issuer.issuer, &store.source, state).await?;
            let (body, age) = self.get(&url).await?;
            let (set, skipped) = KeySet::from_jwks(&body).map_err(|e| format!("{url}: {e}"))?;
            for s in &skipped {
                tracing::warn!(issuer = %issuer.issuer, "skipping JWKS {s}");
            }
            if set.keys.is_empty() {
                return Err(format!("{url}: no usable signing key"));
            }
            Ok((set, age))
        }
        .await;
        match result {
            Ok((set, age)) => {
                let n = set.keys.len();
                store.replace(set);
                let every = age
                    .unwrap_or(issuer.refresh.min)
                    .clamp(issuer.refresh.min, issuer.refresh.max);
                state.next_due = Some(Instant::now() + every);
                state.failures = 0;
                store.note_fetch(Ok(()), every);
                (self.observe)(&issuer.issuer, true);
                tracing::info!(issuer = %issuer.issuer, keys = n, next_refresh_s = every.as_secs(), "JWKS loaded");
                true
            }
            Err(e) => {
                state.failures = state.failures.saturating_add(1);
                // Discovery may have moved the JWKS: look it up again next time.
                state.jwks_uri = None;
                let retry = backoff(&issuer.refresh, state.failures);
                state.next_due = Some(Instant::now() + retry);
                store.note_fetch(Err(&e), retry);
                (self.observe)(&issuer.issuer, false);
                tracing::warn!(issuer = %issuer.issuer, error = %e, "JWKS fetch failed; keeping the last good keys");
                false
            }
        }
    }

    /// Periodic refresh: fetch when due (or never loaded). Returns when the next one is due
    /// (`None` for keys that are not fetched).
    pub async fn refresh_if_due(&self, issuer: &Issuer) -> Option<Instant> {
        if !issuer.keys.is_remote() {
            return None;
        }
        let mut state = issuer.keys.fetch.lock().await;
        if state.next_due.is_none_or(|due| Instant::now() >= due) {
            self.fetch_locked(issuer, &mut state).await;
        }
        state.next_due
    }

    /// A token named a `kid` we do not have. Refetch once, shared by every request waiting on
    /// the same store, at most once per cooldown. `seen_version` is the key-set version the
    /// caller verified against; returns true when the keys have changed since (so the caller
    /// should verify again).
    pub async fn refresh_for_unknown_kid(&self, issuer: &Issuer, seen_version: u64) -> bool {
        let store: &KeyStore = &issuer.keys;
        if !store.is_remote() {
            return false;
        }
        let mut state = store.fetch.lock().await;
        // Someone else refreshed while we waited for the lock.
        if store.version() != seen_version {
            return true;
        }
        if state
            .last_forced
            .is_some_and(|t| t.elapsed() < issuer.refresh.cooldown)
        {
            return false;
        }
        state.last_forced = Some(Instant::now());
        self.fetch_locked(issuer, &mut state).await && store.version() != seen_version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            max_age("Max-Age=\"60\", must-revalidate"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(max_age("no-cache"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RefreshPolicy {
            min: Duration::from_secs(10),
            max: Duration::from_secs(100),
            cooldown: Duration::from_secs(1),
        };
        assert_eq!(backoff(&p, 1), Duration::from_secs(2));
        assert_eq!(backoff(&p, 2), Duration::from_secs(4));
        assert_eq!(backoff(&p, 9), Duration::from_secs(10));
    }
}

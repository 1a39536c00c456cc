//! The background service that keeps every remote key set fresh: each issuer's fetch is due at
//! its own time (max-age, bounded), and the service sleeps until the earliest one, or at most
//! `RECHECK`, so that issuers added by a reload are fetched soon.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use super::LiveConfig;
use crate::auth::jwks::JwksFetcher;

pub struct KeyRefresher {
    pub live: LiveConfig,
    pub fetcher: Arc<JwksFetcher>,
}

/// Look again at least this often: a reload may have added an issuer.
const RECHECK: Duration = Duration::from_secs(1);

#[async_trait]
impl BackgroundService for KeyRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let live = self.live.load_full();
            // Concurrently: one slow provider must not hold up the others.
            let mut fetches = tokio::task::JoinSet::new();
            for i in 0..live.snapshot.verifier.issuers.len() {
                let (live, fetcher) = (live.clone(), self.fetcher.clone());
                fetches.spawn(async move {
                    fetcher
                        .refresh_if_due(&live.snapshot.verifier.issuers[i])
                        .await
                });
            }
            let mut wake = Instant::now() + RECHECK;
            while let Some(next) = fetches.join_next().await {
                if let Ok(Some(due)) = next {
                    wake = wake.min(due);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

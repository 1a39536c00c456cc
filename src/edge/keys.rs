//! The background service that keeps every remote key set fresh: each issuer's fetch is due at
//! its own time (max-age, bounded, or backoff after a failure), and the service sleeps until the
//! earliest one, or until a reload (which may bring new issuers) wakes it.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::sync::Notify;

use super::LiveConfig;
use crate::auth::jwks::JwksFetcher;

pub struct KeyRefresher {
    pub live: LiveConfig,
    pub fetcher: Arc<JwksFetcher>,
    /// Notified after every reload.
    pub reloaded: Arc<Notify>,
}

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
            let mut wake: Option<Instant> = None;
            while let Some(next) = fetches.join_next().await {
                if let Ok(Some(due)) = next {
                    wake = Some(wake.map_or(due, |w| w.min(due)));
                }
            }
            let due = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = due => {}
                _ = self.reloaded.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

//! Hot reload: a change in the config file's directory (an in-place write, or an atomic symlink
//! swap as Kubernetes ConfigMaps do) or SIGHUP reloads the config: parse, validate, build a new
//! snapshot off the request path, then swap it in. Requests in flight keep the snapshot they
//! loaded. An invalid file keeps the running config.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::sync::Mutex;

use crate::config::{self, ConfigError};
use crate::keys::KeySource;
use crate::metrics::Metrics;
use crate::snapshot::{self, Snapshot};

/// Changes often come as several events (write, rename, chmod): wait for them to settle.
const DEBOUNCE: Duration = Duration::from_millis(50);

pub struct Reloader {
    pub path: PathBuf,
    pub live: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    /// Fingerprint of what the running snapshot was built from, to skip no-op reloads.
    fingerprint: Mutex<u64>,
}

/// The config text and every file it points to, hashed.
fn fingerprint(path: &Path, snapshot: Option<&Snapshot>) -> u64 {
    let mut h = DefaultHasher::new();
    std::fs::read(path).unwrap_or_default().hash(&mut h);
    if let Some(s) = snapshot {
        for f in key_files(s) {
            std::fs::read(&f).unwrap_or_default().hash(&mut h);
        }
    }
    h.finish()
}

/// Files besides the config that a snapshot was built from: jwks_files and the TLS pair.
fn key_files(s: &Snapshot) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = s
        .issuers
        .iter()
        .filter_map(|i| match &i.keys.source {
            KeySource::File(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    if let Some(t) = &s.tls {
        files.push(t.cert.clone());
        files.push(t.key.clone());
    }
    files
}

impl Reloader {
    pub fn new(path: PathBuf, live: Arc<ArcSwap<Snapshot>>, metrics: Arc<Metrics>) -> Reloader {
        let fp = fingerprint(&path, Some(&live.load()));
        Reloader {
            path,
            live,
            metrics,
            fingerprint: Mutex::new(fp),
        }
    }

    /// Reload now. `force` reloads even when no file changed (SIGHUP).
    pub async fn reload(&self, force: bool) -> Result<bool, ConfigError> {
        let mut fp = self.fingerprint.lock().await;
        let current = self.live.load_full();
        let new_fp = fingerprint(&self.path, Some(&current));
        if !force && new_fp == *fp {
            return Ok(false);
        }
        let started = std::time::Instant::now();
        let result = config::load(&self.path).and_then(|loaded| {
            snapshot::build_with(&loaded, current.generation + 1, &current.key_stores())
        });
        crate::server::release_freed_memory();
        match result {
            Ok(next) => {
                for (what, old, new) in [
                    (
                        "server.listen",
                        format!("{:?}", current.listen),
                        format!("{:?}", next.listen),
                    ),
                    (
                        "server.admin_listen",
                        format!("{:?}", current.admin_listen),
                        format!("{:?}", next.admin_listen),
                    ),
                    (
                        "server.threads",
                        current.threads.to_string(),
                        next.threads.to_string(),
                    ),
                    (
                        "server.tls (on/off)",
                        current.tls.is_some().to_string(),
                        next.tls.is_some().to_string(),
                    ),
                ] {
                    if old != new {
                        tracing::warn!(setting = what, running = %old, configured = %new, "this setting applies at the next restart");
                    }
                }
                let generation = next.generation;
                let routes = next.routes.len();
                // Files read while building count too: fingerprint what this snapshot used.
                *fp = fingerprint(&self.path, Some(&next));
                self.live.store(Arc::new(next));
                self.metrics.config_reload(true);
                self.metrics.set_generation(generation);
                tracing::info!(
                    generation,
                    routes,
                    took_ms = started.elapsed().as_millis() as u64,
                    "config reloaded"
                );
                Ok(true)
            }
            Err(e) => {
                *fp = new_fp;
                self.metrics.config_reload(false);
                tracing::error!(
                    "config reload failed, keeping generation {}: {e}",
                    current.generation
                );
                Err(e)
            }
        }
    }

    /// Directories to watch: the config file's, and those of the key files it points to.
    fn watched_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![dir_of(&self.path)];
        for f in key_files(&self.live.load()) {
            let d = dir_of(&f);
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
        dirs
    }
}

fn dir_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The background service: file events and SIGHUP -> `Reloader::reload`.
pub struct ConfigWatcher(pub Arc<Reloader>);

#[async_trait]
impl BackgroundService for ConfigWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let reloader = &self.0;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut watcher =
            match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
                if ev.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = tx.send(());
                }
            }) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::error!(
                        "cannot watch the config for changes ({e}); SIGHUP still reloads"
                    );
                    None
                }
            };
        let mut watched = Vec::new();
        let watch_all = |watcher: &mut Option<notify::RecommendedWatcher>,
                         watched: &mut Vec<PathBuf>| {
            if let Some(w) = watcher.as_mut() {
                for d in reloader.watched_dirs() {
                    if !watched.contains(&d) {
                        match w.watch(&d, RecursiveMode::NonRecursive) {
                            Ok(()) => watched.push(d),
                            Err(e) => {
                                tracing::error!(dir = %d.display(), "cannot watch for changes: {e}")
                            }
                        }
                    }
                }
            }
        };
        watch_all(&mut watcher, &mut watched);
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP: {e}");
                None
            }
        };
        loop {
            let force = tokio::select! {
                Some(()) = rx.recv() => {
                    // Let a burst of events settle, then reload once.
                    tokio::time::sleep(DEBOUNCE).await;
                    while rx.try_recv().is_ok() {}
                    false
                }
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading the config");
                    true
                }
                _ = shutdown.changed() => return,
            };
            if let Ok(true) = reloader.reload(force).await {
                watch_all(&mut watcher, &mut watched);
            }
        }
    }
}

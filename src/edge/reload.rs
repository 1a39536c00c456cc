//! Hot reload: a change in the config file's directory (an in-place write, or an atomic symlink
//! swap as Kubernetes ConfigMaps do) or SIGHUP reloads the config: parse, validate, build a new
//! snapshot off the request path, then swap it in. Requests in flight keep the snapshot they
//! loaded. An invalid file keeps the running config.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::sync::Mutex;

use super::console::reloads::ReloadHistory;
use super::metrics::Metrics;
use super::{Live, LiveConfig};
use crate::config::{self, ConfigError};
use crate::snapshot::{ProcessSettings, Snapshot};

/// Set once the config watcher and the SIGHUP handler are in place (part of `/readyz`).
pub static WATCHING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Changes often come as several events (write, rename, chmod): wait for them to settle.
const DEBOUNCE: Duration = Duration::from_millis(50);

pub struct Reloader {
    pub path: PathBuf,
    pub live: LiveConfig,
    pub metrics: Arc<Metrics>,
    /// Fingerprint of what the running snapshot was built from, to skip no-op reloads.
    fingerprint: Mutex<u64>,
    /// Told of every swap (the key refresher looks for new issuers).
    reloaded: Arc<tokio::sync::Notify>,
    /// What the console lists of each reload.
    history: Arc<ReloadHistory>,
}

/// The config text and every file it points to, hashed.
fn fingerprint(path: &Path, snapshot: Option<&Snapshot>) -> u64 {
    fingerprint_of(&read_for_fingerprint(path), snapshot)
}

/// Never `open` what is not a regular file: a FIFO would block the watcher for good.
fn read_for_fingerprint(p: &Path) -> Vec<u8> {
    match config::read_regular(p) {
        Ok(bytes) => bytes,
        Err(e) => e.to_string().into_bytes(),
    }
}

/// The fingerprint of a config text and the key files its snapshot read.
pub fn fingerprint_of(config_text: &[u8], snapshot: Option<&Snapshot>) -> u64 {
    let mut h = DefaultHasher::new();
    let read = read_for_fingerprint;
    config_text.hash(&mut h);
    if let Some(s) = snapshot {
        for f in s.source_files() {
            read(&f).hash(&mut h);
        }
    }
    h.finish()
}

impl Reloader {
    /// `fp`: the fingerprint of what the running snapshot was built from (`fingerprint_of`
    /// the text it was compiled from), so an edit made before the watcher starts is seen.
    pub fn new(
        path: PathBuf,
        live: LiveConfig,
        metrics: Arc<Metrics>,
        fp: u64,
        reloaded: Arc<tokio::sync::Notify>,
        history: Arc<ReloadHistory>,
    ) -> Reloader {
        Reloader {
            reloaded,
            history,
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
        let started = std::time::Instant::now();
        let (path, running, unchanged_fp) = (self.path.clone(), current.clone(), *fp);
        // Reading files and resolving upstream names blocks: not on the runtime's thread.
        let built = tokio::task::spawn_blocking(move || {
            let new_fp = fingerprint(&path, Some(&running.snapshot));
            if !force && new_fp == unchanged_fp {
                return (new_fp, None);
            }
            let generation = running.snapshot.generation + 1;
            let next = config::load(&path).and_then(|loaded| {
                crate::compile::build_with(
                    &loaded,
                    generation,
                    &running.snapshot.verifier.key_stores(),
                )
            });
            super::server::release_freed_memory();
            let next = next.map(|s| (fingerprint(&path, Some(&s)), Live::new(s)));
            (new_fp, Some(next))
        })
        .await;
        let (new_fp, next) = match built {
            Ok((_, None)) => return Ok(false),
            Ok((new_fp, Some(next))) => (new_fp, next),
            Err(e) => (
                *fp,
                Err(ConfigError {
                    file: self.path.display().to_string(),
                    line: 1,
                    col: 1,
                    message: format!("reload failed: {e}"),
                }),
            ),
        };
        match next {
            Ok((next_fp, next)) => {
                warn_restart_only(&current.snapshot.process, &next.snapshot.process);
                super::quota::warn_if_store_changed(&current.snapshot, &next.snapshot);
                let (generation, routes) = (next.snapshot.generation, next.snapshot.routes.len());
                // Files read while building count too: fingerprint what this snapshot used.
                *fp = next_fp;
                let next = Arc::new(next);
                self.live.store(next.clone());
                let changes = log_access_changes(&current.snapshot, &next.snapshot);
                self.history.succeeded(generation, changes);
                self.reloaded.notify_one();
                self.metrics.config_reload(true);
                self.metrics.set_generation(generation);
                let issuers = next.snapshot.verifier.issuers.iter();
                self.metrics
                    .jwks_issuers(issuers.map(|i| i.issuer.as_str()));
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
                self.history
                    .failed(current.snapshot.generation, e.to_string());
                tracing::error!(
                    "config reload failed, keeping generation {}: {e}",
                    current.snapshot.generation
                );
                Err(e)
            }
        }
    }

    /// Directories to watch: the config file's, and those of the key files it points to.
    fn watched_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![dir_of(&self.path)];
        for f in self.live.load().snapshot.source_files() {
            let d = dir_of(&f);
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
        dirs
    }
}

/// SPEC "Policy as code": every reload logs what it changed in who may do what, one line per
/// change, as `scopegate diff` prints it (and the console lists).
fn log_access_changes(running: &Snapshot, next: &Snapshot) -> Vec<String> {
    let changes: Vec<String> = crate::policy::diff::diff(running, next)
        .iter()
        .map(ToString::to_string)
        .collect();
    for change in &changes {
        tracing::info!(generation = next.generation, "{change}");
    }
    changes
}

/// Settings the running process keeps until restart: say which ones the file changes.
fn warn_restart_only(running: &ProcessSettings, configured: &ProcessSettings) {
    if running == configured {
        return;
    }
    let changed = |what: &str, show: &dyn Fn(&ProcessSettings) -> String| {
        let (old, new) = (show(running), show(configured));
        if old != new {
            tracing::warn!(setting = what, running = %old, configured = %new, "this setting applies at the next restart");
        }
    };
    changed("server.listen", &|s| format!("{:?}", s.listen));
    changed("server.admin_listen", &|s| format!("{:?}", s.admin_listen));
    changed("server.threads", &|s| s.threads.to_string());
    changed("server.shutdown_grace_seconds", &|s| {
        s.shutdown_grace_seconds.to_string()
    });
    changed("server.tls (on/off)", &|s| s.tls.to_string());
    changed("server.tls.client_certificates, client_ca", &|s| {
        format!("{:?} {:?}", s.client_certificates, s.client_ca)
    });
    changed("tracing", &|s| format!("{:?}", s.tracing));
    // Read once, when the listeners and their connection limits are set up.
    changed("server.max_connections", &|s| s.max_connections.to_string());
    changed("server.header_timeout_seconds", &|s| {
        s.header_timeout_seconds.to_string()
    });
    changed("server.keepalive_timeout_seconds", &|s| {
        s.keepalive_timeout_seconds.to_string()
    });
    changed("server.access_log", &|s| format!("{:?}", s.access_log));
    changed("server.upgrade_socket", &|s| {
        s.upgrade_socket.display().to_string()
    });
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
        // An edit between the first load and the watch above raised no event: look once.
        if let Ok(true) = reloader.reload(false).await {
            watch_all(&mut watcher, &mut watched);
        }
        // From here an edit or a SIGHUP is seen: /readyz may say so.
        WATCHING.store(true, std::sync::atomic::Ordering::Release);
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

//! Assemble and run the Pingora server: the proxy service on the configured listeners.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora_core::server::ExecutionPhase;

use arc_swap::ArcSwap;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;

use pingora_core::services::background::background_service;

use pingora_core::listeners::tls::TlsSettings;
use pingora_core::services::listening::Service;

use crate::admin::Admin;
use crate::config::{self, ConfigError};
use crate::jwks::{JwksFetcher, KeyRefresher};
use crate::metrics::Metrics;
use crate::proxy::{ScopeGate, IN_FLIGHT};
use crate::reload::{ConfigWatcher, Reloader};
use crate::snapshot::{self, Snapshot};

/// Load and compile a config file into its first snapshot.
pub fn load_snapshot(path: &Path, generation: u64) -> Result<Snapshot, ConfigError> {
    let loaded = config::load(path)?;
    snapshot::build(&loaded, generation)
}

/// Run the proxy until SIGTERM (graceful) or SIGINT. Never returns on success.
pub fn run(config_path: &Path) -> Result<(), ConfigError> {
    let first = load_snapshot(config_path, 1)?;
    release_freed_memory();
    let metrics = Arc::new(Metrics::new());
    metrics.set_generation(1);

    let grace = first.shutdown_grace_seconds;
    let conf = ServerConf {
        threads: first.threads,
        // After SIGTERM the listeners close at once and requests in flight get the grace
        // period; `drain_then_exit` ends it early once none are left.
        grace_period_seconds: Some(grace),
        graceful_shutdown_timeout_seconds: Some(1),
        // One current-thread runtime per worker: no cross-thread wakeups on the request path
        // (measured with bench/load.sh).
        work_stealing: false,
        ..ServerConf::default()
    };
    let listen = first.listen.clone();
    let tls = first
        .tls
        .as_ref()
        .map(|t| (t.cert.display().to_string(), t.key.display().to_string()));
    let admin_listen = first.admin_listen.clone();
    tracing::info!(
        config = %config_path.display(),
        routes = first.routes.len(),
        listen = ?listen,
        "scopegate starting"
    );
    let live = Arc::new(ArcSwap::from_pointee(first));

    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let fetcher = Arc::new(JwksFetcher::new(metrics.clone()));
    let mut proxy = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        ScopeGate {
            live: live.clone(),
            metrics: metrics.clone(),
            fetcher: fetcher.clone(),
        },
        "scopegate",
    );
    match &tls {
        None => {
            for addr in &listen {
                proxy.add_tcp(addr);
            }
        }
        Some((cert, key)) => {
            for addr in &listen {
                let mut settings =
                    TlsSettings::intermediate(cert, key).map_err(|e| ConfigError {
                        file: config_path.display().to_string(),
                        line: 1,
                        col: 1,
                        message: format!("server.tls: {e}"),
                    })?;
                // The certificate comes from the live snapshot, so a reload serves renewed files.
                settings.set_cert_resolver(Arc::new(LiveCertificate(live.clone())));
                settings.enable_h2();
                proxy.add_tls_with_settings(addr, None, settings);
            }
        }
    }
    server.add_service(proxy);
    server.add_service(background_service(
        "jwks refresher",
        KeyRefresher {
            live: live.clone(),
            fetcher,
        },
    ));
    let reloader = Arc::new(Reloader::new(
        config_path.to_path_buf(),
        live.clone(),
        metrics.clone(),
    ));
    server.add_service(background_service(
        "config watcher",
        ConfigWatcher(reloader),
    ));
    if let Some(addr) = &admin_listen {
        let mut admin = Service::new(
            "admin".to_string(),
            Admin {
                live: live.clone(),
                metrics: metrics.clone(),
            },
        );
        admin.add_tcp(addr);
        admin.threads = Some(1);
        server.add_service(admin);
    }
    drain_then_exit(server.watch_execution_phase(), Duration::from_secs(grace));
    server.run_forever();
}

/// Serves the certificate of the snapshot in use.
#[derive(Debug)]
struct LiveCertificate(Arc<ArcSwap<Snapshot>>);

impl pingora_rustls::ResolvesServerCert for LiveCertificate {
    fn resolve(
        &self,
        _hello: pingora_rustls::ClientHello<'_>,
    ) -> Option<Arc<pingora_rustls::sign::CertifiedKey>> {
        self.0.load().tls.as_ref().map(|t| t.certified.clone())
    }
}

/// Pingora sleeps the whole grace period after SIGTERM; exit as soon as the last request in
/// flight has finished instead.
fn drain_then_exit(mut phases: tokio::sync::broadcast::Receiver<ExecutionPhase>, grace: Duration) {
    std::thread::spawn(move || loop {
        match phases.blocking_recv() {
            Ok(ExecutionPhase::ShutdownGracePeriod) => {
                let deadline = Instant::now() + grace;
                while IN_FLIGHT.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                tracing::info!(
                    in_flight = IN_FLIGHT.load(Ordering::Relaxed),
                    "shutdown: requests drained, exiting"
                );
                std::process::exit(0);
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            _ => {}
        }
    });
}

/// `run`, turning a config error into an `anyhow` error for the demo.
pub fn run_or_exit(config_path: &Path) -> anyhow::Result<()> {
    run(config_path).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Hand memory freed after parsing (the TOML document of a large config is several times the
/// size of the snapshot built from it) back to the OS, so it does not stay in the RSS.
pub fn release_freed_memory() {
    // SAFETY: mi_collect only walks the calling thread's heap and the abandoned segments.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

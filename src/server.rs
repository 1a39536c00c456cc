//! Assemble and run the Pingora server: the proxy service on the configured listeners.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;

use pingora_core::services::background::background_service;

use pingora_core::services::listening::Service;

use crate::admin::Admin;
use crate::config::{self, ConfigError};
use crate::jwks::{JwksFetcher, KeyRefresher};
use crate::metrics::Metrics;
use crate::proxy::ScopeGate;
use crate::snapshot::{self, Snapshot};

/// Load and compile a config file into its first snapshot.
pub fn load_snapshot(path: &Path, generation: u64) -> Result<Snapshot, ConfigError> {
    let loaded = config::load(path)?;
    snapshot::build(&loaded, generation)
}

/// Run the proxy until SIGTERM (graceful) or SIGINT. Never returns on success.
pub fn run(config_path: &Path) -> Result<(), ConfigError> {
    let first = load_snapshot(config_path, 1)?;
    let metrics = Arc::new(Metrics::new());
    metrics.set_generation(1);

    let conf = ServerConf {
        threads: first.threads,
        // After SIGTERM, listeners close at once; requests in flight get the grace period.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(first.shutdown_grace_seconds),
        ..ServerConf::default()
    };
    let listen = first.listen.clone();
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
        ScopeGate { live: live.clone(), metrics: metrics.clone(), fetcher: fetcher.clone() },
        "scopegate",
    );
    for addr in &listen {
        proxy.add_tcp(addr);
    }
    server.add_service(proxy);
    server.add_service(background_service("jwks refresher", KeyRefresher { live: live.clone(), fetcher }));
    if let Some(addr) = &admin_listen {
        let mut admin = Service::new("admin".to_string(), Admin { live: live.clone(), metrics: metrics.clone() });
        admin.add_tcp(addr);
        admin.threads = Some(1);
        server.add_service(admin);
    }
    server.run_forever();
}

/// `run`, turning a config error into an `anyhow` error for the demo.
pub fn run_or_exit(config_path: &Path) -> anyhow::Result<()> {
    run(config_path).map_err(|e| anyhow::anyhow!("{e}"))
}

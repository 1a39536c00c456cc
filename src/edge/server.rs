//! Assemble and run the Pingora server: the proxy service on the configured listeners, the
//! admin listener, key refresh and the config watcher.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{ExecutionPhase, Server};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;

use super::access_log::AccessLog;
use super::admin::Admin;
use super::console::refusals::RefusalLog;
use super::console::reloads::ReloadHistory;
use super::keys::KeyRefresher;
use super::limits::{ConnLimits, Limited, OPEN_CONNECTIONS};
use super::metrics::Metrics;
use super::proxy::{Gate, ScopeGate, IN_FLIGHT};
use super::reload::{ConfigWatcher, Reloader};
use super::traces::Traces;
use super::{Live, LiveConfig};
use crate::auth::jwks::JwksFetcher;
use crate::compile;
use crate::config::ConfigError;
use crate::snapshot::ProcessSettings;

/// How the process gets its listening sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Bind them.
    Fresh,
    /// Receive them from the running process through `[server] upgrade_socket`; it sends them
    /// on SIGQUIT, then finishes its requests in flight and exits (Pingora's graceful upgrade).
    Upgrade,
}

/// Run the proxy until SIGTERM (graceful) or SIGINT. Never returns on success.
pub fn run(config_path: &Path, start: Start) -> Result<(), ConfigError> {
    run_with(config_path, None, start)
}

/// `run`, plus the demo contacts API on `demo_api` (for `scopegate demo`).
/// `[tracing]`: the exporter, started with the process.
fn start_traces(
    process: &crate::snapshot::ProcessSettings,
    metrics: &Metrics,
    config_path: &Path,
) -> Result<Option<Traces>, ConfigError> {
    let Some(settings) = &process.tracing else {
        return Ok(None);
    };
    let traces =
        Traces::start(settings, metrics.spans_dropped.clone()).map_err(|e| ConfigError {
            file: config_path.display().to_string(),
            line: 1,
            col: 1,
            message: e.to_string(),
        })?;
    tracing::info!(url = %settings.traces_url, sample_ratio = settings.sample_ratio, "exporting traces");
    Ok(Some(traces))
}

pub fn run_with(
    config_path: &Path,
    demo_api: Option<std::net::TcpListener>,
    start: Start,
) -> Result<(), ConfigError> {
    // A SIGHUP before the config watcher listens for it must not end the process (the default
    // action); /readyz says 200 only once it listens.
    // SAFETY: sets the disposition of one signal; the watcher's handler replaces it.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    let loaded = crate::config::load(config_path)?;
    let first = compile::build(&loaded, 1)?;
    let first_fingerprint =
        super::reload::fingerprint_of(loaded.source.text.as_bytes(), Some(&first));
    drop(loaded);
    release_freed_memory();
    let metrics = Arc::new(Metrics::new());
    metrics.set_generation(1);
    metrics.jwks_issuers(first.verifier.issuers.iter().map(|i| i.issuer.as_str()));
    let process = first.process.clone();
    tracing::info!(
        config = %config_path.display(),
        routes = first.routes.len(),
        listen = ?process.listen,
        "scopegate starting"
    );
    let idle_pool = idle_pool_size(&first, process.threads);
    let live: LiveConfig = Arc::new(ArcSwap::from_pointee(Live::new(first)));
    let mut server = pingora_server(&process, start, idle_pool);
    server.bootstrap();
    let observer = metrics.clone();
    let fetcher = Arc::new(JwksFetcher::new(Box::new(move |issuer, ok| {
        observer.jwks_refresh(issuer, ok)
    })));
    let refusals = Arc::new(RefusalLog::new());
    let traces = start_traces(&process, &metrics, config_path)?;
    let proxy = proxy_service(&server, &live, &metrics, &fetcher, &refusals, traces);
    server.add_service(proxy);
    let reloaded = Arc::new(tokio::sync::Notify::new());
    let history = Arc::new(ReloadHistory::new());
    history.started(1);
    server.add_service(background_service(
        "jwks refresher",
        KeyRefresher {
            live: live.clone(),
            fetcher,
            reloaded: reloaded.clone(),
        },
    ));
    let reloader = Arc::new(Reloader::new(
        config_path.to_path_buf(),
        live.clone(),
        metrics.clone(),
        first_fingerprint,
        reloaded,
        history.clone(),
    ));
    server.add_service(background_service(
        "config watcher",
        ConfigWatcher(reloader),
    ));
    if let Some(addr) = &process.admin_listen {
        server.add_service(admin_service(addr, &live, &metrics, refusals, history));
    }
    if let Some(listener) = demo_api {
        let api = super::demo_api::DemoApiService(std::sync::Mutex::new(Some(listener)));
        server.add_service(background_service("demo contacts API", api));
    }
    drain_then_exit(
        server.watch_execution_phase(),
        Duration::from_secs(process.shutdown_grace_seconds),
    );
    server.run_forever();
}

/// Pingora's server with scopegate's process settings.
fn pingora_server(process: &ProcessSettings, start: Start, idle_pool: usize) -> Server {
    let conf = ServerConf {
        threads: process.threads,
        upstream_keepalive_pool_size: idle_pool,
        // After SIGTERM the listeners close at once and requests in flight get the grace
        // period; `drain_then_exit` ends it early once none are left.
        grace_period_seconds: Some(process.shutdown_grace_seconds),
        graceful_shutdown_timeout_seconds: Some(1),
        // One current-thread runtime per worker: no cross-thread wakeups on the request path
        // (measured with bench/load.sh).
        work_stealing: false,
        upgrade_sock: process.upgrade_socket.display().to_string(),
        ..ServerConf::default()
    };
    let opt = pingora_core::server::configuration::Opt {
        upgrade: start == Start::Upgrade,
        ..Default::default()
    };
    if start == Start::Upgrade {
        tracing::info!(socket = %process.upgrade_socket.display(), "waiting for the listening sockets of the running process (send it SIGQUIT)");
    }
    Server::new_with_opt_and_conf(Some(opt), conf)
}

/// `/healthz`, `/readyz`, `/metrics` and the console on their own listener and thread.
fn admin_service(
    addr: &str,
    live: &LiveConfig,
    metrics: &Arc<Metrics>,
    refusals: Arc<RefusalLog>,
    reloads: Arc<ReloadHistory>,
) -> Service<Admin> {
    let mut admin = Service::new(
        "admin".to_string(),
        Admin {
            live: live.clone(),
            metrics: metrics.clone(),
            refusals,
            reloads,
        },
    );
    admin.add_tcp(addr);
    admin.threads = Some(1);
    admin
}

type ProxyService = Service<Limited<pingora_proxy::HttpProxy<ScopeGate>>>;

fn proxy_service(
    server: &Server,
    live: &LiveConfig,
    metrics: &Arc<Metrics>,
    fetcher: &Arc<JwksFetcher>,
    refusals: &Arc<RefusalLog>,
    traces: Option<Traces>,
) -> ProxyService {
    let current = live.load();
    let process = &current.snapshot.process;
    let store = super::quota::shared_store(&current.snapshot, metrics);
    let gate = Arc::new(Gate {
        live: live.clone(),
        metrics: metrics.clone(),
        fetcher: fetcher.clone(),
        access_log: AccessLog::start(process.access_log, metrics.access_log_dropped.clone()),
        quotas: crate::quota::Quotas::new(store.clone()),
        replays: super::replay::Replays::new(store),
        refusals: refusals.clone(),
        traces,
    });
    let gate_for_limits = gate.clone();
    let mut http = pingora_proxy::http_proxy(&server.configuration, ScopeGate(gate));
    let keepalive = Duration::from_secs(process.keepalive_timeout_seconds);
    let mut options = pingora_core::apps::HttpServerOptions::default();
    options.h2_idle_timeout = Some(keepalive);
    // CONNECT reaches the decision, which always refuses it with a 405 of its own (JSON body,
    // `Allow`); Pingora's own refusal has neither.
    options.allow_connect_method_proxying = true;
    http.server_options = Some(options);
    // HTTP/2 header lists up to twice the limit reach the decision, which refuses those past
    // 64 KiB with a JSON 431 as over HTTP/1 (beyond that, h2 refuses them itself).
    let mut h2 = pingora_core::protocols::http::v2::server::default_h2_options();
    h2.max_header_list_size(2 * super::limits::MAX_HEADER as u32);
    http.h2_options = Some(h2);
    let limits = ConnLimits {
        max_connections: connection_budget(
            process.max_connections,
            server.configuration.upstream_keepalive_pool_size,
        ),
        header: Duration::from_secs(process.header_timeout_seconds),
        keepalive,
    };
    let tls = current
        .snapshot
        .tls
        .as_ref()
        .map(|_| Arc::new(tls_acceptor(live)));
    let limited = Limited {
        inner: Arc::new(http),
        limits,
        tls,
        gate: Some(gate_for_limits),
    };
    let mut proxy = Service::new("scopegate".to_string(), limited);
    // TLS is accepted by `Limited`, after the connection is counted and within the header
    // deadline (Pingora's listener would give a handshake 60 s, outside any limit).
    for addr in &current.snapshot.process.listen {
        proxy.add_listener(ListenerConfig::tcp(addr).l4_buffer(l4_buffer()));
    }
    proxy
}

/// The TLS server: TLS 1.2 and 1.3 with rustls' default (ring) provider, the certificate of the
/// live snapshot (a reload serves renewed files), HTTP/2 by ALPN, and session resumption:
/// stateless tickets (rotated every 6 hours by rustls' ticketer), so a returning client skips
/// the full handshake on any worker.
fn tls_acceptor(live: &LiveConfig) -> pingora_core::listeners::tls::Acceptor {
    pingora_rustls::install_default_crypto_provider();
    let builder = pingora_rustls::ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS12,
        &rustls::version::TLS13,
    ]);
    let process = &live.load().snapshot.process;
    let builder = match client_verifier(process.client_certificates, process.client_ca.as_deref()) {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(LiveCertificate(live.clone())));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    match rustls::crypto::ring::Ticketer::new() {
        Ok(ticketer) => config.ticketer = ticketer,
        Err(e) => {
            tracing::warn!(error = %e, "TLS session tickets unavailable; resumption by session cache only")
        }
    }
    pingora_core::listeners::tls::Acceptor::from_server_config(Arc::new(config))
}

/// `[server.tls] client_certificates` (RFC 8705 §2): `request` asks for a certificate and takes
/// any (the handshake still proves the client holds its key), `require` wants one that chains
/// to `client_ca`. `None`: no client certificates asked for.
fn client_verifier(
    mode: crate::config::ClientCertificates,
    client_ca: Option<&std::path::Path>,
) -> Option<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    use crate::config::ClientCertificates;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    match mode {
        ClientCertificates::None => None,
        ClientCertificates::Request => Some(Arc::new(AnyClientCertificate(provider))),
        ClientCertificates::Require => {
            // Checked at load (a PEM file of usable certificates); one that went bad since
            // stops the start rather than admit clients unchecked.
            let mut roots = rustls::RootCertStore::empty();
            if let Some(Ok(certs)) = client_ca.map(crate::compile::load_ca) {
                for c in certs.iter() {
                    let _ = roots.add(c.clone());
                }
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build();
            match verifier {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::error!(error = %e, "server.tls.client_ca: no client certificate can be verified; not starting");
                    std::process::exit(1);
                }
            }
        }
    }
}

/// `client_certificates = "request"`: any certificate, its key proven by the handshake.
#[derive(Debug)]
struct AnyClientCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::server::danger::ClientCertVerifier for AnyClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// No buffers below the HTTP session. Reads: the parser reads into a growing buffer of its own
/// (and scopegate reads a header ahead into one that exists only once bytes arrive); Pingora's
/// default, 64 KiB per connection allocated at accept, held 320 MB for 5,000 slow clients.
/// Writes: Pingora's write buffer holds a `Content-Length` response's head and body pieces until
/// it fills or the body ends, so a slow body would delay even the head; an HTTP/1 connection's
/// writes are gathered above it instead (`super::coalesce`), sent when the session flushes or
/// goes back to reading, so a response leaves in one send and nothing waits on the upstream.
fn l4_buffer() -> L4BufferSettings {
    L4BufferSettings::new(0, 0)
}

/// Idle upstream connections Pingora's pool keeps: `max_idle` per server of every upstream,
/// per worker thread (the pool is one LRU shared by the workers, sized at start).
fn idle_pool_size(snapshot: &crate::snapshot::Snapshot, threads: usize) -> usize {
    let per_thread: usize = snapshot
        .upstreams
        .iter()
        .map(|u| u.servers.len() * u.max_idle)
        .sum();
    (per_thread * threads.max(1)).max(1)
}

/// File descriptors kept for the admin listener, listeners, config, key and log files.
const FD_RESERVE: u64 = 256;

/// Raise the open-file limit to its hard maximum, and keep `max_connections` within what each
/// client can really cost, so that a flood is turned away by scopegate rather than by EMFILE
/// (which would also starve /healthz, /metrics, upstream connections and reloads): a client
/// connection is one descriptor, and one more for the upstream connection of its request in
/// flight (HTTP/2 clients with several streams are held to the same total by
/// `proxy::FORWARD_BUDGET`), besides the idle pool and the reserve.
fn connection_budget(max_connections: usize, idle_pool: usize) -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    let limit = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return max_connections;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        lim.rlim_cur
    };
    let spare = limit
        .saturating_sub(FD_RESERVE)
        .saturating_sub(idle_pool as u64) as usize;
    let fit = (spare / 2).max(1);
    super::proxy::FORWARD_BUDGET.store(
        spare.saturating_sub(max_connections.min(fit)).max(1),
        Ordering::Relaxed,
    );
    if fit < max_connections {
        tracing::warn!(
            max_connections,
            open_files_limit = limit,
            idle_pool,
            "server.max_connections lowered to {fit}: each client may also need an upstream connection, besides the idle pool and a reserve of descriptors"
        );
        return fit;
    }
    max_connections
}

/// Serves the certificate of the snapshot in use.
struct LiveCertificate(LiveConfig);

impl std::fmt::Debug for LiveCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveCertificate")
    }
}

impl pingora_rustls::ResolvesServerCert for LiveCertificate {
    fn resolve(
        &self,
        _hello: pingora_rustls::ClientHello<'_>,
    ) -> Option<Arc<pingora_rustls::sign::CertifiedKey>> {
        self.0
            .load()
            .snapshot
            .tls
            .as_ref()
            .map(|t| t.certified.clone())
    }
}

/// Pingora sleeps the whole grace period after SIGTERM; exit as soon as the last request in
/// flight has finished instead.
fn drain_then_exit(mut phases: tokio::sync::broadcast::Receiver<ExecutionPhase>, grace: Duration) {
    std::thread::spawn(move || loop {
        match phases.blocking_recv() {
            Ok(ExecutionPhase::ShutdownGracePeriod) => {
                // Connections finish their request in flight and the next one (answered with
                // `Connection: close`), so clients of a graceful upgrade see no reset.
                let deadline = Instant::now() + grace;
                let busy = || {
                    IN_FLIGHT.load(Ordering::Relaxed) > 0
                        || OPEN_CONNECTIONS.load(Ordering::Relaxed) > 0
                };
                while busy() && Instant::now() < deadline {
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

/// Hand memory freed after parsing (the TOML document of a large config is several times the
/// size of the snapshot built from it) back to the OS, so it does not stay in the RSS.
pub fn release_freed_memory() {
    // SAFETY: mi_collect only walks the calling thread's heap and the abandoned segments.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

//! `Config` -> `Snapshot`: everything the request path needs, compiled once (router, issuers
//! with their keys, upstream pools, precomputed header values). A snapshot never changes; a
//! reload builds a new one and swaps it in.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{HeaderName, HeaderValue};
use http::Method;
use jsonwebtoken::{Algorithm, AlgorithmFamily};

use crate::cache::TokenCache;
use crate::config::{ConfigError, LoadedConfig};
use crate::keys::{KeySet, KeySource, KeyStore};
use crate::router::Router;
use crate::token::Issuer;
use crate::token::{Principal, Rejection};

/// What a route demands of a token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequiredScopes {
    /// Every one of these.
    pub all: Vec<String>,
    /// At least one of these (when not empty).
    pub any: Vec<String>,
}

#[derive(Debug)]
pub struct Route {
    /// `GET /contacts/{id}`: how the route is named in metrics, logs and `check`.
    pub label: String,
    pub path: String,
    pub methods: Vec<Method>,
    pub public: bool,
    pub required: RequiredScopes,
    pub upstream: usize,
    /// `WWW-Authenticate` for a 403 on this route, built once.
    pub insufficient_scope_challenge: HeaderValue,
}

/// One upstream server with passive health: after a failed connect it is skipped for a while.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    /// Milliseconds since the pool's epoch until which the server is considered down.
    down_until_ms: AtomicU64,
}

#[derive(Debug)]
pub struct UpstreamPool {
    pub name: String,
    pub servers: Vec<Server>,
    pub tls: bool,
    pub sni: String,
    /// CA certificates for this upstream only (`ca_file`).
    pub ca: Option<Arc<pingora_core::protocols::tls::CaType>>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    next: AtomicUsize,
    epoch: Instant,
}

/// How long a server that refused a connection is left out of the rotation.
const EJECT_FOR: Duration = Duration::from_secs(5);

impl UpstreamPool {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Round-robin over the healthy servers; when all are down, over all of them (failing
    /// open to the pool beats a guaranteed 502).
    pub fn pick(&self) -> usize {
        let n = self.servers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        if n == 1 {
            return 0;
        }
        let now = self.now_ms();
        for k in 0..n {
            let i = (start + k) % n;
            if self.servers[i].down_until_ms.load(Ordering::Relaxed) <= now {
                return i;
            }
        }
        start % n
    }

    pub fn mark_failed(&self, server: usize) {
        if let Some(s) = self.servers.get(server) {
            let until = self.now_ms() + EJECT_FOR.as_millis() as u64;
            s.down_until_ms.store(until, Ordering::Relaxed);
        }
    }
}

/// What is added to, or removed from, requests forwarded upstream.
#[derive(Debug, Default)]
pub struct ForwardPlan {
    /// claim name -> header set from it.
    pub claim_headers: Vec<(String, HeaderName)>,
    pub strip_token: bool,
}

#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub router: Router,
    pub routes: Vec<Route>,
    pub issuers: Vec<Issuer>,
    pub upstreams: Vec<UpstreamPool>,
    pub forward: ForwardPlan,
    pub realm: String,
    /// `Bearer realm="..."`, for a request without a token.
    pub challenge: HeaderValue,
    pub listen: Vec<String>,
    /// Certificate and key for HTTPS listeners (HTTP/2 by ALPN).
    pub tls: Option<ServerTls>,
    pub admin_listen: Option<String>,
    pub threads: usize,
    pub shutdown_grace_seconds: u64,
    pub token_cache: TokenCache,
    /// Metric series handles for this snapshot's routes and upstreams.
    pub labels: crate::metrics::LabelCache,
}

fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    if name.eq_ignore_ascii_case("none") {
        return Err("the `none` algorithm is never accepted".into());
    }
    Algorithm::from_str(name).map_err(|_| {
        format!("unknown algorithm {name:?}; use one of RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA HS256 HS384 HS512")
    })
}

/// `GET,POST` as routes name their methods in labels and tables; `ANY` for every method.
pub fn method_list(methods: &[Method]) -> String {
    if methods.is_empty() {
        "ANY".to_string()
    } else {
        methods
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Quote a string for a `WWW-Authenticate` parameter (RFC 9110 §5.6.4).
pub fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn is_scope_token(s: &str) -> bool {
    // RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// Compile a parsed config. Keys from files and environment variables are loaded here; keys
/// from URLs are fetched by the key refresher once the snapshot exists.
pub fn build(loaded: &LoadedConfig, generation: u64) -> Result<Snapshot, ConfigError> {
    build_with(loaded, generation, &HashMap::new())
}

/// Like `build`, but reuses the key stores of issuers whose key source did not change, so a
/// reload does not drop keys fetched from a URL.
pub fn build_with(
    loaded: &LoadedConfig,
    generation: u64,
    previous_keys: &HashMap<(String, KeySource), Arc<KeyStore>>,
) -> Result<Snapshot, ConfigError> {
    let cfg = &loaded.config;
    let src = &loaded.source;

    // --- server
    let listen = cfg.server.listen.get_ref().to_vec();
    if listen.is_empty() {
        return Err(src.error(
            Some(cfg.server.listen.span()),
            "server.listen needs at least one address",
        ));
    }
    for addr in &listen {
        if addr.parse::<SocketAddr>().is_err() {
            return Err(src.error(
                Some(cfg.server.listen.span()),
                format!("server.listen: {addr:?} is not an address like \"127.0.0.1:8080\""),
            ));
        }
    }
    if let Some(admin) = &cfg.server.admin_listen {
        if admin.get_ref().parse::<SocketAddr>().is_err() {
            return Err(src.error(
                Some(admin.span()),
                format!(
                    "server.admin_listen: {:?} is not an address like \"127.0.0.1:9090\"",
                    admin.get_ref()
                ),
            ));
        }
    }
    if cfg.server.threads == 0 {
        return Err(src.error(None, "server.threads must be at least 1"));
    }
    let realm = cfg.server.realm.get_ref().clone();
    if realm.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(src.error(
            Some(cfg.server.realm.span()),
            "server.realm must not contain control characters",
        ));
    }
    let tls = match &cfg.server.tls {
        Some(t) => {
            let (cert, key) = (
                loaded.resolve(&t.get_ref().cert),
                loaded.resolve(&t.get_ref().key),
            );
            let certified = load_certified_key(&cert, &key)
                .map_err(|m| src.error(Some(t.span()), format!("server.tls: {m}")))?;
            Some(ServerTls {
                cert,
                key,
                certified,
            })
        }
        None => None,
    };
    let challenge =
        HeaderValue::from_str(&format!("Bearer realm={}", quoted(&realm))).map_err(|_| {
            src.error(
                Some(cfg.server.realm.span()),
                "server.realm is not a valid header value",
            )
        })?;

    // --- upstreams
    let mut upstream_index: HashMap<&str, usize> = HashMap::new();
    let mut upstreams = Vec::new();
    for (name, up) in &cfg.upstreams {
        let span = Some(up.span());
        let up = up.get_ref();
        if up.servers.get_ref().is_empty() {
            return Err(src.error(
                Some(up.servers.span()),
                format!("upstreams.{name}.servers is empty"),
            ));
        }
        let ca = match &up.ca_file {
            Some(_) if !up.tls => {
                return Err(src.error(span, format!("upstreams.{name}.ca_file needs tls = true")));
            }
            Some(f) => {
                Some(load_ca(&loaded.resolve(f)).map_err(|m| {
                    src.error(span.clone(), format!("upstreams.{name}.ca_file: {m}"))
                })?)
            }
            None => None,
        };
        let mut servers = Vec::new();
        for s in up.servers.get_ref() {
            let addr = s
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| {
                    src.error(
                        Some(up.servers.span()),
                        format!("upstreams.{name}.servers: {s:?} is not a reachable host:port"),
                    )
                })?;
            servers.push(Server {
                addr,
                down_until_ms: AtomicU64::new(0),
            });
        }
        let sni = up.sni.clone().unwrap_or_else(|| {
            up.servers.get_ref()[0]
                .rsplit_once(':')
                .map(|(h, _)| h.to_string())
                .unwrap_or_default()
        });
        upstream_index.insert(name.as_str(), upstreams.len());
        upstreams.push(UpstreamPool {
            name: name.clone(),
            servers,
            tls: up.tls,
            sni,
            ca,
            connect_timeout: Duration::from_millis(up.connect_timeout_ms.max(1)),
            read_timeout: Duration::from_millis(up.read_timeout_ms.max(1)),
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
        });
    }

    // --- issuers
    let mut issuers = Vec::new();
    for spanned in &cfg.issuers {
        let span = Some(spanned.span());
        let ic = spanned.get_ref();
        let name = ic.issuer.get_ref().clone();
        if name.is_empty() {
            return Err(src.error(Some(ic.issuer.span()), "issuers.issuer must not be empty"));
        }
        if issuers.iter().any(|i: &Issuer| i.issuer == name) {
            return Err(src.error(
                Some(ic.issuer.span()),
                format!("issuer {name:?} is listed twice"),
            ));
        }
        let audiences = ic
            .audiences
            .as_ref()
            .map(|a| a.get_ref().clone())
            .unwrap_or_default();
        if audiences.is_empty() {
            return Err(src.error(
                span,
                format!(
                    "issuer {name:?}: `audiences` is required (the `aud` values this API accepts)"
                ),
            ));
        }
        let mut sources = Vec::new();
        if let Some(u) = &ic.jwks_url {
            sources.push(KeySource::Url(u.clone()));
        }
        if let Some(f) = &ic.jwks_file {
            sources.push(KeySource::File(loaded.resolve(f)));
        }
        if ic.discovery {
            sources.push(KeySource::Discovery(name.clone()));
        }
        if let Some(v) = &ic.hs256_secret_env {
            sources.push(KeySource::SecretEnv(v.clone()));
        }
        let source = match sources.len() {
            1 => sources.pop().unwrap(),
            0 => {
                return Err(src.error(
                    span,
                    format!("issuer {name:?} has no key source; set exactly one of jwks_url, jwks_file, discovery = true, hs256_secret_env"),
                ))
            }
            _ => {
                return Err(src.error(
                    span,
                    format!("issuer {name:?} has {} key sources; set exactly one of jwks_url, jwks_file, discovery = true, hs256_secret_env", sources.len()),
                ))
            }
        };
        let symmetric = matches!(source, KeySource::SecretEnv(_));
        let alg_names = match &ic.algorithms {
            Some(a) => a.get_ref().clone(),
            None if symmetric => vec!["HS256".to_string()],
            None => vec!["RS256".to_string()],
        };
        let alg_span = ic.algorithms.as_ref().map(|a| a.span()).or(span.clone());
        if alg_names.is_empty() {
            return Err(src.error(
                alg_span,
                format!("issuer {name:?}: `algorithms` must not be empty"),
            ));
        }
        let mut algorithms = Vec::new();
        for a in &alg_names {
            let alg = parse_algorithm(a)
                .map_err(|m| src.error(alg_span.clone(), format!("issuer {name:?}: {m}")))?;
            // Never HMAC with a public key, nor a public-key algorithm with a shared secret.
            if symmetric != (alg.family() == AlgorithmFamily::Hmac) {
                return Err(src.error(
                    alg_span.clone(),
                    if symmetric {
                        format!("issuer {name:?}: {a} cannot be used with hs256_secret_env; use HS256, HS384 or HS512")
                    } else {
                        format!("issuer {name:?}: {a} needs a shared secret; with a JWKS use RS256, PS256, ES256 or EdDSA")
                    },
                ));
            }
            algorithms.push(alg);
        }
        if ic.refresh_min_seconds == 0 || ic.refresh_min_seconds > ic.refresh_max_seconds {
            return Err(src.error(
                span,
                format!("issuer {name:?}: need 0 < refresh_min_seconds <= refresh_max_seconds"),
            ));
        }
        let keys = match previous_keys.get(&(name.clone(), source.clone())) {
            Some(store) if !matches!(source, KeySource::File(_) | KeySource::SecretEnv(_)) => {
                store.clone()
            }
            _ => Arc::new(
                load_static_keys(&source)
                    .map_err(|m| src.error(span.clone(), format!("issuer {name:?}: {m}")))?,
            ),
        };
        issuers.push(Issuer {
            issuer: name,
            audiences,
            algorithms,
            leeway: ic.leeway_seconds,
            scope_claims: ic.scope_claims.clone(),
            keys,
            refresh: crate::jwks::RefreshPolicy {
                min: Duration::from_secs(ic.refresh_min_seconds),
                max: Duration::from_secs(ic.refresh_max_seconds),
                cooldown: Duration::from_secs(ic.unknown_kid_cooldown_seconds),
            },
        });
    }

    // --- routes
    let mut router = Router::default();
    let paths_with_head: std::collections::HashSet<&str> = cfg
        .routes
        .iter()
        .filter(|r| {
            r.get_ref()
                .methods
                .as_ref()
                .is_some_and(|ms| ms.get_ref().iter().any(|m| m.eq_ignore_ascii_case("HEAD")))
        })
        .map(|r| r.get_ref().path.get_ref().as_str())
        .collect();
    let mut routes = Vec::new();
    for (idx, spanned) in cfg.routes.iter().enumerate() {
        let rc = spanned.get_ref();
        let path = rc.path.get_ref().clone();
        let path_span = Some(rc.path.span());
        let mut methods = Vec::new();
        if let Some(ms) = &rc.methods {
            for m in ms.get_ref() {
                let upper = m.to_ascii_uppercase();
                let method = Method::from_bytes(upper.as_bytes()).map_err(|_| {
                    src.error(Some(ms.span()), format!("{m:?} is not an HTTP method"))
                })?;
                if !methods.contains(&method) {
                    methods.push(method);
                }
            }
            if methods.is_empty() {
                return Err(src.error(
                    Some(ms.span()),
                    "`methods` is empty; leave it out to match every method",
                ));
            }
        }
        let label_methods = method_list(&methods);
        // GET also covers HEAD (RFC 9110 §9.3.2), unless HEAD has a route of its own.
        let mut lookup_methods = methods.clone();
        if methods.contains(&Method::GET) && !paths_with_head.contains(path.as_str()) {
            lookup_methods.push(Method::HEAD);
        }
        router
            .insert(&path, &lookup_methods, idx)
            .map_err(|e| src.error(path_span.clone(), e.to_string()))?;

        if rc.public && (!rc.scopes.is_empty() || !rc.any_scopes.is_empty()) {
            return Err(src.error(
                Some(spanned.span()),
                format!("route {label_methods} {path}: a public route cannot require scopes"),
            ));
        }
        for s in rc.scopes.iter().chain(&rc.any_scopes) {
            if !is_scope_token(s) {
                return Err(src.error(
                    Some(spanned.span()),
                    format!("route {label_methods} {path}: {s:?} is not a valid scope (RFC 6749 §3.3: no spaces, quotes or backslashes)"),
                ));
            }
        }
        let upstream = match &rc.upstream {
            Some(u) => *upstream_index.get(u.get_ref().as_str()).ok_or_else(|| {
                src.error(
                    Some(u.span()),
                    format!(
                        "route {label_methods} {path}: upstream {:?} is not defined (defined: {})",
                        u.get_ref(),
                        cfg.upstreams.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )
            })?,
            None if upstreams.len() == 1 => 0,
            None => {
                return Err(src.error(
                    Some(spanned.span()),
                    format!(
                        "route {label_methods} {path}: set `upstream` (there are {} upstreams)",
                        upstreams.len()
                    ),
                ))
            }
        };
        if !rc.public && issuers.is_empty() {
            return Err(src.error(
                Some(spanned.span()),
                format!(
                    "route {label_methods} {path} needs a token but no [[issuers]] are configured"
                ),
            ));
        }
        let required = RequiredScopes {
            all: rc.scopes.clone(),
            any: rc.any_scopes.clone(),
        };
        let mut scope_param: Vec<&str> = required.all.iter().map(String::as_str).collect();
        scope_param.extend(required.any.iter().map(String::as_str));
        let insufficient_scope_challenge = HeaderValue::from_str(&format!(
            "Bearer realm={}, error=\"insufficient_scope\", scope={}",
            quoted(&realm),
            quoted(&scope_param.join(" "))
        ))
        .map_err(|_| src.error(Some(spanned.span()), "scopes do not fit in a header"))?;
        routes.push(Route {
            label: format!("{label_methods} {path}"),
            path,
            methods,
            public: rc.public,
            required,
            upstream,
            insufficient_scope_challenge,
        });
    }

    // --- forwarding
    let mut claim_headers = Vec::new();
    if let Some(claims) = &cfg.forward.claims {
        for (claim, header) in claims.get_ref() {
            let name = HeaderName::from_str(header).map_err(|_| {
                src.error(
                    Some(claims.span()),
                    format!("forward.claims.{claim}: {header:?} is not a header name"),
                )
            })?;
            claim_headers.push((claim.clone(), name));
        }
    }

    let (routes_len, upstreams_len) = (routes.len(), upstreams.len());
    Ok(Snapshot {
        generation,
        router,
        routes,
        issuers,
        upstreams,
        forward: ForwardPlan {
            claim_headers,
            strip_token: cfg.forward.strip_token,
        },
        realm,
        challenge,
        listen,
        tls,
        admin_listen: cfg
            .server
            .admin_listen
            .as_ref()
            .map(|a| a.get_ref().clone()),
        threads: cfg.server.threads,
        shutdown_grace_seconds: cfg.server.shutdown_grace_seconds,
        token_cache: TokenCache::new(cfg.forward.token_cache_size),
        labels: crate::metrics::LabelCache::new(routes_len, upstreams_len),
    })
}

/// The server certificate, loaded with the snapshot so a reload picks up renewed files.
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub certified: Arc<pingora_rustls::sign::CertifiedKey>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

fn load_certified_key(
    cert: &Path,
    key: &Path,
) -> Result<Arc<pingora_rustls::sign::CertifiedKey>, String> {
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    for p in [cert, key] {
        std::fs::metadata(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    }
    let (chain, private) = pingora_rustls::load_certs_and_key_files(&cert_s, &key_s)
        .map_err(|e| format!("cannot load {cert_s} / {key_s}: {e}"))?
        .ok_or_else(|| {
            format!("{cert_s} holds no certificate or {key_s} no private key (PEM expected)")
        })?;
    pingora_rustls::install_default_crypto_provider();
    let provider = pingora_rustls::CryptoProvider::get_default().ok_or("no TLS crypto provider")?;
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| format!("unusable private key in {key_s}: {e}"))?;
    let certified = pingora_rustls::sign::CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("{key_s} does not match {cert_s}: {e}"))?;
    Ok(Arc::new(certified))
}

/// CA certificates from a PEM file, each checked before use.
fn load_ca(path: &Path) -> Result<Arc<pingora_core::protocols::tls::CaType>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    let mut store = pingora_rustls::RootCertStore::empty();
    let mut wrapped = Vec::with_capacity(certs.len());
    for c in certs {
        store
            .add(c.clone())
            .map_err(|e| format!("{}: unusable certificate: {e}", path.display()))?;
        wrapped.push(pingora_core::utils::tls::WrappedX509::new(
            c.to_vec(),
            pingora_core::utils::tls::parse_x509,
        ));
    }
    Ok(Arc::from(wrapped.into_boxed_slice()))
}

/// Keys that are available without the network.
fn load_static_keys(source: &KeySource) -> Result<KeyStore, String> {
    match source {
        KeySource::File(path) => {
            let bytes = std::fs::read(path)
                .map_err(|e| format!("cannot read jwks_file {}: {e}", path.display()))?;
            let (set, skipped) = KeySet::from_jwks(&bytes)
                .map_err(|e| format!("jwks_file {}: {e}", path.display()))?;
            for s in &skipped {
                tracing::warn!(file = %path.display(), "skipping JWKS {s}");
            }
            if set.keys.is_empty() {
                return Err(format!(
                    "jwks_file {} holds no usable signing key",
                    path.display()
                ));
            }
            Ok(KeyStore::with_keys(source.clone(), set))
        }
        KeySource::SecretEnv(var) => {
            let secret = std::env::var(var)
                .map_err(|_| format!("environment variable {var} (hs256_secret_env) is not set"))?;
            // RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
            if secret.len() < 32 {
                return Err(format!("the secret in {var} is shorter than 32 bytes"));
            }
            Ok(KeyStore::with_keys(
                source.clone(),
                KeySet::from_secret(secret.as_bytes()),
            ))
        }
        KeySource::Url(_) | KeySource::Discovery(_) => Ok(KeyStore::new(source.clone())),
    }
}

impl Snapshot {
    /// The key stores by (issuer, source), to carry over into the next snapshot.
    pub fn key_stores(&self) -> HashMap<(String, KeySource), Arc<KeyStore>> {
        self.issuers
            .iter()
            .map(|i| ((i.issuer.clone(), i.keys.source.clone()), i.keys.clone()))
            .collect()
    }

    /// Validate a bearer token, through the verified-token cache.
    pub fn verify_token(&self, token: &[u8]) -> Result<Arc<Principal>, Rejection> {
        let now = unix_now();
        let version_of = |i: usize| self.issuers[i].keys.version();
        if let Some(p) = self.token_cache.get(token, now, version_of) {
            return Ok(p);
        }
        // Read the version before verifying: if the keys change meanwhile, the entry is stale
        // at once rather than attributed to the new set.
        let versions: Vec<u64> = self.issuers.iter().map(|i| i.keys.version()).collect();
        let principal = Arc::new(crate::token::verify(
            token,
            &self.issuers,
            &self.forward.claim_headers,
            now,
        )?);
        self.token_cache
            .put(token, principal.clone(), now, versions[principal.issuer]);
        Ok(principal)
    }

    /// Every issuer has keys.
    pub fn keys_ready(&self) -> bool {
        self.issuers.iter().all(|i| i.keys.is_loaded())
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

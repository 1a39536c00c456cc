//! The compiled configuration: everything the request path needs, built once by `compile`
//! (router, verifier with its issuers and keys, upstream pools, header values). A snapshot
//! never changes; a reload builds a new one and swaps it in.

use std::path::PathBuf;
use std::sync::Arc;

use http::header::HeaderValue;
use http::Method;

use crate::auth::{Principal, Rejection, Verifier};
use crate::routing::{normalize_host, ClaimCondition, HostTable, RequiredScopes, Router};
use crate::upstream::UpstreamPool;

/// Settings that take effect only at process start: a reload that changes them is logged and
/// waits for the next restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSettings {
    pub listen: Vec<String>,
    pub admin_listen: Option<String>,
    pub threads: usize,
    pub shutdown_grace_seconds: u64,
    /// HTTPS listeners (the certificate itself reloads; turning TLS on or off does not).
    pub tls: bool,
    pub max_connections: usize,
    pub header_timeout_seconds: u64,
    pub keepalive_timeout_seconds: u64,
    pub access_log: crate::config::AccessLogFormat,
    pub upgrade_socket: PathBuf,
    /// Read per request, so a reload applies it at once.
    pub trusted_proxies: crate::trusted::TrustedProxies,
    /// `[server.tls] client_certificates` and `client_ca` (v3).
    pub client_certificates: crate::config::ClientCertificates,
    pub client_ca: Option<PathBuf>,
    /// `[tracing]`: whether and where spans are exported (decided at start).
    pub tracing: Option<TracingSettings>,
}

/// `[tracing]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// `{otlp_endpoint}/v1/traces`.
    pub traces_url: String,
    /// In 0..=1 (checked at load, so never NaN).
    pub sample_ratio: f64,
    pub service_name: String,
}

// The ratio is checked to be a number in 0..=1 at load: equality is total on it.
impl Eq for TracingSettings {}

#[derive(Debug)]
pub struct Route {
    /// `GET /contacts/{id}`: how the route is named in metrics, logs and `check`.
    pub label: String,
    pub path: String,
    pub methods: Vec<Method>,
    pub public: bool,
    pub required: RequiredScopes,
    pub upstream: usize,
    /// The API it belongs to (index into `Snapshot::apis`).
    pub api: usize,
    /// Claim conditions, checked after the scopes.
    pub conditions: Vec<ClaimCondition>,
    /// `WWW-Authenticate` and description of the 403 for each failing condition, built once.
    pub access_denied: Vec<(HeaderValue, String)>,
    /// 401s and 403s are forwarded anyway, counted `report_only` (route or API setting).
    pub report_only: bool,
    /// `Upgrade: websocket` may be forwarded.
    pub websocket: bool,
    /// `WWW-Authenticate` for a 403 on this route, built once.
    pub insufficient_scope_challenge: HeaderValue,
    /// The quotas it is under (indices into `Snapshot::quotas`); empty for most routes.
    pub quotas: Vec<usize>,
}

/// The `WWW-Authenticate` values of 401 answers, built once (RFC 6750 §3).
#[derive(Debug)]
pub struct Challenges {
    pub realm: String,
    /// Indexed by `Rejection::slot`: `Bearer realm="..."` for a request without a token (RFC
    /// 6750 §3.1: no error code then), else `... error="invalid_token", error_description="..."`.
    by_rejection: Vec<HeaderValue>,
}

impl Challenges {
    pub fn new(realm: String, by_rejection: Vec<HeaderValue>) -> Self {
        Challenges {
            realm,
            by_rejection,
        }
    }

    /// The challenge for a 401 with this rejection.
    pub fn for_rejection(&self, rejection: &Rejection) -> &HeaderValue {
        &self.by_rejection[rejection.slot()]
    }
}

/// Which tokens an API takes.
#[derive(Debug)]
pub enum Accepts {
    /// The top-level routes: each issuer (by index) with the audiences it lists.
    PerIssuer(Vec<Vec<String>>),
    /// `[apis.NAME]`: its `audience`, from its issuers (by index).
    Audience {
        audience: String,
        issuers: Vec<usize>,
    },
}

/// The `[apis.NAME.cors]` answers, built once.
#[derive(Debug)]
pub struct Cors {
    pub origins: Vec<String>,
    /// The methods are added per path at preflight time.
    pub allow_headers: HeaderValue,
    pub expose_headers: HeaderValue,
    pub max_age: HeaderValue,
    pub allow_credentials: bool,
}

impl Cors {
    /// The origin, if it is one of `origins` (compared exactly, as browsers send it).
    pub fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| o == origin)
    }
}

/// One API: `[apis.NAME]`, or the top-level routes (`name` None).
#[derive(Debug)]
pub struct Api {
    pub name: Option<String>,
    pub accepts: Accepts,
    pub hosts: Vec<crate::routing::HostPattern>,
    /// Removed from the normalized path before forwarding.
    pub strip_prefix: Option<String>,
    pub cors: Option<Cors>,
    pub report_only: bool,
    /// RFC 9728 protected resource metadata, when `resource_metadata = true`.
    pub metadata: Option<ResourceMetadata>,
    /// `proof_of_possession`: its tokens must be sender-constrained (v3).
    pub pop: Option<ProofOfPossession>,
}

/// An API's `proof_of_possession`, checked.
#[derive(Debug)]
pub struct ProofOfPossession {
    pub mechanism: Mechanism,
    /// Unbound tokens are refused (`unbound_token`).
    pub required: bool,
    /// Proofs of DPoP-bound tokens on this API (the API's settings with `dpop`, else defaults).
    pub dpop: crate::auth::dpop::DpopPolicy,
}

/// How tokens are bound to their sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 9449: `cnf.jkt`, a proof per request.
    Dpop,
    /// RFC 8705: `cnf["x5t#S256"]`, the client's TLS certificate.
    Mtls,
}

/// An API's RFC 9728 document and where it is served.
#[derive(Debug)]
pub struct ResourceMetadata {
    /// `/.well-known/oauth-protected-resource` + the audience's path.
    pub path: String,
    /// The JSON document.
    pub document: String,
}

impl Api {
    /// Whether a verified token is meant for this API: its issuer is one of the API's and its
    /// `aud` names the API's audience (RFC 7519 §4.1.3).
    pub fn accept(&self, principal: &Principal) -> Result<(), Rejection> {
        match &self.accepts {
            Accepts::PerIssuer(per_issuer) => match per_issuer.get(principal.issuer) {
                Some(accepted) if principal.has_audience(accepted) => Ok(()),
                _ => Err(Rejection::WrongAudience),
            },
            Accepts::Audience { audience, issuers } => {
                if !issuers.contains(&principal.issuer) {
                    Err(Rejection::WrongIssuer)
                } else if principal.has_audience(std::slice::from_ref(audience)) {
                    Ok(())
                } else {
                    Err(Rejection::WrongAudience)
                }
            }
        }
    }

    /// `billing`, or `(top-level routes)`.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or("(top-level routes)")
    }
}

/// The routes searched for one host: those of a set of APIs, in config order.
#[derive(Debug)]
pub struct RouteSet {
    pub apis: Vec<usize>,
    pub router: Router,
    /// (path, API) of the RFC 9728 documents served on these hosts.
    pub metadata: Vec<(String, usize)>,
    /// Every API of the set is report-only: a path without a route is a 404 without a token.
    pub all_report_only: bool,
    /// Some API of the set has `cors`.
    pub has_cors: bool,
}

/// What is added to, or removed from, requests forwarded upstream (claim headers live in the
/// verifier, which renders them).
#[derive(Debug, Default)]
pub struct ForwardPlan {
    pub strip_token: bool,
}

#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub process: ProcessSettings,
    pub hosts: HostTable,
    pub sets: Vec<RouteSet>,
    pub apis: Vec<Api>,
    pub routes: Vec<Route>,
    pub verifier: Verifier,
    pub upstreams: Vec<UpstreamPool>,
    pub forward: ForwardPlan,
    pub challenges: Challenges,
    /// Certificate and key for HTTPS listeners (HTTP/2 by ALPN).
    pub tls: Option<ServerTls>,
    /// What `check` warns about (`file:line:col: warning: ...`).
    pub warnings: Vec<String>,
    /// Every API's quotas (v3).
    pub quotas: Vec<crate::quota::Quota>,
    /// `[shared_state]` (v3).
    pub shared_state: Option<crate::shared_state::SharedStateSettings>,
    /// DPoP proofs of bound tokens on APIs without settings of their own.
    pub dpop_default: crate::auth::dpop::DpopPolicy,
    /// Makes and checks DPoP nonces.
    pub nonces: crate::auth::dpop::NonceKey,
}

/// The server certificate, loaded with the snapshot so a reload picks up renewed files.
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub certified: Arc<rustls::sign::CertifiedKey>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

impl Snapshot {
    /// The routes searched for a request's host (`None`: no host, as in HTTP/1.0).
    pub fn route_set(&self, host: Option<&str>) -> &RouteSet {
        let set = match host {
            Some(h) => self.hosts.select(&normalize_host(h)),
            None => self.hosts.select(""),
        };
        &self.sets[set]
    }

    /// Files besides the config that this snapshot was built from: jwks_files and the TLS pair.
    pub fn source_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .verifier
            .issuers
            .iter()
            .filter_map(|i| match &i.keys.source {
                crate::auth::keys::KeySource::File(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        if let Some(t) = &self.tls {
            files.push(t.cert.clone());
            files.push(t.key.clone());
        }
        files
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

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

//! The user's configuration as plain data: serde structs that reject unknown keys, loaded from
//! TOML, validated, with every error reported as `file:line:col: message`.
//!
//! Nothing here is read on the request path: `compile` turns a `Config` into a `Snapshot`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

mod quotas;
mod source;
pub use quotas::{QuotaConfig, SharedStateConfig};
pub use source::{default_path, load, parse, read_regular, ConfigError, LoadedConfig, Source};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(default)]
    pub issuers: Vec<Spanned<IssuerConfig>>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<UpstreamConfig>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RouteConfig>>,
    #[serde(default)]
    pub forward: ForwardConfig,
    /// `[apis.NAME]`, in the file's order (the order decides which API's 401 reason is given).
    #[serde(default)]
    pub apis: InOrder<Spanned<ApiConfig>>,
    /// `[quotas.NAME]`: quotas of the top-level routes (v3).
    #[serde(default)]
    pub quotas: InOrder<Spanned<QuotaConfig>>,
    /// `[shared_state]`: Redis/Valkey shared by every replica (v3).
    pub shared_state: Option<Spanned<SharedStateConfig>>,
    /// (v3) OpenTelemetry traces; none without it.
    pub tracing: Option<Spanned<TracingConfig>>,
    /// (v3) `[proof_of_possession]` of the top-level routes.
    pub proof_of_possession: Option<Spanned<ProofOfPossessionConfig>>,
}

/// `[apis.NAME.proof_of_possession]` (v3): the API's tokens must be sender-constrained.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofOfPossessionConfig {
    /// "dpop" (RFC 9449) or "mtls" (RFC 8705).
    pub mechanism: Spanned<String>,
    /// false: unbound bearer tokens are accepted too.
    #[serde(default = "default_true")]
    pub required: bool,
    /// Proof algorithms accepted.
    pub dpop_algorithms: Option<Spanned<Vec<String>>>,
    /// How old a proof's `iat` may be.
    #[serde(default = "default_dpop_max_age")]
    pub dpop_max_age_seconds: Spanned<u64>,
    /// Proofs must carry a nonce scopegate issued (RFC 9449 §9).
    #[serde(default)]
    pub dpop_nonce: bool,
}

fn default_true() -> bool {
    true
}
fn default_dpop_max_age() -> Spanned<u64> {
    Spanned::new(0..0, 300)
}

/// `[tracing]`: spans exported over OTLP/HTTP (protobuf).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The collector's base URL; spans go to `{otlp_endpoint}/v1/traces`.
    pub otlp_endpoint: Spanned<String>,
    /// Of requests without a sampled parent, the share sampled (0 to 1).
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: Spanned<f64>,
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

fn default_sample_ratio() -> Spanned<f64> {
    Spanned::new(0..0, 1.0)
}
fn default_service_name() -> String {
    "scopegate".into()
}

/// A TOML table read as a list of (key, value) in the file's order.
#[derive(Debug, Clone)]
pub struct InOrder<T>(pub Vec<(String, T)>);

impl<T> Default for InOrder<T> {
    fn default() -> Self {
        InOrder(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for InOrder<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<T> {
            type Value = InOrder<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some((k, v)) = map.next_entry()? {
                    items.push((k, v));
                }
                Ok(InOrder(items))
            }
        }
        d.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

/// `[apis.NAME]`: one API as the identity provider knows it, with its own routes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// A token for these routes must carry it in `aud`.
    pub audience: Spanned<String>,
    /// Which `[[issuers]]` may issue its tokens (default: all).
    pub issuers: Option<Spanned<Vec<String>>>,
    /// Host names (`*.suffix` for subdomains); default: any host.
    pub hosts: Option<Spanned<Vec<String>>>,
    /// Default upstream of its routes.
    pub upstream: Option<Spanned<String>>,
    /// Removed from the normalized path before forwarding.
    pub strip_prefix: Option<Spanned<String>>,
    /// The scopes it defines (name = description); when given, routes may require only these.
    pub scopes: Option<Spanned<InOrder<String>>>,
    pub cors: Option<Spanned<CorsConfig>>,
    /// 401s and 403s on its routes are forwarded anyway, and counted and logged.
    #[serde(default)]
    pub report_only: bool,
    /// Serve RFC 9728 protected resource metadata and point 401 challenges at it.
    #[serde(default)]
    pub resource_metadata: bool,
    /// `[apis.NAME.quotas.QUOTA]` (v3).
    #[serde(default)]
    pub quotas: InOrder<Spanned<QuotaConfig>>,
    /// `[apis.NAME.proof_of_possession]` (v3).
    pub proof_of_possession: Option<Spanned<ProofOfPossessionConfig>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RouteConfig>>,
}

/// `[apis.NAME.cors]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    pub origins: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default = "default_max_age")]
    pub max_age_seconds: u64,
    #[serde(default)]
    pub allow_credentials: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: Spanned<OneOrMany>,
    pub admin_listen: Option<Spanned<String>>,
    #[serde(default = "default_threads")]
    pub threads: usize,
    #[serde(default = "default_realm")]
    pub realm: Spanned<String>,
    pub tls: Option<Spanned<TlsConfig>>,
    /// Seconds that requests in flight get to finish after SIGTERM.
    #[serde(default = "default_grace")]
    pub shutdown_grace_seconds: u64,
    /// Open client connections; beyond it a new one is closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// The whole request header must arrive within this.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_seconds: u64,
    /// An idle keep-alive client connection is closed after this.
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout_seconds: u64,
    /// "text" | "json" | "off".
    #[serde(default)]
    pub access_log: AccessLogFormat,
    /// Where the listening sockets are handed to a new process (`run --upgrade`).
    #[serde(default = "default_upgrade_socket")]
    pub upgrade_socket: PathBuf,
    /// Load balancers whose forwarding headers are believed (v3), as CIDR blocks.
    #[serde(default)]
    pub trusted_proxies: Option<Spanned<Vec<String>>>,
}

/// `[server] access_log`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    #[default]
    Text,
    Json,
    Off,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// (v3) "none" (default) | "request" | "require": ask clients for a certificate (RFC 8705).
    #[serde(default)]
    pub client_certificates: ClientCertificates,
    /// (v3) PEM CA certificates a client certificate must chain to (with "require").
    pub client_ca: Option<PathBuf>,
}

/// `[server.tls] client_certificates`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertificates {
    #[default]
    None,
    /// Ask for one and accept any (RFC 8705 §2.2, self-signed certificates).
    Request,
    /// A certificate that chains to `client_ca` is required (RFC 8705 §2.1, PKI).
    Require,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    pub issuer: Spanned<String>,
    pub audiences: Option<Spanned<Vec<String>>>,
    pub jwks_url: Option<String>,
    pub jwks_file: Option<PathBuf>,
    #[serde(default)]
    pub discovery: bool,
    pub hs256_secret_env: Option<String>,
    /// Default: RS256, or HS256 with `hs256_secret_env`.
    pub algorithms: Option<Spanned<Vec<String>>>,
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    #[serde(default = "default_scope_claims")]
    pub scope_claims: Vec<String>,
    /// Bounds for the JWKS refresh interval taken from Cache-Control max-age.
    #[serde(default = "default_refresh_min")]
    pub refresh_min_seconds: u64,
    #[serde(default = "default_refresh_max")]
    pub refresh_max_seconds: u64,
    /// When set, the JWS header `typ` must be one of these (RFC 9068 `at+jwt`), compared
    /// case-insensitively, an `application/` prefix ignored.
    pub token_types: Option<Spanned<Vec<String>>>,
    /// Minimum time between two refetches triggered by an unknown `kid`.
    #[serde(default = "default_cooldown")]
    pub unknown_kid_cooldown_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub servers: Spanned<Vec<String>>,
    #[serde(default)]
    pub tls: bool,
    pub sni: Option<String>,
    /// PEM CA certificates to verify the upstream with (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_read_timeout")]
    pub read_timeout_ms: u64,
    /// Idle connections kept per server and worker thread (v3).
    #[serde(default = "default_max_idle")]
    pub max_idle: usize,
}

fn default_max_idle() -> usize {
    128
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub methods: Option<Spanned<Vec<String>>>,
    pub path: Spanned<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub any_scopes: Vec<String>,
    #[serde(default)]
    pub public: bool,
    pub upstream: Option<Spanned<String>>,
    /// Claim conditions: claim name -> a literal, or `"{param}"` naming a path parameter.
    pub claims: Option<Spanned<InOrder<toml::Value>>>,
    /// 401s and 403s on this route are forwarded anyway, and counted and logged.
    #[serde(default)]
    pub report_only: bool,
    /// An `Upgrade: websocket` request may be forwarded (the 101 is checked).
    #[serde(default)]
    pub websocket: bool,
    /// The API's quotas this route is under (default: all of them; `[]`: none) (v3).
    pub quotas: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// claim name -> header name
    pub claims: Option<Spanned<BTreeMap<String, String>>>,
    #[serde(default)]
    pub strip_token: bool,
    /// Size of the verified-token cache (0 disables it).
    #[serde(default = "default_cache_size")]
    pub token_cache_size: usize,
    /// Memory bound of the verified-token cache, in bytes (0 disables it).
    #[serde(default = "default_cache_bytes")]
    pub token_cache_bytes: usize,
}

impl Default for ForwardConfig {
    /// Used when the file has no [forward] table: the same defaults as an empty one.
    fn default() -> Self {
        ForwardConfig {
            claims: None,
            strip_token: false,
            token_cache_size: default_cache_size(),
            token_cache_bytes: default_cache_bytes(),
        }
    }
}

fn default_max_connections() -> usize {
    10_000
}
fn default_header_timeout() -> u64 {
    10
}
fn default_keepalive_timeout() -> u64 {
    60
}
fn default_upgrade_socket() -> PathBuf {
    PathBuf::from("/tmp/scopegate-upgrade.sock")
}
fn default_max_age() -> u64 {
    600
}
/// One worker per core the process may run on (as nginx's `worker_processes auto`).
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
fn default_realm() -> Spanned<String> {
    Spanned::new(0..0, "api".to_string())
}
fn default_grace() -> u64 {
    10
}
fn default_leeway() -> u64 {
    30
}
fn default_scope_claims() -> Vec<String> {
    vec!["scope".into(), "scp".into(), "permissions".into()]
}
fn default_refresh_min() -> u64 {
    60
}
fn default_refresh_max() -> u64 {
    86_400
}
fn default_cooldown() -> u64 {
    10
}
fn default_connect_timeout() -> u64 {
    2_000
}
fn default_read_timeout() -> u64 {
    30_000
}
/// 32 MiB: about 25,000 typical tokens (1.3 KB each with what is kept of them), more than the
/// clients one instance serves within their tokens' lifetime, and a hard bound on the heap
/// a flood of distinct valid tokens can take.
fn default_cache_bytes() -> usize {
    32 * 1024 * 1024
}
fn default_cache_size() -> usize {
    100_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Config {
        parse(
            Source {
                name: "t.toml".into(),
                text: text.into(),
            },
            PathBuf::from("."),
        )
        .unwrap()
        .config
    }

    #[test]
    fn a_missing_table_gets_the_same_defaults_as_an_empty_one() {
        let without = parse_text("[server]\nlisten = \"127.0.0.1:1\"\n");
        let with = parse_text("[server]\nlisten = \"127.0.0.1:1\"\n[forward]\n");
        assert_eq!(without.forward.token_cache_size, 100_000);
        assert_eq!(with.forward.token_cache_size, 100_000);
        assert!(!without.forward.strip_token);
    }

    #[test]
    fn errors_carry_line_and_column() {
        let e = parse(
            Source {
                name: "f.toml".into(),
                text: "[server]\nlisten = \"x\"\nbogus = 1\n".into(),
            },
            PathBuf::from("."),
        )
        .unwrap_err();
        assert_eq!((e.file.as_str(), e.line, e.col), ("f.toml", 3, 1));
        assert!(
            e.to_string()
                .starts_with("f.toml:3:1: unknown field `bogus`"),
            "{e}"
        );
    }
}

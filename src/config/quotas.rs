//! `[apis.NAME.quotas.QUOTA]`, top-level `[quotas.NAME]` and `[shared_state]` as plain data.

use toml::Spanned;

use serde::Deserialize;

/// One quota: at most `limit` requests per caller in any `window_seconds`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// A claim whose string or number value names the caller, or `client_ip`.
    pub key: Spanned<String>,
    pub limit: Spanned<i64>,
    pub window_seconds: Spanned<i64>,
    /// Only these methods count (default: every method).
    pub methods: Option<Spanned<Vec<String>>>,
}

/// `[shared_state]`: the Redis/Valkey store shared by every replica.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedStateConfig {
    /// `redis://host:port/db`, or `rediss://` for TLS.
    pub url: Spanned<String>,
    /// The environment variable holding the secret that keys DPoP nonces.
    pub secret_env: Option<Spanned<String>>,
    /// Per operation.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: Spanned<i64>,
}

fn default_timeout_ms() -> Spanned<i64> {
    Spanned::new(0..0, 50)
}

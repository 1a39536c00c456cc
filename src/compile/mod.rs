//! `Config` -> `Snapshot`: one function per config section and this short orchestrator. All the
//! file and DNS I/O of a load happens here, so it runs off the async runtime's threads.

mod apis;
mod forward;
mod issuers;
mod pop;
mod quotas;
mod routes;
mod server;
mod shared_state;
mod tls;
mod upstreams;

use std::collections::HashMap;
use std::sync::Arc;

use crate::auth::keys::{KeySource, KeyStore};
use crate::auth::Verifier;
use crate::config::{ConfigError, LoadedConfig};
use crate::snapshot::{ForwardPlan, Snapshot};

pub use crate::snapshot::quoted;
pub use routes::{edit_distance, method_list};
pub use tls::load_ca;

/// Key stores of a running snapshot by (issuer, source), to carry into the next one.
pub type PreviousKeys = HashMap<(String, KeySource), Arc<KeyStore>>;

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
    previous_keys: &PreviousKeys,
) -> Result<Snapshot, ConfigError> {
    let cfg = &loaded.config;
    let process = server::process_settings(loaded)?;
    let challenges = server::challenges(loaded)?;
    let tls = tls::server_tls(loaded)?;
    let upstreams = upstreams::pools(loaded)?;
    let (issuers, audiences) = issuers::issuers(loaded, previous_keys)?;
    let mut compiled = apis::apis(loaded, &upstreams, &issuers, audiences, &challenges)?;
    let mut quotas = quotas::quotas(loaded, &mut compiled.routes)?;
    let shared_state = shared_state::shared_state(loaded)?;
    let forward_claims = forward::claim_headers(loaded)?;
    let kept = kept_claims(&compiled.routes, &quotas);
    for quota in &mut quotas {
        if let crate::quota::QuotaKey::Claim(claim) = &quota.key {
            quota.claim_slot = kept.iter().position(|k| k == claim);
        }
    }
    let nonces = pop::nonce_key(shared_state.as_ref());
    Ok(Snapshot {
        generation,
        process,
        hosts: compiled.hosts,
        sets: compiled.sets,
        apis: compiled.apis,
        routes: compiled.routes,
        verifier: Verifier::new(
            issuers,
            forward_claims,
            kept,
            (cfg.forward.token_cache_size, cfg.forward.token_cache_bytes),
        ),
        warnings: compiled.warnings,
        upstreams,
        forward: ForwardPlan {
            strip_token: cfg.forward.strip_token,
        },
        challenges,
        tls,
        quotas,
        shared_state,
        dpop_default: Default::default(),
        nonces,
    })
}

/// Every claim a route's conditions or a quota's key name, once: verified principals keep
/// these and no more.
fn kept_claims(routes: &[crate::snapshot::Route], quotas: &[crate::quota::Quota]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let keys = quotas.iter().filter_map(|q| match &q.key {
        crate::quota::QuotaKey::Claim(c) => Some(c),
        crate::quota::QuotaKey::ClientIp => None,
    });
    for claim in routes
        .iter()
        .flat_map(|r| &r.conditions)
        .map(|c| &c.claim)
        .chain(keys)
    {
        if !names.contains(claim) {
            names.push(claim.clone());
        }
    }
    names
}

/// Load and compile a config file into a snapshot to read, not to serve (`check`, `explain`,
/// `test`, `diff`, `openapi coverage`): no network, so upstream names are not looked up (a
/// Kubernetes service name is checked in CI where it does not resolve).
pub fn load(path: &std::path::Path, generation: u64) -> Result<Snapshot, ConfigError> {
    let loaded = crate::config::LoadedConfig {
        resolve_names: false,
        ..crate::config::load(path)?
    };
    build(&loaded, generation)
}

/// The start of the unit tests' configs: a server, issuer `https://a.test/` (audience
/// `https://top.test`) and upstream `one`; the routes follow.
#[cfg(test)]
pub(crate) const TEST_PREAMBLE: &str = r#"
[server]
listen = "127.0.0.1:1"

[[issuers]]
issuer = "https://a.test/"
audiences = ["https://top.test"]
jwks_url = "https://a.test/jwks"

[upstreams.one]
servers = ["127.0.0.1:1"]
"#;

#[cfg(test)]
pub(crate) fn parse_for_test(text: &str) -> LoadedConfig {
    crate::config::parse(
        crate::config::Source {
            name: "t.toml".into(),
            text: text.into(),
        },
        std::path::PathBuf::from("."),
    )
    .unwrap()
}

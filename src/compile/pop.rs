//! `[apis.NAME.proof_of_possession]` and the top-level `[proof_of_possession]`: which APIs want
//! sender-constrained tokens (RFC 9449 DPoP or RFC 8705 mTLS), and the DPoP nonce key.

use toml::Spanned;

use crate::auth::dpop::{proof_algorithm, DpopPolicy, NonceKey};
use crate::config::{ClientCertificates, ConfigError, LoadedConfig, ProofOfPossessionConfig};
use crate::snapshot::{Mechanism, ProofOfPossession};

/// A `proof_of_possession` table if there is one, checked; `at` names it in messages.
pub fn optional(
    loaded: &LoadedConfig,
    at: &str,
    section: &Option<Spanned<ProofOfPossessionConfig>>,
) -> Result<Option<ProofOfPossession>, ConfigError> {
    section
        .as_ref()
        .map(|s| proof_of_possession(loaded, at, s))
        .transpose()
}

/// One `proof_of_possession` table, checked; `at` names it in messages.
pub fn proof_of_possession(
    loaded: &LoadedConfig,
    at: &str,
    section: &Spanned<ProofOfPossessionConfig>,
) -> Result<ProofOfPossession, ConfigError> {
    let src = &loaded.source;
    let c = section.get_ref();
    let mechanism = match c.mechanism.get_ref().as_str() {
        "dpop" => Mechanism::Dpop,
        "mtls" => Mechanism::Mtls,
        other => {
            return Err(src.error(
                Some(c.mechanism.span()),
                format!(
                "{at}.mechanism = {other:?}: must be \"dpop\" (RFC 9449) or \"mtls\" (RFC 8705)"
            ),
            ))
        }
    };
    if mechanism == Mechanism::Mtls {
        let tls = loaded.config.server.tls.as_ref().map(|t| t.get_ref());
        let asks = tls.is_some_and(|t| t.client_certificates != ClientCertificates::None);
        let behind_proxy = loaded.config.server.trusted_proxies.is_some();
        if !asks && !behind_proxy {
            return Err(src.error(
                Some(c.mechanism.span()),
                format!("{at}.mechanism = \"mtls\" needs client certificates: set [server.tls] client_certificates = \"request\" or \"require\" (or trusted_proxies that send Client-Cert)"),
            ));
        }
    }
    let algorithms = match &c.dpop_algorithms {
        None => crate::auth::dpop::DEFAULT_ALGORITHMS.to_vec(),
        Some(list) => {
            let mut algs = Vec::new();
            for name in list.get_ref() {
                let alg = proof_algorithm(name).ok_or_else(|| {
                        src.error(
                            Some(list.span()),
                            format!("{at}.dpop_algorithms: {name:?} is not an asymmetric JWS algorithm (ES256, ES384, EdDSA or Ed25519, PS256, PS384, PS512, RS256, RS384, RS512)"),
                        )
                    })?;
                if !algs.contains(&alg) {
                    algs.push(alg);
                }
            }
            if algs.is_empty() {
                return Err(src.error(
                    Some(list.span()),
                    format!("{at}.dpop_algorithms must name at least one algorithm"),
                ));
            }
            algs
        }
    };
    let max_age = *c.dpop_max_age_seconds.get_ref();
    if !(1..=86_400).contains(&max_age) {
        return Err(src.error(
            Some(c.dpop_max_age_seconds.span()),
            format!("{at}.dpop_max_age_seconds = {max_age}: must be from 1 to 86400"),
        ));
    }
    Ok(ProofOfPossession {
        mechanism,
        required: c.required,
        dpop: DpopPolicy::new(algorithms, max_age, c.dpop_nonce),
    })
}

/// The key DPoP nonces are made with: from `[shared_state] secret_env` (the same on every
/// replica), else this process's own.
pub fn nonce_key(shared: Option<&crate::shared_state::SharedStateSettings>) -> NonceKey {
    match shared.and_then(|s| s.secret.as_deref()) {
        Some(secret) => NonceKey::new(secret),
        None => NonceKey::per_process(),
    }
}

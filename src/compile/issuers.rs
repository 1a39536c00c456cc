//! `[[issuers]]`: who may issue tokens, with which algorithms and keys.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily};

use super::PreviousKeys;
use crate::auth::jwks::RefreshPolicy;
use crate::auth::keys::{KeySet, KeySource, KeyStore};
use crate::auth::Issuer;
use crate::config::{ConfigError, IssuerConfig, LoadedConfig};

type Span = Option<std::ops::Range<usize>>;

/// The issuers, and the audiences each accepts for top-level routes (by issuer index).
pub fn issuers(
    loaded: &LoadedConfig,
    previous_keys: &PreviousKeys,
) -> Result<(Vec<Issuer>, Vec<Vec<String>>), ConfigError> {
    let mut issuers: Vec<Issuer> = Vec::new();
    let mut audiences = Vec::new();
    for spanned in &loaded.config.issuers {
        let ic = spanned.get_ref();
        let name = ic.issuer.get_ref();
        if issuers.iter().any(|i| i.issuer == *name) {
            return Err(loaded.source.error(
                Some(ic.issuer.span()),
                format!("issuer {name:?} is listed twice"),
            ));
        }
        let (issuer, accepted) = issuer(loaded, ic, Some(spanned.span()), previous_keys)?;
        issuers.push(issuer);
        audiences.push(accepted);
    }
    Ok((issuers, audiences))
}

fn issuer(
    loaded: &LoadedConfig,
    ic: &IssuerConfig,
    span: Span,
    previous_keys: &PreviousKeys,
) -> Result<(Issuer, Vec<String>), ConfigError> {
    let src = &loaded.source;
    let name = ic.issuer.get_ref().clone();
    if name.is_empty() {
        return Err(src.error(Some(ic.issuer.span()), "issuers.issuer must not be empty"));
    }
    let audiences = ic
        .audiences
        .as_ref()
        .map(|a| a.get_ref().clone())
        .unwrap_or_default();
    // Top-level routes take their tokens' audiences from the issuers; APIs name their own.
    let top_level_needs_tokens = loaded.config.routes.iter().any(|r| !r.get_ref().public);
    if audiences.is_empty() && top_level_needs_tokens {
        return Err(src.error(
            span,
            format!("issuer {name:?}: `audiences` is required (the `aud` values the top-level [[routes]] accept)"),
        ));
    }
    let token_types = match &ic.token_types {
        None => None,
        Some(t) if t.get_ref().is_empty() => {
            return Err(src.error(
                Some(t.span()),
                format!(
                    "issuer {name:?}: `token_types` is empty; leave it out to accept any `typ`"
                ),
            ));
        }
        Some(t) => Some(
            t.get_ref()
                .iter()
                .map(|t| crate::auth::jwt::media_type(t))
                .collect(),
        ),
    };
    let source = key_source(loaded, ic, span.clone())?;
    let algorithms = algorithms(loaded, ic, &source, span.clone())?;
    if ic.refresh_min_seconds == 0 || ic.refresh_min_seconds > ic.refresh_max_seconds {
        return Err(src.error(
            span,
            format!("issuer {name:?}: need 0 < refresh_min_seconds <= refresh_max_seconds"),
        ));
    }
    // Keys fetched from a URL survive a reload that keeps their source; files are re-read.
    let keys = match previous_keys.get(&(name.clone(), source.clone())) {
        Some(store) if store.is_remote() => store.clone(),
        _ => Arc::new(
            load_static_keys(&source)
                .map_err(|m| src.error(span.clone(), format!("issuer {name:?}: {m}")))?,
        ),
    };
    let issuer = Issuer {
        issuer: name,
        algorithms,
        leeway: ic.leeway_seconds,
        token_types,
        scope_claims: ic.scope_claims.clone(),
        keys,
        refresh: RefreshPolicy {
            min: Duration::from_secs(ic.refresh_min_seconds),
            max: Duration::from_secs(ic.refresh_max_seconds),
            cooldown: Duration::from_secs(ic.unknown_kid_cooldown_seconds),
        },
    };
    Ok((issuer, audiences))
}

fn key_source(
    loaded: &LoadedConfig,
    ic: &IssuerConfig,
    span: Span,
) -> Result<KeySource, ConfigError> {
    let name = ic.issuer.get_ref();
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
    const CHOICES: &str =
        "set exactly one of jwks_url, jwks_file, discovery = true, hs256_secret_env";
    match sources.len() {
        1 => Ok(sources.remove(0)),
        0 => Err(loaded.source.error(
            span,
            format!("issuer {name:?} has no key source; {CHOICES}"),
        )),
        n => Err(loaded.source.error(
            span,
            format!("issuer {name:?} has {n} key sources; {CHOICES}"),
        )),
    }
}

fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    if name.eq_ignore_ascii_case("none") {
        return Err("the `none` algorithm is never accepted".into());
    }
    Algorithm::from_str(name).map_err(|_| {
        format!("unknown algorithm {name:?}; use one of RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA HS256 HS384 HS512")
    })
}

fn algorithms(
    loaded: &LoadedConfig,
    ic: &IssuerConfig,
    source: &KeySource,
    span: Span,
) -> Result<Vec<Algorithm>, ConfigError> {
    let name = ic.issuer.get_ref();
    let symmetric = matches!(source, KeySource::SecretEnv(_));
    let names = match &ic.algorithms {
        Some(a) => a.get_ref().clone(),
        None if symmetric => vec!["HS256".to_string()],
        None => vec!["RS256".to_string()],
    };
    let alg_span = ic.algorithms.as_ref().map(|a| a.span()).or(span);
    let err = |m: String| {
        loaded
            .source
            .error(alg_span.clone(), format!("issuer {name:?}: {m}"))
    };
    if names.is_empty() {
        return Err(err("`algorithms` must not be empty".into()));
    }
    let mut algorithms = Vec::new();
    for a in &names {
        let alg = parse_algorithm(a).map_err(&err)?;
        // Never HMAC with a public key, nor a public-key algorithm with a shared secret.
        if symmetric != (alg.family() == AlgorithmFamily::Hmac) {
            return Err(err(if symmetric {
                format!("{a} cannot be used with hs256_secret_env; use HS256, HS384 or HS512")
            } else {
                format!("{a} needs a shared secret; with a JWKS use RS256, PS256, ES256 or EdDSA")
            }));
        }
        algorithms.push(alg);
    }
    Ok(algorithms)
}

/// Keys that are available without the network.
fn load_static_keys(source: &KeySource) -> Result<KeyStore, String> {
    match source {
        KeySource::File(path) => {
            let bytes = crate::config::read_regular(path)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::parse_for_test;

    fn issuers_of(extra: &str) -> Result<Vec<Issuer>, ConfigError> {
        let l = parse_for_test(&format!("[server]\nlisten = \"127.0.0.1:1\"\n{extra}"));
        issuers(&l, &PreviousKeys::new()).map(|(i, _)| i)
    }

    #[test]
    fn one_key_source_and_a_fitting_algorithm() {
        let i = issuers_of(
            "[[issuers]]\nissuer = \"i\"\naudiences = [\"a\"]\njwks_url = \"http://x/k\"\n",
        )
        .unwrap();
        assert_eq!(i[0].algorithms, vec![Algorithm::RS256]);
        assert!(!i[0].keys.is_loaded());
        let e = issuers_of("[[issuers]]\nissuer = \"i\"\naudiences = [\"a\"]\n").unwrap_err();
        assert!(e.message.contains("has no key source"), "{e}");
        let e = issuers_of("[[issuers]]\nissuer = \"i\"\naudiences = [\"a\"]\njwks_url = \"http://x\"\nalgorithms = [\"HS256\"]\n")
            .unwrap_err();
        assert!(e.message.contains("needs a shared secret"), "{e}");
        let e = issuers_of("[[issuers]]\nissuer = \"i\"\naudiences = [\"a\"]\njwks_url = \"http://x\"\nalgorithms = [\"none\"]\n")
            .unwrap_err();
        assert!(e.message.contains("never accepted"), "{e}");
    }
}

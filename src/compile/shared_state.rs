//! `[shared_state]`: the store's URL, the secret that keys DPoP nonces, and the per-operation
//! timeout. Nothing connects here: the edge's `SharedStore` does, once the proxy runs.

use std::time::Duration;

use crate::config::{ConfigError, LoadedConfig};
use crate::shared_state::SharedStateSettings;

pub fn shared_state(loaded: &LoadedConfig) -> Result<Option<SharedStateSettings>, ConfigError> {
    let Some(section) = &loaded.config.shared_state else {
        return Ok(None);
    };
    let src = &loaded.source;
    let s = section.get_ref();
    let url = s.url.get_ref();
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    if !matches!(scheme, Some("redis" | "rediss")) {
        return Err(src.error(
            Some(s.url.span()),
            format!("shared_state.url {url:?} must start with redis:// (or rediss:// for TLS), like \"redis://127.0.0.1:6379/0\""),
        ));
    }
    if let Err(e) = redis::Client::open(url.as_str()) {
        return Err(src.error(
            Some(s.url.span()),
            format!("shared_state.url {url:?} is not a Redis URL: {e}"),
        ));
    }
    let timeout_ms = *s.timeout_ms.get_ref();
    if !(1..=60_000).contains(&timeout_ms) {
        return Err(src.error(
            Some(s.timeout_ms.span()),
            format!("shared_state.timeout_ms = {timeout_ms}: must be from 1 to 60000 (milliseconds per operation; default 50)"),
        ));
    }
    let secret = match &s.secret_env {
        None => None,
        Some(var) => {
            let value = std::env::var(var.get_ref()).unwrap_or_default();
            if value.is_empty() {
                return Err(src.error(
                    Some(var.span()),
                    format!(
                        "shared_state.secret_env: the environment variable {:?} is not set (or empty); set it to the same secret on every replica",
                        var.get_ref()
                    ),
                ));
            }
            Some(value.into_bytes())
        }
    };
    Ok(Some(SharedStateSettings {
        url: url.clone(),
        secret_env: s.secret_env.as_ref().map(|v| v.get_ref().clone()),
        secret,
        timeout: Duration::from_millis(timeout_ms as u64),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(text: &str) -> Result<Option<SharedStateSettings>, ConfigError> {
        shared_state(&crate::compile::parse_for_test(text))
    }

    #[test]
    fn url_and_timeout_are_checked_with_their_position() {
        let base = "[server]\nlisten = \"127.0.0.1:1\"\n[shared_state]\n";
        let ok = compile(&format!("{base}url = \"redis://127.0.0.1:6379/0\"\n"))
            .unwrap()
            .unwrap();
        assert_eq!(ok.timeout, Duration::from_millis(50));
        assert!(ok.secret.is_none());
        let e = compile(&format!("{base}url = \"http://x\"\n")).unwrap_err();
        assert_eq!((e.line, e.col), (4, 7), "{e}");
        assert!(e.message.contains("redis://"), "{e}");
        let e = compile(&format!("{base}url = \"redis://x\"\ntimeout_ms = 0\n")).unwrap_err();
        assert_eq!(e.line, 5, "{e}");
        let e = compile(&format!(
            "{base}url = \"redis://x\"\nsecret_env = \"SCOPEGATE_TEST_UNSET_SECRET\"\n"
        ))
        .unwrap_err();
        assert!(e.message.contains("SCOPEGATE_TEST_UNSET_SECRET"), "{e}");
    }
}

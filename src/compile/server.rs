//! `[server]`: the process settings, and the 401 challenges built from `realm`.

use std::net::SocketAddr;

use http::HeaderValue;

use crate::auth::Rejection;
use crate::config::{ClientCertificates, ConfigError, LoadedConfig};
use crate::snapshot::{quoted, Challenges, ProcessSettings, TracingSettings};
use crate::trusted::TrustedProxies;

pub fn process_settings(loaded: &LoadedConfig) -> Result<ProcessSettings, ConfigError> {
    let (server, src) = (&loaded.config.server, &loaded.source);
    let listen = server.listen.get_ref().to_vec();
    if listen.is_empty() {
        return Err(src.error(
            Some(server.listen.span()),
            "server.listen needs at least one address",
        ));
    }
    if let Some(addr) = listen.iter().find(|a| a.parse::<SocketAddr>().is_err()) {
        return Err(src.error(
            Some(server.listen.span()),
            format!("server.listen: {addr:?} is not an address like \"127.0.0.1:8080\""),
        ));
    }
    if let Some(admin) = &server.admin_listen {
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
    if server.threads == 0 {
        return Err(src.error(None, "server.threads must be at least 1"));
    }
    for (key, value) in [
        ("max_connections", server.max_connections as u64),
        ("header_timeout_seconds", server.header_timeout_seconds),
        (
            "keepalive_timeout_seconds",
            server.keepalive_timeout_seconds,
        ),
    ] {
        if value == 0 {
            return Err(src.error(None, format!("server.{key} must be at least 1")));
        }
    }
    let trusted_proxies = match &server.trusted_proxies {
        Some(blocks) => TrustedProxies::parse(blocks.get_ref())
            .map_err(|m| src.error(Some(blocks.span()), format!("server.trusted_proxies: {m}")))?,
        None => TrustedProxies::default(),
    };
    let (client_certificates, client_ca) = client_auth(loaded)?;
    Ok(ProcessSettings {
        listen,
        admin_listen: server.admin_listen.as_ref().map(|a| a.get_ref().clone()),
        threads: server.threads,
        shutdown_grace_seconds: server.shutdown_grace_seconds,
        tls: server.tls.is_some(),
        max_connections: server.max_connections,
        header_timeout_seconds: server.header_timeout_seconds,
        keepalive_timeout_seconds: server.keepalive_timeout_seconds,
        access_log: server.access_log,
        upgrade_socket: loaded.resolve(&server.upgrade_socket),
        trusted_proxies,
        client_certificates,
        client_ca,
        tracing: tracing_settings(loaded)?,
    })
}

/// `[server.tls] client_certificates` and `client_ca`: `client_ca` with `require`, and only then.
fn client_auth(
    loaded: &LoadedConfig,
) -> Result<(ClientCertificates, Option<std::path::PathBuf>), ConfigError> {
    let src = &loaded.source;
    let Some(t) = &loaded.config.server.tls else {
        return Ok((ClientCertificates::None, None));
    };
    let (span, tls) = (t.span(), t.get_ref());
    let ca = match (&tls.client_ca, tls.client_certificates) {
        (Some(ca), ClientCertificates::Require) => {
            let path = loaded.resolve(ca);
            super::tls::load_ca(&path)
                .map_err(|m| src.error(Some(span), format!("server.tls.client_ca: {m}")))?;
            Some(path)
        }
        (None, ClientCertificates::Require) => {
            return Err(src.error(Some(span), "server.tls: client_certificates = \"require\" needs client_ca = \"ca.pem\" (the CA client certificates must chain to)"));
        }
        (Some(_), _) => {
            return Err(src.error(
                Some(span),
                "server.tls.client_ca is used only with client_certificates = \"require\"",
            ));
        }
        (None, _) => None,
    };
    Ok((tls.client_certificates, ca))
}

/// `[tracing]`: an http(s) base URL and a ratio between 0 and 1.
fn tracing_settings(loaded: &LoadedConfig) -> Result<Option<TracingSettings>, ConfigError> {
    let Some(t) = &loaded.config.tracing else {
        return Ok(None);
    };
    let src = &loaded.source;
    let t = t.get_ref();
    let endpoint = t.otlp_endpoint.get_ref().trim_end_matches('/');
    let uri = endpoint.parse::<http::Uri>().ok();
    let usable = uri.as_ref().is_some_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https"))
            && u.host().is_some()
            && u.query().is_none()
    });
    if !usable {
        return Err(src.error(
            Some(t.otlp_endpoint.span()),
            format!(
                "tracing.otlp_endpoint: {:?} is not a URL like \"http://127.0.0.1:4318\" (the collector's OTLP/HTTP base; /v1/traces is added)",
                t.otlp_endpoint.get_ref()
            ),
        ));
    }
    let ratio = *t.sample_ratio.get_ref();
    if !(0.0..=1.0).contains(&ratio) {
        return Err(src.error(
            Some(t.sample_ratio.span()),
            format!("tracing.sample_ratio: {ratio} is not between 0 and 1 (0.01 samples 1 request in 100)"),
        ));
    }
    Ok(Some(TracingSettings {
        traces_url: format!("{endpoint}/v1/traces"),
        sample_ratio: ratio,
        service_name: t.service_name.clone(),
    }))
}

/// Every 401 challenge, one per rejection.
pub fn challenges(loaded: &LoadedConfig) -> Result<Challenges, ConfigError> {
    let realm_span = Some(loaded.config.server.realm.span());
    let realm = loaded.config.server.realm.get_ref().clone();
    let err = |m: &str| loaded.source.error(realm_span.clone(), m);
    if realm.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(err("server.realm must not contain control characters"));
    }
    let bare = format!("Bearer realm={}", quoted(&realm));
    let by_rejection = Rejection::every()
        .iter()
        .map(|r| {
            // RFC 6750 §3.1: no error code when the request had no token at all.
            let text = match r {
                Rejection::Missing => bare.clone(),
                r => format!(
                    "{bare}, error=\"{}\", error_description={}",
                    r.error_code(),
                    quoted(r.description())
                ),
            };
            HeaderValue::from_str(&text)
                .map_err(|_| err("server.realm is not a valid header value"))
        })
        .collect::<Result<_, _>>()?;
    Ok(Challenges::new(realm, by_rejection))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::parse_for_test;

    #[test]
    fn process_settings_come_from_server() {
        let l =
            parse_for_test("[server]\nlisten = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nthreads = 3\n");
        let p = process_settings(&l).unwrap();
        assert_eq!(p.listen, vec!["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!((p.threads, p.admin_listen, p.tls), (3, None, false));
        let bad = parse_for_test("[server]\nlisten = \"nope\"\n");
        let e = process_settings(&bad).unwrap_err();
        assert_eq!((e.line, e.col), (2, 10), "{e}");
    }

    #[test]
    fn challenges_are_built_per_rejection() {
        let l = parse_for_test("[server]\nlisten = \"127.0.0.1:1\"\nrealm = \"x\\\"y\"\n");
        let c = challenges(&l).unwrap();
        assert_eq!(
            c.for_rejection(&Rejection::Missing),
            "Bearer realm=\"x\\\"y\""
        );
        assert_eq!(
            c.for_rejection(&Rejection::Expired),
            "Bearer realm=\"x\\\"y\", error=\"invalid_token\", error_description=\"the token has expired\""
        );
    }
}

//! `[upstreams.NAME]`: server addresses (looked up here, once per load to serve; only checked for
//! their form when the config is read by `check`, `test`, `diff`...), TLS and timeouts.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::config::{ConfigError, LoadedConfig, UpstreamConfig};
use crate::upstream::{Server, UpstreamPool};

/// The pools, in the config's (alphabetical) order of names.
pub fn pools(loaded: &LoadedConfig) -> Result<Vec<UpstreamPool>, ConfigError> {
    loaded
        .config
        .upstreams
        .iter()
        .map(|(name, up)| pool(loaded, name, up.get_ref(), up.span()))
        .collect()
}

fn pool(
    loaded: &LoadedConfig,
    name: &str,
    up: &UpstreamConfig,
    span: std::ops::Range<usize>,
) -> Result<UpstreamPool, ConfigError> {
    let src = &loaded.source;
    let servers_span = Some(up.servers.span());
    if up.servers.get_ref().is_empty() {
        return Err(src.error(servers_span, format!("upstreams.{name}.servers is empty")));
    }
    let ca = match &up.ca_file {
        Some(_) if !up.tls => {
            return Err(src.error(
                Some(span),
                format!("upstreams.{name}.ca_file needs tls = true"),
            ));
        }
        Some(f) => Some(
            super::tls::load_ca(&loaded.resolve(f))
                .map_err(|m| src.error(Some(span), format!("upstreams.{name}.ca_file: {m}")))?,
        ),
        None => None,
    };
    let mut servers = Vec::new();
    for s in up.servers.get_ref() {
        let addr = address(s, loaded.resolve_names).ok_or_else(|| {
            let what = if loaded.resolve_names {
                "a reachable host:port"
            } else {
                "a host:port"
            };
            src.error(
                servers_span.clone(),
                format!("upstreams.{name}.servers: {s:?} is not {what}"),
            )
        })?;
        servers.push(Server::new(addr));
    }
    let sni = up.sni.clone().unwrap_or_else(|| {
        up.servers.get_ref()[0]
            .rsplit_once(':')
            .map(|(h, _)| h.to_string())
            .unwrap_or_default()
    });
    let timeouts = (
        Duration::from_millis(up.connect_timeout_ms.max(1)),
        Duration::from_millis(up.read_timeout_ms.max(1)),
    );
    let mut pool = UpstreamPool::new(name.to_string(), servers, up.tls, sni, ca, timeouts);
    pool.max_idle = up.max_idle;
    Ok(pool)
}

/// A server's address: an IP as written; a name looked up when `resolve`, else only checked for
/// its form (an IP, or a DNS name, then a port: what a lookup would take) and standing as the
/// unspecified address with its port, for a snapshot that is read and never serves.
fn address(s: &str, resolve: bool) -> Option<SocketAddr> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Some(addr);
    }
    if resolve {
        return s.to_socket_addrs().ok()?.next();
    }
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let name = host.strip_suffix('.').unwrap_or(host);
    (name.len() <= 253 && name.split('.').all(label))
        .then(|| SocketAddr::from(([0, 0, 0, 0], port)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::parse_for_test;

    const SERVER: &str = "[server]\nlisten = \"127.0.0.1:1\"\n";

    #[test]
    fn servers_are_resolved_and_sni_defaults_to_the_host() {
        let l = parse_for_test(&format!(
            "{SERVER}[upstreams.a]\nservers = [\"localhost:81\", \"127.0.0.1:82\"]\ntls = true\n"
        ));
        let p = pools(&l).unwrap();
        assert_eq!(p[0].servers.len(), 2);
        assert_eq!(p[0].sni, "localhost");
        assert_eq!(p[0].servers[1].addr.port(), 82);
    }

    #[test]
    fn a_config_read_to_check_looks_up_no_name_but_checks_its_form() {
        let config = |server: &str| {
            parse_for_test(&format!(
                "{SERVER}[upstreams.a]\nservers = [\"{server}\"]\n"
            ))
        };
        let reading = |server: &str| crate::config::LoadedConfig {
            resolve_names: false,
            ..config(server)
        };
        // `.invalid` never resolves (RFC 2606): serving refuses it, reading the config does not.
        let e = pools(&config("contacts.invalid:3000")).unwrap_err();
        assert!(e.message.contains("is not a reachable host:port"), "{e}");
        let p = pools(&reading("contacts.invalid:3000")).unwrap();
        assert_eq!(p[0].servers[0].addr.port(), 3000);
        assert_eq!(p[0].sni, "contacts.invalid");
        for bad in [
            "contacts.invalid",
            "contacts.invalid:http",
            "a b:1",
            ":1",
            "a/b:1",
            "-:80",
            "..:80",
            "a..b:80",
            "-a.example:80",
        ] {
            let e = pools(&reading(bad)).unwrap_err();
            assert!(e.message.contains("is not a host:port"), "{bad}: {e}");
        }
        // An IP is taken as written either way (an IPv6 one also unbracketed, as a lookup takes it).
        let p = pools(&reading("[::1]:8080")).unwrap();
        assert_eq!(p[0].servers[0].addr.to_string(), "[::1]:8080");
        let p = pools(&reading("::1:8080")).unwrap();
        assert_eq!(p[0].servers[0].addr.to_string(), "[::1]:8080");
        assert!(pools(&reading("contacts.internal.:80")).is_ok());
    }

    #[test]
    fn empty_pools_and_ca_without_tls_are_errors() {
        let l = parse_for_test(&format!("{SERVER}[upstreams.a]\nservers = []\n"));
        assert!(pools(&l)
            .unwrap_err()
            .message
            .contains("upstreams.a.servers is empty"));
        let l = parse_for_test(&format!(
            "{SERVER}[upstreams.a]\nservers = [\"127.0.0.1:1\"]\nca_file = \"x.pem\"\n"
        ));
        assert!(pools(&l).unwrap_err().message.contains("needs tls = true"));
    }
}

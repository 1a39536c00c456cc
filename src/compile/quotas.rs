//! `[apis.NAME.quotas.QUOTA]` and top-level `[quotas.NAME]`: each quota compiled once, and each
//! route given the list of quotas it is under (decided here, so a route without quotas costs
//! nothing per request).

use http::Method;
use toml::Spanned;

use super::routes::edit_distance;
use crate::config::{ConfigError, InOrder, LoadedConfig, QuotaConfig, RouteConfig};
use crate::quota::{Quota, QuotaKey};
use crate::snapshot::Route;

/// The longest window: 30 days.
const MAX_WINDOW_SECONDS: i64 = 30 * 86_400;

type Group<'a> = (&'a [Spanned<RouteConfig>], Vec<usize>, Option<&'a str>);

/// Compile every quota and set `Route::quotas` (routes in compile order: the top-level ones,
/// then each API's).
pub fn quotas(loaded: &LoadedConfig, routes: &mut [Route]) -> Result<Vec<Quota>, ConfigError> {
    let cfg = &loaded.config;
    let mut quotas = Vec::new();
    // Per API in compile order: its route configs, the indices of its quotas, its name.
    let mut groups: Vec<Group<'_>> = Vec::new();
    let top = compile_group(loaded, None, &cfg.quotas, &mut quotas)?;
    if !cfg.routes.is_empty() {
        groups.push((&cfg.routes, top, None));
    }
    for (name, api) in &cfg.apis.0 {
        let own = compile_group(loaded, Some(name), &api.get_ref().quotas, &mut quotas)?;
        groups.push((&api.get_ref().routes, own, Some(name)));
    }
    let mut next = 0;
    for (configs, own, api) in groups {
        for rc in configs {
            let route = &mut routes[next];
            next += 1;
            route.quotas = route_quotas(loaded, rc.get_ref(), route, &own, &quotas, api)?;
        }
    }
    Ok(quotas)
}

fn compile_group(
    loaded: &LoadedConfig,
    api: Option<&str>,
    group: &InOrder<Spanned<QuotaConfig>>,
    quotas: &mut Vec<Quota>,
) -> Result<Vec<usize>, ConfigError> {
    let mut own = Vec::new();
    for (name, qc) in &group.0 {
        let section = match api {
            Some(a) => format!("apis.{a}.quotas.{name}"),
            None => format!("quotas.{name}"),
        };
        let quota = quota(loaded, &section, api, name, qc)?;
        own.push(quotas.len());
        quotas.push(quota);
    }
    Ok(own)
}

fn quota(
    loaded: &LoadedConfig,
    section: &str,
    api: Option<&str>,
    name: &str,
    spanned: &Spanned<QuotaConfig>,
) -> Result<Quota, ConfigError> {
    let src = &loaded.source;
    let qc = spanned.get_ref();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(src.error(
            Some(spanned.span()),
            format!("[{section}]: a quota name is letters, digits, '_', '-' and '.' (it is sent in RateLimit headers)"),
        ));
    }
    let key = match qc.key.get_ref().as_str() {
        "" => {
            return Err(src.error(
                Some(qc.key.span()),
                format!("{section}.key is empty; name a claim (like \"sub\") or \"client_ip\""),
            ))
        }
        "client_ip" => QuotaKey::ClientIp,
        claim => QuotaKey::Claim(claim.to_string()),
    };
    let limit = *qc.limit.get_ref();
    if !(1..=u32::MAX as i64).contains(&limit) {
        return Err(src.error(
            Some(qc.limit.span()),
            format!("{section}.limit = {limit}: must be at least 1 (requests per window)"),
        ));
    }
    let window = *qc.window_seconds.get_ref();
    if !(1..=MAX_WINDOW_SECONDS).contains(&window) {
        return Err(src.error(
            Some(qc.window_seconds.span()),
            format!("{section}.window_seconds = {window}: must be from 1 to {MAX_WINDOW_SECONDS} (30 days)"),
        ));
    }
    let mut methods = Vec::new();
    if let Some(ms) = &qc.methods {
        for m in ms.get_ref() {
            let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| {
                src.error(
                    Some(ms.span()),
                    format!("{section}.methods: {m:?} is not an HTTP method"),
                )
            })?;
            if !methods.contains(&method) {
                methods.push(method);
            }
        }
        if methods.is_empty() {
            return Err(src.error(
                Some(ms.span()),
                format!("{section}.methods is empty; leave it out to count every method"),
            ));
        }
    }
    let label = match api {
        Some(a) => format!("{a} {name}"),
        None => name.to_string(),
    };
    Quota::new(name, label, key, limit as u64, window as u64, methods)
        .map_err(|m| src.error(Some(spanned.span()), format!("[{section}]: {m}")))
}

/// The quotas a route is under: all of its API's (or the subset it names), and on a public
/// route (no token) only those counted by `client_ip`.
fn route_quotas(
    loaded: &LoadedConfig,
    rc: &RouteConfig,
    route: &Route,
    own: &[usize],
    quotas: &[Quota],
    api: Option<&str>,
) -> Result<Vec<usize>, ConfigError> {
    let by_ip = |&q: &usize| quotas[q].key == QuotaKey::ClientIp;
    let Some(names) = &rc.quotas else {
        return Ok(own
            .iter()
            .copied()
            .filter(|q| !route.public || by_ip(q))
            .collect());
    };
    let where_ = match api {
        Some(a) => format!("[apis.{a}.quotas]"),
        None => "top-level [quotas]".to_string(),
    };
    let mut chosen = Vec::new();
    for name in names.get_ref() {
        let Some(&q) = own.iter().find(|&&q| quotas[q].name == *name) else {
            let closest = own
                .iter()
                .map(|&q| &quotas[q].name)
                .min_by_key(|n| edit_distance(name, n))
                .map(|n| format!("; did you mean {n:?}?"))
                .unwrap_or_default();
            return Err(loaded.source.error(
                Some(names.span()),
                format!(
                    "route {}: quota {name:?} is not one of {where_}{closest}",
                    route.label
                ),
            ));
        };
        if route.public && !by_ip(&q) {
            return Err(loaded.source.error(
                Some(names.span()),
                format!(
                    "route {}: a public route has no token, so only quotas with key = \"client_ip\" apply; {name:?} counts by {:?}",
                    route.label,
                    match &quotas[q].key {
                        QuotaKey::Claim(c) => c.as_str(),
                        QuotaKey::ClientIp => "client_ip",
                    }
                ),
            ));
        }
        if !chosen.contains(&q) {
            chosen.push(q);
        }
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use crate::compile::build;
    use crate::config::{parse, Source};

    const BASE: &str = "[server]\nlisten = \"127.0.0.1:1\"\n[[issuers]]\nissuer = \"https://i/\"\naudiences = [\"a\"]\nhs256_secret_env = \"PATH\"\nalgorithms = [\"HS256\"]\n[upstreams.u]\nservers = [\"127.0.0.1:2\"]\n";

    fn compile(extra: &str) -> Result<crate::snapshot::Snapshot, crate::config::ConfigError> {
        let source = Source {
            name: "t.toml".into(),
            text: format!("{BASE}{extra}"),
        };
        build(&parse(source, ".".into())?, 1)
    }

    #[test]
    fn routes_are_under_their_apis_quotas_a_subset_or_none_and_public_ones_only_by_ip() {
        let s = compile(
            "[quotas.per_user]\nkey = \"sub\"\nlimit = 5\nwindow_seconds = 60\n\
             [quotas.per_ip]\nkey = \"client_ip\"\nlimit = 50\nwindow_seconds = 60\n\
             [[routes]]\npath = \"/a\"\n\
             [[routes]]\npath = \"/b\"\nquotas = [\"per_user\"]\n\
             [[routes]]\npath = \"/c\"\nquotas = []\n\
             [[routes]]\npath = \"/d\"\npublic = true\n",
        )
        .unwrap();
        let of = |p: &str| {
            let r = s.routes.iter().find(|r| r.path == p).unwrap();
            r.quotas
                .iter()
                .map(|&q| s.quotas[q].label.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(of("/a"), ["per_user", "per_ip"]);
        assert_eq!(of("/b"), ["per_user"]);
        assert!(of("/c").is_empty());
        assert_eq!(of("/d"), ["per_ip"]);
        // The key claim is kept by the verifier for counting.
        assert_eq!(s.quotas[0].policy, "\"per_user\";q=5;w=60");
    }

    #[test]
    fn config_errors_name_the_place_and_the_fix() {
        let e = compile("[quotas.q]\nkey = \"sub\"\nlimit = 0\nwindow_seconds = 60\n").unwrap_err();
        assert_eq!(e.line, 12, "{e}");
        assert!(e.message.contains("quotas.q.limit = 0"), "{e}");
        let e = compile("[quotas.q]\nkey = \"sub\"\nlimit = 1\nwindow_seconds = 0\n").unwrap_err();
        assert!(e.message.contains("window_seconds"), "{e}");
        let e = compile("[quotas.q]\nkey = \"sub\"\nlimit = 1\nwindow_seconds = 1\nwindow = 3\n")
            .unwrap_err();
        assert!(e.message.contains("unknown field `window`"), "{e}");
        let e = compile(
            "[quotas.per_user]\nkey = \"sub\"\nlimit = 1\nwindow_seconds = 1\n[[routes]]\npath = \"/a\"\nquotas = [\"per_usr\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 16, "{e}");
        assert!(e.message.contains("did you mean \"per_user\""), "{e}");
        let e = compile(
            "[quotas.per_user]\nkey = \"sub\"\nlimit = 1\nwindow_seconds = 1\n[[routes]]\npath = \"/a\"\npublic = true\nquotas = [\"per_user\"]\n",
        )
        .unwrap_err();
        assert!(e.message.contains("client_ip"), "{e}");
    }
}

//! `[apis.NAME]` and the top-level `[[routes]]` (an implicit API without hosts): each API with
//! its routes, then the route sets searched per host, one router each.

use std::collections::HashSet;

use http::{HeaderValue, Method};
use toml::Spanned;

use super::routes::{route, RouteContext};
use crate::auth::Issuer;
use crate::config::{ApiConfig, ConfigError, CorsConfig, LoadedConfig, RouteConfig};
use crate::routing::{is_scope_token, HostPattern, HostTable, Router, RouterError};
use crate::snapshot::{Accepts, Api, Challenges, Cors, ResourceMetadata, Route, RouteSet};
use crate::upstream::UpstreamPool;

type Span = Option<std::ops::Range<usize>>;

/// Everything routing needs: the APIs, all their routes, and the sets searched per host.
pub struct Compiled {
    pub apis: Vec<Api>,
    pub routes: Vec<Route>,
    pub sets: Vec<RouteSet>,
    pub hosts: HostTable,
    /// `file:line:col: warning` lines for `check`.
    pub warnings: Vec<String>,
}

pub fn apis(
    loaded: &LoadedConfig,
    upstreams: &[UpstreamPool],
    issuers: &[Issuer],
    issuer_audiences: Vec<Vec<String>>,
    challenges: &Challenges,
) -> Result<Compiled, ConfigError> {
    let cfg = &loaded.config;
    let mut apis = Vec::new();
    let mut routes = Vec::new();
    let mut warnings = Vec::new();
    let shared_challenges = Default::default();
    let base = RouteContext {
        api: 0,
        api_name: None,
        default_upstream: None,
        declared: None,
        upstreams,
        have_issuers: !issuers.is_empty(),
        challenges,
        shared_challenges: &shared_challenges,
        report_only: false,
    };
    if !cfg.routes.is_empty() {
        apis.push(top_level_api(loaded, issuer_audiences)?);
        for r in &cfg.routes {
            routes.push(route(loaded, r.get_ref(), Some(r.span()), &base)?);
        }
    }
    for (name, spanned) in &cfg.apis.0 {
        let ac = spanned.get_ref();
        let declared = declared_scopes(loaded, name, ac)?;
        let cx = RouteContext {
            api: apis.len(),
            api_name: Some(name),
            default_upstream: ac.upstream.as_ref(),
            declared: declared.as_deref(),
            report_only: ac.report_only,
            ..base
        };
        let first = routes.len();
        for r in &ac.routes {
            routes.push(route(loaded, r.get_ref(), Some(r.span()), &cx)?);
        }
        let mut api = api(loaded, name, ac, issuers, &ac.routes, &routes[first..])?;
        if ac.resource_metadata {
            let (metadata, warning) =
                resource_metadata(&api, issuers, declared.as_deref(), &routes[first..]);
            api.metadata = Some(metadata);
            if let Some(w) = warning {
                warnings.push(loaded.source.error(Some(ac.audience.span()), w).to_string());
            }
        }
        apis.push(api);
    }
    let (sets, hosts) = route_sets(loaded, &apis, &routes)?;
    Ok(Compiled {
        apis,
        routes,
        sets,
        hosts,
        warnings,
    })
}

/// The implicit API of the top-level `[[routes]]`: no hosts, each issuer's audiences.
fn top_level_api(
    loaded: &LoadedConfig,
    issuer_audiences: Vec<Vec<String>>,
) -> Result<Api, ConfigError> {
    let section = &loaded.config.proof_of_possession;
    Ok(Api {
        name: None,
        accepts: Accepts::PerIssuer(issuer_audiences),
        hosts: Vec::new(),
        strip_prefix: None,
        cors: None,
        report_only: false,
        metadata: None,
        pop: super::pop::optional(loaded, "proof_of_possession", section)?,
    })
}

fn api(
    loaded: &LoadedConfig,
    name: &str,
    ac: &ApiConfig,
    issuers: &[Issuer],
    route_configs: &[Spanned<RouteConfig>],
    routes: &[Route],
) -> Result<Api, ConfigError> {
    let src = &loaded.source;
    let audience = ac.audience.get_ref().clone();
    if audience.is_empty() {
        return Err(src.error(
            Some(ac.audience.span()),
            format!("apis.{name}.audience must not be empty"),
        ));
    }
    let issuer_idx = match &ac.issuers {
        None => (0..issuers.len()).collect(),
        Some(list) => list
            .get_ref()
            .iter()
            .map(|want| {
                issuers.iter().position(|i| i.issuer == *want).ok_or_else(|| {
                    let known: Vec<&str> = issuers.iter().map(|i| i.issuer.as_str()).collect();
                    src.error(
                        Some(list.span()),
                        format!("apis.{name}.issuers: {want:?} is not an [[issuers]] entry (known: {})", known.join(", ")),
                    )
                })
            })
            .collect::<Result<Vec<usize>, _>>()?,
    };
    let hosts = match &ac.hosts {
        None => Vec::new(),
        Some(h) => h
            .get_ref()
            .iter()
            .map(|p| {
                HostPattern::parse(p)
                    .map_err(|m| src.error(Some(h.span()), format!("apis.{name}.hosts: {m}")))
            })
            .collect::<Result<_, _>>()?,
    };
    let strip_prefix = match &ac.strip_prefix {
        None => None,
        Some(p) => Some(
            check_prefix(p.get_ref(), route_configs)
                .map_err(|m| src.error(Some(p.span()), format!("apis.{name}.strip_prefix: {m}")))?,
        ),
    };
    let cors = match &ac.cors {
        None => None,
        Some(c) => Some(
            cors(c.get_ref())
                .map_err(|m| src.error(Some(c.span()), format!("apis.{name}.cors: {m}")))?,
        ),
    };
    if routes.is_empty() {
        tracing::warn!(api = name, "API has no routes");
    }
    let at = format!("apis.{name}.proof_of_possession");
    let pop = super::pop::optional(loaded, &at, &ac.proof_of_possession)?;
    Ok(Api {
        name: Some(name.to_string()),
        accepts: Accepts::Audience {
            audience,
            issuers: issuer_idx,
        },
        hosts,
        strip_prefix,
        cors,
        report_only: ac.report_only,
        metadata: None,
        pop,
    })
}

/// RFC 9728: the document, served at `/.well-known/oauth-protected-resource` + the audience's
/// path, and a warning when the audience is not this API's public URL (§3.3).
fn resource_metadata(
    api: &Api,
    issuers: &[Issuer],
    declared: Option<&[String]>,
    routes: &[Route],
) -> (ResourceMetadata, Option<String>) {
    let Accepts::Audience {
        audience,
        issuers: idx,
    } = &api.accepts
    else {
        unreachable!("only [apis.NAME] serve metadata");
    };
    let uri: Option<http::Uri> = audience.parse().ok();
    let audience_path = uri
        .as_ref()
        .filter(|u| u.authority().is_some())
        .map(|u| u.path().trim_end_matches('/').to_string())
        .unwrap_or_default();
    let scopes: Vec<&str> = match declared {
        Some(d) => d.iter().map(String::as_str).collect(),
        None => {
            let mut all: Vec<&str> = Vec::new();
            for s in routes.iter().flat_map(|r| r.required.iter()) {
                if !all.contains(&s) {
                    all.push(s);
                }
            }
            all
        }
    };
    let mut document = serde_json::json!({
        "resource": audience,
        "authorization_servers": idx.iter().map(|&i| issuers[i].issuer.as_str()).collect::<Vec<_>>(),
        "scopes_supported": scopes,
        "bearer_methods_supported": ["header"],
    });
    // RFC 9728 §2: what DPoP proofs the API takes, and whether its tokens must be bound.
    match &api.pop {
        Some(pop) if pop.mechanism == crate::snapshot::Mechanism::Dpop => {
            let algs: Vec<String> = pop
                .dpop
                .algorithms
                .iter()
                .map(|a| format!("{a:?}"))
                .collect();
            document["dpop_signing_alg_values_supported"] = serde_json::json!(algs);
            document["dpop_bound_access_tokens_required"] = serde_json::json!(pop.required);
        }
        Some(pop) => {
            document["tls_client_certificate_bound_access_tokens"] =
                serde_json::json!(pop.required);
        }
        None => {}
    }
    let document = document.to_string();
    let host = uri
        .as_ref()
        .and_then(|u| u.host())
        .map(|h| h.to_ascii_lowercase());
    let served_there = host.as_deref().is_some_and(|h| {
        api.hosts.iter().any(|p| match p {
            HostPattern::Exact(e) => e == h,
            HostPattern::Suffix(s) => h.ends_with(&format!(".{s}")),
        })
    });
    let warning = (!served_there).then(|| {
        format!(
            "warning: apis.{}: the audience's host is not among the API's hosts; RFC 9728 §3.3 wants `resource` to be the URL the metadata is fetched from",
            api.display_name()
        )
    });
    let metadata = ResourceMetadata {
        path: format!("/.well-known/oauth-protected-resource{audience_path}"),
        document,
    };
    (metadata, warning)
}

/// The API's declared scopes, each a valid scope token; `None` when it declares none.
fn declared_scopes(
    loaded: &LoadedConfig,
    name: &str,
    ac: &ApiConfig,
) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(scopes) = &ac.scopes else {
        return Ok(None);
    };
    let names: Vec<String> = scopes.get_ref().0.iter().map(|(k, _)| k.clone()).collect();
    if let Some(bad) = names.iter().find(|s| !is_scope_token(s)) {
        return Err(loaded.source.error(
            Some(scopes.span()),
            format!("apis.{name}.scopes: {bad:?} is not a valid scope (RFC 6749 §3.3)"),
        ));
    }
    Ok((!names.is_empty()).then_some(names))
}

/// `strip_prefix` is a literal prefix of every route path, ending at a segment boundary.
fn check_prefix(prefix: &str, routes: &[Spanned<RouteConfig>]) -> Result<String, String> {
    if !prefix.starts_with('/') || prefix.len() < 2 || prefix.ends_with('/') {
        return Err(format!(
            "{prefix:?} must start with '/' and not end with one, like \"/billing\""
        ));
    }
    if prefix.contains(['{', '}', '%', '\\']) || prefix.split('/').any(|s| s == "." || s == "..") {
        return Err(format!("{prefix:?} must be a literal, normalized path"));
    }
    for r in routes {
        let path = r.get_ref().path.get_ref();
        let fits = path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'));
        if !fits {
            return Err(format!(
                "{prefix:?} is not a prefix of route path {path:?} at a segment boundary"
            ));
        }
    }
    Ok(prefix.to_string())
}

fn cors(c: &CorsConfig) -> Result<Cors, String> {
    if c.origins.is_empty() {
        return Err("`origins` is empty".into());
    }
    for o in &c.origins {
        if o == "*" || !(o.starts_with("https://") || o.starts_with("http://")) || o.ends_with('/')
        {
            return Err(format!(
                "origin {o:?} must be a scheme and host like \"https://app.example.com\" (no wildcard, no path)"
            ));
        }
    }
    let mut allow = vec!["authorization".to_string()];
    allow.extend(
        c.allow_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .filter(|h| h != "authorization"),
    );
    let mut expose = vec!["www-authenticate".to_string()];
    expose.extend(
        c.expose_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .filter(|h| h != "www-authenticate"),
    );
    let value =
        |v: String| HeaderValue::from_str(&v).map_err(|_| format!("{v:?} is not a header value"));
    Ok(Cors {
        origins: c.origins.clone(),
        allow_headers: value(allow.join(", "))?,
        expose_headers: value(expose.join(", "))?,
        max_age: value(c.max_age_seconds.to_string())?,
        allow_credentials: c.allow_credentials,
    })
}

/// Which set an API's host pattern falls in; `None` is the set of APIs without hosts.
type SetKey = Option<HostPattern>;

fn route_sets(
    loaded: &LoadedConfig,
    apis: &[Api],
    routes: &[Route],
) -> Result<(Vec<RouteSet>, HostTable), ConfigError> {
    // Set keys in order of first appearance; each with its APIs in config order.
    let mut keys: Vec<(SetKey, Vec<usize>)> = vec![(None, Vec::new())];
    for (i, api) in apis.iter().enumerate() {
        let api_keys: Vec<SetKey> = if api.hosts.is_empty() {
            vec![None]
        } else {
            api.hosts.iter().cloned().map(Some).collect()
        };
        for key in api_keys {
            match keys.iter_mut().find(|(k, _)| *k == key) {
                Some((_, members)) if !members.contains(&i) => members.push(i),
                Some(_) => {}
                None => keys.push((key, vec![i])),
            }
        }
    }
    let mut hosts = HostTable::new(0);
    let mut sets = Vec::with_capacity(keys.len());
    for (key, members) in keys {
        let router = router_for(loaded, &key, &members, routes)?;
        if let Some(pattern) = &key {
            hosts.insert(pattern, sets.len());
        }
        let metadata = members
            .iter()
            .filter_map(|&a| apis[a].metadata.as_ref().map(|m| (m.path.clone(), a)))
            .collect();
        let all_report_only = !members.is_empty() && members.iter().all(|&a| apis[a].report_only);
        let has_cors = members.iter().any(|&a| apis[a].cors.is_some());
        sets.push(RouteSet {
            apis: members,
            router,
            metadata,
            all_report_only,
            has_cors,
        });
    }
    Ok((sets, hosts))
}

/// One router over the routes of a set's APIs: the same method and path twice is an error.
fn router_for(
    loaded: &LoadedConfig,
    key: &SetKey,
    members: &[usize],
    routes: &[Route],
) -> Result<Router, ConfigError> {
    let in_set: Vec<usize> = (0..routes.len())
        .filter(|&r| members.contains(&routes[r].api))
        .collect();
    // GET also covers HEAD (RFC 9110 §9.3.2), unless HEAD has a route of its own.
    let paths_with_head: HashSet<&str> = in_set
        .iter()
        .filter(|&&r| routes[r].methods.contains(&Method::HEAD))
        .map(|&r| routes[r].path.as_str())
        .collect();
    let mut router = Router::default();
    for &r in &in_set {
        let route = &routes[r];
        let mut methods = route.methods.clone();
        if methods.contains(&Method::GET) && !paths_with_head.contains(route.path.as_str()) {
            methods.push(Method::HEAD);
        }
        router.insert(&route.path, &methods, r).map_err(|e| {
            let message = match e {
                RouterError::Duplicate {
                    method,
                    path,
                    other,
                } => format!(
                    "duplicate route{}: {method} {path} is already defined by `{}`",
                    match key {
                        Some(h) => format!(" for host {h}"),
                        None => String::new(),
                    },
                    routes[other].label
                ),
                other => other.to_string(),
            };
            loaded.source.error(route_span(loaded, r), message)
        })?;
    }
    router
        .finish()
        .map_err(|e| loaded.source.error(None, e.to_string()))?;
    Ok(router)
}

/// Where route `index` (in compile order: top-level first, then each API's) is in the file.
fn route_span(loaded: &LoadedConfig, index: usize) -> Span {
    let cfg = &loaded.config;
    let all = cfg.routes.iter().chain(
        cfg.apis
            .0
            .iter()
            .flat_map(|(_, a)| a.get_ref().routes.iter()),
    );
    all.clone().nth(index).map(|r| r.get_ref().path.span())
}

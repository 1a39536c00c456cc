//! `[[routes]]`: the router and what each route requires.

use std::collections::HashSet;

use http::{HeaderValue, Method};

use super::quoted;
use crate::config::{ConfigError, LoadedConfig, RouteConfig};
use crate::routing::{is_scope_token, RequiredScopes, Router};
use crate::snapshot::{Challenges, Route};
use crate::upstream::UpstreamPool;

/// `GET,POST` as routes name their methods in labels and tables; `ANY` for every method.
pub fn method_list(methods: &[Method]) -> String {
    if methods.is_empty() {
        "ANY".to_string()
    } else {
        methods
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }
}

pub fn routes(
    loaded: &LoadedConfig,
    upstreams: &[UpstreamPool],
    have_issuers: bool,
    challenges: &Challenges,
) -> Result<(Router, Vec<Route>), ConfigError> {
    let cfg = &loaded.config;
    // GET also covers HEAD (RFC 9110 §9.3.2), unless HEAD has a route of its own.
    let paths_with_head: HashSet<&str> = cfg
        .routes
        .iter()
        .filter(|r| {
            r.get_ref()
                .methods
                .as_ref()
                .is_some_and(|ms| ms.get_ref().iter().any(|m| m.eq_ignore_ascii_case("HEAD")))
        })
        .map(|r| r.get_ref().path.get_ref().as_str())
        .collect();
    let mut router = Router::default();
    let mut routes = Vec::with_capacity(cfg.routes.len());
    for (idx, spanned) in cfg.routes.iter().enumerate() {
        let rc = spanned.get_ref();
        let span = Some(spanned.span());
        let route = route(
            loaded,
            rc,
            span.clone(),
            upstreams,
            have_issuers,
            challenges,
        )?;
        let mut lookup_methods = route.methods.clone();
        if route.methods.contains(&Method::GET) && !paths_with_head.contains(route.path.as_str()) {
            lookup_methods.push(Method::HEAD);
        }
        router
            .insert(&route.path, &lookup_methods, idx)
            .map_err(|e| loaded.source.error(Some(rc.path.span()), e.to_string()))?;
        routes.push(route);
    }
    Ok((router, routes))
}

fn methods(loaded: &LoadedConfig, rc: &RouteConfig) -> Result<Vec<Method>, ConfigError> {
    let mut methods = Vec::new();
    let Some(ms) = &rc.methods else {
        return Ok(methods);
    };
    for m in ms.get_ref() {
        let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| {
            loaded
                .source
                .error(Some(ms.span()), format!("{m:?} is not an HTTP method"))
        })?;
        if !methods.contains(&method) {
            methods.push(method);
        }
    }
    if methods.is_empty() {
        return Err(loaded.source.error(
            Some(ms.span()),
            "`methods` is empty; leave it out to match every method",
        ));
    }
    Ok(methods)
}

fn upstream_of(
    loaded: &LoadedConfig,
    rc: &RouteConfig,
    name: &str,
    upstreams: &[UpstreamPool],
    span: Option<std::ops::Range<usize>>,
) -> Result<usize, ConfigError> {
    match &rc.upstream {
        Some(u) => upstreams
            .iter()
            .position(|p| p.name == *u.get_ref())
            .ok_or_else(|| {
                let defined: Vec<&str> = upstreams.iter().map(|p| p.name.as_str()).collect();
                loaded.source.error(
                    Some(u.span()),
                    format!(
                        "route {name}: upstream {:?} is not defined (defined: {})",
                        u.get_ref(),
                        defined.join(", ")
                    ),
                )
            }),
        None if upstreams.len() == 1 => Ok(0),
        None => Err(loaded.source.error(
            span,
            format!(
                "route {name}: set `upstream` (there are {} upstreams)",
                upstreams.len()
            ),
        )),
    }
}

fn route(
    loaded: &LoadedConfig,
    rc: &RouteConfig,
    span: Option<std::ops::Range<usize>>,
    upstreams: &[UpstreamPool],
    have_issuers: bool,
    challenges: &Challenges,
) -> Result<Route, ConfigError> {
    let path = rc.path.get_ref().clone();
    let methods = methods(loaded, rc)?;
    let name = format!("{} {path}", method_list(&methods));
    let err = |m: String| loaded.source.error(span.clone(), m);
    if rc.public && (!rc.scopes.is_empty() || !rc.any_scopes.is_empty()) {
        return Err(err(format!(
            "route {name}: a public route cannot require scopes"
        )));
    }
    if let Some(s) = rc
        .scopes
        .iter()
        .chain(&rc.any_scopes)
        .find(|s| !is_scope_token(s))
    {
        return Err(err(format!("route {name}: {s:?} is not a valid scope (RFC 6749 §3.3: no spaces, quotes or backslashes)")));
    }
    let upstream = upstream_of(loaded, rc, &name, upstreams, span.clone())?;
    if !rc.public && !have_issuers {
        return Err(err(format!(
            "route {name} needs a token but no [[issuers]] are configured"
        )));
    }
    let required = RequiredScopes {
        all: rc.scopes.clone(),
        any: rc.any_scopes.clone(),
    };
    let insufficient_scope_challenge = HeaderValue::from_str(&format!(
        "Bearer realm={}, error=\"insufficient_scope\", scope={}",
        quoted(&challenges.realm),
        quoted(&required.challenge_scope())
    ))
    .map_err(|_| err("scopes do not fit in a header".into()))?;
    Ok(Route {
        label: name,
        path,
        methods,
        public: rc.public,
        required,
        upstream,
        insufficient_scope_challenge,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::parse_for_test;
    use crate::routing::Lookup;

    fn compile_routes(extra: &str) -> Result<(Router, Vec<Route>), ConfigError> {
        let l = parse_for_test(&format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n[upstreams.u]\nservers = [\"127.0.0.1:2\"]\n{extra}"
        ));
        let ups = super::super::upstreams::pools(&l).unwrap();
        let ch = super::super::server::challenges(&l).unwrap();
        routes(&l, &ups, true, &ch)
    }

    #[test]
    fn get_covers_head_and_labels_name_the_methods() {
        let (router, routes) = compile_routes(
            "[[routes]]\nmethods = [\"get\", \"POST\"]\npath = \"/a\"\nscopes = [\"r\"]\n",
        )
        .unwrap();
        assert_eq!(routes[0].label, "GET,POST /a");
        assert_eq!(router.lookup(&Method::HEAD, "/a"), Lookup::Found(0));
        assert_eq!(
            routes[0].insufficient_scope_challenge,
            "Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"r\""
        );
    }

    #[test]
    fn bad_routes_are_errors_at_their_line() {
        let e = compile_routes("[[routes]]\npath = \"/a\"\npublic = true\nscopes = [\"r\"]\n")
            .unwrap_err();
        assert!(
            e.message.contains("a public route cannot require scopes"),
            "{e}"
        );
        assert_eq!(e.line, 5);
        let e = compile_routes("[[routes]]\npath = \"/a\"\nupstream = \"nope\"\n").unwrap_err();
        assert!(
            e.message
                .contains("upstream \"nope\" is not defined (defined: u)"),
            "{e}"
        );
        let e = compile_routes("[[routes]]\npath = \"/a\"\nscopes = [\"a b\"]\n").unwrap_err();
        assert!(e.message.contains("is not a valid scope"), "{e}");
    }
}

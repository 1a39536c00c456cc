//! `[[routes]]`: the router and what each route requires.

use http::{HeaderValue, Method};

use toml::Spanned;

use super::quoted;
use crate::config::{ConfigError, LoadedConfig, RouteConfig};
use crate::routing::claims::param_slot;
use crate::routing::{is_scope_token, ClaimCondition, Expected, RequiredScopes};
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
    upstream: Option<&Spanned<String>>,
    name: &str,
    upstreams: &[UpstreamPool],
    span: Option<std::ops::Range<usize>>,
) -> Result<usize, ConfigError> {
    match upstream {
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

/// What a route is compiled in: its API, and what the API gives its routes.
pub struct RouteContext<'a> {
    pub api: usize,
    /// `Some("billing")` for `[apis.billing]`: route labels are `billing GET /path`.
    pub api_name: Option<&'a str>,
    /// The API's `upstream`, for routes that name none.
    pub default_upstream: Option<&'a Spanned<String>>,
    /// The API's declared scopes, when it declares any.
    pub declared: Option<&'a [String]>,
    pub upstreams: &'a [UpstreamPool],
    pub have_issuers: bool,
    pub challenges: &'a Challenges,
    /// 403 challenges built so far: routes requiring the same scopes share one value.
    pub shared_challenges: &'a std::cell::RefCell<std::collections::HashMap<String, HeaderValue>>,
    /// The API is report-only: so are its routes.
    pub report_only: bool,
}

/// Compile one route of an API (or of the top-level routes).
pub fn route(
    loaded: &LoadedConfig,
    rc: &RouteConfig,
    span: Option<std::ops::Range<usize>>,
    cx: &RouteContext<'_>,
) -> Result<Route, ConfigError> {
    let path = rc.path.get_ref().clone();
    let methods = methods(loaded, rc)?;
    let name = format!("{} {path}", method_list(&methods));
    let err = |m: String| loaded.source.error(span.clone(), m);
    check_scopes(rc, cx.declared).map_err(|m| err(format!("route {name}: {m}")))?;
    let upstream = upstream_of(
        loaded,
        rc.upstream.as_ref().or(cx.default_upstream),
        &name,
        cx.upstreams,
        span.clone(),
    )?;
    if !rc.public && !cx.have_issuers {
        return Err(err(format!(
            "route {name} needs a token but no [[issuers]] are configured"
        )));
    }
    let required = RequiredScopes {
        all: rc.scopes.clone(),
        any: rc.any_scopes.clone(),
    };
    let conditions = conditions(rc, &path).map_err(|m| err(format!("route {name}: {m}")))?;
    if rc.public && !conditions.is_empty() {
        return Err(err(format!(
            "route {name}: a public route cannot have claim conditions"
        )));
    }
    let realm = &cx.challenges.realm;
    let access_denied = access_denied_challenges(&conditions, realm)
        .map_err(|m| err(format!("route {name}: {m}")))?;
    let text = format!(
        "Bearer realm={}, error=\"insufficient_scope\", scope={}",
        quoted(&cx.challenges.realm),
        quoted(&required.challenge_scope())
    );
    let mut shared = cx.shared_challenges.borrow_mut();
    let insufficient_scope_challenge = match shared.get(&text) {
        Some(value) => value.clone(),
        None => {
            let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(text.clone()))
                .map_err(|_| err("scopes do not fit in a header".into()))?;
            shared.insert(text, value.clone());
            value
        }
    };
    drop(shared);
    Ok(Route {
        label: match cx.api_name {
            Some(api) => format!("{api} {name}"),
            None => name,
        },
        path,
        methods,
        public: rc.public,
        required,
        upstream,
        api: cx.api,
        conditions,
        access_denied,
        report_only: rc.report_only || cx.report_only,
        websocket: rc.websocket,
        insufficient_scope_challenge,
        quotas: Vec::new(),
    })
}

/// A public route requires nothing; every scope is a scope token, and one its API declares.
fn check_scopes(rc: &RouteConfig, declared: Option<&[String]>) -> Result<(), String> {
    if rc.public && (!rc.scopes.is_empty() || !rc.any_scopes.is_empty()) {
        return Err("a public route cannot require scopes".into());
    }
    if let Some(s) = rc
        .scopes
        .iter()
        .chain(&rc.any_scopes)
        .find(|s| !is_scope_token(s))
    {
        return Err(format!(
            "{s:?} is not a valid scope (RFC 6749 §3.3: no spaces, quotes or backslashes)"
        ));
    }
    match declared {
        Some(declared) => check_declared(rc, declared),
        None => Ok(()),
    }
}

/// The 403 `access_denied` challenge and description of each claim condition.
fn access_denied_challenges(
    conditions: &[ClaimCondition],
    realm: &str,
) -> Result<Vec<(HeaderValue, String)>, String> {
    conditions
        .iter()
        .map(|c| {
            let text = c.describe();
            let challenge = format!(
                "Bearer realm={}, error=\"insufficient_scope\", error_description={}",
                quoted(realm),
                quoted(&text)
            );
            HeaderValue::from_str(&challenge)
                .map(|v| (v, text))
                .map_err(|_| "a claim condition does not fit in a header".to_string())
        })
        .collect()
}

/// `claims = { sub = "{id}", verified = true }`: literals, or a path parameter of the route.
fn conditions(rc: &RouteConfig, path: &str) -> Result<Vec<ClaimCondition>, String> {
    let Some(claims) = &rc.claims else {
        return Ok(Vec::new());
    };
    claims
        .get_ref()
        .0
        .iter()
        .map(|(claim, value)| {
            let expected = match value {
                toml::Value::String(s) => match s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                    Some(param) => Expected::Param {
                        name: param.to_string(),
                        slot: param_slot(path, param).ok_or_else(|| {
                            format!("claim {claim:?} names {{{param}}}, which the path {path:?} does not have")
                        })?,
                    },
                    None => Expected::Literal(serde_json::Value::String(s.clone())),
                },
                toml::Value::Boolean(b) => Expected::Literal(serde_json::Value::Bool(*b)),
                toml::Value::Integer(i) => Expected::Literal(serde_json::Value::from(*i)),
                other => {
                    return Err(format!(
                        "claim {claim:?}: {} is not a string, boolean, integer or \"{{param}}\"",
                        other.type_str()
                    ))
                }
            };
            Ok(ClaimCondition {
                claim: claim.clone(),
                expected,
            })
        })
        .collect()
}

/// Every scope a route requires is one its API declares; a typo names the closest.
fn check_declared(rc: &RouteConfig, declared: &[String]) -> Result<(), String> {
    let Some(missing) = rc
        .scopes
        .iter()
        .chain(&rc.any_scopes)
        .find(|s| !declared.contains(s))
    else {
        return Ok(());
    };
    let closest = declared
        .iter()
        .min_by_key(|d| edit_distance(missing, d))
        .map(|d| format!("; did you mean {d:?}?"))
        .unwrap_or_default();
    Err(format!(
        "scope {missing:?} is not declared in the API's `scopes`{closest}"
    ))
}

/// Levenshtein distance, for "did you mean".
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undeclared_scopes_name_the_closest_declared_one() {
        let rc: RouteConfig =
            toml::from_str("path = \"/a\"\nscopes = [\"read:invoice\"]\n").unwrap();
        let declared = vec!["read:invoices".to_string(), "pay:invoices".to_string()];
        let e = check_declared(&rc, &declared).unwrap_err();
        assert!(e.contains("did you mean \"read:invoices\""), "{e}");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}

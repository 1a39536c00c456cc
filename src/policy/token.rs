//! Tokens described by what they carry (scopes, `sub`, claims, audience, issuer) instead of
//! signed: what verifying such a token would give, so `scopegate test` and `explain --scopes`
//! need no key. Signature and times are taken as valid; issuer and audience are still checked
//! the way the proxy checks them (an unknown issuer is `wrong_issuer`, an audience the API does
//! not accept is `wrong_audience`).

use std::sync::Arc;

use http::Method;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::auth::{Principal, Rejection};
use crate::config::OneOrMany;
use crate::routing::{normalize, Lookup, ScopeSet};
use crate::snapshot::{Accepts, Snapshot};

/// `token = { scopes = [...], sub = "u1", claims = { org = "acme" }, audience = "...", issuer = "..." }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenDescription {
    #[serde(default)]
    pub scopes: Vec<String>,
    pub sub: Option<String>,
    /// Claims besides `sub` (what claim conditions look at), as JSON values.
    #[serde(default)]
    pub claims: Map<String, Value>,
    /// `aud` (also by that name); default: what the request's API accepts.
    #[serde(alias = "aud")]
    pub audience: Option<OneOrMany>,
    /// `iss` (also by that name); default: the request's API's first issuer.
    #[serde(alias = "iss")]
    pub issuer: Option<String>,
}

impl TokenDescription {
    /// A token with these space-separated scopes and everything else by default.
    pub fn with_scopes(scopes: &str) -> TokenDescription {
        TokenDescription {
            scopes: scopes.split_whitespace().map(str::to_string).collect(),
            ..TokenDescription::default()
        }
    }
}

/// The API whose defaults a described token takes for a request: the matched route's, else the
/// first API the host selects.
pub fn api_for(
    snapshot: &Snapshot,
    method: &Method,
    host: Option<&str>,
    path: &str,
) -> Option<usize> {
    let set = snapshot.route_set(host);
    let found = normalize(path)
        .ok()
        .and_then(|p| match set.router.lookup(method, &p) {
            Lookup::Found(r) => Some(snapshot.routes[r].api),
            _ => None,
        });
    found.or_else(|| set.apis.first().copied())
}

/// What the verifier would make of the described token, for a request to `api`'s routes.
pub fn verified(
    snapshot: &Snapshot,
    api: Option<usize>,
    token: &TokenDescription,
) -> Result<Arc<Principal>, Rejection> {
    let issuers = &snapshot.verifier.issuers;
    let accepts = api.map(|a| &snapshot.apis[a].accepts);
    let issuer = match &token.issuer {
        Some(name) => issuers.iter().position(|i| i.issuer == *name),
        None => match accepts {
            Some(Accepts::Audience { issuers, .. }) => issuers.first().copied(),
            _ => (!issuers.is_empty()).then_some(0),
        },
    }
    .ok_or(Rejection::WrongIssuer)?;
    let audiences: Vec<String> = match (&token.audience, accepts) {
        (Some(a), _) => a.to_vec(),
        (None, Some(Accepts::Audience { audience, .. })) => vec![audience.clone()],
        (None, Some(Accepts::PerIssuer(per_issuer))) => per_issuer
            .get(issuer)
            .and_then(|a| a.first())
            .cloned()
            .into_iter()
            .collect(),
        (None, None) => Vec::new(),
    };
    let mut claims: Vec<(Box<str>, Value)> = token
        .claims
        .iter()
        .filter(|(name, _)| token.sub.is_none() || *name != "sub")
        .map(|(name, value)| (Box::from(name.as_str()), value.clone()))
        .collect();
    if let Some(sub) = &token.sub {
        claims.push((Box::from("sub"), Value::String(sub.clone())));
    }
    let sub = token.sub.clone().or_else(|| {
        token
            .claims
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    Ok(Arc::new(Principal {
        issuer,
        sub,
        scopes: ScopeSet::from_words(token.scopes.iter().map(String::as_str)),
        exp: 0,
        audiences: audiences.into_iter().map(Box::from).collect(),
        claims,
        callers: Box::default(),
        forward_headers: Vec::new(),
        binding: Default::default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{build, parse_for_test};

    const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:1"

[[issuers]]
issuer = "https://a.test/"
audiences = ["https://top.test", "https://top2.test"]
jwks_url = "https://a.test/jwks"

[[issuers]]
issuer = "https://b.test/"
audiences = ["https://top-b.test"]
jwks_url = "https://b.test/jwks"

[upstreams.one]
servers = ["127.0.0.1:1"]

[[routes]]
path = "/top"

[apis.billing]
audience = "https://billing.test"
issuers = ["https://b.test/"]
hosts = ["billing.test"]

[[apis.billing.routes]]
path = "/invoices"
"#;

    fn describe(text: &str) -> TokenDescription {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn issuer_and_audience_default_to_what_the_api_accepts() {
        let snap = build(&parse_for_test(CONFIG), 1).unwrap();
        let api = |host, path| api_for(&snap, &Method::GET, host, path);
        let top = verified(
            &snap,
            api(None, "/top"),
            &describe("scopes = [\"a\", \"b\"]"),
        )
        .unwrap();
        assert_eq!(
            (top.issuer, &*top.audiences),
            (0, &[Box::from("https://top.test")][..])
        );
        assert!(top.scopes.contains("b"));
        let billing = api(Some("billing.test"), "/nope");
        assert_eq!(
            billing,
            Some(1),
            "the host's first API when no route matches"
        );
        let p = verified(
            &snap,
            billing,
            &describe("sub = \"u1\"\nclaims = { org = \"acme\" }"),
        )
        .unwrap();
        assert_eq!(
            (p.issuer, &*p.audiences),
            (1, &[Box::from("https://billing.test")][..])
        );
        assert_eq!(p.sub.as_deref(), Some("u1"));
        assert_eq!(p.claims.len(), 2, "{:?}", p.claims);
        assert!(snap.apis[1].accept(&p).is_ok());
    }

    #[test]
    fn an_issuer_the_config_does_not_trust_is_refused_as_the_verifier_would() {
        let snap = build(&parse_for_test(CONFIG), 1).unwrap();
        let t = describe("issuer = \"https://evil.test/\"");
        assert_eq!(
            verified(&snap, Some(0), &t).unwrap_err(),
            Rejection::WrongIssuer
        );
        // The claims' own names say the same.
        let t = describe("iss = \"https://evil.test/\"");
        assert_eq!(
            verified(&snap, Some(0), &t).unwrap_err(),
            Rejection::WrongIssuer
        );
        let t = describe("audience = [\"https://x.test\", \"https://top2.test\"]");
        let p = verified(&snap, Some(0), &t).unwrap();
        assert!(snap.apis[0].accept(&p).is_ok());
        assert_eq!(
            snap.apis[1].accept(&p).unwrap_err(),
            Rejection::WrongIssuer,
            "issued by a.test, which billing does not trust"
        );
        let t = describe("aud = \"https://x.test\"");
        assert_eq!(
            snap.apis[0].accept(&verified(&snap, Some(0), &t).unwrap()),
            Err(Rejection::WrongAudience)
        );
    }
}

//! OpenAPI 3.0 / 3.1 documents (JSON or YAML) as scope maps: `scopegate openapi import` and
//! `scopegate openapi coverage`.
//!
//! The document is read as plain JSON values: the few fields used here (`paths`, operations'
//! `security`, the top-level `security`, `components.securitySchemes`) are the same in 3.0 and
//! 3.1, while the typed OpenAPI crates each take one version only. YAML is read with
//! yaml-rust2 (maintained, YAML 1.2) and turned into the same JSON values.

use std::fmt;

use serde_json::{Map, Value};

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

#[derive(Debug, thiserror::Error)]
pub enum OpenApiError {
    #[error("{0}: not JSON or YAML: {1}")]
    Syntax(String, String),
    #[error("{0}: not an OpenAPI 3 document: {1}")]
    Shape(String, &'static str),
}

/// What an operation requires, as far as a scope map can say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `security: []`, or an alternative without any requirement.
    Public,
    /// Every scope of `all`, and one of `any` when given.
    Scopes { all: Vec<String>, any: Vec<String> },
    /// Alternatives of several scopes each, or a scheme that is not OAuth.
    Unexpressible(String),
    /// Some alternatives use a scheme that is not OAuth: only the OAuth ones are expressed
    /// (stricter than the document: those other credentials are refused).
    Partial {
        why: String,
        oauth: Box<Requirement>,
    },
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::Public => f.write_str("public"),
            Requirement::Scopes { all, any } if any.is_empty() => write!(f, "[{}]", all.join(" ")),
            Requirement::Scopes { all, any } if all.is_empty() => {
                write!(f, "one of [{}]", any.join(" "))
            }
            Requirement::Scopes { all, any } => {
                write!(f, "[{}] and one of [{}]", all.join(" "), any.join(" "))
            }
            Requirement::Unexpressible(why) => f.write_str(why),
            Requirement::Partial { oauth, .. } => oauth.fmt(f),
        }
    }
}

impl Requirement {
    /// Equal as sets (order does not matter); a partial requirement by its OAuth part.
    pub fn same_as(&self, other: &Requirement) -> bool {
        if let Requirement::Partial { oauth, .. } = other {
            return self.same_as(oauth);
        }
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v.dedup();
            v
        };
        match (self, other) {
            (
                Requirement::Scopes { all: a1, any: y1 },
                Requirement::Scopes { all: a2, any: y2 },
            ) => sorted(a1) == sorted(a2) && sorted(y1) == sorted(y2),
            (a, b) => a == b,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Operation {
    /// Upper case: `GET`.
    pub method: String,
    pub path: String,
    pub requirement: Requirement,
    /// The path cannot be a route template (a parameter that is not a whole segment).
    pub bad_path: bool,
}

#[derive(Debug, Clone)]
pub struct Document {
    pub title: String,
    /// Every OAuth 2.0 flow's scopes: (name, description), first description wins.
    pub scopes: Vec<(String, String)>,
    pub operations: Vec<Operation>,
}

/// Read a document from its text; `name` is for errors.
pub fn parse(name: &str, text: &str) -> Result<Document, OpenApiError> {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(json_err) => yaml_to_json(text).map_err(|yaml_err| {
            let why = if text.trim_start().starts_with('{') {
                json_err.to_string()
            } else {
                yaml_err
            };
            OpenApiError::Syntax(name.to_string(), why)
        })?,
    };
    document(name, &value)
}

fn yaml_to_json(text: &str) -> Result<Value, String> {
    let docs = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
    let first = docs.into_iter().next().ok_or("an empty YAML stream")?;
    Ok(yaml_value(first))
}

fn yaml_value(y: yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::Real(s) => s
            .parse::<f64>()
            .map(Value::from)
            .unwrap_or(Value::String(s)),
        Yaml::Integer(i) => Value::from(i),
        Yaml::String(s) => Value::String(s),
        Yaml::Boolean(b) => Value::Bool(b),
        Yaml::Array(items) => Value::Array(items.into_iter().map(yaml_value).collect()),
        Yaml::Hash(h) => Value::Object(
            h.into_iter()
                .map(|(k, v)| {
                    // Keys such as response codes (200) are read as numbers by YAML.
                    let key = match yaml_value(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, yaml_value(v))
                })
                .collect(),
        ),
        Yaml::Alias(_) | Yaml::Null | Yaml::BadValue => Value::Null,
    }
}

fn document(name: &str, v: &Value) -> Result<Document, OpenApiError> {
    let version = v.get("openapi").and_then(Value::as_str).unwrap_or("");
    if !version.starts_with('3') {
        return Err(OpenApiError::Shape(
            name.into(),
            "no `openapi: 3.x` field (Swagger 2.0 is not read)",
        ));
    }
    let paths = v
        .get("paths")
        .and_then(Value::as_object)
        .ok_or(OpenApiError::Shape(name.into(), "no `paths` object"))?;
    let schemes = v
        .pointer("/components/securitySchemes")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let top_security = v.get("security");
    let mut operations = Vec::new();
    for (path, item) in paths {
        let Some(item) = item.as_object() else {
            continue;
        };
        for m in METHODS {
            let Some(op) = item.get(m) else { continue };
            let security = op.get("security").or(top_security);
            operations.push(Operation {
                method: m.to_ascii_uppercase(),
                path: path.clone(),
                requirement: requirement(security, &schemes),
                bad_path: !template_ok(path),
            });
        }
    }
    Ok(Document {
        title: v
            .pointer("/info/title")
            .and_then(Value::as_str)
            .unwrap_or("api")
            .to_string(),
        scopes: declared_scopes(&schemes),
        operations,
    })
}

fn declared_scopes(schemes: &Map<String, Value>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for scheme in schemes
        .values()
        .filter(|s| s.get("type").and_then(Value::as_str) == Some("oauth2"))
    {
        let Some(flows) = scheme.get("flows").and_then(Value::as_object) else {
            continue;
        };
        for flow in flows.values() {
            let Some(scopes) = flow.get("scopes").and_then(Value::as_object) else {
                continue;
            };
            for (scope, desc) in scopes {
                if !out.iter().any(|(s, _)| s == scope) {
                    out.push((scope.clone(), desc.as_str().unwrap_or("").to_string()));
                }
            }
        }
    }
    out
}

fn is_oauth(schemes: &Map<String, Value>, name: &str) -> bool {
    matches!(
        schemes
            .get(name)
            .and_then(|s| s.get("type"))
            .and_then(Value::as_str),
        Some("oauth2" | "openIdConnect")
    )
}

/// An operation's `security` (else the document's) as a requirement.
fn requirement(security: Option<&Value>, schemes: &Map<String, Value>) -> Requirement {
    let Some(alternatives) = security.and_then(Value::as_array) else {
        // No security declared anywhere: scopegate still asks for a valid token.
        return Requirement::Scopes {
            all: Vec::new(),
            any: Vec::new(),
        };
    };
    let mut options: Vec<Vec<String>> = Vec::new();
    let mut other_scheme = None;
    for alt in alternatives {
        let Some(alt) = alt.as_object() else { continue };
        // `{}` among the alternatives: the operation may be called without credentials.
        if alt.is_empty() {
            return Requirement::Public;
        }
        if let Some(scheme) = alt.keys().find(|s| !is_oauth(schemes, s)) {
            other_scheme.get_or_insert_with(|| scheme.clone());
            continue;
        }
        let mut scopes: Vec<String> = Vec::new();
        for list in alt.values() {
            for s in list
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !scopes.iter().any(|x| x == s) {
                    scopes.push(s.to_string());
                }
            }
        }
        options.push(scopes);
    }
    let oauth = match options.len() {
        0 => None,
        1 => Some(Requirement::Scopes {
            all: options.remove(0),
            any: Vec::new(),
        }),
        _ if options.iter().all(|o| o.len() == 1) => {
            let mut any: Vec<String> = Vec::new();
            for o in options {
                if !any.contains(&o[0]) {
                    any.push(o[0].clone());
                }
            }
            Some(Requirement::Scopes {
                all: Vec::new(),
                any,
            })
        }
        _ => return Requirement::Unexpressible("alternatives of several scopes each".into()),
    };
    match (other_scheme, oauth) {
        (None, Some(r)) => r,
        (None, None) => Requirement::Public,
        (Some(scheme), None) => {
            Requirement::Unexpressible(format!("security scheme {scheme:?} is not OAuth 2.0"))
        }
        (Some(scheme), Some(r)) => Requirement::Partial {
            why: format!(
                "the alternative with security scheme {scheme:?} (not OAuth 2.0) is left out"
            ),
            oauth: Box::new(r),
        },
    }
}

/// Every `{...}` is a whole segment.
fn template_ok(path: &str) -> bool {
    path.starts_with('/')
        && path.split('/').all(|seg| {
            !(seg.contains('{') || seg.contains('}'))
                || (seg.starts_with('{')
                    && seg.ends_with('}')
                    && seg[1..seg.len() - 1]
                        .chars()
                        .all(|c| c != '{' && c != '}' && c != '*' && c != '+'))
        })
}

/// A route template's shape: parameter names do not count.
pub fn shape(path: &str) -> String {
    path.split('/')
        .map(|seg| match seg.strip_prefix('{') {
            Some(rest) if rest.starts_with('*') => "{*}",
            Some(_) => "{}",
            None => seg,
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// The operations a scope map cannot express, with why.
pub fn not_comparable(doc: &Document) -> Vec<String> {
    doc.operations
        .iter()
        .filter_map(|op| match (&op.requirement, op.bad_path) {
            (_, true) => Some(format!(
                "{} {}: a path parameter is not a whole segment",
                op.method, op.path
            )),
            (Requirement::Unexpressible(why), _) => {
                Some(format!("{} {}: {why}", op.method, op.path))
            }
            _ => None,
        })
        .collect()
}

/// `[apis.NAME]` with its routes, as TOML; warnings for what could not be expressed.
pub fn import(
    doc: &Document,
    name: &str,
    audience: &str,
    upstream: Option<&str>,
) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut warnings = Vec::new();
    out.push_str(&format!(
        "# Generated by `scopegate openapi import` from {:?}.\n",
        doc.title
    ));
    out.push_str(&format!("[apis.{name}]\naudience = {}\n", quote(audience)));
    if let Some(u) = upstream {
        out.push_str(&format!("upstream = {}\n", quote(u)));
    }
    let mut scopes = doc.scopes.clone();
    let expressed = |r: &Requirement| match r {
        Requirement::Partial { oauth, .. } => (**oauth).clone(),
        other => other.clone(),
    };
    for op in &doc.operations {
        if let Requirement::Scopes { all, any } = expressed(&op.requirement) {
            for s in all.iter().chain(&any) {
                if !scopes.iter().any(|(d, _)| d == s) {
                    scopes.push((
                        s.clone(),
                        "(not declared by the document's security schemes)".into(),
                    ));
                }
            }
        }
    }
    if !scopes.is_empty() {
        out.push_str("scopes = { ");
        let entries: Vec<String> = scopes
            .iter()
            .map(|(s, d)| format!("{} = {}", quote(s), quote(d)))
            .collect();
        out.push_str(&entries.join(", "));
        out.push_str(" }\n");
    }
    for op in &doc.operations {
        out.push('\n');
        let why = match (&op.requirement, op.bad_path) {
            (_, true) => Some("a path parameter is not a whole segment".to_string()),
            (Requirement::Unexpressible(why), _) => Some(why.clone()),
            _ => None,
        };
        if let Some(why) = why {
            warnings.push(format!("{} {}: not imported: {why}", op.method, op.path));
            out.push_str(&format!(
                "# {} {}: not imported: {why}\n",
                op.method, op.path
            ));
            continue;
        }
        if let Requirement::Partial { why, .. } = &op.requirement {
            warnings.push(format!("{} {}: {why}", op.method, op.path));
            out.push_str(&format!("# {why}\n"));
        }
        route_toml(&mut out, name, op, &expressed(&op.requirement));
    }
    (out, warnings)
}

/// One `[[apis.NAME.routes]]` entry.
fn route_toml(out: &mut String, name: &str, op: &Operation, requirement: &Requirement) {
    out.push_str(&format!(
        "[[apis.{name}.routes]]\nmethods = [{}]\npath = {}\n",
        quote(&op.method),
        quote(&op.path)
    ));
    match requirement {
        Requirement::Public => out.push_str("public = true\n"),
        Requirement::Scopes { all, any } => {
            if all.is_empty() && any.is_empty() {
                out.push_str("# no security in the document: any valid token\n");
            }
            if !all.is_empty() {
                out.push_str(&format!("scopes = {}\n", list(all)));
            }
            if !any.is_empty() {
                out.push_str(&format!("any_scopes = {}\n", list(any)));
            }
        }
        Requirement::Unexpressible(_) | Requirement::Partial { .. } => {}
    }
}

/// A route of the scope map, as coverage compares it.
pub struct MappedRoute {
    /// Upper case; empty for every method.
    pub methods: Vec<String>,
    /// With the API's `strip_prefix` taken off (what the upstream, and so the document, sees).
    pub path: String,
    pub requirement: Requirement,
}

/// Every gap between the map and the document, one line each. Operations whose security a
/// scope map cannot express are not compared (`not_comparable` lists them).
pub fn coverage(routes: &[MappedRoute], doc: &Document) -> Vec<String> {
    let mut gaps = Vec::new();
    let covers = |r: &MappedRoute, op: &Operation| {
        shape(&r.path) == shape(&op.path)
            && (r.methods.is_empty()
                || r.methods.contains(&op.method)
                || (op.method == "HEAD" && r.methods.iter().any(|m| m == "GET")))
    };
    for op in &doc.operations {
        // What a scope map cannot say is not a gap in it (`import` leaves it out the same way).
        if matches!(op.requirement, Requirement::Unexpressible(_)) || op.bad_path {
            continue;
        }
        match routes.iter().find(|r| covers(r, op)) {
            None => gaps.push(format!("missing route: {} {}", op.method, op.path)),
            Some(r) => {
                if !r.requirement.same_as(&op.requirement) {
                    gaps.push(format!(
                        "scope mismatch: {} {}: map requires {}, document requires {}",
                        op.method, op.path, r.requirement, op.requirement
                    ));
                }
            }
        }
    }
    for r in routes {
        let methods: Vec<String> = if r.methods.is_empty() {
            vec![String::new()]
        } else {
            r.methods.clone()
        };
        for m in methods {
            let documented = doc
                .operations
                .iter()
                .any(|op| shape(&op.path) == shape(&r.path) && (m.is_empty() || op.method == m));
            if !documented {
                let label = if m.is_empty() { "ANY".to_string() } else { m };
                gaps.push(format!("extra route: {label} {}", r.path));
            }
        }
    }
    gaps
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"
openapi: 3.0.3
info: { title: Pets, version: "1" }
components:
  securitySchemes:
    auth:
      type: oauth2
      flows:
        implicit:
          authorizationUrl: https://x/auth
          scopes: { "read:pets": read, "write:pets": write, admin: all }
    key: { type: apiKey, in: header, name: X-Key }
security: [ { auth: [ "read:pets" ] } ]
paths:
  /pets:
    get: { responses: { 200: { description: ok } } }
    post:
      security: [ { auth: [ "read:pets", "write:pets" ] } ]
      responses: { 201: { description: ok } }
  /pets/{petId}:
    delete:
      security: [ { auth: [ admin ] }, { auth: [ "write:pets" ] } ]
      responses: { 204: { description: ok } }
    put:
      security: [ { auth: [ admin, "write:pets" ] }, { auth: [ "read:pets" ] } ]
      responses: { 204: { description: ok } }
  /health:
    get: { security: [], responses: { 200: { description: ok } } }
  /keyed:
    get: { security: [ { key: [] } ], responses: { 200: { description: ok } } }
"#;

    #[test]
    fn security_becomes_requirements() {
        let doc = parse("t.yaml", DOC).unwrap();
        let req = |m: &str, p: &str| {
            doc.operations
                .iter()
                .find(|o| o.method == m && o.path == p)
                .unwrap()
                .requirement
                .clone()
        };
        assert_eq!(
            req("GET", "/pets"),
            Requirement::Scopes {
                all: vec!["read:pets".into()],
                any: vec![]
            }
        );
        assert_eq!(req("POST", "/pets").to_string(), "[read:pets write:pets]");
        assert_eq!(
            req("DELETE", "/pets/{petId}").to_string(),
            "one of [admin write:pets]"
        );
        assert!(matches!(
            req("PUT", "/pets/{petId}"),
            Requirement::Unexpressible(_)
        ));
        assert_eq!(req("GET", "/health"), Requirement::Public);
        assert!(matches!(
            req("GET", "/keyed"),
            Requirement::Unexpressible(_)
        ));
        let mixed = requirement(
            Some(&serde_json::json!([{ "key": [] }, { "auth": ["read:pets"] }])),
            &serde_json::from_value(serde_json::json!({
                "key": { "type": "apiKey" }, "auth": { "type": "oauth2" }
            }))
            .unwrap(),
        );
        assert!(
            matches!(&mixed, Requirement::Partial { oauth, .. } if oauth.to_string() == "[read:pets]")
        );
        assert_eq!(doc.scopes.len(), 3);
    }

    #[test]
    fn coverage_compares_shapes_and_scope_sets() {
        let doc = parse("t.yaml", DOC).unwrap();
        let route = |m: &[&str], p: &str, all: &[&str]| MappedRoute {
            methods: m.iter().map(|s| s.to_string()).collect(),
            path: p.into(),
            requirement: Requirement::Scopes {
                all: all.iter().map(|s| s.to_string()).collect(),
                any: vec![],
            },
        };
        let routes = vec![
            route(&["GET"], "/pets", &["read:pets"]),
            route(&["POST"], "/pets", &["write:pets", "read:pets"]),
            route(&["DELETE"], "/pets/{id}", &["admin"]),
            route(&["PATCH"], "/pets/{id}", &[]),
        ];
        let gaps = coverage(&routes, &doc);
        assert_eq!(
            gaps,
            vec![
                "scope mismatch: DELETE /pets/{petId}: map requires [admin], document requires one of [admin write:pets]",
                "missing route: GET /health",
                "extra route: PATCH /pets/{id}",
            ]
        );
    }
}

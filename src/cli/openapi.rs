//! `scopegate openapi import` and `scopegate openapi coverage`.

use std::path::Path;

use crate::compile::method_list;
use crate::openapi::{self, Document, MappedRoute, Requirement};
use crate::snapshot::Snapshot;

pub fn read(file: &Path) -> anyhow::Result<Document> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", file.display()))?;
    Ok(openapi::parse(&file.display().to_string(), &text)?)
}

/// A TOML table name from the document's title: `Swagger Petstore` -> `swagger-petstore`.
pub fn api_name(title: &str) -> String {
    let mut name = String::new();
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            name.push(c.to_ascii_lowercase());
        } else if !name.ends_with('-') && !name.is_empty() {
            name.push('-');
        }
    }
    let name = name.trim_end_matches('-').to_string();
    if name.is_empty() {
        "api".into()
    } else {
        name
    }
}

/// The routes of the API `name` (or the only API), as coverage compares them.
pub fn mapped_routes(snap: &Snapshot, name: Option<&str>) -> anyhow::Result<Vec<MappedRoute>> {
    let names: Vec<&str> = snap.apis.iter().map(|a| a.display_name()).collect();
    let api = match name {
        Some(n) => snap
            .apis
            .iter()
            .position(|a| a.name.as_deref() == Some(n))
            .ok_or_else(|| {
                anyhow::anyhow!("no [apis.{n}] in the config (APIs: {})", names.join(", "))
            })?,
        None if snap.apis.len() == 1 => 0,
        None => anyhow::bail!(
            "the config has several APIs ({}): name one with --api",
            names.join(", ")
        ),
    };
    let prefix = snap.apis[api].strip_prefix.as_deref();
    Ok(snap
        .routes
        .iter()
        .filter(|r| r.api == api)
        .map(|r| {
            let path = match prefix.and_then(|p| r.path.strip_prefix(p)) {
                Some("") => "/".to_string(),
                Some(rest) => rest.to_string(),
                None => r.path.clone(),
            };
            let methods = if r.methods.is_empty() {
                Vec::new()
            } else {
                method_list(&r.methods)
                    .split(',')
                    .map(str::to_string)
                    .collect()
            };
            let requirement = if r.public {
                Requirement::Public
            } else {
                Requirement::Scopes {
                    all: r.required.all.clone(),
                    any: r.required.any.clone(),
                }
            };
            MappedRoute {
                methods,
                path,
                requirement,
            }
        })
        .collect())
}

//! The route table `scopegate check` prints.

use crate::compile::method_list;
use crate::snapshot::{Accepts, Snapshot};

/// The routes, grouped by API (with its audience and hosts), each group a table.
pub fn route_table(snap: &Snapshot) -> String {
    let mut out = String::new();
    for (i, api) in snap.apis.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&api_heading(api));
        let routes: Vec<&crate::snapshot::Route> =
            snap.routes.iter().filter(|r| r.api == i).collect();
        // A QUOTAS column only for APIs with quotas; the quotas themselves listed below.
        let with_quotas = routes.iter().any(|r| !r.quotas.is_empty());
        let mut rows = vec![vec![
            "METHODS".to_string(),
            "PATH".to_string(),
            "REQUIRES".to_string(),
            "UPSTREAM".to_string(),
        ]];
        if with_quotas {
            rows[0].push("QUOTAS".to_string());
        }
        for r in routes {
            let requires = if r.public {
                "public".to_string()
            } else {
                r.required.to_string()
            };
            let mut row = vec![
                method_list(&r.methods),
                r.path.clone(),
                requires,
                snap.upstreams[r.upstream].name.clone(),
            ];
            if with_quotas {
                let names: Vec<&str> = r
                    .quotas
                    .iter()
                    .map(|&q| snap.quotas[q].name.as_str())
                    .collect();
                row.push(if names.is_empty() {
                    "-".to_string()
                } else {
                    names.join(" ")
                });
            }
            rows.push(row);
        }
        out.push_str(&render(&rows));
        let mut listed: Vec<usize> = Vec::new();
        for q in snap
            .routes
            .iter()
            .filter(|r| r.api == i)
            .flat_map(|r| r.quotas.iter().copied())
        {
            if !listed.contains(&q) {
                listed.push(q);
            }
        }
        listed.sort_unstable();
        for q in listed {
            out.push_str(&format!("quota {}\n", snap.quotas[q].describe()));
        }
    }
    out
}

/// `API name (audience ..., hosts ..., strip_prefix ..., cors, dpop required)`.
fn api_heading(api: &crate::snapshot::Api) -> String {
    let hosts = if api.hosts.is_empty() {
        "any host".to_string()
    } else {
        let names: Vec<String> = api.hosts.iter().map(|h| h.to_string()).collect();
        format!("hosts {}", names.join(" "))
    };
    let audience = match &api.accepts {
        Accepts::Audience { audience, .. } => format!("audience {audience}"),
        Accepts::PerIssuer(_) => "audiences of each issuer".to_string(),
    };
    let prefix = api
        .strip_prefix
        .as_ref()
        .map(|p| format!(", strip_prefix {p}"))
        .unwrap_or_default();
    let cors = if api.cors.is_some() { ", cors" } else { "" };
    let pop = match &api.pop {
        None => String::new(),
        Some(p) => {
            let mechanism = match p.mechanism {
                crate::snapshot::Mechanism::Dpop => "dpop",
                crate::snapshot::Mechanism::Mtls => "mtls",
            };
            let how = if p.required { "required" } else { "optional" };
            let nonce = if p.dpop.nonce { " with nonces" } else { "" };
            format!(", {mechanism} {how}{nonce}")
        }
    };
    format!(
        "API {} ({audience}, {hosts}{prefix}{cors}{pop})\n",
        api.display_name()
    )
}

/// Columns padded to their widest cell, two spaces apart.
fn render(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 < columns {
                line.push_str(&format!("{cell:w$}  ", w = widths[c]));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

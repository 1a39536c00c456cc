//! The route table `scopegate check` prints.

use crate::compile::method_list;
use crate::snapshot::{Accepts, Snapshot};

/// The routes, grouped by API (with its audience and hosts), each group a table.
pub fn route_table(snap: &Snapshot) -> String {
    let mut out = String::new();
    for (i, api) in snap.apis.iter().enumerate() {
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
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!(
            "API {} ({audience}, {hosts}{prefix}{})\n",
            api.display_name(),
            if api.cors.is_some() { ", cors" } else { "" }
        ));
        let mut rows = vec![[
            "METHODS".to_string(),
            "PATH".to_string(),
            "REQUIRES".to_string(),
            "UPSTREAM".to_string(),
        ]];
        for r in snap.routes.iter().filter(|r| r.api == i) {
            let requires = if r.public {
                "public".to_string()
            } else {
                r.required.to_string()
            };
            rows.push([
                method_list(&r.methods),
                r.path.clone(),
                requires,
                snap.upstreams[r.upstream].name.clone(),
            ]);
        }
        out.push_str(&render(&rows));
    }
    out
}

/// Columns padded to their widest cell, two spaces apart.
fn render(rows: &[[String; 4]]) -> String {
    let widths: Vec<usize> = (0..4)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line = format!(
            "{:w0$}  {:w1$}  {:w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

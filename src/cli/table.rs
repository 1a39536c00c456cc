//! The route table `scopegate check` prints.

use crate::compile::method_list;
use crate::snapshot::Snapshot;

pub fn route_table(snap: &Snapshot) -> String {
    let mut rows = vec![[
        "METHODS".to_string(),
        "PATH".to_string(),
        "REQUIRES".to_string(),
        "UPSTREAM".to_string(),
    ]];
    for r in &snap.routes {
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
    render(&rows)
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

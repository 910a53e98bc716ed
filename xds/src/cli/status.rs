//! `legate-xds status` as tables: proxies and their versions, overrides, split overrides,
//! groups.

use serde_json::Value;

/// A version for a table: its first 8 characters, `-` when absent.
fn short(v: &Value) -> String {
    match v.as_str() {
        Some(s) => s.chars().take(8).collect(),
        None => "-".into(),
    }
}

/// `acked`, or `acked>sent` while an update is unanswered or was refused.
fn sent_acked(v: &Value) -> String {
    let acked = short(&v["acked"]);
    let sent = &v["sent"];
    if sent.is_null() || sent == &v["acked"] {
        acked
    } else {
        format!("{acked}>{}", short(sent))
    }
}

pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count()) + 2;
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

const TYPES: [&str; 4] = ["listeners", "route_tables", "clusters", "endpoints"];

/// `/v1/status` as text tables.
pub fn render_status(status: &Value) -> String {
    let mut out = String::new();
    let empty = Vec::new();
    let proxies = status["proxies"].as_array().unwrap_or(&empty);
    out.push_str(&format!(
        "PROXIES ({}; versions are acked, or acked>sent while unanswered or refused)\n",
        proxies.len()
    ));
    let rows: Vec<Vec<String>> = proxies
        .iter()
        .map(|p| {
            let node = &p["node"];
            let mut row = vec![
                node["id"].as_str().unwrap_or("").to_string(),
                format!(
                    "{}{}",
                    node["cluster"].as_str().unwrap_or(""),
                    match p["group"].as_str() {
                        Some("unknown") => " (unknown)",
                        Some("failing") => " (failing)",
                        _ => "",
                    }
                ),
                node["zone"].as_str().unwrap_or("-").to_string(),
                p["peer"].as_str().unwrap_or("").to_string(),
                p["connected_since"].as_str().unwrap_or("").to_string(),
            ];
            row.extend(TYPES.iter().map(|t| sent_acked(&p["versions"][t])));
            row
        })
        .collect();
    out.push_str(&table(
        &[
            "NODE",
            "GROUP",
            "ZONE",
            "PEER",
            "CONNECTED SINCE",
            "LISTENERS",
            "ROUTE_TABLES",
            "CLUSTERS",
            "ENDPOINTS",
        ],
        &rows,
    ));
    for p in proxies {
        let nack = &p["last_nack"];
        if nack.is_object() {
            out.push_str(&format!(
                "  last NACK from {}: {} version {} (kept {})\n",
                p["node"]["id"].as_str().unwrap_or(""),
                nack["type"].as_str().unwrap_or("?"),
                short(&nack["version"]),
                short(&nack["held"]),
            ));
            for d in nack["error_detail"].as_array().unwrap_or(&empty) {
                out.push_str(&format!(
                    "    {}: {}\n",
                    d["name"].as_str().unwrap_or(""),
                    d["error"].as_str().unwrap_or("")
                ));
            }
        }
    }

    out.push_str("\nOVERRIDES\n");
    let mut rows = Vec::new();
    if let Some(clusters) = status["overrides"].as_object() {
        for (cluster, endpoints) in clusters {
            for (address, o) in endpoints.as_object().into_iter().flatten() {
                let show = |v: &Value| {
                    if v.is_null() {
                        "-".to_string()
                    } else {
                        v.to_string()
                    }
                };
                rows.push(vec![
                    cluster.clone(),
                    address.clone(),
                    show(&o["weight"]),
                    show(&o["pooled"]),
                ]);
            }
        }
    }
    out.push_str(&table(&["CLUSTER", "ADDRESS", "WEIGHT", "POOLED"], &rows));

    out.push_str("\nSPLITS (set by operators)\n");
    let mut rows = Vec::new();
    for (group, tables) in status["splits"].as_object().into_iter().flatten() {
        for (table_name, routes) in tables.as_object().into_iter().flatten() {
            for (route, targets) in routes.as_object().into_iter().flatten() {
                let split =
                    targets.as_array().unwrap_or(&empty).iter().map(|t| {
                        format!("{}={}", t["cluster"].as_str().unwrap_or("?"), t["weight"])
                    });
                rows.push(vec![
                    group.clone(),
                    table_name.clone(),
                    route.clone(),
                    split.collect::<Vec<_>>().join(" "),
                ]);
            }
        }
    }
    out.push_str(&table(&["GROUP", "ROUTE TABLE", "ROUTE", "SPLIT"], &rows));

    out.push_str("\nGROUPS\n");
    let mut rows = Vec::new();
    let mut errors = String::new();
    for (name, g) in status["groups"].as_object().into_iter().flatten() {
        let mut row = vec![name.clone()];
        row.extend(TYPES.iter().map(|t| short(&g["versions"][t])));
        let errs = g["errors"].as_array().unwrap_or(&empty);
        row.push(if errs.is_empty() {
            "ok".into()
        } else if g["versions"].is_null() {
            "failing (never loaded)".into()
        } else {
            "failing (serving last good)".into()
        });
        for e in errs {
            errors.push_str(&format!("  {name}: {}\n", e.as_str().unwrap_or("")));
        }
        rows.push(row);
    }
    out.push_str(&table(
        &[
            "GROUP",
            "LISTENERS",
            "ROUTE_TABLES",
            "CLUSTERS",
            "ENDPOINTS",
            "STATE",
        ],
        &rows,
    ));
    out.push_str(&errors);
    out
}

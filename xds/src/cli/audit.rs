//! `legate-xds audit`: the latest operator changes from `GET /v1/audit`, as a table or JSON.

use http::Method;
use serde_json::Value;

use super::{block_on, request_with, table, CliError, ServerArgs};

/// `legate-xds audit`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// How many of the latest changes (1 to 10000).
    #[arg(long, default_value_t = crate::audit::DEFAULT_LIMIT)]
    pub limit: usize,
    /// Print the server's JSON as is.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

pub fn run(args: AuditArgs) -> Result<(), CliError> {
    let answer = block_on(request_with(
        &args.server.server,
        &args.server.tls(),
        Method::GET,
        &format!("/v1/audit?limit={}", args.limit),
        None,
    ))??;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        );
    } else {
        print!("{}", render(&answer));
    }
    Ok(())
}

/// One row per change: when, who (the certificate name, else the address), what, before and
/// after; a change that was not applied says so.
pub fn render(answer: &Value) -> String {
    let empty = Vec::new();
    let entries = answer["entries"].as_array().unwrap_or(&empty);
    if entries.is_empty() {
        return "no operator changes yet\n".to_owned();
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let who = &e["who"];
            let who = match (who["identity"].as_str(), who["role"].as_str()) {
                (Some(name), Some(role)) => format!("{name} ({role})"),
                (Some(name), None) => name.to_owned(),
                _ => who["peer"].as_str().unwrap_or("-").to_owned(),
            };
            let target = e["target"]
                .as_object()
                .map(|t| {
                    ["group", "route_table", "route", "cluster", "address"]
                        .iter()
                        .filter_map(|k| t.get(*k).and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let mut operation = e["operation"].as_str().unwrap_or("-").to_owned();
            if let Some(failed) = e["failed"].as_str() {
                operation = format!("{operation} (not applied: {failed})");
            }
            vec![
                e["time"].as_str().unwrap_or("-").to_owned(),
                who,
                operation,
                target,
                compact(&e["before"]),
                compact(&e["after"]),
            ]
        })
        .collect();
    table(
        &["TIME", "WHO", "OPERATION", "TARGET", "BEFORE", "AFTER"],
        &rows,
    )
}

/// A split as `metal=90 k8s=10`, an override as `weight=3 pooled=false`, nothing as `-`.
fn compact(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::Array(targets) => targets
            .iter()
            .map(|t| format!("{}={}", t["cluster"].as_str().unwrap_or("?"), t["weight"]))
            .collect::<Vec<_>>()
            .join(" "),
        Value::Object(fields) => fields
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_changes_with_who_and_before_after() {
        let answer = json!({ "entries": [
            { "id": 1, "time": "2026-12-06T10:00:00.000Z",
              "who": { "peer": "127.0.0.1:5", "identity": "spiffe://m/operator/alice", "role": "operator" },
              "operation": "step", "target": { "group": "maps", "route_table": "main", "route": "k" },
              "before": [{"cluster": "metal", "weight": 90}, {"cluster": "k8s", "weight": 10}],
              "after": [{"cluster": "metal", "weight": 80}, {"cluster": "k8s", "weight": 20}] },
            { "id": 2, "time": "2026-12-06T10:01:00.000Z", "who": { "peer": "127.0.0.1:6" },
              "operation": "depool", "target": { "cluster": "tiles", "address": "10.0.0.1:80" },
              "before": null, "after": { "pooled": false }, "failed": "disk full" },
        ]});
        let text = render(&answer);
        assert!(text.starts_with("TIME"), "{text}");
        assert!(
            text.contains("spiffe://m/operator/alice (operator)  step"),
            "{text}"
        );
        assert!(text.contains("maps main k"), "{text}");
        assert!(text.contains("metal=90 k8s=10"), "{text}");
        assert!(text.contains("metal=80 k8s=20"), "{text}");
        assert!(text.contains("127.0.0.1:6"), "{text}");
        assert!(text.contains("depool (not applied: disk full)"), "{text}");
        assert!(text.contains("pooled=false"), "{text}");
        assert_eq!(
            render(&json!({ "entries": [] })),
            "no operator changes yet\n"
        );
    }
}

//! The monitoring files in `deploy/`: the Prometheus alert rules pass `promtool check rules`,
//! and every Legate metric the rules and the Grafana dashboard use is one a running Legate
//! exports (a live scrape's `# TYPE` lines).
//!
//! Needs promtool (Debian's `prometheus`, which `.ci/run` installs).

use std::collections::BTreeSet;

use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use legate_integration::client;
use legate_integration::container::repo_root;
use legate_integration::eventually;
use legate_integration::proxy::{yaml, Proxy};
use legate_integration::upstream::{closed_port, Upstream};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// An HTTP listener with a route to a cluster that cannot be reached, a TCP listener, and
/// clusters whose endpoints are checked.
const CONFIG: &str = r#"
admin: { listen: 127.0.0.1:0 }
access_log: { enabled: false }
listeners:
  - { name: front, listen: 127.0.0.1:0, http: { route_table: main } }
  - { name: raw, listen: 127.0.0.1:0, tcp: { cluster: app } }
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes:
          - { match: { prefix: /gone }, cluster: gone }
          - { match: { prefix: / }, cluster: app }
clusters:
  - name: app
    health_check: { tcp: {}, interval: 1s, timeout: 1s }
    endpoints: ["${APP}"]
  - { name: gone, endpoints: ["${GONE}"] }
"#;

/// The `legate_…` names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("legate_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The metric names a scrape declares (`# TYPE name kind`), with a histogram's series.
fn exported(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for declared in scrape.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, kind) = declared.split_once(' ').unwrap_or((declared, ""));
        if kind == "histogram" {
            for series in ["bucket", "sum", "count"] {
                names.insert(format!("{name}_{series}"));
            }
        }
        names.insert(name.to_owned());
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_and_dashboard_use_only_metrics_legate_exports() -> Result<()> {
    let rules = repo_root().join("deploy/prometheus/alerts.yaml");
    let out = tokio::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot run promtool ({e}): install prometheus (`apt-get install prometheus`, as .ci/run does)"
            )
        })?;
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A scrape from a proxy with traffic, and one following a control plane (for the
    // connection gauge, exported only then).
    let app = Upstream::echo("app").await?;
    let proxy = Proxy::start(
        yaml(CONFIG)
            .set("APP", app.addr())
            .set("GONE", closed_port()),
    )?;
    proxy.wait_ready().await?;
    client::get(proxy.addr("front"), "example.org", "/").await?;
    let failed = client::get(proxy.addr("front"), "example.org", "/gone").await?;
    assert_eq!(failed.legate_error(), Some("connect-failure"));
    // One TCP session, over once the server has answered and closed it.
    let mut session = tokio::net::TcpStream::connect(proxy.addr("raw")).await?;
    session
        .write_all(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        .await?;
    session.read_to_end(&mut Vec::new()).await?;
    drop(session);
    let mut scrape = eventually(Duration::from_secs(10), || async {
        let text = client::get(proxy.admin(), "admin", "/metrics")
            .await?
            .text();
        ensure!(
            text.contains("legate_tcp_session_duration_seconds_count"),
            "the session is not over yet"
        );
        Ok(text)
    })
    .await?;
    let follower = Proxy::start(yaml(&format!(
        "xds: {{ server: \"{}\" }}\nnode: {{ id: a, cluster: g }}\nadmin: {{ listen: 127.0.0.1:0 }}\naccess_log: {{ enabled: false }}\n",
        closed_port()
    )))?;
    scrape.push_str(
        &client::get(follower.admin(), "admin", "/metrics")
            .await?
            .text(),
    );
    let exported = exported(&scrape);

    let dashboard = std::fs::read_to_string(repo_root().join("deploy/grafana/legate.json"))?;
    let parsed: serde_json::Value =
        serde_json::from_str(&dashboard).context("the dashboard is JSON")?;
    assert!(
        parsed["panels"].as_array().is_some_and(|p| !p.is_empty()),
        "the dashboard has panels"
    );
    let alerts = std::fs::read_to_string(&rules)?;
    for (file, text) in [("legate.json", &dashboard), ("alerts.yaml", &alerts)] {
        let used = metric_names(text);
        assert!(!used.is_empty(), "{file} uses no metric");
        let missing: Vec<_> = used.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics Legate does not export: {missing:?}\nexported: {exported:?}"
        );
    }
    Ok(())
}

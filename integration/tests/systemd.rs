//! Legate under systemd: the `sd_notify` messages `legate run` sends to `$NOTIFY_SOCKET`
//! (a Unix datagram socket the test binds, as systemd does), and the unit file.
//!
//! Needs `cargo build -p legate --bin legate` first.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use http::StatusCode;
use legate_integration::client;
use legate_integration::process::{self, Legate};
use legate_integration::proxy::yaml;
use legate_integration::upstream::Upstream;
use tokio::net::UnixDatagram;

/// Route `/` → `${APP}`, or `respond` with `${BODY}` on `/fixed`.
const CONFIG: &str = r#"
admin: { listen: "${ADMIN}" }
runtime: { workers: 1, drain_timeout: 5s }
access_log: { enabled: false }
listeners:
  - { name: front, listen: 127.0.0.1:0, http: { route_table: main } }
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes:
          - { match: { prefix: /fixed }, respond: { status: 200, body: "${BODY}" } }
          - { match: { prefix: / }, cluster: app }
clusters:
  - { name: app, endpoints: ["${APP}"] }
"#;

/// The next notification: its `KEY=value` lines.
async fn next(socket: &UnixDatagram) -> Result<Vec<String>> {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf))
        .await
        .context("no notification within 10s")??;
    Ok(String::from_utf8(buf[..n].to_vec())?
        .lines()
        .map(str::to_owned)
        .collect())
}

fn value<'a>(lines: &'a [String], key: &str) -> Option<&'a str> {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// `legate run` with `NOTIFY_SOCKET` set to `socket`.
async fn start_notifying(config: legate_integration::proxy::Yaml, socket: &Path) -> Result<Legate> {
    Legate::start_by(config, |config_path| {
        let mut cmd = process::command();
        cmd.env("NOTIFY_SOCKET", socket)
            .arg("run")
            .arg("--config")
            .arg(config_path);
        cmd
    })
    .await
}

async fn config_version(legate: &Legate) -> Result<String> {
    let config = legate.admin_json("/config").await?;
    config["version"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no version in {config}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_socket_gets_ready_then_reloading_ready_around_reloads_then_stopping() -> Result<()>
{
    let app = Upstream::echo("app").await?;
    let dir = tempfile::tempdir()?;
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path)?;
    let config = |body: &str| yaml(CONFIG).set("APP", app.addr()).set("BODY", body);
    let mut legate = start_notifying(config("one"), &socket_path).await?;

    // READY=1 once the listeners are bound and the config is loaded.
    let ready = next(&socket).await?;
    assert_eq!(value(&ready, "READY"), Some("1"), "{ready:?}");
    let first = config_version(&legate).await?;
    assert_eq!(
        value(&ready, "STATUS"),
        Some(format!("serving config {first}").as_str())
    );
    tokio::net::TcpStream::connect(legate.addr("front")).await?;

    // A changed file: RELOADING=1 with a timestamp, then READY=1 once it is in effect.
    legate.write_config(config("two"))?;
    let reloading = next(&socket).await?;
    assert_eq!(value(&reloading, "RELOADING"), Some("1"), "{reloading:?}");
    let usec: u64 = value(&reloading, "MONOTONIC_USEC")
        .context("RELOADING=1 comes with MONOTONIC_USEC")?
        .parse()?;
    assert!(usec > 0);
    let ready = next(&socket).await?;
    assert_eq!(value(&ready, "READY"), Some("1"), "{ready:?}");
    let second = config_version(&legate).await?;
    assert_ne!(second, first);
    assert_eq!(
        value(&ready, "STATUS"),
        Some(format!("serving config {second}").as_str())
    );
    let reply = client::get(legate.addr("front"), "example.org", "/fixed").await?;
    assert_eq!(
        reply.text(),
        "two",
        "READY=1 came after the new config took effect"
    );

    // SIGHUP reloads too, with the same pair.
    legate.signal("HUP").await?;
    assert_eq!(value(&next(&socket).await?, "RELOADING"), Some("1"));
    assert_eq!(value(&next(&socket).await?, "READY"), Some("1"));

    // A file that does not load: only a status line saying so; the old config serves on.
    legate.write_config(yaml("listeners: [ {").set("APP", app.addr()))?;
    let rejected = next(&socket).await?;
    assert_eq!(value(&rejected, "READY"), None, "{rejected:?}");
    assert_eq!(value(&rejected, "RELOADING"), None, "{rejected:?}");
    let status = value(&rejected, "STATUS").context("a status line")?;
    assert!(status.starts_with("config reload failed: "), "{status}");
    assert!(
        status.ends_with(&format!("; serving config {second}")),
        "{status}"
    );
    let reply = client::get(legate.addr("front"), "example.org", "/fixed").await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "two");
    // Nothing else was sent for it: the next message is the next reload's.
    legate.write_config(config("three"))?;
    assert_eq!(value(&next(&socket).await?, "RELOADING"), Some("1"));
    assert_eq!(value(&next(&socket).await?, "READY"), Some("1"));

    // SIGTERM: STOPPING=1, then a clean exit.
    legate.signal("TERM").await?;
    let stopping = next(&socket).await?;
    assert_eq!(value(&stopping, "STOPPING"), Some("1"), "{stopping:?}");
    let status = legate.wait_exit(Duration::from_secs(10)).await?;
    assert_eq!(status.code(), Some(0));
    Ok(())
}

/// An upgrade (SIGUSR2) under systemd: the old process names the new one the main process
/// (`MAINPID=`) once it serves, with `READY=1`; the new one sent nothing of its own before
/// that (systemd would ignore it), and notifies for itself after (a reload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_makes_the_new_process_the_main_pid() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let dir = tempfile::tempdir()?;
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path)?;
    let config = |body: &str| yaml(CONFIG).set("APP", app.addr()).set("BODY", body);
    let mut legate = start_notifying(config("one"), &socket_path).await?;
    assert_eq!(value(&next(&socket).await?, "READY"), Some("1"));

    legate.signal("USR2").await?;
    let handed = next(&socket).await?;
    let upgraded = legate
        .wait_stderr("upgraded: the new process serves")
        .await?;
    let new_pid = upgraded
        .split_once("new_pid=")
        .map(|(_, p)| p.trim().to_owned())
        .context("new_pid in the log")?;
    assert_eq!(
        value(&handed, "MAINPID"),
        Some(new_pid.as_str()),
        "{handed:?}"
    );
    assert_eq!(value(&handed, "READY"), Some("1"), "{handed:?}");
    assert_eq!(
        value(&handed, "STATUS"),
        Some(format!("upgraded: serving in pid {new_pid}").as_str())
    );

    // The old process drains and exits; the new one reloads, and says so itself.
    let status = legate.wait_exit(Duration::from_secs(10)).await?;
    assert_eq!(status.code(), Some(0));
    legate.write_config(config("two"))?;
    assert_eq!(value(&next(&socket).await?, "RELOADING"), Some("1"));
    assert_eq!(value(&next(&socket).await?, "READY"), Some("1"));
    let reply = client::get(legate.addr("front"), "example.org", "/fixed").await?;
    assert_eq!(reply.text(), "two");
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &new_pid])
        .status();
    Ok(())
}

/// `KEY=value` lines of a unit file's `[Service]` section.
fn service_keys(unit: &str) -> Vec<(String, String)> {
    let mut in_service = false;
    let mut keys = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service && !line.starts_with('#') {
            if let Some((k, v)) = line.split_once('=') {
                keys.push((k.to_owned(), v.to_owned()));
            }
        }
    }
    keys
}

fn key<'a>(keys: &'a [(String, String)], name: &str) -> Option<&'a str> {
    keys.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `deploy/systemd/legate.service` (and its drop-in) pass `systemd-analyze verify` without a
/// warning, with the built binary in place of the installed one; the unit's keys agree with
/// what Legate does (notify, SIGHUP reloads, validate first, stop time above the drain).
#[tokio::test]
async fn the_unit_file_passes_systemd_analyze_verify_and_fits_legate() -> Result<()> {
    let repo = legate_integration::container::repo_root();
    let unit = std::fs::read_to_string(repo.join("deploy/systemd/legate.service"))?;
    let drop_in = std::fs::read_to_string(
        repo.join("deploy/systemd/legate.service.d/privileged-ports.conf"),
    )?;
    let binary = process::binary();
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("legate.service"),
        unit.replace("/usr/local/bin/legate", &binary.display().to_string()),
    )?;
    std::fs::create_dir(dir.path().join("legate.service.d"))?;
    std::fs::write(
        dir.path().join("legate.service.d/privileged-ports.conf"),
        &drop_in,
    )?;

    let out = tokio::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("legate.service"))
        .output()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot run systemd-analyze ({e}): install systemd (`apt-get install systemd`, as .ci/run does)"
            )
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warned:\n{stderr}"
    );

    let keys = service_keys(&unit);
    assert_eq!(key(&keys, "Type"), Some("notify"));
    assert_eq!(key(&keys, "ExecReload"), Some("/bin/kill -HUP $MAINPID"));
    let start = key(&keys, "ExecStart").context("ExecStart")?;
    let pre = key(&keys, "ExecStartPre").context("ExecStartPre")?;
    let config = start
        .split_once(" --config ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .context("ExecStart names a --config")?;
    assert!(start.contains(" run "), "{start}");
    assert!(
        pre.ends_with(&format!(" validate --config {config}")),
        "ExecStartPre validates the file ExecStart runs: {pre}"
    );
    assert!(
        start.contains(" --pid-file /run/legate/")
            && key(&keys, "RuntimeDirectory") == Some("legate"),
        "the pid file is in the unit's runtime directory: {start}"
    );
    let stop: u64 = key(&keys, "TimeoutStopSec")
        .and_then(|v| v.strip_suffix('s'))
        .context("TimeoutStopSec in seconds")?
        .parse()?;
    let defaults = legate::config::load::defaults().runtime;
    let drain = defaults.drain_delay.get() + defaults.drain_timeout.get();
    assert!(
        Duration::from_secs(stop) > drain,
        "TimeoutStopSec={stop}s must exceed the default drain ({drain:?})"
    );
    assert_eq!(key(&keys, "CapabilityBoundingSet"), Some(""));
    assert_eq!(key(&keys, "NoNewPrivileges"), Some("yes"));
    let drop_in = service_keys(&drop_in);
    assert_eq!(
        key(&drop_in, "AmbientCapabilities"),
        Some("CAP_NET_BIND_SERVICE")
    );
    Ok(())
}

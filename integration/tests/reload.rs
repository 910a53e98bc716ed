//! Hot reload, end to end: the config file watched in place, renamed over and swapped by a
//! Kubernetes-style `..data` symlink; rejected files that leave the running config alone
//! (and say why, with field paths and lines, in `/config` and in the log); `POST /reload` and
//! SIGHUP; certificate files that go bad; what a reload keeps (keep-alive connections, health,
//! pooled upstream connections); listeners that move, are removed, or are rebound on the same
//! port; concurrent reloads; and the real thing — HTTP/1.1 and HTTP/2 clients plus PostgreSQL
//! sessions and pgbench running through Legate while its config flips 20 times, with no failed
//! request and no dropped session.
//!
//! The tests that run the binary need `cargo build -p legate --bin legate` first; the load
//! test needs PostgreSQL (`/usr/lib/postgresql/*/bin`, or `$LEGATE_PG_BIN`).
//!
//! Waiting: the watcher only sees changes made after it watches the directory, so every test
//! waits for the inotify watch (`certs::wait_watched*`) before its first edit; after that it
//! waits on what the reload changes (`/config`'s version and counters, routing, stderr lines),
//! polling with `eventually` where there is no signal.

#![allow(clippy::unwrap_used)]

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use http::{Method, StatusCode};
use legate_integration::certs::{self, peer_cert, Ca, TlsClient};
use legate_integration::client::{self, request, Http1, Reply, H2};
use legate_integration::eventually;
use legate_integration::postgres::{self, PgSet, Pgbench, Session};
use legate_integration::process::{self, Legate};
use legate_integration::proxy::{yaml, Proxy, Yaml};
use legate_integration::upstream::{Upstream, GATED_FIRST, GATED_LAST};
use serde_json::Value;
use tokio::net::TcpStream;

/// How long a file change may take to be applied (the watcher debounces for 200 ms).
const RELOAD_LIMIT: Duration = Duration::from_secs(5);

/// The Host every test request carries.
const HOST: &str = "app.example.org";

/// Listener `front` (at `${FRONT}`, backlog `${BACKLOG}`) routes everything with a split
/// between clusters `a` (`${A}`) and `b` (`${B}`), weights `${WA}` and `${WB}`.
/// `${ADMIN}`: the admin address (`127.0.0.1:0` in process; the binary's harness fills it).
const ROUTED: &str = r#"
admin: { listen: "${ADMIN}" }
runtime: { workers: 2, drain_timeout: 5s }
access_log: { enabled: false }
listeners:
  - { name: front, listen: "${FRONT}", backlog: ${BACKLOG}, http: { route_table: main } }
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes:
          - match: { prefix: / }
            split: [{ cluster: a, weight: ${WA} }, { cluster: b, weight: ${WB} }]
clusters:
  - { name: a, connect_timeout: 1s, endpoints: ["${A}"] }
  - { name: b, connect_timeout: 1s, endpoints: ["${B}"] }
"#;

/// [`ROUTED`] sending everything to `to` (`a` or `b`), with `front` at `listen` and `backlog`.
fn routed_at(a: &Upstream, b: &Upstream, to: &str, listen: &str, backlog: u32) -> Yaml {
    let (wa, wb) = if to == "a" { (100, 0) } else { (0, 100) };
    yaml(ROUTED)
        .set("A", a.addr())
        .set("B", b.addr())
        .set("WA", wa)
        .set("WB", wb)
        .set("FRONT", listen)
        .set("BACKLOG", backlog)
}

/// [`ROUTED`] sending everything to `to`, with `front` on an ephemeral port.
fn routed(a: &Upstream, b: &Upstream, to: &str) -> Yaml {
    routed_at(a, b, to, "127.0.0.1:0", 1024)
}

/// The version Legate gives a config text (in process: `${ADMIN}` is `127.0.0.1:0`).
fn version(config: &Yaml) -> Result<String> {
    Ok(legate::config::version_of(config.text()?))
}

/// The text of `config` as the binary `legate` reads it (its admin address filled in).
fn binary_text(config: &Yaml) -> Result<String> {
    Ok(config
        .clone()
        .set("ADMIN", process::ADMIN)
        .text()?
        .to_owned())
}

/// `GET /` on a new connection; the upstream that answered.
async fn upstream_of(addr: SocketAddr) -> Result<String> {
    let reply = client::get(addr, HOST, "/").await?;
    ensure!(
        reply.status == StatusCode::OK,
        "GET / answered {}",
        reply.status
    );
    Ok(reply.echo()?.upstream)
}

/// Waits until new requests on `addr` go to upstream `to`.
async fn wait_routed(addr: SocketAddr, to: &str) -> Result<()> {
    eventually(RELOAD_LIMIT, || async {
        let now = upstream_of(addr).await?;
        ensure!(now == to, "still routed to {now}, not {to}");
        Ok(())
    })
    .await
}

/// `GET /config` on an admin listener.
async fn admin_config(admin: SocketAddr) -> Result<Value> {
    client::get(admin, "admin", "/config").await?.json()
}

/// `/config`'s reload counters: (ok, rejected).
fn reloads(config: &Value) -> (u64, u64) {
    (
        config["reloads"]["ok"].as_u64().unwrap_or(u64::MAX),
        config["reloads"]["rejected"].as_u64().unwrap_or(u64::MAX),
    )
}

/// Waits until `/config` says `check`, returning it.
async fn wait_config(
    admin: SocketAddr,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let check = &check;
    eventually(RELOAD_LIMIT, || async move {
        let config = admin_config(admin).await?;
        ensure!(check(&config), "/config is not {what}: {config}");
        Ok(config)
    })
    .await
}

/// `POST /reload` on an admin listener: the status and the JSON answer.
async fn post_reload(admin: SocketAddr) -> Result<(StatusCode, Value)> {
    let reply = Http1::connect(admin)
        .await?
        .request(request(Method::POST, "admin", "/reload"))
        .await?;
    Ok((reply.status, reply.json()?))
}

/// Whether nothing accepts connections on `addr` any more.
async fn refused(addr: SocketAddr) -> Result<()> {
    match TcpStream::connect(addr).await {
        Ok(_) => bail!("{addr} still accepts connections"),
        Err(_) => Ok(()),
    }
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> Result<usize> {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .with_context(|| format!("{needle:?} is not in the config"))
}

/// The config file a running `legate` was started with (`--config PATH` in its command line).
fn config_path(legate: &Legate) -> Result<PathBuf> {
    let raw = std::fs::read(format!("/proc/{}/cmdline", legate.pid()))?;
    let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    let at = args
        .iter()
        .position(|a| *a == b"--config")
        .context("legate was started without --config")?;
    let path = args.get(at + 1).context("--config without a path")?;
    Ok(PathBuf::from(OsStr::from_bytes(path)))
}

/// Starts the binary and waits until it watches its config file's directory.
async fn start_binary(config: Yaml) -> Result<(Legate, PathBuf)> {
    let legate = Legate::start(config).await?;
    let path = config_path(&legate)?;
    let dir = path.parent().context("the config file has a directory")?;
    certs::wait_watched_by(legate.pid(), dir).await?;
    Ok((legate, path))
}

/// An in-process proxy whose config file `path` (in `dir`) is watched.
struct Watched {
    proxy: Proxy,
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Watched {
    /// Starts `config` in process, writes it to `dir/legate.yaml`, watches that file and
    /// waits until the watch exists.
    async fn start(config: Yaml) -> Result<Watched> {
        let config = config.set("ADMIN", "127.0.0.1:0");
        let proxy = Proxy::start(config.clone())?;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("legate.yaml");
        std::fs::write(&path, config.text()?)?;
        proxy.app().watch_config(&path);
        certs::wait_watched(dir.path()).await?;
        Ok(Watched {
            proxy,
            _dir: dir,
            path,
        })
    }
}

// ---- what triggers a reload ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_edit_reloads_and_keep_alive_connections_see_the_new_routes() -> Result<()> {
    let a = Upstream::echo("a").await?;
    let b = Upstream::echo("b").await?;
    let w = Watched::start(routed(&a, &b, "a")).await?;
    let (front, admin) = (w.proxy.addr("front"), w.proxy.admin());
    let mut keep = Http1::connect(front).await?;
    assert_eq!(keep.get(HOST, "/").await?.echo()?.upstream, "a");
    // A request in flight on the old config: its response has started, its end is held.
    let mut slow = Http1::connect(front).await?;
    let in_flight = tokio::spawn(async move { slow.get(HOST, "/gated").await });
    a.wait_requests(2).await?;

    // Truncated and rewritten in place, as an editor without backup files does.
    let next = routed(&a, &b, "b").set("ADMIN", "127.0.0.1:0");
    std::fs::write(&w.path, next.text()?)?;
    wait_routed(front, "b").await?;

    let reply = keep.get(HOST, "/").await?;
    assert_eq!(
        reply.echo()?.upstream,
        "b",
        "the keep-alive connection routes with the new config"
    );
    assert!(!keep.is_closed(), "the keep-alive connection survived");
    assert_eq!(w.proxy.addr("front"), front, "the listener kept its socket");
    let config = admin_config(admin).await?;
    assert_eq!(config["version"], version(&next)?.as_str(), "{config}");
    assert_eq!(config["last_reload"]["version"], version(&next)?.as_str());
    assert!(config["last_reload"]["error"].is_null(), "{config}");
    assert_eq!(reloads(&config), (1, 0), "one edit, one reload: {config}");

    ensure!(!in_flight.is_finished(), "the gated request ended early");
    a.open_gate();
    let reply = in_flight.await??;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.upstream(), Some("a"), "it finished where it started");
    assert_eq!(reply.body, [GATED_FIRST, GATED_LAST].concat());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_reloads_on_atomic_rename_and_on_in_place_edit() -> Result<()> {
    let a = Upstream::echo("a").await?;
    let b = Upstream::echo("b").await?;
    let (legate, path) = start_binary(routed(&a, &b, "a")).await?;
    let front = legate.addr("front");
    let mut keep = Http1::connect(front).await?;
    assert_eq!(keep.get(HOST, "/").await?.echo()?.upstream, "a");

    // Written beside the file and renamed over it.
    let to_b = routed(&a, &b, "b");
    legate.write_config(to_b.clone())?;
    wait_routed(front, "b").await?;
    legate.wait_stderr("config reloaded").await?;
    assert_eq!(keep.get(HOST, "/").await?.echo()?.upstream, "b");
    let config = admin_config(legate.admin()).await?;
    assert_eq!(
        config["version"],
        legate::config::version_of(&binary_text(&to_b)?).as_str()
    );
    assert_eq!(reloads(&config), (1, 0), "{config}");

    // Edited in place.
    let to_a = binary_text(&routed(&a, &b, "a"))?;
    std::fs::write(&path, &to_a)?;
    wait_routed(front, "a").await?;
    assert_eq!(keep.get(HOST, "/").await?.echo()?.upstream, "a");
    assert!(
        !keep.is_closed(),
        "the keep-alive connection survived both reloads"
    );
    let config = admin_config(legate.admin()).await?;
    assert_eq!(
        config["version"],
        legate::config::version_of(&to_a).as_str()
    );
    assert_eq!(reloads(&config), (2, 0), "{config}");
    assert_eq!(
        config["listeners"]["front"],
        front.to_string(),
        "the listener kept its socket"
    );
    Ok(())
}

/// Points `dir/..data` at `dir/version` atomically (a temporary symlink renamed over it), as
/// the kubelet does for a ConfigMap volume.
fn swap_data(dir: &Path, version: &str) -> Result<()> {
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(version, &tmp)?;
    std::fs::rename(&tmp, dir.join("..data"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_symlink_swap_reloads() -> Result<()> {
    let a = Upstream::echo("a").await?;
    let b = Upstream::echo("b").await?;
    // dir/legate.yaml -> ..data/legate.yaml, dir/..data -> ..v1
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let write_version = |name: &str, config: &Yaml| -> Result<()> {
        std::fs::create_dir(d.join(name))?;
        std::fs::write(d.join(name).join("legate.yaml"), config.text()?)?;
        Ok(())
    };
    let v1 = routed(&a, &b, "a").set("ADMIN", "127.0.0.1:0");
    write_version("..v1", &v1)?;
    std::os::unix::fs::symlink("..v1", d.join("..data"))?;
    std::os::unix::fs::symlink("..data/legate.yaml", d.join("legate.yaml"))?;
    let proxy = Proxy::start(v1.clone())?;
    proxy.app().watch_config(&d.join("legate.yaml"));
    certs::wait_watched(d).await?;
    let (front, admin) = (proxy.addr("front"), proxy.admin());
    let mut keep = Http1::connect(front).await?;
    assert_eq!(keep.get(HOST, "/").await?.echo()?.upstream, "a");

    let v2 = routed(&a, &b, "b").set("ADMIN", "127.0.0.1:0");
    write_version("..v2", &v2)?;
    swap_data(d, "..v2")?;
    wait_routed(front, "b").await?;
    assert_eq!(keep.get(HOST, "/").await?.echo()?.upstream, "b");
    let config = admin_config(admin).await?;
    assert_eq!(config["version"], version(&v2)?.as_str(), "{config}");
    assert_eq!(reloads(&config), (1, 0), "{config}");

    // The next update, and the kubelet removing the old version afterwards.
    let v3 = routed(&a, &b, "a").set("ADMIN", "127.0.0.1:0");
    write_version("..v3", &v3)?;
    swap_data(d, "..v3")?;
    std::fs::remove_dir_all(d.join("..v1"))?;
    std::fs::remove_dir_all(d.join("..v2"))?;
    wait_routed(front, "a").await?;
    assert_eq!(keep.get(HOST, "/").await?.echo()?.upstream, "a");
    assert!(!keep.is_closed());
    let config = admin_config(admin).await?;
    assert_eq!(config["version"], version(&v3)?.as_str(), "{config}");
    assert_eq!(reloads(&config), (2, 0), "{config}");
    Ok(())
}

// ---- rejected files -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_edit_is_rejected_and_the_old_config_keeps_serving() -> Result<()> {
    let a = Upstream::echo("a").await?;
    let b = Upstream::echo("b").await?;
    let start = routed(&a, &b, "a");
    let (legate, _) = start_binary(start.clone()).await?;
    let (front, admin) = (legate.addr("front"), legate.admin());
    let before = admin_config(admin).await?;
    let mut keep = Http1::connect(front).await?;
    assert_eq!(keep.get(HOST, "/").await?.echo()?.upstream, "a");

    // Routing moves to `b`, but cluster `b` has a misspelt key: nothing of it may apply.
    let good_b = binary_text(&routed(&a, &b, "b"))?;
    let bad = good_b.replace("{ name: b, ", "{ name: b, conect_timeout: 2s, ");
    ensure!(bad != good_b, "the typo was not inserted");
    let line = line_of(&bad, "conect_timeout")?;
    legate.write_config(yaml(&bad))?;

    let config = wait_config(admin, "showing a rejected reload", |c| reloads(c).1 == 1).await?;
    let error = config["last_reload"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!(
            "line {line}: clusters[1].conect_timeout: unknown field"
        )),
        "the error names the line and the field path: {config}"
    );
    assert!(
        error.contains("(did you mean `connect_timeout`?)"),
        "{error}"
    );
    assert!(config["last_reload"]["version"].is_null(), "{config}");
    assert_eq!(reloads(&config), (0, 1), "{config}");
    assert_eq!(config["version"], before["version"], "the old config stays");
    assert_eq!(config["config"], before["config"], "the old config stays");
    legate.wait_stderr("config reload rejected").await?;
    legate
        .wait_stderr(&format!("line {line}: clusters[1].conect_timeout"))
        .await?;
    assert_eq!(keep.get(HOST, "/").await?.echo()?.upstream, "a");
    assert_eq!(upstream_of(front).await?, "a");

    // Valid, but a new listener cannot bind: the whole file is rejected, routes included.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let taken_addr = taken.local_addr()?;
    let with_listener = good_b.replace(
        "listeners:\n",
        &format!(
            "listeners:\n  - {{ name: extra, listen: \"{taken_addr}\", http: {{ route_table: main }} }}\n"
        ),
    );
    legate.write_config(yaml(&with_listener))?;
    let config = wait_config(admin, "showing a second rejection", |c| reloads(c).1 == 2).await?;
    let error = config["last_reload"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("listeners[extra]") && error.contains(&taken_addr.to_string()),
        "{config}"
    );
    assert!(
        config["listeners"].get("extra").is_none(),
        "nothing of the rejected file started: {config}"
    );
    assert_eq!(config["version"], before["version"]);
    assert_eq!(
        upstream_of(front).await?,
        "a",
        "the routes did not change either"
    );
    drop(taken);

    // Fixed: the next valid file applies.
    legate.write_config(yaml(&good_b))?;
    wait_routed(front, "b").await?;
    let config = admin_config(admin).await?;
    assert_eq!(reloads(&config), (1, 2), "{config}");
    assert!(config["last_reload"]["error"].is_null(), "{config}");
    assert_eq!(
        config["last_reload"]["version"],
        legate::config::version_of(&good_b).as_str()
    );
    assert_eq!(keep.get(HOST, "/").await?.echo()?.upstream, "b");
    assert!(!keep.is_closed());
    Ok(())
}

// ---- forced reloads -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reload_and_sighup_force_a_reload() -> Result<()> {
    let a = Upstream::echo("a").await?;
    let b = Upstream::echo("b").await?;
    let start = routed(&a, &b, "a");
    let (legate, _) = start_binary(start.clone()).await?;
    let (front, admin) = (legate.addr("front"), legate.admin());
    let version_a = legate::config::version_of(&binary_text(&start)?);

    // The file has not changed: only the forced reloads happen.
    let (status, answer) = post_reload(admin).await?;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["result"], "ok", "{answer}");
    assert_eq!(answer["version"], version_a.as_str(), "{answer}");
    assert_eq!(reloads(&admin_config(admin).await?), (1, 0));

    legate.signal("HUP").await?;
    legate.wait_stderr("SIGHUP: reloading").await?;
    let config = wait_config(admin, "counting the SIGHUP reload", |c| reloads(c).0 == 2).await?;
    assert_eq!(config["version"], version_a.as_str());
    assert_eq!(reloads(&config), (2, 0), "{config}");

    // A bad file: POST /reload says why, with the field path; the old routes stay.
    let bad = binary_text(&routed(&a, &b, "b"))?.replace("weight: 100", "weight: lots");
    let line = line_of(&bad, "weight: lots")?;
    legate.write_config(yaml(&bad))?;
    let (status, answer) = post_reload(admin).await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["result"], "rejected", "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!(
            "line {line}: route_tables.main.virtual_hosts[0].routes[0].split[1].weight"
        )),
        "{answer}"
    );
    assert_eq!(upstream_of(front).await?, "a");
    let config = admin_config(admin).await?;
    assert_eq!(config["version"], version_a.as_str());
    assert!(reloads(&config).1 >= 1, "{config}");

    // A good file: when POST /reload answers, new requests already use it.
    let to_b = binary_text(&routed(&a, &b, "b"))?;
    legate.write_config(yaml(&to_b))?;
    let (status, answer) = post_reload(admin).await?;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer["version"],
        legate::config::version_of(&to_b).as_str()
    );
    assert_eq!(upstream_of(front).await?, "b");

    // A change only a restart applies: the rest applies, and the answer is not a plain ok.
    let more_workers = to_b.replace("workers: 2,", "workers: 3,");
    legate.write_config(yaml(&more_workers).set("A", a.addr()))?;
    let (status, answer) = post_reload(admin).await?;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["result"], "restart-required", "{answer}");
    assert_eq!(
        answer["not_in_effect"],
        serde_json::json!(["runtime.workers"])
    );
    let config = admin_config(admin).await?;
    assert_eq!(
        config["last_reload"]["not_in_effect"],
        serde_json::json!(["runtime.workers"]),
        "{config}"
    );

    // And SIGHUP after an edit.
    legate.write_config(start)?;
    legate.signal("HUP").await?;
    wait_routed(front, "a").await?;
    let config = admin_config(admin).await?;
    assert_eq!(config["version"], version_a.as_str());
    assert!(config["last_reload"]["error"].is_null(), "{config}");
    assert!(
        config["last_reload"].get("not_in_effect").is_none(),
        "back to the workers it runs with: {config}"
    );
    Ok(())
}

// ---- certificates ---------------------------------------------------------------------------

/// Listener `plain` and TLS listener `tls` (certificate `${CRT}`, key `${KEY}`) route to
/// cluster `app`.
const TLS_CONFIG: &str = r#"
admin: { listen: "${ADMIN}" }
runtime: { workers: 2 }
access_log: { enabled: false }
listeners:
  - { name: plain, listen: 127.0.0.1:0, http: { route_table: main } }
  - name: tls
    listen: 127.0.0.1:0
    http: { route_table: main }
    tls:
      certificates: [{ cert: "${CRT}", key: "${KEY}" }]
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes: [{ match: { prefix: / }, cluster: app }]
clusters:
  - { name: app, endpoints: ["${APP}"] }
"#;

fn tls_config(app: &Upstream, crt: &Path, key: &Path) -> Yaml {
    yaml(TLS_CONFIG)
        .set("APP", app.addr())
        .set("CRT", crt.display())
        .set("KEY", key.display())
}

/// The certificate a new handshake gets, after checking that the connection serves.
async fn presented(addr: SocketAddr, ca: &Ca) -> Result<rustls_pki_types::CertificateDer<'static>> {
    let stream = TlsClient::trusting(ca)
        .connect(addr, "maps.example.org")
        .await?;
    let cert = peer_cert(&stream).context("no server certificate")?;
    let mut conn = certs::Https1::over(stream).await?;
    let reply = conn.get(HOST, "/").await?;
    ensure!(
        reply.status == StatusCode::OK,
        "HTTPS GET answered {}",
        reply.status
    );
    Ok(cert)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificate_files_are_rejected_and_the_old_certificate_keeps_serving() -> Result<()> {
    let certs_dir = tempfile::tempdir()?;
    let ca = Ca::new("Reload CA")?;
    let v1 = ca.server(&["maps.example.org"])?;
    let (crt, key) = v1.write(certs_dir.path(), "tls")?;
    let app = Upstream::echo("app").await?;
    let good = tls_config(&app, &crt, &key);
    let (legate, _) = start_binary(good.clone()).await?;
    let (tls, plain, admin) = (legate.addr("tls"), legate.addr("plain"), legate.admin());
    certs::wait_watched_by(legate.pid(), certs_dir.path()).await?;
    assert!(presented(tls, &ca).await? == *v1.der());
    let mut old = TlsClient::trusting(&ca)
        .http1(tls, "maps.example.org")
        .await?;
    assert_eq!(old.get(HOST, "/").await?.status, StatusCode::OK);

    // Garbage written over the served certificate: the file watch rejects it.
    std::fs::write(&crt, "this is not a certificate\n")?;
    let line = legate.wait_stderr("new TLS certificate rejected").await?;
    assert!(line.contains("tls.crt"), "the log names the file: {line}");
    for i in 0..3 {
        assert!(
            presented(tls, &ca).await? == *v1.der(),
            "handshake {i} after the garbage did not get the old certificate"
        );
    }

    // A forced reload of the (unchanged) config reads the broken file too: rejected whole.
    let (status, answer) = post_reload(admin).await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("listeners[1].tls.certificates[0].cert") && error.contains("tls.crt"),
        "{answer}"
    );
    assert!(presented(tls, &ca).await? == *v1.der());
    assert_eq!(upstream_of(plain).await?, "app");

    // A config pointing the listener at a garbage file: rejected, the old certificate stays.
    let broken = certs_dir.path().join("broken.crt");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n",
    )?;
    legate.write_config(tls_config(&app, &broken, &key))?;
    let config = wait_config(admin, "showing the second rejection", |c| reloads(c).1 == 2).await?;
    let error = config["last_reload"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("listeners[1].tls.certificates[0].cert") && error.contains("broken.crt"),
        "{config}"
    );
    assert_eq!(reloads(&config), (0, 2), "{config}");
    assert!(presented(tls, &ca).await? == *v1.der());
    assert_eq!(old.get(HOST, "/").await?.status, StatusCode::OK);

    // Repaired: a new pair renamed into place and the good config back.
    let v2 = ca.server(&["maps.example.org"])?;
    v2.replace(&crt, &key)?;
    legate.write_config(good)?;
    eventually(RELOAD_LIMIT, || async {
        ensure!(
            presented(tls, &ca).await? == *v2.der(),
            "new handshakes do not get the repaired certificate yet"
        );
        Ok(())
    })
    .await?;
    let config = wait_config(admin, "applying the repaired config", |c| reloads(c).0 == 1).await?;
    assert!(config["last_reload"]["error"].is_null(), "{config}");
    assert_eq!(old.get(HOST, "/").await?.status, StatusCode::OK);
    assert!(!old.is_closed(), "the old TLS connection survived it all");
    Ok(())
}

// ---- listeners that move --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_listener_accepts_on_the_new_address_before_the_old_one_stops() -> Result<()> {
    let a = Upstream::echo("a").await?;
    let b = Upstream::echo("b").await?;
    let (legate, _) = start_binary(routed(&a, &b, "a")).await?;
    let (old_addr, admin) = (legate.addr("front"), legate.admin());

    // A keep-alive HTTP/1.1 connection and an HTTP/2 one, each with a response half sent.
    let mut h1 = Http1::connect(old_addr).await?;
    assert_eq!(h1.get(HOST, "/").await?.echo()?.upstream, "a");
    let h1_in_flight = tokio::spawn(async move {
        let reply = h1.get(HOST, "/gated").await;
        (reply, h1)
    });
    let h2 = H2::connect(old_addr).await?;
    let h2_in_flight = {
        let h2 = h2.clone();
        tokio::spawn(async move { h2.get(HOST, "/gated").await })
    };
    a.wait_requests(3).await?;

    // Watches the old address; the moment it refuses, the new one must already accept.
    let new_addr = SocketAddr::from(([127, 0, 0, 1], process::free_port()));
    let watcher = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(old_addr).await.is_err() {
                let now = TcpStream::connect(new_addr)
                    .await
                    .with_context(|| format!("{old_addr} refused before {new_addr} accepted"));
                return now.map(drop);
            }
            ensure!(
                Instant::now() < deadline,
                "{old_addr} never stopped accepting"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    legate.write_config(routed_at(&a, &b, "a", &new_addr.to_string(), 1024))?;
    tokio::time::timeout(Duration::from_secs(15), watcher).await???;

    let config = admin_config(admin).await?;
    assert_eq!(
        config["listeners"]["front"],
        new_addr.to_string(),
        "{config}"
    );
    assert_eq!(upstream_of(new_addr).await?, "a");
    refused(old_addr).await?;

    // The responses in flight on the old listener's connections finish.
    ensure!(
        !h1_in_flight.is_finished(),
        "the HTTP/1.1 response ended early"
    );
    ensure!(
        !h2_in_flight.is_finished(),
        "the HTTP/2 response ended early"
    );
    a.open_gate();
    a.open_gate();
    let (reply, h1) = h1_in_flight.await?;
    let reply = reply?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, [GATED_FIRST, GATED_LAST].concat());
    let reply = h2_in_flight.await??;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, [GATED_FIRST, GATED_LAST].concat());
    // Then the drained connections close.
    eventually(RELOAD_LIMIT, || async {
        ensure!(h1.is_closed(), "the old HTTP/1.1 connection is still open");
        Ok(())
    })
    .await?;
    assert!(
        h2.get(HOST, "/").await.is_err(),
        "the old HTTP/2 connection takes no new streams"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_listener_stops_accepting_and_finishes_its_in_flight_request() -> Result<()> {
    let a = Upstream::echo("a").await?;
    let b = Upstream::echo("b").await?;
    let with_extra = routed(&a, &b, "a").set("ADMIN", "127.0.0.1:0");
    let with_extra = with_extra.text()?.replace(
        "listeners:\n",
        "listeners:\n  - { name: extra, listen: 127.0.0.1:0, http: { route_table: main } }\n",
    );
    let w = Watched::start(yaml(&with_extra)).await?;
    let (front, extra) = (w.proxy.addr("front"), w.proxy.addr("extra"));
    let mut conn = Http1::connect(extra).await?;
    assert_eq!(conn.get(HOST, "/").await?.echo()?.upstream, "a");
    let in_flight = tokio::spawn(async move {
        let reply = conn.get(HOST, "/gated").await;
        (reply, conn)
    });
    a.wait_requests(2).await?;

    let without = routed(&a, &b, "a").set("ADMIN", "127.0.0.1:0");
    std::fs::write(&w.path, without.text()?)?;
    eventually(RELOAD_LIMIT, || refused(extra)).await?;
    assert!(w.proxy.app().listener_addr("extra").is_none());
    assert_eq!(w.proxy.addr("front"), front);
    assert_eq!(upstream_of(front).await?, "a");

    ensure!(!in_flight.is_finished(), "the gated response ended early");
    a.open_gate();
    let (reply, conn) = in_flight.await?;
    let reply = reply?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, [GATED_FIRST, GATED_LAST].concat());
    eventually(RELOAD_LIMIT, || async {
        ensure!(conn.is_closed(), "the drained connection is still open");
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebinding_the_same_port_loses_no_connection() -> Result<()> {
    let a = Upstream::echo("a").await?;
    let b = Upstream::echo("b").await?;
    // A backlog change rebinds the same address: old and new sockets share the port
    // (SO_REUSEPORT) while the old one drains.
    let listen = format!("127.0.0.1:{}", process::free_port());
    let config =
        |backlog: u32| routed_at(&a, &b, "a", &listen, backlog).set("ADMIN", "127.0.0.1:0");
    let proxy = Proxy::start(config(1024))?;
    let front = proxy.addr("front");

    let traffic = Arc::new(Traffic::new(4, |_| "a"));
    let mut tasks = Vec::new();
    for id in 0..4 {
        let traffic = traffic.clone();
        // A new connection for every request: connections are what a rebind could lose.
        tasks.push(tokio::spawn(async move {
            while !traffic.stop.load(Ordering::SeqCst) {
                let start = traffic.phase.load(Ordering::SeqCst);
                let reply = client::get(front, HOST, "/").await;
                traffic.record_http(id, start, reply);
            }
        }));
    }
    traffic.wait_all_seen(0).await?;
    for flip in 1..=10u64 {
        traffic.phase.store(2 * flip - 1, Ordering::SeqCst);
        proxy.apply(config(if flip % 2 == 1 { 512 } else { 1024 }))?;
        assert_eq!(proxy.addr("front"), front);
        traffic.phase.store(2 * flip, Ordering::SeqCst);
        // Both phases route to `a`; every client gets through after each rebind.
        traffic.wait_all_seen(2 * flip).await?;
    }
    traffic.stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await?;
    }
    traffic.check()?;
    Ok(())
}

// ---- what a reload keeps ---------------------------------------------------------------------

/// Cluster `app` (`${GOOD}`, `${SICK}`) is health checked once an hour, so after the first
/// round its health can only be kept, never re-learnt; cluster `pooled` (`${POOLED}`) gets
/// `/pooled`; `/version` answers `${VERSION}`.
const KEPT: &str = r#"
admin: { listen: 127.0.0.1:0 }
runtime: { workers: 2 }
access_log: { enabled: false }
listeners:
  - { name: front, listen: 127.0.0.1:0, http: { route_table: main } }
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes:
          - match: { prefix: /version }
            respond: { status: 200, body: "${VERSION}" }
          - match: { prefix: /pooled }
            cluster: pooled
          - match: { prefix: / }
            cluster: app
clusters:
  - name: app
    health_check: { http: { path: /healthz }, interval: 1h, timeout: 1s, jitter: 0s, unhealthy_threshold: 1, healthy_threshold: 1 }
    endpoints: ["${GOOD}", "${SICK}"]
  - { name: pooled, endpoints: ["${POOLED}"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_file_keeps_health_and_pooled_connections_of_unchanged_clusters() -> Result<()> {
    let good = Upstream::echo("good").await?;
    let sick = Upstream::builder("sick").status(503).start().await?;
    let pooled = Upstream::echo("pooled").await?;
    let config = |version: u32| {
        yaml(KEPT)
            .set("GOOD", good.addr())
            .set("SICK", sick.addr())
            .set("POOLED", pooled.addr())
            .set("VERSION", version)
    };
    let proxy = Proxy::start(config(1))?;
    proxy.wait_ready().await?;
    let (front, admin) = (proxy.addr("front"), proxy.admin());
    let health = || async {
        let e = postgres::endpoint(admin, "app", sick.addr()).await?;
        Ok::<_, anyhow::Error>(e["health"].clone())
    };
    assert_eq!(
        health().await?,
        "unhealthy",
        "the first check round marked it down"
    );
    let mut conn = Http1::connect(front).await?;
    for _ in 0..3 {
        assert_eq!(conn.get(HOST, "/pooled").await?.echo()?.upstream, "pooled");
    }
    let pooled_connections = pooled.connections();
    let sick_requests = sick.requests();

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("legate.yaml");
    std::fs::write(&path, config(2).text()?)?;
    let version = proxy.app().reload_file(&path)?;
    assert_eq!(version, legate::config::version_of(config(2).text()?));

    // The new routes serve at once; the unchanged clusters are as they were.
    assert_eq!(conn.get(HOST, "/version").await?.text(), "2");
    assert_eq!(health().await?, "unhealthy", "health survived the reload");
    let ready = client::get(admin, "admin", "/ready").await?;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
    for i in 0..20 {
        let reply = conn.get(HOST, &format!("/app/{i}")).await?;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "request {i}: {}",
            reply.text()
        );
        assert_eq!(reply.echo()?.upstream, "good");
    }
    for _ in 0..3 {
        assert_eq!(conn.get(HOST, "/pooled").await?.echo()?.upstream, "pooled");
    }
    assert_eq!(
        pooled.connections(),
        pooled_connections,
        "requests after the reload reused the pooled upstream connection"
    );
    assert!(
        sick.seen().iter().all(|e| e.path == "/healthz"),
        "only health checks reached the unhealthy endpoint: {:?}",
        sick.seen()
    );
    let config_json = admin_config(admin).await?;
    assert_eq!(reloads(&config_json), (1, 0), "{config_json}");
    eprintln!(
        "health checks of the sick endpoint: {sick_requests} before the reload, {} after",
        sick.requests()
    );
    Ok(())
}

/// The names of the listeners `/config` says are running, and of those its config lists.
fn listener_names(config: &Value) -> Result<(Vec<String>, Vec<String>)> {
    let mut running: Vec<String> = config["listeners"]
        .as_object()
        .context("/config has a listeners map")?
        .keys()
        .cloned()
        .collect();
    let mut configured: Vec<String> = config["config"]["listeners"]
        .as_array()
        .context("/config has the config's listener list")?
        .iter()
        .filter_map(|l| l["name"].as_str().map(str::to_owned))
        .collect();
    running.sort();
    configured.sort();
    Ok((running, configured))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reloads_leave_exactly_the_configured_listeners_running() -> Result<()> {
    // Two reloads can run at once: the binary reloads its file on SIGHUP from its main thread,
    // while its control thread applies what the control plane (xDS) sends, which does not go
    // through `reload_file` (in process: `App::apply`, callable from any thread). Whatever
    // order they finish in, the listeners running must be those of the config that won.
    let a = Upstream::echo("a").await?;
    let b = Upstream::echo("b").await?;
    let base = routed(&a, &b, "a").set("ADMIN", "127.0.0.1:0");
    let base = base.text()?.to_owned();
    let proxy = Proxy::start(yaml(&base))?;
    let admin = proxy.admin();
    let dir = tempfile::tempdir()?;
    let without_path = dir.path().join("without.yaml");
    std::fs::write(&without_path, &base)?;
    let mut stray = Vec::new();
    for i in 0..20 {
        // One config adds listener `extra{i}`; the other has only `front`.
        let with = base.replace(
            "listeners:\n",
            &format!(
                "listeners:\n  - {{ name: extra{i}, listen: 127.0.0.1:0, http: {{ route_table: main }} }}\n"
            ),
        );
        let app = proxy.app();
        let barrier = std::sync::Barrier::new(2);
        let (r1, r2) = std::thread::scope(|s| {
            let one = s.spawn(|| {
                barrier.wait();
                let config = legate::config::parse(&with).map_err(|e| e.to_string())?;
                app.apply(config, legate::config::version_of(&with))
                    .map_err(|e| e.to_string())
            });
            let two = s.spawn(|| {
                barrier.wait();
                app.reload_file(&without_path).map_err(|e| e.to_string())
            });
            (one.join(), two.join())
        });
        r1.map_err(|_| anyhow::anyhow!("reload thread panicked"))?
            .map_err(anyhow::Error::msg)?;
        r2.map_err(|_| anyhow::anyhow!("reload thread panicked"))?
            .map_err(anyhow::Error::msg)?;
        let config = admin_config(admin).await?;
        let (running, configured) = listener_names(&config)?;
        if running != configured {
            stray.push(format!(
                "after round {i}: running {running:?}, configured {configured:?}"
            ));
        }
    }
    // A stray listener is not just bookkeeping: it still accepts and serves.
    let config = admin_config(admin).await?;
    let (running, configured) = listener_names(&config)?;
    let mut serving = Vec::new();
    for name in running.iter().filter(|n| !configured.contains(n)) {
        if let Some(addr) = proxy.app().listener_addr(name) {
            if upstream_of(addr).await.is_ok() {
                serving.push(format!("{name} at {addr}"));
            }
        }
    }
    ensure!(
        stray.is_empty(),
        "{} of 20 rounds left listeners running that no config lists (still serving: {serving:?}):\n{}",
        stray.len(),
        stray.join("\n")
    );
    Ok(())
}

// ---- reload under load ----------------------------------------------------------------------

/// Client loops' shared state. `phase` counts flips twice: odd while a flip is being applied,
/// even once it is known to be live (`/config` shows its version). A request that started and
/// ended within one even phase must have been routed by that phase's config.
struct Traffic {
    phase: AtomicU64,
    stop: AtomicBool,
    failures: Mutex<Vec<String>>,
    failed: AtomicU64,
    /// Per client: 1 + the last even phase in which it completed a request as expected.
    seen: Vec<AtomicU64>,
    requests: AtomicU64,
    queries: AtomicU64,
    /// The upstream that the config of an even phase routes to.
    expect: fn(u64) -> &'static str,
}

fn is_even(n: u64) -> bool {
    n & 1 == 0
}

/// Flips alternate: the initial config and even flips route to `a`, odd flips to `b`.
fn alternating(phase: u64) -> &'static str {
    if is_even(phase / 2) {
        "a"
    } else {
        "b"
    }
}

impl Traffic {
    fn new(clients: usize, expect: fn(u64) -> &'static str) -> Traffic {
        Traffic {
            expect,
            phase: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            failures: Mutex::new(Vec::new()),
            failed: AtomicU64::new(0),
            seen: (0..clients).map(|_| AtomicU64::new(0)).collect(),
            requests: AtomicU64::new(0),
            queries: AtomicU64::new(0),
        }
    }

    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        let mut failures = self.failures.lock().unwrap();
        if failures.len() < 20 {
            failures.push(what);
        }
    }

    fn has_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst) > 0
    }

    /// Records one HTTP request of client `id`, started in phase `start`.
    fn record_http(&self, id: usize, start: u64, reply: Result<Reply>) {
        let end = self.phase.load(Ordering::SeqCst);
        let reply = match reply {
            Ok(r) => r,
            Err(e) => return self.fail(format!("client {id}, phase {start}: {e:#}")),
        };
        if reply.status != StatusCode::OK {
            return self.fail(format!(
                "client {id}, phase {start}: {} {:?} ({:?})",
                reply.status,
                reply.legate_error(),
                reply.text()
            ));
        }
        self.requests.fetch_add(1, Ordering::SeqCst);
        let upstream = reply.upstream().unwrap_or("none");
        let expected = (self.expect)(start);
        if start == end && is_even(start) {
            if upstream == expected {
                self.seen[id].fetch_max(start + 1, Ordering::SeqCst);
            } else {
                self.fail(format!(
                    "client {id}: phase {start} routes to {expected}, but {upstream} answered"
                ));
            }
        } else if upstream != "a" && upstream != "b" {
            self.fail(format!("client {id}: answered by {upstream}"));
        }
    }

    /// Records a query of session `id`, started in phase `start`.
    fn record_query(&self, id: usize, start: u64) {
        self.queries.fetch_add(1, Ordering::SeqCst);
        if start == self.phase.load(Ordering::SeqCst) && is_even(start) {
            self.seen[id].fetch_max(start + 1, Ordering::SeqCst);
        }
    }

    /// Waits until every client completed a request within even phase `phase` (or something
    /// failed).
    async fn wait_all_seen(&self, phase: u64) -> Result<()> {
        eventually(RELOAD_LIMIT, || async {
            if self.has_failed() {
                return Ok(());
            }
            let behind: Vec<usize> = (0..self.seen.len())
                .filter(|i| self.seen[*i].load(Ordering::SeqCst) <= phase)
                .collect();
            ensure!(
                behind.is_empty(),
                "clients {behind:?} saw nothing in phase {phase}"
            );
            Ok(())
        })
        .await?;
        self.check()
    }

    fn check(&self) -> Result<()> {
        let failed = self.failed.load(Ordering::SeqCst);
        ensure!(
            failed == 0,
            "{failed} failures (after {} good requests, {} queries); the first:\n{}",
            self.requests.load(Ordering::SeqCst),
            self.queries.load(Ordering::SeqCst),
            self.failures.lock().unwrap().join("\n")
        );
        Ok(())
    }
}

/// [`ROUTED`] plus a Postgres listener `pg` over cluster `db` (`${DB}`) and, with `extra`, a
/// third HTTP listener `extra`.
fn load_config(a: &Upstream, b: &Upstream, db: SocketAddr, to: &str, extra: bool) -> Yaml {
    let mut listeners = String::from(
        "listeners:\n  - name: pg\n    listen: 127.0.0.1:0\n    \
         tcp: { cluster: db, protocol: postgres }\n",
    );
    if extra {
        listeners
            .push_str("  - { name: extra, listen: 127.0.0.1:0, http: { route_table: main } }\n");
    }
    let text = ROUTED.replace("listeners:\n", &listeners).replace(
        "clusters:\n",
        "clusters:\n  - { name: db, endpoints: [\"${DB}\"] }\n",
    );
    let (wa, wb) = if to == "a" { (100, 0) } else { (0, 100) };
    yaml(&text)
        .set("A", a.addr())
        .set("B", b.addr())
        .set("DB", db)
        .set("WA", wa)
        .set("WB", wb)
        .set("FRONT", "127.0.0.1:0")
        .set("BACKLOG", 1024)
}

/// `pgbench -S` runs of 2 s, one after another until `stop`; returns (runs, transactions).
async fn pgbench_runs(traffic: Arc<Traffic>, addr: SocketAddr) -> Result<(u64, u64)> {
    let (mut runs, mut transactions) = (0, 0);
    while !traffic.stop.load(Ordering::SeqCst) {
        let mut cmd = postgres::pgbench(addr)?;
        cmd.args(["-S", "-n", "-c", "2", "-j", "1", "-T", "2"]);
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .context("pgbench did not finish")?
            .context("running pgbench")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            traffic.fail(format!(
                "pgbench failed ({}):\n{stdout}\n{stderr}",
                out.status
            ));
            break;
        }
        let report = Pgbench::parse(&stdout)?;
        if report.failed > 0 || report.processed == 0 {
            traffic.fail(format!("pgbench run {runs}: {report:?}\n{stderr}"));
        }
        runs += 1;
        transactions += report.processed;
    }
    Ok((runs, transactions))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_fails_no_request_and_drops_no_session() -> Result<()> {
    const H1_CLIENTS: usize = 3;
    const H2_CONNECTIONS: usize = 2;
    const H2_TASKS: usize = 2;
    const PG_SESSIONS: usize = 3;
    const FLIPS: u64 = 20;

    let pg = PgSet::start(0).await?;
    pg.pgbench_init(1).await?;
    let a = Upstream::echo("a").await?;
    let b = Upstream::echo("b").await?;
    let db = pg.primary.addr();
    let (legate, _) = start_binary(load_config(&a, &b, db, "a", true)).await?;
    let (front, pg_front, admin) = (legate.addr("front"), legate.addr("pg"), legate.admin());
    let started = Instant::now();

    let clients = H1_CLIENTS + H2_CONNECTIONS * H2_TASKS + PG_SESSIONS;
    let traffic = Arc::new(Traffic::new(clients, alternating));
    let mut http = Vec::new();
    let mut id = 0;
    for _ in 0..H1_CLIENTS {
        let traffic = traffic.clone();
        let mut conn = Http1::connect(front).await?;
        http.push(tokio::spawn(async move {
            while !traffic.stop.load(Ordering::SeqCst) {
                let start = traffic.phase.load(Ordering::SeqCst);
                let reply = conn.get(HOST, "/").await;
                let broken = reply.is_err();
                traffic.record_http(id, start, reply);
                if broken {
                    break;
                }
            }
        }));
        id += 1;
    }
    for _ in 0..H2_CONNECTIONS {
        let conn = H2::connect(front).await?;
        for _ in 0..H2_TASKS {
            let (traffic, conn) = (traffic.clone(), conn.clone());
            http.push(tokio::spawn(async move {
                while !traffic.stop.load(Ordering::SeqCst) {
                    let start = traffic.phase.load(Ordering::SeqCst);
                    let reply = conn.get(HOST, "/").await;
                    let broken = reply.is_err();
                    traffic.record_http(id, start, reply);
                    if broken {
                        break;
                    }
                }
            }));
            id += 1;
        }
    }
    let mut sessions = Vec::new();
    for _ in 0..PG_SESSIONS {
        let traffic = traffic.clone();
        let session = Session::connect(pg_front).await?;
        let pid = session.value("SELECT pg_backend_pid()").await?;
        sessions.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !traffic.stop.load(Ordering::SeqCst) {
                n += 1;
                let start = traffic.phase.load(Ordering::SeqCst);
                let sql = format!("SELECT {n}, pg_backend_pid(), count(*) FROM pgbench_branches");
                match session.client.simple_query(&sql).await {
                    Ok(rows) => {
                        let row = rows.iter().find_map(|m| match m {
                            tokio_postgres::SimpleQueryMessage::Row(r) => {
                                Some((r.get(0).map(str::to_owned), r.get(1).map(str::to_owned)))
                            }
                            _ => None,
                        });
                        let expected = (Some(n.to_string()), Some(pid.clone()));
                        if row.as_ref() != Some(&expected) {
                            traffic.fail(format!("session {id}: {sql:?} returned {row:?}"));
                            break;
                        }
                        traffic.record_query(id, start);
                    }
                    Err(e) => {
                        traffic.fail(format!("session {id}, phase {start}: {e}"));
                        break;
                    }
                }
            }
            session
        }));
        id += 1;
    }
    let bench = tokio::spawn(pgbench_runs(traffic.clone(), pg_front));
    traffic.wait_all_seen(0).await?;

    let mut extra_addr: Option<SocketAddr> = Some(legate.addr("extra"));
    for flip in 1..=FLIPS {
        // Odd flips route to `b` and remove listener `extra`; even ones undo that.
        let (to, extra) = if flip % 2 == 1 {
            ("b", false)
        } else {
            ("a", true)
        };
        let next = binary_text(&load_config(&a, &b, db, to, extra))?;
        let next_version = legate::config::version_of(&next);
        traffic.phase.store(2 * flip - 1, Ordering::SeqCst);
        legate.write_config(yaml(&next))?;
        let config = wait_config(admin, &format!("at flip {flip}"), |c| {
            c["version"] == next_version.as_str()
        })
        .await
        .with_context(|| format!("flip {flip}; stderr:\n{}", legate.stderr_text()))?;
        traffic.phase.store(2 * flip, Ordering::SeqCst);

        let listeners = &config["listeners"];
        assert_eq!(
            listeners["front"],
            front.to_string(),
            "flip {flip}: {config}"
        );
        assert_eq!(
            listeners["pg"],
            pg_front.to_string(),
            "flip {flip}: {config}"
        );
        if extra {
            let addr: SocketAddr = listeners["extra"]
                .as_str()
                .with_context(|| format!("flip {flip}: no extra listener in {config}"))?
                .parse()?;
            assert_eq!(
                upstream_of(addr).await?,
                to,
                "flip {flip}: on listener extra"
            );
            extra_addr = Some(addr);
        } else {
            assert!(listeners.get("extra").is_none(), "flip {flip}: {config}");
            if let Some(gone) = extra_addr.take() {
                eventually(RELOAD_LIMIT, || refused(gone))
                    .await
                    .with_context(|| format!("flip {flip}: removed listener extra"))?;
            }
        }
        // Every HTTP client, on its own connection, is routed by the new config, and every
        // session answered after it was applied.
        traffic
            .wait_all_seen(2 * flip)
            .await
            .with_context(|| format!("flip {flip}"))?;
    }
    let flipped_in = started.elapsed();

    traffic.stop.store(true, Ordering::SeqCst);
    for task in http {
        task.await?;
    }
    let mut open = Vec::new();
    for task in sessions {
        open.push(task.await?);
    }
    let (runs, transactions) = bench.await??;
    traffic.check()?;
    for (i, session) in open.iter().enumerate() {
        assert!(!session.is_closed(), "session {i} was dropped");
        assert_eq!(session.value("SELECT 'still here'").await?, "still here");
    }
    let config = admin_config(admin).await?;
    assert_eq!(reloads(&config), (FLIPS, 0), "{config}");
    let requests = traffic.requests.load(Ordering::SeqCst);
    let queries = traffic.queries.load(Ordering::SeqCst);
    ensure!(
        runs >= 1 && transactions > 0,
        "pgbench ran {runs} times, {transactions} transactions"
    );
    // Pools survive reloads: recreating them on each flip would open tens of connections.
    for upstream in [&a, &b] {
        assert!(
            upstream.connections() < 30,
            "{} accepted {} connections from Legate",
            upstream.name(),
            upstream.connections()
        );
    }
    eprintln!(
        "{FLIPS} flips in {flipped_in:?}: {requests} HTTP requests, {queries} queries, \
         {runs} pgbench runs with {transactions} transactions; upstream connections: a {}, b {}",
        a.connections(),
        b.connections()
    );
    Ok(())
}

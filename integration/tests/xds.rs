//! xDS-lite end to end: the `legate-xds` control plane (in process through
//! `legate_xds::serve`, or the real binary) serving a directory of node groups to real Legate
//! proxies (in process, or the `legate` binary), which route to real upstreams. Operator
//! changes go through the `legate-xds endpoint …` CLI binary and the operator HTTP API.
//!
//! Rules `R1`..`R14` are those of `xds/PROTOCOL.md`.
//!
//! Needs `cargo build -p legate --bin legate -p legate-xds --bin legate-xds` first.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use http::{Method, StatusCode};
use legate_integration::client::{self, Http1};
use legate_integration::eventually;
use legate_integration::process::{self, Legate};
use legate_integration::proxy::{yaml, Proxy, Yaml};
use legate_integration::upstream::{closed_port, Upstream};
use legate_xds::cli::CliError;
use legate_xds::{serve, ServeConfig, ServerHandle};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a push (file change or operator change) may take to reach a proxy: "within a
/// second or so", with slack for a loaded machine.
const PUSH: Duration = Duration::from_secs(2);
/// How long a (re)connection to the control plane may take, back-off included (R13).
const CONNECT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The control plane's directory and the resources in it

/// Listener `front` on an ephemeral port, serving route table `main`.
const LISTENERS: &str = r#"
listeners:
  - { name: front, listen: "127.0.0.1:0", http: { route_table: main } }
"#;

/// Route table `main`: everything to `cluster`.
fn routes(cluster: &str) -> String {
    yaml(
        r#"
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes: [{ match: { prefix: / }, cluster: ${CLUSTER} }]
"#,
    )
    .set("CLUSTER", cluster)
    .text()
    .unwrap()
    .to_owned()
}

/// Round-robin clusters, each with the given upstreams as endpoints of weight 1.
fn clusters(list: &[(&str, &[&Upstream])]) -> String {
    let mut out = String::from("clusters:\n");
    for (name, upstreams) in list {
        let endpoints: Vec<String> = upstreams
            .iter()
            .map(|u| format!("\"{}\"", u.addr()))
            .collect();
        out.push_str(&format!(
            "  - {{ name: {name}, lb: round_robin, endpoints: [{}] }}\n",
            endpoints.join(", ")
        ));
    }
    out
}

/// A temporary `DIR/<group>/*.yaml` tree and a state file path next to it.
struct Files {
    root: tempfile::TempDir,
}

impl Files {
    fn new() -> Result<Files> {
        let root = tempfile::tempdir()?;
        std::fs::create_dir(root.path().join("groups"))?;
        Ok(Files { root })
    }

    fn groups(&self) -> PathBuf {
        self.root.path().join("groups")
    }

    fn state(&self) -> PathBuf {
        self.root.path().join("state.json")
    }

    /// Writes `DIR/group/file` atomically (a hidden temporary file renamed into place), so
    /// the control plane never loads half a file.
    fn write(&self, group: &str, file: &str, text: &str) -> Result<()> {
        let dir = self.groups().join(group);
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, dir.join(file))?;
        Ok(())
    }

    /// A group with listener `front` → route table `main` → `route_to`, and `clusters`.
    fn group(&self, group: &str, route_to: &str, clusters: &str) -> Result<()> {
        self.write(group, "listeners.yaml", LISTENERS)?;
        self.write(group, "routes.yaml", &routes(route_to))?;
        self.write(group, "clusters.yaml", clusters)
    }

    /// The control plane in process, on `listen` (port 0: any).
    async fn serve(&self, listen: SocketAddr) -> Result<ServerHandle> {
        serve(ServeConfig {
            dir: self.groups(),
            listen,
            store: legate_xds::StateStore::File(self.state()),
            tls: None,
            roles: None,
            audit: None,
            limits: legate_xds::server::Limits::default(),
        })
        .await
        .context("starting legate-xds in process")
    }
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

// ---------------------------------------------------------------------------------------------
// The legate-xds binary

/// Runs `legate-xds ARGS…` (an operator command) to completion.
async fn xds_cli(args: &[&str]) -> Result<Output> {
    tokio::time::timeout(
        Duration::from_secs(15),
        Command::new(process::xds_binary())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("legate-xds did not exit in time")?
    .context("running legate-xds")
}

/// Runs an operator command that must succeed; returns its stdout.
async fn operator_ok(args: &[&str]) -> Result<String> {
    let out = xds_cli(args).await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.success(),
        "legate-xds {args:?} failed ({}): stdout {stdout:?} stderr {stderr:?}",
        out.status
    );
    Ok(stdout)
}

/// `legate-xds serve` as a subprocess; killed when dropped.
struct XdsProcess {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl XdsProcess {
    /// Starts `legate-xds serve --dir --listen --state` and waits until `/v1/status` answers.
    async fn start(files: &Files, listen: SocketAddr) -> Result<XdsProcess> {
        let mut child = Command::new(process::xds_binary())
            .arg("serve")
            .arg("--dir")
            .arg(files.groups())
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--state")
            .arg(files.state())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawning legate-xds serve")?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(err) = child.stderr.take() {
            let sink = stderr.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        let mut xds = XdsProcess { child, stderr };
        let deadline = tokio::time::Instant::now() + CONNECT;
        loop {
            if let Some(status) = xds.child.try_wait()? {
                bail!(
                    "legate-xds exited ({status}) before serving; stderr:\n{}",
                    xds.stderr_text()
                );
            }
            if get_json(listen, "/v1/status").await.is_ok() {
                return Ok(xds);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "legate-xds did not serve on {listen} within {CONNECT:?}; stderr:\n{}",
                    xds.stderr_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// SIGKILL, and waits for the process to be gone.
    async fn kill(&mut self) -> Result<()> {
        self.child.kill().await.context("killing legate-xds")
    }
}

// ---------------------------------------------------------------------------------------------
// Proxies

/// A bootstrap file: who the proxy is and where its control plane is; nothing else.
fn bootstrap(id: &str, group: &str, xds: SocketAddr) -> Yaml {
    yaml(
        r#"
node: { id: ${ID}, cluster: ${GROUP}, zone: a }
xds: { server: "${XDS}" }
admin: { listen: 127.0.0.1:0 }
access_log: { enabled: false }
runtime: { workers: 1 }
"#,
    )
    .set("ID", id)
    .set("GROUP", group)
    .set("XDS", xds)
}

/// An in-process proxy of node group `group`, ready (R12).
async fn start_proxy(id: &str, group: &str, xds: SocketAddr) -> Result<Proxy> {
    let proxy = Proxy::start(bootstrap(id, group, xds))?;
    proxy
        .wait_ready()
        .await
        .with_context(|| format!("proxy {id} of group {group} never became ready"))?;
    Ok(proxy)
}

/// `GET path` answered 200, as JSON.
async fn get_json(addr: SocketAddr, path: &str) -> Result<Value> {
    let reply = client::get(addr, "admin", path).await?;
    ensure!(
        reply.status == StatusCode::OK,
        "GET {path} on {addr}: {} {}",
        reply.status,
        reply.text()
    );
    reply.json()
}

/// The `xds` section of a proxy's `/config`.
async fn proxy_xds(admin: SocketAddr) -> Result<Value> {
    Ok(get_json(admin, "/config").await?["xds"].clone())
}

/// An endpoint's entry in a proxy's `/clusters`.
async fn proxy_endpoint(admin: SocketAddr, cluster: &str, address: SocketAddr) -> Result<Value> {
    let clusters = get_json(admin, "/clusters").await?;
    let cluster = clusters["clusters"]
        .as_array()
        .context("/clusters has a list")?
        .iter()
        .find(|c| c["name"] == cluster)
        .with_context(|| format!("no cluster {cluster:?} in {clusters:#}"))?;
    cluster["endpoints"]
        .as_array()
        .context("a cluster has endpoints")?
        .iter()
        .find(|e| e["address"] == address.to_string())
        .cloned()
        .with_context(|| format!("no endpoint {address} in {cluster:#}"))
}

/// The cluster names in a proxy's `/clusters`.
async fn proxy_cluster_names(admin: SocketAddr) -> Result<Vec<String>> {
    let clusters = get_json(admin, "/clusters").await?;
    Ok(clusters["clusters"]
        .as_array()
        .context("/clusters has a list")?
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect())
}

/// The control plane's session of proxy `node` in `/v1/status`.
async fn session(xds: SocketAddr, node: &str) -> Result<Value> {
    let status = get_json(xds, "/v1/status").await?;
    status["proxies"]
        .as_array()
        .context("/v1/status has proxies")?
        .iter()
        .find(|p| p["node"]["id"] == node)
        .cloned()
        .with_context(|| format!("no session of {node} in {status:#}"))
}

/// What the control plane serves group `group` now (`versions`, `endpoints`, `errors`).
async fn group_status(xds: SocketAddr, group: &str) -> Result<Value> {
    let status = get_json(xds, "/v1/status").await?;
    let g = status["groups"][group].clone();
    ensure!(g.is_object(), "no group {group:?} in {status:#}");
    Ok(g)
}

/// Which upstream answers `GET /` on `addr` (every answer must be a 200 from an upstream).
async fn served_by(addr: SocketAddr) -> Result<String> {
    let reply = client::get(addr, "example.org", "/").await?;
    ensure!(
        reply.status == StatusCode::OK,
        "GET / answered {} ({:?}, legate-error {:?})",
        reply.status,
        reply.text(),
        reply.legate_error()
    );
    Ok(reply.upstream().context("no x-upstream header")?.to_owned())
}

/// `n` requests on one connection, counted by the upstream that answered. Every request must
/// succeed: the proxy never stops serving while its config changes.
async fn tally(addr: SocketAddr, n: usize) -> Result<BTreeMap<String, usize>> {
    let mut conn = Http1::connect(addr).await?;
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let reply = conn.get("example.org", "/").await?;
        ensure!(
            reply.status == StatusCode::OK,
            "a request failed: {} {:?}",
            reply.status,
            reply.text()
        );
        let name = reply.upstream().context("no x-upstream header")?.to_owned();
        *counts.entry(name).or_default() += 1;
    }
    Ok(counts)
}

fn counts(list: &[(&str, usize)]) -> BTreeMap<String, usize> {
    list.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

// ---------------------------------------------------------------------------------------------
// Tests

/// R7, R8, R9, R12: a proxy whose control plane is not up yet is not ready; once it is, the
/// proxy gets all four resource types, turns ready and routes to the real upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_makes_the_proxy_ready_and_routes_to_real_upstreams() -> Result<()> {
    let tiles = Upstream::echo("tiles").await?;
    let files = Files::new()?;
    files.group("maps", "tiles", &clusters(&[("tiles", &[&tiles])]))?;

    // The proxy first, towards a port where nothing listens yet.
    let xds_addr = SocketAddr::from(([127, 0, 0, 1], process::free_port()));
    let proxy = Proxy::start(bootstrap("p1", "maps", xds_addr))?;
    let admin = proxy.admin();
    let ready = client::get(admin, "admin", "/ready").await?;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "R12: not ready before any config: {}",
        ready.text()
    );
    let xds = eventually(PUSH, || async {
        let xds = proxy_xds(admin).await?;
        ensure!(xds["last_error"].is_string(), "no connect error yet: {xds}");
        Ok(xds)
    })
    .await?;
    assert_eq!(xds["connected"], false, "{xds:#}");
    assert_eq!(xds["server"], xds_addr.to_string(), "{xds:#}");
    assert!(
        proxy.app().listener_addr("front").is_none(),
        "no listener before the control plane sends one"
    );

    // Now the control plane, on that port: the proxy reconnects (R13) and syncs.
    let server = files.serve(xds_addr).await?;
    proxy.wait_ready().await?;
    let front = proxy.addr("front");
    assert_eq!(served_by(front).await?, "tiles");

    // The proxy holds exactly what the group is served (R6), and says so in /config.
    let group = group_status(xds_addr, "maps").await?;
    assert_eq!(group["errors"], json!([]), "{group:#}");
    let xds = proxy_xds(admin).await?;
    assert_eq!(xds["connected"], true, "{xds:#}");
    assert!(xds["last_nack"].is_null(), "{xds:#}");
    for t in ["listeners", "route_tables", "clusters"] {
        assert_eq!(xds["versions"][t], group["versions"][t], "{t}: {xds:#}");
    }
    assert_eq!(
        xds["endpoint_versions"]["tiles"], group["endpoints"]["tiles"],
        "{xds:#}"
    );
    let config = get_json(admin, "/config").await?;
    assert_eq!(config["listeners"]["front"], front.to_string());

    // The control plane has the session (R7) with every type ACKed (R10).
    let s = eventually(PUSH, || async {
        let s = session(xds_addr, "p1").await?;
        for t in ["listeners", "route_tables", "clusters", "endpoints"] {
            ensure!(
                s["versions"][t]["acked"] == group["versions"][t],
                "{t} not ACKed yet: {s:#}"
            );
            ensure!(s["versions"][t]["in_flight"] == 0, "{t} in flight: {s:#}");
        }
        Ok(s)
    })
    .await?;
    assert_eq!(
        s["node"],
        json!({"id": "p1", "cluster": "maps", "zone": "a"}),
        "{s:#}"
    );
    assert_eq!(s["group"], "known");
    assert!(s["last_nack"].is_null(), "{s:#}");
    assert_eq!(
        s["endpoints"]["tiles"]["acked"], group["endpoints"]["tiles"],
        "{s:#}"
    );
    drop(proxy);
    server.shutdown().await;
    Ok(())
}

/// R8, R10: a file change is pushed (only the type that changed), applied, and ACKed; the
/// listener is not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_change_is_pushed_applied_and_acked() -> Result<()> {
    let a = Upstream::echo("a").await?;
    let b = Upstream::echo("b").await?;
    let files = Files::new()?;
    files.group("maps", "a", &clusters(&[("a", &[&a]), ("b", &[&b])]))?;
    let server = files.serve(any_port()).await?;
    let xds_addr = server.local_addr();
    let proxy = start_proxy("p1", "maps", xds_addr).await?;
    let front = proxy.addr("front");
    assert_eq!(served_by(front).await?, "a");
    let before = eventually(PUSH, || async {
        let s = session(xds_addr, "p1").await?;
        ensure!(s["versions"]["route_tables"]["acked"].is_string(), "{s:#}");
        Ok(s)
    })
    .await?;

    files.write("maps", "routes.yaml", &routes("b"))?;

    eventually(PUSH, || async {
        let by = served_by(front).await?;
        ensure!(by == "b", "still served by {by}");
        Ok(())
    })
    .await?;
    let group = group_status(xds_addr, "maps").await?;
    assert_ne!(
        group["versions"]["route_tables"], before["versions"]["route_tables"]["acked"],
        "a new content gives a new version (R14)"
    );
    let s = eventually(PUSH, || async {
        let s = session(xds_addr, "p1").await?;
        ensure!(
            s["versions"]["route_tables"]["acked"] == group["versions"]["route_tables"],
            "the new route table is not ACKed: {s:#}"
        );
        Ok(s)
    })
    .await?;
    for t in ["listeners", "clusters", "endpoints"] {
        assert_eq!(
            s["versions"][t], before["versions"][t],
            "R8: {t} did not change, so it was not sent again"
        );
    }
    let xds = proxy_xds(proxy.admin()).await?;
    assert_eq!(
        xds["versions"]["route_tables"], group["versions"]["route_tables"],
        "{xds:#}"
    );
    assert_eq!(proxy.addr("front"), front, "the listener was not rebound");

    // A file that does not parse: the group keeps its last good resources; nothing is pushed.
    files.write("maps", "broken.yaml", "clusters: [")?;
    let failing = eventually(PUSH, || async {
        let g = group_status(xds_addr, "maps").await?;
        ensure!(
            g["errors"].as_array().is_some_and(|e| !e.is_empty()),
            "{g:#}"
        );
        Ok(g)
    })
    .await?;
    assert_eq!(failing["versions"], group["versions"], "{failing:#}");
    assert_eq!(served_by(front).await?, "b");
    let s_failing = session(xds_addr, "p1").await?;
    assert_eq!(s_failing["versions"], s["versions"], "nothing was pushed");
    assert!(s_failing["last_nack"].is_null(), "{s_failing:#}");

    // Fixed, and a second listener added: it is bound, the first one stays as it was.
    std::fs::remove_file(files.groups().join("maps/broken.yaml"))?;
    files.write(
        "maps",
        "listeners.yaml",
        r#"
listeners:
  - { name: front, listen: "127.0.0.1:0", http: { route_table: main } }
  - { name: second, listen: "127.0.0.1:0", http: { route_table: main } }
"#,
    )?;
    let second = eventually(PUSH, || async {
        proxy
            .app()
            .listener_addr("second")
            .context("listener second is not bound yet")
    })
    .await?;
    assert_eq!(served_by(second).await?, "b");
    assert_eq!(proxy.addr("front"), front, "front was not rebound");
    assert_eq!(served_by(front).await?, "b");
    Ok(())
}

/// R8, R9, R12: a cluster removed together with the route that used it (one file change,
/// valid as a whole). The proxy must converge on the group's config: the route moved and the
/// cluster gone, with nothing NACKed along the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_cluster_with_the_route_to_it_converges() -> Result<()> {
    let a = Upstream::echo("a").await?;
    let b = Upstream::echo("b").await?;
    let files = Files::new()?;
    // One file, so the change is one snapshot.
    let all = |route_to: &str, clusters_yaml: &str| {
        format!("{LISTENERS}{}{clusters_yaml}", routes(route_to))
    };
    files.write(
        "maps",
        "all.yaml",
        &all("b", &clusters(&[("a", &[&a]), ("b", &[&b])])),
    )?;
    let server = files.serve(any_port()).await?;
    let xds_addr = server.local_addr();
    let proxy = start_proxy("p1", "maps", xds_addr).await?;
    let admin = proxy.admin();
    let front = proxy.addr("front");
    assert_eq!(served_by(front).await?, "b");

    let before = group_status(xds_addr, "maps").await?;
    files.write("maps", "all.yaml", &all("a", &clusters(&[("a", &[&a])])))?;
    let group = eventually(PUSH, || async {
        let g = group_status(xds_addr, "maps").await?;
        ensure!(g["versions"] != before["versions"], "not reloaded yet");
        let s = session(xds_addr, "p1").await?;
        for t in ["route_tables", "clusters", "endpoints"] {
            ensure!(
                s["versions"][t]["in_flight"] == 0 && s["versions"][t]["sent"] == g["versions"][t],
                "{t} not answered yet: {s:#}"
            );
        }
        Ok(g)
    })
    .await?;
    let result = eventually(PUSH, || async {
        let by = served_by(front).await?;
        ensure!(by == "a", "still served by {by}");
        let names = proxy_cluster_names(admin).await?;
        ensure!(names == ["a"], "the proxy has clusters {names:?}");
        Ok(())
    })
    .await;
    let s = session(xds_addr, "p1").await?;
    result.with_context(|| format!("group {group:#}\nsession {s:#}"))?;
    assert!(s["last_nack"].is_null(), "{s:#}");
    for t in ["route_tables", "clusters", "endpoints"] {
        assert_eq!(
            s["versions"][t]["acked"], group["versions"][t],
            "{t}: {s:#}"
        );
    }
    Ok(())
}

/// R7, R12: a proxy of a group the control plane does not have yet gets empty resources (and
/// is ready, serving nothing); when the group's directory appears, its resources arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_created_later_reaches_its_waiting_proxy() -> Result<()> {
    let tiles = Upstream::echo("tiles").await?;
    let files = Files::new()?;
    files.group("maps", "tiles", &clusters(&[("tiles", &[&tiles])]))?;
    let server = files.serve(any_port()).await?;
    let xds_addr = server.local_addr();
    let proxy = start_proxy("late1", "late", xds_addr).await?;
    let config = get_json(proxy.admin(), "/config").await?;
    assert_eq!(config["listeners"], json!({}), "{config:#}");
    let s = session(xds_addr, "late1").await?;
    assert_eq!(s["group"], "unknown", "{s:#}");

    // The whole group at once: written in a hidden directory, then renamed into place.
    let staging = files.groups().join(".late.tmp");
    std::fs::create_dir(&staging)?;
    let text = format!(
        "{LISTENERS}{}{}",
        routes("tiles"),
        clusters(&[("tiles", &[&tiles])])
    );
    std::fs::write(staging.join("all.yaml"), text)?;
    std::fs::rename(&staging, files.groups().join("late"))?;

    let front = eventually(PUSH, || async {
        proxy
            .app()
            .listener_addr("front")
            .context("listener front is not bound yet")
    })
    .await?;
    eventually(PUSH, || async {
        let by = served_by(front).await?;
        ensure!(by == "tiles", "served by {by}");
        Ok(())
    })
    .await?;
    let s = session(xds_addr, "late1").await?;
    assert_eq!(s["group"], "known", "{s:#}");
    Ok(())
}

/// The bootstrap file's static listeners, route tables and clusters are served alongside the
/// control plane's resources, and a dynamic route may use a static cluster (R12: validated
/// as one config).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_bootstrap_resources_combine_with_dynamic_ones() -> Result<()> {
    let tiles = Upstream::echo("tiles").await?;
    let local = Upstream::echo("local").await?;
    let files = Files::new()?;
    files.write("maps", "listeners.yaml", LISTENERS)?;
    files.write(
        "maps",
        "routes.yaml",
        r#"
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes:
          - { match: { prefix: /static }, cluster: static-app }
          - { match: { prefix: / }, cluster: tiles }
"#,
    )?;
    files.write("maps", "clusters.yaml", &clusters(&[("tiles", &[&tiles])]))?;
    let server = files.serve(any_port()).await?;
    let xds_addr = server.local_addr();
    let proxy = Proxy::start(
        yaml(
            r#"
node: { id: p1, cluster: maps, zone: a }
xds: { server: "${XDS}" }
admin: { listen: 127.0.0.1:0 }
access_log: { enabled: false }
runtime: { workers: 1 }
listeners:
  - { name: local, listen: 127.0.0.1:0, http: { route_table: local } }
route_tables:
  local:
    virtual_hosts: [{ hosts: ["*"], routes: [{ match: { prefix: / }, cluster: static-app }] }]
clusters:
  - { name: static-app, endpoints: ["${LOCAL}"] }
"#,
        )
        .set("XDS", xds_addr)
        .set("LOCAL", local.addr()),
    )?;
    proxy.wait_ready().await?;
    let front = proxy.addr("front");
    assert_eq!(served_by(front).await?, "tiles");
    let reply = client::get(front, "example.org", "/static/x").await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.upstream(), Some("local"));
    assert_eq!(served_by(proxy.addr("local")).await?, "local");
    assert_eq!(
        proxy_cluster_names(proxy.admin()).await?,
        ["static-app", "tiles"]
    );
    Ok(())
}

/// A reloaded bootstrap file is applied together with the control plane's resources, as one
/// reload: a file whose combination with them is invalid is rejected like any bad file (the
/// running config, bootstrap and resources stay), and a later good file is applied with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_reload_is_checked_with_the_control_planes_resources() -> Result<()> {
    let tiles = Upstream::echo("tiles").await?;
    let local = Upstream::echo("local").await?;
    let files = Files::new()?;
    files.group("maps", "tiles", &clusters(&[("tiles", &[&tiles])]))?;
    let server = files.serve(any_port()).await?;
    let xds_addr = server.local_addr();
    let proxy = start_proxy("p1", "maps", xds_addr).await?;
    let front = proxy.addr("front");
    assert_eq!(served_by(front).await?, "tiles");
    let before = get_json(proxy.admin(), "/config").await?;

    // The file now defines a cluster the control plane also defines.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("legate.yaml");
    let base = bootstrap("p1", "maps", xds_addr).text()?.to_owned();
    let clash = format!(
        "{base}clusters:\n  - {{ name: tiles, endpoints: [\"{}\"] }}\n",
        local.addr()
    );
    std::fs::write(&path, &clash)?;
    let error = proxy
        .app()
        .reload_file(&path)
        .err()
        .context("a bootstrap that clashes with the control plane must be rejected")?;
    assert!(
        error
            .to_string()
            .contains("duplicate cluster name \"tiles\""),
        "{error}"
    );
    let after = get_json(proxy.admin(), "/config").await?;
    assert_eq!(
        after["version"], before["version"],
        "the running config stays"
    );
    assert!(
        after["last_reload"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("duplicate cluster name")),
        "{after:#}"
    );
    assert_eq!(after["reloads"]["rejected"], 1, "{after:#}");
    assert_eq!(served_by(front).await?, "tiles");

    // A good file: its own cluster joins the control plane's.
    let good = format!(
        "{base}clusters:\n  - {{ name: local-app, endpoints: [\"{}\"] }}\n",
        local.addr()
    );
    std::fs::write(&path, &good)?;
    proxy.app().reload_file(&path)?;
    assert_eq!(
        proxy_cluster_names(proxy.admin()).await?,
        ["local-app", "tiles"]
    );
    assert_eq!(served_by(front).await?, "tiles");
    Ok(())
}

/// `GET /metrics` on the control plane: proxies connected and in sync by group, the versions
/// each group serves, the updates sent and acknowledged, and how long an operator change took
/// to reach the group's proxies; Prometheus text that promtool accepts, or OpenMetrics when
/// asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_counts_proxies_versions_and_acks_in_metrics() -> Result<()> {
    let tiles = Upstream::echo("tiles").await?;
    let files = Files::new()?;
    files.group("maps", "tiles", &clusters(&[("tiles", &[&tiles])]))?;
    let server = files.serve(any_port()).await?;
    let xds_addr = server.local_addr();
    let proxy = start_proxy("p1", "maps", xds_addr).await?;
    assert_eq!(served_by(proxy.addr("front")).await?, "tiles");
    let versions = group_status(xds_addr, "maps").await?["versions"].clone();

    // Every update the ready proxy was sent has been acknowledged once it is in sync.
    let text = eventually(PUSH, || async {
        let reply = client::get(xds_addr, "xds", "/metrics").await?;
        ensure!(reply.status == StatusCode::OK, "{}", reply.status);
        let text = reply.text();
        ensure!(
            text.contains("legate_xds_proxies_in_sync{group=\"maps\"} 1"),
            "not in sync yet:\n{text}"
        );
        Ok(text)
    })
    .await?;
    legate_integration::prometheus::check_metrics(&text).await?;
    assert!(
        text.contains("legate_xds_proxies_connected{group=\"maps\"} 1"),
        "{text}"
    );
    let clusters_version = versions["clusters"]
        .as_str()
        .context("a clusters version")?;
    assert!(
        text.contains(&format!(
            "legate_xds_group_version_info{{group=\"maps\",type=\"clusters\",version=\"{clusters_version}\"}} 1"
        )),
        "{text}"
    );
    let counter = |name: &str| -> Result<u64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .with_context(|| format!("no {name} in:\n{text}"))?;
        Ok(line.rsplit(' ').next().unwrap_or_default().parse()?)
    };
    let (sent, acks) = (
        counter("legate_xds_updates_sent_total")?,
        counter("legate_xds_acks_total")?,
    );
    assert!(
        sent >= 4,
        "clusters, endpoints, route tables, listeners: {sent}"
    );
    assert_eq!(acks, sent, "every update sent was acknowledged");
    assert_eq!(counter("legate_xds_nacks_total")?, 0);
    // Nothing changed while the proxy was connected: no change has been timed.
    assert!(!text.contains("legate_xds_change_propagation"), "{text}");

    // An operator change reaches the one proxy; its ACK times it.
    let answer = legate_xds::cli::request(
        &url(xds_addr),
        Method::POST,
        "/v1/endpoints/set-weight",
        Some(json!({"cluster": "tiles", "address": tiles.addr().to_string(), "weight": 3})),
    )
    .await?;
    assert_eq!(answer["result"], "ok", "{answer:#}");
    let text = eventually(PUSH, || async {
        let text = client::get(xds_addr, "xds", "/metrics").await?.text();
        ensure!(
            text.contains("legate_xds_change_propagation_seconds_count{group=\"maps\"} 1"),
            "the change is not timed yet:\n{text}"
        );
        Ok(text)
    })
    .await?;
    assert!(
        text.contains("legate_xds_last_change_propagation_seconds{group=\"maps\"}"),
        "{text}"
    );
    legate_integration::prometheus::check_metrics(&text).await?;

    let mut conn = client::Http1::connect(xds_addr).await?;
    let mut req = client::request(Method::GET, "xds", "/metrics");
    req.headers_mut().insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static("application/openmetrics-text"),
    );
    let open = conn.request(req).await?.text();
    assert!(open.trim_end().ends_with("# EOF"), "{open}");
    Ok(())
}

/// R10, R11: an invalid update is NACKed with the resource and the field path, changes
/// nothing on the proxy, and is never sent again; a later valid version is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_update_is_nacked_and_never_resent() -> Result<()> {
    let tiles = Upstream::echo("tiles").await?;
    let files = Files::new()?;
    files.group("maps", "tiles", &clusters(&[("tiles", &[&tiles])]))?;
    let server = files.serve(any_port()).await?;
    let xds_addr = server.local_addr();
    let proxy = start_proxy("p1", "maps", xds_addr).await?;
    let admin = proxy.admin();
    let front = proxy.addr("front");
    assert_eq!(served_by(front).await?, "tiles");
    let good = group_status(xds_addr, "maps").await?["versions"]["clusters"].clone();

    // connect_timeout must be > 0: the control plane serves it, the proxy's validation
    // refuses it.
    let bad_file = yaml(
        r#"
clusters:
  - { name: tiles, lb: round_robin, connect_timeout: 0s, endpoints: ["${TILES}"] }
"#,
    )
    .set("TILES", tiles.addr());
    files.write("maps", "clusters.yaml", bad_file.text()?)?;

    let nack = eventually(PUSH, || async {
        let s = session(xds_addr, "p1").await?;
        ensure!(s["last_nack"].is_object(), "no NACK yet: {s:#}");
        Ok(s)
    })
    .await?;
    let bad = group_status(xds_addr, "maps").await?["versions"]["clusters"].clone();
    assert_ne!(bad, good);
    let last = &nack["last_nack"];
    assert_eq!(last["type"], "clusters", "{nack:#}");
    assert_eq!(last["version"], bad, "the version refused: {nack:#}");
    assert_eq!(last["held"], good, "R10: the version still held: {nack:#}");
    let detail = last["error_detail"].as_array().context("error_detail")?;
    assert!(
        detail.iter().any(|d| d["name"] == "clusters[tiles]"
            && d["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("clusters[tiles].connect_timeout"))),
        "R10: the NACK names the resource and the field path: {nack:#}"
    );
    assert_eq!(nack["versions"]["clusters"]["acked"], good, "{nack:#}");
    assert_eq!(nack["versions"]["clusters"]["in_flight"], 0, "{nack:#}");

    // The proxy kept its config (all or nothing) and says why it refused.
    let xds = proxy_xds(admin).await?;
    let last_nack = xds["last_nack"].as_str().context("xds.last_nack is set")?;
    assert!(
        last_nack.contains("clusters[tiles].connect_timeout"),
        "{xds:#}"
    );
    assert_eq!(xds["versions"]["clusters"], good, "{xds:#}");
    assert_eq!(
        tally(front, 5).await?,
        counts(&[("tiles", 5)]),
        "still serving the old config"
    );

    // R11: make the session compute its updates again (an operator change pushes an endpoints
    // delta, answered after anything sent before it). Had the refused clusters version been
    // sent again, the proxy would have NACKed it again, with a new nonce.
    let answer = legate_xds::cli::request(
        &url(xds_addr),
        Method::POST,
        "/v1/endpoints/set-weight",
        Some(json!({"cluster": "tiles", "address": tiles.addr().to_string(), "weight": 3})),
    )
    .await?;
    assert_eq!(answer["result"], "ok", "{answer:#}");
    let eps = group_status(xds_addr, "maps").await?["endpoints"]["tiles"].clone();
    let after = eventually(PUSH, || async {
        let s = session(xds_addr, "p1").await?;
        ensure!(
            s["endpoints"]["tiles"]["acked"] == eps,
            "the delta is not ACKed yet: {s:#}"
        );
        Ok(s)
    })
    .await?;
    assert_eq!(
        after["last_nack"], nack["last_nack"],
        "R11: the refused version was sent again"
    );
    assert_eq!(after["versions"]["clusters"], nack["versions"]["clusters"]);
    assert_eq!(
        proxy_endpoint(admin, "tiles", tiles.addr()).await?["weight"],
        3,
        "a delta still applies on top of the config kept"
    );

    // A new, valid version is sent, applied and ACKed.
    let fixed = yaml(
        r#"
clusters:
  - { name: tiles, lb: round_robin, connect_timeout: 2s, endpoints: ["${TILES}"] }
"#,
    )
    .set("TILES", tiles.addr());
    files.write("maps", "clusters.yaml", fixed.text()?)?;
    let s = eventually(PUSH, || async {
        let s = session(xds_addr, "p1").await?;
        let acked = &s["versions"]["clusters"]["acked"];
        ensure!(acked != &good && acked != &bad, "not ACKed yet: {s:#}");
        Ok(s)
    })
    .await?;
    let xds = proxy_xds(admin).await?;
    assert_eq!(
        xds["versions"]["clusters"], s["versions"]["clusters"]["acked"],
        "{xds:#}"
    );

    // A route to a cluster nothing defines: a consistency error (R12), NACKed too.
    files.write("maps", "routes.yaml", &routes("nope"))?;
    let nack = eventually(PUSH, || async {
        let s = session(xds_addr, "p1").await?;
        ensure!(s["last_nack"]["type"] == "route_tables", "{s:#}");
        Ok(s)
    })
    .await?;
    let detail = nack["last_nack"]["error_detail"]
        .as_array()
        .context("error_detail")?;
    assert!(
        detail.iter().any(|d| d["name"] == "route_tables[main]"
            && d["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("route_tables.main") && e.contains("\"nope\""))),
        "{nack:#}"
    );
    assert_eq!(tally(front, 3).await?, counts(&[("tiles", 3)]));
    Ok(())
}

/// R10: a NACK of an endpoints delta reports the endpoints version the proxy still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoints_nack_reports_the_version_still_held() -> Result<()> {
    let tiles = Upstream::echo("tiles").await?;
    let files = Files::new()?;
    files.group("maps", "tiles", &clusters(&[("tiles", &[&tiles])]))?;
    let server = files.serve(any_port()).await?;
    let xds_addr = server.local_addr();
    let proxy = start_proxy("p1", "maps", xds_addr).await?;
    let held = eventually(PUSH, || async {
        let s = session(xds_addr, "p1").await?;
        let acked = s["versions"]["endpoints"]["acked"].clone();
        ensure!(acked.is_string(), "{s:#}");
        Ok(acked)
    })
    .await?;

    // Weight 0 is not allowed (docs/config.md, Endpoints): the proxy refuses the delta.
    let bad = yaml(
        r#"
clusters:
  - { name: tiles, lb: round_robin, endpoints: [{ address: "${TILES}", weight: 0 }] }
"#,
    )
    .set("TILES", tiles.addr());
    files.write("maps", "clusters.yaml", bad.text()?)?;
    let s = eventually(PUSH, || async {
        let s = session(xds_addr, "p1").await?;
        ensure!(s["last_nack"]["type"] == "endpoints", "{s:#}");
        Ok(s)
    })
    .await?;
    assert_eq!(served_by(proxy.addr("front")).await?, "tiles");
    assert_eq!(
        s["last_nack"]["held"], held,
        "R10: a NACK carries the last good version (version_info: LAST_GOOD): {s:#}"
    );
    Ok(())
}

/// R9, R10, R11: a delta is all or nothing; when it is NACKed for one cluster, the other
/// clusters' changes in it were not applied either and must be sent again with the next
/// delta (xds/src/session.rs: "they become due again").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_delta_does_not_swallow_the_good_changes_in_it() -> Result<()> {
    let tiles = Upstream::echo("tiles").await?;
    let other = Upstream::echo("other").await?;
    let files = Files::new()?;
    files.group(
        "maps",
        "tiles",
        &clusters(&[("tiles", &[&tiles]), ("other", &[&other])]),
    )?;
    let server = files.serve(any_port()).await?;
    let xds_addr = server.local_addr();
    let proxy = start_proxy("p1", "maps", xds_addr).await?;
    let admin = proxy.admin();

    // One file change: `other` gets weight 4 (valid), `tiles` weight 0 (invalid).
    let template = r#"
clusters:
  - { name: tiles, lb: round_robin, endpoints: [{ address: "${TILES}", weight: ${W} }] }
  - { name: other, lb: round_robin, endpoints: [{ address: "${OTHER}", weight: 4 }] }
"#;
    let file = |w: u32| {
        yaml(template)
            .set("TILES", tiles.addr())
            .set("OTHER", other.addr())
            .set("W", w)
    };
    files.write("maps", "clusters.yaml", file(0).text()?)?;
    eventually(PUSH, || async {
        let s = session(xds_addr, "p1").await?;
        ensure!(s["last_nack"]["type"] == "endpoints", "{s:#}");
        Ok(())
    })
    .await?;
    // The valid part (`other`) is sent again on its own right after the NACK (R11 holds back
    // only `tiles`), so its weight is checked below, once it has arrived.

    // Fix `tiles`: the next delta must bring both changes.
    files.write("maps", "clusters.yaml", file(2).text()?)?;
    eventually(PUSH, || async {
        let w = &proxy_endpoint(admin, "tiles", tiles.addr()).await?["weight"];
        ensure!(w == 2, "tiles weight {w}");
        Ok(())
    })
    .await?;
    let group = group_status(xds_addr, "maps").await?;
    let result = eventually(PUSH, || async {
        let w = &proxy_endpoint(admin, "other", other.addr()).await?["weight"];
        ensure!(w == 4, "other weight {w}");
        Ok(())
    })
    .await;
    let s = session(xds_addr, "p1").await?;
    result.with_context(|| {
        format!(
            "the valid change to `other` never arrived; group endpoints {:#}, session {s:#}",
            group["endpoints"]
        )
    })?;
    Ok(())
}

/// R9, R14: `legate-xds endpoint set-weight` (CLI) and the operator API change a weight;
/// it reaches the proxy as an endpoints delta within about a second, persisted first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_weight_change_reaches_the_proxy_as_a_delta() -> Result<()> {
    let a = Upstream::echo("a").await?;
    let b = Upstream::echo("b").await?;
    let o = Upstream::echo("o").await?;
    let files = Files::new()?;
    files.group(
        "maps",
        "tiles",
        &clusters(&[("tiles", &[&a, &b]), ("other", &[&o])]),
    )?;
    let server = files.serve(any_port()).await?;
    let xds_addr = server.local_addr();
    let proxy = start_proxy("p1", "maps", xds_addr).await?;
    let admin = proxy.admin();
    assert_eq!(proxy_endpoint(admin, "tiles", a.addr()).await?["weight"], 1);
    let before = proxy_xds(admin).await?;

    let a_addr = a.addr().to_string();
    let stdout = operator_ok(&[
        "endpoint",
        "set-weight",
        "tiles",
        &a_addr,
        "7",
        "--server",
        &url(xds_addr),
    ])
    .await?;
    assert!(
        stdout.contains(&format!("ok: set-weight tiles {a_addr}"))
            && stdout.contains("weight=7")
            && stdout.contains("node groups: maps"),
        "{stdout:?}"
    );
    // R14: persisted before it was acknowledged.
    let state: Value = serde_json::from_slice(&std::fs::read(files.state())?)?;
    assert_eq!(
        state["overrides"]["clusters"]["tiles"][&a_addr]["weight"], 7,
        "state file: {state:#}"
    );

    eventually(PUSH, || async {
        let w = &proxy_endpoint(admin, "tiles", a.addr()).await?["weight"];
        ensure!(w == 7, "weight is {w}");
        Ok(())
    })
    .await?;
    // R9: only the endpoints of `tiles` changed; no state-of-the-world type was sent again.
    let after = proxy_xds(admin).await?;
    assert_eq!(after["versions"], before["versions"], "{after:#}");
    assert_ne!(
        after["endpoint_versions"]["tiles"],
        before["endpoint_versions"]["tiles"]
    );
    assert_eq!(
        after["endpoint_versions"]["other"],
        before["endpoint_versions"]["other"]
    );
    assert_eq!(proxy_endpoint(admin, "tiles", b.addr()).await?["weight"], 1);

    // The same through the operator HTTP API.
    let answer = legate_xds::cli::request(
        &url(xds_addr),
        Method::POST,
        "/v1/endpoints/set-weight",
        Some(json!({"cluster": "tiles", "address": b.addr().to_string(), "weight": 3})),
    )
    .await?;
    assert_eq!(answer["override"], json!({"weight": 3}), "{answer:#}");
    eventually(PUSH, || async {
        let w = &proxy_endpoint(admin, "tiles", b.addr()).await?["weight"];
        ensure!(w == 3, "weight is {w}");
        Ok(())
    })
    .await?;
    let status = get_json(xds_addr, "/v1/status").await?;
    assert_eq!(
        status["overrides"],
        json!({"tiles": {a_addr: {"weight": 7}, b.addr().to_string(): {"weight": 3}}}),
        "{status:#}"
    );
    Ok(())
}

/// `depool`, `pool` and `set-weight` from the CLI move real traffic between two upstreams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_depool_and_set_weight_move_traffic() -> Result<()> {
    let a = Upstream::echo("a").await?;
    let b = Upstream::echo("b").await?;
    let files = Files::new()?;
    files.group("maps", "tiles", &clusters(&[("tiles", &[&a, &b])]))?;
    let server = files.serve(any_port()).await?;
    let xds_addr = server.local_addr();
    let server_url = url(xds_addr);
    let proxy = start_proxy("p1", "maps", xds_addr).await?;
    let front = proxy.addr("front");
    let (a_addr, b_addr) = (a.addr().to_string(), b.addr().to_string());

    // Round robin, equal weights: an even split.
    assert_eq!(tally(front, 20).await?, counts(&[("a", 10), ("b", 10)]));

    operator_ok(&[
        "endpoint",
        "depool",
        "tiles",
        &b_addr,
        "--server",
        &server_url,
    ])
    .await?;
    eventually(PUSH, || async {
        let c = tally(front, 10).await?;
        ensure!(c == counts(&[("a", 10)]), "after depool b: {c:?}");
        Ok(())
    })
    .await?;
    assert_eq!(
        proxy_endpoint(proxy.admin(), "tiles", b.addr()).await?["pooled"],
        false
    );

    operator_ok(&[
        "endpoint",
        "pool",
        "tiles",
        &b_addr,
        "--server",
        &server_url,
    ])
    .await?;
    eventually(PUSH, || async {
        let c = tally(front, 20).await?;
        ensure!(c == counts(&[("a", 10), ("b", 10)]), "after pool b: {c:?}");
        Ok(())
    })
    .await?;

    operator_ok(&[
        "endpoint",
        "set-weight",
        "tiles",
        &a_addr,
        "3",
        "--server",
        &server_url,
    ])
    .await?;
    eventually(PUSH, || async {
        let c = tally(front, 20).await?;
        ensure!(
            c == counts(&[("a", 15), ("b", 5)]),
            "after weight 3:1: {c:?}"
        );
        Ok(())
    })
    .await?;

    // `reset` drops every override of the endpoint: the file's weight applies again.
    operator_ok(&[
        "endpoint",
        "reset",
        "tiles",
        &a_addr,
        "--server",
        &server_url,
    ])
    .await?;
    eventually(PUSH, || async {
        let c = tally(front, 20).await?;
        ensure!(c == counts(&[("a", 10), ("b", 10)]), "after reset: {c:?}");
        Ok(())
    })
    .await?;
    Ok(())
}

/// R13, R14: the control plane is killed; the proxy keeps serving; a file changed while it
/// was down arrives once it is back (same port, dir and state file); the operator change made
/// before the kill survives; and what the proxy already holds is not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_survives_a_control_plane_restart_and_resyncs() -> Result<()> {
    let a = Upstream::echo("a").await?;
    let b = Upstream::echo("b").await?;
    let files = Files::new()?;
    files.group("maps", "a", &clusters(&[("a", &[&a]), ("b", &[&b])]))?;
    let xds_addr = SocketAddr::from(([127, 0, 0, 1], process::free_port()));
    let mut xds = XdsProcess::start(&files, xds_addr).await?;
    eventually(PUSH, || async {
        let stderr = xds.stderr_text();
        ensure!(
            stderr.contains("operator changes are accepted from loopback only"),
            "without client certificates the start warns: {stderr}"
        );
        Ok(())
    })
    .await?;

    // The real proxy binary this time.
    let legate = Legate::start(
        yaml(
            r#"
node: { id: p1, cluster: maps, zone: a }
xds: { server: "${XDS}" }
admin: { listen: "${ADMIN}" }
access_log: { enabled: false }
runtime: { workers: 1 }
"#,
        )
        .set("XDS", xds_addr),
    )
    .await?;
    let admin = legate.admin();
    let front = legate.addr("front");
    assert_eq!(served_by(front).await?, "a");
    let a_addr = a.addr().to_string();
    operator_ok(&[
        "endpoint",
        "set-weight",
        "a",
        &a_addr,
        "5",
        "--server",
        &url(xds_addr),
    ])
    .await?;
    eventually(PUSH, || async {
        let w = &proxy_endpoint(admin, "a", a.addr()).await?["weight"];
        ensure!(w == 5, "weight is {w}");
        Ok(())
    })
    .await?;
    let held = proxy_xds(admin).await?;

    xds.kill().await?;
    let down = eventually(PUSH, || async {
        let x = proxy_xds(admin).await?;
        ensure!(x["connected"] == false, "still connected: {x:#}");
        Ok(x)
    })
    .await?;
    assert!(down["last_error"].is_string(), "{down:#}");
    assert_eq!(
        tally(front, 5).await?,
        counts(&[("a", 5)]),
        "R13: the last good config keeps serving"
    );
    let ready = client::get(admin, "admin", "/ready").await?;
    assert_eq!(
        ready.status,
        StatusCode::OK,
        "still ready while disconnected"
    );

    // A change made while the control plane is down.
    files.write("maps", "routes.yaml", &routes("b"))?;
    let xds = XdsProcess::start(&files, xds_addr).await?;
    let result = eventually(CONNECT, || async {
        let x = proxy_xds(admin).await?;
        ensure!(x["connected"] == true, "not reconnected: {x:#}");
        let by = served_by(front).await?;
        ensure!(by == "b", "still served by {by}");
        Ok(())
    })
    .await;
    result.with_context(|| {
        format!(
            "legate stderr:\n{}\nlegate-xds stderr:\n{}",
            legate.stderr_text(),
            xds.stderr_text()
        )
    })?;

    // R14: the operator change survived the restart; its content-derived versions did not
    // change, so the proxy's hello (R7) already matched and nothing but the route table was
    // sent (R13).
    assert_eq!(proxy_endpoint(admin, "a", a.addr()).await?["weight"], 5);
    let group = group_status(xds_addr, "maps").await?;
    let s = eventually(PUSH, || async {
        let s = session(xds_addr, "p1").await?;
        ensure!(
            s["versions"]["route_tables"]["acked"] == group["versions"]["route_tables"],
            "{s:#}"
        );
        Ok(s)
    })
    .await?;
    for t in ["listeners", "clusters"] {
        assert_eq!(s["versions"][t]["acked"], held["versions"][t], "{t}: {s:#}");
        assert!(
            s["versions"][t]["sent"].is_null(),
            "{t} was sent again after the restart: {s:#}"
        );
    }
    let status = get_json(xds_addr, "/v1/status").await?;
    assert_eq!(
        status["proxies"].as_array().map(Vec::len),
        Some(1),
        "{status:#}"
    );
    for (cluster, eps) in s["endpoints"].as_object().context("endpoints")? {
        assert!(
            eps["sent"].is_null(),
            "endpoints of {cluster} were sent again after the restart: {s:#}"
        );
    }
    // The proxy held the endpoints set's version too (it ACKed it), so its hello must name
    // it and no delta at all is due (R7, R13).
    assert!(
        s["versions"]["endpoints"]["sent"].is_null(),
        "an endpoints delta was sent again after the restart: {s:#}"
    );
    Ok(())
}

/// R7: the control plane chooses resources by the node group (`node.cluster`); two proxies
/// in different groups get different routes, clusters and upstreams, and an operator change
/// to one group's cluster does not touch the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_in_different_node_groups_get_different_configs() -> Result<()> {
    let maps_up = Upstream::echo("maps-backend").await?;
    let search_up = Upstream::echo("search-backend").await?;
    let files = Files::new()?;
    files.group("maps", "tegola", &clusters(&[("tegola", &[&maps_up])]))?;
    files.group(
        "search",
        "elastic",
        &clusters(&[("elastic", &[&search_up])]),
    )?;
    let server = files.serve(any_port()).await?;
    let xds_addr = server.local_addr();
    let maps = start_proxy("maps1", "maps", xds_addr).await?;
    let search = start_proxy("search1", "search", xds_addr).await?;

    assert_eq!(served_by(maps.addr("front")).await?, "maps-backend");
    assert_eq!(served_by(search.addr("front")).await?, "search-backend");
    assert_eq!(proxy_cluster_names(maps.admin()).await?, ["tegola"]);
    assert_eq!(proxy_cluster_names(search.admin()).await?, ["elastic"]);

    let maps_group = group_status(xds_addr, "maps").await?;
    let search_group = group_status(xds_addr, "search").await?;
    let (m, s) = eventually(PUSH, || async {
        let m = session(xds_addr, "maps1").await?;
        let s = session(xds_addr, "search1").await?;
        for t in ["route_tables", "clusters", "endpoints"] {
            ensure!(
                m["versions"][t]["acked"] == maps_group["versions"][t],
                "{m:#}"
            );
            ensure!(
                s["versions"][t]["acked"] == search_group["versions"][t],
                "{s:#}"
            );
        }
        Ok((m, s))
    })
    .await?;
    assert_eq!(m["node"]["cluster"], "maps");
    assert_eq!(s["node"]["cluster"], "search");
    assert_ne!(
        m["versions"]["clusters"]["acked"],
        s["versions"]["clusters"]["acked"]
    );

    let stdout = operator_ok(&[
        "endpoint",
        "depool",
        "tegola",
        &maps_up.addr().to_string(),
        "--server",
        &url(xds_addr),
    ])
    .await?;
    assert!(stdout.contains("(node groups: maps)"), "{stdout:?}");
    eventually(PUSH, || async {
        let p = &proxy_endpoint(maps.admin(), "tegola", maps_up.addr()).await?["pooled"];
        ensure!(p == false, "pooled is {p}");
        Ok(())
    })
    .await?;
    let reply = client::get(maps.addr("front"), "example.org", "/").await?;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "no pooled endpoint left: {:?}",
        reply.text()
    );
    assert_eq!(served_by(search.addr("front")).await?, "search-backend");
    let s_after = session(xds_addr, "search1").await?;
    assert_eq!(
        s_after["versions"], s["versions"],
        "the other group's proxy got nothing"
    );
    Ok(())
}

/// Bad operator input: the CLI exits non-zero with the reason, and nothing changes (no
/// override, no state file, no push).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_operator_input_is_refused_and_changes_nothing() -> Result<()> {
    let tiles = Upstream::echo("tiles").await?;
    let files = Files::new()?;
    files.group("maps", "tiles", &clusters(&[("tiles", &[&tiles])]))?;
    let server = files.serve(any_port()).await?;
    let xds_addr = server.local_addr();
    let server_url = url(xds_addr);
    let proxy = start_proxy("p1", "maps", xds_addr).await?;
    let admin = proxy.admin();
    let before = eventually(PUSH, || async {
        let s = session(xds_addr, "p1").await?;
        ensure!(s["versions"]["endpoints"]["acked"].is_string(), "{s:#}");
        Ok(s)
    })
    .await?;
    let addr = tiles.addr().to_string();
    let closed = url(closed_port());

    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["set-weight", "nope", &addr, "5"],
            "unknown cluster \"nope\": no node group has it".into(),
        ),
        (
            vec!["depool", "nope", &addr],
            "unknown cluster \"nope\"".into(),
        ),
        (
            vec!["set-weight", "tiles", &addr, "0"],
            "weight must be between 1 and 10000, got 0".into(),
        ),
        (
            vec!["set-weight", "tiles", &addr, "10001"],
            "weight must be between 1 and 10000, got 10001".into(),
        ),
        (
            vec!["set-weight", "tiles", &addr, "-3"],
            "weight must be between 1 and 10000, got -3".into(),
        ),
        (
            vec!["depool", "tiles", "127.0.0.1:1"],
            "cluster \"tiles\" has no endpoint with address \"127.0.0.1:1\"".into(),
        ),
        (
            vec!["reset", "tiles", &addr],
            format!("cluster \"tiles\" endpoint \"{addr}\" has no override to reset"),
        ),
    ];
    for (args, message) in &cases {
        let mut full = vec!["endpoint"];
        full.extend(args);
        full.extend(["--server", &server_url]);
        let out = xds_cli(&full).await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{full:?} succeeded");
        assert!(
            stderr.contains("error: ") && stderr.contains(message.as_str()),
            "{full:?}: stderr {stderr:?}, expected {message:?}"
        );
        assert!(out.stdout.is_empty(), "{full:?} printed {:?}", out.stdout);
    }
    // No server at all: a clear error too.
    let out = xds_cli(&["endpoint", "pool", "tiles", &addr, "--server", &closed]).await?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot connect to"), "{stderr:?}");

    // The operator API answers with the matching status codes.
    for (body, code) in [
        (
            json!({"cluster": "nope", "address": addr, "weight": 2}),
            404,
        ),
        (
            json!({"cluster": "tiles", "address": addr, "weight": 0}),
            400,
        ),
        (
            json!({"cluster": "tiles", "address": addr, "wieght": 2}),
            400,
        ),
    ] {
        match legate_xds::cli::request(
            &server_url,
            Method::POST,
            "/v1/endpoints/set-weight",
            Some(body.clone()),
        )
        .await
        {
            Err(CliError::Server { status, .. }) => assert_eq!(status, code, "{body}"),
            other => panic!("{body}: {other:?}"),
        }
    }

    // Nothing changed anywhere.
    let status = get_json(xds_addr, "/v1/status").await?;
    assert_eq!(status["overrides"], json!({}), "{status:#}");
    assert!(!files.state().exists(), "no state file was written");
    let after = session(xds_addr, "p1").await?;
    assert_eq!(after["versions"], before["versions"], "nothing was pushed");
    assert_eq!(after["endpoints"], before["endpoints"]);
    let endpoint = proxy_endpoint(admin, "tiles", tiles.addr()).await?;
    assert_eq!(endpoint["weight"], 1);
    assert_eq!(endpoint["pooled"], true);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// TLS

/// R1: the stream over TLS with client certificates: a proxy with the right certificate syncs
/// and serves; one without is refused at the handshake and stays unready, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_runs_over_mtls() -> Result<()> {
    use legate_integration::certs::Ca;

    let tiles = Upstream::echo("tiles").await?;
    let files = Files::new()?;
    files.group("maps", "tiles", &clusters(&[("tiles", &[&tiles])]))?;
    let pki = tempfile::tempdir()?;
    let ca = Ca::new("mesh CA")?;
    let ca_file = ca.write(pki.path(), "ca.pem")?;
    let (server_cert, server_key) = ca.server(&["127.0.0.1"])?.write(pki.path(), "xds")?;
    let (client_cert, client_key) = ca
        .client("p1", &["spiffe://mesh/proxy/maps"])?
        .write(pki.path(), "p1")?;
    let server = serve(ServeConfig {
        dir: files.groups(),
        listen: any_port(),
        store: legate_xds::StateStore::File(files.state()),
        tls: Some(legate_xds::ServerTlsFiles {
            cert: server_cert,
            key: server_key,
            client_ca: Some(ca_file.clone()),
        }),
        roles: None,
        audit: None,
        limits: legate_xds::server::Limits::default(),
    })
    .await?;
    let xds_addr = server.local_addr();

    let with_cert = bootstrap("p1", "maps", xds_addr).text()?.replace(
        &format!("xds: {{ server: \"{xds_addr}\" }}"),
        &format!(
            "xds: {{ server: \"{xds_addr}\", tls: {{ ca: \"{}\", client_cert: \"{}\", client_key: \"{}\" }} }}",
            ca_file.display(),
            client_cert.display(),
            client_key.display()
        ),
    );
    ensure!(
        with_cert.contains("client_cert"),
        "bootstrap not rewritten: {with_cert}"
    );
    let proxy = Proxy::start(yaml(&with_cert))?;
    proxy.wait_ready().await.context("the mTLS proxy syncs")?;
    assert_eq!(served_by(proxy.addr("front")).await?, "tiles");
    let xds = proxy_xds(proxy.admin()).await?;
    assert_eq!(xds["connected"], true, "{xds:#}");

    // No client certificate: refused, never ready, and the reason is visible.
    let without_cert = bootstrap("p2", "maps", xds_addr).text()?.replace(
        &format!("xds: {{ server: \"{xds_addr}\" }}"),
        &format!(
            "xds: {{ server: \"{xds_addr}\", tls: {{ ca: \"{}\" }} }}",
            ca_file.display()
        ),
    );
    let refused = Proxy::start(yaml(&without_cert))?;
    let admin = refused.admin();
    eventually(Duration::from_secs(5), || async {
        let xds = proxy_xds(admin).await?;
        let error = xds["last_error"].as_str().unwrap_or("");
        ensure!(!error.is_empty(), "no error yet: {xds:#}");
        Ok(())
    })
    .await?;
    let ready = client::get(admin, "admin", "/ready").await?;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(proxy_xds(admin).await?["connected"], false);
    Ok(())
}

/// A bootstrap reloaded while the control plane cannot be reached: its static parts apply at
/// once, and what only a restart changes (here `xds.server` itself) is named, never hidden
/// behind a plain "ok".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_while_the_control_plane_is_unreachable_applies_the_file_and_names_the_rest(
) -> Result<()> {
    let a = Upstream::echo("a").await?;
    let b = Upstream::echo("b").await?;
    let unreachable = closed_port();
    let with_static = |xds: SocketAddr, app: &Upstream| -> Result<String> {
        let base = bootstrap("p1", "maps", xds).text()?.to_owned();
        Ok(format!(
            "{base}listeners:\n  - {{ name: front, listen: 127.0.0.1:0, http: {{ route_table: local }} }}\n\
             route_tables:\n  local:\n    virtual_hosts:\n      - {{ hosts: [\"*\"], routes: [{{ match: {{ prefix: / }}, cluster: app }}] }}\n\
             clusters:\n  - {{ name: app, endpoints: [\"{}\"] }}\n",
            app.addr()
        ))
    };
    let proxy = Proxy::start(yaml(&with_static(unreachable, &a)?))?;
    let front = proxy.addr("front");
    assert_eq!(served_by(front).await?, "a");
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("legate.yaml");

    // The static cluster moves to `b`: in effect at once, and nothing else is pending.
    std::fs::write(&path, with_static(unreachable, &b)?)?;
    proxy.app().reload_file(&path)?;
    assert_eq!(served_by(front).await?, "b");
    let config = get_json(proxy.admin(), "/config").await?;
    assert!(
        config["last_reload"].get("not_in_effect").is_none(),
        "{config:#}"
    );

    // A new control plane address is read only at start: the reload says so.
    std::fs::write(&path, with_static(closed_port(), &b)?)?;
    proxy.app().reload_file(&path)?;
    let config = get_json(proxy.admin(), "/config").await?;
    assert_eq!(
        config["last_reload"]["not_in_effect"],
        json!(["xds"]),
        "{config:#}"
    );
    assert_eq!(
        config["xds"]["server"],
        unreachable.to_string(),
        "{config:#}"
    );
    Ok(())
}

/// Route table `main`: everything to a split named `kartotherian`, all of it to `metal`.
const SPLIT_ROUTES: &str = r#"
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes:
          - name: kartotherian
            match: { prefix: / }
            split: [{ cluster: metal, weight: 100 }, { cluster: k8s, weight: 0 }]
"#;

/// `legate-xds route set-split`, `step` and `route reset-split` move a split in one group,
/// wait for both proxies' ACKs, persist the weights, show them in `status`, and refuse what
/// the group does not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_weights_move_from_the_cli_and_are_acknowledged() -> Result<()> {
    let metal = Upstream::echo("metal").await?;
    let k8s = Upstream::echo("k8s").await?;
    let files = Files::new()?;
    files.write("maps", "listeners.yaml", LISTENERS)?;
    files.write("maps", "routes.yaml", SPLIT_ROUTES)?;
    let list = clusters(&[("metal", &[&metal]), ("k8s", &[&k8s])]);
    files.write("maps", "clusters.yaml", &list)?;
    let server = files.serve(any_port()).await?;
    let xds_addr = server.local_addr();
    let server_url = url(xds_addr);
    let p1 = start_proxy("p1", "maps", xds_addr).await?;
    let p2 = start_proxy("p2", "maps", xds_addr).await?;
    for p in [&p1, &p2] {
        assert_eq!(tally(p.addr("front"), 4).await?, counts(&[("metal", 4)]));
    }
    let route = [
        "--group",
        "maps",
        "--route-table",
        "main",
        "--route",
        "kartotherian",
        "--server",
        &server_url,
    ];
    let with = |head: &[&'static str], tail: &[&str]| -> Vec<String> {
        head.iter()
            .chain(&route)
            .chain(tail)
            .map(|s| s.to_string())
            .collect()
    };
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        operator_ok(&refs).await
    };

    // The whole split to k8s; the command returns once both proxies hold it.
    let out = run(with(&["route", "set-split"], &["metal=0", "k8s=100"])).await?;
    assert!(
        out.contains("ok: set-split maps main kartotherian: metal=0 k8s=100"),
        "{out}"
    );
    assert!(
        out.contains("acknowledged by 2 of 2 connected proxies of group maps"),
        "{out}"
    );
    for p in [&p1, &p2] {
        assert_eq!(tally(p.addr("front"), 4).await?, counts(&[("k8s", 4)]));
    }
    let state = std::fs::read_to_string(files.state())?;
    assert!(
        state.contains("\"splits\"") && state.contains("kartotherian"),
        "{state}"
    );

    // A step of 100 points back to metal.
    let out = run(with(&["step"], &["--to", "metal", "--points", "100"])).await?;
    assert!(out.contains("kartotherian: metal=100 k8s=0"), "{out}");
    assert!(out.contains("acknowledged by 2 of 2"), "{out}");
    for p in [&p1, &p2] {
        assert_eq!(tally(p.addr("front"), 4).await?, counts(&[("metal", 4)]));
    }
    let status = operator_ok(&["status", "--server", &server_url]).await?;
    assert!(status.contains("kartotherian  metal=100 k8s=0"), "{status}");

    // Refused, and nothing changes: a cluster the group lacks, a route it lacks, a zero split.
    for (args, says) in [
        (
            with(&["route", "set-split"], &["metal=1", "gone=1"]),
            "\"gone\" is not a cluster",
        ),
        (
            with(&["route", "set-split"], &["metal=0"]),
            "sum to more than 0",
        ),
        (
            with(&["step"], &["--to", "gone", "--points", "5"]),
            "\"gone\" is not a cluster",
        ),
    ] {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = xds_cli(&refs).await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let mut other = route.map(str::to_owned).to_vec();
    other[5] = "nope".into();
    let args: Vec<&str> = ["route", "reset-split"]
        .into_iter()
        .chain(other.iter().map(String::as_str))
        .collect();
    let out = xds_cli(&args).await?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no route named \"nope\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Reset: the files' split (all to metal) again, and no override left.
    let out = run(with(&["route", "reset-split"], &[])).await?;
    assert!(out.contains("kartotherian: the files' split"), "{out}");
    let status = get_json(xds_addr, "/v1/status").await?;
    assert_eq!(status["splits"], json!({}), "{status:#}");
    for p in [&p1, &p2] {
        assert_eq!(tally(p.addr("front"), 4).await?, counts(&[("metal", 4)]));
    }

    // The audit log has the three changes, each with the split before and after, made from
    // loopback (no client certificates here); the refused ones are not in it.
    let audit = operator_ok(&["audit", "--json", "--server", &server_url]).await?;
    let audit: Value = serde_json::from_str(&audit)?;
    let entries = audit["entries"].as_array().context("entries")?;
    let ops: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["operation"].as_str())
        .collect();
    assert_eq!(ops, ["set-split", "step", "reset-split"], "{audit:#}");
    let split = |metal: u32, k8s: u32| json!([{"cluster": "metal", "weight": metal}, {"cluster": "k8s", "weight": k8s}]);
    assert_eq!(
        entries[0]["before"],
        split(100, 0),
        "the files' split: {audit:#}"
    );
    assert_eq!(entries[0]["after"], split(0, 100), "{audit:#}");
    assert_eq!(entries[1]["after"], split(100, 0), "{audit:#}");
    assert_eq!(entries[2]["before"], split(100, 0), "{audit:#}");
    assert_eq!(
        entries[2]["target"],
        json!({"group": "maps", "route_table": "main", "route": "kartotherian"})
    );
    let peer = entries[0]["who"]["peer"].as_str().unwrap_or_default();
    assert!(peer.starts_with("127.0.0.1:"), "{audit:#}");
    let table = operator_ok(&["audit", "--server", &server_url]).await?;
    assert!(
        table.contains("step") && table.contains("maps main kartotherian"),
        "{table}"
    );
    Ok(())
}

/// A pushed cluster may name a local file only if the proxy's bootstrap lists it in
/// `xds.allow_files`: the same push is NACKed, naming the field and the file, by a proxy that
/// does not allow it, and applied by one that does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_files_are_refused_unless_the_bootstrap_allows_them() -> Result<()> {
    let tiles = Upstream::echo("tiles").await?;
    let secrets = tempfile::tempdir()?;
    let password = secrets.path().join("pg-password");
    std::fs::write(&password, "hunter2\n")?;
    let files = Files::new()?;
    files.group(
        "maps",
        "tiles",
        &format!(
            "clusters:\n  - {{ name: tiles, endpoints: [\"{}\"], health_check: {{ interval: 1h, postgres: {{ password_file: \"{}\" }} }} }}\n",
            tiles.addr(),
            password.display()
        ),
    )?;
    let server = files.serve(any_port()).await?;
    let xds_addr = server.local_addr();
    let allowing = bootstrap("p2", "maps", xds_addr).text()?.replace(
        &format!("xds: {{ server: \"{xds_addr}\" }}"),
        &format!(
            "xds: {{ server: \"{xds_addr}\", allow_files: [\"{}/\"] }}",
            secrets.path().display()
        ),
    );
    ensure!(allowing.contains("allow_files"), "{allowing}");

    let refusing = Proxy::start(bootstrap("p1", "maps", xds_addr))?;
    let nack = eventually(PUSH, || async {
        let s = session(xds_addr, "p1").await?;
        ensure!(s["last_nack"]["type"] == "clusters", "no NACK yet: {s:#}");
        Ok(s)
    })
    .await?;
    let detail = nack["last_nack"]["error_detail"]
        .as_array()
        .context("error_detail")?;
    let expected = format!(
        "clusters[tiles].health_check.postgres.password_file: \"{}\" is not in the bootstrap's xds.allow_files",
        password.display()
    );
    assert!(
        detail.iter().any(|d| d["name"] == "clusters[tiles]"
            && d["error"]
                .as_str()
                .is_some_and(|e| e.starts_with(&expected))),
        "{nack:#}"
    );
    let ready = client::get(refusing.admin(), "admin", "/ready").await?;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "nothing applied"
    );

    let allowed = Proxy::start(yaml(&allowing))?;
    allowed
        .wait_ready()
        .await
        .context("the proxy that allows the file applies the push")?;
    let s = session(xds_addr, "p2").await?;
    assert!(s["last_nack"].is_null(), "{s:#}");
    Ok(())
}

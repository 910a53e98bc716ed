//! Binary upgrades (`kill -USR2`): the running `legate` starts its binary again, hands it the
//! listening sockets and drains once the new process serves. Under keep-alive HTTP/1.1 and
//! HTTP/2 load and with a Postgres session open, five upgrades in a row fail no request,
//! refuse no connection and keep the session; each old process exits 0. An upgrade whose new
//! process cannot start leaves the old one serving.
//!
//! Needs `cargo build -p legate --bin legate` first, and PostgreSQL (`.ci/run` installs it).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use http::StatusCode;
use legate_integration::client::{self, Http1, H2};
use legate_integration::postgres::{PgSet, Session};
use legate_integration::process::Legate;
use legate_integration::proxy::yaml;
use legate_integration::upstream::Upstream;

/// HTTP to `${APP}`, Postgres sessions to `${PG}`; a drain delay so that kept-alive
/// HTTP/1.1 clients move with their next response (`Connection: close`), never by a close
/// racing a request; a drain timeout longer than the test, so open sessions run on.
const CONFIG: &str = r#"
admin: { listen: "${ADMIN}" }
runtime: { workers: 2, drain_delay: 1s, drain_timeout: 60s }
access_log: { enabled: false }
listeners:
  - { name: front, listen: 127.0.0.1:0, http: { route_table: main } }
  - { name: pg, listen: 127.0.0.1:0, tcp: { cluster: db, protocol: postgres } }
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes: [{ match: { prefix: / }, cluster: app }]
clusters:
  - { name: app, endpoints: ["${APP}"] }
  - { name: db, endpoints: ["${PG}"] }
"#;

/// Processes started by upgrades (the harness owns only the first); killed when dropped.
#[derive(Default)]
struct Generations(Mutex<Vec<u32>>);

impl Generations {
    fn add(&self, pid: u32) {
        self.0.lock().expect("not poisoned").push(pid);
    }
}

impl Drop for Generations {
    fn drop(&mut self) {
        for pid in self.0.lock().map(|p| p.clone()).unwrap_or_default() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

async fn kill(signal: &str, pid: u32) -> Result<()> {
    let status = tokio::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .await?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid}: {status}");
    Ok(())
}

/// What the load clients saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failures.lock().expect("not poisoned").push(what);
    }
}

/// Whether a request error says the request was never processed, so a client sends it again
/// on a new connection and nothing failed: the connection was closed before it left
/// (hyper: canceled), or, on HTTP/2, the server's GOAWAY (NO_ERROR) says the stream came
/// after the last one it processes (RFC 9113, 6.8). The test checks this against the
/// upstream's own count.
fn not_sent(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
            || cause.downcast_ref::<h2::Error>().is_some_and(|h2| {
                h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR)
            })
    }) || format!("{e:#}").contains("connection not usable")
}

/// Keep-alive HTTP/1.1 requests until `stop`: a new connection after `Connection: close`.
async fn http1_load(front: std::net::SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut conn: Option<Http1> = None;
    while !stop.load(Ordering::Relaxed) {
        let c = match conn.as_mut() {
            Some(c) if !c.is_closed() => c,
            _ => match Http1::connect(front).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    tally.fail(format!("HTTP/1.1 connect: {e:#}"));
                    continue;
                }
            },
        };
        match c.get("app.example.org", "/").await {
            Ok(reply) if reply.status == StatusCode::OK => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                if reply.header("connection") == Some("close") {
                    conn = None;
                }
            }
            Ok(reply) => tally.fail(format!("HTTP/1.1: {} {}", reply.status, reply.text())),
            Err(e) if not_sent(&e) => conn = None,
            Err(e) => {
                tally.fail(format!("HTTP/1.1: {e:#}"));
                conn = None;
            }
        }
    }
}

/// HTTP/2 requests until `stop`: a new connection once GOAWAY closed the last.
async fn http2_load(front: std::net::SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut conn: Option<H2> = None;
    while !stop.load(Ordering::Relaxed) {
        let c = match conn.as_ref() {
            Some(c) if !c.is_closed() => c.clone(),
            _ => match H2::connect(front).await {
                Ok(c) => conn.insert(c).clone(),
                Err(e) => {
                    tally.fail(format!("HTTP/2 connect: {e:#}"));
                    continue;
                }
            },
        };
        match c.get("app.example.org", "/").await {
            Ok(reply) if reply.status == StatusCode::OK => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(reply) => tally.fail(format!("HTTP/2: {} {}", reply.status, reply.text())),
            Err(e) if not_sent(&e) => conn = None,
            Err(e) => {
                tally.fail(format!("HTTP/2: {e:#}"));
                conn = None;
            }
        }
    }
}

/// The pid in a line's `key=N`.
fn pid_in(line: &str, key: &str) -> Result<u32> {
    let rest = line
        .split_once(&format!("{key}="))
        .with_context(|| format!("no {key}= in {line:?}"))?
        .1;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Ok(digits.parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_upgrades_under_load_fail_nothing_and_keep_a_postgres_session() -> Result<()> {
    let pg = PgSet::start(0).await?;
    let app = Upstream::echo("app").await?;
    let config = yaml(CONFIG)
        .set("APP", app.addr())
        .set("PG", pg.primary.addr());
    let mut first = Legate::start(config).await?;
    let generations = Generations::default();
    let (front, pg_front) = (first.addr("front"), first.addr("pg"));

    let session = Session::connect(pg_front).await?;
    let backend = session.value("SELECT pg_backend_pid()").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let load = [
        tokio::spawn(http1_load(front, stop.clone(), tally.clone())),
        tokio::spawn(http1_load(front, stop.clone(), tally.clone())),
        tokio::spawn(http2_load(front, stop.clone(), tally.clone())),
    ];

    let mut serving = first.pid();
    for round in 1..=5 {
        kill("USR2", serving).await?;
        let upgraded = first
            .wait_stderr_lines("upgraded: the new process serves", round)
            .await?;
        let new = pid_in(&upgraded[round - 1], "new_pid")?;
        generations.add(new);
        assert_ne!(new, serving);
        // The old process finishes draining and exits 0; the first one only once the
        // Postgres session it carries ends.
        if round > 1 {
            let exited = first
                .wait_stderr_lines(&format!("exiting pid={serving} "), 1)
                .await?;
            assert!(exited[0].ends_with("code=0"), "{exited:?}");
        }
        serving = new;
        // New connections are served, and the session goes on through the first process.
        let reply = client::get(front, "app.example.org", "/").await?;
        assert_eq!(reply.status, StatusCode::OK, "after upgrade {round}");
        tally.ok.fetch_add(1, Ordering::Relaxed);
        assert_eq!(
            session.value("SELECT pg_backend_pid()").await?,
            backend,
            "the session survives upgrade {round}"
        );
    }

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await?;
    }
    let failures = tally.failures.lock().expect("not poisoned").clone();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    let ok = tally.ok.load(Ordering::Relaxed);
    assert!(ok > 0);
    // Every request that reached the upstream got its answer: none counted as not sent was.
    assert_eq!(
        app.requests() as u64,
        ok,
        "requests the upstream saw vs answers"
    );
    let ready = client::get(first.admin(), "admin", "/ready").await?;
    assert_eq!(ready.status, StatusCode::OK, "the last process is ready");

    // The session ends; the first process, which carried it, exits 0.
    drop(session);
    let status = first.wait_exit(Duration::from_secs(20)).await?;
    assert_eq!(status.code(), Some(0), "{}", first.stderr_text());
    kill("TERM", serving).await?;
    let exited = first
        .wait_stderr_lines(&format!("exiting pid={serving} "), 1)
        .await?;
    assert!(exited[0].ends_with("code=0"), "{exited:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_whose_new_process_cannot_start_leaves_the_old_one_serving() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let config = yaml(CONFIG).set("APP", app.addr()).set("PG", app.addr());
    let legate = Legate::start(config.clone()).await?;
    let generations = Generations::default();
    let front = legate.addr("front");
    let mut kept = Http1::connect(front).await?;

    // The new process reads the same file: broken, it exits before serving.
    let path = legate.config_path().to_path_buf();
    std::fs::write(&path, "listeners: [ {\n")?;
    legate.wait_stderr("config reload rejected").await?;
    kill("USR2", legate.pid()).await?;
    let failed = legate
        .wait_stderr("upgrade failed, this process serves on")
        .await?;
    assert!(failed.contains("exited (exit status: 1)"), "{failed}");
    let reply = kept.get("app.example.org", "/").await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("connection"), None, "not draining");
    let ready = client::get(legate.admin(), "admin", "/ready").await?;
    assert_eq!(ready.status, StatusCode::OK);

    // Fixed, the next upgrade goes through.
    legate.write_config(config)?;
    legate.wait_stderr("config reloaded").await?;
    kill("USR2", legate.pid()).await?;
    let upgraded = legate
        .wait_stderr("upgraded: the new process serves")
        .await?;
    generations.add(pid_in(&upgraded, "new_pid")?);
    let reply = client::get(front, "app.example.org", "/").await?;
    assert_eq!(reply.status, StatusCode::OK);
    Ok(())
}

/// `legate upgrade --pid-file F`: signals the process the file names, waits for the new
/// process to take the file over and names it; when the new process cannot start, it says so
/// (the old process rewrote the file) rather than waiting out its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legate_upgrade_follows_the_pid_file_and_reports_a_failed_upgrade() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let config = yaml(CONFIG).set("APP", app.addr()).set("PG", app.addr());
    let dir = tempfile::tempdir()?;
    let pid_file = dir.path().join("legate.pid");
    let mut legate = Legate::start_by(config.clone(), |config_path| {
        let mut cmd = legate_integration::process::command();
        cmd.arg("run")
            .arg("--config")
            .arg(config_path)
            .arg("--pid-file")
            .arg(&pid_file);
        cmd
    })
    .await?;
    let generations = Generations::default();
    let first = legate.pid();
    let pid_file_text = pid_file.to_str().context("utf-8 path")?;
    let written = legate_integration::eventually(Duration::from_secs(5), || async {
        let text = std::fs::read_to_string(&pid_file)?;
        anyhow::ensure!(text.trim() == first.to_string(), "pid file says {text:?}");
        Ok(())
    });
    written.await?;

    let out = legate_integration::process::run(&["upgrade", "--pid-file", pid_file_text]).await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new: u32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
    generations.add(new);
    assert_ne!(new, first);
    assert_eq!(
        stdout.trim(),
        format!("upgraded: pid {first} handed over to pid {new}")
    );
    let status = legate.wait_exit(Duration::from_secs(10)).await?;
    assert_eq!(status.code(), Some(0), "the old process exits 0");
    assert!(
        pid_file.exists(),
        "the old process left the new one's pid file"
    );

    std::fs::write(legate.config_path(), "listeners: [ {\n")?;
    let out = legate_integration::process::run(&["upgrade", "--pid-file", pid_file_text]).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {new} could not start its new process")),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&pid_file)?.trim(), new.to_string());
    let reply = client::get(legate.addr("front"), "app.example.org", "/").await?;
    assert_eq!(reply.status, StatusCode::OK, "pid {new} serves on");
    Ok(())
}

/// After an upgrade, the old process still holds the handed-over sockets while it drains. A
/// reload in the new process that renames a listener on the same address (which binds that
/// address again) is no conflict with them: they are the new process's own sockets too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_upgrade_a_reload_may_rebind_an_address_the_old_process_shares() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let port = legate_integration::process::free_port();
    let fixed = CONFIG
        .replace("drain_delay: 1s", "drain_delay: 30s")
        .replace(
            "{ name: front, listen: 127.0.0.1:0,",
            &format!("{{ name: front, listen: \"127.0.0.1:{port}\","),
        );
    let config = yaml(&fixed).set("APP", app.addr()).set("PG", app.addr());
    let legate = Legate::start(config).await?;
    let generations = Generations::default();
    kill("USR2", legate.pid()).await?;
    let upgraded = legate
        .wait_stderr("upgraded: the new process serves")
        .await?;
    generations.add(pid_in(&upgraded, "new_pid")?);
    legate.wait_stderr("serving on for drain_delay").await?;

    let renamed = fixed.replace("{ name: front,", "{ name: edge,");
    legate.write_config(yaml(&renamed).set("APP", app.addr()).set("PG", app.addr()))?;
    // The draining old process refuses it; the new one applies it.
    legate.wait_stderr("draining: no config is applied").await?;
    let reloaded = legate.wait_stderr("config reloaded").await?;
    assert!(
        !legate.stderr_text().contains("already in use"),
        "{}",
        legate.stderr_text()
    );
    assert!(reloaded.contains("version="), "{reloaded}");
    let reply = client::get(format!("127.0.0.1:{port}").parse()?, "app.example.org", "/").await?;
    assert_eq!(reply.status, StatusCode::OK);
    Ok(())
}

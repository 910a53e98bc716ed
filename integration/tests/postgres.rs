//! PostgreSQL through Legate's L4 listener, end to end: a real primary and two streaming
//! replicas per test (see `legate_integration::postgres`), real clients (tokio-postgres, psql,
//! pgbench), and Legate's `/clusters` for what it decided.
//!
//! - sessions spread over both replicas, and `/clusters` counts them;
//! - a replica killed (`pg_ctl stop -m immediate`) is marked down within a few check
//!   intervals while sessions on the other one carry on; restarted, it comes back;
//! - pgbench runs without a failed transaction while a replica is depooled by a reload
//!   (SIGHUP to the binary); the depooled replica keeps its open session until the client
//!   ends it, or until `drain_timeout` (also when the reload that depools sets it);
//! - a CancelRequest reaches the server that owns the session (tokio-postgres and psql, on a
//!   pooled or a depooled replica, and after a refused SSLRequest), and one with an unknown
//!   key is broadcast;
//! - a replica in a smart shutdown (or a standby without hot standby) answers 57P03 and is
//!   marked down, while its open sessions finish;
//! - the credential-free check marks a server with no free connection slots down; the check
//!   with credentials marks a primary down when replicas are required;
//! - plain TCP: half-close in both directions, and back-pressure from a slow upstream;
//! - L4 limits: sessions beyond a cluster's `max_connections` are refused (Postgres ones with
//!   SQLSTATE 53300), a silent Postgres client never gets a server connection, an idle
//!   session is closed after `idle_timeout`, and a refused connect fails over to the next
//!   endpoint within `connect_attempts`.
//!
//! The SIGHUP test runs the binary; it needs `cargo build -p legate --bin legate` first.
//! PostgreSQL must be installed (`/usr/lib/postgresql/*/bin`, or `$LEGATE_PG_BIN`).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use legate_integration::eventually;
use legate_integration::postgres::{
    self, endpoint, psql, psql_command, wait_endpoint, wait_health, PgSet, Pgbench, Session,
    CHECK_PASSWORD, CHECK_USER,
};
use legate_integration::process::Legate;
use legate_integration::proxy::{yaml, Proxy, Yaml};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

const CLUSTER: &str = "replicas";

/// One Postgres listener over cluster `replicas`, checked every 250 ms with the
/// credential-free probe (two failures to go down, two successes to come back).
/// `${ADMIN}`: the admin address (the binary's harness fills it); `${LB}`; `${ENDPOINTS}`: a
/// YAML list body; `${LISTENER}` and `${CLUSTER}`: extra settings (`, key: value` for the
/// listener's flow map, indented lines for the cluster).
const PG_CONFIG: &str = r#"
admin: { listen: "${ADMIN}" }
access_log: { enabled: false }
runtime: { workers: 2 }
listeners:
  - name: pg
    listen: 127.0.0.1:0
    tcp: { cluster: replicas, protocol: postgres, idle_timeout: 1h, connect_attempts: 3${LISTENER} }
clusters:
  - name: replicas
    lb: ${LB}
    connect_timeout: 1s
    health_check:
      postgres: { user: postgres, database: postgres }
      interval: 250ms
      timeout: 250ms
      jitter: 0s
      unhealthy_threshold: 2
      healthy_threshold: 2
    endpoints: [${ENDPOINTS}]
${CLUSTER}"#;

fn pg_config(lb: &str, endpoints: &str) -> Yaml {
    pg_config_with(lb, endpoints, "", "")
}

/// [`PG_CONFIG`] with extra listener settings (`, key: value`) and cluster lines.
fn pg_config_with(lb: &str, endpoints: &str, listener: &str, cluster: &str) -> Yaml {
    yaml(PG_CONFIG)
        .set("LB", lb)
        .set("ENDPOINTS", endpoints)
        .set("LISTENER", listener)
        .set("CLUSTER", cluster)
}

/// `"a", "b"` for a YAML flow list.
fn list(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Starts Legate in process and waits until every endpoint has been checked once.
async fn start_proxy(config: Yaml) -> Result<Proxy> {
    let proxy = Proxy::start(config.set("ADMIN", "127.0.0.1:0"))?;
    proxy.wait_ready().await?;
    Ok(proxy)
}

/// Opens sessions through `front` until one lands on the server listening on `port` (at most
/// 50 tries; the others are closed).
async fn session_on(front: SocketAddr, port: u16) -> Result<Session> {
    let mut seen = Vec::new();
    for _ in 0..50 {
        let s = Session::connect(front).await?;
        let p = s.server_port().await?;
        if p == port {
            return Ok(s);
        }
        seen.push(p);
    }
    bail!("50 sessions through {front} never reached port {port}: {seen:?}")
}

fn count(e: &Value, field: &str) -> u64 {
    e[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {e}"))
}

// === health checks ===

/// A check ends its session the way a client may (end of input, then reading the server's
/// answer to the end), so the server's log stays quiet: no "could not receive data from
/// client" (a reset) for every check, nor a complaint about how it left.
#[tokio::test]
async fn health_checks_leave_nothing_in_the_server_log() -> Result<()> {
    let pg = PgSet::start_with(0, &["-c log_connections=on"]).await?;
    let primary = pg.primary.addr();
    let _proxy = start_proxy(pg_config("round_robin", &list(&[primary]))).await?;

    // Each check is one logged connection; wait for several, at 250 ms apart.
    eventually(Duration::from_secs(10), || async {
        let log = pg.primary.log();
        let checks = log
            .lines()
            .filter(|l| l.contains("application_name=legate-health-check"))
            .count();
        ensure!(checks >= 4, "{checks} checks so far");
        Ok(())
    })
    .await?;

    let log = pg.primary.log();
    for line in log.lines() {
        ensure!(
            !(line.contains("could not receive data")
                || line.contains("unexpected EOF")
                || line.contains("expected password response")),
            "a check left {line:?} in the server log:\n{log}"
        );
    }
    Ok(())
}

// === balancing ===

#[tokio::test]
async fn sessions_spread_over_both_replicas() -> Result<()> {
    let pg = PgSet::start(2).await?;
    let proxy = start_proxy(pg_config("least_connections", &list(&pg.replica_addrs()))).await?;
    let (front, admin) = (proxy.addr("pg"), proxy.admin());

    // psql offers TLS first (sslmode=prefer); the server declines and the session goes on.
    assert_eq!(psql(front, "SELECT 40 + 2").await?, "42");

    let mut sessions = Vec::new();
    let mut by_port: BTreeMap<u16, u64> = BTreeMap::new();
    for _ in 0..10 {
        let s = Session::connect(front).await?;
        *by_port.entry(s.server_port().await?).or_default() += 1;
        assert_eq!(
            s.value("SELECT pg_is_in_recovery()").await?,
            "t",
            "a replica answered"
        );
        sessions.push(s);
    }
    let replica_ports: BTreeSet<u16> = pg.replicas.iter().map(|r| r.port()).collect();
    assert_eq!(
        by_port.keys().copied().collect::<BTreeSet<_>>(),
        replica_ports,
        "sessions used both replicas: {by_port:?}"
    );
    for r in &pg.replicas {
        let e = endpoint(admin, CLUSTER, r.addr()).await?;
        assert_eq!(e["health"], "healthy", "{e}");
        assert_eq!(
            count(&e, "active_sessions"),
            by_port[&r.port()],
            "/clusters counts the open sessions of {}: {e}",
            r.name()
        );
    }
    // Every session still answers (a second query on each, in turn).
    for s in &sessions {
        assert_eq!(
            s.value("SELECT count(*) FROM pg_class WHERE false").await?,
            "0"
        );
    }

    drop(sessions);
    for r in &pg.replicas {
        let e = wait_endpoint(
            admin,
            CLUSTER,
            r.addr(),
            Duration::from_secs(5),
            "without sessions",
            |e| e["active_sessions"] == 0,
        )
        .await?;
        assert!(count(&e, "total_sessions") >= by_port[&r.port()], "{e}");
        assert!(count(&e, "bytes_to_upstream") > 0, "{e}");
        assert!(count(&e, "bytes_to_client") > 0, "{e}");
    }
    Ok(())
}

// === failure and recovery ===

#[tokio::test]
async fn killed_replica_is_marked_down_and_comes_back() -> Result<()> {
    let pg = PgSet::start(2).await?;
    let (victim, survivor) = (&pg.replicas[0], &pg.replicas[1]);
    let proxy = start_proxy(pg_config("least_connections", &list(&pg.replica_addrs()))).await?;
    let (front, admin) = (proxy.addr("pg"), proxy.admin());
    let limit = Duration::from_secs(5);
    wait_health(admin, CLUSTER, victim.addr(), "healthy", limit).await?;
    wait_health(admin, CLUSTER, survivor.addr(), "healthy", limit).await?;

    let open = session_on(front, survivor.port()).await?;
    let mut doomed = session_on(front, victim.port()).await?;

    victim.stop_immediate().await?;
    wait_health(admin, CLUSTER, victim.addr(), "unhealthy", limit)
        .await
        .with_context(|| pg.logs())?;
    doomed
        .closed(limit)
        .await
        .context("a session on the killed replica ends")?;

    for _ in 0..6 {
        let s = Session::connect(front).await?;
        assert_eq!(
            s.server_port().await?,
            survivor.port(),
            "new sessions avoid it"
        );
    }
    assert!(!open.is_closed(), "the survivor's session is untouched");
    assert_eq!(open.server_port().await?, survivor.port());
    assert_eq!(open.value("SELECT 6 * 7").await?, "42");

    victim.start().await?;
    wait_health(admin, CLUSTER, victim.addr(), "healthy", limit).await?;
    let back = session_on(front, victim.port()).await?;
    assert_eq!(back.value("SELECT pg_is_in_recovery()").await?, "t");
    assert_eq!(
        open.value("SELECT 1").await?,
        "1",
        "still open through it all"
    );
    Ok(())
}

#[tokio::test]
async fn replica_shutting_down_is_marked_down_while_its_sessions_finish() -> Result<()> {
    let pg = PgSet::start(2).await?;
    let (leaving, staying) = (&pg.replicas[0], &pg.replicas[1]);
    let proxy = start_proxy(pg_config("least_connections", &list(&pg.replica_addrs()))).await?;
    let (front, admin) = (proxy.addr("pg"), proxy.admin());
    let limit = Duration::from_secs(5);
    let last = session_on(front, leaving.port()).await?;

    // A smart shutdown waits for its sessions and turns new ones away (57P03).
    leaving.begin_smart_shutdown().await?;
    wait_health(admin, CLUSTER, leaving.addr(), "unhealthy", limit)
        .await
        .with_context(|| pg.logs())?;
    let err = leaving
        .connect()
        .await
        .expect_err("the server turns sessions away");
    let db = err
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.as_db_error())
        .with_context(|| format!("{err:#}"))?;
    assert_eq!(db.code(), &SqlState::CANNOT_CONNECT_NOW, "{db:?}");

    for _ in 0..6 {
        let s = Session::connect(front).await?;
        assert_eq!(
            s.server_port().await?,
            staying.port(),
            "new sessions avoid it"
        );
    }
    assert_eq!(last.value("SELECT 'still here'").await?, "still here");
    let e = endpoint(admin, CLUSTER, leaving.addr()).await?;
    assert_eq!(count(&e, "active_sessions"), 1, "{e}");

    // Its last session ends: the server finishes its shutdown.
    drop(last);
    leaving.wait_stopped().await?;
    wait_endpoint(
        admin,
        CLUSTER,
        leaving.addr(),
        limit,
        "without sessions",
        |e| e["active_sessions"] == 0,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn standby_without_hot_standby_is_down_from_the_first_check() -> Result<()> {
    let mut pg = PgSet::start(2).await?;
    // Up and answering, but not accepting sessions: "the database system is not accepting
    // connections" (57P03).
    let cold = &mut pg.replicas[0];
    cold.stop_fast().await?;
    cold.add_options(&["-c hot_standby=off"]);
    cold.start_rejecting().await?;
    let err = cold.connect().await.expect_err("no sessions on it");
    let db = err
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.as_db_error())
        .with_context(|| format!("{err:#}"))?;
    assert_eq!(db.code(), &SqlState::CANNOT_CONNECT_NOW, "{db:?}");

    let (cold, hot) = (&pg.replicas[0], &pg.replicas[1]);
    let proxy = start_proxy(pg_config("least_connections", &list(&pg.replica_addrs()))).await?;
    let (front, admin) = (proxy.addr("pg"), proxy.admin());
    // Ready means each endpoint has had its first check, whose result counts at once.
    let e = endpoint(admin, CLUSTER, cold.addr()).await?;
    assert_eq!(e["health"], "unhealthy", "{e}");
    let e = endpoint(admin, CLUSTER, hot.addr()).await?;
    assert_eq!(e["health"], "healthy", "{e}");
    for _ in 0..4 {
        let s = Session::connect(front).await?;
        assert_eq!(s.server_port().await?, hot.port());
    }
    Ok(())
}

// === depooling ===

/// A config over both replicas with the first pooled or not, and extra listener and
/// cluster settings (see [`pg_config_with`]).
fn depool_config(pg: &PgSet, first_pooled: bool, listener: &str, cluster: &str) -> Yaml {
    let endpoints = format!(
        "{{ address: \"{}\", pooled: {first_pooled} }}, \"{}\"",
        pg.replicas[0].addr(),
        pg.replicas[1].addr()
    );
    pg_config_with("least_connections", &endpoints, listener, cluster)
}

#[tokio::test]
async fn pgbench_has_no_failures_while_a_replica_is_depooled_by_sighup() -> Result<()> {
    let pg = PgSet::start(2).await?;
    pg.pgbench_init(1).await?;
    let (depooled, kept) = (&pg.replicas[0], &pg.replicas[1]);
    let legate = Legate::start(depool_config(&pg, true, "", "")).await?;
    let (front, admin) = (legate.addr("pg"), legate.admin());

    let long = session_on(front, depooled.port()).await?;
    let before = endpoint(admin, CLUSTER, depooled.addr()).await?;

    // A new connection per transaction (-C), so sessions keep being placed throughout.
    let mut cmd = postgres::pgbench(front)?;
    cmd.args(["-S", "-C", "-n", "-c", "4", "-j", "2", "-T", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let bench = tokio::spawn(cmd.output());

    // Reload once pgbench's sessions have reached the replica about to be depooled.
    let started = count(&before, "total_sessions");
    wait_endpoint(
        admin,
        CLUSTER,
        depooled.addr(),
        Duration::from_secs(10),
        "used by pgbench",
        |e| e["total_sessions"].as_u64().unwrap_or(0) >= started + 10,
    )
    .await?;
    legate.write_config(depool_config(&pg, false, "", ""))?;
    legate.signal("HUP").await?;
    legate.wait_stderr("SIGHUP").await?;
    legate.wait_stderr("config reloaded").await?;

    let at_reload = endpoint(admin, CLUSTER, depooled.addr()).await?;
    assert_eq!(at_reload["pooled"], false, "{at_reload}");
    assert!(!at_reload["draining_since"].is_null(), "{at_reload}");
    assert!(
        count(&at_reload, "active_sessions") >= 1,
        "the long session is still there: {at_reload}"
    );
    assert_eq!(long.value("SELECT 1").await?, "1", "and still answers");
    let kept_at_reload = count(
        &endpoint(admin, CLUSTER, kept.addr()).await?,
        "total_sessions",
    );

    let out = bench.await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "pgbench failed ({}):\n{stdout}\n{stderr}\nlegate:\n{}",
        out.status,
        legate.stderr_text()
    );
    let report = Pgbench::parse(&stdout)?;
    assert_eq!(report.failed, 0, "{stdout}\n{stderr}");
    assert!(report.processed > 20, "{stdout}");
    assert!(
        !stderr.contains("error"),
        "pgbench reported errors:\n{stderr}"
    );

    let after = endpoint(admin, CLUSTER, depooled.addr()).await?;
    // Sessions placed before the reload may have been counted just after it: at most one
    // per pgbench client.
    let late = count(&after, "total_sessions") - count(&at_reload, "total_sessions");
    assert!(
        late <= 4,
        "{late} sessions reached the depooled replica: {after}"
    );
    let kept_after = count(
        &endpoint(admin, CLUSTER, kept.addr()).await?,
        "total_sessions",
    );
    assert!(
        kept_after >= kept_at_reload + 20,
        "pgbench went on on the other replica ({kept_at_reload} → {kept_after})"
    );

    // Without a drain timeout, the depooled replica keeps its session until the client ends it.
    wait_endpoint(
        admin,
        CLUSTER,
        depooled.addr(),
        Duration::from_secs(5),
        "left with the long session only",
        |e| e["active_sessions"] == 1,
    )
    .await?;
    assert_eq!(long.server_port().await?, depooled.port());
    // Its queries can still be cancelled through Legate.
    let token = long.client.cancel_token();
    let sleep = "SELECT pg_sleep(30)";
    let query = tokio::spawn(async move {
        let result = long.client.simple_query(sleep).await;
        (result, long)
    });
    wait_running(depooled, sleep).await?;
    token.cancel_query(NoTls).await?;
    let (result, long) = tokio::time::timeout(Duration::from_secs(5), query)
        .await
        .context("the query on the depooled replica was not cancelled")??;
    let err = result.expect_err("cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    let c = postgres::cluster(admin, CLUSTER).await?;
    assert_eq!(c["cancels_routed"], 1, "{c}");
    drop(long);
    wait_endpoint(
        admin,
        CLUSTER,
        depooled.addr(),
        Duration::from_secs(5),
        "without sessions",
        |e| e["active_sessions"] == 0,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn drain_timeout_closes_sessions_of_a_depooled_replica() -> Result<()> {
    let pg = PgSet::start(2).await?;
    let (depooled, kept) = (&pg.replicas[0], &pg.replicas[1]);
    // The listener's drain timeout overrides the cluster's.
    let config = |first_pooled: bool| {
        depool_config(
            &pg,
            first_pooled,
            ", drain_timeout: 1s",
            "    drain_timeout: 1h\n",
        )
        .set("ADMIN", "127.0.0.1:0")
    };
    let proxy = start_proxy(config(true)).await?;
    let (front, admin) = (proxy.addr("pg"), proxy.admin());
    let mut doomed = session_on(front, depooled.port()).await?;
    let other = session_on(front, kept.port()).await?;

    proxy.apply(config(false))?;
    assert_eq!(
        doomed.value("SELECT 1").await?,
        "1",
        "the session lives on during the drain"
    );
    if let Err(e) = doomed.closed(Duration::from_secs(5)).await {
        let status = postgres::cluster(admin, CLUSTER).await?;
        bail!("{e:#}; Legate did not close it: {status}");
    }
    let err = doomed
        .value("SELECT 1")
        .await
        .expect_err("the next query fails");
    assert!(format!("{err:#}").contains("closed"), "{err:#}");

    assert_eq!(
        other.value("SELECT 2").await?,
        "2",
        "the kept replica's session lives"
    );
    let e = wait_endpoint(
        admin,
        CLUSTER,
        depooled.addr(),
        Duration::from_secs(5),
        "without sessions",
        |e| e["active_sessions"] == 0,
    )
    .await?;
    assert!(!e["draining_since"].is_null(), "{e}");

    // Pooled again: no longer draining, and it takes sessions.
    proxy.apply(config(true))?;
    let e = endpoint(admin, CLUSTER, depooled.addr()).await?;
    assert!(e["draining_since"].is_null(), "{e}");
    let back = session_on(front, depooled.port()).await?;
    assert_eq!(back.value("SELECT 3").await?, "3");
    Ok(())
}

/// A reload that depools a replica and, at the same time, sets a drain timeout: the open
/// session on the replica should be closed after that timeout too, as the docs of
/// `drain_timeout` say ("when an endpoint is depooled or removed, close its TCP sessions after
/// this long").
#[tokio::test]
async fn drain_timeout_given_with_the_depool_applies_to_open_sessions() -> Result<()> {
    let pg = PgSet::start(2).await?;
    let depooled = &pg.replicas[0];
    let proxy = start_proxy(depool_config(&pg, true, "", "")).await?;
    let (front, admin) = (proxy.addr("pg"), proxy.admin());
    let mut doomed = session_on(front, depooled.port()).await?;

    proxy
        .apply(depool_config(&pg, false, ", drain_timeout: 1s", "").set("ADMIN", "127.0.0.1:0"))?;
    if let Err(e) = doomed.closed(Duration::from_secs(5)).await {
        let status = endpoint(admin, CLUSTER, depooled.addr()).await?;
        bail!(
            "{e:#}: a session on the replica depooled with drain_timeout 1s was not closed \
             (sessions keep the listener settings of the config they started under): {status}"
        );
    }
    Ok(())
}

// === cancel routing ===

/// Waits until `sql` runs on `server` (as seen in pg_stat_activity).
async fn wait_running(server: &postgres::Server, sql: &str) -> Result<()> {
    let probe = server.connect().await?;
    let check =
        format!("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = '{sql}'");
    eventually(Duration::from_secs(5), || async {
        let n = probe.value(&check).await?;
        ensure!(n == "1", "{sql:?} runs {n} times on {}", server.name());
        Ok(())
    })
    .await
}

#[tokio::test]
async fn cancel_requests_reach_the_server_that_owns_the_session() -> Result<()> {
    let pg = PgSet::start(2).await?;
    // Round robin over two: whatever connection follows a session would be placed on the
    // *other* replica, so a cancel that is balanced like a session misses its query.
    let proxy = start_proxy(pg_config("round_robin", &list(&pg.replica_addrs()))).await?;
    let (front, admin) = (proxy.addr("pg"), proxy.admin());

    // tokio-postgres: the cancel token aims at the address it connected to, Legate's.
    let session = Session::connect(front).await?;
    let owner = pg
        .replica_on(session.server_port().await?)
        .context("on a replica")?;
    let token = session.client.cancel_token();
    let sleep = "SELECT pg_sleep(30)";
    let query = tokio::spawn(async move {
        let result = session.client.simple_query(sleep).await;
        (result, session)
    });
    wait_running(owner, sleep).await?;
    let sent = Instant::now();
    token.cancel_query(NoTls).await?;
    let (result, session) = tokio::time::timeout(Duration::from_secs(5), query)
        .await
        .context("the query was not cancelled")??;
    let took = sent.elapsed();
    let err = result.expect_err("the sleep is cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
    let message = err.as_db_error().map(|e| e.message().to_owned());
    assert_eq!(
        message.as_deref(),
        Some("canceling statement due to user request"),
        "{err:?}"
    );
    assert!(took < Duration::from_secs(2), "cancelled after {took:?}");
    assert_eq!(session.value("SELECT 1").await?, "1", "the session goes on");
    let c = postgres::cluster(admin, CLUSTER).await?;
    assert_eq!(c["cancels_routed"], 1, "{c}");
    assert_eq!(c["cancels_broadcast"], 0, "{c}");

    // psql, interrupted: it sends the cancel to the host and port it connected to.
    let mut cmd = psql_command(front, sleep)?;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn()?;
    let pid = child.id().context("psql has a pid")?;
    eventually(Duration::from_secs(5), || async {
        for r in &pg.replicas {
            if is_running(r, sleep).await? {
                return Ok(());
            }
        }
        bail!("psql's query is not running yet")
    })
    .await?;
    let sent = Instant::now();
    let status = tokio::process::Command::new("kill")
        .args(["-s", "INT", &pid.to_string()])
        .status()
        .await?;
    ensure!(status.success(), "kill -s INT {pid}");
    let out = tokio::time::timeout(Duration::from_secs(5), child.wait_with_output())
        .await
        .context("psql was not cancelled")??;
    let took = sent.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("canceling statement due to user request"),
        "psql said: {stderr}"
    );
    assert!(!out.status.success());
    assert!(took < Duration::from_secs(2), "cancelled after {took:?}");
    let c = postgres::cluster(admin, CLUSTER).await?;
    assert_eq!(c["cancels_routed"], 2, "{c}");
    assert_eq!(c["cancels_broadcast"], 0, "{c}");

    // A key Legate has not seen goes to every pooled endpoint (which ignore it).
    let mut cancel = Vec::new();
    for word in [16i32, 80_877_102, 12_345, -6_789] {
        cancel.extend_from_slice(&word.to_be_bytes());
    }
    let mut raw = TcpStream::connect(front).await?;
    raw.write_all(&cancel).await?;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut rest))
        .await
        .context("Legate closes a cancel connection")??;
    assert!(rest.is_empty(), "a cancel gets no answer: {rest:?}");
    let c = eventually(Duration::from_secs(5), || async {
        let c = postgres::cluster(admin, CLUSTER).await?;
        ensure!(c["cancels_broadcast"] == 1, "{c}");
        Ok(c)
    })
    .await?;
    assert_eq!(c["cancels_routed"], 2, "{c}");
    Ok(())
}

/// A client that offers TLS before its cancel (tokio-postgres with a TLS connector and the
/// default `sslmode=prefer`, libpq 17's new cancel API) sends SSLRequest, gets `N` from a
/// server without TLS, then sends the CancelRequest in the clear on the same connection. The
/// session's key is known (the session itself did the same and the sniffer followed it), so
/// the cancel should reach the owner like a plain one.
#[tokio::test]
async fn cancel_after_a_refused_ssl_request_reaches_the_owner() -> Result<()> {
    let pg = PgSet::start(2).await?;
    // Round robin: the connection after the session's is placed on the other replica.
    let proxy = start_proxy(pg_config("round_robin", &list(&pg.replica_addrs()))).await?;
    let (front, admin) = (proxy.addr("pg"), proxy.admin());
    let session = Session::connect(front).await?;
    let owner = pg
        .replica_on(session.server_port().await?)
        .context("on a replica")?;
    let token = session.client.cancel_token();
    let sleep = "SELECT pg_sleep(30)";
    let query = tokio::spawn(async move {
        let result = session.client.simple_query(sleep).await;
        (result, session)
    });
    wait_running(owner, sleep).await?;

    let mut raw = TcpStream::connect(front).await?;
    raw.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?; // SSLRequest
    let mut answer = [0u8; 1];
    raw.read_exact(&mut answer).await?;
    assert_eq!(&answer, b"N", "the servers have no TLS");
    // With NoTls the token skips its own negotiation and sends the CancelRequest at once.
    token.cancel_query_raw(raw, NoTls).await?;
    let outcome = tokio::time::timeout(Duration::from_secs(3), query).await;
    let c = postgres::cluster(admin, CLUSTER).await?;
    let Ok(joined) = outcome else {
        bail!(
            "the query was not cancelled: the CancelRequest after SSLRequest/N went to the \
             server picked for a new session, not to {} (cancels_routed {}, cancels_broadcast \
             {}; total_sessions {:?})",
            owner.name(),
            c["cancels_routed"],
            c["cancels_broadcast"],
            c["endpoints"].as_array().map(|e| e
                .iter()
                .map(|e| e["total_sessions"].clone())
                .collect::<Vec<_>>())
        );
    };
    let (result, _session) = joined?;
    let err = result.expect_err("the sleep is cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    assert_eq!(c["cancels_routed"], 1, "{c}");
    Ok(())
}

/// Whether `sql` is running on `server` right now.
async fn is_running(server: &postgres::Server, sql: &str) -> Result<bool> {
    let n = server
        .value(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = '{sql}'"
        ))
        .await?;
    Ok(n == "1")
}

// === health checks ===

#[tokio::test]
async fn server_out_of_connection_slots_is_marked_down() -> Result<()> {
    let pg = PgSet::start_with(
        0,
        &[
            "-c max_connections=3",
            "-c superuser_reserved_connections=0",
        ],
    )
    .await?;
    let server = &pg.primary;
    let config = pg_config_with(
        "least_connections",
        &list(&[server.addr()]),
        "",
        "    panic_threshold: 0\n",
    );
    let proxy = start_proxy(config).await?;
    let (front, admin) = (proxy.addr("pg"), proxy.admin());
    let limit = Duration::from_secs(5);
    wait_health(admin, CLUSTER, server.addr(), "healthy", limit).await?;

    // Take every slot (a health check may hold one for a moment: retry).
    let mut hogs = Vec::new();
    for _ in 0..3 {
        hogs.push(eventually(limit, || server.connect()).await?);
    }
    let refused = server.connect().await.expect_err("no slot is left");
    assert!(
        format!("{refused:#}").contains("too many clients"),
        "{refused:#}"
    );

    wait_health(admin, CLUSTER, server.addr(), "unhealthy", limit).await?;
    // Legate answers the startup with a FATAL error of its own.
    let err = Session::connect(front)
        .await
        .expect_err("Legate has no server to offer");
    let db = err
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.as_db_error())
        .with_context(|| format!("not a server error: {err:#}"))?;
    assert_eq!(db.message(), "no database server is available", "{db:?}");
    assert_eq!(db.code(), &SqlState::CONNECTION_FAILURE, "{db:?}");
    // psql offers TLS first, and libpq reports no server text for an error received then.
    let err = psql(front, "SELECT 1").await.expect_err("psql fails too");
    assert!(format!("{err:#}").contains("error response"), "{err:#}");

    drop(hogs);
    wait_health(admin, CLUSTER, server.addr(), "healthy", limit).await?;
    assert_eq!(psql(front, "SELECT 1").await?, "1");
    Ok(())
}

#[tokio::test]
async fn check_with_credentials_requires_a_replica() -> Result<()> {
    let pg = PgSet::start(1).await?;
    let (primary, replica) = (&pg.primary, &pg.replicas[0]);
    let dir = tempfile::tempdir()?;
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, format!("{CHECK_PASSWORD}\n"))?;
    let both = list(&[primary.addr(), replica.addr()]);
    let config = yaml(
        r#"
admin: { listen: 127.0.0.1:0 }
access_log: { enabled: false }
listeners:
  - name: pg
    listen: 127.0.0.1:0
    tcp: { cluster: replicas, protocol: postgres }
clusters:
  - name: replicas
    lb: least_connections
    health_check:
      { postgres: { user: ${USER}, password: ${PASSWORD}, require_replica: true, max_lag: 30s }${CHECKS} }
    endpoints: [${BOTH}]
  - name: from_file
    health_check:
      { postgres: { user: ${USER}, password_file: "${FILE}", require_replica: true }${CHECKS} }
    endpoints: ["${REPLICA}"]
  - name: wrong_password
    health_check: { postgres: { user: ${USER}, password: wrong }${CHECKS} }
    endpoints: ["${REPLICA}"]
  - name: any_server
    health_check: { postgres: { user: ${USER} }${CHECKS} }
    endpoints: [${BOTH}]
"#,
    )
    .set("USER", CHECK_USER)
    .set("PASSWORD", CHECK_PASSWORD)
    .set("FILE", password_file.display())
    .set(
        "CHECKS",
        ", interval: 1s, timeout: 1s, jitter: 0s, unhealthy_threshold: 2, healthy_threshold: 2",
    )
    .set("BOTH", &both)
    .set("REPLICA", replica.addr());
    let proxy = start_proxy(config).await?;
    let (front, admin) = (proxy.addr("pg"), proxy.admin());
    // A login (SCRAM) per check: slow in a debug build, so checks are 1 s apart.
    let limit = Duration::from_secs(10);

    let p = wait_health(admin, CLUSTER, primary.addr(), "unhealthy", limit).await?;
    assert_eq!(p["pooled"], true, "{p}");
    wait_health(admin, CLUSTER, replica.addr(), "healthy", limit).await?;
    wait_health(admin, "from_file", replica.addr(), "healthy", limit).await?;
    // Logging in fails: down.
    wait_health(admin, "wrong_password", replica.addr(), "unhealthy", limit).await?;
    // Asked for a password, the credential-free check calls any server up.
    for addr in [primary.addr(), replica.addr()] {
        wait_health(admin, "any_server", addr, "healthy", limit).await?;
    }
    // Sessions go to the replica only.
    for _ in 0..6 {
        let s = Session::connect(front).await?;
        assert_eq!(s.value("SELECT pg_is_in_recovery()").await?, "t");
        assert_eq!(s.server_port().await?, replica.port());
    }
    // The role really needs its password (the check logged in with SCRAM).
    let err = Session::connect_as(replica.addr(), CHECK_USER, Some("wrong"))
        .await
        .expect_err("a wrong password is refused");
    assert!(format!("{err:#}").contains("password"), "{err:#}");
    Session::connect_as(replica.addr(), CHECK_USER, Some(CHECK_PASSWORD)).await?;
    Ok(())
}

#[tokio::test]
async fn a_replica_whose_replay_is_paused_goes_down_past_max_lag_and_returns_on_resume(
) -> Result<()> {
    let pg = PgSet::start(1).await?;
    let (primary, replica) = (&pg.primary, &pg.replicas[0]);
    let config = yaml(
        r#"
admin: { listen: 127.0.0.1:0 }
access_log: { enabled: false }
listeners:
  - name: pg
    listen: 127.0.0.1:0
    tcp: { cluster: replicas, protocol: postgres }
clusters:
  - name: replicas
    health_check:
      { postgres: { user: ${USER}, password: ${PASSWORD}, max_lag: 2s }${CHECKS} }
    endpoints: ["${REPLICA}"]
  - name: patient
    health_check:
      { postgres: { user: ${USER}, password: ${PASSWORD}, max_lag: 1h }${CHECKS} }
    endpoints: ["${REPLICA}"]
"#,
    )
    .set("USER", CHECK_USER)
    .set("PASSWORD", CHECK_PASSWORD)
    .set(
        "CHECKS",
        ", interval: 1s, timeout: 1s, jitter: 0s, unhealthy_threshold: 1, healthy_threshold: 1",
    )
    .set("REPLICA", replica.addr());
    let proxy = start_proxy(config).await?;
    let admin = proxy.admin();
    let limit = Duration::from_secs(15);

    // A transaction the replica has replayed, so replay has a timestamp to lag behind.
    primary
        .connect()
        .await?
        .execute("CREATE TABLE lag_probe (n int); INSERT INTO lag_probe VALUES (1)")
        .await?;
    eventually(limit, || async {
        ensure!(replica.value("SELECT count(*) FROM lag_probe").await? == "1");
        Ok(())
    })
    .await?;
    wait_health(admin, CLUSTER, replica.addr(), "healthy", limit).await?;

    // Replay paused while the primary keeps writing: the replica receives WAL it does not
    // apply, and its lag grows past 2 s.
    replica.value("SELECT pg_wal_replay_pause()").await?;
    let primary_session = primary.connect().await?;
    primary_session
        .execute("INSERT INTO lag_probe VALUES (2)")
        .await?;
    eventually(limit, || async {
        // Keep WAL arriving, so the replica never looks caught up.
        primary_session
            .execute("INSERT INTO lag_probe VALUES (3)")
            .await?;
        let e = endpoint(admin, CLUSTER, replica.addr()).await?;
        ensure!(
            e["health"] == "unhealthy",
            "still healthy while paused: {e}"
        );
        Ok(())
    })
    .await?;
    assert_eq!(
        replica.value("SELECT count(*) FROM lag_probe").await?,
        "1",
        "replay really is paused"
    );
    // The same checks with a looser max_lag still pass: the query works, only the lag is high.
    let patient = endpoint(admin, "patient", replica.addr()).await?;
    assert_eq!(patient["health"], "healthy", "{patient}");

    replica.value("SELECT pg_wal_replay_resume()").await?;
    wait_health(admin, CLUSTER, replica.addr(), "healthy", limit).await?;
    Ok(())
}

// === plain TCP ===

const TCP_CONFIG: &str = r#"
admin: { listen: 127.0.0.1:0 }
access_log: { enabled: false }
listeners:
  - name: raw
    listen: 127.0.0.1:0
    tcp: { cluster: upstream }
clusters:
  - name: upstream
    endpoints: ["${UPSTREAM}"]
"#;

#[tokio::test]
async fn plain_tcp_relays_both_ways_and_half_closes() -> Result<()> {
    // Reads until the client's EOF, then answers with what it got and closes.
    let upstream = TcpListener::bind("127.0.0.1:0").await?;
    let upstream_addr = upstream.local_addr()?;
    let server = tokio::spawn(async move {
        let (mut s, _) = upstream.accept().await?;
        s.write_all(b"hello\n").await?;
        let mut got = Vec::new();
        s.read_to_end(&mut got).await?;
        let digest: u64 = got.iter().map(|b| u64::from(*b)).sum();
        s.write_all(format!("got {} bytes, sum {digest}\n", got.len()).as_bytes())
            .await?;
        s.shutdown().await?;
        anyhow::Ok(got.len())
    });
    let proxy = start_proxy(yaml(TCP_CONFIG).set("UPSTREAM", upstream_addr)).await?;
    let admin = proxy.admin();

    let mut client = TcpStream::connect(proxy.addr("raw")).await?;
    let mut greeting = [0u8; 6];
    client.read_exact(&mut greeting).await?;
    assert_eq!(
        &greeting, b"hello\n",
        "bytes flow before the client sends any"
    );
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let digest: u64 = payload.iter().map(|b| u64::from(*b)).sum();
    client.write_all(&payload).await?;
    client.shutdown().await?; // half-close: no more from the client, still reading
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_string(&mut answer))
        .await
        .context("the upstream's last bytes never came")??;
    assert_eq!(answer, format!("got 1000000 bytes, sum {digest}\n"));
    assert_eq!(server.await??, payload.len());

    let e = wait_endpoint(
        admin,
        "upstream",
        upstream_addr,
        Duration::from_secs(5),
        "done with its session",
        |e| e["active_sessions"] == 0 && e["total_sessions"] == 1,
    )
    .await?;
    assert_eq!(count(&e, "bytes_to_upstream"), 1_000_000, "{e}");
    assert_eq!(
        count(&e, "bytes_to_client"),
        (6 + answer.len()) as u64,
        "{e}"
    );
    Ok(())
}

#[tokio::test]
async fn plain_tcp_upstream_half_close_reaches_the_client() -> Result<()> {
    // The server speaks first and closes its side; the client then still sends, and the
    // server reads it all.
    let upstream = TcpListener::bind("127.0.0.1:0").await?;
    let upstream_addr = upstream.local_addr()?;
    let server = tokio::spawn(async move {
        let (mut s, _) = upstream.accept().await?;
        s.write_all(b"banner, then my side is closed\n").await?;
        s.shutdown().await?;
        let mut got = Vec::new();
        s.read_to_end(&mut got).await?;
        anyhow::Ok(got)
    });
    let proxy = start_proxy(yaml(TCP_CONFIG).set("UPSTREAM", upstream_addr)).await?;
    let mut client = TcpStream::connect(proxy.addr("raw")).await?;
    let mut banner = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut banner))
        .await
        .context("the upstream's EOF never reached the client")??;
    assert_eq!(banner, b"banner, then my side is closed\n");
    client.write_all(b"late words").await?;
    client.shutdown().await?;
    let got = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .context("the upstream never saw the client's EOF")???;
    assert_eq!(got, b"late words");
    Ok(())
}

#[tokio::test]
async fn plain_tcp_slow_upstream_stalls_the_client_instead_of_buffering() -> Result<()> {
    // The upstream accepts, then reads nothing until told to.
    let upstream = TcpListener::bind("127.0.0.1:0").await?;
    let upstream_addr = upstream.local_addr()?;
    let (go, gate) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let (mut s, _) = upstream.accept().await?;
        let _ = gate.await;
        let mut total = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return anyhow::Ok(total);
            }
            total += n as u64;
        }
    });
    let proxy = start_proxy(yaml(TCP_CONFIG).set("UPSTREAM", upstream_addr)).await?;
    let mut client = TcpStream::connect(proxy.addr("raw")).await?;

    // Write until a write makes no progress for a second: then every buffer on the way
    // (the sockets' and Legate's 16 KiB per direction) is full.
    let chunk = vec![7u8; 64 * 1024];
    let cap: u64 = 256 * 1024 * 1024;
    let mut sent = 0u64;
    while sent < cap {
        match tokio::time::timeout(Duration::from_secs(1), client.write(&chunk)).await {
            Ok(n) => sent += n? as u64,
            Err(_) => break,
        }
    }
    // Loopback socket buffers autotune up to a few MiB each (client send, Legate receive and
    // send, upstream receive); a proxy that buffered without bound would take all 256 MiB.
    assert!(
        sent < 64 * 1024 * 1024,
        "Legate accepted {sent} bytes the upstream never read"
    );

    let _ = go.send(());
    client.shutdown().await?;
    let total = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .context("the upstream never got everything")???;
    assert_eq!(
        total, sent,
        "every byte written arrived once the upstream read"
    );
    Ok(())
}

// === L4 limits ===

/// A fake upstream that accepts connections, counts them, and echoes what it reads.
async fn counting_echo() -> Result<(SocketAddr, tokio::sync::watch::Receiver<usize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (accepted, rx) = tokio::sync::watch::channel(0usize);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            accepted.send_modify(|n| *n += 1);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok((addr, rx))
}

/// Sends `message` and reads it back: the session reaches the echo upstream.
async fn echoes(stream: &mut TcpStream, message: &[u8]) -> Result<()> {
    stream.write_all(message).await?;
    let mut back = vec![0u8; message.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back))
        .await
        .context("no echo")??;
    ensure!(back == message, "echoed {back:?}");
    Ok(())
}

/// A Postgres StartupMessage (protocol 3.0) for user `app`.
fn startup_message() -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0app\0\0");
    let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    msg
}

#[tokio::test]
async fn tcp_sessions_beyond_the_clusters_max_connections_are_refused() -> Result<()> {
    let (upstream, accepted) = counting_echo().await?;
    let config = TCP_CONFIG.replace(
        "    endpoints: [\"${UPSTREAM}\"]",
        "    endpoints: [\"${UPSTREAM}\"]\n    circuit_breakers: { max_connections: 1 }",
    );
    let proxy = start_proxy(yaml(&config).set("UPSTREAM", upstream)).await?;
    let mut first = TcpStream::connect(proxy.addr("raw")).await?;
    echoes(&mut first, b"one").await?;

    // The cluster is at its limit: the second session is closed, never relayed.
    let mut second = TcpStream::connect(proxy.addr("raw")).await?;
    let _ = second.write_all(b"two").await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), second.read_to_end(&mut got))
        .await
        .context("the refused session was not closed")?;
    // Closed; or reset, as "two" was left unread: either way, nothing came back.
    if let Err(e) = read {
        ensure!(e.kind() == std::io::ErrorKind::ConnectionReset, "{e}");
    }
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(*accepted.borrow(), 1, "only one upstream connection");
    let clusters: Value = legate_integration::client::get(proxy.admin(), "admin", "/clusters")
        .await?
        .json()?;
    assert_eq!(clusters["clusters"][0]["overflows"], 1, "{clusters}");

    // Once the first ends, a new session gets through.
    drop(first);
    eventually(Duration::from_secs(5), || async {
        let mut next = TcpStream::connect(proxy.addr("raw")).await?;
        echoes(&mut next, b"three").await
    })
    .await
}

#[tokio::test]
async fn postgres_sessions_beyond_max_connections_get_sqlstate_53300() -> Result<()> {
    let (upstream, _) = counting_echo().await?;
    let config = TCP_CONFIG
        .replace(
            "tcp: { cluster: upstream }",
            "tcp: { cluster: upstream, protocol: postgres }",
        )
        .replace(
            "    endpoints: [\"${UPSTREAM}\"]",
            "    endpoints: [\"${UPSTREAM}\"]\n    circuit_breakers: { max_connections: 1 }",
        );
    let proxy = start_proxy(yaml(&config).set("UPSTREAM", upstream)).await?;
    // The echo plays a server that answers the startup with the startup itself.
    let mut first = TcpStream::connect(proxy.addr("raw")).await?;
    echoes(&mut first, &startup_message()).await?;

    let mut second = TcpStream::connect(proxy.addr("raw")).await?;
    second.write_all(&startup_message()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), second.read_to_end(&mut answer))
        .await
        .context("the refused session was not closed")??;
    assert_eq!(answer.first(), Some(&b'E'), "an ErrorResponse: {answer:?}");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("C53300\0"), "{text:?}");
    assert!(text.contains("too many connections"), "{text:?}");
    Ok(())
}

#[tokio::test]
async fn a_silent_postgres_client_holds_no_server_connection() -> Result<()> {
    let (upstream, mut accepted) = counting_echo().await?;
    let config = TCP_CONFIG.replace(
        "tcp: { cluster: upstream }",
        "tcp: { cluster: upstream, protocol: postgres }",
    );
    let proxy = start_proxy(yaml(&config).set("UPSTREAM", upstream)).await?;
    let _silent = TcpStream::connect(proxy.addr("raw")).await?;
    // Legate has the silent connection open ...
    eventually(Duration::from_secs(5), || async {
        let metrics = legate_integration::client::get(proxy.admin(), "admin", "/metrics")
            .await?
            .text();
        ensure!(
            metrics.contains("legate_downstream_connections_active{listener=\"raw\"} 1"),
            "{metrics}"
        );
        Ok(())
    })
    .await?;
    // ... and only a client that speaks gets a server connection.
    let mut speaking = TcpStream::connect(proxy.addr("raw")).await?;
    echoes(&mut speaking, &startup_message()).await?;
    accepted.wait_for(|n| *n >= 1).await?;
    assert_eq!(
        *accepted.borrow(),
        1,
        "no server connection for the silent client"
    );
    Ok(())
}

#[tokio::test]
async fn an_idle_tcp_session_is_closed_after_the_listeners_idle_timeout() -> Result<()> {
    let (upstream, _) = counting_echo().await?;
    let config = TCP_CONFIG.replace(
        "tcp: { cluster: upstream }",
        "tcp: { cluster: upstream, idle_timeout: 300ms }",
    );
    let proxy = start_proxy(yaml(&config).set("UPSTREAM", upstream)).await?;
    let mut session = TcpStream::connect(proxy.addr("raw")).await?;
    echoes(&mut session, b"still here").await?;
    // Then silence: Legate closes the session (the read ends) well before the test's limit.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), session.read_to_end(&mut rest))
        .await
        .context("the idle session stayed open")??;
    assert!(rest.is_empty(), "{rest:?}");
    Ok(())
}

#[tokio::test]
async fn a_tcp_session_fails_over_to_the_next_endpoint_when_a_connect_is_refused() -> Result<()> {
    let (live, accepted) = counting_echo().await?;
    let dead = legate_integration::upstream::closed_port();
    let config = TCP_CONFIG
        .replace(
            "tcp: { cluster: upstream }",
            "tcp: { cluster: upstream, connect_attempts: 2 }",
        )
        .replace(
            "    endpoints: [\"${UPSTREAM}\"]",
            "    lb: round_robin\n    endpoints: [\"${DEAD}\", \"${UPSTREAM}\"]",
        );
    let proxy = start_proxy(yaml(&config).set("UPSTREAM", live).set("DEAD", dead)).await?;
    // Round robin alternates, so some sessions try the dead endpoint first: every one of
    // them still reaches the live one.
    for i in 0..4 {
        let mut session = TcpStream::connect(proxy.addr("raw")).await?;
        echoes(&mut session, format!("session {i}").as_bytes()).await?;
    }
    assert_eq!(*accepted.borrow(), 4);
    let e = wait_endpoint(
        proxy.admin(),
        "upstream",
        dead,
        Duration::from_secs(5),
        "counted as failed connects",
        |e| e["connect_failures"].as_u64().is_some_and(|n| n >= 1),
    )
    .await?;
    assert_eq!(count(&e, "total_sessions"), 0, "{e}");
    Ok(())
}

// === session log ===

/// One access-log line per L4 session, at its end: a psql-like session (who closed it, the
/// server it went to, the bytes each way) and one that found no server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_session_ends_with_an_access_log_line() -> Result<()> {
    let pg = PgSet::start(0).await?;
    let dead = legate_integration::upstream::closed_port();
    let config = yaml(
        r#"
admin: { listen: "${ADMIN}" }
access_log: { enabled: true, format: text }
listeners:
  - { name: pg, listen: 127.0.0.1:0, tcp: { cluster: db, protocol: postgres } }
  - { name: gone, listen: 127.0.0.1:0, tcp: { cluster: nowhere, protocol: postgres, connect_attempts: 1 } }
clusters:
  - { name: db, endpoints: ["${PG}"] }
  - { name: nowhere, endpoints: ["${DEAD}"] }
"#,
    )
    .set("PG", pg.primary.addr())
    .set("DEAD", dead);
    let legate = Legate::start(config).await?;

    let session = Session::connect(legate.addr("pg")).await?;
    assert_eq!(session.value("SELECT 1").await?, "1");
    drop(session);
    let lines = legate.wait_stdout_lines(1).await?;
    let line = &lines[0];
    assert!(line.contains(" pg 127.0.0.1:"), "{line}");
    assert!(line.contains(" \"postgres\" "), "{line}");
    assert!(line.contains(" cluster=db "), "{line}");
    assert!(
        line.contains(&format!(" upstream={} ", pg.primary.addr())),
        "{line}"
    );
    assert!(line.ends_with(" end=client-close"), "{line}");
    let bytes = |key: &str| -> Result<u64> {
        let rest = line
            .split_once(&format!(" {key}="))
            .with_context(|| format!("no {key} in {line}"))?
            .1;
        Ok(rest.split(' ').next().unwrap_or_default().parse()?)
    };
    assert!(
        bytes("to_upstream")? > 0 && bytes("to_client")? > 0,
        "{line}"
    );

    // No server to be had: the client is told so, and the line says why.
    let refused = Session::connect(legate.addr("gone")).await;
    assert!(refused.is_err(), "no database server is available");
    let lines = legate.wait_stdout_lines(2).await?;
    let line = &lines[1];
    assert!(line.contains(" gone "), "{line}");
    assert!(line.contains(" cluster=nowhere upstream=- "), "{line}");
    assert!(line.ends_with(" end=connect-failure"), "{line}");
    Ok(())
}

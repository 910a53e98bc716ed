//! Real PostgreSQL for the end-to-end tests: a primary and streaming replicas on loopback,
//! each test with its own set, and the clients that talk to them (tokio-postgres sessions,
//! `psql`, `pgbench`).
//!
//! - [`PgSet`]: `initdb` + a primary started with `pg_ctl`, then `pg_basebackup -R` replicas,
//!   each on its own ephemeral port, with sockets and data in one temporary directory; every
//!   server is stopped (`-m immediate`) and the directory removed when the set is dropped;
//! - [`Server`]: one of them: stop (`immediate` or `fast`), start again on the same port, its
//!   log;
//! - [`Session`]: one tokio-postgres connection (through Legate or straight to a server) whose
//!   end can be awaited;
//! - [`psql`], [`pgbench`]: the command-line clients, and [`Pgbench`], pgbench's report;
//! - [`clusters`], [`endpoint`], [`wait_endpoint`]: Legate's `GET /clusters`.
//!
//! The server binaries are looked up in `$LEGATE_PG_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin` (Debian's layout); PostgreSQL refuses to run as root, so when
//! the tests run as root the server commands run as the `postgres` user (`runuser`).
//!
//! Every server trusts local connections (`initdb -A trust`) except for one role, [`CHECK_USER`]
//! with password [`CHECK_PASSWORD`], which must log in with SCRAM from 127.0.0.1 (for the
//! health check with credentials).

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use serde_json::Value;
use tokio::process::Command;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::client;

/// The role that logs in with a password (SCRAM) from 127.0.0.1.
pub const CHECK_USER: &str = "checker";
/// [`CHECK_USER`]'s password.
pub const CHECK_PASSWORD: &str = "secret";

/// How long a server may take to start or stop, and a client to connect or answer.
const LIMIT: Duration = Duration::from_secs(30);

/// The directory with `initdb`, `pg_ctl`, `pg_basebackup`, `postgres`, `psql`, `pgbench`:
/// `$LEGATE_PG_BIN`, else the newest `/usr/lib/postgresql/<version>/bin`.
pub fn bin_dir() -> Result<PathBuf> {
    const NEEDED: [&str; 5] = [
        "initdb",
        "pg_ctl",
        "pg_basebackup",
        "postgres",
        "pg_isready",
    ];
    let missing = |dir: &Path| -> Vec<&str> {
        NEEDED
            .iter()
            .copied()
            .filter(|b| !dir.join(b).is_file())
            .collect()
    };
    if let Some(dir) = std::env::var_os("LEGATE_PG_BIN") {
        let dir = PathBuf::from(dir);
        let gone = missing(&dir);
        ensure!(
            gone.is_empty(),
            "LEGATE_PG_BIN={} lacks {gone:?}",
            dir.display()
        );
        return Ok(dir);
    }
    let root = Path::new("/usr/lib/postgresql");
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            missing(&bin).is_empty().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, dir)) => Ok(dir),
        None => bail!(
            "PostgreSQL server binaries ({}) were not found in /usr/lib/postgresql/*/bin; \
             install them (`apt-get install postgresql`) or set LEGATE_PG_BIN to their directory",
            NEEDED.join(", ")
        ),
    }
}

/// The path of PostgreSQL program `name` (server or client).
pub fn program(name: &str) -> Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if path.is_file() {
        return Ok(path);
    }
    // Client programs may live apart from the server's (e.g. /usr/bin/psql).
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let path = Path::new(dir).join(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    bail!("PostgreSQL program {name} was not found (install the `postgresql` package)")
}

/// Whether this process runs as root (the owner of `/proc/self` is the effective user).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A free TCP port on 127.0.0.1 (bound, then released).
fn free_port() -> u16 {
    crate::upstream::closed_port().port()
}

/// Runs a server program as the user that may run PostgreSQL, in `dir`.
fn server_command(program: &Path, dir: &Path) -> Command {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.arg("-u").arg("postgres").arg("--").arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .env("LC_ALL", "C")
        .env_remove("PGDATA")
        .kill_on_drop(true);
    cmd
}

/// Runs `cmd` to completion within [`LIMIT`], failing with its output unless it succeeds.
async fn run(mut cmd: Command, what: &str) -> Result<Output> {
    let out = tokio::time::timeout(LIMIT, cmd.output())
        .await
        .with_context(|| format!("{what} did not finish within {LIMIT:?}"))?
        .with_context(|| format!("running {what}"))?;
    ensure!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// One PostgreSQL server of a [`PgSet`].
#[derive(Debug)]
pub struct Server {
    name: String,
    bin: PathBuf,
    /// The set's directory (sockets, logs; the working directory of server commands).
    root: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    /// `postgres` options beyond port, socket directory and listen address.
    options: Vec<String>,
}

impl Server {
    /// `primary`, `replica1`, …
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pg_ctl(&self) -> Command {
        let mut cmd = server_command(&self.bin.join("pg_ctl"), &self.root);
        cmd.arg("-D").arg(&self.data);
        cmd
    }

    /// `pg_ctl start -w` on the server's port, then waits until `pg_isready` says it accepts
    /// connections.
    pub async fn start(&self) -> Result<()> {
        self.pg_ctl_start().await?;
        self.wait_isready(0, "accept connections").await
    }

    /// Starts a server that is up but turns sessions away (a standby without hot standby):
    /// waits until `pg_isready` says it is rejecting connections.
    pub async fn start_rejecting(&self) -> Result<()> {
        self.pg_ctl_start().await?;
        self.wait_isready(1, "reject connections").await
    }

    /// Adds `postgres` options (`-c name=value`) for the next start; later ones win.
    pub fn add_options(&mut self, options: &[&str]) {
        self.options.extend(options.iter().map(|o| (*o).to_owned()));
    }

    async fn pg_ctl_start(&self) -> Result<()> {
        let mut options = vec![
            format!("-p {}", self.port),
            format!("-k {}", self.root.display()),
            "-c listen_addresses=127.0.0.1".to_owned(),
        ];
        options.extend(self.options.iter().cloned());
        let mut cmd = self.pg_ctl();
        cmd.args(["start", "-w", "-t", "30", "-l"])
            .arg(&self.log)
            .arg("-o")
            .arg(options.join(" "));
        run(cmd, &format!("pg_ctl start ({})", self.name))
            .await
            .map_err(|e| anyhow!("{e:#}\n--- {} log ---\n{}", self.name, self.log()))
            .map(drop)
    }

    /// Polls `pg_isready` until it exits with `code` (0: accepting connections, 1:
    /// rejecting them, 2: no response), at most [`LIMIT`].
    async fn wait_isready(&self, code: i32, what: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let status = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-t", "2", "-p"])
                .arg(self.port.to_string())
                .stdin(Stdio::null())
                .status()
                .await
                .context("running pg_isready")?;
            if status.code() == Some(code) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} did not {what} within {LIMIT:?} (pg_isready: {status}):\n{}",
                    self.name,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `pg_ctl stop -m smart` without waiting: the server turns new sessions away ("the
    /// database system is shutting down") and stops once its last session ends.
    pub async fn begin_smart_shutdown(&self) -> Result<()> {
        let mut cmd = self.pg_ctl();
        cmd.args(["stop", "-W", "-m", "smart"]);
        run(cmd, &format!("pg_ctl stop -m smart ({})", self.name))
            .await
            .map(drop)
    }

    /// Waits until the server's postmaster has exited (`pg_ctl status`), at most [`LIMIT`].
    pub async fn wait_stopped(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let mut cmd = self.pg_ctl();
            cmd.arg("status")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // Exit status 3: no server running.
            if cmd.status().await.context("running pg_ctl status")?.code() == Some(3) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("{} was still running after {LIMIT:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `pg_ctl stop -m immediate`: the postmaster and every backend are gone at once (a
    /// crash, as far as clients can tell).
    pub async fn stop_immediate(&self) -> Result<()> {
        self.stop("immediate").await
    }

    /// `pg_ctl stop -m fast`: sessions are terminated, then a clean shutdown.
    pub async fn stop_fast(&self) -> Result<()> {
        self.stop("fast").await
    }

    async fn stop(&self, mode: &str) -> Result<()> {
        let mut cmd = self.pg_ctl();
        cmd.args(["stop", "-w", "-t", "30", "-m", mode]);
        run(cmd, &format!("pg_ctl stop -m {mode} ({})", self.name))
            .await
            .map(drop)
    }

    /// A session straight to this server, as `postgres`.
    pub async fn connect(&self) -> Result<Session> {
        Session::connect(self.addr()).await
    }

    /// The first column of the first row of `sql`, run straight on this server.
    pub async fn value(&self, sql: &str) -> Result<String> {
        self.connect().await?.value(sql).await
    }

    /// Stops the server at once, blocking (for `Drop`).
    fn kill_blocking(&self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let mut cmd = if is_root() {
            let mut c = std::process::Command::new("runuser");
            c.arg("-u").arg("postgres").arg("--").arg(&pg_ctl);
            c
        } else {
            std::process::Command::new(&pg_ctl)
        };
        let _ = cmd
            .current_dir(&self.root)
            .arg("-D")
            .arg(&self.data)
            .args(["stop", "-w", "-t", "30", "-m", "immediate"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A primary and its streaming replicas (or a lone server), in one temporary directory.
/// Dropping the set stops every server and removes the directory.
#[derive(Debug)]
pub struct PgSet {
    pub primary: Server,
    pub replicas: Vec<Server>,
    // Dropped after the servers are stopped (fields drop in order, after `Drop::drop`).
    _dir: tempfile::TempDir,
}

impl Drop for PgSet {
    fn drop(&mut self) {
        for server in self.replicas.iter().chain([&self.primary]) {
            server.kill_blocking();
        }
    }
}

/// Options every server gets: small, fast, replicating.
const COMMON_OPTIONS: &[&str] = &[
    "-c wal_level=replica",
    "-c max_wal_senders=10",
    "-c hot_standby=on",
    "-c fsync=off",
    "-c shared_buffers=16MB",
    "-c max_connections=40",
];

impl PgSet {
    /// A primary and `replicas` streaming replicas, all accepting connections.
    pub async fn start(replicas: usize) -> Result<PgSet> {
        Self::start_with(replicas, &[]).await
    }

    /// Like [`PgSet::start`], with extra `postgres` options (`-c name=value`) for the primary.
    pub async fn start_with(replicas: usize, primary_options: &[&str]) -> Result<PgSet> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("legate-pg")
            .tempdir()
            .context("creating a temporary directory")?;
        let root = dir.path().to_path_buf();
        ensure!(
            !root.display().to_string().contains(char::is_whitespace),
            "the temporary directory {} has whitespace in its path",
            root.display()
        );
        if is_root() {
            let status = Command::new("chown")
                .arg("postgres:")
                .arg(&root)
                .status()
                .await
                .context("running chown")?;
            ensure!(
                status.success(),
                "chown postgres {} failed; does the `postgres` user exist?",
                root.display()
            );
        }

        let data = root.join("primary");
        let mut initdb = server_command(&bin.join("initdb"), &root);
        initdb
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data);
        run(initdb, "initdb").await?;
        // One role logs in with a password from 127.0.0.1; the first matching line wins.
        let hba = data.join("pg_hba.conf");
        let rest = std::fs::read_to_string(&hba).context("reading pg_hba.conf")?;
        std::fs::write(
            &hba,
            format!("host all {CHECK_USER} 127.0.0.1/32 scram-sha-256\n{rest}"),
        )
        .context("writing pg_hba.conf")?;

        let mut options: Vec<String> = COMMON_OPTIONS.iter().map(|o| (*o).to_owned()).collect();
        options.extend(primary_options.iter().map(|o| (*o).to_owned()));
        let primary = Server {
            name: "primary".to_owned(),
            bin: bin.clone(),
            root: root.clone(),
            log: root.join("primary.log"),
            data,
            port: free_port(),
            options,
        };
        // The set exists before any server starts, so whatever started is stopped on failure.
        let mut set = PgSet {
            primary,
            replicas: Vec::new(),
            _dir: dir,
        };
        start_on_free_port(&mut set.primary).await?;
        set.primary
            .connect()
            .await?
            .execute(&format!(
                "CREATE ROLE {CHECK_USER} LOGIN PASSWORD '{CHECK_PASSWORD}'"
            ))
            .await?;

        for i in 1..=replicas {
            let name = format!("replica{i}");
            let data = root.join(&name);
            let mut backup = server_command(&bin.join("pg_basebackup"), &root);
            backup
                .args([
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-R",
                    "-X",
                    "stream",
                    "-p",
                ])
                .arg(set.primary.port.to_string())
                .arg("-D")
                .arg(&data);
            run(backup, &format!("pg_basebackup for {name}")).await?;
            let mut replica = Server {
                log: root.join(format!("{name}.log")),
                name,
                bin: bin.clone(),
                root: root.clone(),
                data,
                port: free_port(),
                options: COMMON_OPTIONS.iter().map(|o| (*o).to_owned()).collect(),
            };
            // Pushed first, so the set stops it even if it never comes up.
            let started = start_on_free_port(&mut replica).await;
            set.replicas.push(replica);
            started?;
        }
        Ok(set)
    }

    /// The replicas' addresses.
    pub fn replica_addrs(&self) -> Vec<SocketAddr> {
        self.replicas.iter().map(Server::addr).collect()
    }

    /// The replica listening on `port`.
    pub fn replica_on(&self, port: u16) -> Option<&Server> {
        self.replicas.iter().find(|r| r.port == port)
    }

    /// `pgbench -i -s scale` on the primary, then waits until every replica has replayed it.
    pub async fn pgbench_init(&self, scale: u32) -> Result<()> {
        let mut cmd = pgbench(self.primary.addr())?;
        cmd.args(["-i", "-q", "-s"]).arg(scale.to_string());
        run(cmd, "pgbench -i").await?;
        self.wait_replicated().await
    }

    /// Waits until every replica has replayed the primary's WAL up to now.
    pub async fn wait_replicated(&self) -> Result<()> {
        let lsn = self.primary.value("SELECT pg_current_wal_lsn()").await?;
        for replica in &self.replicas {
            let session = replica.connect().await?;
            let sql = format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
            crate::eventually(LIMIT, || async {
                let caught_up = session.value(&sql).await?;
                ensure!(caught_up == "t", "{} has not replayed {lsn}", replica.name);
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// Every server's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for s in [&self.primary].into_iter().chain(&self.replicas) {
            out.push_str(&format!("--- {} ({}) ---\n{}\n", s.name, s.port, s.log()));
        }
        out
    }
}

/// Starts a new server, choosing another port if its port was taken meanwhile.
async fn start_on_free_port(server: &mut Server) -> Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match server.start().await {
            Ok(()) => return Ok(()),
            Err(_) if attempt < 3 && server.log().contains("could not bind") => {
                server.port = free_port();
            }
            Err(e) => return Err(e),
        }
    }
}

// === clients ===

/// One tokio-postgres connection; its driver runs on a task, so [`Session::closed`] can wait
/// for the server (or Legate) to end it.
#[derive(Debug)]
pub struct Session {
    pub client: Client,
    driver: JoinHandle<std::result::Result<(), tokio_postgres::Error>>,
}

impl Session {
    /// Connects as `postgres` to database `postgres` at `addr` (Legate or a server), without
    /// TLS.
    pub async fn connect(addr: SocketAddr) -> Result<Session> {
        Self::connect_as(addr, "postgres", None).await
    }

    /// Connects as `user`, with `password` if given.
    pub async fn connect_as(
        addr: SocketAddr,
        user: &str,
        password: Option<&str>,
    ) -> Result<Session> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(addr.ip().to_string())
            .port(addr.port())
            .user(user)
            .dbname("postgres")
            .application_name("legate-integration")
            .connect_timeout(Duration::from_secs(5));
        if let Some(p) = password {
            config.password(p);
        }
        let (client, connection) = tokio::time::timeout(LIMIT, config.connect(NoTls))
            .await
            .with_context(|| format!("connecting to {addr} timed out"))?
            .with_context(|| format!("connecting to postgres at {addr}"))?;
        let driver = tokio::spawn(connection);
        Ok(Session { client, driver })
    }

    /// The first column of the first row of `sql` (simple protocol, as text; `NULL` → "").
    pub async fn value(&self, sql: &str) -> Result<String> {
        let messages = tokio::time::timeout(LIMIT, self.client.simple_query(sql))
            .await
            .with_context(|| format!("{sql:?} took over {LIMIT:?}"))?
            .with_context(|| format!("running {sql:?}"))?;
        messages
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or_default().to_owned()),
                _ => None,
            })
            .with_context(|| format!("{sql:?} returned no row"))
    }

    /// Runs statements that return nothing.
    pub async fn execute(&self, sql: &str) -> Result<()> {
        tokio::time::timeout(LIMIT, self.client.batch_execute(sql))
            .await
            .with_context(|| format!("{sql:?} took over {LIMIT:?}"))?
            .with_context(|| format!("running {sql:?}"))
    }

    /// The port of the server this session ended up on (`current_setting('port')`).
    pub async fn server_port(&self) -> Result<u16> {
        let port = self.value("SELECT current_setting('port')").await?;
        port.parse()
            .with_context(|| format!("port {port:?} is not a number"))
    }

    /// Whether the connection has ended (closed by the peer, or failed).
    pub fn is_closed(&self) -> bool {
        self.driver.is_finished() || self.client.is_closed()
    }

    /// Waits until the connection ends (the peer closed it), at most `limit`.
    pub async fn closed(&mut self, limit: Duration) -> Result<()> {
        tokio::time::timeout(limit, &mut self.driver)
            .await
            .map_err(|_| anyhow!("the session was still open after {limit:?}"))?
            .context("the session's driver task")?
            .ok();
        Ok(())
    }
}

/// Runs `sql` with `psql` at `addr` (as `postgres`, default sslmode), returning its unaligned
/// tuples-only output.
pub async fn psql(addr: SocketAddr, sql: &str) -> Result<String> {
    let out = run(psql_command(addr, sql)?, "psql").await?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A `psql` command for `sql` at `addr` (not yet run).
pub fn psql_command(addr: SocketAddr, sql: &str) -> Result<Command> {
    let mut cmd = Command::new(program("psql")?);
    cmd.args([
        "-X",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-U",
        "postgres",
        "-d",
    ])
    .arg("postgres")
    .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
    .arg("-c")
    .arg(sql)
    .env("PGCONNECT_TIMEOUT", "5")
    .env_remove("PGSERVICE")
    .stdin(Stdio::null())
    .kill_on_drop(true);
    Ok(cmd)
}

/// A `pgbench` command aimed at `addr` as `postgres`, database `postgres`; add the mode and
/// its options (`-S -c 4 -T 5 -n`, `-i -s 1`, …).
pub fn pgbench(addr: SocketAddr) -> Result<Command> {
    let mut cmd = Command::new(program("pgbench")?);
    cmd.args(["-U", "postgres", "-h", &addr.ip().to_string()])
        .args(["-p", &addr.port().to_string()])
        .env("PGCONNECT_TIMEOUT", "5")
        .env("PGDATABASE", "postgres")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    Ok(cmd)
}

/// What a pgbench run reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Pgbench {
    pub processed: u64,
    pub failed: u64,
    pub tps: f64,
    pub latency_ms: f64,
}

impl Pgbench {
    /// Parses pgbench's summary (PostgreSQL 15's wording).
    pub fn parse(stdout: &str) -> Result<Pgbench> {
        let after = |prefix: &str| -> Result<&str> {
            stdout
                .lines()
                .find_map(|l| l.trim().strip_prefix(prefix))
                .map(str::trim)
                .with_context(|| format!("no {prefix:?} line in pgbench's output:\n{stdout}"))
        };
        let first_number = |text: &str| -> Result<f64> {
            let word = text.split_whitespace().next().unwrap_or_default();
            word.parse()
                .with_context(|| format!("{word:?} is not a number"))
        };
        let processed = after("number of transactions actually processed:")?;
        // "539" or "539/1000" with -t.
        let processed = processed
            .split(['/', ' '])
            .next()
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("{processed:?} is not a count"))?;
        // Older pgbench has no failure line: aborted clients show in the exit status instead.
        let failed = match after("number of failed transactions:") {
            Ok(text) => first_number(text)? as u64,
            Err(_) => 0,
        };
        Ok(Pgbench {
            processed,
            failed,
            tps: first_number(after("tps =")?)?,
            latency_ms: first_number(after("latency average =")?)?,
        })
    }
}

// === Legate's /clusters ===

/// `GET /clusters` on Legate's admin listener.
pub async fn clusters(admin: SocketAddr) -> Result<Value> {
    client::get(admin, "admin", "/clusters").await?.json()
}

/// The `/clusters` entry of cluster `name`.
pub async fn cluster(admin: SocketAddr, name: &str) -> Result<Value> {
    let all = clusters(admin).await?;
    all["clusters"]
        .as_array()
        .context("/clusters has a clusters list")?
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .with_context(|| format!("no cluster {name} in {all}"))
}

/// The `/clusters` entry of endpoint `addr` of cluster `name`.
pub async fn endpoint(admin: SocketAddr, name: &str, addr: SocketAddr) -> Result<Value> {
    let c = cluster(admin, name).await?;
    c["endpoints"]
        .as_array()
        .context("a cluster has an endpoints list")?
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .cloned()
        .with_context(|| format!("no endpoint {addr} in {c}"))
}

/// Polls `/clusters` until endpoint `addr` of cluster `name` satisfies `check` (at most
/// `limit`), returning its entry.
pub async fn wait_endpoint(
    admin: SocketAddr,
    name: &str,
    addr: SocketAddr,
    limit: Duration,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let check = &check;
    crate::eventually(limit, || async move {
        let e = endpoint(admin, name, addr).await?;
        ensure!(check(&e), "{addr} of cluster {name} is not {what}: {e}");
        Ok(e)
    })
    .await
}

/// Waits until `/clusters` shows endpoint `addr` with `health` (`healthy`, `unhealthy`).
pub async fn wait_health(
    admin: SocketAddr,
    name: &str,
    addr: SocketAddr,
    health: &str,
    limit: Duration,
) -> Result<Value> {
    wait_endpoint(admin, name, addr, limit, health, |e| e["health"] == health).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pgbench_output() {
        let out = "pgbench (15.18 (Debian 15.18-0+deb12u1))\n\
                   transaction type: <builtin: select only>\n\
                   number of transactions actually processed: 539\n\
                   number of failed transactions: 0 (0.000%)\n\
                   latency average = 14.927 ms\n\
                   average connection time = 7.322 ms\n\
                   tps = 267.975354 (including reconnection times)\n";
        let p = Pgbench::parse(out).expect("parses");
        assert_eq!(p.processed, 539);
        assert_eq!(p.failed, 0);
        assert!((p.tps - 267.975354).abs() < 1e-9);
        assert!((p.latency_ms - 14.927).abs() < 1e-9);
        let t = "number of transactions actually processed: 400/400\n\
                 number of failed transactions: 3 (0.750%)\n\
                 latency average = 1.5 ms\ntps = 10 (without initial connection time)\n";
        let p = Pgbench::parse(t).expect("parses");
        assert_eq!((p.processed, p.failed), (400, 3));
    }
}

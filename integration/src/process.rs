//! The real `legate` binary, run as a subprocess from a config file in a temporary directory.
//!
//! The binary must have been built (`cargo build -p legate --bin legate`); it is found next to
//! the test executable's directory (`target/debug/legate` for `target/debug/deps/<test>`).
//!
//! The config is a [`Yaml`] template like the in-process one, plus `${ADMIN}`, which the
//! harness fills with a free port it picked (the admin port must be known before start to
//! poll `/ready`). Listeners use port 0; their real addresses come from `GET /config`.
//! Stdout (the access log) and stderr (Legate's log) are collected line by line.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::client;
use crate::proxy::Yaml;

/// How long the binary may take to become ready, and any `wait_*` helper to succeed.
const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// The path of the built `legate` binary; panics with instructions if it is missing.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test> → target/<profile>/legate
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps");
    let path = profile_dir.join(format!("legate{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "the legate binary is missing at {}; build it first with \
         `cargo build -p legate --bin legate`",
        path.display()
    );
    path
}

/// The path of the built `legate-xds` binary, next to `legate`; panics with instructions if
/// it is missing.
pub fn xds_binary() -> PathBuf {
    let path = binary().with_file_name(format!("legate-xds{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "the legate-xds binary is missing at {}; build it first with \
         `cargo build -p legate-xds --bin legate-xds`",
        path.display()
    );
    path
}

/// A `legate` command with Legate's own log at `info`, whatever the caller's environment.
pub fn command() -> Command {
    let mut cmd = Command::new(binary());
    cmd.env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// `legate run --config CONFIG_PATH`.
fn run_command(config_path: &Path) -> Command {
    let mut cmd = command();
    cmd.arg("run").arg("--config").arg(config_path);
    cmd
}

/// Runs `legate ARGS…` to completion and returns its output.
pub async fn run(args: &[&str]) -> Result<std::process::Output> {
    tokio::time::timeout(WAIT_LIMIT, command().args(args).output())
        .await
        .context("legate did not exit in time")?
        .context("running legate")
}

/// Runs `legate ARGS…` in working directory `dir` to completion and returns its output.
pub async fn run_in(dir: &Path, args: &[&str]) -> Result<std::process::Output> {
    tokio::time::timeout(WAIT_LIMIT, command().current_dir(dir).args(args).output())
        .await
        .context("legate did not exit in time")?
        .context("running legate")
}

/// A free TCP port on 127.0.0.1 (bound, then released: another process could take it).
/// Only for an address a test must name before anything listens there (a listener moved to
/// it by a reload, a control plane started after the proxy); everything else binds port 0.
pub fn free_port() -> u16 {
    crate::upstream::closed_port().port()
}

/// A running `legate run --config FILE`; killed when dropped.
#[derive(Debug)]
pub struct Legate {
    child: Child,
    pid: u32,
    _dir: tempfile::TempDir,
    config_path: PathBuf,
    admin: SocketAddr,
    probes: Option<SocketAddr>,
    listeners: HashMap<String, SocketAddr>,
    stdout: watch::Sender<Vec<String>>,
    stderr: watch::Sender<Vec<String>>,
    /// With [`Legate::start_with_unread_stdout`]: the pipe nobody reads.
    _unread: Option<tokio::process::ChildStdout>,
}

impl Legate {
    /// Writes the config, starts the binary and waits until `/ready` answers 200.
    pub async fn start(config: impl Into<Yaml>) -> Result<Legate> {
        Legate::start_with(config, true, run_command).await
    }

    /// Like [`Legate::start`], with soft and hard open-file limits of `limit` (set by
    /// util-linux's `prlimit`, which then runs Legate in its own process).
    pub async fn start_with_open_file_limit(config: impl Into<Yaml>, limit: u32) -> Result<Legate> {
        Legate::start_with(config, true, |config_path| {
            let mut cmd = Command::new("prlimit");
            cmd.arg(format!("--nofile={limit}:{limit}"))
                .arg("--")
                .arg(binary())
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .arg("run")
                .arg("--config")
                .arg(config_path);
            cmd
        })
        .await
    }

    /// Like [`Legate::start`], but nothing reads its stdout (the access log): a stalled log
    /// reader, whose pipe fills up.
    pub async fn start_with_unread_stdout(config: impl Into<Yaml>) -> Result<Legate> {
        Legate::start_with(config, false, run_command).await
    }

    /// Like [`Legate::start`], with the command that runs Legate on the config file built by
    /// `launch` from that file's path (a container run mounting its directory, say). Signals
    /// go to the process `launch` starts, which must pass them on.
    pub async fn start_by(
        config: impl Into<Yaml>,
        launch: impl FnOnce(&Path) -> Command,
    ) -> Result<Legate> {
        Legate::start_with(config, true, launch).await
    }

    async fn start_with(
        config: impl Into<Yaml>,
        read_stdout: bool,
        launch: impl FnOnce(&Path) -> Command,
    ) -> Result<Legate> {
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let config_path = dir.path().join("legate.yaml");
        write_config(&config_path, config.into())?;

        let mut child = launch(&config_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning legate")?;
        let pid = child.id().context("legate has a pid")?;
        let (stdout, _) = watch::channel(Vec::new());
        let (stderr, _) = watch::channel(Vec::new());
        let mut unread = None;
        if let Some(out) = child.stdout.take() {
            if read_stdout {
                tokio::spawn(collect_lines(out, stdout.clone()));
            } else {
                unread = Some(out);
            }
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(collect_lines(err, stderr.clone()));
        }
        let mut legate = Legate {
            child,
            pid,
            _dir: dir,
            config_path,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            probes: None,
            listeners: HashMap::new(),
            stdout,
            stderr,
            _unread: unread,
        };
        let started = legate.wait_started().await?;
        legate.admin =
            started_admin(&started).with_context(|| format!("no admin address in {started:?}"))?;
        legate.probes = started_probes(&started);
        legate.wait_ready().await?;
        let config = legate.admin_json("/config").await?;
        let listeners = config["listeners"]
            .as_object()
            .context("/config has a listeners map")?;
        for (name, addr) in listeners {
            let addr = addr.as_str().context("listener address is a string")?;
            legate.listeners.insert(name.clone(), addr.parse()?);
        }
        Ok(legate)
    }

    /// Waits for the "legate started" log line and returns it (it names the admin and probe
    /// listeners' addresses; the config binds them to port 0).
    async fn wait_started(&mut self) -> Result<String> {
        let mut rx = self.stderr.subscribe();
        let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
        loop {
            let started = rx
                .borrow_and_update()
                .iter()
                .find(|l| l.contains("legate started"))
                .cloned();
            if let Some(line) = started {
                return Ok(line);
            }
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        let status = self.child.wait().await?;
                        bail!(
                            "legate exited ({status}) before it started; stderr:\n{}",
                            self.stderr_text()
                        );
                    }
                }
                status = self.child.wait() => {
                    bail!(
                        "legate exited ({}) before it started; stderr:\n{}",
                        status?,
                        self.stderr_text()
                    );
                }
                _ = tokio::time::sleep_until(deadline) => {
                    bail!("legate did not start within {WAIT_LIMIT:?}; stderr:\n{}", self.stderr_text());
                }
            }
        }
    }

    /// Polls `/ready` until it answers 200: Legate's readiness signal.
    async fn wait_ready(&mut self) -> Result<()> {
        for _ in 0..500 {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "legate exited ({status}) before it was ready; stderr:\n{}",
                    self.stderr_text()
                );
            }
            if let Ok(reply) = client::get(self.admin, "admin", "/ready").await {
                if reply.status == 200 {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!(
            "legate was not ready after 10s; stderr:\n{}",
            self.stderr_text()
        )
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The bound address of listener `name`, as reported by `/config` at start.
    pub fn addr(&self, name: &str) -> SocketAddr {
        *self
            .listeners
            .get(name)
            .unwrap_or_else(|| panic!("legate has no listener named {name:?}"))
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// The config file the binary runs.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The probe listener's address; panics if the config has none.
    pub fn probes(&self) -> SocketAddr {
        self.probes.expect("the config has a probes listener")
    }

    /// `GET path` on the admin listener, parsed as JSON.
    pub async fn admin_json(&self, path: &str) -> Result<serde_json::Value> {
        client::get(self.admin, "admin", path).await?.json()
    }

    /// Sends a signal (`TERM`, `HUP`, `INT`, …) with the `kill` command.
    pub async fn signal(&self, signal: &str) -> Result<()> {
        let status = Command::new("kill")
            .arg("-s")
            .arg(signal)
            .arg(self.pid.to_string())
            .status()
            .await
            .context("running kill")?;
        if !status.success() {
            bail!("kill -s {signal} {} failed: {status}", self.pid);
        }
        Ok(())
    }

    /// Replaces the config file (atomically, so a reload never reads half of it).
    /// `${ADMIN}` is filled with the same admin address.
    pub fn write_config(&self, config: impl Into<Yaml>) -> Result<()> {
        write_config(&self.config_path, config.into())
    }

    /// Every stdout line so far (the access log).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.borrow().clone()
    }

    /// Everything on stderr so far (Legate's log).
    pub fn stderr_text(&self) -> String {
        self.stderr.borrow().join("\n")
    }

    /// Waits until stdout has at least `n` lines, and returns them all.
    pub async fn wait_stdout_lines(&self, n: usize) -> Result<Vec<String>> {
        let mut rx = self.stdout.subscribe();
        let lines = tokio::time::timeout(WAIT_LIMIT, rx.wait_for(|l| l.len() >= n))
            .await
            .map_err(|_| {
                anyhow!(
                    "expected {n} stdout lines, got {:?}; stderr:\n{}",
                    self.stdout_lines(),
                    self.stderr_text()
                )
            })?
            .map_err(|_| anyhow!("stdout closed"))?
            .clone();
        Ok(lines)
    }

    /// Waits until a stderr line contains `needle`, and returns that line.
    pub async fn wait_stderr(&self, needle: &str) -> Result<String> {
        let mut rx = self.stderr.subscribe();
        let found = tokio::time::timeout(
            WAIT_LIMIT,
            rx.wait_for(|lines| lines.iter().any(|l| l.contains(needle))),
        )
        .await
        .map_err(|_| {
            anyhow!(
                "stderr never contained {needle:?}; it has:\n{}",
                self.stderr_text()
            )
        })?
        .map_err(|_| anyhow!("stderr closed"))?
        .iter()
        .find(|l| l.contains(needle))
        .cloned()
        .unwrap_or_default();
        Ok(found)
    }

    /// Waits until `n` stderr lines contain `needle`, and returns them.
    pub async fn wait_stderr_lines(&self, needle: &str, n: usize) -> Result<Vec<String>> {
        let mut rx = self.stderr.subscribe();
        let matching = |lines: &Vec<String>| -> Vec<String> {
            lines
                .iter()
                .filter(|l| l.contains(needle))
                .cloned()
                .collect()
        };
        let found =
            tokio::time::timeout(WAIT_LIMIT, rx.wait_for(|lines| matching(lines).len() >= n))
                .await
                .map_err(|_| {
                    anyhow!(
                        "stderr never had {n} lines with {needle:?}; it has:\n{}",
                        self.stderr_text()
                    )
                })?
                .map_err(|_| anyhow!("stderr closed"))?
                .clone();
        Ok(matching(&found))
    }

    /// The end of a drain with one request held upstream: `front` stops accepting while
    /// `in_flight` is still waiting; released (`held` opens its gate), it completes with
    /// 200; the process then exits 0 within `limit`.
    pub async fn drain_completes(
        &mut self,
        front: SocketAddr,
        in_flight: tokio::task::JoinHandle<Result<client::Reply>>,
        held: &crate::upstream::Upstream,
        limit: Duration,
    ) -> Result<()> {
        crate::eventually(WAIT_LIMIT, || async {
            anyhow::ensure!(
                tokio::net::TcpStream::connect(front).await.is_err(),
                "{front} still accepts"
            );
            Ok(())
        })
        .await?;
        anyhow::ensure!(
            !in_flight.is_finished(),
            "the held request ended before its gate opened"
        );
        held.open_gate();
        let reply = in_flight.await??;
        anyhow::ensure!(
            reply.status == http::StatusCode::OK,
            "the request in flight got {}",
            reply.status
        );
        let status = self.wait_exit(limit).await?;
        anyhow::ensure!(
            status.code() == Some(0),
            "exit {status}; stderr:\n{}",
            self.stderr_text()
        );
        Ok(())
    }

    /// Waits for the process to exit, at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Result<ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .map_err(|_| anyhow!("legate did not exit within {limit:?}"))?
            .context("waiting for legate")
    }
}

/// What `${ADMIN}` stands for in the configs the binary runs: port 0, bound at start and
/// read back from the log.
pub const ADMIN: &str = "127.0.0.1:0";

/// The admin address in a "legate started" line, text (`admin=…`) or JSON (`"admin":"…"`).
fn started_admin(line: &str) -> Option<SocketAddr> {
    started_field(line, "admin")
}

/// The probe listener's address in a "legate started" line (`probes=Some(…)` in text,
/// `"probes":"Some(…)"` in JSON), if it has one.
fn started_probes(line: &str) -> Option<SocketAddr> {
    started_field(line, "probes")
}

fn started_field(line: &str, name: &str) -> Option<SocketAddr> {
    let rest = line
        .split_once(&format!("{name}="))
        .or_else(|| line.split_once(&format!("\"{name}\":\"")))?
        .1;
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '"' || c == ',')
        .unwrap_or(rest.len());
    let value = &rest[..end];
    let value = value
        .strip_prefix("Some(")
        .and_then(|v| v.strip_suffix(')'))
        .unwrap_or(value);
    value.parse().ok()
}

fn write_config(path: &Path, config: Yaml) -> Result<()> {
    let config = config.set("ADMIN", ADMIN);
    let text = config.text()?;
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).context("writing the config")?;
    std::fs::rename(&tmp, path).context("moving the config into place")?;
    Ok(())
}

async fn collect_lines(stream: impl AsyncRead + Unpin, sink: watch::Sender<Vec<String>>) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        sink.send_modify(|all| all.push(line));
    }
}

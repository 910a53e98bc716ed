//! Legate's container image under podman: a test image built from the debug binaries with the
//! repository's `Dockerfile` (nothing pulled), a PostgreSQL stand-in image, containers that
//! are removed when dropped, and compose projects run by `podman-compose`.
//!
//! Podman runs containers here with `--runtime runc` and lowered ulimits (crun fails on this
//! machine's cgroups); [`Container::run_command`] passes both. A machine without podman fails
//! the test with what to install, never skips it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context as _, Result};
use tokio::process::Command;

use crate::process;

/// The repository root (`integration/..`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_path_buf()
}

/// Runs `podman ARGS…` and returns its stdout; a missing podman is an error saying what to
/// install.
pub async fn podman(args: &[&str]) -> Result<String> {
    let out = Command::new("podman")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot run podman ({e}): the image tests need podman and runc \
                 (`apt-get install podman runc`, as .ci/run does)"
            )
        })?;
    if !out.status.success() {
        bail!(
            "podman {} failed ({}):\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A test image, removed when dropped.
#[derive(Debug)]
pub struct Image {
    tag: String,
    _rootfs: tempfile::TempDir,
}

impl Image {
    /// Builds the image from the binaries next to the test executable (`target/debug`) by
    /// `deploy/image/rootfs.sh` and the `Dockerfile`'s `prebuilt` target, labelled with
    /// `version` and `revision`.
    pub async fn build_prebuilt(version: &str, revision: &str) -> Result<Image> {
        let root = repo_root();
        let bin_dir = process::binary()
            .parent()
            .context("the binary has a directory")?
            .to_path_buf();
        let scratch = tempfile::tempdir().context("creating a temporary directory")?;
        let rootfs = scratch.path().join("rootfs");
        run_script(&root.join("deploy/image/rootfs.sh"), &[&bin_dir, &rootfs]).await?;
        let dockerfile = root.join("Dockerfile");
        Image::build(
            scratch,
            "legate-test",
            &[
                "--file",
                &dockerfile.to_string_lossy(),
                "--target",
                "prebuilt",
                "--build-arg",
                &format!("VERSION={version}"),
                "--build-arg",
                &format!("REVISION={revision}"),
                &rootfs.to_string_lossy(),
            ],
        )
        .await
    }

    /// A stand-in for a PostgreSQL image, made from the host's PostgreSQL install by
    /// `integration/container/postgres-rootfs.sh` (no registry to pull one from).
    pub async fn postgres_stand_in() -> Result<Image> {
        let scratch = tempfile::tempdir().context("creating a temporary directory")?;
        let rootfs = scratch.path().join("rootfs");
        let script = repo_root().join("integration/container/postgres-rootfs.sh");
        run_script(&script, &[&rootfs]).await?;
        Image::build(
            scratch,
            "legate-test-postgres",
            &[&rootfs.to_string_lossy()],
        )
        .await
    }

    /// `podman build ARGS… --tag NAME:<unique>`, keeping `scratch` (the context) as long as
    /// the image.
    async fn build(scratch: tempfile::TempDir, name: &str, args: &[&str]) -> Result<Image> {
        let tag = format!("localhost/{name}:{}-{}", std::process::id(), unique());
        let mut all = vec![
            "build",
            "--quiet",
            // No cached stage images are left behind once the test image is removed.
            "--layers=false",
            "--tag",
            &tag,
        ];
        all.extend_from_slice(args);
        podman(&all).await?;
        Ok(Image {
            tag,
            _rootfs: scratch,
        })
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// `podman image inspect --format FORMAT`.
    pub async fn inspect(&self, format: &str) -> Result<String> {
        podman(&["image", "inspect", "--format", format, &self.tag]).await
    }

    /// The paths of every file in the image (`podman image mount` is not needed: the image
    /// is exported through a created, never started, container).
    pub async fn files(&self) -> Result<Vec<String>> {
        let name = format!("legate-files-{}-{}", std::process::id(), unique());
        let _container = Container { name: name.clone() };
        podman(&["create", "--name", &name, &self.tag]).await?;
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("podman export {name} | tar -t"))
            .output()
            .await
            .context("listing the image's files")?;
        if !out.status.success() {
            bail!(
                "podman export | tar -t failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::process::Command::new("podman")
            .args(["rmi", "--force", &self.tag])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A container by name, force-removed when dropped (killing `podman run` leaves it running).
#[derive(Debug)]
pub struct Container {
    name: String,
}

impl Container {
    /// A name for a container that does not exist yet.
    pub fn named() -> Container {
        Container {
            name: format!("legate-test-{}-{}", std::process::id(), unique()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `podman run` of `image` as this container, in the foreground with signals passed on
    /// (podman's default), on the host's network, with this machine's runtime and limits.
    /// `extra` comes before the image (mounts, `--add-host`, …).
    pub fn run_command(&self, image: &Image, extra: &[String]) -> Command {
        let mut cmd = Command::new("podman");
        cmd.args(["run", "--rm", "--name", &self.name])
            .args(["--runtime", "runc"])
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
            ])
            .args(["--network", "host"])
            .args(["--env", "RUST_LOG=info"])
            .args(extra)
            .arg(image.tag())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// The host pid of the container's first process.
    pub async fn pid(&self) -> Result<u32> {
        let pid = podman(&["inspect", "--format", "{{.State.Pid}}", &self.name]).await?;
        pid.parse()
            .with_context(|| format!("podman inspect gave pid {pid:?}"))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = std::process::Command::new("podman")
            .args(["rm", "--force", "--ignore", "--time", "0", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs a shell script of the repository with `args`, failing with its stderr.
async fn run_script(script: &Path, args: &[&Path]) -> Result<()> {
    let out = Command::new(script)
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A podman containers.conf for this machine: runc (crun fails on its cgroups) and lowered
/// ulimits, for tools such as podman-compose that start containers without those flags.
pub const CONTAINERS_CONF: &str = r#"[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
"#;

/// A compose project brought up by `podman-compose` from `file`, taken down when dropped.
#[derive(Debug)]
pub struct Compose {
    project: String,
    file: PathBuf,
    conf: PathBuf,
    env: Vec<(String, String)>,
}

impl Compose {
    /// `podman-compose -p <unique> -f FILE up -d`, with `env` set (image variables, say) and
    /// [`CONTAINERS_CONF`] in effect. A missing podman-compose is an error saying what to
    /// install.
    pub async fn up(file: &Path, env: &[(&str, &str)]) -> Result<Compose> {
        let dir = file.parent().context("the compose file has a directory")?;
        let conf = dir.join("containers.conf");
        std::fs::write(&conf, CONTAINERS_CONF).context("writing containers.conf")?;
        let compose = Compose {
            project: format!("legate-test-{}-{}", std::process::id(), unique()),
            file: file.to_path_buf(),
            conf,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let out = compose.command(&["up", "-d"]).output().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot run podman-compose ({e}): the compose test needs it \
                     (`apt-get install podman-compose`, as .ci/run does)"
            )
        })?;
        if !out.status.success() {
            bail!(
                "podman-compose up failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(compose)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("podman-compose");
        cmd.arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(&self.file)
            .args(args)
            .env("CONTAINERS_CONF", &self.conf)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// The container of `service`.
    pub async fn container(&self, service: &str) -> Result<String> {
        let name = podman(&[
            "ps",
            "--all",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
            "--format",
            "{{.Names}}",
        ])
        .await?;
        if name.is_empty() || name.contains('\n') {
            bail!("service {service} has containers {name:?}");
        }
        Ok(name)
    }

    /// The host address that `service`'s container port `port` is published on.
    pub async fn published(&self, service: &str, port: u16) -> Result<SocketAddr> {
        let container = self.container(service).await?;
        let addr = podman(&["port", &container, &format!("{port}/tcp")]).await?;
        addr.lines()
            .next()
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("podman port {container} {port}/tcp gave {addr:?}"))
    }

    /// What `service`'s container has logged.
    pub async fn logs(&self, service: &str) -> String {
        match self.container(service).await {
            Ok(c) => Command::new("podman")
                .args(["logs", &c])
                .output()
                .await
                .map(|o| {
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                })
                .unwrap_or_else(|e| e.to_string()),
            Err(e) => e.to_string(),
        }
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let mut cmd = std::process::Command::new("podman-compose");
        cmd.arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(&self.file)
            .args(["down", "--volumes", "--timeout", "0"])
            .env("CONTAINERS_CONF", &self.conf)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = cmd.status();
        // `down` leaves the project's network behind.
        let _ = std::process::Command::new("podman")
            .args(["network", "rm", "--force"])
            .arg(format!("{}_default", self.project))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A number no other image or container of this process has had.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

//! Legate's container image under podman: a test image built from the debug binaries with the
//! repository's `Dockerfile` (nothing pulled), and containers that are removed when dropped.
//!
//! Podman runs containers here with `--runtime runc` and lowered ulimits (crun fails on this
//! machine's cgroups); [`Container::run_command`] passes both. A machine without podman fails
//! the test with what to install, never skips it.

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
    /// `deploy/image/rootfs.sh` and the `Dockerfile`'s `prebuilt` stage, labelled with
    /// `version` and `revision`.
    pub async fn build_prebuilt(version: &str, revision: &str) -> Result<Image> {
        let root = repo_root();
        let bin_dir = process::binary()
            .parent()
            .context("the binary has a directory")?
            .to_path_buf();
        let scratch = tempfile::tempdir().context("creating a temporary directory")?;
        let rootfs = scratch.path().join("rootfs");
        let script = root.join("deploy/image/rootfs.sh");
        let out = Command::new(&script)
            .arg(&bin_dir)
            .arg(&rootfs)
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
        let tag = format!("localhost/legate-test:{}-{}", std::process::id(), unique());
        let dockerfile = root.join("Dockerfile");
        podman(&[
            "build",
            "--quiet",
            // No cached stage images are left behind once the test image is removed.
            "--layers=false",
            "--file",
            &dockerfile.to_string_lossy(),
            "--build-arg",
            "ROOTFS=prebuilt",
            "--build-arg",
            &format!("VERSION={version}"),
            "--build-arg",
            &format!("REVISION={revision}"),
            "--tag",
            &tag,
            &rootfs.to_string_lossy(),
        ])
        .await?;
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

/// A number no other image or container of this process has had.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

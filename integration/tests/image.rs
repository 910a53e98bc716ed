//! The container image, built by the repository's `Dockerfile` from the debug binaries and run
//! under podman: what it holds and how it is labelled, then Legate in it serving HTTP and TLS
//! from a mounted config as uid 65532, resolving an endpoint name from the container's
//! `/etc/hosts`, answering probes, and draining a request in flight on SIGTERM.
//!
//! Needs podman and runc (`.ci/run` installs them) and the binaries built
//! (`cargo build -p legate -p legate-xds`); without them the test fails saying so.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use http::StatusCode;
use legate_integration::certs::{Ca, TlsClient};
use legate_integration::client::{self, Http1};
use legate_integration::container::{podman, Container, Image};
use legate_integration::process::{self, Legate};
use legate_integration::proxy::yaml;
use legate_integration::upstream::Upstream;

/// Listener `plain` and listener `tls` route everything to cluster `app`, whose endpoint is a
/// name only the container's `/etc/hosts` knows. The certificate files are in `${CERTS}`.
const CONFIG: &str = r#"
admin: { listen: "${ADMIN}" }
probes: { listen: 127.0.0.1:0 }
runtime: { workers: 2, drain_timeout: 20s }
access_log: { enabled: false }
listeners:
  - { name: plain, listen: 127.0.0.1:0, http: { route_table: main } }
  - name: tls
    listen: 127.0.0.1:0
    http: { route_table: main }
    tls:
      certificates: [{ cert: "${CERTS}/maps.crt", key: "${CERTS}/maps.key" }]
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes: [{ match: { prefix: / }, cluster: app }]
clusters:
  - { name: app, endpoints: ["upstream.legate.test:${PORT}"] }
"#;

/// The name `--add-host` gives the container for 127.0.0.1.
const UPSTREAM_NAME: &str = "upstream.legate.test";

/// `legate --version`'s revision: "legate 0.1.0 (abc123)" → "abc123".
async fn built_revision() -> Result<String> {
    let out = process::run(&["--version"]).await?;
    let text = String::from_utf8(out.stdout)?;
    let revision = text
        .trim()
        .rsplit_once('(')
        .and_then(|(_, r)| r.strip_suffix(')'))
        .with_context(|| format!("no revision in {text:?}"))?;
    Ok(revision.to_owned())
}

/// Lets the container's unprivileged user read `dir` and the files in it.
fn readable_by_all(dir: &Path) -> Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// The real, effective, saved and filesystem ids on `field`'s line of `/proc/PID/status`.
fn ids(pid: u32, field: &str) -> Result<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .with_context(|| format!("no {field} line for pid {pid}"))?;
    Ok(line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_runs_legate_unprivileged_serving_http_and_tls_and_drains_on_sigterm(
) -> Result<()> {
    let revision = built_revision().await?;
    let image = Image::build_prebuilt(legate::VERSION, &revision).await?;

    // What the image is: labelled, unprivileged, legate by default, nothing but our files.
    let labels = image
        .inspect(
            "{{index .Config.Labels \"org.opencontainers.image.version\"}} \
             {{index .Config.Labels \"org.opencontainers.image.revision\"}}",
        )
        .await?;
    assert_eq!(labels, format!("{} {revision}", legate::VERSION));
    assert_eq!(image.inspect("{{.Config.User}}").await?, "65532:65532");
    assert_eq!(
        image.inspect("{{json .Config.Entrypoint}}").await?,
        r#"["legate","run","--config","/etc/legate/legate.yaml"]"#
    );
    let size: u64 = image.inspect("{{.Size}}").await?.parse()?;
    eprintln!("test image (debug binaries, stripped): {size} bytes");
    let files = image.files().await?;
    for needed in [
        "usr/local/bin/legate",
        "usr/local/bin/legate-xds",
        "etc/ssl/certs/ca-certificates.crt",
        "etc/passwd",
        "lib64/ld-linux-x86-64.so.2",
    ] {
        assert!(
            files.iter().any(|f| f == needed),
            "{needed} missing from {files:?}"
        );
    }
    assert!(
        !files.iter().any(|f| f.ends_with("bin/sh")),
        "no shell in the image: {files:?}"
    );
    let xds_version = podman(&[
        "run",
        "--rm",
        "--runtime",
        "runc",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--entrypoint",
        r#"["legate-xds","--version"]"#,
        image.tag(),
    ])
    .await?;
    assert_eq!(xds_version, format!("legate-xds {}", legate::VERSION));

    // Legate in it, from a mounted config, with the certificates mounted at their host path.
    let app = Upstream::builder("app").hold().start().await?;
    let certs = tempfile::tempdir()?;
    let ca = Ca::new("Legate image test CA")?;
    ca.server(&["maps.example.org"])?
        .write(certs.path(), "maps")?;
    readable_by_all(certs.path())?;
    let certs_dir = certs.path().display().to_string();
    let config = yaml(CONFIG)
        .set("CERTS", &certs_dir)
        .set("PORT", app.addr().port());
    let container = Container::named();
    let mut legate = Legate::start_by(config, |config_path| {
        let config_dir = config_path.parent().expect("the config has a directory");
        readable_by_all(config_dir).expect("the config directory can be opened up");
        container.run_command(
            &image,
            &[
                "--volume".to_owned(),
                format!("{}:/etc/legate:ro", config_dir.display()),
                "--volume".to_owned(),
                format!("{certs_dir}:{certs_dir}:ro"),
                "--add-host".to_owned(),
                format!("{UPSTREAM_NAME}:127.0.0.1"),
            ],
        )
    })
    .await?;

    let pid = container.pid().await?;
    assert_eq!(
        ids(pid, "Uid:")?,
        vec![65532; 4],
        "Legate runs as uid 65532"
    );
    assert_eq!(ids(pid, "Gid:")?, vec![65532; 4], "and gid 65532");

    let probes = legate.probes();
    let ready = client::get(probes, "probes", "/ready").await?;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
    let clusters = legate.admin_json("/clusters").await?;
    let endpoint = &clusters["clusters"][0]["endpoints"][0];
    assert_eq!(endpoint["hostname"], UPSTREAM_NAME, "{clusters}");
    assert_eq!(endpoint["address"], app.addr().to_string(), "{clusters}");

    let plain = {
        let front = legate.addr("plain");
        tokio::spawn(async move { client::get(front, "maps.example.org", "/plain").await })
    };
    app.wait_requests(1).await?;
    app.open_gate();
    let plain = plain.await??;
    assert_eq!(plain.status, StatusCode::OK, "{}", plain.text());
    assert_eq!(plain.echo()?.path, "/plain");

    let mut tls = TlsClient::trusting(&ca)
        .http1(legate.addr("tls"), "maps.example.org")
        .await?;
    let secure = {
        tokio::spawn(async move {
            let reply = tls.get("maps.example.org", "/tls").await;
            (reply, tls)
        })
    };
    app.wait_requests(2).await?;
    app.open_gate();
    let (secure, _tls) = secure.await?;
    let secure = secure?;
    assert_eq!(secure.status, StatusCode::OK, "{}", secure.text());
    assert_eq!(secure.echo()?.path, "/tls");

    // SIGTERM (to podman, which passes it on) with a request held upstream: the listener
    // closes, the request completes once let go, and the container exits 0.
    let front = legate.addr("plain");
    let mut held = Http1::connect(front).await?;
    let in_flight = tokio::spawn(async move { held.get("maps.example.org", "/held").await });
    app.wait_requests(3).await?;
    legate.signal("TERM").await?;
    legate.wait_stderr("SIGTERM: draining").await?;
    legate
        .drain_completes(front, in_flight, &app, Duration::from_secs(20))
        .await
}

/// The `Dockerfile`'s default version label is the workspace's version.
#[test]
fn the_dockerfile_labels_the_workspace_version() -> Result<()> {
    let dockerfile =
        std::fs::read_to_string(legate_integration::container::repo_root().join("Dockerfile"))?;
    let version = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG VERSION="))
        .context("the Dockerfile has `ARG VERSION=…`")?;
    assert_eq!(version, legate::VERSION);
    Ok(())
}

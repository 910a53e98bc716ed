//! The local development stack, `compose.yaml`: everything it names is in the repository and
//! its Legate configs validate (after `legate dev-cert`) and agree with it (endpoints name its
//! services and the ports they listen on; published ports are listeners); then the stack
//! itself, brought up by `podman-compose`, serving HTTP with its 90/10 split, TLS with the dev
//! certificate, egress by Host, and Postgres reads on both the replica and the primary.
//!
//! The stack test runs the test image (debug binaries) and a PostgreSQL stand-in built from
//! the host's PostgreSQL, since no image can be pulled here, and publishes the ports on
//! loopback ports podman picks. Needs podman, runc, podman-compose and PostgreSQL (`.ci/run`
//! installs them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use http::StatusCode;
use legate_integration::certs::TlsClient;
use legate_integration::client;
use legate_integration::container::{repo_root, Compose, Image};
use legate_integration::eventually;
use legate_integration::postgres::Session;
use legate_integration::process;
use serde_yaml::Value;

/// `compose.yaml`, its merge keys (`<<: *legate`) applied.
fn compose() -> Result<Value> {
    let text = std::fs::read_to_string(repo_root().join("compose.yaml"))?;
    let mut value: Value = serde_yaml::from_str(&text)?;
    value.apply_merge()?;
    Ok(value)
}

fn services(compose: &Value) -> Result<BTreeMap<String, Value>> {
    let map = compose["services"]
        .as_mapping()
        .context("compose.yaml has services")?;
    map.iter()
        .map(|(k, v)| Ok((k.as_str().context("a service name")?.to_owned(), v.clone())))
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The config path a Legate service runs (`legate run --config P`), relative to its
/// working directory, which is the repository root's layout.
fn legate_config(service: &Value) -> Option<String> {
    let entrypoint = strings(&service["entrypoint"]);
    match entrypoint.as_slice() {
        [legate, run, flag, path] if legate == "legate" && run == "run" && flag == "--config" => {
            Some(path.clone())
        }
        _ => None,
    }
}

/// The port of every listener (and the probe listener) of a Legate config, by name.
fn listen_ports(config: &Value) -> Result<BTreeMap<String, u16>> {
    let mut ports = BTreeMap::new();
    let listeners = config["listeners"].as_sequence().context("listeners")?;
    let probes = config["probes"]["listen"].as_str().map(|l| ("probes", l));
    let named = listeners
        .iter()
        .filter_map(|l| Some((l["name"].as_str()?, l["listen"].as_str()?)));
    for (name, listen) in named.chain(probes) {
        let addr: std::net::SocketAddr = listen.parse()?;
        ports.insert(name.to_owned(), addr.port());
    }
    Ok(ports)
}

#[tokio::test]
async fn compose_names_only_what_the_repository_has_and_agrees_with_its_configs() -> Result<()> {
    let root = repo_root();
    let compose = compose()?;
    let services = services(&compose)?;
    let mut listens: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    for (name, service) in &services {
        if let Some(build) = service["build"].as_str() {
            assert_eq!(build, ".", "{name} builds the repository's image");
            assert!(root.join("Dockerfile").is_file());
        }
        for volume in strings(&service["volumes"]) {
            let source = volume.split(':').next().unwrap_or_default();
            assert!(
                root.join(source).exists(),
                "{name} mounts {source}, missing from the repository"
            );
        }
        for dependency in strings(&service["depends_on"]) {
            assert!(
                services.contains_key(&dependency),
                "{name} depends on {dependency}"
            );
        }
        if let Some(config) = legate_config(service) {
            assert_eq!(service["working_dir"].as_str(), Some("/src"), "{name}");
            let path = root.join(&config);
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("{name} runs {config}"))?;
            // Its TLS files are written by dev-cert in a working directory of its own, as a
            // developer does from the repository root.
            let work = tempfile::tempdir()?;
            let arg = path.to_str().context("utf-8 path")?;
            let out = process::run_in(work.path(), &["dev-cert", "--config", arg]).await?;
            ensure!(out.status.success(), "dev-cert {config}: {out:?}");
            let out = process::run_in(work.path(), &["validate", "--config", arg]).await?;
            ensure!(
                out.status.success(),
                "{config}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let config: Value = serde_yaml::from_str(&text)?;
            listens.insert(name.clone(), listen_ports(&config)?.into_values().collect());
        } else {
            // The PostgreSQL services run a script of the repository on port 5432.
            let entrypoint = strings(&service["entrypoint"]);
            let script = entrypoint.get(1).context("an entrypoint script")?;
            assert!(
                strings(&service["volumes"])
                    .iter()
                    .any(|v| v.ends_with(&format!(":{script}:ro"))),
                "{name} runs {script}, which is mounted from the repository"
            );
            listens.insert(name.clone(), BTreeSet::from([5432]));
        }
    }

    // The front Legate's endpoints are services, on ports those services listen on.
    let front = &services["legate"];
    let front_config: Value = serde_yaml::from_str(&std::fs::read_to_string(
        root.join(legate_config(front).context("legate runs a config")?),
    )?)?;
    for cluster in front_config["clusters"].as_sequence().context("clusters")? {
        for endpoint in strings(&cluster["endpoints"]) {
            let (host, port) = endpoint.rsplit_once(':').context("host:port")?;
            let port: u16 = port.parse()?;
            let ports = listens
                .get(host)
                .with_context(|| format!("endpoint {endpoint} is not a service"))?;
            assert!(ports.contains(&port), "{host} does not listen on {port}");
            assert!(
                strings(&front["depends_on"]).iter().any(|d| d == host),
                "legate depends on {host}"
            );
        }
    }
    // Every listener but the loopback-only admin one is published, on loopback, and nothing else.
    let front_ports = listen_ports(&front_config)?;
    let published: BTreeSet<u16> = strings(&front["ports"])
        .iter()
        .map(|p| {
            let parts: Vec<&str> = p.split(':').collect();
            assert_eq!(parts.len(), 3, "{p}: ip:host:container");
            assert_eq!(parts[0], "127.0.0.1", "{p} is published on loopback");
            assert_eq!(parts[1], parts[2], "{p} keeps its port number");
            parts[2].parse().expect("a port")
        })
        .collect();
    assert_eq!(
        published,
        front_ports.values().copied().collect::<BTreeSet<_>>(),
        "published ports are the listeners' ({front_ports:?})"
    );
    Ok(())
}

/// Copies what the stack mounts (`deploy/compose`) and `compose.yaml` into `dir`, with two
/// changes to the copy: ports published on loopback ports podman picks (tests never take fixed
/// ports), and no `build` (the image is given by `LEGATE_IMAGE`).
fn stack_copy(dir: &Path) -> Result<PathBuf> {
    let root = repo_root();
    copy_dir(&root.join("deploy/compose"), &dir.join("deploy/compose"))?;
    let text = std::fs::read_to_string(root.join("compose.yaml"))?;
    let mut copy = String::new();
    let mut published = 0;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("build:") {
            continue;
        }
        if let Some(port) = trimmed
            .strip_prefix("- \"127.0.0.1:")
            .and_then(|rest| rest.split(':').nth(1))
        {
            let indent = &line[..line.len() - trimmed.len()];
            copy.push_str(&format!("{indent}- \"127.0.0.1::{port}\n"));
            published += 1;
            continue;
        }
        copy.push_str(line);
        copy.push('\n');
    }
    ensure!(published > 0, "no published ports found in compose.yaml");
    let file = dir.join("compose.yaml");
    std::fs::write(&file, copy)?;
    Ok(file)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            if entry.file_name() != "certs" {
                copy_dir(&entry.path(), &target)?;
            }
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_stack_serves_http_tls_egress_and_postgres_reads() -> Result<()> {
    let legate_image = Image::build_prebuilt(legate::VERSION, legate::REVISION).await?;
    let postgres_image = Image::postgres_stand_in().await?;
    let work = tempfile::tempdir()?;
    let file = stack_copy(work.path())?;
    let out = process::run_in(
        work.path(),
        &["dev-cert", "--config", "deploy/compose/legate.yaml"],
    )
    .await?;
    ensure!(out.status.success(), "dev-cert: {out:?}");

    let stack = Compose::up(
        &file,
        &[
            ("LEGATE_IMAGE", legate_image.tag()),
            ("POSTGRES_IMAGE", postgres_image.tag()),
        ],
    )
    .await?;
    let plain = stack.published("legate", 6533).await?;
    let tls = stack.published("legate", 6543).await?;
    let egress = stack.published("legate", 6500).await?;
    let postgres = stack.published("legate", 5432).await?;
    let probes = stack.published("legate", 9902).await?;

    // Ready, every cluster warm: both demo upstreams resolved, both Postgres servers checked.
    let ready = eventually(Duration::from_secs(60), || async {
        let reply = client::get(probes, "localhost", "/ready").await?;
        ensure!(
            reply.status == StatusCode::OK && reply.text().trim_end() == "ready",
            "{}",
            reply.text()
        );
        Ok(())
    })
    .await;
    if let Err(e) = ready {
        bail!(
            "{e:#}\n--- legate ---\n{}\n--- postgres-replica ---\n{}",
            stack.logs("legate").await,
            stack.logs("postgres-replica").await
        );
    }

    // The 90/10 split between the two demo upstreams.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..200 {
        let reply = client::get(plain, "localhost", "/").await?;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        *seen.entry(reply.text()).or_default() += 1;
    }
    let (a, b) = (seen.get("demo-a\n"), seen.get("demo-b\n"));
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(a > b, "demo-a takes most requests: {seen:?}");

    // TLS with the dev certificate, trusted through the local CA alone.
    let ca = work.path().join("deploy/compose/certs/legate-dev-ca.pem");
    let mut conn = TlsClient::trusting_file(&ca)?
        .http1(tls, "localhost")
        .await?;
    let health = conn.get("localhost", "/healthz").await?;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.text(), "ok\n");

    // Egress by Host.
    let reply = client::get(egress, "demo-b.localhost", "/").await?;
    assert_eq!(reply.text(), "demo-b\n");

    // Postgres reads: two sessions at once land on both servers (least connections), one a
    // standby streaming from the other.
    // (Both are up once each has passed its checks, which may take a round after warm-up.)
    let primary = eventually(Duration::from_secs(20), || async {
        let (first, second) = (
            Session::connect(postgres).await?,
            Session::connect(postgres).await?,
        );
        let mut on_primary = None;
        let mut standbys = 0;
        for session in [first, second] {
            match session.value("SELECT pg_is_in_recovery()").await?.as_str() {
                "f" => on_primary = Some(session),
                _ => standbys += 1,
            }
        }
        ensure!(
            standbys == 1,
            "{standbys} of the two sessions on the replica"
        );
        on_primary.context("no session on the primary")
    })
    .await?;
    assert_eq!(
        primary
            .value("SELECT state FROM pg_stat_replication")
            .await?,
        "streaming"
    );
    Ok(())
}

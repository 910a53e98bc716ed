//! Who may do what on `legate-xds` with mTLS: client certificates from one CA, each mapped to
//! a role by its SPIFFE name through a roles file; real Legate proxies opening their streams,
//! the operator API through the CLI's client and the `legate-xds audit` binary.
//!
//! Needs `cargo build -p legate --bin legate -p legate-xds --bin legate-xds` first.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use http::{Method, StatusCode};
use legate_integration::certs::Ca;
use legate_integration::proxy::{yaml, Proxy};
use legate_integration::upstream::Upstream;
use legate_integration::{client, eventually, process};
use legate_xds::cli::{request_with, CliError};
use legate_xds::{serve, ClientTlsFiles, ServeConfig, ServerHandle, ServerTlsFiles};
use serde_json::{json, Value};

const PUSH: Duration = Duration::from_secs(5);

const ROLES: &str = r#"
roles:
  - { uri: "spiffe://mesh.test/proxy/{group}", role: proxy }
  - { uri: "spiffe://mesh.test/operator/*", role: operator }
  - { uri: "spiffe://mesh.test/team/maps/*", role: operator, groups: [maps] }
  - { uri: "spiffe://mesh.test/viewer/*", role: viewer }
"#;

/// Group `maps` routes everything to cluster `tiles`; group `geo` has cluster `search`.
fn group(cluster: &str, upstream: &Upstream) -> String {
    format!(
        r#"
listeners:
  - {{ name: front, listen: "127.0.0.1:0", http: {{ route_table: main }} }}
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes: [{{ match: {{ prefix: / }}, cluster: {cluster} }}]
clusters:
  - {{ name: {cluster}, endpoints: ["{}"] }}
"#,
        upstream.addr()
    )
}

/// A CA, the server's certificate for 127.0.0.1, and client certificates by name.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    ca_file: PathBuf,
}

impl Pki {
    fn new() -> Result<Pki> {
        let dir = tempfile::tempdir()?;
        let ca = Ca::new("mesh CA")?;
        let ca_file = ca.write(dir.path(), "ca.pem")?;
        Ok(Pki { dir, ca, ca_file })
    }

    fn server(&self) -> Result<ServerTlsFiles> {
        let (cert, key) = self
            .ca
            .server(&["127.0.0.1"])?
            .write(self.dir.path(), "xds")?;
        Ok(ServerTlsFiles {
            cert,
            key,
            client_ca: Some(self.ca_file.clone()),
        })
    }

    /// A client certificate with the URI SAN `uri`, as files the CLI takes.
    fn client(&self, stem: &str, uri: &str) -> Result<ClientTlsFiles> {
        let (cert, key) = self.ca.client(stem, &[uri])?.write(self.dir.path(), stem)?;
        Ok(ClientTlsFiles {
            ca: Some(self.ca_file.clone()),
            cert: Some(cert),
            key: Some(key),
        })
    }
}

/// A proxy of node group `group` presenting `files`' certificate.
fn proxy(id: &str, group: &str, xds: SocketAddr, files: &ClientTlsFiles) -> Result<Proxy> {
    let path = |p: &Option<PathBuf>| p.as_deref().map(Path::display).unwrap().to_string();
    Proxy::start(
        yaml(
            r#"
node: { id: ${ID}, cluster: ${GROUP}, zone: a }
xds: { server: "${XDS}", tls: { ca: "${CA}", client_cert: "${CERT}", client_key: "${KEY}" } }
admin: { listen: 127.0.0.1:0 }
access_log: { enabled: false }
runtime: { workers: 1 }
"#,
        )
        .set("ID", id)
        .set("GROUP", group)
        .set("XDS", xds)
        .set("CA", path(&files.ca))
        .set("CERT", path(&files.cert))
        .set("KEY", path(&files.key)),
    )
}

async fn admin_json(admin: SocketAddr, path: &str) -> Result<Value> {
    let reply = client::get(admin, "admin", path).await?;
    ensure!(reply.status == StatusCode::OK, "{path}: {}", reply.status);
    reply.json()
}

/// The status and message of a refused operator request.
async fn refused(
    server: &str,
    files: &ClientTlsFiles,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<(StatusCode, String)> {
    match request_with(server, files, method, path, body).await {
        Err(CliError::Server { status, message }) => Ok((status, message)),
        other => anyhow::bail!("{path} was not refused: {other:?}"),
    }
}

async fn start_server(
    root: &Path,
    pki: &Pki,
    maps: &Upstream,
    geo: &Upstream,
) -> Result<ServerHandle> {
    let groups = root.join("groups");
    for (name, cluster, upstream) in [("maps", "tiles", maps), ("geo", "search", geo)] {
        std::fs::create_dir_all(groups.join(name))?;
        std::fs::write(groups.join(name).join("all.yaml"), group(cluster, upstream))?;
    }
    let roles = root.join("roles.yaml");
    std::fs::write(&roles, ROLES)?;
    serve(ServeConfig {
        dir: groups,
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        store: legate_xds::StateStore::File(root.join("state.json")),
        tls: Some(pki.server()?),
        roles: Some(roles),
        audit: None,
        limits: legate_xds::server::Limits::default(),
    })
    .await
    .context("starting legate-xds")
}

/// Each certificate may do what its role allows and nothing more, each refusal says why,
/// and every change is in the audit log with the certificate name that made it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_certificate_may_do_what_its_role_allows() -> Result<()> {
    let tiles = Upstream::echo("tiles").await?;
    let search = Upstream::echo("search").await?;
    let root = tempfile::tempdir()?;
    let pki = Pki::new()?;
    let server = start_server(root.path(), &pki, &tiles, &search).await?;
    let xds = server.local_addr();
    let https = format!("https://{xds}");
    let proxy_maps = pki.client("proxy-maps", "spiffe://mesh.test/proxy/maps")?;
    let operator = pki.client("alice", "spiffe://mesh.test/operator/alice")?;
    let maps_operator = pki.client("bob", "spiffe://mesh.test/team/maps/bob")?;
    let viewer = pki.client("grafana", "spiffe://mesh.test/viewer/grafana")?;
    let stranger = pki.client("p1", "spiffe://mesh.test/ns/maps/sa/p1")?;

    // A proxy of group maps opens its group's stream and serves.
    let p1 = proxy("p1", "maps", xds, &proxy_maps)?;
    p1.wait_ready().await.context("the proxy of maps syncs")?;
    let reply = client::get(p1.addr("front"), "example.org", "/").await?;
    assert_eq!(reply.upstream(), Some("tiles"));

    // The same certificate claiming group geo is refused, and the proxy says why.
    let claims_geo = proxy("p2", "geo", xds, &proxy_maps)?;
    let error = eventually(PUSH, || async {
        let xds = admin_json(claims_geo.admin(), "/config").await?["xds"].clone();
        let error = xds["last_error"].as_str().unwrap_or("").to_owned();
        ensure!(!error.is_empty(), "no error yet: {xds:#}");
        Ok(error)
    })
    .await?;
    assert!(
        error.contains("403")
            && error.contains("spiffe://mesh.test/proxy/maps is a proxy of group maps: it may not open the stream of group geo"),
        "{error}"
    );
    let ready = client::get(claims_geo.admin(), "admin", "/ready").await?;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    // An operator's certificate opens no stream either.
    let as_operator = proxy("p3", "maps", xds, &operator)?;
    let error = eventually(PUSH, || async {
        let xds = admin_json(as_operator.admin(), "/config").await?["xds"].clone();
        let error = xds["last_error"].as_str().unwrap_or("").to_owned();
        ensure!(!error.is_empty(), "no error yet: {xds:#}");
        Ok(error)
    })
    .await?;
    assert!(
        error.contains("is an operator: it may not open a stream"),
        "{error}"
    );

    // Reads: operators and viewers, not proxies or strangers.
    let depool = |cluster: &str, address: SocketAddr| {
        Some(json!({ "cluster": cluster, "address": address.to_string() }))
    };
    for files in [&operator, &maps_operator, &viewer] {
        let status = request_with(&https, files, Method::GET, "/v1/status", None).await?;
        assert!(status["groups"]["maps"].is_object(), "{status:#}");
        request_with(&https, files, Method::GET, "/v1/audit", None).await?;
    }
    let (status, message) = refused(&https, &proxy_maps, Method::GET, "/v1/status", None).await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        message,
        "spiffe://mesh.test/proxy/maps is a proxy of group maps: it may not read status, metrics or the audit log"
    );
    let (status, message) = refused(&https, &stranger, Method::GET, "/v1/audit", None).await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        message.contains("no role for the client certificate (spiffe://mesh.test/ns/maps/sa/p1)"),
        "{message}"
    );

    // Changes: a proxy, a viewer, a stranger may not; an operator restricted to maps may not
    // touch geo's cluster.
    for (files, says) in [
        (
            &proxy_maps,
            "is a proxy of group maps: it may not change anything",
        ),
        (&viewer, "is a viewer: it may not change anything"),
        (&stranger, "no role for the client certificate"),
        (
            &maps_operator,
            "is an operator of groups [maps]: the change touches group geo, outside its groups",
        ),
    ] {
        let (status, message) = refused(
            &https,
            files,
            Method::POST,
            "/v1/endpoints/depool",
            depool("search", search.addr()),
        )
        .await?;
        assert_eq!(status, StatusCode::FORBIDDEN, "{message}");
        assert!(message.contains(says), "{message}");
    }
    assert!(!root.path().join("state.json").exists(), "nothing changed");

    // Allowed: bob depools in maps, alice anywhere.
    request_with(
        &https,
        &maps_operator,
        Method::POST,
        "/v1/endpoints/depool",
        depool("tiles", tiles.addr()),
    )
    .await?;
    request_with(
        &https,
        &operator,
        Method::POST,
        "/v1/endpoints/set-weight",
        Some(json!({ "cluster": "search", "address": search.addr().to_string(), "weight": 7 })),
    )
    .await?;
    eventually(PUSH, || async {
        let clusters = admin_json(p1.admin(), "/clusters").await?;
        let pooled = &clusters["clusters"][0]["endpoints"][0]["pooled"];
        ensure!(pooled == false, "{clusters:#}");
        Ok(())
    })
    .await?;

    // The audit log, through the CLI binary with the viewer's certificate: who, what, before
    // and after; no refused change.
    let args = |json: bool| {
        let mut args: Vec<String> = ["audit", "--server", &https]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for (flag, file) in [
            ("--ca", &viewer.ca),
            ("--cert", &viewer.cert),
            ("--key", &viewer.key),
        ] {
            args.push(flag.into());
            args.push(file.as_ref().unwrap().display().to_string());
        }
        if json {
            args.push("--json".into());
        }
        args
    };
    let out = tokio::process::Command::new(process::xds_binary())
        .args(args(false))
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two changes: {stdout}");
    assert!(
        lines[1].contains("spiffe://mesh.test/team/maps/bob (operator of groups [maps])")
            && lines[1].contains("depool")
            && lines[1].contains(&format!("tiles {}", tiles.addr()))
            && lines[1].contains("pooled=false"),
        "{stdout}"
    );
    assert!(
        lines[2].contains("spiffe://mesh.test/operator/alice (operator)")
            && lines[2].contains("set-weight")
            && lines[2].contains("weight=7"),
        "{stdout}"
    );
    let out = tokio::process::Command::new(process::xds_binary())
        .args(args(true))
        .output()
        .await?;
    let audit: Value = serde_json::from_slice(&out.stdout)?;
    let entries = audit["entries"].as_array().context("entries")?;
    assert_eq!(entries[0]["before"], Value::Null, "{audit:#}");
    assert_eq!(entries[0]["after"], json!({ "pooled": false }), "{audit:#}");
    assert_eq!(entries[0]["target"]["groups"], json!(["maps"]), "{audit:#}");
    assert_eq!(
        entries[1]["who"]["identity"], "spiffe://mesh.test/operator/alice",
        "{audit:#}"
    );
    assert!(
        root.path().join("state.audit.jsonl").is_file(),
        "the log sits beside the state file"
    );

    drop((claims_geo, as_operator));
    server.shutdown().await;
    Ok(())
}

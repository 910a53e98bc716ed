//! `config-examples/beside-nginx/`: real nginx (Debian's) serving the maps site as it is,
//! and Legate beside it with the same certificate on its own port, giving the same answers;
//! then the "nginx retired" config, where Legate serves both ports.
//!
//! The examples' fixed ports, certificate paths and the tile server's address are replaced
//! by loopback ports, certificates made for the test and an echo upstream. Needs nginx
//! (`.ci/run` installs it) and `cargo build -p legate --bin legate`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use http::StatusCode;
use legate_integration::certs::{Ca, TlsClient};
use legate_integration::container::repo_root;
use legate_integration::process::{self, Legate};
use legate_integration::proxy::yaml;
use legate_integration::upstream::{closed_port, Upstream};

fn example(name: &str) -> Result<String> {
    let path = repo_root().join("config-examples/beside-nginx").join(name);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// `text` with each `from` (which must be there) replaced.
fn substitute(mut text: String, pairs: &[(&str, String)]) -> Result<String> {
    for (from, to) in pairs {
        ensure!(text.contains(from), "the example no longer has {from:?}");
        text = text.replace(from, to);
    }
    Ok(text)
}

/// nginx with the example site, in a directory of its own; stopped when dropped.
struct Nginx {
    child: tokio::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    async fn start(site: &str, addr: SocketAddr) -> Result<Nginx> {
        let dir = tempfile::tempdir()?;
        let d = dir.path().display();
        std::fs::write(dir.path().join("site.conf"), site)?;
        let main = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             \x20 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             \x20 include {d}/site.conf;\n}}\n"
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, main)?;
        let child = tokio::process::Command::new(nginx_binary())
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot run nginx ({e}): this test needs it (`apt-get install nginx`, as .ci/run does)"
                )
            })?;
        let mut nginx = Nginx {
            child,
            addr,
            _dir: dir,
        };
        // nginx is ready when its port accepts.
        for _ in 0..500 {
            if let Some(status) = nginx.child.try_wait()? {
                anyhow::bail!("nginx exited ({status}):\n{}", nginx.error_log());
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(nginx);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::bail!(
            "nginx did not accept on {addr} within 10s:\n{}",
            nginx.error_log()
        )
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("error.log")).unwrap_or_default()
    }
}

fn nginx_binary() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("nginx"))
}

/// What a request through one front gets back: status, which upstream answered, and the
/// request as the upstream saw it.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: StatusCode,
    upstream: String,
    path: String,
    host: Option<String>,
    forwarded_proto: Option<String>,
    forwarded_for: Option<String>,
}

/// The same requests over HTTP/1.1 and HTTP/2, through TLS to `addr`.
async fn answers(client: &TlsClient, addr: SocketAddr) -> Result<Vec<Answer>> {
    let mut out = Vec::new();
    for (host, path) in [
        ("maps.wikimedia.org", "/osm-intl/6/33/22.png"),
        (
            "a.maps.wikimedia.org",
            "/img/osm-intl,13,a,a,300x300.png?lang=en",
        ),
    ] {
        let mut h1 = client.clone().alpn(&["http/1.1"]).http1(addr, host).await?;
        let h2 = client.clone().alpn(&["h2"]).http2(addr, host).await?;
        for reply in [h1.get(host, path).await?, h2.get(host, path).await?] {
            let echo = reply.echo()?;
            out.push(Answer {
                status: reply.status,
                upstream: echo.upstream.clone(),
                path: echo.path.clone(),
                host: echo.host().map(str::to_owned),
                forwarded_proto: echo.header("x-forwarded-proto").map(str::to_owned),
                forwarded_for: echo.header("x-forwarded-for").map(str::to_owned),
            });
        }
    }
    Ok(out)
}

struct Certs {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    client: TlsClient,
}

fn certs() -> Result<Certs> {
    let dir = tempfile::tempdir()?;
    let ca = Ca::new("Maps test CA")?;
    let (cert, key) = ca
        .server(&["maps.wikimedia.org", "*.maps.wikimedia.org"])?
        .write(dir.path(), "maps")?;
    Ok(Certs {
        _dir: dir,
        cert,
        key,
        client: TlsClient::trusting(&ca),
    })
}

fn path_text(p: &Path) -> String {
    p.display().to_string()
}

/// The Legate example with loopback ports, the test's certificates and upstreams.
fn legate_config(name: &str, certs: &Certs, tiles: &Upstream) -> Result<String> {
    let mut pairs = vec![
        ("127.0.0.1:9901", "${ADMIN}".to_owned()),
        ("0.0.0.0:6543", "127.0.0.1:0".to_owned()),
        ("127.0.0.1:6500", "127.0.0.1:0".to_owned()),
        ("127.0.0.1:6432", "127.0.0.1:0".to_owned()),
        ("127.0.0.1:6533", tiles.addr().to_string()),
        ("/etc/ssl/localcerts/maps.crt", path_text(&certs.cert)),
        ("/etc/ssl/private/maps.key", path_text(&certs.key)),
        ("10.64.16.20:4443", closed_port().to_string()),
        ("10.64.48.21:4443", closed_port().to_string()),
        ("10.64.0.5:5432", closed_port().to_string()),
        ("10.64.0.6:5432", closed_port().to_string()),
    ];
    if name.contains("retired") {
        pairs.push(("0.0.0.0:443", "127.0.0.1:0".to_owned()));
    }
    substitute(example(name)?, &pairs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legate_beside_nginx_answers_as_nginx_does_then_serves_both_ports_once_nginx_retires(
) -> Result<()> {
    let certs = certs()?;
    let tiles = Upstream::echo("tiles").await?;

    // nginx, the site as it is: 443 → the tile server.
    let nginx_addr: SocketAddr = format!("127.0.0.1:{}", process::free_port()).parse()?;
    let site = substitute(
        example("nginx-maps.conf")?,
        &[
            (
                "listen 443 ssl http2;",
                format!("listen {nginx_addr} ssl http2;"),
            ),
            ("/etc/ssl/localcerts/maps.crt", path_text(&certs.cert)),
            ("/etc/ssl/private/maps.key", path_text(&certs.key)),
            ("127.0.0.1:6533", tiles.addr().to_string()),
        ],
    )?;
    let nginx = Nginx::start(&site, nginx_addr).await?;

    // Legate beside it on the new port, with the same certificate.
    let beside = Legate::start(yaml(&legate_config("legate.yaml", &certs, &tiles)?)).await?;
    let through_nginx = answers(&certs.client, nginx.addr).await?;
    let through_legate = answers(&certs.client, beside.addr("maps-tls")).await?;
    assert_eq!(through_nginx.len(), 4);
    assert!(
        through_nginx.iter().all(|a| a.status == StatusCode::OK),
        "{through_nginx:?}"
    );
    assert_eq!(
        through_legate, through_nginx,
        "the same answers on both ports"
    );
    drop(beside);

    // nginx retired: Legate holds both ports, with the same answers on each.
    drop(nginx);
    let retired = Legate::start(yaml(&legate_config(
        "legate-nginx-retired.yaml",
        &certs,
        &tiles,
    )?))
    .await?;
    for listener in ["maps-443", "maps-tls"] {
        let answers = answers(&certs.client, retired.addr(listener)).await?;
        assert_eq!(answers, through_nginx, "{listener} answers as nginx did");
    }
    Ok(())
}

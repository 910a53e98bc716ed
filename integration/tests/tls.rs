//! TLS end to end: termination on a listener (SNI certificate choice, ALPN, minimum versions,
//! handshake timeout, certificate rotation, client certificates and their forwarding), TLS to
//! upstreams (verification, SNI, ALPN h2, client certificates), real peers (`curl`,
//! `openssl s_client`), and `legate validate` on TLS files.
//!
//! Every certificate is generated at test time by [`legate_integration::certs`] and written
//! into a temporary directory. The `legate validate` tests need
//! `cargo build -p legate --bin legate` first.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use http::{Method, StatusCode, Version};
use legate_integration::body;
use legate_integration::certs::{
    self, peer_cert, Ca, Leaf, LeafSpec, TlsClient, TlsUpstream, Versions,
};
use legate_integration::client::{self, curl, request, Reply};
use legate_integration::eventually;
use legate_integration::process::{self, Legate};
use legate_integration::proxy::{yaml, Proxy, Yaml};
use legate_integration::upstream::Upstream;
use tokio::io::AsyncReadExt;

/// How long a watched certificate change may take to reach new handshakes (the watcher
/// debounces for 200 ms).
const ROTATION_LIMIT: Duration = Duration::from_secs(5);

/// Listener `plain` and listener `tls` share route table `maps`: `/healthz` answered by
/// Legate, everything else proxied to cluster `app` at `${APP}`. `${CERTS}` is the `tls`
/// listener's certificate list; `${TLS_EXTRA}` more keys of its `tls` block (indented 6).
const TWO_LISTENERS: &str = r#"
admin: { listen: 127.0.0.1:0 }
runtime: { workers: 2 }
access_log: { enabled: false }
listeners:
  - { name: plain, listen: 127.0.0.1:0, http: { route_table: maps } }
  - name: tls
    listen: 127.0.0.1:0
    http: { route_table: maps }
    tls:
      certificates: ${CERTS}
${TLS_EXTRA}
route_tables:
  maps:
    virtual_hosts:
      - hosts: ["*"]
        routes:
          - match: { prefix: /healthz }
            respond: { status: 200, body: "ok\n" }
          - match: { prefix: / }
            cluster: app
clusters:
  - { name: app, endpoints: ["${APP}"] }
"#;

/// A CA and two server certificates on disk: `a` (for `a.example` and `maps.example.org`,
/// the listener's first and so default certificate) and `b` (for `b.example` and
/// `*.tiles.example.org`).
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    a: Leaf,
    b: Leaf,
}

impl Pki {
    fn new() -> Result<Pki> {
        let dir = tempfile::tempdir()?;
        let ca = Ca::new("Legate test CA")?;
        let a = ca.server(&["a.example", "maps.example.org"])?;
        let b = ca.server(&["b.example", "*.tiles.example.org"])?;
        a.write(dir.path(), "a")?;
        b.write(dir.path(), "b")?;
        ca.write(dir.path(), "ca.pem")?;
        Ok(Pki { dir, ca, a, b })
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }

    /// The certificate list `[a, b]` for `${CERTS}`.
    fn certs(&self) -> String {
        certs_yaml(&[
            (self.path("a.crt"), self.path("a.key")),
            (self.path("b.crt"), self.path("b.key")),
        ])
    }

    fn client(&self) -> TlsClient {
        TlsClient::trusting(&self.ca)
    }
}

/// A YAML flow list of `{ cert, key }` pairs.
fn certs_yaml(pairs: &[(String, String)]) -> String {
    let items: Vec<String> = pairs
        .iter()
        .map(|(c, k)| format!("{{ cert: {c:?}, key: {k:?} }}"))
        .collect();
    format!("[{}]", items.join(", "))
}

fn two_listeners(certs: &str, extra: &str, app: &Upstream) -> Yaml {
    yaml(TWO_LISTENERS)
        .set("CERTS", certs)
        .set("TLS_EXTRA", extra)
        .set("APP", app.addr())
}

/// The `TWO_LISTENERS` proxy with certificates `[a, b]` and `extra` in the `tls` block.
fn start(pki: &Pki, extra: &str, app: &Upstream) -> Result<Proxy> {
    Proxy::start(two_listeners(&pki.certs(), extra, app))
}

// ---- termination: listeners, SNI, ALPN, versions, timeouts --------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_tls_listeners_serve_the_same_routes() -> Result<()> {
    let pki = Pki::new()?;
    let app = Upstream::echo("app").await?;
    let proxy = start(&pki, "", &app)?;

    let plain_health = client::get(proxy.addr("plain"), "maps.example.org", "/healthz").await?;
    let mut tls = pki
        .client()
        .http1(proxy.addr("tls"), "maps.example.org")
        .await?;
    let tls_health = tls.get("maps.example.org", "/healthz").await?;
    assert_eq!(plain_health.status, StatusCode::OK);
    assert_eq!(tls_health.status, StatusCode::OK);
    assert_eq!(plain_health.body, tls_health.body);
    assert_eq!(tls_health.text(), "ok\n");

    let plain = client::get(proxy.addr("plain"), "maps.example.org", "/tiles/1/2/3.png").await?;
    let secure = tls.get("maps.example.org", "/tiles/1/2/3.png").await?;
    assert_eq!(plain.status, StatusCode::OK);
    assert_eq!(secure.status, StatusCode::OK);
    let (plain, secure) = (plain.echo()?, secure.echo()?);
    assert_eq!(plain.upstream, "app");
    assert_eq!(secure.upstream, "app");
    assert_eq!(plain.path, secure.path);
    assert_eq!(plain.method, secure.method);
    assert_eq!(plain.host(), secure.host());
    assert_eq!(plain.header("x-forwarded-proto"), Some("http"));
    assert_eq!(secure.header("x-forwarded-proto"), Some("https"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_chooses_the_certificate_and_the_first_is_the_default() -> Result<()> {
    let pki = Pki::new()?;
    let app = Upstream::echo("app").await?;
    let proxy = start(&pki, "", &app)?;
    let addr = proxy.addr("tls");
    let any = TlsClient::trusting_anything();

    for (sni, expected, which) in [
        ("a.example", &pki.a, "a"),
        ("maps.example.org", &pki.a, "a"),
        ("b.example", &pki.b, "b"),
        ("x.tiles.example.org", &pki.b, "b (wildcard)"),
        // A wildcard covers one label only.
        ("x.y.tiles.example.org", &pki.a, "a (default)"),
        ("unknown.example", &pki.a, "a (default)"),
    ] {
        let stream = any.connect(addr, sni).await?;
        assert!(
            peer_cert(&stream).as_ref() == Some(expected.der()),
            "SNI {sni} should get certificate {which}"
        );
    }
    // No SNI at all: rustls sends none when told not to, or for an IP address.
    let stream = any.clone().without_sni().connect(addr, "b.example").await?;
    assert!(peer_cert(&stream).as_ref() == Some(pki.a.der()), "no SNI");
    let stream = any.connect(addr, "127.0.0.1").await?;
    assert!(
        peer_cert(&stream).as_ref() == Some(pki.a.der()),
        "IP, no SNI"
    );

    // The presented chains verify against the CA for their names, and requests work.
    for name in ["a.example", "b.example", "x.tiles.example.org"] {
        let mut conn = pki.client().http1(addr, name).await?;
        let reply = conn.get(name, "/").await?;
        assert_eq!(reply.status, StatusCode::OK, "{name}");
        assert_eq!(reply.echo()?.host(), Some(name));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_negotiates_h2_or_http1() -> Result<()> {
    let pki = Pki::new()?;
    let app = Upstream::echo("app").await?;
    let proxy = start(&pki, "", &app)?;
    let addr = proxy.addr("tls");

    let h2 = pki.client().alpn(&["h2"]).http2(addr, "a.example").await?;
    assert_eq!(h2.negotiated.alpn.as_deref(), Some("h2"));
    let reply = h2.get("a.example", "/over-h2").await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.version, Version::HTTP_2);
    let echo = reply.echo()?;
    assert_eq!(echo.path, "/over-h2");
    assert_eq!(echo.header("x-forwarded-proto"), Some("https"));

    let mut h1 = pki
        .client()
        .alpn(&["http/1.1"])
        .http1(addr, "a.example")
        .await?;
    assert_eq!(h1.negotiated.alpn.as_deref(), Some("http/1.1"));
    let reply = h1.get("a.example", "/over-h1").await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.version, Version::HTTP_11);
    assert_eq!(reply.echo()?.path, "/over-h1");

    // A client offering both gets the listener's first choice, h2.
    let both = pki
        .client()
        .alpn(&["http/1.1", "h2"])
        .connect(addr, "a.example")
        .await?;
    assert_eq!(certs::alpn_of(&both).as_deref(), Some("h2"));

    // A client offering no ALPN still speaks HTTP/1.1.
    let mut none = pki.client().http1(addr, "a.example").await?;
    assert_eq!(none.negotiated.alpn, None);
    assert_eq!(none.get("a.example", "/").await?.status, StatusCode::OK);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_alpn_list_limits_the_protocols() -> Result<()> {
    let pki = Pki::new()?;
    let app = Upstream::echo("app").await?;
    let proxy = start(&pki, "      alpn: [http/1.1]", &app)?;
    let addr = proxy.addr("tls");

    let refused = pki.client().alpn(&["h2"]).connect(addr, "a.example").await;
    assert!(
        refused.is_err(),
        "an h2-only client must be refused by an http/1.1-only listener"
    );

    let mut conn = pki
        .client()
        .alpn(&["h2", "http/1.1"])
        .http1(addr, "a.example")
        .await?;
    assert_eq!(conn.negotiated.alpn.as_deref(), Some("http/1.1"));
    assert_eq!(conn.get("a.example", "/").await?.status, StatusCode::OK);
    Ok(())
}

/// `Cipher is X` lines of `openssl s_client` output, X being `(NONE)` when nothing was agreed.
fn negotiated_ciphers(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| l.split_once("Cipher is ").map(|(_, c)| c.trim().to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls11_client_is_refused() -> Result<()> {
    let pki = Pki::new()?;
    let app = Upstream::echo("app").await?;
    let proxy = start(&pki, "", &app)?;
    let target = proxy.addr("tls").to_string();

    let (code, output) = certs::openssl(&[
        "s_client",
        "-connect",
        &target,
        "-servername",
        "a.example",
        "-tls1_1",
        "-cipher",
        "DEFAULT@SECLEVEL=0",
    ])
    .await?;

    assert_ne!(code, Some(0), "openssl must fail:\n{output}");
    assert!(output.contains("alert"), "no handshake alert:\n{output}");
    let ciphers = negotiated_ciphers(&output);
    assert!(
        ciphers.iter().all(|c| c == "(NONE)"),
        "a cipher was negotiated over TLS 1.1: {ciphers:?}\n{output}"
    );
    assert_eq!(app.requests(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_version_13_refuses_tls12_clients() -> Result<()> {
    let pki = Pki::new()?;
    let app = Upstream::echo("app").await?;

    // Default minimum 1.2: a TLS 1.2 client is served.
    let default = start(&pki, "", &app)?;
    let tls12 = pki.client().versions(Versions::Tls12Only);
    let mut conn = tls12.http1(default.addr("tls"), "a.example").await?;
    assert_eq!(conn.get("a.example", "/").await?.status, StatusCode::OK);

    let strict = start(&pki, "      min_version: \"1.3\"", &app)?;
    let refused = tls12.connect(strict.addr("tls"), "a.example").await;
    assert!(
        refused.is_err(),
        "a TLS 1.2-only client must be refused when min_version is 1.3"
    );
    let mut conn = pki
        .client()
        .versions(Versions::Tls13Only)
        .http1(strict.addr("tls"), "a.example")
        .await?;
    assert_eq!(conn.get("a.example", "/").await?.status, StatusCode::OK);
    Ok(())
}

/// Connects, sends `first`, then waits for the server to close; returns how long that took
/// from the connection (at most 5s).
async fn time_until_closed(addr: std::net::SocketAddr, first: Vec<u8>) -> Result<Duration> {
    use tokio::io::AsyncWriteExt as _;
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let started = tokio::time::Instant::now();
    stream.write_all(&first).await?;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .context("the connection stayed open for 5s without a handshake")?;
    match read {
        Ok(0) | Err(_) => Ok(started.elapsed()),
        Ok(n) => bail!("expected the connection closed, read {n} bytes"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_cut_off_after_the_handshake_timeout() -> Result<()> {
    let pki = Pki::new()?;
    let app = Upstream::echo("app").await?;
    let proxy = start(&pki, "      handshake_timeout: 300ms", &app)?;
    let addr = proxy.addr("tls");

    // One client sends nothing; another starts a ClientHello (a record header announcing
    // 512 bytes, and 3 of them) and stalls.
    let silent = tokio::spawn(time_until_closed(addr, Vec::new()));
    let stalled = tokio::spawn(time_until_closed(
        addr,
        vec![0x16, 0x03, 0x01, 0x02, 0x00, 1, 0, 1],
    ));
    for (who, waited) in [("silent", silent.await??), ("stalled", stalled.await??)] {
        assert!(
            waited >= Duration::from_millis(250),
            "{who}: closed after {waited:?}, before the 300ms timeout"
        );
        assert!(
            waited < Duration::from_secs(3),
            "{who}: closed only after {waited:?}"
        );
    }

    // The timeout covers the handshake only: a connection that completed it and then idles
    // past 300ms is still served.
    let mut conn = pki.client().http1(addr, "a.example").await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(conn.get("a.example", "/").await?.status, StatusCode::OK);
    Ok(())
}

// ---- rotation ------------------------------------------------------------------------------

/// The certificate a new handshake for `maps.example.org` gets.
async fn presented(
    addr: std::net::SocketAddr,
    ca: &Ca,
) -> Result<rustls_pki_types::CertificateDer<'static>> {
    let stream = TlsClient::trusting(ca)
        .connect(addr, "maps.example.org")
        .await?;
    peer_cert(&stream).context("no server certificate")
}

/// Waits until new handshakes get `leaf`.
async fn wait_for_cert(addr: std::net::SocketAddr, ca: &Ca, leaf: &Leaf, what: &str) -> Result<()> {
    eventually(ROTATION_LIMIT, || async {
        ensure!(
            presented(addr, ca).await? == *leaf.der(),
            "new handshakes do not get the {what} certificate yet"
        );
        Ok(())
    })
    .await
}

/// For one second (well past the watcher's 200ms debounce), every new handshake succeeds
/// and gets `leaf`.
async fn stays_on_cert(addr: std::net::SocketAddr, ca: &Ca, leaf: &Leaf, what: &str) -> Result<()> {
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut handshakes = 0;
    while tokio::time::Instant::now() < until {
        let cert = presented(addr, ca)
            .await
            .with_context(|| format!("handshake {handshakes} after {what}"))?;
        ensure!(
            cert == *leaf.der(),
            "after {what}, handshake {handshakes} got another certificate than the last good one"
        );
        handshakes += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_certificate_files_rotate_for_new_handshakes_only() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = Ca::new("Rotation CA")?;
    let v1 = ca.server(&["maps.example.org"])?;
    let (crt, key) = v1.write(dir.path(), "tls")?;
    let certs = certs_yaml(&[(crt.display().to_string(), key.display().to_string())]);
    let app = Upstream::echo("app").await?;
    let proxy = Proxy::start(two_listeners(&certs, "", &app))?;
    let addr = proxy.addr("tls");
    // Legate starts watching after it loaded the files; a change before that would only be
    // noticed with the next one.
    certs::wait_watched(dir.path()).await?;

    let mut old = TlsClient::trusting(&ca)
        .http1(addr, "maps.example.org")
        .await?;
    assert!(old.negotiated.peer_cert.as_ref() == Some(v1.der()));
    assert_eq!(
        old.get("maps.example.org", "/1").await?.status,
        StatusCode::OK
    );

    // New files written beside the old ones and renamed over them.
    let v2 = ca.server(&["maps.example.org"])?;
    v2.replace(&crt, &key)?;
    wait_for_cert(addr, &ca, &v2, "renamed-in").await?;
    assert_eq!(
        old.get("maps.example.org", "/2").await?.status,
        StatusCode::OK
    );

    // A new certificate with a garbage key: rejected, the last good pair keeps serving.
    let v3 = ca.server(&["maps.example.org"])?;
    certs::replace_file(&crt, v3.cert_pem.as_bytes())?;
    std::fs::write(
        &key,
        b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n",
    )?;
    stays_on_cert(addr, &ca, &v2, "a garbage key").await?;
    assert_eq!(
        old.get("maps.example.org", "/3").await?.status,
        StatusCode::OK
    );

    // The watcher survived the bad pair: the matching key installs v3.
    certs::replace_file(&key, v3.key_pem.as_bytes())?;
    wait_for_cert(addr, &ca, &v3, "repaired").await?;
    assert_eq!(
        old.get("maps.example.org", "/4").await?.status,
        StatusCode::OK
    );
    assert!(!old.is_closed());
    Ok(())
}

/// Points `dir/..data` at `dir/version` atomically, as the kubelet does for a Secret volume.
fn swap_data(dir: &Path, version: &str) -> Result<()> {
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(version, &tmp)?;
    std::fs::rename(&tmp, dir.join("..data"))?;
    Ok(())
}

/// Writes `dir/version/tls.crt` and `dir/version/tls.key`.
fn write_version(dir: &Path, version: &str, cert_pem: &str, key_pem: &str) -> Result<()> {
    let v = dir.join(version);
    std::fs::create_dir(&v)?;
    std::fs::write(v.join("tls.crt"), cert_pem)?;
    std::fs::write(v.join("tls.key"), key_pem)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_secret_symlink_swap_rotates_the_certificate() -> Result<()> {
    // dir/tls.crt -> ..data/tls.crt, dir/..data -> ..v1
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let ca = Ca::new("Kubernetes CA")?;
    let v1 = ca.server(&["maps.example.org"])?;
    write_version(d, "..v1", &v1.cert_pem, &v1.key_pem)?;
    std::os::unix::fs::symlink("..v1", d.join("..data"))?;
    std::os::unix::fs::symlink("..data/tls.crt", d.join("tls.crt"))?;
    std::os::unix::fs::symlink("..data/tls.key", d.join("tls.key"))?;
    let certs = certs_yaml(&[(
        d.join("tls.crt").display().to_string(),
        d.join("tls.key").display().to_string(),
    )]);
    let app = Upstream::echo("app").await?;
    let proxy = Proxy::start(two_listeners(&certs, "", &app))?;
    let addr = proxy.addr("tls");
    certs::wait_watched(d).await?;

    let mut old = TlsClient::trusting(&ca)
        .http1(addr, "maps.example.org")
        .await?;
    assert!(old.negotiated.peer_cert.as_ref() == Some(v1.der()));
    assert_eq!(
        old.get("maps.example.org", "/1").await?.status,
        StatusCode::OK
    );

    let v2 = ca.server(&["maps.example.org"])?;
    write_version(d, "..v2", &v2.cert_pem, &v2.key_pem)?;
    swap_data(d, "..v2")?;
    wait_for_cert(addr, &ca, &v2, "swapped-in").await?;
    assert_eq!(
        old.get("maps.example.org", "/2").await?.status,
        StatusCode::OK
    );

    // A Secret whose key belongs to another certificate: rejected, v2 keeps serving.
    let v3 = ca.server(&["maps.example.org"])?;
    let stranger = ca.server(&["maps.example.org"])?;
    write_version(d, "..v3", &v3.cert_pem, &stranger.key_pem)?;
    swap_data(d, "..v3")?;
    stays_on_cert(addr, &ca, &v2, "a mismatched key").await?;
    assert_eq!(
        old.get("maps.example.org", "/3").await?.status,
        StatusCode::OK
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_a_config_reloads_certificates() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = Ca::new("Apply CA")?;
    let v1 = ca.server(&["maps.example.org"])?;
    let (crt, key) = v1.write(dir.path(), "tls")?;
    let certs = certs_yaml(&[(crt.display().to_string(), key.display().to_string())]);
    let app = Upstream::echo("app").await?;
    let config = two_listeners(&certs, "", &app);
    let proxy = Proxy::start(config.clone())?;
    let addr = proxy.addr("tls");
    assert!(presented(addr, &ca).await? == *v1.der());

    // The same config applied after the files changed: the very next handshake gets v2,
    // without waiting for the watcher.
    let v2 = ca.server(&["maps.example.org"])?;
    v2.replace(&crt, &key)?;
    proxy.apply(config.clone())?;
    assert!(
        presented(addr, &ca).await? == *v2.der(),
        "apply did not reload"
    );
    assert_eq!(
        TlsClient::trusting(&ca)
            .http1(addr, "maps.example.org")
            .await?
            .get("maps.example.org", "/")
            .await?
            .status,
        StatusCode::OK
    );

    // A config whose key does not load is rejected as a whole; v2 stays.
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, ca.server(&["x.example"])?.key_pem)?;
    let bad = certs_yaml(&[(crt.display().to_string(), other_key.display().to_string())]);
    assert!(proxy.apply(two_listeners(&bad, "", &app)).is_err());
    assert!(presented(addr, &ca).await? == *v2.der());
    Ok(())
}

// ---- client certificates -------------------------------------------------------------------

const SPIFFE_TILES: &str = "spiffe://cluster.local/ns/maps/sa/tiles";

/// One attempt at `GET /` over a new TLS connection; an error when the handshake or the
/// request fails.
async fn attempt(client: &TlsClient, addr: std::net::SocketAddr) -> Result<Reply> {
    let mut conn = client.http1(addr, "maps.example.org").await?;
    conn.get("maps.example.org", "/").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_auth_refuses_clients_without_a_valid_certificate() -> Result<()> {
    let pki = Pki::new()?;
    let app = Upstream::echo("app").await?;
    let extra = format!(
        "      client_auth: {{ ca: {:?}, mode: required }}",
        pki.path("ca.pem")
    );
    let proxy = start(&pki, &extra, &app)?;
    let addr = proxy.addr("tls");

    let anonymous = attempt(&pki.client(), addr).await;
    assert!(
        anonymous.is_err(),
        "served without a client certificate: {anonymous:?}"
    );

    let rogue_ca = Ca::new("Rogue CA")?;
    let rogue = rogue_ca.client("tiles", &[SPIFFE_TILES])?;
    let forged = attempt(&pki.client().identity(&rogue), addr).await;
    assert!(
        forged.is_err(),
        "served with an untrusted certificate: {forged:?}"
    );
    assert_eq!(app.requests(), 0);

    let tiles = pki.ca.client("tiles", &[SPIFFE_TILES])?;
    let reply = attempt(&pki.client().identity(&tiles), addr).await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(app.requests(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_auth_serves_clients_with_and_without_certificates() -> Result<()> {
    let pki = Pki::new()?;
    let app = Upstream::echo("app").await?;
    let extra = format!(
        "      client_auth: {{ ca: {:?}, mode: optional }}",
        pki.path("ca.pem")
    );
    let proxy = start(&pki, &extra, &app)?;
    let addr = proxy.addr("tls");

    let anonymous = attempt(&pki.client(), addr).await?;
    assert_eq!(anonymous.status, StatusCode::OK);
    let tiles = pki.ca.client("tiles", &[SPIFFE_TILES])?;
    let known = attempt(&pki.client().identity(&tiles), addr).await?;
    assert_eq!(known.status, StatusCode::OK);
    // Without `forward_client_cert`, the identity is not passed on.
    assert!(!known.echo()?.has_header("x-forwarded-client-cert"));

    // Optional means "may be absent", not "may be invalid".
    let rogue = Ca::new("Rogue CA")?.client("tiles", &[SPIFFE_TILES])?;
    let forged = attempt(&pki.client().identity(&rogue), addr).await;
    assert!(
        forged.is_err(),
        "served with an untrusted certificate: {forged:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_client_cert_names_the_verified_client_and_nothing_else() -> Result<()> {
    let pki = Pki::new()?;
    let app = Upstream::echo("app").await?;
    let extra = format!(
        "      client_auth: {{ ca: {:?}, mode: optional }}\n      forward_client_cert: true",
        pki.path("ca.pem")
    );
    let proxy = start(&pki, &extra, &app)?;
    let addr = proxy.addr("tls");
    const SPOOF: &str = "Subject=\"CN=admin\";URI=spiffe://cluster.local/ns/root/sa/admin";
    let spoofed = || {
        let mut req = request(Method::GET, "maps.example.org", "/");
        let h = req.headers_mut();
        h.insert("x-forwarded-client-cert", SPOOF.parse().unwrap());
        h.append(
            "X-Forwarded-Client-Cert",
            "By=spiffe://evil".parse().unwrap(),
        );
        req
    };

    // A verified client: its own identity, the spoofed one gone.
    let tiles = pki.ca.client("tiles", &[SPIFFE_TILES])?;
    let mut conn = pki
        .client()
        .identity(&tiles)
        .http1(addr, "maps.example.org")
        .await?;
    let echo = conn.request(spoofed()).await?.echo()?;
    let xfcc = echo.header_all("x-forwarded-client-cert");
    assert_eq!(xfcc.len(), 1, "{xfcc:?}");
    let value = xfcc[0];
    assert!(value.starts_with("Subject=\""), "{value}");
    assert!(value.contains("CN=tiles"), "{value}");
    assert!(value.contains(&format!("URI={SPIFFE_TILES}")), "{value}");
    assert!(
        !value.contains("admin"),
        "the client's own claim leaked: {value}"
    );

    // The same over HTTP/2.
    let h2 = pki
        .client()
        .identity(&tiles)
        .alpn(&["h2"])
        .http2(addr, "maps.example.org")
        .await?;
    let echo = h2.get("maps.example.org", "/h2").await?.echo()?;
    let value = echo.header("x-forwarded-client-cert").unwrap_or_default();
    assert!(value.contains(&format!("URI={SPIFFE_TILES}")), "{value:?}");

    // No certificate: nothing forwarded, spoofed header removed.
    let mut anonymous = pki.client().http1(addr, "maps.example.org").await?;
    let echo = anonymous.request(spoofed()).await?.echo()?;
    assert!(
        !echo.has_header("x-forwarded-client-cert"),
        "{:?}",
        echo.header_all("x-forwarded-client-cert")
    );

    // Plaintext listener: a spoofed header never reaches the upstream, over HTTP/1.1 or h2c.
    let mut plain = client::Http1::connect(proxy.addr("plain")).await?;
    let echo = plain.request(spoofed()).await?.echo()?;
    assert!(
        !echo.has_header("x-forwarded-client-cert"),
        "{:?}",
        echo.header_all("x-forwarded-client-cert")
    );
    let mut req = client::h2_request(Method::GET, "maps.example.org", "/", body::empty());
    req.headers_mut()
        .insert("x-forwarded-client-cert", SPOOF.parse().unwrap());
    let h2c = client::H2::connect(proxy.addr("plain")).await?;
    let echo = h2c.request(req).await?.echo()?;
    assert!(
        !echo.has_header("x-forwarded-client-cert"),
        "{:?}",
        echo.header_all("x-forwarded-client-cert")
    );
    Ok(())
}

/// The `key=value` fields of one `x-forwarded-client-cert` element, as Envoy defines it:
/// fields separated by `;`, a value containing `,`, `;` or `=` double-quoted, with `\"` for a
/// quote inside.
fn xfcc_fields(element: &str) -> Result<Vec<(String, String)>> {
    let mut fields = Vec::new();
    let mut chars = element.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('"') => break,
                    Some(c) => value.push(c),
                    None => bail!("unterminated quoted value in {element:?}"),
                }
            }
            match chars.next() {
                None | Some(';') => {}
                Some(c) => bail!("{c:?} after a quoted value in {element:?}"),
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ';').collect();
        }
        fields.push((key.to_ascii_lowercase(), value));
    }
    Ok(fields)
}

fn xfcc_values<'a>(fields: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The fields of the `x-forwarded-client-cert` the upstream sees for a client presenting
/// `identity` (issued by `ca`) to a listener with `forward_client_cert: true`.
async fn forwarded_identity(ca: &Ca, identity: &Leaf) -> Result<Vec<(String, String)>> {
    let pki = Pki::new()?;
    let client_ca = ca.write(pki.dir.path(), "client-ca.pem")?;
    let app = Upstream::echo("app").await?;
    let extra = format!(
        "      client_auth: {{ ca: {:?} }}\n      forward_client_cert: true",
        client_ca.display().to_string()
    );
    let proxy = start(&pki, &extra, &app)?;
    let mut conn = pki
        .client()
        .identity(identity)
        .http1(proxy.addr("tls"), "maps.example.org")
        .await?;
    let echo = conn.get("maps.example.org", "/").await?.echo()?;
    let all = echo.header_all("x-forwarded-client-cert");
    ensure!(
        all.len() == 1,
        "expected one x-forwarded-client-cert, got {all:?}"
    );
    xfcc_fields(all[0]).with_context(|| format!("x-forwarded-client-cert: {}", all[0]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_client_cert_dns_entries_are_the_certificate_s_dns_sans() -> Result<()> {
    let ca = Ca::new("Mesh CA")?;

    let with_dns = ca.issue(&LeafSpec {
        names: vec!["tiles.maps.svc.cluster.local".to_owned()],
        ..LeafSpec::client("tiles", &[SPIFFE_TILES])
    })?;
    let fields = forwarded_identity(&ca, &with_dns).await?;
    assert_eq!(xfcc_values(&fields, "uri"), [SPIFFE_TILES], "{fields:?}");
    assert_eq!(
        xfcc_values(&fields, "dns"),
        ["tiles.maps.svc.cluster.local"],
        "{fields:?}"
    );
    let subject = xfcc_values(&fields, "subject");
    assert_eq!(subject.len(), 1, "{fields:?}");
    assert!(subject[0].contains("CN=tiles"), "{fields:?}");

    // No DNS name in the certificate: no DNS entry. The common name is not a DNS SAN, and
    // an upstream authorizing on `DNS=` must not be handed one the certificate never held.
    let without_dns = ca.client("tiles", &[SPIFFE_TILES])?;
    let fields = forwarded_identity(&ca, &without_dns).await?;
    assert_eq!(xfcc_values(&fields, "uri"), [SPIFFE_TILES], "{fields:?}");
    assert_eq!(
        xfcc_values(&fields, "dns"),
        Vec::<&str>::new(),
        "the common name was forwarded as a DNS SAN: {fields:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_client_cert_quotes_values_holding_separators() -> Result<()> {
    // A URI SAN is free text to the TLS layer; `;` and `=` in it must not make new fields.
    let ca = Ca::new("Mesh CA")?;
    let tricky_uri = "spiffe://cluster.local/ns/maps/sa/tiles;DNS=admin.internal";
    let identity = ca.client("tiles", &[tricky_uri])?;

    let fields = forwarded_identity(&ca, &identity).await?;

    assert_eq!(xfcc_values(&fields, "uri"), [tricky_uri], "{fields:?}");
    assert!(
        !xfcc_values(&fields, "dns").contains(&"admin.internal"),
        "a URI SAN injected a DNS field: {fields:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ca_file_rotation_changes_which_clients_are_accepted() -> Result<()> {
    let pki = Pki::new()?;
    let next_ca = Ca::new("Next client CA")?;
    let client_ca = pki.ca.write(pki.dir.path(), "client-ca.pem")?;
    let app = Upstream::echo("app").await?;
    let extra = format!(
        "      client_auth: {{ ca: {:?}, mode: required }}",
        client_ca.display().to_string()
    );
    let proxy = start(&pki, &extra, &app)?;
    let addr = proxy.addr("tls");
    certs::wait_watched(pki.dir.path()).await?;
    let current = pki
        .client()
        .identity(&pki.ca.client("tiles", &[SPIFFE_TILES])?);
    let next = pki
        .client()
        .identity(&next_ca.client("tiles", &[SPIFFE_TILES])?);
    assert_eq!(attempt(&current, addr).await?.status, StatusCode::OK);
    assert!(attempt(&next, addr).await.is_err());

    certs::replace_file(&client_ca, next_ca.pem().as_bytes())?;

    eventually(ROTATION_LIMIT, || async {
        ensure!(attempt(&next, addr).await?.status == StatusCode::OK);
        Ok(())
    })
    .await
    .context("a client of the new CA is never accepted")?;
    assert!(
        attempt(&current, addr).await.is_err(),
        "a client of the replaced CA is still accepted"
    );
    Ok(())
}

// ---- TLS to upstreams ----------------------------------------------------------------------

/// Listener `front` routes by Host `NAME.test` to cluster `NAME`; `${CLUSTERS}` lists them.
const BY_HOST: &str = r#"
admin: { listen: 127.0.0.1:0 }
runtime: { workers: 2 }
access_log: { enabled: false }
listeners:
  - { name: front, listen: 127.0.0.1:0, http: { route_table: main } }
route_tables:
  main:
    virtual_hosts:
${VHOSTS}
clusters:
${CLUSTERS}
"#;

/// A `BY_HOST` config with one cluster per `(name, yaml flow mapping body)`.
fn by_host(clusters: &[(&str, String)]) -> Yaml {
    let vhosts: Vec<String> = clusters
        .iter()
        .map(|(name, _)| {
            format!(
                "      - {{ hosts: [{name}.test], routes: [{{ match: {{ prefix: / }}, cluster: {name} }}] }}"
            )
        })
        .collect();
    let clusters: Vec<String> = clusters
        .iter()
        .map(|(name, body)| format!("  - {{ name: {name}, {body} }}"))
        .collect();
    yaml(BY_HOST)
        .set("VHOSTS", vhosts.join("\n"))
        .set("CLUSTERS", clusters.join("\n"))
}

async fn get_host(proxy: &Proxy, name: &str) -> Result<Reply> {
    client::get(proxy.addr("front"), &format!("{name}.test"), "/").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_verifies_the_ca_and_the_server_name() -> Result<()> {
    let pki = Pki::new()?;
    let cert = pki.ca.server(&["tegola.example.org", "127.0.0.1"])?;
    let tegola = TlsUpstream::start("tegola", &cert, &["http/1.1"], None).await?;
    let ca = pki.path("ca.pem");
    let ep = tegola.addr();
    let proxy = Proxy::start(by_host(&[
        (
            "good",
            format!("endpoints: [\"{ep}\"], tls: {{ ca: {ca:?}, sni: tegola.example.org }}"),
        ),
        (
            "wrongname",
            format!("endpoints: [\"{ep}\"], tls: {{ ca: {ca:?}, sni: wrong.example.org }}"),
        ),
        (
            "insecure",
            format!(
                "endpoints: [\"{ep}\"], tls: {{ sni: wrong.example.org, insecure_skip_verify: true }}"
            ),
        ),
        // No `sni`: the endpoint is an IP, so the name verified is that IP (and none is sent).
        ("byip", format!("endpoints: [\"{ep}\"], tls: {{ ca: {ca:?} }}")),
        // No `ca`: the system roots do not know this CA.
        (
            "systemroots",
            format!("endpoints: [\"{ep}\"], tls: {{ sni: tegola.example.org }}"),
        ),
    ]))?;

    let good = get_host(&proxy, "good").await?;
    assert_eq!(good.status, StatusCode::OK, "{}", good.text());
    assert_eq!(good.upstream(), Some("tegola"));
    let seen = tegola.handshakes();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].sni.as_deref(), Some("tegola.example.org"));
    assert_eq!(seen[0].alpn.as_deref(), Some("http/1.1"));
    assert_eq!(good.echo()?.version, "HTTP/1.1");

    for name in ["wrongname", "systemroots"] {
        let reply = get_host(&proxy, name).await?;
        assert_eq!(
            reply.status,
            StatusCode::BAD_GATEWAY,
            "{name}: {}",
            reply.text()
        );
        assert_eq!(reply.legate_error(), Some("upstream-tls"), "{name}");
    }
    assert_eq!(
        tegola.seen().len(),
        1,
        "a failed verification sent a request"
    );

    let insecure = get_host(&proxy, "insecure").await?;
    assert_eq!(insecure.status, StatusCode::OK, "{}", insecure.text());
    assert_eq!(insecure.upstream(), Some("tegola"));
    assert!(
        tegola
            .handshakes()
            .iter()
            .any(|h| h.sni.as_deref() == Some("wrong.example.org")),
        "insecure_skip_verify still sends the configured SNI"
    );

    let byip = get_host(&proxy, "byip").await?;
    assert_eq!(byip.status, StatusCode::OK, "{}", byip.text());
    assert!(
        tegola.handshakes().iter().any(|h| h.sni.is_none()),
        "{:?}",
        tegola.handshakes()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_h2_over_tls_follows_alpn() -> Result<()> {
    let pki = Pki::new()?;
    let cert = pki.ca.server(&["tegola.example.org"])?;
    let h2_only = TlsUpstream::start("h2-only", &cert, &["h2"], None).await?;
    let prefers_h2 = TlsUpstream::start("prefers-h2", &cert, &["h2", "http/1.1"], None).await?;
    let h1_only = TlsUpstream::start("h1-only", &cert, &["http/1.1"], None).await?;
    let ca = pki.path("ca.pem");
    let tls = format!("tls: {{ ca: {ca:?}, sni: tegola.example.org }}");
    let both = format!("tls: {{ ca: {ca:?}, sni: tegola.example.org, alpn: [h2, http/1.1] }}");
    let proxy = Proxy::start(by_host(&[
        (
            "http2",
            format!(
                "protocol: http2, endpoints: [\"{}\"], {tls}",
                h2_only.addr()
            ),
        ),
        (
            "pickh2",
            format!("endpoints: [\"{}\"], {both}", prefers_h2.addr()),
        ),
        (
            "pickh1",
            format!("endpoints: [\"{}\"], {both}", h1_only.addr()),
        ),
        (
            "noh2",
            format!(
                "protocol: http2, endpoints: [\"{}\"], {tls}",
                h1_only.addr()
            ),
        ),
    ]))?;

    // `protocol: http2` offers h2, the upstream agrees: HTTP/2 over TLS.
    let reply = get_host(&proxy, "http2").await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.echo()?.version, "HTTP/2.0");
    assert_eq!(h2_only.handshakes()[0].alpn.as_deref(), Some("h2"));

    // Offering both, the server's pick is used.
    let reply = get_host(&proxy, "pickh2").await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(prefers_h2.handshakes()[0].alpn.as_deref(), Some("h2"));
    assert_eq!(reply.echo()?.version, "HTTP/2.0");

    // Both requests on one client connection, so one worker (pools are per worker) serves
    // them. Offering h2 does not make the cluster assume HTTP/2 for the second: the pooled
    // HTTP/1.1 connection serves it.
    let mut front = client::Http1::connect(proxy.addr("front")).await?;
    for _ in 0..2 {
        let reply = front.get("pickh1.test", "/").await?;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.echo()?.version, "HTTP/1.1");
    }
    assert_eq!(h1_only.handshakes()[0].alpn.as_deref(), Some("http/1.1"));
    assert_eq!(
        h1_only.handshakes().len(),
        1,
        "the connection was not reused"
    );

    // `protocol: http2` offers only h2; an upstream without it has no common protocol.
    let reply = get_host(&proxy, "noh2").await?;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert_eq!(reply.legate_error(), Some("upstream-tls"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_mtls_presents_the_client_certificate() -> Result<()> {
    let pki = Pki::new()?;
    let cert = pki.ca.server(&["tegola.example.org"])?;
    let tegola = TlsUpstream::start("tegola", &cert, &["http/1.1"], Some(&pki.ca)).await?;
    let legate_cert = pki
        .ca
        .client("legate", &["spiffe://cluster.local/ns/maps/sa/legate"])?;
    let (client_crt, client_key) = legate_cert.write(pki.dir.path(), "legate-client")?;
    let ca = pki.path("ca.pem");
    let ep = tegola.addr();
    let proxy = Proxy::start(by_host(&[
        (
            "mtls",
            format!(
                "endpoints: [\"{ep}\"], tls: {{ ca: {ca:?}, sni: tegola.example.org, client_cert: {:?}, client_key: {:?} }}",
                client_crt.display().to_string(),
                client_key.display().to_string()
            ),
        ),
        (
            "anonymous",
            format!("endpoints: [\"{ep}\"], tls: {{ ca: {ca:?}, sni: tegola.example.org }}"),
        ),
    ]))?;

    let reply = get_host(&proxy, "mtls").await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.upstream(), Some("tegola"));
    let seen = tegola.handshakes();
    assert!(
        seen.iter()
            .any(|h| h.client_cert.as_ref() == Some(legate_cert.der())),
        "the upstream never saw Legate's client certificate"
    );

    // Without a client certificate the upstream refuses. Under TLS 1.3 the client's side of
    // the handshake is over before the server checks the certificate, so Legate learns of
    // the refusal on its first read (it answers `upstream-reset`, not `upstream-tls`).
    let reply = get_host(&proxy, "anonymous").await?;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert_eq!(tegola.seen().len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_sends_and_verifies_the_endpoint_dns_name() -> Result<()> {
    let pki = Pki::new()?;
    let cert = pki.ca.server(&["localhost"])?;
    let upstream = TlsUpstream::start("local", &cert, &["http/1.1"], None).await?;
    let endpoint = format!("localhost:{}", upstream.addr().port());
    let proxy = Proxy::start(by_host(&[(
        "dns",
        format!(
            "endpoints: [{endpoint:?}], tls: {{ ca: {:?} }}",
            pki.path("ca.pem")
        ),
    )]))?;
    // `/ready` answers 200 once the cluster's DNS name has resolved.
    let admin = proxy.admin();
    eventually(Duration::from_secs(10), || async {
        let ready = client::get(admin, "admin", "/ready").await?;
        ensure!(ready.status == StatusCode::OK, "/ready: {}", ready.status);
        Ok(())
    })
    .await?;

    let reply = get_host(&proxy, "dns").await?;

    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(upstream.handshakes()[0].sni.as_deref(), Some("localhost"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_ca_file_rotation_applies_to_new_connections() -> Result<()> {
    let pki = Pki::new()?;
    let cert = pki.ca.server(&["tegola.example.org"])?;
    let tegola = TlsUpstream::start("tegola", &cert, &["http/1.1"], None).await?;
    // The cluster starts out trusting another CA than the one that signed tegola.
    let trusted = Ca::new("Old mesh CA")?.write(pki.dir.path(), "upstream-ca.pem")?;
    let proxy = Proxy::start(by_host(&[(
        "tegola",
        format!(
            "endpoints: [\"{}\"], tls: {{ ca: {:?}, sni: tegola.example.org }}",
            tegola.addr(),
            trusted.display().to_string()
        ),
    )]))?;
    certs::wait_watched(pki.dir.path()).await?;
    let refused = get_host(&proxy, "tegola").await?;
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY);
    assert_eq!(refused.legate_error(), Some("upstream-tls"));

    certs::replace_file(&trusted, pki.ca.pem().as_bytes())?;

    eventually(ROTATION_LIMIT, || async {
        let reply = get_host(&proxy, "tegola").await?;
        ensure!(reply.status == StatusCode::OK, "{}", reply.status);
        Ok(())
    })
    .await?;
    Ok(())
}

/// The `legate` binary with one TLS listener answering `ok` itself.
const BINARY_TLS: &str = r#"
admin: { listen: "${ADMIN}" }
runtime: { workers: 1 }
access_log: { enabled: false }
listeners:
  - name: tls
    listen: 127.0.0.1:0
    http: { route_table: maps }
    tls:
      certificates: [{ cert: "${CRT}", key: "${KEY}" }]
route_tables:
  maps:
    virtual_hosts:
      - hosts: ["*"]
        routes: [{ match: { prefix: / }, respond: { status: 200, body: "ok\n" } }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_logs_each_rotation_and_each_rejected_certificate() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = Ca::new("Binary CA")?;
    let v1 = ca.server(&["maps.example.org"])?;
    let (crt, key) = v1.write(dir.path(), "tls")?;
    let legate = process::Legate::start(
        yaml(BINARY_TLS)
            .set("CRT", crt.display())
            .set("KEY", key.display()),
    )
    .await?;
    let addr = legate.addr("tls");
    certs::wait_watched_by(legate.pid(), dir.path()).await?;
    let mut old = TlsClient::trusting(&ca)
        .http1(addr, "maps.example.org")
        .await?;
    assert!(old.negotiated.peer_cert.as_ref() == Some(v1.der()));
    assert_eq!(old.get("maps.example.org", "/").await?.text(), "ok\n");

    let v2 = ca.server(&["maps.example.org"])?;
    v2.replace(&crt, &key)?;
    legate.wait_stderr("TLS certificates reloaded").await?;
    // The log line comes after the swap: the next handshake gets v2.
    assert!(presented(addr, &ca).await? == *v2.der());

    std::fs::write(&key, "not a key\n")?;
    let line = legate.wait_stderr("new TLS certificate rejected").await?;
    assert!(
        line.contains("tls.key"),
        "the log does not name the key file: {line}"
    );
    assert!(presented(addr, &ca).await? == *v2.der());
    assert_eq!(
        old.get("maps.example.org", "/").await?.status,
        StatusCode::OK
    );
    Ok(())
}

// ---- real peers: curl and openssl ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_the_tls_listener_over_http1_and_http2() -> Result<()> {
    let pki = Pki::new()?;
    let app = Upstream::echo("app").await?;
    let proxy = start(&pki, "", &app)?;
    let port = proxy.addr("tls").port();
    let resolve = format!("maps.example.org:{port}:127.0.0.1");
    let ca = pki.path("ca.pem");
    let url = format!("https://maps.example.org:{port}/tiles/4/5/6.png");

    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out = curl(&["--resolve", &resolve, "--cacert", &ca, flag], &url).await?;
        assert_eq!(out.status, 200, "{flag}: {}", out.stderr);
        assert_eq!(out.http_version, version, "{flag}");
        let echo: legate_integration::upstream::Echo = serde_json::from_str(&out.body)?;
        assert_eq!(echo.path, "/tiles/4/5/6.png");
        assert_eq!(echo.header("x-forwarded-proto"), Some("https"));
    }

    // curl verifies the name: b.example gets certificate b, which it accepts for b.example.
    let resolve_b = format!("b.example:{port}:127.0.0.1");
    let out = curl(
        &["--resolve", &resolve_b, "--cacert", &ca],
        &format!("https://b.example:{port}/healthz"),
    )
    .await?;
    assert_eq!(out.status, 200);
    assert_eq!(out.body, "ok\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_sees_the_certificate_for_its_servername() -> Result<()> {
    let pki = Pki::new()?;
    let app = Upstream::echo("app").await?;
    let proxy = start(&pki, "", &app)?;
    let target = proxy.addr("tls").to_string();
    let ca = pki.path("ca.pem");

    for (servername, subject) in [
        ("b.example", "CN = b.example"),
        ("a.example", "CN = a.example"),
    ] {
        let (code, output) = certs::openssl(&[
            "s_client",
            "-connect",
            &target,
            "-servername",
            servername,
            "-CAfile",
            &ca,
            "-verify_return_error",
            "-alpn",
            "h2",
        ])
        .await?;
        assert_eq!(code, Some(0), "{servername}:\n{output}");
        let subject_line = output
            .lines()
            .find(|l| l.starts_with("subject="))
            .with_context(|| format!("no subject line:\n{output}"))?;
        assert!(
            subject_line.contains(subject),
            "{servername}: {subject_line}"
        );
        assert!(output.contains("Verify return code: 0 (ok)"), "{output}");
        assert!(output.contains("ALPN protocol: h2"), "{output}");
        assert!(
            negotiated_ciphers(&output).iter().any(|c| c != "(NONE)"),
            "{output}"
        );
    }
    Ok(())
}

// ---- legate validate -----------------------------------------------------------------------

/// Plaintext listener 0 and TLS listener 1 for virtual host `maps.example.org`.
const VALIDATE: &str = r#"admin: { listen: 127.0.0.1:9901 }
listeners:
  - { name: plain, listen: 127.0.0.1:8080, http: { route_table: maps } }
  - name: tls
    listen: 127.0.0.1:8443
    http: { route_table: maps }
    tls:
      certificates:
        - { cert: "${CRT}", key: "${KEY}" }
route_tables:
  maps:
    virtual_hosts:
      - hosts: [maps.example.org]
        routes: [{ match: { prefix: / }, cluster: app }]
clusters:
  - { name: app, endpoints: ["10.0.0.1:80"] }
"#;

/// Runs `legate validate` on `VALIDATE` with these files; returns the exit code and
/// stdout + stderr.
async fn validate_with(dir: &Path, crt: &Path, key: &Path) -> Result<(Option<i32>, String)> {
    let text = yaml(VALIDATE)
        .set("CRT", crt.display())
        .set("KEY", key.display())
        .text()?
        .to_owned();
    let config = dir.join("legate.yaml");
    std::fs::write(&config, text)?;
    let out = process::run(&["validate", "--config", config.to_str().context("utf-8")?]).await?;
    Ok((out.status.code(), output_text(&out)))
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn validate_accepts_matching_tls_files() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = Ca::new("Validate CA")?;
    let (crt, key) = ca
        .server(&["maps.example.org"])?
        .write(dir.path(), "maps")?;

    let (code, output) = validate_with(dir.path(), &crt, &key).await?;

    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("ok (version "), "{output}");
    assert!(!output.contains("warning"), "{output}");
    Ok(())
}

#[tokio::test]
async fn validate_rejects_a_key_that_does_not_match_its_certificate() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = Ca::new("Validate CA")?;
    let (crt, _) = ca
        .server(&["maps.example.org"])?
        .write(dir.path(), "maps")?;
    let (_, other_key) = ca
        .server(&["maps.example.org"])?
        .write(dir.path(), "other")?;

    let (code, output) = validate_with(dir.path(), &crt, &other_key).await?;

    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("listeners[1].tls.certificates[0].key"),
        "the key's field path is missing:\n{output}"
    );
    assert!(output.contains("does not match"), "{output}");
    assert!(output.contains("other.key"), "{output}");
    Ok(())
}

#[tokio::test]
async fn validate_rejects_an_expired_certificate() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = Ca::new("Validate CA")?;
    let expired = ca.issue(&certs::expired(LeafSpec::server(&["maps.example.org"])))?;
    let (crt, key) = expired.write(dir.path(), "old")?;

    let (code, output) = validate_with(dir.path(), &crt, &key).await?;

    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("listeners[1].tls.certificates[0].cert"),
        "{output}"
    );
    assert!(output.contains("expired"), "{output}");
    Ok(())
}

#[tokio::test]
async fn validate_rejects_a_missing_certificate_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = Ca::new("Validate CA")?;
    let (_, key) = ca
        .server(&["maps.example.org"])?
        .write(dir.path(), "maps")?;
    let missing = dir.path().join("missing.crt");

    let (code, output) = validate_with(dir.path(), &missing, &key).await?;

    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("listeners[1].tls.certificates[0].cert"),
        "{output}"
    );
    assert!(output.contains("cannot read"), "{output}");
    assert!(output.contains("missing.crt"), "{output}");
    Ok(())
}

#[tokio::test]
async fn validate_warns_when_no_certificate_covers_the_virtual_hosts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = Ca::new("Validate CA")?;
    let (crt, key) = ca
        .server(&["other.example.org"])?
        .write(dir.path(), "other")?;

    let (code, output) = validate_with(dir.path(), &crt, &key).await?;

    assert_eq!(
        code,
        Some(0),
        "a warning does not reject the file:\n{output}"
    );
    let warning = output
        .lines()
        .find(|l| l.contains("warning:"))
        .with_context(|| format!("no `warning:` line in:\n{output}"))?;
    assert!(
        warning.contains("listeners[1].tls.certificates"),
        "{warning}"
    );
    assert!(warning.contains("maps.example.org"), "{warning}");
    Ok(())
}

/// From a clone: `legate dev-cert` writes the certificates the Kartotherian example names,
/// and the example (its addresses moved to loopback, port 0) serves TLS with them to a client
/// that trusts only the local CA. Run again, it keeps them; run elsewhere, without them, the
/// example is refused naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kartotherian_example_serves_tls_with_the_dev_cert_certificates() -> Result<()> {
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config-examples/kartotherian.yaml");
    let example_arg = example.to_str().context("utf-8 path")?;
    let work = tempfile::tempdir()?;
    let out = process::run_in(work.path(), &["dev-cert", "--config", example_arg]).await?;
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("created the local CA: certs/legate-dev-ca.pem"),
        "{text}"
    );
    assert!(text.contains("wrote certs/maps.crt and certs/maps.key for maps.wikimedia.org, *.maps.wikimedia.org, localhost"), "{text}");
    assert!(
        text.contains("clusters.tegola.tls.ca: wrote certs/mesh-ca.pem"),
        "{text}"
    );
    let first_cert = std::fs::read(work.path().join("certs/maps.crt"))?;
    let again = process::run_in(work.path(), &["dev-cert", "--config", example_arg]).await?;
    let text = output_text(&again);
    assert!(again.status.success(), "{text}");
    assert!(
        text.contains("kept certs/maps.crt and certs/maps.key (exists)"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(work.path().join("certs/maps.crt"))?,
        first_cert
    );

    let kartotherian = Upstream::echo("kartotherian").await?;
    // Tegola's three endpoints: nothing listens on them (their health checks fail).
    let tegola: Vec<String> = (0..3)
        .map(|_| legate_integration::upstream::closed_port().to_string())
        .collect();
    let mut config = std::fs::read_to_string(&example)?;
    for (from, to) in [
        ("127.0.0.1:9901", "${ADMIN}".to_owned()),
        ("0.0.0.0:6533", "127.0.0.1:0".to_owned()),
        ("0.0.0.0:6543", "127.0.0.1:0".to_owned()),
        ("127.0.0.1:6500", "127.0.0.1:0".to_owned()),
        ("127.0.0.1:6534", kartotherian.addr().to_string()),
        ("10.64.16.20:4443", tegola[0].clone()),
        ("10.64.48.21:4443", tegola[1].clone()),
        ("10.192.0.30:4443", tegola[2].clone()),
    ] {
        assert!(config.contains(from), "the example no longer has {from}");
        config = config.replace(from, &to);
    }
    let cwd = work.path().to_path_buf();
    let legate = Legate::start_by(yaml(&config), |config_path| {
        let mut cmd = process::command();
        cmd.current_dir(&cwd)
            .arg("run")
            .arg("--config")
            .arg(config_path);
        cmd
    })
    .await?;
    let client = TlsClient::trusting_file(&work.path().join("certs/legate-dev-ca.pem"))?;
    let mut conn = client
        .http1(legate.addr("maps-tls"), "maps.wikimedia.org")
        .await?;
    let health = conn.get("maps.wikimedia.org", "/healthz").await?;
    assert_eq!(health.status, StatusCode::OK, "{}", health.text());
    assert_eq!(health.text(), "ok\n");
    let tile = conn.get("maps.wikimedia.org", "/osm/0/0/0.png").await?;
    assert_eq!(tile.status, StatusCode::OK, "{}", tile.text());
    assert_eq!(tile.echo()?.upstream, "kartotherian");
    let mut local = client.http1(legate.addr("maps-tls"), "localhost").await?;
    let health = local.get("maps.wikimedia.org", "/healthz").await?;
    assert_eq!(
        health.status,
        StatusCode::OK,
        "the certificate names localhost too"
    );

    // Run from a directory without them, the same file is rejected, naming the file.
    let elsewhere = tempfile::tempdir()?;
    let out = process::run_in(elsewhere.path(), &["validate", "--config", example_arg]).await?;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("certs/maps.crt"), "{text}");
    Ok(())
}

/// Session resumption is on: a client that comes back with the session it was given skips the
/// full handshake (TLS 1.3 tickets and TLS 1.2 session ids both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_clients_resume_their_session() -> Result<()> {
    use rustls::HandshakeKind;
    use tokio::io::AsyncWriteExt;

    let pki = Pki::new()?;
    let app = Upstream::echo("app").await?;
    let proxy = start(&pki, "", &app)?;
    let addr = proxy.addr("tls");
    for versions in [Versions::Tls13Only, Versions::Tls12Only] {
        // One config, so one client session cache across both connections.
        let config = pki
            .client()
            .versions(versions)
            .alpn(&["http/1.1"])
            .config()?;
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = rustls_pki_types::ServerName::try_from("maps.example.org")?;
            let mut tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await?;
            kinds.push(tls.get_ref().1.handshake_kind());
            // A full exchange, so TLS 1.3 tickets (sent after the handshake) are received.
            tls.write_all(
                b"GET /healthz HTTP/1.1\r\nhost: maps.example.org\r\nconnection: close\r\n\r\n",
            )
            .await?;
            let mut answer = Vec::new();
            tls.read_to_end(&mut answer).await?;
            ensure!(
                answer.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&answer)
            );
        }
        assert_eq!(
            kinds,
            [Some(HandshakeKind::Full), Some(HandshakeKind::Resumed)],
            "{versions:?}"
        );
    }
    Ok(())
}

//! The control plane over TLS and mTLS: certificates made at test time (a CA, a server
//! certificate for 127.0.0.1, client certificates), a raw HTTP/2 xDS client over TLS with ALPN
//! `h2` (R1), clients refused without a trusted certificate, and the operator CLI over https.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use legate_xds::cli::{request, request_with, CliError};
use legate_xds::protocol::{LineDecoder, Message, Node, ResourceType, CONTENT_TYPE, STREAM_PATH};
use legate_xds::server::ChannelBody;
use legate_xds::tls::{client_config, TlsError};
use legate_xds::{serve, ClientTlsFiles, ServeConfig, ServeError, ServerHandle, ServerTlsFiles};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

const GROUP: &str = r#"
listeners:
  - name: maps-plain
    listen: 127.0.0.1:0
    http: { route_table: maps }
route_tables:
  maps:
    virtual_hosts:
      - hosts: ["*"]
        routes:
          - match: { prefix: / }
            cluster: tegola
clusters:
  - name: tegola
    endpoints: ["10.0.0.1:80", "10.0.0.2:80"]
"#;

const SEC: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// Certificates

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "legate-xds tests");
    dn.push(DnType::CommonName, common_name);
    dn
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(common_name: &str) -> Ca {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate and its key, PEM: a server certificate for the IP addresses
    /// `ips`, or a client certificate named by the URIs `uris`.
    fn leaf(
        &self,
        common_name: &str,
        ips: &[IpAddr],
        uris: &[&str],
        client: bool,
    ) -> (String, String) {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name);
        params.subject_alt_names = ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into().unwrap()));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The files of one test: a CA, a server certificate for 127.0.0.1 and two client certificates
/// it signed (a proxy of group `maps` and an operator, by their SPIFFE names), and a client
/// certificate from another CA.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    operator_cert: PathBuf,
    operator_key: PathBuf,
    rogue_cert: PathBuf,
    rogue_key: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ca = Ca::new("legate-xds test CA");
        let (server_cert, server_key) = ca.leaf("legate-xds", &[[127, 0, 0, 1].into()], &[], false);
        let (client_cert, client_key) =
            ca.leaf("maps1009", &[], &["spiffe://legate.test/proxy/maps"], true);
        let (operator_cert, operator_key) =
            ca.leaf("alice", &[], &["spiffe://legate.test/operator/alice"], true);
        let rogue = Ca::new("another CA");
        let (rogue_cert, rogue_key) =
            rogue.leaf("maps1009", &[], &["spiffe://legate.test/proxy/maps"], true);
        Pki {
            ca: write("ca.pem", &ca.pem),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
            operator_cert: write("operator.pem", &operator_cert),
            operator_key: write("operator.key", &operator_key),
            rogue_cert: write("rogue.pem", &rogue_cert),
            rogue_key: write("rogue.key", &rogue_key),
        }
    }

    fn server(&self, mtls: bool) -> ServerTlsFiles {
        ServerTlsFiles {
            cert: self.server_cert.clone(),
            key: self.server_key.clone(),
            client_ca: mtls.then(|| self.ca.clone()),
        }
    }

    /// Trusting the test CA, presenting `client` (certificate, key) if any.
    fn client(&self, client: Option<(&Path, &Path)>) -> ClientTlsFiles {
        ClientTlsFiles {
            ca: Some(self.ca.clone()),
            cert: client.map(|(c, _)| c.to_path_buf()),
            key: client.map(|(_, k)| k.to_path_buf()),
        }
    }

    /// The proxy of group `maps`.
    fn good_client(&self) -> ClientTlsFiles {
        self.client(Some((&self.client_cert, &self.client_key)))
    }

    fn operator(&self) -> ClientTlsFiles {
        self.client(Some((&self.operator_cert, &self.operator_key)))
    }
}

// ---------------------------------------------------------------------------------------------
// A proxy's end of the stream, over TLS

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    TlsConnector::from(config).connect(name, tcp).await
}

struct Proxy {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    body: Incoming,
    decoder: LineDecoder,
}

impl Proxy {
    /// Connects over TLS with ALPN `h2` and opens the stream with its hello, as node
    /// `maps1009` of group `maps` (R1, R2, R7).
    async fn connect(addr: SocketAddr, files: &ClientTlsFiles) -> Proxy {
        let config = client_config(files, &[b"h2"]).unwrap();
        let stream = tls_connect(addr, config).await.unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "R1");
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let (tx, body) = ChannelBody::channel(16);
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("https://{addr}{STREAM_PATH}"))
            .header("content-type", CONTENT_TYPE)
            .body(body)
            .unwrap();
        // With client certificates the server answers once it has read the hello.
        tx.send(Bytes::from(
            Message::Hello {
                node: Node {
                    id: "maps1009".into(),
                    cluster: "maps".into(),
                    zone: None,
                },
                versions: BTreeMap::new(),
                endpoint_versions: BTreeMap::new(),
            }
            .encode(),
        ))
        .await
        .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "R2");
        Proxy {
            tx,
            body: resp.into_body(),
            decoder: LineDecoder::default(),
        }
    }

    async fn send(&self, m: &Message) {
        self.tx.send(Bytes::from(m.encode())).await.unwrap();
    }

    async fn recv(&mut self, wait: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(m) = self.decoder.next_message() {
                match m.unwrap() {
                    Message::Ping => self.send(&Message::Pong).await,
                    m => return Some(m),
                }
                continue;
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => panic!("stream ended"),
                Ok(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        self.decoder.push(&d);
                    }
                }
            }
        }
    }

    /// The four updates (ACKed) that follow the hello; the types received.
    async fn sync(&mut self) -> Vec<ResourceType> {
        let mut types = Vec::new();
        for _ in 0..4 {
            let m = self.recv(5 * SEC).await.expect("an update");
            let (resource_type, version_info, nonce) = match &m {
                Message::Response {
                    resource_type,
                    version_info,
                    nonce,
                    ..
                } => (*resource_type, version_info.clone(), nonce.clone()),
                Message::Delta {
                    system_version_info,
                    nonce,
                    resources,
                    ..
                } => {
                    assert_eq!(resources.len(), 1);
                    (
                        ResourceType::Endpoints,
                        system_version_info.clone(),
                        nonce.clone(),
                    )
                }
                other => panic!("{other:?}"),
            };
            types.push(resource_type);
            self.send(&Message::Ack {
                resource_type,
                version_info,
                nonce,
            })
            .await;
        }
        types.sort();
        types
    }
}

/// Whether a TLS client presenting `files` is refused: the handshake fails, or (TLS 1.3,
/// where the server checks the client's certificate after the client has finished) the first
/// read does.
async fn refused(addr: SocketAddr, files: &ClientTlsFiles) -> bool {
    let config = client_config(files, &[b"h2"]).unwrap();
    let Ok(mut stream) = tls_connect(addr, config).await else {
        return true;
    };
    let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut buf = [0u8; 64];
    !matches!(
        tokio::time::timeout(5 * SEC, stream.read(&mut buf)).await,
        Ok(Ok(n)) if n > 0
    )
}

async fn start(tmp: &Path, tls: ServerTlsFiles) -> ServerHandle {
    let dir = tmp.join("groups");
    std::fs::create_dir_all(dir.join("maps")).unwrap();
    std::fs::write(dir.join("maps/maps.yaml"), GROUP).unwrap();
    serve(ServeConfig {
        dir,
        listen: "127.0.0.1:0".parse().unwrap(),
        store: legate_xds::StateStore::File(tmp.join("state.json")),
        tls: Some(tls),
        roles: None,
        audit: None,
        limits: legate_xds::server::Limits::default(),
    })
    .await
    .unwrap()
}

fn sorted_types() -> Vec<ResourceType> {
    let mut t = ResourceType::ALL.to_vec();
    t.sort();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_stream_refusals_and_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let handle = start(tmp.path(), pki.server(true)).await;
    let addr = handle.local_addr();
    let https = format!("https://{addr}");

    // Refused: no client certificate, one from another CA, plaintext h2c. None of these
    // stops the server.
    assert!(
        refused(addr, &pki.client(None)).await,
        "no client certificate"
    );
    assert!(
        refused(addr, &pki.client(Some((&pki.rogue_cert, &pki.rogue_key)))).await,
        "a client certificate from another CA"
    );
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(5 * SEC, plain.read(&mut buf)).await;
    assert!(
        !matches!(read, Ok(Ok(n)) if n > 0 && buf.starts_with(&[0, 0])),
        "no HTTP/2 over plaintext: {read:?}"
    );
    drop(plain);

    // A proxy with a certificate from the CA syncs over h2 (R1).
    let mut proxy = Proxy::connect(addr, &pki.good_client()).await;
    assert_eq!(proxy.sync().await, sorted_types());
    assert!(proxy.recv(SEC / 2).await.is_none(), "nothing more to send");

    // The operator API over https (HTTP/1.1 via ALPN), with the CLI's function.
    // Asked again until the server has recorded the proxy's stream.
    let mut status = serde_json::Value::Null;
    for _ in 0..500 {
        status = request_with(&https, &pki.operator(), Method::GET, "/v1/status", None)
            .await
            .unwrap();
        if status["proxies"][0]["node"]["id"] == "maps1009" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status["proxies"][0]["node"]["id"], "maps1009");
    assert_eq!(status["proxies"].as_array().unwrap().len(), 1);
    // The proxy's own certificate may not change anything.
    let body = serde_json::json!({"cluster": "tegola", "address": "10.0.0.1:80", "weight": 5});
    match request_with(
        &https,
        &pki.good_client(),
        Method::POST,
        "/v1/endpoints/set-weight",
        Some(body.clone()),
    )
    .await
    {
        Err(CliError::Server { status, message }) => {
            assert_eq!(status, StatusCode::FORBIDDEN);
            assert!(
                message.contains("spiffe://legate.test/proxy/maps is a proxy of group maps"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    let answer = request_with(
        &https,
        &pki.operator(),
        Method::POST,
        "/v1/endpoints/set-weight",
        Some(serde_json::json!({"cluster": "tegola", "address": "10.0.0.1:80", "weight": 5})),
    )
    .await
    .unwrap();
    assert_eq!(answer["result"], "ok");
    match proxy.recv(2 * SEC).await {
        Some(Message::Delta { resources, .. }) => assert_eq!(resources[0].name, "tegola"),
        other => panic!("{other:?}"),
    }

    // The CLI without a client certificate is refused, and says so.
    match request_with(&https, &pki.client(None), Method::GET, "/v1/status", None).await {
        Err(e @ (CliError::Http { .. } | CliError::Handshake { .. })) => {
            let text = e.to_string();
            assert!(text.contains(&addr.to_string()), "{text}");
        }
        other => panic!("{other:?}"),
    }
    // Plain http to a TLS server, and TLS files with http://, fail.
    assert!(
        request(&format!("http://{addr}"), Method::GET, "/v1/status", None)
            .await
            .is_err()
    );
    assert!(matches!(
        request_with(
            &format!("http://{addr}"),
            &pki.good_client(),
            Method::GET,
            "/v1/status",
            None
        )
        .await,
        Err(CliError::TlsWithoutHttps(_))
    ));

    // The built binary: `status` with --ca/--cert/--key.
    let pki_args = [
        "--ca".to_string(),
        pki.ca.display().to_string(),
        "--cert".to_string(),
        pki.operator_cert.display().to_string(),
        "--key".to_string(),
        pki.operator_key.display().to_string(),
    ];
    let args: Vec<String> = ["status", "--json", "--server", &https]
        .iter()
        .map(|s| s.to_string())
        .chain(pki_args.iter().cloned())
        .collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_legate-xds"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["proxies"][0]["node"]["id"], "maps1009");
    assert_eq!(status["overrides"]["tegola"]["10.0.0.1:80"]["weight"], 5);

    // And `endpoint depool` without --key is refused by clap.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_legate-xds"))
            .args(["endpoint", "depool", "tegola", "10.0.0.1:80", "--server"])
            .arg(&https)
            .args(&pki_args[..4])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The stream survived all of that.
    assert!(proxy.recv(SEC / 2).await.is_none());
    drop(proxy);
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_client_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let handle = start(tmp.path(), pki.server(false)).await;
    let addr = handle.local_addr();
    let https = format!("https://{addr}");

    // No client certificate needed; one presented is fine too.
    let mut proxy = Proxy::connect(addr, &pki.client(None)).await;
    assert_eq!(proxy.sync().await, sorted_types());
    let mut second = Proxy::connect(addr, &pki.good_client()).await;
    assert_eq!(second.sync().await, sorted_types());
    let status = request_with(&https, &pki.client(None), Method::GET, "/v1/status", None)
        .await
        .unwrap();
    assert_eq!(status["proxies"].as_array().unwrap().len(), 2);

    // The server's certificate is checked: not trusted without the CA.
    let untrusted = request_with(
        &https,
        &ClientTlsFiles::default(),
        Method::GET,
        "/v1/status",
        None,
    )
    .await;
    assert!(
        matches!(
            untrusted,
            Err(CliError::Handshake { .. }) | Err(CliError::Tls(TlsError::NoSystemRoots))
        ),
        "{untrusted:?}"
    );

    // A client that never finishes its handshake holds up no one.
    let _silent = TcpStream::connect(addr).await.unwrap();
    let status = request_with(&https, &pki.client(None), Method::GET, "/v1/status", None)
        .await
        .unwrap();
    assert_eq!(status["proxies"].as_array().unwrap().len(), 2);

    // Shutdown does not wait for the handshake that never comes.
    drop((proxy, second));
    let started = std::time::Instant::now();
    handle.shutdown().await;
    assert!(started.elapsed() < 3 * SEC, "{:?}", started.elapsed());
}

#[tokio::test]
async fn bad_tls_files_stop_the_start_and_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let missing = tmp.path().join("nope.key");
    let mut files = pki.server(true);
    files.key = missing;
    let Err(e) = serve(ServeConfig {
        dir: tmp.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        store: legate_xds::StateStore::File(tmp.path().join("state.json")),
        tls: Some(files),
        roles: None,
        audit: None,
        limits: legate_xds::server::Limits::default(),
    })
    .await
    else {
        panic!("started without its key");
    };
    assert!(matches!(e, ServeError::Tls(_)), "{e}");
    assert!(e.to_string().contains("nope.key"), "{e}");

    // A key that is not the certificate's.
    let mut files = pki.server(false);
    files.key = pki.client_key.clone();
    let Err(e) = serve(ServeConfig {
        dir: tmp.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        store: legate_xds::StateStore::File(tmp.path().join("state.json")),
        tls: Some(files),
        roles: None,
        audit: None,
        limits: legate_xds::server::Limits::default(),
    })
    .await
    else {
        panic!("started with a key that is not the certificate's");
    };
    assert!(e.to_string().contains("client.key"), "{e}");

    // A client CA file that holds no certificate.
    let mut files = pki.server(true);
    files.client_ca = Some(pki.server_key.clone());
    let Err(e) = serve(ServeConfig {
        dir: tmp.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        store: legate_xds::StateStore::File(tmp.path().join("state.json")),
        tls: Some(files),
        roles: None,
        audit: None,
        limits: legate_xds::server::Limits::default(),
    })
    .await
    else {
        panic!("started with a CA file without certificates");
    };
    assert!(e.to_string().contains("server.key"), "{e}");
}

/// A roles file without client certificates, a bad roles file and an audit log that cannot
/// be opened stop the start, each named.
#[tokio::test]
async fn bad_roles_and_audit_files_stop_the_start_and_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let roles = tmp.path().join("roles.yaml");
    std::fs::write(
        &roles,
        "roles:\n  - { uri: 'spiffe://m/proxy/*', role: proxy }\n",
    )
    .unwrap();
    let config =
        |tls: ServerTlsFiles, roles: Option<PathBuf>, audit: Option<PathBuf>| ServeConfig {
            dir: tmp.path().to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            store: legate_xds::StateStore::File(tmp.path().join("state.json")),
            tls: Some(tls),
            roles,
            audit,
            limits: legate_xds::server::Limits::default(),
        };
    let Err(e) = serve(config(pki.server(false), Some(roles.clone()), None)).await else {
        panic!("started with roles but no client certificates");
    };
    assert!(matches!(e, ServeError::RolesWithoutClientCa), "{e}");
    let Err(e) = serve(config(pki.server(true), Some(roles.clone()), None)).await else {
        panic!("started with a bad roles file");
    };
    assert!(
        e.to_string()
            .contains("roles.yaml: roles[0].uri: a proxy rule must capture the node group"),
        "{e}"
    );
    let audit = tmp.path().join("missing-dir").join("audit.jsonl");
    let Err(e) = serve(config(pki.server(true), None, Some(audit))).await else {
        panic!("started without its audit log");
    };
    assert!(matches!(e, ServeError::Audit(_)), "{e}");
    assert!(e.to_string().contains("missing-dir/audit.jsonl"), "{e}");
}

//! TLS for the end-to-end tests: a throwaway PKI generated at test time (no keys in git),
//! rustls clients that report what the server presented, HTTP/1.1 and HTTP/2 over TLS, and a
//! TLS echo upstream.
//!
//! - [`Ca`]: a CA that issues server and client certificates ([`Leaf`]) with DNS, IP and URI
//!   SANs ([`expired`] ones too); everything can be written as PEM files into a
//!   (temporary) directory, where Legate reads them;
//! - [`TlsClient`]: a rustls client config builder (trusted roots or none, ALPN, client
//!   certificate, TLS versions, SNI on or off) whose [`TlsClient::connect`] returns the TLS
//!   stream, so a test can look at the presented certificate and the negotiated ALPN;
//! - [`Https1`], [`Https2`]: one HTTP client connection over such a stream, answering the
//!   harness's [`Reply`];
//! - [`TlsUpstream`]: an echo upstream (same JSON [`Echo`] answer, `x-upstream` header) behind
//!   TLS, with ALPN and optional client-certificate verification, recording each handshake's
//!   SNI, ALPN and client certificate.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context as _, Result};
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
pub use legate::devcert::LeafSpec;
use legate::devcert::LocalCa;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::body::{self, Body};
use crate::client::{read_reply, request, Reply, REQUEST_LIMIT};
use crate::upstream::Echo;

/// The TLS stream a [`TlsClient`] hands back.
pub type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority, alive for one test: Legate's own local CA
/// ([`legate::devcert::LocalCa`], what `legate dev-cert` issues with).
#[derive(Debug)]
pub struct Ca {
    inner: LocalCa,
}

impl Ca {
    /// A new self-signed CA named `common_name`.
    pub fn new(common_name: &str) -> Result<Ca> {
        Ok(Ca {
            inner: LocalCa::generate(common_name)?,
        })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        self.inner.cert_pem()
    }

    pub fn der(&self) -> &CertificateDer<'static> {
        self.inner.cert_der()
    }

    /// Writes the CA certificate to `dir/file`, returning the path.
    pub fn write(&self, dir: &Path, file: &str) -> Result<PathBuf> {
        let path = dir.join(file);
        std::fs::write(&path, self.pem()).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// A server certificate for `names` (DNS names or IP addresses; the first is also the
    /// common name).
    pub fn server(&self, names: &[&str]) -> Result<Leaf> {
        self.issue(&LeafSpec::server(names))
    }

    /// A client certificate named `common_name`, with URI SANs `uris` (SPIFFE IDs, say).
    pub fn client(&self, common_name: &str, uris: &[&str]) -> Result<Leaf> {
        self.issue(&LeafSpec::client(common_name, uris))
    }

    /// A certificate as `spec` says, signed by this CA.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Leaf> {
        let leaf = self.inner.issue(spec)?;
        Ok(Leaf {
            chain_pem: format!("{}{}", leaf.cert_pem, self.pem()),
            cert_pem: leaf.cert_pem,
            key_pem: leaf.key_pem,
            der: leaf.cert_der,
            key_der: leaf.key_der,
        })
    }
}

/// `spec`, valid in 2020 only: expired.
pub fn expired(spec: LeafSpec) -> LeafSpec {
    LeafSpec {
        not_before: rcgen::date_time_ymd(2020, 1, 1),
        not_after: rcgen::date_time_ymd(2021, 1, 1),
        ..spec
    }
}

/// A certificate and its private key.
#[derive(Debug, Clone)]
pub struct Leaf {
    der: CertificateDer<'static>,
    /// The certificate alone, PEM.
    pub cert_pem: String,
    /// The certificate followed by its CA's, PEM.
    pub chain_pem: String,
    /// The private key, PEM PKCS#8.
    pub key_pem: String,
    key_der: Vec<u8>,
}

impl Leaf {
    /// The certificate, DER: what a server presents (compare with a peer certificate).
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// Writes `dir/STEM.crt` (the certificate) and `dir/STEM.key`, returning their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem)
            .with_context(|| format!("writing {}", cert.display()))?;
        std::fs::write(&key, &self.key_pem)
            .with_context(|| format!("writing {}", key.display()))?;
        Ok((cert, key))
    }

    /// Replaces `cert` and `key` atomically, each by writing a temporary file beside it and
    /// renaming it over the old one (as config management tools do).
    pub fn replace(&self, cert: &Path, key: &Path) -> Result<()> {
        replace_file(cert, self.cert_pem.as_bytes())?;
        replace_file(key, self.key_pem.as_bytes())
    }
}

/// Writes `path` atomically: a temporary file beside it, renamed over it.
pub fn replace_file(path: &Path, contents: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming over {}", path.display()))
}

/// Which TLS versions a [`TlsClient`] offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// TLS 1.2 and 1.3.
    Both,
    Tls12Only,
    Tls13Only,
}

/// A rustls client setup; [`TlsClient::connect`] makes one TLS connection with it.
#[derive(Clone)]
pub struct TlsClient {
    /// `None`: accept any server certificate (to look at whatever the server presents).
    roots: Option<Vec<CertificateDer<'static>>>,
    alpn: Vec<Vec<u8>>,
    identity: Option<Leaf>,
    versions: Versions,
    sni: bool,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("verifies", &self.roots.is_some())
            .field("alpn", &self.alpn)
            .field("identity", &self.identity.is_some())
            .field("versions", &self.versions)
            .field("sni", &self.sni)
            .finish()
    }
}

impl TlsClient {
    /// Verifies the server against `ca` and the server name; offers no ALPN.
    pub fn trusting(ca: &Ca) -> TlsClient {
        TlsClient {
            roots: Some(vec![ca.der().clone()]),
            alpn: Vec::new(),
            identity: None,
            versions: Versions::Both,
            sni: true,
        }
    }

    /// Verifies the server against the CA certificates in PEM file `path`.
    pub fn trusting_file(path: &Path) -> Result<TlsClient> {
        use rustls_pki_types::pem::PemObject as _;
        let roots = CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading {}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing {}", path.display()))?;
        Ok(TlsClient {
            roots: Some(roots),
            ..TlsClient::trusting_anything()
        })
    }

    /// Accepts whatever certificate the server presents (handshake signatures still checked).
    pub fn trusting_anything() -> TlsClient {
        TlsClient {
            roots: None,
            alpn: Vec::new(),
            identity: None,
            versions: Versions::Both,
            sni: true,
        }
    }

    /// Offers these ALPN protocols (`h2`, `http/1.1`), in order.
    pub fn alpn(mut self, protocols: &[&str]) -> TlsClient {
        self.alpn = protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
        self
    }

    /// Presents this client certificate.
    pub fn identity(mut self, leaf: &Leaf) -> TlsClient {
        self.identity = Some(leaf.clone());
        self
    }

    pub fn versions(mut self, versions: Versions) -> TlsClient {
        self.versions = versions;
        self
    }

    /// Sends no SNI (the name is still used to verify the server).
    pub fn without_sni(mut self) -> TlsClient {
        self.sni = false;
        self
    }

    pub fn config(&self) -> Result<Arc<ClientConfig>> {
        let provider = provider();
        let versions: &[&rustls::SupportedProtocolVersion] = match self.versions {
            Versions::Both => &[&rustls::version::TLS13, &rustls::version::TLS12],
            Versions::Tls12Only => &[&rustls::version::TLS12],
            Versions::Tls13Only => &[&rustls::version::TLS13],
        };
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)?;
        let builder = match &self.roots {
            Some(certs) => {
                let mut roots = RootCertStore::empty();
                for cert in certs {
                    roots.add(cert.clone())?;
                }
                builder.with_root_certificates(roots)
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider))),
        };
        let mut config = match &self.identity {
            Some(leaf) => {
                builder.with_client_auth_cert(vec![leaf.der().clone()], leaf.key_der())?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn.clone();
        config.enable_sni = self.sni;
        Ok(Arc::new(config))
    }

    /// Connects to `addr` and completes a handshake for `server_name` (a DNS name or an IP;
    /// rustls sends no SNI for an IP).
    pub async fn connect(&self, addr: SocketAddr, server_name: &str) -> Result<ClientStream> {
        let config = self.config()?;
        let name = ServerName::try_from(server_name.to_owned())
            .with_context(|| format!("{server_name:?} is not a server name"))?;
        tokio::time::timeout(REQUEST_LIMIT, async {
            let tcp = TcpStream::connect(addr)
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            let _ = tcp.set_nodelay(true);
            tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .with_context(|| format!("TLS handshake with {addr} as {server_name}"))
        })
        .await
        .context("TLS handshake did not finish in time")?
    }

    /// A TLS connection, then HTTP/1.1 over it.
    pub async fn http1(&self, addr: SocketAddr, server_name: &str) -> Result<Https1> {
        Https1::over(self.connect(addr, server_name).await?).await
    }

    /// A TLS connection, then HTTP/2 over it.
    pub async fn http2(&self, addr: SocketAddr, server_name: &str) -> Result<Https2> {
        Https2::over(self.connect(addr, server_name).await?).await
    }
}

/// The certificate the server presented on `stream` (its leaf).
pub fn peer_cert(stream: &ClientStream) -> Option<CertificateDer<'static>> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
}

/// The ALPN protocol negotiated on `stream`, as text.
pub fn alpn_of(stream: &ClientStream) -> Option<String> {
    stream
        .get_ref()
        .1
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
}

/// What a TLS connection negotiated, kept by the HTTP clients over it.
#[derive(Debug, Clone)]
pub struct Negotiated {
    pub peer_cert: Option<CertificateDer<'static>>,
    pub alpn: Option<String>,
}

fn negotiated(stream: &ClientStream) -> Negotiated {
    Negotiated {
        peer_cert: peer_cert(stream),
        alpn: alpn_of(stream),
    }
}

/// One HTTP/1.1 connection over TLS; requests on it are sent one after another (keep-alive).
pub struct Https1 {
    tx: http1::SendRequest<Body>,
    pub negotiated: Negotiated,
}

impl Https1 {
    pub async fn over(stream: ClientStream) -> Result<Https1> {
        let negotiated = negotiated(&stream);
        let (tx, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Https1 { tx, negotiated })
    }

    pub async fn request(&mut self, req: Request<Body>) -> Result<Reply> {
        let resp = tokio::time::timeout(REQUEST_LIMIT, async {
            self.tx.ready().await.context("connection not usable")?;
            self.tx.send_request(req).await.context("sending request")
        })
        .await
        .context("no response in time")??;
        read_reply(resp).await
    }

    /// `GET path` with `Host: host`, read to the end.
    pub async fn get(&mut self, host: &str, path: &str) -> Result<Reply> {
        self.request(request(http::Method::GET, host, path)).await
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// One HTTP/2 connection over TLS.
pub struct Https2 {
    tx: http2::SendRequest<Body>,
    pub negotiated: Negotiated,
}

impl Https2 {
    pub async fn over(stream: ClientStream) -> Result<Https2> {
        let negotiated = negotiated(&stream);
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Https2 { tx, negotiated })
    }

    /// `GET https://authority/path`, read to the end.
    pub async fn get(&self, authority: &str, path: &str) -> Result<Reply> {
        let mut req = Request::new(body::empty());
        *req.uri_mut() = format!("https://{authority}{path}").parse()?;
        *req.version_mut() = Version::HTTP_2;
        let mut tx = self.tx.clone();
        let resp = tokio::time::timeout(REQUEST_LIMIT, async move {
            tx.ready().await.context("connection not usable")?;
            tx.send_request(req).await.context("sending request")
        })
        .await
        .context("no response in time")??;
        read_reply(resp).await
    }
}

/// Accepts any server certificate; checks handshake signatures only.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What a [`TlsUpstream`] saw of one completed handshake.
#[derive(Debug, Clone)]
pub struct HandshakeSeen {
    /// The SNI the client sent.
    pub sni: Option<String>,
    pub alpn: Option<String>,
    /// The client's certificate, if it presented one.
    pub client_cert: Option<CertificateDer<'static>>,
}

#[derive(Debug, Default)]
struct TlsState {
    handshakes: Vec<HandshakeSeen>,
    failed: Vec<String>,
    seen: Vec<Echo>,
}

/// An echo upstream behind TLS; stops when dropped.
#[derive(Debug)]
pub struct TlsUpstream {
    addr: SocketAddr,
    state: Arc<Mutex<TlsState>>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsUpstream {
    /// Serves `leaf` (its chain) on 127.0.0.1, offering `alpn`; with `client_ca`, requires a
    /// client certificate signed by it. HTTP/1.1 and HTTP/2 are both spoken (by preface).
    pub async fn start(
        name: &str,
        leaf: &Leaf,
        alpn: &[&str],
        client_ca: Option<&Ca>,
    ) -> Result<TlsUpstream> {
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add(ca.der().clone())?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(vec![leaf.der().clone()], leaf.key_der())?;
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(TlsState::default()));
        let task = tokio::spawn(accept_loop(
            listener,
            acceptor,
            name.to_owned(),
            state.clone(),
        ));
        Ok(TlsUpstream { addr, state, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn state(&self) -> std::sync::MutexGuard<'_, TlsState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every completed handshake so far.
    pub fn handshakes(&self) -> Vec<HandshakeSeen> {
        self.state().handshakes.clone()
    }

    /// Why each failed handshake failed.
    pub fn failed_handshakes(&self) -> Vec<String> {
        self.state().failed.clone()
    }

    /// Every request answered so far.
    pub fn seen(&self) -> Vec<Echo> {
        self.state().seen.clone()
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    name: String,
    state: Arc<Mutex<TlsState>>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let _ = tcp.set_nodelay(true);
                conns.spawn(serve_tls(tcp, acceptor.clone(), name.clone(), state.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_tls(
    tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    name: String,
    state: Arc<Mutex<TlsState>>,
) {
    let stream = match acceptor.accept(tcp).await {
        Ok(s) => s,
        Err(e) => {
            state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .failed
                .push(e.to_string());
            return;
        }
    };
    {
        let conn = stream.get_ref().1;
        let seen = HandshakeSeen {
            sni: conn.server_name().map(str::to_owned),
            alpn: conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            client_cert: conn.peer_certificates().and_then(|c| c.first()).cloned(),
        };
        state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .handshakes
            .push(seen);
    }
    let service = service_fn(move |req| echo(name.clone(), state.clone(), req));
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn echo(
    name: String,
    state: Arc<Mutex<TlsState>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, incoming) = req.into_parts();
    let body_len = match incoming.collect().await {
        Ok(b) => b.to_bytes().len() as u64,
        Err(_) => 0,
    };
    let echo = Echo {
        upstream: name.clone(),
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned(),
        authority: parts.uri.authority().map(|a| a.to_string()),
        version: format!("{:?}", parts.version),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body_len,
    };
    state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .seen
        .push(echo.clone());
    let mut resp = match serde_json::to_vec(&echo) {
        Ok(json) => Response::new(body::full(json)),
        Err(e) => {
            let mut r = Response::new(body::full(e.to_string()));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        }
    };
    if let Ok(v) = HeaderValue::from_str(&name) {
        resp.headers_mut().insert("x-upstream", v);
    }
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    Ok(resp)
}

/// Whether this process has an inotify watch on directory `dir` (Linux: read from
/// `/proc/self/fdinfo`). Legate watches the directories of its certificate files from a
/// task it starts after loading them; a change made before that watch exists is only seen
/// with the next change, so rotation tests wait for it ([`wait_watched`]).
pub fn is_watched(dir: &Path) -> Result<bool> {
    is_watched_by(std::process::id(), dir)
}

/// Whether process `pid` (a `legate` subprocess, say) has an inotify watch on `dir`.
pub fn is_watched_by(pid: u32, dir: &Path) -> Result<bool> {
    use std::os::unix::fs::MetadataExt as _;
    let ino = std::fs::metadata(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .ino();
    let needle = format!(" ino:{ino:x} ");
    let fdinfo = format!("/proc/{pid}/fdinfo");
    for entry in std::fs::read_dir(&fdinfo).with_context(|| format!("reading {fdinfo}"))? {
        let Ok(entry) = entry else { continue };
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if info
            .lines()
            .any(|l| l.starts_with("inotify wd:") && l.contains(&needle))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Waits until this process watches directory `dir` (see [`is_watched`]).
pub async fn wait_watched(dir: &Path) -> Result<()> {
    wait_watched_by(std::process::id(), dir).await
}

/// Waits until process `pid` watches directory `dir`.
pub async fn wait_watched_by(pid: u32, dir: &Path) -> Result<()> {
    crate::eventually(REQUEST_LIMIT, || async {
        anyhow::ensure!(
            is_watched_by(pid, dir)?,
            "{} is not watched by {pid}",
            dir.display()
        );
        Ok(())
    })
    .await
}

/// Runs `openssl ARGS…` with stdin closed; returns its exit code and stdout+stderr together.
pub async fn openssl(args: &[&str]) -> Result<(Option<i32>, String)> {
    let out = tokio::time::timeout(
        REQUEST_LIMIT,
        tokio::process::Command::new("openssl")
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow!("openssl did not finish in time"))?
    .context("running openssl (is it installed?)")?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.code(), text))
}

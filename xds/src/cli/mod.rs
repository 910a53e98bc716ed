//! The `legate-xds` command line: `serve`, and the operator commands (`endpoint`, `route`,
//! `step` in `route`, `status` in `status`, `audit` in `audit`) as HTTP/1.1 clients of a
//! running server's operator API (`http://`, or `https://` with an optional CA file and
//! client certificate).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};

mod audit;
mod route;
mod status;

use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde_json::{json, Value};
pub use status::render_status;
pub(crate) use status::table;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::server::{serve, ServeConfig};
use crate::state::StateStore;
use crate::tls::{client_config, ClientTlsFiles, ServerTlsFiles, TlsError};

/// The operator API's default address.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:18000";
/// How long a CLI request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(
    name = "legate-xds",
    version,
    about = "The Legate control plane (xDS-lite) and its operator commands"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve resources from DIR/<group>/*.yaml to proxies, and the operator API.
    Serve {
        /// Directory of node groups: DIR/<group>/*.yaml.
        #[arg(long)]
        dir: PathBuf,
        /// Address to listen on (stream and operator API).
        #[arg(long, default_value = "127.0.0.1:18000")]
        listen: SocketAddr,
        /// File holding operator overrides (JSON); created on the first change.
        #[arg(long, required_unless_present = "store", conflicts_with = "store")]
        state: Option<PathBuf>,
        /// Keep the operator overrides in etcd, shared with other replicas:
        /// etcd://host:port,host:port,… (instead of --state).
        #[arg(long, value_name = "etcd://HOST:PORT,…")]
        store: Option<String>,
        /// With --store: the etcd key prefix of the overrides (default /legate-xds/).
        #[arg(long)]
        etcd_prefix: Option<String>,
        /// Serve TLS with this certificate chain (PEM, leaf first); needs --tls-key.
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key of --tls-cert (PEM).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Require clients to present a certificate signed by a CA in this bundle (PEM): mTLS.
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        client_ca: Option<PathBuf>,
        /// Map client certificate names to roles with this file (YAML); default: the SPIFFE
        /// names spiffe://*/proxy/{group}, spiffe://*/operator/*, spiffe://*/viewer/*.
        #[arg(long, value_name = "FILE", requires = "client_ca")]
        roles: Option<PathBuf>,
        /// Append every operator change here (JSON lines); default: the state file's name
        /// with .audit.jsonl.
        #[arg(long, value_name = "FILE")]
        audit: Option<PathBuf>,
        /// The longest line a proxy may send on its stream, in bytes (at most 16 MiB).
        #[arg(long, value_name = "BYTES", default_value_t = crate::limits::DEFAULT_MAX_LINE as u64,
              value_parser = clap::value_parser!(u64).range(1024..=16 * 1024 * 1024))]
        max_line_bytes: u64,
    },
    /// Change an endpoint in every node group that has its cluster.
    Endpoint {
        #[command(subcommand)]
        action: EndpointAction,
    },
    /// Change a route's split weights in one node group.
    Route {
        #[command(subcommand)]
        action: route::RouteAction,
    },
    /// Move a route's split by some percentage points towards one target, and wait for the
    /// proxies' ACKs.
    Step(route::StepArgs),
    /// Show the latest operator changes: who, what, when, before and after.
    Audit(audit::AuditArgs),
    /// Show connected proxies, their versions, overrides and groups.
    Status {
        #[command(flatten)]
        server: ServerArgs,
        /// Print the server's JSON as is.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum EndpointAction {
    /// Set an endpoint's weight (1 to 10000).
    SetWeight {
        cluster: String,
        address: String,
        #[arg(allow_negative_numbers = true)]
        weight: i64,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Send new requests to the endpoint again.
    Pool {
        cluster: String,
        address: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Stop sending new requests to the endpoint.
    Depool {
        cluster: String,
        address: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Drop the endpoint's overrides: the files' weight and pooled apply again.
    Reset {
        cluster: String,
        address: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// Where the operator API is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ServerArgs {
    /// The control plane: http://host:port, or https://host:port for TLS.
    #[arg(long, default_value = DEFAULT_SERVER)]
    pub server: String,
    /// With https: trust the CAs in this file (PEM) instead of the system's.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// With https: present this client certificate chain (PEM), for mTLS; needs --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

impl ServerArgs {
    /// The TLS files given.
    pub fn tls(&self) -> ClientTlsFiles {
        ClientTlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

/// Why a command failed; printed as `error: ...`.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Serve(#[from] crate::server::ServeError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("--server {0:?}: expected http://host:port or https://host:port")]
    BadServer(String),
    #[error("--server {server:?}: {host:?} is not a valid TLS server name")]
    BadServerName { server: String, host: String },
    #[error("--ca, --cert and --key need an https:// server, not {0:?}")]
    TlsWithoutHttps(String),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot connect to {server}: {error}")]
    Connect {
        server: String,
        error: std::io::Error,
    },
    #[error("TLS handshake with {server} failed: {error}")]
    Handshake {
        server: String,
        error: std::io::Error,
    },
    #[error("request to {server} failed: {error}")]
    Http { server: String, error: String },
    #[error("{server} did not answer within {REQUEST_TIMEOUT:?}")]
    Timeout { server: String },
    #[error("server answered {status}: {message}")]
    Server { status: StatusCode, message: String },
    #[error("--store {0:?}: expected etcd://host:port,host:port,…")]
    BadStore(String),
    #[error("--etcd-prefix needs --store etcd://…")]
    PrefixWithoutStore,
    #[error("{0:?}: expected CLUSTER=WEIGHT")]
    BadTarget(String),
    #[error("only {acked} of {total} connected proxies of group {group} acknowledged the change within {waited:?}; see `legate-xds status`")]
    NotAcknowledged {
        group: String,
        acked: usize,
        total: usize,
        waited: Duration,
    },
}

/// The `legate-xds` program: parses the command line, logs to stderr (`RUST_LOG`, default
/// `info`) and runs the command. Both the `legate-xds` binary and `legate` started under the
/// name `legate-xds` (as in the container image) come here.
pub fn main() -> std::process::ExitCode {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;

    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve {
            dir,
            listen,
            state,
            store,
            etcd_prefix,
            tls_cert,
            tls_key,
            client_ca,
            roles,
            audit,
            max_line_bytes,
        } => {
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => Some(ServerTlsFiles {
                    cert,
                    key,
                    client_ca,
                }),
                // clap enforces both or neither.
                _ => None,
            };
            let store = match (state, store) {
                (_, Some(url)) => StateStore::Etcd {
                    members: crate::etcd::parse_url(&url).ok_or(CliError::BadStore(url))?,
                    prefix: etcd_prefix.unwrap_or_else(|| crate::state::DEFAULT_PREFIX.to_owned()),
                },
                (Some(_), None) if etcd_prefix.is_some() => {
                    return Err(CliError::PrefixWithoutStore)
                }
                (Some(path), None) => StateStore::File(path),
                // clap requires one of them.
                (None, None) => return Err(CliError::BadStore(String::new())),
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(CliError::Runtime)?;
            rt.block_on(async {
                let handle = serve(ServeConfig {
                    dir,
                    listen,
                    store,
                    tls,
                    roles,
                    audit,
                    limits: crate::server::Limits {
                        max_line: usize::try_from(max_line_bytes).unwrap_or(usize::MAX),
                        ..crate::server::Limits::default()
                    },
                })
                .await?;
                wait_for_signal().await;
                tracing::info!("shutting down");
                handle.shutdown().await;
                Ok(())
            })
        }
        Command::Endpoint { action } => {
            let (operation, cluster, address, weight, server) = match action {
                EndpointAction::SetWeight {
                    cluster,
                    address,
                    weight,
                    server,
                } => ("set-weight", cluster, address, Some(weight), server),
                EndpointAction::Pool {
                    cluster,
                    address,
                    server,
                } => ("pool", cluster, address, None, server),
                EndpointAction::Depool {
                    cluster,
                    address,
                    server,
                } => ("depool", cluster, address, None, server),
                EndpointAction::Reset {
                    cluster,
                    address,
                    server,
                } => ("reset", cluster, address, None, server),
            };
            let mut body = json!({ "cluster": cluster, "address": address });
            if let Some(w) = weight {
                body["weight"] = Value::from(w);
            }
            let answer = block_on(request_with(
                &server.server,
                &server.tls(),
                Method::POST,
                &format!("/v1/endpoints/{operation}"),
                Some(body),
            ))??;
            println!("{}", describe_change(&answer));
            Ok(())
        }
        Command::Route { action } => route::run(action),
        Command::Step(args) => route::step(args),
        Command::Audit(args) => audit::run(args),
        Command::Status { server, json } => {
            let answer = block_on(request_with(
                &server.server,
                &server.tls(),
                Method::GET,
                "/v1/status",
                None,
            ))??;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&answer).unwrap_or_default()
                );
            } else {
                print!("{}", render_status(&answer));
            }
            Ok(())
        }
    }
}

fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    Ok(rt.block_on(f))
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A parsed `--server`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// `https://`.
    pub tls: bool,
    /// `host:port`, to connect to and for the `Host` header.
    pub authority: String,
    /// The host alone (an IPv6 address without its brackets), the TLS server name.
    pub host: String,
}

/// Parses `http://host:port[/]`, `https://host:port[/]` or `host:port` (plaintext).
pub fn parse_server(server: &str) -> Result<ServerUrl, CliError> {
    let (tls, rest) = match server.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, server.strip_prefix("http://").unwrap_or(server)),
    };
    let rest = rest.trim_end_matches('/');
    let host = rest.rsplit_once(':').and_then(|(h, p)| {
        let valid = !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0);
        valid.then_some(h)
    });
    match host {
        Some(host) if !rest.contains("://") && !rest.contains('/') => {
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            Ok(ServerUrl {
                tls,
                authority: rest.to_string(),
                host: host.to_string(),
            })
        }
        _ => Err(CliError::BadServer(server.to_string())),
    }
}

/// `host:port` from `http://host:port[/]`, `https://host:port[/]` or `host:port`.
pub fn server_authority(server: &str) -> Result<String, CliError> {
    parse_server(server).map(|u| u.authority)
}

/// One request to the operator API; a non-2xx answer is an error with the server's message.
/// An `https://` server is verified against the system's CAs; see [`request_with`] for a CA
/// file or a client certificate.
pub async fn request(
    server: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, CliError> {
    request_with(server, &ClientTlsFiles::default(), method, path, body).await
}

/// [`request`], with TLS files for an `https://` server: a CA to trust instead of the
/// system's, a client certificate for mTLS. Files with an `http://` server are an error.
pub async fn request_with(
    server: &str,
    tls: &ClientTlsFiles,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, CliError> {
    let url = parse_server(server)?;
    if !url.tls && !tls.is_empty() {
        return Err(CliError::TlsWithoutHttps(server.to_string()));
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange(&url, tls, method, path, body)).await {
        Ok(r) => r,
        Err(_) => Err(CliError::Timeout {
            server: server.to_string(),
        }),
    }
}

/// An error and its sources, so a TLS alert behind an HTTP error is shown.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

async fn exchange(
    url: &ServerUrl,
    tls: &ClientTlsFiles,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, CliError> {
    let authority = url.authority.as_str();
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|error| CliError::Connect {
            server: authority.to_string(),
            error,
        })?;
    if !url.tls {
        return send(stream, authority, method, path, body).await;
    }
    let config = client_config(tls, &[b"http/1.1"])?;
    let name = ServerName::try_from(url.host.clone()).map_err(|_| CliError::BadServerName {
        server: authority.to_string(),
        host: url.host.clone(),
    })?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|error| CliError::Handshake {
            server: authority.to_string(),
            error,
        })?;
    send(stream, authority, method, path, body).await
}

/// The HTTP/1.1 exchange on a connected transport.
async fn send<I>(
    io: I,
    authority: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, CliError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http_err = |e: &dyn std::error::Error| CliError::Http {
        server: authority.to_string(),
        error: with_sources(e),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| http_err(&e))?;
    tokio::spawn(conn);
    let bytes = body
        .map(|b| Bytes::from(serde_json::to_vec(&b).unwrap_or_default()))
        .unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, authority)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes))
        .map_err(|e| http_err(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| http_err(&e))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| http_err(&e))?
        .to_bytes();
    let value: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| json!({ "error": String::from_utf8_lossy(&body).trim().to_string() }));
    if status.is_success() {
        Ok(value)
    } else {
        let message = value
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        Err(CliError::Server { status, message })
    }
}

/// One line about an applied change.
pub fn describe_change(answer: &Value) -> String {
    let s = |k: &str| answer.get(k).and_then(Value::as_str).unwrap_or("?");
    let state = match answer.get("override") {
        Some(Value::Object(o)) if !o.is_empty() => o
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
        _ => "no override (the files' values apply)".to_string(),
    };
    let groups = answer
        .get("groups")
        .and_then(Value::as_array)
        .map(|g| {
            g.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    format!(
        "ok: {} {} {}: {} (node groups: {})",
        s("operation"),
        s("cluster"),
        s("address"),
        state,
        if groups.is_empty() { "none" } else { &groups }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_server_address() {
        assert_eq!(
            server_authority("http://127.0.0.1:18000").unwrap(),
            "127.0.0.1:18000"
        );
        assert_eq!(server_authority("xds.local:80/").unwrap(), "xds.local:80");
        assert!(server_authority("http://x").is_err());
        assert!(server_authority("http://x:1/path").is_err());
        assert!(server_authority("ftp://x:1").is_err());
        assert!(server_authority("https://").is_err());
        assert!(!parse_server("http://x:1").unwrap().tls);
        assert_eq!(
            parse_server("https://xds.example.org:443/").unwrap(),
            ServerUrl {
                tls: true,
                authority: "xds.example.org:443".into(),
                host: "xds.example.org".into()
            }
        );
        let v6 = parse_server("https://[::1]:18000").unwrap();
        assert_eq!(v6.authority, "[::1]:18000");
        assert_eq!(v6.host, "::1");
    }

    #[tokio::test]
    async fn tls_files_need_https() {
        let tls = ClientTlsFiles {
            ca: Some("ca.pem".into()),
            ..ClientTlsFiles::default()
        };
        let e = request_with("http://127.0.0.1:1", &tls, Method::GET, "/v1/status", None)
            .await
            .unwrap_err();
        assert!(matches!(e, CliError::TlsWithoutHttps(_)), "{e}");
    }

    #[test]
    fn parses_the_tls_flags() {
        let cli = Cli::try_parse_from([
            "legate-xds",
            "serve",
            "--dir",
            "d",
            "--state",
            "s",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--client-ca",
            "ca.pem",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Serve {
                tls_cert: Some(_),
                tls_key: Some(_),
                client_ca: Some(_),
                ..
            }
        ));
        for partial in [
            &["--tls-cert", "c.pem"][..],
            &["--tls-key", "k.pem"],
            &["--client-ca", "ca.pem"],
        ] {
            let mut args = vec!["legate-xds", "serve", "--dir", "d", "--state", "s"];
            args.extend_from_slice(partial);
            assert!(Cli::try_parse_from(&args).is_err(), "{partial:?}");
        }

        let cli = Cli::try_parse_from([
            "legate-xds",
            "status",
            "--server",
            "https://127.0.0.1:18000",
            "--ca",
            "ca.pem",
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
        ])
        .unwrap();
        let Command::Status { server, .. } = cli.command else {
            panic!("not status");
        };
        assert_eq!(
            server.tls(),
            ClientTlsFiles {
                ca: Some("ca.pem".into()),
                cert: Some("c.pem".into()),
                key: Some("k.pem".into()),
            }
        );
        assert!(Cli::try_parse_from(["legate-xds", "status", "--cert", "c.pem"]).is_err());
        let cli = Cli::try_parse_from([
            "legate-xds",
            "endpoint",
            "depool",
            "tegola",
            "10.0.0.1:80",
            "--server",
            "https://h:1",
            "--ca",
            "ca.pem",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Endpoint { action: EndpointAction::Depool { server, .. } }
                if server.ca.is_some() && server.server == "https://h:1"
        ));
    }

    #[test]
    fn parses_the_commands() {
        let cli = Cli::try_parse_from([
            "legate-xds",
            "endpoint",
            "set-weight",
            "tegola",
            "10.0.0.1:80",
            "5",
            "--server",
            "http://h:1",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Endpoint {
                action: EndpointAction::SetWeight { weight: 5, .. }
            }
        ));
        let cli = Cli::try_parse_from(["legate-xds", "status"]).unwrap();
        assert!(
            matches!(cli.command, Command::Status { server, json: false } if server.server == DEFAULT_SERVER)
        );
        assert!(Cli::try_parse_from(["legate-xds", "serve", "--dir", "d"]).is_err());
        // The overrides in a file, or in etcd; not both.
        let serve = |extra: &[&str]| {
            let mut args = vec!["legate-xds", "serve", "--dir", "d"];
            args.extend_from_slice(extra);
            Cli::try_parse_from(args)
        };
        assert!(serve(&["--state", "s.json"]).is_ok());
        let cli = serve(&[
            "--store",
            "etcd://127.0.0.1:2379,127.0.0.1:22379",
            "--audit",
            "a",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Serve {
                store: Some(_),
                state: None,
                etcd_prefix: None,
                ..
            }
        ));
        assert!(serve(&["--state", "s.json", "--store", "etcd://h:1"]).is_err());
        assert!(matches!(
            run(serve(&["--state", "s.json", "--etcd-prefix", "/x/"]).unwrap()),
            Err(CliError::PrefixWithoutStore)
        ));
        assert!(matches!(
            run(serve(&["--store", "http://h:1", "--audit", "a"]).unwrap()),
            Err(CliError::BadStore(_))
        ));
    }

    #[test]
    fn renders_status_tables() {
        let status = json!({
            "proxies": [{
                "node": {"id": "maps1009", "cluster": "maps", "zone": "eqiad"},
                "group": "known",
                "peer": "127.0.0.1:5000",
                "connected_since": "2025-01-01T00:00:00Z",
                "versions": {
                    "listeners": {"sent": "aaaaaaaaaaaa", "acked": "aaaaaaaaaaaa"},
                    "route_tables": {"sent": "bbbbbbbbbbbb", "acked": null},
                    "clusters": {"sent": "cccccccc", "acked": "cccccccc"},
                    "endpoints": {"sent": "dddddddd", "acked": "dddddddd"}
                },
                "last_nack": {"type": "route_tables", "version": "bbbbbbbb", "held": "", "nonce": "n",
                    "error_detail": [{"name": "maps", "error": "route_tables.maps: bad"}]}
            }],
            "overrides": {"tegola": {"10.0.0.1:80": {"weight": 5}}},
            "splits": {"maps": {"t": {"kartotherian": [{"cluster": "metal", "weight": 80}, {"cluster": "k8s", "weight": 20}]}}},
            "groups": {"maps": {"versions": {"listeners": "aaaaaaaa", "route_tables": "bbbbbbbb", "clusters": "cccccccc", "endpoints": "dddddddd"}, "errors": []}}
        });
        let text = render_status(&status);
        assert!(text.contains("maps1009  maps   eqiad"), "{text}");
        assert!(text.contains("->bbbbbbbb"), "{text}");
        assert!(text.contains("route_tables.maps: bad"), "{text}");
        assert!(text.contains("tegola   10.0.0.1:80  5       -"), "{text}");
        assert!(
            text.contains("maps   t            kartotherian  metal=80 k8s=20"),
            "{text}"
        );
        assert!(text.contains("maps   aaaaaaaa"), "{text}");
    }
}

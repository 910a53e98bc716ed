//! The xDS-lite client (xds/PROTOCOL.md): one long-lived stream to the control plane. It
//! carries messages only: [`resources`] turns what it receives into config model (refusing
//! local files the bootstrap does not allow, [`files`]), the applier checks and applies it,
//! and [`ack`] answers each update with an ACK or a NACK.

pub mod ack;
pub mod files;
pub mod resources;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::channel::Channel;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use legate_xds::protocol::{self, LineDecoder, Message, Node};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::apply::{Applier, ApplyError, Update};
use crate::config::merge::Resources;
use crate::config::model;
use crate::state::{State, XdsState};
use resources::Held;

/// Where the client hands sets of resources: the applier, or a test's stand-in.
pub trait Apply: Send + Sync {
    /// Checks and applies a complete set.
    fn apply(&self, resources: Resources, version: String) -> Result<(), ApplyError>;

    /// Checks what can be checked of an incomplete set (that it can be added to the
    /// bootstrap at all).
    fn precheck(&self, _resources: &Resources) -> Result<(), ApplyError> {
        Ok(())
    }
}

impl Apply for Applier {
    fn apply(&self, resources: Resources, version: String) -> Result<(), ApplyError> {
        Applier::apply(self, Update::Xds(resources), version).map(|_| ())
    }

    fn precheck(&self, resources: &Resources) -> Result<(), ApplyError> {
        Applier::precheck(self, resources)
    }
}

/// Runs the client until the task is aborted: connects, follows updates, reconnects with
/// jittered exponential back-off (R13). With several servers (replicas), a session that fails
/// or ends moves to the next at once; the back-off applies once every one has been tried.
/// What is held stays held across servers, and the hello names it (R7), so a replica serving
/// the same versions sends nothing again.
pub async fn run(xds: model::Xds, node: model::Node, apply: Arc<dyn Apply>, state: Arc<State>) {
    let mut held = Held::default();
    let mut backoff = Duration::from_millis(100);
    let node = Node {
        id: node.id.unwrap_or_default(),
        cluster: node.cluster.unwrap_or_default(),
        zone: node.zone,
    };
    let status = &state.xds;
    let servers = xds.server.list();
    let many = servers.len() > 1;
    let mut at = 0;
    // Servers tried since the last session that lasted; the back-off waits after a round.
    let mut tried = 0;
    loop {
        let server = servers.get(at).map_or("", String::as_str);
        status.update(|s| s.server = server.to_owned());
        let started = tokio::time::Instant::now();
        let result = session(&xds, server, &node, &mut held, &*apply, status).await;
        status.update(|s| {
            s.connected = false;
            if let Err(e) = &result {
                s.last_error = Some(if many {
                    format!("{server}: {e}")
                } else {
                    e.clone()
                });
            }
        });
        if let Err(e) = result {
            warn!(%server, error = %e, "control plane session ended; keeping the last good config");
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(100);
            tried = 0;
        }
        tried += 1;
        at = (at + 1) % servers.len().max(1);
        if tried < servers.len() {
            continue;
        }
        tried = 0;
        let jitter = 0.5 + fastrand::f64();
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn session(
    xds: &model::Xds,
    server: &str,
    node: &Node,
    held: &mut Held,
    apply: &dyn Apply,
    status: &XdsState,
) -> Result<(), String> {
    let io = tokio::time::timeout(xds.connect_timeout.get(), connect(xds, server))
        .await
        .map_err(|_| format!("connect to {server} timed out"))??;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let _abort = AbortOnDrop(driver.abort_handle());

    let (tx, rx) = mpsc::channel::<Bytes>(32);
    let (mut body_tx, body) = Channel::<Bytes>::new(32);
    // Lines queued by this task go out as HTTP/2 data frames.
    let _pump = AbortOnDrop(
        tokio::spawn(async move {
            let mut rx = rx;
            while let Some(line) = rx.recv().await {
                if body_tx.send_data(line).await.is_err() {
                    break;
                }
            }
        })
        .abort_handle(),
    );
    let scheme = if xds.tls.is_some() { "https" } else { "http" };
    let req = http::Request::post(format!("{scheme}://{server}{}", protocol::STREAM_PATH))
        .header(http::header::CONTENT_TYPE, protocol::CONTENT_TYPE)
        .body(body)
        .map_err(|e| e.to_string())?;
    let send = |tx: &mpsc::Sender<Bytes>, msg: Message| {
        let tx = tx.clone();
        async move {
            tx.send(Bytes::from(msg.encode()))
                .await
                .map_err(|_| "stream closed".to_owned())
        }
    };
    // R7: say who we are and what we hold, so an unchanged control plane sends nothing.
    let hello = held.hello(node.clone());
    send(&tx, hello).await?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("stream request: {e}"))?;
    if resp.status() != http::StatusCode::OK {
        let status = resp.status();
        return Err(match refusal_reason(resp.into_body()).await {
            Some(reason) => format!("control plane answered {status}: {reason}"),
            None => format!("control plane answered {status}"),
        });
    }
    info!(%server, "connected to the control plane");
    status.update(|s| {
        s.connected = true;
        s.last_error = None;
    });
    let mut body = resp.into_body();
    let mut decoder = LineDecoder::default();
    let mut ping = tokio::time::interval(protocol::PING_EVERY);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    let mut pending = ack::Pending::default();

    loop {
        tokio::select! {
            frame = body.frame() => {
                let frame = match frame {
                    Some(Ok(f)) => f,
                    Some(Err(e)) => return Err(format!("stream error: {e}")),
                    None => return Err("control plane closed the stream".to_owned()),
                };
                last_heard = tokio::time::Instant::now();
                let Ok(data) = frame.into_data() else { continue };
                decoder.push(&data);
                while let Some(msg) = decoder.next_message() {
                    let msg = msg.map_err(|e| format!("protocol error: {e}"))?;
                    for answer in ack::handle(msg, held, &mut pending, apply, status, &xds.allow_files) {
                        send(&tx, answer).await?;
                    }
                }
            }
            _ = sleep_until_deadline(pending.deadline()) => {
                // The rest of the change never came: the waiting updates are rejected.
                for answer in ack::give_up(held, &mut pending, status) {
                    send(&tx, answer).await?;
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > protocol::DEAD_AFTER {
                    return Err("control plane silent for 30s".to_owned());
                }
                send(&tx, Message::Ping).await?;
            }
        }
    }
}

/// The `error` of a refusal's JSON body (`{"error": …}`), if it comes within a second and a
/// few KiB.
async fn refusal_reason(body: hyper::body::Incoming) -> Option<String> {
    const MAX: usize = 4096;
    let limited = http_body_util::Limited::new(body, MAX).collect();
    let bytes = tokio::time::timeout(Duration::from_secs(1), limited)
        .await
        .ok()?
        .ok()?
        .to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value["error"].as_str().map(str::to_owned)
}

/// Connects to the control plane: h2c, or TLS with ALPN `h2` (verified like a cluster's
/// upstream TLS; the server name defaults to the host part of `server`).
async fn connect(xds: &model::Xds, server: &str) -> Result<crate::io::MaybeTls, String> {
    let tcp = tokio::net::TcpStream::connect(server)
        .await
        .map_err(|e| format!("connect to {server}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let Some(spec) = &xds.tls else {
        return Ok(crate::io::MaybeTls::Plain(tcp));
    };
    let tls = crate::tls::client::ClientTls::new(spec, model::UpstreamProtocol::Http2)
        .map_err(|e| format!("xds.tls: {e}"))?;
    let host = server
        .rsplit_once(':')
        .map_or(server, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let peer = tcp.peer_addr().map_err(|e| e.to_string())?;
    let name = match host.parse::<std::net::IpAddr>() {
        Ok(_) => tls.server_name(None, peer),
        Err(_) => tls.server_name(Some(host), peer),
    };
    let stream = tokio_rustls::TlsConnector::from(tls.config())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {server}: {e}"))?;
    if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(format!("{server} did not negotiate h2"));
    }
    Ok(crate::io::MaybeTls::Tls(Box::new(stream)))
}

async fn sleep_until_deadline(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

//! Test upstreams: small hyper servers on `127.0.0.1:0` that tell what reached them.
//!
//! By default an upstream is an *echo*: it reads the whole request body (counting it, never
//! keeping it) and answers with a JSON dump of the request ([`Echo`]) plus an `x-upstream`
//! header carrying its name, so a test can see which upstream served a request and what
//! arrived there. It speaks HTTP/1.1 and HTTP/2 prior knowledge on the same port unless told
//! otherwise, and it counts accepted connections and requests.
//!
//! Behaviours chosen when building ([`Builder`]): a fixed status, a delay before answering
//! (optionally only for the first requests), holding every answer until the test opens the
//! gate once for it ([`Builder::hold`]), one protocol only, no keep-alive, or no HTTP at all
//! ([`Builder::close_after_head`]: read a request head, then close the socket), or one answer
//! per connection ([`Builder::one_answer_per_connection`]: the keep-alive race).
//!
//! Behaviours chosen per request by path:
//! - `/bytes/N`: stream `N` bytes of `x` in 64 KiB chunks (with a `content-length`);
//! - `/gated`: send [`GATED_FIRST`], wait until the test calls [`Upstream::open_gate`], then
//!   send [`GATED_LAST`] and end — proves a response streams through before it is complete;
//! - `/delay/MS`: wait `MS` milliseconds before answering (on top of any builder delay);
//! - `/status/CODE`: answer with that status;
//! - `/hop-by-hop`: answer with hop-by-hop headers (`connection: x-upstream-hop`,
//!   `x-upstream-hop`, `keep-alive`, `proxy-authenticate`) and `x-end-to-end: kept`.
//!
//! Behaviours chosen by request headers:
//! - `content-type: application/grpc…`: answer like gRPC — one length-prefixed message as
//!   data, then trailers `grpc-status: 0`, `grpc-message: ok` (HTTP/2 only);
//! - `connection: upgrade` + `upgrade: websocket`: answer `101 Switching Protocols` and echo
//!   every byte on the upgraded connection until the peer closes it.
//!
//! An upstream stops (closing its listener and every connection) when its handle is dropped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, UPGRADE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::body::{self, Body};

/// The first chunk of a `/gated` response.
pub const GATED_FIRST: &[u8] = b"first chunk;";
/// The last chunk of a `/gated` response, sent only once the gate is opened.
pub const GATED_LAST: &[u8] = b"last chunk.";
/// The message of a gRPC-style response: a 5-byte prefix (uncompressed, length 5) and `hello`.
pub const GRPC_MESSAGE: &[u8] = b"\x00\x00\x00\x00\x05hello";

/// How long the `wait_*` helpers wait before failing the test.
const WAIT_LIMIT: Duration = Duration::from_secs(10);
const CHUNK_SIZE: usize = 64 * 1024;
static CHUNK: [u8; CHUNK_SIZE] = [b'x'; CHUNK_SIZE];

/// Which HTTP versions an upstream accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 and HTTP/2 prior knowledge, told apart by the connection preface.
    Auto,
    Http1,
    Http2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Http,
    CloseAfterHead,
    OneAnswerPerConnection,
}

/// What an echo upstream saw of one request, as sent back in its JSON answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Echo {
    /// The name of the upstream that answered.
    pub upstream: String,
    pub method: String,
    /// Path and query as received.
    pub path: String,
    /// `:authority` (HTTP/2) or the request target's authority, if any.
    pub authority: Option<String>,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// Every header as received, in order; names lowercase.
    pub headers: Vec<(String, String)>,
    /// Bytes of request body received.
    pub body_len: u64,
}

impl Echo {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// `Host` for HTTP/1.1, `:authority` for HTTP/2.
    pub fn host(&self) -> Option<&str> {
        self.header("host").or(self.authority.as_deref())
    }
}

/// Configures an upstream before it starts; see the module docs.
#[derive(Debug, Clone)]
pub struct Builder {
    name: String,
    protocol: Protocol,
    status: StatusCode,
    delay: Duration,
    delay_first: Option<usize>,
    hold: bool,
    keep_alive: bool,
    mode: Mode,
}

impl Builder {
    /// Answer every request with this status (the body is still the echo).
    pub fn status(mut self, code: u16) -> Self {
        self.status = StatusCode::from_u16(code).expect("a valid status code");
        self
    }

    /// Wait this long before answering each request (after reading its body).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Apply [`Builder::delay`] to the first `n` requests only; later ones answer at once.
    pub fn delay_first(mut self, n: usize) -> Self {
        self.delay_first = Some(n);
        self
    }

    /// Hold each answer (its head too) until the test calls [`Upstream::open_gate`] for it.
    pub fn hold(mut self) -> Self {
        self.hold = true;
        self
    }

    /// Speak HTTP/1.1 only.
    pub fn http1_only(mut self) -> Self {
        self.protocol = Protocol::Http1;
        self
    }

    /// Speak HTTP/2 (prior knowledge) only.
    pub fn http2_only(mut self) -> Self {
        self.protocol = Protocol::Http2;
        self
    }

    /// Close every HTTP/1.1 connection after its first response (`connection: close`).
    pub fn no_keep_alive(mut self) -> Self {
        self.keep_alive = false;
        self
    }

    /// Not an HTTP server: accept, read one request head, then close without answering.
    pub fn close_after_head(mut self) -> Self {
        self.mode = Mode::CloseAfterHead;
        self
    }

    /// A bare HTTP/1.1 server that answers the first request on each connection (200, an
    /// empty body, keep-alive), then reads the next request head and closes without answering:
    /// an upstream whose keep-alive timeout ends just as a request arrives.
    pub fn one_answer_per_connection(mut self) -> Self {
        self.mode = Mode::OneAnswerPerConnection;
        self
    }

    pub async fn start(self) -> Result<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a test upstream")?;
        let addr = listener.local_addr()?;
        let (requests_tx, _) = watch::channel(0usize);
        let (received_tx, _) = watch::channel(0u64);
        let state = Arc::new(State {
            config: self,
            connections: AtomicUsize::new(0),
            requests: requests_tx,
            received: received_tx,
            gate: Semaphore::new(0),
            seen: Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        Ok(Upstream { addr, state, task })
    }
}

/// A running test upstream. Dropping it stops it.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct State {
    config: Builder,
    connections: AtomicUsize,
    /// Request heads received so far.
    requests: watch::Sender<usize>,
    /// Request body bytes received so far, over all requests.
    received: watch::Sender<u64>,
    gate: Semaphore,
    /// Every request answered by the echo, in arrival order of completion.
    seen: Mutex<Vec<Echo>>,
}

impl State {
    fn record(&self, echo: Echo) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(echo);
    }
}

impl Upstream {
    /// An echo upstream with default behaviour.
    pub async fn echo(name: &str) -> Result<Upstream> {
        Upstream::builder(name).start().await
    }

    pub fn builder(name: &str) -> Builder {
        Builder {
            name: name.to_owned(),
            protocol: Protocol::Auto,
            status: StatusCode::OK,
            delay: Duration::ZERO,
            delay_first: None,
            hold: false,
            keep_alive: true,
            mode: Mode::Http,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.state.config.name
    }

    /// Request heads received so far.
    pub fn requests(&self) -> usize {
        *self.state.requests.borrow()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Request body bytes received so far, over all requests.
    pub fn received(&self) -> u64 {
        *self.state.received.borrow()
    }

    /// What the echo saw of every request it answered so far.
    pub fn seen(&self) -> Vec<Echo> {
        self.state
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until at least `n` request heads have arrived (a request is in flight here).
    pub async fn wait_requests(&self, n: usize) -> Result<()> {
        let mut rx = self.state.requests.subscribe();
        tokio::time::timeout(WAIT_LIMIT, rx.wait_for(|r| *r >= n))
            .await
            .map_err(|_| {
                anyhow!(
                    "upstream {} saw {} requests, expected {n}",
                    self.name(),
                    self.requests()
                )
            })?
            .map_err(|_| anyhow!("upstream {} stopped", self.name()))?;
        Ok(())
    }

    /// Waits until at least `bytes` request body bytes have arrived.
    pub async fn wait_received(&self, bytes: u64) -> Result<()> {
        let mut rx = self.state.received.subscribe();
        tokio::time::timeout(WAIT_LIMIT, rx.wait_for(|r| *r >= bytes))
            .await
            .map_err(|_| {
                anyhow!(
                    "upstream {} received {} body bytes, expected {bytes}",
                    self.name(),
                    self.received()
                )
            })?
            .map_err(|_| anyhow!("upstream {} stopped", self.name()))?;
        Ok(())
    }

    /// Lets one waiting `/gated` response finish, or one held answer ([`Builder::hold`]) go.
    pub fn open_gate(&self) {
        self.state.gate.add_permits(1);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address nothing listens on: bound to a fresh port, then released.
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address")
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    // Connections live in this set so that aborting the loop closes them all.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                state.connections.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_nodelay(true);
                conns.spawn(serve_connection(stream, state.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, state: Arc<State>) {
    match state.config.mode {
        Mode::Http => {}
        Mode::CloseAfterHead => {
            close_after_head(stream, &state).await;
            return;
        }
        Mode::OneAnswerPerConnection => {
            one_answer(stream, &state).await;
            return;
        }
    }
    let io = TokioIo::new(stream);
    let service = {
        let state = state.clone();
        service_fn(move |req| handle(state.clone(), req))
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(state.config.keep_alive);
    builder = match state.config.protocol {
        Protocol::Auto => builder,
        Protocol::Http1 => builder.http1_only(),
        Protocol::Http2 => builder.http2_only(),
    };
    let _ = builder.serve_connection_with_upgrades(io, service).await;
}

async fn close_after_head(mut stream: TcpStream, state: &State) {
    read_head(&mut stream, state).await;
    // Dropping the stream closes it without a response.
}

/// Reads one request head (counting it if any byte came); `false` if the peer closed first.
async fn read_head(stream: &mut TcpStream, state: &State) -> bool {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    if !head.is_empty() {
        state.requests.send_modify(|r| *r += 1);
    }
    head.ends_with(b"\r\n\r\n")
}

async fn one_answer(mut stream: TcpStream, state: &State) {
    if !read_head(&mut stream, state).await {
        return;
    }
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-upstream: {}\r\n\r\n",
        state.config.name
    );
    if stream.write_all(answer.as_bytes()).await.is_err() {
        return;
    }
    read_head(&mut stream, state).await;
    // Dropping the stream closes it without answering the second request.
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let index = {
        let mut index = 0;
        state.requests.send_modify(|r| {
            index = *r;
            *r += 1;
        });
        index
    };
    let mut resp = answer(&state, index, req)
        .await
        .unwrap_or_else(|e| text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}\n")));
    if let Ok(name) = HeaderValue::from_str(&state.config.name) {
        resp.headers_mut().insert("x-upstream", name);
    }
    Ok(resp)
}

async fn answer(
    state: &Arc<State>,
    index: usize,
    mut req: Request<Incoming>,
) -> Result<Response<Body>> {
    if is_websocket(req.headers()) {
        let echo = echo_of(&state.config.name, &req, 0);
        state.record(echo);
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                echo_bytes(TokioIo::new(upgraded)).await;
            }
        });
        let mut resp = Response::new(body::empty());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("sec-websocket-accept", HeaderValue::from_static("test"));
        return Ok(resp);
    }

    let (parts, mut incoming) = req.into_parts();
    let head = Request::from_parts(parts, ());
    let mut body_len = 0u64;
    while let Some(frame) = incoming.frame().await {
        let frame = frame.context("reading the request body")?;
        if let Some(data) = frame.data_ref() {
            body_len += data.len() as u64;
            state.received.send_modify(|r| *r += data.len() as u64);
        }
    }
    let echo = echo_of(&state.config.name, &head, body_len);
    state.record(echo.clone());
    let parts = head.into_parts().0;

    let config = &state.config;
    if !config.delay.is_zero() && config.delay_first.is_none_or(|n| index < n) {
        tokio::time::sleep(config.delay).await;
    }
    if config.hold {
        state.gate.acquire().await.context("the gate")?.forget();
    }
    let segments: Vec<&str> = parts.uri.path().split('/').collect();
    match segments.as_slice() {
        ["", "delay", ms] => {
            let ms: u64 = ms.parse().context("/delay/MS")?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        ["", "bytes", n] => return Ok(stream_bytes(n.parse().context("/bytes/N")?)),
        ["", "gated"] => return Ok(gated(state.clone())),

        ["", "hop-by-hop"] => return Ok(hop_by_hop_answer()),
        _ => {}
    }
    let status = match segments.as_slice() {
        ["", "status", code] => StatusCode::from_u16(code.parse().context("/status/CODE")?)?,
        _ => config.status,
    };
    let grpc = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        return Ok(grpc_answer());
    }
    let mut resp = Response::new(body::full(serde_json::to_vec(&echo)?));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

fn echo_of<B>(name: &str, req: &Request<B>, body_len: u64) -> Echo {
    Echo {
        upstream: name.to_owned(),
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned(),
        authority: req.uri().authority().map(|a| a.to_string()),
        version: format!("{:?}", req.version()),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body_len,
    }
}

fn text(status: StatusCode, message: &str) -> Response<Body> {
    let mut resp = Response::new(body::full(message.to_owned()));
    *resp.status_mut() = status;
    resp
}

fn is_websocket(headers: &HeaderMap) -> bool {
    let upgrade = headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let connection = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    upgrade && connection
}

async fn echo_bytes<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut io: T) {
    let mut buf = [0u8; 8192];
    loop {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if io.write_all(&buf[..n]).await.is_err() || io.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

fn stream_bytes(total: u64) -> Response<Body> {
    let (mut tx, body) = body::channel(2);
    tokio::spawn(async move {
        let mut left = total;
        while left > 0 {
            let n = left.min(CHUNK_SIZE as u64) as usize;
            if tx.send_data(Bytes::from_static(&CHUNK[..n])).await.is_err() {
                return;
            }
            left -= n as u64;
        }
    });
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(total));
    resp
}

fn gated(state: Arc<State>) -> Response<Body> {
    let (mut tx, body) = body::channel(1);
    tokio::spawn(async move {
        if tx.send_data(Bytes::from_static(GATED_FIRST)).await.is_err() {
            return;
        }
        let Ok(permit) = state.gate.acquire().await else {
            return;
        };
        permit.forget();
        let _ = tx.send_data(Bytes::from_static(GATED_LAST)).await;
    });
    Response::new(body)
}

/// An answer carrying hop-by-hop headers that a proxy must not pass on, next to one it must.
fn hop_by_hop_answer() -> Response<Body> {
    let mut resp = Response::new(body::full("hop"));
    let h = resp.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("x-upstream-hop"));
    h.insert("x-upstream-hop", HeaderValue::from_static("secret"));
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert(
        "proxy-authenticate",
        HeaderValue::from_static("Basic realm=\"upstream\""),
    );
    h.insert("x-end-to-end", HeaderValue::from_static("kept"));
    resp
}

fn grpc_answer() -> Response<Body> {
    let (mut tx, body) = body::channel(2);
    tokio::spawn(async move {
        if tx
            .send_data(Bytes::from_static(GRPC_MESSAGE))
            .await
            .is_err()
        {
            return;
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("grpc-message", HeaderValue::from_static("ok"));
        let _ = tx.send_trailers(trailers).await;
    });
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    resp
}

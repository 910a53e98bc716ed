//! Test clients: HTTP/1.1 and HTTP/2 (h2c prior knowledge) over one TCP connection each, built
//! on `hyper::client::conn`, and `curl` run as a subprocess.
//!
//! A client is exactly one connection, so a test controls keep-alive and multiplexing:
//! several requests on one [`Http1`] reuse its connection. [`Reply`] is a response read to
//! the end, with its trailers.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use http::header::HOST;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::body::{self, Body};
use crate::upstream::Echo;

/// How long one request may take before the test fails (nothing in this suite is that slow).
pub const REQUEST_LIMIT: Duration = Duration::from_secs(20);

/// A response read to the end.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    /// The first value of header `name`, if it is valid text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `legate-error` header: why Legate itself answered.
    pub fn legate_error(&self) -> Option<&str> {
        self.header("legate-error")
    }

    /// The `x-upstream` header: the name of the test upstream that answered.
    pub fn upstream(&self) -> Option<&str> {
        self.header("x-upstream")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as an echo upstream's JSON dump of the request it received.
    pub fn echo(&self) -> Result<Echo> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "expected an echo body, got {} with {:?} (headers {:?})",
                self.status,
                self.text(),
                self.headers
            )
        })
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("expected JSON, got {} {:?}", self.status, self.text()))
    }
}

/// Reads a response to its end, trailers included.
pub async fn read_reply(resp: Response<Incoming>) -> Result<Reply> {
    let (parts, body) = resp.into_parts();
    let collected = tokio::time::timeout(REQUEST_LIMIT, body.collect())
        .await
        .context("response body did not end in time")?
        .context("reading the response body")?;
    let trailers = collected.trailers().cloned();
    Ok(Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

/// A request with `Host` set and an empty body, ready for [`Http1::send`].
pub fn request(method: Method, host: &str, path: &str) -> Request<Body> {
    request_with_body(method, host, path, body::empty())
}

/// A WebSocket handshake (`GET path`, `Connection: Upgrade`, `Upgrade: websocket` and the
/// RFC 6455 sample key) with `Host` set.
pub fn websocket_request(host: &str, path: &str) -> Request<Body> {
    let mut req = request(Method::GET, host, path);
    let h = req.headers_mut();
    h.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    h.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        "sec-websocket-key",
        HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
    );
    h.insert("sec-websocket-version", HeaderValue::from_static("13"));
    req
}

/// A request with `Host` set and the given body.
pub fn request_with_body(method: Method, host: &str, path: &str, body: Body) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = path.parse().expect("a valid request path");
    req.headers_mut()
        .insert(HOST, host.parse().expect("a valid host"));
    req
}

/// An HTTP/2 request: `authority` becomes `:authority`, with no `Host` header.
pub fn h2_request(method: Method, authority: &str, path: &str, body: Body) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = format!("http://{authority}{path}")
        .parse()
        .expect("a valid authority and path");
    *req.version_mut() = Version::HTTP_2;
    req
}

/// One HTTP/1.1 client connection. Requests on it are sent one after another (keep-alive).
pub struct Http1 {
    tx: http1::SendRequest<Body>,
}

impl Http1 {
    pub async fn connect(addr: SocketAddr) -> Result<Http1> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let _ = stream.set_nodelay(true);
        let (tx, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(Http1 { tx })
    }

    /// Sends a request once the connection is free; returns the response head.
    pub async fn send(&mut self, req: Request<Body>) -> Result<Response<Incoming>> {
        tokio::time::timeout(REQUEST_LIMIT, async {
            self.tx.ready().await.context("connection not usable")?;
            self.tx.send_request(req).await.context("sending request")
        })
        .await
        .context("no response in time")?
    }

    /// Sends a request and reads the whole response.
    pub async fn request(&mut self, req: Request<Body>) -> Result<Reply> {
        let resp = self.send(req).await?;
        read_reply(resp).await
    }

    /// `GET path` with `Host: host`, read to the end.
    pub async fn get(&mut self, host: &str, path: &str) -> Result<Reply> {
        self.request(request(Method::GET, host, path)).await
    }

    /// Whether the proxy has closed this connection (after `connection: close`, say).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// One HTTP/2 (h2c prior knowledge) client connection; clones share it (multiplexing).
#[derive(Clone)]
pub struct H2 {
    tx: http2::SendRequest<Body>,
}

impl H2 {
    pub async fn connect(addr: SocketAddr) -> Result<H2> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let _ = stream.set_nodelay(true);
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(H2 { tx })
    }

    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>> {
        let mut tx = self.tx.clone();
        tokio::time::timeout(REQUEST_LIMIT, async move {
            tx.ready().await.context("connection not usable")?;
            tx.send_request(req).await.context("sending request")
        })
        .await
        .context("no response in time")?
    }

    pub async fn request(&self, req: Request<Body>) -> Result<Reply> {
        let resp = self.send(req).await?;
        read_reply(resp).await
    }

    /// `GET path` with `:authority: authority`, read to the end.
    pub async fn get(&self, authority: &str, path: &str) -> Result<Reply> {
        self.request(h2_request(Method::GET, authority, path, body::empty()))
            .await
    }

    /// Whether the connection is closed (after GOAWAY, say): no new request can start on it.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// `GET path` with `Host: host` on a new HTTP/1.1 connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Result<Reply> {
    Http1::connect(addr).await?.get(host, path).await
}

/// `GET path` with `:authority: authority` on a new HTTP/2 connection.
pub async fn h2_get(addr: SocketAddr, authority: &str, path: &str) -> Result<Reply> {
    H2::connect(addr).await?.get(authority, path).await
}

/// What a `curl` run printed.
#[derive(Debug)]
pub struct CurlOutput {
    pub status: u16,
    pub http_version: String,
    pub body: String,
    pub stderr: String,
}

/// Runs `curl -sS` with `args` and the URL, returning the status and body. `-w` appends the
/// status and HTTP version after a marker, so `args` must not set `-w` or `-o` themselves.
pub async fn curl(args: &[&str], url: &str) -> Result<CurlOutput> {
    const MARK: &str = "\n--curl-status--";
    let out = tokio::time::timeout(
        REQUEST_LIMIT,
        tokio::process::Command::new("curl")
            .arg("-sS")
            .arg("--max-time")
            .arg("10")
            .arg("-w")
            .arg(format!("{MARK}%{{http_code}} %{{http_version}}"))
            .args(args)
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("curl did not finish in time")?
    .context("running curl (is it installed?)")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("curl failed ({}): {stderr}", out.status);
    }
    let Some((body, tail)) = stdout.rsplit_once(MARK) else {
        bail!("curl printed no status: {stdout:?}");
    };
    let (status, version) = tail.split_once(' ').unwrap_or((tail, ""));
    Ok(CurlOutput {
        status: status.trim().parse().context("curl status")?,
        http_version: version.trim().to_owned(),
        body: body.to_owned(),
        stderr,
    })
}

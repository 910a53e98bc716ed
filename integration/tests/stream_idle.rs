//! Stream idle timeouts: once the response head has arrived, a request with no body bytes
//! moving either way — an upstream stalled mid-body, a client that stopped reading — is cut
//! after `stream_idle_timeout` and gives back its slots; an HTTP/2 stream is cut alone; a
//! route may allow longer than its listener; an idle WebSocket tunnel is closed too.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use legate_integration::body;
use legate_integration::client::{self, h2_request, request, Http1, H2};
use legate_integration::eventually;
use legate_integration::proxy::{yaml, Proxy};
use legate_integration::upstream::{Upstream, GATED_FIRST};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `short.example.org` → cluster `app` with the listener's 300ms stream idle timeout;
/// `long.example.org` → the same cluster, with a route that allows 60s.
const CONFIG: &str = r#"
admin: { listen: 127.0.0.1:0 }
access_log: { enabled: false }
listeners:
  - name: front
    listen: 127.0.0.1:0
    http: { route_table: main, stream_idle_timeout: 300ms }
route_tables:
  main:
    virtual_hosts:
      - hosts: [short.example.org]
        routes: [{ match: { prefix: / }, cluster: app }]
      - hosts: [long.example.org]
        routes: [{ match: { prefix: / }, cluster: app, stream_idle_timeout: 60s }]
clusters:
  - { name: app, endpoints: ["${APP}"] }
"#;

fn start(app: &Upstream) -> Result<Proxy> {
    Proxy::start(yaml(CONFIG).set("APP", app.addr()))
}

/// The endpoint's `active_requests` in `/clusters`.
async fn active_requests(admin: SocketAddr) -> Result<Value> {
    let clusters: Value = client::get(admin, "admin", "/clusters").await?.json()?;
    Ok(clusters["clusters"][0]["endpoints"][0]["active_requests"].clone())
}

/// Waits until no request holds the endpoint any more.
async fn slots_freed(admin: SocketAddr) -> Result<()> {
    eventually(Duration::from_secs(10), || async {
        let active = active_requests(admin).await?;
        ensure!(active == 0, "{active} requests still active");
        Ok(())
    })
    .await
}

/// Reads the first chunk of a `/gated` body, then expects the body to fail (not end).
async fn first_chunk_then_cut(mut body: Incoming) -> Result<()> {
    let mut got = Vec::new();
    while got.len() < GATED_FIRST.len() {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .context("the first chunk never came")?
            .context("the body ended early")??;
        if let Some(data) = frame.data_ref() {
            got.extend_from_slice(data);
        }
    }
    let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .context("the stalled body was never cut")?;
    ensure!(rest.is_err(), "a cut body fails, it does not end cleanly");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_stalled_mid_body_is_cut_for_an_http1_client() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let proxy = start(&app)?;
    let resp = Http1::connect(proxy.addr("front"))
        .await?
        .send(request(Method::GET, "short.example.org", "/gated"))
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    first_chunk_then_cut(resp.into_body()).await?;
    slots_freed(proxy.admin()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_is_cut_alone_and_its_connection_serves_on() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let proxy = start(&app)?;
    let h2 = H2::connect(proxy.addr("front")).await?;
    let req = h2_request(Method::GET, "short.example.org", "/gated", body::empty());
    let resp = h2.send(req).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    first_chunk_then_cut(resp.into_body()).await?;
    slots_freed(proxy.admin()).await?;
    // The stream was reset, not the connection.
    let reply = h2.get("short.example.org", "/").await?;
    assert_eq!(reply.status, StatusCode::OK);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_and_frees_its_slots() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let proxy = start(&app)?;
    // HTTP/1.1: ask for 1 GiB and read nothing; the socket buffers fill and stay full.
    let mut stalled = TcpStream::connect(proxy.addr("front")).await?;
    stalled
        .write_all(b"GET /bytes/1073741824 HTTP/1.1\r\nhost: short.example.org\r\n\r\n")
        .await?;
    app.wait_requests(1).await?;
    slots_freed(proxy.admin()).await?;
    // Legate closed that connection: reading it drains what was buffered, then ends.
    let mut sink = vec![0u8; 1 << 20];
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while stalled.read(&mut sink).await? > 0 {}
        anyhow::Ok(())
    })
    .await;
    ensure!(drained.is_ok(), "the connection was not closed");

    // HTTP/2: a stream whose flow-control window the client never reopens.
    let h2 = H2::connect(proxy.addr("front")).await?;
    let req = h2_request(
        Method::GET,
        "short.example.org",
        "/bytes/1073741824",
        body::empty(),
    );
    let resp = h2.send(req).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    slots_freed(proxy.admin()).await?;
    drop(resp);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_may_allow_a_longer_stream_idle_timeout_than_its_listener() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let proxy = start(&app)?;
    let mut long = Http1::connect(proxy.addr("front")).await?;
    let long_resp = long
        .send(request(Method::GET, "long.example.org", "/gated"))
        .await?;
    let mut short = Http1::connect(proxy.addr("front")).await?;
    let short_resp = short
        .send(request(Method::GET, "short.example.org", "/gated"))
        .await?;
    // The listener's 300ms cut the short route's stream ...
    first_chunk_then_cut(short_resp.into_body()).await?;
    // ... while the long route's, idle just as long, lives on and completes.
    assert_eq!(active_requests(proxy.admin()).await?, 1);
    app.open_gate();
    app.open_gate();
    let body = tokio::time::timeout(Duration::from_secs(10), long_resp.into_body().collect())
        .await
        .context("the long stream never completed")??
        .to_bytes();
    assert!(body.starts_with(GATED_FIRST), "{body:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_tunnel_is_closed() -> Result<()> {
    let app = Upstream::builder("ws").http1_only().start().await?;
    let proxy = start(&app)?;
    let mut client = Http1::connect(proxy.addr("front")).await?;
    let mut resp = client
        .send(client::websocket_request("short.example.org", "/chat"))
        .await?;
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let upgraded =
        tokio::time::timeout(Duration::from_secs(5), hyper::upgrade::on(&mut resp)).await??;
    let mut tunnel = hyper_util::rt::TokioIo::new(upgraded);
    tunnel.write_all(b"hello").await?;
    let mut back = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), tunnel.read_exact(&mut back)).await??;
    assert_eq!(&back, b"hello");
    // Then nothing: the tunnel is closed after the stream idle timeout.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tunnel.read_to_end(&mut rest))
        .await
        .context("the idle tunnel stayed open")??;
    assert!(rest.is_empty(), "{rest:?}");
    slots_freed(proxy.admin()).await
}

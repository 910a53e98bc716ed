//! Bodies stream through Legate: large uploads and downloads complete, and a body is
//! forwarded while it is still being produced — never buffered whole — in both directions.

use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use legate_integration::body;
use legate_integration::client::{h2_request, request, request_with_body, Http1, H2};
use legate_integration::proxy::{yaml, Proxy};
use legate_integration::upstream::{Upstream, GATED_FIRST, GATED_LAST};

const MIB: u64 = 1024 * 1024;
const BIG: u64 = 64 * MIB;
static CHUNK: [u8; 64 * 1024] = [b'u'; 64 * 1024];

const ONE_CLUSTER: &str = r#"
admin: { listen: 127.0.0.1:0 }
runtime: { workers: 2 }
access_log: { enabled: false }
listeners:
  - { name: front, listen: 127.0.0.1:0, http: { route_table: main } }
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes:
          - match: { prefix: / }
            cluster: app
            timeout: 60s
clusters:
  - { name: app, protocol: "${PROTOCOL}", endpoints: ["${APP}"] }
"#;

fn proxy_to(app: &Upstream, protocol: &str) -> Result<Proxy> {
    Proxy::start(
        yaml(ONE_CLUSTER)
            .set("APP", app.addr())
            .set("PROTOCOL", protocol),
    )
}

/// Reads a body to its end, counting bytes without keeping them.
async fn count_body(mut body: Incoming) -> Result<u64> {
    let mut total = 0u64;
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(20), body.frame())
        .await
        .context("the body stalled")?
    {
        if let Some(data) = frame?.data_ref() {
            total += data.len() as u64;
        }
    }
    Ok(total)
}

/// Reads frames until `want` bytes have arrived, returning them.
async fn read_at_least(body: &mut Incoming, want: usize) -> Result<Vec<u8>> {
    let mut got = Vec::new();
    while got.len() < want {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .context("no bytes arrived: the response is being held back")?
            .context("the body ended early")??;
        if let Some(data) = frame.data_ref() {
            got.extend_from_slice(data);
        }
    }
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_download_passes_through() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let proxy = proxy_to(&app, "http1")?;
    let mut client = Http1::connect(proxy.addr("front")).await?;

    let resp = client
        .send(request(
            Method::GET,
            "app.example.org",
            &format!("/bytes/{BIG}"),
        ))
        .await?;

    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers().get("content-length").map(|v| v.as_bytes()),
        Some(BIG.to_string().as_bytes())
    );
    assert_eq!(count_body(resp.into_body()).await?, BIG);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_passes_through() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let proxy = proxy_to(&app, "http1")?;
    let mut client = Http1::connect(proxy.addr("front")).await?;

    let (mut tx, upload) = body::channel(4);
    tokio::spawn(async move {
        for _ in 0..BIG / CHUNK.len() as u64 {
            if tx.send_data(Bytes::from_static(&CHUNK)).await.is_err() {
                return;
            }
        }
    });
    let reply = client
        .request(request_with_body(
            Method::PUT,
            "app.example.org",
            "/upload",
            upload,
        ))
        .await?;

    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.echo()?.body_len, BIG);
    Ok(())
}

/// The upstream sends the first part of its answer, then waits for the test to open its gate:
/// the client can only see that first part if Legate forwards it before the body ends.
async fn response_streams(client_h2: bool, upstream_protocol: &str) -> Result<()> {
    let app = Upstream::echo("app").await?;
    let proxy = proxy_to(&app, upstream_protocol)?;

    let resp = if client_h2 {
        H2::connect(proxy.addr("front"))
            .await?
            .send(h2_request(
                Method::GET,
                "app.example.org",
                "/gated",
                body::empty(),
            ))
            .await?
    } else {
        Http1::connect(proxy.addr("front"))
            .await?
            .send(request(Method::GET, "app.example.org", "/gated"))
            .await?
    };
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();

    let first = read_at_least(&mut body, GATED_FIRST.len()).await?;
    assert_eq!(first, GATED_FIRST);
    app.open_gate();
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .context("the rest of the response never came")??
        .to_bytes();
    assert_eq!(&rest[..], GATED_LAST);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_reaches_an_http1_client_before_the_upstream_finishes_it() -> Result<()> {
    response_streams(false, "http1").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_reaches_an_http2_client_before_the_http2_upstream_finishes_it() -> Result<()> {
    response_streams(true, "http2").await
}

/// The client sends a first chunk and holds the last one back until the upstream has
/// received the first: that only happens if Legate forwards the body as it arrives.
async fn request_streams(client_h2: bool, upstream_protocol: &str) -> Result<()> {
    let app = Upstream::echo("app").await?;
    let proxy = proxy_to(&app, upstream_protocol)?;
    let front = proxy.addr("front");

    let (mut tx, upload) = body::channel(1);
    let pending = tokio::spawn(async move {
        if client_h2 {
            let client = H2::connect(front).await?;
            client
                .request(h2_request(Method::POST, "app.example.org", "/up", upload))
                .await
        } else {
            let mut client = Http1::connect(front).await?;
            client
                .request(request_with_body(
                    Method::POST,
                    "app.example.org",
                    "/up",
                    upload,
                ))
                .await
        }
    });

    tx.send_data(Bytes::from_static(&CHUNK[..1000]))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    app.wait_received(1000)
        .await
        .context("the upstream never saw the first chunk: the request body was held back")?;
    tx.send_data(Bytes::from_static(&CHUNK[..24]))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    drop(tx);

    let reply = pending.await??;
    assert_eq!(reply.status, StatusCode::OK);
    let echo = reply.echo()?;
    ensure!(
        echo.body_len == 1024,
        "upstream got {} bytes",
        echo.body_len
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_reaches_an_http1_upstream_before_the_client_finishes_it() -> Result<()> {
    request_streams(false, "http1").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_reaches_an_http2_upstream_before_the_http2_client_finishes_it() -> Result<()>
{
    request_streams(true, "http2").await
}

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

/// An HTTP/1.1 upstream that answers a POST at once, before reading its body, and then only
/// drains that connection; any other request is answered "fresh".
async fn early_answering_upstream() -> Result<std::net::SocketAddr> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let post = buf.starts_with(b"POST");
                    buf.drain(..end + 4);
                    let body = if post { "early" } else { "fresh" };
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                    if stream.write_all((head + body).as_bytes()).await.is_err() {
                        return;
                    }
                    if post {
                        while matches!(stream.read(&mut chunk).await, Ok(n) if n > 0) {}
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// A connection whose response has ended while its request body is still uploading does not
/// go back to the pool for the next request to queue behind (it would wait for someone
/// else's upload and time out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_still_uploading_is_not_reused() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = early_answering_upstream().await?;
    let proxy = Proxy::start(
        yaml(
            r#"
admin: { listen: 127.0.0.1:0 }
runtime: { workers: 1 }
access_log: { enabled: false }
listeners:
  - { name: front, listen: 127.0.0.1:0, http: { route_table: main } }
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes: [{ match: { prefix: / }, cluster: app, timeout: 3s }]
clusters:
  - { name: app, endpoints: ["${APP}"] }
"#,
        )
        .set("APP", app),
    )?;
    let front = proxy.addr("front");

    // A slow client: the head and a little of a 1 MB body, then nothing for now.
    let mut slow = tokio::net::TcpStream::connect(front).await?;
    slow.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        .await?;
    slow.write_all(&CHUNK[..1000]).await?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    while !answer.ends_with(b"early") {
        let n = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut chunk))
            .await
            .context("no early answer")??;
        ensure!(n > 0, "the proxy closed the slow upload");
        answer.extend_from_slice(&chunk[..n]);
    }
    ensure!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // The next request gets a connection of its own, not the one still uploading.
    let reply = legate_integration::client::get(front, "x", "/next").await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.text(), "fresh");
    drop(slow);
    Ok(())
}

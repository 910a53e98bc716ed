//! Protocols end to end: HTTP/1.1 and HTTP/2 (h2c prior knowledge) from clients, HTTP/1.1
//! and HTTP/2 to upstreams, connection reuse, curl, gRPC-style trailers and WebSocket upgrades.

use std::time::Duration;

use anyhow::{ensure, Result};
use http::header::{CONNECTION, CONTENT_TYPE, TE, UPGRADE};
use http::{Method, StatusCode, Version};
use legate_integration::body;
use legate_integration::client::{self, curl, h2_request, request, Http1, H2};
use legate_integration::proxy::{yaml, Proxy};
use legate_integration::upstream::{Upstream, GRPC_MESSAGE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One listener `front` routing everything to cluster `app` at `${APP}` over `${PROTOCOL}`.
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
clusters:
  - name: app
    protocol: ${PROTOCOL}
    endpoints: ["${APP}"]
"#;

fn proxy_to(app: &Upstream, protocol: &str) -> Result<Proxy> {
    Proxy::start(
        yaml(ONE_CLUSTER)
            .set("APP", app.addr())
            .set("PROTOCOL", protocol),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_client_reaches_http1_upstream() -> Result<()> {
    let app = Upstream::builder("app").http1_only().start().await?;
    let proxy = proxy_to(&app, "http1")?;

    let reply = client::get(proxy.addr("front"), "app.example.org", "/hello?x=1").await?;

    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.version, Version::HTTP_11);
    let echo = reply.echo()?;
    assert_eq!(echo.upstream, "app");
    assert_eq!(echo.version, "HTTP/1.1");
    assert_eq!(echo.method, "GET");
    assert_eq!(echo.path, "/hello?x=1");
    assert_eq!(echo.header("host"), Some("app.example.org"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_client_reaches_http1_upstream() -> Result<()> {
    let app = Upstream::builder("app").http1_only().start().await?;
    let proxy = proxy_to(&app, "http1")?;

    let reply = client::h2_get(proxy.addr("front"), "app.example.org", "/h2-in").await?;

    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.version, Version::HTTP_2);
    let echo = reply.echo()?;
    assert_eq!(echo.version, "HTTP/1.1");
    assert_eq!(echo.path, "/h2-in");
    // `:authority` becomes the upstream's Host header.
    assert_eq!(echo.header("host"), Some("app.example.org"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_client_reaches_http2_upstream() -> Result<()> {
    let app = Upstream::builder("app").http2_only().start().await?;
    let proxy = proxy_to(&app, "http2")?;

    let reply = client::get(proxy.addr("front"), "app.example.org", "/h2-out").await?;

    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.version, Version::HTTP_11);
    let echo = reply.echo()?;
    assert_eq!(echo.version, "HTTP/2.0");
    assert_eq!(echo.path, "/h2-out");
    // The Host header becomes `:authority`; HTTP/2 carries no Host header.
    assert_eq!(echo.authority.as_deref(), Some("app.example.org"));
    assert!(!echo.has_header("host"), "{echo:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_client_reaches_http2_upstream() -> Result<()> {
    let app = Upstream::builder("app").http2_only().start().await?;
    let proxy = proxy_to(&app, "http2")?;

    let h2 = H2::connect(proxy.addr("front")).await?;
    let upload = h2_request(
        Method::POST,
        "app.example.org",
        "/both",
        body::full("twelve bytes"),
    );
    let reply = h2.request(upload).await?;

    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.version, Version::HTTP_2);
    let echo = reply.echo()?;
    assert_eq!(echo.version, "HTTP/2.0");
    assert_eq!(echo.method, "POST");
    assert_eq!(echo.body_len, 12);
    assert_eq!(echo.authority.as_deref(), Some("app.example.org"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_client_connection_reuses_one_upstream_connection() -> Result<()> {
    let app = Upstream::builder("app").http1_only().start().await?;
    let proxy = proxy_to(&app, "http1")?;

    let mut client = Http1::connect(proxy.addr("front")).await?;
    for i in 0..5 {
        let reply = client.get("app.example.org", &format!("/{i}")).await?;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.echo()?.path, format!("/{i}"));
    }

    assert!(!client.is_closed(), "the client connection stayed open");
    assert_eq!(app.requests(), 5);
    assert_eq!(
        app.connections(),
        1,
        "five sequential requests should share one pooled upstream connection"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstream_multiplexes_concurrent_requests_on_one_connection() -> Result<()> {
    let app = Upstream::builder("app")
        .http2_only()
        .delay(Duration::from_millis(50))
        .start()
        .await?;
    let proxy = proxy_to(&app, "http2")?;
    let h2 = H2::connect(proxy.addr("front")).await?;
    // The first request opens the upstream connection.
    assert_eq!(
        h2.get("app.example.org", "/warm").await?.status,
        StatusCode::OK
    );

    let mut requests = tokio::task::JoinSet::new();
    for i in 0..10 {
        let h2 = h2.clone();
        requests.spawn(async move { h2.get("app.example.org", &format!("/{i}")).await });
    }
    while let Some(reply) = requests.join_next().await {
        assert_eq!(reply??.status, StatusCode::OK);
    }

    assert_eq!(app.requests(), 11);
    assert_eq!(app.connections(), 1, "HTTP/2 requests share one connection");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_http1_and_http2_prior_knowledge() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let proxy = proxy_to(&app, "http1")?;
    let url = format!("http://{}/curl", proxy.addr("front"));

    let h1 = curl(&["-H", "Host: curl.example.org"], &url).await?;
    assert_eq!(h1.status, 200, "{h1:?}");
    assert_eq!(h1.http_version, "1.1");
    let echo: serde_json::Value = serde_json::from_str(&h1.body)?;
    assert_eq!(echo["upstream"], "app");
    assert_eq!(echo["path"], "/curl");

    let h2 = curl(
        &["--http2-prior-knowledge", "-H", "Host: curl.example.org"],
        &url,
    )
    .await?;
    assert_eq!(h2.status, 200, "{h2:?}");
    assert_eq!(h2.http_version, "2");
    let echo: serde_json::Value = serde_json::from_str(&h2.body)?;
    assert_eq!(echo["path"], "/curl");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_style_trailers_reach_the_http2_client() -> Result<()> {
    let app = Upstream::builder("grpc").http2_only().start().await?;
    let proxy = proxy_to(&app, "http2")?;
    let h2 = H2::connect(proxy.addr("front")).await?;

    let mut req = h2_request(
        Method::POST,
        "grpc.example.org",
        "/helloworld.Greeter/SayHello",
        body::full(&b"\x00\x00\x00\x00\x02hi"[..]),
    );
    req.headers_mut()
        .insert(CONTENT_TYPE, "application/grpc".parse()?);
    req.headers_mut().insert(TE, "trailers".parse()?);
    let reply = h2.request(req).await?;

    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), Some("application/grpc"));
    assert_eq!(&reply.body[..], GRPC_MESSAGE);
    let trailers = reply.trailers.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "no trailers reached the client; headers were {:?}",
            reply.headers
        )
    })?;
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    assert_eq!(
        trailers.get("grpc-message").map(|v| v.as_bytes()),
        Some(&b"ok"[..])
    );
    // `te: trailers` is the one TE value forwarded end to end.
    let seen = app.seen();
    ensure!(seen.len() == 1, "one request upstream, saw {seen:?}");
    assert_eq!(seen[0].header("te"), Some("trailers"));
    assert_eq!(seen[0].header("content-type"), Some("application/grpc"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_tunnels_bytes_both_ways() -> Result<()> {
    let app = Upstream::builder("ws").http1_only().start().await?;
    let proxy = proxy_to(&app, "http1")?;
    let mut client = Http1::connect(proxy.addr("front")).await?;

    let mut resp = client
        .send(client::websocket_request("ws.example.org", "/chat"))
        .await?;

    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(
        resp.headers().get(UPGRADE).map(|v| v.as_bytes()),
        Some(&b"websocket"[..])
    );
    let upgraded =
        tokio::time::timeout(Duration::from_secs(5), hyper::upgrade::on(&mut resp)).await??;
    let mut tunnel = hyper_util::rt::TokioIo::new(upgraded);
    for message in [&b"hello"[..], b"over the tunnel", &[0u8, 1, 2, 255]] {
        tunnel.write_all(message).await?;
        let mut back = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), tunnel.read_exact(&mut back)).await??;
        assert_eq!(back, message);
    }
    // The open tunnel still counts as a request in flight to its endpoint.
    let clusters = client::get(proxy.admin(), "admin", "/clusters")
        .await?
        .json()?;
    assert_eq!(
        clusters["clusters"][0]["endpoints"][0]["active_requests"], 1,
        "{clusters:#}"
    );
    // Closing our side closes the tunnel: the upstream sees the end and hangs up too.
    tunnel.shutdown().await?;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tunnel.read_to_end(&mut rest)).await??;
    assert!(rest.is_empty(), "{rest:?}");
    // The upgrade handshake reached the upstream with its headers intact.
    let seen = app.seen();
    ensure!(seen.len() == 1, "one handshake upstream, saw {seen:?}");
    assert_eq!(seen[0].header("upgrade"), Some("websocket"));
    assert_eq!(
        seen[0].header("sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );
    Ok(())
}

/// Only the `Upgrade` protocols a route allows are tunnelled (`websocket` by default); an h2c
/// upgrade is never forwarded nor answered with 101, and its `HTTP2-Settings` is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_upgrades_are_tunnelled_and_never_h2c() -> Result<()> {
    let app = Upstream::builder("ws").http1_only().start().await?;
    let proxy = Proxy::start(
        yaml(
            r#"
admin: { listen: 127.0.0.1:0 }
access_log: { enabled: false }
listeners:
  - { name: front, listen: 127.0.0.1:0, http: { route_table: main } }
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes:
          - { match: { prefix: /plain }, cluster: app, upgrades: [] }
          - { match: { prefix: / }, cluster: app }
clusters:
  - { name: app, endpoints: ["${APP}"] }
"#,
        )
        .set("APP", app.addr()),
    )?;
    let upgrade_request = |path: &str, protocol: &str| -> Result<http::Request<body::Body>> {
        let mut req = request(Method::GET, "ws.example.org", path);
        let h = req.headers_mut();
        h.insert(CONNECTION, "Upgrade, HTTP2-Settings".parse()?);
        h.insert(UPGRADE, protocol.parse()?);
        h.insert("http2-settings", "AAMAAABkAAQAAP__".parse()?);
        h.insert("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==".parse()?);
        h.insert("sec-websocket-version", "13".parse()?);
        Ok(req)
    };
    for (path, protocol) in [("/chat", "h2c"), ("/plain", "websocket")] {
        let mut client = Http1::connect(proxy.addr("front")).await?;
        let resp = client.send(upgrade_request(path, protocol)?).await?;
        assert_eq!(resp.status(), StatusCode::OK, "{protocol} on {path}");
    }
    let seen = app.seen();
    ensure!(
        seen.len() == 2,
        "both forwarded as plain requests: {seen:?}"
    );
    for echo in &seen {
        assert!(!echo.has_header("upgrade"), "{echo:?}");
        assert!(!echo.has_header("http2-settings"), "{echo:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_response_keeps_its_length_and_has_no_body() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let proxy = proxy_to(&app, "http1")?;
    let mut client = Http1::connect(proxy.addr("front")).await?;

    let head = client
        .request(request(Method::HEAD, "app.example.org", "/bytes/5000"))
        .await?;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header("content-length"), Some("5000"));
    assert!(head.body.is_empty());

    // The connection is still in step: the next response is the right one.
    let next = client.get("app.example.org", "/after-head").await?;
    assert_eq!(next.echo()?.path, "/after-head");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_upload_with_expect_100_continue_passes_through() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let proxy = proxy_to(&app, "http1")?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("upload.bin");
    std::fs::write(&file, vec![7u8; 2 * 1024 * 1024])?;
    let data = format!("@{}", file.display());
    let url = format!("http://{}/upload", proxy.addr("front"));

    let out = curl(
        &[
            "-H",
            "Host: app.example.org",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            &data,
        ],
        &url,
    )
    .await?;

    assert_eq!(out.status, 200, "{out:?}");
    let echo: serde_json::Value = serde_json::from_str(&out.body)?;
    assert_eq!(echo["body_len"], 2 * 1024 * 1024);
    assert_eq!(echo["method"], "POST");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_request_target_routes_by_its_authority() -> Result<()> {
    let app = Upstream::builder("app").http1_only().start().await?;
    let proxy = Proxy::start(
        yaml(
            r#"
admin: { listen: 127.0.0.1:0 }
access_log: { enabled: false }
listeners:
  - { name: front, listen: 127.0.0.1:0, http: { route_table: main } }
route_tables:
  main:
    virtual_hosts:
      - hosts: [app.example.org]
        routes: [{ match: { prefix: / }, cluster: app }]
clusters:
  - { name: app, endpoints: ["${APP}"] }
"#,
        )
        .set("APP", app.addr()),
    )?;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr("front")).await?;
    stream
        .write_all(
            b"GET http://app.example.org/abs?x=1 HTTP/1.1\r\nhost: app.example.org\r\n\
              connection: close\r\n\r\n",
        )
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await??;
    let answer = String::from_utf8_lossy(&answer);

    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = app.seen();
    ensure!(seen.len() == 1, "{seen:?}");
    // Upstreams get origin-form targets.
    assert_eq!(seen[0].path, "/abs?x=1");
    assert_eq!(seen[0].header("host"), Some("app.example.org"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_that_closes_after_every_response_still_serves_every_request() -> Result<()> {
    let app = Upstream::builder("app")
        .http1_only()
        .no_keep_alive()
        .start()
        .await?;
    let proxy = proxy_to(&app, "http1")?;
    let mut client = Http1::connect(proxy.addr("front")).await?;

    for i in 0..20 {
        let reply = client.get("app.example.org", &format!("/{i}")).await?;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "request {i}: {}",
            reply.text()
        );
        assert_eq!(reply.echo()?.path, format!("/{i}"));
    }
    assert_eq!(app.requests(), 20);
    assert_eq!(
        app.connections(),
        20,
        "one upstream connection per response"
    );
    Ok(())
}

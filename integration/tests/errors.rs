//! Answers Legate gives itself when it cannot proxy — each with its status and `legate-error`
//! reason — and the limits it enforces on what clients send.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result};
use http::{Method, Request, StatusCode};
use legate_integration::body;
use legate_integration::client::{self, h2_request, H2};
use legate_integration::proxy::{yaml, Proxy};
use legate_integration::upstream::{closed_port, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Routes: `/app` → cluster `app` at `${APP}` (route timeout 200ms); `/gone` → `gone`, whose
/// only endpoint is depooled; no catch-all host.
const ERRORS: &str = r#"
admin: { listen: 127.0.0.1:0 }
access_log: { enabled: false }
listeners:
  - name: front
    listen: 127.0.0.1:0
    http: { route_table: main, max_header_size: 16384, max_concurrent_streams: 7 }
  - name: tight
    listen: 127.0.0.1:0
    http: { route_table: main, max_header_size: 8192, max_uri_length: 1024 }
route_tables:
  main:
    virtual_hosts:
      - hosts: [app.example.org]
        routes:
          - match: { prefix: /app }
            cluster: app
            timeout: 200ms
          - match: { prefix: /gone }
            cluster: gone
          - match: { prefix: /ok }
            respond: { status: 200, body: ok }
clusters:
  - { name: app, endpoints: ["${APP}"], connect_timeout: 500ms }
  - name: gone
    endpoints:
      - { address: "127.0.0.1:9", pooled: false }
      - { address: "127.0.0.1:10", pooled: false }
"#;

fn start(app: SocketAddr) -> Result<Proxy> {
    Proxy::start(yaml(ERRORS).set("APP", app))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_or_path_is_404_no_route() -> Result<()> {
    let proxy = start(closed_port())?;
    let front = proxy.addr("front");

    let unknown_host = client::get(front, "nobody.example.org", "/app").await?;
    assert_eq!(unknown_host.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown_host.legate_error(), Some("no-route"));

    let unknown_path = client::get(front, "app.example.org", "/elsewhere").await?;
    assert_eq!(unknown_path.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown_path.legate_error(), Some("no-route"));

    let over_h2 = client::h2_get(front, "nobody.example.org", "/").await?;
    assert_eq!(over_h2.status, StatusCode::NOT_FOUND);
    assert_eq!(over_h2.legate_error(), Some("no-route"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_upstream_port_is_502_connect_failure() -> Result<()> {
    let proxy = start(closed_port())?;

    let reply = client::get(proxy.addr("front"), "app.example.org", "/app").await?;

    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.legate_error(), Some("connect-failure"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_without_answer_is_502_upstream_reset() -> Result<()> {
    let rude = Upstream::builder("rude").close_after_head().start().await?;
    let proxy = start(rude.addr())?;

    let reply = client::get(proxy.addr("front"), "app.example.org", "/app").await?;

    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.legate_error(), Some("upstream-reset"));
    assert!(rude.connections() >= 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_without_pooled_endpoints_is_503_no_endpoint() -> Result<()> {
    let proxy = start(closed_port())?;

    let reply = client::get(proxy.addr("front"), "app.example.org", "/gone").await?;

    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.legate_error(), Some("no-endpoint"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504_timeout_at_the_route_deadline() -> Result<()> {
    let slow = Upstream::builder("slow")
        .delay(Duration::from_secs(3))
        .start()
        .await?;
    let proxy = start(slow.addr())?;

    let reply = client::get(proxy.addr("front"), "app.example.org", "/app").await?;

    // The upstream would have answered 200 after 3 s; the 200 ms route deadline answered.
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.legate_error(), Some("timeout"));
    assert_eq!(slow.requests(), 1, "the request reached the upstream");
    Ok(())
}

/// Sends raw bytes and returns the status of the answer, or `None` if the connection was
/// closed (or reset) without one.
async fn raw_status(addr: SocketAddr, request: &[u8]) -> Result<Option<u16>> {
    let mut stream = TcpStream::connect(addr).await?;
    // The proxy may stop reading and close while the head is still being written.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .context("the proxy neither answered nor closed")?;
    if read.is_err() && answer.is_empty() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&answer);
    Ok(text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok()))
}

fn request_with_header_of(size: usize) -> Vec<u8> {
    format!(
        "GET /ok HTTP/1.1\r\nhost: app.example.org\r\nx-big: {}\r\nconnection: close\r\n\r\n",
        "a".repeat(size)
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_head_over_max_header_size_is_refused() -> Result<()> {
    let proxy = start(closed_port())?;
    let front = proxy.addr("front");

    // Within the limit: answered.
    let small = raw_status(front, &request_with_header_of(4 * 1024)).await?;
    assert_eq!(small, Some(200));
    // Four times the 16 KiB limit: 431, and the client gets to read it.
    let big = raw_status(front, &request_with_header_of(64 * 1024)).await?;
    assert_eq!(big, Some(431), "a 64 KiB head on a 16 KiB limit");

    // HTTP/2: a header list a little over the limit is answered 431 (the stream is then
    // refused, the connection lives on) ...
    let h2 = H2::connect(front).await?;
    let mut req = h2_request(Method::GET, "app.example.org", "/ok", body::empty());
    req.headers_mut()
        .insert("x-big", "a".repeat(20 * 1024).parse()?);
    let reply = h2.request(req).await?;
    assert_eq!(reply.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(
        h2.get("app.example.org", "/ok").await?.status,
        StatusCode::OK
    );
    // ... and one far over it closes the connection as abuse (ENHANCE_YOUR_CALM).
    let mut req = h2_request(Method::GET, "app.example.org", "/ok", body::empty());
    req.headers_mut()
        .insert("x-big", "a".repeat(64 * 1024).parse()?);
    let refused = h2
        .request(req)
        .await
        .expect_err("a 64 KiB header list is refused");
    let reason = refused
        .chain()
        .find_map(|e| e.downcast_ref::<h2::Error>())
        .and_then(h2::Error::reason);
    assert_eq!(reason, Some(h2::Reason::ENHANCE_YOUR_CALM), "{refused:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smallest_max_header_size_is_enforced() -> Result<()> {
    // 8 KiB is the smallest limit Legate accepts (smaller ones are config errors, see
    // `a_max_header_size_below_8_kib_is_a_config_error`); a 24 KiB head must be refused.
    let proxy = start(closed_port())?;

    let within = raw_status(proxy.addr("tight"), &request_with_header_of(1024)).await?;
    assert_eq!(within, Some(200));
    let over = raw_status(proxy.addr("tight"), &request_with_header_of(24 * 1024)).await?;
    assert_eq!(over, Some(431), "a 24 KiB head on an 8 KiB limit");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_target_over_max_uri_length_is_414() -> Result<()> {
    let proxy = start(closed_port())?;
    let get = |addr, path: String| async move {
        let request =
            format!("GET {path} HTTP/1.1\r\nhost: app.example.org\r\nconnection: close\r\n\r\n");
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .context("the proxy neither answered nor closed")??;
        anyhow::Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    // `front` has the default limit, 8 KiB, and a 16 KiB head: the head fits, the target
    // does not.
    let path = |len: usize| format!("/ok?{}", "q".repeat(len - 4));
    let answer = get(proxy.addr("front"), path(8192)).await?;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let answer = get(proxy.addr("front"), path(8193)).await?;
    assert!(answer.starts_with("HTTP/1.1 414 "), "{answer}");
    assert!(answer.contains("legate-error: uri-too-long"), "{answer}");

    // `tight` sets 1 KiB.
    let answer = get(proxy.addr("tight"), path(1024)).await?;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let answer = get(proxy.addr("tight"), path(1025)).await?;
    assert!(answer.starts_with("HTTP/1.1 414 "), "{answer}");

    // HTTP/2: `:path` counts, with the scheme and authority.
    let h2 = H2::connect(proxy.addr("front")).await?;
    let within = h2_request(Method::GET, "app.example.org", &path(1000), body::empty());
    assert_eq!(h2.request(within).await?.status, StatusCode::OK);
    let over = h2_request(Method::GET, "app.example.org", &path(8193), body::empty());
    let reply = h2.request(over).await?;
    assert_eq!(reply.status, StatusCode::URI_TOO_LONG);
    assert_eq!(reply.legate_error(), Some("uri-too-long"));
    Ok(())
}

#[test]
fn a_max_header_size_below_8_kib_is_a_config_error() {
    let config = ERRORS
        .replace("max_header_size: 8192", "max_header_size: 2048")
        .replace("${APP}", "127.0.0.1:9");
    let errors = legate::config::parse(&config).expect_err("2 KiB is below the minimum");
    let text = errors.to_string();
    assert!(
        text.contains("listeners[1].http.max_header_size: must be at least 8192 bytes (got 2048)"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_settings_advertise_max_concurrent_streams() -> Result<()> {
    let proxy = start(closed_port())?;
    let tcp = TcpStream::connect(proxy.addr("front")).await?;
    let (client, connection) = h2::client::handshake(tcp).await?;
    tokio::spawn(connection);

    // A full exchange guarantees the server's SETTINGS have been received and applied.
    let mut client = client.ready().await?;
    let req = Request::get("http://app.example.org/ok").body(())?;
    let (response, _) = client.send_request(req, true)?;
    let response = response.await?;
    assert_eq!(response.status(), StatusCode::OK);

    assert_eq!(client.current_max_send_streams(), 7);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_to_an_http2_cluster_is_400_bad_request() -> Result<()> {
    let app = Upstream::builder("h2").http2_only().start().await?;
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
        routes: [{ match: { prefix: / }, cluster: h2 }]
clusters:
  - { name: h2, protocol: http2, endpoints: ["${APP}"] }
"#,
        )
        .set("APP", app.addr()),
    )?;
    let mut req = client::request(Method::GET, "ws.example.org", "/chat");
    req.headers_mut().insert("connection", "upgrade".parse()?);
    req.headers_mut().insert("upgrade", "websocket".parse()?);

    let reply = client::Http1::connect(proxy.addr("front"))
        .await?
        .request(req)
        .await?;

    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.legate_error(), Some("bad-request"));
    assert_eq!(app.requests(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_request_without_host_is_400_missing_host() -> Result<()> {
    // Even with a catch-all virtual host, an HTTP/1.1 request must name its host
    // (RFC 9112 §3.2); Legate has a `missing-host` answer for it.
    let app = Upstream::echo("app").await?;
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
        routes: [{ match: { prefix: / }, cluster: app }]
clusters:
  - { name: app, endpoints: ["${APP}"] }
"#,
        )
        .set("APP", app.addr()),
    )?;
    let mut stream = TcpStream::connect(proxy.addr("front")).await?;
    stream
        .write_all(b"GET /no-host HTTP/1.1\r\nconnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await??;
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();

    assert!(answer.starts_with("http/1.1 400"), "{answer}");
    assert!(answer.contains("legate-error: missing-host"), "{answer}");
    assert_eq!(
        app.requests(),
        0,
        "the request was forwarded without a Host"
    );
    Ok(())
}

/// RFC 9110/9112/9113: a request whose host could route it one way while the upstream reads
/// another is refused with 400 and never forwarded; an absolute-form target's authority wins
/// over Host; a fully qualified name (trailing dot) is the same host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_that_could_mislead_routing_are_refused() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let proxy = start(app.addr())?;
    let front = proxy.addr("front");
    let refused: [(&[u8], &str); 4] = [
        (
            b"GET /app HTTP/1.1\r\nhost: app.example.org\r\nhost: other.example.org\r\nconnection: close\r\n\r\n",
            "two Host headers",
        ),
        (
            b"GET /app HTTP/1.1\r\nhost: app.example.org evil\r\nconnection: close\r\n\r\n",
            "a space in the host",
        ),
        (
            b"GET /app HTTP/1.1\r\nhost: user@app.example.org\r\nconnection: close\r\n\r\n",
            "userinfo in the host",
        ),
        (
            b"GET /app HTTP/1.1\r\nhost: app.example.org\x01\r\nconnection: close\r\n\r\n",
            "a control byte in the host",
        ),
    ];
    for (request, why) in refused {
        assert_eq!(raw_status(front, request).await?, Some(400), "{why}");
    }

    // HTTP/2: `:authority` and a `host` header that disagree.
    let tcp = TcpStream::connect(front).await?;
    let (mut send, conn) = h2::client::handshake(tcp).await?;
    tokio::spawn(conn);
    let req = Request::get("http://app.example.org/app")
        .header("host", "other.example.org")
        .body(())?;
    let (resp, _) = send.send_request(req, true)?;
    assert_eq!(resp.await?.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.requests(), 0, "a refused request reached the upstream");

    // Absolute form: the target's authority routes, and the upstream sees it as Host.
    let answer = raw_status(
        front,
        b"GET http://app.example.org/app HTTP/1.1\r\nhost: other.example.org\r\nconnection: close\r\n\r\n",
    )
    .await?;
    assert_eq!(answer, Some(200));
    let seen = app.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("host"), Some("app.example.org"));

    // A trailing dot names the same host.
    let dotted = client::get(front, "app.example.org.", "/ok").await?;
    assert_eq!(dotted.status, StatusCode::OK);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_never_completes_the_handshake_is_502_connect_timeout() -> Result<()> {
    // A listener whose accept queue is full and never drained: the kernel drops further
    // SYNs, so a connect to it neither succeeds nor fails until the cluster's 500ms
    // connect_timeout gives up.
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind("127.0.0.1:0".parse()?)?;
    let full = socket.listen(0)?;
    let addr = full.local_addr()?;
    let mut queued = Vec::new();
    while queued.len() < 8 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => queued.push(stream),
            _ => break,
        }
    }
    let proxy =
        Proxy::start(yaml(&ERRORS.replace("timeout: 200ms", "timeout: 5s")).set("APP", addr))?;
    let reply = client::get(proxy.addr("front"), "app.example.org", "/app").await?;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert_eq!(reply.legate_error(), Some("connect-timeout"));
    drop(full);
    Ok(())
}

//! Headers Legate manages as a proxy: hop-by-hop headers stop at each hop, `x-forwarded-*`
//! describe the client, every request carries an `x-request-id`, HTTP/2 cookie fields are
//! joined for HTTP/1.1, and a response framed two ways leaves framed one way.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Result;
use http::header::{CONNECTION, CONTENT_LENGTH, COOKIE, TE, TRAILER, UPGRADE};
use http::Method;
use legate_integration::body;
use legate_integration::client::{h2_request, request, Http1, H2};
use legate_integration::proxy::{yaml, Proxy};
use legate_integration::upstream::Upstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const ONE_CLUSTER: &str = r#"
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
"#;

fn proxy_to(app: &Upstream) -> Result<Proxy> {
    Proxy::start(yaml(ONE_CLUSTER).set("APP", app.addr()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_do_not_reach_the_upstream() -> Result<()> {
    let app = Upstream::builder("app").http1_only().start().await?;
    let proxy = proxy_to(&app)?;
    let mut client = Http1::connect(proxy.addr("front")).await?;

    let mut req = request(Method::GET, "app.example.org", "/");
    let h = req.headers_mut();
    h.insert(CONNECTION, "keep-alive, x-hop-secret".parse()?);
    h.insert("x-hop-secret", "only for the proxy".parse()?);
    h.insert("keep-alive", "timeout=5".parse()?);
    h.insert("proxy-connection", "keep-alive".parse()?);
    h.insert("proxy-authorization", "Basic cHJveHk6c2VjcmV0".parse()?);
    h.insert(TE, "trailers, deflate".parse()?);
    h.insert(TRAILER, "x-checksum".parse()?);
    h.insert(UPGRADE, "h2c".parse()?);
    h.insert("x-end-to-end", "kept".parse()?);
    let echo = client.request(req).await?.echo()?;

    for gone in [
        "x-hop-secret",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "trailer",
        "upgrade",
    ] {
        assert!(
            !echo.has_header(gone),
            "{gone} reached the upstream: {echo:?}"
        );
    }
    let connection = echo.header_all("connection");
    assert!(
        connection.iter().all(|v| !v.contains("x-hop-secret")),
        "the client's Connection header was forwarded: {connection:?}"
    );
    // `te: trailers` is the one TE value that is end to end.
    assert_eq!(echo.header_all("te"), ["trailers"]);
    assert_eq!(echo.header("x-end-to-end"), Some("kept"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_describe_the_client() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let proxy = proxy_to(&app)?;
    let mut client = Http1::connect(proxy.addr("front")).await?;

    let first = client.get("app.example.org", "/").await?.echo()?;
    assert_eq!(first.header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(first.header("x-forwarded-proto"), Some("http"));

    let mut req = request(Method::GET, "app.example.org", "/");
    req.headers_mut()
        .insert("x-forwarded-for", "203.0.113.7".parse()?);
    // A client cannot claim it came over TLS.
    req.headers_mut()
        .insert("x-forwarded-proto", "https".parse()?);
    let chained = client.request(req).await?.echo()?;
    assert_eq!(
        chained.header_all("x-forwarded-for"),
        ["203.0.113.7, 127.0.0.1"]
    );
    assert_eq!(chained.header_all("x-forwarded-proto"), ["http"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_kept_when_sent_and_generated_when_not() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let proxy = proxy_to(&app)?;
    let mut client = Http1::connect(proxy.addr("front")).await?;

    let mut req = request(Method::GET, "app.example.org", "/");
    req.headers_mut()
        .insert("x-request-id", "client-chosen-id-42".parse()?);
    let kept = client.request(req).await?.echo()?;
    assert_eq!(kept.header_all("x-request-id"), ["client-chosen-id-42"]);

    let a = client.get("app.example.org", "/").await?.echo()?;
    let b = client.get("app.example.org", "/").await?.echo()?;
    let (a, b) = (
        a.header("x-request-id").unwrap_or_default().to_owned(),
        b.header("x-request-id").unwrap_or_default().to_owned(),
    );
    for id in [&a, &b] {
        assert_eq!(id.len(), 36, "a UUID-shaped id, got {id:?}");
        let dashes: Vec<usize> = id.match_indices('-').map(|(i, _)| i).collect();
        assert_eq!(dashes, [8, 13, 18, 23], "{id}");
        assert!(
            id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()),
            "{id}"
        );
    }
    assert_ne!(a, b, "every request gets its own id");

    // The same over HTTP/2.
    let h2 = H2::connect(proxy.addr("front")).await?;
    let generated = h2
        .request(h2_request(
            Method::GET,
            "app.example.org",
            "/",
            body::empty(),
        ))
        .await?
        .echo()?;
    assert_eq!(generated.header("x-request-id").map(str::len), Some(36));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_keeps_every_earlier_hop_from_repeated_headers() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let proxy = proxy_to(&app)?;

    // Two header lines are one comma-separated list (RFC 9110 §5.3).
    let mut req = request(Method::GET, "app.example.org", "/");
    req.headers_mut()
        .append("x-forwarded-for", "198.51.100.1".parse()?);
    req.headers_mut()
        .append("x-forwarded-for", "203.0.113.9".parse()?);
    let echo = Http1::connect(proxy.addr("front"))
        .await?
        .request(req)
        .await?
        .echo()?;

    let chain = echo.header_all("x-forwarded-for").join(", ");
    assert_eq!(chain, "198.51.100.1, 203.0.113.9, 127.0.0.1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_do_not_reach_the_client() -> Result<()> {
    let app = Upstream::builder("app").http1_only().start().await?;
    let proxy = proxy_to(&app)?;

    let reply = Http1::connect(proxy.addr("front"))
        .await?
        .get("app.example.org", "/hop-by-hop")
        .await?;

    assert_eq!(reply.text(), "hop");
    for gone in ["x-upstream-hop", "keep-alive", "proxy-authenticate"] {
        assert_eq!(reply.header(gone), None, "{gone} reached the client");
    }
    assert!(
        reply
            .headers
            .get_all("connection")
            .iter()
            .all(|v| !v.as_bytes().eq_ignore_ascii_case(b"x-upstream-hop")),
        "{:?}",
        reply.headers
    );
    assert_eq!(reply.header("x-end-to-end"), Some("kept"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_an_http2_client_sends_one_by_one_reach_an_http1_upstream_as_one_field(
) -> Result<()> {
    let app = Upstream::builder("app").http1_only().start().await?;
    let proxy = proxy_to(&app)?;
    let h2 = H2::connect(proxy.addr("front")).await?;
    let mut req = h2_request(Method::GET, "app.example.org", "/", body::empty());
    for crumb in ["session=8e03", "theme=dark", "lang=en"] {
        req.headers_mut().append(COOKIE, crumb.parse()?);
    }
    let echo = h2.request(req).await?.echo()?;
    assert_eq!(
        echo.header_all("cookie"),
        ["session=8e03; theme=dark; lang=en"]
    );
    // An HTTP/1.1 client's own fields are passed on as they came.
    let mut req = request(Method::GET, "app.example.org", "/");
    req.headers_mut().append(COOKIE, "session=8e03".parse()?);
    let echo = Http1::connect(proxy.addr("front"))
        .await?
        .request(req)
        .await?
        .echo()?;
    assert_eq!(echo.header_all("cookie"), ["session=8e03"]);
    Ok(())
}

/// An upstream that answers every request with both `Content-Length: 100` and
/// `Transfer-Encoding: chunked` around a 5-byte chunked body, counting connections.
async fn double_framed_upstream() -> Result<(SocketAddr, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\
                            transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    Ok((addr, connections))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_framed_both_ways_reaches_the_client_framed_one_way() -> Result<()> {
    let (app, connections) = double_framed_upstream().await?;
    let proxy = Proxy::start(yaml(ONE_CLUSTER).set("APP", app))?;
    let mut client = Http1::connect(proxy.addr("front")).await?;
    for i in 0..2 {
        let reply = client.get("app.example.org", "/").await?;
        assert_eq!(reply.status, 200, "request {i}");
        assert_eq!(reply.text(), "hello", "request {i}");
        assert_eq!(
            reply.headers.get(CONTENT_LENGTH),
            None,
            "request {i}: the upstream's content-length does not describe the body"
        );
    }
    // The upstream connection that sent it is not used again.
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    let h2 = H2::connect(proxy.addr("front")).await?;
    let reply = h2.get("app.example.org", "/").await?;
    assert_eq!(reply.text(), "hello");
    Ok(())
}

//! Headers Legate manages as a proxy: hop-by-hop headers stop at each hop, `x-forwarded-*`
//! describe the client, and every request carries an `x-request-id`.

use anyhow::Result;
use http::header::{CONNECTION, TE, TRAILER, UPGRADE};
use http::Method;
use legate_integration::body;
use legate_integration::client::{h2_request, request, Http1, H2};
use legate_integration::proxy::{yaml, Proxy};
use legate_integration::upstream::Upstream;

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

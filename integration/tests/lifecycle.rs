//! Lifecycle of an in-process Legate: graceful drain with requests in flight, the drain
//! deadline, hot config swaps and reloads from a file, and closing idle or silent clients.

use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use http::StatusCode;
use legate_integration::client::{self, Http1, H2};
use legate_integration::eventually;
use legate_integration::proxy::{yaml, Proxy};
use legate_integration::upstream::Upstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Route `/` → cluster `app` at `${APP}`, on two workers.
const ONE_CLUSTER: &str = r#"
admin: { listen: 127.0.0.1:0 }
runtime: { workers: 2, drain_timeout: 5s }
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

async fn refused(addr: std::net::SocketAddr) -> Result<()> {
    match TcpStream::connect(addr).await {
        Ok(_) => anyhow::bail!("{addr} still accepts connections"),
        Err(_) => Ok(()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_an_in_flight_http1_request_then_refuses_connections() -> Result<()> {
    let slow = Upstream::builder("slow")
        .delay(Duration::from_millis(1000))
        .start()
        .await?;
    let mut proxy = Proxy::start(yaml(ONE_CLUSTER).set("APP", slow.addr()))?;
    let (front, admin) = (proxy.addr("front"), proxy.admin());
    let mut client = Http1::connect(front).await?;
    let in_flight = tokio::spawn(async move { client.get("app.example.org", "/slow").await });
    slow.wait_requests(1).await?;

    let app = proxy.take();
    let (clean, during) = tokio::join!(app.shutdown(Duration::from_secs(5)), async {
        // While the request is in flight: not ready, and no new connections.
        let ready = client::get(admin, "admin", "/ready").await?;
        ensure!(
            ready.status == StatusCode::SERVICE_UNAVAILABLE,
            "/ready said {}",
            ready.status
        );
        eventually(Duration::from_secs(2), || refused(front)).await?;
        ensure!(
            !in_flight.is_finished(),
            "the slow request ended before the checks"
        );
        in_flight.await?
    });

    let reply = during?;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the in-flight request completes"
    );
    assert_eq!(reply.echo()?.upstream, "slow");
    assert_eq!(
        reply.header("connection"),
        Some("close"),
        "a draining HTTP/1.1 connection announces its close"
    );
    assert!(clean, "everything drained within the timeout");
    refused(front).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_an_in_flight_http2_request() -> Result<()> {
    let slow = Upstream::builder("slow")
        .delay(Duration::from_millis(700))
        .start()
        .await?;
    let mut proxy = Proxy::start(yaml(ONE_CLUSTER).set("APP", slow.addr()))?;
    let front = proxy.addr("front");
    let h2 = H2::connect(front).await?;
    let in_flight = {
        let h2 = h2.clone();
        tokio::spawn(async move { h2.get("app.example.org", "/slow").await })
    };
    slow.wait_requests(1).await?;

    let clean = proxy.shutdown(Duration::from_secs(5)).await;

    let reply = in_flight.await??;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(clean);
    assert!(
        h2.get("app.example.org", "/after").await.is_err(),
        "the drained connection takes no new streams"
    );
    refused(front).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_on_requests_that_outlive_the_drain_timeout() -> Result<()> {
    let stuck = Upstream::builder("stuck")
        .delay(Duration::from_secs(10))
        .start()
        .await?;
    let mut proxy = Proxy::start(yaml(ONE_CLUSTER).set("APP", stuck.addr()))?;
    let mut client = Http1::connect(proxy.addr("front")).await?;
    let in_flight = tokio::spawn(async move { client.get("app.example.org", "/").await });
    stuck.wait_requests(1).await?;

    // The request would take 10 s; the 300 ms drain timeout cuts it.
    let clean = tokio::time::timeout(
        Duration::from_secs(5),
        proxy.shutdown(Duration::from_millis(300)),
    )
    .await
    .context("shutdown waited past its drain timeout")?;

    assert!(!clean, "shutdown reports that a request was cut off");
    let cut = tokio::time::timeout(Duration::from_secs(3), in_flight)
        .await
        .context("the cut-off request never ended")??;
    assert!(cut.is_err(), "the client saw its connection close: {cut:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_a_config_reroutes_new_requests_while_in_flight_ones_finish() -> Result<()> {
    let old = Upstream::builder("old")
        .delay(Duration::from_millis(600))
        .start()
        .await?;
    let new = Upstream::echo("new").await?;
    let proxy = Proxy::start(yaml(ONE_CLUSTER).set("APP", old.addr()))?;
    let front = proxy.addr("front");
    let admin = proxy.admin();
    let mut slow_client = Http1::connect(front).await?;
    let in_flight = tokio::spawn(async move { slow_client.get("app.example.org", "/").await });
    old.wait_requests(1).await?;

    let version = proxy.apply(yaml(ONE_CLUSTER).set("APP", new.addr()))?;
    ensure!(
        !in_flight.is_finished(),
        "the slow request ended before the swap"
    );

    // The listener kept its port, and new requests go to the new upstream at once.
    assert_eq!(proxy.addr("front"), front);
    let after = client::get(front, "app.example.org", "/").await?;
    assert_eq!(after.echo()?.upstream, "new");
    let config = client::get(admin, "admin", "/config").await?.json()?;
    assert_eq!(config["version"], version.as_str());
    // The request that started on the old config finishes there.
    let reply = in_flight.await??;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.echo()?.upstream, "old");
    assert_eq!(old.requests(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_file_applies_good_files_and_keeps_the_old_config_on_bad_ones() -> Result<()> {
    let a = Upstream::echo("a").await?;
    let b = Upstream::echo("b").await?;
    let proxy = Proxy::start(yaml(ONE_CLUSTER).set("APP", a.addr()))?;
    let front = proxy.addr("front");
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("legate.yaml");

    // A config with a typo is rejected as a whole; the running config stays.
    let bad = ONE_CLUSTER.replace("cluster: app", "cluster: ap");
    std::fs::write(&path, yaml(&bad).set("APP", b.addr()).text()?)?;
    let error = proxy
        .app()
        .reload_file(&path)
        .err()
        .context("a bad file must be rejected")?;
    assert!(
        error.to_string().contains("unknown cluster \"ap\""),
        "{error}"
    );
    assert_eq!(client::get(front, "x", "/").await?.echo()?.upstream, "a");
    let config = client::get(proxy.admin(), "admin", "/config")
        .await?
        .json()?;
    let last = &config["last_reload"];
    assert!(
        last["error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown cluster")),
        "{last}"
    );
    assert!(last["version"].is_null(), "{last}");

    let good = yaml(ONE_CLUSTER).set("APP", b.addr());
    std::fs::write(&path, good.text()?)?;
    let version = proxy.app().reload_file(&path)?;
    assert_eq!(version, legate::config::version_of(good.text()?));
    assert_eq!(client::get(front, "x", "/").await?.echo()?.upstream, "b");
    let config = client::get(proxy.admin(), "admin", "/config")
        .await?
        .json()?;
    assert_eq!(config["version"], version.as_str());
    assert_eq!(config["last_reload"]["version"], version.as_str());
    assert!(config["last_reload"]["error"].is_null());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_connections_are_closed_after_idle_timeout() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let proxy = Proxy::start(
        yaml(&ONE_CLUSTER.replace(
            "http: { route_table: main }",
            "http: { route_table: main, idle_timeout: 400ms }",
        ))
        .set("APP", app.addr()),
    )?;
    let mut client = Http1::connect(proxy.addr("front")).await?;
    assert_eq!(client.get("x", "/").await?.status, StatusCode::OK);
    assert!(!client.is_closed());

    eventually(Duration::from_secs(3), || async {
        ensure!(client.is_closed(), "the idle connection is still open");
        Ok(())
    })
    .await?;
    Ok(())
}

/// An HTTP/2 client that keeps pinging but opens no stream is idle: its PING frames move
/// bytes, yet the connection is closed after `idle_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_close_even_while_the_client_pings() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let proxy = Proxy::start(
        yaml(&ONE_CLUSTER.replace(
            "http: { route_table: main }",
            "http: { route_table: main, idle_timeout: 400ms }",
        ))
        .set("APP", app.addr()),
    )?;
    let tcp = TcpStream::connect(proxy.addr("front")).await?;
    let (mut send, mut conn) = h2::client::handshake(tcp).await?;
    let mut ping_pong = conn.ping_pong().context("ping_pong is available once")?;
    let driver = tokio::spawn(conn);
    let req = http::Request::get("http://x/").body(())?;
    let (resp, _) = send.send_request(req, true)?;
    assert_eq!(resp.await?.status(), StatusCode::OK);

    // Ping every 50 ms, eight times an idle timeout: the server must close the connection
    // (its GOAWAY ends the pings) well before the pinging stops.
    let mut pongs = 0;
    for _ in 0..64 {
        if ping_pong.ping(h2::Ping::opaque()).await.is_err() {
            break;
        }
        pongs += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(pongs < 64, "pings kept an idle HTTP/2 connection open");
    let ended = tokio::time::timeout(Duration::from_secs(5), driver).await;
    ensure!(ended.is_ok(), "the connection did not end");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_finishes_its_head_is_disconnected() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let proxy = Proxy::start(
        yaml(&ONE_CLUSTER.replace(
            "http: { route_table: main }",
            "http: { route_table: main, header_read_timeout: 300ms }",
        ))
        .set("APP", app.addr()),
    )?;
    let mut stream = TcpStream::connect(proxy.addr("front")).await?;
    stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await?;

    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut answer))
        .await
        .context("the proxy kept a silent client connected")?;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        read.is_err() || !text.starts_with("HTTP/1.1 200"),
        "got {text:?}"
    );
    assert_eq!(app.requests(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_requests_are_not_cut_by_the_idle_timeout() -> Result<()> {
    let slow = Upstream::builder("slow")
        .delay(Duration::from_millis(1200))
        .start()
        .await?;
    let proxy = Proxy::start(
        yaml(&ONE_CLUSTER.replace(
            "http: { route_table: main }",
            "http: { route_table: main, idle_timeout: 400ms }",
        ))
        .set("APP", slow.addr()),
    )?;

    // Three idle periods pass while the upstream thinks; the connection is busy, not idle.
    let reply = client::get(proxy.addr("front"), "x", "/").await?;

    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.echo()?.upstream, "slow");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_without_waiting_for_the_timeout() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let mut proxy = Proxy::start(yaml(ONE_CLUSTER).set("APP", app.addr()))?;
    let front = proxy.addr("front");
    // An HTTP/1.1 keep-alive connection and an HTTP/2 connection, both idle after a request,
    // and a client that connected but never sent a byte.
    let mut h1 = Http1::connect(front).await?;
    assert_eq!(h1.get("x", "/").await?.status, StatusCode::OK);
    let h2 = H2::connect(front).await?;
    assert_eq!(h2.get("x", "/").await?.status, StatusCode::OK);
    let mut silent = TcpStream::connect(front).await?;

    // Had it waited for the idle connections, the 5 s deadline would have cut them and
    // the shutdown would not be clean.
    let clean = proxy.shutdown(Duration::from_secs(5)).await;
    assert!(clean, "idle connections count as drained");
    eventually(Duration::from_secs(1), || async {
        ensure!(h1.is_closed(), "the idle HTTP/1.1 connection is still open");
        Ok(())
    })
    .await?;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(1), silent.read(&mut buf))
        .await
        .context("the silent connection was left open")?;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_a_config_adds_and_removes_listeners() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let proxy = Proxy::start(yaml(ONE_CLUSTER).set("APP", app.addr()))?;
    let front = proxy.addr("front");

    let two_listeners = ONE_CLUSTER.replace(
        "  - { name: front, listen: 127.0.0.1:0, http: { route_table: main } }",
        "  - { name: front, listen: 127.0.0.1:0, http: { route_table: main } }\n  \
         - { name: extra, listen: 127.0.0.1:0, http: { route_table: main } }",
    );
    proxy.apply(yaml(&two_listeners).set("APP", app.addr()))?;
    let extra = proxy.addr("extra");
    assert_eq!(
        proxy.addr("front"),
        front,
        "an unchanged listener keeps its socket"
    );
    assert_eq!(client::get(extra, "x", "/").await?.status, StatusCode::OK);
    assert_eq!(client::get(front, "x", "/").await?.status, StatusCode::OK);

    let only_extra = ONE_CLUSTER.replace("name: front", "name: extra");
    proxy.apply(yaml(&only_extra).set("APP", app.addr()))?;
    assert_eq!(proxy.addr("extra"), extra);
    assert!(proxy.app().listener_addr("front").is_none());
    eventually(Duration::from_secs(2), || refused(front)).await?;
    assert_eq!(client::get(extra, "x", "/").await?.status, StatusCode::OK);
    Ok(())
}

/// Reads `name{listener="front"}` from the admin's `/metrics`.
async fn front_metric(admin: std::net::SocketAddr, name: &str) -> Result<u64> {
    let text = client::get(admin, "admin", "/metrics").await?.text();
    let prefix = format!("{name}{{listener=\"front\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .with_context(|| format!("no {prefix} in:\n{text}"))?
        .parse()
        .context("a metric value")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_connections_are_closed_at_accept_and_counted() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let config = yaml(ONE_CLUSTER).set("APP", app.addr()).text()?.replace(
        "{ name: front, listen: 127.0.0.1:0,",
        "{ name: front, listen: 127.0.0.1:0, max_connections: 2,",
    );
    let proxy = Proxy::start(yaml(&config))?;
    let front = proxy.addr("front");
    // Two connections, each proven open by an answer (so both are counted).
    let mut first = Http1::connect(front).await?;
    assert_eq!(
        first.get("app.example.org", "/").await?.status,
        StatusCode::OK
    );
    let mut second = Http1::connect(front).await?;
    assert_eq!(
        second.get("app.example.org", "/").await?.status,
        StatusCode::OK
    );

    // A third is accepted and closed at once, with nothing read or answered.
    let mut third = TcpStream::connect(front).await?;
    let _ = third
        .write_all(b"GET / HTTP/1.1\r\nhost: app.example.org\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut answer))
        .await
        .context("the third connection is closed")?;
    assert!(
        answer.is_empty(),
        "no answer over the limit, got {:?} ({read:?})",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(
        front_metric(proxy.admin(), "legate_downstream_connections_refused_total").await?,
        1
    );
    // The two open ones are unaffected.
    assert_eq!(
        first.get("app.example.org", "/").await?.status,
        StatusCode::OK
    );

    // Once one closes, a new connection is served again.
    drop(second);
    eventually(Duration::from_secs(5), || async {
        Http1::connect(front)
            .await?
            .get("app.example.org", "/")
            .await
            .map(|r| r.status)
    })
    .await?;
    Ok(())
}

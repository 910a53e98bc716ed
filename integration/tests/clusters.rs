//! Upstream clusters end to end: active health checks (an upstream killed and restarted on
//! its port), depooling by reload, outlier ejection and its end, circuit-breaker overflow, DNS
//! endpoints, zone-aware routing and failover, the balancers over real requests (hashing on
//! a header, a cookie and the client IP), slow start,
//! and `/ready` waiting for the first health-check round. State is read from `GET /clusters`.
//!
//! The depooling test runs the binary; it needs `cargo build -p legate --bin legate` first.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use legate_integration::body::{self, Body};
use legate_integration::client::{self, Http1};
use legate_integration::dns::NameServer;
use legate_integration::eventually;
use legate_integration::process::Legate;
use legate_integration::proxy::{yaml, Proxy, Yaml};
use legate_integration::upstream::Upstream;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

const HOST: &str = "app.example.org";

/// Everything but the clusters: one listener whose route `/` goes to cluster `app`, retrying
/// connect failures once (so requests in a failure-detection window still succeed).
const HEAD: &str = r#"
admin: { listen: 127.0.0.1:0 }
access_log: { enabled: false }
runtime: { workers: 2 }
listeners:
  - { name: front, listen: 127.0.0.1:0, http: { route_table: main } }
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes:
"#;

const APP_ROUTE: &str = r#"
          - match: { prefix: / }
            cluster: app
            timeout: 10s
            retry: { attempts: 2, on: [connect-failure] }
"#;

/// A config whose only route leads to cluster `app`; `clusters` is the YAML list of clusters.
fn config(clusters: &str) -> Yaml {
    config_with("", "", clusters)
}

/// `top` goes before everything (e.g. `node:`), `routes` before the route to `app`.
fn config_with(top: &str, routes: &str, clusters: &str) -> Yaml {
    yaml(&config_text(top, routes, clusters))
}

fn config_text(top: &str, routes: &str, clusters: &str) -> String {
    let mut text = String::from(top);
    text.push_str(HEAD);
    text.push_str(routes);
    text.push_str(APP_ROUTE);
    text.push_str("clusters:\n");
    text.push_str(clusters);
    text
}

/// Health checks fast enough for tests: every 100 ms, two failures to go down, one success
/// to come back.
const FAST_CHECKS: &str = "{ http: { path: /healthz }, interval: 100ms, timeout: 100ms, \
                           jitter: 0s, unhealthy_threshold: 2, healthy_threshold: 1 }";

// === /clusters ===

async fn clusters_json(admin: SocketAddr) -> Result<Value> {
    let reply = client::get(admin, "admin", "/clusters").await?;
    ensure!(
        reply.status == StatusCode::OK,
        "/clusters said {}",
        reply.status
    );
    reply.json()
}

fn find_cluster<'a>(json: &'a Value, name: &str) -> Result<&'a Value> {
    json["clusters"]
        .as_array()
        .context("/clusters has a clusters list")?
        .iter()
        .find(|c| c["name"] == name)
        .with_context(|| format!("no cluster {name:?} in {json}"))
}

fn find_endpoint(cluster: &Value, addr: SocketAddr) -> Result<&Value> {
    cluster["endpoints"]
        .as_array()
        .context("a cluster has an endpoints list")?
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .with_context(|| format!("no endpoint {addr} in {cluster}"))
}

/// The `/clusters` cluster entry named `cluster`.
async fn cluster_status(admin: SocketAddr, cluster: &str) -> Result<Value> {
    Ok(find_cluster(&clusters_json(admin).await?, cluster)?.clone())
}

/// The `/clusters` entry of endpoint `addr` in `cluster`.
async fn endpoint_status(admin: SocketAddr, cluster: &str, addr: SocketAddr) -> Result<Value> {
    let json = clusters_json(admin).await?;
    Ok(find_endpoint(find_cluster(&json, cluster)?, addr)?.clone())
}

/// Waits until `/clusters` shows endpoint `addr` of cluster `app` with this health.
async fn wait_health(admin: SocketAddr, addr: SocketAddr, health: &str) -> Result<()> {
    eventually(Duration::from_secs(5), || async move {
        let e = endpoint_status(admin, "app", addr).await?;
        ensure!(
            e["health"] == health,
            "{addr} is {} rather than {health}: {e}",
            e["health"]
        );
        Ok(())
    })
    .await
}

fn count(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("expected a count, got {v}"))
}

// === requests ===

/// Who answered a series of requests, and what failed.
#[derive(Debug, Default)]
struct Tally {
    by: BTreeMap<String, usize>,
    failures: Vec<String>,
}

impl Tally {
    fn of(&self, upstream: &str) -> usize {
        self.by.get(upstream).copied().unwrap_or(0)
    }

    fn add(&mut self, other: Tally) {
        for (k, v) in other.by {
            *self.by.entry(k).or_default() += v;
        }
        self.failures.extend(other.failures);
    }
}

/// `n` GETs one after another on `client`, tallied by the answering upstream's name.
async fn send(client: &mut Http1, n: usize, path: &str) -> Result<Tally> {
    let mut tally = Tally::default();
    for _ in 0..n {
        tally_one(&mut tally, client.get(HOST, path).await?);
    }
    Ok(tally)
}

fn tally_one(tally: &mut Tally, reply: client::Reply) {
    if reply.status == StatusCode::OK {
        let name = reply.upstream().unwrap_or("<no x-upstream>").to_owned();
        *tally.by.entry(name).or_default() += 1;
    } else {
        tally.failures.push(format!(
            "{} {:?} from {:?}",
            reply.status,
            reply.legate_error(),
            reply.upstream()
        ));
    }
}

// === a restartable upstream ===

/// A minimal HTTP/1.1 upstream bound to a chosen address, so an upstream can be restarted on
/// the port of one that was stopped. It answers `x-upstream: NAME`; `/healthz` waits until
/// the gate is open. Stops (listener and connections) when dropped.
struct FixedServer {
    /// Requests other than `/healthz`.
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FixedServer {
    async fn start(
        addr: SocketAddr,
        name: &'static str,
        gate: watch::Receiver<bool>,
    ) -> Result<FixedServer> {
        // The stopped upstream's listener closes when its task is dropped, just after abort.
        let listener = eventually(Duration::from_secs(5), || async move {
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr} again"))
        })
        .await?;
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let gate = gate.clone();
                        let counter = counter.clone();
                        conns.spawn(async move {
                            let service = service_fn(move |req: Request<Incoming>| {
                                let mut gate = gate.clone();
                                let counter = counter.clone();
                                async move {
                                    if req.uri().path() == "/healthz" {
                                        let _ = gate.wait_for(|open| *open).await;
                                    } else {
                                        counter.fetch_add(1, Ordering::SeqCst);
                                    }
                                    let mut resp: Response<Body> = Response::new(body::full(name));
                                    resp.headers_mut()
                                        .insert("x-upstream", HeaderValue::from_static(name));
                                    Ok::<_, Infallible>(resp)
                                }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(FixedServer { requests, task })
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for FixedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A gate that is open from the start.
fn open_gate() -> watch::Receiver<bool> {
    watch::channel(true).1
}

// === 1. active health checks ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_upstream_turns_unhealthy_gets_nothing_and_returns_when_restarted() -> Result<()> {
    let a = Upstream::echo("a").await?;
    let b = Upstream::echo("b").await?;
    let a_addr = a.addr();
    // round_robin makes "retry on the other endpoint" exact with two endpoints; the random
    // balancers' retry pick is covered by retries.rs.
    let proxy = Proxy::start(
        config(
            r#"
  - name: app
    lb: round_robin
    health_check: ${CHECKS}
    endpoints: ["${A}", "${B}"]
"#,
        )
        .set("CHECKS", FAST_CHECKS)
        .set("A", a_addr)
        .set("B", b.addr()),
    )?;
    let admin = proxy.admin();
    wait_health(admin, a_addr, "healthy").await?;
    wait_health(admin, b.addr(), "healthy").await?;
    let mut client = Http1::connect(proxy.addr("front")).await?;
    let mut all = Tally::default();

    let before = send(&mut client, 20, "/").await?;
    assert!(before.of("a") > 0 && before.of("b") > 0, "{before:?}");
    all.add(before);

    // Kill `a`; keep sending until the health check has marked it down.
    drop(a);
    let started = Instant::now();
    loop {
        all.add(send(&mut client, 1, "/").await?);
        if endpoint_status(admin, "app", a_addr).await?["health"] == "unhealthy" {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(5),
            "{a_addr} still not unhealthy: {}",
            clusters_json(admin).await?
        );
    }
    let down = endpoint_status(admin, "app", a_addr).await?;
    let after = send(&mut client, 40, "/").await?;
    assert_eq!(
        after.of("b"),
        40,
        "only b serves while a is down: {after:?}"
    );
    let still_down = endpoint_status(admin, "app", a_addr).await?;
    assert_eq!(still_down["health"], "unhealthy");
    assert_eq!(
        count(&still_down["total_requests"]),
        count(&down["total_requests"]),
        "no request was even tried on the unhealthy endpoint: {down} then {still_down}"
    );
    all.add(after);

    // Restart an upstream on the same address: healthy again, and it gets traffic again.
    let a2 = FixedServer::start(a_addr, "a-again", open_gate()).await?;
    wait_health(admin, a_addr, "healthy").await?;
    let mut back = Tally::default();
    for _ in 0..20 {
        back.add(send(&mut client, 1, "/").await?);
        if a2.requests() > 0 {
            break;
        }
    }
    assert!(
        a2.requests() > 0,
        "the restarted upstream got nothing: {back:?}"
    );
    assert!(back.of("a-again") > 0, "{back:?}");
    all.add(back);

    assert!(
        all.failures.is_empty(),
        "every request succeeds, including in the detection window: {:?}",
        all.failures
    );
    Ok(())
}

// === 2. depooling by reload ===

const BINARY_CLUSTER: &str = r#"
  - name: app
    lb: round_robin
    endpoints:
      - { address: "${A}", pooled: ${A_POOLED} }
      - { address: "${B}", pooled: ${B_POOLED} }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_depools_an_endpoint_whose_in_flight_request_still_completes() -> Result<()> {
    let a = Upstream::echo("a").await?;
    let b = Upstream::echo("b").await?;
    let template = |a_pooled: bool, b_pooled: bool| {
        // The binary's admin port must be known before it starts: the harness fills ${ADMIN}.
        let text = config_text("", "", BINARY_CLUSTER).replace(
            "admin: { listen: 127.0.0.1:0 }",
            "admin: { listen: \"${ADMIN}\" }",
        );
        yaml(&text)
            .set("A", a.addr())
            .set("B", b.addr())
            .set("A_POOLED", a_pooled)
            .set("B_POOLED", b_pooled)
    };
    // Only `b` takes traffic at first, so the slow request lands there.
    let legate = Legate::start(template(false, true)).await?;
    let front = legate.addr("front");
    let mut slow_client = Http1::connect(front).await?;
    let in_flight = tokio::spawn(async move { slow_client.get(HOST, "/delay/1000").await });
    b.wait_requests(1).await?;

    legate.write_config(template(true, false))?;
    legate.signal("HUP").await?;
    legate.wait_stderr("config reloaded").await?;

    let cluster = cluster_status(legate.admin(), "app").await?;
    let depooled = find_endpoint(&cluster, b.addr())?;
    assert_eq!(depooled["pooled"], false, "{cluster}");
    assert_eq!(
        depooled["active_requests"], 1,
        "its request is still in flight: {cluster}"
    );

    let mut client = Http1::connect(front).await?;
    let after = send(&mut client, 20, "/").await?;
    assert_eq!(
        after.of("a"),
        20,
        "new requests avoid the depooled endpoint: {after:?}"
    );
    assert!(
        !in_flight.is_finished(),
        "the slow request ended before the new ones were checked"
    );

    let reply = in_flight.await??;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the in-flight request completes"
    );
    assert_eq!(reply.echo()?.upstream, "b");
    assert_eq!(b.requests(), 1, "the depooled endpoint got nothing new");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_depool_keeps_health_and_lets_the_in_flight_request_finish() -> Result<()> {
    let a = Upstream::echo("a").await?;
    let b = Upstream::echo("b").await?;
    let cluster = |b_pooled: bool| {
        config(
            r#"
  - name: app
    lb: round_robin
    health_check: ${CHECKS}
    endpoints:
      - "${A}"
      - { address: "${B}", pooled: ${B_POOLED} }
"#,
        )
        .set("CHECKS", FAST_CHECKS)
        .set("A", a.addr())
        .set("B", b.addr())
        .set("B_POOLED", b_pooled)
    };
    let proxy = Proxy::start(cluster(true))?;
    let admin = proxy.admin();
    wait_health(admin, a.addr(), "healthy").await?;
    wait_health(admin, b.addr(), "healthy").await?;
    let front = proxy.addr("front");

    // Send slow requests until one is in flight on `b` (round robin: within two).
    let mut pending = Vec::new();
    for _ in 0..4 {
        let mut c = Http1::connect(front).await?;
        pending.push(tokio::spawn(
            async move { c.get(HOST, "/delay/1000").await },
        ));
        // Both upstreams record a request when it has been read, before the delay.
        eventually(Duration::from_secs(2), || async {
            let arrived = [&a, &b]
                .iter()
                .flat_map(|u| u.seen())
                .filter(|e| e.path.starts_with("/delay"))
                .count();
            ensure!(
                arrived == pending.len(),
                "{arrived} of {} arrived",
                pending.len()
            );
            Ok(())
        })
        .await?;
        if b.seen().iter().any(|e| e.path.starts_with("/delay")) {
            break;
        }
    }
    ensure!(
        b.seen().iter().any(|e| e.path.starts_with("/delay")),
        "no slow request reached b"
    );

    proxy.apply(cluster(false))?;

    // Health survives the reload: nothing is re-checked from scratch.
    let status = cluster_status(admin, "app").await?;
    assert_eq!(
        find_endpoint(&status, a.addr())?["health"],
        "healthy",
        "{status}"
    );
    assert_eq!(
        find_endpoint(&status, b.addr())?["health"],
        "healthy",
        "{status}"
    );
    assert_eq!(
        find_endpoint(&status, b.addr())?["pooled"],
        false,
        "{status}"
    );

    let mut client = Http1::connect(front).await?;
    let after = send(&mut client, 20, "/").await?;
    assert_eq!(after.of("a"), 20, "{after:?}");
    for p in pending {
        let reply = p.await??;
        assert_eq!(reply.status, StatusCode::OK, "in-flight requests complete");
    }
    let b_proxied = b.seen().iter().filter(|e| e.path != "/healthz").count();
    assert_eq!(b_proxied, 1, "b got only its one slow request");
    Ok(())
}

// === 3. outlier detection ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoint_is_ejected_then_returns_after_base_ejection() -> Result<()> {
    let bad = Upstream::builder("bad").status(500).start().await?;
    let good1 = Upstream::echo("good1").await?;
    let good2 = Upstream::echo("good2").await?;
    let proxy = Proxy::start(
        config(
            r#"
  - name: app
    outlier_detection: { consecutive_failures: 3, base_ejection: 1s, max_ejection: 10s, max_ejected_percent: 50 }
    endpoints: ["${BAD}", "${G1}", "${G2}"]
"#,
        )
        .set("BAD", bad.addr())
        .set("G1", good1.addr())
        .set("G2", good2.addr()),
    )?;
    let admin = proxy.admin();
    let mut client = Http1::connect(proxy.addr("front")).await?;

    // Requests until `bad` has answered 500 three times in a row (no good answer resets its
    // count: only its own answers do).
    for _ in 0..200 {
        if bad.requests() >= 3 {
            break;
        }
        client.get(HOST, "/").await?;
    }
    ensure!(
        bad.requests() >= 3,
        "bad got only {} requests",
        bad.requests()
    );
    let ejected = endpoint_status(admin, "app", bad.addr()).await?;
    assert!(
        ejected["ejected_until"].is_string(),
        "ejected after 3 failures: {ejected}"
    );
    assert_eq!(ejected["ejections"], 1, "{ejected}");
    assert_eq!(ejected["ejection_multiplier"], 1, "{ejected}");
    let seen_at = Instant::now();

    // While ejected (1s), every request goes to the others.
    let bad_before = bad.requests();
    let mut during = Tally::default();
    while during.by.values().sum::<usize>() < 30 && seen_at.elapsed() < Duration::from_millis(700) {
        during.add(send(&mut client, 1, "/").await?);
    }
    assert!(
        during.by.values().sum::<usize>() >= 5,
        "too few requests in the window: {during:?}"
    );
    assert_eq!(
        bad.requests(),
        bad_before,
        "nothing reaches the ejected endpoint: {during:?}"
    );
    assert!(during.failures.is_empty(), "{during:?}");
    assert_eq!(during.of("bad"), 0);

    // After base_ejection it is back and gets requests again.
    eventually(Duration::from_secs(5), || async {
        let e = endpoint_status(admin, "app", bad.addr()).await?;
        ensure!(e["ejected_until"].is_null(), "still ejected: {e}");
        Ok(())
    })
    .await?;
    for _ in 0..100 {
        if bad.requests() > bad_before {
            break;
        }
        client.get(HOST, "/").await?;
    }
    assert!(
        bad.requests() > bad_before,
        "the endpoint gets requests again once its ejection ends"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_ejected_endpoint_frees_its_share_of_the_ejection_budget() -> Result<()> {
    // Three endpoints at 50%: one may be ejected at a time.
    let bad1 = Upstream::builder("bad1").status(500).start().await?;
    let bad2 = Upstream::builder("bad2").status(500).start().await?;
    let good1 = Upstream::echo("good1").await?;
    let good2 = Upstream::echo("good2").await?;
    let cluster = |bad: SocketAddr| {
        config(
            r#"
  - name: app
    outlier_detection: { consecutive_failures: 3, base_ejection: 30s, max_ejection: 60s, max_ejected_percent: 50 }
    endpoints: ["${BAD}", "${G1}", "${G2}"]
"#,
        )
        .set("BAD", bad)
        .set("G1", good1.addr())
        .set("G2", good2.addr())
    };
    let proxy = Proxy::start(cluster(bad1.addr()))?;
    let admin = proxy.admin();
    let mut client = Http1::connect(proxy.addr("front")).await?;
    for _ in 0..200 {
        if bad1.requests() >= 3 {
            break;
        }
        client.get(HOST, "/").await?;
    }
    let e = endpoint_status(admin, "app", bad1.addr()).await?;
    ensure!(e["ejected_until"].is_string(), "bad1 is ejected: {e}");

    // Replace the ejected endpoint by another failing one: the budget is free again.
    proxy.apply(cluster(bad2.addr()))?;
    for _ in 0..200 {
        if bad2.requests() >= 4 {
            break;
        }
        client.get(HOST, "/").await?;
    }
    ensure!(
        bad2.requests() >= 3,
        "bad2 got only {} requests",
        bad2.requests()
    );
    let e = endpoint_status(admin, "app", bad2.addr()).await?;
    assert!(
        e["ejected_until"].is_string(),
        "bad2 failed {} times in a row but was not ejected, although no endpoint of the \
         cluster is ejected any more: {}",
        bad2.requests(),
        cluster_status(admin, "app").await?
    );
    Ok(())
}

// === 4. circuit breakers ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_overflow_answers_503_at_once_without_queueing() -> Result<()> {
    let held = Upstream::builder("held").hold().start().await?;
    let proxy = Proxy::start(
        config(
            r#"
  - name: app
    circuit_breakers: { max_requests: 2 }
    endpoints: ["${A}"]
"#,
        )
        .set("A", held.addr()),
    )?;
    let front = proxy.addr("front");
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(Http1::connect(front).await?);
    }
    let mut tasks = JoinSet::new();
    for mut c in clients {
        tasks.spawn(async move { c.get(HOST, "/").await });
    }
    // Two requests fit and are held by the upstream. The other three are answered while
    // those two are still held: an overflow does not queue for a free slot.
    held.wait_requests(2).await?;
    for _ in 0..3 {
        let reply = tasks.join_next().await.context("a reply")???;
        assert_eq!(
            (reply.status, reply.legate_error()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("overflow")),
            "{}",
            reply.text()
        );
    }
    assert_eq!(
        held.requests(),
        2,
        "overflowed requests never reach the upstream"
    );
    held.open_gate();
    held.open_gate();
    while let Some(joined) = tasks.join_next().await {
        assert_eq!(joined??.status, StatusCode::OK);
    }
    let status = cluster_status(proxy.admin(), "app").await?;
    assert!(count(&status["overflows"]) >= 3, "{status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_a_second_upstream_connection_and_reuses_the_first() -> Result<()> {
    let held = Upstream::builder("held").hold().start().await?;
    let proxy = Proxy::start(
        config(
            r#"
  - name: app
    circuit_breakers: { max_connections: 1 }
    endpoints: ["${A}"]
"#,
        )
        .set("A", held.addr()),
    )?;
    let front = proxy.addr("front");
    let mut first = Http1::connect(front).await?;
    let in_flight = tokio::spawn(async move {
        let reply = first.get(HOST, "/").await;
        (first, reply)
    });
    held.wait_requests(1).await?;

    // The one connection allowed is busy: a second request would need another one.
    let second = client::get(front, HOST, "/").await?;
    assert_eq!(
        second.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        second.text()
    );
    assert_eq!(second.legate_error(), Some("overflow"));
    let status = cluster_status(proxy.admin(), "app").await?;
    assert_eq!(count(&status["connections"]), 1, "{status}");
    assert!(count(&status["overflows"]) >= 1, "{status}");

    held.open_gate();
    let (mut first, reply) = in_flight.await?;
    assert_eq!(reply?.status, StatusCode::OK);
    // The same client connection stays on its worker, whose pooled connection is free again.
    held.open_gate();
    let again = first.get(HOST, "/").await?;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(
        held.requests(),
        2,
        "the overflowed request never reached the upstream"
    );
    assert_eq!(held.connections(), 1, "one upstream connection served both");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_pending_refuses_a_request_while_another_waits_for_its_connection() -> Result<()> {
    // A listener whose accept queue is full: a connect to it hangs until connect_timeout.
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind("127.0.0.1:0".parse()?)?;
    let full = socket.listen(0)?;
    let addr = full.local_addr()?;
    let mut queued = Vec::new();
    while queued.len() < 8 {
        match tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(stream)) => queued.push(stream),
            _ => break,
        }
    }
    let proxy = Proxy::start(
        config(
            r#"
  - name: app
    connect_timeout: 1s
    circuit_breakers: { max_pending: 1 }
    endpoints: ["${A}"]
"#,
        )
        .set("A", addr),
    )?;
    let front = proxy.addr("front");
    let admin = proxy.admin();
    let waiting = tokio::spawn(async move { client::get(front, HOST, "/").await });
    eventually(Duration::from_secs(2), || async {
        let c = cluster_status(admin, "app").await?;
        ensure!(
            count(&c["pending"]) == 1,
            "no request is connecting yet: {c}"
        );
        Ok(())
    })
    .await?;

    let refused = client::get(front, HOST, "/").await?;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.text()
    );
    assert_eq!(refused.legate_error(), Some("overflow"));
    assert!(
        !waiting.is_finished(),
        "the refusal came while the first request was still connecting"
    );
    let first = waiting.await??;
    assert_eq!(first.status, StatusCode::BAD_GATEWAY, "{}", first.text());
    assert_eq!(first.legate_error(), Some("connect-timeout"));
    drop(full);
    Ok(())
}

// === 5. DNS endpoints ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_names_resolve_and_an_unresolvable_one_is_reported_and_holds_ready() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let port = app.addr().port();
    let broken_route = r#"
          - match: { prefix: /broken/ }
            cluster: broken
"#;
    let named = r#"
  - name: app
    endpoints: ["localhost:${PORT}"]
"#;
    let broken = r#"
  - name: broken
    dns_refresh: 30s
    warmup_timeout: 1h
    endpoints: ["no-such-host.invalid:80"]
"#;
    let with_broken = config_with("", broken_route, &format!("{named}{broken}")).set("PORT", port);
    let proxy = Proxy::start(with_broken)?;
    let admin = proxy.admin();

    // `localhost` resolves; the upstream listens on 127.0.0.1 only, so that is the address
    // that must be there (and, with the retry on connect failure, requests succeed even if
    // the name also resolved to ::1).
    let local = SocketAddr::from(([127, 0, 0, 1], port));
    let endpoint = eventually(Duration::from_secs(5), || async {
        endpoint_status(admin, "app", local).await
    })
    .await?;
    assert_eq!(endpoint["hostname"], "localhost", "{endpoint}");
    let app_cluster = cluster_status(admin, "app").await?;
    assert!(app_cluster["dns_error"].is_null(), "{app_cluster}");
    let mut client = Http1::connect(proxy.addr("front")).await?;
    let replies = send(&mut client, 5, "/").await?;
    assert_eq!(replies.of("app"), 5, "{replies:?}");

    // The name that does not resolve: reported, no endpoint, and /ready held at 503.
    let broken_status = eventually(Duration::from_secs(8), || async {
        let c = cluster_status(admin, "broken").await?;
        ensure!(c["dns_error"].is_string(), "no DNS error yet: {c}");
        Ok(c)
    })
    .await?;
    let error = broken_status["dns_error"].as_str().unwrap();
    assert!(error.contains("no-such-host.invalid"), "{error}");
    assert_eq!(
        broken_status["endpoints"],
        serde_json::json!([]),
        "{broken_status}"
    );
    let reply = client.get(HOST, "/broken/x").await?;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.legate_error(), Some("no-endpoint"));
    let ready = client::get(admin, "admin", "/ready").await?;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a cluster without DNS answers keeps /ready at 503: {}",
        ready.text()
    );

    // Without that cluster, the proxy becomes ready.
    proxy.apply(config(named).set("PORT", port))?;
    eventually(Duration::from_secs(5), || async {
        let ready = client::get(admin, "admin", "/ready").await?;
        ensure!(
            ready.status == StatusCode::OK,
            "/ready said {}",
            ready.status
        );
        Ok(())
    })
    .await?;
    Ok(())
}

/// Clusters `app` (warm at once) and `cold`, whose name `db.legate.test:5432` is asked of
/// `dns` with this `dns.timeout`; `cold` has `warmup_timeout: 300ms`.
fn cold_cluster_config(app: &Upstream, dns: &NameServer, dns_timeout: &str, port: u16) -> Yaml {
    let clusters = r#"
  - name: app
    endpoints: ["${APP}"]
  - name: cold
    warmup_timeout: 300ms
    endpoints: ["db.legate.test:${PORT}"]
"#;
    let top = r#"dns: { servers: ["${DNS}"], timeout: ${TIMEOUT} }"#;
    config_with(top, "", clusters)
        .set("APP", app.addr())
        .set("DNS", dns.addr())
        .set("TIMEOUT", dns_timeout)
        .set("PORT", port)
}

/// Waits for `/ready` to answer 200 and returns the answer.
async fn ready_reply(admin: SocketAddr) -> Result<client::Reply> {
    eventually(Duration::from_secs(10), || async {
        let ready = client::get(admin, "admin", "/ready").await?;
        ensure!(
            ready.status == StatusCode::OK,
            "/ready said {}",
            ready.text()
        );
        Ok(ready)
    })
    .await
}

/// A name that never resolves holds `/ready` only for its cluster's `warmup_timeout`; then
/// the proxy turns ready, and `/ready` and `/clusters` say which cluster is not warm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolvable_name_stops_holding_ready_after_warmup_timeout() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let dns = NameServer::start().await?;
    dns.fail();
    let proxy = Proxy::start(cold_cluster_config(&app, &dns, "1s", 5432))?;
    let admin = proxy.admin();
    let ready = ready_reply(admin).await?;
    assert_eq!(ready.text(), "ready; not warmed: cold\n");
    assert!(dns.queries() > 0, "the name was asked for");
    let cold = cluster_status(admin, "cold").await?;
    assert_eq!(cold["warmed"], false, "{cold}");
    assert!(cold["dns_error"].is_string(), "{cold}");
    assert_eq!(cluster_status(admin, "app").await?["warmed"], true);
    let reply = client::get(proxy.addr("front"), HOST, "/").await?;
    assert_eq!(reply.status, StatusCode::OK, "the warm cluster serves");

    // Once the name resolves, the cluster is warm and `/ready` names nothing.
    dns.answer("db.legate.test", &[IpAddr::from([127, 0, 0, 1])]);
    proxy.apply(cold_cluster_config(&app, &dns, "1s", app.addr().port()))?;
    eventually(Duration::from_secs(5), || async {
        let ready = client::get(admin, "admin", "/ready").await?;
        ensure!(ready.text() == "ready\n", "/ready said {}", ready.text());
        Ok(())
    })
    .await?;
    assert_eq!(cluster_status(admin, "cold").await?["warmed"], true);
    Ok(())
}

/// A name server that never answers does not stretch the warm-up: `/ready` turns 200 at
/// `warmup_timeout`, while the lookup still waits for its (long) `dns.timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_name_server_does_not_stretch_the_warmup() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let dns = NameServer::start().await?;
    dns.silence();
    let proxy = Proxy::start(cold_cluster_config(&app, &dns, "1h", 5432))?;
    let ready = ready_reply(proxy.admin()).await?;
    assert_eq!(ready.text(), "ready; not warmed: cold\n");
    assert!(dns.queries() > 0, "the lookup is out");
    Ok(())
}

/// A TCP echo server on 127.0.0.1; returns its port.
async fn tcp_echo() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(port)
}

/// Sends a line on an open session and reads it back.
async fn echo(session: &mut TcpStream, line: &str) -> Result<()> {
    session.write_all(line.as_bytes()).await?;
    let mut back = vec![0; line.len()];
    tokio::time::timeout(Duration::from_secs(5), session.read_exact(&mut back))
        .await
        .context("no echo within 5 s")??;
    ensure!(
        back == line.as_bytes(),
        "echoed {:?}",
        String::from_utf8_lossy(&back)
    );
    Ok(())
}

/// The endpoint addresses `/clusters` lists for `cluster`, and its `dns_error`.
async fn dns_view(admin: SocketAddr, cluster: &str) -> Result<(Vec<String>, Value)> {
    let c = cluster_status(admin, cluster).await?;
    let addresses = c["endpoints"]
        .as_array()
        .context("a cluster has an endpoints list")?
        .iter()
        .map(|e| e["address"].as_str().unwrap_or_default().to_owned())
        .collect();
    Ok((addresses, c["dns_error"].clone()))
}

/// A name is asked again every `dns_refresh`. While its server fails, the last good address
/// stays pooled: live sessions carry on and new ones open. When the answer no longer holds
/// the address, its endpoint drains and the listener's `drain_timeout` closes its sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_refresh_keeps_the_last_good_set_on_failure_and_drains_an_address_that_vanishes(
) -> Result<()> {
    const NAME: &str = "db.legate.test";
    let port = tcp_echo().await?;
    let dns = NameServer::start().await?;
    dns.answer(NAME, &[IpAddr::from([127, 0, 0, 1])]);
    let proxy = Proxy::start(
        yaml(
            r#"
admin: { listen: 127.0.0.1:0 }
access_log: { enabled: false }
runtime: { workers: 2 }
dns: { servers: ["${DNS}"], timeout: 1s }
listeners:
  - { name: db, listen: 127.0.0.1:0, tcp: { cluster: db, drain_timeout: 200ms } }
clusters:
  - { name: db, dns_refresh: 100ms, endpoints: ["db.legate.test:${PORT}"] }
"#,
        )
        .set("DNS", dns.addr())
        .set("PORT", port),
    )?;
    proxy.wait_ready().await?;
    let admin = proxy.admin();
    let local = SocketAddr::from(([127, 0, 0, 1], port)).to_string();
    let (addresses, error) = dns_view(admin, "db").await?;
    assert_eq!(
        addresses,
        std::slice::from_ref(&local),
        "resolved before ready"
    );
    assert!(error.is_null(), "{error}");
    let mut first = TcpStream::connect(proxy.addr("db")).await?;
    echo(&mut first, "one\n").await?;

    // The server fails: the failure is reported, the address stays, sessions open and flow.
    dns.fail();
    let error = eventually(Duration::from_secs(5), || async {
        let (addresses, error) = dns_view(admin, "db").await?;
        ensure!(error.is_string(), "no DNS error yet: {addresses:?}");
        Ok((addresses, error))
    })
    .await?;
    assert_eq!(
        error.0,
        std::slice::from_ref(&local),
        "the last good set stays: {}",
        error.1
    );
    assert!(error.1.as_str().unwrap().contains(NAME), "{}", error.1);
    let asked = dns.queries();
    eventually(Duration::from_secs(5), || async {
        ensure!(
            dns.queries() > asked,
            "no refresh since the failure was seen"
        );
        Ok(())
    })
    .await?;
    let (addresses, _) = dns_view(admin, "db").await?;
    assert_eq!(
        addresses,
        std::slice::from_ref(&local),
        "still kept after another failed round"
    );
    let mut second = TcpStream::connect(proxy.addr("db")).await?;
    echo(&mut second, "two\n").await?;
    echo(&mut first, "three\n").await?;

    // The name moves to another address: the old endpoint leaves, and the sessions it
    // carried are closed once its drain times out.
    let moved = SocketAddr::from((Ipv6Addr::LOCALHOST, port)).to_string();
    dns.answer(NAME, &[IpAddr::from(Ipv6Addr::LOCALHOST)]);
    eventually(Duration::from_secs(5), || async {
        let (addresses, error) = dns_view(admin, "db").await?;
        ensure!(addresses == [moved.clone()], "endpoints are {addresses:?}");
        ensure!(error.is_null(), "the error stays after an answer: {error}");
        Ok(())
    })
    .await?;
    for (name, mut session) in [("first", first), ("second", second)] {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(10), session.read(&mut buf))
            .await
            .with_context(|| format!("the {name} session was not closed by the drain"))?;
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "the {name} session read {read:?}"
        );
    }
    Ok(())
}

// === 6. zones ===

async fn zone_failover(panic_threshold: &str) -> Result<()> {
    let a1 = Upstream::echo("a1").await?;
    let a2 = Upstream::echo("a2").await?;
    let b1 = Upstream::echo("b1").await?;
    let (a1_addr, a2_addr) = (a1.addr(), a2.addr());
    let proxy = Proxy::start(
        config_with(
            "node: { zone: a }\n",
            "",
            r#"
  - name: app
    health_check: ${CHECKS}
    ${PANIC}
    endpoints:
      - { address: "${A1}", zone: a }
      - { address: "${A2}", zone: a }
      - { address: "${B1}", zone: b }
"#,
        )
        .set("CHECKS", FAST_CHECKS)
        .set("PANIC", panic_threshold)
        .set("A1", a1_addr)
        .set("A2", a2_addr)
        .set("B1", b1.addr()),
    )?;
    let admin = proxy.admin();
    for addr in [a1_addr, a2_addr, b1.addr()] {
        wait_health(admin, addr, "healthy").await?;
    }
    let mut client = Http1::connect(proxy.addr("front")).await?;

    // All healthy: everything stays in zone a.
    let local = send(&mut client, 40, "/").await?;
    assert_eq!(local.of("a1") + local.of("a2"), 40, "{local:?}");
    assert_eq!(cluster_status(admin, "app").await?["local_zone_share"], 1.0);

    // Half of zone a down: 0.5 × 1.4 = 70% stays local, the rest spills to zone b.
    drop(a1);
    wait_health(admin, a1_addr, "unhealthy").await?;
    let share = eventually(Duration::from_secs(2), || async {
        let c = cluster_status(admin, "app").await?;
        ensure!(c["local_zone_share"] == 0.7, "local_zone_share: {c}");
        Ok(c)
    })
    .await?;
    assert_eq!(share["panic"], false, "{share}");
    // 1,000 picks: 30% to zone b is 300 ± 15 (one standard deviation), so the bounds sit
    // four deviations out, while a balancer blind to zones would send 500 ± 16 there.
    let spill = send(&mut client, 1000, "/").await?;
    assert!(spill.failures.is_empty(), "{spill:?}");
    assert_eq!(spill.of("a1"), 0, "{spill:?}");
    assert!(
        (240..=360).contains(&spill.of("b1")),
        "30% spills to zone b: {spill:?}"
    );

    // All of zone a down: everything goes to zone b.
    drop(a2);
    wait_health(admin, a2_addr, "unhealthy").await?;
    let remote = send(&mut client, 40, "/").await?;
    assert_eq!(
        remote.of("b1"),
        40,
        "zone a is down, so zone b serves everything: {remote:?}; {}",
        cluster_status(admin, "app").await?
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_failover_spills_then_moves_everything_to_the_remote_zone() -> Result<()> {
    // Panic mode off: this is zone-aware routing alone.
    zone_failover("panic_threshold: 0").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_failover_with_the_default_panic_threshold() -> Result<()> {
    // One usable endpoint of three is below the default 50% panic threshold.
    zone_failover("").await
}

// === 7. balancers ===

// === 7. panic mode ===

/// `n` GETs, tallied by the upstream that answered, whatever the status.
async fn answered_by(client: &mut Http1, n: usize) -> Result<BTreeMap<String, usize>> {
    let mut by = BTreeMap::new();
    for _ in 0..n {
        let reply = client.get(HOST, "/").await?;
        let name = reply.upstream().unwrap_or("<no x-upstream>").to_owned();
        *by.entry(name).or_default() += 1;
    }
    Ok(by)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_healthy_endpoint_of_three_panics_and_traffic_spreads_over_all() -> Result<()> {
    let good = Upstream::echo("good").await?;
    let sick1 = Upstream::builder("sick1").status(503).start().await?;
    let sick2 = Upstream::builder("sick2").status(503).start().await?;
    let clusters = r#"
  - name: app
    lb: round_robin
    health_check: ${CHECKS}
    ${PANIC}
    endpoints: ["${GOOD}", "${SICK1}", "${SICK2}"]
"#;
    let with = |panic: &str| {
        config(clusters)
            .set("CHECKS", FAST_CHECKS)
            .set("PANIC", panic)
            .set("GOOD", good.addr())
            .set("SICK1", sick1.addr())
            .set("SICK2", sick2.addr())
    };
    let proxy = Proxy::start(with(""))?;
    let admin = proxy.admin();
    wait_health(admin, good.addr(), "healthy").await?;
    wait_health(admin, sick1.addr(), "unhealthy").await?;
    wait_health(admin, sick2.addr(), "unhealthy").await?;

    // 1 of 3 usable is under the default 50%: the health signal is distrusted and every
    // pooled endpoint takes its share.
    let status = cluster_status(admin, "app").await?;
    assert_eq!(status["panic"], true, "{status}");
    let mut client = Http1::connect(proxy.addr("front")).await?;
    let spread = answered_by(&mut client, 30).await?;
    for name in ["good", "sick1", "sick2"] {
        assert!(
            spread.get(name).copied().unwrap_or(0) >= 5,
            "in panic mode {name} takes its share: {spread:?}"
        );
    }

    // With panic mode off, only the healthy endpoint is used.
    proxy.apply(with("panic_threshold: 0"))?;
    let status = eventually(Duration::from_secs(2), || async {
        let c = cluster_status(admin, "app").await?;
        ensure!(c["panic"] == false, "still in panic: {c}");
        Ok(c)
    })
    .await?;
    let healthy_only = answered_by(&mut client, 30).await?;
    assert_eq!(
        healthy_only,
        BTreeMap::from([("good".to_owned(), 30)]),
        "{status}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_follows_weights() -> Result<()> {
    let light = Upstream::echo("light").await?;
    let heavy = Upstream::echo("heavy").await?;
    let proxy = Proxy::start(
        config(
            r#"
  - name: app
    lb: round_robin
    endpoints:
      - { address: "${L}", weight: 1 }
      - { address: "${H}", weight: 3 }
"#,
        )
        .set("L", light.addr())
        .set("H", heavy.addr()),
    )?;
    let mut client = Http1::connect(proxy.addr("front")).await?;
    let tally = send(&mut client, 400, "/").await?;
    assert!(tally.failures.is_empty(), "{tally:?}");
    assert!(
        (80..=120).contains(&tally.of("light")),
        "25% ± 5% for weight 1: {tally:?}"
    );
    assert!(
        (280..=320).contains(&tally.of("heavy")),
        "75% ± 5% for weight 3: {tally:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_on_a_header_keeps_each_user_on_one_upstream() -> Result<()> {
    let ups = [
        Upstream::echo("u1").await?,
        Upstream::echo("u2").await?,
        Upstream::echo("u3").await?,
    ];
    let proxy = Proxy::start(
        config(
            r#"
  - name: app
    lb: ring_hash
    hash_on: { header: x-user }
    endpoints: ["${U1}", "${U2}", "${U3}"]
"#,
        )
        .set("U1", ups[0].addr())
        .set("U2", ups[1].addr())
        .set("U3", ups[2].addr()),
    )?;
    let mut client = Http1::connect(proxy.addr("front")).await?;
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for round in 0..3 {
        for user in 0..20 {
            let user = format!("user-{user}");
            let mut req = client::request(http::Method::GET, HOST, "/");
            req.headers_mut().insert("x-user", user.parse()?);
            let reply = client.request(req).await?;
            assert_eq!(reply.status, StatusCode::OK);
            let upstream = reply.upstream().context("x-upstream")?.to_owned();
            if let Some(first) = owner.get(&user) {
                assert_eq!(*first, upstream, "{user} moved in round {round}");
            } else {
                owner.insert(user, upstream);
            }
        }
    }
    let distinct: std::collections::BTreeSet<_> = owner.values().collect();
    assert!(
        distinct.len() >= 2,
        "users spread over the upstreams: {owner:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_steers_new_requests_away_from_a_busy_endpoint() -> Result<()> {
    let slow = Upstream::builder("slow")
        .delay(Duration::from_secs(5))
        .start()
        .await?;
    let fast = Upstream::echo("fast").await?;
    let proxy = Proxy::start(
        config(
            r#"
  - name: app
    lb: least_request
    endpoints: ["${S}", "${F}"]
"#,
        )
        .set("S", slow.addr())
        .set("F", fast.addr()),
    )?;
    let front = proxy.addr("front");
    let mut stuck = Vec::new();

    // Sends one request and returns once it has either been answered (by `fast`) or reached
    // `slow`, where it stays in flight for 5s.
    let one = |stuck_now: usize| {
        let slow = &slow;
        async move {
            let mut req = tokio::spawn(async move { client::get(front, HOST, "/").await });
            tokio::select! {
                done = &mut req => {
                    let reply = done??;
                    ensure!(reply.upstream() == Some("fast"), "{reply:?}");
                    Ok::<_, anyhow::Error>(None)
                }
                arrived = slow.wait_requests(stuck_now + 1) => {
                    arrived?;
                    Ok(Some(req))
                }
            }
        }
    };
    // Make `slow` busy with two requests in flight.
    for _ in 0..50 {
        if stuck.len() == 2 {
            break;
        }
        if let Some(req) = one(stuck.len()).await? {
            stuck.push(req);
        }
    }
    ensure!(stuck.len() == 2, "slow never got two requests");

    // Power of two choices: two draws with replacement, the less busy wins; so the busy
    // endpoint gets a new request only when both draws pick it (1 in 4), against 1 in 2
    // without load awareness.
    let fast_before = fast.requests();
    let n = 200;
    for _ in 0..n {
        if let Some(req) = one(stuck.len()).await? {
            stuck.push(req);
        }
    }
    let to_fast = fast.requests() - fast_before;
    let to_slow = stuck.len() - 2;
    assert_eq!(to_fast + to_slow, n);
    assert!(
        to_fast >= n * 6 / 10,
        "the busy endpoint got {to_slow} of {n} new requests, the idle one {to_fast}"
    );
    for req in stuck {
        req.abort();
    }
    Ok(())
}

// === 8. slow start ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_an_endpoint_that_became_healthy() -> Result<()> {
    let a = Upstream::echo("a").await?;
    let proxy = Proxy::start(
        config(
            r#"
  - name: app
    slow_start: 5s
    health_check: ${CHECKS}
    endpoints: [{ address: "${A}", weight: 10 }]
"#,
        )
        .set("CHECKS", FAST_CHECKS)
        .set("A", a.addr()),
    )?;
    let admin = proxy.admin();
    let ramping = eventually(Duration::from_secs(3), || async {
        let e = endpoint_status(admin, "app", a.addr()).await?;
        ensure!(
            e["health"] == "healthy" && count(&e["effective_weight"]) < 10,
            "not ramping yet: {e}"
        );
        Ok(e)
    })
    .await?;
    assert_eq!(ramping["weight"], 10);
    assert!(count(&ramping["effective_weight"]) >= 1, "{ramping}");

    let reply = client::get(proxy.addr("front"), HOST, "/").await?;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "a ramping endpoint takes traffic"
    );

    let seen = std::cell::RefCell::new(vec![count(&ramping["effective_weight"])]);
    eventually(Duration::from_secs(8), || async {
        let e = endpoint_status(admin, "app", a.addr()).await?;
        let w = count(&e["effective_weight"]);
        let mut seen = seen.borrow_mut();
        if seen.last() != Some(&w) {
            seen.push(w);
        }
        ensure!(w == 10, "effective weight {w}: {e}");
        Ok(())
    })
    .await?;
    let seen = seen.into_inner();
    assert!(
        seen.windows(2).all(|p| p[0] <= p[1]),
        "the weight only grows: {seen:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_added_by_reload_ramps_while_serving_ones_keep_full_weight() -> Result<()> {
    let a = Upstream::echo("a").await?;
    let b = Upstream::echo("b").await?;
    let c = Upstream::echo("c").await?;
    let cluster = |extra: &str| {
        config(
            r#"
  - name: app
    slow_start: 2s
    endpoints:
      - { address: "${A}", weight: 10 }
      - { address: "${B}", weight: 10 }
      ${EXTRA}
"#,
        )
        .set("EXTRA", extra)
        .set("A", a.addr())
        .set("B", b.addr())
    };
    let proxy = Proxy::start(cluster(""))?;
    let admin = proxy.admin();
    let weights = || async {
        let status = cluster_status(admin, "app").await?;
        let weight =
            |addr| -> Result<u64> { Ok(count(&find_endpoint(&status, addr)?["effective_weight"])) };
        let w = (weight(a.addr())?, weight(b.addr())?, weight(c.addr()).ok());
        Ok::<_, anyhow::Error>((w, status))
    };
    // At start-up every endpoint ramps together; wait until that is over.
    eventually(Duration::from_secs(6), || async {
        let ((wa, wb, _), status) = weights().await?;
        ensure!((wa, wb) == (10, 10), "still ramping: {status}");
        Ok(())
    })
    .await?;

    // The reload adds `c`: it alone ramps; `a` and `b` were serving and stay at full weight.
    proxy.apply(cluster(&format!(
        "- {{ address: \"{}\", weight: 10 }}",
        c.addr()
    )))?;

    // No signal marks the cluster manager's first round after a reload: watch for a while.
    let mut c_ramping = false;
    let watch_until = Instant::now() + Duration::from_millis(800);
    while Instant::now() < watch_until {
        let ((wa, wb, wc), status) = weights().await?;
        assert_eq!(
            (wa, wb),
            (10, 10),
            "a reload restarted the slow start of endpoints that were serving: {status}"
        );
        c_ramping |= wc.is_some_and(|w| w < 10);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(c_ramping, "the new endpoint ramps up");
    Ok(())
}

// === 9. /ready waits for the first health-check round ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_the_first_health_check_round() -> Result<()> {
    let (open, gate) = watch::channel(false);
    // A port of our own: the health check of this upstream hangs until the gate opens.
    let addr = legate_integration::upstream::closed_port();
    let held = FixedServer::start(addr, "held", gate).await?;
    let proxy = Proxy::start(
        config(
            r#"
  - name: app
    health_check: { http: { path: /healthz }, interval: 5s, timeout: 4s }
    endpoints: ["${A}"]
"#,
        )
        .set("A", addr),
    )?;
    let admin = proxy.admin();

    let ready = client::get(admin, "admin", "/ready").await?;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.text()
    );
    let pending = endpoint_status(admin, "app", addr).await?;
    assert_eq!(pending["health"], "unknown", "{pending}");
    let reply = client::get(proxy.addr("front"), HOST, "/").await?;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "an endpoint gets traffic only after its first passing check"
    );
    assert_eq!(reply.legate_error(), Some("no-endpoint"));
    assert_eq!(held.requests(), 0);

    open.send(true)?;
    eventually(Duration::from_secs(3), || async {
        let ready = client::get(admin, "admin", "/ready").await?;
        ensure!(
            ready.status == StatusCode::OK,
            "/ready said {}",
            ready.status
        );
        Ok(())
    })
    .await?;
    assert_eq!(
        endpoint_status(admin, "app", addr).await?["health"],
        "healthy"
    );
    let reply = client::get(proxy.addr("front"), HOST, "/").await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.upstream(), Some("held"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maglev_on_a_cookie_and_ring_hash_on_the_client_ip_keep_their_clients_in_place(
) -> Result<()> {
    let ups = [
        Upstream::echo("u1").await?,
        Upstream::echo("u2").await?,
        Upstream::echo("u3").await?,
    ];
    let clusters = |lb: &str, hash_on: &str| {
        config(&format!(
            r#"
  - name: app
    lb: {lb}
    hash_on: {hash_on}
    endpoints: ["${{U1}}", "${{U2}}", "${{U3}}"]
"#
        ))
        .set("U1", ups[0].addr())
        .set("U2", ups[1].addr())
        .set("U3", ups[2].addr())
    };

    // Maglev on the `session` cookie: each session stays on one upstream, over new
    // connections, while the sessions spread; the other cookies do not count.
    let proxy = Proxy::start(clusters("maglev", "{ cookie: session }"))?;
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for round in 0..3 {
        let mut client = Http1::connect(proxy.addr("front")).await?;
        for session in 0..20 {
            let session = format!("s{session}");
            let mut req = client::request(http::Method::GET, HOST, "/");
            let cookie = format!("theme=t{round}; session={session}; lang=en");
            req.headers_mut().insert("cookie", cookie.parse()?);
            let reply = client.request(req).await?;
            assert_eq!(reply.status, StatusCode::OK);
            let upstream = reply.upstream().context("x-upstream")?.to_owned();
            match owner.get(&session) {
                Some(first) => assert_eq!(*first, upstream, "{session} moved in round {round}"),
                None => {
                    owner.insert(session, upstream);
                }
            }
        }
    }
    let distinct: std::collections::BTreeSet<_> = owner.values().collect();
    assert!(distinct.len() >= 2, "sessions spread: {owner:?}");
    drop(proxy);

    // Ring hash on the client IP: every connection from 127.0.0.1 lands on one upstream.
    let proxy = Proxy::start(clusters("ring_hash", "{ client_ip: true }"))?;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let reply = client::get(proxy.addr("front"), HOST, "/").await?;
        assert_eq!(reply.status, StatusCode::OK);
        seen.insert(reply.upstream().context("x-upstream")?.to_owned());
    }
    assert_eq!(seen.len(), 1, "one client, one upstream: {seen:?}");
    Ok(())
}

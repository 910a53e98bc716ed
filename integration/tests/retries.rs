//! Retries: which failures are tried again, on which endpoint, and the rule that a request
//! whose body has been sent is never sent twice.

use std::time::{Duration, Instant};

use anyhow::Result;
use http::{Method, StatusCode};
use legate_integration::body;
use legate_integration::client::{request, request_with_body, Http1};
use legate_integration::proxy::{yaml, Proxy};
use legate_integration::upstream::{closed_port, Upstream};

/// Route `/` → cluster `app` (balancer `${LB}`) with endpoints `${A}` and `${B}` and the retry
/// policy `${RETRY}`.
const TWO_ENDPOINTS: &str = r#"
admin: { listen: 127.0.0.1:0 }
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
            timeout: 5s
            retry: ${RETRY}
clusters:
  - { name: app, lb: ${LB}, endpoints: ["${A}", "${B}"], connect_timeout: 500ms }
"#;

/// Route `/` → cluster `app` with the single endpoint `${A}` and the retry policy `${RETRY}`.
const ONE_ENDPOINT: &str = r#"
admin: { listen: 127.0.0.1:0 }
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
            timeout: 5s
            retry: ${RETRY}
clusters:
  - { name: app, endpoints: ["${A}"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_retried_on_the_other_endpoint_with_every_balancer() -> Result<()> {
    // About half of the first tries go to the dead endpoint; each must be retried on the live
    // one. Enough requests that a retry landing on the dead endpoint again, even rarely, shows.
    let mut report = Vec::new();
    for lb in ["round_robin", "least_request", "random"] {
        let live = Upstream::echo("live").await?;
        let proxy = Proxy::start(
            yaml(TWO_ENDPOINTS)
                .set("LB", lb)
                .set("A", closed_port())
                .set("B", live.addr())
                .set("RETRY", "{ attempts: 2, on: [connect-failure] }"),
        )?;
        let mut client = Http1::connect(proxy.addr("front")).await?;
        let mut failed = Vec::new();
        for i in 0..200 {
            let reply = client.get("app.example.org", "/").await?;
            if reply.status != StatusCode::OK {
                failed.push((
                    i,
                    reply.status.as_u16(),
                    reply.legate_error().map(str::to_owned),
                ));
            }
        }
        if !failed.is_empty() {
            report.push(format!(
                "lb {lb}: {} of 200 requests failed, e.g. {:?}",
                failed.len(),
                &failed[..failed.len().min(3)]
            ));
        }
    }
    assert!(
        report.is_empty(),
        "retries must go to the live endpoint:\n{}",
        report.join("\n")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_503_is_retried_for_a_get() -> Result<()> {
    let bad = Upstream::builder("bad").status(503).start().await?;
    let good = Upstream::echo("good").await?;
    let proxy = Proxy::start(
        yaml(TWO_ENDPOINTS)
            .set("LB", "round_robin")
            .set("A", bad.addr())
            .set("B", good.addr())
            .set("RETRY", r#"{ attempts: 2, on: ["503"] }"#),
    )?;
    let mut client = Http1::connect(proxy.addr("front")).await?;

    for i in 0..6 {
        let reply = client.get("app.example.org", "/").await?;
        assert_eq!(reply.status, StatusCode::OK, "request {i}");
        assert_eq!(reply.echo()?.upstream, "good");
    }
    assert_eq!(good.requests(), 6);
    assert!(
        bad.requests() >= 1,
        "round robin tried the failing endpoint first at least once"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_with_a_body_is_never_retried_once_sent() -> Result<()> {
    let bad = Upstream::builder("bad").status(503).start().await?;
    let proxy = Proxy::start(
        yaml(ONE_ENDPOINT)
            .set("A", bad.addr())
            .set("RETRY", r#"{ attempts: 3, on: ["503", 5xx] }"#),
    )?;
    let mut client = Http1::connect(proxy.addr("front")).await?;

    let post = request_with_body(
        Method::POST,
        "app.example.org",
        "/orders",
        body::full("{\"pay\": 100}"),
    );
    let reply = client.request(post).await?;

    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        reply.legate_error(),
        None,
        "the upstream's own 503 is passed on"
    );
    assert_eq!(
        bad.requests(),
        1,
        "the POST reached the upstream exactly once"
    );
    assert_eq!(bad.seen()[0].body_len, 12);

    // The same route does retry a GET: three tries in all.
    let get = client.get("app.example.org", "/orders").await?;
    assert_eq!(get.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(bad.requests(), 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_gives_a_slow_try_another_chance() -> Result<()> {
    // Only the first request is slow; the second try answers at once.
    let flaky = Upstream::builder("flaky")
        .delay(Duration::from_secs(2))
        .delay_first(1)
        .start()
        .await?;
    let proxy = Proxy::start(yaml(ONE_ENDPOINT).set("A", flaky.addr()).set(
        "RETRY",
        "{ attempts: 2, on: [timeout], per_try_timeout: 150ms }",
    ))?;

    let started = Instant::now();
    let reply = Http1::connect(proxy.addr("front"))
        .await?
        .get("app.example.org", "/")
        .await?;
    let took = started.elapsed();

    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(flaky.requests(), 2);
    assert!(
        took < Duration::from_millis(1500),
        "the retry should not wait for the 2s try, took {took:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_on_every_try_is_504_per_try_timeout() -> Result<()> {
    let slow = Upstream::builder("slow")
        .delay(Duration::from_secs(2))
        .start()
        .await?;
    let proxy = Proxy::start(yaml(ONE_ENDPOINT).set("A", slow.addr()).set(
        "RETRY",
        "{ attempts: 2, on: [timeout], per_try_timeout: 100ms }",
    ))?;

    let started = Instant::now();
    let reply = Http1::connect(proxy.addr("front"))
        .await?
        .request(request(Method::GET, "app.example.org", "/"))
        .await?;
    let took = started.elapsed();

    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.legate_error(), Some("per-try-timeout"));
    assert_eq!(slow.requests(), 2);
    assert!(
        took < Duration::from_millis(1500),
        "two 100ms tries should not wait for the 2s upstream, took {took:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_before_the_response_is_retried_when_allowed() -> Result<()> {
    let rude = Upstream::builder("rude").close_after_head().start().await?;
    let good = Upstream::echo("good").await?;
    let proxy = Proxy::start(
        yaml(TWO_ENDPOINTS)
            .set("LB", "round_robin")
            .set("A", rude.addr())
            .set("B", good.addr())
            .set("RETRY", "{ attempts: 2, on: [reset] }"),
    )?;
    let mut client = Http1::connect(proxy.addr("front")).await?;

    for i in 0..6 {
        let reply = client.get("app.example.org", "/").await?;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "request {i}: {}",
            reply.text()
        );
    }
    assert!(rude.requests() >= 1, "the resetting endpoint was tried");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_retried_after_a_connect_failure_because_nothing_was_sent() -> Result<()> {
    let live = Upstream::echo("live").await?;
    let proxy = Proxy::start(
        yaml(TWO_ENDPOINTS)
            .set("LB", "round_robin")
            .set("A", closed_port())
            .set("B", live.addr())
            .set("RETRY", "{ attempts: 2, on: [connect-failure] }"),
    )?;
    let mut client = Http1::connect(proxy.addr("front")).await?;

    // Round robin alternates, so half of these first try the dead endpoint.
    for i in 0..6 {
        let post = request_with_body(
            Method::POST,
            "app.example.org",
            "/orders",
            body::full(vec![b'p'; 1000]),
        );
        let reply = client.request(post).await?;
        assert_eq!(reply.status, StatusCode::OK, "POST {i}: {}", reply.text());
        assert_eq!(reply.echo()?.body_len, 1000, "POST {i} arrived whole");
    }
    assert_eq!(live.requests(), 6);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_cannot_run_leaves_the_upstream_answer_standing() -> Result<()> {
    // Both endpoints answer 503; the retry budget is zero, so the second try never happens:
    // the client gets the upstream's own 503, not an error Legate made up.
    let a = Upstream::builder("a").status(503).start().await?;
    let b = Upstream::builder("b").status(503).start().await?;
    let config = yaml(TWO_ENDPOINTS)
        .set("LB", "round_robin")
        .set("A", a.addr())
        .set("B", b.addr())
        .set("RETRY", r#"{ attempts: 3, on: ["503"] }"#)
        .text()?
        .replace(
            "connect_timeout: 500ms }",
            "connect_timeout: 500ms, circuit_breakers: { max_retries: 0 } }",
        );
    let proxy = Proxy::start(yaml(&config))?;
    let mut client = Http1::connect(proxy.addr("front")).await?;
    for _ in 0..4 {
        let reply = client.get("app.example.org", "/").await?;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            reply.legate_error(),
            None,
            "the upstream's answer, not Legate's"
        );
        assert!(reply.upstream().is_some(), "x-upstream names who answered");
    }
    assert_eq!(a.requests() + b.requests(), 4, "one try each, no retry");
    Ok(())
}

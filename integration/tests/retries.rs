//! Retries: which failures are tried again, on which endpoint, the rules that a request whose
//! body has been sent is never sent twice and that only an idempotent request is tried again
//! once it reached the upstream, the replay of a request a closing keep-alive connection
//! lost, and the retry budget.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use legate_integration::body;
use legate_integration::client::{request, request_with_body, Http1};
use legate_integration::proxy::{yaml, Proxy};
use legate_integration::upstream::{closed_port, Upstream};
use tokio::net::TcpListener;
use tokio::sync::{watch, Barrier, Semaphore};
use tokio::task::JoinSet;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_tried_again_after_reaching_the_upstream_only_if_idempotent() -> Result<()> {
    // Every try of every method gets 503 from the one endpoint; the route retries 503.
    let bad = Upstream::builder("bad").status(503).start().await?;
    let proxy = Proxy::start(yaml(ONE_ENDPOINT).set("A", bad.addr()).set(
        "RETRY",
        r#"{ attempts: 2, on: ["503"], idempotency_key: true }"#,
    ))?;
    let mut client = Http1::connect(proxy.addr("front")).await?;
    let mut tries = Vec::new();
    let mut send = async |req| -> Result<()> {
        let before = bad.requests();
        let reply = client.request(req).await?;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        tries.push(bad.requests() - before);
        Ok(())
    };
    for method in [Method::GET, Method::HEAD, Method::PUT, Method::DELETE] {
        send(request(method, "app.example.org", "/orders/7")).await?;
    }
    // Bodiless, yet neither is idempotent: the upstream may have acted on the first try.
    send(request(Method::POST, "app.example.org", "/orders")).await?;
    send(request(Method::PATCH, "app.example.org", "/orders/7")).await?;
    // The client vouches for this POST, and the route trusts `Idempotency-Key`.
    let mut keyed = request(Method::POST, "app.example.org", "/orders");
    keyed
        .headers_mut()
        .insert("idempotency-key", "8e03978e".parse()?);
    send(keyed).await?;
    assert_eq!(
        tries,
        [2, 2, 2, 2, 1, 1, 2],
        "tries of GET HEAD PUT DELETE POST PATCH keyed-POST"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_counts_only_when_the_route_says_so() -> Result<()> {
    let bad = Upstream::builder("bad").status(503).start().await?;
    let proxy = Proxy::start(
        yaml(ONE_ENDPOINT)
            .set("A", bad.addr())
            .set("RETRY", r#"{ attempts: 2, on: ["503"] }"#),
    )?;
    let mut keyed = request(Method::POST, "app.example.org", "/orders");
    keyed
        .headers_mut()
        .insert("idempotency-key", "8e03978e".parse()?);
    let reply = Http1::connect(proxy.addr("front"))
        .await?
        .request(keyed)
        .await?;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(bad.requests(), 1, "one try: the key is not trusted here");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_request_lost_by_a_closing_keep_alive_connection_goes_out_again() -> Result<()>
{
    // The upstream answers one request per connection and closes on the next without a
    // word: each reuse of a pooled connection loses the request it carries.
    // Any retry policy allows it, even one that allows no retry.
    let stale = Upstream::builder("stale")
        .one_answer_per_connection()
        .start()
        .await?;
    let proxy = Proxy::start(
        yaml(ONE_ENDPOINT)
            .set("A", stale.addr())
            .set("RETRY", "{ attempts: 1, on: [connect-failure] }"),
    )?;
    let mut client = Http1::connect(proxy.addr("front")).await?;
    for i in 0..3 {
        let reply = client.get("app.example.org", "/").await?;
        assert_eq!(reply.status, StatusCode::OK, "GET {i}: {}", reply.text());
    }
    // The first GET opened a connection; each later one was lost on the pooled connection
    // and went out again on a new one.
    assert_eq!(stale.connections(), 3);
    assert_eq!(stale.requests(), 5);

    // A POST is not repeated: the upstream may have acted on it before closing.
    let before = stale.requests();
    let reply = client
        .request(request(Method::POST, "app.example.org", "/orders"))
        .await?;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert_eq!(reply.legate_error(), Some("upstream-reset"));
    assert_eq!(stale.requests() - before, 1, "the POST went out once");
    Ok(())
}

/// An upstream for retry-budget tests. The first try of each request (told apart by its
/// `x-id` header) waits until `first_tries` of them have arrived, so all are in flight when
/// retries are decided, then gets 503; a second try waits for the gate (`held` counts them).
struct BudgetUpstream {
    addr: SocketAddr,
    held: watch::Receiver<usize>,
    gate: Arc<Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

impl BudgetUpstream {
    async fn start(first_tries: usize) -> Result<BudgetUpstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(HashSet::new()));
        let barrier = Arc::new(Barrier::new(first_tries));
        let gate = Arc::new(Semaphore::new(0));
        let (held_tx, held) = watch::channel(0usize);
        let held_tx = Arc::new(held_tx);
        let shared = (seen, barrier, gate.clone(), held_tx);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (seen, barrier, gate, held_tx) = shared.clone();
                conns.spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (seen, barrier, gate, held_tx) =
                            (seen.clone(), barrier.clone(), gate.clone(), held_tx.clone());
                        async move {
                            let id = req
                                .headers()
                                .get("x-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            let first = seen.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
                            let mut resp = Response::new(body::empty());
                            if first {
                                barrier.wait().await;
                                *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                            } else {
                                held_tx.send_modify(|n| *n += 1);
                                if let Ok(permit) = gate.acquire().await {
                                    permit.forget();
                                }
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(BudgetUpstream {
            addr,
            held,
            gate,
            task,
        })
    }
}

impl Drop for BudgetUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_retries_in_flight_by_share_of_requests() -> Result<()> {
    // Four requests in flight, each of whose first try fails. A budget of 50% allows two
    // retries at once; without a budget, `max_retries: 10` allows all four.
    for (budget, retried) in [
        (", retry_budget: { percent: 50, min_concurrent: 1 }", 2),
        ("", 4),
    ] {
        let upstream = BudgetUpstream::start(4).await?;
        let config = yaml(ONE_ENDPOINT)
            .set("A", upstream.addr)
            .set("RETRY", r#"{ attempts: 2, on: ["503"] }"#)
            .text()?
            .replace(
                &format!("endpoints: [\"{}\"] }}", upstream.addr),
                &format!(
                    "endpoints: [\"{}\"], circuit_breakers: {{ max_retries: 10{budget} }} }}",
                    upstream.addr
                ),
            );
        let proxy = Proxy::start(yaml(&config))?;
        let front = proxy.addr("front");
        let mut replies = JoinSet::new();
        for i in 0..4 {
            replies.spawn(async move {
                let mut req = request(Method::GET, "app.example.org", "/");
                req.headers_mut().insert("x-id", i.into());
                Http1::connect(front).await?.request(req).await
            });
        }
        // Admitted retries wait at the upstream; a refused one's 503 comes back at once.
        let mut held = upstream.held.clone();
        tokio::time::timeout(Duration::from_secs(10), held.wait_for(|n| *n >= retried))
            .await
            .context("retries reach the upstream")??;
        let mut statuses = Vec::new();
        for _ in retried..4 {
            let reply = tokio::time::timeout(Duration::from_secs(10), replies.join_next())
                .await
                .context("a refused retry answers at once")?
                .context("a reply")???;
            statuses.push(reply.status);
        }
        upstream.gate.add_permits(retried);
        while let Some(reply) = replies.join_next().await {
            statuses.push(reply??.status);
        }
        let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
        assert_eq!(ok, retried, "{budget}: {statuses:?}");
        assert_eq!(
            *upstream.held.borrow(),
            retried,
            "{budget}: no other retry ran"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_retry_gives_its_slot_back_before_the_next_takes_one() -> Result<()> {
    // One retry at a time is allowed, and a request retries one at a time: all three tries
    // of a GET run.
    let bad = Upstream::builder("bad").status(503).start().await?;
    let config = yaml(ONE_ENDPOINT)
        .set("A", bad.addr())
        .set("RETRY", r#"{ attempts: 3, on: ["503"] }"#)
        .text()?
        .replace(
            &format!("endpoints: [\"{}\"] }}", bad.addr()),
            &format!(
                "endpoints: [\"{}\"], circuit_breakers: {{ max_retries: 1 }} }}",
                bad.addr()
            ),
        );
    let proxy = Proxy::start(yaml(&config))?;
    let reply = Http1::connect(proxy.addr("front"))
        .await?
        .get("app.example.org", "/")
        .await?;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(bad.requests(), 3, "three tries with one retry slot");
    Ok(())
}

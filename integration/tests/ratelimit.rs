//! Local rate limits over real sockets: a 50/s limit with a burst of 50 lets through what it
//! should over the time the requests took, answers the rest 429 with `retry-after`, counts
//! both in `/metrics`; keys by header are independent; a reload keeps the buckets of a limit
//! it keeps.

use std::time::Instant;

use anyhow::{ensure, Result};
use http::{Request, StatusCode};
use legate_integration::client::{self, Http1};
use legate_integration::prometheus::{check_metrics, value};
use legate_integration::proxy::{yaml, Proxy, Yaml};
use legate_integration::upstream::Upstream;

fn config(app: &Upstream, extra_route: &str) -> Yaml {
    yaml(&format!(
        r#"
admin: {{ listen: 127.0.0.1:0 }}
access_log: {{ enabled: false }}
listeners:
  - {{ name: front, listen: 127.0.0.1:0, http: {{ route_table: main }} }}
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        rate_limits: [{{ name: host-wide, requests: 1000000, per: 1s }}]
        routes:
          - name: api
            match: {{ prefix: /api }}
            cluster: app
            rate_limits: [{{ name: api, requests: 50, per: 1s, burst: 50 }}]
          - name: per-client
            match: {{ prefix: /client }}
            cluster: app
            rate_limits:
              - {{ name: clients, requests: 1, per: 1h, burst: 3, key: "header:x-client-id" }}
          {extra_route}
          - {{ name: rest, match: {{ prefix: / }}, cluster: app }}
clusters:
  - {{ name: app, endpoints: ["{}"] }}
"#,
        app.addr()
    ))
}

async fn scrape(proxy: &Proxy) -> Result<String> {
    Ok(client::get(proxy.admin(), "admin", "/metrics")
        .await?
        .text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_lets_through_its_burst_and_rate_and_answers_the_rest_429() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let proxy = Proxy::start(config(&app, ""))?;
    proxy.wait_ready().await?;
    let front = proxy.addr("front");

    // 300 requests as fast as one connection goes.
    let mut conn = Http1::connect(front).await?;
    let started = Instant::now();
    let (mut allowed, mut limited) = (0u64, 0u64);
    let mut retry_after = None;
    for _ in 0..300 {
        let reply = conn.get("example.org", "/api/x").await?;
        match reply.status {
            StatusCode::OK => allowed += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                ensure!(reply.legate_error() == Some("rate-limited"), "{reply:?}");
                retry_after = reply.header("retry-after").map(str::to_owned);
            }
            other => anyhow::bail!("unexpected {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // 50 at once, then 50 a second for the time the requests took: within one request of it
    // either way, and the upstream saw exactly the allowed ones.
    let most = 50.0 + 50.0 * elapsed + 1.0;
    ensure!(
        (allowed as f64) >= 50.0 && (allowed as f64) <= most,
        "{allowed} allowed in {elapsed:.3}s (at most {most:.1})"
    );
    ensure!(limited == 300 - allowed);
    ensure!(
        limited > 0,
        "nothing limited: 300 requests took {elapsed:.3}s, long enough to stay under 50/s"
    );
    ensure!(
        app.requests() as u64 == allowed,
        "{} reached the upstream",
        app.requests()
    );
    let retry_after: u64 = retry_after.unwrap_or_default().parse()?;
    ensure!(retry_after >= 1, "retry-after {retry_after}");

    // Counted per limit; the host-wide limit, a default, does not apply to a route with its own.
    let text = scrape(&proxy).await?;
    let labels = |limit, result| {
        [
            ("route_table", "main"),
            ("route", "api"),
            ("limit", limit),
            ("result", result),
        ]
    };
    let count = |limit, result| {
        value(
            &text,
            "legate_ratelimit_requests_total",
            &labels(limit, result),
        )
    };
    assert_eq!(count("api", "allowed"), Some(allowed as f64), "{text}");
    assert_eq!(count("api", "limited"), Some(limited as f64));
    assert_eq!(count("host-wide", "allowed"), None);
    let rest = [
        ("route_table", "main"),
        ("route", "rest"),
        ("limit", "host-wide"),
        ("result", "allowed"),
    ];
    client::get(front, "example.org", "/other").await?;
    let text = scrape(&proxy).await?;
    assert_eq!(
        value(&text, "legate_ratelimit_requests_total", &rest),
        Some(1.0)
    );
    check_metrics(&text).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_independent_and_a_reload_keeps_the_buckets_of_a_kept_limit() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let proxy = Proxy::start(config(&app, ""))?;
    proxy.wait_ready().await?;
    let front = proxy.addr("front");
    let as_client = |id: &'static str| async move {
        let req = Request::get("/client")
            .header("host", "example.org")
            .header("x-client-id", id)
            .body(legate_integration::body::empty())?;
        Http1::connect(front).await?.request(req).await
    };
    for _ in 0..3 {
        assert_eq!(as_client("a").await?.status, StatusCode::OK);
    }
    assert_eq!(as_client("a").await?.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        as_client("b").await?.status,
        StatusCode::OK,
        "b has its own bucket"
    );

    // A reload that adds a route keeps the limit as it was: a is still over it.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("legate.yaml");
    let added = "- { name: new, match: { prefix: /new }, cluster: app }";
    std::fs::write(&path, config(&app, added).text()?)?;
    proxy.app().reload_file(&path)?;
    let reply = client::get(front, "example.org", "/new").await?;
    assert_eq!(reply.status, StatusCode::OK, "the reload applied");
    assert_eq!(as_client("a").await?.status, StatusCode::TOO_MANY_REQUESTS);

    // A reload that changes the limit starts it afresh.
    let changed = config(&app, added)
        .text()?
        .replace("burst: 3,", "burst: 4,");
    std::fs::write(&path, changed)?;
    proxy.app().reload_file(&path)?;
    assert_eq!(as_client("a").await?.status, StatusCode::OK);
    Ok(())
}

/// A request a limit delays has only what is left of the route's timeout for the upstream:
/// waiting 1 s of a 1.5 s timeout leaves 0.5 s, less than the upstream's 1 s, so it is a 504;
/// the request that was not delayed is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_counts_against_the_route_timeout() -> Result<()> {
    let slow = Upstream::builder("slow")
        .delay(std::time::Duration::from_secs(1))
        .start()
        .await?;
    let proxy = Proxy::start(yaml(&format!(
        r#"
admin: {{ listen: 127.0.0.1:0 }}
access_log: {{ enabled: false }}
listeners:
  - {{ name: front, listen: 127.0.0.1:0, http: {{ route_table: main }} }}
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes:
          - name: smooth
            match: {{ prefix: / }}
            cluster: slow
            timeout: 1500ms
            rate_limits:
              - {{ name: one-a-second, requests: 1, per: 1s, burst: 1, action: delay, max_delay: 2s }}
clusters:
  - {{ name: slow, endpoints: ["{}"] }}
"#,
        slow.addr()
    )))?;
    proxy.wait_ready().await?;
    let front = proxy.addr("front");
    let first = tokio::spawn(async move { client::get(front, "example.org", "/").await });
    let second = tokio::spawn(async move { client::get(front, "example.org", "/").await });
    let mut statuses = vec![first.await??.status, second.await??.status];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::GATEWAY_TIMEOUT]);
    let text = scrape(&proxy).await?;
    let delayed = [
        ("route_table", "main"),
        ("route", "smooth"),
        ("limit", "one-a-second"),
        ("result", "delayed"),
    ];
    assert_eq!(
        value(&text, "legate_ratelimit_requests_total", &delayed),
        Some(1.0)
    );
    Ok(())
}

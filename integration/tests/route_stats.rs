//! Latency histograms and per-route, per-split-target counters on `/metrics`: where requests
//! of a 90/10 split with one slow side land, what errors, retries and timeouts count, and the
//! session and connect histograms of a TCP listener.

use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use legate_integration::client;
use legate_integration::prometheus::{check_metrics, value};
use legate_integration::proxy::{yaml, Proxy};
use legate_integration::upstream::{closed_port, Upstream};

/// How long the slow side of the split takes: every one of its requests is above the
/// 0.25 s bucket bound, whatever the machine's speed.
const SLOW: Duration = Duration::from_millis(300);

const SPLIT: &str = r#"
admin: { listen: 127.0.0.1:0 }
access_log: { enabled: false }
listeners:
  - { name: front, listen: 127.0.0.1:0, http: { route_table: main } }
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes:
          - name: kartotherian
            match: { prefix: / }
            split: [{ cluster: metal, weight: 90 }, { cluster: k8s, weight: 10 }]
clusters:
  - { name: metal, endpoints: ["${METAL}"] }
  - { name: k8s, endpoints: ["${K8S}"] }
"#;

async fn scrape(proxy: &Proxy) -> Result<String> {
    Ok(client::get(proxy.admin(), "admin", "/metrics")
        .await?
        .text())
}

fn get(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(scrape, name, labels).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_with_one_slow_side_shows_each_side_in_its_own_series() -> Result<()> {
    let metal = Upstream::echo("metal").await?;
    let k8s = Upstream::builder("k8s").delay(SLOW).start().await?;
    let proxy = Proxy::start(
        yaml(SPLIT)
            .set("METAL", metal.addr())
            .set("K8S", k8s.addr()),
    )?;
    proxy.wait_ready().await?;

    // Rounds of 50 concurrent requests until both sides have had some.
    let mut served = (0u32, 0u32);
    for _ in 0..20 {
        let mut round = tokio::task::JoinSet::new();
        for _ in 0..50 {
            round.spawn(client::get(proxy.addr("front"), "example.org", "/"));
        }
        while let Some(reply) = round.join_next().await {
            let reply = reply??;
            ensure!(reply.status == 200, "status {}", reply.status);
            match reply.upstream() {
                Some("metal") => served.0 += 1,
                Some("k8s") => served.1 += 1,
                other => anyhow::bail!("answered by {other:?}"),
            }
        }
        if served.0 > 0 && served.1 > 0 {
            break;
        }
    }
    let (to_metal, to_k8s) = (f64::from(served.0), f64::from(served.1));
    ensure!(
        to_metal > 0.0 && to_k8s > 0.0,
        "both sides served: {served:?}"
    );

    let text = scrape(&proxy).await?;
    let route = [("listener", "front"), ("route", "kartotherian")];
    let side = |cluster| [route[0], route[1], ("cluster", cluster)];
    let responses = "legate_route_target_responses_total";
    for (cluster, n) in [("metal", to_metal), ("k8s", to_k8s)] {
        let labels = side(cluster);
        let ok = [labels[0], labels[1], labels[2], ("code_class", "2xx")];
        assert_eq!(get(&text, responses, &ok), n, "{cluster} 2xx\n{text}");
        // A clean side reports 0 errors rather than nothing, so ratios between the sides
        // (the alert on a split target failing more than its sibling) have both terms.
        let failed = [labels[0], labels[1], labels[2], ("code_class", "5xx")];
        assert_eq!(value(&text, responses, &failed), Some(0.0), "{cluster} 5xx");
        for histogram in [
            "legate_upstream_request_duration_seconds",
            "legate_upstream_response_head_duration_seconds",
        ] {
            let count = format!("{histogram}_count");
            assert_eq!(get(&text, &count, &labels), n, "{count} of {cluster}");
            let inf = [labels[0], labels[1], labels[2], ("le", "+Inf")];
            assert_eq!(get(&text, &format!("{histogram}_bucket"), &inf), n);
        }
    }
    // Every slow request lies above 0.25 s, in every histogram that times it.
    let slow_bucket = [route[0], route[1], ("cluster", "k8s"), ("le", "0.25")];
    for histogram in [
        "legate_upstream_request_duration_seconds_bucket",
        "legate_upstream_response_head_duration_seconds_bucket",
    ] {
        assert_eq!(
            get(&text, histogram, &slow_bucket),
            0.0,
            "{histogram}\n{text}"
        );
    }
    for cluster in ["metal", "k8s"] {
        let connects = "legate_upstream_connect_duration_seconds_count";
        let n = get(&text, connects, &[("cluster", cluster)]);
        assert!(n >= 1.0, "{cluster}: {n} connects timed");
    }
    let k8s_sum = get(
        &text,
        "legate_upstream_request_duration_seconds_sum",
        &side("k8s"),
    );
    assert!(k8s_sum >= to_k8s * SLOW.as_secs_f64(), "k8s sum {k8s_sum}");

    let down = [route[0], route[1], ("code_class", "2xx")];
    let total = to_metal + to_k8s;
    let name = "legate_downstream_request_duration_seconds";
    assert_eq!(get(&text, &format!("{name}_count"), &down), total);
    let fast_enough = [down[0], down[1], down[2], ("le", "0.25")];
    let under = get(&text, &format!("{name}_bucket"), &fast_enough);
    assert!(
        under <= to_metal,
        "{under} requests at most 0.25 s, but only {to_metal} went to the fast side"
    );

    check_metrics(&text).await?;
    // The OpenMetrics form carries the same histograms, and its end marker.
    let open = client::Http1::connect(proxy.admin())
        .await?
        .request(
            http::Request::get("/metrics")
                .header("host", "admin")
                .header("accept", "application/openmetrics-text; version=1.0.0")
                .body(legate_integration::body::empty())?,
        )
        .await?
        .text();
    assert!(open.contains("# TYPE legate_upstream_request_duration_seconds histogram"));
    assert!(open.ends_with("# EOF\n"));
    Ok(())
}

const ERRORS: &str = r#"
admin: { listen: 127.0.0.1:0 }
access_log: { enabled: false }
listeners:
  - { name: front, listen: 127.0.0.1:0, http: { route_table: main } }
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes:
          - { name: down, match: { prefix: /down }, cluster: gone }
          - name: slow
            match: { prefix: /delay }
            cluster: app
            timeout: 100ms
          - name: flaky
            match: { prefix: /flaky }
            cluster: failing
            retry: { attempts: 3, on: [gateway-error] }
          - name: impatient
            match: { prefix: /impatient }
            cluster: app
            prefix_rewrite: /delay
            retry: { attempts: 2, on: [timeout], per_try_timeout: 100ms }
          - { match: { prefix: /teapot }, respond: { status: 418 } }
clusters:
  - { name: gone, endpoints: ["${GONE}"], connect_timeout: 1s }
  - { name: app, endpoints: ["${APP}"] }
  - { name: failing, endpoints: ["${FAILING}"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_timeouts_and_retries_count_by_route_and_target() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let failing = Upstream::builder("failing").status(502).start().await?;
    let proxy = Proxy::start(
        yaml(ERRORS)
            .set("GONE", closed_port())
            .set("APP", app.addr())
            .set("FAILING", failing.addr()),
    )?;
    proxy.wait_ready().await?;
    let front = proxy.addr("front");

    let down = client::get(front, "example.org", "/down").await?;
    assert_eq!(down.legate_error(), Some("connect-failure"));
    // The upstream waits a second; the route gives up after 100 ms.
    let slow = client::get(front, "example.org", "/delay/1000").await?;
    assert_eq!(slow.legate_error(), Some("timeout"));
    let flaky = client::get(front, "example.org", "/flaky").await?;
    assert_eq!(flaky.status, 502);
    assert_eq!(failing.requests(), 3, "three tries");
    // Two tries of a second each, both cut at 100 ms.
    let impatient = client::get(front, "example.org", "/impatient/1000").await?;
    assert_eq!(impatient.legate_error(), Some("per-try-timeout"));
    let teapot = client::get(front, "example.org", "/teapot").await?;
    assert_eq!(teapot.status, 418);

    let text = scrape(&proxy).await?;
    let at = |route, cluster| {
        [
            ("listener", "front"),
            ("route", route),
            ("cluster", cluster),
        ]
    };
    let errors = "legate_route_target_errors_total";
    let reason = |route, cluster, reason| {
        let [l, r, c] = at(route, cluster);
        get(&text, errors, &[l, r, c, ("reason", reason)])
    };
    assert_eq!(reason("down", "gone", "connect-failure"), 1.0, "{text}");
    assert_eq!(reason("slow", "app", "timeout"), 1.0);
    assert_eq!(
        get(
            &text,
            "legate_route_target_timeouts_total",
            &at("slow", "app")
        ),
        1.0
    );
    assert_eq!(
        get(
            &text,
            "legate_route_target_timeouts_total",
            &at("down", "gone")
        ),
        0.0
    );
    assert_eq!(
        get(
            &text,
            "legate_route_target_retries_total",
            &at("flaky", "failing")
        ),
        2.0
    );
    let [l, r, c] = at("flaky", "failing");
    let class = [l, r, c, ("code_class", "5xx")];
    assert_eq!(
        get(&text, "legate_route_target_responses_total", &class),
        1.0
    );
    // A request that never reached an upstream has no upstream timing.
    let count = "legate_upstream_request_duration_seconds_count";
    assert_eq!(value(&text, count, &at("down", "gone")), None);
    assert_eq!(get(&text, count, &at("flaky", "failing")), 1.0);
    // A route without a name is named by where it is; a fixed answer has no target.
    let timeouts = "legate_route_target_timeouts_total";
    assert_eq!(get(&text, timeouts, &at("impatient", "app")), 2.0);
    assert_eq!(
        get(
            &text,
            "legate_route_target_retries_total",
            &at("impatient", "app")
        ),
        1.0
    );
    assert_eq!(reason("impatient", "app", "per-try-timeout"), 1.0);
    let teapot_route = "route_tables.main.virtual_hosts[0].routes[4]";
    let down_labels = [
        ("listener", "front"),
        ("route", teapot_route),
        ("code_class", "4xx"),
    ];
    let downstream = "legate_downstream_request_duration_seconds_count";
    assert_eq!(get(&text, downstream, &down_labels), 1.0, "{text}");
    check_metrics(&text).await?;
    Ok(())
}

const TCP: &str = r#"
admin: { listen: 127.0.0.1:0 }
access_log: { enabled: false }
listeners:
  - { name: raw, listen: 127.0.0.1:0, tcp: { cluster: app } }
clusters:
  - { name: app, endpoints: ["${APP}"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_sessions_and_connects_are_timed() -> Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app = Upstream::echo("app").await?;
    let proxy = Proxy::start(yaml(TCP).set("APP", app.addr()))?;
    proxy.wait_ready().await?;
    let mut session = tokio::net::TcpStream::connect(proxy.addr("raw")).await?;
    session
        .write_all(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    session.read_to_end(&mut answer).await?;
    ensure!(answer.starts_with(b"HTTP/1.1 200"), "relayed");
    drop(session);

    let labels = [("listener", "raw"), ("cluster", "app")];
    let text = legate_integration::eventually(Duration::from_secs(10), || async {
        let text = scrape(&proxy).await?;
        let n = value(&text, "legate_tcp_session_duration_seconds_count", &labels);
        ensure!(n == Some(1.0), "sessions timed: {n:?}");
        Ok(text)
    })
    .await?;
    let connects = get(
        &text,
        "legate_upstream_connect_duration_seconds_count",
        &[("cluster", "app")],
    );
    assert!(connects >= 1.0, "connects timed: {connects}\n{text}");
    check_metrics(&text).await.context("promtool")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_counts_of_a_route_it_keeps() -> Result<()> {
    let metal = Upstream::echo("metal").await?;
    let k8s = Upstream::echo("k8s").await?;
    let config = |metal_weight: u32, k8s_weight: u32| {
        let text = SPLIT
            .replace("weight: 10 }", &format!("weight: {k8s_weight} }}"))
            .replace("weight: 90 }", &format!("weight: {metal_weight} }}"));
        yaml(&text)
            .set("METAL", metal.addr())
            .set("K8S", k8s.addr())
    };
    let proxy = Proxy::start(config(100, 0))?;
    proxy.wait_ready().await?;
    let front = proxy.addr("front");
    for _ in 0..3 {
        client::get(front, "example.org", "/").await?;
    }
    // The 90/10 → 0/100 step: same route, same clusters, new weights.
    proxy.apply(config(0, 100))?;
    for _ in 0..2 {
        let reply = client::get(front, "example.org", "/").await?;
        assert_eq!(reply.upstream(), Some("k8s"));
    }
    let text = scrape(&proxy).await?;
    let at = |cluster| {
        [
            ("listener", "front"),
            ("route", "kartotherian"),
            ("cluster", cluster),
            ("code_class", "2xx"),
        ]
    };
    let responses = "legate_route_target_responses_total";
    assert_eq!(get(&text, responses, &at("metal")), 3.0, "{text}");
    assert_eq!(get(&text, responses, &at("k8s")), 2.0);
    let down = [
        ("listener", "front"),
        ("route", "kartotherian"),
        ("code_class", "2xx"),
    ];
    let count = "legate_downstream_request_duration_seconds_count";
    assert_eq!(get(&text, count, &down), 5.0);
    Ok(())
}

/// A response whose body the upstream cuts short counts as incomplete, under its status, and
/// is left out of the time-to-end histogram (its "end" is a failure, not a duration).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_counts_as_incomplete_and_is_not_timed() -> Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    // Promises 100 bytes, sends 10, closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                .await;
        }
    });
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
        routes: [{ name: cut, match: { prefix: / }, cluster: short }]
clusters:
  - { name: short, endpoints: ["${UPSTREAM}"] }
"#,
        )
        .set("UPSTREAM", upstream),
    )?;
    proxy.wait_ready().await?;

    let mut client = tokio::net::TcpStream::connect(proxy.addr("front")).await?;
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: example.org\r\n\r\n")
        .await?;
    let mut got = Vec::new();
    let _ = client.read_to_end(&mut got).await;
    let got = String::from_utf8_lossy(&got);
    ensure!(got.starts_with("HTTP/1.1 200"), "{got}");
    ensure!(
        got.ends_with("0123456789"),
        "the 10 bytes came through: {got}"
    );

    let text = scrape(&proxy).await?;
    let at = [
        ("listener", "front"),
        ("route", "cut"),
        ("cluster", "short"),
    ];
    assert_eq!(
        value(&text, "legate_route_target_incomplete_total", &at),
        Some(1.0),
        "{text}"
    );
    let ok = [at[0], at[1], at[2], ("code_class", "2xx")];
    assert_eq!(get(&text, "legate_route_target_responses_total", &ok), 1.0);
    assert_eq!(
        get(
            &text,
            "legate_upstream_response_head_duration_seconds_count",
            &at
        ),
        1.0
    );
    assert_eq!(
        value(&text, "legate_upstream_request_duration_seconds_count", &at),
        None,
        "{text}"
    );
    check_metrics(&text).await?;
    Ok(())
}

/// A client that leaves before the response head still counts: under class `other` on its
/// route, and as incomplete on the target its request went to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_client_abandons_still_counts() -> Result<()> {
    use tokio::io::AsyncWriteExt as _;

    let slow = Upstream::builder("slow").hold().start().await?;
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
        routes: [{ name: waits, match: { prefix: / }, cluster: slow }]
clusters:
  - { name: slow, endpoints: ["${SLOW}"] }
"#,
        )
        .set("SLOW", slow.addr()),
    )?;
    proxy.wait_ready().await?;

    let mut client = tokio::net::TcpStream::connect(proxy.addr("front")).await?;
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: example.org\r\n\r\n")
        .await?;
    slow.wait_requests(1).await?;
    drop(client);

    let at = [
        ("listener", "front"),
        ("route", "waits"),
        ("cluster", "slow"),
    ];
    let text = legate_integration::eventually(Duration::from_secs(5), || async {
        let text = scrape(&proxy).await?;
        let n = get(&text, "legate_route_target_incomplete_total", &at);
        ensure!(n == 1.0, "{n} incomplete");
        Ok(text)
    })
    .await?;
    let other = [at[0], at[1], at[2], ("code_class", "other")];
    assert_eq!(
        get(&text, "legate_route_target_responses_total", &other),
        1.0
    );
    let down = [at[0], at[1], ("code_class", "other")];
    assert_eq!(
        get(
            &text,
            "legate_downstream_request_duration_seconds_count",
            &down
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "legate_upstream_response_head_duration_seconds_count",
            &at
        ),
        None
    );
    slow.open_gate();
    Ok(())
}

//! The real `legate` binary: signals (SIGTERM drains, SIGHUP reloads, SIGINT exits at once)
//! and the access log it writes on stdout, in text and JSON.
//!
//! Needs `cargo build -p legate --bin legate` first.

use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use http::{Method, StatusCode};
use legate_integration::client::{self, request, Http1};
use legate_integration::eventually;
use legate_integration::process::{self, Legate};
use legate_integration::proxy::yaml;
use legate_integration::upstream::Upstream;

/// Route `/` → cluster `app` at `${APP}`; access log in `${FORMAT}`.
const CONFIG: &str = r#"
admin: { listen: "${ADMIN}" }
runtime: { workers: 2, drain_timeout: 5s }
access_log: { enabled: true, format: ${FORMAT} }
listeners:
  - { name: front, listen: 127.0.0.1:0, http: { route_table: main } }
route_tables:
  main:
    virtual_hosts:
      - hosts: [app.example.org]
        routes: [{ match: { prefix: / }, cluster: app }]
clusters:
  - { name: app, endpoints: ["${APP}"] }
"#;

async fn start(app: &Upstream, format: &str) -> Result<Legate> {
    Legate::start(yaml(CONFIG).set("APP", app.addr()).set("FORMAT", format)).await
}

/// With `drain_delay`, SIGTERM turns `/ready` to 503 at once but keeps accepting and
/// serving new connections; then the listener closes, the request in flight since before
/// SIGTERM completes, and the exit is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_drain_delay_serves_on_while_unready_then_drains() -> Result<()> {
    let app = Upstream::builder("app").hold().start().await?;
    let config = CONFIG
        .replace("drain_timeout: 5s", "drain_delay: 3s, drain_timeout: 30s")
        .replace(
            "routes: [{ match: { prefix: / }, cluster: app }]",
            "routes: [{ match: { prefix: /late }, respond: { status: 200 } }, \
             { match: { prefix: / }, cluster: app }]",
        );
    let template = config;
    let config = yaml(&template).set("APP", app.addr()).set("FORMAT", "text");
    let mut legate = Legate::start(config).await?;
    let (front, admin) = (legate.addr("front"), legate.admin());
    let mut held = Http1::connect(front).await?;
    let in_flight = tokio::spawn(async move { held.get("app.example.org", "/held").await });
    app.wait_requests(1).await?;
    let mut kept = Http1::connect(front).await?;
    let before = kept.get("app.example.org", "/late").await?;
    assert_eq!(
        before.header("connection"),
        None,
        "keep-alive before SIGTERM"
    );

    legate.signal("TERM").await?;
    legate.wait_stderr("serving on for drain_delay").await?;
    // A draining process applies no config any more: a change made now (to the route that
    // answers /late) is refused, and /late still answers as before.
    let changed = template.replace("respond: { status: 200 }", "respond: { status: 299 }");
    legate.write_config(yaml(&changed).set("APP", app.addr()).set("FORMAT", "text"))?;
    legate.wait_stderr("draining: no config is applied").await?;
    // A kept-alive HTTP/1.1 connection is asked to reconnect with its next response.
    let again = kept.get("app.example.org", "/late").await?;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.header("connection"), Some("close"));
    let ready = client::get(admin, "admin", "/ready").await?;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.text()
    );
    // A new connection during the delay is accepted and served.
    let mut late = Http1::connect(front).await?;
    let late = late.get("app.example.org", "/late").await?;
    assert_eq!(late.status, StatusCode::OK, "served during the delay");
    assert_eq!(late.header("connection"), Some("close"));

    // Then the drain: the listener stops accepting; the held request, released only now,
    // completes; the exit is clean.
    legate
        .drain_completes(front, in_flight, &app, Duration::from_secs(10))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_in_flight_request_and_exits_zero() -> Result<()> {
    let slow = Upstream::echo("slow").await?;
    let mut legate = start(&slow, "text").await?;
    let front = legate.addr("front");
    let admin = legate.admin();
    let mut client = Http1::connect(front).await?;
    let in_flight = tokio::spawn(async move { client.get("app.example.org", "/delay/2000").await });
    slow.wait_requests(1).await?;

    legate.signal("TERM").await?;

    // Draining: `/ready` turns 503 while the request is still in flight.
    eventually(Duration::from_secs(1), || async {
        let ready = client::get(admin, "admin", "/ready").await?;
        ensure!(
            ready.status == StatusCode::SERVICE_UNAVAILABLE,
            "/ready said {}",
            ready.status
        );
        Ok(())
    })
    .await?;
    ensure!(
        !in_flight.is_finished(),
        "the request ended before /ready was checked"
    );
    let reply = in_flight.await??;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the in-flight request completes"
    );
    assert_eq!(reply.header("connection"), Some("close"));
    let status = legate.wait_exit(Duration::from_secs(10)).await?;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", legate.stderr_text());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_drain_timeout_cuts_the_request_and_exits_two() -> Result<()> {
    let stuck = Upstream::echo("stuck").await?;
    let config = CONFIG.replace("drain_timeout: 5s", "drain_timeout: 300ms");
    let mut legate =
        Legate::start(yaml(&config).set("APP", stuck.addr()).set("FORMAT", "text")).await?;
    let mut client = Http1::connect(legate.addr("front")).await?;
    let in_flight =
        tokio::spawn(async move { client.get("app.example.org", "/delay/30000").await });
    stuck.wait_requests(1).await?;

    legate.signal("TERM").await?;

    let status = legate.wait_exit(Duration::from_secs(10)).await?;
    assert_eq!(
        status.code(),
        Some(2),
        "a drain that cut work exits 2; stderr:\n{}",
        legate.stderr_text()
    );
    legate.wait_stderr("drain_timeout expired").await?;
    let cut = tokio::time::timeout(Duration::from_secs(2), in_flight).await??;
    assert!(cut.is_err(), "the request still open is cut off: {cut:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_at_once_even_with_a_request_in_flight() -> Result<()> {
    let slow = Upstream::echo("slow").await?;
    let mut legate = start(&slow, "text").await?;
    let mut client = Http1::connect(legate.addr("front")).await?;
    let in_flight = tokio::spawn(async move { client.get("app.example.org", "/delay/5000").await });
    slow.wait_requests(1).await?;

    legate.signal("INT").await?;

    let status = legate.wait_exit(Duration::from_secs(2)).await?;
    assert!(!status.success(), "SIGINT is not a clean exit: {status}");
    let cut = tokio::time::timeout(Duration::from_secs(2), in_flight).await??;
    assert!(cut.is_err(), "the in-flight request is cut off: {cut:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_good_config_and_in_flight_requests_finish() -> Result<()> {
    let a = Upstream::echo("a").await?;
    let b = Upstream::echo("b").await?;
    let legate = start(&a, "text").await?;
    let front = legate.addr("front");
    let before = legate.admin_json("/config").await?;
    let mut slow_client = Http1::connect(front).await?;
    let in_flight =
        tokio::spawn(async move { slow_client.get("app.example.org", "/delay/1500").await });
    a.wait_requests(1).await?;

    let next = yaml(CONFIG).set("APP", b.addr()).set("FORMAT", "text");
    legate.write_config(next.clone())?;
    legate.signal("HUP").await?;

    let expected_version = legate::config::version_of(next.set("ADMIN", process::ADMIN).text()?);
    eventually(Duration::from_secs(5), || async {
        let reply = client::get(front, "app.example.org", "/").await?;
        ensure!(
            reply.echo()?.upstream == "b",
            "still routed to {}",
            reply.echo()?.upstream
        );
        Ok(())
    })
    .await?;
    ensure!(
        !in_flight.is_finished(),
        "the slow request ended before the reload took effect"
    );
    let after = legate.admin_json("/config").await?;
    assert_ne!(after["version"], before["version"]);
    assert_eq!(after["version"], expected_version.as_str());
    assert_eq!(after["last_reload"]["version"], expected_version.as_str());
    assert!(after["last_reload"]["error"].is_null(), "{after}");
    assert_eq!(legate.addr("front"), front, "the listener kept its port");

    let reply = in_flight.await??;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the request in flight during the reload"
    );
    assert_eq!(reply.echo()?.upstream, "a");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_bad_config_keeps_serving_the_old_one() -> Result<()> {
    let a = Upstream::echo("a").await?;
    let legate = start(&a, "text").await?;
    let front = legate.addr("front");
    let before = legate.admin_json("/config").await?;

    let broken = CONFIG.replace("cluster: app", "cluster: typo");
    legate.write_config(yaml(&broken).set("APP", a.addr()).set("FORMAT", "text"))?;
    legate.signal("HUP").await?;

    // Logged as a warning followed by the file's problems, one per line.
    legate.wait_stderr("config reload rejected").await?;
    legate.wait_stderr("unknown cluster \"typo\"").await?;
    let after = legate.admin_json("/config").await?;
    assert_eq!(after["version"], before["version"], "the old config stays");
    let error = after["last_reload"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("unknown cluster \"typo\""), "{after}");
    let reply = client::get(front, "app.example.org", "/").await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.echo()?.upstream, "a");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_text_has_one_line_per_request() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let legate = start(&app, "text").await?;
    let front = legate.addr("front");
    let mut client = Http1::connect(front).await?;

    let mut tagged = request(Method::GET, "app.example.org", "/first?q=1");
    tagged
        .headers_mut()
        .insert("x-request-id", "req-abc-123".parse()?);
    client.request(tagged).await?;
    client
        .request(request(Method::DELETE, "app.example.org", "/second"))
        .await?;
    client.get("nowhere.example.org", "/third").await?;

    let lines = legate.wait_stdout_lines(3).await?;
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let upstream = format!("upstream={}", app.addr());
    let first = &lines[0];
    for part in [
        " front ",
        "\"GET app.example.org /first?q=1 HTTP/1.1\" 200 ",
        "cluster=app",
        &upstream,
        "request_id=req-abc-123",
    ] {
        assert!(first.contains(part), "{part:?} missing from {first:?}");
    }
    let second = &lines[1];
    assert!(
        second.contains("\"DELETE app.example.org /second HTTP/1.1\" 200 "),
        "{second}"
    );
    assert!(second.contains(&upstream), "{second}");
    let id = second
        .split(" request_id=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .context("a request id")?;
    assert_eq!(id.len(), 36, "a generated id: {second}");
    let third = &lines[2];
    assert!(
        third.contains("\"GET nowhere.example.org /third HTTP/1.1\" 404 "),
        "{third}"
    );
    assert!(
        third.contains("upstream=-") && third.contains("error=no-route"),
        "{third}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_json_lines_parse_with_every_field() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let legate = start(&app, "json").await?;
    let front = legate.addr("front");

    let mut req = request(Method::POST, "app.example.org", "/orders");
    req.headers_mut().insert("x-request-id", "json-1".parse()?);
    Http1::connect(front).await?.request(req).await?;
    client::h2_get(front, "app.example.org", "/h2").await?;

    let lines = legate.wait_stdout_lines(2).await?;
    let records: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect::<Result<_>>()?;
    let post = records
        .iter()
        .find(|r| r["method"] == "POST")
        .context("a POST record")?;
    assert_eq!(post["listener"], "front");
    assert_eq!(post["host"], "app.example.org");
    assert_eq!(post["path"], "/orders");
    assert_eq!(post["status"], 200);
    assert_eq!(post["upstream"], app.addr().to_string());
    assert_eq!(post["request_id"], "json-1");
    let get = records
        .iter()
        .find(|r| r["method"] == "GET")
        .context("a GET record")?;
    assert_eq!(get["path"], "/h2");
    assert_eq!(get["host"], "app.example.org");
    assert_eq!(get["status"], 200);
    assert_eq!(get["request_id"].as_str().map(str::len), Some(36));
    Ok(())
}

/// A stalled access-log reader (stdout is a pipe nobody reads) never freezes a worker:
/// requests keep being answered, and the lines that could not be written are dropped and
/// counted in `legate_access_log_dropped_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_log_reader_never_blocks_requests() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let legate =
        Legate::start_with_unread_stdout(yaml(CONFIG).set("APP", app.addr()).set("FORMAT", "text"))
            .await?;
    let front = legate.addr("front");
    // Long paths make long lines: the pipe (64 KiB) and the writer's queue fill in a few
    // hundred requests.
    let path = format!("/{}", "p".repeat(8000));
    let mut client = Http1::connect(front).await?;
    for i in 0..1500 {
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            client.get("app.example.org", &path),
        )
        .await
        .with_context(|| format!("request {i} hung behind the stalled log"))??;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let metrics = client::get(legate.admin(), "admin", "/metrics")
        .await?
        .text();
    let dropped = eventually(Duration::from_secs(5), || async {
        let metrics = client::get(legate.admin(), "admin", "/metrics")
            .await?
            .text();
        let line = metrics
            .lines()
            .find(|l| l.starts_with("legate_access_log_dropped_total "))
            .map(str::to_owned)
            .context("no legate_access_log_dropped_total")?;
        let n: u64 = line.rsplit(' ').next().unwrap_or("0").parse()?;
        ensure!(n > 0, "nothing dropped yet: {line}");
        Ok(n)
    })
    .await
    .with_context(|| metrics.clone())?;
    ensure!(dropped <= 1500, "dropped {dropped} of 1500 lines");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_is_503_and_never_an_endpoint_failure() -> Result<()> {
    // 64 descriptors, and 80 requests at once to an upstream that holds every answer and
    // takes one connection per request: the later ones find no descriptor for theirs. An
    // endpoint failure would eject the only endpoint at once (consecutive_failures: 1).
    // (`max_connections` is set: the default for 64 descriptors would be 1.)
    let held = Upstream::builder("held")
        .http1_only()
        .no_keep_alive()
        .hold()
        .start()
        .await?;
    let config = r#"
admin: { listen: "${ADMIN}" }
access_log: { enabled: false }
runtime: { workers: 1 }
listeners:
  - { name: front, listen: 127.0.0.1:0, max_connections: 10, http: { route_table: main } }
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes: [{ match: { prefix: / }, cluster: app, timeout: 30s }]
clusters:
  - name: app
    endpoints: ["${APP}"]
    outlier_detection: { consecutive_failures: 1 }
"#;
    let legate =
        Legate::start_with_open_file_limit(yaml(config).set("APP", held.addr()), 64).await?;
    let h2 = client::H2::connect(legate.addr("front")).await?;
    let mut replies = tokio::task::JoinSet::new();
    for _ in 0..80 {
        let h2 = h2.clone();
        replies.spawn(async move { h2.get("app.example.org", "/").await });
    }
    // Every request either holds a connection at the upstream or was refused at once.
    let mut exhausted = 0;
    loop {
        tokio::select! {
            reached = held.wait_requests(80 - exhausted) => {
                reached?;
                break;
            }
            reply = replies.join_next() => {
                let reply = reply.context("a reply")???;
                assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
                assert_eq!(reply.legate_error(), Some("local-exhaustion"));
                exhausted += 1;
            }
        }
    }
    ensure!(exhausted > 0, "64 descriptors took all 80 connections");
    for _ in 0..held.requests() {
        held.open_gate();
    }
    while let Some(reply) = replies.join_next().await {
        let reply = reply?.with_context(|| legate.stderr_text())?;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let clusters = legate
        .admin_json("/clusters")
        .await
        .with_context(|| legate.stderr_text())?;
    let endpoint = &clusters["clusters"][0]["endpoints"][0];
    assert_eq!(endpoint["connect_failures"], 0, "{endpoint}");
    assert_eq!(
        endpoint["ejected_until"],
        serde_json::Value::Null,
        "{endpoint}"
    );
    assert_eq!(endpoint["ejections"], 0, "{endpoint}");
    held.open_gate();
    let reply = client::get(legate.addr("front"), "app.example.org", "/").await?;
    assert_eq!(reply.status, StatusCode::OK);
    Ok(())
}

/// A second `legate run` on the addresses of a running one fails at start, naming the
/// address and the process holding it, rather than sharing its ports (SO_REUSEPORT); the
/// first goes on serving undisturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_the_same_addresses_fails_naming_the_first() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let first = start(&app, "text").await?;
    let (front, admin) = (first.addr("front"), first.admin());
    let dir = tempfile::tempdir()?;

    for (what, listener, admin_listen) in [
        ("the listener", front.to_string(), "127.0.0.1:0".to_owned()),
        (
            "the admin listener",
            "127.0.0.1:0".to_owned(),
            admin.to_string(),
        ),
    ] {
        let text = CONFIG
            .replace("${ADMIN}", &admin_listen)
            .replace(
                "listen: 127.0.0.1:0, http",
                &format!("listen: \"{listener}\", http"),
            )
            .replace("${APP}", &app.addr().to_string())
            .replace("${FORMAT}", "text");
        let path = dir.path().join("second.yaml");
        std::fs::write(&path, text)?;
        let out = process::run(&["run", "--config", path.to_str().context("utf-8")?]).await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        let taken = if what == "the listener" { front } else { admin };
        let expected = format!("{taken} is already in use by pid {} (legate)", first.pid());
        assert!(
            stderr.contains(&expected),
            "{what}: {expected:?} not in {stderr}"
        );
    }

    let mut client = Http1::connect(front).await?;
    for _ in 0..3 {
        let reply = client.get("app.example.org", "/").await?;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let ready = client::get(admin, "admin", "/ready").await?;
    assert_eq!(ready.status, StatusCode::OK);
    Ok(())
}

//! The admin listener: readiness and liveness probes, the effective config, and live cluster
//! state.

use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use http::{Method, StatusCode};
use legate_integration::client::{self, request, Http1};
use legate_integration::eventually;
use legate_integration::proxy::{yaml, Proxy};
use legate_integration::upstream::Upstream;

const CONFIG: &str = r#"
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
  - name: app
    endpoints:
      - { address: "${APP}", weight: 3 }
      - { address: "127.0.0.1:9", weight: 1, pooled: false }
"#;

/// The probe listener answers `GET /ready` and `GET /healthz` as the admin listener does,
/// and nothing else: no config, no cluster state, no reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_listener_serves_only_ready_and_healthz() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let config = CONFIG.replace(
        "admin: { listen: 127.0.0.1:0 }",
        "admin: { listen: 127.0.0.1:0 }\nprobes: { listen: 127.0.0.1:0 }",
    );
    let proxy = Proxy::start(yaml(&config).set("APP", app.addr()))?;
    proxy.wait_ready().await?;
    let probes = proxy.probes();
    assert_ne!(probes, proxy.admin());

    let ready = client::get(probes, "probes", "/ready").await?;
    assert_eq!(
        (ready.status, ready.text().as_str()),
        (StatusCode::OK, "ready\n")
    );
    let healthz = client::get(probes, "probes", "/healthz").await?;
    assert_eq!(
        (healthz.status, healthz.text().as_str()),
        (StatusCode::OK, "ok\n")
    );
    for path in ["/config", "/clusters", "/metrics", "/reload"] {
        let reply = client::get(probes, "probes", path).await?;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "GET {path}: {}",
            reply.text()
        );
    }
    let mut conn = Http1::connect(probes).await?;
    let reload = conn
        .send(request(Method::POST, "probes", "/reload"))
        .await?;
    assert_eq!(reload.status(), StatusCode::NOT_FOUND, "POST /reload");
    let mut conn = Http1::connect(probes).await?;
    let post_ready = conn.send(request(Method::POST, "probes", "/ready")).await?;
    assert_eq!(post_ready.status(), StatusCode::METHOD_NOT_ALLOWED);
    // The admin listener still serves everything.
    let config = client::get(proxy.admin(), "admin", "/config").await?;
    assert_eq!(config.status, StatusCode::OK);
    assert_eq!(config.json()?["config"]["probes"]["listen"], "127.0.0.1:0");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_and_healthz_answer_200() -> Result<()> {
    // `/ready` turning 503 while draining is covered by tests/lifecycle.rs and tests/binary.rs.
    let app = Upstream::echo("app").await?;
    let proxy = Proxy::start(yaml(CONFIG).set("APP", app.addr()))?;
    let admin = proxy.admin();

    // Ready once the clusters are warmed, which happens in the background after start.
    proxy.wait_ready().await?;
    let ready = client::get(admin, "admin", "/ready").await?;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.text(), "ready\n");
    let healthz = client::get(admin, "admin", "/healthz").await?;
    assert_eq!(healthz.status, StatusCode::OK);
    assert_eq!(healthz.text(), "ok\n", "docs/config.md: always `200 ok`");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_shows_the_version_listeners_and_effective_config() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let config = yaml(CONFIG).set("APP", app.addr());
    let proxy = Proxy::start(config.clone())?;

    let reply = client::get(proxy.admin(), "admin", "/config").await?;

    assert_eq!(reply.header("content-type"), Some("application/json"));
    let json = reply.json()?;
    assert_eq!(json["version"], legate::config::version_of(config.text()?));
    assert_eq!(json["listeners"]["front"], proxy.addr("front").to_string());
    assert!(json["last_reload"].is_null(), "no reload yet: {json}");
    let clusters = &json["config"]["clusters"];
    assert_eq!(clusters[0]["name"], "app");
    assert_eq!(
        clusters[0]["endpoints"][0]["address"],
        app.addr().to_string()
    );
    assert_eq!(clusters[0]["endpoints"][1]["pooled"], false);
    assert_eq!(
        json["config"]["listeners"][0]["http"]["route_table"],
        "main"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_show_endpoints_with_weight_pooled_and_active_requests() -> Result<()> {
    let app = Upstream::builder("app")
        .delay(Duration::from_millis(600))
        .start()
        .await?;
    let proxy = Proxy::start(yaml(CONFIG).set("APP", app.addr()))?;
    let admin = proxy.admin();
    let mut client = Http1::connect(proxy.addr("front")).await?;
    let in_flight = tokio::spawn(async move { client.get("app.example.org", "/").await });
    app.wait_requests(1).await?;

    let during = client::get(admin, "admin", "/clusters").await?.json()?;
    let cluster = &during["clusters"][0];
    assert_eq!(cluster["name"], "app");
    let live = &cluster["endpoints"][0];
    assert_eq!(live["address"], app.addr().to_string());
    assert_eq!(live["weight"], 3);
    assert_eq!(live["pooled"], true);
    assert_eq!(
        live["active_requests"], 1,
        "one request in flight: {during}"
    );
    let depooled = &cluster["endpoints"][1];
    assert_eq!(depooled["weight"], 1);
    assert_eq!(depooled["pooled"], false);
    assert_eq!(depooled["active_requests"], 0);

    assert_eq!(in_flight.await??.status, StatusCode::OK);
    eventually(Duration::from_secs(2), || async {
        let after = client::get(admin, "admin", "/clusters").await?.json()?;
        let active = &after["clusters"][0]["endpoints"][0]["active_requests"];
        ensure!(
            *active == 0,
            "active_requests is {active} after the request ended"
        );
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_admin_paths_are_404_and_other_methods_405() -> Result<()> {
    let proxy = Proxy::start(yaml(CONFIG).set("APP", "127.0.0.1:8"))?;
    let admin = proxy.admin();

    let missing = client::get(admin, "admin", "/nope").await?;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let post = Http1::connect(admin)
        .await?
        .request(request(Method::POST, "admin", "/ready"))
        .await
        .context("POST /ready")?;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_responses_endpoints_and_reloads_in_prometheus_text() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let proxy = Proxy::start(yaml(CONFIG).set("APP", app.addr()))?;
    proxy.wait_ready().await?;
    for _ in 0..3 {
        let ok = client::get(proxy.addr("front"), "example.org", "/").await?;
        assert_eq!(ok.status, StatusCode::OK);
    }

    let reply = client::get(proxy.admin(), "admin", "/metrics").await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8"),
        "Prometheus text unless OpenMetrics is asked for"
    );
    let text = reply.text();
    ensure!(
        !text.contains("# EOF"),
        "no OpenMetrics end in the text form"
    );
    ensure!(
        text.contains("# TYPE legate_upstream_requests_total counter"),
        "counter families are named by their samples:\n{text}"
    );
    legate_integration::prometheus::check_metrics(&text).await?;
    let line = |prefix: &str| -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .map(str::to_owned)
    };
    let responses =
        line("legate_downstream_responses_total{listener=\"front\",code_class=\"2xx\"}")
            .context("2xx responses of front")?;
    assert!(responses.ends_with(" 3"), "{responses}");
    let upstream = format!(
        "legate_upstream_requests_total{{cluster=\"app\",endpoint=\"{}\"}} 3",
        app.addr()
    );
    ensure!(text.contains(&upstream), "no {upstream} in:\n{text}");
    ensure!(
        text.contains("legate_endpoint_pooled{cluster=\"app\",endpoint=\"127.0.0.1:9\"} 0"),
        "the depooled endpoint is reported:\n{text}"
    );
    ensure!(text.contains("legate_config_reloads_total{result=\"rejected\"} 0"));
    let build = format!(
        "legate_build_info{{version=\"{}\",revision=\"{}\"}} 1",
        legate::VERSION,
        legate::REVISION
    );
    ensure!(text.contains(&build), "no {build} in:\n{text}");
    let config = client::get(proxy.admin(), "admin", "/config")
        .await?
        .json()?;
    assert_eq!(config["build"]["version"], legate::VERSION);
    assert_eq!(config["build"]["revision"], legate::REVISION);
    // OpenMetrics on request, as Prometheus asks for it.
    let mut conn = Http1::connect(proxy.admin()).await?;
    let mut req = request(Method::GET, "admin", "/metrics");
    req.headers_mut().insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        ),
    );
    let open = conn.request(req).await?;
    assert!(open
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/openmetrics-text")));
    let open = open.text();
    ensure!(
        open.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    ensure!(open.contains(&upstream), "the same samples:\n{open}");
    Ok(())
}

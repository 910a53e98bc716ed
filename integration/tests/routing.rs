//! Routing end to end: virtual hosts by Host / `:authority`, path and header matches, shared
//! route tables, traffic splits, weighted endpoints, and the direct actions (redirect,
//! respond) and rewrites (host, prefix, headers) a route applies.

use std::collections::HashMap;

use anyhow::Result;
use http::{Method, StatusCode};
use legate_integration::client::{self, request, Http1};
use legate_integration::proxy::{yaml, Proxy};
use legate_integration::upstream::Upstream;

/// Sends `n` GETs over `connections` keep-alive connections and counts replies per upstream.
async fn count_upstreams(
    addr: std::net::SocketAddr,
    host: &str,
    n: usize,
    connections: usize,
) -> Result<HashMap<String, usize>> {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..connections {
        let host = host.to_owned();
        let share = n / connections + usize::from(c < n % connections);
        tasks.spawn(async move {
            let mut client = Http1::connect(addr).await?;
            let mut counts: HashMap<String, usize> = HashMap::new();
            for _ in 0..share {
                let reply = client.get(&host, "/").await?;
                anyhow::ensure!(reply.status == StatusCode::OK, "got {}", reply.status);
                *counts.entry(reply.echo()?.upstream).or_default() += 1;
            }
            anyhow::Ok(counts)
        });
    }
    let mut total: HashMap<String, usize> = HashMap::new();
    while let Some(counts) = tasks.join_next().await {
        for (k, v) in counts?? {
            *total.entry(k).or_default() += v;
        }
    }
    Ok(total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_routing_prefers_exact_then_longest_wildcard_then_star() -> Result<()> {
    let exact = Upstream::echo("exact").await?;
    let wide = Upstream::echo("wide").await?;
    let narrow = Upstream::echo("narrow").await?;
    let fallback = Upstream::echo("fallback").await?;
    // The shorter wildcard comes first, so only length can make the longer one win.
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
      - hosts: ["*.example.org"]
        routes: [{ match: { prefix: / }, cluster: wide }]
      - hosts: ["*"]
        routes: [{ match: { prefix: / }, cluster: fallback }]
      - hosts: ["*.tiles.example.org"]
        routes: [{ match: { prefix: / }, cluster: narrow }]
      - hosts: [maps.example.org]
        routes: [{ match: { prefix: / }, cluster: exact }]
clusters:
  - { name: exact, endpoints: ["${EXACT}"] }
  - { name: wide, endpoints: ["${WIDE}"] }
  - { name: narrow, endpoints: ["${NARROW}"] }
  - { name: fallback, endpoints: ["${FALLBACK}"] }
"#,
        )
        .set("EXACT", exact.addr())
        .set("WIDE", wide.addr())
        .set("NARROW", narrow.addr())
        .set("FALLBACK", fallback.addr()),
    )?;
    let front = proxy.addr("front");

    let cases = [
        ("maps.example.org", "exact"),
        ("MAPS.Example.ORG", "exact"),
        ("maps.example.org:8443", "exact"),
        ("www.example.org", "wide"),
        ("tiles.example.org", "wide"),
        ("a.tiles.example.org", "narrow"),
        ("A.TILES.Example.org:80", "narrow"),
        ("example.org", "fallback"),
        ("other.net", "fallback"),
    ];
    for (host, want) in cases {
        let reply = client::get(front, host, "/").await?;
        assert_eq!(reply.echo()?.upstream, want, "HTTP/1.1 Host: {host}");
    }
    // HTTP/2 routes by `:authority`.
    for (authority, want) in [
        ("maps.example.org", "exact"),
        ("Maps.Example.Org:9000", "exact"),
        ("x.tiles.example.org", "narrow"),
        ("www.example.org", "wide"),
        ("unknown.test", "fallback"),
    ] {
        let reply = client::h2_get(front, authority, "/").await?;
        assert_eq!(
            reply.echo()?.upstream,
            want,
            "HTTP/2 :authority {authority}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_matches_exact_regex_and_prefix_in_order() -> Result<()> {
    let proxy = Proxy::start(
        r#"
admin: { listen: 127.0.0.1:0 }
access_log: { enabled: false }
listeners:
  - { name: front, listen: 127.0.0.1:0, http: { route_table: main } }
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes:
          - match: { exact: /health }
            respond: { status: 200, body: exact }
          - match: { regex: "/v[0-9]+/tiles" }
            respond: { status: 200, body: regex }
          - match: { prefix: /api/ }
            respond: { status: 200, body: prefix }
          - match: { prefix: / }
            respond: { status: 200, body: fallback }
"#,
    )?;
    let front = proxy.addr("front");

    let cases = [
        ("/health", "exact"),
        ("/health?verbose=1", "exact"),
        ("/health/deep", "fallback"),
        ("/healthz", "fallback"),
        ("/v12/tiles", "regex"),
        ("/v12/tiles?z=3", "regex"),
        // A regex must match the whole path.
        ("/v12/tiles/1/2", "fallback"),
        ("/x/v12/tiles", "fallback"),
        ("/api/users", "prefix"),
        ("/api/", "prefix"),
        ("/api", "fallback"),
        ("/", "fallback"),
    ];
    let mut client = Http1::connect(front).await?;
    for (path, want) in cases {
        let reply = client.get("any.example.org", path).await?;
        assert_eq!(reply.text(), want, "path {path}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_matches_pick_the_route() -> Result<()> {
    let proxy = Proxy::start(
        r#"
admin: { listen: 127.0.0.1:0 }
access_log: { enabled: false }
listeners:
  - { name: front, listen: 127.0.0.1:0, http: { route_table: main } }
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes:
          - match:
              prefix: /
              headers: [{ name: x-canary, exact: "1" }]
            respond: { status: 200, body: canary }
          - match:
              prefix: /
              headers: [{ name: x-user, regex: "alice|bob" }]
            respond: { status: 200, body: beta }
          - match:
              prefix: /
              headers:
                - { name: x-debug, present: true }
                - { name: x-internal, present: true, invert: true }
            respond: { status: 200, body: debug }
          - match: { prefix: / }
            respond: { status: 200, body: stable }
"#,
    )?;
    let front = proxy.addr("front");
    let cases: [(&[(&str, &str)], &str); 8] = [
        (&[], "stable"),
        (&[("x-canary", "1")], "canary"),
        (&[("x-canary", "2")], "stable"),
        (&[("x-user", "alice")], "beta"),
        // Regexes match the whole value.
        (&[("x-user", "alice2")], "stable"),
        (&[("x-debug", "")], "debug"),
        (&[("x-debug", "yes"), ("x-internal", "1")], "stable"),
        (&[("X-Canary", "1"), ("x-user", "bob")], "canary"),
    ];
    let mut client = Http1::connect(front).await?;
    for (headers, want) in cases {
        let mut req = request(Method::GET, "any.example.org", "/");
        for (k, v) in headers {
            req.headers_mut()
                .insert(http::HeaderName::from_bytes(k.as_bytes())?, v.parse()?);
        }
        let reply = client.request(req).await?;
        assert_eq!(reply.text(), want, "headers {headers:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_listeners_share_one_route_table() -> Result<()> {
    let app = Upstream::echo("app").await?;
    let proxy = Proxy::start(
        yaml(
            r#"
admin: { listen: 127.0.0.1:0 }
access_log: { enabled: false }
listeners:
  - { name: public, listen: 127.0.0.1:0, http: { route_table: shared } }
  - { name: internal, listen: 127.0.0.1:0, http: { route_table: shared } }
  - { name: other, listen: 127.0.0.1:0, http: { route_table: other } }
route_tables:
  shared:
    virtual_hosts:
      - hosts: [app.example.org]
        routes: [{ match: { prefix: / }, cluster: app }]
  other:
    virtual_hosts:
      - hosts: ["*"]
        routes: [{ match: { prefix: / }, respond: { status: 200, body: other } }]
clusters:
  - { name: app, endpoints: ["${APP}"] }
"#,
        )
        .set("APP", app.addr()),
    )?;
    assert_ne!(proxy.addr("public"), proxy.addr("internal"));

    for listener in ["public", "internal"] {
        let reply = client::get(proxy.addr(listener), "app.example.org", "/x").await?;
        assert_eq!(reply.echo()?.upstream, "app", "via {listener}");
        let miss = client::get(proxy.addr(listener), "nope.example.org", "/x").await?;
        assert_eq!(miss.status, StatusCode::NOT_FOUND, "via {listener}");
    }
    let other = client::get(proxy.addr("other"), "app.example.org", "/x").await?;
    assert_eq!(other.text(), "other");
    assert_eq!(app.requests(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_90_10_moves_about_ten_percent() -> Result<()> {
    let stable = Upstream::echo("stable").await?;
    let canary = Upstream::echo("canary").await?;
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
        routes:
          - match: { prefix: / }
            split:
              - { cluster: stable, weight: 90 }
              - { cluster: canary, weight: 10 }
clusters:
  - { name: stable, endpoints: ["${STABLE}"] }
  - { name: canary, endpoints: ["${CANARY}"] }
"#,
        )
        .set("STABLE", stable.addr())
        .set("CANARY", canary.addr()),
    )?;

    let counts = count_upstreams(proxy.addr("front"), "app.example.org", 1000, 4).await?;

    let canary_share = counts.get("canary").copied().unwrap_or(0);
    let stable_share = counts.get("stable").copied().unwrap_or(0);
    assert_eq!(canary_share + stable_share, 1000, "{counts:?}");
    assert!(
        (50..=150).contains(&canary_share),
        "canary should get 10% ± 5% of 1000 requests, got {canary_share} ({counts:?})"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_follows_endpoint_weights_and_skips_unpooled_endpoints() -> Result<()> {
    let light = Upstream::echo("light").await?;
    let heavy = Upstream::echo("heavy").await?;
    let depooled = Upstream::echo("depooled").await?;
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
        routes: [{ match: { prefix: / }, cluster: app }]
clusters:
  - name: app
    lb: round_robin
    endpoints:
      - { address: "${LIGHT}", weight: 1 }
      - { address: "${HEAVY}", weight: 3 }
      - { address: "${DEPOOLED}", weight: 5, pooled: false }
"#,
        )
        .set("LIGHT", light.addr())
        .set("HEAVY", heavy.addr())
        .set("DEPOOLED", depooled.addr()),
    )?;

    let counts = count_upstreams(proxy.addr("front"), "app.example.org", 400, 2).await?;

    let light_share = counts.get("light").copied().unwrap_or(0);
    let heavy_share = counts.get("heavy").copied().unwrap_or(0);
    assert_eq!(light_share + heavy_share, 400, "{counts:?}");
    assert!(
        (88..=112).contains(&light_share),
        "weight 1 of 4 should get about 25% of 400 requests, got {light_share} ({counts:?})"
    );
    assert_eq!(
        depooled.requests(),
        0,
        "an unpooled endpoint gets no requests"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_build_the_location_from_the_request_and_the_rule() -> Result<()> {
    let proxy = Proxy::start(
        r#"
admin: { listen: 127.0.0.1:0 }
access_log: { enabled: false }
listeners:
  - { name: front, listen: 127.0.0.1:0, http: { route_table: main } }
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes:
          - match: { prefix: /moved }
            redirect: { path: /new-home }
          - match: { prefix: /secure }
            redirect: { scheme: https, host: secure.example.org, strip_query: true, status: 308 }
          - match: { prefix: /port }
            redirect: { port: 8443, status: 302 }
          - match: { prefix: /see-other }
            redirect: { host: other.example.org, port: 9000, path: /landing, status: 303 }
"#,
    )?;
    let front = proxy.addr("front");

    let cases = [
        (
            "/moved/a?x=1",
            301,
            "http://old.example.org:8080/new-home?x=1",
        ),
        (
            "/secure/login?next=/",
            308,
            "https://secure.example.org/secure/login",
        ),
        ("/port/p?q", 302, "http://old.example.org:8443/port/p?q"),
        (
            "/see-other?y=2",
            303,
            "http://other.example.org:9000/landing?y=2",
        ),
    ];
    let mut client = Http1::connect(front).await?;
    for (path, status, location) in cases {
        let reply = client.get("old.example.org:8080", path).await?;
        assert_eq!(reply.status.as_u16(), status, "{path}");
        assert_eq!(reply.header("location"), Some(location), "{path}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respond_answers_directly_with_status_body_and_headers() -> Result<()> {
    let proxy = Proxy::start(
        r#"
admin: { listen: 127.0.0.1:0 }
access_log: { enabled: false }
listeners:
  - { name: front, listen: 127.0.0.1:0, http: { route_table: main } }
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes:
          - match: { exact: /teapot }
            respond: { status: 418, body: "short and stout\n", headers: { x-teapot: "yes" } }
          - match: { exact: /json }
            respond: { status: 200, body: '{"ok":true}', headers: { content-type: application/json } }
          - match: { exact: /empty }
            respond: { status: 204 }
"#,
    )?;
    let mut client = Http1::connect(proxy.addr("front")).await?;

    let teapot = client.get("x", "/teapot").await?;
    assert_eq!(teapot.status.as_u16(), 418);
    assert_eq!(teapot.text(), "short and stout\n");
    assert_eq!(teapot.header("x-teapot"), Some("yes"));
    assert_eq!(
        teapot.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(
        teapot.legate_error(),
        None,
        "a configured answer is not an error"
    );

    let json = client.get("x", "/json").await?;
    assert_eq!(json.header("content-type"), Some("application/json"));
    assert_eq!(json.json()?["ok"], true);

    let empty = client.get("x", "/empty").await?;
    assert_eq!(empty.status, StatusCode::NO_CONTENT);
    assert!(empty.body.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_prefix_rewrites_change_what_the_upstream_sees() -> Result<()> {
    let h1 = Upstream::builder("h1").http1_only().start().await?;
    let h2 = Upstream::builder("h2").http2_only().start().await?;
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
        routes:
          - match: { prefix: /api/ }
            cluster: h1
            host_rewrite: backend.internal:8080
            prefix_rewrite: /internal/v2/
          - match: { prefix: /grpc/ }
            cluster: h2
            host_rewrite: grpc.internal
            prefix_rewrite: /
          - match: { prefix: /plain }
            cluster: h1
clusters:
  - { name: h1, endpoints: ["${H1}"] }
  - { name: h2, protocol: http2, endpoints: ["${H2}"] }
"#,
        )
        .set("H1", h1.addr())
        .set("H2", h2.addr()),
    )?;
    let mut client = Http1::connect(proxy.addr("front")).await?;

    let api = client
        .get("public.example.org", "/api/users/7?full=1")
        .await?
        .echo()?;
    assert_eq!(api.path, "/internal/v2/users/7?full=1");
    assert_eq!(api.header("host"), Some("backend.internal:8080"));

    let grpc = client
        .get("public.example.org", "/grpc/Svc/Call")
        .await?
        .echo()?;
    assert_eq!(grpc.path, "/Svc/Call");
    assert_eq!(grpc.authority.as_deref(), Some("grpc.internal"));

    let plain = client.get("public.example.org", "/plain/x").await?.echo()?;
    assert_eq!(plain.path, "/plain/x");
    assert_eq!(plain.header("host"), Some("public.example.org"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rules_add_and_remove_request_and_response_headers() -> Result<()> {
    let app = Upstream::echo("app").await?;
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
        routes:
          - match: { prefix: /app }
            cluster: app
            request_headers:
              add: { x-added: "yes", x-replaced: new }
              remove: [x-secret]
            response_headers:
              add: { x-served-by: legate }
              remove: [x-upstream]
          - match: { prefix: /direct }
            respond: { status: 200, body: direct, headers: { x-drop-me: "1" } }
            response_headers:
              add: { x-served-by: legate }
              remove: [x-drop-me]
clusters:
  - { name: app, endpoints: ["${APP}"] }
"#,
        )
        .set("APP", app.addr()),
    )?;
    let mut client = Http1::connect(proxy.addr("front")).await?;

    let mut req = request(Method::GET, "app.example.org", "/app");
    req.headers_mut().insert("x-replaced", "old".parse()?);
    req.headers_mut().append("x-replaced", "older".parse()?);
    req.headers_mut().insert("x-secret", "hunter2".parse()?);
    req.headers_mut().insert("x-kept", "1".parse()?);
    let reply = client.request(req).await?;

    let echo = reply.echo()?;
    assert_eq!(echo.header("x-added"), Some("yes"));
    assert_eq!(echo.header_all("x-replaced"), ["new"]);
    assert!(!echo.has_header("x-secret"), "{echo:?}");
    assert_eq!(echo.header("x-kept"), Some("1"));
    assert_eq!(reply.header("x-served-by"), Some("legate"));
    assert_eq!(
        reply.upstream(),
        None,
        "x-upstream was removed from the response"
    );

    let direct = client.get("app.example.org", "/direct").await?;
    assert_eq!(direct.text(), "direct");
    assert_eq!(direct.header("x-served-by"), Some("legate"));
    assert_eq!(direct.header("x-drop-me"), None);
    Ok(())
}

/// A raw HTTP/1.1 request for `target` (sent as written, no client library in between);
/// returns the status line's code and the whole answer.
async fn raw_get(addr: std::net::SocketAddr, host: &str, target: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut answer),
    )
    .await??;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let code = answer
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_default();
    Ok((code, answer))
}

/// The echoed request path in a raw answer's JSON body.
fn echoed_path(answer: &str) -> Result<String> {
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let echo: legate_integration::upstream::Echo = serde_json::from_str(body)?;
    Ok(echo.path)
}

const NORMALIZING: &str = r#"
admin: { listen: 127.0.0.1:0 }
access_log: { enabled: false }
listeners:
  - { name: front, listen: 127.0.0.1:0, http: { route_table: main } }
  - name: strict
    listen: 127.0.0.1:0
    http: { route_table: main, merge_slashes: false, escaped_slashes: reject }
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes:
          - { match: { prefix: /admin }, cluster: admin }
          - { match: { prefix: /api }, cluster: public, prefix_rewrite: / }
          - { match: { prefix: / }, cluster: public }
clusters:
  - { name: admin, endpoints: ["${ADMIN_APP}"] }
  - { name: public, endpoints: ["${PUBLIC}"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_path_routes_and_travels_as_the_one_path() -> Result<()> {
    let admin = Upstream::echo("admin").await?;
    let public = Upstream::echo("public").await?;
    let proxy = Proxy::start(
        yaml(NORMALIZING)
            .set("ADMIN_APP", admin.addr())
            .set("PUBLIC", public.addr()),
    )?;
    let front = proxy.addr("front");
    for spelling in [
        "/admin/users",
        "/%61dmin/users",
        "//admin/users",
        "/x/../admin/users",
        "/./admin//users",
        "/public/%2e%2e/admin/users",
    ] {
        let (code, answer) = raw_get(front, "app.example.org", spelling).await?;
        assert_eq!(code, 200, "{spelling}: {answer}");
        assert!(answer.contains("x-upstream: admin"), "{spelling}: {answer}");
        assert_eq!(echoed_path(&answer)?, "/admin/users", "{spelling}");
    }
    // The query is kept as sent.
    let (_, answer) = raw_get(front, "app.example.org", "/x/../admin?next=/a/../b").await?;
    assert_eq!(echoed_path(&answer)?, "/admin?next=/a/../b");
    // An encoded slash is no separator: it stays encoded, and `/admin%2Fx` is one segment.
    let (_, answer) = raw_get(front, "app.example.org", "/public/a%2fb").await?;
    assert_eq!(echoed_path(&answer)?, "/public/a%2Fb");
    // A prefix rewrite cannot make a dot segment: `/api` + `../admin` is refused, never sent.
    let before = public.requests();
    let (code, answer) = raw_get(front, "app.example.org", "/api../admin").await?;
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("legate-error: bad-request"), "{answer}");
    assert_eq!(public.requests(), before, "nothing reached the upstream");
    // A broken escape is refused.
    let (code, answer) = raw_get(front, "app.example.org", "/admin%zz").await?;
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("legate-error: bad-request"), "{answer}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_may_keep_double_slashes_and_refuse_encoded_ones() -> Result<()> {
    let admin = Upstream::echo("admin").await?;
    let public = Upstream::echo("public").await?;
    let proxy = Proxy::start(
        yaml(NORMALIZING)
            .set("ADMIN_APP", admin.addr())
            .set("PUBLIC", public.addr()),
    )?;
    let strict = proxy.addr("strict");
    let (code, answer) = raw_get(strict, "app.example.org", "//admin").await?;
    assert_eq!(code, 200, "{answer}");
    assert!(answer.contains("x-upstream: public"), "{answer}");
    assert_eq!(echoed_path(&answer)?, "//admin");
    for encoded in ["/public/a%2Fb", "/public/a%5cb", "/public/a\\b"] {
        let (code, answer) = raw_get(strict, "app.example.org", encoded).await?;
        assert_eq!(code, 400, "{encoded}: {answer}");
    }
    // Dot segments are removed whatever the listener says.
    let (_, answer) = raw_get(strict, "app.example.org", "/x/../admin").await?;
    assert!(answer.contains("x-upstream: admin"), "{answer}");
    Ok(())
}

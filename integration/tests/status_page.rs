//! The admin status page (`GET /`), loaded by headless Chromium from a running Legate with a
//! 90/10 split over two clusters, one with an endpoint that fails its health checks, and a
//! listener whose name is markup. The DOM Chromium builds must show both split targets with
//! their weights, the last minute's requests and 5xx ratio of each side, the unhealthy
//! endpoint marked as such, and the markup as text. A screenshot
//! is saved as `target/test-artifacts/status-page.png`.
//!
//! Needs Chromium (Debian's `chromium`, which `.ci/run` installs); run as root with the
//! flags its sandbox needs there.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use legate_integration::client;
use legate_integration::container::repo_root;
use legate_integration::eventually;
use legate_integration::proxy::{yaml, Proxy};
use legate_integration::upstream::{closed_port, Upstream};

const CONFIG: &str = r#"
admin: { listen: 127.0.0.1:0 }
access_log: { enabled: false }
listeners:
  - { name: "<script>document.title='pwned'</script>", listen: 127.0.0.1:0, http: { route_table: maps } }
route_tables:
  maps:
    virtual_hosts:
      - hosts: [maps.example.org]
        routes:
          - match: { prefix: / }
            rate_limits: [{ name: "<b>api</b>", requests: 100000, per: 1s }]
            split:
              - { cluster: kartotherian-metal, weight: 90 }
              - { cluster: kartotherian-k8s, weight: 10 }
clusters:
  - name: kartotherian-metal
    health_check: { tcp: {}, interval: 200ms, timeout: 200ms, unhealthy_threshold: 1 }
    endpoints: ["${METAL}"]
  - name: kartotherian-k8s
    health_check: { tcp: {}, interval: 200ms, timeout: 200ms, unhealthy_threshold: 1 }
    endpoints: ["${K8S}"]
"#;

/// Chromium's headless flags for running as root on these machines, with a fresh profile.
fn chromium(profile: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    cmd
}

async fn run(mut cmd: tokio::process::Command) -> Result<std::process::Output> {
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .context("chromium did not finish in 60s")?
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot run chromium ({e}): install it (`apt-get install chromium`, as .ci/run does)"
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_split_weights_unhealthy_endpoints_and_escapes_names() -> Result<()> {
    let metal = Upstream::echo("metal").await?;
    let k8s = closed_port();
    let proxy = Proxy::start(yaml(CONFIG).set("METAL", metal.addr()).set("K8S", k8s))?;
    let admin = proxy.admin();
    eventually(Duration::from_secs(10), || async {
        let clusters = client::get(admin, "admin", "/clusters").await?.json()?;
        let text = clusters.to_string();
        ensure!(
            text.contains("\"health\":\"unhealthy\""),
            "no unhealthy endpoint yet: {text}"
        );
        Ok(())
    })
    .await?;

    // Traffic over the split until both sides have had some: metal answers, k8s cannot.
    let front = proxy.addr("<script>document.title='pwned'</script>");
    let (mut to_metal, mut to_k8s) = (0u32, 0u32);
    while to_metal == 0 || to_k8s == 0 {
        ensure!(
            to_metal + to_k8s < 2000,
            "the split never picked both sides"
        );
        let reply = client::get(front, "maps.example.org", "/").await?;
        match (reply.status.as_u16(), reply.upstream()) {
            (200, Some("metal")) => to_metal += 1,
            (502..=504, None) => to_k8s += 1,
            other => anyhow::bail!("answered {other:?}"),
        }
    }

    let url = format!("http://{admin}/");
    let profile = tempfile::tempdir()?;
    let mut dump = chromium(profile.path());
    dump.arg("--dump-dom").arg(&url);
    let out = run(dump).await?;
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success() && dom.contains("</html>"),
        "chromium --dump-dom failed ({}):\n{}\n{dom}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    for (cluster, weight) in [("kartotherian-metal", 90), ("kartotherian-k8s", 10)] {
        let target = format!("data-cluster=\"{cluster}\" data-weight=\"{weight}\"");
        assert!(dom.contains(&target), "no split target {target} in:\n{dom}");
    }
    assert!(dom.contains("weight 90 (90 %)"), "{dom}");
    // The last minute, by split target and by cluster: each side's requests, and its 5xx.
    let route = "route_tables.maps.virtual_hosts[0].routes[0]";
    for (cluster, requests, errors) in [
        ("kartotherian-metal", to_metal, "0.0 %"),
        ("kartotherian-k8s", to_k8s, "100.0 %"),
    ] {
        let cells = [
            format!("<td class=\"requests\">{requests}</td>"),
            format!("<td class=\"errors\">{errors}</td>"),
        ];
        let target = row(
            &dom,
            &format!("data-route=\"{route}\" data-cluster=\"{cluster}\">"),
        );
        let total = row(
            &dom,
            &format!("class=\"cluster-traffic\" data-cluster=\"{cluster}\">"),
        );
        for row in [target, total] {
            for cell in &cells {
                assert!(row.contains(cell), "no {cell} in {row:?} of:\n{dom}");
            }
        }
    }
    // The route's rate limit, its name as text, and every request it let through.
    let limit = row(&dom, "<td>&lt;b&gt;api&lt;/b&gt;</td>");
    assert!(
        limit.contains("<td>100000 per 1s, burst 100000</td><td>route</td>")
            && limit.contains(&format!(
                "<td>{}</td><td>0</td><td>0</td>",
                to_metal + to_k8s
            )),
        "no rate limit row in:\n{dom}"
    );
    let unhealthy = format!("<tr class=\"endpoint unhealthy\" data-address=\"{k8s}\">");
    assert!(dom.contains(&unhealthy), "no {unhealthy} in:\n{dom}");
    let healthy = format!(
        "<tr class=\"endpoint healthy\" data-address=\"{}\">",
        metal.addr()
    );
    assert!(dom.contains(&healthy), "no {healthy} in:\n{dom}");
    // The listener's name is text: no script ran (the title is ours) and none is in the DOM.
    assert!(
        dom.contains("&lt;script&gt;document.title='pwned'&lt;/script&gt;"),
        "the name shown as text:\n{dom}"
    );
    assert!(!dom.contains("<script"), "a script element in:\n{dom}");
    assert!(dom.contains("<title>Legate "), "{dom}");

    let artifacts: PathBuf = repo_root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts)?;
    let shot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let mut screenshot = chromium(profile.path());
    screenshot
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1280,1600")
        .arg(&url);
    let out = run(screenshot).await?;
    ensure!(
        out.status.success() && shot.is_file(),
        "no screenshot ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The rest of the table row of `dom` that `marker` starts, up to its `</tr>` (empty when
/// there is none).
fn row<'a>(dom: &'a str, marker: &str) -> &'a str {
    let Some(at) = dom.find(marker) else {
        return "";
    };
    let rest = &dom[at..];
    &rest[..rest.find("</tr>").unwrap_or(rest.len())]
}

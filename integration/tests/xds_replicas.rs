//! `legate-xds` replicas sharing their operator overrides through a real three-member etcd
//! cluster on loopback: a change through one replica reaches proxies connected to the other,
//! concurrent changes through both never lose one, and when a replica and an etcd member are
//! killed, proxies fail over and changes still go through.
//!
//! Needs `cargo build -p legate --bin legate -p legate-xds --bin legate-xds` first, and
//! Debian's `etcd-server` (installed by `.ci/run`).

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use http::{Method, StatusCode};
use legate_integration::etcd::EtcdCluster;
use legate_integration::proxy::{yaml, Proxy};
use legate_integration::upstream::Upstream;
use legate_integration::{client, eventually};
use legate_xds::cli::{request, CliError};
use legate_xds::{serve, ServeConfig, ServerHandle, StateStore};
use serde_json::{json, Value};

/// A change's way to a proxy on the other replica: etcd's watch, then a push.
const PUSH: Duration = Duration::from_secs(5);

/// Group `maps`: listener `front`, route `kartotherian` split 90/10 between `metal` and `k8s`.
fn group(metal: &Upstream, k8s: &Upstream) -> String {
    format!(
        r#"
listeners:
  - {{ name: front, listen: "127.0.0.1:0", http: {{ route_table: main }} }}
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes:
          - name: kartotherian
            match: {{ prefix: / }}
            split: [{{ cluster: metal, weight: 90 }}, {{ cluster: k8s, weight: 10 }}]
clusters:
  - {{ name: metal, endpoints: ["{}"] }}
  - {{ name: k8s, endpoints: ["{}"] }}
"#,
        metal.addr(),
        k8s.addr()
    )
}

async fn replica(root: &Path, name: &str, etcd: &EtcdCluster) -> Result<ServerHandle> {
    serve(ServeConfig {
        dir: root.join("groups"),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        store: StateStore::Etcd {
            members: etcd.members(),
            prefix: "/legate-test/".into(),
        },
        tls: None,
        roles: None,
        audit: Some(root.join(format!("{name}.audit.jsonl"))),
        limits: legate_xds::server::Limits::default(),
    })
    .await
    .with_context(|| format!("starting replica {name}"))
}

/// A proxy of group `maps` following `servers` in turn.
fn proxy(id: &str, servers: &[SocketAddr]) -> Result<Proxy> {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    Proxy::start(yaml(&format!(
        "node: {{ id: {id}, cluster: maps, zone: a }}\n\
         xds: {{ server: [{}] }}\n\
         admin: {{ listen: 127.0.0.1:0 }}\n\
         access_log: {{ enabled: false }}\n\
         runtime: {{ workers: 1 }}\n",
        list.join(", ")
    )))
}

async fn admin_json(addr: SocketAddr, path: &str) -> Result<Value> {
    let reply = client::get(addr, "admin", path).await?;
    ensure!(reply.status == StatusCode::OK, "{path}: {}", reply.status);
    reply.json()
}

/// `pooled` of the only endpoint of `cluster` in a proxy's `/clusters`.
async fn pooled(admin: SocketAddr, cluster: &str) -> Result<Value> {
    let clusters = admin_json(admin, "/clusters").await?;
    let c = clusters["clusters"]
        .as_array()
        .context("clusters")?
        .iter()
        .find(|c| c["name"] == cluster)
        .with_context(|| format!("no {cluster}: {clusters:#}"))?;
    Ok(c["endpoints"][0]["pooled"].clone())
}

/// `k8s`'s weight in the split override a replica serves.
async fn k8s_weight(server: &str) -> Result<Value> {
    let status = request(server, Method::GET, "/v1/status", None).await?;
    let targets = &status["splits"]["maps"]["main"]["kartotherian"];
    let k8s = targets
        .as_array()
        .and_then(|t| t.iter().find(|t| t["cluster"] == "k8s"))
        .map(|t| t["weight"].clone());
    Ok(k8s.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_changes_through_etcd_and_proxies_fail_over() -> Result<()> {
    let mut etcd = EtcdCluster::start(3).await?;
    let metal = Upstream::echo("metal").await?;
    let k8s = Upstream::echo("k8s").await?;
    let root = tempfile::tempdir()?;
    std::fs::create_dir_all(root.path().join("groups/maps"))?;
    std::fs::write(
        root.path().join("groups/maps/all.yaml"),
        group(&metal, &k8s),
    )?;
    let r1 = replica(root.path(), "r1", &etcd).await?;
    let r2 = replica(root.path(), "r2", &etcd).await?;
    let (a1, a2) = (r1.local_addr(), r2.local_addr());
    let (url1, url2) = (format!("http://{a1}"), format!("http://{a2}"));

    let p1 = proxy("p1", &[a1])?;
    let p2 = proxy("p2", &[a2])?;
    let p3 = proxy("p3", &[a1, a2])?;
    for p in [&p1, &p2, &p3] {
        p.wait_ready().await?;
    }

    // A change through r1 reaches p2, which follows r2.
    let depool = json!({ "cluster": "metal", "address": metal.addr().to_string() });
    request(&url1, Method::POST, "/v1/endpoints/depool", Some(depool)).await?;
    eventually(PUSH, || async {
        let p = pooled(p2.admin(), "metal").await?;
        ensure!(p == false, "p2 sees metal pooled={p}");
        Ok(())
    })
    .await?;

    // Steps of one point through both replicas at once: each either lands or is told of the
    // conflict, and none is lost: k8s ends at 10 + the steps that landed.
    let step = json!({ "group": "maps", "route_table": "main", "route": "kartotherian",
                       "cluster": "k8s", "points": 1 });
    let mut steps = tokio::task::JoinSet::new();
    for i in 0..12 {
        let url = if i % 2 == 0 {
            url1.clone()
        } else {
            url2.clone()
        };
        let body = step.clone();
        steps
            .spawn(async move { request(&url, Method::POST, "/v1/routes/step", Some(body)).await });
    }
    let (mut landed, mut told) = (0u64, 0u64);
    while let Some(answer) = steps.join_next().await {
        match answer? {
            Ok(a) => {
                ensure!(a["result"] == "ok", "{a:#}");
                landed += 1;
            }
            Err(CliError::Server { status, message }) => {
                ensure!(status == StatusCode::CONFLICT, "{status}: {message}");
                ensure!(message.contains("changed meanwhile"), "{message}");
                told += 1;
            }
            Err(e) => anyhow::bail!("a step failed: {e}"),
        }
    }
    ensure!(landed >= 1, "no step landed ({told} conflicts)");
    eprintln!("steps: {landed} landed, {told} told of a conflict");
    for url in [&url1, &url2] {
        eventually(PUSH, || async {
            let w = k8s_weight(url).await?;
            ensure!(
                w == json!(10 + landed),
                "{url}: k8s weight {w}, {landed} steps landed, {told} told of a conflict"
            );
            Ok(())
        })
        .await?;
    }

    // One replica and one etcd member die: p3 fails over to r2 with nothing sent again, and a
    // change through r2 reaches every proxy left.
    // First, p3 holds all r1 serves (the last step included).
    let held = eventually(PUSH, || async {
        let status = request(&url1, Method::GET, "/v1/status", None).await?;
        let served = status["groups"]["maps"]["versions"].clone();
        let held = admin_json(p3.admin(), "/config").await?["xds"]["versions"].clone();
        for t in ["listeners", "route_tables", "clusters"] {
            ensure!(
                held[t] == served[t],
                "{t}: p3 holds {held:#}, r1 serves {served:#}"
            );
        }
        Ok(held)
    })
    .await?;
    r1.shutdown().await;
    etcd.kill(0).await?;
    let session = eventually(Duration::from_secs(10), || async {
        let status = request(&url2, Method::GET, "/v1/status", None).await?;
        let p3 = status["proxies"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["node"]["id"] == "p3"))
            .cloned();
        p3.context("p3 is not on r2 yet")
    })
    .await?;
    for t in ["listeners", "route_tables", "clusters"] {
        assert!(
            session["versions"][t]["sent"].is_null(),
            "{t} was sent again after the fail-over: {session:#}"
        );
        assert_eq!(session["versions"][t]["acked"], held[t], "{session:#}");
    }
    // The first try may meet etcd electing a new leader: the answer is then an error and
    // nothing changed, so it is simply asked again.
    let pool = json!({ "cluster": "metal", "address": metal.addr().to_string() });
    eventually(Duration::from_secs(15), || async {
        request(
            &url2,
            Method::POST,
            "/v1/endpoints/pool",
            Some(pool.clone()),
        )
        .await?;
        Ok(())
    })
    .await?;
    for p in [&p2, &p3] {
        eventually(PUSH, || async {
            let pooled = pooled(p.admin(), "metal").await?;
            ensure!(pooled == true, "metal pooled={pooled}");
            Ok(())
        })
        .await?;
    }
    drop(p1);
    r2.shutdown().await;
    Ok(())
}

/// Against etcd itself, with no watch to catch up: a change computed from a view that
/// another writer has since changed is refused, even one that would leave the override as
/// this view has it (a depool meeting a pool made meanwhile is not silently confirmed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_from_a_stale_view_is_refused_even_when_it_changes_nothing() -> Result<()> {
    use legate_xds::etcd::{Etcd, Swap, Write};
    use legate_xds::state::replicated::{Replicated, SwapError, Touched};
    use legate_xds::store::{Operation, OperatorRequest, Overrides};

    let etcd = EtcdCluster::start(1).await?;
    let one = Replicated::new(Etcd::new(etcd.members()), "/t/");
    let (empty, _) = one.load().await?;
    let depool = OperatorRequest {
        cluster: "tiles".into(),
        address: "10.0.0.1:80".into(),
        operation: Operation::Depool,
    };
    let touched = Touched::Endpoint {
        cluster: "tiles".into(),
        address: "10.0.0.1:80".into(),
    };
    let depooled = empty.with(&depool);
    one.swap(&empty, &depooled, &touched).await?;

    // Another writer pools it; `one` has not seen that.
    let other = Etcd::new(etcd.members());
    let key = "/t/endpoints/tiles/10.0.0.1:80";
    let held = other.get(key).await?.context("the override is in etcd")?;
    let pooled = br#"{"pooled":true}"#.to_vec();
    let swapped = other
        .swap_all(&[(
            key.to_owned(),
            held.mod_revision,
            Write::Put(pooled.clone()),
        )])
        .await?;
    assert!(matches!(swapped, Swap::Done(_)), "{swapped:?}");

    // Depool again from the stale view: to `one` nothing changes, yet it is refused.
    let again = depooled.with(&depool);
    assert_eq!(again, depooled);
    let refused = one.swap(&depooled, &again, &touched).await;
    assert!(matches!(refused, Err(SwapError::Conflict)), "{refused:?}");
    assert_eq!(other.get(key).await?.map(|kv| kv.value), Some(pooled));
    // A reset from the stale view is refused too, and the override stays.
    let reset = OperatorRequest {
        operation: Operation::Reset,
        ..depool.clone()
    };
    let refused = one.swap(&depooled, &depooled.with(&reset), &touched).await;
    assert!(matches!(refused, Err(SwapError::Conflict)), "{refused:?}");
    // Read again, the view is current and the change goes through.
    let (now, _) = one.load().await?;
    assert_ne!(now, Overrides::default());
    one.swap(&now, &now.with(&depool), &touched).await?;
    assert_eq!(
        other.get(key).await?.map(|kv| kv.value),
        Some(br#"{"pooled":false}"#.to_vec())
    );
    Ok(())
}

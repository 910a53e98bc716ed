//! How long an operator change takes to reach many proxies: `legate-xds serve` (the release
//! binary, as separate processes: 1 replica on a state file, or 3 sharing etcd) and N simulated
//! proxies in this process, each one HTTP/2 stream speaking the real protocol over loopback
//! (hello, ACK every update). Each change (alternately an endpoint weight and a split step,
//! made through the first replica) is timed from before its request to the last proxy's ACK.
//! Also the servers' memory per connected proxy (RSS growth over N sessions).
//!
//! Run with `bench/fanout.sh` (which raises the open-file limit and builds the binary), or
//! `cargo bench -p legate-xds --bench fanout -- [--proxies N] [--replicas 1|3] [--changes K]`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use legate_xds::cli::request;
use legate_xds::protocol::{LineDecoder, Message, Node, ResourceType, CONTENT_TYPE, STREAM_PATH};
use legate_xds::server::ChannelBody;
use serde_json::json;
use tokio::sync::mpsc;

struct Args {
    proxies: usize,
    replicas: Vec<usize>,
    changes: usize,
}

fn args() -> Args {
    let mut a = Args {
        proxies: 1000,
        replicas: vec![1, 3],
        changes: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().and_then(|v| v.parse::<usize>().ok());
        match arg.as_str() {
            "--proxies" => a.proxies = value().expect("--proxies N"),
            "--replicas" => a.replicas = vec![value().expect("--replicas 1 or 3")],
            "--changes" => a.changes = value().expect("--changes K"),
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: `cargo build --release -p legate-xds` first (bench/fanout.sh does)",
        path.display()
    );
    path
}

/// A killed-on-drop child process.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

const GROUP: &str = r#"
listeners:
  - { name: front, listen: "127.0.0.1:0", http: { route_table: main } }
route_tables:
  main:
    virtual_hosts:
      - hosts: ["*"]
        routes:
          - name: kartotherian
            match: { prefix: / }
            split: [{ cluster: metal, weight: 90 }, { cluster: k8s, weight: 10 }]
"#;

fn write_group(dir: &Path) {
    let group = dir.join("groups/maps");
    std::fs::create_dir_all(&group).unwrap();
    std::fs::write(group.join("routes.yaml"), GROUP).unwrap();
    let eps = |n: usize, net: u8| -> String {
        (0..n)
            .map(|i| format!("\"10.{net}.0.{}:80\"", i + 1))
            .collect::<Vec<_>>()
            .join(", ")
    };
    std::fs::write(
        group.join("clusters.yaml"),
        format!(
            "clusters:\n  - {{ name: metal, endpoints: [{}] }}\n  - {{ name: k8s, endpoints: [{}] }}\n",
            eps(10, 1),
            eps(10, 2)
        ),
    )
    .unwrap();
}

async fn wait_serving(url: &str) {
    wait_serving_at(url, "/v1/status").await;
}

async fn wait_serving_at(url: &str, path: &str) {
    for _ in 0..500 {
        if request(url, Method::GET, path, None).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{url} never answered");
}

/// One simulated proxy: hello, then an ACK for every update, each reported as (id, when).
async fn simulated(id: usize, server: SocketAddr, acks: mpsc::UnboundedSender<(usize, Instant)>) {
    let tcp = tokio::net::TcpStream::connect(server).await.unwrap();
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (tx, body) = ChannelBody::channel(16);
    let hello = Message::Hello {
        node: Node {
            id: format!("sim{id}"),
            cluster: "maps".into(),
            zone: None,
        },
        versions: BTreeMap::new(),
        endpoint_versions: BTreeMap::new(),
    };
    tx.send(Bytes::from(hello.encode())).await.unwrap();
    let req = Request::post(format!("http://{server}{STREAM_PATH}"))
        .header("content-type", CONTENT_TYPE)
        .body(body)
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut decoder = LineDecoder::default();
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        decoder.push(&data);
        while let Some(m) = decoder.next_message() {
            let ack = match m.unwrap() {
                Message::Ping => Some(Message::Pong),
                Message::Response {
                    resource_type,
                    version_info,
                    nonce,
                    ..
                } => Some(Message::Ack {
                    resource_type,
                    version_info,
                    nonce,
                }),
                Message::Delta {
                    system_version_info,
                    nonce,
                    ..
                } => Some(Message::Ack {
                    resource_type: ResourceType::Endpoints,
                    version_info: system_version_info,
                    nonce,
                }),
                _ => None,
            };
            if let Some(ack) = ack {
                let is_ack = matches!(ack, Message::Ack { .. });
                if tx.send(Bytes::from(ack.encode())).await.is_err() {
                    return;
                }
                if is_ack {
                    let _ = acks.send((id, Instant::now()));
                }
            }
        }
    }
}

/// Waits until every proxy has ACKed once after `since`; the time of the last of those ACKs.
async fn all_acked(
    acks: &mut mpsc::UnboundedReceiver<(usize, Instant)>,
    n: usize,
    since: Instant,
) -> Instant {
    let mut seen = HashSet::new();
    let mut last = since;
    while seen.len() < n {
        let (id, at) = tokio::time::timeout(Duration::from_secs(60), acks.recv())
            .await
            .expect("every proxy ACKs within a minute")
            .expect("the proxies are running");
        if at >= since && seen.insert(id) {
            last = last.max(at);
        }
    }
    last
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(proxies: usize, replicas: usize, changes: usize) {
    let dir = tempfile::tempdir().unwrap();
    write_group(dir.path());
    let xds = binary("legate-xds");
    let mut _etcd = None;
    let store: Vec<String> = if replicas > 1 {
        let (client, peer) = (free_port(), free_port());
        let child = Command::new("etcd")
            .args(["--name", "b", "--data-dir"])
            .arg(dir.path().join("etcd"))
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args(["--initial-cluster", &format!("b=http://127.0.0.1:{peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (apt-get install etcd-server)");
        _etcd = Some(Proc(child));
        wait_serving_at(&format!("http://127.0.0.1:{client}"), "/health").await;
        vec!["--store".into(), format!("etcd://127.0.0.1:{client}")]
    } else {
        vec![
            "--state".into(),
            dir.path().join("state.json").display().to_string(),
        ]
    };
    let mut servers = Vec::new();
    let mut procs = Vec::new();
    for r in 0..replicas {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(&xds)
            .arg("serve")
            .arg("--dir")
            .arg(dir.path().join("groups"))
            .args(["--listen", &addr.to_string()])
            .args(&store)
            .arg("--audit")
            .arg(dir.path().join(format!("audit{r}.jsonl")))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        procs.push(Proc(child));
        wait_serving(&format!("http://{addr}")).await;
        servers.push(addr);
    }
    let rss_before: u64 = procs.iter().map(|p| rss_kib(p.0.id())).sum();

    let (acks_tx, mut acks) = mpsc::unbounded_channel();
    let started = Instant::now();
    for id in 0..proxies {
        tokio::spawn(simulated(id, servers[id % replicas], acks_tx.clone()));
    }
    // Every proxy's four first updates.
    let mut first = vec![0u8; proxies];
    let mut synced = 0;
    while synced < proxies {
        let (id, _) = acks.recv().await.unwrap();
        first[id] += 1;
        if first[id] == 4 {
            synced += 1;
        }
    }
    let connect = started.elapsed();
    let rss_after: u64 = procs.iter().map(|p| rss_kib(p.0.id())).sum();

    let operator = format!("http://{}", servers[0]);
    let mut times = Vec::new();
    for k in 0..changes {
        let t0 = Instant::now();
        if k % 2 == 0 {
            let body = json!({ "cluster": "metal", "address": "10.1.0.1:80", "weight": k + 2 });
            request(
                &operator,
                Method::POST,
                "/v1/endpoints/set-weight",
                Some(body),
            )
            .await
            .unwrap();
        } else {
            let points = if k % 4 == 1 { 1 } else { -1 };
            let body = json!({ "group": "maps", "route_table": "main", "route": "kartotherian",
                               "cluster": "k8s", "points": points });
            request(&operator, Method::POST, "/v1/routes/step", Some(body))
                .await
                .unwrap();
        }
        let last = all_acked(&mut acks, proxies, t0).await;
        times.push(last - t0);
    }
    times.sort();
    let kib_per_proxy = rss_after.saturating_sub(rss_before) as f64 / proxies as f64;
    println!(
        "fanout: {proxies} proxies, {replicas} replica(s){}: connected and synced in {:.0} ms; \
         change to last ACK over {changes} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         server memory {:.1} KiB per proxy",
        if replicas > 1 { " on etcd" } else { "" },
        connect.as_secs_f64() * 1e3,
        quantile(&times, 0.5).as_secs_f64() * 1e3,
        quantile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().unwrap().as_secs_f64() * 1e3,
        kib_per_proxy,
    );
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for replicas in &a.replicas {
        rt.block_on(run(a.proxies, *replicas, a.changes));
    }
}

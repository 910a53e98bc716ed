//! In-process test of the control plane: a raw HTTP/2 client plays a proxy (hello, ACKs), an
//! operator changes a weight, and the change arrives as a delta; restarts lose nothing (R14).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use legate_xds::cli::{request, CliError};
use legate_xds::protocol::{LineDecoder, Message, Node, ResourceType, CONTENT_TYPE, STREAM_PATH};
use legate_xds::server::ChannelBody;
use legate_xds::{serve, ServeConfig, ServerHandle};
use serde_json::{json, Value};
use tokio::sync::mpsc;

const LISTENERS: &str = r#"
listeners:
  - name: maps-plain
    listen: 127.0.0.1:0
    http: { route_table: maps }
route_tables:
  maps:
    virtual_hosts:
      - hosts: ["*"]
        routes:
          - match: { prefix: / }
            cluster: tegola
"#;

const CLUSTERS: &str = r#"
clusters:
  - name: tegola
    endpoints:
      - "10.0.0.1:80"
      - { address: "10.0.0.2:80", weight: 2 }
  - name: kartotherian
    endpoints: ["10.0.1.1:80"]
"#;

/// A proxy's end of one stream.
struct Proxy {
    tx: mpsc::Sender<Bytes>,
    body: Incoming,
    decoder: LineDecoder,
}

impl Proxy {
    async fn connect(handle: &ServerHandle) -> Proxy {
        let addr = handle.local_addr();
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let (tx, body) = ChannelBody::channel(16);
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{addr}{STREAM_PATH}"))
            .header("content-type", CONTENT_TYPE)
            .body(body)
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "R2");
        assert_eq!(resp.headers()["content-type"], CONTENT_TYPE);
        Proxy {
            tx,
            body: resp.into_body(),
            decoder: LineDecoder::default(),
        }
    }

    async fn send(&self, m: &Message) {
        self.tx.send(Bytes::from(m.encode())).await.unwrap();
    }

    async fn hello(&self, versions: BTreeMap<ResourceType, String>, eps: BTreeMap<String, String>) {
        self.send(&Message::Hello {
            node: Node {
                id: "maps1009".into(),
                cluster: "maps".into(),
                zone: Some("eqiad".into()),
            },
            versions,
            endpoint_versions: eps,
        })
        .await;
    }

    /// The next message, `None` if none comes within `wait`; panics if the stream ends.
    async fn recv(&mut self, wait: Duration) -> Option<Message> {
        match self.next(wait).await {
            Next::Message(m) => Some(m),
            Next::Nothing => None,
            Next::Ended => panic!("stream ended"),
        }
    }

    async fn next(&mut self, wait: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(m) = self.decoder.next_message() {
                let m = m.unwrap();
                if m == Message::Ping {
                    self.send(&Message::Pong).await;
                    continue;
                }
                return Next::Message(m);
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return Next::Nothing,
                Ok(None) | Ok(Some(Err(_))) => return Next::Ended,
                Ok(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        self.decoder.push(&d);
                    }
                }
            }
        }
    }

    async fn ack(&self, m: &Message) {
        let ack = match m {
            Message::Response {
                resource_type,
                version_info,
                nonce,
                ..
            } => Message::Ack {
                resource_type: *resource_type,
                version_info: version_info.clone(),
                nonce: nonce.clone(),
            },
            Message::Delta {
                system_version_info,
                nonce,
                ..
            } => Message::Ack {
                resource_type: ResourceType::Endpoints,
                version_info: system_version_info.clone(),
                nonce: nonce.clone(),
            },
            other => panic!("not an update: {other:?}"),
        };
        self.send(&ack).await;
    }
}

#[derive(Debug)]
enum Next {
    Message(Message),
    Nothing,
    Ended,
}

async fn start(dir: &Path, state: &Path) -> ServerHandle {
    serve(ServeConfig {
        dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        store: legate_xds::StateStore::File(state.to_path_buf()),
        tls: None,
        roles: None,
        audit: None,
        limits: legate_xds::server::Limits::default(),
    })
    .await
    .unwrap()
}

fn server(handle: &ServerHandle) -> String {
    format!("http://{}", handle.local_addr())
}

const SEC: Duration = Duration::from_secs(1);

/// `GET /v1/status`, asked again until `ready` holds for it (within 5 s): the server records
/// what a proxy sent after the test's own write returns.
async fn status_when(server: &str, ready: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..500 {
        let status = request(server, Method::GET, "/v1/status", None)
            .await
            .unwrap();
        if ready(&status) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("/v1/status never showed what the test waits for")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_sync_operator_change_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("groups");
    std::fs::create_dir_all(dir.join("maps")).unwrap();
    std::fs::write(dir.join("maps/listeners.yaml"), LISTENERS).unwrap();
    std::fs::write(dir.join("maps/clusters.yaml"), CLUSTERS).unwrap();
    let state = tmp.path().join("state.json");
    let handle = start(&dir, &state).await;

    // First sync: all four types.
    let mut proxy = Proxy::connect(&handle).await;
    proxy.hello(BTreeMap::new(), BTreeMap::new()).await;
    let mut versions = BTreeMap::new();
    let mut endpoint_versions = BTreeMap::new();
    let mut system = String::new();
    for _ in 0..4 {
        let m = proxy.recv(5 * SEC).await.expect("an update");
        match &m {
            Message::Response {
                resource_type,
                version_info,
                resources,
                ..
            } => {
                if *resource_type == ResourceType::Clusters {
                    assert_eq!(resources.len(), 2);
                    assert!(resources.iter().all(|c| c.get("endpoints").is_none()));
                }
                versions.insert(*resource_type, version_info.clone());
            }
            Message::Delta {
                resources,
                system_version_info,
                ..
            } => {
                assert_eq!(resources.len(), 2);
                for r in resources {
                    endpoint_versions.insert(r.name.clone(), r.version.clone());
                }
                system = system_version_info.clone();
            }
            other => panic!("{other:?}"),
        }
        proxy.ack(&m).await;
    }
    assert_eq!(versions.len(), 3);
    assert!(proxy.recv(SEC / 2).await.is_none(), "nothing more to send");

    // Ping is answered.
    proxy.send(&Message::Ping).await;
    assert_eq!(proxy.recv(SEC).await, Some(Message::Pong));

    // An operator change reaches the proxy within a second, as a delta of tegola only.
    let answer = request(
        &server(&handle),
        Method::POST,
        "/v1/endpoints/set-weight",
        Some(json!({"cluster": "tegola", "address": "10.0.0.1:80", "weight": 5})),
    )
    .await
    .unwrap();
    assert_eq!(answer["result"], "ok");
    assert_eq!(answer["groups"], json!(["maps"]));
    let delta = proxy.recv(SEC).await.expect("a delta within 1 s");
    let new_system = match &delta {
        Message::Delta {
            resources,
            removed_resources,
            system_version_info,
            ..
        } => {
            assert_eq!(resources.len(), 1);
            assert_eq!(resources[0].name, "tegola");
            assert_eq!(
                resources[0].endpoints,
                vec![
                    json!({"address": "10.0.0.1:80", "weight": 5}),
                    json!({"address": "10.0.0.2:80", "weight": 2})
                ]
            );
            assert!(removed_resources.is_empty());
            assert_ne!(system_version_info, &system);
            endpoint_versions.insert("tegola".into(), resources[0].version.clone());
            system_version_info.clone()
        }
        other => panic!("{other:?}"),
    };
    proxy.ack(&delta).await;
    // Persisted before it was acknowledged (R14).
    let saved: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(
        saved["overrides"]["clusters"]["tegola"]["10.0.0.1:80"]["weight"],
        5
    );

    // Status shows the ACKed versions, once the server has read the ACK.
    let status = status_when(&server(&handle), |s| {
        s["proxies"][0]["versions"]["endpoints"]["acked"] == json!(new_system)
    })
    .await;
    let p = &status["proxies"][0];
    assert_eq!(p["node"]["id"], "maps1009");
    assert_eq!(p["node"]["zone"], "eqiad");
    assert!(p["connected_since"].as_str().unwrap().ends_with('Z'));
    assert_eq!(p["versions"]["endpoints"]["acked"], json!(new_system));
    assert_eq!(
        p["versions"]["clusters"]["acked"],
        json!(versions[&ResourceType::Clusters])
    );
    assert_eq!(
        p["endpoints"]["tegola"]["acked"],
        json!(endpoint_versions["tegola"])
    );
    assert_eq!(status["overrides"]["tegola"]["10.0.0.1:80"]["weight"], 5);
    assert_eq!(
        status["groups"]["maps"]["versions"]["endpoints"],
        json!(new_system)
    );

    // Bad operator input changes nothing and says why.
    for (path, body, want) in [
        (
            "/v1/endpoints/depool",
            json!({"cluster": "nope", "address": "10.0.0.1:80"}),
            "unknown cluster \"nope\"",
        ),
        (
            "/v1/endpoints/pool",
            json!({"cluster": "tegola", "address": "10.9.9.9:80"}),
            "no endpoint with address \"10.9.9.9:80\"",
        ),
        (
            "/v1/endpoints/set-weight",
            json!({"cluster": "tegola", "address": "10.0.0.1:80", "weight": 0}),
            "weight must be between 1 and 10000, got 0",
        ),
    ] {
        match request(&server(&handle), Method::POST, path, Some(body)).await {
            Err(CliError::Server { status, message }) => {
                assert!(status.is_client_error());
                assert!(message.contains(want), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(proxy.recv(SEC / 2).await.is_none(), "nothing changed");

    // A file change is pushed: only the type that changed.
    std::fs::write(
        dir.join("maps/clusters.yaml"),
        CLUSTERS.replace(
            "  - name: kartotherian\n",
            "  - name: kartotherian\n    lb: random\n",
        ),
    )
    .unwrap();
    let m = proxy
        .recv(3 * SEC)
        .await
        .expect("a push after the file change");
    match &m {
        Message::Response {
            resource_type: ResourceType::Clusters,
            version_info,
            ..
        } => {
            versions.insert(ResourceType::Clusters, version_info.clone());
        }
        other => panic!("{other:?}"),
    }
    proxy.ack(&m).await;
    assert!(proxy.recv(SEC / 2).await.is_none());

    // A duplicate across files keeps the last good resources.
    std::fs::write(dir.join("maps/dup.yaml"), CLUSTERS).unwrap();
    assert!(
        proxy.recv(SEC).await.is_none(),
        "a broken group pushes nothing"
    );
    let status = request(&server(&handle), Method::GET, "/v1/status", None)
        .await
        .unwrap();
    let errors = status["groups"]["maps"]["errors"].as_array().unwrap();
    assert!(
        errors[0].as_str().unwrap().contains("is defined in"),
        "{errors:?}"
    );
    std::fs::remove_file(dir.join("maps/dup.yaml")).unwrap();

    // Restart: a proxy with current versions gets nothing (R13, R14).
    drop(proxy);
    handle.shutdown().await;
    let handle = start(&dir, &state).await;
    let mut proxy = Proxy::connect(&handle).await;
    versions.insert(ResourceType::Endpoints, new_system);
    proxy.hello(versions, endpoint_versions).await;
    assert!(
        proxy.recv(SEC).await.is_none(),
        "nothing changed across the restart"
    );

    // A malformed line closes the session (R4).
    proxy
        .tx
        .send(Bytes::from_static(b"{\"type\":\"nope\"}\n"))
        .await
        .unwrap();
    assert!(matches!(proxy.next(2 * SEC).await, Next::Ended));
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_group_gets_empty_resources_and_nack_is_not_resent() {
    let tmp = tempfile::tempdir().unwrap();
    let handle = start(tmp.path(), &tmp.path().join("state.json")).await;
    let mut proxy = Proxy::connect(&handle).await;
    proxy.hello(BTreeMap::new(), BTreeMap::new()).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        let m = proxy.recv(5 * SEC).await.expect("an update");
        match &m {
            Message::Response { resources, .. } => assert!(resources.is_empty()),
            Message::Delta {
                resources,
                removed_resources,
                ..
            } => assert!(resources.is_empty() && removed_resources.is_empty()),
            other => panic!("{other:?}"),
        }
        got.push(m);
    }
    // NACK the listeners; ACK the rest.
    for m in &got {
        match m {
            Message::Response {
                resource_type: ResourceType::Listeners,
                nonce,
                ..
            } => {
                proxy
                    .send(&Message::Nack {
                        resource_type: ResourceType::Listeners,
                        version_info: String::new(),
                        nonce: nonce.clone(),
                        error_detail: vec![],
                    })
                    .await
            }
            m => proxy.ack(m).await,
        }
    }
    assert!(proxy.recv(SEC).await.is_none(), "R11");
    let status = request(&server(&handle), Method::GET, "/v1/status", None)
        .await
        .unwrap();
    assert_eq!(status["proxies"][0]["group"], "unknown");
    assert_eq!(status["proxies"][0]["last_nack"]["type"], "listeners");

    // The operator API also answers over HTTP/2 on the same port, and unknown paths are 404.
    let stream = tokio::net::TcpStream::connect(handle.local_addr())
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(format!("http://{}/v1/nope", handle.local_addr()))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["error"].as_str().unwrap().contains("/v1/nope"));
    handle.shutdown().await;
}

/// The server with `limits`, over an empty resource directory.
async fn start_limited(dir: &Path, limits: legate_xds::server::Limits) -> ServerHandle {
    serve(ServeConfig {
        dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        store: legate_xds::StateStore::File(dir.join("state.json")),
        tls: None,
        roles: None,
        audit: None,
        limits,
    })
    .await
    .unwrap()
}

/// Whether the server closed `conn` (it reads end of stream) within 10 s.
async fn closed_by_server(conn: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(10 * SEC, conn.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let limits = legate_xds::server::Limits {
        first_bytes_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let handle = start_limited(dir.path(), limits).await;
    let mut silent = tokio::net::TcpStream::connect(handle.local_addr())
        .await
        .unwrap();
    assert!(
        closed_by_server(&mut silent).await,
        "a silent client holds no connection"
    );
    // A client that speaks is served as before.
    request(&server(&handle), Method::GET, "/v1/status", None)
        .await
        .unwrap();
    handle.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_accept() {
    let dir = tempfile::tempdir().unwrap();
    let limits = legate_xds::server::Limits {
        max_connections: 2,
        ..Default::default()
    };
    let handle = start_limited(dir.path(), limits).await;
    let addr = handle.local_addr();
    let first = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _second = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_by_server(&mut third).await,
        "the third connection is refused"
    );

    // The first two were kept: once one ends, a new connection is served.
    drop(first);
    let mut served = false;
    for _ in 0..50 {
        if request(&server(&handle), Method::GET, "/v1/status", None)
            .await
            .is_ok()
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "a place freed by a closed connection is used again");
    handle.shutdown().await;
}

/// A proxy's line longer than the server's limit ends its session (R4), without the server
/// holding more than the limit of it; a proxy within the limit is served.
#[tokio::test]
async fn a_line_over_the_limit_ends_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let limits = legate_xds::server::Limits {
        max_line: 2048,
        ..Default::default()
    };
    let handle = start_limited(dir.path(), limits).await;
    let mut proxy = Proxy::connect(&handle).await;
    let long: BTreeMap<String, String> = (0..200)
        .map(|i| (format!("cluster-{i}"), "e1".to_owned()))
        .collect();
    proxy.hello(BTreeMap::new(), long).await;
    assert!(
        matches!(proxy.next(Duration::from_secs(5)).await, Next::Ended),
        "a 4 KiB hello over a 2 KiB limit ends the session"
    );
    let mut within = Proxy::connect(&handle).await;
    within.hello(BTreeMap::new(), BTreeMap::new()).await;
    assert!(
        !matches!(within.next(Duration::from_millis(500)).await, Next::Ended),
        "a short hello is served"
    );
    handle.shutdown().await;
}

/// A change whose state file cannot be written answers 500, changes nothing, and leaves
/// nothing in the audit log; the next change that can be written is logged.
#[tokio::test]
async fn a_change_that_cannot_be_persisted_is_taken_back_from_the_audit_log() {
    let root = tempfile::tempdir().unwrap();
    let groups = root.path().join("groups");
    std::fs::create_dir_all(groups.join("maps")).unwrap();
    std::fs::write(groups.join("maps/listeners.yaml"), LISTENERS).unwrap();
    std::fs::write(groups.join("maps/clusters.yaml"), CLUSTERS).unwrap();
    let state_dir = root.path().join("state");
    std::fs::create_dir(&state_dir).unwrap();
    let audit = root.path().join("audit.jsonl");
    let handle = serve(ServeConfig {
        dir: groups,
        listen: "127.0.0.1:0".parse().unwrap(),
        store: legate_xds::StateStore::File(state_dir.join("state.json")),
        tls: None,
        roles: None,
        audit: Some(audit.clone()),
        limits: legate_xds::server::Limits::default(),
    })
    .await
    .unwrap();
    let server = server(&handle);
    let depool = json!({ "cluster": "tegola", "address": "10.0.0.1:80" });

    // The state file's directory becomes a file: the write fails (even as root).
    std::fs::remove_dir(&state_dir).unwrap();
    std::fs::write(&state_dir, "not a directory").unwrap();
    match request(
        &server,
        Method::POST,
        "/v1/endpoints/depool",
        Some(depool.clone()),
    )
    .await
    {
        Err(CliError::Server { status, message }) => {
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
            assert!(message.contains("nothing changed"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let status = request(&server, Method::GET, "/v1/status", None)
        .await
        .unwrap();
    assert_eq!(status["overrides"], json!({}), "{status:#}");
    let log = request(&server, Method::GET, "/v1/audit", None)
        .await
        .unwrap();
    assert_eq!(log["entries"], json!([]), "{log:#}");
    assert_eq!(
        std::fs::read(&audit).unwrap(),
        b"",
        "nothing left in the file"
    );

    std::fs::remove_file(&state_dir).unwrap();
    std::fs::create_dir(&state_dir).unwrap();
    request(&server, Method::POST, "/v1/endpoints/depool", Some(depool))
        .await
        .unwrap();
    let log = request(&server, Method::GET, "/v1/audit", None)
        .await
        .unwrap();
    assert_eq!(log["entries"][0]["operation"], "depool", "{log:#}");
    assert_eq!(log["entries"][0]["after"], json!({ "pooled": false }));
    let on_disk = std::fs::read_to_string(&audit).unwrap();
    assert_eq!(on_disk.lines().count(), 1, "{on_disk}");
    handle.shutdown().await;
}

/// A proxy that stops reading its stream holds up only its own session: with every change
/// queued for it (its HTTP/2 window full, its send queue full), another proxy of the group
/// gets each change as it is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_stops_reading_delays_no_other() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("maps")).unwrap();
    std::fs::write(dir.path().join("maps/listeners.yaml"), LISTENERS).unwrap();
    // Deltas of some 100 KiB: a few dozen fill the stuck proxy's 2 MiB stream window (hyper's
    // default) and its send queue of 64.
    let endpoints: Vec<String> = (0..5000)
        .map(|i| format!("\"10.1.{}.{}:80\"", i / 250, i % 250))
        .collect();
    std::fs::write(
        dir.path().join("maps/clusters.yaml"),
        format!(
            "clusters:\n  - {{ name: tegola, endpoints: [{}] }}\n",
            endpoints.join(", ")
        ),
    )
    .unwrap();
    let handle = start(dir.path(), &dir.path().join("state.json")).await;
    let stuck = Proxy::connect(&handle).await;
    stuck.hello(BTreeMap::new(), BTreeMap::new()).await;
    let mut reader = Proxy::connect(&handle).await;
    reader.hello(BTreeMap::new(), BTreeMap::new()).await;
    for _ in 0..4 {
        let m = reader.recv(5 * SEC).await.expect("the first updates");
        reader.ack(&m).await;
    }
    let server = server(&handle);
    // More changes than the stuck proxy's window and queue hold together.
    for i in 0..150u32 {
        let body = json!({ "cluster": "tegola", "address": "10.1.0.0:80", "weight": i + 1 });
        request(
            &server,
            Method::POST,
            "/v1/endpoints/set-weight",
            Some(body),
        )
        .await
        .unwrap();
        match reader.recv(5 * SEC).await {
            Some(m @ Message::Delta { .. }) => reader.ack(&m).await,
            other => panic!("change {i}: {other:?}"),
        }
    }
    drop(stuck);
    handle.shutdown().await;
}

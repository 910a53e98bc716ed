//! Dynamic config from an xDS-lite control plane (xds/PROTOCOL.md): one long-lived stream,
//! every update assembled with the bootstrap file's static parts, validated exactly like a
//! YAML file, then applied all or nothing and ACKed, or NACKed with the reasons.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::channel::Channel;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use legate_xds::protocol::{
    self, EndpointsResource, LineDecoder, Message, Node, ResourceError, ResourceType,
};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::config::model::{self, Config};
use crate::config::ConfigError;

/// Applies an assembled config; returns why it was rejected.
pub type Apply = Arc<dyn Fn(Config, String) -> Result<(), String> + Send + Sync>;

/// What `/config` shows about the control plane session.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Status {
    pub server: String,
    pub connected: bool,
    /// Versions held (applied), per resource type.
    pub versions: BTreeMap<String, String>,
    /// The system version of the endpoints held.
    pub endpoints_version: Option<String>,
    pub endpoint_versions: BTreeMap<String, String>,
    pub last_error: Option<String>,
    pub last_nack: Option<String>,
    pub updated_at: Option<String>,
}

/// Shared between the client task and the admin server.
#[derive(Debug, Default)]
pub struct Shared {
    /// Set once a complete config from the control plane has been applied (R12).
    pub ready: AtomicBool,
    pub status: Mutex<Status>,
}

/// The resources held from the control plane.
#[derive(Debug, Clone, Default)]
struct Held {
    sotw: HashMap<ResourceType, (String, Vec<serde_json::Value>)>,
    endpoints: Option<BTreeMap<String, EndpointsResource>>,
    /// The `system_version_info` of the last endpoints delta applied.
    endpoints_version: Option<String>,
}

impl Held {
    fn complete(&self) -> bool {
        ResourceType::SOTW.iter().all(|t| self.sotw.contains_key(t)) && self.endpoints.is_some()
    }

    fn version_label(&self) -> String {
        let v = |t| self.sotw.get(&t).map_or("-", |(v, _)| v.as_str());
        let e = self
            .endpoints
            .as_ref()
            .map(|m| {
                let joined: Vec<String> = m.values().map(|r| r.version.clone()).collect();
                protocol::content_version(joined.join(",").as_bytes())
            })
            .unwrap_or_else(|| "-".to_owned());
        format!(
            "xds:l={}/r={}/c={}/e={}",
            v(ResourceType::Listeners),
            v(ResourceType::RouteTables),
            v(ResourceType::Clusters),
            e
        )
    }
}

/// Runs the client until the task is aborted: connects, follows updates, reconnects with
/// jittered exponential back-off (R13).
pub async fn run(
    xds: model::Xds,
    node: model::Node,
    mut bootstrap: watch::Receiver<Config>,
    apply: Apply,
    shared: Arc<Shared>,
) {
    let mut held = Held::default();
    let mut backoff = Duration::from_millis(100);
    let node = Node {
        id: node.id.unwrap_or_default(),
        cluster: node.cluster.unwrap_or_default(),
        zone: node.zone,
    };
    set_status(&shared, |s| s.server = xds.server.clone());
    loop {
        let started = tokio::time::Instant::now();
        let result = session(&xds, &node, &mut held, &mut bootstrap, &apply, &shared).await;
        set_status(&shared, |s| {
            s.connected = false;
            if let Err(e) = &result {
                s.last_error = Some(e.clone());
            }
        });
        if let Err(e) = result {
            warn!(server = %xds.server, error = %e, "control plane session ended; keeping the last good config");
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(100);
        }
        let jitter = 0.5 + fastrand::f64();
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

fn set_status(shared: &Shared, f: impl FnOnce(&mut Status)) {
    let mut s = shared.status.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut s);
}

async fn session(
    xds: &model::Xds,
    node: &Node,
    held: &mut Held,
    bootstrap: &mut watch::Receiver<Config>,
    apply: &Apply,
    shared: &Shared,
) -> Result<(), String> {
    let io = tokio::time::timeout(xds.connect_timeout.get(), connect(xds))
        .await
        .map_err(|_| format!("connect to {} timed out", xds.server))??;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let _abort = AbortOnDrop(driver.abort_handle());

    let (tx, rx) = mpsc::channel::<Bytes>(32);
    let (mut body_tx, body) = Channel::<Bytes>::new(32);
    // Lines queued by this task go out as HTTP/2 data frames.
    let _pump = AbortOnDrop(
        tokio::spawn(async move {
            let mut rx = rx;
            while let Some(line) = rx.recv().await {
                if body_tx.send_data(line).await.is_err() {
                    break;
                }
            }
        })
        .abort_handle(),
    );
    let scheme = if xds.tls.is_some() { "https" } else { "http" };
    let req = http::Request::post(format!(
        "{scheme}://{}{}",
        xds.server,
        protocol::STREAM_PATH
    ))
    .header(http::header::CONTENT_TYPE, protocol::CONTENT_TYPE)
    .body(body)
    .map_err(|e| e.to_string())?;
    let send = |tx: &mpsc::Sender<Bytes>, msg: Message| {
        let tx = tx.clone();
        async move {
            tx.send(Bytes::from(msg.encode()))
                .await
                .map_err(|_| "stream closed".to_owned())
        }
    };
    // R7: say who we are and what we hold, so an unchanged control plane sends nothing.
    let hello = Message::Hello {
        node: node.clone(),
        versions: held
            .sotw
            .iter()
            .map(|(t, (v, _))| (*t, v.clone()))
            .chain(
                held.endpoints_version
                    .iter()
                    .map(|v| (ResourceType::Endpoints, v.clone())),
            )
            .collect(),
        endpoint_versions: held
            .endpoints
            .iter()
            .flat_map(|m| m.values().map(|r| (r.name.clone(), r.version.clone())))
            .collect(),
    };
    send(&tx, hello).await?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("stream request: {e}"))?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("control plane answered {}", resp.status()));
    }
    info!(server = %xds.server, "connected to the control plane");
    set_status(shared, |s| {
        s.connected = true;
        s.last_error = None;
    });
    let mut body = resp.into_body();
    let mut decoder = LineDecoder::default();
    let mut ping = tokio::time::interval(protocol::PING_EVERY);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    let mut pending = Pending::default();

    loop {
        tokio::select! {
            frame = body.frame() => {
                let frame = match frame {
                    Some(Ok(f)) => f,
                    Some(Err(e)) => return Err(format!("stream error: {e}")),
                    None => return Err("control plane closed the stream".to_owned()),
                };
                last_heard = tokio::time::Instant::now();
                let Ok(data) = frame.into_data() else { continue };
                decoder.push(&data);
                while let Some(msg) = decoder.next_message() {
                    let msg = msg.map_err(|e| format!("protocol error: {e}"))?;
                    let config = bootstrap.borrow().clone();
                    for answer in handle(msg, held, &mut pending, &config, apply, shared) {
                        send(&tx, answer).await?;
                    }
                }
            }
            _ = sleep_until_deadline(pending.deadline()) => {
                // The rest of the change never came: the waiting updates are rejected.
                for answer in give_up(held, &mut pending, shared) {
                    send(&tx, answer).await?;
                }
            }
            changed = bootstrap.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                // A reloaded bootstrap file: assemble it with what the control plane gave.
                let config = bootstrap.borrow().clone();
                if held.complete() {
                    match assemble(&config, held, true) {
                        Ok(assembled) => {
                            if let Err(e) = apply(assembled, held.version_label()) {
                                warn!(error = %e, "bootstrap reload rejected with the control plane's resources");
                            }
                        }
                        Err(errors) => warn!(errors = ?errors, "bootstrap reload conflicts with the control plane's resources"),
                    }
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > protocol::DEAD_AFTER {
                    return Err("control plane silent for 30s".to_owned());
                }
                send(&tx, Message::Ping).await?;
            }
        }
    }
}

/// Updates received but not yet answered, because the set they form refers to resources that
/// an update of another type, already on its way, adds (or stops referring to ones it
/// removes): a cluster removed before the route that used it, say. Answered together, within
/// [`DEFER_LIMIT`] (a control plane sends the parts of one change back to back).
#[derive(Debug, Default)]
struct Pending {
    candidate: Option<Held>,
    answers: Vec<(ResourceType, String, String)>,
    errors: Vec<ResourceError>,
    since: Option<tokio::time::Instant>,
}

/// How long an update whose references do not resolve yet waits for the rest of a change.
const DEFER_LIMIT: Duration = Duration::from_millis(500);

impl Pending {
    fn deadline(&self) -> Option<tokio::time::Instant> {
        self.since.map(|t| t + DEFER_LIMIT)
    }
}

/// Connects to the control plane: h2c, or TLS with ALPN `h2` (verified like a cluster's
/// upstream TLS; the server name defaults to the host part of `server`).
async fn connect(xds: &model::Xds) -> Result<crate::io::MaybeTls, String> {
    let tcp = tokio::net::TcpStream::connect(xds.server.as_str())
        .await
        .map_err(|e| format!("connect to {}: {e}", xds.server))?;
    let _ = tcp.set_nodelay(true);
    let Some(spec) = &xds.tls else {
        return Ok(crate::io::MaybeTls::Plain(tcp));
    };
    let tls = crate::tls::client::ClientTls::new(spec, model::UpstreamProtocol::Http2)
        .map_err(|e| format!("xds.tls: {e}"))?;
    let host = xds
        .server
        .rsplit_once(':')
        .map_or(xds.server.as_str(), |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let peer = tcp.peer_addr().map_err(|e| e.to_string())?;
    let name = match host.parse::<std::net::IpAddr>() {
        Ok(_) => tls.server_name(None, peer),
        Err(_) => tls.server_name(Some(host), peer),
    };
    let stream = tokio_rustls::TlsConnector::from(tls.config())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {}: {e}", xds.server))?;
    if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(format!("{} did not negotiate h2", xds.server));
    }
    Ok(crate::io::MaybeTls::Tls(Box::new(stream)))
}

async fn sleep_until_deadline(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Handles one message from the control plane; returns the answers to send.
fn handle(
    msg: Message,
    held: &mut Held,
    pending: &mut Pending,
    bootstrap: &Config,
    apply: &Apply,
    shared: &Shared,
) -> Vec<Message> {
    let base = pending.candidate.clone().unwrap_or_else(|| held.clone());
    let (resource_type, version, nonce, candidate) = match msg {
        Message::Ping => return vec![Message::Pong],
        Message::Response {
            resource_type,
            version_info,
            nonce,
            resources,
        } if resource_type != ResourceType::Endpoints => {
            let mut candidate = base;
            candidate
                .sotw
                .insert(resource_type, (version_info.clone(), resources));
            (resource_type, version_info, nonce, candidate)
        }
        Message::Delta {
            resource_type: ResourceType::Endpoints,
            system_version_info,
            nonce,
            resources,
            removed_resources,
        } => {
            let mut candidate = base;
            let map = candidate.endpoints.get_or_insert_with(BTreeMap::new);
            for name in removed_resources {
                map.remove(&name);
            }
            for r in resources {
                map.insert(r.name.clone(), r);
            }
            candidate.endpoints_version = Some(system_version_info.clone());
            (
                ResourceType::Endpoints,
                system_version_info,
                nonce,
                candidate,
            )
        }
        Message::Response {
            nonce,
            resource_type,
            ..
        }
        | Message::Delta {
            nonce,
            resource_type,
            ..
        } => {
            let error = ResourceError {
                name: "*".into(),
                error: format!("{resource_type} cannot be sent that way"),
            };
            return vec![nack(resource_type, held, nonce, vec![error], shared)];
        }
        _ => return Vec::new(),
    };
    pending.answers.push((resource_type, version, nonce));

    // Every resource must deserialize; a complete set must also validate and apply (R12).
    let complete = candidate.complete();
    let outcome = match assemble(bootstrap, &candidate, complete) {
        Err(errors) => Err(errors),
        Ok(_) if !complete => Ok(false),
        Ok(config) => apply(config, candidate.version_label())
            .map(|()| true)
            .map_err(|e| {
                vec![ResourceError {
                    name: "*".into(),
                    error: e,
                }]
            }),
    };
    match outcome {
        Ok(applied) => {
            *held = candidate;
            if applied && !shared.ready.swap(true, Ordering::AcqRel) {
                info!("first complete config from the control plane applied");
            }
            record_versions(held, shared);
            let answers = std::mem::take(pending).answers;
            answers
                .into_iter()
                .map(|(resource_type, version_info, nonce)| Message::Ack {
                    resource_type,
                    version_info,
                    nonce,
                })
                .collect()
        }
        Err(errors) if errors.iter().all(is_reference_error) && pending.answers.len() < 4 => {
            pending.candidate = Some(candidate);
            pending.errors = errors;
            pending.since.get_or_insert_with(tokio::time::Instant::now);
            Vec::new()
        }
        Err(errors) => {
            pending.errors = errors;
            give_up(held, pending, shared)
        }
    }
}

/// NACKs every pending update with the reasons they could not be applied.
fn give_up(held: &Held, pending: &mut Pending, shared: &Shared) -> Vec<Message> {
    let Pending {
        answers, errors, ..
    } = std::mem::take(pending);
    answers
        .into_iter()
        .map(|(resource_type, _, nonce)| nack(resource_type, held, nonce, errors.clone(), shared))
        .collect()
}

/// An error another type's update can resolve: a reference to a resource not (or no longer)
/// there.
fn is_reference_error(e: &ResourceError) -> bool {
    e.error.contains("unknown cluster") || e.error.contains("unknown route table")
}

fn record_versions(held: &Held, shared: &Shared) {
    set_status(shared, |s| {
        s.versions = held
            .sotw
            .iter()
            .map(|(t, (v, _))| (t.to_string(), v.clone()))
            .collect();
        s.endpoints_version = held.endpoints_version.clone();
        s.endpoint_versions = held
            .endpoints
            .iter()
            .flat_map(|m| m.values().map(|r| (r.name.clone(), r.version.clone())))
            .collect();
        s.updated_at = Some(humantime::format_rfc3339_millis(SystemTime::now()).to_string());
    });
}

fn nack(
    resource_type: ResourceType,
    held: &Held,
    nonce: String,
    mut error_detail: Vec<ResourceError>,
    shared: &Shared,
) -> Message {
    let version_info = match resource_type {
        ResourceType::Endpoints => held.endpoints_version.clone().unwrap_or_default(),
        t => held
            .sotw
            .get(&t)
            .map(|(v, _)| v.clone())
            .unwrap_or_default(),
    };
    if resource_type == ResourceType::Endpoints {
        // Endpoints resources are named by their cluster (R10): `tiles`, not `clusters[tiles]`.
        for e in &mut error_detail {
            if let Some(name) = e
                .name
                .strip_prefix("clusters[")
                .or_else(|| e.name.strip_prefix("endpoints["))
                .and_then(|n| n.strip_suffix(']'))
            {
                e.name = name.to_owned();
            }
        }
    }
    let summary: Vec<String> = error_detail
        .iter()
        .map(|e| format!("{}: {}", e.name, e.error))
        .collect();
    warn!(resource_type = %resource_type, errors = ?summary, "control plane update rejected; the running config stays");
    set_status(shared, |s| {
        s.last_nack = Some(format!("{resource_type}: {}", summary.join("; ")))
    });
    Message::Nack {
        resource_type,
        version_info,
        nonce,
        error_detail,
    }
}

/// The bootstrap file's static parts plus the control plane's resources, validated as one
/// config (`validate`; a partial set is only checked resource by resource). Errors name the
/// resource and the field path.
fn assemble(bootstrap: &Config, held: &Held, validate: bool) -> Result<Config, Vec<ResourceError>> {
    let mut config = bootstrap.clone();
    let mut errors = Vec::new();
    let empty = Vec::new();
    let resources = |t| held.sotw.get(&t).map_or(&empty, |(_, r)| r);

    for value in resources(ResourceType::Listeners) {
        match decode::<model::Listener>(value) {
            Ok(l) => config.listeners.push(l),
            Err(e) => errors.push(resource_error("listeners", value, &e)),
        }
    }
    for value in resources(ResourceType::RouteTables) {
        let name = name_of(value);
        let mut body = value.clone();
        if let Some(map) = body.as_object_mut() {
            map.remove("name");
        }
        match decode::<model::RouteTable>(&body) {
            Ok(t) if !name.is_empty() => {
                if config.route_tables.insert(name.clone(), t).is_some() {
                    errors.push(ResourceError {
                        name: format!("route_tables[{name}]"),
                        error: "defined both in the bootstrap file and by the control plane".into(),
                    });
                }
            }
            Ok(_) => errors.push(ResourceError {
                name: "route_tables[?]".into(),
                error: "a route table resource needs a name".into(),
            }),
            Err(e) => errors.push(resource_error("route_tables", value, &e)),
        }
    }
    let endpoints = held.endpoints.as_ref();
    for value in resources(ResourceType::Clusters) {
        match decode::<model::Cluster>(value) {
            Ok(mut c) => {
                if let Some(r) = endpoints.and_then(|m| m.get(&c.name)) {
                    let list = serde_json::Value::Array(r.endpoints.clone());
                    match decode::<Vec<model::Endpoint>>(&list) {
                        Ok(eps) => c.endpoints = eps,
                        Err(e) => errors.push(ResourceError {
                            name: format!("endpoints[{}]", c.name),
                            error: e,
                        }),
                    }
                }
                config.clusters.push(c);
            }
            Err(e) => errors.push(resource_error("clusters", value, &e)),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if !validate {
        return Ok(config);
    }
    let mut problems = crate::config::validate::validate(&config);
    problems.extend(crate::tls::check::check(&config).errors);
    if problems.is_empty() {
        return Ok(config);
    }
    Err(problems.iter().map(|p| name_problem(&config, p)).collect())
}

fn decode<T: serde::de::DeserializeOwned>(value: &serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
}

fn name_of(value: &serde_json::Value) -> String {
    value
        .get("name")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("")
        .to_owned()
}

fn resource_error(kind: &str, value: &serde_json::Value, error: &str) -> ResourceError {
    let name = name_of(value);
    ResourceError {
        name: format!("{kind}[{}]", if name.is_empty() { "?" } else { &name }),
        error: error.to_owned(),
    }
}

/// Turns a validation error's index path (`clusters[3].connect_timeout`) into one that names
/// the resource (`clusters[tegola].connect_timeout`).
fn name_problem(config: &Config, p: &ConfigError) -> ResourceError {
    let by_index = |prefix: &str, names: &[&str]| -> Option<(String, String)> {
        let rest = p.path.strip_prefix(prefix)?.strip_prefix('[')?;
        let (index, tail) = rest.split_once(']')?;
        let name = names.get(index.parse::<usize>().ok()?)?;
        Some((
            format!("{prefix}[{name}]"),
            format!("{prefix}[{name}]{tail}"),
        ))
    };
    let listeners: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
    let clusters: Vec<&str> = config.clusters.iter().map(|c| c.name.as_str()).collect();
    let named = by_index("listeners", &listeners)
        .or_else(|| by_index("clusters", &clusters))
        .or_else(|| {
            let rest = p.path.strip_prefix("route_tables.")?;
            let name = rest.split(['.', '[']).next()?;
            Some((format!("route_tables[{name}]"), p.path.clone()))
        });
    match named {
        Some((name, path)) => ResourceError {
            name,
            error: format!("{path}: {}", p.message),
        },
        None => ResourceError {
            name: if p.path.is_empty() {
                "*".into()
            } else {
                p.path.clone()
            },
            error: p.message.clone(),
        },
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bootstrap() -> Config {
        crate::config::parse(
            "node: { cluster: maps }\nxds: { server: 127.0.0.1:1 }\nadmin: { listen: 127.0.0.1:0 }",
        )
        .unwrap()
    }

    fn full() -> Held {
        let mut held = Held::default();
        held.sotw.insert(
            ResourceType::Listeners,
            (
                "l1".into(),
                vec![serde_json::json!({"name": "front", "listen": "127.0.0.1:0", "http": {"route_table": "maps"}})],
            ),
        );
        held.sotw.insert(
            ResourceType::RouteTables,
            (
                "r1".into(),
                vec![serde_json::json!({"name": "maps", "virtual_hosts": [{"hosts": ["*"], "routes": [{"match": {"prefix": "/"}, "cluster": "tiles"}]}]})],
            ),
        );
        held.sotw.insert(
            ResourceType::Clusters,
            ("c1".into(), vec![serde_json::json!({"name": "tiles"})]),
        );
        held.endpoints = Some(BTreeMap::from([(
            "tiles".to_owned(),
            EndpointsResource {
                name: "tiles".into(),
                version: "e1".into(),
                endpoints: vec![
                    serde_json::json!("127.0.0.1:4000"),
                    serde_json::json!({"address": "127.0.0.1:4001", "weight": 3}),
                ],
            },
        )]));
        held
    }

    #[test]
    fn assembles_a_complete_set() {
        let config = assemble(&bootstrap(), &full(), true).unwrap();
        assert_eq!(config.listeners[0].name, "front");
        assert_eq!(config.clusters[0].endpoints.len(), 2);
        assert_eq!(config.clusters[0].endpoints[1].weight, 3);
        assert!(full().complete());
        assert!(full().version_label().starts_with("xds:l=l1/r=r1/c=c1/e="));
    }

    #[test]
    fn errors_name_the_resource_and_the_field() {
        let mut held = full();
        held.sotw.insert(
            ResourceType::Clusters,
            (
                "c2".into(),
                vec![
                    serde_json::json!({"name": "tiles", "connect_timeout": "0s"}),
                    serde_json::json!({"name": "other", "bogus": 1}),
                ],
            ),
        );
        let errors = assemble(&bootstrap(), &held, true).unwrap_err();
        assert_eq!(errors[0].name, "clusters[other]");
        assert!(errors[0].error.contains("bogus"), "{errors:?}");

        held.sotw.insert(
            ResourceType::Clusters,
            (
                "c3".into(),
                vec![serde_json::json!({"name": "tiles", "connect_timeout": "0s"})],
            ),
        );
        let errors = assemble(&bootstrap(), &held, true).unwrap_err();
        assert_eq!(errors[0].name, "clusters[tiles]");
        assert!(
            errors[0]
                .error
                .starts_with("clusters[tiles].connect_timeout:"),
            "{errors:?}"
        );

        // A route to a cluster that no resource defines is a consistency error.
        held.sotw
            .insert(ResourceType::Clusters, ("c4".into(), vec![]));
        let errors = assemble(&bootstrap(), &held, true).unwrap_err();
        assert_eq!(errors[0].name, "route_tables[maps]");
        assert!(
            errors[0].error.contains("unknown cluster \"tiles\""),
            "{errors:?}"
        );
    }

    #[test]
    fn handle_acks_partial_sets_then_applies_and_nacks_bad_updates() {
        let applied = Arc::new(Mutex::new(Vec::new()));
        let log = applied.clone();
        let apply: Apply = Arc::new(move |_c, v| {
            log.lock().unwrap().push(v);
            Ok(())
        });
        let shared = Shared::default();
        let mut held = Held::default();
        let mut pending = Pending::default();
        let boot = bootstrap();
        let mut send = |msg| {
            let mut answers = handle(msg, &mut held, &mut pending, &boot, &apply, &shared);
            assert!(answers.len() <= 1, "{answers:?}");
            answers.pop()
        };
        let full = full();
        for t in ResourceType::SOTW {
            let (v, r) = full.sotw[&t].clone();
            let answer = send(Message::Response {
                resource_type: t,
                version_info: v.clone(),
                nonce: format!("n-{t}"),
                resources: r,
            });
            assert!(matches!(answer, Some(Message::Ack { .. })), "{answer:?}");
        }
        assert!(
            applied.lock().unwrap().is_empty(),
            "nothing applied before endpoints arrive"
        );
        assert!(!shared.ready.load(Ordering::Acquire));
        let answer = send(Message::Delta {
            resource_type: ResourceType::Endpoints,
            system_version_info: "s1".into(),
            nonce: "n-e".into(),
            resources: full.endpoints.clone().unwrap().into_values().collect(),
            removed_resources: vec![],
        });
        assert!(matches!(answer, Some(Message::Ack { .. })));
        assert_eq!(applied.lock().unwrap().len(), 1);
        assert!(shared.ready.load(Ordering::Acquire));

        let answer = send(Message::Response {
            resource_type: ResourceType::Clusters,
            version_info: "bad".into(),
            nonce: "n-bad".into(),
            resources: vec![serde_json::json!({"name": "tiles", "lb": "fastest"})],
        });
        match answer {
            Some(Message::Nack {
                version_info,
                nonce,
                error_detail,
                ..
            }) => {
                assert_eq!(version_info, "c1", "the version still held");
                assert_eq!(nonce, "n-bad");
                assert_eq!(error_detail[0].name, "clusters[tiles]");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            applied.lock().unwrap().len(),
            1,
            "a NACKed update changes nothing"
        );
        assert_eq!(send(Message::Ping), Some(Message::Pong));
    }

    #[tokio::test]
    async fn a_removal_waits_for_the_update_that_stops_referring_to_it() {
        let apply: Apply = Arc::new(|_c, _v| Ok(()));
        let shared = Shared::default();
        let mut held = full();
        held.sotw.insert(
            ResourceType::Clusters,
            (
                "c1".into(),
                vec![
                    serde_json::json!({"name": "tiles"}),
                    serde_json::json!({"name": "other"}),
                ],
            ),
        );
        let mut pending = Pending::default();
        let boot = bootstrap();
        // The cluster the route uses goes first...
        let answers = handle(
            Message::Response {
                resource_type: ResourceType::Clusters,
                version_info: "c2".into(),
                nonce: "n1".into(),
                resources: vec![serde_json::json!({"name": "other"})],
            },
            &mut held,
            &mut pending,
            &boot,
            &apply,
            &shared,
        );
        assert!(answers.is_empty(), "held back: {answers:?}");
        assert!(pending.deadline().is_some());
        // ...then the route moves to the cluster that stays: both are applied and ACKed.
        let answers = handle(
            Message::Response {
                resource_type: ResourceType::RouteTables,
                version_info: "r2".into(),
                nonce: "n2".into(),
                resources: vec![
                    serde_json::json!({"name": "maps", "virtual_hosts": [{"hosts": ["*"], "routes": [{"match": {"prefix": "/"}, "cluster": "other"}]}]}),
                ],
            },
            &mut held,
            &mut pending,
            &boot,
            &apply,
            &shared,
        );
        let nonces: Vec<_> = answers
            .iter()
            .map(|m| match m {
                Message::Ack { nonce, .. } => nonce.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(nonces, ["n1", "n2"]);
        assert_eq!(held.sotw[&ResourceType::Clusters].0, "c2");
        assert!(pending.deadline().is_none());

        // A reference that nothing resolves is rejected at the deadline.
        handle(
            Message::Response {
                resource_type: ResourceType::Clusters,
                version_info: "c3".into(),
                nonce: "n3".into(),
                resources: vec![],
            },
            &mut held,
            &mut pending,
            &boot,
            &apply,
            &shared,
        );
        let answers = give_up(&held, &mut pending, &shared);
        assert!(
            matches!(&answers[..], [Message::Nack { nonce, version_info, .. }] if nonce == "n3" && version_info == "c2")
        );
    }
}

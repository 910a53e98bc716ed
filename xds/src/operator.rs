//! The operator API: endpoint overrides (`/v1/endpoints/…`), split weights
//! (`/v1/routes/…`), `/v1/status` and `/v1/audit`. Every change is checked against the groups
//! served now and against what the client may change, written to the audit log, persisted to
//! the state file, then published; a change that cannot be logged or persisted changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tracing::{error, info, warn};

use crate::access::{Action, Client};
use crate::audit::{Change, DEFAULT_LIMIT, MAX_LIMIT};
use crate::session::Session;
use crate::shared::{publish, Body, Shared};
use crate::splits::{RouteRequest, SplitError};
use crate::state::Touched;
use crate::store::{GroupLookup, OperatorError, OperatorRequest, Overrides, Store};

/// Largest operator request body.
const MAX_OPERATOR_BODY: usize = 64 * 1024;

pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

pub(crate) fn error_response(
    status: StatusCode,
    message: impl std::fmt::Display,
) -> Response<Body> {
    json_response(status, &json!({ "error": message.to_string() }))
}

/// The status a refused request gets.
fn refusal(e: &OperatorError) -> StatusCode {
    match e {
        OperatorError::UnknownCluster(_)
        | OperatorError::UnknownEndpoint { .. }
        | OperatorError::UnknownGroup(_)
        | OperatorError::Split(SplitError::UnknownRouteTable(_) | SplitError::UnknownRoute(_)) => {
            StatusCode::NOT_FOUND
        }
        OperatorError::NoOverride { .. } | OperatorError::Split(SplitError::NoOverride(_)) => {
            StatusCode::CONFLICT
        }
        _ => StatusCode::BAD_REQUEST,
    }
}

async fn read_body(body: Incoming) -> Result<Bytes, Response<Body>> {
    match Limited::new(body, MAX_OPERATOR_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(error_response(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body (at most {MAX_OPERATOR_BODY} bytes): {e}"),
        )),
    }
}

/// Writes `change` to the audit log, persists `next`, then makes it the store's overrides and
/// publishes the groups. A change that cannot be logged or persisted changes nothing, and
/// its audit entry is taken back.
async fn commit(
    shared: &Shared,
    store: &mut Store,
    next: Overrides,
    touched: Touched,
    change: Change,
) -> Result<(), Response<Body>> {
    let failed = |message: String| {
        error!(error = %message, "operator change not applied");
        error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{message}; nothing changed"),
        )
    };
    let log = shared.audit.clone();
    let recorded = match tokio::task::spawn_blocking(move || log.record(&change)).await {
        Ok(Ok(recorded)) => recorded,
        Ok(Err(e)) => return Err(failed(e.to_string())),
        Err(e) => return Err(failed(format!("audit log write failed: {e}"))),
    };
    let persisted = shared
        .backend
        .persist(store.overrides(), &next, &touched)
        .await;
    let message = persisted.err();
    if let Some(error) = message {
        let log = shared.audit.clone();
        let reason = error.to_string();
        match tokio::task::spawn_blocking(move || log.undo(recorded, &reason)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot take the change back from the audit log"),
            Err(e) => warn!(error = %e, "cannot take the change back from the audit log"),
        }
        if error.is_conflict() {
            warn!(error = %error, "operator change refused");
            return Err(error_response(StatusCode::CONFLICT, error));
        }
        return Err(failed(error.to_string()));
    }
    store.set_overrides(next);
    publish(shared, store);
    Ok(())
}

/// Runs the checked, logged, persisted part of a change in a task of its own, so a client
/// that goes away (hyper then drops the request) cannot cut it between the audit log, the
/// state file and the store.
async fn uncancellable<F>(change: F) -> Response<Body>
where
    F: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    match tokio::spawn(change).await {
        Ok(resp) => resp,
        Err(e) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the change failed: {e}"),
        ),
    }
}

/// A request body read (within [`MAX_OPERATOR_BODY`]) and parsed; 400 when it cannot be.
async fn parsed<T, E: std::fmt::Display>(
    body: Incoming,
    parse: impl FnOnce(&[u8]) -> Result<T, E>,
) -> Result<T, Response<Body>> {
    let bytes = read_body(body).await?;
    parse(&bytes).map_err(|e| error_response(StatusCode::BAD_REQUEST, e))
}

/// `POST /v1/endpoints/<operation>`.
pub(crate) async fn operate(
    shared: Arc<Shared>,
    client: Arc<Client>,
    operation: &str,
    body: Incoming,
) -> Response<Body> {
    match parsed(body, |b| OperatorRequest::parse(operation, b)).await {
        Ok(request) => {
            uncancellable(async move { change_endpoint(&shared, &client, request).await }).await
        }
        Err(resp) => resp,
    }
}

async fn change_endpoint(
    shared: &Shared,
    client: &Client,
    request: OperatorRequest,
) -> Response<Body> {
    let mut store = shared.store.lock().await;
    if let Err(e) = store.check(&request) {
        return error_response(refusal(&e), e);
    }
    let groups = store.groups_with_cluster(&request.cluster);
    if let Some(resp) = forbidden(
        client,
        Action::ChangeIn {
            groups: &groups,
            clusters: std::slice::from_ref(&request.cluster),
        },
    ) {
        return resp;
    }
    let before = store
        .overrides()
        .get(&request.cluster, &request.address)
        .cloned();
    let next = store.overrides().with(&request);
    let current = next.get(&request.cluster, &request.address).cloned();
    let change = Change {
        who: client.who(),
        operation: request.operation.name().to_owned(),
        target: json!({ "cluster": request.cluster, "address": request.address, "groups": groups }),
        before: json!(before),
        after: json!(current),
    };
    let touched = Touched::Endpoint {
        cluster: request.cluster.clone(),
        address: request.address.clone(),
    };
    if let Err(resp) = commit(shared, &mut store, next, touched, change).await {
        return resp;
    }
    drop(store);
    let peer = client.addr;
    info!(%peer, client = %client.who(), operation = request.operation.name(), cluster = %request.cluster,
        address = %request.address, ?current, "operator change applied");
    json_response(
        StatusCode::OK,
        &json!({
            "result": "ok",
            "operation": request.operation.name(),
            "cluster": request.cluster,
            "address": request.address,
            "override": current,
            "groups": groups,
        }),
    )
}

/// `POST /v1/routes/<operation>`: answers with the route's split now and the group's new
/// route tables version, which the proxies ACK once they hold it.
pub(crate) async fn operate_route(
    shared: Arc<Shared>,
    client: Arc<Client>,
    operation: &str,
    body: Incoming,
) -> Response<Body> {
    match parsed(body, |b| RouteRequest::parse(operation, b)).await {
        Ok(request) => {
            uncancellable(async move { change_route(&shared, &client, request).await }).await
        }
        Err(resp) => resp,
    }
}

async fn change_route(shared: &Shared, client: &Client, request: RouteRequest) -> Response<Body> {
    let mut store = shared.store.lock().await;
    let resolved = match store.resolve_route(&request) {
        Ok(t) => t,
        Err(e) => return error_response(refusal(&e), e),
    };
    // The clusters whose share moves: every target before and after.
    let clusters: BTreeSet<String> = [resolved.before.as_deref(), resolved.split_after()]
        .into_iter()
        .flatten()
        .flatten()
        .map(|t| t.cluster.clone())
        .collect();
    let clusters: Vec<String> = clusters.into_iter().collect();
    if let Some(resp) = forbidden(
        client,
        Action::ChangeIn {
            groups: std::slice::from_ref(&request.group),
            clusters: &clusters,
        },
    ) {
        return resp;
    }
    let targets = resolved.after.clone();
    let change = Change {
        who: client.who(),
        operation: request.operation.name().to_owned(),
        target: json!({
            "group": request.group,
            "route_table": request.route_table,
            "route": request.route,
        }),
        before: json!(resolved.before),
        after: json!(resolved.split_after()),
    };
    let next = store.overrides().with_split(&request, targets.clone());
    let touched = Touched::Split {
        group: request.group.clone(),
        route_table: request.route_table.clone(),
        route: request.route.clone(),
    };
    if let Err(resp) = commit(shared, &mut store, next, touched, change).await {
        return resp;
    }
    // Read under the lock, so the version is this change's, not a later one's.
    let version = shared
        .snapshots
        .borrow()
        .groups
        .get(&request.group)
        .map(|s| s.route_tables.version.clone());
    drop(store);
    let peer = client.addr;
    info!(%peer, client = %client.who(), operation = request.operation.name(), group = %request.group,
        route_table = %request.route_table, route = %request.route, ?targets,
        "operator change applied");
    json_response(
        StatusCode::OK,
        &json!({
            "result": "ok",
            "operation": request.operation.name(),
            "group": request.group,
            "route_table": request.route_table,
            "route": request.route,
            "split": targets,
            "override": targets.is_some(),
            "route_tables_version": version,
        }),
    )
}

/// 403 when the client may not do `action`.
fn forbidden(client: &Client, action: Action<'_>) -> Option<Response<Body>> {
    let denied = client.check(action).err()?;
    warn!(client = %client.who(), reason = %denied, "operator change refused");
    Some(error_response(StatusCode::FORBIDDEN, denied))
}

/// `GET /v1/audit[?limit=N]`: the latest `N` changes (default 100), oldest first.
pub(crate) fn audit(shared: &Shared, query: Option<&str>) -> Response<Body> {
    let mut limit = DEFAULT_LIMIT;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("limit", n)) => match n.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => limit = n,
                _ => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        format!("limit={n:?}: expected a number from 1 to {MAX_LIMIT}"),
                    )
                }
            },
            _ => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter {pair:?} (expected limit=N)"),
                )
            }
        }
    }
    let entries = shared.audit.read(limit);
    json_response(
        StatusCode::OK,
        &json!({ "path": shared.audit.path().display().to_string(), "entries": entries }),
    )
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub(crate) async fn status(shared: &Shared) -> Value {
    let sessions: Vec<(u64, SocketAddr, SystemTime, Arc<Mutex<Session>>)> = {
        let registry = shared
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        registry
            .iter()
            .filter_map(|(id, e)| {
                e.session
                    .as_ref()
                    .map(|s| (*id, e.peer, e.connected_since, s.clone()))
            })
            .collect()
    };
    let snapshots = shared.snapshots.borrow().clone();
    let proxies: Vec<Value> = sessions
        .into_iter()
        .map(|(id, peer, since, session)| {
            let st = session
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .status();
            let group = match snapshots.lookup(&st.node.cluster) {
                GroupLookup::Known(_) => "known",
                GroupLookup::Unknown(_) => "unknown",
                GroupLookup::Failing => "failing",
            };
            json!({
                "session": id,
                "node": st.node,
                "group": group,
                "peer": peer.to_string(),
                "connected_since": rfc3339(since),
                "versions": st.versions,
                "endpoints": st.endpoints,
                "last_nack": st.last_nack,
            })
        })
        .collect();
    let store = shared.store.lock().await;
    let groups: serde_json::Map<String, Value> = store
        .groups()
        .iter()
        .map(|(name, state)| {
            let served = snapshots.groups.get(name);
            let value = json!({
                "versions": served.map(|s| s.versions()),
                "endpoints": served.map(|s| s.endpoints.iter().map(|(n, r)| (n.clone(), r.version.clone())).collect::<BTreeMap<_, _>>()),
                "errors": state.errors,
            });
            (name.clone(), value)
        })
        .collect();
    json!({
        "proxies": proxies,
        "overrides": store.overrides().clusters,
        "splits": store.overrides().splits,
        "groups": groups,
    })
}

//! The operator API: endpoint overrides (`/v1/endpoints/…`), split weights
//! (`/v1/routes/…`) and `/v1/status`. Every change is checked against the groups served now,
//! persisted to the state file, then published; a change that cannot be persisted changes
//! nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tracing::{error, info};

use crate::session::Session;
use crate::shared::{publish, write_state, Body, Shared};
use crate::splits::{RouteRequest, SplitError};
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

/// Persists `next`, then makes it the store's overrides and publishes the groups.
async fn commit(shared: &Shared, store: &mut Store, next: Overrides) -> Result<(), Response<Body>> {
    let path = shared.state_path.clone();
    let state = next.to_state_json();
    let written = tokio::task::spawn_blocking(move || write_state(&path, &state)).await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            error!(path = %shared.state_path.display(), error = %e, "cannot persist operator change");
            return Err(error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "cannot write state file {}: {e}; nothing changed",
                    shared.state_path.display()
                ),
            ));
        }
        Err(e) => {
            return Err(error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("state write failed: {e}; nothing changed"),
            ))
        }
    }
    store.set_overrides(next);
    publish(shared, store);
    Ok(())
}

/// `POST /v1/endpoints/<operation>`.
pub(crate) async fn operate(
    shared: &Shared,
    peer: SocketAddr,
    operation: &str,
    body: Incoming,
) -> Response<Body> {
    let bytes = match read_body(body).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let request = match OperatorRequest::parse(operation, &bytes) {
        Ok(r) => r,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, e),
    };
    let mut store = shared.store.lock().await;
    if let Err(e) = store.check(&request) {
        return error_response(refusal(&e), e);
    }
    let next = store.overrides().with(&request);
    if let Err(resp) = commit(shared, &mut store, next).await {
        return resp;
    }
    let groups = store.groups_with_cluster(&request.cluster);
    let current = store
        .overrides()
        .get(&request.cluster, &request.address)
        .cloned();
    drop(store);
    info!(%peer, operation = request.operation.name(), cluster = %request.cluster,
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
    shared: &Shared,
    peer: SocketAddr,
    operation: &str,
    body: Incoming,
) -> Response<Body> {
    let bytes = match read_body(body).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let request = match RouteRequest::parse(operation, &bytes) {
        Ok(r) => r,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, e),
    };
    let mut store = shared.store.lock().await;
    let targets = match store.resolve_route(&request) {
        Ok(t) => t,
        Err(e) => return error_response(refusal(&e), e),
    };
    let next = store.overrides().with_split(&request, targets.clone());
    if let Err(resp) = commit(shared, &mut store, next).await {
        return resp;
    }
    drop(store);
    let snapshots = shared.snapshots.borrow().clone();
    let served = snapshots.groups.get(&request.group);
    let version = served.map(|s| s.route_tables.version.clone());
    info!(%peer, operation = request.operation.name(), group = %request.group,
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

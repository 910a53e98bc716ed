//! `GET /metrics`: Prometheus exposition of the counters Legate keeps anyway.
//!
//! The request path only bumps atomics it already holds; this module reads them at scrape
//! time, on the control thread, and encodes them with `prometheus-client`.

use std::sync::atomic::Ordering;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::cluster::Health;
use crate::state::State;

type Labels = Vec<(&'static str, String)>;

fn counter(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    registry.register(name, help, family.clone());
    family
}

fn gauge(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

/// The exposition text for the current state.
pub fn render(state: &State) -> String {
    let mut r = Registry::with_prefix("legate");
    let snapshot = state.snapshot.load();

    let info = gauge(&mut r, "config_info", "The config version being served");
    info.get_or_create(&vec![("version", snapshot.version.clone())])
        .set(1);
    let reloads = counter(&mut r, "config_reloads", "Config reload attempts by result");
    reloads
        .get_or_create(&vec![("result", "ok".to_owned())])
        .inc_by(state.reloads.ok.load(Ordering::Relaxed));
    reloads
        .get_or_create(&vec![("result", "rejected".to_owned())])
        .inc_by(state.reloads.rejected.load(Ordering::Relaxed));
    let xds = gauge(
        &mut r,
        "xds_connected",
        "1 while a control plane session is up",
    );
    if snapshot.config.xds.is_some() {
        let up = state.xds.status().connected;
        xds.get_or_create(&vec![]).set(i64::from(up));
    }

    let responses = counter(
        &mut r,
        "downstream_responses",
        "Responses sent to clients by listener and status class",
    );
    let connections = gauge(
        &mut r,
        "downstream_connections_active",
        "Open client connections by listener",
    );
    for l in state.listeners.load().iter() {
        let (name, counters) = (l.name.to_string(), &l.counters);
        for (slot, class) in ["other", "1xx", "2xx", "3xx", "4xx", "5xx"]
            .iter()
            .enumerate()
        {
            let n = counters.responses[slot].load(Ordering::Relaxed);
            if n > 0 {
                responses
                    .get_or_create(&vec![
                        ("listener", name.clone()),
                        ("code_class", (*class).to_owned()),
                    ])
                    .inc_by(n);
            }
        }
        connections
            .get_or_create(&vec![("listener", name.clone())])
            .set(i64::try_from(l.connections.active()).unwrap_or(i64::MAX));
    }

    let rq_total = counter(&mut r, "upstream_requests", "Requests sent to an endpoint");
    let rq_active = gauge(
        &mut r,
        "upstream_requests_active",
        "Requests in flight to an endpoint",
    );
    let sessions_total = counter(&mut r, "upstream_sessions", "TCP sessions to an endpoint");
    let sessions_active = gauge(
        &mut r,
        "upstream_sessions_active",
        "TCP sessions open to an endpoint",
    );
    let bytes = counter(
        &mut r,
        "upstream_session_bytes",
        "Bytes relayed by TCP sessions, by direction",
    );
    let connect_failures = counter(
        &mut r,
        "upstream_connect_failures",
        "Failed connection attempts to an endpoint",
    );
    let healthy = gauge(
        &mut r,
        "endpoint_healthy",
        "1 healthy, 0 unhealthy, -1 not checked",
    );
    let ejected = gauge(
        &mut r,
        "endpoint_ejected",
        "1 while outlier detection ejects the endpoint",
    );
    let pooled = gauge(
        &mut r,
        "endpoint_pooled",
        "1 when the endpoint takes new work",
    );
    let overflows = counter(
        &mut r,
        "cluster_overflows",
        "Requests refused by a circuit breaker",
    );
    let cancels = counter(
        &mut r,
        "cluster_postgres_cancels",
        "Postgres cancel requests by how they were routed",
    );
    let panic = gauge(
        &mut r,
        "cluster_panic",
        "1 while the cluster balances in panic mode",
    );
    for cluster in snapshot.clusters.values() {
        let c = || ("cluster", cluster.name.to_string());
        let state = &cluster.state;
        overflows
            .get_or_create(&vec![c()])
            .inc_by(state.overflows.load(Ordering::Relaxed));
        cancels
            .get_or_create(&vec![c(), ("routing", "owner".to_owned())])
            .inc_by(state.cancels_routed.load(Ordering::Relaxed));
        cancels
            .get_or_create(&vec![c(), ("routing", "broadcast".to_owned())])
            .inc_by(state.cancels_broadcast.load(Ordering::Relaxed));
        let membership = state.membership.load();
        panic
            .get_or_create(&vec![c()])
            .set(i64::from(membership.panic));
        for e in &membership.endpoints {
            let labels = vec![c(), ("endpoint", e.addr.to_string())];
            let s = &e.state;
            rq_total
                .get_or_create(&labels)
                .inc_by(s.total_requests.load(Ordering::Relaxed));
            rq_active
                .get_or_create(&labels)
                .set(i64::try_from(s.active_requests.load(Ordering::Relaxed)).unwrap_or(0));
            sessions_total
                .get_or_create(&labels)
                .inc_by(s.total_sessions.load(Ordering::Relaxed));
            sessions_active
                .get_or_create(&labels)
                .set(i64::try_from(s.active_sessions.load(Ordering::Relaxed)).unwrap_or(0));
            let mut up = labels.clone();
            up.push(("direction", "to_upstream".to_owned()));
            bytes
                .get_or_create(&up)
                .inc_by(s.bytes_to_upstream.load(Ordering::Relaxed));
            let mut down = labels.clone();
            down.push(("direction", "to_client".to_owned()));
            bytes
                .get_or_create(&down)
                .inc_by(s.bytes_to_client.load(Ordering::Relaxed));
            connect_failures
                .get_or_create(&labels)
                .inc_by(s.connect_failures.load(Ordering::Relaxed));
            healthy.get_or_create(&labels).set(match s.health() {
                Health::Healthy => 1,
                Health::Unhealthy => 0,
                Health::Unknown => -1,
            });
            ejected
                .get_or_create(&labels)
                .set(i64::from(s.ejected_until_ms().is_some()));
            pooled.get_or_create(&labels).set(i64::from(e.pooled));
        }
    }
    let mut out = String::new();
    if encode(&mut out, &r).is_err() {
        out.clear();
    }
    out
}

//! `GET /metrics`: Prometheus exposition of the counters Legate keeps anyway.
//!
//! The request path only bumps atomics it already holds. One registry is built at start with a
//! collector over [`State`], which reads those atomics at scrape time, on the control thread.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::cluster::Health;
use crate::http::error::REASONS;
use crate::state::State;
use crate::stats::{ListenerStats, Merged, PerWorker, CLASSES};

/// The exposition of one proxy's state.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub fn new(state: Arc<State>) -> Metrics {
        let mut registry = Registry::with_prefix("legate");
        registry.register_collector(Box::new(StateCollector(state)));
        Metrics { registry }
    }

    /// The exposition text (OpenMetrics) for the state now.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The same in the Prometheus text format (0.0.4), which `promtool check metrics`
    /// checks ([`legate_xds::exposition::to_prometheus_text`]).
    pub fn render_prometheus_text(&self) -> String {
        legate_xds::exposition::to_prometheus_text(&self.render())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    revision: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResponseLabels {
    listener: String,
    code_class: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteClassLabels {
    listener: String,
    route: String,
    code_class: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimitLabels {
    route_table: String,
    route: String,
    limit: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimitResultLabels {
    route_table: String,
    route: String,
    limit: String,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TargetLabels {
    listener: String,
    route: String,
    cluster: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TargetClassLabels {
    listener: String,
    route: String,
    cluster: String,
    code_class: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TargetReasonLabels {
    listener: String,
    route: String,
    cluster: String,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SessionLabels {
    listener: String,
    cluster: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ClusterLabels {
    cluster: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CancelLabels {
    cluster: String,
    routing: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EndpointLabels {
    cluster: String,
    endpoint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BytesLabels {
    cluster: String,
    endpoint: String,
    direction: &'static str,
}

/// Reads [`State`] on every scrape.
#[derive(Debug)]
struct StateCollector(Arc<State>);

/// One family: its samples, encoded as counters or gauges.
struct Family<L> {
    name: &'static str,
    help: &'static str,
    samples: Vec<(L, i64)>,
}

impl<L: EncodeLabelSet> Family<L> {
    fn new(name: &'static str, help: &'static str) -> Self {
        Family {
            name,
            help,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: L, value: impl TryInto<i64>) {
        self.samples
            .push((labels, value.try_into().unwrap_or(i64::MAX)));
    }

    /// Encodes the family as counters; a family without samples is left out, as the
    /// exposition of an empty registered family is.
    fn counters(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        if self.samples.is_empty() {
            return Ok(());
        }
        let mut family = e.encode_descriptor(self.name, self.help, None, MetricType::Counter)?;
        for (labels, v) in &self.samples {
            let value = u64::try_from(*v).unwrap_or(0);
            ConstCounter::new(value).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn gauges(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        if self.samples.is_empty() {
            return Ok(());
        }
        let mut family = e.encode_descriptor(self.name, self.help, None, MetricType::Gauge)?;
        for (labels, v) in &self.samples {
            ConstGauge::new(*v).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}

/// One histogram family in seconds: its series that have observations.
struct Histograms<L> {
    name: &'static str,
    help: &'static str,
    samples: Vec<(L, Merged)>,
}

impl<L: EncodeLabelSet> Histograms<L> {
    fn new(name: &'static str, help: &'static str) -> Self {
        Histograms {
            name,
            help,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: L, observed: Merged) {
        if observed.count() > 0 {
            self.samples.push((labels, observed));
        }
    }

    fn encode(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        if self.samples.is_empty() {
            return Ok(());
        }
        let unit = Unit::Seconds;
        let mut family =
            e.encode_descriptor(self.name, self.help, Some(&unit), MetricType::Histogram)?;
        for (labels, m) in &self.samples {
            family
                .encode_family(labels)?
                .encode_histogram::<NoLabelSet>(m.sum_seconds(), m.count(), &m.buckets(), None)?;
        }
        Ok(())
    }
}

/// A per-worker histogram summed over workers.
fn merged(h: &PerWorker<crate::stats::Histogram>) -> Merged {
    let mut m = Merged::default();
    for cell in h.each() {
        cell.add_to(&mut m);
    }
    m
}

impl Collector for StateCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let state = &self.0;
        let snapshot = state.snapshot.load();

        let mut build = Family::new("build_info", "The release and source revision running");
        build.add(
            BuildLabels {
                version: crate::VERSION,
                revision: crate::REVISION,
            },
            1,
        );
        build.gauges(&mut e)?;
        let mut info = Family::new("config_info", "The config version being served");
        info.add(
            VersionLabels {
                version: snapshot.version.clone(),
            },
            1,
        );
        info.gauges(&mut e)?;
        let mut reloads = Family::new("config_reloads", "Config reload attempts by result");
        reloads.add(
            ResultLabels { result: "ok" },
            state.reloads.ok.load(Ordering::Relaxed),
        );
        reloads.add(
            ResultLabels { result: "rejected" },
            state.reloads.rejected.load(Ordering::Relaxed),
        );
        reloads.counters(&mut e)?;
        let dropped = e.encode_descriptor(
            "access_log_dropped",
            "Access log lines dropped because the log could not be written fast enough",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(crate::access_log::dropped()).encode(dropped)?;
        if snapshot.config.xds.is_some() {
            let connected = e.encode_descriptor(
                "xds_connected",
                "1 while a control plane session is up",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(i64::from(state.xds.status().connected)).encode(connected)?;
        }

        let mut responses = Family::new(
            "downstream_responses",
            "Responses sent to clients by listener and status class",
        );
        let mut connections = Family::new(
            "downstream_connections_active",
            "Open client connections by listener",
        );
        let mut refused = Family::new(
            "downstream_connections_refused",
            "Client connections closed at accept because max_connections were open",
        );
        for l in state.listeners.load().iter() {
            for (slot, class) in CLASSES.iter().enumerate() {
                let n = l.counters.responses[slot].load(Ordering::Relaxed);
                if n > 0 {
                    let labels = ResponseLabels {
                        listener: l.name.to_string(),
                        code_class: class,
                    };
                    responses.add(labels, n);
                }
            }
            let labels = ListenerLabels {
                listener: l.name.to_string(),
            };
            connections.add(labels.clone(), l.connections.active());
            refused.add(labels, l.counters.refused.load(Ordering::Relaxed));
        }
        responses.counters(&mut e)?;
        connections.gauges(&mut e)?;
        refused.counters(&mut e)?;
        encode_traffic(state, &mut e)?;
        encode_rate_limits(&snapshot, &mut e)?;

        let mut rq_total = Family::new("upstream_requests", "Requests sent to an endpoint");
        let mut rq_active = Family::new(
            "upstream_requests_active",
            "Requests in flight to an endpoint",
        );
        let mut sessions_total = Family::new("upstream_sessions", "TCP sessions to an endpoint");
        let mut sessions_active = Family::new(
            "upstream_sessions_active",
            "TCP sessions open to an endpoint",
        );
        let mut bytes = Family::new(
            "upstream_session_bytes",
            "Bytes relayed by TCP sessions, by direction",
        );
        let mut connect_failures = Family::new(
            "upstream_connect_failures",
            "Failed connection attempts to an endpoint",
        );
        let mut healthy = Family::new("endpoint_healthy", "1 healthy, 0 unhealthy, -1 not checked");
        let mut ejected = Family::new(
            "endpoint_ejected",
            "1 while outlier detection ejects the endpoint",
        );
        let mut pooled = Family::new("endpoint_pooled", "1 when the endpoint takes new work");
        let mut overflows =
            Family::new("cluster_overflows", "Requests refused by a circuit breaker");
        let mut cancels = Family::new(
            "cluster_postgres_cancels",
            "Postgres cancel requests by how they were routed",
        );
        let mut panic = Family::new(
            "cluster_panic",
            "1 while the cluster balances in panic mode",
        );
        let mut connect = Histograms::new(
            "upstream_connect_duration",
            "Time to establish a new upstream connection (TCP, and TLS when configured)",
        );
        for cluster in snapshot.clusters.values() {
            let name = || cluster.name.to_string();
            let c = &cluster.state;
            overflows.add(
                ClusterLabels { cluster: name() },
                c.overflows.load(Ordering::Relaxed),
            );
            for (routing, n) in [
                ("owner", &c.cancels_routed),
                ("broadcast", &c.cancels_broadcast),
            ] {
                let labels = CancelLabels {
                    cluster: name(),
                    routing,
                };
                cancels.add(labels, n.load(Ordering::Relaxed));
            }
            connect.add(
                ClusterLabels { cluster: name() },
                merged(&c.connect_duration),
            );
            let membership = c.membership.load();
            panic.add(
                ClusterLabels { cluster: name() },
                i64::from(membership.panic),
            );
            for ep in &membership.endpoints {
                let labels = || EndpointLabels {
                    cluster: name(),
                    endpoint: ep.addr.to_string(),
                };
                let s = &ep.state;
                rq_total.add(labels(), s.total_requests.load(Ordering::Relaxed));
                rq_active.add(labels(), s.active_requests.load(Ordering::Relaxed));
                sessions_total.add(labels(), s.total_sessions.load(Ordering::Relaxed));
                sessions_active.add(labels(), s.active_sessions.load(Ordering::Relaxed));
                for (direction, n) in [
                    ("to_upstream", &s.bytes_to_upstream),
                    ("to_client", &s.bytes_to_client),
                ] {
                    let labels = BytesLabels {
                        cluster: name(),
                        endpoint: ep.addr.to_string(),
                        direction,
                    };
                    bytes.add(labels, n.load(Ordering::Relaxed));
                }
                connect_failures.add(labels(), s.connect_failures.load(Ordering::Relaxed));
                let health = match s.health() {
                    Health::Healthy => 1,
                    Health::Unhealthy => 0,
                    Health::Unknown => -1,
                };
                healthy.add(labels(), health);
                ejected.add(labels(), i64::from(s.ejected_until_ms().is_some()));
                pooled.add(labels(), i64::from(ep.pooled));
            }
        }
        rq_total.counters(&mut e)?;
        rq_active.gauges(&mut e)?;
        sessions_total.counters(&mut e)?;
        sessions_active.gauges(&mut e)?;
        bytes.counters(&mut e)?;
        connect_failures.counters(&mut e)?;
        healthy.gauges(&mut e)?;
        ejected.gauges(&mut e)?;
        pooled.gauges(&mut e)?;
        overflows.counters(&mut e)?;
        cancels.counters(&mut e)?;
        connect.encode(&mut e)?;
        panic.gauges(&mut e)
    }
}

/// Each rate limit's decisions, and its keys that met another key's bucket in debt.
fn encode_rate_limits(
    snapshot: &crate::snapshot::Snapshot,
    e: &mut DescriptorEncoder,
) -> fmt::Result {
    let mut requests = Family::new(
        "ratelimit_requests",
        "Requests a rate limit checked, by what it decided: allowed, delayed or limited",
    );
    let mut collisions = Family::new(
        "ratelimit_collisions",
        "Requests whose key met its bucket in debt to another key (more active keys than max_keys): they share it",
    );
    for (table, routes) in &snapshot.route_tables {
        for route in routes.routes() {
            for limit in route.rate_limits.iter() {
                let r = limit.read();
                let labels = || LimitLabels {
                    route_table: table.clone(),
                    route: route.name.to_string(),
                    limit: limit.name.to_string(),
                };
                for (result, n) in [
                    ("allowed", r.allowed),
                    ("delayed", r.delayed),
                    ("limited", r.limited),
                ] {
                    let l = labels();
                    let labels = LimitResultLabels {
                        route_table: l.route_table,
                        route: l.route,
                        limit: l.limit,
                        result,
                    };
                    requests.add(labels, n);
                }
                if !limit.spec.key.is_whole_route() {
                    collisions.add(labels(), r.collisions);
                }
            }
        }
    }
    requests.counters(e)?;
    collisions.counters(e)
}

/// The per-route, per-target and per-session families, from each listener's current settings.
fn encode_traffic(state: &State, e: &mut DescriptorEncoder) -> fmt::Result {
    let mut downstream = Histograms::new(
        "downstream_request_duration",
        "Time from a request's arrival to the end of its response, by listener, route and status class",
    );
    let mut head = Histograms::new(
        "upstream_response_head_duration",
        "Time from forwarding a request to its response head, by route and target cluster",
    );
    let mut end = Histograms::new(
        "upstream_request_duration",
        "Time from forwarding a request to the end of its response body, by route and target cluster",
    );
    let mut responses = Family::new(
        "route_target_responses",
        "Responses to requests a route sent to a cluster, by status class",
    );
    let mut retries = Family::new(
        "route_target_retries",
        "Tries after the first for requests a route sent to a cluster",
    );
    let mut timeouts = Family::new(
        "route_target_timeouts",
        "Tries and requests cut by the route's timeout or per-try timeout",
    );
    let mut incomplete = Family::new(
        "route_target_incomplete",
        "Responses from a cluster whose body did not reach the client whole (upstream reset or \
         idle mid-body, or the client gone)",
    );
    let mut errors = Family::new(
        "route_target_errors",
        "Answers Legate gave itself (legate-error) for requests a route sent to a cluster",
    );
    let mut sessions = Histograms::new(
        "tcp_session_duration",
        "How long TCP sessions that reached a server lasted",
    );
    for l in state.listeners.load().iter() {
        match &l.stats {
            ListenerStats::Routes(routes) => {
                for route in routes.iter() {
                    let name = || route.route.to_string();
                    let listener = || route.listener.to_string();
                    for (class, m) in CLASSES.iter().zip(route.downstream()) {
                        let labels = RouteClassLabels {
                            listener: listener(),
                            route: name(),
                            code_class: class,
                        };
                        downstream.add(labels, m);
                    }
                    for target in route.targets.iter() {
                        let r = target.read();
                        if r.requests() == 0 {
                            continue;
                        }
                        let labels = || TargetLabels {
                            listener: listener(),
                            route: name(),
                            cluster: target.cluster.to_string(),
                        };
                        head.add(labels(), r.head);
                        end.add(labels(), r.end);
                        retries.add(labels(), r.retries);
                        timeouts.add(labels(), r.timeouts);
                        incomplete.add(labels(), r.incomplete);
                        // Every class, zeros too: a ratio of one target's 5xx to its
                        // sibling's needs both series to exist.
                        for (class, n) in CLASSES.iter().zip(r.responses) {
                            let t = labels();
                            let labels = TargetClassLabels {
                                listener: t.listener,
                                route: t.route,
                                cluster: t.cluster,
                                code_class: class,
                            };
                            responses.add(labels, n);
                        }
                        for (reason, n) in REASONS.iter().zip(r.errors) {
                            if n > 0 {
                                let t = labels();
                                let labels = TargetReasonLabels {
                                    listener: t.listener,
                                    route: t.route,
                                    cluster: t.cluster,
                                    reason,
                                };
                                errors.add(labels, n);
                            }
                        }
                    }
                }
            }
            ListenerStats::Sessions(stats) => {
                let labels = SessionLabels {
                    listener: stats.listener.to_string(),
                    cluster: stats.cluster.to_string(),
                };
                sessions.add(labels, merged(&stats.duration));
            }
        }
    }
    downstream.encode(e)?;
    head.encode(e)?;
    end.encode(e)?;
    responses.counters(e)?;
    retries.counters(e)?;
    timeouts.counters(e)?;
    incomplete.counters(e)?;
    errors.counters(e)?;
    sessions.encode(e)
}

//! Compile: a checked config becomes the immutable snapshot the request path reads. Every value
//! was parsed by checking; the only thing that can still fail here is reading TLS files.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};

use crate::cluster::{dns, Cluster, Registry};
use crate::config::checked::{ActionValues, EndpointAddress, RouteValues};
use crate::config::validate::default_route_name;
use crate::config::{model, Checked, Config};
use crate::router::{
    Action, Redirect, Respond, RetryConditions, RetryPolicy, Route, RouteTable, Split, VirtualHost,
};
use crate::tls::client::ClientTls;
use crate::tls::server::ServerTls;

/// Default whole-request deadline of a route.
pub const DEFAULT_ROUTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// One loaded config, compiled. Published whole; never mutated.
#[derive(Debug)]
pub struct Snapshot {
    pub version: String,
    pub loaded_at: SystemTime,
    pub config: Config,
    pub route_tables: HashMap<String, Arc<RouteTable>>,
    pub clusters: HashMap<String, Arc<Cluster>>,
    /// TLS of each listener that terminates it, by listener name.
    pub listener_tls: HashMap<String, Arc<ServerTls>>,
    /// The address each listener binds, by listener name.
    pub listen: HashMap<String, SocketAddr>,
    /// The admin listener's address.
    pub admin: SocketAddr,
    /// The probe listener's address, if there is one.
    pub probes: Option<SocketAddr>,
    /// How endpoint DNS names are resolved.
    pub dns: dns::Settings,
}

/// Why a checked config could not be compiled: a TLS file that could not be used (it changed
/// after the check, say), or values that do not match the config they were checked with.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct CompileError {
    pub path: String,
    pub message: String,
}

fn unmatched(path: impl Into<String>) -> CompileError {
    CompileError {
        path: path.into(),
        message: "no checked value for it (the config changed after its check)".into(),
    }
}

impl Snapshot {
    pub fn compile(
        checked: Checked,
        version: String,
        registry: &Registry,
    ) -> Result<Snapshot, CompileError> {
        let (config, mut values) = checked.into_parts();
        if values.endpoints.len() != config.clusters.len() {
            return Err(unmatched("clusters"));
        }
        if values.listen.len() != config.listeners.len() {
            return Err(unmatched("listeners"));
        }
        let mut clusters = HashMap::new();
        let addresses = values.endpoints.drain(..);
        for ((ci, c), addresses) in config.clusters.iter().enumerate().zip(addresses) {
            if addresses.len() != c.endpoints.len() {
                return Err(unmatched(format!("clusters[{ci}].endpoints")));
            }
            let cluster = compile_cluster(ci, c, addresses, registry)?;
            clusters.insert(c.name.clone(), Arc::new(cluster));
        }
        let mut listener_tls = HashMap::new();
        for (li, l) in config.listeners.iter().enumerate() {
            if let Some(tls) = &l.tls {
                let server = ServerTls::new(tls).map_err(|e| CompileError {
                    path: format!("listeners[{li}].tls"),
                    message: e.to_string(),
                })?;
                listener_tls.insert(l.name.clone(), Arc::new(server));
            }
        }
        let mut route_tables = HashMap::new();
        for (name, table) in &config.route_tables {
            let path = || format!("route_tables.{name}");
            let vhosts = values
                .routes
                .remove(name)
                .ok_or_else(|| unmatched(path()))?;
            let compiled = compile_table(name, table, vhosts, &clusters, registry)?;
            route_tables.insert(name.clone(), Arc::new(compiled));
        }
        let listen = config
            .listeners
            .iter()
            .zip(&values.listen)
            .map(|(l, addr)| (l.name.clone(), *addr))
            .collect();
        let dns = dns::Settings {
            servers: values.dns_servers.take(),
            timeout: config.dns.timeout.get(),
        };
        Ok(Snapshot {
            version,
            loaded_at: SystemTime::now(),
            config,
            route_tables,
            clusters,
            listener_tls,
            listen,
            admin: values.admin,
            probes: values.probes,
            dns,
        })
    }
}

fn compile_cluster(
    ci: usize,
    c: &model::Cluster,
    addresses: Vec<EndpointAddress>,
    registry: &Registry,
) -> Result<Cluster, CompileError> {
    let tls = match &c.tls {
        Some(spec) => Some(Arc::new({
            if spec.insecure_skip_verify {
                tracing::warn!(cluster = %c.name, "upstream TLS certificates are not verified (insecure_skip_verify)");
            }
            ClientTls::new(spec, c.protocol).map_err(|e| CompileError {
                path: format!("clusters[{ci}].tls"),
                message: e.to_string(),
            })?
        })),
        None => None,
    };
    Ok(Cluster {
        name: c.name.as_str().into(),
        protocol: c.protocol,
        connect_timeout: c.connect_timeout.get(),
        max_idle_connections: c.max_idle_connections,
        idle_timeout: c.idle_timeout.get(),
        limits: c.circuit_breakers.clone(),
        spec: Arc::new(c.clone()),
        addresses,
        state: registry.cluster_state(&c.name),
        tls,
        transport: crate::cluster::transport_key(c),
    })
}

fn compile_table(
    name: &str,
    table: &model::RouteTable,
    values: Vec<Vec<RouteValues>>,
    clusters: &HashMap<String, Arc<Cluster>>,
    registry: &Registry,
) -> Result<RouteTable, CompileError> {
    if values.len() != table.virtual_hosts.len() {
        return Err(unmatched(format!("route_tables.{name}.virtual_hosts")));
    }
    let mut vhosts = Vec::with_capacity(table.virtual_hosts.len());
    for ((vi, vh), routes) in table.virtual_hosts.iter().enumerate().zip(values) {
        let base = format!("route_tables.{name}.virtual_hosts[{vi}]");
        if routes.len() != vh.routes.len() {
            return Err(unmatched(format!("{base}.routes")));
        }
        let mut compiled = Vec::with_capacity(routes.len());
        for ((ri, r), values) in vh.routes.iter().enumerate().zip(routes) {
            let at = default_route_name(name, vi, ri);
            let route_name = r.name.as_deref().unwrap_or(&at);
            let limits = r.rate_limits.as_deref().unwrap_or(&vh.rate_limits);
            let limiters = limits
                .iter()
                .map(|l| {
                    let spec = crate::config::validate::spec_of(l);
                    registry.limits.limiter(name, route_name, &l.name, spec)
                })
                .collect();
            let route = compile_route(route_name, r, values, clusters, limiters);
            compiled.push(route.ok_or_else(|| unmatched(at))?);
        }
        vhosts.push((vh.hosts.clone(), VirtualHost { routes: compiled }));
    }
    Ok(RouteTable::new(name, vhosts))
}

/// A route; `None` when its action does not match its checked values (a cluster missing).
fn compile_route(
    name: &str,
    r: &model::Route,
    values: RouteValues,
    clusters: &HashMap<String, Arc<Cluster>>,
    rate_limits: Box<[Arc<crate::ratelimit::Limiter>]>,
) -> Option<Route> {
    let action = match values.action {
        ActionValues::Cluster(name) => Action::Cluster(clusters.get(&name)?.clone()),
        ActionValues::Split(targets) => Action::Split(Split::new(
            targets
                .into_iter()
                .map(|(name, weight)| Some((clusters.get(&name)?.clone(), weight)))
                .collect::<Option<Vec<_>>>()?,
        )),
        ActionValues::Redirect { status } => {
            let rd = r.redirect.as_ref()?;
            Action::Redirect(Redirect {
                scheme: rd.scheme.as_deref().map(Into::into),
                host: rd.host.as_deref().map(Into::into),
                port: rd.port,
                path: rd.path.as_deref().map(Into::into),
                strip_query: rd.strip_query,
                status,
            })
        }
        ActionValues::Respond {
            status,
            mut headers,
        } => {
            let body = r
                .respond
                .as_ref()
                .map(|rs| rs.body.clone())
                .unwrap_or_default();
            if !body.is_empty() && !headers.contains_key(CONTENT_TYPE) {
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
            }
            Action::Respond(Respond {
                status,
                body: Bytes::from(body),
                headers,
            })
        }
    };
    Some(Route {
        name: name.into(),
        index: 0,
        path: values.path,
        headers: values.headers,
        action,
        timeout: r.timeout.map_or(DEFAULT_ROUTE_TIMEOUT, |d| d.get()),
        stream_idle_timeout: r.stream_idle_timeout.map(|d| d.get()),
        retry: r.retry.as_ref().map(|p| RetryPolicy {
            attempts: p.attempts.max(1),
            on: RetryConditions::from_list(&p.on),
            per_try_timeout: p.per_try_timeout.map(|d| d.get()),
            idempotency_key: p.idempotency_key,
        }),
        host_rewrite: values.host_rewrite,
        prefix_rewrite: r.prefix_rewrite.as_deref().map(Into::into),
        upgrades: r
            .upgrades
            .iter()
            .map(|u| u.to_ascii_lowercase().into())
            .collect(),
        request_headers: values.request_headers,
        response_headers: values.response_headers,
        rate_limits,
    })
}

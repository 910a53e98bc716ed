//! The compiled, immutable form of a validated config that the request path reads.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use http::StatusCode;

use crate::cluster::{Cluster, Registry};
use crate::config::model::{self, Config};
use crate::router::{
    full_match_regex, Action, HeaderMatch, HeaderMatchKind, HeaderOps, PathMatch, Redirect,
    Respond, RetryConditions, RetryPolicy, Route, RouteTable, Split, VirtualHost,
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
}

/// A config that passed validation but could not be compiled. Validation should make this
/// unreachable; it exists so that a gap between the two is an error, not a panic.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct CompileError {
    pub path: String,
    pub message: String,
}

fn err(path: impl Into<String>, message: impl std::fmt::Display) -> CompileError {
    CompileError {
        path: path.into(),
        message: message.to_string(),
    }
}

impl Snapshot {
    pub fn compile(
        config: Config,
        version: String,
        registry: &Registry,
    ) -> Result<Snapshot, CompileError> {
        let mut clusters = HashMap::new();
        for (ci, c) in config.clusters.iter().enumerate() {
            clusters.insert(c.name.clone(), Arc::new(compile_cluster(ci, c, registry)?));
        }
        let mut listener_tls = HashMap::new();
        for (li, l) in config.listeners.iter().enumerate() {
            if let Some(tls) = &l.tls {
                let server =
                    ServerTls::new(tls).map_err(|e| err(format!("listeners[{li}].tls"), e))?;
                listener_tls.insert(l.name.clone(), Arc::new(server));
            }
        }
        let mut route_tables = HashMap::new();
        for (name, table) in &config.route_tables {
            let compiled = compile_table(name, table, &clusters)?;
            route_tables.insert(name.clone(), Arc::new(compiled));
        }
        Ok(Snapshot {
            version,
            loaded_at: SystemTime::now(),
            config,
            route_tables,
            clusters,
            listener_tls,
        })
    }

    /// The listener's address as configured (validated to be a socket address).
    pub fn listen_addr(listener: &model::Listener) -> Result<SocketAddr, CompileError> {
        listener
            .listen
            .parse()
            .map_err(|e| err(format!("listeners.{}.listen", listener.name), e))
    }
}

fn compile_cluster(
    ci: usize,
    c: &model::Cluster,
    registry: &Registry,
) -> Result<Cluster, CompileError> {
    let tls = match &c.tls {
        Some(spec) => Some(Arc::new({
            if spec.insecure_skip_verify {
                tracing::warn!(cluster = %c.name, "upstream TLS certificates are not verified (insecure_skip_verify)");
            }
            ClientTls::new(spec, c.protocol).map_err(|e| err(format!("clusters[{ci}].tls"), e))?
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
        state: registry.cluster_state(&c.name),
        tls,
        transport: crate::cluster::transport_key(c),
    })
}

fn compile_table(
    name: &str,
    table: &model::RouteTable,
    clusters: &HashMap<String, Arc<Cluster>>,
) -> Result<RouteTable, CompileError> {
    let mut vhosts = Vec::with_capacity(table.virtual_hosts.len());
    for (vi, vh) in table.virtual_hosts.iter().enumerate() {
        let mut routes = Vec::with_capacity(vh.routes.len());
        for (ri, r) in vh.routes.iter().enumerate() {
            let path = format!("route_tables.{name}.virtual_hosts[{vi}].routes[{ri}]");
            routes.push(compile_route(&path, r, clusters)?);
        }
        vhosts.push((vh.hosts.clone(), VirtualHost { routes }));
    }
    Ok(RouteTable::new(name, vhosts))
}

fn compile_route(
    path: &str,
    r: &model::Route,
    clusters: &HashMap<String, Arc<Cluster>>,
) -> Result<Route, CompileError> {
    let m = &r.matcher;
    let path_match = match (&m.prefix, &m.exact, &m.regex) {
        (Some(p), None, None) => PathMatch::Prefix(p.as_str().into()),
        (None, Some(e), None) => PathMatch::Exact(e.as_str().into()),
        (None, None, Some(re)) => PathMatch::Regex(
            full_match_regex(re).map_err(|e| err(format!("{path}.match.regex"), e))?,
        ),
        _ => {
            return Err(err(
                format!("{path}.match"),
                "needs exactly one of prefix, exact, regex",
            ))
        }
    };
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(hi, h)| compile_header_match(&format!("{path}.match.headers[{hi}]"), h))
        .collect::<Result<Vec<_>, _>>()?;
    let cluster = |p: String, name: &str| {
        clusters
            .get(name)
            .cloned()
            .ok_or_else(|| err(p, format!("unknown cluster {name:?}")))
    };
    let action = match (&r.cluster, &r.split, &r.redirect, &r.respond) {
        (Some(c), None, None, None) => Action::Cluster(cluster(format!("{path}.cluster"), c)?),
        (None, Some(split), None, None) => Action::Split(Split::new(
            split
                .iter()
                .enumerate()
                .map(|(si, t)| {
                    Ok((
                        cluster(format!("{path}.split[{si}].cluster"), &t.cluster)?,
                        t.weight,
                    ))
                })
                .collect::<Result<Vec<_>, CompileError>>()?,
        )),
        (None, None, Some(rd), None) => Action::Redirect(Redirect {
            scheme: rd.scheme.as_deref().map(Into::into),
            host: rd.host.as_deref().map(Into::into),
            port: rd.port,
            path: rd.path.as_deref().map(Into::into),
            strip_query: rd.strip_query,
            status: status(&format!("{path}.redirect.status"), rd.status)?,
        }),
        (None, None, None, Some(rs)) => {
            let mut headers = HeaderMap::new();
            for (k, v) in &rs.headers {
                let p = format!("{path}.respond.headers.{k}");
                headers.insert(header_name(&p, k)?, header_value(&p, v)?);
            }
            if !rs.body.is_empty() && !headers.contains_key(CONTENT_TYPE) {
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
            }
            Action::Respond(Respond {
                status: status(&format!("{path}.respond.status"), rs.status)?,
                body: Bytes::from(rs.body.clone()),
                headers,
            })
        }
        _ => {
            return Err(err(
                path,
                "needs exactly one of cluster, split, redirect, respond",
            ))
        }
    };
    Ok(Route {
        id: path.into(),
        path: path_match,
        headers,
        action,
        timeout: r.timeout.map_or(DEFAULT_ROUTE_TIMEOUT, |d| d.get()),
        retry: r.retry.as_ref().map(|p| RetryPolicy {
            attempts: p.attempts.max(1),
            on: RetryConditions::from_list(&p.on),
            per_try_timeout: p.per_try_timeout.map(|d| d.get()),
        }),
        host_rewrite: r
            .host_rewrite
            .as_deref()
            .map(|h| header_value(&format!("{path}.host_rewrite"), h))
            .transpose()?,
        prefix_rewrite: r.prefix_rewrite.as_deref().map(Into::into),
        request_headers: header_ops(&format!("{path}.request_headers"), &r.request_headers)?,
        response_headers: header_ops(&format!("{path}.response_headers"), &r.response_headers)?,
    })
}

fn compile_header_match(path: &str, h: &model::HeaderMatch) -> Result<HeaderMatch, CompileError> {
    let kind = match (&h.exact, &h.regex, h.present) {
        (Some(v), None, None) => HeaderMatchKind::Exact(header_value(&format!("{path}.exact"), v)?),
        (None, Some(re), None) => HeaderMatchKind::Regex(
            full_match_regex(re).map_err(|e| err(format!("{path}.regex"), e))?,
        ),
        (None, None, Some(p)) => HeaderMatchKind::Present(p),
        (None, None, None) => HeaderMatchKind::Present(true),
        _ => return Err(err(path, "needs at most one of exact, regex, present")),
    };
    Ok(HeaderMatch {
        name: header_name(&format!("{path}.name"), &h.name)?,
        kind,
        invert: h.invert,
    })
}

fn header_ops(path: &str, ops: &model::HeaderOps) -> Result<HeaderOps, CompileError> {
    let mut out = HeaderOps::default();
    for (k, v) in &ops.add {
        let p = format!("{path}.add.{k}");
        out.set.push((header_name(&p, k)?, header_value(&p, v)?));
    }
    for (i, k) in ops.remove.iter().enumerate() {
        out.remove
            .push(header_name(&format!("{path}.remove[{i}]"), k)?);
    }
    Ok(out)
}

fn header_name(path: &str, name: &str) -> Result<HeaderName, CompileError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|e| err(path, e))
}

fn header_value(path: &str, value: &str) -> Result<HeaderValue, CompileError> {
    HeaderValue::from_str(value).map_err(|e| err(path, e))
}

fn status(path: &str, code: u16) -> Result<StatusCode, CompileError> {
    StatusCode::from_u16(code).map_err(|e| err(path, e))
}

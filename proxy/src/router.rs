//! Compiled route tables: virtual host by Host, then the first matching route.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, HeaderValue};
use http::StatusCode;

use crate::cluster::Cluster;
pub use crate::config::checked::{HeaderMatch, HeaderMatchKind, HeaderOps, PathMatch};
use crate::config::model::RetryOn;

/// A route table compiled for matching: host lookups are a hash probe plus a suffix walk.
#[derive(Debug)]
pub struct RouteTable {
    pub name: Arc<str>,
    vhosts: Vec<VirtualHost>,
    /// Lowercase exact host → index into `vhosts`.
    exact: HashMap<Box<str>, usize>,
    /// Lowercase suffixes (including the leading dot), longest first.
    wildcard: Vec<(Box<str>, usize)>,
    catch_all: Option<usize>,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub routes: Vec<Route>,
}

#[derive(Debug)]
pub struct Route {
    /// The route's `name`, or where it is (`route_tables.T.virtual_hosts[i].routes[j]`): for
    /// logs and the `route` label.
    pub name: Arc<str>,
    /// Its place among all routes of its table, in order ([`RouteTable::routes`]); set by
    /// [`RouteTable::new`].
    pub index: usize,
    pub path: PathMatch,
    pub headers: Vec<HeaderMatch>,
    pub action: Action,
    pub timeout: Duration,
    /// Overrides the listener's `stream_idle_timeout`.
    pub stream_idle_timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    pub host_rewrite: Option<HeaderValue>,
    pub prefix_rewrite: Option<Box<str>>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    /// `Upgrade` protocols this route tunnels, lower-case.
    pub upgrades: Box<[Box<str>]>,
    /// Limits each request must pass, in order (the route's, else its virtual host's).
    pub rate_limits: Box<[Arc<crate::ratelimit::Limiter>]>,
}

#[derive(Debug)]
pub enum Action {
    Cluster(Arc<Cluster>),
    Split(Split),
    Redirect(Redirect),
    Respond(Respond),
}

/// Weighted choice among clusters; `cumulative[i]` is the running total up to target `i`.
#[derive(Debug)]
pub struct Split {
    pub targets: Vec<(Arc<Cluster>, u32)>,
    cumulative: Vec<u32>,
    total: u32,
}

#[derive(Debug)]
pub struct Redirect {
    pub scheme: Option<Box<str>>,
    pub host: Option<Box<str>>,
    pub port: Option<u16>,
    pub path: Option<Box<str>>,
    pub strip_query: bool,
    pub status: StatusCode,
}

#[derive(Debug)]
pub struct Respond {
    pub status: StatusCode,
    pub body: bytes::Bytes,
    pub headers: HeaderMap,
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub on: RetryConditions,
    pub per_try_timeout: Option<Duration>,
    /// Requests carrying `Idempotency-Key` count as idempotent.
    pub idempotency_key: bool,
}

/// A set of [`RetryOn`] conditions as bits, so checking one is a mask.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryConditions(u8);

impl RetryConditions {
    pub fn from_list(list: &[RetryOn]) -> Self {
        Self(list.iter().fold(0, |acc, on| acc | Self::bit(*on)))
    }

    fn bit(on: RetryOn) -> u8 {
        match on {
            RetryOn::ConnectFailure => 1,
            RetryOn::Reset => 2,
            RetryOn::Timeout => 4,
            RetryOn::Status503 => 8,
            RetryOn::GatewayError => 16,
            RetryOn::Status5xx => 32,
        }
    }

    pub fn contains(self, on: RetryOn) -> bool {
        self.0 & Self::bit(on) != 0
    }

    /// Whether a response with this status may be retried.
    pub fn retries_status(self, status: StatusCode) -> bool {
        let code = status.as_u16();
        (code == 503 && self.contains(RetryOn::Status503))
            || (matches!(code, 502..=504) && self.contains(RetryOn::GatewayError))
            || (status.is_server_error() && self.contains(RetryOn::Status5xx))
    }
}

// === impl HeaderOps ===

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
    }
}

// === impl RouteTable ===

/// Host names longer than this are not routable (DNS names are at most 253 bytes).
const MAX_HOST_LEN: usize = 255;

impl RouteTable {
    /// The shortest `stream_idle_timeout` any route sets, which the idle checks must resolve.
    /// Every route, in [`Route::index`] order.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.vhosts.iter().flat_map(|v| v.routes.iter())
    }

    pub fn shortest_stream_idle_timeout(&self) -> Option<Duration> {
        self.routes().filter_map(|r| r.stream_idle_timeout).min()
    }

    /// Builds a table from compiled virtual hosts and their host patterns (already validated).
    pub fn new(name: &str, mut vhosts: Vec<(Vec<String>, VirtualHost)>) -> Self {
        let routes = vhosts.iter_mut().flat_map(|(_, v)| v.routes.iter_mut());
        for (index, route) in routes.enumerate() {
            route.index = index;
        }
        let mut table = RouteTable {
            name: name.into(),
            vhosts: Vec::with_capacity(vhosts.len()),
            exact: HashMap::new(),
            wildcard: Vec::new(),
            catch_all: None,
        };
        for (i, (hosts, vhost)) in vhosts.into_iter().enumerate() {
            for host in hosts {
                let host = host.to_ascii_lowercase();
                if host == "*" {
                    table.catch_all.get_or_insert(i);
                } else if let Some(suffix) = host.strip_prefix('*') {
                    table.wildcard.push((suffix.into(), i));
                } else {
                    table.exact.entry(host.into()).or_insert(i);
                }
            }
            table.vhosts.push(vhost);
        }
        // Longest suffix first, so `*.a.example.org` beats `*.example.org`.
        table.wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        table
    }

    /// The virtual host for a Host header value: exact, then the longest wildcard, then `*`.
    /// Case-insensitive; a port is ignored, and so is a trailing dot (`example.org.` is
    /// `example.org`, the same name written fully qualified).
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        let host = strip_port(host);
        let host = host.strip_suffix('.').unwrap_or(host);
        let mut buf = [0u8; MAX_HOST_LEN];
        let lower = if host.len() <= MAX_HOST_LEN {
            let bytes = &mut buf[..host.len()];
            bytes.copy_from_slice(host.as_bytes());
            bytes.make_ascii_lowercase();
            std::str::from_utf8(bytes).ok()
        } else {
            None
        };
        let index = lower
            .and_then(|h| {
                self.exact.get(h).copied().or_else(|| {
                    self.wildcard
                        .iter()
                        .find(|(suffix, _)| h.len() > suffix.len() && h.ends_with(&**suffix))
                        .map(|(_, i)| *i)
                })
            })
            .or(self.catch_all)?;
        self.vhosts.get(index)
    }

    /// The first route of the matching virtual host whose path and headers match.
    pub fn route(&self, host: &str, path: &str, headers: &HeaderMap) -> Option<&Route> {
        self.virtual_host(host)?
            .routes
            .iter()
            .find(|r| r.matches(path, headers))
    }
}

/// `example.org:8080` → `example.org`; `[::1]:80` → `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

// === impl Route ===

impl Route {
    /// The clusters the route sends to, in target order: none for a redirect or a fixed
    /// answer.
    pub fn clusters(&self) -> Vec<&str> {
        match &self.action {
            Action::Cluster(c) => vec![&*c.name],
            Action::Split(split) => split.targets.iter().map(|(c, _)| &*c.name).collect(),
            Action::Redirect(_) | Action::Respond(_) => Vec::new(),
        }
    }

    /// Whether every protocol an `Upgrade` header offers is one this route tunnels.
    pub fn allows_upgrade(&self, offered: &str) -> bool {
        let mut any = false;
        let all = offered.split(',').map(str::trim).all(|p| {
            any = true;
            let name = p.split('/').next().unwrap_or(p);
            self.upgrades.iter().any(|u| u.eq_ignore_ascii_case(name))
        });
        any && all
    }

    /// `path` is the request path without its query.
    pub fn matches(&self, path: &str, headers: &HeaderMap) -> bool {
        let path_ok = match &self.path {
            PathMatch::Prefix(p) => path.starts_with(&**p),
            PathMatch::Exact(p) => path == &**p,
            PathMatch::Regex(re) => re.is_match(path),
        };
        path_ok && self.headers.iter().all(|h| h.matches(headers))
    }
}

impl HeaderMatch {
    fn matches(&self, headers: &HeaderMap) -> bool {
        let value = headers.get(&self.name);
        let hit = match (&self.kind, value) {
            (HeaderMatchKind::Present(want), v) => v.is_some() == *want,
            (HeaderMatchKind::Exact(want), Some(v)) => v == want,
            (HeaderMatchKind::Regex(re), Some(v)) => v.to_str().is_ok_and(|s| re.is_match(s)),
            (_, None) => false,
        };
        hit != self.invert
    }
}

// === impl Split ===

impl Split {
    pub fn new(targets: Vec<(Arc<Cluster>, u32)>) -> Self {
        let mut total = 0u32;
        let cumulative = targets
            .iter()
            .map(|(_, w)| {
                total = total.saturating_add(*w);
                total
            })
            .collect();
        Split {
            targets,
            cumulative,
            total,
        }
    }

    /// Picks a cluster with probability proportional to its weight: its index among the
    /// targets, and the cluster.
    pub fn pick(&self) -> Option<(usize, &Arc<Cluster>)> {
        if self.total == 0 {
            return None;
        }
        let r = fastrand::u32(..self.total);
        let i = self.cumulative.partition_point(|c| *c <= r);
        self.targets.get(i).map(|(c, _)| (i, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validate::full_match_regex;
    use http::header::HeaderName;

    fn respond_route(path: PathMatch, status: u16) -> Route {
        Route {
            name: "r".into(),
            index: 0,
            path,
            headers: Vec::new(),
            action: Action::Respond(Respond {
                status: StatusCode::from_u16(status).unwrap(),
                body: bytes::Bytes::new(),
                headers: HeaderMap::new(),
            }),
            timeout: Duration::from_secs(15),
            stream_idle_timeout: None,
            retry: None,
            host_rewrite: None,
            prefix_rewrite: None,
            upgrades: Box::new([]),
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
            rate_limits: Box::new([]),
        }
    }

    fn status_of(route: Option<&Route>) -> Option<u16> {
        match &route?.action {
            Action::Respond(r) => Some(r.status.as_u16()),
            _ => None,
        }
    }

    fn table() -> RouteTable {
        let vh = |status| VirtualHost {
            routes: vec![respond_route(PathMatch::Prefix("/".into()), status)],
        };
        RouteTable::new(
            "t",
            vec![
                (vec!["maps.example.org".into()], vh(200)),
                (vec!["*.example.org".into()], vh(201)),
                (vec!["*.tiles.example.org".into()], vh(202)),
                (vec!["*".into()], vh(404)),
            ],
        )
    }

    #[test]
    fn host_precedence_exact_then_longest_suffix_then_star() {
        let t = table();
        let h = HeaderMap::new();
        assert_eq!(status_of(t.route("maps.example.org", "/", &h)), Some(200));
        assert_eq!(
            status_of(t.route("MAPS.Example.ORG:8443", "/", &h)),
            Some(200)
        );
        assert_eq!(status_of(t.route("www.example.org", "/", &h)), Some(201));
        assert_eq!(
            status_of(t.route("a.tiles.example.org", "/", &h)),
            Some(202)
        );
        // The bare suffix is not covered by its own wildcard.
        assert_eq!(status_of(t.route("example.org", "/", &h)), Some(404));
        assert_eq!(status_of(t.route("other.net", "/", &h)), Some(404));
        assert_eq!(status_of(t.route(&"x".repeat(300), "/", &h)), Some(404));
    }

    #[test]
    fn no_catch_all_means_no_route() {
        let t = RouteTable::new(
            "t",
            vec![(
                vec!["a.example".into()],
                VirtualHost {
                    routes: vec![respond_route(PathMatch::Prefix("/".into()), 200)],
                },
            )],
        );
        assert!(t.route("b.example", "/", &HeaderMap::new()).is_none());
    }

    #[test]
    fn routes_are_tried_in_order_with_each_path_kind() {
        let re = full_match_regex("/v[0-9]+/tiles").unwrap();
        let t = RouteTable::new(
            "t",
            vec![(
                vec!["*".into()],
                VirtualHost {
                    routes: vec![
                        respond_route(PathMatch::Exact("/health".into()), 200),
                        respond_route(PathMatch::Regex(re), 201),
                        respond_route(PathMatch::Prefix("/osm/".into()), 202),
                    ],
                },
            )],
        );
        let h = HeaderMap::new();
        assert_eq!(status_of(t.route("x", "/health", &h)), Some(200));
        assert_eq!(status_of(t.route("x", "/health/x", &h)), None);
        assert_eq!(status_of(t.route("x", "/v12/tiles", &h)), Some(201));
        assert_eq!(status_of(t.route("x", "/v12/tiles/1", &h)), None);
        assert_eq!(status_of(t.route("x", "/osm/1/2/3.png", &h)), Some(202));
    }

    #[test]
    fn header_matchers() {
        let mut r = respond_route(PathMatch::Prefix("/".into()), 200);
        r.headers = vec![
            HeaderMatch {
                name: HeaderName::from_static("x-canary"),
                kind: HeaderMatchKind::Exact(HeaderValue::from_static("1")),
                invert: false,
            },
            HeaderMatch {
                name: HeaderName::from_static("x-debug"),
                kind: HeaderMatchKind::Present(true),
                invert: true,
            },
        ];
        let mut h = HeaderMap::new();
        assert!(!r.matches("/", &h));
        h.insert("x-canary", HeaderValue::from_static("1"));
        assert!(r.matches("/", &h));
        h.insert("x-debug", HeaderValue::from_static("yes"));
        assert!(!r.matches("/", &h));
    }

    #[test]
    fn retry_conditions() {
        let c = RetryConditions::from_list(&[RetryOn::Status503, RetryOn::Reset]);
        assert!(c.contains(RetryOn::Reset));
        assert!(!c.contains(RetryOn::ConnectFailure));
        assert!(c.retries_status(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!c.retries_status(StatusCode::BAD_GATEWAY));
        let g = RetryConditions::from_list(&[RetryOn::GatewayError]);
        assert!(g.retries_status(StatusCode::GATEWAY_TIMEOUT));
        assert!(!g.retries_status(StatusCode::INTERNAL_SERVER_ERROR));
    }

    #[test]
    fn strip_port_handles_ipv6() {
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("example.org:80"), "example.org");
        assert_eq!(strip_port("example.org"), "example.org");
    }
}

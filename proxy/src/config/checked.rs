//! A config that passed every check, with the values checking parsed: compile reads these and
//! never parses text again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Deref;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use regex::Regex;

use super::model::Config;

/// A config with no problems, and what checking it parsed. Only `config::parse` and
/// `config::check` make one.
#[derive(Debug, Clone)]
pub struct Checked {
    config: Config,
    values: Values,
}

impl Checked {
    pub(super) fn new(config: Config, values: Values) -> Checked {
        Checked { config, values }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn into_config(self) -> Config {
        self.config
    }

    pub fn into_parts(self) -> (Config, Values) {
        (self.config, self.values)
    }
}

impl Deref for Checked {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.config
    }
}

/// The parsed form of every value the data plane uses, in the config's own order.
#[derive(Debug, Clone)]
pub struct Values {
    /// `admin.listen`.
    pub admin: SocketAddr,
    /// Each listener's `listen`, in `listeners` order.
    pub listen: Vec<SocketAddr>,
    /// Each route, by table name, then virtual host, then route.
    pub routes: BTreeMap<String, Vec<Vec<RouteValues>>>,
    /// Each cluster's endpoint addresses, in `clusters` and `endpoints` order.
    pub endpoints: Vec<Vec<EndpointAddress>>,
    /// `dns.servers`, when given.
    pub dns_servers: Option<Vec<SocketAddr>>,
    /// `probes.listen`, when given.
    pub probes: Option<SocketAddr>,
}

impl Default for Values {
    fn default() -> Values {
        Values {
            admin: SocketAddr::from(([127, 0, 0, 1], 9901)),
            listen: Vec::new(),
            routes: BTreeMap::new(),
            endpoints: Vec::new(),
            dns_servers: None,
            probes: None,
        }
    }
}

/// One route's parsed parts.
#[derive(Debug, Clone)]
pub struct RouteValues {
    pub path: PathMatch,
    pub headers: Vec<HeaderMatch>,
    pub action: ActionValues,
    pub host_rewrite: Option<HeaderValue>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

impl Default for RouteValues {
    fn default() -> RouteValues {
        RouteValues {
            path: PathMatch::Prefix("/".into()),
            headers: Vec::new(),
            action: ActionValues::Cluster(String::new()),
            host_rewrite: None,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
        }
    }
}

/// How a route matches the request path.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Prefix(Box<str>),
    Exact(Box<str>),
    /// Anchored at both ends: the whole path must match.
    Regex(Regex),
}

/// One header condition of a route.
#[derive(Debug, Clone)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub kind: HeaderMatchKind,
    pub invert: bool,
}

#[derive(Debug, Clone)]
pub enum HeaderMatchKind {
    Exact(HeaderValue),
    /// Anchored at both ends: the whole value must match.
    Regex(Regex),
    Present(bool),
}

/// Header rules: headers set (replacing any of the same name), then headers removed.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

/// What a route does, with its names and codes parsed.
#[derive(Debug, Clone)]
pub enum ActionValues {
    Cluster(String),
    Split(Vec<(String, u32)>),
    Redirect {
        status: StatusCode,
    },
    Respond {
        status: StatusCode,
        headers: HeaderMap,
    },
}

/// An endpoint address: an IP socket address, or a DNS name resolved at run time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointAddress {
    Ip(SocketAddr),
    Dns { host: String, port: u16 },
}

impl std::fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndpointAddress::Ip(a) => write!(f, "{a}"),
            EndpointAddress::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

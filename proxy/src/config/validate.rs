//! Semantic checks serde cannot express: addresses, references, ranges and exclusive choices.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderName, HeaderValue};
use http::uri::Authority;

use super::model::{
    Cluster, HeaderMatch, HeaderOps, HealthCheck, HttpListener, LbPolicy, Listener, ListenerTls,
    OutlierDetection, Redirect, Respond, RetryPolicy, Route, RouteMatch, RouteTable, SplitTarget,
    TcpListener, UpstreamTls,
};
use super::suggest::did_you_mean_quoted;
use super::{Config, ConfigError, Duration};

/// Upper bound of `weight` for split targets and endpoints.
pub const MAX_WEIGHT: u32 = 10_000;
/// Smallest `http.max_header_size`: below 1 KiB ordinary browsers' requests fail.
pub const MIN_HEADER_SIZE: usize = 8 * 1024;
/// Largest `http.max_header_size`: more than 1 MiB of headers is abuse, not traffic.
pub const MAX_HEADER_SIZE: usize = 1024 * 1024;
/// Largest `runtime.workers` (the smallest is 1).
pub const MAX_WORKERS: usize = 1024;
/// Largest `retry.attempts`, counting the first try (the smallest is 1).
pub const MAX_ATTEMPTS: u32 = 10;

/// Headers that belong to one connection, plus `host` (owned by `host_rewrite`): header rules
/// may not add or remove them.
const RESERVED_HEADERS: [&str; 8] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "host",
];

/// What the loader knows that a `Config` lost: where entries came from and which ones failed
/// to deserialize, so validation reports the user's indices and skips follow-on errors.
#[derive(Debug, Default, Clone)]
pub struct Provenance {
    /// Index in the file of each entry of `Config::listeners`; empty means the same index.
    pub listener_index: Vec<usize>,
    /// Index in the file of each entry of `Config::clusters`; empty means the same index.
    pub cluster_index: Vec<usize>,
    /// `admin` failed to deserialize, so `Config::admin` is a stand-in default.
    pub admin_broken: bool,
    /// Clusters that exist in the file but failed to deserialize.
    pub broken_clusters: Names,
    /// Route tables that exist in the file but failed to deserialize.
    pub broken_route_tables: Names,
}

/// Names of entries that failed to deserialize.
#[derive(Debug, Default, Clone)]
pub struct Names {
    pub names: HashSet<String>,
    /// Some entry's name could not be read, so any name might belong to it.
    pub unreadable: bool,
}

impl Names {
    /// Whether `name` may refer to one of these entries.
    pub fn covers(&self, name: &str) -> bool {
        self.unreadable || self.names.contains(name)
    }
}

/// Check a config built in code (every index is its own).
pub fn validate(config: &Config) -> Vec<ConfigError> {
    validate_with(config, &Provenance::default())
}

/// Check a config the loader assembled, possibly from a partly broken file.
pub fn validate_with(config: &Config, provenance: &Provenance) -> Vec<ConfigError> {
    let mut v = Validator {
        config,
        provenance,
        cluster_names: config.clusters.iter().map(|c| c.name.as_str()).collect(),
        cluster_set: config.clusters.iter().map(|c| c.name.as_str()).collect(),
        errors: Vec::new(),
    };
    v.runtime();
    v.xds();
    v.listeners();
    for (name, table) in &config.route_tables {
        v.route_table(name, table);
    }
    v.clusters();
    v.errors
}

struct Validator<'a> {
    config: &'a Config,
    provenance: &'a Provenance,
    /// In file order, so suggestions are deterministic.
    cluster_names: Vec<&'a str>,
    /// The same names, for lookups: big configs have many routes and many clusters.
    cluster_set: HashSet<&'a str>,
    errors: Vec<ConfigError>,
}

impl<'a> Validator<'a> {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.into(),
            line: None,
            message: message.into(),
        });
    }

    fn positive(&mut self, path: impl Into<String>, d: Duration) {
        if d.get().is_zero() {
            self.error(path, "must be greater than zero");
        }
    }

    fn xds(&mut self) {
        let Some(xds) = &self.config.xds else {
            return;
        };
        let server = xds.server.as_str();
        let port_ok = server.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !port_ok {
            self.error("xds.server", format!("{server:?} must be host:port"));
        }
        self.positive("xds.connect_timeout", xds.connect_timeout);
        if let Some(tls) = &xds.tls {
            self.upstream_tls("xds.tls", tls);
            if tls.alpn.iter().any(|p| p != "h2") {
                self.error(
                    "xds.tls.alpn",
                    "the control plane stream is HTTP/2: only h2",
                );
            }
        }
        if self
            .config
            .node
            .cluster
            .as_deref()
            .is_none_or(str::is_empty)
        {
            self.error(
                "node.cluster",
                "with `xds`, the node group (node.cluster) chooses the resources and must be set",
            );
        }
    }

    fn runtime(&mut self) {
        if let Some(workers) = self.config.runtime.workers {
            if !(1..=MAX_WORKERS).contains(&workers) {
                self.error(
                    "runtime.workers",
                    format!("must be between 1 and {MAX_WORKERS} (got {workers})"),
                );
            }
        }
    }

    // === listeners ===

    fn listeners(&mut self) {
        let config = self.config;
        let mut names: HashMap<&str, String> = HashMap::new();
        let mut addresses: HashMap<SocketAddr, String> = HashMap::new();
        if !self.provenance.admin_broken {
            if let Some(addr) = self.listen_address("admin.listen", &config.admin.listen) {
                addresses.insert(addr, "admin.listen".to_owned());
            }
        }
        for (i, listener) in config.listeners.iter().enumerate() {
            let index = self.provenance.listener_index.get(i).copied().unwrap_or(i);
            let base = format!("listeners[{index}]");
            self.listener_name(&base, listener, &mut names);
            let path = format!("{base}.listen");
            if let Some(addr) = self.listen_address(&path, &listener.listen) {
                // Port 0 asks the kernel for a fresh port, so it never collides.
                if addr.port() != 0 {
                    if let Some(first) = addresses.get(&addr) {
                        let message = format!("{addr} is already used by {first}");
                        self.error(path, message);
                    } else {
                        addresses.insert(addr, path);
                    }
                }
            }
            if let Some(tls) = &listener.tls {
                self.listener_tls(&format!("{base}.tls"), tls);
            }
            match (&listener.http, &listener.tcp) {
                (Some(http), None) => self.http_listener(&base, http),
                (None, Some(tcp)) => {
                    self.tcp_listener(&base, tcp);
                    if listener.tls.is_some() {
                        self.error(
                            format!("{base}.tls"),
                            "TLS termination applies to http listeners; a tcp listener relays bytes as they are",
                        );
                    }
                }
                (Some(_), Some(_)) => self.error(
                    base,
                    "a listener needs exactly one of `http`, `tcp` (found both)",
                ),
                (None, None) => self.error(base, "a listener needs an `http` or `tcp` block"),
            }
        }
    }

    fn tcp_listener(&mut self, base: &str, tcp: &TcpListener) {
        self.cluster_ref(format!("{base}.tcp.cluster"), &tcp.cluster);
        if tcp.connect_attempts == 0 || tcp.connect_attempts > MAX_ATTEMPTS {
            self.error(
                format!("{base}.tcp.connect_attempts"),
                format!(
                    "must be between 1 and {MAX_ATTEMPTS} (got {})",
                    tcp.connect_attempts
                ),
            );
        }
        if let Some(d) = tcp.idle_timeout {
            self.positive(format!("{base}.tcp.idle_timeout"), d);
        }
    }

    fn listener_tls(&mut self, base: &str, tls: &ListenerTls) {
        if tls.certificates.is_empty() {
            self.error(
                format!("{base}.certificates"),
                "needs at least one { cert, key } pair",
            );
        }
        for (i, pair) in tls.certificates.iter().enumerate() {
            self.file_path(format!("{base}.certificates[{i}].cert"), &pair.cert);
            self.file_path(format!("{base}.certificates[{i}].key"), &pair.key);
        }
        self.alpn(&format!("{base}.alpn"), &tls.alpn, true);
        if let Some(auth) = &tls.client_auth {
            self.file_path(format!("{base}.client_auth.ca"), &auth.ca);
        }
        self.positive(format!("{base}.handshake_timeout"), tls.handshake_timeout);
        if tls.forward_client_cert && tls.client_auth.is_none() {
            self.error(
                format!("{base}.forward_client_cert"),
                "needs `client_auth`: without it there is no client certificate to forward",
            );
        }
    }

    fn upstream_tls(&mut self, base: &str, tls: &UpstreamTls) {
        if let Some(sni) = &tls.sni {
            if rustls_pki_types::ServerName::try_from(sni.as_str()).is_err() {
                self.error(
                    format!("{base}.sni"),
                    format!("{sni:?} is not a valid server name"),
                );
            }
        }
        if let Some(ca) = &tls.ca {
            self.file_path(format!("{base}.ca"), ca);
        }
        match (&tls.client_cert, &tls.client_key) {
            (Some(c), Some(k)) => {
                self.file_path(format!("{base}.client_cert"), c);
                self.file_path(format!("{base}.client_key"), k);
            }
            (Some(_), None) => {
                self.error(format!("{base}.client_key"), "client_cert needs client_key")
            }
            (None, Some(_)) => self.error(
                format!("{base}.client_cert"),
                "client_key needs client_cert",
            ),
            (None, None) => {}
        }
        self.alpn(&format!("{base}.alpn"), &tls.alpn, false);
    }

    fn file_path(&mut self, path: String, file: &str) {
        if file.trim().is_empty() {
            self.error(path, "a file path cannot be empty");
        }
    }

    fn alpn(&mut self, path: &str, alpn: &[String], required: bool) {
        if required && alpn.is_empty() {
            self.error(
                path.to_owned(),
                "needs at least one protocol (h2, http/1.1)",
            );
        }
        let mut seen = HashSet::new();
        for (i, p) in alpn.iter().enumerate() {
            if p != "h2" && p != "http/1.1" {
                self.error(
                    format!("{path}[{i}]"),
                    format!("unknown protocol {p:?}; Legate speaks h2 and http/1.1"),
                );
            } else if !seen.insert(p.as_str()) {
                self.error(format!("{path}[{i}]"), format!("{p:?} is listed twice"));
            }
        }
    }

    fn listener_name(
        &mut self,
        base: &str,
        listener: &'a Listener,
        names: &mut HashMap<&'a str, String>,
    ) {
        let name = listener.name.as_str();
        if name.trim().is_empty() {
            self.error(format!("{base}.name"), "a listener needs a name");
        } else if let Some(first) = names.get(name) {
            let message = format!("duplicate listener name {name:?} (also {first})");
            self.error(format!("{base}.name"), message);
        } else {
            names.insert(name, base.to_owned());
        }
    }

    fn listen_address(&mut self, path: &str, text: &str) -> Option<SocketAddr> {
        match parse_socket_addr(text) {
            Ok(addr) => Some(addr),
            Err(problem) => {
                self.error(path, problem.describe(text, false));
                None
            }
        }
    }

    fn http_listener(&mut self, base: &str, http: &HttpListener) {
        let name = http.route_table.as_str();
        let tables = &self.config.route_tables;
        if !tables.contains_key(name) && !self.provenance.broken_route_tables.covers(name) {
            let message = if tables.is_empty() {
                format!("unknown route table {name:?} (no route tables are defined)")
            } else {
                let hint = did_you_mean_quoted(name, tables.keys().map(String::as_str));
                format!("unknown route table {name:?}{hint}")
            };
            self.error(format!("{base}.http.route_table"), message);
        }
        if http.max_header_size < MIN_HEADER_SIZE {
            self.error(
                format!("{base}.http.max_header_size"),
                format!(
                    "must be at least {MIN_HEADER_SIZE} bytes (got {})",
                    http.max_header_size
                ),
            );
        } else if http.max_header_size > MAX_HEADER_SIZE {
            self.error(
                format!("{base}.http.max_header_size"),
                format!(
                    "must be at most {MAX_HEADER_SIZE} bytes, 1 MiB (got {})",
                    http.max_header_size
                ),
            );
        }
        if http.max_concurrent_streams == 0 {
            self.error(
                format!("{base}.http.max_concurrent_streams"),
                "must be at least 1",
            );
        }
        self.positive(
            format!("{base}.http.header_read_timeout"),
            http.header_read_timeout,
        );
        self.positive(format!("{base}.http.idle_timeout"), http.idle_timeout);
    }

    // === route tables ===

    fn route_table(&mut self, name: &str, table: &RouteTable) {
        if name.trim().is_empty() {
            self.error("route_tables", "a route table needs a non-empty name");
        }
        let base = format!("route_tables.{name}");
        if table.virtual_hosts.is_empty() {
            self.error(
                format!("{base}.virtual_hosts"),
                "a route table needs at least one virtual host",
            );
        }
        // Lower-cased host pattern → path of its first appearance in this table.
        let mut seen: HashMap<String, String> = HashMap::new();
        for (v, vhost) in table.virtual_hosts.iter().enumerate() {
            let vbase = format!("{base}.virtual_hosts[{v}]");
            if vhost.hosts.is_empty() {
                self.error(
                    format!("{vbase}.hosts"),
                    "a virtual host needs at least one host (\"*\" matches any)",
                );
            }
            for (h, host) in vhost.hosts.iter().enumerate() {
                let path = format!("{vbase}.hosts[{h}]");
                if let Err(message) = check_host_pattern(host) {
                    self.error(path, message);
                    continue;
                }
                let key = host.to_ascii_lowercase();
                if let Some(first) = seen.get(&key) {
                    let message = format!("host {host:?} is also in {first}");
                    self.error(path, message);
                } else {
                    seen.insert(key, path);
                }
            }
            if vhost.routes.is_empty() {
                self.error(
                    format!("{vbase}.routes"),
                    "a virtual host needs at least one route",
                );
            }
            for (r, route) in vhost.routes.iter().enumerate() {
                self.route(&format!("{vbase}.routes[{r}]"), route);
            }
        }
    }

    fn route(&mut self, base: &str, route: &Route) {
        self.route_match(&format!("{base}.match"), &route.matcher);

        let actions = [
            ("cluster", route.cluster.is_some()),
            ("split", route.split.is_some()),
            ("redirect", route.redirect.is_some()),
            ("respond", route.respond.is_some()),
        ];
        let given: Vec<&str> = actions.iter().filter(|a| a.1).map(|a| a.0).collect();
        if given.len() != 1 {
            self.error(
                base,
                format!(
                    "a route needs exactly one of cluster, split, redirect, respond (found {})",
                    and_list(&given)
                ),
            );
        }
        // Check every action given, even when there are too many: each may have its own typo.
        if let Some(cluster) = &route.cluster {
            self.cluster_ref(format!("{base}.cluster"), cluster);
        }
        if let Some(split) = &route.split {
            self.split(&format!("{base}.split"), split);
        }
        if let Some(redirect) = &route.redirect {
            self.redirect(&format!("{base}.redirect"), redirect);
        }
        if let Some(respond) = &route.respond {
            self.respond(&format!("{base}.respond"), respond);
        }

        if let Some(timeout) = route.timeout {
            self.positive(format!("{base}.timeout"), timeout);
        }
        if let Some(retry) = &route.retry {
            self.retry(&format!("{base}.retry"), retry);
        }
        if let Some(rewrite) = &route.prefix_rewrite {
            let path = format!("{base}.prefix_rewrite");
            if route.matcher.prefix.is_none() {
                self.error(&path, "prefix_rewrite needs a `prefix` match");
            }
            if !rewrite.starts_with('/') {
                self.error(path, format!("{rewrite:?} must start with `/`"));
            }
        }
        if let Some(host) = &route.host_rewrite {
            if let Err(message) = check_authority(host) {
                self.error(format!("{base}.host_rewrite"), message);
            }
        }
        self.header_ops(&format!("{base}.request_headers"), &route.request_headers);
        self.header_ops(&format!("{base}.response_headers"), &route.response_headers);
    }

    fn route_match(&mut self, base: &str, m: &RouteMatch) {
        let kinds = [
            ("prefix", m.prefix.is_some()),
            ("exact", m.exact.is_some()),
            ("regex", m.regex.is_some()),
        ];
        let given: Vec<&str> = kinds.iter().filter(|k| k.1).map(|k| k.0).collect();
        if given.len() != 1 {
            self.error(
                base,
                format!(
                    "a match needs exactly one of prefix, exact, regex (found {})",
                    and_list(&given)
                ),
            );
        }
        for (field, value) in [("prefix", &m.prefix), ("exact", &m.exact)] {
            if let Some(path) = value {
                if !path.starts_with('/') {
                    self.error(
                        format!("{base}.{field}"),
                        format!("{path:?} must start with `/`"),
                    );
                }
            }
        }
        if let Some(pattern) = &m.regex {
            if let Err(message) = check_regex(pattern) {
                self.error(format!("{base}.regex"), message);
            }
        }
        for (k, header) in m.headers.iter().enumerate() {
            self.header_match(&format!("{base}.headers[{k}]"), header);
        }
    }

    fn header_match(&mut self, base: &str, header: &HeaderMatch) {
        if HeaderName::from_bytes(header.name.as_bytes()).is_err() {
            self.error(
                format!("{base}.name"),
                format!("{:?} is not a valid header name", header.name),
            );
        }
        let conditions = [
            ("exact", header.exact.is_some()),
            ("regex", header.regex.is_some()),
            ("present", header.present.is_some()),
        ];
        let given: Vec<&str> = conditions.iter().filter(|c| c.1).map(|c| c.0).collect();
        if given.len() > 1 {
            self.error(
                base,
                format!(
                    "a header match takes at most one of exact, regex, present (found {})",
                    and_list(&given)
                ),
            );
        }
        if let Some(pattern) = &header.regex {
            if let Err(message) = check_regex(pattern) {
                self.error(format!("{base}.regex"), message);
            }
        }
    }

    fn cluster_ref(&mut self, path: String, name: &str) {
        if self.cluster_set.contains(name) || self.provenance.broken_clusters.covers(name) {
            return;
        }
        let message = if self.cluster_names.is_empty() {
            format!("unknown cluster {name:?} (no clusters are defined)")
        } else {
            let hint = did_you_mean_quoted(name, self.cluster_names.iter().copied());
            format!("unknown cluster {name:?}{hint}")
        };
        self.error(path, message);
    }

    fn split(&mut self, base: &str, targets: &[SplitTarget]) {
        if targets.is_empty() {
            self.error(base, "a split needs at least one target");
            return;
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut total: u64 = 0;
        for (k, target) in targets.iter().enumerate() {
            let tbase = format!("{base}[{k}]");
            self.cluster_ref(format!("{tbase}.cluster"), &target.cluster);
            if let Some(first) = seen.get(target.cluster.as_str()) {
                let message = format!(
                    "cluster {:?} appears twice in this split (also split[{first}])",
                    target.cluster
                );
                self.error(format!("{tbase}.cluster"), message);
            } else {
                seen.insert(&target.cluster, k);
            }
            if target.weight > MAX_WEIGHT {
                self.error(
                    format!("{tbase}.weight"),
                    format!("must be at most {MAX_WEIGHT} (got {})", target.weight),
                );
            }
            total += u64::from(target.weight);
        }
        if total == 0 {
            self.error(
                base,
                "the weights add up to 0; give at least one target a positive weight",
            );
        }
    }

    fn redirect(&mut self, base: &str, redirect: &Redirect) {
        if ![301, 302, 303, 307, 308].contains(&redirect.status) {
            self.error(
                format!("{base}.status"),
                format!(
                    "{} is not a redirect status; use 301, 302, 303, 307 or 308",
                    redirect.status
                ),
            );
        }
        if let Some(scheme) = &redirect.scheme {
            if scheme != "http" && scheme != "https" {
                self.error(
                    format!("{base}.scheme"),
                    format!("{scheme:?} is not supported; use \"http\" or \"https\""),
                );
            }
        }
        if let Some(host) = &redirect.host {
            // The port has its own field, so the host alone must be a valid authority.
            let problem = if host.contains(':') && !host.starts_with('[') {
                Err(format!("{host:?} has a port; set `port` instead"))
            } else {
                check_authority(host)
            };
            if let Err(message) = problem {
                self.error(format!("{base}.host"), message);
            }
        }
        if let Some(path) = &redirect.path {
            if !path.starts_with('/') {
                self.error(
                    format!("{base}.path"),
                    format!("{path:?} must start with `/`"),
                );
            }
        }
    }

    fn respond(&mut self, base: &str, respond: &Respond) {
        if !(100..=599).contains(&respond.status) {
            self.error(
                format!("{base}.status"),
                format!("{} is not an HTTP status; use 100 to 599", respond.status),
            );
        }
        for (name, value) in &respond.headers {
            let path = format!("{base}.headers.{name}");
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.error(&path, format!("{name:?} is not a valid header name"));
            }
            if HeaderValue::from_str(value).is_err() {
                self.error(path, format!("{value:?} is not a valid header value"));
            }
        }
    }

    fn retry(&mut self, base: &str, retry: &RetryPolicy) {
        if !(1..=MAX_ATTEMPTS).contains(&retry.attempts) {
            self.error(
                format!("{base}.attempts"),
                format!(
                    "must be between 1 and {MAX_ATTEMPTS}, counting the first try (got {})",
                    retry.attempts
                ),
            );
        }
        if retry.on.is_empty() {
            self.error(
                format!("{base}.on"),
                "must list at least one of connect-failure, reset, timeout, 503, gateway-error, 5xx",
            );
        }
        if let Some(per_try) = retry.per_try_timeout {
            self.positive(format!("{base}.per_try_timeout"), per_try);
        }
    }

    fn header_ops(&mut self, base: &str, ops: &HeaderOps) {
        for (name, value) in &ops.add {
            let path = format!("{base}.add.{name}");
            if let Err(message) = check_rewritable_header(name) {
                self.error(&path, message);
            }
            if HeaderValue::from_str(value).is_err() {
                self.error(path, format!("{value:?} is not a valid header value"));
            }
        }
        for (k, name) in ops.remove.iter().enumerate() {
            if let Err(message) = check_rewritable_header(name) {
                self.error(format!("{base}.remove[{k}]"), message);
            }
        }
    }

    // === clusters ===

    fn clusters(&mut self) {
        let config = self.config;
        let mut names: HashMap<&str, String> = HashMap::new();
        for (i, cluster) in config.clusters.iter().enumerate() {
            let index = self.provenance.cluster_index.get(i).copied().unwrap_or(i);
            let base = format!("clusters[{index}]");
            let name = cluster.name.as_str();
            if name.trim().is_empty() {
                self.error(format!("{base}.name"), "a cluster needs a name");
            } else if let Some(first) = names.get(name) {
                let message = format!("duplicate cluster name {name:?} (also {first})");
                self.error(format!("{base}.name"), message);
            } else {
                names.insert(name, base.clone());
            }
            self.cluster(&base, cluster);
        }
    }

    fn cluster(&mut self, base: &str, cluster: &Cluster) {
        self.positive(format!("{base}.connect_timeout"), cluster.connect_timeout);
        self.positive(format!("{base}.idle_timeout"), cluster.idle_timeout);
        self.positive(format!("{base}.dns_refresh"), cluster.dns_refresh);
        if let Some(d) = cluster.slow_start {
            self.positive(format!("{base}.slow_start"), d);
        }
        if cluster.panic_threshold > 100 {
            self.error(
                format!("{base}.panic_threshold"),
                format!(
                    "is a percentage from 0 to 100 (got {})",
                    cluster.panic_threshold
                ),
            );
        }
        self.hash_on(base, cluster);
        if let Some(tls) = &cluster.tls {
            self.upstream_tls(&format!("{base}.tls"), tls);
        }
        if let Some(hc) = &cluster.health_check {
            self.health_check(&format!("{base}.health_check"), hc);
        }
        if let Some(od) = &cluster.outlier_detection {
            self.outlier_detection(&format!("{base}.outlier_detection"), od);
        }
        let cb = &cluster.circuit_breakers;
        for (field, value) in [
            ("max_connections", cb.max_connections),
            ("max_pending", cb.max_pending),
            ("max_requests", cb.max_requests),
        ] {
            if value == 0 {
                self.error(
                    format!("{base}.circuit_breakers.{field}"),
                    "must be at least 1 (0 would refuse every request)",
                );
            }
        }
        let mut seen: HashMap<EndpointAddress, usize> = HashMap::new();
        for (e, endpoint) in cluster.endpoints.iter().enumerate() {
            let ebase = format!("{base}.endpoints[{e}]");
            if let Some(zone) = &endpoint.zone {
                if zone.trim().is_empty() {
                    self.error(format!("{ebase}.zone"), "a zone name cannot be empty");
                }
            }
            match parse_endpoint_address(&endpoint.address) {
                Ok(addr) => {
                    if let Some(first) = seen.get(&addr) {
                        let message = format!("{addr} is listed twice (also endpoints[{first}])");
                        self.error(format!("{ebase}.address"), message);
                    } else {
                        seen.insert(addr, e);
                    }
                }
                Err(message) => self.error(format!("{ebase}.address"), message),
            }
            if endpoint.weight == 0 {
                self.error(
                    format!("{ebase}.weight"),
                    "weight 0 is not allowed; use `pooled: false` to stop traffic to an endpoint",
                );
            } else if endpoint.weight > MAX_WEIGHT {
                self.error(
                    format!("{ebase}.weight"),
                    format!(
                        "must be between 1 and {MAX_WEIGHT} (got {})",
                        endpoint.weight
                    ),
                );
            }
        }
    }
}

impl Validator<'_> {
    fn hash_on(&mut self, base: &str, cluster: &Cluster) {
        let hashing = matches!(cluster.lb, LbPolicy::RingHash | LbPolicy::Maglev);
        let Some(h) = &cluster.hash_on else {
            return;
        };
        let path = format!("{base}.hash_on");
        if !hashing {
            self.error(
                path.clone(),
                "only applies to `lb: ring_hash` or `lb: maglev`",
            );
        }
        let set = [h.header.is_some(), h.cookie.is_some(), h.client_ip];
        if set.iter().filter(|b| **b).count() != 1 {
            self.error(
                path.clone(),
                "needs exactly one of header, cookie, client_ip",
            );
        }
        if let Some(name) = &h.header {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.error(
                    format!("{path}.header"),
                    format!("{name:?} is not a valid header name"),
                );
            }
        }
        if let Some(name) = &h.cookie {
            if name.is_empty() || name.contains([';', '=', ' ']) {
                self.error(
                    format!("{path}.cookie"),
                    format!("{name:?} is not a valid cookie name"),
                );
            }
        }
    }

    fn health_check(&mut self, base: &str, hc: &HealthCheck) {
        let kinds = [hc.http.is_some(), hc.tcp.is_some(), hc.postgres.is_some()];
        if kinds.iter().filter(|b| **b).count() != 1 {
            self.error(
                base.to_owned(),
                "a health check needs exactly one of http, tcp, postgres",
            );
        }
        if let Some(pg) = &hc.postgres {
            if pg.password.is_some() && pg.password_file.is_some() {
                self.error(
                    format!("{base}.postgres.password_file"),
                    "give either password or password_file, not both",
                );
            }
            if !pg.has_credentials() {
                if pg.require_replica {
                    self.error(
                        format!("{base}.postgres.require_replica"),
                        "needs credentials (password or password_file) to query the server",
                    );
                }
                if pg.max_lag.is_some() {
                    self.error(
                        format!("{base}.postgres.max_lag"),
                        "needs credentials (password or password_file) to query the server",
                    );
                }
            }
            for (field, v) in [("user", &pg.user), ("database", &pg.database)] {
                if v.is_empty() || v.contains('\0') {
                    self.error(
                        format!("{base}.postgres.{field}"),
                        "must be a non-empty name",
                    );
                }
            }
        }
        self.positive(format!("{base}.interval"), hc.interval);
        self.positive(format!("{base}.timeout"), hc.timeout);
        if hc.timeout > hc.interval {
            self.error(
                format!("{base}.timeout"),
                format!("{} is longer than the interval {}", hc.timeout, hc.interval),
            );
        }
        for (field, value) in [
            ("unhealthy_threshold", hc.unhealthy_threshold),
            ("healthy_threshold", hc.healthy_threshold),
        ] {
            if value == 0 || value > 100 {
                self.error(
                    format!("{base}.{field}"),
                    format!("must be between 1 and 100 (got {value})"),
                );
            }
        }
        if let Some(http) = &hc.http {
            if !http.path.starts_with('/') {
                self.error(
                    format!("{base}.http.path"),
                    format!("{:?} must start with /", http.path),
                );
            }
            if let Some(host) = &http.host {
                if let Err(message) = check_authority(host) {
                    self.error(format!("{base}.http.host"), message);
                }
            }
            if http.expect.is_empty() {
                self.error(
                    format!("{base}.http.expect"),
                    "needs at least one status or range",
                );
            }
        }
    }

    fn outlier_detection(&mut self, base: &str, od: &OutlierDetection) {
        if od.consecutive_failures == 0 {
            self.error(format!("{base}.consecutive_failures"), "must be at least 1");
        }
        self.positive(format!("{base}.base_ejection"), od.base_ejection);
        if od.max_ejection < od.base_ejection {
            self.error(
                format!("{base}.max_ejection"),
                format!(
                    "{} is shorter than base_ejection {}",
                    od.max_ejection, od.base_ejection
                ),
            );
        }
        if od.max_ejected_percent > 100 {
            self.error(
                format!("{base}.max_ejected_percent"),
                format!(
                    "is a percentage from 0 to 100 (got {})",
                    od.max_ejected_percent
                ),
            );
        }
    }
}

/// "none", "a", "a and b", "a, b and c".
fn and_list(items: &[&str]) -> String {
    match items {
        [] => "none".to_owned(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Why a text is not an `ip:port` socket address.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AddrProblem {
    Empty,
    NoPort {
        ipv6: bool,
    },
    BadPort,
    /// The host part (before the last `:`, or the whole text without one) is not an IP.
    NotIp {
        host: String,
        has_port: bool,
    },
}

impl AddrProblem {
    fn describe(&self, text: &str, endpoint: bool) -> String {
        match self {
            AddrProblem::Empty => {
                "the address is empty; write ip:port, e.g. \"10.0.0.1:80\"".to_owned()
            }
            AddrProblem::NoPort { ipv6: false } => format!("{text:?} has no port"),
            AddrProblem::NoPort { ipv6: true } => format!(
                "{text:?} has no port (write IPv6 addresses in brackets, e.g. \"[::1]:80\")"
            ),
            AddrProblem::BadPort => {
                format!("{text:?} has an invalid port; ports are numbers from 0 to 65535")
            }
            AddrProblem::NotIp { host, has_port } => {
                if endpoint && looks_like_dns_name(host) && !has_port {
                    format!("{text:?} has no port")
                } else if *has_port {
                    format!("{text:?} is not an IP address")
                } else {
                    format!("{text:?} is not an IP address and has no port")
                }
            }
        }
    }
}

fn parse_socket_addr(text: &str) -> Result<SocketAddr, AddrProblem> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if text.trim().is_empty() {
        return Err(AddrProblem::Empty);
    }
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Err(AddrProblem::NoPort { ipv6: ip.is_ipv6() });
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(AddrProblem::NotIp {
            host: text.to_owned(),
            has_port: false,
        });
    };
    if port.parse::<u16>().is_err() || port.starts_with('+') {
        return Err(AddrProblem::BadPort);
    }
    Err(AddrProblem::NotIp {
        host: host.to_owned(),
        has_port: true,
    })
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

/// Parses `ip:port` or `dns-name:port`.
pub fn parse_endpoint_address(text: &str) -> Result<EndpointAddress, String> {
    let port_zero = || format!("{text:?} has port 0; an endpoint needs a real port");
    match parse_socket_addr(text) {
        Ok(addr) if addr.port() == 0 => Err(port_zero()),
        Ok(addr) => Ok(EndpointAddress::Ip(addr)),
        Err(AddrProblem::NotIp {
            host,
            has_port: true,
        }) if looks_like_dns_name(&host) && host.contains(|c: char| c.is_ascii_alphabetic()) => {
            let port = text
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .ok_or_else(|| AddrProblem::BadPort.describe(text, true))?;
            if port == 0 {
                return Err(port_zero());
            }
            Ok(EndpointAddress::Dns {
                host: host.trim_end_matches('.').to_ascii_lowercase(),
                port,
            })
        }
        Err(p) => Err(p.describe(text, true)),
    }
}

fn looks_like_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
}

/// A virtual host pattern: `*`, `*.suffix` or a host name, without a port.
fn check_host_pattern(host: &str) -> Result<(), String> {
    if host == "*" {
        return Ok(());
    }
    if host.is_empty() {
        return Err("a host cannot be empty".to_owned());
    }
    if host.chars().any(char::is_whitespace) {
        return Err(format!("{host:?} contains a space"));
    }
    if host.contains('/') {
        return Err(format!(
            "{host:?} contains `/`; write only the host name, not a URL"
        ));
    }
    let name = match host.strip_prefix("*.") {
        Some("") => return Err("\"*.\" needs a suffix, e.g. \"*.example.org\"".to_owned()),
        Some(suffix) => suffix,
        None => host,
    };
    if name.contains('*') {
        return Err(format!(
            "{host:?}: `*` is only allowed as the whole host or as a leading `*.`"
        ));
    }
    if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        if inner.parse::<std::net::Ipv6Addr>().is_ok() {
            return Ok(());
        }
    }
    if name.parse::<std::net::Ipv6Addr>().is_ok() {
        return Err(format!(
            "{host:?}: write IPv6 addresses in brackets, e.g. \"[::1]\""
        ));
    }
    if let Some((_, port)) = name.rsplit_once(':') {
        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "{host:?} has a port; ports are not allowed here (the Host port is ignored when matching)"
            ));
        }
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        return Err(format!("{host:?} contains the invalid character {bad:?}"));
    }
    Ok(())
}

/// A `host[:port]` authority without user info, as sent in Host / `:authority`.
fn check_authority(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("a host cannot be empty".to_owned());
    }
    if text.contains('@') {
        return Err(format!("{text:?} must not contain user info (`@`)"));
    }
    text.parse::<Authority>()
        .map(|_| ())
        .map_err(|e| format!("{text:?} is not a valid host[:port] ({e})"))
}

/// A header that `request_headers` / `response_headers` may add or remove.
fn check_rewritable_header(name: &str) -> Result<(), String> {
    if name.starts_with(':') {
        return Err(format!(
            "{name:?} is a pseudo-header; Legate sets pseudo-headers itself"
        ));
    }
    let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
        return Err(format!("{name:?} is not a valid header name"));
    };
    if header == http::header::HOST {
        return Err(format!(
            "{name:?} cannot be changed by header rules; use `host_rewrite`"
        ));
    }
    if RESERVED_HEADERS.contains(&header.as_str()) {
        return Err(format!(
            "{name:?} is a hop-by-hop header; Legate manages it per connection"
        ));
    }
    Ok(())
}

/// Compile `pattern`, condensing the regex crate's multi-line report to its last line.
fn check_regex(pattern: &str) -> Result<(), String> {
    match regex::Regex::new(pattern) {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = e.to_string();
            let brief = text
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("unknown error");
            let brief = brief.strip_prefix("error: ").unwrap_or(brief);
            Err(format!("invalid regex {pattern:?}: {brief}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_errors, doc, parse_ok};
    use super::*;

    const ROUTE: &str = "route_tables.t.virtual_hosts[0].routes[0]";

    /// A document whose only route is `route` (a YAML mapping body, one field per line),
    /// starting on line 9, with clusters `app` and `tegola` defined.
    fn route_doc(route: &str) -> String {
        let mut text = doc(r#"
            clusters:
              - { name: app, endpoints: ["10.0.0.1:80"] }
              - { name: tegola, endpoints: ["10.0.0.2:80"] }
            route_tables:
              t:
                virtual_hosts:
                  - hosts: ["*"]
                    routes:
            "#);
        for (i, line) in doc(route).lines().enumerate() {
            text.push_str(if i == 0 {
                "          - "
            } else {
                "            "
            });
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    /// `route` must fail with exactly `expected`: (path below the route, line, message part).
    fn assert_route_errors(route: &str, expected: &[(&str, usize, &str)]) {
        let paths: Vec<String> = expected.iter().map(|e| format!("{ROUTE}{}", e.0)).collect();
        let expected: Vec<(&str, usize, &str)> = expected
            .iter()
            .zip(&paths)
            .map(|(e, path)| (path.as_str(), e.1, e.2))
            .collect();
        assert_errors(&route_doc(route), &expected);
    }

    fn assert_route_ok(route: &str) {
        parse_ok(&route_doc(route));
    }

    // === listeners and runtime ===

    #[test]
    fn listen_addresses_must_be_ip_and_port() {
        assert_errors(
            r#"
            admin: { listen: localhost:9901 }
            listeners:
              - { name: a, listen: 10.0.0.1, http: { route_table: t } }
              - { name: b, listen: "foo:80", http: { route_table: t } }
              - { name: c, listen: "::1", http: { route_table: t } }
              - { name: d, listen: "1.2.3.4:http", http: { route_table: t } }
              - { name: e, listen: "", http: { route_table: t } }
              - { name: f, listen: "[::]:6533", http: { route_table: t } }
              - { name: g, listen: "1.2.3.4:99999", http: { route_table: t } }
            route_tables:
              t: { virtual_hosts: [{ hosts: ["*"], routes: [{ match: { prefix: / }, respond: { status: 200 } }] }] }
            "#,
            &[
                ("admin.listen", 1, "\"localhost:9901\" is not an IP address"),
                ("listeners[0].listen", 3, "\"10.0.0.1\" has no port"),
                ("listeners[1].listen", 4, "\"foo:80\" is not an IP address"),
                ("listeners[2].listen", 5, "write IPv6 addresses in brackets"),
                ("listeners[3].listen", 6, "invalid port"),
                ("listeners[4].listen", 7, "the address is empty"),
                ("listeners[6].listen", 9, "invalid port"),
            ],
        );
    }

    #[test]
    fn listen_addresses_must_be_unique() {
        assert_errors(
            r#"
            admin: { listen: "[::1]:9901" }
            listeners:
              - { name: a, listen: "0.0.0.0:80", http: { route_table: t } }
              - { name: b, listen: "0.0.0.0:80", http: { route_table: t } }
              - { name: c, listen: "[::1]:9901", http: { route_table: t } }
              - { name: d, listen: "127.0.0.1:0", http: { route_table: t } }
              - { name: e, listen: "127.0.0.1:0", http: { route_table: t } }
            route_tables:
              t: { virtual_hosts: [{ hosts: ["*"], routes: [{ match: { prefix: / }, respond: { status: 200 } }] }] }
            "#,
            &[
                (
                    "listeners[1].listen",
                    4,
                    "0.0.0.0:80 is already used by listeners[0].listen",
                ),
                (
                    "listeners[2].listen",
                    5,
                    "[::1]:9901 is already used by admin.listen",
                ),
            ],
        );
    }

    #[test]
    fn listeners_need_unique_names_and_an_http_block() {
        assert_errors(
            r#"
            listeners:
              - { name: x, listen: "0.0.0.0:80", http: { route_table: t } }
              - { name: "", listen: "0.0.0.0:81", http: { route_table: t } }
              - { name: y, listen: "0.0.0.0:82" }
              - { name: x, listen: "0.0.0.0:83", http: { route_table: t } }
            route_tables:
              t: { virtual_hosts: [{ hosts: ["*"], routes: [{ match: { prefix: / }, respond: { status: 200 } }] }] }
            "#,
            &[
                ("listeners[1].name", 3, "a listener needs a name"),
                (
                    "listeners[2]",
                    4,
                    "a listener needs an `http` or `tcp` block",
                ),
                (
                    "listeners[3].name",
                    5,
                    "duplicate listener name \"x\" (also listeners[0])",
                ),
            ],
        );
    }

    #[test]
    fn http_listener_settings() {
        assert_errors(
            r#"
            listeners:
              - name: a
                listen: 0.0.0.0:80
                http:
                  route_table: mpas
                  max_header_size: 8191
                  max_concurrent_streams: 0
                  header_read_timeout: 0s
                  idle_timeout: 0ms
              - name: b
                listen: 0.0.0.0:81
                http: { route_table: maps, max_header_size: 1048577 }
              - name: c
                listen: 0.0.0.0:82
                http: { route_table: maps, max_header_size: 1048576, idle_timeout: 1ms }
            route_tables:
              maps: { virtual_hosts: [{ hosts: ["*"], routes: [{ match: { prefix: / }, respond: { status: 200 } }] }] }
            "#,
            &[
                (
                    "listeners[0].http.route_table",
                    5,
                    "unknown route table \"mpas\" (did you mean \"maps\"?)",
                ),
                (
                    "listeners[0].http.max_header_size",
                    6,
                    "at least 8192 bytes (got 8191)",
                ),
                ("listeners[0].http.max_concurrent_streams", 7, "at least 1"),
                (
                    "listeners[0].http.header_read_timeout",
                    8,
                    "greater than zero",
                ),
                ("listeners[0].http.idle_timeout", 9, "greater than zero"),
                (
                    "listeners[1].http.max_header_size",
                    12,
                    "at most 1048576 bytes",
                ),
            ],
        );
    }

    #[test]
    fn workers_are_bounded() {
        assert_errors(
            "runtime: { workers: 1025 }",
            &[("runtime.workers", 1, "between 1 and 1024 (got 1025)")],
        );
        let config = parse_ok("runtime: { workers: 1024, drain_timeout: 0s }");
        assert_eq!(config.runtime.workers, Some(1024));
    }

    // === route tables and virtual hosts ===

    #[test]
    fn route_tables_need_hosts_and_routes() {
        assert_errors(
            r#"
            route_tables:
              empty: { virtual_hosts: [] }
              t:
                virtual_hosts:
                  - hosts: []
                    routes: []
            "#,
            &[
                (
                    "route_tables.empty.virtual_hosts",
                    2,
                    "at least one virtual host",
                ),
                (
                    "route_tables.t.virtual_hosts[0].hosts",
                    5,
                    "at least one host",
                ),
                (
                    "route_tables.t.virtual_hosts[0].routes",
                    6,
                    "at least one route",
                ),
            ],
        );
    }

    #[test]
    fn host_patterns() {
        assert_errors(
            r#"
            route_tables:
              t:
                virtual_hosts:
                  - hosts:
                      - example.org:80
                      - "*."
                      - "a.*.org"
                      - "*example.org"
                      - http://example.org
                      - "exa mple.org"
                      - "ex!ample.org"
                      - ""
                      - "::1"
                      - "*"
                      - "*.example.org"
                      - "[::1]"
                      - EXAMPLE.org
                      - 10.0.0.1
                    routes: [{ match: { prefix: / }, respond: { status: 200 } }]
            "#,
            &[
                (
                    "route_tables.t.virtual_hosts[0].hosts[0]",
                    5,
                    "\"example.org:80\" has a port; ports are not allowed",
                ),
                (
                    "route_tables.t.virtual_hosts[0].hosts[1]",
                    6,
                    "needs a suffix",
                ),
                (
                    "route_tables.t.virtual_hosts[0].hosts[2]",
                    7,
                    "leading `*.`",
                ),
                (
                    "route_tables.t.virtual_hosts[0].hosts[3]",
                    8,
                    "leading `*.`",
                ),
                (
                    "route_tables.t.virtual_hosts[0].hosts[4]",
                    9,
                    "contains `/`",
                ),
                (
                    "route_tables.t.virtual_hosts[0].hosts[5]",
                    10,
                    "contains a space",
                ),
                (
                    "route_tables.t.virtual_hosts[0].hosts[6]",
                    11,
                    "invalid character '!'",
                ),
                (
                    "route_tables.t.virtual_hosts[0].hosts[7]",
                    12,
                    "cannot be empty",
                ),
                (
                    "route_tables.t.virtual_hosts[0].hosts[8]",
                    13,
                    "in brackets",
                ),
            ],
        );
    }

    #[test]
    fn a_host_belongs_to_one_virtual_host() {
        assert_errors(
            r#"
            route_tables:
              t:
                virtual_hosts:
                  - hosts: [maps.example.org, "*"]
                    routes: [{ match: { prefix: / }, respond: { status: 200 } }]
                  - hosts: [Maps.Example.org]
                    routes: [{ match: { prefix: / }, respond: { status: 200 } }]
                  - hosts: ["*", "*"]
                    routes: [{ match: { prefix: / }, respond: { status: 200 } }]
              other:
                virtual_hosts:
                  - hosts: [maps.example.org]
                    routes: [{ match: { prefix: / }, respond: { status: 200 } }]
            "#,
            &[
                (
                    "route_tables.t.virtual_hosts[1].hosts[0]",
                    6,
                    "host \"Maps.Example.org\" is also in route_tables.t.virtual_hosts[0].hosts[0]",
                ),
                (
                    "route_tables.t.virtual_hosts[2].hosts[0]",
                    8,
                    "host \"*\" is also in route_tables.t.virtual_hosts[0].hosts[1]",
                ),
                (
                    "route_tables.t.virtual_hosts[2].hosts[1]",
                    8,
                    "host \"*\" is also in route_tables.t.virtual_hosts[0].hosts[1]",
                ),
            ],
        );
    }

    // === routes ===

    #[test]
    fn a_match_needs_exactly_one_path_condition() {
        assert_route_errors(
            "
            match: {}
            cluster: app
            ",
            &[(
                ".match",
                9,
                "exactly one of prefix, exact, regex (found none)",
            )],
        );
        assert_route_errors(
            "
            match:
              prefix: /a
              exact: /b
              regex: /c
            cluster: app
            ",
            &[(
                ".match",
                9,
                "exactly one of prefix, exact, regex (found prefix, exact and regex)",
            )],
        );
        assert_route_errors(
            "
            match: { prefix: api/ }
            cluster: app
            ",
            &[(".match.prefix", 9, "\"api/\" must start with `/`")],
        );
        assert_route_errors(
            "
            match:
              exact: healthz
            cluster: app
            ",
            &[(".match.exact", 10, "\"healthz\" must start with `/`")],
        );
    }

    #[test]
    fn regexes_must_compile() {
        assert_route_errors(
            r#"
            match:
              regex: "/tiles/(\\d+"
            cluster: app
            "#,
            &[(
                ".match.regex",
                10,
                "invalid regex \"/tiles/(\\\\d+\": unclosed group",
            )],
        );
        assert_route_ok(
            r#"
            match: { regex: "/tiles/\\d+/\\d+\\.png" }
            cluster: app
            "#,
        );
    }

    #[test]
    fn header_matchers() {
        assert_route_errors(
            r#"
            match:
              prefix: /
              headers:
                - { name: "x bad" }
                - { name: x-env, exact: prod, present: true }
                - { name: x-id, regex: "[" }
                - { name: x-ok, regex: "^a+$", invert: true }
                - { name: x-present }
            cluster: app
            "#,
            &[
                (
                    ".match.headers[0].name",
                    12,
                    "\"x bad\" is not a valid header name",
                ),
                (
                    ".match.headers[1]",
                    13,
                    "at most one of exact, regex, present (found exact and present)",
                ),
                (".match.headers[2].regex", 14, "invalid regex \"[\""),
            ],
        );
    }

    #[test]
    fn a_route_needs_exactly_one_action() {
        assert_route_errors(
            "
            match: { prefix: / }
            ",
            &[(
                "",
                9,
                "exactly one of cluster, split, redirect, respond (found none)",
            )],
        );
        assert_route_errors(
            "
            match: { prefix: / }
            cluster: app
            respond: { status: 200 }
            ",
            &[(
                "",
                9,
                "a route needs exactly one of cluster, split, redirect, respond (found cluster and respond)",
            )],
        );
    }

    #[test]
    fn clusters_must_exist() {
        assert_route_errors(
            "
            match: { prefix: / }
            cluster: tegloa
            ",
            &[(
                ".cluster",
                10,
                "unknown cluster \"tegloa\" (did you mean \"tegola\"?)",
            )],
        );
        assert_route_errors(
            "
            match: { prefix: / }
            cluster: something-else
            ",
            &[(".cluster", 10, "unknown cluster \"something-else\"")],
        );
    }

    #[test]
    fn splits() {
        assert_route_errors(
            "
            match: { prefix: / }
            split:
              - { cluster: app, weight: 0 }
              - { cluster: tegloa, weight: 0 }
              - { cluster: app, weight: 0 }
            ",
            &[
                (".split", 10, "the weights add up to 0"),
                (
                    ".split[1].cluster",
                    12,
                    "unknown cluster \"tegloa\" (did you mean \"tegola\"?)",
                ),
                (
                    ".split[2].cluster",
                    13,
                    "cluster \"app\" appears twice in this split (also split[0])",
                ),
            ],
        );
        assert_route_errors(
            "
            match: { prefix: / }
            split: []
            ",
            &[(".split", 10, "at least one target")],
        );
        assert_route_errors(
            "
            match: { prefix: / }
            split: [{ cluster: app, weight: 10001 }, { cluster: tegola, weight: 1 }]
            ",
            &[(".split[0].weight", 10, "at most 10000 (got 10001)")],
        );
        assert_route_ok(
            "
            match: { prefix: / }
            split: [{ cluster: app, weight: 0 }, { cluster: tegola, weight: 10000 }]
            ",
        );
    }

    #[test]
    fn redirects() {
        assert_route_errors(
            "
            match: { prefix: / }
            redirect:
              status: 200
              scheme: ftp
              host: example.org:8080
              path: elsewhere
            ",
            &[
                (".redirect.status", 11, "200 is not a redirect status"),
                (".redirect.scheme", 12, "\"ftp\" is not supported"),
                (".redirect.host", 13, "has a port; set `port` instead"),
                (".redirect.path", 14, "\"elsewhere\" must start with `/`"),
            ],
        );
        assert_route_ok(
            "
            match: { prefix: / }
            redirect: { scheme: https, host: \"[::1]\", port: 8443, status: 308, strip_query: true }
            ",
        );
    }

    #[test]
    fn fixed_responses() {
        assert_route_errors(
            r#"
            match: { prefix: / }
            respond:
              status: 600
              headers:
                "bad name": x
                x-ok: "line\nbreak"
            "#,
            &[
                (".respond.status", 11, "600 is not an HTTP status"),
                (
                    ".respond.headers.bad name",
                    13,
                    "\"bad name\" is not a valid header name",
                ),
                (".respond.headers.x-ok", 14, "is not a valid header value"),
            ],
        );
        assert_route_errors(
            "
            match: { prefix: / }
            respond: { status: 99 }
            ",
            &[(".respond.status", 10, "99 is not an HTTP status")],
        );
    }

    #[test]
    fn timeouts_and_retries() {
        assert_route_errors(
            "
            match: { prefix: / }
            cluster: app
            timeout: 0s
            retry:
              attempts: 11
              on: []
              per_try_timeout: 0s
            ",
            &[
                (".timeout", 11, "greater than zero"),
                (".retry.attempts", 13, "between 1 and 10"),
                (".retry.on", 14, "at least one of connect-failure"),
                (".retry.per_try_timeout", 15, "greater than zero"),
            ],
        );
        assert_route_errors(
            "
            match: { prefix: / }
            cluster: app
            retry: { attempts: 0 }
            ",
            &[(".retry.attempts", 11, "(got 0)")],
        );
    }

    #[test]
    fn rewrites() {
        assert_route_errors(
            "
            match: { exact: /a }
            cluster: app
            prefix_rewrite: b/
            host_rewrite: user@example.org
            ",
            &[
                (
                    ".prefix_rewrite",
                    11,
                    "prefix_rewrite needs a `prefix` match",
                ),
                (".prefix_rewrite", 11, "\"b/\" must start with `/`"),
                (".host_rewrite", 12, "must not contain user info"),
            ],
        );
        assert_route_errors(
            "
            match: { prefix: /a/ }
            cluster: app
            host_rewrite: exa mple.org
            ",
            &[(".host_rewrite", 11, "is not a valid host[:port]")],
        );
        assert_route_ok(
            "
            match: { prefix: /a/ }
            cluster: app
            prefix_rewrite: /
            host_rewrite: internal.example.org:8080
            ",
        );
    }

    #[test]
    fn header_rules() {
        assert_route_errors(
            r#"
            match: { prefix: / }
            cluster: app
            request_headers:
              add:
                x-ok: "fine"
                Connection: close
                Host: example.org
                x-bad: "a\rb"
                "not a name": x
              remove: [x-gone, Transfer-Encoding, ":path"]
            response_headers:
              remove: [keep-alive, te, trailer, upgrade, proxy-connection, server]
            "#,
            &[
                (".request_headers.add.Connection", 14, "hop-by-hop header"),
                (".request_headers.add.Host", 15, "use `host_rewrite`"),
                (".request_headers.add.x-bad", 16, "not a valid header value"),
                (
                    ".request_headers.add.not a name",
                    17,
                    "not a valid header name",
                ),
                (
                    ".request_headers.remove[1]",
                    18,
                    "\"Transfer-Encoding\" is a hop-by-hop header",
                ),
                (".request_headers.remove[2]", 18, "pseudo-header"),
                (
                    ".response_headers.remove[0]",
                    20,
                    "\"keep-alive\" is a hop-by-hop",
                ),
                (".response_headers.remove[1]", 20, "\"te\" is a hop-by-hop"),
                (
                    ".response_headers.remove[2]",
                    20,
                    "\"trailer\" is a hop-by-hop",
                ),
                (
                    ".response_headers.remove[3]",
                    20,
                    "\"upgrade\" is a hop-by-hop",
                ),
                (
                    ".response_headers.remove[4]",
                    20,
                    "\"proxy-connection\" is a hop-by-hop",
                ),
            ],
        );
    }

    // === clusters ===

    #[test]
    fn endpoint_addresses() {
        assert_errors(
            r#"
            clusters:
              - { name: a, endpoints: ["10.0.0.1:80"] }
              - { name: b, endpoints: ["10.0.0.2:80"] }
              - name: db
                endpoints:
                  - "10.0.0.1"
                  - "db.example.org:5432"
                  - { address: "not an address:1" }
                  - "10.0.0.3:0"
                  - "[2001:db8::1]:5432"
                  - { address: "10.0.0.4:5432", weight: 0 }
                  - { address: "10.0.0.5:5432", weight: 10001 }
                  - { address: "10.0.0.6:5432", weight: 10000, pooled: false }
                  - "[2001:db8::1]:5432"
                  - db.example.org
            "#,
            &[
                (
                    "clusters[2].endpoints[0].address",
                    6,
                    "\"10.0.0.1\" has no port",
                ),
                (
                    "clusters[2].endpoints[2].address",
                    8,
                    "is not an IP address",
                ),
                ("clusters[2].endpoints[3].address", 9, "has port 0"),
                (
                    "clusters[2].endpoints[5].weight",
                    11,
                    "use `pooled: false` to stop traffic",
                ),
                (
                    "clusters[2].endpoints[6].weight",
                    12,
                    "between 1 and 10000 (got 10001)",
                ),
                (
                    "clusters[2].endpoints[8].address",
                    14,
                    "[2001:db8::1]:5432 is listed twice (also endpoints[4])",
                ),
                (
                    "clusters[2].endpoints[9].address",
                    15,
                    "\"db.example.org\" has no port",
                ),
            ],
        );
    }

    #[test]
    fn cluster_names_and_timeouts() {
        assert_errors(
            r#"
            clusters:
              - { name: a, endpoints: [] }
              - { name: "", endpoints: [] }
              - { name: a, connect_timeout: 0s, idle_timeout: 0s }
            "#,
            &[
                ("clusters[1].name", 3, "a cluster needs a name"),
                ("clusters[2].connect_timeout", 4, "greater than zero"),
                ("clusters[2].idle_timeout", 4, "greater than zero"),
                (
                    "clusters[2].name",
                    4,
                    "duplicate cluster name \"a\" (also clusters[0])",
                ),
            ],
        );
    }

    #[test]
    fn validates_configs_built_in_code() {
        let mut config = crate::config::load::defaults();
        assert!(validate(&config).is_empty());
        let mut cluster: Cluster =
            serde_yaml::from_str("{ name: x, max_idle_connections: 1, idle_timeout: 1s }").unwrap();
        cluster.endpoints.push(crate::config::model::Endpoint {
            address: "1.2.3.4".into(),
            weight: 1,
            pooled: true,
            zone: None,
        });
        config.clusters.push(cluster);
        let errors = validate(&config);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "clusters[0].endpoints[0].address");
        assert_eq!(errors[0].line, None);
    }

    #[test]
    fn address_problems() {
        assert_eq!(
            parse_socket_addr("1.2.3.4:5"),
            Ok(SocketAddr::from(([1, 2, 3, 4], 5)))
        );
        assert_eq!(
            parse_socket_addr("[1.2.3.4]"),
            Err(AddrProblem::NoPort { ipv6: false })
        );
        assert_eq!(parse_socket_addr("1.2.3.4:+5"), Err(AddrProblem::BadPort));
        assert_eq!(
            parse_socket_addr("host"),
            Err(AddrProblem::NotIp {
                host: "host".into(),
                has_port: false
            })
        );
        assert_eq!(and_list(&["a", "b", "c"]), "a, b and c");
    }
}

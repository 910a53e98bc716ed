//! The `clusters` section: names, endpoint addresses, hashing, health checks and outlier detection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use super::routes::check_authority;
use super::{Validator, MAX_WEIGHT};
use crate::config::checked::EndpointAddress;
use crate::config::model::{Cluster, HealthCheck, LbPolicy, OutlierDetection};
use crate::config::{Entry, ErrorKind, FieldPath, Section};

impl Validator<'_> {
    pub(super) fn clusters(&mut self) {
        let config = self.config;
        let mut names: HashMap<&str, FieldPath> = HashMap::new();
        for (i, cluster) in config.clusters.iter().enumerate() {
            let index = self.provenance.cluster_index.get(i).copied().unwrap_or(i);
            let base = FieldPath::root("clusters").index(index);
            self.entry = Some(Entry {
                section: Section::Clusters,
                name: cluster.name.clone(),
                index: Some(index),
            });
            let name = cluster.name.as_str();
            if name.trim().is_empty() {
                self.error(base.field("name"), "a cluster needs a name");
            } else if let Some(first) = names.get(name) {
                let message = format!("duplicate cluster name {name:?} (also {first})");
                self.error_kind(ErrorKind::Duplicate, base.field("name"), message);
            } else {
                names.insert(name, base.clone());
            }
            self.cluster(&base, cluster);
        }
        self.entry = None;
    }

    fn cluster(&mut self, base: &FieldPath, cluster: &Cluster) {
        self.positive(base.field("connect_timeout"), cluster.connect_timeout);
        self.positive(base.field("idle_timeout"), cluster.idle_timeout);
        self.positive(base.field("dns_refresh"), cluster.dns_refresh);
        if let Some(d) = cluster.slow_start {
            self.positive(base.field("slow_start"), d);
        }
        if cluster.panic_threshold > 100 {
            self.error(
                base.field("panic_threshold"),
                format!(
                    "is a percentage from 0 to 100 (got {})",
                    cluster.panic_threshold
                ),
            );
        }
        self.hash_on(base, cluster);
        if let Some(tls) = &cluster.tls {
            self.upstream_tls(&base.field("tls"), tls);
        }
        if let Some(hc) = &cluster.health_check {
            self.health_check(&base.field("health_check"), hc);
        }
        if let Some(od) = &cluster.outlier_detection {
            self.outlier_detection(&base.field("outlier_detection"), od);
        }
        let cb = &cluster.circuit_breakers;
        for (field, value) in [
            ("max_connections", cb.max_connections),
            ("max_pending", cb.max_pending),
            ("max_requests", cb.max_requests),
        ] {
            if value == 0 {
                self.error(
                    base.field("circuit_breakers").key(field),
                    "must be at least 1 (0 would refuse every request)",
                );
            }
        }
        if let Some(budget) = &cb.retry_budget {
            if budget.percent > 100 {
                self.error(
                    base.field("circuit_breakers")
                        .field("retry_budget")
                        .field("percent"),
                    format!("must be between 0 and 100 (got {})", budget.percent),
                );
            }
        }
        let mut seen: HashMap<EndpointAddress, usize> = HashMap::new();
        let mut addresses = Vec::with_capacity(cluster.endpoints.len());
        for (e, endpoint) in cluster.endpoints.iter().enumerate() {
            let ebase = base.field("endpoints").index(e);
            if let Some(zone) = &endpoint.zone {
                if zone.trim().is_empty() {
                    self.error(ebase.field("zone"), "a zone name cannot be empty");
                }
            }
            match parse_endpoint_address(&endpoint.address) {
                Ok(addr) => {
                    if let Some(first) = seen.get(&addr) {
                        let message = format!("{addr} is listed twice (also endpoints[{first}])");
                        self.error(ebase.field("address"), message);
                    } else {
                        seen.insert(addr.clone(), e);
                    }
                    addresses.push(addr);
                }
                Err(message) => self.error(ebase.field("address"), message),
            }
            if endpoint.weight == 0 {
                self.error(
                    ebase.field("weight"),
                    "weight 0 is not allowed; use `pooled: false` to stop traffic to an endpoint",
                );
            } else if endpoint.weight > MAX_WEIGHT {
                self.error(
                    ebase.field("weight"),
                    format!(
                        "must be between 1 and {MAX_WEIGHT} (got {})",
                        endpoint.weight
                    ),
                );
            }
        }
        self.values.endpoints.push(addresses);
    }

    fn hash_on(&mut self, base: &FieldPath, cluster: &Cluster) {
        let hashing = matches!(cluster.lb, LbPolicy::RingHash | LbPolicy::Maglev);
        let Some(h) = &cluster.hash_on else {
            return;
        };
        let path = base.field("hash_on");
        if !hashing {
            self.error(&path, "only applies to `lb: ring_hash` or `lb: maglev`");
        }
        let set = [h.header.is_some(), h.cookie.is_some(), h.client_ip];
        if set.iter().filter(|b| **b).count() != 1 {
            self.error(&path, "needs exactly one of header, cookie, client_ip");
        }
        if let Some(name) = &h.header {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.error(
                    path.field("header"),
                    format!("{name:?} is not a valid header name"),
                );
            }
        }
        if let Some(name) = &h.cookie {
            if name.is_empty() || name.contains([';', '=', ' ']) {
                self.error(
                    path.field("cookie"),
                    format!("{name:?} is not a valid cookie name"),
                );
            }
        }
    }

    fn health_check(&mut self, base: &FieldPath, hc: &HealthCheck) {
        let kinds = [hc.http.is_some(), hc.tcp.is_some(), hc.postgres.is_some()];
        if kinds.iter().filter(|b| **b).count() != 1 {
            self.error(
                base,
                "a health check needs exactly one of http, tcp, postgres",
            );
        }
        if let Some(pg) = &hc.postgres {
            if pg.password.is_some() && pg.password_file.is_some() {
                self.error(
                    base.field("postgres").field("password_file"),
                    "give either password or password_file, not both",
                );
            }
            if !pg.has_credentials() {
                if pg.require_replica {
                    self.error(
                        base.field("postgres").field("require_replica"),
                        "needs credentials (password or password_file) to query the server",
                    );
                }
                if pg.max_lag.is_some() {
                    self.error(
                        base.field("postgres").field("max_lag"),
                        "needs credentials (password or password_file) to query the server",
                    );
                }
            }
            for (field, v) in [("user", &pg.user), ("database", &pg.database)] {
                if v.is_empty() || v.contains('\0') {
                    self.error(
                        base.field("postgres").key(field),
                        "must be a non-empty name",
                    );
                }
            }
        }
        self.positive(base.field("interval"), hc.interval);
        self.positive(base.field("timeout"), hc.timeout);
        if hc.timeout > hc.interval {
            self.error(
                base.field("timeout"),
                format!("{} is longer than the interval {}", hc.timeout, hc.interval),
            );
        }
        for (field, value) in [
            ("unhealthy_threshold", hc.unhealthy_threshold),
            ("healthy_threshold", hc.healthy_threshold),
        ] {
            if value == 0 || value > 100 {
                self.error(
                    base.key(field),
                    format!("must be between 1 and 100 (got {value})"),
                );
            }
        }
        if let Some(http) = &hc.http {
            if !http.path.starts_with('/') {
                self.error(
                    base.field("http").field("path"),
                    format!("{:?} must start with /", http.path),
                );
            }
            if let Some(host) = &http.host {
                if let Err(message) = check_authority(host) {
                    self.error(base.field("http").field("host"), message);
                }
            }
            if http.expect.is_empty() {
                self.error(
                    base.field("http").field("expect"),
                    "needs at least one status or range",
                );
            }
        }
    }

    fn outlier_detection(&mut self, base: &FieldPath, od: &OutlierDetection) {
        if od.consecutive_failures == 0 {
            self.error(base.field("consecutive_failures"), "must be at least 1");
        }
        self.positive(base.field("base_ejection"), od.base_ejection);
        if od.max_ejection < od.base_ejection {
            self.error(
                base.field("max_ejection"),
                format!(
                    "{} is shorter than base_ejection {}",
                    od.max_ejection, od.base_ejection
                ),
            );
        }
        if od.max_ejected_percent > 100 {
            self.error(
                base.field("max_ejected_percent"),
                format!(
                    "is a percentage from 0 to 100 (got {})",
                    od.max_ejected_percent
                ),
            );
        }
    }
}

/// Why a text is not an `ip:port` socket address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum AddrProblem {
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
    pub(super) fn describe(&self, text: &str, endpoint: bool) -> String {
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

pub(super) fn parse_socket_addr(text: &str) -> Result<SocketAddr, AddrProblem> {
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

/// Parses `ip:port` or `dns-name:port`.
pub fn parse_endpoint_address(text: &str) -> Result<EndpointAddress, String> {
    if let Some((scheme, rest)) = text.split_once("://") {
        let bare = rest.trim_end_matches('/');
        return Err(format!(
            "{text:?} has a scheme: an endpoint is an address, write {bare:?} \
             (the cluster's protocol and tls say how to speak to it, not {scheme:?})"
        ));
    }
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::{parse_socket_addr, AddrProblem};
    use crate::config::tests::assert_errors;

    #[test]
    fn retry_budget_percent_is_a_percentage() {
        assert_errors(
            r#"
            clusters:
              - name: a
                endpoints: ["10.0.0.1:80"]
                circuit_breakers: { retry_budget: { percent: 101 } }
            "#,
            &[(
                "clusters[0].circuit_breakers.retry_budget.percent",
                4,
                "between 0 and 100 (got 101)",
            )],
        );
    }

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
    }
}

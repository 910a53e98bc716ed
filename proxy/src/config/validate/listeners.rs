//! The `listeners` section (and `admin.listen`): names, listen addresses, http and tcp settings.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::clusters::parse_socket_addr;
use super::{Validator, MAX_ATTEMPTS, MAX_HEADER_SIZE, MIN_HEADER_SIZE, MIN_URI_LENGTH};
use crate::config::model::{HttpListener, Listener, TcpListener};
use crate::config::suggest::did_you_mean_quoted;
use crate::config::{Entry, ErrorKind, FieldPath, Section};

impl<'a> Validator<'a> {
    pub(super) fn listeners(&mut self) {
        let config = self.config;
        let mut names: HashMap<&str, FieldPath> = HashMap::new();
        let mut addresses: HashMap<SocketAddr, FieldPath> = HashMap::new();
        if !self.provenance.admin_broken {
            let path = FieldPath::root("admin").field("listen");
            if let Some(addr) = self.listen_address(&path, &config.admin.listen) {
                addresses.insert(addr, path);
                self.values.admin = addr;
            }
        }
        if let Some(probes) = &config.probes {
            let path = FieldPath::root("probes").field("listen");
            if let Some(addr) = self.listen_address(&path, &probes.listen) {
                match addresses.get(&addr) {
                    Some(first) if addr.port() != 0 => {
                        let message = format!("{addr} is already used by {first}");
                        self.error(&path, message);
                    }
                    _ => {
                        addresses.insert(addr, path);
                    }
                }
                self.values.probes = Some(addr);
            }
        }
        for (i, listener) in config.listeners.iter().enumerate() {
            let index = self.provenance.listener_index.get(i).copied().unwrap_or(i);
            let base = FieldPath::root("listeners").index(index);
            self.entry = Some(Entry {
                section: Section::Listeners,
                name: listener.name.clone(),
                index: Some(index),
            });
            self.listener_name(&base, listener, &mut names);
            let path = base.field("listen");
            let listen = self.listen_address(&path, &listener.listen);
            self.values.listen.push(listen.unwrap_or(self.values.admin));
            if let Some(addr) = listen {
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
            if listener.max_connections == Some(0) {
                self.error(
                    base.field("max_connections"),
                    "must be at least 1 (0 would refuse every connection)",
                );
            }
            if let Some(tls) = &listener.tls {
                self.listener_tls(&base.field("tls"), tls);
            }
            match (&listener.http, &listener.tcp) {
                (Some(http), None) => self.http_listener(&base, http),
                (None, Some(tcp)) => {
                    self.tcp_listener(&base, tcp);
                    if listener.tls.is_some() {
                        self.error(
                            base.field("tls"),
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
        self.entry = None;
    }

    fn tcp_listener(&mut self, base: &FieldPath, tcp: &TcpListener) {
        self.cluster_ref(base.field("tcp").field("cluster"), &tcp.cluster);
        if tcp.connect_attempts == 0 || tcp.connect_attempts > MAX_ATTEMPTS {
            self.error(
                base.field("tcp").field("connect_attempts"),
                format!(
                    "must be between 1 and {MAX_ATTEMPTS} (got {})",
                    tcp.connect_attempts
                ),
            );
        }
        if let Some(d) = tcp.idle_timeout {
            self.positive(base.field("tcp").field("idle_timeout"), d);
        }
    }

    fn listener_name(
        &mut self,
        base: &FieldPath,
        listener: &'a Listener,
        names: &mut HashMap<&'a str, FieldPath>,
    ) {
        let name = listener.name.as_str();
        if name.trim().is_empty() {
            self.error(base.field("name"), "a listener needs a name");
        } else if let Some(first) = names.get(name) {
            let message = format!("duplicate listener name {name:?} (also {first})");
            self.error_kind(ErrorKind::Duplicate, base.field("name"), message);
        } else {
            names.insert(name, base.clone());
        }
    }

    fn listen_address(&mut self, path: &FieldPath, text: &str) -> Option<SocketAddr> {
        match parse_socket_addr(text) {
            Ok(addr) => Some(addr),
            Err(problem) => {
                self.error(path, problem.describe(text, false));
                None
            }
        }
    }

    fn http_listener(&mut self, base: &FieldPath, http: &HttpListener) {
        let name = http.route_table.as_str();
        let tables = &self.config.route_tables;
        if !tables.contains_key(name) && !self.provenance.broken_route_tables.covers(name) {
            let message = if tables.is_empty() {
                format!("unknown route table {name:?} (no route tables are defined)")
            } else {
                let hint = did_you_mean_quoted(name, tables.keys().map(String::as_str));
                format!("unknown route table {name:?}{hint}")
            };
            self.error_kind(
                ErrorKind::UnknownReference,
                base.field("http").field("route_table"),
                message,
            );
        }
        if http.max_header_size < MIN_HEADER_SIZE {
            self.error(
                base.field("http").field("max_header_size"),
                format!(
                    "must be at least {MIN_HEADER_SIZE} bytes (got {})",
                    http.max_header_size
                ),
            );
        } else if http.max_header_size > MAX_HEADER_SIZE {
            self.error(
                base.field("http").field("max_header_size"),
                format!(
                    "must be at most {MAX_HEADER_SIZE} bytes, 1 MiB (got {})",
                    http.max_header_size
                ),
            );
        }
        if http.max_uri_length < MIN_URI_LENGTH {
            self.error(
                base.field("http").field("max_uri_length"),
                format!(
                    "must be at least {MIN_URI_LENGTH} bytes (got {})",
                    http.max_uri_length
                ),
            );
        }
        if http.max_concurrent_streams == 0 {
            self.error(
                base.field("http").field("max_concurrent_streams"),
                "must be at least 1",
            );
        }
        self.positive(
            base.field("http").field("header_read_timeout"),
            http.header_read_timeout,
        );
        self.positive(base.field("http").field("idle_timeout"), http.idle_timeout);
        self.positive(
            base.field("http").field("stream_idle_timeout"),
            http.stream_idle_timeout,
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::assert_errors;

    #[test]
    fn the_probe_listener_needs_its_own_address() {
        assert_errors(
            "probes: { listen: 9902 }",
            &[("probes.listen", 1, "`9902` is a number to YAML")],
        );
        assert_errors(
            r#"
            admin: { listen: "127.0.0.1:9901" }
            probes: { listen: "127.0.0.1:9901" }
            "#,
            &[(
                "probes.listen",
                2,
                "127.0.0.1:9901 is already used by admin.listen",
            )],
        );
        assert_errors(
            r#"probes: { listen: "0.0.0.0" }"#,
            &[("probes.listen", 1, "has no port")],
        );
        let config = crate::config::tests::parse_ok(r#"probes: { listen: "0.0.0.0:9902" }"#);
        assert_eq!(
            config.probes.map(|p| p.listen).as_deref(),
            Some("0.0.0.0:9902")
        );
    }

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
                  max_uri_length: 255
                  stream_idle_timeout: 0s
              - name: b
                max_connections: 0
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
                    "listeners[0].http.max_uri_length",
                    10,
                    "at least 256 bytes (got 255)",
                ),
                (
                    "listeners[0].http.stream_idle_timeout",
                    11,
                    "greater than zero",
                ),
                ("listeners[1].max_connections", 13, "at least 1"),
                (
                    "listeners[1].http.max_header_size",
                    15,
                    "at most 1048576 bytes",
                ),
            ],
        );
    }
}

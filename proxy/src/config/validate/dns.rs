//! The `dns` section: name servers and the lookup timeout.

use std::net::{IpAddr, SocketAddr};

use super::clusters::{parse_socket_addr, AddrProblem};
use super::Validator;
use crate::config::FieldPath;

/// The port of a name server given without one.
const DNS_PORT: u16 = 53;

/// Reads a name server: `ip:port` (IPv6 in brackets) or a bare `ip` on port 53, with the
/// address rules (and messages) of every other address in the config.
fn parse_name_server(text: &str) -> Result<SocketAddr, String> {
    match parse_socket_addr(text) {
        Ok(addr) if addr.port() == 0 => Err(format!("{text:?}: the port must not be 0")),
        Ok(addr) => Ok(addr),
        // A bare IP, the one address a port may be left out of here.
        Err(problem @ AddrProblem::NoPort { .. }) => text
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .map(|ip| SocketAddr::new(ip, DNS_PORT))
            .map_err(|_| problem.describe(text, false)),
        Err(problem) => Err(problem.describe(text, false)),
    }
}

impl Validator<'_> {
    pub(super) fn dns(&mut self) {
        let dns = &self.config.dns;
        self.positive(FieldPath::root("dns").field("timeout"), dns.timeout);
        let Some(servers) = &dns.servers else {
            return;
        };
        let path = FieldPath::root("dns").field("servers");
        if servers.is_empty() {
            self.error(
                path.clone(),
                "must name at least one server (leave it out to use /etc/resolv.conf)",
            );
        }
        let mut parsed = Vec::with_capacity(servers.len());
        for (i, text) in servers.iter().enumerate() {
            match parse_name_server(text) {
                Ok(addr) => parsed.push(addr),
                Err(message) => self.error(path.clone().index(i), message),
            }
        }
        self.values.dns_servers = Some(parsed);
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{assert_errors, parse_ok};

    #[test]
    fn servers_are_ip_addresses_with_an_optional_port() {
        let config = parse_ok(r#"dns: { servers: ["10.0.0.10", "127.0.0.1:5353", "[::1]:53"] }"#);
        assert_eq!(config.dns.servers.as_ref().map(Vec::len), Some(3));
        assert_errors(
            r#"dns: { servers: ["ns1.example.org", "10.0.0.1:0", "10.0.0.1:53"] }"#,
            &[
                (
                    "dns.servers[0]",
                    1,
                    "\"ns1.example.org\" is not an IP address",
                ),
                ("dns.servers[1]", 1, "the port must not be 0"),
            ],
        );
        assert_errors(
            "dns: { servers: [] }",
            &[("dns.servers", 1, "at least one server")],
        );
    }

    #[test]
    fn the_timeout_is_positive() {
        assert_errors(
            "dns: { timeout: 0s }",
            &[("dns.timeout", 1, "greater than zero")],
        );
        assert_errors(
            "dns: { timout: 1s }",
            &[("dns.timout", 1, "(did you mean `timeout`?)")],
        );
    }
}

//! The `xds` section: the control plane server, its TLS, and the node group it needs.

use super::Validator;
use crate::config::FieldPath;

impl Validator<'_> {
    pub(super) fn xds(&mut self) {
        let Some(xds) = &self.config.xds else {
            return;
        };
        let base = FieldPath::root("xds");
        let many = xds.server.list().len() > 1;
        for (i, server) in xds.server.list().iter().enumerate() {
            let port_ok = server.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !port_ok {
                let path = if many {
                    base.field("server").index(i)
                } else {
                    base.field("server")
                };
                self.error(path, format!("{server:?} must be host:port"));
            }
        }
        self.positive(base.field("connect_timeout"), xds.connect_timeout);
        if let Some(tls) = &xds.tls {
            self.upstream_tls(&base.field("tls"), tls);
            if tls.alpn.iter().any(|p| p != "h2") {
                self.error(
                    base.field("tls").field("alpn"),
                    "the control plane stream is HTTP/2: only h2",
                );
            }
        }
        for (i, file) in xds.allow_files.iter().enumerate() {
            let plain = file.strip_suffix('/').map_or(file.as_str(), |dir| {
                if dir.is_empty() {
                    "/"
                } else {
                    dir
                }
            });
            if plain == "/" || !crate::config::model::is_plain_absolute(plain) {
                self.error(
                    base.field("allow_files").index(i),
                    format!(
                        "{file:?} must be an absolute path without `.` or `..` parts (a file, or a directory ending in `/`), and not `/`"
                    ),
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
                FieldPath::root("node").field("cluster"),
                "with `xds`, the node group (node.cluster) chooses the resources and must be set",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{assert_errors, parse_ok};

    #[test]
    fn xds_server_tls_and_node_group() {
        assert_errors(
            r#"
            node: { id: edge-1 }
            xds:
              server: control-plane
              connect_timeout: 0s
              tls: { alpn: [h2, "http/1.1"] }
            "#,
            &[
                (
                    "node.cluster",
                    1,
                    "with `xds`, the node group (node.cluster) chooses the resources and must be set",
                ),
                ("xds.server", 3, "\"control-plane\" must be host:port"),
                ("xds.connect_timeout", 4, "must be greater than zero"),
                (
                    "xds.tls.alpn",
                    5,
                    "the control plane stream is HTTP/2: only h2",
                ),
            ],
        );
        parse_ok(
            r#"
            node: { cluster: edge }
            xds: { server: "127.0.0.1:18000", tls: { alpn: [h2] } }
            "#,
        );
    }

    #[test]
    fn servers_may_be_a_list_of_replicas() {
        assert_errors(
            r#"
            node: { cluster: edge }
            xds: { server: ["127.0.0.1:18000", "replica-2"] }
            "#,
            &[("xds.server[1]", 2, "\"replica-2\" must be host:port")],
        );
        let config = parse_ok(
            r#"
            node: { cluster: edge }
            xds: { server: ["127.0.0.1:18000", "xds-2.example:18000"] }
            "#,
        );
        let xds = config.xds.unwrap();
        assert_eq!(
            xds.server.list(),
            ["127.0.0.1:18000", "xds-2.example:18000"]
        );
        assert_eq!(
            xds.server.to_string(),
            "127.0.0.1:18000, xds-2.example:18000"
        );
    }

    #[test]
    fn allow_files_are_plain_absolute_paths() {
        assert_errors(
            r#"
            node: { cluster: edge }
            xds:
              server: "127.0.0.1:18000"
              allow_files: [/etc/legate/pushed/, /etc/ssl/ca.pem, relative/x, /etc/../x, /]
            "#,
            &[
                (
                    "xds.allow_files[2]",
                    4,
                    "\"relative/x\" must be an absolute path",
                ),
                (
                    "xds.allow_files[3]",
                    4,
                    "\"/etc/../x\" must be an absolute path",
                ),
                ("xds.allow_files[4]", 4, "\"/\" must be an absolute path"),
            ],
        );
    }
}

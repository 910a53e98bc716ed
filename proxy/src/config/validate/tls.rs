//! TLS blocks: termination on listeners, origination to clusters and the control plane.

use std::collections::HashSet;

use super::Validator;
use crate::config::model::{ListenerTls, UpstreamTls};
use crate::config::FieldPath;

impl Validator<'_> {
    pub(super) fn listener_tls(&mut self, base: &FieldPath, tls: &ListenerTls) {
        if tls.certificates.is_empty() {
            self.error(
                base.field("certificates"),
                "needs at least one { cert, key } pair",
            );
        }
        for (i, pair) in tls.certificates.iter().enumerate() {
            self.file_path(
                base.field("certificates").index(i).field("cert"),
                &pair.cert,
            );
            self.file_path(base.field("certificates").index(i).field("key"), &pair.key);
        }
        self.alpn(&base.field("alpn"), &tls.alpn, true);
        if let Some(auth) = &tls.client_auth {
            self.file_path(base.field("client_auth").field("ca"), &auth.ca);
        }
        self.positive(base.field("handshake_timeout"), tls.handshake_timeout);
        if tls.forward_client_cert && tls.client_auth.is_none() {
            self.error(
                base.field("forward_client_cert"),
                "needs `client_auth`: without it there is no client certificate to forward",
            );
        }
    }

    pub(super) fn upstream_tls(&mut self, base: &FieldPath, tls: &UpstreamTls) {
        if let Some(sni) = &tls.sni {
            if rustls_pki_types::ServerName::try_from(sni.as_str()).is_err() {
                self.error(
                    base.field("sni"),
                    format!("{sni:?} is not a valid server name"),
                );
            }
        }
        if let Some(ca) = &tls.ca {
            self.file_path(base.field("ca"), ca);
        }
        match (&tls.client_cert, &tls.client_key) {
            (Some(c), Some(k)) => {
                self.file_path(base.field("client_cert"), c);
                self.file_path(base.field("client_key"), k);
            }
            (Some(_), None) => self.error(base.field("client_key"), "client_cert needs client_key"),
            (None, Some(_)) => {
                self.error(base.field("client_cert"), "client_key needs client_cert")
            }
            (None, None) => {}
        }
        self.alpn(&base.field("alpn"), &tls.alpn, false);
    }

    fn file_path(&mut self, path: FieldPath, file: &str) {
        if file.trim().is_empty() {
            self.error(path, "a file path cannot be empty");
        }
    }

    fn alpn(&mut self, path: &FieldPath, alpn: &[String], required: bool) {
        if required && alpn.is_empty() {
            self.error(path, "needs at least one protocol (h2, http/1.1)");
        }
        let mut seen = HashSet::new();
        for (i, p) in alpn.iter().enumerate() {
            if p != "h2" && p != "http/1.1" {
                self.error(
                    path.index(i),
                    format!("unknown protocol {p:?}; Legate speaks h2 and http/1.1"),
                );
            } else if !seen.insert(p.as_str()) {
                self.error(path.index(i), format!("{p:?} is listed twice"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::assert_errors;

    #[test]
    fn listener_tls_settings() {
        assert_errors(
            r#"
            listeners:
              - name: a
                listen: 0.0.0.0:443
                http: { route_table: t }
                tls:
                  certificates: []
                  alpn: [h2, h3, h2]
                  handshake_timeout: 0s
                  forward_client_cert: true
            route_tables:
              t: { virtual_hosts: [{ hosts: ["*"], routes: [{ match: { prefix: / }, respond: { status: 200 } }] }] }
            "#,
            &[
                (
                    "listeners[0].tls.certificates",
                    6,
                    "needs at least one { cert, key } pair",
                ),
                (
                    "listeners[0].tls.alpn[1]",
                    7,
                    "unknown protocol \"h3\"; Legate speaks h2 and http/1.1",
                ),
                ("listeners[0].tls.alpn[2]", 7, "\"h2\" is listed twice"),
                (
                    "listeners[0].tls.handshake_timeout",
                    8,
                    "must be greater than zero",
                ),
                (
                    "listeners[0].tls.forward_client_cert",
                    9,
                    "needs `client_auth`: without it there is no client certificate to forward",
                ),
            ],
        );
    }

    #[test]
    fn upstream_tls_settings() {
        assert_errors(
            r#"
            clusters:
              - name: a
                endpoints: ["10.0.0.1:443"]
                tls:
                  sni: "bad name"
                  ca: ""
                  client_cert: client.pem
                  alpn: [h2, h2]
            "#,
            &[
                (
                    "clusters[0].tls.client_key",
                    4,
                    "client_cert needs client_key",
                ),
                (
                    "clusters[0].tls.sni",
                    5,
                    "\"bad name\" is not a valid server name",
                ),
                ("clusters[0].tls.ca", 6, "a file path cannot be empty"),
                ("clusters[0].tls.alpn[1]", 8, "\"h2\" is listed twice"),
            ],
        );
    }
}

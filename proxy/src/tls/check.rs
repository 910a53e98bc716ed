//! `legate validate`'s checks of TLS files: readable, parseable, keys matching certificates,
//! not expired, and names that cover the listener's virtual hosts.

use super::files::{self, CertInfo};
use crate::config::model::Config;
use crate::config::{ConfigError, Entry, ErrorKind, FieldPath, Section};

/// What the TLS files of a config say: errors reject the config, warnings are printed.
#[derive(Debug, Default)]
pub struct Findings {
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigError>,
    /// The listener or cluster being checked.
    entry: Option<Entry>,
}

impl Findings {
    fn error(&mut self, path: FieldPath, message: impl Into<String>) {
        self.errors.push(ConfigError {
            kind: ErrorKind::File,
            entry: self.entry.clone(),
            path,
            line: None,
            message: message.into(),
        });
    }

    fn warning(&mut self, path: FieldPath, message: impl Into<String>) {
        self.warnings.push(ConfigError {
            kind: ErrorKind::File,
            entry: self.entry.clone(),
            path,
            line: None,
            message: message.into(),
        });
    }
}

pub fn check(config: &Config) -> Findings {
    let mut out = Findings::default();
    for (li, listener) in config.listeners.iter().enumerate() {
        let Some(tls) = &listener.tls else { continue };
        let base = FieldPath::root("listeners").index(li).field("tls");
        out.entry = Some(Entry {
            section: Section::Listeners,
            name: listener.name.clone(),
            index: Some(li),
        });
        let hosts: Vec<&str> = listener
            .http
            .as_ref()
            .and_then(|h| config.route_tables.get(&h.route_table))
            .map(|t| {
                t.virtual_hosts
                    .iter()
                    .flat_map(|v| v.hosts.iter().map(String::as_str))
                    .filter(|h| *h != "*")
                    .collect()
            })
            .unwrap_or_default();
        let mut infos = Vec::new();
        for (ci, pair) in tls.certificates.iter().enumerate() {
            let cpath = base.field("certificates").index(ci);
            let chain = match files::read_certs(&pair.cert) {
                Ok(c) => c,
                Err(e) => {
                    out.error(cpath.field("cert"), e.to_string());
                    continue;
                }
            };
            let key = match files::read_key(&pair.key) {
                Ok(k) => k,
                Err(e) => {
                    out.error(cpath.field("key"), e.to_string());
                    continue;
                }
            };
            let provider = super::provider();
            if let Err(e) = rustls::sign::CertifiedKey::from_der(chain.clone(), key, &provider) {
                let message = match e {
                    rustls::Error::InconsistentKeys(_) => {
                        format!("{} does not match the certificate {}", pair.key, pair.cert)
                    }
                    e => format!("{}: {e}", pair.key),
                };
                out.error(cpath.field("key"), message);
            }
            match chain.first().and_then(CertInfo::parse) {
                Some(info) => {
                    if info.is_expired() {
                        let when = humantime::format_rfc3339(info.not_after);
                        out.error(
                            cpath.field("cert"),
                            format!("{} expired at {when}", pair.cert),
                        );
                    }
                    infos.push(info);
                }
                None => out.error(
                    cpath.field("cert"),
                    format!("{}: the certificate cannot be parsed", pair.cert),
                ),
            }
        }
        if !hosts.is_empty() && !infos.is_empty() {
            let covered = hosts.iter().any(|h| {
                let probe = h
                    .strip_prefix("*.")
                    .map_or((*h).to_owned(), |s| format!("x.{s}"));
                infos.iter().any(|i| i.covers(&probe))
            });
            if !covered {
                out.warning(
                    base.field("certificates"),
                    format!(
                        "no certificate names any of this listener's virtual hosts ({})",
                        hosts.join(", ")
                    ),
                );
            }
        }
        if let Some(auth) = &tls.client_auth {
            if let Err(e) = files::read_roots(&auth.ca) {
                out.error(base.field("client_auth").field("ca"), e.to_string());
            }
        }
    }
    let upstreams = config
        .clusters
        .iter()
        .enumerate()
        .filter_map(|(ci, c)| {
            let entry = Entry {
                section: Section::Clusters,
                name: c.name.clone(),
                index: Some(ci),
            };
            c.tls.as_ref().map(|t| {
                (
                    FieldPath::root("clusters").index(ci).field("tls"),
                    Some(entry),
                    t,
                )
            })
        })
        .chain(config.xds.iter().filter_map(|x| {
            x.tls
                .as_ref()
                .map(|t| (FieldPath::root("xds").field("tls"), None, t))
        }));
    for (base, entry, tls) in upstreams {
        out.entry = entry;
        if let Some(ca) = &tls.ca {
            if let Err(e) = files::read_roots(ca) {
                out.error(base.field("ca"), e.to_string());
            }
        }
        if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
            match (files::read_certs(cert), files::read_key(key)) {
                (Ok(chain), Ok(key_der)) => {
                    if let Err(e) =
                        rustls::sign::CertifiedKey::from_der(chain, key_der, &super::provider())
                    {
                        out.error(base.field("client_key"), format!("{key}: {e}"));
                    }
                }
                (Err(e), _) => out.error(base.field("client_cert"), e.to_string()),
                (_, Err(e)) => out.error(base.field("client_key"), e.to_string()),
            }
        }
        if tls.insecure_skip_verify {
            out.warning(
                base.field("insecure_skip_verify"),
                "upstream certificates are not verified",
            );
        }
    }
    out.entry = None;
    out
}

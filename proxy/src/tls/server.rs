//! TLS termination for a listener: a rustls `ServerConfig` built once per certificate set,
//! swapped whole when the files change, with certificates chosen by SNI.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::version::{TLS12, TLS13};
use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tracing::{info, warn};

use super::files::{self, CertInfo};
use super::{provider, Fingerprint, TlsError};
use crate::config::model::{ClientAuthMode, ListenerTls, TlsVersion};

/// A listener's TLS: the current config, and what is needed to rebuild it.
#[derive(Debug)]
pub struct ServerTls {
    config: ArcSwap<ServerConfig>,
    spec: ListenerTls,
    /// The file contents the current config was built from, to skip rebuilds on no change.
    loaded: Fingerprint,
    pub handshake_timeout: Duration,
    pub forward_client_cert: bool,
}

impl ServerTls {
    /// Loads every file of `spec`; fails with the file at fault.
    pub fn new(spec: &ListenerTls) -> Result<ServerTls, TlsError> {
        let (config, contents) = build(spec)?;
        Ok(ServerTls {
            config: ArcSwap::new(config),
            spec: spec.clone(),
            loaded: Fingerprint::new(contents),
            handshake_timeout: spec.handshake_timeout.get(),
            forward_client_cert: spec.forward_client_cert,
        })
    }

    /// The config for a new handshake. Connections keep the one they started with.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }

    /// The files this config is built from (for watching).
    pub fn files(&self) -> Vec<String> {
        files_of(&self.spec)
    }

    /// Rebuilds from the files if they changed. A bad new set is rejected and the current
    /// config keeps serving. Returns whether a new config was installed.
    pub fn reload(&self) -> Result<bool, TlsError> {
        if self.loaded.unchanged(&self.files()) {
            return Ok(false);
        }
        let (config, contents) = build(&self.spec)?;
        self.config.store(config);
        self.loaded.set(contents);
        info!(files = ?self.files(), "TLS certificates reloaded");
        Ok(true)
    }
}

fn files_of(spec: &ListenerTls) -> Vec<String> {
    let mut files: Vec<String> = spec
        .certificates
        .iter()
        .flat_map(|p| [p.cert.clone(), p.key.clone()])
        .collect();
    if let Some(auth) = &spec.client_auth {
        files.push(auth.ca.clone());
    }
    files
}

fn read_all(spec: &ListenerTls) -> Result<Vec<Vec<u8>>, std::io::Error> {
    Fingerprint::read(&files_of(spec))
}

fn build(spec: &ListenerTls) -> Result<(Arc<ServerConfig>, Vec<Vec<u8>>), TlsError> {
    // Read the bytes first, so what is remembered is exactly what was built from.
    let contents = read_all(spec).unwrap_or_default();
    let provider = provider();
    let mut keys = Vec::with_capacity(spec.certificates.len());
    for pair in &spec.certificates {
        let chain = files::read_certs(&pair.cert)?;
        let key = files::read_key(&pair.key)?;
        let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                cert: pair.cert.clone(),
                key: pair.key.clone(),
            },
            e => TlsError::Invalid {
                path: pair.key.clone(),
                message: e.to_string(),
            },
        })?;
        keys.push(Arc::new(certified));
    }
    let resolver = SniResolver::new(keys).ok_or_else(|| TlsError::Invalid {
        path: "certificates".to_owned(),
        message: "no certificates".to_owned(),
    })?;
    let versions: &[&rustls::SupportedProtocolVersion] = match spec.min_version {
        TlsVersion::Tls12 => &[&TLS13, &TLS12],
        TlsVersion::Tls13 => &[&TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Invalid {
            path: "min_version".to_owned(),
            message: e.to_string(),
        })?;
    let builder = match &spec.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let roots = Arc::new(files::read_roots(&auth.ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
            let verifier = match auth.mode {
                ClientAuthMode::Required => verifier,
                ClientAuthMode::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier.build().map_err(|e| TlsError::Invalid {
                path: auth.ca.clone(),
                message: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = spec.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    // Resumption: stateless tickets, plus the default in-memory session cache.
    match rustls::crypto::ring::Ticketer::new() {
        Ok(ticketer) => config.ticketer = ticketer,
        Err(e) => warn!(error = %e, "TLS session tickets unavailable"),
    }
    Ok((Arc::new(config), contents))
}

/// Chooses a certificate by SNI: an exact SAN, then a wildcard SAN, then the first pair.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.org` stored as `example.org`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    fn new(keys: Vec<Arc<CertifiedKey>>) -> Option<SniResolver> {
        let default = keys.first()?.clone();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for key in &keys {
            let Some(info) = key.cert.first().and_then(CertInfo::parse) else {
                continue;
            };
            for name in info.dns_names {
                match name.strip_prefix("*.") {
                    Some(suffix) => {
                        wildcard
                            .entry(suffix.to_owned())
                            .or_insert_with(|| key.clone());
                    }
                    None => {
                        exact.entry(name).or_insert_with(|| key.clone());
                    }
                }
            }
        }
        Some(SniResolver {
            exact,
            wildcard,
            default,
        })
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        // rustls hands over SNI already lowercased and validated as a DNS name.
        if let Some(key) = self.exact.get(name) {
            return Some(key.clone());
        }
        if let Some(key) = name
            .split_once('.')
            .and_then(|(_, rest)| self.wildcard.get(rest))
        {
            return Some(key.clone());
        }
        Some(self.default.clone())
    }
}

/// `x-forwarded-client-cert` for a verified client certificate, in Envoy's format:
/// `Subject="...";URI=...;DNS=...`, with only the certificate's own SANs, and any value that
/// holds a separator quoted so a certificate cannot inject fields.
pub fn client_cert_header(chain: &[CertificateDer<'_>]) -> Option<HeaderValue> {
    let info = CertInfo::parse(chain.first()?)?;
    let mut value = format!("Subject={}", quoted(&info.subject, true));
    for uri in &info.uris {
        value.push_str(";URI=");
        value.push_str(&quoted(uri, false));
    }
    for dns in &info.dns_sans {
        value.push_str(";DNS=");
        value.push_str(&quoted(dns, false));
    }
    HeaderValue::from_str(&value).ok()
}

/// A field value, double-quoted when `always` or when it holds `,`, `;`, `=`, `"` or `\`;
/// inside the quotes `\` and `"` are escaped with a backslash, so no certificate content can
/// end the quoted string early and add fields.
fn quoted(v: &str, always: bool) -> String {
    if always || v.contains([',', ';', '=', '"', '\\']) {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        v.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quoted("spiffe://a/b", false), "spiffe://a/b");
        assert_eq!(quoted("a;DNS=x", false), "\"a;DNS=x\"");
        assert_eq!(quoted("CN=\"x\"", true), "\"CN=\\\"x\\\"\"");
        // A backslash before a quote cannot turn the escape into a closing quote.
        assert_eq!(quoted("a\\\";DNS=evil", false), "\"a\\\\\\\";DNS=evil\"");
        assert_eq!(quoted("a\\b", false), "\"a\\\\b\"");
    }
}

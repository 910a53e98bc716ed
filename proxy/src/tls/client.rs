//! TLS to upstream endpoints: a rustls `ClientConfig` per cluster, server names, and the
//! explicit opt-out from verification.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tracing::{info, warn};

use super::{files, provider, Fingerprint, TlsError};
use crate::config::model::{UpstreamProtocol, UpstreamTls};

/// A cluster's upstream TLS.
#[derive(Debug)]
pub struct ClientTls {
    config: ArcSwap<ClientConfig>,
    spec: UpstreamTls,
    protocol: UpstreamProtocol,
    loaded: Fingerprint,
    /// The configured SNI, if any.
    pub sni: Option<ServerName<'static>>,
}

impl ClientTls {
    pub fn new(spec: &UpstreamTls, protocol: UpstreamProtocol) -> Result<ClientTls, TlsError> {
        let (config, loaded) = build(spec, protocol)?;
        let sni = match &spec.sni {
            Some(name) => {
                Some(
                    ServerName::try_from(name.clone()).map_err(|e| TlsError::Invalid {
                        path: "sni".to_owned(),
                        message: e.to_string(),
                    })?,
                )
            }
            None => None,
        };
        Ok(ClientTls {
            config: ArcSwap::new(config),
            spec: spec.clone(),
            protocol,
            loaded: Fingerprint::new(loaded),
            sni,
        })
    }

    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.load_full()
    }

    pub fn files(&self) -> Vec<String> {
        files_of(&self.spec)
    }

    /// Rebuilds from the files if they changed; a bad new set keeps the current config.
    pub fn reload(&self) -> Result<bool, TlsError> {
        if self.loaded.unchanged(&self.files()) {
            return Ok(false);
        }
        let (config, contents) = build(&self.spec, self.protocol)?;
        self.config.store(config);
        self.loaded.set(contents);
        info!(files = ?self.files(), "upstream TLS files reloaded");
        Ok(true)
    }

    /// The name to send and verify for an endpoint: the configured SNI, else its DNS name,
    /// else its IP address.
    pub fn server_name(
        &self,
        hostname: Option<&str>,
        addr: std::net::SocketAddr,
    ) -> ServerName<'static> {
        if let Some(sni) = &self.sni {
            return sni.clone();
        }
        hostname
            .and_then(|h| ServerName::try_from(h.to_owned()).ok())
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
    }
}

fn files_of(spec: &UpstreamTls) -> Vec<String> {
    [&spec.ca, &spec.client_cert, &spec.client_key]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
}

fn read_all(spec: &UpstreamTls) -> Result<Vec<Vec<u8>>, std::io::Error> {
    Fingerprint::read(&files_of(spec))
}

fn build(
    spec: &UpstreamTls,
    protocol: UpstreamProtocol,
) -> Result<(Arc<ClientConfig>, Vec<Vec<u8>>), TlsError> {
    let contents = read_all(spec).unwrap_or_default();
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid {
            path: "tls".to_owned(),
            message: e.to_string(),
        })?;
    let builder = if spec.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider.clone())))
    } else {
        let roots = match &spec.ca {
            Some(ca) => files::read_roots(ca)?,
            None => system_roots(),
        };
        builder.with_root_certificates(roots)
    };
    let mut config = match (&spec.client_cert, &spec.client_key) {
        (Some(cert), Some(key)) => {
            let chain = files::read_certs(cert)?;
            let key_der = files::read_key(key)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| TlsError::KeyMismatch {
                    cert: format!("{cert} ({e})"),
                    key: key.clone(),
                })?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = if spec.alpn.is_empty() {
        match protocol {
            UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
            UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
        }
    } else {
        spec.alpn.iter().map(|p| p.as_bytes().to_vec()).collect()
    };
    Ok((Arc::new(config), contents))
}

/// The operating system's trusted roots (`/etc/ssl/certs` on Debian); none is only a warning.
fn system_roots() -> RootCertStore {
    let (roots, ignored) = legate_xds::pem::system_roots();
    if roots.is_empty() {
        warn!(
            ignored,
            "no usable system CA certificates; upstream TLS verification will fail"
        );
    }
    roots
}

/// Accepts any server certificate (`insecure_skip_verify: true`); still checks that the
/// handshake signatures are valid for the certificate presented.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

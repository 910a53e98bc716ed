//! TLS for the control plane: the server's certificate and, for mTLS, the CA its clients'
//! certificates must chain to; and the operator CLI's client side. rustls with `ring`; the
//! PEM files are read by [`crate::pem`].

use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::pem::{self, read_certs, read_key, read_roots, PemError};

/// ALPN protocols the server offers: the xDS stream is HTTP/2 (R1); the operator API also
/// answers HTTP/1.1.
pub const SERVER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The server's TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// The certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// The certificate's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA bundle, PEM. When set, every client must present a certificate that chains to one
    /// of these (mTLS); connections without one are refused during the handshake.
    pub client_ca: Option<PathBuf>,
}

/// A client's TLS files; all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// Trust only these CAs (PEM bundle) instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// A client certificate chain (PEM), for a server that requires mTLS. Needs `key`.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
}

impl ClientTlsFiles {
    /// Whether any file is set.
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }
}

/// Why TLS could not be set up; every file error names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    File(#[from] PemError),
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("certificate {} and key {} cannot be used together: {message}", cert.display(), key.display())]
    KeyPair {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
    #[error("a client certificate needs both a certificate and a key file")]
    HalfKeyPair,
    #[error("no usable system CA certificates (use a CA file)")]
    NoSystemRoots,
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The crypto provider: `ring`, explicitly, so no process-wide default is needed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The system's CA certificates; none is an error.
fn system_roots() -> Result<RootCertStore, TlsError> {
    let (roots, _) = pem::system_roots();
    if roots.is_empty() {
        return Err(TlsError::NoSystemRoots);
    }
    Ok(roots)
}

/// The server's TLS configuration, ALPN `h2` and `http/1.1` ([`SERVER_ALPN`]).
pub fn server_config(files: &ServerTlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let roots = read_roots(ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Invalid {
                    path: ca.clone(),
                    message: format!("cannot verify clients with it: {e}"),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::KeyPair {
            cert: files.cert.clone(),
            key: files.key.clone(),
            message: e.to_string(),
        })?;
    config.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client's TLS configuration offering `alpn`: trusting `files.ca` (or the system roots),
/// presenting `files.cert` when set.
pub fn client_config(
    files: &ClientTlsFiles,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match &files.ca {
        Some(ca) => read_roots(ca)?,
        None => system_roots()?,
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            let private = read_key(key)?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| TlsError::KeyPair {
                    cert: cert.clone(),
                    key: key.clone(),
                    message: e.to_string(),
                })?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsError::HalfKeyPair),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = server_config(&ServerTlsFiles {
            cert: missing.clone(),
            key: missing.clone(),
            client_ca: None,
        })
        .unwrap_err();
        assert!(matches!(e, TlsError::File(PemError::Read { .. })), "{e}");
        assert!(e.to_string().contains("missing.pem"), "{e}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        let e = read_certs(&empty).unwrap_err();
        assert!(matches!(e, PemError::NoCertificates { .. }), "{e}");
        assert!(e.to_string().contains("empty.pem"), "{e}");
        let e = read_key(&empty).unwrap_err();
        assert!(matches!(e, PemError::NoKey { .. }), "{e}");
        assert!(e.to_string().contains("empty.pem"), "{e}");

        let e = client_config(
            &ClientTlsFiles {
                ca: Some(missing),
                ..ClientTlsFiles::default()
            },
            &[b"http/1.1"],
        )
        .unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
    }
}

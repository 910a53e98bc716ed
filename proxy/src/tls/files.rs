//! PEM files: certificate chains, private keys, CA bundles (read by [`legate_xds::pem`], with
//! errors in the proxy's words), and what a certificate says (names, validity) for validation
//! and for forwarding client identities.

use std::time::{Duration, SystemTime};

use legate_xds::pem::{self, PemError};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::TlsError;

impl From<PemError> for TlsError {
    fn from(e: PemError) -> TlsError {
        let name = |path: std::path::PathBuf| path.display().to_string();
        match e {
            PemError::Read { path, error } => TlsError::Read {
                path: name(path),
                source: error,
            },
            PemError::Pem { path, message } => TlsError::Pem {
                path: name(path),
                message,
            },
            PemError::NoCertificates { path } => TlsError::NoCertificates { path: name(path) },
            PemError::NoKey { path } => TlsError::NoKey { path: name(path) },
            PemError::UnusableCa { path, message } => TlsError::Invalid {
                path: name(path),
                message: format!("unusable CA certificate: {message}"),
            },
        }
    }
}

/// The certificates of a PEM file, leaf first.
pub fn read_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    Ok(pem::read_certs(path)?)
}

/// The first private key of a PEM file.
pub fn read_key(path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    Ok(pem::read_key(path)?)
}

/// A CA bundle as a root store.
pub fn read_roots(path: &str) -> Result<RootCertStore, TlsError> {
    Ok(pem::read_roots(path)?)
}

/// What Legate needs to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    /// DNS names of the subject alternative names (or the common name when there are none),
    /// for matching server names.
    pub dns_names: Vec<String>,
    /// Only the DNS subject alternative names, for reporting an identity.
    pub dns_sans: Vec<String>,
    pub uris: Vec<String>,
    pub not_after: SystemTime,
}

impl CertInfo {
    pub fn parse(der: &CertificateDer<'_>) -> Option<CertInfo> {
        let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
        let mut dns_names = Vec::new();
        let mut uris = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(n) => dns_names.push(n.to_ascii_lowercase()),
                    GeneralName::URI(u) => uris.push((*u).to_owned()),
                    _ => {}
                }
            }
        }
        let dns_sans = dns_names.clone();
        if dns_names.is_empty() {
            if let Some(cn) = cert.subject().iter_common_name().next() {
                if let Ok(cn) = cn.as_str() {
                    dns_names.push(cn.to_ascii_lowercase());
                }
            }
        }
        let secs = cert.validity().not_after.timestamp();
        let not_after = if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
        } else {
            SystemTime::UNIX_EPOCH
        };
        Some(CertInfo {
            subject: cert.subject().to_string(),
            dns_names,
            dns_sans,
            uris,
            not_after,
        })
    }

    pub fn is_expired(&self) -> bool {
        self.not_after < SystemTime::now()
    }

    /// Whether one of the certificate's names covers `host` (exact, or a `*.` wildcard for
    /// one label).
    pub fn covers(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.dns_names.iter().any(|name| name_matches(name, &host))
    }
}

/// Certificate name matching: `*.example.org` covers `a.example.org`, not `a.b.example.org`.
pub fn name_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_names_cover_one_label() {
        assert!(name_matches("*.example.org", "a.example.org"));
        assert!(!name_matches("*.example.org", "a.b.example.org"));
        assert!(!name_matches("*.example.org", "example.org"));
        assert!(name_matches("example.org", "example.org"));
    }

    #[test]
    fn missing_files_name_the_path() {
        let e = read_certs("/nonexistent/legate.crt").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/legate.crt"), "{e}");
    }
}

//! PEM files: certificate chains, private keys, CA bundles, and what a certificate says
//! (names, validity) for validation and for forwarding client identities.

use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::TlsError;

fn read(path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The certificates of a PEM file, leaf first.
pub fn read_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file.
pub fn read_key(path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        e => TlsError::Pem {
            path: path.to_owned(),
            message: e.to_string(),
        },
    })
}

/// A CA bundle as a root store.
pub fn read_roots(path: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            path: path.to_owned(),
            message: format!("unusable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
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

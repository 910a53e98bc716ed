//! PEM files: certificate chains, private keys and CA bundles (rustls-pki-types' parser), and
//! the system's CA certificates. Shared by the control plane and the Legate proxy, which word
//! the errors in their own terms (see [`crate::tls::TlsError`]).

use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a PEM file could not be used; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{} is not valid PEM: {message}", path.display())]
    Pem { path: PathBuf, message: String },
    #[error("{} holds no certificate", path.display())]
    NoCertificates { path: PathBuf },
    #[error("{} holds no private key", path.display())]
    NoKey { path: PathBuf },
    /// A CA bundle's certificate that a root store does not take.
    #[error("{}: unusable CA certificate: {message}", path.display())]
    UnusableCa { path: PathBuf, message: String },
}

fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|error| PemError::Read {
        path: path.to_path_buf(),
        error,
    })
}

/// The certificates of a PEM file, in file order (leaf first in a chain).
pub fn read_certs(path: impl AsRef<Path>) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let path = path.as_ref();
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Pem {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PemError::NoCertificates {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: impl AsRef<Path>) -> Result<PrivateKeyDer<'static>, PemError> {
    let path = path.as_ref();
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => PemError::NoKey {
            path: path.to_path_buf(),
        },
        e => PemError::Pem {
            path: path.to_path_buf(),
            message: e.to_string(),
        },
    })
}

/// A CA bundle as a root store.
pub fn read_roots(path: impl AsRef<Path>) -> Result<RootCertStore, PemError> {
    let path = path.as_ref();
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| PemError::UnusableCa {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// The operating system's CA certificates (`/etc/ssl/certs` on Debian) and how many of them
/// were unusable; errors met while loading them are logged. The store may be empty: what that
/// means is the caller's to say.
pub fn system_roots() -> (RootCertStore, usize) {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "while loading system CA certificates");
    }
    let mut roots = RootCertStore::empty();
    let (_, ignored) = roots.add_parsable_certificates(found.certs);
    (roots, ignored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = read_certs(&missing).unwrap_err();
        assert!(matches!(e, PemError::Read { .. }), "{e}");
        assert!(e.to_string().contains("missing.pem"), "{e}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        let e = read_roots(&empty).unwrap_err();
        assert!(matches!(e, PemError::NoCertificates { .. }), "{e}");
        let e = read_key(&empty).unwrap_err();
        assert!(matches!(e, PemError::NoKey { .. }), "{e}");
        assert!(e.to_string().contains("empty.pem"), "{e}");
    }
}

//! TLS: listener configs with SNI certificate choice and rotation, upstream client configs,
//! and the PEM files behind both.

pub mod check;
pub mod client;
pub mod files;
pub mod server;

use std::sync::{Arc, Mutex};

/// Why TLS material could not be loaded. Each variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Pem { path: String, message: String },
    #[error("{path}: no certificate found (expected PEM \"BEGIN CERTIFICATE\")")]
    NoCertificates { path: String },
    #[error("{path}: no private key found (expected PEM PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: String },
    #[error("key {key} does not match certificate {cert}")]
    KeyMismatch { cert: String, key: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// The crypto provider for every TLS config Legate builds.
///
/// ring: it builds with only a C compiler (no cmake, no assembler toolchain), keeps the binary
/// small, and its AES-GCM and ChaCha20 are as fast as the alternatives on x86-64 and arm64.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The contents of the files a TLS config was built from, so a reload with nothing changed
/// (a watch event about another file, say) rebuilds nothing.
#[derive(Debug, Default)]
pub(crate) struct Fingerprint(Mutex<Vec<Vec<u8>>>);

impl Fingerprint {
    pub(crate) fn read(files: &[String]) -> std::io::Result<Vec<Vec<u8>>> {
        files.iter().map(std::fs::read).collect()
    }

    pub(crate) fn new(contents: Vec<Vec<u8>>) -> Self {
        Fingerprint(Mutex::new(contents))
    }

    /// Whether the files still hold what the current config was built from.
    pub(crate) fn unchanged(&self, files: &[String]) -> bool {
        let held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Self::read(files).is_ok_and(|now| now == *held)
    }

    pub(crate) fn set(&self, contents: Vec<Vec<u8>>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = contents;
    }
}

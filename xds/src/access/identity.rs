//! A client certificate's names: its URI and DNS subject alternative names.

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The names a client certificate carries; DNS names in lower case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub uris: Vec<String>,
    pub dns: Vec<String>,
}

impl Identity {
    /// The names of a (verified) leaf certificate; none when it cannot be parsed.
    pub fn of(leaf: &CertificateDer<'_>) -> Identity {
        let mut identity = Identity::default();
        let Ok((_, cert)) = X509Certificate::from_der(leaf.as_ref()) else {
            return identity;
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => identity.uris.push((*u).to_owned()),
                    GeneralName::DNSName(d) => identity.dns.push(d.to_ascii_lowercase()),
                    _ => {}
                }
            }
        }
        identity
    }

    /// Every name, URIs first, DNS names as `dns:NAME`; for messages and the audit log.
    pub fn describe(&self) -> String {
        let names: Vec<String> = self
            .uris
            .iter()
            .cloned()
            .chain(self.dns.iter().map(|d| format!("dns:{d}")))
            .collect();
        if names.is_empty() {
            "a certificate with no URI or DNS names".to_owned()
        } else {
            names.join(", ")
        }
    }
}

//! Development certificates: a local CA and the certificates a config names but lacks.
//!
//! `legate dev-cert --config FILE` reads the config and, for every TLS file it names that does
//! not exist, writes one: a listener's certificate and key (for its route table's host names,
//! `localhost`, `127.0.0.1` and `::1`), a cluster's or the control plane's client certificate
//! and key, and any `ca` bundle (the local CA itself). Files that exist are never touched; the
//! CA is made once, as `legate-dev-ca.pem` and `legate-dev-ca.key` beside the first file
//! written, and reused from there. Relative paths are relative to the working directory, as
//! when Legate runs.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;

use crate::config::model::{Config, UpstreamTls};
use crate::config::Checked;

/// The CA's file names, in the directory of the first file written.
pub const CA_CERT: &str = "legate-dev-ca.pem";
pub const CA_KEY: &str = "legate-dev-ca.key";

/// Names every development server certificate carries, whatever the routes say.
const LOCAL_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    #[error("{what}: {cert} exists but {key} does not (or the other way round); remove the one left or restore its pair")]
    HalfPair {
        what: String,
        cert: String,
        key: String,
    },
    #[error("{path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    ReadCa {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a usable CA ({source})")]
    BadCa { path: String, source: rcgen::Error },
    #[error("{what}: cannot issue a certificate for {names:?}: {source}")]
    Issue {
        what: String,
        names: Vec<String>,
        source: rcgen::Error,
    },
}

/// One file or pair of files and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Already there: left alone.
    Kept { what: String, paths: Vec<String> },
    /// A certificate (and key) issued by the local CA for these names.
    Issued {
        what: String,
        paths: Vec<String>,
        names: Vec<String>,
    },
    /// The local CA's certificate, written where a `ca` bundle was expected.
    CaCopied { what: String, path: String },
    /// The local CA, made now.
    CaCreated { cert: String, key: String },
}

/// What the config asks for, in config order.
enum Wanted {
    Server {
        what: String,
        cert: String,
        key: String,
        names: Vec<String>,
    },
    Client {
        what: String,
        cert: String,
        key: String,
        common_name: String,
    },
    Ca {
        what: String,
        path: String,
    },
}

/// Writes every TLS file `config` names that is missing; see the module documentation.
pub fn write_missing(config: &Checked) -> Result<Vec<Outcome>, DevCertError> {
    let wanted = wanted(config.config());
    // A pair with one file missing stops everything before anything is written.
    for w in &wanted {
        if let Wanted::Server {
            what, cert, key, ..
        }
        | Wanted::Client {
            what, cert, key, ..
        } = w
        {
            pair_exists(what, cert, key, &mut Vec::new())?;
        }
    }
    let mut outcomes = Vec::new();
    let mut ca: Option<LocalCa> = None;
    for wanted in wanted {
        match wanted {
            Wanted::Server {
                what,
                cert,
                key,
                names,
            } => {
                if pair_exists(&what, &cert, &key, &mut outcomes)? {
                    continue;
                }
                let ca = local_ca(&mut ca, &cert, &mut outcomes)?;
                let spec = LeafSpec::server(&names.iter().map(String::as_str).collect::<Vec<_>>());
                let leaf = issue(ca, &what, &spec)?;
                write_pair(&cert, &key, &leaf)?;
                outcomes.push(Outcome::Issued {
                    what,
                    paths: vec![cert, key],
                    names,
                });
            }
            Wanted::Client {
                what,
                cert,
                key,
                common_name,
            } => {
                if pair_exists(&what, &cert, &key, &mut outcomes)? {
                    continue;
                }
                let ca = local_ca(&mut ca, &cert, &mut outcomes)?;
                let leaf = issue(ca, &what, &LeafSpec::client(&common_name, &[]))?;
                write_pair(&cert, &key, &leaf)?;
                outcomes.push(Outcome::Issued {
                    what,
                    paths: vec![cert, key],
                    names: vec![common_name],
                });
            }
            Wanted::Ca { what, path } => {
                if Path::new(&path).exists() {
                    outcomes.push(Outcome::Kept {
                        what,
                        paths: vec![path],
                    });
                    continue;
                }
                let ca = local_ca(&mut ca, &path, &mut outcomes)?;
                if let Some(dir) = Path::new(&path).parent() {
                    create_dirs(dir)?;
                }
                write_new(&path, ca.cert_pem.as_bytes(), false)?;
                outcomes.push(Outcome::CaCopied { what, path });
            }
        }
    }
    Ok(outcomes)
}

/// The TLS files of `config`, each once (the first mention names it).
fn wanted(config: &Config) -> Vec<Wanted> {
    let mut found = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut first = |path: &str| seen.insert(path.to_owned());
    let client_name = config
        .node
        .id
        .clone()
        .unwrap_or_else(|| "legate".to_owned());
    for listener in &config.listeners {
        let Some(tls) = &listener.tls else { continue };
        let names = server_names(config, listener.http.as_ref().map(|h| &*h.route_table));
        for (i, pair) in tls.certificates.iter().enumerate() {
            if first(&pair.cert) {
                found.push(Wanted::Server {
                    what: format!("listeners.{}.tls.certificates[{i}]", listener.name),
                    cert: pair.cert.clone(),
                    key: pair.key.clone(),
                    names: names.clone(),
                });
            }
        }
        if let Some(auth) = &tls.client_auth {
            if first(&auth.ca) {
                found.push(Wanted::Ca {
                    what: format!("listeners.{}.tls.client_auth.ca", listener.name),
                    path: auth.ca.clone(),
                });
            }
        }
    }
    let upstream = config
        .clusters
        .iter()
        .filter_map(|c| Some((format!("clusters.{}.tls", c.name), c.tls.as_ref()?)))
        .chain(
            config
                .xds
                .as_ref()
                .and_then(|x| Some(("xds.tls".to_owned(), x.tls.as_ref()?))),
        );
    for (what, tls) in upstream {
        let UpstreamTls {
            ca,
            client_cert,
            client_key,
            ..
        } = tls;
        if let (Some(cert), Some(key)) = (client_cert, client_key) {
            if first(cert) {
                found.push(Wanted::Client {
                    what: format!("{what}.client_cert"),
                    cert: cert.clone(),
                    key: key.clone(),
                    common_name: client_name.clone(),
                });
            }
        }
        if let Some(ca) = ca {
            if first(ca) {
                found.push(Wanted::Ca {
                    what: format!("{what}.ca"),
                    path: ca.clone(),
                });
            }
        }
    }
    found
}

/// The host names of `route_table`'s virtual hosts (not `*`), then the local names.
fn server_names(config: &Config, route_table: Option<&str>) -> Vec<String> {
    let mut names: Vec<String> = route_table
        .and_then(|t| config.route_tables.get(t))
        .into_iter()
        .flat_map(|t| &t.virtual_hosts)
        .flat_map(|v| &v.hosts)
        .filter(|h| *h != "*")
        .map(|h| h.to_ascii_lowercase())
        .collect();
    names.extend(LOCAL_NAMES.iter().map(|n| (*n).to_owned()));
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// Whether both files of a pair exist (recorded as kept); an error when only one does.
fn pair_exists(
    what: &str,
    cert: &str,
    key: &str,
    outcomes: &mut Vec<Outcome>,
) -> Result<bool, DevCertError> {
    match (Path::new(cert).exists(), Path::new(key).exists()) {
        (true, true) => {
            outcomes.push(Outcome::Kept {
                what: what.to_owned(),
                paths: vec![cert.to_owned(), key.to_owned()],
            });
            Ok(true)
        }
        (false, false) => Ok(false),
        _ => Err(DevCertError::HalfPair {
            what: what.to_owned(),
            cert: cert.to_owned(),
            key: key.to_owned(),
        }),
    }
}

/// The local CA: the one already loaded, else the one beside `near` (read, or made now).
fn local_ca<'a>(
    ca: &'a mut Option<LocalCa>,
    near: &str,
    outcomes: &mut Vec<Outcome>,
) -> Result<&'a LocalCa, DevCertError> {
    if ca.is_none() {
        let dir = Path::new(near)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let (cert, key) = (dir.join(CA_CERT), dir.join(CA_KEY));
        let loaded = if cert.exists() || key.exists() {
            LocalCa::read(&cert, &key)?
        } else {
            create_dirs(&dir)?;
            let made = LocalCa::generate("Legate development CA").map_err(|source| {
                DevCertError::BadCa {
                    path: display(&cert),
                    source,
                }
            })?;
            write_new(&display(&key), made.key_pem.as_bytes(), true)?;
            write_new(&display(&cert), made.cert_pem.as_bytes(), false)?;
            outcomes.push(Outcome::CaCreated {
                cert: display(&cert),
                key: display(&key),
            });
            made
        };
        *ca = Some(loaded);
    }
    Ok(ca.as_ref().expect("set just above"))
}

/// A certificate authority: its certificate and the key it signs with.
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: String,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa").finish_non_exhaustive()
    }
}

/// What to put in a leaf certificate.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub common_name: String,
    /// DNS names (wildcards allowed) and IP addresses.
    pub names: Vec<String>,
    /// URI names (SPIFFE IDs, say).
    pub uris: Vec<String>,
    /// A client certificate (extended key usage `clientAuth`) rather than a server one.
    pub client: bool,
    pub not_before: time::OffsetDateTime,
    pub not_after: time::OffsetDateTime,
}

impl LeafSpec {
    /// A server certificate for `names`, the first also its common name, valid from a day
    /// ago for 397 days (under 398, the most that clients such as browsers accept).
    pub fn server(names: &[&str]) -> LeafSpec {
        let (not_before, not_after) = validity(397);
        LeafSpec {
            common_name: names.first().copied().unwrap_or("server").to_owned(),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            uris: Vec::new(),
            client: false,
            not_before,
            not_after,
        }
    }

    /// A client certificate named `common_name`, with URI names `uris`.
    pub fn client(common_name: &str, uris: &[&str]) -> LeafSpec {
        LeafSpec {
            common_name: common_name.to_owned(),
            names: Vec::new(),
            uris: uris.iter().map(|u| (*u).to_owned()).collect(),
            client: true,
            ..LeafSpec::server(&[])
        }
    }
}

/// A certificate and its private key.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
    /// PKCS#8, PEM.
    pub key_pem: String,
    /// PKCS#8, DER.
    pub key_der: Vec<u8>,
}

impl LocalCa {
    /// A new self-signed CA named `common_name`, valid from a day ago for ten years, that
    /// signs leaves only.
    pub fn generate(common_name: &str) -> Result<LocalCa, rcgen::Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let (from, until) = validity(10 * 365);
        params.not_before = from;
        params.not_after = until;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(LocalCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA in PEM files `cert` and `key`.
    pub fn read(cert: &Path, key: &Path) -> Result<LocalCa, DevCertError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| DevCertError::ReadCa {
                path: display(path),
                source,
            })
        };
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        let bad = |path: &Path| {
            let path = display(path);
            move |source| DevCertError::BadCa { path, source }
        };
        let signing_key = KeyPair::from_pem(&key_pem).map_err(bad(key))?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| rcgen::Error::CouldNotParseCertificate)
            .map_err(bad(cert))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, signing_key).map_err(bad(cert))?;
        Ok(LocalCa {
            issuer,
            cert_pem,
            cert_der,
            key_pem,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// A leaf certificate as `spec` says, signed by this CA.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Leaf, rcgen::Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&spec.common_name);
        for name in &spec.names {
            params.subject_alt_names.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.as_str().try_into()?),
            });
        }
        for uri in &spec.uris {
            params
                .subject_alt_names
                .push(SanType::URI(uri.as_str().try_into()?));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![if spec.client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        params.use_authority_key_identifier_extension = true;
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        })
    }
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Legate development");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// From a day ago (clocks differ) to `days` from now.
fn validity(days: u64) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (
        now - time::Duration::days(1),
        now + time::Duration::days(days as i64),
    )
}

fn issue(ca: &LocalCa, what: &str, spec: &LeafSpec) -> Result<Leaf, DevCertError> {
    ca.issue(spec).map_err(|source| DevCertError::Issue {
        what: what.to_owned(),
        names: spec.names.iter().chain(&spec.uris).cloned().collect(),
        source,
    })
}

fn write_pair(cert: &str, key: &str, leaf: &Leaf) -> Result<(), DevCertError> {
    for path in [cert, key] {
        if let Some(dir) = Path::new(path).parent() {
            create_dirs(dir)?;
        }
    }
    write_new(key, leaf.key_pem.as_bytes(), true)?;
    write_new(cert, leaf.cert_pem.as_bytes(), false)
}

fn create_dirs(dir: &Path) -> Result<(), DevCertError> {
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|source| DevCertError::Write {
        path: display(dir),
        source,
    })
}

/// Creates `path` (never replacing a file), readable by its owner only when `private`.
fn write_new(path: &str, contents: &[u8], private: bool) -> Result<(), DevCertError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let failed = |source| DevCertError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(failed)?;
    file.write_all(contents).map_err(failed)
}

fn display(path: &Path) -> String {
    PathBuf::from(path).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(yaml: &str) -> Checked {
        crate::config::parse(yaml).expect("a valid config")
    }

    #[test]
    fn server_names_come_from_the_listeners_route_table_then_local_names() {
        let config = checked(
            r#"
listeners:
  - name: tls
    listen: 127.0.0.1:0
    http: { route_table: t }
    tls: { certificates: [{ cert: a.crt, key: a.key }] }
route_tables:
  t:
    virtual_hosts:
      - { hosts: [Maps.Example.org, "*.maps.example.org"], routes: [{ match: { prefix: / }, respond: { status: 200 } }] }
      - { hosts: ["*", localhost], routes: [{ match: { prefix: / }, respond: { status: 404 } }] }
"#,
        );
        assert_eq!(
            server_names(config.config(), Some("t")),
            [
                "maps.example.org",
                "*.maps.example.org",
                "localhost",
                "127.0.0.1",
                "::1"
            ]
        );
    }

    /// A listener pair, a client pair and a CA bundle under `dir`, all absolute.
    fn tls_config(dir: &Path) -> Checked {
        let p = |f: &str| dir.join(f).display().to_string();
        checked(&format!(
            r#"
node: {{ id: maps1009 }}
listeners:
  - name: tls
    listen: 127.0.0.1:0
    http: {{ route_table: t }}
    tls: {{ certificates: [{{ cert: "{}", key: "{}" }}] }}
route_tables:
  t: {{ virtual_hosts: [{{ hosts: [maps.example.org], routes: [{{ match: {{ prefix: / }}, cluster: up }}] }}] }}
clusters:
  - name: up
    endpoints: ["127.0.0.1:1"]
    tls: {{ ca: "{}", client_cert: "{}", client_key: "{}" }}
"#,
            p("certs/maps.crt"),
            p("certs/maps.key"),
            p("mesh/ca.pem"),
            p("certs/client.crt"),
            p("certs/client.key"),
        ))
    }

    #[test]
    fn writes_what_is_missing_once_and_keeps_it_after() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let config = tls_config(dir.path());

        let outcomes = write_missing(&config).unwrap();

        let ca_cert = dir.path().join("certs").join(CA_CERT);
        assert!(
            matches!(&outcomes[0], Outcome::CaCreated { cert, .. } if *cert == display(&ca_cert))
        );
        assert!(
            matches!(&outcomes[1], Outcome::Issued { names, .. } if names[0] == "maps.example.org")
        );
        assert!(matches!(&outcomes[2], Outcome::Issued { names, .. } if names == &["maps1009"]));
        assert!(matches!(&outcomes[3], Outcome::CaCopied { .. }));
        let ca_pem = std::fs::read_to_string(&ca_cert).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("mesh/ca.pem")).unwrap(),
            ca_pem
        );
        for key in [
            "certs/maps.key",
            "certs/client.key",
            &format!("certs/{CA_KEY}"),
        ] {
            let mode = std::fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let maps = std::fs::read(dir.path().join("certs/maps.crt")).unwrap();

        let again = write_missing(&config).unwrap();
        assert!(
            again.iter().all(|o| matches!(o, Outcome::Kept { .. })),
            "{again:?}"
        );
        assert_eq!(
            std::fs::read(dir.path().join("certs/maps.crt")).unwrap(),
            maps
        );

        // A pair removed is issued again by the same CA, read back from its files.
        std::fs::remove_file(dir.path().join("certs/maps.crt")).unwrap();
        std::fs::remove_file(dir.path().join("certs/maps.key")).unwrap();
        let reissued = write_missing(&config).unwrap();
        assert!(
            matches!(&reissued[0], Outcome::Issued { .. }),
            "{reissued:?}"
        );
        let ca = LocalCa::read(&ca_cert, &dir.path().join("certs").join(CA_KEY)).unwrap();
        let leaf = std::fs::read(dir.path().join("certs/maps.crt")).unwrap();
        let leaf = CertificateDer::from_pem_slice(&leaf).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        let (_, ca_parsed) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        assert_eq!(parsed.issuer(), ca_parsed.subject());
        parsed
            .verify_signature(Some(ca_parsed.public_key()))
            .unwrap();
    }

    #[test]
    fn half_a_pair_stops_everything_before_a_file_is_written() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("certs")).unwrap();
        std::fs::write(dir.path().join("certs/client.key"), "key").unwrap();
        let config = tls_config(dir.path());

        let e = write_missing(&config).unwrap_err();

        assert!(matches!(e, DevCertError::HalfPair { .. }), "{e}");
        assert!(e.to_string().contains("clusters.up.tls.client_cert"), "{e}");
        assert!(e.to_string().contains("client.crt"), "{e}");
        assert!(!dir.path().join("certs/maps.crt").exists());
        assert!(!dir.path().join("certs").join(CA_CERT).exists());
    }
}

//! Which local files a pushed resource may name: only those the bootstrap lists in
//! `xds.allow_files`. A control plane (or whoever controls it) must not make this proxy read a
//! key, certificate or password file the host's operator did not hand to it.

use crate::config::model::{self, is_plain_absolute};

/// Why a named file is refused, with the field path and the file.
pub fn refused(path: &str, file: &str, allow: &[String]) -> Option<String> {
    if allowed(file, allow) {
        return None;
    }
    let why = if is_plain_absolute(file) {
        "is not in the bootstrap's xds.allow_files"
    } else {
        "is not a plain absolute path (no `.` or `..` parts), as a pushed resource must give"
    };
    Some(format!(
        "{path}: {file:?} {why}: a pushed resource may name only the local files the bootstrap allows"
    ))
}

/// An exact entry, or one ending in `/` that holds the file (at any depth).
fn allowed(file: &str, allow: &[String]) -> bool {
    is_plain_absolute(file)
        && allow.iter().any(|entry| match entry.strip_suffix('/') {
            Some(_) => file.starts_with(entry.as_str()),
            None => file == entry,
        })
}

/// The refusals for a pushed listener: its TLS certificates, keys and client CA.
pub fn listener(l: &model::Listener, allow: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let Some(tls) = &l.tls else { return out };
    let base = format!("listeners[{}].tls", l.name);
    for (i, pair) in tls.certificates.iter().enumerate() {
        out.extend(refused(
            &format!("{base}.certificates[{i}].cert"),
            &pair.cert,
            allow,
        ));
        out.extend(refused(
            &format!("{base}.certificates[{i}].key"),
            &pair.key,
            allow,
        ));
    }
    if let Some(auth) = &tls.client_auth {
        out.extend(refused(&format!("{base}.client_auth.ca"), &auth.ca, allow));
    }
    out
}

/// The refusals for a pushed cluster: its TLS files, and a Postgres check's credentials,
/// which come only from the bootstrap or the files it allows (an inline password is the
/// control plane's, not the host's).
pub fn cluster(c: &model::Cluster, allow: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let base = format!("clusters[{}]", c.name);
    if let Some(tls) = &c.tls {
        for (field, file) in [
            ("ca", &tls.ca),
            ("client_cert", &tls.client_cert),
            ("client_key", &tls.client_key),
        ] {
            if let Some(file) = file {
                out.extend(refused(&format!("{base}.tls.{field}"), file, allow));
            }
        }
    }
    if let Some(pg) = c.health_check.as_ref().and_then(|h| h.postgres.as_ref()) {
        if let Some(file) = &pg.password_file {
            let path = format!("{base}.health_check.postgres.password_file");
            out.extend(refused(&path, file, allow));
        }
        if pg.password.is_some() {
            out.push(format!(
                "{base}.health_check.postgres.password: not accepted from the control plane \
                 (it would be sent to the endpoints the push chose); give a password_file \
                 the bootstrap's xds.allow_files lists, or the check in the bootstrap"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow() -> Vec<String> {
        vec!["/etc/legate/pushed/".into(), "/etc/ssl/mesh-ca.pem".into()]
    }

    #[test]
    fn only_listed_plain_absolute_paths_pass() {
        for ok in [
            "/etc/legate/pushed/tiles.key",
            "/etc/legate/pushed/a/b.pem",
            "/etc/ssl/mesh-ca.pem",
        ] {
            assert_eq!(refused("f", ok, &allow()), None, "{ok}");
        }
        for (bad, says) in [
            (
                "/etc/legate/pushed/../secret.key",
                "not a plain absolute path",
            ),
            ("/etc/legate/pushed/./x", "not a plain absolute path"),
            ("/etc/legate/pushed//x", "not a plain absolute path"),
            ("etc/legate/pushed/x", "not a plain absolute path"),
            (
                "/etc/legate/pushed",
                "not in the bootstrap's xds.allow_files",
            ),
            (
                "/etc/legate/pushedx/y",
                "not in the bootstrap's xds.allow_files",
            ),
            (
                "/etc/ssl/mesh-ca.pem.bak",
                "not in the bootstrap's xds.allow_files",
            ),
            (
                "/etc/legate/legate.key",
                "not in the bootstrap's xds.allow_files",
            ),
        ] {
            let e = refused("clusters[c].tls.ca", bad, &allow()).unwrap();
            assert!(e.starts_with("clusters[c].tls.ca: "), "{e}");
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(refused("f", "/etc/ssl/mesh-ca.pem", &[]).is_some());
    }
}

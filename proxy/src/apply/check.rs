//! The check stage: the rules of configs assembled from several sources, and the files every
//! config names (TLS certificates, keys and CAs).

use std::net::SocketAddr;

use tracing::warn;

use crate::config::{self, Checked, Config, ConfigError, ConfigErrors, ErrorKind, FieldPath};
use crate::tls;

/// Checks an assembled config: its rules and its files, every problem of both at once.
pub fn assembled(config: Config) -> Result<Checked, ConfigErrors> {
    let files = files(&config);
    match config::check(config) {
        Ok(checked) if files.errors.is_empty() => {
            log_warnings(&files.warnings);
            Ok(checked)
        }
        Ok(_) => Err(ConfigErrors(files.errors)),
        Err(ConfigErrors(mut errors)) => {
            errors.extend(files.errors);
            Err(ConfigErrors(errors))
        }
    }
}

/// Checks the files a config names: the errors, if any (warnings are logged).
pub fn files_ok(config: &Config) -> Result<(), ConfigErrors> {
    let findings = files(config);
    if findings.errors.is_empty() {
        log_warnings(&findings.warnings);
        Ok(())
    } else {
        Err(ConfigErrors(findings.errors))
    }
}

/// The files a config names: readable, parseable, matching, not expired, covering the
/// listener's hosts; and, as a warning, an admin listener reachable beyond loopback
/// (`legate validate` prints the warnings, start and reload log them).
pub fn files(config: &Config) -> tls::check::Findings {
    let mut findings = tls::check::check(config);
    findings.warnings.extend(exposed_admin(config));
    findings
}

/// The admin listener serves `POST /reload` and the whole config: off loopback, anyone who
/// reaches the port can use them.
fn exposed_admin(config: &Config) -> Option<ConfigError> {
    let addr: SocketAddr = config.admin.listen.parse().ok()?;
    (!addr.ip().is_loopback()).then(|| ConfigError {
        kind: ErrorKind::Invalid,
        entry: None,
        path: FieldPath::root("admin").field("listen"),
        line: None,
        message: format!(
            "{addr} is not a loopback address: whoever reaches it can reload and read the \
             config; serve probes from outside on `probes.listen` instead"
        ),
    })
}

fn log_warnings(warnings: &[ConfigError]) {
    for w in warnings {
        warn!(warning = %w, "config applied with a warning");
    }
}

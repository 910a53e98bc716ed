//! The check stage: the rules of configs assembled from several sources, and the files every
//! config names (TLS certificates, keys and CAs).

use tracing::warn;

use crate::config::{self, Checked, Config, ConfigError, ConfigErrors};
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
/// listener's hosts (`legate validate` prints the warnings).
pub fn files(config: &Config) -> tls::check::Findings {
    tls::check::check(config)
}

fn log_warnings(warnings: &[ConfigError]) {
    for w in warnings {
        warn!(warning = %w, "config applied with a warning");
    }
}

//! The check stage: the rules of configs assembled from several sources, and the files every
//! config names (TLS certificates, keys and CAs).

use crate::config::{self, Checked, Config, ConfigError, ConfigErrors};
use crate::tls;

/// Checks an assembled config; on success returns it checked, with the warnings (problems
/// that do not reject it).
pub fn assembled(config: Config) -> Result<(Checked, Vec<ConfigError>), ConfigErrors> {
    let checked = config::check(config)?;
    let warnings = files_ok(&checked)?;
    Ok((checked, warnings))
}

/// Checks the files a checked config names; the warnings, or the errors.
pub fn files_ok(config: &Config) -> Result<Vec<ConfigError>, ConfigErrors> {
    let findings = files(config);
    if findings.errors.is_empty() {
        Ok(findings.warnings)
    } else {
        Err(ConfigErrors(findings.errors))
    }
}

/// The files a config names: readable, parseable, matching, not expired, covering the
/// listener's hosts (`legate validate` prints the warnings).
pub fn files(config: &Config) -> tls::check::Findings {
    tls::check::check(config)
}

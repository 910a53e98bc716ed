//! The check stage: the config's own rules for configs assembled from several sources, and
//! the files every config names (TLS certificates, keys and CAs).

use crate::config::{validate, Config, ConfigError, ConfigErrors};
use crate::tls;

/// Whether the config still needs its own rules checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rules {
    /// `config::parse` (or `config::validate`) already accepted it as it is.
    Checked,
    /// It was assembled after parsing (a bootstrap file plus control plane resources).
    Unchecked,
}

/// Checks `config`; on success returns the warnings (problems that do not reject it).
pub fn check(config: &Config, rules: Rules) -> Result<Vec<ConfigError>, ConfigErrors> {
    let mut errors = match rules {
        Rules::Checked => Vec::new(),
        Rules::Unchecked => validate::validate(config),
    };
    let files = files(config);
    errors.extend(files.errors);
    if errors.is_empty() {
        Ok(files.warnings)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The files a config names: readable, parseable, matching, not expired, covering the
/// listener's hosts (`legate validate` prints the warnings).
pub fn files(config: &Config) -> tls::check::Findings {
    tls::check::check(config)
}

//! Semantic checks serde cannot express: addresses, references, ranges and exclusive choices.

mod clusters;
mod dns;
mod listeners;
mod rate_limits;
mod route_names;
mod routes;
mod runtime;
mod tls;
mod xds;

use std::collections::HashSet;

use super::{Config, ConfigError, Duration, Entry, ErrorKind, FieldPath, Values};

pub use crate::config::checked::EndpointAddress;
pub use clusters::parse_endpoint_address;
pub use rate_limits::spec_of;
pub use route_names::default_route_name;
pub use routes::full_match_regex;

/// Upper bound of `weight` for split targets and endpoints.
pub const MAX_WEIGHT: u32 = 10_000;
/// Smallest `http.max_header_size`: the smallest read buffer hyper accepts.
pub const MIN_HEADER_SIZE: usize = 8 * 1024;
/// Smallest `http.max_uri_length`: below it, ordinary links with a query string fail.
pub const MIN_URI_LENGTH: usize = 256;
/// Largest `http.max_header_size`: more than 1 MiB of headers is abuse, not traffic.
pub const MAX_HEADER_SIZE: usize = 1024 * 1024;
/// Largest `runtime.workers` (the smallest is 1).
pub const MAX_WORKERS: usize = 1024;
/// Largest `retry.attempts`, counting the first try (the smallest is 1).
pub const MAX_ATTEMPTS: u32 = 10;

/// What the loader knows that a `Config` lost: where entries came from and which ones failed
/// to deserialize, so validation reports the user's indices and skips follow-on errors.
#[derive(Debug, Default, Clone)]
pub struct Provenance {
    /// Index in the file of each entry of `Config::listeners`; empty means the same index.
    pub listener_index: Vec<usize>,
    /// Index in the file of each entry of `Config::clusters`; empty means the same index.
    pub cluster_index: Vec<usize>,
    /// `admin` failed to deserialize, so `Config::admin` is a stand-in default.
    pub admin_broken: bool,
    /// Clusters that exist in the file but failed to deserialize.
    pub broken_clusters: Names,
    /// Route tables that exist in the file but failed to deserialize.
    pub broken_route_tables: Names,
    /// Fields taken out of entries that are checked without them (each already reported).
    pub taken_out: Vec<FieldPath>,
    /// Some listener could not be read as written, so what the listeners serving a route
    /// table set (`merge_slashes`) is not known for sure.
    pub listeners_unsure: bool,
}

impl Provenance {
    /// Whether `error` may follow from a taken-out field: it lies below one, or it is a
    /// value rule reported beside one or above it (where rules that read several fields
    /// report). References and duplicates name their own field and stand.
    fn hides(&self, error: &ConfigError) -> bool {
        let path = &error.path;
        let parent = path.parent();
        self.taken_out.iter().any(|t| {
            path.starts_with(t)
                || (error.kind == ErrorKind::Invalid
                    && (t.starts_with(path) || t.parent() == parent))
        })
    }
}

/// Names of entries that failed to deserialize.
#[derive(Debug, Default, Clone)]
pub struct Names {
    pub names: HashSet<String>,
    /// Some entry's name could not be read, so any name might belong to it.
    pub unreadable: bool,
}

impl Names {
    /// Whether `name` may refer to one of these entries.
    pub fn covers(&self, name: &str) -> bool {
        self.unreadable || self.names.contains(name)
    }
}

/// Check a config built in code (every index is its own).
pub fn validate(config: &Config) -> Vec<ConfigError> {
    validate_with(config, &Provenance::default()).0
}

/// Check a config the loader assembled, possibly from a partly broken file. Returns every
/// problem, and the values parsed on the way (meaningful only when there is no problem).
pub fn validate_with(config: &Config, provenance: &Provenance) -> (Vec<ConfigError>, Values) {
    let mut v = Validator {
        config,
        provenance,
        cluster_names: config.clusters.iter().map(|c| c.name.as_str()).collect(),
        cluster_set: config.clusters.iter().map(|c| c.name.as_str()).collect(),
        errors: Vec::new(),
        entry: None,
        values: Values::default(),
    };
    v.runtime();
    v.dns();
    v.xds();
    v.listeners();
    for (name, table) in &config.route_tables {
        v.route_table(name, table);
    }
    v.clusters();
    let mut errors = v.errors;
    if !provenance.taken_out.is_empty() {
        errors.retain(|e| !provenance.hides(e));
    }
    (errors, v.values)
}

struct Validator<'a> {
    config: &'a Config,
    provenance: &'a Provenance,
    /// In file order, so suggestions are deterministic.
    cluster_names: Vec<&'a str>,
    /// The same names, for lookups: big configs have many routes and many clusters.
    cluster_set: HashSet<&'a str>,
    errors: Vec<ConfigError>,
    /// The listener, route table or cluster being checked, which errors are stamped with.
    entry: Option<Entry>,
    /// What checking parsed, for compile.
    values: Values,
}

impl Validator<'_> {
    fn error(&mut self, path: impl Into<FieldPath>, message: impl Into<String>) {
        self.error_kind(ErrorKind::Invalid, path, message);
    }

    fn error_kind(
        &mut self,
        kind: ErrorKind,
        path: impl Into<FieldPath>,
        message: impl Into<String>,
    ) {
        self.errors.push(ConfigError {
            kind,
            entry: self.entry.clone(),
            path: path.into(),
            line: None,
            message: message.into(),
        });
    }

    fn positive(&mut self, path: impl Into<FieldPath>, d: Duration) {
        if d.get().is_zero() {
            self.error(path, "must be greater than zero");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::validate;
    use crate::config::model::Cluster;

    #[test]
    fn validates_configs_built_in_code() {
        let mut config = crate::config::load::defaults();
        assert!(validate(&config).is_empty());
        let mut cluster: Cluster =
            serde_yaml::from_str("{ name: x, max_idle_connections: 1, idle_timeout: 1s }").unwrap();
        cluster.endpoints.push(crate::config::model::Endpoint {
            address: "1.2.3.4".into(),
            weight: 1,
            pooled: true,
            zone: None,
        });
        config.clusters.push(cluster);
        let errors = validate(&config);
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].path.to_string(),
            "clusters[0].endpoints[0].address"
        );
        assert_eq!(errors[0].line, None);
    }
}

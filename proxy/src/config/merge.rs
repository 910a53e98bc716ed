//! A bootstrap config plus the control plane's resources, as one config to check.

use std::collections::BTreeMap;

use super::model::{Cluster, Config, Listener, RouteTable};
use super::{ConfigError, Entry, ErrorKind, Section};

/// The parts of a config a control plane gives: listeners, route tables, and clusters with
/// their endpoints.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub listeners: Vec<Listener>,
    pub route_tables: BTreeMap<String, RouteTable>,
    pub clusters: Vec<Cluster>,
}

/// `bootstrap` with `resources` added after its own entries. A route table both define is an
/// error; everything else is left to validation.
pub fn merge(bootstrap: &Config, resources: &Resources) -> Result<Config, Vec<ConfigError>> {
    let mut config = bootstrap.clone();
    let mut errors = Vec::new();
    config.listeners.extend(resources.listeners.iter().cloned());
    for (name, table) in &resources.route_tables {
        if config
            .route_tables
            .insert(name.clone(), table.clone())
            .is_some()
        {
            let entry = Entry {
                section: Section::RouteTables,
                name: name.clone(),
                index: None,
            };
            errors.push(
                ConfigError::new(
                    ErrorKind::Duplicate,
                    entry.path(),
                    "defined both in the bootstrap file and by the control plane",
                )
                .in_entry(entry),
            );
        }
    }
    config.clusters.extend(resources.clusters.iter().cloned());
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_follow_the_bootstrap_and_tables_may_not_clash() {
        let table: RouteTable = serde_yaml::from_str(
            "virtual_hosts: [{ hosts: ['*'], routes: [{ match: { prefix: / }, cluster: a }] }]",
        )
        .unwrap();
        let bootstrap = Config {
            route_tables: BTreeMap::from([("local".to_owned(), table.clone())]),
            clusters: vec![serde_yaml::from_str("name: a").unwrap()],
            ..Config::default()
        };
        let mut resources = Resources {
            clusters: vec![Cluster {
                name: "b".into(),
                ..bootstrap.clusters[0].clone()
            }],
            ..Resources::default()
        };
        resources
            .route_tables
            .insert("remote".into(), table.clone());
        let merged = merge(&bootstrap, &resources).unwrap();
        let names: Vec<_> = merged.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(merged.route_tables.len(), 2);

        resources.route_tables.insert("local".into(), table);
        let errors = merge(&bootstrap, &resources).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].kind, ErrorKind::Duplicate);
        assert_eq!(errors[0].path.to_string(), "route_tables.local");
    }
}

//! The control plane's resources as held, and their decoding into config model: each resource decoded on its own,
//! errors named by resource and field path (xDS-lite R9, R10).

use std::collections::{BTreeMap, HashMap};

use legate_xds::protocol::{self, EndpointsResource, Message, ResourceError, ResourceType};

use crate::config::merge::Resources;
use crate::config::model;
use crate::config::{ConfigError, ErrorKind, Section};

/// The resources held from the control plane.
#[derive(Debug, Clone, Default)]
pub struct Held {
    pub sotw: HashMap<ResourceType, (String, Vec<serde_json::Value>)>,
    pub endpoints: Option<BTreeMap<String, EndpointsResource>>,
    /// The `system_version_info` of the last endpoints delta applied.
    pub endpoints_version: Option<String>,
}

impl Held {
    pub fn complete(&self) -> bool {
        ResourceType::SOTW.iter().all(|t| self.sotw.contains_key(t)) && self.endpoints.is_some()
    }

    /// The resources of one state-of-the-world type.
    pub fn resources(&self, t: ResourceType) -> &[serde_json::Value] {
        self.sotw.get(&t).map_or(&[], |(_, r)| r.as_slice())
    }

    pub fn version_label(&self) -> String {
        let v = |t| self.sotw.get(&t).map_or("-", |(v, _)| v.as_str());
        let e = self
            .endpoints
            .as_ref()
            .map(|m| {
                let joined: Vec<String> = m.values().map(|r| r.version.clone()).collect();
                protocol::content_version(joined.join(",").as_bytes())
            })
            .unwrap_or_else(|| "-".to_owned());
        format!(
            "xds:l={}/r={}/c={}/e={}",
            v(ResourceType::Listeners),
            v(ResourceType::RouteTables),
            v(ResourceType::Clusters),
            e
        )
    }

    /// What the hello says is held (R7).
    pub fn hello(&self, node: protocol::Node) -> Message {
        Message::Hello {
            node,
            versions: self
                .sotw
                .iter()
                .map(|(t, (v, _))| (*t, v.clone()))
                .chain(
                    self.endpoints_version
                        .iter()
                        .map(|v| (ResourceType::Endpoints, v.clone())),
                )
                .collect(),
            endpoint_versions: self
                .endpoints
                .iter()
                .flat_map(|m| m.values().map(|r| (r.name.clone(), r.version.clone())))
                .collect(),
        }
    }
}

/// Why a resource was rejected.
#[derive(Debug, Clone)]
pub struct Problem {
    pub detail: ResourceError,
    /// The cluster the problem is in, which also names its endpoints resource (R10).
    pub cluster: Option<String>,
    /// A reference to a resource not (or no longer) there, which an update of another type
    /// may resolve.
    pub deferrable: bool,
}

impl Problem {
    fn new(name: String, error: String, cluster: Option<String>) -> Problem {
        Problem {
            detail: ResourceError { name, error },
            cluster,
            deferrable: false,
        }
    }

    /// The detail as a NACK of `resource_type` gives it: endpoints are named by their cluster.
    pub fn for_type(&self, resource_type: ResourceType) -> ResourceError {
        match (&self.cluster, resource_type) {
            (Some(cluster), ResourceType::Endpoints) => ResourceError {
                name: cluster.clone(),
                error: self.detail.error.clone(),
            },
            _ => self.detail.clone(),
        }
    }
}

/// Decodes every resource held; errors name the resource and the field path. A resource
/// naming a local file not in `allow_files` is refused ([`super::files`]).
pub fn decode(held: &Held, allow_files: &[String]) -> Result<Resources, Vec<Problem>> {
    let mut out = Resources::default();
    let mut errors = Vec::new();

    for value in held.resources(ResourceType::Listeners) {
        match decode_one::<model::Listener>(value) {
            Ok(l) => {
                for refusal in super::files::listener(&l, allow_files) {
                    errors.push(Problem::new(
                        format!("listeners[{}]", l.name),
                        refusal,
                        None,
                    ));
                }
                out.listeners.push(l);
            }
            Err(e) => errors.push(resource_error("listeners", value, e)),
        }
    }
    for value in held.resources(ResourceType::RouteTables) {
        let name = name_of(value);
        let mut body = value.clone();
        if let Some(map) = body.as_object_mut() {
            map.remove("name");
        }
        match decode_one::<model::RouteTable>(&body) {
            Ok(t) if !name.is_empty() => {
                if out.route_tables.insert(name.clone(), t).is_some() {
                    errors.push(Problem::new(
                        format!("route_tables[{name}]"),
                        "sent twice".into(),
                        None,
                    ));
                }
            }
            Ok(_) => errors.push(Problem::new(
                "route_tables[?]".into(),
                "a route table resource needs a name".into(),
                None,
            )),
            Err(e) => errors.push(resource_error("route_tables", value, e)),
        }
    }
    let endpoints = held.endpoints.as_ref();
    for value in held.resources(ResourceType::Clusters) {
        match decode_one::<model::Cluster>(value) {
            Ok(mut c) => {
                if let Some(r) = endpoints.and_then(|m| m.get(&c.name)) {
                    let list = serde_json::Value::Array(r.endpoints.clone());
                    match decode_one::<Vec<model::Endpoint>>(&list) {
                        Ok(eps) => c.endpoints = eps,
                        Err(e) => errors.push(Problem::new(
                            format!("endpoints[{}]", c.name),
                            e,
                            Some(c.name.clone()),
                        )),
                    }
                }
                for refusal in super::files::cluster(&c, allow_files) {
                    errors.push(Problem::new(
                        format!("clusters[{}]", c.name),
                        refusal,
                        Some(c.name.clone()),
                    ));
                }
                out.clusters.push(c);
            }
            Err(e) => {
                let mut problem = resource_error("clusters", value, e);
                problem.cluster = Some(name_of(value)).filter(|n| !n.is_empty());
                errors.push(problem);
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Names a problem of the assembled config by the resource it is in (`clusters[tiles]`),
/// with the path naming it too (`clusters[tiles].connect_timeout: …`).
pub fn name(p: &ConfigError) -> Problem {
    let mut problem = match &p.entry {
        Some(entry) => Problem::new(
            entry.resource_name(),
            format!("{}: {}", entry.named_path(&p.path), p.message),
            (entry.section == Section::Clusters).then(|| entry.name.clone()),
        ),
        None => Problem::new(
            if p.path.is_empty() {
                "*".into()
            } else {
                p.path.to_string()
            },
            p.message.clone(),
            None,
        ),
    };
    problem.deferrable = p.kind == ErrorKind::UnknownReference;
    problem
}

fn decode_one<T: serde::de::DeserializeOwned>(value: &serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
}

fn name_of(value: &serde_json::Value) -> String {
    value
        .get("name")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("")
        .to_owned()
}

fn resource_error(kind: &str, value: &serde_json::Value, error: String) -> Problem {
    let name = name_of(value);
    Problem::new(
        format!("{kind}[{}]", if name.is_empty() { "?" } else { &name }),
        error,
        None,
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::merge::merge;
    use crate::config::model::Config;
    use crate::config::validate::validate;

    pub(crate) fn bootstrap() -> Config {
        crate::config::parse(
            "node: { cluster: maps }\nxds: { server: 127.0.0.1:1 }\nadmin: { listen: 127.0.0.1:0 }",
        )
        .unwrap()
        .into_config()
    }

    pub(crate) fn full() -> Held {
        let mut held = Held::default();
        held.sotw.insert(
            ResourceType::Listeners,
            (
                "l1".into(),
                vec![serde_json::json!({"name": "front", "listen": "127.0.0.1:0", "http": {"route_table": "maps"}})],
            ),
        );
        held.sotw.insert(
            ResourceType::RouteTables,
            (
                "r1".into(),
                vec![serde_json::json!({"name": "maps", "virtual_hosts": [{"hosts": ["*"], "routes": [{"match": {"prefix": "/"}, "cluster": "tiles"}]}]})],
            ),
        );
        held.sotw.insert(
            ResourceType::Clusters,
            ("c1".into(), vec![serde_json::json!({"name": "tiles"})]),
        );
        held.endpoints = Some(BTreeMap::from([(
            "tiles".to_owned(),
            EndpointsResource {
                name: "tiles".into(),
                version: "e1".into(),
                endpoints: vec![
                    serde_json::json!("127.0.0.1:4000"),
                    serde_json::json!({"address": "127.0.0.1:4001", "weight": 3}),
                ],
            },
        )]));
        held
    }

    #[test]
    fn assembles_a_complete_set() {
        let config = merge(&bootstrap(), &decode(&full(), &[]).unwrap()).unwrap();
        assert!(validate(&config).is_empty());
        assert_eq!(config.listeners[0].name, "front");
        assert_eq!(config.clusters[0].endpoints.len(), 2);
        assert_eq!(config.clusters[0].endpoints[1].weight, 3);
        assert!(full().complete());
        assert!(full().version_label().starts_with("xds:l=l1/r=r1/c=c1/e="));
    }

    /// The problems the applier's check finds in a decoded set, named as a NACK names them.
    fn checked(held: &Held) -> Vec<ResourceError> {
        let config = merge(&bootstrap(), &decode(held, &[]).unwrap()).unwrap();
        validate(&config).iter().map(|p| name(p).detail).collect()
    }

    #[test]
    fn errors_name_the_resource_and_the_field() {
        let mut held = full();
        held.sotw.insert(
            ResourceType::Clusters,
            (
                "c2".into(),
                vec![
                    serde_json::json!({"name": "tiles", "connect_timeout": "0s"}),
                    serde_json::json!({"name": "other", "bogus": 1}),
                ],
            ),
        );
        let errors: Vec<_> = decode(&held, &[])
            .unwrap_err()
            .into_iter()
            .map(|p| p.detail)
            .collect();
        assert_eq!(errors[0].name, "clusters[other]");
        assert!(errors[0].error.contains("bogus"), "{errors:?}");

        held.sotw.insert(
            ResourceType::Clusters,
            (
                "c3".into(),
                vec![serde_json::json!({"name": "tiles", "connect_timeout": "0s"})],
            ),
        );
        let errors = checked(&held);
        assert_eq!(errors[0].name, "clusters[tiles]");
        assert!(
            errors[0]
                .error
                .starts_with("clusters[tiles].connect_timeout:"),
            "{errors:?}"
        );

        // A route to a cluster that no resource defines is a consistency error.
        held.sotw
            .insert(ResourceType::Clusters, ("c4".into(), vec![]));
        let errors = checked(&held);
        assert_eq!(errors[0].name, "route_tables[maps]");
        assert!(
            errors[0].error.contains("unknown cluster \"tiles\""),
            "{errors:?}"
        );
    }

    #[test]
    fn endpoints_problems_are_named_by_their_cluster() {
        let mut held = full();
        if let Some(map) = held.endpoints.as_mut() {
            map.insert(
                "tiles".into(),
                EndpointsResource {
                    name: "tiles".into(),
                    version: "e2".into(),
                    endpoints: vec![serde_json::json!({"address": 5})],
                },
            );
        }
        let problems = decode(&held, &[]).unwrap_err();
        assert_eq!(problems[0].detail.name, "endpoints[tiles]");
        assert_eq!(problems[0].for_type(ResourceType::Endpoints).name, "tiles");
        assert_eq!(
            problems[0].for_type(ResourceType::Clusters).name,
            "endpoints[tiles]"
        );
    }

    #[test]
    fn pushed_resources_name_only_the_local_files_the_bootstrap_allows() {
        let mut held = full();
        held.sotw.insert(
            ResourceType::Clusters,
            (
                "c3".into(),
                vec![
                    serde_json::json!({
                        "name": "tiles",
                        "health_check": { "postgres": { "user": "maps", "password_file": "/etc/legate/pg-password" } }
                    }),
                    serde_json::json!({
                        "name": "search",
                        "tls": { "client_cert": "/etc/legate/pushed/search.pem", "client_key": "/etc/legate/host.key" },
                        "health_check": { "postgres": { "password": "hunter2" } }
                    }),
                ],
            ),
        );
        held.sotw.insert(
            ResourceType::Listeners,
            (
                "l3".into(),
                vec![serde_json::json!({
                    "name": "secure", "listen": "127.0.0.1:0", "http": { "route_table": "maps" },
                    "tls": { "certificates": [{ "cert": "/etc/legate/pushed/a.pem", "key": "/root/.ssh/id_ed25519" }] }
                })],
            ),
        );
        let errors = |allow: &[String]| -> Vec<String> {
            match decode(&held, allow) {
                Ok(_) => Vec::new(),
                Err(problems) => problems.iter().map(|p| p.detail.error.clone()).collect(),
            }
        };
        let none = errors(&[]);
        assert_eq!(none.len(), 6, "{none:#?}");
        assert!(
            none[0].starts_with(
                "listeners[secure].tls.certificates[0].cert: \"/etc/legate/pushed/a.pem\" is not in the bootstrap's xds.allow_files"
            ),
            "{none:#?}"
        );
        assert!(none[2].starts_with(
            "clusters[tiles].health_check.postgres.password_file: \"/etc/legate/pg-password\" is not in"
        ));
        assert!(
            none[5].starts_with("clusters[search].health_check.postgres.password: not accepted"),
            "{none:#?}"
        );
        let problems = decode(&held, &[]).unwrap_err();
        assert_eq!(problems[2].detail.name, "clusters[tiles]");
        assert_eq!(problems[2].cluster.as_deref(), Some("tiles"));

        // Listed files pass; the rest (a key outside, an inline password) still do not.
        let allow = [
            "/etc/legate/pushed/".to_owned(),
            "/etc/legate/pg-password".to_owned(),
        ];
        let some = errors(&allow);
        assert_eq!(some.len(), 3, "{some:#?}");
        assert!(some[0].contains("\"/root/.ssh/id_ed25519\""), "{some:#?}");
        assert!(some[1].contains("\"/etc/legate/host.key\""), "{some:#?}");
        assert!(
            some[2].contains("postgres.password: not accepted"),
            "{some:#?}"
        );
    }
}

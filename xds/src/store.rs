//! The resources the control plane serves: node groups read from a directory of YAML files,
//! with the operator overrides (`crate::overrides`) applied, and the content-derived versions
//! (PROTOCOL.md R5, R6, R14).
//!
//! Everything here is pure except [`load_dir`], which reads the directory: the server owns the
//! I/O and the clock.
//!
//! Layout: `DIR/<group>/*.yaml` (or `*.yml`), each file holding any of the sections
//! `listeners`, `route_tables` and `clusters` of Legate's config schema. The files of a group
//! are merged; a name defined twice is an error for the whole group.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};

pub use crate::overrides::{
    apply_override, EndpointOverride, Operation, OperatorError, OperatorRequest, Overrides,
};
use crate::protocol::{content_version, EndpointsResource, ResourceType};
pub use crate::splits::MAX_WEIGHT;
use crate::splits::{self, RouteChange, RouteRequest};

/// Why a group's files were rejected. The group keeps serving its last good resources.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("{file}: cannot read: {error}")]
    Read { file: String, error: String },
    #[error("{file}: {error}")]
    Invalid { file: String, error: String },
    #[error("{kind} {name:?} is defined in {first} and again in {second}")]
    Duplicate {
        kind: &'static str,
        name: String,
        first: String,
        second: String,
    },
}

/// The resources of one node group as its files define them, endpoints included.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupSource {
    /// Listener objects by name.
    pub listeners: BTreeMap<String, Value>,
    /// Route table bodies (`{ virtual_hosts: [...] }`) by name.
    pub route_tables: BTreeMap<String, Value>,
    /// Cluster objects (with their `endpoints`) by name.
    pub clusters: BTreeMap<String, Value>,
}

/// What one file defines, before merging.
#[derive(Debug, Default)]
struct FileSections {
    listeners: Vec<(String, Value)>,
    route_tables: Vec<(String, Value)>,
    clusters: Vec<(String, Value)>,
}

/// Every group found under a directory: the group's name and its merged files, or why not.
pub type LoadedGroups = BTreeMap<String, Result<GroupSource, Vec<LoadError>>>;

/// Reads `dir/<group>/*.yaml` for every group directory. Hidden entries (`.x`, and
/// Kubernetes' `..data`) are skipped as groups and as files; files directly in `dir` are
/// ignored. Fails only when `dir` itself cannot be listed.
pub fn load_dir(dir: &Path) -> std::io::Result<LoadedGroups> {
    let mut groups = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        groups.insert(name, load_group(&entry.path()));
    }
    Ok(groups)
}

/// Reads and merges one group's files, sorted by name.
pub fn load_group(dir: &Path) -> Result<GroupSource, Vec<LoadError>> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        vec![LoadError::Read {
            file: dir.display().to_string(),
            error: e.to_string(),
        }]
    })?;
    let mut paths = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if is_yaml && !name.starts_with('.') && entry.path().is_file() {
            paths.push(entry.path());
        }
    }
    paths.sort();
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let file = path.display().to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => files.push((file, text)),
            Err(e) => errors.push(LoadError::Read {
                file,
                error: e.to_string(),
            }),
        }
    }
    match merge_files(&files) {
        Ok(source) if errors.is_empty() => Ok(source),
        Ok(_) => Err(errors),
        Err(more) => {
            errors.extend(more);
            Err(errors)
        }
    }
}

/// Parses and merges a group's files (`(file name, text)`), reporting every problem.
pub fn merge_files(files: &[(String, String)]) -> Result<GroupSource, Vec<LoadError>> {
    let mut errors = Vec::new();
    let mut source = GroupSource::default();
    // Which file defined each name, to report duplicates.
    let mut origin: BTreeMap<(&'static str, String), String> = BTreeMap::new();
    for (file, text) in files {
        let sections = match parse_file(text) {
            Ok(s) => s,
            Err(error) => {
                errors.push(LoadError::Invalid {
                    file: file.clone(),
                    error,
                });
                continue;
            }
        };
        let kinds = [
            ("listener", sections.listeners, &mut source.listeners),
            (
                "route table",
                sections.route_tables,
                &mut source.route_tables,
            ),
            ("cluster", sections.clusters, &mut source.clusters),
        ];
        for (kind, items, into) in kinds {
            for (name, value) in items {
                if let Some(first) = origin.get(&(kind, name.clone())) {
                    errors.push(LoadError::Duplicate {
                        kind,
                        name,
                        first: first.clone(),
                        second: file.clone(),
                    });
                    continue;
                }
                origin.insert((kind, name.clone()), file.clone());
                into.insert(name, value);
            }
        }
    }
    if errors.is_empty() {
        Ok(source)
    } else {
        Err(errors)
    }
}

/// One file's sections. Errors name the config path, like Legate's own validation.
fn parse_file(text: &str) -> Result<FileSections, String> {
    let mut yaml: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    yaml.apply_merge().map_err(|e| e.to_string())?;
    let root = yaml_to_json(yaml, "")?;
    let mut sections = FileSections::default();
    let root = match root {
        Value::Null => return Ok(sections),
        Value::Object(map) => map,
        _ => return Err("the top level must be a mapping of sections".into()),
    };
    for (key, value) in root {
        match key.as_str() {
            "listeners" => sections.listeners = named_list("listeners", value)?,
            "clusters" => {
                sections.clusters = named_list("clusters", value)?;
                for (name, cluster) in &sections.clusters {
                    check_endpoints(name, cluster)?;
                }
            }
            "route_tables" => match value {
                Value::Null => {}
                Value::Object(tables) => {
                    for (name, table) in tables {
                        if name.is_empty() {
                            return Err("route_tables: a route table name must not be empty".into());
                        }
                        if !table.is_object() {
                            return Err(format!("route_tables.{name}: expected a mapping"));
                        }
                        sections.route_tables.push((name, table));
                    }
                }
                _ => return Err("route_tables: expected a mapping of name to route table".into()),
            },
            other => {
                return Err(format!(
                    "unknown section {other:?} (a group file holds listeners, route_tables and clusters)"
                ))
            }
        }
    }
    Ok(sections)
}

/// A list of objects, each with a non-empty string `name`.
fn named_list(section: &str, value: Value) -> Result<Vec<(String, Value)>, String> {
    let items = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        _ => return Err(format!("{section}: expected a list")),
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let name = match item.get("name") {
            Some(Value::String(n)) if !n.is_empty() => n.clone(),
            _ if !item.is_object() => return Err(format!("{section}[{i}]: expected a mapping")),
            _ => {
                return Err(format!(
                    "{section}[{i}].name: a non-empty string is required"
                ))
            }
        };
        out.push((name, item));
    }
    Ok(out)
}

/// Endpoints must be understood here, for operator overrides: `"addr"` or `{address, ...}`,
/// each address once per cluster.
fn check_endpoints(cluster: &str, value: &Value) -> Result<(), String> {
    let endpoints = match value.get("endpoints") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(e)) => e,
        Some(_) => return Err(format!("clusters[{cluster}].endpoints: expected a list")),
    };
    let mut seen = BTreeSet::new();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let Some(address) = endpoint_address(endpoint) else {
            return Err(format!(
                "clusters[{cluster}].endpoints[{i}]: expected \"ip:port\" or a mapping with a string address"
            ));
        };
        if !seen.insert(address) {
            return Err(format!(
                "clusters[{cluster}].endpoints[{i}].address: {address:?} appears twice in the cluster"
            ));
        }
    }
    Ok(())
}

/// The address of an endpoint in the config schema: `"ip:port"` or `{ address: ... }`.
pub fn endpoint_address(endpoint: &Value) -> Option<&str> {
    match endpoint {
        Value::String(s) => Some(s),
        Value::Object(map) => map.get("address").and_then(Value::as_str),
        _ => None,
    }
}

/// YAML to JSON: tags are ignored (as Legate does), scalar keys become strings.
fn yaml_to_json(value: serde_yaml::Value, path: &str) -> Result<Value, String> {
    use serde_yaml::Value as Y;
    Ok(match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .ok_or_else(|| format!("{}: {f} is not a finite number", show(path)))?
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| yaml_to_json(v, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let key = match k {
                    Y::String(s) => s,
                    Y::Bool(b) => b.to_string(),
                    Y::Number(n) => n.to_string(),
                    Y::Tagged(t) => match t.value {
                        Y::String(s) => s,
                        _ => return Err(format!("{}: a key must be a scalar", show(path))),
                    },
                    _ => return Err(format!("{}: a key must be a scalar", show(path))),
                };
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                out.insert(key, yaml_to_json(v, &child)?);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => yaml_to_json(t.value, path)?,
    })
}

fn show(path: &str) -> &str {
    if path.is_empty() {
        "(top level)"
    } else {
        path
    }
}

/// JSON with object keys sorted at every level, whatever serde_json's map order is, so a
/// version depends only on content (R14).
pub fn canonical_json(value: &Value) -> Vec<u8> {
    fn write(value: &Value, out: &mut Vec<u8>) {
        match value {
            Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(item, out);
                }
                out.push(b']');
            }
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push(b'{');
                for (i, key) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(Value::String(key.clone()).to_string().as_bytes());
                    out.push(b':');
                    if let Some(v) = map.get(key) {
                        write(v, out);
                    }
                }
                out.push(b'}');
            }
            scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
        }
    }
    let mut out = Vec::new();
    write(value, &mut out);
    out
}

/// The version of a value: a hash of its canonical JSON.
pub fn version_of(value: &Value) -> String {
    content_version(&canonical_json(value))
}

/// The resources of one type, as sent in a state-of-the-world response (R8).
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    pub version: String,
    pub resources: Vec<Value>,
}

impl Versioned {
    fn new(resources: Vec<Value>) -> Versioned {
        let version = content_version(&canonical_json(&Value::Array(resources.clone())));
        Versioned { version, resources }
    }
}

/// Everything one node group is served, with versions.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSnapshot {
    pub listeners: Versioned,
    pub route_tables: Versioned,
    pub clusters: Versioned,
    /// One endpoints resource per cluster, by cluster name (R9).
    pub endpoints: BTreeMap<String, EndpointsResource>,
    /// The version of the whole endpoints set: a hash of every cluster's endpoints version.
    pub endpoints_version: String,
}

impl GroupSnapshot {
    /// Builds a group's resources: lists sorted by name, clusters without their endpoints,
    /// endpoints with `overrides` applied.
    pub fn build(source: &GroupSource, overrides: &Overrides) -> GroupSnapshot {
        let listeners = source.listeners.values().cloned().collect();
        let route_tables = source
            .route_tables
            .iter()
            .map(|(name, table)| {
                let mut t = table.as_object().cloned().unwrap_or_default();
                t.insert("name".into(), Value::String(name.clone()));
                Value::Object(t)
            })
            .collect();
        let mut clusters = Vec::with_capacity(source.clusters.len());
        let mut endpoints = BTreeMap::new();
        for (name, cluster) in &source.clusters {
            let mut c = cluster.as_object().cloned().unwrap_or_default();
            let list = match c.remove("endpoints") {
                Some(Value::Array(list)) => list,
                _ => Vec::new(),
            };
            clusters.push(Value::Object(c));
            let list: Vec<Value> = list
                .iter()
                .map(|e| {
                    let o = endpoint_address(e).and_then(|a| overrides.get(name, a));
                    apply_override(e, o)
                })
                .collect();
            let version = content_version(&canonical_json(&Value::Array(list.clone())));
            endpoints.insert(
                name.clone(),
                EndpointsResource {
                    name: name.clone(),
                    version,
                    endpoints: list,
                },
            );
        }
        let endpoints_version = {
            let map: Map<String, Value> = endpoints
                .iter()
                .map(|(n, r)| (n.clone(), Value::String(r.version.clone())))
                .collect();
            version_of(&Value::Object(map))
        };
        GroupSnapshot {
            listeners: Versioned::new(listeners),
            route_tables: Versioned::new(route_tables),
            clusters: Versioned::new(clusters),
            endpoints,
            endpoints_version,
        }
    }

    /// The resources of a state-of-the-world type; `None` for `endpoints`.
    pub fn sotw(&self, t: ResourceType) -> Option<&Versioned> {
        match t {
            ResourceType::Listeners => Some(&self.listeners),
            ResourceType::RouteTables => Some(&self.route_tables),
            ResourceType::Clusters => Some(&self.clusters),
            ResourceType::Endpoints => None,
        }
    }

    /// The version of each type (for `endpoints`, of the whole set).
    pub fn versions(&self) -> BTreeMap<ResourceType, String> {
        BTreeMap::from([
            (ResourceType::Listeners, self.listeners.version.clone()),
            (ResourceType::RouteTables, self.route_tables.version.clone()),
            (ResourceType::Clusters, self.clusters.version.clone()),
            (ResourceType::Endpoints, self.endpoints_version.clone()),
        ])
    }
}

/// The state of one group's files.
#[derive(Debug, Clone, Default)]
pub struct GroupState {
    /// The last resources that loaded, if any ever did.
    pub good: Option<GroupSource>,
    /// Why the latest load failed; empty when it succeeded.
    pub errors: Vec<String>,
}

/// What every group is served now. Cheap to clone; sessions hold it.
#[derive(Debug, Clone)]
pub struct Snapshots {
    /// Groups with good resources.
    pub groups: BTreeMap<String, Arc<GroupSnapshot>>,
    /// Groups whose files exist but never loaded: their proxies get nothing until they do.
    pub failing: BTreeSet<String>,
    /// What a proxy of an unknown group gets: nothing at all.
    pub empty: Arc<GroupSnapshot>,
}

/// What a proxy of a group is served.
#[derive(Debug, Clone)]
pub enum GroupLookup {
    Known(Arc<GroupSnapshot>),
    /// The group has no directory: empty resources.
    Unknown(Arc<GroupSnapshot>),
    /// The group's files have never loaded: send nothing, keep what the proxy has.
    Failing,
}

impl GroupLookup {
    pub fn snapshot(&self) -> Option<&Arc<GroupSnapshot>> {
        match self {
            GroupLookup::Known(s) | GroupLookup::Unknown(s) => Some(s),
            GroupLookup::Failing => None,
        }
    }
}

impl Snapshots {
    pub fn lookup(&self, group: &str) -> GroupLookup {
        if let Some(s) = self.groups.get(group) {
            GroupLookup::Known(s.clone())
        } else if self.failing.contains(group) {
            GroupLookup::Failing
        } else {
            GroupLookup::Unknown(self.empty.clone())
        }
    }

    /// Same content for every group (what a push would change).
    pub fn same_as(&self, other: &Snapshots) -> bool {
        self.failing == other.failing
            && self.groups.len() == other.groups.len()
            && self
                .groups
                .iter()
                .zip(other.groups.iter())
                .all(|((a, sa), (b, sb))| a == b && sa == sb)
    }
}

/// A change of the groups, for logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEvent {
    Loaded(String),
    Failed { group: String, errors: Vec<String> },
    Removed(String),
}

/// The control plane's state: groups, overrides.
#[derive(Debug, Clone, Default)]
pub struct Store {
    groups: BTreeMap<String, GroupState>,
    overrides: Overrides,
}

impl Store {
    pub fn new(overrides: Overrides) -> Store {
        Store {
            groups: BTreeMap::new(),
            overrides,
        }
    }

    pub fn overrides(&self) -> &Overrides {
        &self.overrides
    }

    pub fn set_overrides(&mut self, overrides: Overrides) {
        self.overrides = overrides;
    }

    pub fn groups(&self) -> &BTreeMap<String, GroupState> {
        &self.groups
    }

    /// Takes a new load of the directory. A group that failed keeps its last good resources;
    /// a group no longer present is dropped.
    pub fn update(&mut self, loaded: LoadedGroups) -> Vec<GroupEvent> {
        let mut events = Vec::new();
        for name in self.groups.keys() {
            if !loaded.contains_key(name) {
                events.push(GroupEvent::Removed(name.clone()));
            }
        }
        self.groups.retain(|name, _| loaded.contains_key(name));
        for (name, result) in loaded {
            let state = self.groups.entry(name.clone()).or_default();
            match result {
                Ok(source) => {
                    if state.good.as_ref() != Some(&source) || !state.errors.is_empty() {
                        events.push(GroupEvent::Loaded(name));
                    }
                    state.good = Some(source);
                    state.errors.clear();
                }
                Err(errors) => {
                    let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                    if state.errors != errors {
                        events.push(GroupEvent::Failed {
                            group: name,
                            errors: errors.clone(),
                        });
                    }
                    state.errors = errors;
                }
            }
        }
        events
    }

    /// Checks an operator request against the groups served now: the cluster must exist in
    /// some group, with an endpoint of that address in some group.
    pub fn check(&self, request: &OperatorRequest) -> Result<(), OperatorError> {
        let mut cluster_found = false;
        for state in self.groups.values() {
            let Some(cluster) = state
                .good
                .as_ref()
                .and_then(|g| g.clusters.get(&request.cluster))
            else {
                continue;
            };
            cluster_found = true;
            let has = cluster
                .get("endpoints")
                .and_then(Value::as_array)
                .is_some_and(|list| {
                    list.iter()
                        .any(|e| endpoint_address(e) == Some(request.address.as_str()))
                });
            if has {
                if request.operation == Operation::Reset
                    && self
                        .overrides
                        .get(&request.cluster, &request.address)
                        .is_none()
                {
                    return Err(OperatorError::NoOverride {
                        cluster: request.cluster.clone(),
                        address: request.address.clone(),
                    });
                }
                return Ok(());
            }
        }
        // An override may outlive its endpoint; resetting it stays possible.
        if request.operation == Operation::Reset
            && self
                .overrides
                .get(&request.cluster, &request.address)
                .is_some()
        {
            return Ok(());
        }
        if cluster_found {
            Err(OperatorError::UnknownEndpoint {
                cluster: request.cluster.clone(),
                address: request.address.clone(),
            })
        } else {
            Err(OperatorError::UnknownCluster(request.cluster.clone()))
        }
    }

    /// What a route request changes, checked against the group's files: the route's split
    /// before, and the override it leaves (`None`: the files' split again).
    pub fn resolve_route(&self, request: &RouteRequest) -> Result<RouteChange, OperatorError> {
        let source = self
            .groups
            .get(&request.group)
            .and_then(|g| g.good.as_ref())
            .ok_or_else(|| OperatorError::UnknownGroup(request.group.clone()))?;
        let current = self.overrides.split(request);
        let after = request.resolve(&source.route_tables, &source.clusters, current)?;
        let files = request.split_now(&source.route_tables, None);
        Ok(RouteChange {
            before: request.split_now(&source.route_tables, current),
            after,
            files,
        })
    }

    /// The groups that have the cluster.
    pub fn groups_with_cluster(&self, cluster: &str) -> Vec<String> {
        self.groups
            .iter()
            .filter(|(_, s)| {
                s.good
                    .as_ref()
                    .is_some_and(|g| g.clusters.contains_key(cluster))
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// What every group is served now.
    pub fn snapshots(&self) -> Snapshots {
        let mut groups = BTreeMap::new();
        let mut failing = BTreeSet::new();
        for (name, state) in &self.groups {
            match &state.good {
                Some(source) => {
                    let snapshot = match self.overrides.splits.get(name) {
                        Some(splits) => {
                            let mut split = source.clone();
                            split.route_tables =
                                splits::apply(&source.route_tables, &source.clusters, Some(splits));
                            GroupSnapshot::build(&split, &self.overrides)
                        }
                        None => GroupSnapshot::build(source, &self.overrides),
                    };
                    groups.insert(name.clone(), Arc::new(snapshot));
                }
                None => {
                    failing.insert(name.clone());
                }
            }
        }
        Snapshots {
            groups,
            failing,
            empty: Arc::new(GroupSnapshot::build(
                &GroupSource::default(),
                &self.overrides,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MAPS: &str = r#"
listeners:
  - name: maps-plain
    listen: 0.0.0.0:6533
    http: { route_table: maps }
route_tables:
  maps:
    virtual_hosts:
      - hosts: ["*"]
        routes:
          - match: { prefix: / }
            cluster: tegola
"#;
    const CLUSTERS: &str = r#"
clusters:
  - name: tegola
    lb: least_request
    endpoints:
      - "10.0.0.1:80"
      - { address: "10.0.0.2:80", weight: 2, zone: eqiad }
  - name: kartotherian
    endpoints: ["10.0.1.1:80"]
"#;

    fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| ((*a).to_string(), (*b).to_string()))
            .collect()
    }

    fn maps_source() -> GroupSource {
        merge_files(&files(&[("a.yaml", MAPS), ("b.yaml", CLUSTERS)])).unwrap()
    }

    fn store_with(groups: &[(&str, GroupSource)]) -> Store {
        let mut store = Store::default();
        store.update(
            groups
                .iter()
                .map(|(n, s)| ((*n).to_string(), Ok(s.clone())))
                .collect(),
        );
        store
    }

    #[test]
    fn merges_sections_across_files() {
        let s = maps_source();
        assert_eq!(s.listeners.keys().collect::<Vec<_>>(), ["maps-plain"]);
        assert_eq!(s.route_tables.keys().collect::<Vec<_>>(), ["maps"]);
        assert_eq!(
            s.clusters.keys().collect::<Vec<_>>(),
            ["kartotherian", "tegola"]
        );
        let snap = GroupSnapshot::build(&s, &Overrides::default());
        assert_eq!(
            snap.route_tables.resources[0]["name"],
            json!("maps"),
            "a route table resource is {{name, virtual_hosts}} (R5)"
        );
        assert!(snap.route_tables.resources[0]["virtual_hosts"].is_array());
        for c in &snap.clusters.resources {
            assert!(
                c.get("endpoints").is_none(),
                "clusters go without endpoints"
            );
        }
        assert_eq!(
            snap.endpoints["tegola"].endpoints,
            vec![
                json!("10.0.0.1:80"),
                json!({"address": "10.0.0.2:80", "weight": 2, "zone": "eqiad"})
            ]
        );
    }

    #[test]
    fn empty_files_and_anchors_work() {
        let s = merge_files(&files(&[
            ("empty.yaml", ""),
            (
                "anchors.yaml",
                "clusters:\n  - &base { name: a, lb: random, endpoints: [\"1.1.1.1:1\"] }\n  - { <<: *base, name: b }\n",
            ),
        ]))
        .unwrap();
        assert_eq!(s.clusters["b"]["lb"], json!("random"));
    }

    #[test]
    fn duplicate_names_across_files_are_errors() {
        let dup = "clusters:\n  - name: tegola\n    endpoints: []\n";
        let errors = merge_files(&files(&[("b.yaml", CLUSTERS), ("c.yaml", dup)])).unwrap_err();
        assert_eq!(
            errors,
            vec![LoadError::Duplicate {
                kind: "cluster",
                name: "tegola".into(),
                first: "b.yaml".into(),
                second: "c.yaml".into()
            }]
        );
        assert_eq!(
            errors[0].to_string(),
            "cluster \"tegola\" is defined in b.yaml and again in c.yaml"
        );
        let table = "route_tables:\n  maps: { virtual_hosts: [] }\n";
        assert!(merge_files(&files(&[("a.yaml", MAPS), ("t.yaml", table)])).is_err());
    }

    #[test]
    fn bad_files_are_errors() {
        for (text, want) in [
            ("admin: { listen: 1.2.3.4:5 }", "unknown section \"admin\""),
            ("- a", "top level must be a mapping"),
            ("listeners: [{ listen: 1.2.3.4:5 }]", "listeners[0].name"),
            (
                "clusters: [{ name: a, endpoints: [3] }]",
                "clusters[a].endpoints[0]",
            ),
            (
                "clusters: [{ name: a, endpoints: [\"1.1.1.1:1\", { address: \"1.1.1.1:1\" }] }]",
                "appears twice",
            ),
            ("clusters: [", ""),
        ] {
            let err = merge_files(&files(&[("x.yaml", text)])).unwrap_err();
            assert!(err[0].to_string().contains(want), "{text}: {err:?}");
        }
    }

    #[test]
    fn a_failing_group_keeps_its_last_good_resources() {
        let mut store = store_with(&[("maps", maps_source())]);
        let before = store.snapshots();
        let events = store.update(BTreeMap::from([(
            "maps".to_string(),
            Err(vec![LoadError::Invalid {
                file: "x".into(),
                error: "bad".into(),
            }]),
        )]));
        assert!(matches!(&events[0], GroupEvent::Failed { group, .. } if group == "maps"));
        assert!(store.snapshots().same_as(&before));
        assert_eq!(store.groups()["maps"].errors, vec!["x: bad".to_string()]);
        // A group that never loaded gets nothing; an unknown one gets empty resources.
        store.update(BTreeMap::from([(
            "new".to_string(),
            Err(vec![LoadError::Invalid {
                file: "x".into(),
                error: "bad".into(),
            }]),
        )]));
        let snaps = store.snapshots();
        assert!(matches!(snaps.lookup("new"), GroupLookup::Failing));
        match snaps.lookup("nope") {
            GroupLookup::Unknown(s) => {
                assert!(s.listeners.resources.is_empty() && s.endpoints.is_empty())
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(snaps.lookup("maps"), GroupLookup::Unknown(_)),
            "maps was removed"
        );
    }

    #[test]
    fn versions_are_content_derived_and_stable() {
        let a = GroupSnapshot::build(&maps_source(), &Overrides::default());
        // Same content, other file split, other key order: same versions.
        let reordered = r#"
clusters:
  - name: kartotherian
    endpoints: ["10.0.1.1:80"]
  - endpoints:
      - "10.0.0.1:80"
      - { zone: eqiad, weight: 2, address: "10.0.0.2:80" }
    lb: least_request
    name: tegola
"#;
        let b = GroupSnapshot::build(
            &merge_files(&files(&[("z.yaml", MAPS), ("a.yaml", reordered)])).unwrap(),
            &Overrides::default(),
        );
        assert_eq!(a.versions(), b.versions());
        assert_eq!(a, b);
        // Known value: the version is the documented hash of the canonical JSON (R14).
        assert_eq!(
            a.listeners.version,
            content_version(&canonical_json(
                &json!([{"name": "maps-plain", "listen": "0.0.0.0:6533", "http": {"route_table": "maps"}}])
            ))
        );
        // A change of one cluster's endpoints changes only that resource's version.
        let changed = CLUSTERS.replace("10.0.1.1:80", "10.0.1.2:80");
        let c = GroupSnapshot::build(
            &merge_files(&files(&[("a.yaml", MAPS), ("b.yaml", &changed)])).unwrap(),
            &Overrides::default(),
        );
        assert_eq!(a.clusters.version, c.clusters.version);
        assert_eq!(a.endpoints["tegola"].version, c.endpoints["tegola"].version);
        assert_ne!(
            a.endpoints["kartotherian"].version,
            c.endpoints["kartotherian"].version
        );
        assert_ne!(a.endpoints_version, c.endpoints_version);
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let v: Value = serde_json::from_str(r#"{"b":1,"a":{"d":[1,"x"],"c":null}}"#).unwrap();
        assert_eq!(
            String::from_utf8(canonical_json(&v)).unwrap(),
            r#"{"a":{"c":null,"d":[1,"x"]},"b":1}"#
        );
    }

    #[test]
    fn overrides_apply_to_every_group_with_the_cluster() {
        let other = merge_files(&files(&[("c.yaml", CLUSTERS)])).unwrap();
        let mut store = store_with(&[("maps", maps_source()), ("other", other)]);
        let before = store.snapshots();
        let req = |op| OperatorRequest {
            cluster: "tegola".into(),
            address: "10.0.0.1:80".into(),
            operation: op,
        };
        store.check(&req(Operation::SetWeight(7))).unwrap();
        let o = store.overrides().with(&req(Operation::SetWeight(7)));
        let o = o.with(&OperatorRequest {
            address: "10.0.0.2:80".into(),
            ..req(Operation::Depool)
        });
        store.set_overrides(o.clone());
        let after = store.snapshots();
        for group in ["maps", "other"] {
            let snap = after.lookup(group);
            let eps = &snap.snapshot().unwrap().endpoints;
            assert_eq!(
                eps["tegola"].endpoints,
                vec![
                    json!({"address": "10.0.0.1:80", "weight": 7}),
                    json!({"address": "10.0.0.2:80", "weight": 2, "zone": "eqiad", "pooled": false})
                ]
            );
            let old = before.lookup(group);
            let old = old.snapshot().unwrap();
            assert_ne!(eps["tegola"].version, old.endpoints["tegola"].version);
            assert_eq!(
                eps["kartotherian"].version,
                old.endpoints["kartotherian"].version
            );
        }
        // Persisted form round-trips.
        assert_eq!(Overrides::from_state_json(&o.to_state_json()).unwrap(), o);
        // Reset brings the file's values back, and the old versions with them.
        let o = o.with(&req(Operation::Reset)).with(&OperatorRequest {
            address: "10.0.0.2:80".into(),
            ..req(Operation::Reset)
        });
        assert!(o.clusters.is_empty());
        store.set_overrides(o);
        assert!(store.snapshots().same_as(&before));
    }

    #[test]
    fn bad_operator_input_is_refused_with_the_reason() {
        let store = store_with(&[("maps", maps_source())]);
        let parse = OperatorRequest::parse;
        assert_eq!(
            parse(
                "set-weight",
                br#"{"cluster":"tegola","address":"10.0.0.1:80","weight":0}"#
            ),
            Err(OperatorError::WeightOutOfRange(0))
        );
        assert_eq!(
            parse(
                "set-weight",
                br#"{"cluster":"tegola","address":"10.0.0.1:80","weight":10001}"#
            )
            .unwrap_err()
            .to_string(),
            "weight must be between 1 and 10000, got 10001"
        );
        assert!(matches!(
            parse("set-weight", br#"{"cluster":"tegola","address":"10.0.0.1:80"}"#),
            Err(OperatorError::Malformed(m)) if m.contains("missing field `weight`")
        ));
        assert!(matches!(
            parse("pool", b"{nope"),
            Err(OperatorError::Malformed(_))
        ));
        assert!(matches!(
            parse("pool", br#"{"cluster":"a","address":"b","wieght":1}"#),
            Err(OperatorError::Malformed(m)) if m.contains("unknown field `wieght`")
        ));
        assert_eq!(
            parse("pool", br#"{"cluster":"","address":"b"}"#),
            Err(OperatorError::Empty("cluster"))
        );
        let unknown = parse("depool", br#"{"cluster":"nope","address":"10.0.0.1:80"}"#).unwrap();
        assert_eq!(
            store.check(&unknown).unwrap_err().to_string(),
            "unknown cluster \"nope\": no node group has it"
        );
        let missing = parse("depool", br#"{"cluster":"tegola","address":"10.9.9.9:80"}"#).unwrap();
        assert_eq!(
            store.check(&missing).unwrap_err().to_string(),
            "cluster \"tegola\" has no endpoint with address \"10.9.9.9:80\" in any node group"
        );
        let reset = parse("reset", br#"{"cluster":"tegola","address":"10.0.0.1:80"}"#).unwrap();
        assert!(matches!(
            store.check(&reset),
            Err(OperatorError::NoOverride { .. })
        ));
        let ok = parse("pool", br#"{"cluster":"tegola","address":"10.0.0.2:80"}"#).unwrap();
        assert_eq!(store.check(&ok), Ok(()));
        assert_eq!(ok.operation, Operation::Pool);
    }

    #[test]
    fn loads_a_directory_of_groups() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("maps")).unwrap();
        std::fs::create_dir(dir.path().join(".hidden")).unwrap();
        std::fs::write(dir.path().join("maps/a.yaml"), MAPS).unwrap();
        std::fs::write(dir.path().join("maps/b.yml"), CLUSTERS).unwrap();
        std::fs::write(dir.path().join("maps/notes.txt"), "ignored").unwrap();
        std::fs::write(dir.path().join("top.yaml"), "ignored: true").unwrap();
        let loaded = load_dir(dir.path()).unwrap();
        assert_eq!(loaded.keys().collect::<Vec<_>>(), ["maps"]);
        assert_eq!(loaded["maps"].as_ref().unwrap(), &maps_source());
    }
}

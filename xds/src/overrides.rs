//! Operator overrides of endpoints (weight, pooled) and of split weights, as persisted, and
//! the operator requests that change endpoints.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::splits::{RouteRequest, SplitError, SplitOverrides, SplitTarget, MAX_WEIGHT};

/// An operator's change to one endpoint; unset fields keep the file's value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooled: Option<bool>,
}

/// Operator overrides: cluster → endpoint address → override. This is what the state file
/// persists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overrides {
    #[serde(default)]
    pub clusters: BTreeMap<String, BTreeMap<String, EndpointOverride>>,
    /// Split weights by group, route table and route ([`crate::splits`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub splits: SplitOverrides,
}

impl Overrides {
    /// The override of one endpoint, if any.
    pub fn get(&self, cluster: &str, address: &str) -> Option<&EndpointOverride> {
        self.clusters.get(cluster)?.get(address)
    }

    /// These overrides with `request` applied.
    pub fn with(&self, request: &OperatorRequest) -> Overrides {
        let mut next = self.clusters.clone();
        match request.operation {
            Operation::Reset => {
                if let Some(c) = next.get_mut(&request.cluster) {
                    c.remove(&request.address);
                    if c.is_empty() {
                        next.remove(&request.cluster);
                    }
                }
            }
            op => {
                let o = next
                    .entry(request.cluster.clone())
                    .or_default()
                    .entry(request.address.clone())
                    .or_default();
                match op {
                    Operation::SetWeight(w) => o.weight = Some(w),
                    Operation::Pool => o.pooled = Some(true),
                    Operation::Depool => o.pooled = Some(false),
                    Operation::Reset => {}
                }
            }
        }
        Overrides {
            clusters: next,
            splits: self.splits.clone(),
        }
    }

    /// These overrides with the split of a route set (`Some`) or dropped (`None`).
    pub fn with_split(
        &self,
        request: &RouteRequest,
        targets: Option<Vec<SplitTarget>>,
    ) -> Overrides {
        let mut next = self.clone();
        let group = next.splits.entry(request.group.clone()).or_default();
        let table = group.entry(request.route_table.clone()).or_default();
        match targets {
            Some(t) => {
                table.insert(request.route.clone(), t);
            }
            None => {
                table.remove(&request.route);
            }
        }
        next.splits.retain(|_, tables| {
            tables.retain(|_, routes| !routes.is_empty());
            !tables.is_empty()
        });
        next
    }

    /// The split override of a route, if any.
    pub fn split(&self, request: &RouteRequest) -> Option<&[SplitTarget]> {
        let routes = self.splits.get(&request.group)?.get(&request.route_table)?;
        routes.get(&request.route).map(Vec::as_slice)
    }

    /// The state file's contents.
    pub fn to_state_json(&self) -> Vec<u8> {
        let state = StateFile {
            overrides: self.clone(),
        };
        let mut out = serde_json::to_vec_pretty(&state).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Parses the state file's contents.
    pub fn from_state_json(bytes: &[u8]) -> Result<Overrides, serde_json::Error> {
        Ok(serde_json::from_slice::<StateFile>(bytes)?.overrides)
    }
}

/// The `--state` file.
#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    #[serde(default)]
    overrides: Overrides,
}

/// One endpoint with its override applied. A string endpoint becomes a mapping when changed.
pub fn apply_override(endpoint: &Value, o: Option<&EndpointOverride>) -> Value {
    let Some(o) = o.filter(|o| o.weight.is_some() || o.pooled.is_some()) else {
        return endpoint.clone();
    };
    let mut map = match endpoint {
        Value::String(address) => {
            let mut m = Map::new();
            m.insert("address".into(), Value::String(address.clone()));
            m
        }
        Value::Object(m) => m.clone(),
        other => return other.clone(),
    };
    if let Some(w) = o.weight {
        map.insert("weight".into(), Value::from(w));
    }
    if let Some(p) = o.pooled {
        map.insert("pooled".into(), Value::Bool(p));
    }
    Value::Object(map)
}

/// What an operator asks for (`/v1/endpoints/...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    SetWeight(u32),
    Pool,
    Depool,
    /// Drop the override: the files' values apply again.
    Reset,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::SetWeight(_) => "set-weight",
            Operation::Pool => "pool",
            Operation::Depool => "depool",
            Operation::Reset => "reset",
        }
    }
}

/// An operator request to change one endpoint of a cluster, in every group that has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorRequest {
    pub cluster: String,
    pub address: String,
    pub operation: Operation,
}

/// Why an operator request was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperatorError {
    #[error("malformed request body: {0}")]
    Malformed(String),
    #[error("unknown operation {0:?} (expected set-weight, pool, depool or reset)")]
    UnknownOperation(String),
    #[error("weight must be between 1 and {MAX_WEIGHT}, got {0}")]
    WeightOutOfRange(i64),
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error("unknown cluster {0:?}: no node group has it")]
    UnknownCluster(String),
    #[error("cluster {cluster:?} has no endpoint with address {address:?} in any node group")]
    UnknownEndpoint { cluster: String, address: String },
    #[error("cluster {cluster:?} endpoint {address:?} has no override to reset")]
    NoOverride { cluster: String, address: String },
    #[error("unknown node group {0:?}, or it has never loaded")]
    UnknownGroup(String),
    #[error(transparent)]
    Split(#[from] SplitError),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointBody {
    cluster: String,
    address: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    cluster: String,
    address: String,
    weight: i64,
}

impl OperatorRequest {
    /// Parses the body of `POST /v1/endpoints/<operation>`.
    pub fn parse(operation: &str, body: &[u8]) -> Result<OperatorRequest, OperatorError> {
        let malformed = |e: serde_json::Error| OperatorError::Malformed(e.to_string());
        let (cluster, address, operation) = match operation {
            "set-weight" => {
                let b: WeightBody = serde_json::from_slice(body).map_err(malformed)?;
                let weight = u32::try_from(b.weight)
                    .ok()
                    .filter(|w| (1..=MAX_WEIGHT).contains(w))
                    .ok_or(OperatorError::WeightOutOfRange(b.weight))?;
                (b.cluster, b.address, Operation::SetWeight(weight))
            }
            "pool" | "depool" | "reset" => {
                let b: EndpointBody = serde_json::from_slice(body).map_err(malformed)?;
                let op = match operation {
                    "pool" => Operation::Pool,
                    "depool" => Operation::Depool,
                    _ => Operation::Reset,
                };
                (b.cluster, b.address, op)
            }
            other => return Err(OperatorError::UnknownOperation(other.into())),
        };
        if cluster.is_empty() {
            return Err(OperatorError::Empty("cluster"));
        }
        if address.is_empty() {
            return Err(OperatorError::Empty("address"));
        }
        Ok(OperatorRequest {
            cluster,
            address,
            operation,
        })
    }

    /// The JSON body of this request, as the CLI sends it.
    pub fn body(&self) -> Value {
        let mut body = serde_json::json!({"cluster": self.cluster, "address": self.address});
        if let Operation::SetWeight(w) = self.operation {
            body["weight"] = Value::from(w);
        }
        body
    }
}

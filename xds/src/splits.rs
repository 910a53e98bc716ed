//! Split weights set by operators: a route's `split` replaced in one node group, persisted with
//! the endpoint overrides, and applied when the group's resources are built.
//!
//! A route is named by its `name`, or by where it is (`route_tables.<table>.virtual_hosts[i]
//! .routes[j]`), as the proxy names it in logs and metrics.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The largest weight of an endpoint or a split target (`docs/config.md`).
pub const MAX_WEIGHT: u32 = 10_000;

/// Why a route change was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("malformed request body: {0}")]
    Malformed(String),
    #[error("unknown operation {0:?} (expected set-split, step or reset-split)")]
    UnknownOperation(String),
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error("the group has no route table {0:?}")]
    UnknownRouteTable(String),
    #[error("the route table has no route named {0:?}")]
    UnknownRoute(String),
    #[error("route {0:?} has no split")]
    NotASplit(String),
    #[error("{0:?} is not a cluster of the group's split or of the group")]
    UnknownTarget(String),
    #[error("cluster {0:?} is in the split twice")]
    DuplicateTarget(String),
    #[error("a split weight must be between 0 and {MAX_WEIGHT}, got {0}")]
    WeightOutOfRange(i64),
    #[error("the split's weights must sum to more than 0")]
    ZeroSplit,
    #[error("a split of one target has nothing to step")]
    NothingToStep,
    #[error("route {0:?} has no split override to reset")]
    NoOverride(String),
}

/// One target of a split: a cluster and its weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitTarget {
    pub cluster: String,
    pub weight: u32,
}

/// Group → route table → route → the targets that replace the files' split.
pub type SplitOverrides = BTreeMap<String, BTreeMap<String, BTreeMap<String, Vec<SplitTarget>>>>;

/// What a split change does to a route (`Store::resolve_route`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteChange {
    /// The split in effect before: the override, else the files'.
    pub before: Option<Vec<SplitTarget>>,
    /// The override after; `None` when the files' split applies again.
    pub after: Option<Vec<SplitTarget>>,
    /// The files' split.
    pub files: Option<Vec<SplitTarget>>,
}

impl RouteChange {
    /// The split in effect after.
    pub fn split_after(&self) -> Option<&[SplitTarget]> {
        self.after.as_deref().or(self.files.as_deref())
    }
}

/// What an operator asks of a route (`/v1/routes/...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOperation {
    /// Replace the split's targets and weights.
    SetSplit(Vec<SplitTarget>),
    /// Move `points` percentage points of the split to `cluster` (negative: away from it),
    /// taken from (or given to) the other targets in proportion to their shares.
    Step { cluster: String, points: i64 },
    /// Drop the override: the files' split applies again.
    Reset,
}

impl RouteOperation {
    pub fn name(&self) -> &'static str {
        match self {
            RouteOperation::SetSplit(_) => "set-split",
            RouteOperation::Step { .. } => "step",
            RouteOperation::Reset => "reset-split",
        }
    }
}

/// A change to one route of one node group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRequest {
    pub group: String,
    pub route_table: String,
    pub route: String,
    pub operation: RouteOperation,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteBody {
    group: String,
    route_table: String,
    route: String,
    #[serde(default)]
    targets: Option<Vec<TargetBody>>,
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    points: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetBody {
    cluster: String,
    weight: i64,
}

impl RouteRequest {
    /// Parses the body of `POST /v1/routes/<operation>`.
    pub fn parse(operation: &str, body: &[u8]) -> Result<RouteRequest, SplitError> {
        let b: RouteBody =
            serde_json::from_slice(body).map_err(|e| SplitError::Malformed(e.to_string()))?;
        let missing = |field| SplitError::Malformed(format!("{operation} needs `{field}`"));
        let operation = match operation {
            "set-split" => {
                let targets = b.targets.ok_or_else(|| missing("targets"))?;
                let mut out = Vec::with_capacity(targets.len());
                for t in targets {
                    let weight = u32::try_from(t.weight)
                        .ok()
                        .filter(|w| *w <= MAX_WEIGHT)
                        .ok_or(SplitError::WeightOutOfRange(t.weight))?;
                    if out.iter().any(|o: &SplitTarget| o.cluster == t.cluster) {
                        return Err(SplitError::DuplicateTarget(t.cluster));
                    }
                    out.push(SplitTarget {
                        cluster: t.cluster,
                        weight,
                    });
                }
                if out.is_empty() {
                    return Err(SplitError::Empty("targets"));
                }
                if out.iter().all(|t| t.weight == 0) {
                    return Err(SplitError::ZeroSplit);
                }
                RouteOperation::SetSplit(out)
            }
            "step" => RouteOperation::Step {
                cluster: b.cluster.ok_or_else(|| missing("cluster"))?,
                points: b.points.ok_or_else(|| missing("points"))?,
            },
            "reset-split" => RouteOperation::Reset,
            other => return Err(SplitError::UnknownOperation(other.into())),
        };
        for (field, value) in [
            ("group", &b.group),
            ("route_table", &b.route_table),
            ("route", &b.route),
        ] {
            if value.is_empty() {
                return Err(SplitError::Empty(field));
            }
        }
        Ok(RouteRequest {
            group: b.group,
            route_table: b.route_table,
            route: b.route,
            operation,
        })
    }

    /// The split the route has now: its override `current`, else the files'; `None` when
    /// neither (the route is gone, or has no split).
    pub fn split_now(
        &self,
        route_tables: &BTreeMap<String, Value>,
        current: Option<&[SplitTarget]>,
    ) -> Option<Vec<SplitTarget>> {
        if let Some(current) = current {
            return Some(current.to_vec());
        }
        let table = route_tables.get(&self.route_table)?;
        let (v, r) = position(&self.route_table, table, &self.route)?;
        table["virtual_hosts"][v]["routes"][r]
            .get("split")
            .and_then(targets_of)
    }

    /// The targets to keep for the route once `self` applies to a group's files (its route
    /// tables and clusters, by name) with `current` (its override now); `None` for a reset.
    /// Checked: the route exists and has a split, every target is a cluster of the group, the
    /// weights sum above 0.
    pub fn resolve(
        &self,
        route_tables: &BTreeMap<String, Value>,
        clusters: &BTreeMap<String, Value>,
        current: Option<&[SplitTarget]>,
    ) -> Result<Option<Vec<SplitTarget>>, SplitError> {
        // An override can always be dropped, even once the files no longer fit it.
        if self.operation == RouteOperation::Reset && current.is_some() {
            return Ok(None);
        }
        let table = route_tables
            .get(&self.route_table)
            .ok_or_else(|| SplitError::UnknownRouteTable(self.route_table.clone()))?;
        let (v, r) = position(&self.route_table, table, &self.route)
            .ok_or_else(|| SplitError::UnknownRoute(self.route.clone()))?;
        let files = table["virtual_hosts"][v]["routes"][r]
            .get("split")
            .and_then(targets_of)
            .ok_or_else(|| SplitError::NotASplit(self.route.clone()))?;
        let targets = match &self.operation {
            RouteOperation::Reset => {
                return match current {
                    Some(_) => Ok(None),
                    None => Err(SplitError::NoOverride(self.route.clone())),
                }
            }
            RouteOperation::SetSplit(targets) => targets.clone(),
            RouteOperation::Step { cluster, points } => {
                step(current.unwrap_or(&files), cluster, *points)?
            }
        };
        for t in &targets {
            if !clusters.contains_key(&t.cluster) {
                return Err(SplitError::UnknownTarget(t.cluster.clone()));
            }
        }
        Ok(Some(targets))
    }
}

/// `targets` with `points` percentage points moved to `cluster`; weights come out as
/// percentages summing to 100.
fn step(
    targets: &[SplitTarget],
    cluster: &str,
    points: i64,
) -> Result<Vec<SplitTarget>, SplitError> {
    let Some(at) = targets.iter().position(|t| t.cluster == cluster) else {
        return Err(SplitError::UnknownTarget(cluster.to_owned()));
    };
    if targets.len() < 2 {
        return Err(SplitError::NothingToStep);
    }
    let total: f64 = targets.iter().map(|t| f64::from(t.weight)).sum();
    if total <= 0.0 {
        return Err(SplitError::ZeroSplit);
    }
    let shares: Vec<f64> = targets
        .iter()
        .map(|t| f64::from(t.weight) * 100.0 / total)
        .collect();
    let mine = (shares[at] + points as f64).clamp(0.0, 100.0);
    let others: f64 = 100.0 - shares[at];
    let rest = 100.0 - mine;
    let n_others = (targets.len() - 1) as f64;
    let wanted: Vec<f64> = shares
        .iter()
        .enumerate()
        .map(|(i, s)| match (i == at, others > 0.0) {
            (true, _) => mine,
            (false, true) => s * rest / others,
            (false, false) => rest / n_others,
        })
        .collect();
    // Hundredths of a percent (the largest weight, 10000, is 100 %) summing to 10000:
    // floors, then the largest remainders get one more; whole percentages when they are.
    let wanted: Vec<f64> = wanted.iter().map(|w| w * 100.0).collect();
    let mut weights: Vec<u32> = wanted.iter().map(|w| w.floor() as u32).collect();
    let short = MAX_WEIGHT.saturating_sub(weights.iter().sum());
    let mut order: Vec<usize> = (0..wanted.len()).collect();
    order.sort_by(|a, b| {
        let (ra, rb) = (wanted[*a].fract(), wanted[*b].fract());
        rb.total_cmp(&ra).then(a.cmp(b))
    });
    for i in order.into_iter().take(short as usize) {
        weights[i] += 1;
    }
    if weights.iter().all(|w| w % 100 == 0) {
        weights.iter_mut().for_each(|w| *w /= 100);
    }
    Ok(targets
        .iter()
        .zip(weights)
        .map(|(t, weight)| SplitTarget {
            cluster: t.cluster.clone(),
            weight,
        })
        .collect())
}

fn targets_of(split: &Value) -> Option<Vec<SplitTarget>> {
    serde_json::from_value(split.clone()).ok()
}

/// `route_tables` (by name) with the split overrides of one group applied. An override that no
/// longer fits the files (its route is gone or has no `split`, or it names a cluster the group
/// no longer has) is left out, so it can never make the group's routes invalid.
pub fn apply(
    route_tables: &BTreeMap<String, Value>,
    clusters: &BTreeMap<String, Value>,
    splits: Option<&BTreeMap<String, BTreeMap<String, Vec<SplitTarget>>>>,
) -> BTreeMap<String, Value> {
    let mut out = route_tables.clone();
    for (table_name, by_route) in splits.into_iter().flatten() {
        let Some(table) = out.get_mut(table_name) else {
            continue;
        };
        for (route, targets) in by_route {
            let Some((v, r)) = position(table_name, table, route) else {
                continue;
            };
            if !targets.iter().all(|t| clusters.contains_key(&t.cluster)) {
                continue;
            }
            let split = serde_json::to_value(targets).unwrap_or(Value::Null);
            if let Some(Value::Object(m)) = table
                .get_mut("virtual_hosts")
                .and_then(|vh| vh.get_mut(v))
                .and_then(|vh| vh.get_mut("routes"))
                .and_then(|rs| rs.get_mut(r))
            {
                if m.contains_key("split") {
                    m.insert("split".into(), split);
                }
            }
        }
    }
    out
}

/// Where the route named `route` is: (virtual host, route) indexes.
fn position(table_name: &str, table: &Value, route: &str) -> Option<(usize, usize)> {
    let vhosts = table.get("virtual_hosts")?.as_array()?;
    for (v, vhost) in vhosts.iter().enumerate() {
        let list = vhost.get("routes").and_then(Value::as_array);
        for (r, candidate) in list.into_iter().flatten().enumerate() {
            let name = match candidate.get("name").and_then(Value::as_str) {
                Some(n) => n.to_owned(),
                None => format!("route_tables.{table_name}.virtual_hosts[{v}].routes[{r}]"),
            };
            if name == route {
                return Some((v, r));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(cluster: &str, weight: u32) -> SplitTarget {
        SplitTarget {
            cluster: cluster.into(),
            weight,
        }
    }

    struct Source {
        route_tables: BTreeMap<String, Value>,
        clusters: BTreeMap<String, Value>,
    }

    fn source() -> Source {
        Source {
            route_tables: BTreeMap::from([(
                "maps".to_owned(),
                json!({"virtual_hosts": [{"hosts": ["*"], "routes": [
                    {"match": {"prefix": "/x"}, "cluster": "metal"},
                    {"name": "kartotherian", "match": {"prefix": "/"},
                     "split": [{"cluster": "metal", "weight": 90}, {"cluster": "k8s", "weight": 10}]}
                ]}]}),
            )]),
            clusters: BTreeMap::from([
                ("metal".to_owned(), json!({"name": "metal"})),
                ("k8s".to_owned(), json!({"name": "k8s"})),
            ]),
        }
    }

    fn request(route: &str, operation: RouteOperation) -> RouteRequest {
        RouteRequest {
            group: "g".into(),
            route_table: "maps".into(),
            route: route.into(),
            operation,
        }
    }

    #[test]
    fn steps_move_points_and_keep_a_total_of_100() {
        let s = [t("metal", 90), t("k8s", 10)];
        assert_eq!(step(&s, "k8s", 10).unwrap(), [t("metal", 80), t("k8s", 20)]);
        assert_eq!(
            step(&s, "k8s", -20).unwrap(),
            [t("metal", 100), t("k8s", 0)]
        );
        assert_eq!(
            step(&s, "k8s", 200).unwrap(),
            [t("metal", 0), t("k8s", 100)]
        );
        // Weights need not be percentages; three targets share what one gives up.
        let three = [t("a", 1), t("b", 1), t("c", 1)];
        let stepped = step(&three, "a", 10).unwrap();
        // 43⅓ %, 28⅓ %, 28⅓ % in hundredths of a percent.
        assert_eq!(stepped.iter().map(|t| t.weight).sum::<u32>(), 10_000);
        assert_eq!(stepped[0].weight, 4334);
        // A share finer than a percent moves by exactly the points asked.
        let fine = [t("metal", 9990), t("k8s", 10)];
        assert_eq!(
            step(&fine, "k8s", 1).unwrap(),
            [t("metal", 9890), t("k8s", 110)]
        );
        let gone = [t("a", 0), t("b", 0), t("c", 5)];
        assert_eq!(
            step(&gone, "c", -50).unwrap(),
            [t("a", 25), t("b", 25), t("c", 50)]
        );
        assert_eq!(
            step(&s, "nope", 10),
            Err(SplitError::UnknownTarget("nope".into()))
        );
        assert_eq!(step(&[t("a", 1)], "a", 10), Err(SplitError::NothingToStep));
    }

    #[test]
    fn requests_resolve_against_the_group_files() {
        let src = source();
        let step10 = RouteOperation::Step {
            cluster: "k8s".into(),
            points: 10,
        };
        let resolved =
            request("kartotherian", step10.clone()).resolve(&src.route_tables, &src.clusters, None);
        assert_eq!(resolved, Ok(Some(vec![t("metal", 80), t("k8s", 20)])));
        // A step starts from the override when there is one.
        let current = [t("metal", 50), t("k8s", 50)];
        let resolved = request("kartotherian", step10).resolve(
            &src.route_tables,
            &src.clusters,
            Some(&current),
        );
        assert_eq!(resolved, Ok(Some(vec![t("metal", 40), t("k8s", 60)])));
        let by_place = "route_tables.maps.virtual_hosts[0].routes[0]";
        let set = RouteOperation::SetSplit(vec![t("metal", 1)]);
        assert_eq!(
            request(by_place, set.clone()).resolve(&src.route_tables, &src.clusters, None),
            Err(SplitError::NotASplit(by_place.into()))
        );
        assert_eq!(
            request("nope", set).resolve(&src.route_tables, &src.clusters, None),
            Err(SplitError::UnknownRoute("nope".into()))
        );
        let unknown = RouteOperation::SetSplit(vec![t("metal", 1), t("gone", 1)]);
        assert_eq!(
            request("kartotherian", unknown).resolve(&src.route_tables, &src.clusters, None),
            Err(SplitError::UnknownTarget("gone".into()))
        );
        assert_eq!(
            request("kartotherian", RouteOperation::Reset).resolve(
                &src.route_tables,
                &src.clusters,
                None
            ),
            Err(SplitError::NoOverride("kartotherian".into()))
        );
    }

    #[test]
    fn bodies_are_checked() {
        let parse = |op, body: Value| RouteRequest::parse(op, body.to_string().as_bytes());
        let base = json!({"group": "g", "route_table": "maps", "route": "r"});
        let with = |extra: Value| {
            let mut b = base.clone();
            for (k, v) in extra.as_object().unwrap() {
                b[k] = v.clone();
            }
            b
        };
        let zero = with(json!({"targets": [{"cluster": "a", "weight": 0}]}));
        assert_eq!(parse("set-split", zero), Err(SplitError::ZeroSplit));
        let twice = with(
            json!({"targets": [{"cluster": "a", "weight": 1}, {"cluster": "a", "weight": 2}]}),
        );
        assert_eq!(
            parse("set-split", twice),
            Err(SplitError::DuplicateTarget("a".into()))
        );
        let huge = with(json!({"targets": [{"cluster": "a", "weight": 10001}]}));
        assert_eq!(
            parse("set-split", huge),
            Err(SplitError::WeightOutOfRange(10001))
        );
        assert!(matches!(
            parse("step", base.clone()),
            Err(SplitError::Malformed(_))
        ));
        assert_eq!(
            parse("reset-split", base).map(|r| r.operation),
            Ok(RouteOperation::Reset)
        );
    }

    #[test]
    fn overrides_replace_the_split_of_their_route_only() {
        let src = source();
        let splits = BTreeMap::from([(
            "maps".to_owned(),
            BTreeMap::from([
                (
                    "kartotherian".to_owned(),
                    vec![t("metal", 80), t("k8s", 20)],
                ),
                ("gone".to_owned(), vec![t("metal", 1)]),
            ]),
        )]);
        let applied = apply(&src.route_tables, &src.clusters, Some(&splits));
        let routes = &applied["maps"]["virtual_hosts"][0]["routes"];
        assert_eq!(
            routes[1]["split"],
            json!([{"cluster": "metal", "weight": 80}, {"cluster": "k8s", "weight": 20}])
        );
        assert_eq!(
            routes[0],
            src.route_tables["maps"]["virtual_hosts"][0]["routes"][0]
        );
        assert_eq!(
            apply(&src.route_tables, &src.clusters, None),
            src.route_tables
        );
    }

    #[test]
    fn an_override_the_files_no_longer_fit_is_left_out_and_can_be_reset() {
        let src = source();
        let by_route = |route: &str, targets| {
            BTreeMap::from([(
                "maps".to_owned(),
                BTreeMap::from([(route.to_owned(), targets)]),
            )])
        };
        // A cluster the group no longer has.
        let missing = by_route("kartotherian", vec![t("metal", 1), t("gone", 1)]);
        assert_eq!(
            apply(&src.route_tables, &src.clusters, Some(&missing)),
            src.route_tables
        );
        // A route that has a cluster, not a split.
        let no_split = by_route(
            "route_tables.maps.virtual_hosts[0].routes[0]",
            vec![t("metal", 1)],
        );
        let applied = apply(&src.route_tables, &src.clusters, Some(&no_split));
        assert_eq!(applied, src.route_tables);
        assert!(applied["maps"]["virtual_hosts"][0]["routes"][0]
            .get("split")
            .is_none());
        // Either override can still be dropped.
        let current = [t("metal", 1)];
        let reset = request(
            "route_tables.maps.virtual_hosts[0].routes[0]",
            RouteOperation::Reset,
        );
        assert_eq!(
            reset.resolve(&src.route_tables, &src.clusters, Some(&current)),
            Ok(None)
        );
        assert_eq!(
            reset.resolve(&src.route_tables, &src.clusters, None),
            Err(SplitError::NotASplit(
                "route_tables.maps.virtual_hosts[0].routes[0]".into()
            ))
        );
        assert_eq!(
            reset.split_now(&src.route_tables, Some(&current)),
            Some(current.to_vec())
        );
        assert_eq!(
            request("kartotherian", RouteOperation::Reset).split_now(&src.route_tables, None),
            Some(vec![t("metal", 90), t("k8s", 10)])
        );
    }
}

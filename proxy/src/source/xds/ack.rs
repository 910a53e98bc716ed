//! What the xDS client has accepted and owes answers for: the resources held, updates held
//! back for the rest of a change, and the ACK or NACK each update gets (xDS-lite R8–R12).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use legate_xds::protocol::{Message, ResourceError, ResourceType};
use tracing::{info, warn};

use super::resources::{self, Held, Problem};
use super::Apply;
use crate::apply::ApplyError;
use crate::state::XdsState;

/// Updates received but not yet answered, because the set they form refers to resources that
/// an update of another type, already on its way, adds (or stops referring to ones it
/// removes): a cluster removed before the route that used it, say. Answered together, within
/// [`DEFER_LIMIT`] (a control plane sends the parts of one change back to back).
#[derive(Debug, Default)]
pub struct Pending {
    candidate: Option<Held>,
    answers: Vec<(ResourceType, String, String)>,
    errors: Vec<Problem>,
    since: Option<tokio::time::Instant>,
}

/// How long an update whose references do not resolve yet waits for the rest of a change.
const DEFER_LIMIT: Duration = Duration::from_millis(500);

impl Pending {
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.since.map(|t| t + DEFER_LIMIT)
    }
}

/// Handles one message from the control plane; returns the answers to send.
pub fn handle(
    msg: Message,
    held: &mut Held,
    pending: &mut Pending,
    apply: &dyn Apply,
    xds: &XdsState,
    allow_files: &[String],
) -> Vec<Message> {
    let base = pending.candidate.clone().unwrap_or_else(|| held.clone());
    let (resource_type, version, nonce, candidate) = match msg {
        Message::Ping => return vec![Message::Pong],
        Message::Response {
            resource_type,
            version_info,
            nonce,
            resources,
        } if resource_type != ResourceType::Endpoints => {
            let mut candidate = base;
            candidate
                .sotw
                .insert(resource_type, (version_info.clone(), resources));
            (resource_type, version_info, nonce, candidate)
        }
        Message::Delta {
            resource_type: ResourceType::Endpoints,
            system_version_info,
            nonce,
            resources,
            removed_resources,
        } => {
            let mut candidate = base;
            let map = candidate.endpoints.get_or_insert_with(BTreeMap::new);
            for name in removed_resources {
                map.remove(&name);
            }
            for r in resources {
                map.insert(r.name.clone(), r);
            }
            candidate.endpoints_version = Some(system_version_info.clone());
            (
                ResourceType::Endpoints,
                system_version_info,
                nonce,
                candidate,
            )
        }
        Message::Response {
            nonce,
            resource_type,
            ..
        }
        | Message::Delta {
            nonce,
            resource_type,
            ..
        } => {
            let error = ResourceError {
                name: "*".into(),
                error: format!("{resource_type} cannot be sent that way"),
            };
            return vec![nack(resource_type, held, nonce, vec![error], xds)];
        }
        _ => return Vec::new(),
    };
    pending.answers.push((resource_type, version, nonce));

    // Every resource must decode and fit the bootstrap; a complete set must also check and
    // apply (R12).
    let complete = candidate.complete();
    let outcome = match resources::decode(&candidate, allow_files) {
        Err(errors) => Err(errors),
        Ok(decoded) if !complete => apply.precheck(&decoded).map(|()| false).map_err(problems),
        Ok(decoded) => apply
            .apply(decoded, candidate.version_label())
            .map(|()| true)
            .map_err(problems),
    };
    match outcome {
        Ok(applied) => {
            *held = candidate;
            if applied && !xds.ready.swap(true, Ordering::AcqRel) {
                info!("first complete config from the control plane applied");
            }
            record_versions(held, xds);
            let answers = std::mem::take(pending).answers;
            answers
                .into_iter()
                .map(|(resource_type, version_info, nonce)| Message::Ack {
                    resource_type,
                    version_info,
                    nonce,
                })
                .collect()
        }
        Err(errors) if errors.iter().all(|e| e.deferrable) && pending.answers.len() < 4 => {
            pending.candidate = Some(candidate);
            pending.errors = errors;
            pending.since.get_or_insert_with(tokio::time::Instant::now);
            Vec::new()
        }
        Err(errors) => {
            pending.errors = errors;
            give_up(held, pending, xds)
        }
    }
}

/// Why the applier refused a set, resource by resource.
fn problems(e: ApplyError) -> Vec<Problem> {
    match e {
        ApplyError::Invalid(errors) | ApplyError::InvalidWithResources(errors) => {
            errors.0.iter().map(resources::name).collect()
        }
        e => vec![Problem {
            detail: ResourceError {
                name: "*".into(),
                error: e.to_string(),
            },
            cluster: None,
            deferrable: false,
        }],
    }
}

/// NACKs every pending update with the reasons they could not be applied.
pub fn give_up(held: &Held, pending: &mut Pending, xds: &XdsState) -> Vec<Message> {
    let Pending {
        answers, errors, ..
    } = std::mem::take(pending);
    answers
        .into_iter()
        .map(|(resource_type, _, nonce)| {
            let detail = errors.iter().map(|p| p.for_type(resource_type)).collect();
            nack(resource_type, held, nonce, detail, xds)
        })
        .collect()
}

fn record_versions(held: &Held, xds: &XdsState) {
    xds.update(|s| {
        s.versions = held
            .sotw
            .iter()
            .map(|(t, (v, _))| (t.to_string(), v.clone()))
            .collect();
        s.endpoints_version = held.endpoints_version.clone();
        s.endpoint_versions = held
            .endpoints
            .iter()
            .flat_map(|m| m.values().map(|r| (r.name.clone(), r.version.clone())))
            .collect();
        s.updated_at = Some(humantime::format_rfc3339_millis(SystemTime::now()).to_string());
    });
}

fn nack(
    resource_type: ResourceType,
    held: &Held,
    nonce: String,
    error_detail: Vec<ResourceError>,
    xds: &XdsState,
) -> Message {
    let version_info = match resource_type {
        ResourceType::Endpoints => held.endpoints_version.clone().unwrap_or_default(),
        t => held
            .sotw
            .get(&t)
            .map(|(v, _)| v.clone())
            .unwrap_or_default(),
    };
    let summary: Vec<String> = error_detail
        .iter()
        .map(|e| format!("{}: {}", e.name, e.error))
        .collect();
    warn!(resource_type = %resource_type, errors = ?summary, "control plane update rejected; the running config stays");
    xds.update(|s| s.last_nack = Some(format!("{resource_type}: {}", summary.join("; "))));
    Message::Nack {
        resource_type,
        version_info,
        nonce,
        error_detail,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use legate_xds::protocol::EndpointsResource;

    use super::*;
    use crate::config::merge::{merge, Resources};
    use crate::config::{ConfigError, ConfigErrors, ErrorKind, FieldPath};
    use crate::source::xds::resources::tests::{bootstrap, full};

    /// Checks a set as the applier does (bootstrap + resources, validated) and records the
    /// versions it accepts.
    #[derive(Default)]
    struct Checking {
        applied: Mutex<Vec<String>>,
    }

    impl Apply for Checking {
        fn apply(&self, resources: Resources, version: String) -> Result<(), ApplyError> {
            let config = merge(&bootstrap(), &resources)
                .map_err(|e| ApplyError::InvalidWithResources(ConfigErrors(e)))?;
            crate::config::check(config).map_err(ApplyError::InvalidWithResources)?;
            self.applied.lock().unwrap().push(version);
            Ok(())
        }

        fn precheck(&self, resources: &Resources) -> Result<(), ApplyError> {
            merge(&bootstrap_with_table(), resources)
                .map(drop)
                .map_err(|e| ApplyError::InvalidWithResources(ConfigErrors(e)))
        }
    }

    /// Rejects every set with one error of the given kind and wording.
    struct Rejecting(ErrorKind, &'static str);

    impl Apply for Rejecting {
        fn apply(&self, _: Resources, _: String) -> Result<(), ApplyError> {
            let path = FieldPath::root("route_tables")
                .key("maps")
                .field("virtual_hosts");
            Err(ApplyError::Invalid(ConfigErrors(vec![ConfigError::new(
                self.0,
                path.index(0).field("routes").index(0).field("cluster"),
                self.1,
            )])))
        }
    }

    fn clusters_update(nonce: &str) -> Message {
        Message::Response {
            resource_type: ResourceType::Clusters,
            version_info: "c2".into(),
            nonce: nonce.into(),
            resources: vec![serde_json::json!({"name": "other"})],
        }
    }

    #[test]
    fn deferral_follows_the_error_kind_not_its_wording() {
        let shared = XdsState::default();
        // A reference error, whatever it says, waits for the rest of the change.
        for wording in ["unknown cluster \"tiles\"", "no such thing, reworded"] {
            let mut held = full();
            let mut pending = Pending::default();
            let apply = Rejecting(ErrorKind::UnknownReference, wording);
            let answers = handle(
                clusters_update("n1"),
                &mut held,
                &mut pending,
                &apply,
                &shared,
                &[],
            );
            assert!(answers.is_empty(), "{wording}: held back, got {answers:?}");
            assert!(pending.deadline().is_some());
        }
        // Any other kind is NACKed at once, even when its text mentions an unknown cluster.
        let mut held = full();
        let mut pending = Pending::default();
        let apply = Rejecting(ErrorKind::Invalid, "unknown cluster \"tiles\"");
        let answers = handle(
            clusters_update("n2"),
            &mut held,
            &mut pending,
            &apply,
            &shared,
            &[],
        );
        assert!(
            matches!(&answers[..], [Message::Nack { nonce, .. }] if nonce == "n2"),
            "{answers:?}"
        );
        assert!(pending.deadline().is_none());
    }

    /// The stand-ins' bootstrap, with a route table of its own.
    fn bootstrap_with_table() -> crate::config::Config {
        let mut config = bootstrap();
        let table = serde_yaml::from_str("virtual_hosts: []").unwrap();
        config.route_tables.insert("local".into(), table);
        config
    }

    #[test]
    fn a_partial_set_that_clashes_with_the_bootstrap_is_nacked_at_once() {
        let shared = XdsState::default();
        let mut held = Held::default();
        let mut pending = Pending::default();
        let answers = handle(
            Message::Response {
                resource_type: ResourceType::RouteTables,
                version_info: "r1".into(),
                nonce: "n-r".into(),
                resources: vec![serde_json::json!({"name": "local", "virtual_hosts": []})],
            },
            &mut held,
            &mut pending,
            &Checking::default(),
            &shared,
            &[],
        );
        match &answers[..] {
            [Message::Nack { error_detail, .. }] => {
                assert_eq!(
                    error_detail[0].name, "route_tables[local]",
                    "{error_detail:?}"
                );
                assert!(
                    error_detail[0].error.contains("defined both"),
                    "{error_detail:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(held.sotw.is_empty(), "nothing is held from a NACKed update");
    }

    #[test]
    fn endpoint_nacks_name_the_cluster() {
        let shared = XdsState::default();
        let mut held = full();
        let mut pending = Pending::default();
        let answers = handle(
            Message::Delta {
                resource_type: ResourceType::Endpoints,
                system_version_info: "s2".into(),
                nonce: "n-e2".into(),
                resources: vec![EndpointsResource {
                    name: "tiles".into(),
                    version: "e2".into(),
                    endpoints: vec![serde_json::json!("no-port")],
                }],
                removed_resources: vec![],
            },
            &mut held,
            &mut pending,
            &Checking::default(),
            &shared,
            &[],
        );
        match &answers[..] {
            [Message::Nack { error_detail, .. }] => {
                assert_eq!(error_detail[0].name, "tiles", "{error_detail:?}");
                assert!(
                    error_detail[0].error.contains("has no port"),
                    "{error_detail:?}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn handle_acks_partial_sets_then_applies_and_nacks_bad_updates() {
        let apply = Checking::default();
        let applied = &apply.applied;
        let shared = XdsState::default();
        let mut held = Held::default();
        let mut pending = Pending::default();
        let mut send = |msg| {
            let mut answers = handle(msg, &mut held, &mut pending, &apply, &shared, &[]);
            assert!(answers.len() <= 1, "{answers:?}");
            answers.pop()
        };
        let full = full();
        for t in ResourceType::SOTW {
            let (v, r) = full.sotw[&t].clone();
            let answer = send(Message::Response {
                resource_type: t,
                version_info: v.clone(),
                nonce: format!("n-{t}"),
                resources: r,
            });
            assert!(matches!(answer, Some(Message::Ack { .. })), "{answer:?}");
        }
        assert!(
            applied.lock().unwrap().is_empty(),
            "nothing applied before endpoints arrive"
        );
        assert!(!shared.ready.load(Ordering::Acquire));
        let answer = send(Message::Delta {
            resource_type: ResourceType::Endpoints,
            system_version_info: "s1".into(),
            nonce: "n-e".into(),
            resources: full.endpoints.clone().unwrap().into_values().collect(),
            removed_resources: vec![],
        });
        assert!(matches!(answer, Some(Message::Ack { .. })));
        assert_eq!(applied.lock().unwrap().len(), 1);
        assert!(shared.ready.load(Ordering::Acquire));

        let answer = send(Message::Response {
            resource_type: ResourceType::Clusters,
            version_info: "bad".into(),
            nonce: "n-bad".into(),
            resources: vec![serde_json::json!({"name": "tiles", "lb": "fastest"})],
        });
        match answer {
            Some(Message::Nack {
                version_info,
                nonce,
                error_detail,
                ..
            }) => {
                assert_eq!(version_info, "c1", "the version still held");
                assert_eq!(nonce, "n-bad");
                assert_eq!(error_detail[0].name, "clusters[tiles]");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            applied.lock().unwrap().len(),
            1,
            "a NACKed update changes nothing"
        );
        assert_eq!(send(Message::Ping), Some(Message::Pong));
    }

    #[tokio::test]
    async fn a_removal_waits_for_the_update_that_stops_referring_to_it() {
        let apply = Checking::default();
        let shared = XdsState::default();
        let mut held = full();
        held.sotw.insert(
            ResourceType::Clusters,
            (
                "c1".into(),
                vec![
                    serde_json::json!({"name": "tiles"}),
                    serde_json::json!({"name": "other"}),
                ],
            ),
        );
        let mut pending = Pending::default();
        // The cluster the route uses goes first...
        let answers = handle(
            Message::Response {
                resource_type: ResourceType::Clusters,
                version_info: "c2".into(),
                nonce: "n1".into(),
                resources: vec![serde_json::json!({"name": "other"})],
            },
            &mut held,
            &mut pending,
            &apply,
            &shared,
            &[],
        );
        assert!(answers.is_empty(), "held back: {answers:?}");
        assert!(pending.deadline().is_some());
        // ...then the route moves to the cluster that stays: both are applied and ACKed.
        let answers = handle(
            Message::Response {
                resource_type: ResourceType::RouteTables,
                version_info: "r2".into(),
                nonce: "n2".into(),
                resources: vec![
                    serde_json::json!({"name": "maps", "virtual_hosts": [{"hosts": ["*"], "routes": [{"match": {"prefix": "/"}, "cluster": "other"}]}]}),
                ],
            },
            &mut held,
            &mut pending,
            &apply,
            &shared,
            &[],
        );
        let nonces: Vec<_> = answers
            .iter()
            .map(|m| match m {
                Message::Ack { nonce, .. } => nonce.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(nonces, ["n1", "n2"]);
        assert_eq!(held.sotw[&ResourceType::Clusters].0, "c2");
        assert!(pending.deadline().is_none());

        // A reference that nothing resolves is rejected at the deadline.
        handle(
            Message::Response {
                resource_type: ResourceType::Clusters,
                version_info: "c3".into(),
                nonce: "n3".into(),
                resources: vec![],
            },
            &mut held,
            &mut pending,
            &apply,
            &shared,
            &[],
        );
        let answers = give_up(&held, &mut pending, &shared);
        assert!(
            matches!(&answers[..], [Message::Nack { nonce, version_info, .. }] if nonce == "n3" && version_info == "c2")
        );
    }
}

//! One proxy's session, as a pure state machine: given what the proxy holds (its `hello`,
//! then its ACKs and NACKs) and what its group should have, what to send (R7–R11).
//!
//! For each state-of-the-world type and each endpoints resource it tracks the version the
//! proxy holds, the versions sent and not yet answered, and the versions it NACKed. A version
//! is sent when it differs from what the proxy will hold once everything in flight is
//! answered, is not itself in flight, and was never NACKed (R11).
//!
//! The order of a sync is `clusters`, `endpoints`, `route_tables`, `listeners`, so that a
//! proxy applying updates one at a time meets each reference after what it refers to.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;
use tracing::warn;

use crate::protocol::{EndpointsResource, Message, Node, ResourceError, ResourceType};
use crate::store::GroupSnapshot;

/// NACKed versions remembered per resource (R11); older ones are forgotten.
const NACKS_KEPT: usize = 32;

/// Why a session must end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("the first message must be hello, got {0}")]
    NoHello(&'static str),
    #[error("unexpected {0} message from a proxy")]
    Unexpected(&'static str),
}

/// The name of a message's type, for logs and errors.
pub fn kind(m: &Message) -> &'static str {
    match m {
        Message::Hello { .. } => "hello",
        Message::Response { .. } => "response",
        Message::Delta { .. } => "delta",
        Message::Ack { .. } => "ack",
        Message::Nack { .. } => "nack",
        Message::Ping => "ping",
        Message::Pong => "pong",
    }
}

/// What is known of one resource (or one state-of-the-world type) at the proxy. `None` as a
/// version means "absent".
#[derive(Debug, Clone, Default)]
struct Tracked {
    /// What the proxy holds: from its hello, then from its ACKs.
    held: Option<String>,
    /// Sent, not yet answered, oldest first.
    in_flight: Vec<Option<String>>,
    /// The last version sent (`Some(None)`: a removal).
    last_sent: Option<Option<String>>,
    /// Rejected by the proxy: never sent again (R11).
    nacked: VecDeque<Option<String>>,
}

impl Tracked {
    fn holding(held: Option<String>) -> Tracked {
        Tracked {
            held,
            ..Tracked::default()
        }
    }

    /// What the proxy will hold once everything in flight is applied.
    fn projected(&self) -> &Option<String> {
        self.in_flight.last().unwrap_or(&self.held)
    }

    fn should_send(&self, desired: &Option<String>) -> bool {
        desired != self.projected()
            && !self.in_flight.contains(desired)
            && !self.nacked.contains(desired)
    }

    fn sent(&mut self, version: Option<String>) {
        self.in_flight.push(version.clone());
        self.last_sent = Some(version);
    }

    fn answered(&mut self, version: &Option<String>) {
        if let Some(i) = self.in_flight.iter().position(|v| v == version) {
            self.in_flight.remove(i);
        }
    }

    fn acked(&mut self, version: Option<String>) {
        self.answered(&version);
        self.held = version;
    }

    fn nacked(&mut self, version: Option<String>) {
        self.answered(&version);
        if !self.nacked.contains(&version) {
            if self.nacked.len() == NACKS_KEPT {
                self.nacked.pop_front();
            }
            self.nacked.push_back(version);
        }
    }

    fn status(&self) -> VersionStatus {
        VersionStatus {
            sent: self.last_sent.clone().flatten(),
            acked: self.held.clone(),
            in_flight: self.in_flight.len(),
        }
    }
}

/// An update sent and not yet answered, by nonce.
#[derive(Debug, Clone)]
enum Pending {
    Sotw {
        resource_type: ResourceType,
        version: String,
    },
    Delta {
        system_version: String,
        /// Each cluster sent, with its version (`None`: removed).
        resources: Vec<(String, Option<String>)>,
    },
}

/// The latest NACK of a session.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastNack {
    #[serde(rename = "type")]
    pub resource_type: ResourceType,
    /// The version rejected (for `endpoints`, the delta's system version).
    pub version: String,
    /// The version the proxy kept.
    pub held: String,
    pub nonce: String,
    pub error_detail: Vec<ResourceError>,
}

/// The versions of one type or resource, for `/v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionStatus {
    /// The last version sent this session (`null`: none, or a removal).
    pub sent: Option<String>,
    /// The version the proxy holds: from its hello, then from its ACKs.
    pub acked: Option<String>,
    /// Updates sent and not yet answered.
    pub in_flight: usize,
}

/// One session's state, for `/v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionStatus {
    pub node: Node,
    /// Per type; `endpoints` is the system version of the whole set.
    pub versions: BTreeMap<ResourceType, VersionStatus>,
    /// Per endpoints resource (cluster).
    pub endpoints: BTreeMap<String, VersionStatus>,
    pub last_nack: Option<LastNack>,
}

/// One proxy's session.
#[derive(Debug, Clone)]
pub struct Session {
    node: Node,
    nonce_prefix: String,
    next_nonce: u64,
    sotw: BTreeMap<ResourceType, Tracked>,
    /// The endpoints set as a whole (its system version): so that a proxy that holds no
    /// endpoints yet gets one delta even when its group has no clusters (R12).
    endpoints_set: Tracked,
    endpoints: BTreeMap<String, Tracked>,
    pending: BTreeMap<String, Pending>,
    last_nack: Option<LastNack>,
}

impl Session {
    /// A session from the proxy's `hello` (R7). Nonces are `<nonce_prefix>-<n>`: the prefix
    /// must be unique per session.
    pub fn from_hello(hello: Message, nonce_prefix: &str) -> Result<Session, SessionError> {
        let Message::Hello {
            node,
            versions,
            endpoint_versions,
        } = hello
        else {
            return Err(SessionError::NoHello(kind(&hello)));
        };
        let held = |t: ResourceType| versions.get(&t).filter(|v| !v.is_empty()).cloned();
        Ok(Session {
            node,
            nonce_prefix: nonce_prefix.to_string(),
            next_nonce: 0,
            sotw: ResourceType::SOTW
                .iter()
                .map(|t| (*t, Tracked::holding(held(*t))))
                .collect(),
            endpoints_set: Tracked::holding(held(ResourceType::Endpoints)),
            endpoints: endpoint_versions
                .into_iter()
                .map(|(name, v)| (name, Tracked::holding(Some(v))))
                .collect(),
            pending: BTreeMap::new(),
            last_nack: None,
        })
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    fn nonce(&mut self) -> String {
        self.next_nonce += 1;
        format!("{}-{}", self.nonce_prefix, self.next_nonce)
    }

    /// Takes a message from the proxy; returns the replies it needs (a `pong`). ACKs and
    /// NACKs update what the proxy holds: call [`Session::updates`] afterwards.
    pub fn receive(&mut self, message: Message) -> Result<Vec<Message>, SessionError> {
        match message {
            Message::Ping => Ok(vec![Message::Pong]),
            Message::Pong => Ok(Vec::new()),
            Message::Ack {
                resource_type,
                version_info,
                nonce,
            } => {
                self.ack(resource_type, &version_info, &nonce);
                Ok(Vec::new())
            }
            Message::Nack {
                resource_type,
                version_info,
                nonce,
                error_detail,
            } => {
                self.nack(resource_type, version_info, nonce, error_detail);
                Ok(Vec::new())
            }
            other => Err(SessionError::Unexpected(kind(&other))),
        }
    }

    fn take_pending(&mut self, resource_type: ResourceType, nonce: &str) -> Option<Pending> {
        let Some(pending) = self.pending.remove(nonce) else {
            warn!(node = %self.node.id, %nonce, %resource_type, "answer to an unknown nonce ignored");
            return None;
        };
        let sent_type = match &pending {
            Pending::Sotw { resource_type, .. } => *resource_type,
            Pending::Delta { .. } => ResourceType::Endpoints,
        };
        if sent_type != resource_type {
            warn!(node = %self.node.id, %nonce, sent = %sent_type, answered = %resource_type,
                "answer names another type than the update it answers; going by the nonce");
        }
        Some(pending)
    }

    fn ack(&mut self, resource_type: ResourceType, version_info: &str, nonce: &str) {
        match self.take_pending(resource_type, nonce) {
            None => {}
            Some(Pending::Sotw {
                resource_type,
                version,
            }) => {
                if version != version_info {
                    warn!(node = %self.node.id, %nonce, sent = %version, acked = %version_info,
                        "ACK names another version than the one sent; going by the nonce");
                }
                if let Some(t) = self.sotw.get_mut(&resource_type) {
                    t.acked(Some(version));
                }
            }
            Some(Pending::Delta {
                system_version,
                resources,
            }) => {
                self.endpoints_set.acked(Some(system_version));
                for (name, version) in resources {
                    self.endpoints.entry(name).or_default().acked(version);
                }
            }
        }
    }

    fn nack(
        &mut self,
        resource_type: ResourceType,
        version_info: String,
        nonce: String,
        error_detail: Vec<ResourceError>,
    ) {
        let version = match self.take_pending(resource_type, &nonce) {
            None => return,
            Some(Pending::Sotw {
                resource_type,
                version,
            }) => {
                if let Some(t) = self.sotw.get_mut(&resource_type) {
                    t.nacked(Some(version.clone()));
                }
                version
            }
            Some(Pending::Delta {
                system_version,
                resources,
            }) => {
                // The resources the proxy names are rejected; if it names none of them, all
                // are. The others were not applied either (all or nothing, R10): they become
                // due again and go out in the next delta.
                let named = |n: &str| error_detail.iter().any(|e| e.name == n);
                let any_named = resources.iter().any(|(n, _)| named(n));
                self.endpoints_set.nacked(Some(system_version.clone()));
                for (name, version) in resources {
                    let t = self.endpoints.entry(name.clone()).or_default();
                    if !any_named || named(&name) {
                        t.nacked(version);
                    } else {
                        t.answered(&version);
                    }
                }
                system_version
            }
        };
        warn!(node = %self.node.id, %resource_type, %version, %nonce, ?error_detail, "proxy NACKed an update");
        self.last_nack = Some(LastNack {
            resource_type,
            version,
            held: version_info,
            nonce,
            error_detail,
        });
    }

    /// What to send now so the proxy converges on `snapshot` (R8, R9, R11).
    pub fn updates(&mut self, snapshot: &GroupSnapshot) -> Vec<Message> {
        let mut out = Vec::new();
        self.sotw_update(ResourceType::Clusters, snapshot, &mut out);
        self.endpoints_update(snapshot, &mut out);
        self.sotw_update(ResourceType::RouteTables, snapshot, &mut out);
        self.sotw_update(ResourceType::Listeners, snapshot, &mut out);
        out
    }

    fn sotw_update(&mut self, t: ResourceType, snapshot: &GroupSnapshot, out: &mut Vec<Message>) {
        let Some(want) = snapshot.sotw(t) else {
            return;
        };
        let desired = Some(want.version.clone());
        let tracked = self.sotw.entry(t).or_default();
        if !tracked.should_send(&desired) {
            return;
        }
        tracked.sent(desired);
        let nonce = self.nonce();
        self.pending.insert(
            nonce.clone(),
            Pending::Sotw {
                resource_type: t,
                version: want.version.clone(),
            },
        );
        out.push(Message::Response {
            resource_type: t,
            version_info: want.version.clone(),
            nonce,
            resources: want.resources.clone(),
        });
    }

    fn endpoints_update(&mut self, snapshot: &GroupSnapshot, out: &mut Vec<Message>) {
        let mut resources: Vec<EndpointsResource> = Vec::new();
        let mut removed: Vec<String> = Vec::new();
        for (name, res) in &snapshot.endpoints {
            let t = self.endpoints.entry(name.clone()).or_default();
            let desired = Some(res.version.clone());
            if t.should_send(&desired) {
                t.sent(desired);
                resources.push(res.clone());
            }
        }
        for (name, t) in &mut self.endpoints {
            if !snapshot.endpoints.contains_key(name) && t.should_send(&None) {
                t.sent(None);
                removed.push(name.clone());
            }
        }
        let system = Some(snapshot.endpoints_version.clone());
        if resources.is_empty() && removed.is_empty() && !self.endpoints_set.should_send(&system) {
            return;
        }
        self.endpoints_set.sent(system);
        let nonce = self.nonce();
        self.pending.insert(
            nonce.clone(),
            Pending::Delta {
                system_version: snapshot.endpoints_version.clone(),
                resources: resources
                    .iter()
                    .map(|r| (r.name.clone(), Some(r.version.clone())))
                    .chain(removed.iter().map(|n| (n.clone(), None)))
                    .collect(),
            },
        );
        out.push(Message::Delta {
            resource_type: ResourceType::Endpoints,
            system_version_info: snapshot.endpoints_version.clone(),
            nonce,
            resources,
            removed_resources: removed,
        });
    }

    /// This session's versions and last NACK, for `/v1/status`.
    /// Whether the proxy holds (has ACKed) every version in `served`, by type; what
    /// [`crate::propagation::holds`] tells from a status, without building one.
    pub fn holds(&self, served: &BTreeMap<ResourceType, String>) -> bool {
        served.iter().all(|(kind, version)| {
            let tracked = match kind {
                ResourceType::Endpoints => Some(&self.endpoints_set),
                other => self.sotw.get(other),
            };
            tracked.and_then(|t| t.held.as_ref()) == Some(version)
        })
    }

    pub fn status(&self) -> SessionStatus {
        let mut versions: BTreeMap<ResourceType, VersionStatus> =
            self.sotw.iter().map(|(t, s)| (*t, s.status())).collect();
        versions.insert(ResourceType::Endpoints, self.endpoints_set.status());
        SessionStatus {
            node: self.node.clone(),
            versions,
            endpoints: self
                .endpoints
                .iter()
                .filter(|(_, t)| {
                    t.held.is_some()
                        || !t.in_flight.is_empty()
                        || matches!(t.last_sent, Some(Some(_)))
                })
                .map(|(n, t)| (n.clone(), t.status()))
                .collect(),
            last_nack: self.last_nack.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{merge_files, GroupSnapshot, Overrides};

    const GROUP: &str = r#"
listeners:
  - { name: l, listen: "127.0.0.1:1", http: { route_table: t } }
route_tables:
  t: { virtual_hosts: [{ hosts: ["*"], routes: [{ match: { prefix: / }, cluster: a }] }] }
clusters:
  - { name: a, endpoints: ["10.0.0.1:80"] }
  - { name: b, endpoints: ["10.0.0.2:80"] }
"#;

    fn snapshot(text: &str) -> GroupSnapshot {
        GroupSnapshot::build(
            &merge_files(&[("g.yaml".to_string(), text.to_string())]).unwrap(),
            &Overrides::default(),
        )
    }

    fn hello(versions: &[(ResourceType, &str)], endpoints: &[(&str, &str)]) -> Message {
        Message::Hello {
            node: Node {
                id: "p1".into(),
                cluster: "g".into(),
                zone: None,
            },
            versions: versions
                .iter()
                .map(|(t, v)| (*t, (*v).to_string()))
                .collect(),
            endpoint_versions: endpoints
                .iter()
                .map(|(n, v)| ((*n).to_string(), (*v).to_string()))
                .collect(),
        }
    }

    /// ACKs every update, as a proxy that accepts everything would.
    fn ack_all(s: &mut Session, sent: &[Message]) {
        for m in sent {
            let ack = match m {
                Message::Response {
                    resource_type,
                    version_info,
                    nonce,
                    ..
                } => Message::Ack {
                    resource_type: *resource_type,
                    version_info: version_info.clone(),
                    nonce: nonce.clone(),
                },
                Message::Delta {
                    system_version_info,
                    nonce,
                    ..
                } => Message::Ack {
                    resource_type: ResourceType::Endpoints,
                    version_info: system_version_info.clone(),
                    nonce: nonce.clone(),
                },
                _ => continue,
            };
            assert_eq!(s.receive(ack).unwrap(), vec![]);
        }
    }

    fn nonce_of(m: &Message) -> String {
        match m {
            Message::Response { nonce, .. } | Message::Delta { nonce, .. } => nonce.clone(),
            _ => panic!("not an update"),
        }
    }

    fn types(sent: &[Message]) -> Vec<ResourceType> {
        sent.iter()
            .map(|m| match m {
                Message::Response { resource_type, .. } | Message::Delta { resource_type, .. } => {
                    *resource_type
                }
                _ => panic!("not an update"),
            })
            .collect()
    }

    #[test]
    fn first_sync_sends_all_four_with_unique_nonces() {
        let snap = snapshot(GROUP);
        let mut s = Session::from_hello(hello(&[], &[]), "s1").unwrap();
        let sent = s.updates(&snap);
        assert_eq!(
            types(&sent),
            [
                ResourceType::Clusters,
                ResourceType::Endpoints,
                ResourceType::RouteTables,
                ResourceType::Listeners
            ]
        );
        let mut nonces: Vec<String> = sent.iter().map(nonce_of).collect();
        nonces.sort();
        nonces.dedup();
        assert_eq!(nonces.len(), 4);
        match &sent[1] {
            Message::Delta {
                resources,
                removed_resources,
                system_version_info,
                ..
            } => {
                assert_eq!(resources.len(), 2);
                assert!(removed_resources.is_empty());
                assert_eq!(system_version_info, &snap.endpoints_version);
            }
            other => panic!("{other:?}"),
        }
        // Nothing more until something changes, whether or not the proxy has answered.
        assert!(s.updates(&snap).is_empty());
        ack_all(&mut s, &sent);
        assert!(s.updates(&snap).is_empty());
        let st = s.status();
        assert_eq!(
            st.versions[&ResourceType::Clusters].acked.as_deref(),
            Some(snap.clusters.version.as_str())
        );
        assert_eq!(
            st.endpoints["a"].acked.as_deref(),
            Some(snap.endpoints["a"].version.as_str())
        );
    }

    #[test]
    fn an_empty_group_still_sends_one_of_each() {
        let snap = snapshot("");
        let mut s = Session::from_hello(hello(&[], &[]), "s").unwrap();
        let sent = s.updates(&snap);
        assert_eq!(
            types(&sent).len(),
            4,
            "the proxy needs all four to be ready (R12)"
        );
    }

    #[test]
    fn same_versions_send_nothing() {
        let snap = snapshot(GROUP);
        let mut versions: Vec<(ResourceType, &str)> = Vec::new();
        let all = snap.versions();
        for (t, v) in &all {
            versions.push((*t, v.as_str()));
        }
        let eps: Vec<(&str, &str)> = snap
            .endpoints
            .iter()
            .map(|(n, r)| (n.as_str(), r.version.as_str()))
            .collect();
        let mut s = Session::from_hello(hello(&versions, &eps), "s").unwrap();
        assert!(
            s.updates(&snap).is_empty(),
            "R13: a reconnect with current versions gets nothing"
        );
    }

    #[test]
    fn a_nacked_version_is_not_resent_but_a_newer_one_is() {
        let snap = snapshot(GROUP);
        let mut s = Session::from_hello(hello(&[], &[]), "s").unwrap();
        let sent = s.updates(&snap);
        let clusters_nonce = nonce_of(&sent[0]);
        ack_all(&mut s, &sent[1..]);
        s.receive(Message::Nack {
            resource_type: ResourceType::Clusters,
            version_info: String::new(),
            nonce: clusters_nonce.clone(),
            error_detail: vec![ResourceError {
                name: "a".into(),
                error: "clusters[a].lb: bad".into(),
            }],
        })
        .unwrap();
        assert!(s.updates(&snap).is_empty(), "R11");
        let nack = s.status().last_nack.unwrap();
        assert_eq!(nack.resource_type, ResourceType::Clusters);
        assert_eq!(nack.version, snap.clusters.version);
        assert_eq!(nack.nonce, clusters_nonce);
        // A new clusters version goes out.
        let newer = snapshot(&GROUP.replace("{ name: a,", "{ name: a, lb: random,"));
        let sent = s.updates(&newer);
        assert_eq!(types(&sent), [ResourceType::Clusters]);
        // Going back to the NACKed content does not send it again.
        ack_all(&mut s, &sent);
        assert_eq!(types(&s.updates(&snap)), Vec::<ResourceType>::new());
    }

    #[test]
    fn a_nacked_delta_resends_only_the_resources_not_named() {
        let snap = snapshot(GROUP);
        let mut s = Session::from_hello(hello(&[], &[]), "s").unwrap();
        let sent = s.updates(&snap);
        ack_all(&mut s, &[sent[0].clone(), sent[2].clone(), sent[3].clone()]);
        s.receive(Message::Nack {
            resource_type: ResourceType::Endpoints,
            version_info: String::new(),
            nonce: nonce_of(&sent[1]),
            error_detail: vec![ResourceError {
                name: "b".into(),
                error: "endpoints[b]: bad".into(),
            }],
        })
        .unwrap();
        let again = s.updates(&snap);
        match again.as_slice() {
            [Message::Delta { resources, .. }] => {
                assert_eq!(resources.iter().map(|r| &r.name).collect::<Vec<_>>(), ["a"]);
            }
            other => panic!("{other:?}"),
        }
        ack_all(&mut s, &again);
        assert!(s.updates(&snap).is_empty());
    }

    #[test]
    fn a_delta_holds_only_changed_clusters_and_removals() {
        let snap = snapshot(GROUP);
        let mut s = Session::from_hello(hello(&[], &[("gone", "e1")]), "s").unwrap();
        let sent = s.updates(&snap);
        match &sent[1] {
            Message::Delta {
                removed_resources, ..
            } => assert_eq!(removed_resources, &["gone".to_string()]),
            other => panic!("{other:?}"),
        }
        ack_all(&mut s, &sent);
        let changed = snapshot(&GROUP.replace("10.0.0.2:80", "10.0.0.3:80"));
        let sent = s.updates(&changed);
        match sent.as_slice() {
            [Message::Delta {
                resources,
                removed_resources,
                system_version_info,
                ..
            }] => {
                assert_eq!(resources.len(), 1);
                assert_eq!(resources[0].name, "b");
                assert_eq!(
                    resources[0].endpoints,
                    vec![serde_json::json!("10.0.0.3:80")]
                );
                assert!(removed_resources.is_empty());
                assert_eq!(system_version_info, &changed.endpoints_version);
            }
            other => panic!("{other:?}"),
        }
        ack_all(&mut s, &sent);
        let status = s.status();
        assert!(!status.endpoints.contains_key("gone"));
        assert_eq!(
            status.endpoints["b"].acked.as_deref(),
            Some(changed.endpoints["b"].version.as_str())
        );
    }

    #[test]
    fn a_newer_version_may_go_while_one_is_unacked() {
        let v1 = snapshot(GROUP);
        let v2 = snapshot(&GROUP.replace("10.0.0.2:80", "10.0.0.3:80"));
        let v3 = snapshot(&GROUP.replace("10.0.0.2:80", "10.0.0.4:80"));
        let mut s = Session::from_hello(hello(&[], &[]), "s").unwrap();
        let first = s.updates(&v1);
        let second = s.updates(&v2);
        assert_eq!(types(&second), [ResourceType::Endpoints]);
        // Back to v1 while v1 is still in flight: not sent twice; once it is answered, the
        // proxy will end on v2, so v1 goes again.
        assert!(s.updates(&v1).is_empty());
        ack_all(&mut s, &first);
        let third = s.updates(&v1);
        match third.as_slice() {
            [Message::Delta { resources, .. }] => {
                assert_eq!(resources.len(), 1);
                assert_eq!(resources[0].version, v1.endpoints["b"].version);
            }
            other => panic!("{other:?}"),
        }
        ack_all(&mut s, &second);
        ack_all(&mut s, &third);
        assert!(s.updates(&v1).is_empty());
        assert_eq!(types(&s.updates(&v3)), [ResourceType::Endpoints]);
    }

    #[test]
    fn a_removed_cluster_in_flight_is_removed() {
        let v1 = snapshot(GROUP);
        let without_b =
            snapshot(&GROUP.replace("  - { name: b, endpoints: [\"10.0.0.2:80\"] }\n", ""));
        let mut s = Session::from_hello(hello(&[], &[]), "s").unwrap();
        let first = s.updates(&v1);
        let sent = s.updates(&without_b);
        assert!(sent.iter().any(|m| matches!(m, Message::Delta { removed_resources, .. } if removed_resources == &["b".to_string()])));
        ack_all(&mut s, &first);
        ack_all(&mut s, &sent);
        assert!(s.updates(&without_b).is_empty());
    }

    #[test]
    fn pings_are_answered_and_bad_messages_refused() {
        let mut s = Session::from_hello(hello(&[], &[]), "s").unwrap();
        assert_eq!(s.receive(Message::Ping).unwrap(), vec![Message::Pong]);
        assert_eq!(s.receive(Message::Pong).unwrap(), vec![]);
        assert_eq!(
            s.receive(hello(&[], &[])),
            Err(SessionError::Unexpected("hello"))
        );
        assert_eq!(
            Session::from_hello(Message::Ping, "s").unwrap_err(),
            SessionError::NoHello("ping")
        );
        // An answer to an unknown nonce changes nothing.
        s.receive(Message::Ack {
            resource_type: ResourceType::Clusters,
            version_info: "x".into(),
            nonce: "nope".into(),
        })
        .unwrap();
        assert_eq!(s.status().versions[&ResourceType::Clusters].acked, None);
    }
}

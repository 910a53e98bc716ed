//! Who may do what on the control plane: each connection's client (its certificate's role, or
//! only its address), and the check every stream, read and operator change passes.
//!
//! - [`roles`]: the roles file, mapping certificate names to roles.
//! - [`identity`]: the names in a client certificate.

pub mod identity;
pub mod roles;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};

pub use identity::Identity;
pub use roles::{Role, Roles, RolesError};

/// How the server tells clients apart.
#[derive(Debug, Clone)]
pub enum Access {
    /// Every client has a verified certificate (mTLS); its names give its role.
    Certificates(Arc<Roles>),
    /// No client certificates: anyone may open a stream and read; only loopback may change.
    Addresses,
}

/// One connection's client, as the checks see it.
#[derive(Debug, Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub principal: Principal,
}

/// What vouches for a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Its certificate: the role the first matching rule gives, and the name it matched.
    Certificate {
        identity: Identity,
        role: Option<(Role, String)>,
    },
    /// Nothing but its address (no client certificates on this server).
    Address,
}

/// What a client asks to do.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// Read `/v1/status`, `/metrics` or the audit log.
    Read,
    /// Open a stream, before its hello names the group: proxies only.
    OpenStream,
    /// Open the stream of a node group (checked on the hello).
    Stream { group: &'a str },
    /// Change something through the operator API (checked before the body is read).
    Change,
    /// A change that touches these node groups and clusters.
    ChangeIn {
        groups: &'a [String],
        clusters: &'a [String],
    },
}

impl Action<'_> {
    fn describe(&self) -> String {
        match self {
            Action::Read => "read status, metrics or the audit log".to_owned(),
            Action::OpenStream => "open a stream".to_owned(),
            Action::Stream { group } => format!("open the stream of group {group}"),
            Action::Change | Action::ChangeIn { .. } => "change anything".to_owned(),
        }
    }
}

/// Why a client was refused (403); the text says who it was taken for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("no role for the client certificate ({names}): no rule of the roles file matches")]
    NoRole { names: String },
    #[error("{who} is {role}: it may not {action}")]
    Role {
        who: String,
        role: String,
        action: String,
    },
    #[error("{who} is a proxy of group {group}: it may not open the stream of group {asked}")]
    OtherGroup {
        who: String,
        group: String,
        asked: String,
    },
    #[error("{who} is {role}: the change touches group {group}, outside its groups")]
    OutsideGroups {
        who: String,
        role: String,
        group: String,
    },
    #[error("{who} is {role}: the change touches cluster {cluster}, outside its clusters")]
    OutsideClusters {
        who: String,
        role: String,
        cluster: String,
    },
    #[error("{who} is {role}: the change touches no node group now (no group has the cluster), so only an operator of every group may make it")]
    NoGroup { who: String, role: String },
    #[error("changes from {addr} are refused: without client certificates (--client-ca) only loopback may change anything")]
    NotLoopback { addr: IpAddr },
}

impl Client {
    /// The client of a connection from `addr`, with the leaf of the certificate it presented
    /// when the server requires one.
    pub fn new(access: &Access, addr: SocketAddr, leaf: Option<&CertificateDer<'_>>) -> Client {
        let principal = match (access, leaf) {
            (Access::Certificates(roles), Some(leaf)) => {
                let identity = Identity::of(leaf);
                let role = roles.role_of(&identity);
                Principal::Certificate { identity, role }
            }
            // The handshake requires a certificate, so this is a client without names.
            (Access::Certificates(_), None) => Principal::Certificate {
                identity: Identity::default(),
                role: None,
            },
            (Access::Addresses, _) => Principal::Address,
        };
        Client { addr, principal }
    }

    /// Whether the client may do `action`.
    pub fn check(&self, action: Action<'_>) -> Result<(), Denied> {
        let (role, who) = match &self.principal {
            Principal::Address => {
                return match action {
                    Action::Read | Action::OpenStream | Action::Stream { .. } => Ok(()),
                    Action::Change | Action::ChangeIn { .. } => {
                        if is_loopback(self.addr.ip()) {
                            Ok(())
                        } else {
                            Err(Denied::NotLoopback {
                                addr: self.addr.ip(),
                            })
                        }
                    }
                };
            }
            Principal::Certificate {
                role: None,
                identity,
            } => {
                return Err(Denied::NoRole {
                    names: identity.describe(),
                })
            }
            Principal::Certificate {
                role: Some((role, who)),
                ..
            } => (role, who),
        };
        let refuse = || Denied::Role {
            who: who.clone(),
            role: role.with_article(),
            action: action.describe(),
        };
        match (role, action) {
            (Role::Proxy { .. }, Action::OpenStream) => Ok(()),
            (Role::Proxy { group }, Action::Stream { group: asked }) => {
                if group == asked {
                    Ok(())
                } else {
                    Err(Denied::OtherGroup {
                        who: who.clone(),
                        group: group.clone(),
                        asked: asked.to_owned(),
                    })
                }
            }
            (Role::Operator { .. } | Role::Viewer, Action::Read) => Ok(()),
            (Role::Operator { .. }, Action::Change) => Ok(()),
            (
                Role::Operator { groups, clusters },
                Action::ChangeIn {
                    groups: g,
                    clusters: c,
                },
            ) => {
                // An override of a cluster no group has now would apply to whichever group
                // gets it next: only for operators of every group.
                if groups.is_some() && g.is_empty() {
                    return Err(Denied::NoGroup {
                        who: who.clone(),
                        role: role.with_article(),
                    });
                }
                if let Some(outside) = first_outside(groups.as_ref(), g) {
                    return Err(Denied::OutsideGroups {
                        who: who.clone(),
                        role: role.with_article(),
                        group: outside.to_owned(),
                    });
                }
                if let Some(outside) = first_outside(clusters.as_ref(), c) {
                    return Err(Denied::OutsideClusters {
                        who: who.clone(),
                        role: role.with_article(),
                        cluster: outside.to_owned(),
                    });
                }
                Ok(())
            }
            _ => Err(refuse()),
        }
    }

    /// Who the client is, for the audit log: its address, and with a certificate the name that
    /// gave its role and the role.
    pub fn who(&self) -> Value {
        match &self.principal {
            Principal::Address => json!({ "peer": self.addr.to_string() }),
            Principal::Certificate { identity, role } => match role {
                Some((role, name)) => json!({
                    "peer": self.addr.to_string(),
                    "identity": name,
                    "role": role.to_string(),
                }),
                None => json!({ "peer": self.addr.to_string(), "identity": identity.describe() }),
            },
        }
    }
}

/// The first of `asked` not in `allowed` (when there is a restriction).
fn first_outside<'a>(allowed: Option<&BTreeSet<String>>, asked: &'a [String]) -> Option<&'a str> {
    let allowed = allowed?;
    asked
        .iter()
        .find(|a| !allowed.contains(a.as_str()))
        .map(String::as_str)
}

/// Loopback, IPv4-mapped IPv6 included.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn certified(role: Role, name: &str) -> Client {
        Client {
            addr: addr("10.0.0.5:4000"),
            principal: Principal::Certificate {
                identity: Identity {
                    uris: vec![name.to_owned()],
                    dns: vec![],
                },
                role: Some((role, name.to_owned())),
            },
        }
    }

    #[test]
    fn without_certificates_only_loopback_may_change() {
        for (peer, may_change) in [
            ("127.0.0.1:1", true),
            ("127.8.9.1:1", true),
            ("[::1]:1", true),
            ("[::ffff:127.0.0.1]:1", true),
            ("10.0.0.5:1", false),
            ("[2001:db8::1]:1", false),
            ("[::ffff:10.0.0.5]:1", false),
        ] {
            let client = Client::new(&Access::Addresses, addr(peer), None);
            assert_eq!(client.check(Action::Read), Ok(()));
            assert_eq!(client.check(Action::Stream { group: "maps" }), Ok(()));
            let change = client.check(Action::Change);
            assert_eq!(change.is_ok(), may_change, "{peer}: {change:?}");
            if let Err(e) = change {
                assert!(e.to_string().contains("only loopback"), "{e}");
            }
        }
    }

    #[test]
    fn each_role_may_do_its_own_part_only() {
        let proxy = certified(
            Role::Proxy {
                group: "maps".into(),
            },
            "spiffe://m/proxy/maps",
        );
        assert_eq!(proxy.check(Action::OpenStream), Ok(()));
        assert_eq!(proxy.check(Action::Stream { group: "maps" }), Ok(()));
        let e = proxy.check(Action::Stream { group: "geo" }).unwrap_err();
        assert_eq!(
            e.to_string(),
            "spiffe://m/proxy/maps is a proxy of group maps: it may not open the stream of group geo"
        );
        let e = proxy.check(Action::Change).unwrap_err();
        assert_eq!(
            e.to_string(),
            "spiffe://m/proxy/maps is a proxy of group maps: it may not change anything"
        );
        assert!(proxy.check(Action::Read).is_err());

        let viewer = certified(Role::Viewer, "spiffe://m/viewer/v");
        assert_eq!(viewer.check(Action::Read), Ok(()));
        assert!(viewer.check(Action::OpenStream).is_err());
        assert!(viewer.check(Action::Change).is_err());
        assert!(viewer.check(Action::Stream { group: "maps" }).is_err());

        let operator = certified(
            Role::Operator {
                groups: None,
                clusters: None,
            },
            "spiffe://m/operator/o",
        );
        assert_eq!(operator.check(Action::Read), Ok(()));
        assert_eq!(operator.check(Action::Change), Ok(()));
        let every = ["maps".to_owned(), "geo".to_owned()];
        assert_eq!(
            operator.check(Action::ChangeIn {
                groups: &every,
                clusters: &every
            }),
            Ok(())
        );
        assert!(operator.check(Action::Stream { group: "maps" }).is_err());
    }

    #[test]
    fn a_restricted_operator_stays_within_its_groups_and_clusters() {
        let set = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
        let operator = certified(
            Role::Operator {
                groups: set(&["maps"]),
                clusters: set(&["tiles", "tegola"]),
            },
            "spiffe://m/operator/o",
        );
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            operator.check(Action::ChangeIn {
                groups: &s(&["maps"]),
                clusters: &s(&["tiles"])
            }),
            Ok(())
        );
        let e = operator
            .check(Action::ChangeIn {
                groups: &s(&["maps", "geo"]),
                clusters: &s(&["tiles"]),
            })
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("the change touches group geo, outside its groups"),
            "{e}"
        );
        let e = operator
            .check(Action::ChangeIn {
                groups: &s(&["maps"]),
                clusters: &s(&["tiles", "search"]),
            })
            .unwrap_err();
        assert!(e.to_string().contains("cluster search"), "{e}");
        let e = operator
            .check(Action::ChangeIn {
                groups: &[],
                clusters: &s(&["tiles"]),
            })
            .unwrap_err();
        assert!(e.to_string().contains("touches no node group"), "{e}");
        assert!(operator.check(Action::OpenStream).is_err());
    }

    #[test]
    fn a_certificate_without_a_role_is_refused_everything() {
        let access = Access::Certificates(Arc::new(Roles::default()));
        let client = Client {
            addr: addr("127.0.0.1:1"),
            principal: Principal::Certificate {
                identity: Identity {
                    uris: vec!["spiffe://m/ns/maps/sa/p1".into()],
                    dns: vec!["p1.example".into()],
                },
                role: None,
            },
        };
        for action in [
            Action::Read,
            Action::Change,
            Action::Stream { group: "maps" },
        ] {
            let e = client.check(action).unwrap_err();
            assert_eq!(
                e.to_string(),
                "no role for the client certificate (spiffe://m/ns/maps/sa/p1, dns:p1.example): no rule of the roles file matches"
            );
        }
        // Loopback is no excuse once certificates are required.
        let nameless = Client::new(&access, addr("127.0.0.1:1"), None);
        assert!(nameless.check(Action::Change).is_err());
    }
}

//! Reconciling running listeners with a new config: which to bind, keep, rebind or close.

use crate::config::model::Listener;

/// One step of moving from the running listeners to a new config's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A new listener: bind it.
    Bind(String),
    /// Same name, same socket settings: keep its sockets and connections; swap its settings.
    Keep(String),
    /// Same name, new address: bind the new socket first, then drain the old one.
    Rebind(String),
    /// Gone from the config: stop accepting and drain its connections.
    Close(String),
}

/// The ops that turn `old` into `new`, in order: binds and rebinds before closes, so new
/// sockets accept before old ones stop (SO_REUSEPORT lets an address be bound by both while a
/// listener moves).
pub fn diff(old: &[Listener], new: &[Listener]) -> Vec<Op> {
    let mut ops = Vec::new();
    for n in new {
        match old.iter().find(|o| o.name == n.name) {
            None => ops.push(Op::Bind(n.name.clone())),
            // A new backlog alone is not worth rebinding for: closing the old sockets would
            // reset connections queued on them. It takes effect when the listener next binds.
            Some(o) if o.listen == n.listen => {
                ops.push(Op::Keep(n.name.clone()));
            }
            Some(_) => ops.push(Op::Rebind(n.name.clone())),
        }
    }
    for o in old {
        if !new.iter().any(|n| n.name == o.name) {
            ops.push(Op::Close(o.name.clone()));
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::HttpListener;

    fn l(name: &str, listen: &str, table: &str) -> Listener {
        let yaml = format!("{{ route_table: {table} }}");
        Listener {
            name: name.into(),
            listen: listen.into(),
            backlog: 1024,
            max_connections: None,
            http: Some(serde_yaml::from_str::<HttpListener>(&yaml).unwrap()),
            tls: None,
            tcp: None,
        }
    }

    #[test]
    fn unchanged_and_settings_changes_keep_sockets() {
        let old = vec![l("a", "0.0.0.0:1", "t"), l("b", "0.0.0.0:2", "t")];
        let mut backlog = l("a", "0.0.0.0:1", "t");
        backlog.backlog = 16;
        let new = vec![backlog, l("b", "0.0.0.0:2", "other")];
        assert_eq!(
            diff(&old, &new),
            vec![Op::Keep("a".into()), Op::Keep("b".into())]
        );
    }

    #[test]
    fn add_remove_and_rebind() {
        let old = vec![l("a", "0.0.0.0:1", "t"), l("gone", "0.0.0.0:2", "t")];
        let moved = l("a", "0.0.0.0:9", "t");
        let new = vec![moved, l("fresh", "0.0.0.0:3", "t")];
        assert_eq!(
            diff(&old, &new),
            vec![
                Op::Rebind("a".into()),
                Op::Bind("fresh".into()),
                Op::Close("gone".into())
            ]
        );
    }

    #[test]
    fn empty_to_empty() {
        assert!(diff(&[], &[]).is_empty());
    }
}

//! Rate limits of routes and virtual hosts: names, rates, keys, actions.

use std::collections::HashSet;
use std::time::Duration as StdDuration;

use super::Validator;
use crate::config::model::RateLimit as Model;
use crate::config::model::{RateLimit, RateLimitAction, RateLimitScope, RouteTable};
use crate::config::FieldPath;
use crate::ratelimit::{KeySpec, Spec};

/// The longest wait `action: delay` may ask for.
pub const MAX_DELAY: StdDuration = StdDuration::from_secs(10);
/// The most buckets one keyed limit may keep.
pub const MAX_KEYS: usize = 1 << 20;
/// Buckets a keyed limit keeps by default.
pub const DEFAULT_MAX_KEYS: usize = 65_536;

/// What a (checked) limit does, for its limiter.
pub fn spec_of(l: &Model) -> Spec {
    Spec {
        requests: l.requests,
        per: l.per.get(),
        burst: l.burst.unwrap_or(l.requests),
        key: KeySpec::parse(&l.key.0).unwrap_or_default(),
        delay: match l.action {
            RateLimitAction::Delay => l.max_delay.map(|d| d.get()),
            RateLimitAction::Reject => None,
        },
        max_keys: l.max_keys.unwrap_or(DEFAULT_MAX_KEYS),
    }
}

impl Validator<'_> {
    pub(super) fn rate_limits(&mut self, table_name: &str, table: &RouteTable) {
        let base = FieldPath::root("route_tables").key(table_name.to_owned());
        for (v, vhost) in table.virtual_hosts.iter().enumerate() {
            let at = base.field("virtual_hosts").index(v);
            self.limit_list(&at.field("rate_limits"), &vhost.rate_limits);
            for (r, route) in vhost.routes.iter().enumerate() {
                if let Some(limits) = &route.rate_limits {
                    let path = at.field("routes").index(r).field("rate_limits");
                    self.limit_list(&path, limits);
                }
            }
        }
    }

    fn limit_list(&mut self, base: &FieldPath, limits: &[RateLimit]) {
        let mut names = HashSet::new();
        for (i, l) in limits.iter().enumerate() {
            let at = base.index(i);
            if l.name.trim().is_empty() || l.name.len() > 64 || l.name.chars().any(char::is_control)
            {
                self.error(
                    at.field("name"),
                    "a limit needs a printable name of 1 to 64 characters",
                );
            } else if !names.insert(l.name.as_str()) {
                self.error(at.field("name"), format!("{:?} twice in this list", l.name));
            }
            if l.requests == 0 {
                self.error(at.field("requests"), "must be at least 1");
            }
            self.positive(at.field("per"), l.per);
            if l.burst == Some(0) {
                self.error(at.field("burst"), "must be at least 1");
            }
            if let Err(message) = KeySpec::parse(&l.key.0) {
                self.error(at.field("key"), message);
            }
            if l.scope == RateLimitScope::Global {
                self.error(
                    at.field("scope"),
                    "global limits (shared through the control plane) are not available yet: use `local`",
                );
            }
            match (l.action, l.max_delay) {
                (RateLimitAction::Delay, None) => {
                    self.error(at.field("max_delay"), "`action: delay` needs `max_delay`")
                }
                (RateLimitAction::Delay, Some(d)) if d.get() > MAX_DELAY || d.get().is_zero() => {
                    self.error(at.field("max_delay"), "must be more than 0 and at most 10s")
                }
                (RateLimitAction::Reject, Some(_)) => {
                    self.error(at.field("max_delay"), "only with `action: delay`")
                }
                _ => {}
            }
            if l.max_keys.is_some_and(|n| n == 0 || n > MAX_KEYS) {
                self.error(at.field("max_keys"), format!("must be 1 to {MAX_KEYS}"));
            }
            if l.requests > 0 && !l.per.get().is_zero() && KeySpec::parse(&l.key.0).is_ok() {
                let spec = spec_of(l);
                let (_, error) = spec.interval();
                if error > 0.01 {
                    self.error(
                        at.field("requests"),
                        format!(
                            "{} per {} is more than a keyed limit can time to within 1 % (one request per microsecond at most): use a longer `per` with more `requests`, or a whole-route limit",
                            l.requests,
                            humantime::format_duration(l.per.get())
                        ),
                    );
                } else if spec.horizon() >= spec.max_units() / 4 {
                    self.error(
                        at.field("per"),
                        "the burst and delay book a bucket too far ahead (years): use a shorter `per` or a smaller `burst`",
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{assert_errors, parse_ok};

    const HEAD: &str = r#"
            listeners: [{ name: l, listen: "127.0.0.1:0", http: { route_table: t } }]
            clusters: [{ name: app, endpoints: ["127.0.0.1:1"] }]
            route_tables:
              t:
                virtual_hosts:
                  - hosts: ["*"]
    "#;

    #[test]
    fn limits_name_their_rate_key_and_action() {
        parse_ok(&format!(
            "{HEAD}
                    rate_limits: [{{ name: host, requests: 100, per: 1s }}]
                    routes:
                      - match: {{ prefix: / }}
                        cluster: app
                        rate_limits:
                          - {{ name: api, requests: 100, per: 1s, burst: 200, key: client_ip, scope: local }}
                          - {{ name: both, requests: 5, per: 1m, key: [client_ip/24, header:x-client-id] }}
                          - {{ name: smooth, requests: 10, per: 1s, action: delay, max_delay: 200ms }}
"
        ));
        assert_errors(
            &format!(
                "{HEAD}
                    routes:
                      - match: {{ prefix: / }}
                        cluster: app
                        rate_limits:
                          - {{ name: a, requests: 0, per: 0s, burst: 0, key: ip, scope: global, action: delay }}
                          - {{ name: a, requests: 1, per: 1s, max_delay: 1s }}
"
            ),
            &[
                ("route_tables.t.virtual_hosts[0].routes[0].rate_limits[0].burst", 12, "must be at least 1"),
                ("route_tables.t.virtual_hosts[0].routes[0].rate_limits[0].key", 12, "\"ip\": expected route"),
                ("route_tables.t.virtual_hosts[0].routes[0].rate_limits[0].max_delay", 12, "needs `max_delay`"),
                ("route_tables.t.virtual_hosts[0].routes[0].rate_limits[0].per", 12, "must be greater than zero"),
                ("route_tables.t.virtual_hosts[0].routes[0].rate_limits[0].requests", 12, "must be at least 1"),
                ("route_tables.t.virtual_hosts[0].routes[0].rate_limits[0].scope", 12, "global limits"),
                ("route_tables.t.virtual_hosts[0].routes[0].rate_limits[1].max_delay", 13, "only with `action: delay`"),
                ("route_tables.t.virtual_hosts[0].routes[0].rate_limits[1].name", 13, "\"a\" twice"),
            ],
        );
    }

    #[test]
    fn keyed_limits_keep_to_their_rate_and_their_clock() {
        assert_errors(
            &format!(
                "{HEAD}
                    routes:
                      - match: {{ prefix: / }}
                        cluster: app
                        rate_limits:
                          - {{ name: fast, requests: 2000000, per: 1s, key: client_ip }}
                          - {{ name: far, requests: 1, per: 365d, burst: 100000, key: client_ip }}
                          - {{ name: whole, requests: 2000000, per: 1s }}
"
            ),
            &[
                (
                    "route_tables.t.virtual_hosts[0].routes[0].rate_limits[0].requests",
                    12,
                    "to within 1 %",
                ),
                (
                    "route_tables.t.virtual_hosts[0].routes[0].rate_limits[1].per",
                    13,
                    "too far ahead",
                ),
            ],
        );
    }
}

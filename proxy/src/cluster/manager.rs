//! Cluster upkeep on the control thread: resolves DNS names, runs health checks, ends
//! ejections, ramps slow starts, and publishes a new membership whenever any of it changes.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use super::dns::Resolver;
use super::membership::{self, Endpoint, Inputs, Membership};
use super::{health, now_ms, outlier, Cluster, Registry};
use crate::config::checked::EndpointAddress;

/// How often a membership with endpoints in slow start is rebuilt.
const RAMP_STEP: Duration = Duration::from_secs(1);

/// The endpoints `cluster`'s config names now: IP entries, plus the last good addresses of
/// each DNS entry.
pub fn endpoints(cluster: &Cluster, registry: &Registry) -> Vec<Endpoint> {
    let dns = cluster.state.dns.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::with_capacity(cluster.spec.endpoints.len());
    let mut seen = HashSet::new();
    for (spec, address) in cluster.spec.endpoints.iter().zip(&cluster.addresses) {
        let (addrs, hostname): (Vec<SocketAddr>, Option<Arc<str>>) = match address {
            EndpointAddress::Ip(a) => (vec![*a], None),
            EndpointAddress::Dns { host, port } => (
                dns.resolved
                    .get(host)
                    .map(|ips| ips.iter().map(|ip| SocketAddr::new(*ip, *port)).collect())
                    .unwrap_or_default(),
                Some(host.as_str().into()),
            ),
        };
        for addr in addrs {
            // Two DNS names may share an address; the first entry wins.
            if !seen.insert(addr) {
                continue;
            }
            out.push(Endpoint {
                addr,
                hostname: hostname.clone(),
                zone: spec.zone.as_deref().map(Into::into),
                weight: spec.weight,
                effective_weight: spec.weight,
                pooled: spec.pooled,
                state: registry.endpoint_state(&cluster.name, addr, cluster.transport),
            });
        }
    }
    out
}

fn inputs<'a>(cluster: &Cluster, local_zone: Option<&'a str>, now_ms: u64) -> Inputs<'a> {
    Inputs {
        lb: cluster.spec.lb,
        local_zone,
        panic_threshold: cluster.spec.panic_threshold,
        health_checked: cluster.spec.health_check.is_some(),
        slow_start: cluster.spec.slow_start.map(|d| d.get()),
        now_ms,
    }
}

/// Builds and publishes `cluster`'s membership from the state known now (used when a config
/// is applied, so the first request after it already sees the new endpoints).
pub fn publish(cluster: &Cluster, registry: &Registry, local_zone: Option<&str>) {
    let now = now_ms();
    let m = Membership::build(
        endpoints(cluster, registry),
        &inputs(cluster, local_zone, now),
    );
    store(cluster, m, now);
}

/// Publishes a membership. Endpoints that were pooled and no longer are (depooled or
/// removed) start draining, so their TCP sessions can be closed after a drain timeout;
/// endpoints pooled again stop draining.
fn store(cluster: &Cluster, next: Membership, now: u64) {
    let previous = cluster.state.membership.load_full();
    for old in previous.endpoints.iter().filter(|e| e.pooled) {
        let still_pooled = next
            .endpoints
            .iter()
            .any(|e| Arc::ptr_eq(&e.state, &old.state) && e.pooled);
        if !still_pooled {
            old.state.set_draining(true, now);
        }
    }
    for e in next.endpoints.iter().filter(|e| e.pooled) {
        e.state.set_draining(false, now);
    }
    cluster.state.membership.store(Arc::new(next));
}

/// Aborts a task when dropped, so stopping a manager stops its health checks too.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps one cluster's membership current until aborted.
pub async fn run(
    cluster: Arc<Cluster>,
    registry: Arc<Registry>,
    resolver: Arc<Resolver>,
    local_zone: Option<Arc<str>>,
) {
    let state = cluster.state.clone();
    let names: Vec<String> = cluster
        .addresses
        .iter()
        .filter_map(|a| match a {
            EndpointAddress::Dns { host, .. } => Some(host.clone()),
            EndpointAddress::Ip(_) => None,
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut dns_due = tokio::time::Instant::now();
    let mut dns_answered = names.is_empty();
    let mut checks: HashMap<SocketAddr, AbortOnDrop> = HashMap::new();
    // Only the very first round of a cluster's very first manager counts as its start.
    let mut starting = !state.managed.swap(true, Ordering::AcqRel);
    // The warm-up clock starts with the cluster's first manager; later ones (reloads) keep it.
    let warmup_until = *state
        .warmup_until
        .get_or_init(|| tokio::time::Instant::now() + cluster.spec.warmup_timeout.get());

    loop {
        if !names.is_empty() && tokio::time::Instant::now() >= dns_due {
            dns_answered |= resolve(&cluster, &resolver, &names).await;
            dns_due = tokio::time::Instant::now() + cluster.spec.dns_refresh.get();
        }

        let now = now_ms();
        let eps = endpoints(&cluster, &registry);
        if let Some(spec) = &cluster.spec.health_check {
            let current: HashSet<SocketAddr> = eps.iter().map(|e| e.addr).collect();
            checks.retain(|addr, _| current.contains(addr));
            for e in &eps {
                checks.entry(e.addr).or_insert_with(|| {
                    let target = health::Target {
                        addr: e.addr,
                        tls: cluster.tls.clone(),
                        hostname: e.hostname.clone(),
                    };
                    let task = tokio::spawn(health::run(
                        target,
                        spec.clone(),
                        e.state.clone(),
                        state.clone(),
                    ));
                    AbortOnDrop(task.abort_handle())
                });
            }
        }
        let total = eps.len();
        let mut next_ejection_end: Option<u64> = None;
        for e in &eps {
            if outlier::expire(&e.state, now) {
                info!(cluster = %cluster.name, endpoint = %e.addr, "ejection ended");
            }
            if let Some(until) = e.state.ejected_until_ms() {
                next_ejection_end = Some(next_ejection_end.map_or(until, |n| n.min(until)));
            }
        }
        let zone = local_zone.as_deref();
        let inputs = inputs(&cluster, zone, now);
        for e in &eps {
            let usable = membership::is_usable(e, &inputs);
            let was = e.state.was_usable.swap(usable, Ordering::AcqRel);
            // An endpoint that becomes usable (added, healthy again, back from ejection)
            // ramps up. The endpoints a cluster starts with do not: there is nothing to ramp
            // them against. Reloads keep this state, so they restart no ramp.
            if usable && !was && !starting {
                e.state.usable_since_ms.store(now.max(1), Ordering::Release);
            }
        }
        starting = false;

        let membership = Membership::build(eps, &inputs);
        let ramping = membership.ramping();
        store(&cluster, membership, now);
        debug!(cluster = %cluster.name, endpoints = total, "membership published");

        if !state.warmed.load(Ordering::Acquire) {
            let checked = cluster.spec.health_check.is_none()
                || state
                    .membership
                    .load()
                    .endpoints
                    .iter()
                    .all(|e| e.state.health() != super::Health::Unknown);
            if dns_answered && checked {
                state.warmed.store(true, Ordering::Release);
            } else if tokio::time::Instant::now() >= warmup_until
                && !state.warmup_expired.swap(true, Ordering::AcqRel)
            {
                warn!(cluster = %cluster.name, warmup_timeout = ?cluster.spec.warmup_timeout.get(),
                      "not warm within warmup_timeout; /ready no longer waits for it");
            }
        }

        let mut wake = tokio::time::Instant::now() + Duration::from_secs(3600);
        if !names.is_empty() {
            wake = wake.min(dns_due);
        }
        if ramping {
            wake = wake.min(tokio::time::Instant::now() + RAMP_STEP);
        }
        if !state.warmed.load(Ordering::Acquire) && !state.warmup_expired.load(Ordering::Acquire) {
            wake = wake.min(warmup_until);
        }
        if let Some(until) = next_ejection_end {
            let in_ms = until.saturating_sub(now_ms());
            wake = wake.min(tokio::time::Instant::now() + Duration::from_millis(in_ms));
        }
        tokio::select! {
            _ = state.changed.notified() => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// Resolves every DNS name of the cluster; a failed name keeps its last good addresses.
/// Returns whether every name has an answer (now or from before).
async fn resolve(cluster: &Cluster, resolver: &Resolver, names: &[String]) -> bool {
    let mut answered = true;
    let mut first_error = None;
    for name in names {
        let result = resolver.lookup(name).await;
        let mut dns = cluster.state.dns.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(ips) => {
                if dns.resolved.get(name) != Some(&ips) {
                    info!(cluster = %cluster.name, name = %name, addresses = ?ips, "resolved");
                }
                dns.resolved.insert(name.clone(), ips);
            }
            Err(e) => {
                warn!(cluster = %cluster.name, name = %name, error = %e,
                      "DNS resolution failed; keeping the last good addresses");
                first_error.get_or_insert_with(|| format!("{name}: {e}"));
                answered &= dns.resolved.contains_key(name);
            }
        }
    }
    cluster
        .state
        .dns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .last_error = first_error;
    answered
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{outlier, Health};
    use crate::snapshot::Snapshot;
    use std::sync::atomic::Ordering;

    fn cluster(yaml: &str, registry: &Registry) -> Arc<Cluster> {
        let config = crate::config::parse(yaml).unwrap();
        let snapshot = Snapshot::compile(config, "v".into(), registry).unwrap();
        snapshot.clusters["c"].clone()
    }

    fn resolver() -> Arc<Resolver> {
        Arc::new(Resolver::new(crate::cluster::dns::Settings {
            servers: None,
            timeout: Duration::from_secs(5),
        }))
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    fn weights(c: &Cluster) -> Vec<(u16, u32)> {
        c.state
            .membership
            .load()
            .endpoints
            .iter()
            .map(|e| (e.addr.port(), e.effective_weight))
            .collect()
    }

    fn picks(c: &Cluster, n: usize) -> HashSet<u16> {
        (0..n)
            .filter_map(|_| c.pick(None))
            .map(|p| p.addr.port())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn ejected_endpoint_returns_after_back_off_and_ramps_up() {
        let registry = Arc::new(Registry::default());
        let c = cluster(
            r#"
            clusters:
              - name: c
                lb: round_robin
                slow_start: 10s
                outlier_detection: { consecutive_failures: 2, base_ejection: 30s, max_ejected_percent: 50 }
                endpoints: ["127.0.0.1:1", { address: "127.0.0.1:2", weight: 10 }]
            "#,
            &registry,
        );
        publish(&c, &registry, None);
        let task = tokio::spawn(run(c.clone(), registry.clone(), resolver(), None));
        settle().await;
        assert_eq!(picks(&c, 20), HashSet::from([1, 2]));
        assert!(c.state.warmed.load(Ordering::Acquire));

        let victim = c.pick_other("127.0.0.1:1".parse().unwrap(), None).unwrap();
        assert_eq!(victim.addr.port(), 2);
        let cfg = c.spec.outlier_detection.clone().unwrap();
        assert!(!outlier::record_failure(
            &victim.state,
            &cfg,
            2,
            0,
            now_ms()
        ));
        assert!(outlier::record_failure(&victim.state, &cfg, 2, 0, now_ms()));
        c.state.changed.notify_one();
        settle().await;
        assert_eq!(picks(&c, 20), HashSet::from([1]), "ejected");

        tokio::time::advance(Duration::from_secs(29)).await;
        settle().await;
        assert_eq!(picks(&c, 20), HashSet::from([1]), "still ejected");

        tokio::time::advance(Duration::from_secs(2)).await;
        settle().await;
        assert_eq!(picks(&c, 50), HashSet::from([1, 2]), "back after 30s");
        // Back from ejection, it starts at a tenth of its weight and ramps up.
        assert_eq!(weights(&c), vec![(1, 1), (2, 1)]);
        tokio::time::advance(Duration::from_secs(5)).await;
        settle().await;
        assert_eq!(weights(&c), vec![(1, 1), (2, 6)]);
        tokio::time::advance(Duration::from_secs(6)).await;
        settle().await;
        assert_eq!(weights(&c), vec![(1, 1), (2, 10)]);

        // The second ejection lasts twice as long.
        outlier::record_failure(&victim.state, &cfg, 2, 0, now_ms());
        assert!(outlier::record_failure(&victim.state, &cfg, 2, 0, now_ms()));
        c.state.changed.notify_one();
        tokio::time::advance(Duration::from_secs(59)).await;
        settle().await;
        assert_eq!(picks(&c, 20), HashSet::from([1]));
        tokio::time::advance(Duration::from_secs(2)).await;
        settle().await;
        assert!(picks(&c, 50).contains(&2));
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn health_checks_gate_new_endpoints_and_follow_thresholds() {
        let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up.local_addr().unwrap();
        // A port with nothing listening: bind, note, close.
        let down_addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let registry = Arc::new(Registry::default());
        let yaml = format!(
            r#"
            clusters:
              - name: c
                panic_threshold: 0
                health_check: {{ tcp: {{}}, interval: 5s, timeout: 1s, unhealthy_threshold: 2, healthy_threshold: 2 }}
                endpoints: ["{up_addr}", "{down_addr}"]
            "#
        );
        let c = cluster(&yaml, &registry);
        publish(&c, &registry, None);
        assert!(
            c.pick(None).is_none(),
            "nothing is usable before its first check"
        );
        let task = tokio::spawn(run(c.clone(), registry.clone(), resolver(), None));
        let health = |c: &Cluster| -> Vec<Health> {
            c.state
                .membership
                .load()
                .endpoints
                .iter()
                .map(|e| e.state.health())
                .collect()
        };
        for _ in 0..50 {
            if !health(&c).contains(&Health::Unknown) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(health(&c), vec![Health::Healthy, Health::Unhealthy]);
        assert!(c.state.warmed.load(Ordering::Acquire));
        assert_eq!(picks(&c, 20), HashSet::from([up_addr.port()]));

        // One failed check is not enough to mark it down; the second is.
        drop(up);
        tokio::time::sleep(Duration::from_secs(5) + Duration::from_millis(100)).await;
        assert_eq!(health(&c)[0], Health::Healthy);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(health(&c)[0], Health::Unhealthy);
        assert!(c.pick(None).is_none());
        task.abort();
    }
}

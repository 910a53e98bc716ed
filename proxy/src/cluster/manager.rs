//! Cluster upkeep on the control thread: resolves DNS names, runs health checks, ends
//! ejections, ramps slow starts, and publishes a new membership whenever any of it changes.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use super::membership::{self, Endpoint, Inputs, Membership};
use super::{health, now_ms, outlier, Cluster, Registry};
use crate::config::validate::{parse_endpoint_address, EndpointAddress};

/// How long one DNS lookup may take before it counts as failed.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a membership with endpoints in slow start is rebuilt.
const RAMP_STEP: Duration = Duration::from_secs(1);

/// The endpoints `cluster`'s config names now: IP entries, plus the last good addresses of
/// each DNS entry.
pub fn endpoints(cluster: &Cluster, registry: &Registry) -> Vec<Endpoint> {
    let dns = cluster.state.dns.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::with_capacity(cluster.spec.endpoints.len());
    let mut seen = HashSet::new();
    for spec in &cluster.spec.endpoints {
        let Ok(address) = parse_endpoint_address(&spec.address) else {
            continue;
        };
        let (addrs, hostname): (Vec<SocketAddr>, Option<Arc<str>>) = match &address {
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
    cluster.state.membership.store(Arc::new(m));
}

/// Aborts a task when dropped, so stopping a manager stops its health checks too.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps one cluster's membership current until aborted.
pub async fn run(cluster: Arc<Cluster>, registry: Arc<Registry>, local_zone: Option<Arc<str>>) {
    let state = cluster.state.clone();
    let names: Vec<String> = cluster
        .spec
        .endpoints
        .iter()
        .filter_map(|e| match parse_endpoint_address(&e.address) {
            Ok(EndpointAddress::Dns { host, .. }) => Some(host),
            _ => None,
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut dns_due = tokio::time::Instant::now();
    let mut dns_answered = names.is_empty();
    let mut checks: HashMap<SocketAddr, AbortOnDrop> = HashMap::new();
    let mut was_usable: HashMap<SocketAddr, bool> = HashMap::new();
    let mut first_round = true;

    loop {
        if !names.is_empty() && tokio::time::Instant::now() >= dns_due {
            dns_answered |= resolve(&cluster, &names).await;
            dns_due = tokio::time::Instant::now() + cluster.spec.dns_refresh.get();
        }

        let now = now_ms();
        let eps = endpoints(&cluster, &registry);
        if let Some(spec) = &cluster.spec.health_check {
            let current: HashSet<SocketAddr> = eps.iter().map(|e| e.addr).collect();
            checks.retain(|addr, _| current.contains(addr));
            for e in &eps {
                checks.entry(e.addr).or_insert_with(|| {
                    let task = tokio::spawn(health::run(
                        e.addr,
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
            if outlier::expire(&e.state, &state, now) {
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
            let before = was_usable.insert(e.addr, usable);
            // An endpoint that becomes usable (new, healthy again, back from ejection) ramps
            // up; at start-up every endpoint is new, which ramps none relative to the others.
            let became = match before {
                Some(prev) => usable && !prev,
                None => usable && !first_round,
            };
            if became || (usable && first_round) {
                e.state.usable_since_ms.store(now.max(1), Ordering::Release);
            }
        }
        was_usable.retain(|addr, _| eps.iter().any(|e| e.addr == *addr));
        first_round = false;

        let membership = Membership::build(eps, &inputs);
        let ramping = membership.ramping();
        state.membership.store(Arc::new(membership));
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
            }
        }

        let mut wake = tokio::time::Instant::now() + Duration::from_secs(3600);
        if !names.is_empty() {
            wake = wake.min(dns_due);
        }
        if ramping {
            wake = wake.min(tokio::time::Instant::now() + RAMP_STEP);
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
async fn resolve(cluster: &Cluster, names: &[String]) -> bool {
    let mut answered = true;
    for name in names {
        let lookup = tokio::net::lookup_host((name.as_str(), 0));
        let result = match tokio::time::timeout(DNS_TIMEOUT, lookup).await {
            Ok(Ok(addrs)) => {
                let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                ips.sort();
                ips.dedup();
                if ips.is_empty() {
                    Err("no addresses".to_owned())
                } else {
                    Ok(ips)
                }
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("timed out after {DNS_TIMEOUT:?}")),
        };
        let mut dns = cluster.state.dns.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(ips) => {
                if dns.resolved.get(name) != Some(&ips) {
                    info!(cluster = %cluster.name, name = %name, addresses = ?ips, "resolved");
                }
                dns.resolved.insert(name.clone(), ips);
                dns.last_error = None;
            }
            Err(e) => {
                warn!(cluster = %cluster.name, name = %name, error = %e,
                      "DNS resolution failed; keeping the last good addresses");
                dns.last_error = Some(format!("{name}: {e}"));
                answered &= dns.resolved.contains_key(name);
            }
        }
    }
    answered
}

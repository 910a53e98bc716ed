//! A cluster's current membership: which endpoints take new work, with what weight, and the
//! balancers that pick among them. Rebuilt whole on every change, never mutated.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::lb::{self, Balancer, Member};
use super::{EndpointState, EndpointStatus, Health};
use crate::config::model::LbPolicy;

/// Envoy's overprovisioning factor: a zone at 72% health or better still takes all of its
/// local traffic; below that, the missing share spills to other zones in proportion.
const OVERPROVISION: f64 = 1.4;
/// The share an endpoint gets at the start of slow start.
const SLOW_START_MIN_SHARE: f64 = 0.1;

/// One endpoint as configured (an IP entry, or one address of a DNS entry).
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The DNS name this address came from, if any.
    pub hostname: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
    pub weight: u32,
    /// Weight after slow start.
    pub effective_weight: u32,
    pub pooled: bool,
    pub state: Arc<EndpointState>,
}

impl Endpoint {
    pub fn status(&self) -> EndpointStatus {
        let s = &self.state;
        EndpointStatus {
            address: self.addr,
            hostname: self.hostname.as_deref().map(str::to_owned),
            zone: self.zone.as_deref().map(str::to_owned),
            weight: self.weight,
            effective_weight: self.effective_weight,
            pooled: self.pooled,
            health: s.health(),
            ejected_until: s.ejected_until_ms().map(super::ms_to_rfc3339),
            ejections: s.ejections.load(Ordering::Relaxed),
            ejection_multiplier: s.ejection_multiplier.load(Ordering::Relaxed),
            active_requests: s.active_requests.load(Ordering::Relaxed),
            active_sessions: s.active_sessions.load(Ordering::Relaxed),
            total_requests: s.total_requests.load(Ordering::Relaxed),
            total_sessions: s.total_sessions.load(Ordering::Relaxed),
            bytes_to_upstream: s.bytes_to_upstream.load(Ordering::Relaxed),
            bytes_to_client: s.bytes_to_client.load(Ordering::Relaxed),
            draining_since: s.draining_since_ms().map(super::ms_to_rfc3339),
            connect_failures: s.connect_failures.load(Ordering::Relaxed),
        }
    }
}

/// What decides membership besides the endpoints themselves.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub lb: LbPolicy,
    pub local_zone: Option<&'a str>,
    /// Percentage of usable endpoints below which all pooled endpoints are balanced across.
    pub panic_threshold: u32,
    /// With a health check, an endpoint takes traffic only once a check has passed.
    pub health_checked: bool,
    pub slow_start: Option<Duration>,
    pub now_ms: u64,
}

#[derive(Debug)]
struct Pool {
    balancer: Box<dyn Balancer>,
    /// Balancer index → index into `Membership::endpoints`.
    index: Vec<usize>,
}

impl Pool {
    fn new(lb: LbPolicy, endpoints: &[Endpoint], chosen: Vec<usize>) -> Option<Pool> {
        if chosen.is_empty() {
            return None;
        }
        let members: Vec<Member> = chosen
            .iter()
            .map(|&i| {
                let e = &endpoints[i];
                Member {
                    weight: e.effective_weight,
                    hash_key: hash_addr(e.addr),
                    load: e.state.load.clone(),
                }
            })
            .collect();
        Some(Pool {
            balancer: lb::build(lb, &members),
            index: chosen,
        })
    }

    fn pick(&self, hash: Option<u64>) -> Option<usize> {
        self.balancer
            .pick(hash)
            .and_then(|i| self.index.get(i).copied())
    }
}

fn hash_addr(addr: SocketAddr) -> u64 {
    lb::hash_bytes(addr.to_string().as_bytes())
}

/// The endpoints of a cluster and how new work is spread over them.
#[derive(Debug)]
pub struct Membership {
    pub endpoints: Vec<Endpoint>,
    local: Option<Pool>,
    remote: Option<Pool>,
    /// Per mille of picks that go to the local zone when both pools exist.
    local_permille: u32,
    /// Too few endpoints are usable: balancing across every pooled endpoint.
    pub panic: bool,
}

impl Membership {
    pub fn empty() -> Self {
        Membership {
            endpoints: Vec::new(),
            local: None,
            remote: None,
            local_permille: 0,
            panic: false,
        }
    }

    pub fn build(mut endpoints: Vec<Endpoint>, inputs: &Inputs<'_>) -> Membership {
        for e in &mut endpoints {
            e.effective_weight = slow_start_weight(e, inputs);
        }
        let usable: Vec<usize> = (0..endpoints.len())
            .filter(|&i| is_usable(&endpoints[i], inputs))
            .collect();
        let local_zone = inputs
            .local_zone
            .filter(|z| endpoints.iter().any(|e| e.zone.as_deref() == Some(*z)));

        // How much of the traffic the usable endpoints can take: the usable share of pooled
        // endpoints, counted as Envoy counts hosts, per zone when zones apply (a healthy remote
        // zone makes up for a failed local one, as priorities do in Envoy).
        let weight = |_: &usize| 1u64;
        let share_of = |filter: &dyn Fn(&Endpoint) -> bool| -> f64 {
            let pooled: u64 = (0..endpoints.len())
                .filter(|i| endpoints[*i].pooled && filter(&endpoints[*i]))
                .map(|i| weight(&i))
                .sum();
            let up: u64 = usable
                .iter()
                .filter(|i| filter(&endpoints[**i]))
                .map(weight)
                .sum();
            if pooled == 0 {
                0.0
            } else {
                up as f64 / pooled as f64
            }
        };
        let (capacity, local_share) = match local_zone {
            None => (share_of(&|_| true), 1.0),
            Some(zone) => {
                let local =
                    (share_of(&|e| e.zone.as_deref() == Some(zone)) * OVERPROVISION).min(1.0);
                let remote =
                    (share_of(&|e| e.zone.as_deref() != Some(zone)) * OVERPROVISION).min(1.0);
                let total = local + remote.min(1.0 - local);
                let share = if total > 0.0 { local / total } else { 0.0 };
                (total.min(1.0), share)
            }
        };
        let any_pooled = endpoints.iter().any(|e| e.pooled);
        let panic = any_pooled
            && inputs.panic_threshold > 0
            && capacity * 100.0 < f64::from(inputs.panic_threshold);

        if panic {
            // Spread over every pooled endpoint that has been seen at least once, rather than
            // overload the few left; never-checked ones still wait for their check. Zones are
            // set aside, as in Envoy.
            let all: Vec<usize> = (0..endpoints.len())
                .filter(|&i| {
                    let e = &endpoints[i];
                    e.pooled && !(inputs.health_checked && e.state.health() == Health::Unknown)
                })
                .collect();
            return Membership {
                local: Pool::new(inputs.lb, &endpoints, all),
                remote: None,
                local_permille: 1000,
                panic,
                endpoints,
            };
        }
        let (local, remote) = match local_zone {
            None => (Pool::new(inputs.lb, &endpoints, usable), None),
            Some(zone) => {
                let (l, r): (Vec<usize>, Vec<usize>) = usable
                    .into_iter()
                    .partition(|i| endpoints[*i].zone.as_deref() == Some(zone));
                (
                    Pool::new(inputs.lb, &endpoints, l),
                    Pool::new(inputs.lb, &endpoints, r),
                )
            }
        };
        Membership {
            local_permille: (local_share * 1000.0).round() as u32,
            endpoints,
            local,
            remote,
            panic,
        }
    }

    /// The endpoint for a new request or session.
    pub fn pick(&self, hash: Option<u64>) -> Option<&Endpoint> {
        let index = match (&self.local, &self.remote) {
            (Some(l), Some(r)) => {
                if self.local_permille >= 1000 || fastrand::u32(..1000) < self.local_permille {
                    l.pick(hash).or_else(|| r.pick(hash))
                } else {
                    r.pick(hash).or_else(|| l.pick(hash))
                }
            }
            (Some(p), None) | (None, Some(p)) => p.pick(hash),
            (None, None) => None,
        }?;
        self.endpoints.get(index)
    }

    /// Like [`Membership::pick`], but never `avoid` while another endpoint can be picked.
    pub fn pick_other(&self, avoid: SocketAddr, hash: Option<u64>) -> Option<&Endpoint> {
        let first = self.pick(hash)?;
        if first.addr != avoid {
            return Some(first);
        }
        if let Some(e) = (0..3)
            .filter_map(|_| self.pick(None))
            .find(|e| e.addr != avoid)
        {
            return Some(e);
        }
        // Redraws keep landing on `avoid` (it dominates the weights): take any other
        // candidate, from a random starting point so retries still spread.
        let candidates: Vec<usize> = [&self.local, &self.remote]
            .into_iter()
            .flatten()
            .flat_map(|p| p.index.iter().copied())
            .filter(|i| self.endpoints.get(*i).is_some_and(|e| e.addr != avoid))
            .collect();
        if candidates.is_empty() {
            return Some(first);
        }
        let start = fastrand::usize(..candidates.len());
        candidates
            .get(start)
            .and_then(|i| self.endpoints.get(*i))
            .or(Some(first))
    }

    /// Share of picks kept in the local zone, when zone-aware routing applies.
    pub fn local_share(&self) -> Option<f64> {
        match (&self.local, &self.remote) {
            (Some(_), Some(_)) => Some(f64::from(self.local_permille) / 1000.0),
            _ => None,
        }
    }

    /// Whether any endpoint is still ramping up (so the membership needs rebuilding soon).
    pub fn ramping(&self) -> bool {
        self.endpoints
            .iter()
            .any(|e| e.pooled && e.effective_weight < e.weight)
    }
}

/// Whether an endpoint may take new work (ignoring panic mode).
pub fn is_usable(e: &Endpoint, inputs: &Inputs<'_>) -> bool {
    e.pooled
        && !is_ejected(&e.state, inputs.now_ms)
        && match e.state.health() {
            Health::Healthy => true,
            Health::Unhealthy => false,
            Health::Unknown => !inputs.health_checked,
        }
}

fn is_ejected(state: &EndpointState, now_ms: u64) -> bool {
    state.is_ejected() && state.ejected_until_ms.load(Ordering::Acquire) > now_ms
}

fn slow_start_weight(e: &Endpoint, inputs: &Inputs<'_>) -> u32 {
    let Some(window) = inputs.slow_start else {
        return e.weight;
    };
    let since = e.state.usable_since_ms.load(Ordering::Acquire);
    let window_ms = window.as_millis() as f64;
    if since == 0 || window_ms <= 0.0 {
        return e.weight;
    }
    let elapsed = inputs.now_ms.saturating_sub(since) as f64;
    if elapsed >= window_ms {
        return e.weight;
    }
    let share = SLOW_START_MIN_SHARE + (1.0 - SLOW_START_MIN_SHARE) * (elapsed / window_ms);
    ((f64::from(e.weight) * share).round() as u32).clamp(1, e.weight)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16, weight: u32, zone: Option<&str>) -> Endpoint {
        Endpoint {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            hostname: None,
            zone: zone.map(Into::into),
            weight,
            effective_weight: weight,
            pooled: true,
            state: Arc::new(EndpointState::new(u64::from(port))),
        }
    }

    fn inputs() -> Inputs<'static> {
        Inputs {
            lb: LbPolicy::RoundRobin,
            local_zone: None,
            panic_threshold: 50,
            health_checked: false,
            slow_start: None,
            now_ms: 1_000_000,
        }
    }

    fn counts(m: &Membership, n: usize) -> std::collections::HashMap<u16, usize> {
        let mut c = std::collections::HashMap::new();
        for _ in 0..n {
            if let Some(e) = m.pick(None) {
                *c.entry(e.addr.port()).or_default() += 1;
            }
        }
        c
    }

    #[test]
    fn unpooled_and_unhealthy_endpoints_get_nothing() {
        let mut eps = vec![
            ep(1, 1, None),
            ep(2, 1, None),
            ep(3, 1, None),
            ep(4, 1, None),
        ];
        eps[1].pooled = false;
        eps[2].state.set_health(Health::Unhealthy);
        for e in &eps {
            if e.state.health() == Health::Unknown {
                e.state.set_health(Health::Healthy);
            }
        }
        let m = Membership::build(
            eps,
            &Inputs {
                health_checked: true,
                ..inputs()
            },
        );
        let c = counts(&m, 100);
        assert_eq!(c.get(&2), None);
        assert_eq!(c.get(&3), None);
        assert_eq!(c[&1] + c[&4], 100);
        assert!(!m.panic);
    }

    #[test]
    fn unchecked_endpoints_wait_for_their_first_check() {
        let eps = vec![ep(1, 1, None), ep(2, 1, None)];
        eps[0].state.set_health(Health::Healthy);
        let m = Membership::build(
            eps,
            &Inputs {
                health_checked: true,
                panic_threshold: 0,
                ..inputs()
            },
        );
        assert_eq!(counts(&m, 20).get(&1), Some(&20));
    }

    #[test]
    fn panic_mode_spreads_over_all_pooled_endpoints() {
        let eps = vec![
            ep(1, 1, None),
            ep(2, 1, None),
            ep(3, 1, None),
            ep(4, 1, None),
        ];
        eps[0].state.set_health(Health::Healthy);
        for e in &eps[1..] {
            e.state.set_health(Health::Unhealthy);
        }
        let m = Membership::build(
            eps,
            &Inputs {
                health_checked: true,
                ..inputs()
            },
        );
        assert!(m.panic);
        assert_eq!(counts(&m, 400).len(), 4);
    }

    #[test]
    fn ejected_endpoints_return_after_their_time() {
        let eps = vec![ep(1, 1, None), ep(2, 1, None), ep(3, 1, None)];
        eps[0].state.ejected.store(true, Ordering::Release);
        eps[0]
            .state
            .ejected_until_ms
            .store(2_000_000, Ordering::Release);
        let m = Membership::build(eps.clone(), &inputs());
        assert_eq!(counts(&m, 50).get(&1), None);
        let later = Membership::build(
            eps,
            &Inputs {
                now_ms: 2_000_001,
                ..inputs()
            },
        );
        assert!(counts(&later, 50).contains_key(&1));
    }

    #[test]
    fn slow_start_ramps_from_a_small_share() {
        let eps = vec![ep(1, 100, None)];
        eps[0]
            .state
            .usable_since_ms
            .store(1_000_000, Ordering::Release);
        let window = Some(Duration::from_secs(10));
        let at = |ms| {
            Membership::build(
                eps.clone(),
                &Inputs {
                    slow_start: window,
                    now_ms: ms,
                    ..inputs()
                },
            )
        };
        assert_eq!(at(1_000_000).endpoints[0].effective_weight, 10);
        assert_eq!(at(1_005_000).endpoints[0].effective_weight, 55);
        assert_eq!(at(1_010_000).endpoints[0].effective_weight, 100);
        assert!(at(1_005_000).ramping());
        assert!(!at(1_010_000).ramping());
    }

    #[test]
    fn traffic_stays_in_the_local_zone_until_it_lacks_capacity() {
        let eps = vec![
            ep(1, 1, Some("a")),
            ep(2, 1, Some("a")),
            ep(3, 1, Some("b")),
            ep(4, 1, Some("b")),
        ];
        let zoned = Inputs {
            local_zone: Some("a"),
            ..inputs()
        };
        let m = Membership::build(eps.clone(), &zoned);
        let c = counts(&m, 200);
        assert_eq!(c[&1] + c[&2], 200);
        assert_eq!(m.local_share(), Some(1.0));

        // Half the local zone down: 0.5 × 1.4 = 70% stays local.
        eps[0].state.ejected.store(true, Ordering::Release);
        eps[0]
            .state
            .ejected_until_ms
            .store(u64::MAX, Ordering::Release);
        let m = Membership::build(
            eps.clone(),
            &Inputs {
                panic_threshold: 0,
                ..zoned.clone()
            },
        );
        assert_eq!(m.local_share(), Some(0.7));
        let c = counts(&m, 10_000);
        let local = c.get(&2).copied().unwrap_or(0);
        assert!((6500..7500).contains(&local), "{c:?}");

        // The whole local zone down: everything fails over.
        eps[1].state.ejected.store(true, Ordering::Release);
        eps[1]
            .state
            .ejected_until_ms
            .store(u64::MAX, Ordering::Release);
        let m = Membership::build(
            eps,
            &Inputs {
                panic_threshold: 0,
                ..zoned
            },
        );
        let c = counts(&m, 100);
        assert_eq!(c[&3] + c[&4], 100);
    }

    #[test]
    fn a_zones_share_counts_endpoints_not_their_weights() {
        // The local zone's heavy endpoint is down: by count half the zone is usable (70%
        // stays local), where by weight only a tenth would be (14%).
        let eps = vec![
            ep(1, 1, Some("a")),
            ep(2, 9, Some("a")),
            ep(3, 1, Some("b")),
            ep(4, 1, Some("b")),
        ];
        eps[1].state.set_health(Health::Unhealthy);
        for e in [&eps[0], &eps[2], &eps[3]] {
            e.state.set_health(Health::Healthy);
        }
        let m = Membership::build(
            eps,
            &Inputs {
                local_zone: Some("a"),
                health_checked: true,
                panic_threshold: 0,
                ..inputs()
            },
        );
        assert_eq!(m.local_share(), Some(0.7));
    }

    #[test]
    fn with_zones_panic_follows_what_the_zones_can_take_together() {
        // 3 of 10 local endpoints usable, the one remote endpoint down: 27% of endpoints
        // are usable, but the local zone can take min(1, 1.4 × 0.3) = 42% of the traffic.
        let mut eps: Vec<Endpoint> = (1..=10).map(|p| ep(p, 1, Some("a"))).collect();
        eps.push(ep(11, 1, Some("b")));
        for (i, e) in eps.iter().enumerate() {
            e.state.set_health(if i < 3 {
                Health::Healthy
            } else {
                Health::Unhealthy
            });
        }
        let zoned = |threshold| Inputs {
            local_zone: Some("a"),
            health_checked: true,
            panic_threshold: threshold,
            ..inputs()
        };
        assert!(!Membership::build(eps.clone(), &zoned(40)).panic);
        assert!(Membership::build(eps.clone(), &zoned(43)).panic);
        // Without zones, the share of usable endpoints decides: 3 of 11 is under 40%.
        let flat = Inputs {
            health_checked: true,
            panic_threshold: 40,
            ..inputs()
        };
        assert!(Membership::build(eps, &flat).panic);
    }
}

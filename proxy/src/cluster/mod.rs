//! Upstream clusters: endpoints, their live state, and endpoint selection.
//!
//! A [`Cluster`] is part of an immutable snapshot. What must outlive a reload (counters, the
//! identity that keys each worker's connection pool) lives in [`EndpointState`], shared by every
//! snapshot that contains the same endpoint and handed out by the [`Registry`].

pub mod lb;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;

use crate::config::model::UpstreamProtocol;
use lb::{Balancer, WeightedRoundRobin};

#[derive(Debug)]
pub struct Cluster {
    pub name: Arc<str>,
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    pub max_idle_connections: usize,
    pub idle_timeout: Duration,
    /// Every configured endpoint, pooled or not, in config order.
    pub endpoints: Vec<Endpoint>,
    balancer: Box<dyn Balancer>,
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    pub pooled: bool,
    pub state: Arc<EndpointState>,
}

/// State of one endpoint that survives config reloads.
#[derive(Debug)]
pub struct EndpointState {
    /// Keys this endpoint's connection pool in each worker.
    pub id: u64,
    pub active_requests: AtomicUsize,
    pub total_requests: AtomicU64,
    pub connect_failures: AtomicU64,
}

impl Cluster {
    pub fn new(
        name: &str,
        protocol: UpstreamProtocol,
        connect_timeout: Duration,
        max_idle_connections: usize,
        idle_timeout: Duration,
        endpoints: Vec<Endpoint>,
    ) -> Self {
        let weights: Vec<u32> = endpoints
            .iter()
            .map(|e| if e.pooled { e.weight } else { 0 })
            .collect();
        Cluster {
            name: name.into(),
            protocol,
            connect_timeout,
            max_idle_connections,
            idle_timeout,
            balancer: Box::new(WeightedRoundRobin::new(&weights)),
            endpoints,
        }
    }

    /// The next endpoint for a new request, or `None` if no endpoint is pooled.
    pub fn pick(&self) -> Option<&Endpoint> {
        self.balancer.pick().and_then(|i| self.endpoints.get(i))
    }

    /// The next endpoint, avoiding `avoid` when another is available (for retries).
    pub fn pick_other(&self, avoid: SocketAddr) -> Option<&Endpoint> {
        let first = self.pick()?;
        if first.addr != avoid {
            return Some(first);
        }
        // A few more draws find another endpoint unless one dominates the weights.
        (0..3)
            .filter_map(|_| self.pick())
            .find(|e| e.addr != avoid)
            .or(Some(first))
    }

    pub fn status(&self) -> ClusterStatus {
        ClusterStatus {
            name: self.name.to_string(),
            protocol: self.protocol,
            endpoints: self
                .endpoints
                .iter()
                .map(|e| EndpointStatus {
                    address: e.addr,
                    weight: e.weight,
                    pooled: e.pooled,
                    active_requests: e.state.active_requests.load(Ordering::Relaxed),
                    total_requests: e.state.total_requests.load(Ordering::Relaxed),
                    connect_failures: e.state.connect_failures.load(Ordering::Relaxed),
                })
                .collect(),
        }
    }
}

/// What `GET /clusters` shows for a cluster.
#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    pub name: String,
    pub protocol: UpstreamProtocol,
    pub endpoints: Vec<EndpointStatus>,
}

#[derive(Debug, Serialize)]
pub struct EndpointStatus {
    pub address: SocketAddr,
    pub weight: u32,
    pub pooled: bool,
    pub active_requests: usize,
    pub total_requests: u64,
    pub connect_failures: u64,
}

/// Counts a request against an endpoint for as long as the guard lives.
#[derive(Debug)]
pub struct ActiveRequest(Arc<EndpointState>);

impl ActiveRequest {
    pub fn start(state: &Arc<EndpointState>) -> Self {
        state.active_requests.fetch_add(1, Ordering::Relaxed);
        state.total_requests.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(state.clone())
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active_requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Hands out the same [`EndpointState`] for the same (cluster, address, protocol) across
/// snapshots, so counters and pooled connections survive reloads. Used only when compiling.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<RegistryInner>,
}

#[derive(Debug, Default)]
struct RegistryInner {
    next_id: u64,
    states: HashMap<(Arc<str>, SocketAddr, UpstreamProtocol), Weak<EndpointState>>,
}

impl Registry {
    pub fn endpoint_state(
        &self,
        cluster: &str,
        addr: SocketAddr,
        protocol: UpstreamProtocol,
    ) -> Arc<EndpointState> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let key = (Arc::<str>::from(cluster), addr, protocol);
        if let Some(state) = inner.states.get(&key).and_then(Weak::upgrade) {
            return state;
        }
        inner.next_id += 1;
        let state = Arc::new(EndpointState {
            id: inner.next_id,
            active_requests: AtomicUsize::new(0),
            total_requests: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
        });
        inner.states.insert(key, Arc::downgrade(&state));
        // Forget endpoints no snapshot holds any more.
        inner.states.retain(|_, w| w.strong_count() > 0);
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(reg: &Registry, port: u16, weight: u32, pooled: bool) -> Endpoint {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Endpoint {
            addr,
            weight,
            pooled,
            state: reg.endpoint_state("c", addr, UpstreamProtocol::Http1),
        }
    }

    fn cluster(endpoints: Vec<Endpoint>) -> Cluster {
        Cluster::new(
            "c",
            UpstreamProtocol::Http1,
            Duration::from_secs(1),
            8,
            Duration::from_secs(60),
            endpoints,
        )
    }

    #[test]
    fn unpooled_endpoints_get_nothing() {
        let reg = Registry::default();
        let c = cluster(vec![ep(&reg, 1, 1, true), ep(&reg, 2, 5, false)]);
        for _ in 0..20 {
            assert_eq!(c.pick().unwrap().addr.port(), 1);
        }
        let none = cluster(vec![ep(&reg, 3, 1, false)]);
        assert!(none.pick().is_none());
    }

    #[test]
    fn state_is_shared_across_snapshots_and_reset_when_gone() {
        let reg = Registry::default();
        let a = ep(&reg, 1, 1, true);
        let b = ep(&reg, 1, 3, false);
        assert!(Arc::ptr_eq(&a.state, &b.state));
        let id = a.state.id;
        drop((a, b));
        assert_ne!(ep(&reg, 1, 1, true).state.id, id);
    }

    #[test]
    fn pick_other_avoids_the_failed_endpoint() {
        let reg = Registry::default();
        let c = cluster(vec![ep(&reg, 1, 1, true), ep(&reg, 2, 1, true)]);
        let avoid = SocketAddr::from(([127, 0, 0, 1], 1));
        for _ in 0..10 {
            assert_eq!(c.pick_other(avoid).unwrap().addr.port(), 2);
        }
    }

    #[test]
    fn active_request_guard_counts() {
        let reg = Registry::default();
        let e = ep(&reg, 1, 1, true);
        let g = ActiveRequest::start(&e.state);
        assert_eq!(e.state.active_requests.load(Ordering::Relaxed), 1);
        drop(g);
        assert_eq!(e.state.active_requests.load(Ordering::Relaxed), 0);
        assert_eq!(e.state.total_requests.load(Ordering::Relaxed), 1);
    }
}

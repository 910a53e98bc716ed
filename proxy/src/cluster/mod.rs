//! Upstream clusters: endpoints, their live state, and endpoint selection.
//!
//! A [`Cluster`] is part of an immutable config snapshot. What must outlive a reload lives in
//! [`ClusterState`] (the current membership, circuit-breaker counters, DNS results) and
//! [`EndpointState`] (health, ejection, counters, the identity keying each worker's connection
//! pool), both handed out by the [`Registry`] by name and address. The request path reads the
//! membership with one arc-swap load; the control thread rebuilds it when health, ejections,
//! DNS or slow start change it.

pub mod dns;
pub mod health;
pub mod lb;
pub mod manager;
pub mod membership;
pub mod outlier;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderMap;
use serde::Serialize;
use tokio::sync::Notify;

use crate::config::model::{self, CircuitBreakers, LbPolicy, UpstreamProtocol};
use crate::stats::{Histogram, PerWorker};
use membership::Membership;

/// A cluster as configured in one snapshot.
#[derive(Debug)]
pub struct Cluster {
    pub name: Arc<str>,
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    pub max_idle_connections: usize,
    pub idle_timeout: Duration,
    pub limits: CircuitBreakers,
    /// The cluster's config, for the control thread (health checks, DNS, slow start).
    pub spec: Arc<model::Cluster>,
    /// The address of each of `spec.endpoints`, as checking parsed it.
    pub addresses: Vec<crate::config::checked::EndpointAddress>,
    pub state: Arc<ClusterState>,
    /// TLS to the endpoints, if configured.
    pub tls: Option<Arc<crate::tls::client::ClientTls>>,
    /// Identifies how connections to endpoints are made (protocol and TLS settings), so a
    /// change of either never reuses a pooled connection made the old way.
    pub transport: u64,
}

/// The [`Cluster::transport`] of a cluster config.
pub fn transport_key(spec: &model::Cluster) -> u64 {
    lb::hash_bytes(format!("{:?}|{:?}", spec.protocol, spec.tls).as_bytes())
}

/// An endpoint chosen for one request or session.
#[derive(Debug, Clone)]
pub struct Picked {
    pub addr: SocketAddr,
    /// The DNS name the address came from (the default TLS server name).
    pub hostname: Option<Arc<str>>,
    pub state: Arc<EndpointState>,
}

impl Cluster {
    /// A slot for one retry: under `max_retries` and, with a retry budget, under its share
    /// of the requests in flight.
    pub fn admit_retry(&self) -> Option<Admitted> {
        let mut limit = self.limits.max_retries;
        if let Some(budget) = self.limits.retry_budget {
            let active = self.state.active_requests.load(Ordering::Relaxed);
            limit = limit.min(u32::try_from(budget.allowed(active)).unwrap_or(u32::MAX));
        }
        self.state.admit(|s| &s.retries, limit)
    }

    /// The endpoint for a new request or session, or `None` if no endpoint can take one.
    /// `hash` is the request's hash for `ring_hash` and `maglev`.
    pub fn pick(&self, hash: Option<u64>) -> Option<Picked> {
        let membership = self.state.membership.load();
        membership.pick(hash).map(|e| Picked {
            addr: e.addr,
            hostname: e.hostname.clone(),
            state: e.state.clone(),
        })
    }

    /// Like [`Cluster::pick`], avoiding `avoid` when another endpoint is available (retries).
    pub fn pick_other(&self, avoid: SocketAddr, hash: Option<u64>) -> Option<Picked> {
        let membership = self.state.membership.load();
        membership.pick_other(avoid, hash).map(|e| Picked {
            addr: e.addr,
            hostname: e.hostname.clone(),
            state: e.state.clone(),
        })
    }

    /// The hash `ring_hash` and `maglev` pick with, from the configured request property.
    /// `None` (picked at random) when the policy does not hash or the property is absent.
    pub fn request_hash(&self, headers: &HeaderMap, peer: IpAddr) -> Option<u64> {
        if !matches!(self.spec.lb, LbPolicy::RingHash | LbPolicy::Maglev) {
            return None;
        }
        let Some(on) = &self.spec.hash_on else {
            return Some(hash_ip(peer));
        };
        if let Some(name) = &on.header {
            return headers.get(name).map(|v| lb::hash_bytes(v.as_bytes()));
        }
        if let Some(cookie) = &on.cookie {
            return headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| k == cookie)
                .map(|(_, v)| lb::hash_bytes(v.as_bytes()));
        }
        Some(hash_ip(peer))
    }

    /// Whether `/ready` still waits for this cluster: not warm, and within its warm-up time.
    pub fn warming(&self) -> bool {
        // The deadline is checked here too: the manager may be busy with a slow DNS round.
        !self.state.warmed.load(Ordering::Acquire)
            && !self.state.warmup_expired.load(Ordering::Acquire)
            && self
                .state
                .warmup_until
                .get()
                .is_none_or(|until| tokio::time::Instant::now() < *until)
    }

    pub fn status(&self) -> ClusterStatus {
        let membership = self.state.membership.load();
        let s = &self.state;
        ClusterStatus {
            name: self.name.to_string(),
            protocol: self.protocol,
            lb: self.spec.lb,
            panic: membership.panic,
            local_zone_share: membership.local_share(),
            active_requests: s.active_requests.load(Ordering::Relaxed),
            pending: s.pending.load(Ordering::Relaxed),
            connections: s.connections.load(Ordering::Relaxed),
            retries: s.retries.load(Ordering::Relaxed),
            overflows: s.overflows.load(Ordering::Relaxed),
            cancels_routed: s.cancels_routed.load(Ordering::Relaxed),
            cancels_broadcast: s.cancels_broadcast.load(Ordering::Relaxed),
            dns_error: s.dns_error(),
            warmed: s.warmed.load(Ordering::Acquire),
            endpoints: membership
                .endpoints
                .iter()
                .map(membership::Endpoint::status)
                .collect(),
        }
    }
}

fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => lb::hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => lb::hash_bytes(&v6.octets()),
    }
}

/// What `GET /clusters` shows for a cluster.
#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    pub name: String,
    pub protocol: UpstreamProtocol,
    pub lb: LbPolicy,
    /// Balancing across all pooled endpoints because too few are usable.
    pub panic: bool,
    /// Share of new requests kept in the local zone, when zones apply.
    pub local_zone_share: Option<f64>,
    pub active_requests: usize,
    pub pending: usize,
    pub connections: usize,
    pub retries: usize,
    pub overflows: u64,
    pub cancels_routed: u64,
    pub cancels_broadcast: u64,
    pub dns_error: Option<String>,
    /// Whether the first DNS answers and health-check round are in.
    pub warmed: bool,
    pub endpoints: Vec<EndpointStatus>,
}

#[derive(Debug, Serialize)]
pub struct EndpointStatus {
    pub address: SocketAddr,
    pub hostname: Option<String>,
    pub zone: Option<String>,
    pub weight: u32,
    /// The weight the balancer uses now (less than `weight` during slow start).
    pub effective_weight: u32,
    pub pooled: bool,
    pub health: Health,
    pub ejected_until: Option<String>,
    pub ejections: u32,
    /// The multiplier of the latest ejection, decayed by time back in service.
    pub ejection_multiplier: u32,
    pub active_requests: usize,
    pub active_sessions: usize,
    pub total_requests: u64,
    pub total_sessions: u64,
    pub bytes_to_upstream: u64,
    pub bytes_to_client: u64,
    pub draining_since: Option<String>,
    pub connect_failures: u64,
}

// === cluster state ===

/// State of a cluster that survives config reloads.
#[derive(Debug)]
pub struct ClusterState {
    pub name: Arc<str>,
    pub membership: ArcSwap<Membership>,
    pub active_requests: AtomicUsize,
    /// Requests waiting for a new upstream connection.
    pub pending: AtomicUsize,
    /// Upstream connections open, across workers.
    pub connections: AtomicUsize,
    pub retries: AtomicUsize,
    pub overflows: AtomicU64,
    /// Wakes the control thread to rebuild the membership (an ejection, a health change).
    pub changed: Notify,
    /// Set once DNS has answered and every endpoint has been health checked once.
    pub warmed: AtomicBool,
    /// When the cluster's first manager started plus `warmup_timeout`.
    pub warmup_until: OnceLock<tokio::time::Instant>,
    /// Set when `warmup_timeout` passed before the cluster was warm: `/ready` stops waiting.
    pub warmup_expired: AtomicBool,
    /// Set once a manager has run for this cluster (later managers come from reloads).
    pub managed: AtomicBool,
    pub dns: Mutex<DnsState>,
    /// Postgres cancel keys (process id, secret) of live sessions → the server that owns
    /// each. Touched once per session, never per byte.
    pub cancel_keys: Mutex<HashMap<(i32, i32), SocketAddr>>,
    pub cancels_routed: AtomicU64,
    /// Cancels for keys Legate has not seen (e.g. sessions with TLS end to end), sent to every
    /// pooled endpoint.
    pub cancels_broadcast: AtomicU64,
    /// How long new upstream connections took to establish (TCP, and TLS when configured).
    pub connect_duration: PerWorker<Histogram>,
}

/// The latest DNS answers for a cluster's named endpoints.
#[derive(Debug, Default)]
pub struct DnsState {
    /// Host name → addresses of its last good resolution.
    pub resolved: HashMap<String, Vec<IpAddr>>,
    pub last_error: Option<String>,
}

impl ClusterState {
    pub fn new(name: &str) -> Self {
        ClusterState {
            name: name.into(),
            membership: ArcSwap::from_pointee(Membership::empty()),
            active_requests: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            retries: AtomicUsize::new(0),
            overflows: AtomicU64::new(0),
            changed: Notify::new(),
            warmed: AtomicBool::new(false),
            warmup_until: OnceLock::new(),
            warmup_expired: AtomicBool::new(false),
            managed: AtomicBool::new(false),
            dns: Mutex::new(DnsState::default()),
            cancel_keys: Mutex::new(HashMap::new()),
            cancels_routed: AtomicU64::new(0),
            cancels_broadcast: AtomicU64::new(0),
            connect_duration: PerWorker::default(),
        }
    }

    pub fn dns_error(&self) -> Option<String> {
        self.dns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_error
            .clone()
    }

    /// Takes one unit of `counter` if it is below `limit`; the guard gives it back.
    pub fn admit(
        self: &Arc<Self>,
        counter: fn(&ClusterState) -> &AtomicUsize,
        limit: u32,
    ) -> Option<Admitted> {
        let c = counter(self);
        let prev = c.fetch_add(1, Ordering::AcqRel);
        if prev >= limit as usize {
            c.fetch_sub(1, Ordering::AcqRel);
            self.overflows.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Admitted {
            state: self.clone(),
            counter,
        })
    }
}

/// One unit of a circuit-breaker counter, returned when dropped.
pub struct Admitted {
    state: Arc<ClusterState>,
    counter: fn(&ClusterState) -> &AtomicUsize,
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted")
            .field("cluster", &self.state.name)
            .finish()
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        (self.counter)(&self.state).fetch_sub(1, Ordering::AcqRel);
    }
}

// === endpoint state ===

/// Active health of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not checked yet (or no check configured: see [`membership`]).
    Unknown,
    Healthy,
    Unhealthy,
}

/// State of one endpoint that survives config reloads.
#[derive(Debug)]
pub struct EndpointState {
    /// Keys this endpoint's connection pool in each worker.
    pub id: u64,
    /// Requests plus sessions in flight: what `least_request` and `least_connections` compare.
    pub load: Arc<AtomicUsize>,
    pub active_requests: AtomicUsize,
    pub active_sessions: AtomicUsize,
    pub total_requests: AtomicU64,
    pub connect_failures: AtomicU64,
    pub total_sessions: AtomicU64,
    /// Bytes relayed by TCP sessions, client to endpoint and back.
    pub bytes_to_upstream: AtomicU64,
    pub bytes_to_client: AtomicU64,
    /// When the endpoint was depooled or removed (0 = it is not draining), so its TCP
    /// sessions can be closed after their drain timeout.
    pub(crate) draining_since_ms: AtomicU64,
    /// Wakes the endpoint's sessions when it starts or stops draining.
    pub drain_changed: Notify,
    health: AtomicU8,
    /// Failures in a row seen by requests, for outlier detection.
    pub(crate) consecutive_failures: AtomicU32,
    pub(crate) ejected: AtomicBool,
    pub(crate) ejected_until_ms: AtomicU64,
    /// Times outlier detection has ejected the endpoint, ever.
    pub(crate) ejections: AtomicU32,
    /// What the next ejection's length multiplies `base_ejection` by, less one: grows by one
    /// per ejection, decays by one per `base_ejection` back in service.
    pub(crate) ejection_multiplier: AtomicU32,
    /// When the endpoint last became usable (for slow start); 0 = never.
    pub(crate) usable_since_ms: AtomicU64,
    /// Whether it was usable at the last membership build.
    pub(crate) was_usable: AtomicBool,
}

impl EndpointState {
    fn new(id: u64) -> Self {
        EndpointState {
            id,
            load: Arc::new(AtomicUsize::new(0)),
            active_requests: AtomicUsize::new(0),
            active_sessions: AtomicUsize::new(0),
            total_requests: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            total_sessions: AtomicU64::new(0),
            bytes_to_upstream: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            draining_since_ms: AtomicU64::new(0),
            drain_changed: Notify::new(),
            health: AtomicU8::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            ejection_multiplier: AtomicU32::new(0),
            usable_since_ms: AtomicU64::new(0),
            was_usable: AtomicBool::new(false),
        }
    }

    pub fn health(&self) -> Health {
        match self.health.load(Ordering::Acquire) {
            1 => Health::Healthy,
            2 => Health::Unhealthy,
            _ => Health::Unknown,
        }
    }

    pub fn set_health(&self, health: Health) {
        let v = match health {
            Health::Unknown => 0,
            Health::Healthy => 1,
            Health::Unhealthy => 2,
        };
        self.health.store(v, Ordering::Release);
    }

    /// When the endpoint started draining, if it is.
    pub fn draining_since_ms(&self) -> Option<u64> {
        match self.draining_since_ms.load(Ordering::Acquire) {
            0 => None,
            t => Some(t),
        }
    }

    /// Marks the endpoint as draining (depooled or removed) or not; wakes its sessions on a
    /// change.
    pub fn set_draining(&self, draining: bool, now_ms: u64) {
        let changed = if draining {
            self.draining_since_ms
                .compare_exchange(0, now_ms.max(1), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        } else {
            self.draining_since_ms.swap(0, Ordering::AcqRel) != 0
        };
        if changed {
            self.drain_changed.notify_waiters();
        }
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    pub fn ejected_until_ms(&self) -> Option<u64> {
        self.is_ejected()
            .then(|| self.ejected_until_ms.load(Ordering::Acquire))
    }
}

/// Counts a request against an endpoint for as long as the guard lives.
#[derive(Debug)]
pub struct ActiveRequest(Arc<EndpointState>);

impl ActiveRequest {
    pub fn start(state: &Arc<EndpointState>) -> Self {
        state.load.fetch_add(1, Ordering::Relaxed);
        state.active_requests.fetch_add(1, Ordering::Relaxed);
        state.total_requests.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(state.clone())
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active_requests.fetch_sub(1, Ordering::Relaxed);
        self.0.load.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a TCP session against an endpoint for as long as the guard lives.
#[derive(Debug)]
pub struct ActiveSession(Arc<EndpointState>);

impl ActiveSession {
    pub fn start(state: &Arc<EndpointState>) -> Self {
        state.load.fetch_add(1, Ordering::Relaxed);
        state.active_sessions.fetch_add(1, Ordering::Relaxed);
        state.total_sessions.fetch_add(1, Ordering::Relaxed);
        ActiveSession(state.clone())
    }
}

impl Drop for ActiveSession {
    fn drop(&mut self) {
        self.0.active_sessions.fetch_sub(1, Ordering::Relaxed);
        self.0.load.fetch_sub(1, Ordering::Relaxed);
    }
}

// === clock ===

/// Milliseconds on a process-wide monotonic clock that follows tokio's (pausable) time, for
/// timestamps kept in atomics.
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| {
        // Start well in the past so a paused test clock never reads before the epoch.
        let now = std::time::Instant::now();
        now.checked_sub(Duration::from_secs(3600)).unwrap_or(now)
    });
    let now = tokio::time::Instant::now().into_std();
    u64::try_from(now.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
}

/// A timestamp from [`now_ms`] as wall-clock time, for display.
pub fn ms_to_rfc3339(ms: u64) -> String {
    let delta = ms as i128 - now_ms() as i128;
    let now = std::time::SystemTime::now();
    let t = if delta >= 0 {
        now + Duration::from_millis(delta as u64)
    } else {
        now - Duration::from_millis(delta.unsigned_abs() as u64)
    };
    humantime::format_rfc3339_millis(t).to_string()
}

// === registry ===

/// Hands out the same state for the same cluster name, and for the same (cluster, address,
/// protocol), across snapshots, so health, counters and pooled connections survive reloads.
/// Used only off the request path.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<RegistryInner>,
    /// Rate limits' buckets, by limit: kept by a reload that keeps the limit.
    pub limits: crate::ratelimit::registry::Registry,
}

#[derive(Debug, Default)]
struct RegistryInner {
    next_id: u64,
    clusters: HashMap<Arc<str>, Weak<ClusterState>>,
    endpoints: HashMap<(Arc<str>, SocketAddr, u64), Weak<EndpointState>>,
}

impl Registry {
    pub fn cluster_state(&self, name: &str) -> Arc<ClusterState> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = inner.clusters.get(name).and_then(Weak::upgrade) {
            return state;
        }
        let state = Arc::new(ClusterState::new(name));
        inner.clusters.retain(|_, w| w.strong_count() > 0);
        inner.clusters.insert(name.into(), Arc::downgrade(&state));
        state
    }

    /// `transport` is the cluster's [`Cluster::transport`].
    pub fn endpoint_state(
        &self,
        cluster: &str,
        addr: SocketAddr,
        transport: u64,
    ) -> Arc<EndpointState> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let key = (Arc::<str>::from(cluster), addr, transport);
        if let Some(state) = inner.endpoints.get(&key).and_then(Weak::upgrade) {
            return state;
        }
        inner.next_id += 1;
        let state = Arc::new(EndpointState::new(inner.next_id));
        inner.endpoints.retain(|_, w| w.strong_count() > 0);
        inner.endpoints.insert(key, Arc::downgrade(&state));
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_shared_across_snapshots_and_reset_when_gone() {
        let reg = Registry::default();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let a = reg.endpoint_state("c", addr, 1);
        let b = reg.endpoint_state("c", addr, 1);
        assert!(Arc::ptr_eq(&a, &b));
        let other = reg.endpoint_state("d", addr, 1);
        assert!(!Arc::ptr_eq(&a, &reg.endpoint_state("c", addr, 2)));
        assert!(!Arc::ptr_eq(&a, &other));
        let id = a.id;
        drop((a, b));
        assert_ne!(reg.endpoint_state("c", addr, 1).id, id);
        let c1 = reg.cluster_state("c");
        assert!(Arc::ptr_eq(&c1, &reg.cluster_state("c")));
    }

    #[test]
    fn active_request_guard_counts() {
        let e = Arc::new(EndpointState::new(1));
        let g = ActiveRequest::start(&e);
        assert_eq!(e.active_requests.load(Ordering::Relaxed), 1);
        drop(g);
        assert_eq!(e.active_requests.load(Ordering::Relaxed), 0);
        assert_eq!(e.total_requests.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn admit_enforces_the_limit_and_releases() {
        let s = Arc::new(ClusterState::new("c"));
        let a = s.admit(|s| &s.active_requests, 2).unwrap();
        let b = s.admit(|s| &s.active_requests, 2).unwrap();
        assert!(s.admit(|s| &s.active_requests, 2).is_none());
        assert_eq!(s.overflows.load(Ordering::Relaxed), 1);
        drop(a);
        assert!(s.admit(|s| &s.active_requests, 2).is_some());
        drop(b);
        assert_eq!(s.active_requests.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn health_round_trips() {
        let e = EndpointState::new(1);
        assert_eq!(e.health(), Health::Unknown);
        e.set_health(Health::Unhealthy);
        assert_eq!(e.health(), Health::Unhealthy);
        e.set_health(Health::Healthy);
        assert_eq!(e.health(), Health::Healthy);
    }
}

//! The read model: what admin and metrics show, written by the applier and the config sources.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::drain;
use crate::listener::ListenerCounters;
use crate::snapshot::Snapshot;
use crate::stats::route::TargetReading;
use crate::stats::window::{Recent, TargetKey, Window};
use crate::stats::ListenerStats;

/// Everything outside the request path reads about the running proxy.
#[derive(Debug)]
pub struct State {
    /// The snapshot being served; the applier is its only writer.
    pub snapshot: ArcSwap<Snapshot>,
    /// Set when a graceful shutdown begins.
    pub draining: AtomicBool,
    /// Each running listener, as the last apply left them.
    pub listeners: ArcSwap<Vec<ListenerView>>,
    pub reloads: Reloads,
    pub xds: XdsState,
    /// Readings of every route target over the last minute, for the status page.
    pub traffic: Mutex<Window>,
}

impl State {
    pub fn new(snapshot: Snapshot) -> State {
        State {
            snapshot: ArcSwap::from_pointee(snapshot),
            draining: AtomicBool::new(false),
            listeners: ArcSwap::from_pointee(Vec::new()),
            reloads: Reloads::default(),
            xds: XdsState::default(),
            traffic: Mutex::default(),
        }
    }

    /// Every route target's counters now, summed over workers.
    pub fn target_readings(&self) -> HashMap<TargetKey, TargetReading> {
        let mut out = HashMap::new();
        for view in self.listeners.load().iter() {
            let ListenerStats::Routes(routes) = &view.stats else {
                continue;
            };
            for route in routes.iter() {
                for target in route.targets.iter() {
                    let key = (
                        route.listener.clone(),
                        route.route.clone(),
                        target.cluster.clone(),
                    );
                    out.insert(key, target.read());
                }
            }
        }
        out
    }

    /// Takes the readings [`State::traffic`] keeps; run every
    /// [`EVERY`](crate::stats::window::EVERY).
    pub fn sample_traffic(&self) {
        let readings = self.target_readings();
        let mut window = self.traffic.lock().unwrap_or_else(|e| e.into_inner());
        window.sample(Instant::now(), readings);
    }

    /// What each route target did over about the last minute.
    pub fn recent_traffic(&self) -> HashMap<TargetKey, Recent> {
        let current = self.target_readings();
        let window = self.traffic.lock().unwrap_or_else(|e| e.into_inner());
        window.recent(Instant::now(), &current)
    }

    /// The bound address of each listener, by name.
    pub fn listener_addrs(&self) -> BTreeMap<String, SocketAddr> {
        self.listeners
            .load()
            .iter()
            .map(|l| (l.name.to_string(), l.addr))
            .collect()
    }

    /// From now on `/ready` answers 503 (`draining`).
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// What admin and metrics read of one running listener.
#[derive(Debug)]
pub struct ListenerView {
    pub name: Arc<str>,
    pub addr: SocketAddr,
    pub counters: Arc<ListenerCounters>,
    pub connections: drain::Watch,
    /// What its current settings record into.
    pub stats: crate::stats::ListenerStats,
}

/// Config file reloads: the latest attempt and the count of each outcome.
#[derive(Debug, Default)]
pub struct Reloads {
    pub last: ArcSwap<Option<ReloadStatus>>,
    pub ok: AtomicU64,
    pub rejected: AtomicU64,
}

impl Reloads {
    /// Records the outcome of one reload attempt.
    /// `Ok` holds the version applied and the fields left out of effect until a restart.
    pub fn record(&self, result: Result<(&str, &[&'static str]), String>) {
        let (version, not_in_effect, error) = match result {
            Ok((v, fields)) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                (Some(v.to_owned()), fields.to_vec(), None)
            }
            Err(e) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                (None, Vec::new(), Some(e))
            }
        };
        self.last.store(Arc::new(Some(ReloadStatus {
            time: SystemTime::now(),
            version,
            not_in_effect,
            error,
        })));
    }
}

/// The outcome of the latest reload attempt, shown by `GET /config`.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    #[serde(serialize_with = "serialize_time")]
    pub time: SystemTime,
    pub version: Option<String>,
    /// Fields the applied config changed that take effect only on restart.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_in_effect: Vec<&'static str>,
    pub error: Option<String>,
}

fn serialize_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

/// The control plane session, as the xDS source reports it.
#[derive(Debug, Default)]
pub struct XdsState {
    /// Set once a complete config from the control plane has been applied (xDS-lite R12), or
    /// at start when no control plane is configured.
    pub ready: AtomicBool,
    status: Mutex<XdsStatus>,
}

impl XdsState {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn status(&self) -> XdsStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut XdsStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// What `/config` shows about the control plane session.
#[derive(Debug, Default, Clone, Serialize)]
pub struct XdsStatus {
    pub server: String,
    pub connected: bool,
    /// Versions held (applied), per resource type.
    pub versions: BTreeMap<String, String>,
    /// The system version of the endpoints held.
    pub endpoints_version: Option<String>,
    pub endpoint_versions: BTreeMap<String, String>,
    pub last_error: Option<String>,
    pub last_nack: Option<String>,
    pub updated_at: Option<String>,
}

//! Per-connection context shared by the server and the request handler.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::drain;
use crate::listener::{HttpSettings, Listener};

/// What every request on one client connection shares.
#[derive(Debug)]
pub struct ConnCtx {
    pub listener: Arc<Listener>,
    /// The settings the connection started with (used if the listener stops being HTTP).
    pub settings: Arc<HttpSettings>,
    pub peer: SocketAddr,
    pub activity: Arc<Activity>,
    /// `x-forwarded-proto` for requests on this connection.
    pub scheme: &'static str,
    /// The verified client certificate's identity, when the listener forwards it.
    pub client_cert: Option<http::HeaderValue>,
    /// The listener's drain, which upgraded tunnels outlive the connection to follow.
    pub drain: drain::Watch,
}

/// Liveness of one connection, read by its coarse idle check.
#[derive(Debug)]
pub struct Activity {
    pub(super) touched: Arc<AtomicBool>,
    pub(super) in_flight: AtomicUsize,
    /// The client speaks HTTP/2: only open streams keep it from idling (its PING, SETTINGS and
    /// WINDOW_UPDATE frames move bytes but are not traffic).
    pub(super) h2: Arc<AtomicBool>,
    /// The idle clocks of the requests in flight.
    pub(super) streams: super::idle::Streams,
}

impl Activity {
    pub fn new(streams: super::idle::Streams) -> Self {
        Activity {
            touched: Arc::default(),
            in_flight: AtomicUsize::new(0),
            h2: Arc::default(),
            streams,
        }
    }
}

/// Marks a request in flight on its connection until dropped (when the response body ends).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl InFlight {
    pub fn start(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

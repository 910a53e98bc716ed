//! The accept loop: one per listener per worker, above the protocols it hands connections to.
//! It never dies on a bad accept, holds the listener to `max_connections`, and serves each
//! connection as the listener says at that moment.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{debug, info_span, warn, Instrument};

use crate::drain;
use crate::listener::{Listener, Protocol};

/// Accepts connections until the listener drains.
pub async fn accept_loop(listener: Arc<Listener>, socket: TcpListener, mut drain: drain::Watch) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = drain.signaled() => break,
            accepted = socket.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Counted before the check, so workers accepting at once cannot overshoot.
                let guard = drain.guard();
                if drain.active() > listener.max_connections.load(Ordering::Relaxed) {
                    listener.counters.refused.fetch_add(1, Ordering::Relaxed);
                    debug!(listener = %listener.name, %peer, "over max_connections; closing");
                    drop(stream);
                    continue;
                }
                let span = info_span!("conn", listener = %listener.name, %peer);
                let watch = drain.clone();
                let protocol = (**listener.settings.load()).clone();
                match protocol {
                    Protocol::Http(settings) => tokio::spawn(
                        crate::http::server::serve(
                            stream,
                            peer,
                            listener.clone(),
                            settings,
                            watch,
                            guard,
                        )
                        .instrument(span),
                    ),
                    Protocol::Tcp(settings) => tokio::spawn(
                        crate::tcp::serve(stream, peer, listener.clone(), settings, watch, guard)
                            .instrument(span),
                    ),
                };
            }
            Err(e) if is_transient(&e) => debug!(error = %e, "accept aborted by peer"),
            Err(e) => {
                // Out of file descriptors or memory: back off briefly rather than spin.
                warn!(listener = %listener.name, error = %e, "accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    debug!(listener = %listener.name, "stopped accepting");
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

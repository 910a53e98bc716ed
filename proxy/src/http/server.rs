//! Downstream side: the accept loop and one task per client connection (HTTP/1.1 or h2c).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::debug;

use super::conn::{Activity, ConnCtx};
use crate::drain;
use crate::io::Touching;
use crate::listener::{HttpSettings, Listener};

/// Serves one client connection: TLS first if the listener has it, then HTTP/1.1 or HTTP/2.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<Listener>,
    settings: Arc<HttpSettings>,
    drain: drain::Watch,
    guard: drain::Guard,
) {
    let Some(tls) = settings.tls.clone() else {
        return serve_http(stream, peer, listener, settings, "http", None, drain, guard).await;
    };
    // The config current at accept time serves this connection for its whole life.
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
    let stream = match tokio::time::timeout(tls.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!("TLS handshake timed out");
            return;
        }
    };
    let client_cert = if tls.forward_client_cert {
        stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(crate::tls::server::client_cert_header)
    } else {
        None
    };
    serve_http(
        stream,
        peer,
        listener,
        settings,
        "https",
        client_cert,
        drain,
        guard,
    )
    .await;
}

#[allow(clippy::too_many_arguments)]
async fn serve_http<T>(
    stream: T,
    peer: SocketAddr,
    listener: Arc<Listener>,
    settings: Arc<HttpSettings>,
    scheme: &'static str,
    client_cert: Option<http::HeaderValue>,
    mut drain: drain::Watch,
    _guard: drain::Guard,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (streams, mut checker) = super::idle::streams();
    let activity = Arc::new(Activity::new(streams));
    let ctx = Arc::new(ConnCtx {
        listener,
        settings: settings.clone(),
        peer,
        activity: activity.clone(),
        scheme,
        client_cert,
        drain: drain.clone(),
    });

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        // The read buffer bounds the request head; validation keeps the limit at 8 KiB or more,
        // the smallest buffer hyper accepts.
        .max_buf_size(settings.max_header_size.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(u32::try_from(settings.max_header_size).unwrap_or(u32::MAX))
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));

    let io = TokioIo::new(
        Touching::new(stream, activity.touched.clone()).noting_h2(activity.h2.clone()),
    );
    let service = service_fn(move |req| super::proxy::handle(ctx.clone(), req));
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);

    // One coarse timer per connection, never one per request. It also checks the streams'
    // idle clocks, which count in its ticks.
    let period = settings.tick;
    let idle_checks = settings
        .idle_timeout
        .as_millis()
        .div_ceil(period.as_millis().max(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut quiet_checks = 0;
    let mut closing = false;
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
    let hard_deadline = tokio::time::sleep_until(far);
    tokio::pin!(hard_deadline);

    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    debug!(error = %e, "connection ended with error");
                }
                return;
            }
            _ = drain.signaled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
                hard_deadline.as_mut().reset(tokio::time::Instant::now() + settings.drain_timeout);
            }
            _ = &mut hard_deadline, if closing => {
                debug!("drain deadline reached; closing connection");
                return;
            }
            _ = tick.tick(), if !closing => {
                // HTTP/1.1 bytes are a request on its way; HTTP/2 bytes with no stream open
                // are pings and settings.
                let touched = activity.touched.swap(false, Ordering::Relaxed)
                    && !activity.h2.load(Ordering::Relaxed);
                let streams = checker.check();
                if streams.cut > 0 {
                    debug!(streams = streams.cut, "stream idle timeout; cutting");
                }
                if streams.stuck > 0 {
                    // Cut streams whose bodies nobody polls: the client stopped reading.
                    debug!(streams = streams.stuck, "cut streams still held; closing connection");
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                    hard_deadline.as_mut().reset(tokio::time::Instant::now() + period);
                    continue;
                }
                if touched || activity.in_flight.load(Ordering::Relaxed) > 0 {
                    quiet_checks = 0;
                } else {
                    quiet_checks += 1;
                    if quiet_checks >= idle_checks {
                        debug!("idle timeout; closing connection");
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                        hard_deadline.as_mut().reset(tokio::time::Instant::now() + period);
                    }
                }
            }
        }
    }
}

//! Downstream side: the accept loop and one task per client connection (HTTP/1.1 or h2c).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info_span, warn, Instrument};

use crate::drain;
use crate::listener::Listener;

/// What every request on one client connection shares.
#[derive(Debug)]
pub struct ConnCtx {
    pub listener: Arc<Listener>,
    pub peer: SocketAddr,
    pub activity: Arc<Activity>,
    /// `x-forwarded-proto` for requests on this connection.
    pub scheme: &'static str,
    /// The verified client certificate's identity, when the listener forwards it.
    pub client_cert: Option<http::HeaderValue>,
}

/// Liveness of one connection, read by its coarse idle check.
#[derive(Debug, Default)]
pub struct Activity {
    touched: AtomicBool,
    in_flight: AtomicUsize,
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

/// Accepts connections until the listener drains. One bad accept never stops the loop.
pub async fn accept_loop(listener: Arc<Listener>, socket: TcpListener, mut drain: drain::Watch) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = drain.signaled() => break,
            accepted = socket.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let guard = drain.guard();
                let span = info_span!("conn", listener = %listener.name, %peer);
                tokio::spawn(
                    serve(stream, peer, listener.clone(), drain.clone(), guard).instrument(span),
                );
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

/// How many idle checks without traffic close a connection.
const IDLE_CHECKS: u32 = 4;

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<Listener>,
    drain: drain::Watch,
    guard: drain::Guard,
) {
    let settings = listener.http.load_full();
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
    settings: Arc<crate::listener::HttpSettings>,
    scheme: &'static str,
    client_cert: Option<http::HeaderValue>,
    mut drain: drain::Watch,
    _guard: drain::Guard,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let ctx = Arc::new(ConnCtx {
        listener,
        peer,
        activity: activity.clone(),
        scheme,
        client_cert,
    });

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        // hyper refuses buffers under 8 KiB; a smaller head limit is enforced by validation.
        .max_buf_size(settings.max_header_size.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(u32::try_from(settings.max_header_size).unwrap_or(u32::MAX))
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));

    let io = TokioIo::new(ActivityIo {
        inner: stream,
        activity: activity.clone(),
    });
    let service = service_fn(move |req| super::proxy::handle(ctx.clone(), req));
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);

    // One coarse timer per connection, never one per request.
    let period = (settings.idle_timeout / IDLE_CHECKS).max(Duration::from_millis(100));
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
                let touched = activity.touched.swap(false, Ordering::Relaxed);
                if touched || activity.in_flight.load(Ordering::Relaxed) > 0 {
                    quiet_checks = 0;
                } else {
                    quiet_checks += 1;
                    if quiet_checks >= IDLE_CHECKS {
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

/// A client socket that notes when bytes move, for the idle check.
struct ActivityIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> ActivityIo<T> {
    fn touch(&self) {
        self.activity.touched.store(true, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ActivityIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ActivityIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

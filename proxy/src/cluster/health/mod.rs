//! Active health checks: a probe per endpoint on the control thread, and the threshold state
//! machine that turns probe results into health.

pub mod postgres;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::{debug, info};

use super::{ClusterState, EndpointState, Health};
use crate::config::model::{HealthCheck, HttpHealthCheck};

/// Counts consecutive results and decides when health changes.
#[derive(Debug)]
pub struct Thresholds {
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    successes: u32,
    failures: u32,
}

impl Thresholds {
    pub fn new(healthy_threshold: u32, unhealthy_threshold: u32) -> Self {
        Thresholds {
            healthy_threshold: healthy_threshold.max(1),
            unhealthy_threshold: unhealthy_threshold.max(1),
            successes: 0,
            failures: 0,
        }
    }

    /// Feeds one probe result; returns the new health if it changes.
    ///
    /// A never-checked endpoint takes its first result at once (it is not serving yet, so
    /// there is nothing to protect by waiting); afterwards the thresholds apply.
    pub fn record(&mut self, current: Health, ok: bool) -> Option<Health> {
        if ok {
            self.failures = 0;
            self.successes += 1;
        } else {
            self.successes = 0;
            self.failures += 1;
        }
        let next = match current {
            Health::Unknown => Some(if ok {
                Health::Healthy
            } else {
                Health::Unhealthy
            }),
            Health::Healthy if self.failures >= self.unhealthy_threshold => Some(Health::Unhealthy),
            Health::Unhealthy if self.successes >= self.healthy_threshold => Some(Health::Healthy),
            _ => None,
        };
        if next.is_some() {
            self.successes = 0;
            self.failures = 0;
        }
        next
    }
}

/// Probes one endpoint forever; publishes health changes and wakes the cluster's manager.
pub async fn run(
    target: Target,
    spec: HealthCheck,
    state: Arc<EndpointState>,
    cluster: Arc<ClusterState>,
) {
    let addr = target.addr;
    let mut thresholds = Thresholds::new(spec.healthy_threshold, spec.unhealthy_threshold);
    loop {
        let ok = probe_target(&target, &spec).await;
        let current = state.health();
        if let Some(next) = thresholds.record(current, ok) {
            info!(cluster = %cluster.name, endpoint = %addr, from = ?current, to = ?next, "health changed");
            state.set_health(next);
            cluster.changed.notify_one();
        }
        let jitter = spec.jitter.get();
        let extra = if jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_millis(fastrand::u64(..=jitter.as_millis() as u64))
        };
        tokio::time::sleep(spec.interval.get() + extra).await;
    }
}

/// What a probe connects to: the endpoint, and the cluster's TLS if it has one (so a check
/// sees what requests see: a TLS endpoint is checked over TLS).
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Option<Arc<crate::tls::client::ClientTls>>,
    pub hostname: Option<Arc<str>>,
}

/// One probe of a plaintext endpoint: whether it passed within the timeout.
pub async fn probe(addr: SocketAddr, spec: &HealthCheck) -> bool {
    let target = Target {
        addr,
        tls: None,
        hostname: None,
    };
    probe_target(&target, spec).await
}

/// One probe: whether the endpoint passed within the timeout.
pub async fn probe_target(target: &Target, spec: &HealthCheck) -> bool {
    let addr = target.addr;
    let attempt = async {
        if let Some(pg) = &spec.postgres {
            return postgres::probe(addr, pg).await;
        }
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let Some(tls) = &target.tls else {
            return match &spec.http {
                Some(http) => probe_http(addr, stream, http).await,
                None => Ok(()),
            };
        };
        let name = tls.server_name(target.hostname.as_deref(), addr);
        let stream = tokio_rustls::TlsConnector::from(tls.config())
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        match &spec.http {
            Some(http) if h2 => probe_h2(addr, stream, http).await,
            Some(http) => probe_http(addr, stream, http).await,
            None => Ok(()),
        }
    };
    match tokio::time::timeout(spec.timeout.get(), attempt).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            debug!(endpoint = %addr, error = %e, "health check failed");
            false
        }
        Err(_) => {
            debug!(endpoint = %addr, "health check timed out");
            false
        }
    }
}

async fn probe_http<T>(addr: SocketAddr, stream: T, spec: &HttpHealthCheck) -> Result<(), String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let host = spec.host.clone().unwrap_or_else(|| addr.to_string());
    let req = Request::get(spec.path.as_str())
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "legate-health-check")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = tx.send_request(req).await.map_err(|e| e.to_string());
    driver.abort();
    check_status(resp?.status(), spec)
}

async fn probe_h2<T>(addr: SocketAddr, stream: T, spec: &HttpHealthCheck) -> Result<(), String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let host = spec.host.clone().unwrap_or_else(|| addr.to_string());
    let uri = format!("https://{host}{}", spec.path);
    let req = Request::get(uri)
        .header(http::header::USER_AGENT, "legate-health-check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = tx.send_request(req).await.map_err(|e| e.to_string());
    driver.abort();
    check_status(resp?.status(), spec)
}

fn check_status(status: StatusCode, spec: &HttpHealthCheck) -> Result<(), String> {
    if spec.expect.iter().any(|r| r.contains(status.as_u16())) {
        Ok(())
    } else {
        Err(format!("unexpected status {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let mut t = Thresholds::new(2, 3);
        assert_eq!(t.record(Health::Unknown, true), Some(Health::Healthy));
        assert_eq!(t.record(Health::Healthy, false), None);
        assert_eq!(t.record(Health::Healthy, false), None);
        assert_eq!(
            t.record(Health::Healthy, true),
            None,
            "a success resets the count"
        );
        assert_eq!(t.record(Health::Healthy, false), None);
        assert_eq!(t.record(Health::Healthy, false), None);
        assert_eq!(t.record(Health::Healthy, false), Some(Health::Unhealthy));
        assert_eq!(t.record(Health::Unhealthy, true), None);
        assert_eq!(t.record(Health::Unhealthy, false), None);
        assert_eq!(t.record(Health::Unhealthy, true), None);
        assert_eq!(t.record(Health::Unhealthy, true), Some(Health::Healthy));
        let mut u = Thresholds::new(2, 3);
        assert_eq!(u.record(Health::Unknown, false), Some(Health::Unhealthy));
    }

    fn spec(yaml: &str) -> HealthCheck {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[tokio::test]
    async fn tcp_probe_follows_the_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tcp = spec("{ tcp: {}, timeout: 1s }");
        assert!(probe(addr, &tcp).await);
        drop(listener);
        assert!(!probe(addr, &tcp).await);
    }

    #[tokio::test]
    async fn http_probe_checks_the_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        |req: Request<hyper::body::Incoming>| async move {
                            let status = if req.uri().path() == "/healthz" {
                                200
                            } else {
                                503
                            };
                            let mut resp = http::Response::new(Empty::<Bytes>::new());
                            *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        assert!(probe(addr, &spec("{ http: {}, timeout: 1s }")).await);
        assert!(!probe(addr, &spec("{ http: { path: /down }, timeout: 1s }")).await);
        assert!(
            probe(
                addr,
                &spec("{ http: { path: /down, expect: [503] }, timeout: 1s }")
            )
            .await
        );
    }
}

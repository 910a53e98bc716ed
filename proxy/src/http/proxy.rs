//! The request path: route a request, then answer it directly or forward it upstream with
//! retries and a deadline.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::header::{HeaderValue, CONTENT_LENGTH, HOST, LOCATION, TRANSFER_ENCODING, UPGRADE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::{debug, debug_span, Instrument};

use super::body::{ProxyBody, RequestEnd, StatsEnd};
use super::conn::{ConnCtx, InFlight};
use super::error::ProxyError;
use super::headers;
use super::trace::{Abandoned, Trace};
use super::upstream::{self, Pooled, UpstreamBody};
use crate::access_log::AccessRecord;
use crate::cluster::{outlier, ActiveRequest, Admitted, Cluster, Picked};
use crate::config::model::{RetryOn, UpstreamProtocol};
use crate::io::Touching;
use crate::listener::{HttpSettings, Protocol};
use crate::path;
use crate::router::{Action, PathMatch, Redirect, Respond, Route};
use crate::stats::route::TargetOutcome;

/// Entry point for every request on every listener.
pub async fn handle(
    ctx: Arc<ConnCtx>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let in_flight = InFlight::start(&ctx.activity);
    // Each request routes with the listener's current settings, so a reload reaches
    // keep-alive connections too.
    let settings = match &**ctx.listener.settings.load() {
        Protocol::Http(current) => current.clone(),
        Protocol::Tcp(_) => ctx.settings.clone(),
    };
    let start = Instant::now();
    let request_id = headers::ensure_request_id(req.headers_mut());
    let record = settings.access_log.map(|format| AccessRecord {
        format,
        time: SystemTime::now(),
        start,
        listener: ctx.listener.name.clone(),
        peer: ctx.peer,
        method: req.method().clone(),
        host: host_value(&req),
        uri: req.uri().clone(),
        version: req.version(),
        status: 0,
        route: None,
        cluster: None,
        upstream: None,
        attempts: 0,
        request_id: Some(request_id),
        bytes_received: None,
        bytes_sent: 0,
        error: None,
        complete: false,
    });

    let http1 = req.version() <= Version::HTTP_11;
    let mut pending = Abandoned {
        settings: &settings,
        start,
        trace: Trace::default(),
    };
    let span =
        debug_span!("req", method = %req.method(), host = host_of(&req), path = req.uri().path());
    let routed = route(&ctx, &settings, req, &mut pending.trace)
        .instrument(span)
        .await;
    // Answered: the end of the response body records the request from here on.
    let mut trace = std::mem::take(&mut pending.trace);
    drop(pending);
    let (mut resp, error) = match routed {
        Ok(resp) => (resp, None),
        Err(e) => {
            debug!(listener = %ctx.listener.name, route = ?trace.route, cluster = ?trace.cluster,
                   upstream = ?trace.upstream, error = %e, "request failed");
            if let Some(t) = &mut trace.target {
                t.error = Some(e.reason_index());
            }
            (e.to_response(), Some(e.reason()))
        }
    };
    ctx.listener.counters.record(resp.status().as_u16());
    if http1
        && resp.status() != StatusCode::SWITCHING_PROTOCOLS
        && ctx
            .listener
            .closing
            .load(std::sync::atomic::Ordering::Relaxed)
    {
        // hyper closes the connection after a response that says so.
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    let log = record.map(|mut r| {
        r.status = resp.status().as_u16();
        r.route = trace.route;
        r.cluster = trace.cluster;
        r.upstream = trace.upstream;
        r.attempts = trace.attempts;
        r.bytes_received = trace.bytes_received;
        r.error = error;
        r
    });
    let stats = trace.route_index.map(|route| StatsEnd {
        settings,
        route,
        status: resp.status().as_u16(),
        start,
        upstream_start: trace.upstream_start,
        target: trace.target.map(|mut t| {
            t.retries = trace.attempts.saturating_sub(1);
            t
        }),
    });
    resp.body_mut().on_end(RequestEnd {
        log,
        stats,
        endpoint: trace.endpoint,
        cluster_slot: trace.cluster_slot,
        pooled: trace.pooled,
        in_flight: Some(in_flight),
        bytes_sent: 0,
    });
    Ok(resp)
}

fn host_value(req: &Request<Incoming>) -> Option<HeaderValue> {
    match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(HOST).cloned(),
    }
}

/// The Host a request names: `:authority` (HTTP/2, absolute-form) or the Host header.
pub fn host_of<B>(req: &Request<B>) -> &str {
    req.uri()
        .authority()
        .map(Authority::as_str)
        .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("")
}

/// Checks the host a request names, so that what routes it is what the upstream sees: one
/// Host at most, no `:authority` disagreeing with it, an absolute-form target's authority
/// replacing Host (RFC 9112 §3.2.2), and only characters a host and port may have.
pub fn check_host<B>(req: &mut Request<B>) -> Result<(), ProxyError> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    if second.is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    if let Some(authority) = req.uri().authority() {
        let differs = first.is_some_and(|h| {
            !h.as_bytes()
                .eq_ignore_ascii_case(authority.as_str().as_bytes())
        });
        if differs {
            if req.version() == Version::HTTP_2 {
                return Err(ProxyError::BadRequest(":authority and host differ"));
            }
            let target = HeaderValue::from_str(authority.as_str())
                .map_err(|_| ProxyError::BadRequest("invalid authority"))?;
            req.headers_mut().insert(HOST, target);
        }
    }
    // HTTP/1.1 requires a Host (RFC 9112 §3.2); HTTP/1.0 and HTTP/2 without one route by `*`.
    let host = host_of(req);
    if host.is_empty() {
        return match req.version() {
            Version::HTTP_11 => Err(ProxyError::MissingHost),
            _ => Ok(()),
        };
    }
    if !host.bytes().all(is_host_byte) {
        return Err(ProxyError::BadRequest("invalid character in the host"));
    }
    Ok(())
}

/// What `host [ ":" port ]` may be made of (RFC 3986 reg-name, IP literals and port), without
/// userinfo (`@`).
pub fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%[]:".contains(&b)
}

async fn route(
    ctx: &ConnCtx,
    settings: &HttpSettings,
    mut req: Request<Incoming>,
    trace: &mut Trace,
) -> Result<Response<ProxyBody>, ProxyError> {
    let length = target_length(req.uri());
    if length > settings.max_uri_length {
        return Err(ProxyError::UriTooLong {
            length,
            limit: settings.max_uri_length,
        });
    }
    check_host(&mut req)?;
    normalize_path(&mut req, settings.normalize)?;
    let Some(route) = settings
        .route_table
        .route(host_of(&req), req.uri().path(), req.headers())
    else {
        return Err(ProxyError::NoRoute {
            host: host_of(&req).to_owned(),
            path: req.uri().path().to_owned(),
        });
    };
    trace.route = Some(route.name.clone());
    trace.route_index = Some(route.index);
    if !route.rate_limits.is_empty() {
        // A wait for a limit counts against the route's timeout: one past it is refused.
        let checked = crate::ratelimit::check_all(
            &route.rate_limits,
            ctx.peer.ip(),
            req.uri().path(),
            req.headers(),
            route.timeout,
        );
        match checked {
            Ok(wait) if wait.is_zero() => {}
            Ok(wait) => {
                tokio::time::sleep(wait).await;
                trace.waited = wait;
            }
            Err((limit, retry_after)) => {
                return Err(ProxyError::RateLimited { limit, retry_after })
            }
        }
    }
    let mut resp = match &route.action {
        Action::Respond(r) => respond(r),
        Action::Redirect(r) => redirect(r, &req, ctx.scheme),
        Action::Cluster(cluster) => {
            trace.target = Some(TargetOutcome::default());
            forward(ctx, settings, route, cluster, req, trace).await?
        }
        Action::Split(split) => {
            let (index, cluster) = split.pick().ok_or_else(|| ProxyError::NoEndpoint {
                cluster: route.name.clone(),
            })?;
            trace.target = Some(TargetOutcome {
                index,
                ..TargetOutcome::default()
            });
            forward(ctx, settings, route, cluster, req, trace).await?
        }
    };
    route.response_headers.apply(resp.headers_mut());
    Ok(resp)
}

fn respond(r: &Respond) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(r.body.clone()));
    *resp.status_mut() = r.status;
    *resp.headers_mut() = r.headers.clone();
    resp
}

fn redirect<B>(r: &Redirect, req: &Request<B>, scheme: &str) -> Response<ProxyBody> {
    let (req_host, req_port) = split_host_port(host_of(req));
    let scheme = r.scheme.as_deref().unwrap_or(scheme);
    let host = r.host.as_deref().unwrap_or(req_host);
    let port = r.port.or(if r.host.is_some() { None } else { req_port });
    let path = r.path.as_deref().unwrap_or(req.uri().path());
    let mut location = format!("{scheme}://{host}");
    if let Some(port) = port {
        location.push(':');
        location.push_str(&port.to_string());
    }
    location.push_str(path);
    if let (false, Some(q)) = (r.strip_query, req.uri().query()) {
        location.push('?');
        location.push_str(q);
    }
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = r.status;
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            resp.headers_mut().insert(LOCATION, v);
        }
        Err(_) => *resp.status_mut() = StatusCode::BAD_REQUEST,
    }
    resp
}

fn split_host_port(host: &str) -> (&str, Option<u16>) {
    match host.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.contains(']') => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (host, None),
        },
        _ => (host, None),
    }
}

// === forwarding ===

/// A request head that can be sent again (only for requests without a body).
struct Template {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Template {
    fn build(&self) -> Request<UpstreamBody> {
        let mut req = Request::new(UpstreamBody::Empty);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

async fn forward(
    ctx: &ConnCtx,
    settings: &HttpSettings,
    route: &Route,
    cluster: &Arc<Cluster>,
    mut req: Request<Incoming>,
    trace: &mut Trace,
) -> Result<Response<ProxyBody>, ProxyError> {
    trace.cluster = Some(cluster.name.clone());
    trace.cluster_slot = Some(
        cluster
            .state
            .admit(|s| &s.active_requests, cluster.limits.max_requests)
            .ok_or_else(|| ProxyError::Overflow {
                cluster: cluster.name.clone(),
                limit: "max_requests",
            })?,
    );
    let hash = cluster.request_hash(req.headers(), ctx.peer.ip());
    // Only the protocols the route allows are tunnelled (never h2c); any other Upgrade is
    // dropped with the hop-by-hop headers and the request forwarded as it is.
    let upgrade = req.version() == Version::HTTP_11
        && headers::is_upgrade(req.headers())
        && req
            .headers()
            .get(UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|offered| route.allows_upgrade(offered));
    if upgrade && cluster.protocol == UpstreamProtocol::Http2 {
        return Err(ProxyError::BadRequest("upgrade to an HTTP/2 cluster"));
    }
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    let authority = match (&route.host_rewrite, parts.uri.authority()) {
        (Some(h), _) => Some(h.clone()),
        (None, Some(a)) => HeaderValue::from_str(a.as_str()).ok(),
        (None, None) => parts.headers.get(HOST).cloned(),
    };
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    headers::set_forwarded(&mut parts.headers, ctx.peer, ctx.scheme);
    // Only Legate vouches for a client certificate: a client's own claim never passes.
    parts.headers.remove(&headers::X_FORWARDED_CLIENT_CERT);
    if let Some(identity) = &ctx.client_cert {
        parts
            .headers
            .insert(headers::X_FORWARDED_CLIENT_CERT.clone(), identity.clone());
    }
    route.request_headers.apply(&mut parts.headers);
    let uri = upstream_uri(route, &parts.uri, cluster.protocol, authority.as_ref())?;
    match cluster.protocol {
        UpstreamProtocol::Http1 => {
            if let Some(a) = authority {
                parts.headers.insert(HOST, a);
            }
            if parts.version == Version::HTTP_2 {
                headers::join_cookies(&mut parts.headers);
            }
            parts.version = Version::HTTP_11;
        }
        UpstreamProtocol::Http2 => {
            parts.headers.remove(HOST);
            parts.version = Version::HTTP_2;
        }
    }
    parts.uri = uri;

    // One idle clock for the request's bodies both ways, armed when the response head
    // arrives; it counts in the ticks of the connection, which are fixed at its start. A
    // request without a body gets one only if its response has one.
    let stream_idle = route
        .stream_idle_timeout
        .unwrap_or(settings.stream_idle_timeout);
    let start_clock = || ctx.activity.streams.start(stream_idle, ctx.settings.tick);
    let mut clock = None;
    let policy = route.retry.as_ref();
    let attempts = policy.map_or(1, |p| p.attempts).max(1);
    // A body that has not ended may be partly sent by the time a try fails, so only requests
    // without one are ever sent twice.
    let body = if body.is_end_stream() {
        UpstreamBody::Empty
    } else {
        let counter = Arc::new(AtomicU64::new(0));
        trace.bytes_received = Some(counter.clone());
        let upload = clock.insert(start_clock()).clone();
        UpstreamBody::Client(body, counter, upload)
    };
    // A try that reached the upstream is repeated only for an idempotent request (RFC 9110
    // §9.2.2): without a template, only a request that never left can go again.
    let idempotent = is_idempotent(&parts.method)
        || policy
            .is_some_and(|p| p.idempotency_key && parts.headers.contains_key(&IDEMPOTENCY_KEY));
    let template =
        (policy.is_some() && idempotent && matches!(body, UpstreamBody::Empty) && !upgrade).then(
            || Template {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                version: parts.version,
                headers: parts.headers.clone(),
            },
        );
    let first = Request::from_parts(parts, body);

    let deadline = tokio::time::Instant::now() + route.timeout.saturating_sub(trace.waited);
    let upstream_start = Instant::now();
    trace.upstream_start = Some(upstream_start);
    let attempt_loop = send_with_retries(
        cluster, route, first, template, attempts, upgrade, hash, trace,
    );
    let mut resp = match tokio::time::timeout_at(deadline, attempt_loop).await {
        Ok(result) => result?,
        Err(_) => {
            if let Some(t) = &mut trace.target {
                t.timeouts += 1;
            }
            return Err(ProxyError::Timeout);
        }
    };
    if let Some(t) = &mut trace.target {
        t.head = Some(upstream_start.elapsed());
    }

    if upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // The upstream connection now belongs to the tunnel.
        trace.pooled = None;
        if let Some(downstream) = downstream_upgrade {
            let upstream = hyper::upgrade::on(&mut resp);
            // The tunnel holds the request's slots and counts as work a drain waits for.
            let held = Tunnel {
                _endpoint: trace.endpoint.take(),
                _cluster_slot: trace.cluster_slot.take(),
                _guard: ctx.drain.guard(),
            };
            let drain = ctx.drain.clone();
            let drain_timeout = ctx.settings.drain_timeout;
            tokio::spawn(tunnel(
                downstream,
                upstream,
                held,
                drain,
                drain_timeout,
                stream_idle,
            ));
        }
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, ProxyBody::empty()));
    }
    let (mut parts, body) = resp.into_parts();
    if parts.headers.contains_key(TRANSFER_ENCODING) && parts.headers.contains_key(CONTENT_LENGTH) {
        // Framing the upstream should never send (RFC 9112 §6.3): its body was read by
        // Transfer-Encoding, so its Content-Length goes, and so does the connection, whose
        // next bytes can no longer be trusted.
        debug!(cluster = %cluster.name, upstream = ?trace.upstream, "response with both content-length and transfer-encoding");
        parts.headers.remove(CONTENT_LENGTH);
        trace.pooled = None;
    }
    headers::strip_hop_by_hop(&mut parts.headers, false);
    if clock.is_none() && !body.is_end_stream() {
        clock = Some(start_clock());
    }
    if let Some(clock) = &clock {
        clock.arm();
    }
    Ok(Response::from_parts(
        parts,
        ProxyBody::upstream(body, clock),
    ))
}

fn upstream_uri(
    route: &Route,
    uri: &Uri,
    protocol: UpstreamProtocol,
    authority: Option<&HeaderValue>,
) -> Result<Uri, ProxyError> {
    let path_and_query = match (&route.prefix_rewrite, &route.path) {
        (Some(rewrite), PathMatch::Prefix(prefix)) => {
            let rest = uri.path().get(prefix.len()..).unwrap_or("");
            let mut p = String::with_capacity(rewrite.len() + rest.len() + 16);
            p.push_str(rewrite);
            p.push_str(rest);
            // Joining can make a dot segment (`/api` + `../x`), which would climb out of the
            // rewrite's prefix: refused, never sent.
            if path::has_dot_segment(&p) {
                return Err(ProxyError::BadRequest(
                    "the rewritten path has a dot segment",
                ));
            }
            if let Some(q) = uri.query() {
                p.push('?');
                p.push_str(q);
            }
            PathAndQuery::from_maybe_shared(p)
                .map_err(|_| ProxyError::BadRequest("rewritten path is invalid"))?
        }
        _ => uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    match protocol {
        UpstreamProtocol::Http1 => Ok(Uri::from(path_and_query)),
        UpstreamProtocol::Http2 => {
            let authority = authority
                .and_then(|a| Authority::try_from(a.as_bytes()).ok())
                .ok_or(ProxyError::BadRequest("request has no usable authority"))?;
            Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(authority)
                .path_and_query(path_and_query)
                .build()
                .map_err(|_| ProxyError::BadRequest("request has no usable authority"))
        }
    }
}

/// A failed try, with the request if it never left (so it can go elsewhere unchanged).
struct Failure {
    error: ProxyError,
    unsent: Option<Request<UpstreamBody>>,
}

#[allow(clippy::too_many_arguments)]
async fn send_with_retries(
    cluster: &Cluster,
    route: &Route,
    first: Request<UpstreamBody>,
    template: Option<Template>,
    attempts: u32,
    upgrade: bool,
    hash: Option<u64>,
    trace: &mut Trace,
) -> Result<Response<Incoming>, ProxyError> {
    let policy = route.retry.as_ref();
    let per_try = policy.and_then(|p| p.per_try_timeout);
    let mut next = Some(first);
    let mut previous: Option<SocketAddr> = None;
    // The answer of the latest try that is kept if no later try happens: a retriable
    // response (its body unread) or an error. A retry that cannot run leaves it standing.
    let mut kept: Option<Kept> = None;
    let mut _retry_slot: Option<Admitted> = None;
    for attempt in 1..=attempts {
        if attempt > 1 {
            // Retries in flight are bounded per cluster, so a failing upstream is not hit
            // with a multiple of the normal load.
            // The previous retry is over: its slot goes back before this one is taken.
            _retry_slot = None;
            match cluster.admit_retry() {
                Some(slot) => _retry_slot = Some(slot),
                None => break,
            }
        }
        let picked = match previous {
            None => cluster.pick(hash),
            Some(addr) => cluster.pick_other(addr, hash),
        };
        let Some(endpoint) = picked else { break };
        let Some(request) = next
            .take()
            .or_else(|| template.as_ref().map(Template::build))
        else {
            break;
        };
        trace.attempts = attempt;
        trace.upstream = Some(endpoint.addr);
        previous = Some(endpoint.addr);
        let active = ActiveRequest::start(&endpoint.state);
        let last = attempt == attempts;
        let result = try_once(
            cluster,
            &endpoint,
            request,
            template.as_ref(),
            per_try,
            upgrade,
        )
        .await;
        report_outcome(cluster, &endpoint, &result);
        if let (Err(f), Some(t)) = (&result, &mut trace.target) {
            if matches!(f.error, ProxyError::PerTryTimeout) {
                t.timeouts += 1;
            }
        }
        match result {
            Ok((resp, pooled)) => {
                let retry_status = policy.is_some_and(|p| p.on.retries_status(resp.status()));
                if !last && retry_status && template.is_some() {
                    debug!(upstream = %endpoint.addr, status = %resp.status(), "retrying");
                    kept = Some(Kept::Response(resp, pooled, active));
                    continue;
                }
                trace.endpoint = Some(active);
                trace.pooled = pooled;
                return Ok(resp);
            }
            Err(Failure { error, unsent }) => {
                let condition = match &error {
                    ProxyError::ConnectFailed { .. }
                    | ProxyError::ConnectTimeout { .. }
                    | ProxyError::UpstreamTls { .. } => Some(RetryOn::ConnectFailure),
                    ProxyError::PerTryTimeout => Some(RetryOn::Timeout),
                    ProxyError::UpstreamReset { .. } => Some(RetryOn::Reset),
                    // Local refusals (overflow, a bad request) are answered at once.
                    _ => None,
                };
                let allowed = condition.is_some_and(|c| policy.is_some_and(|p| p.on.contains(c)));
                if last || !allowed || (unsent.is_none() && template.is_none()) {
                    return Err(error);
                }
                debug!(upstream = %endpoint.addr, error = %error, "retrying");
                next = unsent;
                kept = Some(Kept::Error(error));
            }
        }
    }
    match kept {
        Some(Kept::Response(resp, pooled, active)) => {
            trace.endpoint = Some(active);
            trace.pooled = pooled;
            Ok(resp)
        }
        Some(Kept::Error(error)) => Err(error),
        None => Err(ProxyError::NoEndpoint {
            cluster: cluster.name.clone(),
        }),
    }
}

/// What a try left for the client when no further try happens.
enum Kept {
    Response(Response<Incoming>, Option<Pooled>, ActiveRequest),
    Error(ProxyError),
}

/// Feeds passive outlier detection with the outcome of one try.
fn report_outcome(
    cluster: &Cluster,
    endpoint: &Picked,
    result: &Result<(Response<Incoming>, Option<Pooled>), Failure>,
) {
    let Some(cfg) = &cluster.spec.outlier_detection else {
        return;
    };
    let failed = match result {
        Ok((resp, _)) => resp.status().is_server_error(),
        // Legate's own refusals (overflow, out of descriptors) say nothing of the endpoint.
        Err(f) if f.error.origin() == super::error::Origin::Internal => return,
        Err(f) => matches!(
            f.error,
            ProxyError::ConnectFailed { .. }
                | ProxyError::ConnectTimeout { .. }
                | ProxyError::UpstreamTls { .. }
                | ProxyError::UpstreamReset { .. }
                | ProxyError::PerTryTimeout
        ),
    };
    if !failed {
        outlier::record_success(&endpoint.state);
        return;
    }
    let now = crate::cluster::now_ms();
    let membership = cluster.state.membership.load();
    let ejected = outlier::ejected_count(&membership, now);
    if outlier::record_failure(
        &endpoint.state,
        cfg,
        membership.endpoints.len(),
        ejected,
        now,
    ) {
        tracing::warn!(cluster = %cluster.name, endpoint = %endpoint.addr, "endpoint ejected");
        cluster.state.changed.notify_one();
    }
}

async fn try_once(
    cluster: &Cluster,
    endpoint: &Picked,
    request: Request<UpstreamBody>,
    template: Option<&Template>,
    per_try: Option<Duration>,
    upgrade: bool,
) -> Result<(Response<Incoming>, Option<Pooled>), Failure> {
    let once = async move {
        let mut request = request;
        // A pooled keep-alive connection may have been closed by the upstream while idle. A
        // request that never left it, or an idempotent one it lost before any answer (the
        // upstream closed as the request arrived, RFC 9112 §9.3.1), goes out again on another
        // connection, twice at most; this is not a retry.
        let mut stale = 0;
        loop {
            let mut pooled = if upgrade {
                match upstream::connect_for_upgrade(cluster, endpoint).await {
                    Ok(tx) => Pooled::dedicated(tx),
                    Err(error) => {
                        return Err(Failure {
                            error,
                            unsent: Some(request),
                        })
                    }
                }
            } else {
                match upstream::checkout(cluster, endpoint).await {
                    Ok(p) => p,
                    Err(error) => {
                        return Err(Failure {
                            error,
                            unsent: Some(request),
                        })
                    }
                }
            };
            match pooled.send(request).await {
                Ok(resp) => return Ok((resp, Some(pooled))),
                Err(mut e) => {
                    let unsent = e.take_message();
                    let source = e.into_error();
                    let replay = if pooled.reused && stale < 2 {
                        match (unsent, template) {
                            (Some(r), _) => Ok(r),
                            (None, Some(t)) if lost_before_answer(&source) => Ok(t.build()),
                            (None, _) => Err(None),
                        }
                    } else {
                        Err(unsent)
                    };
                    let unsent = match replay {
                        Ok(r) => {
                            stale += 1;
                            request = r;
                            continue;
                        }
                        Err(unsent) => unsent,
                    };
                    // TLS 1.3 reports some handshake refusals (a client certificate the
                    // upstream wants) only on the first read.
                    let error = if is_tls_failure(&source) {
                        ProxyError::UpstreamTls {
                            addr: endpoint.addr,
                            source: std::io::Error::other(source),
                        }
                    } else {
                        ProxyError::UpstreamReset {
                            addr: endpoint.addr,
                            source,
                        }
                    };
                    return Err(Failure { error, unsent });
                }
            }
        }
    };
    match per_try {
        None => once.await,
        Some(limit) => tokio::time::timeout(limit, once)
            .await
            .unwrap_or(Err(Failure {
                error: ProxyError::PerTryTimeout,
                unsent: None,
            })),
    }
}

/// Whether an upstream error was a TLS failure (an alert from the server) underneath.
/// Replaces the request's path by its normal form (the query is kept as it is), so that it
/// routes and travels upstream as the one path it means.
fn normalize_path(req: &mut Request<Incoming>, how: path::Normalize) -> Result<(), ProxyError> {
    let normal = match path::normalize(req.uri().path(), how) {
        Ok(Cow::Borrowed(_)) => return Ok(()),
        Ok(Cow::Owned(normal)) => normal,
        Err(path::PathError::BadEscape) => {
            return Err(ProxyError::BadRequest(
                "malformed percent-escape in the path",
            ))
        }
        Err(path::PathError::EscapedSlash) => {
            return Err(ProxyError::BadRequest("encoded slash in the path"))
        }
    };
    let mut path_and_query = normal;
    if let Some(query) = req.uri().query() {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(
        PathAndQuery::from_maybe_shared(path_and_query)
            .map_err(|_| ProxyError::BadRequest("invalid path"))?,
    );
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("invalid path"))?;
    Ok(())
}

/// Bytes of a request target as the client sent it: the path and query, plus the scheme and
/// authority of an absolute-form target.
fn target_length(uri: &Uri) -> usize {
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let scheme = uri.scheme_str().map_or(0, |s| s.len() + "://".len());
    let path = uri.path_and_query().map_or(0, |p| p.as_str().len());
    scheme + authority + path
}

/// Whether a connection failed before any of the answer came: the upstream closed or reset
/// it, as when its keep-alive ends just as a request arrives; not a protocol error.
fn lost_before_answer(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_canceled() {
        return true;
    }
    let mut current = std::error::Error::source(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        current = err.source();
    }
    false
}

/// The request header that marks a request as safe to repeat when a route's retry policy
/// says `idempotency_key: true`.
static IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");

/// Methods that may be repeated without changing the outcome (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn is_tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        current = err.source();
    }
    false
}

/// Copies bytes both ways between an upgraded client connection and its upstream.
/// What an upgraded tunnel holds for its life: the request's endpoint count and
/// circuit-breaker slot, and a place in the listener's drain.
struct Tunnel {
    _endpoint: Option<ActiveRequest>,
    _cluster_slot: Option<Admitted>,
    _guard: crate::drain::Guard,
}

/// Copies bytes both ways between an upgraded client connection and its upstream until
/// either side closes, or until the drain timeout once the listener drains.
async fn tunnel(
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    _held: Tunnel,
    mut drain: crate::drain::Watch,
    drain_timeout: Duration,
    idle: Duration,
) {
    let (down, up) = match tokio::join!(downstream, upstream) {
        (Ok(d), Ok(u)) => (d, u),
        (Err(e), _) | (_, Err(e)) => {
            debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let moved = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut down = Touching::new(TokioIo::new(down), moved.clone());
    let mut up = Touching::new(TokioIo::new(up), moved.clone());
    let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
    tokio::pin!(copy);
    // One coarse timer per tunnel: closed after `idle` with no byte moving either way.
    let period = super::idle::check_period(idle);
    let limit = idle.as_millis().div_ceil(period.as_millis().max(1));
    let idled = async {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut quiet = 0;
        loop {
            tick.tick().await;
            if moved.swap(false, std::sync::atomic::Ordering::Relaxed) {
                quiet = 0;
            } else {
                quiet += 1;
                if quiet >= limit {
                    return;
                }
            }
        }
    };
    tokio::select! {
        res = &mut copy => match res {
            Ok((to_up, to_down)) => debug!(to_up, to_down, "tunnel closed"),
            Err(e) => debug!(error = %e, "tunnel closed with error"),
        },
        _ = idled => debug!("stream idle timeout; closing tunnel"),
        _ = async {
            drain.signaled().await;
            tokio::time::sleep(drain_timeout).await;
        } => debug!("drain deadline reached; closing tunnel"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_host_port_cases() {
        assert_eq!(
            split_host_port("example.org:8080"),
            ("example.org", Some(8080))
        );
        assert_eq!(split_host_port("example.org"), ("example.org", None));
        assert_eq!(split_host_port("[::1]:80"), ("[::1]", Some(80)));
        assert_eq!(split_host_port("[::1]"), ("[::1]", None));
    }
}

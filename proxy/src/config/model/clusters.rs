//! The `clusters` section: balancing, health checks, outlier detection, limits, endpoints.

use super::*;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    /// `http1` (default) or `http2` (prior knowledge, multiplexed).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Load balancer. Default `least_request`.
    #[serde(default)]
    pub lb: LbPolicy,
    /// What `ring_hash` and `maglev` hash a request on. Default: the client address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// Time allowed to establish a TCP connection to an endpoint. Default `1s`.
    #[serde(default = "Cluster::default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Idle upstream connections kept per endpoint and worker. Default `64`.
    #[serde(default = "Cluster::default_max_idle")]
    pub max_idle_connections: usize,
    /// An idle pooled upstream connection is closed after this long. Default `60s`.
    #[serde(default = "Cluster::default_idle_timeout")]
    pub idle_timeout: Duration,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Connect to endpoints over TLS. Default: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// Active health checking. Default: none (every pooled endpoint is assumed healthy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Passive outlier detection. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Limits that fail fast with 503 `overflow` instead of queueing.
    #[serde(default)]
    pub circuit_breakers: CircuitBreakers,
    /// An endpoint that becomes usable ramps from a small share to its full weight over this
    /// long. Default: none (full weight at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<Duration>,
    /// When an endpoint is depooled or removed, close its TCP sessions after this long.
    /// Default: none (sessions end when their clients end them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<Duration>,
    /// How often DNS names in endpoint addresses are resolved again. Default `30s`.
    #[serde(default = "Cluster::default_dns_refresh")]
    pub dns_refresh: Duration,
    /// How long `/ready` waits for this cluster's first DNS answers and health-check round;
    /// after it the proxy turns ready without them and `/clusters` shows `warmed: false`.
    /// Default `5s`.
    #[serde(default = "Cluster::default_warmup_timeout")]
    pub warmup_timeout: Duration,
    /// When fewer than this percentage of endpoints are usable (healthy, not ejected),
    /// balance across all pooled endpoints rather than overload the few. Default `50`;
    /// `0` disables panic mode.
    #[serde(default = "Cluster::default_panic_threshold")]
    pub panic_threshold: u32,
}

impl Cluster {
    fn default_dns_refresh() -> Duration {
        Duration::from_secs(30)
    }
    fn default_warmup_timeout() -> Duration {
        Duration::from_secs(5)
    }
    fn default_panic_threshold() -> u32 {
        50
    }
    fn default_connect_timeout() -> Duration {
        Duration::from_secs(1)
    }
    fn default_max_idle() -> usize {
        64
    }
    fn default_idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    Http2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Smooth weighted round robin.
    RoundRobin,
    /// Power of two choices on active requests, weighted.
    #[default]
    LeastRequest,
    /// Power of two choices on open connections/sessions, weighted (long-lived L4 sessions).
    LeastConnections,
    /// Weighted random.
    Random,
    /// Consistent hashing on a ring: a removed endpoint moves only its own share.
    RingHash,
    /// Consistent hashing with a Maglev table: O(1) picks, minimal disruption.
    Maglev,
}

/// The request property consistent hashing uses. Exactly one field is set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HashOn {
    /// Hash this request header's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Hash this cookie's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// Hash the client's IP address.
    #[serde(default, skip_serializing_if = "is_false")]
    pub client_ip: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// An HTTP GET that must answer one of `expect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheck>,
    /// A TCP connect that must succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpHealthCheck>,
    /// A PostgreSQL server that accepts connections (and, with credentials, is a replica
    /// that is not lagging).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresHealthCheck>,
    /// Time between checks of one endpoint. Default `5s`.
    #[serde(default = "HealthCheck::default_interval")]
    pub interval: Duration,
    /// A check not answered within this fails. Default `1s`.
    #[serde(default = "HealthCheck::default_timeout")]
    pub timeout: Duration,
    /// Up to this much random delay is added to each interval, so checks from many proxies
    /// do not arrive together. Default `0s`.
    #[serde(default)]
    pub jitter: Duration,
    /// Consecutive failures that mark a healthy endpoint unhealthy. Default `3`.
    #[serde(default = "HealthCheck::default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Consecutive successes that mark an unhealthy endpoint healthy. Default `2`.
    #[serde(default = "HealthCheck::default_healthy_threshold")]
    pub healthy_threshold: u32,
}

impl HealthCheck {
    fn default_interval() -> Duration {
        Duration::from_secs(5)
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(1)
    }
    fn default_unhealthy_threshold() -> u32 {
        3
    }
    fn default_healthy_threshold() -> u32 {
        2
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHealthCheck {
    /// Path requested. Default `/healthz`.
    #[serde(default = "HttpHealthCheck::default_path")]
    pub path: String,
    /// Host header sent. Default: the endpoint address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Statuses that count as healthy: codes (`200`) or ranges (`200-299`). Default `[200-299]`.
    #[serde(default = "HttpHealthCheck::default_expect")]
    pub expect: Vec<StatusRange>,
}

impl HttpHealthCheck {
    fn default_path() -> String {
        "/healthz".to_owned()
    }
    fn default_expect() -> Vec<StatusRange> {
        vec![StatusRange { lo: 200, hi: 299 }]
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TcpHealthCheck {}

/// Without credentials: a StartupMessage is sent and a server that asks for authentication
/// (or refuses it) is up; one that is starting up, shutting down, out of connection slots or
/// silent is down. With `password` or `password_file`, the check also logs in and queries.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresHealthCheck {
    /// Default `postgres`.
    #[serde(default = "PostgresHealthCheck::default_name")]
    pub user: String,
    /// Default `postgres`.
    #[serde(default = "PostgresHealthCheck::default_name")]
    pub database: String,
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    /// A file holding the password (trailing newline ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// Down when the server is not in recovery (a primary). Needs credentials. Default `false`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub require_replica: bool,
    /// Down when replay lags the primary by more than this. Needs credentials. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag: Option<Duration>,
}

impl PostgresHealthCheck {
    fn default_name() -> String {
        "postgres".to_owned()
    }

    pub fn has_credentials(&self) -> bool {
        self.password.is_some() || self.password_file.is_some()
    }
}

/// An inclusive range of HTTP status codes, written `200` or `200-299`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub lo: u16,
    pub hi: u16,
}

impl StatusRange {
    pub fn contains(self, status: u16) -> bool {
        (self.lo..=self.hi).contains(&status)
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = StatusRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status code (200) or an inclusive range (200-299)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StatusRange, E> {
                let code = u16::try_from(v)
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .ok_or_else(|| E::custom(format!("status {v} is not between 100 and 599")))?;
                Ok(StatusRange { lo: code, hi: code })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StatusRange, E> {
                self.visit_u64(u64::try_from(v).map_err(|_| E::custom("status is negative"))?)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StatusRange, E> {
                let parse = |s: &str| -> Result<u16, E> {
                    s.trim()
                        .parse::<u16>()
                        .ok()
                        .filter(|c| (100..=599).contains(c))
                        .ok_or_else(|| {
                            E::custom(format!("{s:?} is not a status between 100 and 599"))
                        })
                };
                let (lo, hi) = match v.split_once('-') {
                    Some((a, b)) => (parse(a)?, parse(b)?),
                    None => {
                        let c = parse(v)?;
                        (c, c)
                    }
                };
                if lo > hi {
                    return Err(E::custom(format!("range {v:?} is empty")));
                }
                Ok(StatusRange { lo, hi })
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for StatusRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive failures (5xx responses, connect failures, resets) that eject an endpoint.
    /// Default `5`.
    #[serde(default = "OutlierDetection::default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// The first ejection lasts this long; each further one of the same endpoint lasts this
    /// times the number of ejections so far. Default `30s`.
    #[serde(default = "OutlierDetection::default_base_ejection")]
    pub base_ejection: Duration,
    /// Longest ejection. Default `300s`.
    #[serde(default = "OutlierDetection::default_max_ejection")]
    pub max_ejection: Duration,
    /// Never eject more than this percentage of the cluster's endpoints (at least one may
    /// always be ejected). Default `10`.
    #[serde(default = "OutlierDetection::default_max_ejected_percent")]
    pub max_ejected_percent: u32,
}

impl OutlierDetection {
    fn default_consecutive_failures() -> u32 {
        5
    }
    fn default_base_ejection() -> Duration {
        Duration::from_secs(30)
    }
    fn default_max_ejection() -> Duration {
        Duration::from_secs(300)
    }
    fn default_max_ejected_percent() -> u32 {
        10
    }
}

/// Per-cluster limits; past one, a request is answered 503 `overflow` at once.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakers {
    /// Upstream connections open at once, across workers. Default `1024`.
    #[serde(default = "CircuitBreakers::default_limit")]
    pub max_connections: u32,
    /// Requests waiting for a new upstream connection. Default `1024`.
    #[serde(default = "CircuitBreakers::default_limit")]
    pub max_pending: u32,
    /// Requests in flight. Default `1024`.
    #[serde(default = "CircuitBreakers::default_limit")]
    pub max_requests: u32,
    /// Retries in flight. Default `3`.
    #[serde(default = "CircuitBreakers::default_retries")]
    pub max_retries: u32,
    /// Retries in flight as a share of requests in flight, on top of `max_retries`.
    /// Default: none (only `max_retries` applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

/// Retries in flight may be `percent` of the requests in flight, and at least
/// `min_concurrent` whatever the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    /// Percent of the requests in flight. Default `20`.
    #[serde(default = "RetryBudget::default_percent")]
    pub percent: u32,
    /// Retries always allowed at once, however few requests are in flight. Default `3`.
    #[serde(default = "RetryBudget::default_min_concurrent")]
    pub min_concurrent: u32,
}

impl RetryBudget {
    fn default_percent() -> u32 {
        20
    }
    fn default_min_concurrent() -> u32 {
        3
    }

    /// Retries allowed in flight while `active` requests are.
    pub fn allowed(self, active: usize) -> usize {
        let share = active.saturating_mul(self.percent as usize) / 100;
        share.max(self.min_concurrent as usize)
    }
}

impl CircuitBreakers {
    fn default_limit() -> u32 {
        1024
    }
    fn default_retries() -> u32 {
        3
    }
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        Self {
            max_connections: Self::default_limit(),
            max_pending: Self::default_limit(),
            max_requests: Self::default_limit(),
            max_retries: Self::default_retries(),
            retry_budget: None,
        }
    }
}

/// An upstream endpoint: `"ip:port"` or `{ address, weight, pooled }`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    pub address: String,
    /// Relative share of new requests. Default `1`.
    pub weight: u32,
    /// `false`: no new requests go to this endpoint; requests in flight finish. Default `true`.
    pub pooled: bool,
    /// Zone (datacenter) of the endpoint, for zone-aware routing. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointFields {
    address: String,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default = "yes")]
    pooled: bool,
    #[serde(default)]
    zone: Option<String>,
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Endpoint;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address \"ip:port\" or a map { address, weight, pooled }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Endpoint, E> {
                Ok(Endpoint {
                    address: v.to_owned(),
                    weight: 1,
                    pooled: true,
                    zone: None,
                })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Endpoint, A::Error> {
                let f = EndpointFields::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Endpoint {
                    address: f.address,
                    weight: f.weight,
                    pooled: f.pooled,
                    zone: f.zone,
                })
            }
        }
        d.deserialize_any(V)
    }
}

//! The `route_tables` section: virtual hosts, routes, their matches, actions and retries.

use super::*;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTable {
    /// Tried by Host: exact names first, then the longest `*.suffix`, then `*`.
    pub virtual_hosts: Vec<VirtualHost>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    /// Host names: `maps.example.org`, `*.example.org`, or `*`. Case-insensitive; ports ignored.
    pub hosts: Vec<String>,
    /// Tried in order; the first that matches wins.
    pub routes: Vec<Route>,
    /// Rate limits for every route of this host that has none of its own. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimit>,
}

/// One route: a match and exactly one action (`cluster`, `split`, `redirect` or `respond`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// What logs and metrics call the route (`route` label). Unique within its route table.
    /// Default: where it is, `route_tables.<table>.virtual_hosts[i].routes[j]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Vec<SplitTarget>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respond: Option<Respond>,
    /// Whole-request deadline, from routing to the end of the response head. Default `15s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Once the response head has arrived, a request (or an upgraded tunnel) with no body
    /// bytes moving either way for this long is cut. Default: the listener's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_idle_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Replace the Host (`:authority`) sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite: Option<String>,
    /// Replace the matched `prefix` of the path with this (prefix routes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    /// Headers set on / removed from the request sent upstream.
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub request_headers: HeaderOps,
    /// Headers set on / removed from the response sent to the client.
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub response_headers: HeaderOps,
    /// Protocols an HTTP/1.1 `Upgrade` may switch to through this route, as `Upgrade`
    /// tokens (case-insensitive). Default `[websocket]`; `h2c` is never allowed.
    #[serde(
        default = "default_upgrades",
        skip_serializing_if = "is_default_upgrades"
    )]
    pub upgrades: Vec<String>,
    /// Token buckets each request must pass, in order. Default: the virtual host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<Vec<RateLimit>>,
}

/// One token bucket per key: `requests` per `per`, up to `burst` at once.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// The `limit` label; unique among a route's limits.
    pub name: String,
    pub requests: u64,
    pub per: Duration,
    /// Requests allowed at once. Default: `requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// What each bucket counts by: `route` (default), `client_ip`, `client_ip/<bits>`,
    /// `header:<name>`, `path`, or a list of them (together).
    #[serde(default, skip_serializing_if = "RateLimitKey::is_route")]
    pub key: RateLimitKey,
    /// `local` (default): this proxy's own buckets.
    #[serde(default)]
    pub scope: RateLimitScope,
    /// Over the limit: `reject` (default, 429) or `delay` (wait up to `max_delay`, then 429).
    #[serde(default)]
    pub action: RateLimitAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<Duration>,
    /// Buckets kept for a keyed limit (the memory bound). Default `65536`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_keys: Option<usize>,
}

/// One key part, or several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RateLimitKey(pub Vec<String>);

impl Default for RateLimitKey {
    fn default() -> Self {
        RateLimitKey(vec!["route".to_owned()])
    }
}

impl RateLimitKey {
    fn is_route(&self) -> bool {
        self.0 == ["route"]
    }
}

impl<'de> Deserialize<'de> for RateLimitKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        one_or_many(d, "a key part").map(RateLimitKey)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitScope {
    #[default]
    Local,
    Global,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitAction {
    #[default]
    Reject,
    Delay,
}

fn default_upgrades() -> Vec<String> {
    vec!["websocket".to_owned()]
}

fn is_default_upgrades(upgrades: &[String]) -> bool {
    upgrades == ["websocket"]
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Path starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Path (without query) equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Path (without query) matches this regular expression as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Every listed header condition must hold as well.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    /// The header's value equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The header's value matches this regular expression as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// `true`: the header is present (any value); `false`: it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// Negate the condition. Default `false`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub invert: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitTarget {
    pub cluster: String,
    /// Relative share of requests; `0` sends none.
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// `http` or `https`. Default: the request's scheme.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Default: the request's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Default: the request's port, if it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Replace the whole path. Default: the request's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Drop the query string. Default `false`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub strip_query: bool,
    /// 301, 302, 303, 307 or 308. Default `301`.
    #[serde(default = "Redirect::default_status")]
    pub status: u16,
}

impl Redirect {
    fn default_status() -> u16 {
        301
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Respond {
    pub status: u16,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
    /// Extra response headers. `content-type` defaults to `text/plain` when a body is set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Total tries including the first. Default `2`.
    #[serde(default = "RetryPolicy::default_attempts")]
    pub attempts: u32,
    /// Conditions that allow another try. Default `[connect-failure]`.
    #[serde(default = "RetryPolicy::default_on")]
    pub on: Vec<RetryOn>,
    /// Deadline for each try's response head. Default: none (the route timeout applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// `true`: a request carrying an `Idempotency-Key` header counts as idempotent, so it may
    /// be tried again after it reached the upstream. Default `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub idempotency_key: bool,
}

impl RetryPolicy {
    fn default_attempts() -> u32 {
        2
    }
    fn default_on() -> Vec<RetryOn> {
        vec![RetryOn::ConnectFailure]
    }
}

/// When a failed try may be retried. A request whose body has started streaming upstream is
/// never retried, whatever the condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryOn {
    /// The upstream connection could not be established.
    ConnectFailure,
    /// The upstream reset or closed the connection before a response head.
    Reset,
    /// The per-try timeout expired.
    Timeout,
    /// The upstream answered 503.
    Status503,
    /// The upstream answered 502, 503 or 504.
    GatewayError,
    /// The upstream answered any 5xx.
    Status5xx,
}

impl RetryOn {
    pub const ALL: [(&'static str, RetryOn); 6] = [
        ("connect-failure", RetryOn::ConnectFailure),
        ("reset", RetryOn::Reset),
        ("timeout", RetryOn::Timeout),
        ("503", RetryOn::Status503),
        ("gateway-error", RetryOn::GatewayError),
        ("5xx", RetryOn::Status5xx),
    ];

    pub fn as_str(self) -> &'static str {
        RetryOn::ALL
            .iter()
            .find(|(_, v)| *v == self)
            .map_or("?", |(s, _)| s)
    }
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = RetryOn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("one of connect-failure, reset, timeout, 503, gateway-error, 5xx")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RetryOn, E> {
                RetryOn::ALL
                    .iter()
                    .find(|(s, _)| *s == v)
                    .map(|(_, r)| *r)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RetryOn, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RetryOn, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for RetryOn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    /// Set these headers, replacing any value already present.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Remove these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

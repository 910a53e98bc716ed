//! The `route_tables` section: virtual hosts, host patterns, routes, matches and their actions.

use std::collections::HashMap;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::StatusCode;
use regex::Regex;

use super::{Validator, MAX_ATTEMPTS, MAX_WEIGHT};
use crate::config::checked::{
    ActionValues, HeaderMatch, HeaderMatchKind, HeaderOps, PathMatch, RouteValues,
};
use crate::config::model::{
    self, Redirect, Respond, RetryPolicy, Route, RouteMatch, RouteTable, SplitTarget,
};
use crate::config::suggest::did_you_mean_quoted;
use crate::config::{Entry, ErrorKind, FieldPath, Section};
use crate::path::{EscapedSlashes, Normalize};

/// Headers that belong to one connection, plus `host` (owned by `host_rewrite`): header rules
/// may not add or remove them.
const RESERVED_HEADERS: [&str; 8] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "host",
];

impl Validator<'_> {
    pub(super) fn route_table(&mut self, name: &str, table: &RouteTable) {
        self.entry = Some(Entry {
            section: Section::RouteTables,
            name: name.to_owned(),
            index: None,
        });
        self.route_table_entries(name, table);
        self.entry = None;
    }

    fn route_table_entries(&mut self, name: &str, table: &RouteTable) {
        if name.trim().is_empty() {
            self.error(
                FieldPath::root("route_tables"),
                "a route table needs a non-empty name",
            );
        }
        let base = FieldPath::root("route_tables").key(name.to_owned());
        if table.virtual_hosts.is_empty() {
            self.error(
                base.field("virtual_hosts"),
                "a route table needs at least one virtual host",
            );
        }
        // Lower-cased host pattern → path of its first appearance in this table.
        let mut seen: HashMap<String, FieldPath> = HashMap::new();
        let mut values = Vec::with_capacity(table.virtual_hosts.len());
        for (v, vhost) in table.virtual_hosts.iter().enumerate() {
            let vbase = base.field("virtual_hosts").index(v);
            if vhost.hosts.is_empty() {
                self.error(
                    vbase.field("hosts"),
                    "a virtual host needs at least one host (\"*\" matches any)",
                );
            }
            for (h, host) in vhost.hosts.iter().enumerate() {
                let path = vbase.field("hosts").index(h);
                if let Err(message) = check_host_pattern(host) {
                    self.error(path, message);
                    continue;
                }
                let key = host.to_ascii_lowercase();
                if let Some(first) = seen.get(&key) {
                    let message = format!("host {host:?} is also in {first}");
                    self.error(path, message);
                } else {
                    seen.insert(key, path);
                }
            }
            if vhost.routes.is_empty() {
                self.error(
                    vbase.field("routes"),
                    "a virtual host needs at least one route",
                );
            }
            let routes = vhost.routes.iter().enumerate();
            values.push(
                routes
                    .map(|(r, route)| self.route(&vbase.field("routes").index(r), route))
                    .collect(),
            );
        }
        self.values.routes.insert(name.to_owned(), values);
        self.route_names(name, table);
        self.rate_limits(name, table);
    }

    fn route(&mut self, base: &FieldPath, route: &Route) -> RouteValues {
        let (path, headers) = self.route_match(&base.field("match"), &route.matcher);

        let actions = [
            ("cluster", route.cluster.is_some()),
            ("split", route.split.is_some()),
            ("redirect", route.redirect.is_some()),
            ("respond", route.respond.is_some()),
        ];
        let given: Vec<&str> = actions.iter().filter(|a| a.1).map(|a| a.0).collect();
        if given.len() != 1 {
            self.error(
                base,
                format!(
                    "a route needs exactly one of cluster, split, redirect, respond (found {})",
                    and_list(&given)
                ),
            );
        }
        // Check every action given, even when there are too many: each may have its own typo.
        let mut action = None;
        if let Some(cluster) = &route.cluster {
            self.cluster_ref(base.field("cluster"), cluster);
            action = Some(ActionValues::Cluster(cluster.clone()));
        }
        if let Some(split) = &route.split {
            self.split(&base.field("split"), split);
            let targets = split.iter().map(|t| (t.cluster.clone(), t.weight));
            action = Some(ActionValues::Split(targets.collect()));
        }
        if let Some(redirect) = &route.redirect {
            action = self.redirect(&base.field("redirect"), redirect).or(action);
        }
        if let Some(respond) = &route.respond {
            action = self.respond(&base.field("respond"), respond).or(action);
        }

        if let Some(idle) = route.stream_idle_timeout {
            self.positive(base.field("stream_idle_timeout"), idle);
        }
        if let Some(timeout) = route.timeout {
            self.positive(base.field("timeout"), timeout);
        }
        if let Some(retry) = &route.retry {
            self.retry(&base.field("retry"), retry);
        }
        if let Some(rewrite) = &route.prefix_rewrite {
            let path = base.field("prefix_rewrite");
            if route.matcher.prefix.is_none() {
                self.error(&path, "prefix_rewrite needs a `prefix` match");
            }
            if !rewrite.starts_with('/') {
                self.error(path, format!("{rewrite:?} must start with `/`"));
            }
        }
        let mut host_rewrite = None;
        if let Some(host) = &route.host_rewrite {
            match check_authority(host).and_then(|()| header_value(host)) {
                Ok(value) => host_rewrite = Some(value),
                Err(message) => self.error(base.field("host_rewrite"), message),
            }
        }
        for (i, token) in route.upgrades.iter().enumerate() {
            let path = base.field("upgrades").index(i);
            if token.is_empty() || !token.bytes().all(is_token_byte) {
                self.error(path, format!("{token:?} is not an Upgrade token"));
            } else if token.eq_ignore_ascii_case("h2c") {
                self.error(
                    path,
                    "h2c is never tunnelled: HTTP/2 is spoken with prior knowledge or over TLS",
                );
            }
        }
        let request_headers =
            self.header_ops(&base.field("request_headers"), &route.request_headers);
        let response_headers =
            self.header_ops(&base.field("response_headers"), &route.response_headers);
        let defaults = RouteValues::default();
        RouteValues {
            path: path.unwrap_or(defaults.path),
            headers,
            action: action.unwrap_or(defaults.action),
            host_rewrite,
            request_headers,
            response_headers,
        }
    }

    fn route_match(
        &mut self,
        base: &FieldPath,
        m: &RouteMatch,
    ) -> (Option<PathMatch>, Vec<HeaderMatch>) {
        let kinds = [
            ("prefix", m.prefix.is_some()),
            ("exact", m.exact.is_some()),
            ("regex", m.regex.is_some()),
        ];
        let given: Vec<&str> = kinds.iter().filter(|k| k.1).map(|k| k.0).collect();
        if given.len() != 1 {
            self.error(
                base,
                format!(
                    "a match needs exactly one of prefix, exact, regex (found {})",
                    and_list(&given)
                ),
            );
        }
        for (field, value) in [("prefix", &m.prefix), ("exact", &m.exact)] {
            if let Some(path) = value {
                if !path.starts_with('/') {
                    self.error(base.key(field), format!("{path:?} must start with `/`"));
                } else if let Err(message) = self.normal_form(path) {
                    self.error(base.key(field), message);
                }
            }
        }
        let mut path = match (&m.prefix, &m.exact) {
            (Some(p), _) => Some(PathMatch::Prefix(p.as_str().into())),
            (None, Some(e)) => Some(PathMatch::Exact(e.as_str().into())),
            (None, None) => None,
        };
        if let Some(pattern) = &m.regex {
            match check_regex(pattern) {
                Ok(re) => path = path.or(Some(PathMatch::Regex(re))),
                Err(message) => self.error(base.field("regex"), message),
            }
        }
        let headers = m.headers.iter().enumerate();
        let headers = headers
            .filter_map(|(k, header)| self.header_match(&base.field("headers").index(k), header))
            .collect();
        (path, headers)
    }

    /// A route path must be in the normal form request paths take before routing, or it
    /// never matches. Runs of `/` are allowed only where a listener serving this table keeps
    /// them (`merge_slashes: false`), or might (a listener that could not be read).
    fn normal_form(&self, path: &str) -> Result<(), String> {
        let table = self.entry.as_ref().map(|e| e.name.as_str());
        let merged = !self.provenance.listeners_unsure
            && !self.config.listeners.iter().any(|l| {
                l.http
                    .as_ref()
                    .is_some_and(|h| Some(h.route_table.as_str()) == table && !h.merge_slashes)
            });
        let how = Normalize {
            merge_slashes: merged,
            escaped_slashes: EscapedSlashes::Keep,
        };
        match crate::path::normalize(path, how) {
            Ok(normal) if normal == path => Ok(()),
            Ok(normal) => Err(format!(
                "{path:?} never matches: request paths are normalised before routing; \
                 write {normal:?}"
            )),
            Err(e) => Err(format!("{path:?} has {e}")),
        }
    }

    fn header_match(
        &mut self,
        base: &FieldPath,
        header: &model::HeaderMatch,
    ) -> Option<HeaderMatch> {
        let name = HeaderName::from_bytes(header.name.as_bytes());
        if name.is_err() {
            self.error(
                base.field("name"),
                format!("{:?} is not a valid header name", header.name),
            );
        }
        let conditions = [
            ("exact", header.exact.is_some()),
            ("regex", header.regex.is_some()),
            ("present", header.present.is_some()),
        ];
        let given: Vec<&str> = conditions.iter().filter(|c| c.1).map(|c| c.0).collect();
        if given.len() > 1 {
            self.error(
                base,
                format!(
                    "a header match takes at most one of exact, regex, present (found {})",
                    and_list(&given)
                ),
            );
        }
        let mut kind = match (&header.exact, header.present) {
            (Some(v), _) => match header_value(v) {
                Ok(v) => Some(HeaderMatchKind::Exact(v)),
                Err(message) => {
                    self.error(base.field("exact"), message);
                    None
                }
            },
            (None, Some(p)) => Some(HeaderMatchKind::Present(p)),
            (None, None) => None,
        };
        if let Some(pattern) = &header.regex {
            match check_regex(pattern) {
                Ok(re) => kind = kind.or(Some(HeaderMatchKind::Regex(re))),
                Err(message) => self.error(base.field("regex"), message),
            }
        }
        Some(HeaderMatch {
            name: name.ok()?,
            kind: kind.unwrap_or(HeaderMatchKind::Present(true)),
            invert: header.invert,
        })
    }

    pub(super) fn cluster_ref(&mut self, path: FieldPath, name: &str) {
        if self.cluster_set.contains(name) || self.provenance.broken_clusters.covers(name) {
            return;
        }
        let message = if self.cluster_names.is_empty() {
            format!("unknown cluster {name:?} (no clusters are defined)")
        } else {
            let hint = did_you_mean_quoted(name, self.cluster_names.iter().copied());
            format!("unknown cluster {name:?}{hint}")
        };
        self.error_kind(ErrorKind::UnknownReference, path, message);
    }

    fn split(&mut self, base: &FieldPath, targets: &[SplitTarget]) {
        if targets.is_empty() {
            self.error(base, "a split needs at least one target");
            return;
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut total: u64 = 0;
        for (k, target) in targets.iter().enumerate() {
            let tbase = base.index(k);
            self.cluster_ref(tbase.field("cluster"), &target.cluster);
            if let Some(first) = seen.get(target.cluster.as_str()) {
                let message = format!(
                    "cluster {:?} appears twice in this split (also split[{first}])",
                    target.cluster
                );
                self.error(tbase.field("cluster"), message);
            } else {
                seen.insert(&target.cluster, k);
            }
            if target.weight > MAX_WEIGHT {
                self.error(
                    tbase.field("weight"),
                    format!("must be at most {MAX_WEIGHT} (got {})", target.weight),
                );
            }
            total += u64::from(target.weight);
        }
        if total == 0 {
            self.error(
                base,
                "the weights add up to 0; give at least one target a positive weight",
            );
        }
    }

    fn redirect(&mut self, base: &FieldPath, redirect: &Redirect) -> Option<ActionValues> {
        let status = StatusCode::from_u16(redirect.status).ok();
        if ![301, 302, 303, 307, 308].contains(&redirect.status) {
            self.error(
                base.field("status"),
                format!(
                    "{} is not a redirect status; use 301, 302, 303, 307 or 308",
                    redirect.status
                ),
            );
        }
        if let Some(scheme) = &redirect.scheme {
            if scheme != "http" && scheme != "https" {
                self.error(
                    base.field("scheme"),
                    format!("{scheme:?} is not supported; use \"http\" or \"https\""),
                );
            }
        }
        if let Some(host) = &redirect.host {
            // The port has its own field, so the host alone must be a valid authority.
            let problem = if host.contains(':') && !host.starts_with('[') {
                Err(format!("{host:?} has a port; set `port` instead"))
            } else {
                check_authority(host)
            };
            if let Err(message) = problem {
                self.error(base.field("host"), message);
            }
        }
        if let Some(path) = &redirect.path {
            if !path.starts_with('/') {
                self.error(base.field("path"), format!("{path:?} must start with `/`"));
            }
        }
        status.map(|status| ActionValues::Redirect { status })
    }

    fn respond(&mut self, base: &FieldPath, respond: &Respond) -> Option<ActionValues> {
        let status = StatusCode::from_u16(respond.status)
            .ok()
            .filter(|_| (100..=599).contains(&respond.status));
        if status.is_none() {
            self.error(
                base.field("status"),
                format!("{} is not an HTTP status; use 100 to 599", respond.status),
            );
        }
        let mut headers = HeaderMap::with_capacity(respond.headers.len());
        for (name, value) in &respond.headers {
            let path = base.field("headers").key(name.clone());
            let name = match HeaderName::from_bytes(name.as_bytes()) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.error(&path, format!("{name:?} is not a valid header name"));
                    None
                }
            };
            match (name, header_value(value)) {
                (Some(name), Ok(value)) => {
                    headers.insert(name, value);
                }
                (_, Err(message)) => self.error(path, message),
                (None, Ok(_)) => {}
            }
        }
        Some(ActionValues::Respond {
            status: status?,
            headers,
        })
    }

    fn retry(&mut self, base: &FieldPath, retry: &RetryPolicy) {
        if !(1..=MAX_ATTEMPTS).contains(&retry.attempts) {
            self.error(
                base.field("attempts"),
                format!(
                    "must be between 1 and {MAX_ATTEMPTS}, counting the first try (got {})",
                    retry.attempts
                ),
            );
        }
        if retry.on.is_empty() {
            self.error(
                base.field("on"),
                "must list at least one of connect-failure, reset, timeout, 503, gateway-error, 5xx",
            );
        }
        if let Some(per_try) = retry.per_try_timeout {
            self.positive(base.field("per_try_timeout"), per_try);
        }
    }

    fn header_ops(&mut self, base: &FieldPath, ops: &model::HeaderOps) -> HeaderOps {
        let mut out = HeaderOps::default();
        for (name, value) in &ops.add {
            let path = base.field("add").key(name.clone());
            let name = check_rewritable_header(name)
                .map_err(|message| self.error(&path, message))
                .ok();
            match (name, header_value(value)) {
                (Some(name), Ok(value)) => out.set.push((name, value)),
                (_, Err(message)) => self.error(path, message),
                (None, Ok(_)) => {}
            }
        }
        for (k, name) in ops.remove.iter().enumerate() {
            match check_rewritable_header(name) {
                Ok(name) => out.remove.push(name),
                Err(message) => self.error(base.field("remove").index(k), message),
            }
        }
        out
    }
}

/// "none", "a", "a and b", "a, b and c".
fn and_list(items: &[&str]) -> String {
    match items {
        [] => "none".to_owned(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// A virtual host pattern: `*`, `*.suffix` or a host name, without a port.
fn check_host_pattern(host: &str) -> Result<(), String> {
    if host == "*" {
        return Ok(());
    }
    if host.is_empty() {
        return Err("a host cannot be empty".to_owned());
    }
    if host.chars().any(char::is_whitespace) {
        return Err(format!("{host:?} contains a space"));
    }
    if host.contains('/') {
        return Err(format!(
            "{host:?} contains `/`; write only the host name, not a URL"
        ));
    }
    let name = match host.strip_prefix("*.") {
        Some("") => return Err("\"*.\" needs a suffix, e.g. \"*.example.org\"".to_owned()),
        Some(suffix) => suffix,
        None => host,
    };
    if name.contains('*') {
        return Err(format!(
            "{host:?}: `*` is only allowed as the whole host or as a leading `*.`"
        ));
    }
    if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        if inner.parse::<std::net::Ipv6Addr>().is_ok() {
            return Ok(());
        }
    }
    if name.parse::<std::net::Ipv6Addr>().is_ok() {
        return Err(format!(
            "{host:?}: write IPv6 addresses in brackets, e.g. \"[::1]\""
        ));
    }
    if let Some((_, port)) = name.rsplit_once(':') {
        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "{host:?} has a port; ports are not allowed here (the Host port is ignored when matching)"
            ));
        }
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        return Err(format!("{host:?} contains the invalid character {bad:?}"));
    }
    Ok(())
}

/// A `host[:port]` authority without user info, as sent in Host / `:authority`.
pub(super) fn check_authority(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("a host cannot be empty".to_owned());
    }
    if text.contains('@') {
        return Err(format!("{text:?} must not contain user info (`@`)"));
    }
    text.parse::<Authority>()
        .map(|_| ())
        .map_err(|e| format!("{text:?} is not a valid host[:port] ({e})"))
}

/// A header that `request_headers` / `response_headers` may add or remove.
fn check_rewritable_header(name: &str) -> Result<HeaderName, String> {
    if name.starts_with(':') {
        return Err(format!(
            "{name:?} is a pseudo-header; Legate sets pseudo-headers itself"
        ));
    }
    let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
        return Err(format!("{name:?} is not a valid header name"));
    };
    if header == http::header::HOST {
        return Err(format!(
            "{name:?} cannot be changed by header rules; use `host_rewrite`"
        ));
    }
    if RESERVED_HEADERS.contains(&header.as_str()) {
        return Err(format!(
            "{name:?} is a hop-by-hop header; Legate manages it per connection"
        ));
    }
    Ok(header)
}

/// A `tchar` of RFC 9110 §5.6.2, or `/` (a protocol version: `websocket`, `foo/2`).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b)
}

fn header_value(value: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(value).map_err(|_| format!("{value:?} is not a valid header value"))
}

/// Compile `pattern` for matching whole values (as Envoy's `safe_regex` does), condensing the
/// regex crate's multi-line report to its last line. The pattern must be valid on its own,
/// not only inside the anchors (`a)|(b` is not).
fn check_regex(pattern: &str) -> Result<Regex, String> {
    match Regex::new(pattern).and_then(|_| full_match_regex(pattern)) {
        Ok(re) => Ok(re),
        Err(e) => {
            let text = e.to_string();
            let brief = text
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("unknown error");
            let brief = brief.strip_prefix("error: ").unwrap_or(brief);
            Err(format!("invalid regex {pattern:?}: {brief}"))
        }
    }
}

/// Anchors a user regex so it must match the whole input.
pub fn full_match_regex(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

#[cfg(test)]
mod tests {
    use super::and_list;
    use crate::config::tests::{assert_errors, doc, parse_ok};

    const ROUTE: &str = "route_tables.t.virtual_hosts[0].routes[0]";

    /// A document whose only route is `route` (a YAML mapping body, one field per line),
    /// starting on line 9, with clusters `app` and `tegola` defined.
    fn route_doc(route: &str) -> String {
        let mut text = doc(r#"
            clusters:
              - { name: app, endpoints: ["10.0.0.1:80"] }
              - { name: tegola, endpoints: ["10.0.0.2:80"] }
            route_tables:
              t:
                virtual_hosts:
                  - hosts: ["*"]
                    routes:
            "#);
        for (i, line) in doc(route).lines().enumerate() {
            text.push_str(if i == 0 {
                "          - "
            } else {
                "            "
            });
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    /// `route` must fail with exactly `expected`: (path below the route, line, message part).
    fn assert_route_errors(route: &str, expected: &[(&str, usize, &str)]) {
        let paths: Vec<String> = expected.iter().map(|e| format!("{ROUTE}{}", e.0)).collect();
        let expected: Vec<(&str, usize, &str)> = expected
            .iter()
            .zip(&paths)
            .map(|(e, path)| (path.as_str(), e.1, e.2))
            .collect();
        assert_errors(&route_doc(route), &expected);
    }

    fn assert_route_ok(route: &str) {
        parse_ok(&route_doc(route));
    }

    #[test]
    fn route_tables_need_hosts_and_routes() {
        assert_errors(
            r#"
            route_tables:
              empty: { virtual_hosts: [] }
              t:
                virtual_hosts:
                  - hosts: []
                    routes: []
            "#,
            &[
                (
                    "route_tables.empty.virtual_hosts",
                    2,
                    "at least one virtual host",
                ),
                (
                    "route_tables.t.virtual_hosts[0].hosts",
                    5,
                    "at least one host",
                ),
                (
                    "route_tables.t.virtual_hosts[0].routes",
                    6,
                    "at least one route",
                ),
            ],
        );
    }

    #[test]
    fn host_patterns() {
        assert_errors(
            r#"
            route_tables:
              t:
                virtual_hosts:
                  - hosts:
                      - example.org:80
                      - "*."
                      - "a.*.org"
                      - "*example.org"
                      - http://example.org
                      - "exa mple.org"
                      - "ex!ample.org"
                      - ""
                      - "::1"
                      - "*"
                      - "*.example.org"
                      - "[::1]"
                      - EXAMPLE.org
                      - 10.0.0.1
                    routes: [{ match: { prefix: / }, respond: { status: 200 } }]
            "#,
            &[
                (
                    "route_tables.t.virtual_hosts[0].hosts[0]",
                    5,
                    "\"example.org:80\" has a port; ports are not allowed",
                ),
                (
                    "route_tables.t.virtual_hosts[0].hosts[1]",
                    6,
                    "needs a suffix",
                ),
                (
                    "route_tables.t.virtual_hosts[0].hosts[2]",
                    7,
                    "leading `*.`",
                ),
                (
                    "route_tables.t.virtual_hosts[0].hosts[3]",
                    8,
                    "leading `*.`",
                ),
                (
                    "route_tables.t.virtual_hosts[0].hosts[4]",
                    9,
                    "contains `/`",
                ),
                (
                    "route_tables.t.virtual_hosts[0].hosts[5]",
                    10,
                    "contains a space",
                ),
                (
                    "route_tables.t.virtual_hosts[0].hosts[6]",
                    11,
                    "invalid character '!'",
                ),
                (
                    "route_tables.t.virtual_hosts[0].hosts[7]",
                    12,
                    "cannot be empty",
                ),
                (
                    "route_tables.t.virtual_hosts[0].hosts[8]",
                    13,
                    "in brackets",
                ),
            ],
        );
    }

    #[test]
    fn a_host_belongs_to_one_virtual_host() {
        assert_errors(
            r#"
            route_tables:
              t:
                virtual_hosts:
                  - hosts: [maps.example.org, "*"]
                    routes: [{ match: { prefix: / }, respond: { status: 200 } }]
                  - hosts: [Maps.Example.org]
                    routes: [{ match: { prefix: / }, respond: { status: 200 } }]
                  - hosts: ["*", "*"]
                    routes: [{ match: { prefix: / }, respond: { status: 200 } }]
              other:
                virtual_hosts:
                  - hosts: [maps.example.org]
                    routes: [{ match: { prefix: / }, respond: { status: 200 } }]
            "#,
            &[
                (
                    "route_tables.t.virtual_hosts[1].hosts[0]",
                    6,
                    "host \"Maps.Example.org\" is also in route_tables.t.virtual_hosts[0].hosts[0]",
                ),
                (
                    "route_tables.t.virtual_hosts[2].hosts[0]",
                    8,
                    "host \"*\" is also in route_tables.t.virtual_hosts[0].hosts[1]",
                ),
                (
                    "route_tables.t.virtual_hosts[2].hosts[1]",
                    8,
                    "host \"*\" is also in route_tables.t.virtual_hosts[0].hosts[1]",
                ),
            ],
        );
    }

    #[test]
    fn match_paths_must_be_in_the_normal_form_requests_are_routed_by() {
        for (written, normal) in [
            ("/%61dmin", "/admin"),
            ("/x/../admin", "/admin"),
            ("/a/./b", "/a/b"),
            ("/api//v1", "/api/v1"),
            ("/a%2fb", "/a%2Fb"),
        ] {
            for field in ["prefix", "exact"] {
                assert_route_errors(
                    &format!("match: {{ {field}: \"{written}\" }}\ncluster: app"),
                    &[(
                        &format!(".match.{field}"),
                        9,
                        &format!("never matches: request paths are normalised before routing; write \"{normal}\""),
                    )],
                );
            }
        }
        assert_route_errors(
            "match: { prefix: \"/a%zz\" }\ncluster: app",
            &[(
                ".match.prefix",
                9,
                "has a `%` not followed by two hex digits",
            )],
        );
        assert_route_ok("match: { prefix: \"/~user/%2F\" }\ncluster: app");
        // `//` can match where a listener serving the table keeps runs of `/`.
        let keeps = format!(
            "{}\nlisteners:\n  - {{ name: l, listen: \"127.0.0.1:80\", http: {{ route_table: t, merge_slashes: false }} }}\n",
            route_doc("match: { prefix: /api//v1 }\ncluster: app")
        );
        parse_ok(&keeps);
        // A listener whose merge_slashes cannot be read might keep them: no error for `//`.
        let unsure = keeps.replace("merge_slashes: false", "merge_slashes: nope");
        let errors = crate::config::parse(&unsure).unwrap_err().0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(
            errors[0].path.to_string(),
            "listeners[0].http.merge_slashes"
        );
    }

    #[test]
    fn a_match_needs_exactly_one_path_condition() {
        assert_route_errors(
            "
            match: {}
            cluster: app
            ",
            &[(
                ".match",
                9,
                "exactly one of prefix, exact, regex (found none)",
            )],
        );
        assert_route_errors(
            "
            match:
              prefix: /a
              exact: /b
              regex: /c
            cluster: app
            ",
            &[(
                ".match",
                9,
                "exactly one of prefix, exact, regex (found prefix, exact and regex)",
            )],
        );
        assert_route_errors(
            "
            match: { prefix: api/ }
            cluster: app
            ",
            &[(".match.prefix", 9, "\"api/\" must start with `/`")],
        );
        assert_route_errors(
            "
            match:
              exact: healthz
            cluster: app
            ",
            &[(".match.exact", 10, "\"healthz\" must start with `/`")],
        );
    }

    #[test]
    fn regexes_must_compile() {
        assert_route_errors(
            r#"
            match:
              regex: "/tiles/(\\d+"
            cluster: app
            "#,
            &[(
                ".match.regex",
                10,
                "invalid regex \"/tiles/(\\\\d+\": unclosed group",
            )],
        );
        assert_route_ok(
            r#"
            match: { regex: "/tiles/\\d+/\\d+\\.png" }
            cluster: app
            "#,
        );
    }

    #[test]
    fn header_matchers() {
        assert_route_errors(
            r#"
            match:
              prefix: /
              headers:
                - { name: "x bad" }
                - { name: x-env, exact: prod, present: true }
                - { name: x-id, regex: "[" }
                - { name: x-ok, regex: "^a+$", invert: true }
                - { name: x-present }
            cluster: app
            "#,
            &[
                (
                    ".match.headers[0].name",
                    12,
                    "\"x bad\" is not a valid header name",
                ),
                (
                    ".match.headers[1]",
                    13,
                    "at most one of exact, regex, present (found exact and present)",
                ),
                (".match.headers[2].regex", 14, "invalid regex \"[\""),
            ],
        );
    }

    #[test]
    fn header_match_values_must_be_header_values() {
        assert_route_errors(
            r#"
            match:
              prefix: /
              headers:
                - { name: x-env, exact: "a\u0007b" }
            cluster: app
            "#,
            &[(
                ".match.headers[0].exact",
                12,
                "\"a\\u{7}b\" is not a valid header value",
            )],
        );
    }

    #[test]
    fn upgrades_are_tokens_and_never_h2c() {
        assert_route_errors(
            r#"
            match: { prefix: / }
            cluster: app
            upgrades: [websocket, H2C, "two words"]
            "#,
            &[
                (".upgrades[1]", 11, "h2c is never tunnelled"),
                (".upgrades[2]", 11, "\"two words\" is not an Upgrade token"),
            ],
        );
        assert_route_ok("match: { prefix: / }\ncluster: app\nupgrades: [websocket, foo/2]");
    }

    #[test]
    fn a_route_needs_exactly_one_action() {
        assert_route_errors(
            "
            match: { prefix: / }
            ",
            &[(
                "",
                9,
                "exactly one of cluster, split, redirect, respond (found none)",
            )],
        );
        assert_route_errors(
            "
            match: { prefix: / }
            cluster: app
            respond: { status: 200 }
            ",
            &[(
                "",
                9,
                "a route needs exactly one of cluster, split, redirect, respond (found cluster and respond)",
            )],
        );
    }

    #[test]
    fn clusters_must_exist() {
        assert_route_errors(
            "
            match: { prefix: / }
            cluster: tegloa
            ",
            &[(
                ".cluster",
                10,
                "unknown cluster \"tegloa\" (did you mean \"tegola\"?)",
            )],
        );
        assert_route_errors(
            "
            match: { prefix: / }
            cluster: something-else
            ",
            &[(".cluster", 10, "unknown cluster \"something-else\"")],
        );
    }

    #[test]
    fn splits() {
        assert_route_errors(
            "
            match: { prefix: / }
            split:
              - { cluster: app, weight: 0 }
              - { cluster: tegloa, weight: 0 }
              - { cluster: app, weight: 0 }
            ",
            &[
                (".split", 10, "the weights add up to 0"),
                (
                    ".split[1].cluster",
                    12,
                    "unknown cluster \"tegloa\" (did you mean \"tegola\"?)",
                ),
                (
                    ".split[2].cluster",
                    13,
                    "cluster \"app\" appears twice in this split (also split[0])",
                ),
            ],
        );
        assert_route_errors(
            "
            match: { prefix: / }
            split: []
            ",
            &[(".split", 10, "at least one target")],
        );
        assert_route_errors(
            "
            match: { prefix: / }
            split: [{ cluster: app, weight: 10001 }, { cluster: tegola, weight: 1 }]
            ",
            &[(".split[0].weight", 10, "at most 10000 (got 10001)")],
        );
        assert_route_ok(
            "
            match: { prefix: / }
            split: [{ cluster: app, weight: 0 }, { cluster: tegola, weight: 10000 }]
            ",
        );
    }

    #[test]
    fn redirects() {
        assert_route_errors(
            "
            match: { prefix: / }
            redirect:
              status: 200
              scheme: ftp
              host: example.org:8080
              path: elsewhere
            ",
            &[
                (".redirect.status", 11, "200 is not a redirect status"),
                (".redirect.scheme", 12, "\"ftp\" is not supported"),
                (".redirect.host", 13, "has a port; set `port` instead"),
                (".redirect.path", 14, "\"elsewhere\" must start with `/`"),
            ],
        );
        assert_route_ok(
            "
            match: { prefix: / }
            redirect: { scheme: https, host: \"[::1]\", port: 8443, status: 308, strip_query: true }
            ",
        );
    }

    #[test]
    fn fixed_responses() {
        assert_route_errors(
            r#"
            match: { prefix: / }
            respond:
              status: 600
              headers:
                "bad name": x
                x-ok: "line\nbreak"
            "#,
            &[
                (".respond.status", 11, "600 is not an HTTP status"),
                (
                    ".respond.headers.bad name",
                    13,
                    "\"bad name\" is not a valid header name",
                ),
                (".respond.headers.x-ok", 14, "is not a valid header value"),
            ],
        );
        assert_route_errors(
            "
            match: { prefix: / }
            respond: { status: 99 }
            ",
            &[(".respond.status", 10, "99 is not an HTTP status")],
        );
    }

    #[test]
    fn timeouts_and_retries() {
        assert_route_errors(
            "
            match: { prefix: / }
            cluster: app
            timeout: 0s
            retry:
              attempts: 11
              on: []
              per_try_timeout: 0s
            stream_idle_timeout: 0s
            ",
            &[
                (".timeout", 11, "greater than zero"),
                (".retry.attempts", 13, "between 1 and 10"),
                (".retry.on", 14, "at least one of connect-failure"),
                (".retry.per_try_timeout", 15, "greater than zero"),
                (".stream_idle_timeout", 16, "greater than zero"),
            ],
        );
        assert_route_errors(
            "
            match: { prefix: / }
            cluster: app
            retry: { attempts: 0 }
            ",
            &[(".retry.attempts", 11, "(got 0)")],
        );
    }

    #[test]
    fn rewrites() {
        assert_route_errors(
            "
            match: { exact: /a }
            cluster: app
            prefix_rewrite: b/
            host_rewrite: user@example.org
            ",
            &[
                (
                    ".prefix_rewrite",
                    11,
                    "prefix_rewrite needs a `prefix` match",
                ),
                (".prefix_rewrite", 11, "\"b/\" must start with `/`"),
                (".host_rewrite", 12, "must not contain user info"),
            ],
        );
        assert_route_errors(
            "
            match: { prefix: /a/ }
            cluster: app
            host_rewrite: exa mple.org
            ",
            &[(".host_rewrite", 11, "is not a valid host[:port]")],
        );
        assert_route_ok(
            "
            match: { prefix: /a/ }
            cluster: app
            prefix_rewrite: /
            host_rewrite: internal.example.org:8080
            ",
        );
    }

    #[test]
    fn header_rules() {
        assert_route_errors(
            r#"
            match: { prefix: / }
            cluster: app
            request_headers:
              add:
                x-ok: "fine"
                Connection: close
                Host: example.org
                x-bad: "a\rb"
                "not a name": x
              remove: [x-gone, Transfer-Encoding, ":path"]
            response_headers:
              remove: [keep-alive, te, trailer, upgrade, proxy-connection, server]
            "#,
            &[
                (".request_headers.add.Connection", 14, "hop-by-hop header"),
                (".request_headers.add.Host", 15, "use `host_rewrite`"),
                (".request_headers.add.x-bad", 16, "not a valid header value"),
                (
                    ".request_headers.add.not a name",
                    17,
                    "not a valid header name",
                ),
                (
                    ".request_headers.remove[1]",
                    18,
                    "\"Transfer-Encoding\" is a hop-by-hop header",
                ),
                (".request_headers.remove[2]", 18, "pseudo-header"),
                (
                    ".response_headers.remove[0]",
                    20,
                    "\"keep-alive\" is a hop-by-hop",
                ),
                (".response_headers.remove[1]", 20, "\"te\" is a hop-by-hop"),
                (
                    ".response_headers.remove[2]",
                    20,
                    "\"trailer\" is a hop-by-hop",
                ),
                (
                    ".response_headers.remove[3]",
                    20,
                    "\"upgrade\" is a hop-by-hop",
                ),
                (
                    ".response_headers.remove[4]",
                    20,
                    "\"proxy-connection\" is a hop-by-hop",
                ),
            ],
        );
    }

    #[test]
    fn and_lists() {
        assert_eq!(and_list(&["a", "b", "c"]), "a, b and c");
    }
}

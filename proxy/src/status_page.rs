//! The admin listener's `GET /`: one HTML page of what this proxy runs, rendered on the
//! server from [`State`], with no script and no external asset.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::cluster::{ClusterStatus, Health};
use crate::config::model::{Route, RouteTable};
use crate::state::State;
use crate::stats::window::Recent;

/// Seconds between the page's own refreshes.
const REFRESH_SECS: u32 = 5;

/// The page, for the state now.
pub fn render(state: &State) -> String {
    let snapshot = state.snapshot.load();
    let mut out = String::with_capacity(16 * 1024);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <title>Legate {}</title><style>{STYLE}</style></head><body>\n",
        esc(crate::VERSION)
    );
    let _ = write!(
        out,
        "<header><h1>Legate</h1><p>release {} ({}) · config <code id=\"config-version\">{}</code> \
         loaded {} · <a class=\"button\" href=\"/\">Refresh</a> (every {REFRESH_SECS} s)</p>",
        esc(crate::VERSION),
        esc(crate::REVISION),
        esc(&snapshot.version),
        esc(&humantime::format_rfc3339_seconds(snapshot.loaded_at).to_string()),
    );
    match &**state.reloads.last.load() {
        Some(last) => {
            let result = match &last.error {
                Some(e) => format!("<span class=\"bad\">rejected</span>: {}", esc(e)),
                None => "<span class=\"good\">applied</span>".to_owned(),
            };
            let _ = write!(
                out,
                "<p id=\"last-reload\">last reload {}: {result}</p>",
                esc(&humantime::format_rfc3339_seconds(last.time).to_string())
            );
        }
        None => out.push_str("<p id=\"last-reload\">no reload yet</p>"),
    }
    if state.is_draining() {
        out.push_str("<p class=\"bad\">draining</p>");
    }
    out.push_str("</header>\n");

    listeners(&mut out, state, &snapshot);
    out.push_str("<h2>Route tables</h2>\n");
    for (name, table) in &snapshot.config.route_tables {
        route_table(&mut out, name, table);
    }
    rate_limits(&mut out, &snapshot);
    traffic(&mut out, state);
    out.push_str("<h2>Clusters</h2>\n");
    let mut clusters: Vec<ClusterStatus> = snapshot.clusters.values().map(|c| c.status()).collect();
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    for c in &clusters {
        cluster(&mut out, c);
    }
    out.push_str("</body></html>\n");
    out
}

fn listeners(out: &mut String, state: &State, snapshot: &crate::snapshot::Snapshot) {
    out.push_str(
        "<h2>Listeners</h2>\n<table id=\"listeners\"><tr><th>name</th><th>address</th>\
         <th>serves</th><th>TLS</th><th>connections</th><th>2xx</th><th>4xx</th><th>5xx</th></tr>\n",
    );
    for view in state.listeners.load().iter() {
        let spec = snapshot
            .config
            .listeners
            .iter()
            .find(|l| *l.name == *view.name);
        let serves = match spec {
            Some(l) if l.tcp.is_some() => l
                .tcp
                .as_ref()
                .map(|t| format!("tcp → {}", esc(&t.cluster)))
                .unwrap_or_default(),
            Some(l) => l
                .http
                .as_ref()
                .map(|h| format!("http → {}", esc(&h.route_table)))
                .unwrap_or_default(),
            None => String::new(),
        };
        let tls = snapshot.listener_tls.contains_key(&*view.name);
        let count = |class: usize| view.counters.responses[class].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{serves}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td></tr>",
            esc(&view.name),
            view.addr,
            if tls { "yes" } else { "no" },
            view.connections.active(),
            count(2),
            count(4),
            count(5),
        );
    }
    out.push_str("</table>\n");
}

/// Every rate limit of every route: its rate, key, and what it has decided since it started.
fn rate_limits(out: &mut String, snapshot: &crate::snapshot::Snapshot) {
    let mut rows = String::new();
    let mut tables: Vec<_> = snapshot.route_tables.iter().collect();
    tables.sort_by(|a, b| a.0.cmp(b.0));
    for (table, routes) in tables {
        for route in routes.routes() {
            for limit in route.rate_limits.iter() {
                let r = limit.read();
                let spec = &limit.spec;
                let _ = write!(
                    rows,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} per {}, burst {}</td><td>{}</td>\
                     <td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(table),
                    esc(&route.name),
                    esc(&limit.name),
                    spec.requests,
                    esc(&humantime::format_duration(spec.per).to_string()),
                    spec.burst,
                    esc(&spec.key.describe()),
                    r.allowed,
                    r.delayed,
                    r.limited,
                );
            }
        }
    }
    if rows.is_empty() {
        return;
    }
    let _ = write!(
        out,
        "<h2>Rate limits</h2>\n<table id=\"rate-limits\"><tr><th>route table</th><th>route</th>\
         <th>limit</th><th>rate</th><th>key</th><th>allowed</th><th>delayed</th><th>limited</th></tr>\
         {rows}</table>\n"
    );
}

fn route_table(out: &mut String, name: &str, table: &RouteTable) {
    let _ = writeln!(
        out,
        "<section class=\"route-table\"><h3>{}</h3><table><tr><th>hosts</th><th>match</th>\
         <th>action</th></tr>",
        esc(name)
    );
    for vhost in &table.virtual_hosts {
        let hosts = vhost
            .hosts
            .iter()
            .map(|h| esc(h))
            .collect::<Vec<_>>()
            .join(", ");
        for route in &vhost.routes {
            let _ = writeln!(
                out,
                "<tr><td>{hosts}</td><td>{}</td><td>{}</td></tr>",
                matcher(route),
                action(route)
            );
        }
    }
    out.push_str("</table></section>\n");
}

fn matcher(route: &Route) -> String {
    let m = &route.matcher;
    let mut parts = Vec::new();
    if let Some(p) = &m.prefix {
        parts.push(format!("prefix <code>{}</code>", esc(p)));
    }
    if let Some(p) = &m.exact {
        parts.push(format!("exact <code>{}</code>", esc(p)));
    }
    if let Some(p) = &m.regex {
        parts.push(format!("regex <code>{}</code>", esc(p)));
    }
    for h in &m.headers {
        parts.push(format!("header <code>{}</code>", esc(&h.name)));
    }
    parts.join(", ")
}

/// A route's action; a split is drawn as bars, one per target, as wide as its share.
fn action(route: &Route) -> String {
    if let Some(targets) = &route.split {
        let total: u64 = targets.iter().map(|t| u64::from(t.weight)).sum();
        let mut html = String::from("<div class=\"split\">");
        for t in targets {
            let share = if total == 0 {
                0.0
            } else {
                f64::from(t.weight) * 100.0 / total as f64
            };
            let _ = write!(
                html,
                "<div class=\"split-target\" data-cluster=\"{}\" data-weight=\"{}\">\
                 <span class=\"bar\" style=\"width:{share:.1}%\"></span>\
                 <span class=\"label\">{} weight {} ({share:.0} %)</span></div>",
                esc(&t.cluster),
                t.weight,
                esc(&t.cluster),
                t.weight,
            );
        }
        html.push_str("</div>");
        return html;
    }
    if let Some(c) = &route.cluster {
        return format!("cluster {}", esc(c));
    }
    if let Some(r) = &route.redirect {
        return format!("redirect {}", r.status);
    }
    if let Some(r) = &route.respond {
        return format!("respond {}", r.status);
    }
    String::new()
}

/// The last minute by route target and by cluster: request rate, 5xx ratio, p99.
fn traffic(out: &mut String, state: &State) {
    let recent = state.recent_traffic();
    let mut targets: Vec<_> = recent.iter().collect();
    targets.sort_by(|a, b| a.0.cmp(b.0));
    let mut clusters: BTreeMap<&str, Recent> = BTreeMap::new();
    for ((_, _, cluster), r) in &targets {
        let sum = clusters.entry(cluster).or_insert(Recent {
            reading: Default::default(),
            span: r.span,
        });
        sum.reading.add(&r.reading);
        sum.span = sum.span.max(r.span);
    }
    let span = targets.iter().map(|t| t.1.span).max().unwrap_or_default();
    let _ = writeln!(
        out,
        "<h2>Traffic, last {:.1} s</h2>\n<table id=\"traffic\"><tr><th>listener</th><th>route</th>\
         <th>cluster</th>{TRAFFIC_HEAD}</tr>",
        span.as_secs_f64()
    );
    for ((listener, route, cluster), r) in &targets {
        let _ = writeln!(
            out,
            "<tr class=\"target\" data-listener=\"{}\" data-route=\"{}\" data-cluster=\"{}\">\
             <td>{}</td><td>{}</td><td>{}</td>{}</tr>",
            esc(listener),
            esc(route),
            esc(cluster),
            esc(listener),
            esc(route),
            esc(cluster),
            traffic_cells(r),
        );
    }
    out.push_str("</table>\n<table id=\"cluster-traffic\"><tr><th>cluster</th>");
    let _ = writeln!(out, "{TRAFFIC_HEAD}</tr>");
    for (cluster, r) in &clusters {
        let _ = writeln!(
            out,
            "<tr class=\"cluster-traffic\" data-cluster=\"{}\"><td>{}</td>{}</tr>",
            esc(cluster),
            esc(cluster),
            traffic_cells(r),
        );
    }
    out.push_str("</table>\n");
}

const TRAFFIC_HEAD: &str = "<th>requests</th><th>per second</th><th>5xx</th><th>p99</th>";

fn traffic_cells(r: &Recent) -> String {
    let errors = r
        .error_ratio()
        .map_or_else(|| "-".to_owned(), |e| format!("{:.1} %", e * 100.0));
    let p99 = r.p99().map_or_else(|| "-".to_owned(), format_seconds);
    format!(
        "<td class=\"requests\">{}</td><td class=\"rate\">{:.2}</td><td class=\"errors\">{errors}</td>\
         <td class=\"p99\">{p99}</td>",
        r.reading.requests(),
        r.per_second(),
    )
}

/// `0.0042` → `4.2 ms`.
fn format_seconds(s: f64) -> String {
    if s < 1.0 {
        format!("{:.1} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

fn cluster(out: &mut String, c: &ClusterStatus) {
    let mut flags = Vec::new();
    if c.panic {
        flags.push("<span class=\"bad\">panic</span>".to_owned());
    }
    if !c.warmed {
        flags.push("<span class=\"bad\">not warmed</span>".to_owned());
    }
    if let Some(e) = &c.dns_error {
        flags.push(format!("<span class=\"bad\">DNS: {}</span>", esc(e)));
    }
    let _ = writeln!(
        out,
        "<section class=\"cluster\" data-cluster=\"{}\"><h3>{}</h3><p>{:?} · {} in flight · {} \
         sessions · {} retries · {} overflows {}</p>",
        esc(&c.name),
        esc(&c.name),
        c.lb,
        c.active_requests,
        c.connections,
        c.retries,
        c.overflows,
        flags.join(" "),
    );
    out.push_str(
        "<table><tr><th>endpoint</th><th>zone</th><th>health</th><th>pooled</th>\
         <th>weight (effective)</th><th>ejected until</th><th>requests (in flight)</th>\
         <th>sessions (open)</th></tr>\n",
    );
    for e in &c.endpoints {
        let health = match e.health {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Unknown => "unchecked",
        };
        let name = match &e.hostname {
            Some(h) => format!("{} ({})", e.address, esc(h)),
            None => e.address.to_string(),
        };
        let _ = writeln!(
            out,
            "<tr class=\"endpoint {health}\" data-address=\"{}\"><td>{name}</td><td>{}</td>\
             <td class=\"health\">{health}</td><td>{}</td><td>{} ({})</td><td>{}</td>\
             <td>{} ({})</td><td>{} ({})</td></tr>",
            e.address,
            esc(e.zone.as_deref().unwrap_or("-")),
            if e.pooled { "yes" } else { "no" },
            e.weight,
            e.effective_weight,
            esc(e.ejected_until.as_deref().unwrap_or("-")),
            e.total_requests,
            e.active_requests,
            e.total_sessions,
            e.active_sessions,
        );
    }
    out.push_str("</table></section>\n");
}

/// `text` safe inside HTML text and double-quoted attributes.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}\
table{border-collapse:collapse;margin:.5rem 0 1rem}td,th{border:1px solid #ccc;padding:.2rem .5rem;\
text-align:left;font-size:.9rem}th{background:#f4f4f4}.bad{color:#b00020;font-weight:600}\
.good{color:#1b5e20}.unhealthy td.health{background:#fdd}.healthy td.health{background:#dfd}\
.split-target{position:relative;min-width:16rem;height:1.4rem;margin:.15rem 0;background:#eee}\
.bar{position:absolute;left:0;top:0;bottom:0;background:#7aa7e0}.label{position:relative;\
padding-left:.3rem}.button{border:1px solid #888;padding:.1rem .5rem;border-radius:.2rem;\
text-decoration:none}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_html_would_read() {
        assert_eq!(
            esc("<script>alert(\"x\")</script>&'"),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
    }
}

//! Prometheus exposition shared by the proxy and the control plane: which form a scraper
//! asked for, and the Prometheus text form of an OpenMetrics encoding.

/// Whether `Accept` ranks OpenMetrics above the Prometheus text format: its best `q` for
/// `application/openmetrics-text` is above zero and not below that of `text/plain` (or
/// `*/*`). Media types compare case-insensitively.
pub fn prefers_openmetrics(headers: &http::HeaderMap) -> bool {
    let mut open = 0.0f32;
    let mut text = 0.0f32;
    for value in headers.get_all(http::header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => open = open.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
    }
    open > 0.0 && open >= text
}

/// OpenMetrics text as Prometheus text: a counter family's `HELP` and `TYPE` name its
/// samples (`x_total`, not `x`), and the `UNIT` and `# EOF` lines go. Samples and labels are
/// written alike in both.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with("# HELP ") {
            // Held until the TYPE line says whether the family is a counter.
            if let Some(held) = help.replace(line) {
                out.push_str(held);
                out.push('\n');
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            // The text format has no `unknown`; its name for it is `untyped`.
            let kind = if kind == "unknown" { "untyped" } else { kind };
            let name = if kind == "counter" && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            if let Some(held) = help.take() {
                let text = held
                    .strip_prefix("# HELP ")
                    .and_then(|h| h.split_once(' '))
                    .map_or("", |(_, text)| text);
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if let Some(held) = help.take() {
            out.push_str(held);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    if let Some(held) = help {
        out.push_str(held);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counter_families_by_their_samples() {
        let open =
            "# HELP legate_x Things done\n# TYPE legate_x counter\nlegate_x_total{a=\"b\"} 3\n\
                    # HELP legate_g Now\n# TYPE legate_g gauge\nlegate_g 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(open),
            "# HELP legate_x_total Things done\n# TYPE legate_x_total counter\n\
             legate_x_total{a=\"b\"} 3\n# HELP legate_g Now\n# TYPE legate_g gauge\nlegate_g 1\n"
        );
    }

    #[test]
    fn openmetrics_only_when_accept_ranks_it_first() {
        let accept = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(
                http::header::ACCEPT,
                http::HeaderValue::from_str(v).unwrap(),
            );
            prefers_openmetrics(&h)
        };
        // Prometheus's own header, and a bare request for it, in any case.
        assert!(accept("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"));
        assert!(accept("Application/OpenMetrics-Text"));
        // Refused, ranked below text, or not asked for.
        assert!(!accept("application/openmetrics-text;q=0"));
        assert!(!accept("text/plain;q=1,application/openmetrics-text;q=0.5"));
        assert!(!accept("*/*"));
        assert!(!prefers_openmetrics(&http::HeaderMap::new()));
    }
}

//! Config: YAML text → typed model → validated, with every problem reported at once.

pub mod checked;
pub mod duration;
pub mod error;
pub mod lines;
pub mod load;
pub mod merge;
pub mod model;
pub mod path;
pub mod suggest;
pub mod validate;

use std::path::Path;

pub use checked::{Checked, Values};
pub use duration::Duration;
pub use error::{ConfigError, ConfigErrors, Entry, ErrorKind, LoadError, Section};
pub use model::Config;
pub use path::FieldPath;

/// Parse and check config text. On failure, returns every problem found, with its line.
pub fn parse(text: &str) -> Result<Checked, ConfigErrors> {
    let loaded = load::load(text).map_err(|e| ConfigErrors(vec![e]))?;
    let mut errors = loaded.errors;
    let (found, values) = validate::validate_with(&loaded.config, &loaded.provenance);
    errors.extend(found);
    if errors.is_empty() {
        return Ok(Checked::new(loaded.config, values));
    }
    // Indexing lines costs a second parse, so only failing files pay for it.
    locate(text, &mut errors);
    errors.sort_by(|a, b| (a.line, &a.path).cmp(&(b.line, &b.path)));
    errors.dedup();
    Err(ConfigErrors(errors))
}

/// Check a config built in code or assembled from several sources (every index its own).
pub fn check(config: Config) -> Result<Checked, ConfigErrors> {
    let (errors, values) = validate::validate_with(&config, &validate::Provenance::default());
    if errors.is_empty() {
        Ok(Checked::new(config, values))
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Read, parse and check a config file. The files it names (certificates) are checked when
/// it is applied (`apply::check`).
pub fn load_file(path: &Path) -> Result<(Checked, String), LoadError> {
    let read_error = |source| LoadError::Read {
        path: path.display().to_string(),
        source,
    };
    // One byte past the cap is enough to refuse the file, whatever its size.
    let mut bytes = Vec::new();
    let limit = load::MAX_CONFIG_BYTES as u64 + 1;
    std::io::Read::read_to_end(
        &mut std::io::Read::take(std::fs::File::open(path).map_err(read_error)?, limit),
        &mut bytes,
    )
    .map_err(read_error)?;
    let text = if bytes.len() > load::MAX_CONFIG_BYTES {
        // Cut at the cap, maybe inside a character: the size is what is wrong with it.
        String::from_utf8_lossy(&bytes).into_owned()
    } else {
        String::from_utf8(bytes)
            .map_err(|e| read_error(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?
    };
    let config = parse(&text).map_err(|errors| LoadError::Invalid {
        path: path.display().to_string(),
        errors,
    })?;
    Ok((config, text))
}

/// Gives each error found after parsing (by checks of the files a config names, say) the
/// line of `text` its path points at.
pub fn locate(text: &str, errors: &mut [ConfigError]) {
    if errors.iter().all(|e| e.line.is_some()) {
        return;
    }
    let lines = lines::LineIndex::new(text);
    for e in errors {
        if e.line.is_none() {
            e.line = lines.line_of(&e.path);
        }
    }
}

/// A short, stable identifier of a config's text, shown by `/config` and in logs. The same
/// content-derived version the control plane gives its resources.
pub fn version_of(text: &str) -> String {
    legate_xds::protocol::content_version(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::model::*;
    use super::*;

    /// Strip the leading newline and the common indentation of an indented test document.
    pub(crate) fn doc(text: &str) -> String {
        let text = text.strip_prefix('\n').unwrap_or(text);
        let indent = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.len() - l.trim_start().len())
            .min()
            .unwrap_or(0);
        let mut lines: Vec<&str> = text
            .lines()
            .map(|l| l.get(indent..).unwrap_or(""))
            .collect();
        while lines.last().is_some_and(|l| l.trim().is_empty()) {
            lines.pop();
        }
        lines.join("\n") + "\n"
    }

    /// Parse `yaml`, which must fail with exactly `expected` errors, in order: each is
    /// (path, line, a fragment of the message).
    pub(crate) fn assert_errors(yaml: &str, expected: &[(&str, usize, &str)]) {
        let errors = match parse(&doc(yaml)) {
            Ok(config) => panic!("expected errors, got a valid config: {config:#?}"),
            Err(errors) => errors,
        };
        let found: Vec<(String, Option<usize>, &str)> = errors
            .0
            .iter()
            .map(|e| (e.path.to_string(), e.line, e.message.as_str()))
            .collect();
        assert_eq!(
            found.len(),
            expected.len(),
            "wrong number of errors:\n{errors}"
        );
        for (got, want) in found.iter().zip(expected) {
            assert_eq!(got.0, want.0, "path, in:\n{errors}");
            assert_eq!(got.1, Some(want.1), "line of {}, in:\n{errors}", want.0);
            assert!(
                got.2.contains(want.2),
                "message of {} should contain {:?}, in:\n{errors}",
                want.0,
                want.2
            );
        }
    }

    /// Parse `yaml`, which must be valid.
    pub(crate) fn parse_ok(yaml: &str) -> Config {
        match parse(&doc(yaml)) {
            Ok(config) => config.into_config(),
            Err(errors) => panic!("expected a valid config, got:\n{errors}"),
        }
    }

    const EXAMPLE: &str = r#"
        admin: { listen: 127.0.0.1:9901 }
        listeners:
          - name: maps-plain
            listen: 0.0.0.0:6533
            http: { route_table: maps }
        route_tables:
          maps:
            virtual_hosts:
              - hosts: [maps.example.org, "*.maps.example.org"]
                routes:
                  - match: { prefix: /osm-intl/ }
                    cluster: tegola
                  - match: { prefix: / }
                    split:
                      - { cluster: kartotherian-metal, weight: 90 }
                      - { cluster: kartotherian-k8s, weight: 10 }
                    timeout: 15s
                    retry: { attempts: 2, on: [connect-failure, reset, "503"] }
              - hosts: ["*"]
                routes:
                  - match: { prefix: / }
                    respond: { status: 404, body: "unknown site\n" }
        clusters:
          - name: tegola
            endpoints: ["127.0.0.1:4000"]
          - name: kartotherian-metal
            endpoints:
              - 10.64.0.5:6533
              - { address: 10.64.0.6:6533, weight: 2 }
              - { address: 10.64.0.7:6533, pooled: false }
          - name: kartotherian-k8s
            protocol: http2
            endpoints: ["10.67.0.10:6533"]
    "#;

    #[test]
    fn example_parses_and_keeps_its_values() {
        let config = parse_ok(EXAMPLE);
        assert_eq!(config.admin.listen, "127.0.0.1:9901");
        assert_eq!(config.runtime.drain_timeout, Duration::from_secs(30));

        assert_eq!(config.listeners.len(), 1);
        let listener = &config.listeners[0];
        assert_eq!(listener.name, "maps-plain");
        assert_eq!(listener.listen, "0.0.0.0:6533");
        assert_eq!(listener.backlog, 1024);
        let http = listener.http.as_ref().expect("http block");
        assert_eq!(http.route_table, "maps");
        assert_eq!(http.max_header_size, 65536);
        assert_eq!(http.max_uri_length, 8192);
        assert_eq!(http.stream_idle_timeout, Duration::from_secs(300));

        let vhosts = &config.route_tables["maps"].virtual_hosts;
        assert_eq!(vhosts.len(), 2);
        assert_eq!(vhosts[0].hosts, ["maps.example.org", "*.maps.example.org"]);
        let routes = &vhosts[0].routes;
        assert_eq!(routes[0].matcher.prefix.as_deref(), Some("/osm-intl/"));
        assert_eq!(routes[0].cluster.as_deref(), Some("tegola"));
        let split = routes[1].split.as_ref().expect("split");
        assert_eq!(
            split,
            &[
                SplitTarget {
                    cluster: "kartotherian-metal".into(),
                    weight: 90
                },
                SplitTarget {
                    cluster: "kartotherian-k8s".into(),
                    weight: 10
                },
            ]
        );
        assert_eq!(routes[1].timeout, Some(Duration::from_secs(15)));
        let retry = routes[1].retry.as_ref().expect("retry");
        assert_eq!(retry.attempts, 2);
        assert_eq!(
            retry.on,
            [RetryOn::ConnectFailure, RetryOn::Reset, RetryOn::Status503]
        );
        let respond = vhosts[1].routes[0].respond.as_ref().expect("respond");
        assert_eq!(respond.status, 404);
        assert_eq!(respond.body, "unknown site\n");

        let clusters = &config.clusters;
        assert_eq!(clusters.len(), 3);
        assert_eq!(clusters[0].protocol, UpstreamProtocol::Http1);
        assert_eq!(clusters[0].connect_timeout, Duration::from_secs(1));
        assert_eq!(
            clusters[1].endpoints,
            [
                Endpoint {
                    address: "10.64.0.5:6533".into(),
                    weight: 1,
                    pooled: true,
                    zone: None
                },
                Endpoint {
                    address: "10.64.0.6:6533".into(),
                    weight: 2,
                    pooled: true,
                    zone: None
                },
                Endpoint {
                    address: "10.64.0.7:6533".into(),
                    weight: 1,
                    pooled: false,
                    zone: None
                },
            ]
        );
        assert_eq!(clusters[2].protocol, UpstreamProtocol::Http2);
    }

    #[test]
    fn empty_documents_give_the_default_config() {
        let expected = Config {
            runtime: Runtime {
                workers: None,
                drain_delay: Duration::from_secs(0),
                drain_timeout: Duration::from_secs(30),
            },
            ..Config::default()
        };
        for text in ["", "\n", "# nothing yet\n", "---\n", "~\n", "null\n"] {
            assert_eq!(
                parse(text).map(Checked::into_config),
                Ok(expected.clone()),
                "for {text:?}"
            );
        }
        // Empty sections mean their defaults too.
        let config = parse_ok("admin:\nruntime: {}\nlisteners: []\nroute_tables:\nclusters:\n");
        assert_eq!(config, expected);
        assert_eq!(config.admin.listen, "127.0.0.1:9901");
        assert!(config.access_log.enabled);
    }

    #[test]
    fn reports_problems_from_every_section_at_once() {
        assert_errors(
            r#"
            admin: { listen: 127.0.0.1 }
            runtime: { workers: 0 }
            listeners:
              - name: web
                listen: 0.0.0.0:80
                http: { route_table: main }
              - name: api
                listen: 0.0.0.0:81
                htp: { route_table: main }
              - name: web
                listen: 0.0.0.0:82
                http: { route_table: mian }
            route_tables:
              main:
                virtual_hosts:
                  - hosts: ["*"]
                    routes:
                      - match: { prefix: / }
                        cluster: ap
            clusters:
              - name: app
                endpoints: ["10.0.0.1"]
            "#,
            &[
                ("admin.listen", 1, "\"127.0.0.1\" has no port"),
                ("runtime.workers", 2, "between 1 and 1024 (got 0)"),
                ("listeners[1].htp", 9, "(did you mean `http`?)"),
                (
                    "listeners[2].name",
                    10,
                    "duplicate listener name \"web\" (also listeners[0])",
                ),
                (
                    "listeners[2].http.route_table",
                    12,
                    "unknown route table \"mian\" (did you mean \"main\"?)",
                ),
                (
                    "route_tables.main.virtual_hosts[0].routes[0].cluster",
                    19,
                    "unknown cluster \"ap\" (did you mean \"app\"?)",
                ),
                (
                    "clusters[0].endpoints[0].address",
                    22,
                    "\"10.0.0.1\" has no port",
                ),
            ],
        );
    }

    #[test]
    fn errors_are_sorted_by_line_then_path() {
        let errors = match parse(&doc(r#"
            clusters:
              - { name: b, endpoints: ["1.1.1.1"], connect_timeout: 0s }
            admin: { listen: nowhere }
            "#))
        {
            Ok(_) => panic!("should fail"),
            Err(errors) => errors.0,
        };
        let paths: Vec<(Option<usize>, String)> = errors
            .iter()
            .map(|e| (e.line, e.path.to_string()))
            .collect();
        let order: Vec<(Option<usize>, &str)> =
            paths.iter().map(|(l, p)| (*l, p.as_str())).collect();
        assert_eq!(
            order,
            [
                (Some(2), "clusters[0].connect_timeout"),
                (Some(2), "clusters[0].endpoints[0].address"),
                (Some(3), "admin.listen"),
            ]
        );
    }

    #[test]
    fn durations_take_documented_units_and_at_most_a_year() {
        assert_errors(
            r#"
            runtime: { drain_timeout: 9223372036854775807s }
            clusters:
              - name: a
                connect_timeout: 5M
                idle_timeout: 1.5s
                endpoints: ["10.0.0.1:80"]
            "#,
            &[
                ("runtime.drain_timeout", 1, "longer than the maximum, 365d"),
                ("clusters[0].connect_timeout", 4, "unknown unit \"M\""),
                ("clusters[0].idle_timeout", 5, "fractions are not accepted"),
            ],
        );
        let config = parse_ok("runtime: { drain_timeout: 365d }\n");
        assert_eq!(config.runtime.drain_timeout, Duration::MAX);
    }

    #[test]
    fn errors_display_with_line_and_path() {
        let errors = match parse("listeners: 5\n") {
            Ok(_) => panic!("should fail"),
            Err(errors) => errors,
        };
        assert_eq!(
            errors.to_string(),
            "line 1: listeners: invalid type: number `5`, expected a list of listeners"
        );
    }

    #[test]
    fn header_maps_keep_their_keys() {
        let config = parse_ok(
            r#"
            route_tables:
              t:
                virtual_hosts:
                  - hosts: ["*"]
                    routes:
                      - match: { exact: /healthz }
                        respond: { status: 200, headers: { Content-Type: application/json } }
                        response_headers: { add: { x-served-by: legate }, remove: [server] }
            "#,
        );
        let route = &config.route_tables["t"].virtual_hosts[0].routes[0];
        let headers = &route.respond.as_ref().expect("respond").headers;
        assert_eq!(
            headers,
            &BTreeMap::from([("Content-Type".to_owned(), "application/json".to_owned())])
        );
        assert_eq!(route.response_headers.remove, ["server"]);
    }

    #[test]
    fn version_is_stable() {
        assert_eq!(version_of(""), "cbf29ce484222325");
        assert_ne!(version_of("a"), version_of("b"));
    }
}

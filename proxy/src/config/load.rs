//! YAML text → `Config`, one section and one entry at a time, so one bad entry hides no other.

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;
use serde_yaml::Value;

use super::lines::LineIndex;
use super::path::{self, FieldPath};
use super::suggest::{did_you_mean_key, did_you_mean_quoted};
use super::validate::{Names, Provenance};
use super::{Config, ConfigError, ErrorKind};

/// The top-level keys of `Config`, in documentation order.
pub const SECTIONS: [&str; 10] = [
    "node",
    "xds",
    "admin",
    "probes",
    "runtime",
    "access_log",
    "dns",
    "listeners",
    "route_tables",
    "clusters",
];

/// What could be read from a syntactically valid file: every part that deserialized, where
/// its entries came from, and every deserialization error (not yet placed on lines).
#[derive(Debug, Default)]
pub struct Loaded {
    pub config: Config,
    pub provenance: Provenance,
    pub errors: Vec<ConfigError>,
}

/// Read `text` as far as possible. Fails only when it is not YAML at all (or its anchors
/// cannot be merged): nothing can be said about its fields then.
pub fn load(text: &str) -> Result<Loaded, ConfigError> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError {
            kind: ErrorKind::Syntax,
            entry: None,
            path: FieldPath::new(),
            line: None,
            message: format!(
                "the config is larger than 16 MiB ({MAX_CONFIG_BYTES} bytes), the most read"
            ),
        });
    }
    let mut root: Value = serde_yaml::from_str(text).map_err(|e| {
        let mut error = yaml_error(&e);
        if error.message.contains("duplicate entry") {
            if let Some((path, line)) = LineIndex::new(text).duplicate_key() {
                error.path = path.clone();
                error.line = Some(line);
            }
        }
        explain_yaml_error(text, &mut error);
        error
    })?;
    // `<<: *defaults` is how YAML users share settings between entries.
    root.apply_merge().map_err(|e| yaml_error(&e))?;

    let mut loaded = Loaded {
        config: defaults(),
        ..Loaded::default()
    };
    let sections = match untag(&root) {
        Value::Null => return Ok(loaded),
        Value::Mapping(sections) => sections,
        other => {
            loaded.error(
                FieldPath::new(),
                format!(
                    "a config file must be a mapping of sections ({}), found {}",
                    SECTIONS.join(", "),
                    kind(other)
                ),
            );
            return Ok(loaded);
        }
    };
    for (key, value) in sections {
        let Some(section) = untag(key).as_str() else {
            loaded.error(
                FieldPath::new(),
                format!("section names must be strings, found {}", kind(key)),
            );
            continue;
        };
        match section {
            "node" => {
                if let Some(node) = loaded.entry(&FieldPath::root("node"), value) {
                    loaded.config.node = node;
                }
            }
            "xds" => {
                if let Some(xds) = loaded.entry(&FieldPath::root("xds"), value) {
                    loaded.config.xds = Some(xds);
                }
            }
            "admin" => match loaded.entry(&FieldPath::root("admin"), value) {
                Some(admin) => loaded.config.admin = admin,
                None => loaded.provenance.admin_broken = true,
            },
            "probes" => {
                if let Some(probes) = loaded.entry(&FieldPath::root("probes"), value) {
                    loaded.config.probes = Some(probes);
                }
            }
            "runtime" => {
                if let Some(runtime) = loaded.entry(&FieldPath::root("runtime"), value) {
                    loaded.config.runtime = runtime;
                }
            }
            "access_log" => {
                if let Some(access_log) = loaded.entry(&FieldPath::root("access_log"), value) {
                    loaded.config.access_log = access_log;
                }
            }
            "dns" => {
                if let Some(dns) = loaded.entry(&FieldPath::root("dns"), value) {
                    loaded.config.dns = dns;
                }
            }
            "listeners" => loaded.listeners(value),
            "route_tables" => loaded.route_tables(value),
            "clusters" => loaded.clusters(value),
            unknown => {
                let hint = did_you_mean_key(unknown, SECTIONS);
                let expected = SECTIONS.map(|s| format!("`{s}`")).join(", ");
                loaded.error(
                    FieldPath::new().key(unknown.to_owned()),
                    format!("unknown field `{unknown}`, expected one of {expected}{hint}"),
                );
            }
        }
    }
    Ok(loaded)
}

impl Loaded {
    fn error(&mut self, path: impl Into<FieldPath>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            kind: ErrorKind::Syntax,
            entry: None,
            path: path.into(),
            line: None,
            message: message.into(),
        });
    }

    /// Deserialize one section found at `path`; `None` (after reporting every bad field)
    /// unless it reads as written.
    fn entry<T: DeserializeOwned>(&mut self, path: &FieldPath, value: &Value) -> Option<T> {
        match self.read(path, value) {
            Read::Whole(v) => Some(v),
            Read::Partial(..) | Read::Broken => None,
        }
    }

    /// Deserialize one entry found at `path`. When it fails, every field that fails is
    /// reported, not only the first: each bad field is taken out of a copy and the rest
    /// deserialized again, until the rest is fine or a field cannot be taken out.
    fn read<T: DeserializeOwned>(&mut self, path: &FieldPath, value: &Value) -> Read<T> {
        let first = match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => return Read::Whole(v),
            Err(e) => e,
        };
        let mut taken_out = Vec::new();
        let mut rest = value.clone();
        let mut error = first;
        for _ in 0..MAX_ERRORS_PER_ENTRY {
            let segments: Vec<Segment> = error.path().iter().cloned().collect();
            let message = error.inner().to_string();
            let mut full = path.clone();
            for segment in &segments {
                push_segment(&mut full, segment);
            }
            let message = number_message(&message)
                .or_else(|| unquoted_number_message(&message))
                .unwrap_or(message);
            let hint = hint(&message);
            self.error(full.clone(), format!("{message}{hint}"));
            // Only a field of a mapping can be taken out; a list item or the entry itself
            // with the wrong shape ends the search.
            if !take_out(&mut rest, &segments) {
                return Read::Broken;
            }
            taken_out.push(full);
            error = match serde_path_to_error::deserialize::<_, T>(&rest) {
                Ok(v) => return Read::Partial(v, taken_out),
                Err(e) => e,
            };
            // A field missing because a bad one was taken out is no problem of the file.
            if error.inner().to_string().starts_with("missing field") {
                return Read::Broken;
            }
        }
        Read::Broken
    }

    /// An entry to check further: as written, or with its bad fields taken out (defaults in
    /// their place). The checks then skip what may depend on a taken-out field; the config
    /// is refused either way, for the errors already reported.
    fn usable<T: DeserializeOwned>(&mut self, path: &FieldPath, value: &Value) -> Option<T> {
        match self.read(path, value) {
            Read::Whole(v) => Some(v),
            Read::Partial(v, taken_out) => {
                self.provenance.taken_out.extend(taken_out);
                Some(v)
            }
            Read::Broken => None,
        }
    }

    fn listeners(&mut self, value: &Value) {
        let Some(items) = self.sequence(FieldPath::root("listeners"), value) else {
            self.provenance.listeners_unsure = true;
            return;
        };
        for (i, item) in items.iter().enumerate() {
            let path = FieldPath::root("listeners").index(i);
            let before = self.errors.len();
            if let Some(listener) = self.usable(&path, item) {
                self.config.listeners.push(listener);
                self.provenance.listener_index.push(i);
            }
            self.provenance.listeners_unsure |= self.errors.len() > before;
        }
    }

    fn clusters(&mut self, value: &Value) {
        let Some(items) = self.sequence(FieldPath::root("clusters"), value) else {
            self.provenance.broken_clusters.unreadable = true;
            return;
        };
        for (i, item) in items.iter().enumerate() {
            match self.usable(&FieldPath::root("clusters").index(i), item) {
                Some(cluster) => {
                    self.config.clusters.push(cluster);
                    self.provenance.cluster_index.push(i);
                }
                None => remember_name(&mut self.provenance.broken_clusters, item),
            }
        }
    }

    fn route_tables(&mut self, value: &Value) {
        let tables = match untag(value) {
            Value::Null => return,
            Value::Mapping(tables) => tables,
            other => {
                self.error(
                    FieldPath::root("route_tables"),
                    format!(
                        "invalid type: {}, expected a map of route table names to route tables",
                        kind(other)
                    ),
                );
                self.provenance.broken_route_tables.unreadable = true;
                return;
            }
        };
        for (key, table) in tables {
            let Some(name) = untag(key).as_str() else {
                self.error(
                    FieldPath::root("route_tables"),
                    format!("route table names must be strings, found {}", kind(key)),
                );
                self.provenance.broken_route_tables.unreadable = true;
                continue;
            };
            let path = FieldPath::root("route_tables").key(name.to_owned());
            match self.usable(&path, table) {
                Some(table) => {
                    self.config.route_tables.insert(name.to_owned(), table);
                }
                None => {
                    self.provenance
                        .broken_route_tables
                        .names
                        .insert(name.to_owned());
                }
            }
        }
    }

    /// The items of a list section; `None` (after reporting) when it is not a list.
    fn sequence<'v>(&mut self, section: FieldPath, value: &'v Value) -> Option<&'v [Value]> {
        match untag(value) {
            Value::Null => Some(&[]),
            Value::Sequence(items) => Some(items),
            other => {
                let message = format!(
                    "invalid type: {}, expected a list of {section}",
                    kind(other)
                );
                self.error(section, message);
                None
            }
        }
    }
}

/// The config of an empty file. Every section is deserialized from nothing, so the serde
/// defaults apply; a derived `Default` may disagree with them (`Runtime::drain_timeout`).
pub fn defaults() -> Config {
    fn section<T: DeserializeOwned + Default>() -> T {
        T::deserialize(&Value::Null).unwrap_or_default()
    }
    Config {
        admin: section(),
        runtime: section(),
        access_log: section(),
        dns: section(),
        ..Config::default()
    }
}

/// Note the name of an entry that failed to deserialize, so references to it are not
/// reported as unknown on top of its own error.
fn remember_name(names: &mut Names, item: &Value) {
    match untag(item).get("name").map(untag).and_then(Value::as_str) {
        Some(name) => {
            names.names.insert(name.to_owned());
        }
        None => names.unreadable = true,
    }
}

fn push_segment(path: &mut FieldPath, segment: &Segment) {
    match segment {
        Segment::Seq { index } => path.push(path::Segment::Index(*index)),
        Segment::Map { key } | Segment::Enum { variant: key } => {
            path.push(path::Segment::Name(key.clone().into()));
        }
        Segment::Unknown => path.push(path::Segment::Name("?".into())),
    }
}

/// A "did you mean" for serde's unknown-field / unknown-variant messages and for the retry
/// condition list; empty when nothing is close.
fn hint(message: &str) -> String {
    for prefix in ["unknown field `", "unknown variant `"] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let Some((word, expected)) = rest.split_once('`') else {
                return String::new();
            };
            // The expected names are the odd pieces between backticks.
            let candidates = expected.split('`').skip(1).step_by(2);
            return did_you_mean_key(word, candidates);
        }
    }
    if let Some(rest) = message.strip_prefix("invalid value: string \"") {
        if let Some((word, expected)) = rest.split_once("\", expected one of ") {
            return did_you_mean_quoted(word, expected.split(", "));
        }
    }
    String::new()
}

/// A number where a name is expected (`min_version: 1.2`): YAML read it as a number.
fn unquoted_number_message(message: &str) -> Option<String> {
    let rest = ["floating point `", "integer `"]
        .into_iter()
        .find_map(|k| message.strip_prefix("invalid type: ")?.strip_prefix(k))?;
    let (number, expected) = rest.split_once("`, expected ")?;
    let wants_text = expected.contains("enum") || expected.contains("string");
    wants_text.then(|| {
        format!(
            "`{number}` is a number to YAML, and a name is expected here: quote it, \"{number}\""
        )
    })
}

/// serde's words for a number out of an unsigned field's range, in the config's terms.
fn number_message(message: &str) -> Option<String> {
    let rest = message.strip_prefix("invalid value: integer `")?;
    let (number, expected) = rest.split_once("`, expected ")?;
    let max = match expected {
        "u8" => u64::from(u8::MAX),
        "u16" => u64::from(u16::MAX),
        "u32" => u64::from(u32::MAX),
        "u64" | "usize" => u64::MAX,
        _ => return None,
    };
    Some(if number.starts_with('-') {
        format!("must be ≥ 0 (got {number})")
    } else {
        format!("must be at most {max} (got {number})")
    })
}

/// What deserializing one entry gave.
enum Read<T> {
    /// It reads as written.
    Whole(T),
    /// It reads once the fields at these paths (each reported) are taken out.
    Partial(T, Vec<FieldPath>),
    /// It cannot be read (its errors are reported).
    Broken,
}

/// The most problems reported for one entry's fields.
const MAX_ERRORS_PER_ENTRY: usize = 64;

/// Removes the mapping entry at `segments` from `value`; `false` when the path does not end
/// in a mapping key, or leads nowhere.
fn take_out(value: &mut Value, segments: &[Segment]) -> bool {
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let Segment::Map { key } = last else {
        return false;
    };
    let mut current = value;
    for segment in parents {
        current = match untag_mut(current) {
            Value::Mapping(map) => match segment {
                Segment::Map { key } => match map.get_mut(key.as_str()) {
                    Some(v) => v,
                    None => return false,
                },
                _ => return false,
            },
            Value::Sequence(items) => match segment {
                Segment::Seq { index } => match items.get_mut(*index) {
                    Some(v) => v,
                    None => return false,
                },
                _ => return false,
            },
            _ => return false,
        };
    }
    match untag_mut(current) {
        Value::Mapping(map) => map.remove(key.as_str()).is_some(),
        _ => false,
    }
}

fn untag_mut(mut value: &mut Value) -> &mut Value {
    while let Value::Tagged(tagged) = value {
        value = &mut tagged.value;
    }
    value
}

/// The largest config text read. Anchors and aliases are bounded by the YAML parser's own
/// repetition limit.
pub const MAX_CONFIG_BYTES: usize = 16 * 1024 * 1024;

/// Says in plain words what the YAML parser's message means for two common slips: a second
/// document, and a tab in indentation.
fn explain_yaml_error(text: &str, error: &mut ConfigError) {
    if error.message.contains("more than one document") {
        // The first `---` after some content starts the second document.
        let mut content = false;
        for (i, line) in text.lines().enumerate() {
            let trimmed = line.trim_end();
            if trimmed == "---" || trimmed.starts_with("--- ") {
                if content {
                    error.line = Some(i + 1);
                    break;
                }
            } else if !trimmed.is_empty() && !trimmed.trim_start().starts_with('#') {
                content = true;
            }
        }
        error.message =
            "a second YAML document starts here (`---`); a config file is one document".to_owned();
        return;
    }
    let tab_at = error.line.and_then(|n| text.lines().nth(n.checked_sub(1)?));
    let indented_with_tab = tab_at.is_some_and(|line| {
        line.chars()
            .take_while(|c| c.is_whitespace())
            .any(|c| c == '\t')
    });
    if indented_with_tab {
        error.message = "a tab in the indentation; YAML indents with spaces only".to_owned();
    }
}

/// A YAML-level failure: the line comes from the parser, so it is dropped from the message.
fn yaml_error(e: &serde_yaml::Error) -> ConfigError {
    let mut message = e.to_string();
    let line = e.location().map(|l| {
        let at = format!(" at line {} column {}", l.line(), l.column());
        message = message.replacen(&at, "", 1);
        l.line()
    });
    ConfigError {
        kind: ErrorKind::Syntax,
        entry: None,
        path: FieldPath::new(),
        line,
        message: format!("invalid YAML: {message}"),
    }
}

/// Tags (`!foo`) carry no meaning in a config file; serde_yaml ignores them too.
fn untag(mut value: &Value) -> &Value {
    while let Value::Tagged(tagged) = value {
        value = &tagged.value;
    }
    value
}

/// How serde names a YAML node's type in "invalid type" messages.
fn kind(value: &Value) -> String {
    match untag(value) {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("boolean `{b}`"),
        Value::Number(n) => format!("number `{n}`"),
        Value::String(s) => format!("string {s:?}"),
        Value::Sequence(_) => "sequence".to_owned(),
        Value::Mapping(_) => "map".to_owned(),
        Value::Tagged(_) => "tagged value".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_errors, doc, parse_ok};
    use super::*;

    #[test]
    fn yaml_syntax_errors_carry_the_parser_line() {
        let errors = match super::super::parse("admin:\n  listen: [1\nclusters: []\n") {
            Ok(_) => panic!("should fail"),
            Err(errors) => errors.0,
        };
        assert_eq!(errors.len(), 1);
        assert!(errors[0].path.is_empty());
        assert_eq!(errors[0].line, Some(3));
        assert!(
            errors[0].message.starts_with("invalid YAML: "),
            "{errors:?}"
        );
        assert!(!errors[0].message.contains("at line 3"), "{errors:?}");

        assert_errors(
            "
            clusters: []
            clusters: []
            ",
            &[("clusters", 2, "duplicate entry with key \"clusters\"")],
        );
    }

    fn only_error(text: &str) -> ConfigError {
        match super::super::parse(text) {
            Ok(_) => panic!("should fail"),
            Err(mut errors) => {
                assert_eq!(errors.0.len(), 1, "{errors}");
                errors.0.remove(0)
            }
        }
    }

    #[test]
    fn common_slips_are_named_in_plain_words() {
        let second = only_error("admin: {}\nclusters: []\n---\nadmin: {}\n");
        assert_eq!(second.line, Some(3));
        assert!(
            second.message.contains("a second YAML document"),
            "{second}"
        );

        let tab = only_error("clusters:\n\t- { name: a, endpoints: [\"10.0.0.1:80\"] }\n");
        assert_eq!(tab.line, Some(2));
        assert!(tab.message.contains("a tab in the indentation"), "{tab}");

        assert_errors(
            r#"
            clusters:
              - name: a
                endpoints: ["10.0.0.1:80"]
                circuit_breakers: { max_requests: -1 }
            "#,
            &[(
                "clusters[0].circuit_breakers.max_requests",
                4,
                "must be ≥ 0 (got -1)",
            )],
        );
        assert_errors(
            r#"
            clusters:
              - { name: a, endpoints: ["10.0.0.1:80"], circuit_breakers: { max_pending: 5000000000 } }
            "#,
            &[(
                "clusters[0].circuit_breakers.max_pending",
                2,
                "must be at most 4294967295 (got 5000000000)",
            )],
        );
        assert_errors(
            r#"
            listeners:
              - name: a
                listen: 127.0.0.1:0
                http: { route_table: t }
                tls: { certificates: [{ cert: a.pem, key: a.key }], min_version: 1.2 }
            "#,
            &[
                // The rest of the listener is still checked.
                (
                    "listeners[0].http.route_table",
                    4,
                    "unknown route table \"t\"",
                ),
                (
                    "listeners[0].tls.min_version",
                    5,
                    "`1.2` is a number to YAML, and a name is expected here: quote it, \"1.2\"",
                ),
            ],
        );
        assert_errors(
            r#"
            clusters:
              - { name: a, endpoints: ["http://10.0.0.1:80/"] }
            "#,
            &[(
                "clusters[0].endpoints[0].address",
                2,
                "has a scheme: an endpoint is an address, write \"10.0.0.1:80\"",
            )],
        );
    }

    #[test]
    fn every_bad_field_of_an_entry_is_reported() {
        assert_errors(
            r#"
            listeners:
              - name: front
                listen: 127.0.0.1:0
                backlog: -1
                htp: { route_table: main }
                http:
                  route_table: main
                  idle_timeout: 5 minutes
                  escaped_slashes: drop
                  max_header_size: lots
            clusters:
              - name: app
                lb: round_robbin
                connect_timeout: 1.5s
                endpoints: ["10.0.0.1:80"]
                circuit_breakers: { max_requests: -5, max_pending: many }
            "#,
            &[
                ("listeners[0].backlog", 4, "must be ≥ 0 (got -1)"),
                ("listeners[0].htp", 5, "unknown field `htp`"),
                // True as well: the file defines no route tables.
                (
                    "listeners[0].http.route_table",
                    7,
                    "unknown route table \"main\"",
                ),
                ("listeners[0].http.idle_timeout", 8, "5 minutes"),
                (
                    "listeners[0].http.escaped_slashes",
                    9,
                    "unknown variant `drop`",
                ),
                ("listeners[0].http.max_header_size", 10, "invalid type"),
                ("clusters[0].lb", 13, "did you mean `round_robin`"),
                (
                    "clusters[0].connect_timeout",
                    14,
                    "fractions are not accepted",
                ),
                (
                    "clusters[0].circuit_breakers.max_pending",
                    16,
                    "invalid type",
                ),
                (
                    "clusters[0].circuit_breakers.max_requests",
                    16,
                    "must be ≥ 0 (got -5)",
                ),
            ],
        );
    }

    #[test]
    fn an_entry_with_type_errors_is_still_checked_except_beside_them() {
        assert_errors(
            r#"
            listeners:
              - name: front
                listen: 127.0.0.1:0
                backlog: lots
                http: { route_table: mian }
            route_tables:
              main:
                virtual_hosts:
                  - hosts: ["*"]
                    routes:
                      - { match: { prefix: /a }, cluster: apq, timeout: soon }
                      - { match: { prefix: /b }, cluster: ap }
            clusters:
              - name: app
                lb: ring_hsh
                hash_on: { header: x-user }
                endpoints: ["10.0.0.1"]
                health_check: { http: { path: /h }, interval: 0s }
            "#,
            &[
                ("listeners[0].backlog", 4, "invalid type"),
                (
                    "listeners[0].http.route_table",
                    5,
                    "unknown route table \"mian\"",
                ),
                // A reference beside a broken field is still checked.
                (
                    "route_tables.main.virtual_hosts[0].routes[0].cluster",
                    11,
                    "unknown cluster \"apq\"",
                ),
                (
                    "route_tables.main.virtual_hosts[0].routes[0].timeout",
                    11,
                    "soon",
                ),
                (
                    "route_tables.main.virtual_hosts[0].routes[1].cluster",
                    12,
                    "unknown cluster \"ap\"",
                ),
                // Not `hash_on` "only applies to `lb: ring_hash`": that may follow from
                // the broken `lb` beside it.
                ("clusters[0].lb", 15, "did you mean `ring_hash`"),
                ("clusters[0].endpoints[0].address", 17, "has no port"),
                ("clusters[0].health_check.interval", 18, "greater than zero"),
                (
                    "clusters[0].health_check.timeout",
                    18,
                    "longer than the interval",
                ),
            ],
        );
    }

    #[test]
    fn an_entry_of_the_wrong_shape_is_one_problem() {
        assert_errors(
            r#"
            listeners:
              - name: front
                listen: 127.0.0.1:0
                http: 5
            "#,
            &[("listeners[0].http", 4, "invalid type")],
        );
    }

    #[test]
    fn a_config_over_16_mib_is_refused_before_parsing() {
        let mut text = String::from("clusters: []\n");
        text.push_str(&"#".repeat(MAX_CONFIG_BYTES));
        let error = only_error(&text);
        assert!(error.message.contains("16 MiB"), "{error}");
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (name, prev) in [
            ("b", "a"),
            ("c", "b"),
            ("d", "c"),
            ("e", "d"),
            ("f", "e"),
            ("g", "f"),
        ] {
            let refs = vec![format!("*{prev}"); 10].join(", ");
            text.push_str(&format!("{name}: &{name} [{refs}]\n"));
        }
        let error = only_error(&text);
        assert!(error.message.contains("repetition limit"), "{error}");
    }

    #[test]
    fn the_document_must_be_a_mapping() {
        assert_errors("- admin\n", &[("", 1, "must be a mapping of sections")]);
        assert_errors("just text\n", &[("", 1, "found string \"just text\"")]);
        assert_errors("[1]: x\n", &[("", 1, "section names must be strings")]);
    }

    #[test]
    fn unknown_sections_are_errors_with_suggestions() {
        assert_errors(
            "
            listener: []
            tls: {}
            ",
            &[
                (
                    "listener",
                    1,
                    "unknown field `listener`, expected one of `node`, `xds`, `admin`, `probes`, `runtime`, `access_log`, `dns`, \
                     `listeners`, `route_tables`, `clusters` (did you mean `listeners`?)",
                ),
                ("tls", 2, "unknown field `tls`"),
            ],
        );
        let errors = super::super::parse("tls: {}\n")
            .map(|_| ())
            .expect_err("tls is not a section");
        assert!(!errors.0[0].message.contains("did you mean"), "{errors}");
    }

    #[test]
    fn unknown_keys_inside_entries_name_the_key() {
        assert_errors(
            "
            listeners:
              - name: a
                listen: 0.0.0.0:80
                htp: { route_table: t }
            ",
            &[(
                "listeners[0].htp",
                4,
                "unknown field `htp`, expected one of `name`, `listen`, `backlog`, `max_connections`, `http`, `tls`, `tcp` (did you mean `http`?)",
            )],
        );
        assert_errors(
            "
            clusters:
              - name: a
                endpoints:
                  - { address: 10.0.0.1:80, wieght: 3 }
            ",
            &[(
                "clusters[0].endpoints[0].wieght",
                4,
                "(did you mean `weight`?)",
            )],
        );
    }

    #[test]
    fn type_errors_carry_the_full_path() {
        assert_errors(
            r#"
            clusters:
              - { name: a, endpoints: ["10.0.0.1:80"] }
              - { name: b, endpoints: ["10.0.0.2:80"] }
              - name: c
                endpoints:
                  - { address: 10.0.0.3:80, weight: "x" }
            "#,
            &[(
                "clusters[2].endpoints[0].weight",
                6,
                "invalid type: string \"x\", expected u32",
            )],
        );
        assert_errors(
            "
            runtime:
              drain_timeout: 30
            ",
            &[("runtime.drain_timeout", 2, "duration 30 has no unit")],
        );
        assert_errors(
            "
            listeners:
              - name: a
            ",
            &[("listeners[0]", 2, "missing field `listen`")],
        );
    }

    #[test]
    fn unknown_values_get_suggestions() {
        assert_errors(
            "
            clusters:
              - name: a
                protocol: http3
            ",
            &[(
                "clusters[0].protocol",
                3,
                "unknown variant `http3`, expected `http1` or `http2` (did you mean `http1`?)",
            )],
        );
        assert_errors(
            "
            access_log: { format: jsn }
            ",
            &[("access_log.format", 1, "(did you mean `json`?)")],
        );
        assert_errors(
            r#"
            route_tables:
              t:
                virtual_hosts:
                  - hosts: ["*"]
                    routes:
                      - match: { prefix: / }
                        respond: { status: 503 }
                        retry: { on: [connect-failure, rest] }
            "#,
            &[(
                "route_tables.t.virtual_hosts[0].routes[0].retry.on[1]",
                8,
                "(did you mean \"reset\"?)",
            )],
        );
    }

    #[test]
    fn sections_of_the_wrong_shape() {
        assert_errors(
            "
            listeners: { name: a }
            clusters: nope
            route_tables: [a]
            admin: 5
            ",
            &[
                (
                    "listeners",
                    1,
                    "invalid type: map, expected a list of listeners",
                ),
                ("clusters", 2, "expected a list of clusters"),
                ("route_tables", 3, "expected a map of route table names"),
                (
                    "admin",
                    4,
                    "invalid type: integer `5`, expected struct Admin",
                ),
            ],
        );
        assert_errors(
            "
            route_tables:
              7: { virtual_hosts: [] }
            ",
            &[(
                "route_tables",
                1,
                "route table names must be strings, found number `7`",
            )],
        );
    }

    #[test]
    fn broken_entries_cause_no_follow_on_errors() {
        // The cluster and the route table exist but are broken: only their own errors count.
        assert_errors(
            r#"
            admin: { listen: 0.0.0.0:80, extra: 1 }
            listeners:
              - name: web
                listen: 0.0.0.0:80
                http: { route_table: main }
            route_tables:
              main:
                virtual_hosts:
                  - hosts: "*"
                    routes: []
              other:
                virtual_hosts:
                  - hosts: ["*"]
                    routes:
                      - match: { prefix: / }
                        cluster: app
            clusters:
              - name: app
                endpoints: 7
            "#,
            &[
                ("admin.extra", 1, "unknown field `extra`"),
                (
                    "route_tables.main.virtual_hosts[0].hosts",
                    9,
                    "expected a sequence",
                ),
                ("clusters[0].endpoints", 19, "invalid type"),
            ],
        );
        // A broken entry without a readable name could be any of them.
        assert_errors(
            r#"
            route_tables:
              main:
                virtual_hosts:
                  - hosts: ["*"]
                    routes:
                      - match: { prefix: / }
                        cluster: app
            clusters:
              - endpoints: ["10.0.0.1:80"]
            "#,
            &[("clusters[0]", 9, "missing field `name`")],
        );
    }

    #[test]
    fn indices_survive_broken_entries() {
        assert_errors(
            r#"
            clusters:
              - { name: a, endpoints: ["10.0.0.1:80"], bogus: 1 }
              - { name: b, endpoints: ["10.0.0.1"] }
            listeners:
              - { name: x, listen: 0.0.0.0:80 }
              - { name: y, listen: 0.0.0.0:81, http: 5 }
              - { name: z, listen: nowhere, http: { route_table: t } }
            "#,
            &[
                ("clusters[0].bogus", 2, "unknown field"),
                ("clusters[1].endpoints[0].address", 3, "has no port"),
                ("listeners[0]", 5, "needs an `http` or `tcp` block"),
                ("listeners[1].http", 6, "invalid type"),
                (
                    "listeners[2].http.route_table",
                    7,
                    "unknown route table \"t\"",
                ),
                ("listeners[2].listen", 7, "\"nowhere\" is not an IP address"),
            ],
        );
    }

    #[test]
    fn merge_keys_and_tags_are_understood() {
        let config = parse_ok(
            r#"
            clusters:
              - &base
                name: a
                connect_timeout: 250ms
                endpoints: ["10.0.0.1:80"]
              - <<: *base
                name: b
              - !cluster { name: c }
            "#,
        );
        assert_eq!(config.clusters.len(), 3);
        assert_eq!(config.clusters[1].name, "b");
        assert_eq!(
            config.clusters[1].connect_timeout,
            crate::config::Duration::from_millis(250)
        );
        assert_eq!(config.clusters[1].endpoints, config.clusters[0].endpoints);
    }

    #[test]
    fn defaults_follow_serde_not_derive() {
        let config = defaults();
        assert_eq!(
            config.runtime.drain_timeout,
            crate::config::Duration::from_secs(30)
        );
        assert_eq!(config.admin.listen, "127.0.0.1:9901");
        assert!(config.access_log.enabled);
        assert_eq!(
            super::super::parse(&doc("")).map(super::super::Checked::into_config),
            Ok(config)
        );
    }

    #[test]
    fn hints_parse_serde_messages() {
        assert_eq!(
            hint("unknown field `nmae`, expected `name`"),
            " (did you mean `name`?)"
        );
        assert_eq!(hint("unknown field `x`, there are no fields"), "");
        assert_eq!(hint("unknown field `oops"), "");
        assert_eq!(hint("invalid type: string \"x\", expected u32"), "");
    }

    #[test]
    fn known_sections_match_the_model() {
        // The loader dispatches sections by name; this keeps the list in step with `Config`.
        let config = Config {
            xds: Some(crate::config::model::Xds {
                server: crate::config::model::Servers::from("127.0.0.1:1"),
                connect_timeout: crate::config::Duration::from_secs(1),
                tls: None,
                allow_files: Vec::new(),
            }),
            probes: Some(crate::config::model::Probes {
                listen: "127.0.0.1:0".into(),
            }),
            ..Config::default()
        };
        let value = serde_yaml::to_value(config).expect("the model serializes");
        let keys: Vec<&str> = value
            .as_mapping()
            .expect("a config serializes to a mapping")
            .keys()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(keys, SECTIONS);
    }
}

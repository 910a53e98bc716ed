//! Config problems: what kind, in which entry, at which field path and line; text only when
//! a person reads them.

use std::fmt;

use super::path::FieldPath;

/// What kind of problem a [`ConfigError`] is: decisions (an xDS update deferred until the
/// resource it names arrives, say) are taken on the kind, never on the message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Not YAML, a value of the wrong type, or an unknown field.
    Syntax,
    /// A value out of range, malformed, or in conflict with another value.
    Invalid,
    /// A name defined twice.
    Duplicate,
    /// A reference to a route table or cluster that is not defined.
    UnknownReference,
    /// A file the config names is unreadable or unusable (TLS certificates, keys, CAs).
    File,
}

impl ErrorKind {
    /// The kind's name in machine-read output (`legate validate --format json`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Syntax => "syntax",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Duplicate => "duplicate",
            ErrorKind::UnknownReference => "unknown_reference",
            ErrorKind::File => "file",
        }
    }
}

/// The top-level sections whose entries a control plane can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Section {
    Listeners,
    RouteTables,
    Clusters,
}

impl Section {
    pub fn key(self) -> &'static str {
        match self {
            Section::Listeners => "listeners",
            Section::RouteTables => "route_tables",
            Section::Clusters => "clusters",
        }
    }
}

/// The listener, route table or cluster a problem is found in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub section: Section,
    pub name: String,
    /// Its position in the section's list (route tables are a map: `None`).
    pub index: Option<usize>,
}

impl Entry {
    /// Where the entry sits: `clusters[3]`, `route_tables.main`.
    pub fn path(&self) -> FieldPath {
        let section = FieldPath::root(self.section.key());
        match self.index {
            Some(i) => section.index(i),
            None => section.key(self.name.clone()),
        }
    }

    /// `path` with the entry named rather than numbered: `clusters[tiles].connect_timeout`.
    pub fn named_path(&self, path: &FieldPath) -> String {
        let prefix = self.path();
        if self.index.is_some() && path.starts_with(&prefix) {
            let rest = path.tail(prefix.segments().len());
            format!("{}[{}]{rest}", self.section.key(), self.name)
        } else {
            path.to_string()
        }
    }

    /// The entry as a resource name: `clusters[tiles]`.
    pub fn resource_name(&self) -> String {
        format!("{}[{}]", self.section.key(), self.name)
    }
}

/// One problem in a config file, located by its field path and, where known, its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub kind: ErrorKind,
    /// The entry the path is in, when it is in one.
    pub entry: Option<Entry>,
    /// Where the problem is, e.g. `clusters[2].endpoints[0].address`; empty for the document.
    pub path: FieldPath,
    /// 1-based line in the source text.
    pub line: Option<usize>,
    pub message: String,
}

impl ConfigError {
    pub fn new(kind: ErrorKind, path: impl Into<FieldPath>, message: impl Into<String>) -> Self {
        ConfigError {
            kind,
            entry: None,
            path: path.into(),
            line: None,
            message: message.into(),
        }
    }

    pub fn in_entry(mut self, entry: Entry) -> Self {
        self.entry = Some(entry);
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one config file, in source order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Why a config file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is invalid:\n{errors}")]
    Invalid { path: String, errors: ConfigErrors },
}

//! Field paths into a config (`clusters[2].endpoints[0].address`): segments while Legate works
//! with them, text only where a person reads them.

use std::borrow::Cow;
use std::fmt;

/// Where in a config a value sits; empty for the document itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FieldPath(Vec<Segment>);

/// One step of a [`FieldPath`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A field, or a key of a map (`route_tables.main`, `headers.x-id`).
    Name(Cow<'static, str>),
    /// A position in a list.
    Index(usize),
}

impl FieldPath {
    /// The document itself.
    pub fn new() -> FieldPath {
        FieldPath::default()
    }

    /// A top-level field.
    pub fn root(name: &'static str) -> FieldPath {
        FieldPath(vec![Segment::Name(Cow::Borrowed(name))])
    }

    /// This path, then field `name`.
    pub fn field(&self, name: &'static str) -> FieldPath {
        self.then(Segment::Name(Cow::Borrowed(name)))
    }

    /// This path, then the map key `key`.
    pub fn key(&self, key: impl Into<Cow<'static, str>>) -> FieldPath {
        self.then(Segment::Name(key.into()))
    }

    /// This path, then list position `index`.
    pub fn index(&self, index: usize) -> FieldPath {
        self.then(Segment::Index(index))
    }

    pub fn from_segments(segments: &[Segment]) -> FieldPath {
        FieldPath(segments.to_vec())
    }

    /// Appends one segment in place.
    pub fn push(&mut self, segment: Segment) {
        self.0.push(segment);
    }

    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// This path without its last segment (the document for a top-level field).
    pub fn parent(&self) -> FieldPath {
        let mut segments = self.0.clone();
        segments.pop();
        FieldPath(segments)
    }

    /// Whether this path is `prefix` or lies below it.
    pub fn starts_with(&self, prefix: &FieldPath) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// The text of the segments from `from` on, as they follow an earlier part:
    /// `.connect_timeout`, `[0].address`.
    pub fn tail(&self, from: usize) -> String {
        let mut out = String::new();
        for segment in self.0.iter().skip(from) {
            match segment {
                Segment::Name(n) => {
                    out.push('.');
                    out.push_str(n);
                }
                Segment::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }

    fn then(&self, segment: Segment) -> FieldPath {
        let mut segments = Vec::with_capacity(self.0.len() + 1);
        segments.extend_from_slice(&self.0);
        segments.push(segment);
        FieldPath(segments)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.tail(0);
        f.write_str(text.strip_prefix('.').unwrap_or(&text))
    }
}

impl From<&FieldPath> for FieldPath {
    fn from(path: &FieldPath) -> FieldPath {
        path.clone()
    }
}

/// Paths order as their text does, so errors sort the way a reader scans them.
impl PartialOrd for FieldPath {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for FieldPath {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.to_string().cmp(&other.to_string())
    }
}

#[cfg(test)]
impl FieldPath {
    /// A path from its text, for tests: names split at `.`, indices in `[n]`.
    pub(crate) fn dotted(text: &str) -> FieldPath {
        let mut path = FieldPath::new();
        for part in text.split('.').filter(|p| !p.is_empty()) {
            let (name, indices) = part.split_once('[').unwrap_or((part, ""));
            if !name.is_empty() {
                path.push(Segment::Name(Cow::Owned(name.to_owned())));
            }
            for index in indices.split('[') {
                if let Ok(i) = index.trim_end_matches(']').parse() {
                    path.push(Segment::Index(i));
                }
            }
        }
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_fields_keys_and_indices() {
        let p = FieldPath::root("clusters")
            .index(2)
            .field("endpoints")
            .index(0);
        assert_eq!(
            p.field("address").to_string(),
            "clusters[2].endpoints[0].address"
        );
        assert_eq!(
            FieldPath::root("route_tables")
                .key("maps".to_owned())
                .to_string(),
            "route_tables.maps"
        );
        assert_eq!(FieldPath::new().to_string(), "");
        assert_eq!(p.tail(2), ".endpoints[0]");
        assert!(p.starts_with(&FieldPath::root("clusters").index(2)));
        assert!(!p.starts_with(&FieldPath::root("clusters").index(3)));
    }

    #[test]
    fn dotted_test_paths_render_back() {
        for text in [
            "",
            "a",
            "a.b",
            "clusters[2].endpoints[0].address",
            "a[1][2].b",
        ] {
            assert_eq!(FieldPath::dotted(text).to_string(), text);
        }
    }

    #[test]
    fn orders_as_text() {
        let a = FieldPath::root("a").field("b");
        let b = FieldPath::root("a").index(1);
        assert!(a < b, "`a.b` sorts before `a[1]`, as in text");
    }
}

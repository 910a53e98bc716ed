//! Maps field paths (`clusters[2].endpoints[0].address`) to the line they appear on in the YAML.

use std::collections::HashMap;

use super::path::FieldPath;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::Marker;

/// The 1-based line of every mapping key, sequence item and document root in a YAML text.
#[derive(Debug, Default, Clone)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
    /// The first mapping key seen twice in one mapping, with the line of its second sighting.
    duplicate: Option<(FieldPath, usize)>,
}

/// Where the next node sits within its parent collection.
enum Frame {
    /// `path` is `None` inside parts of the document no field path can name (complex keys).
    Mapping {
        path: Option<FieldPath>,
        key: Option<String>,
        awaiting_key: bool,
    },
    Sequence {
        path: Option<FieldPath>,
        next: usize,
    },
}

impl LineIndex {
    /// Index the first document of `text`. Indexing stops quietly at a syntax error: the loader
    /// reports those, and a partial index still places the errors before it.
    pub fn new(text: &str) -> Self {
        let mut index = LineIndex::default();
        let mut stack: Vec<Frame> = Vec::new();
        let mut parser = Parser::new_from_str(text);
        // Pull events one by one rather than through `Parser::load`: it recurses per nesting
        // level, and this loop keeps its own stack.
        while let Ok((event, mark)) = parser.next_token() {
            match event {
                Event::StreamEnd | Event::DocumentEnd => break,
                Event::Scalar(ref value, ..) => {
                    index.node(&mut stack, &mark, Some(value));
                }
                Event::Alias(_) => {
                    index.node(&mut stack, &mark, None);
                }
                Event::MappingStart(..) => {
                    let path = index.node(&mut stack, &mark, None);
                    stack.push(Frame::Mapping {
                        path,
                        key: None,
                        awaiting_key: true,
                    });
                }
                Event::SequenceStart(..) => {
                    let path = index.node(&mut stack, &mark, None);
                    stack.push(Frame::Sequence { path, next: 0 });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                Event::Nothing | Event::StreamStart | Event::DocumentStart => {}
            }
        }
        index
    }

    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn line_of(&self, path: &FieldPath) -> Option<usize> {
        let segments = path.segments();
        (0..=segments.len()).rev().find_map(|n| {
            let ancestor = FieldPath::from_segments(&segments[..n]);
            self.lines.get(&ancestor.to_string()).copied()
        })
    }

    /// The first key that appears twice in one mapping, and the line of the repeat. serde_yaml
    /// rejects such files but points at the mapping, not at the repeated key.
    pub fn duplicate_key(&self) -> Option<(&FieldPath, usize)> {
        self.duplicate.as_ref().map(|(path, line)| (path, *line))
    }

    /// Record one node and return its path, which becomes the parent path of its children.
    /// `scalar` is the node's text when it is a scalar, so that mapping keys can be named.
    fn node(
        &mut self,
        stack: &mut [Frame],
        mark: &Marker,
        scalar: Option<&String>,
    ) -> Option<FieldPath> {
        let path = match stack.last_mut() {
            None => Some(FieldPath::new()),
            Some(Frame::Sequence { path, next }) => {
                let item = path.as_ref().map(|p| p.index(*next));
                *next += 1;
                item
            }
            Some(Frame::Mapping {
                path,
                key,
                awaiting_key,
            }) => {
                if *awaiting_key {
                    *awaiting_key = false;
                    *key = scalar.cloned();
                    // A key's own line stands for the field; a complex key names no field.
                    if let (Some(parent), Some(k)) = (path.as_ref(), scalar) {
                        let field = parent.key(k.clone());
                        let text = field.to_string();
                        if self.duplicate.is_none() && self.lines.contains_key(&text) {
                            self.duplicate = Some((field, mark.line()));
                        }
                        self.record(text, mark);
                    }
                    return None;
                }
                *awaiting_key = true;
                match (path.as_ref(), key.as_ref()) {
                    (Some(parent), Some(k)) => Some(parent.key(k.clone())),
                    _ => None,
                }
            }
        };
        if let Some(p) = &path {
            self.record(p.to_string(), mark);
        }
        path
    }

    fn record(&mut self, path: String, mark: &Marker) {
        // First sighting wins: a field's key line beats the line its value starts on.
        self.lines.entry(path).or_insert(mark.line());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
admin: { listen: 127.0.0.1:9901 }
listeners:
  - name: a
    listen: 0.0.0.0:80
    http:
      route_table: maps
route_tables:
  maps:
    virtual_hosts:
      - hosts: [a.example.org,
                b.example.org]
        routes:
          - match: { prefix: / }
            cluster: c
clusters:
  - name: c
    endpoints:
      - 10.0.0.1:80
      - address: 10.0.0.2:80
        weight: 2
";

    #[test]
    fn finds_keys_items_and_scalars() {
        let index = LineIndex::new(DOC);
        assert_eq!(index.line_of(&FieldPath::dotted("")), Some(1));
        assert_eq!(index.line_of(&FieldPath::dotted("admin")), Some(1));
        assert_eq!(index.line_of(&FieldPath::dotted("admin.listen")), Some(1));
        assert_eq!(index.line_of(&FieldPath::dotted("listeners")), Some(2));
        assert_eq!(index.line_of(&FieldPath::dotted("listeners[0]")), Some(3));
        assert_eq!(
            index.line_of(&FieldPath::dotted("listeners[0].listen")),
            Some(4)
        );
        assert_eq!(
            index.line_of(&FieldPath::dotted("listeners[0].http.route_table")),
            Some(6)
        );
        assert_eq!(
            index.line_of(&FieldPath::dotted("route_tables.maps")),
            Some(8)
        );
        assert_eq!(
            index.line_of(&FieldPath::dotted(
                "route_tables.maps.virtual_hosts[0].hosts[1]"
            )),
            Some(11)
        );
        assert_eq!(
            index.line_of(&FieldPath::dotted(
                "route_tables.maps.virtual_hosts[0].routes[0].cluster"
            )),
            Some(14)
        );
        assert_eq!(
            index.line_of(&FieldPath::dotted("clusters[0].endpoints[0]")),
            Some(18)
        );
        assert_eq!(
            index.line_of(&FieldPath::dotted("clusters[0].endpoints[1].weight")),
            Some(20)
        );
    }

    #[test]
    fn falls_back_to_the_nearest_ancestor() {
        let index = LineIndex::new(DOC);
        assert_eq!(
            index.line_of(&FieldPath::dotted("listeners[0].http.idle_timeout")),
            Some(5)
        );
        assert_eq!(
            index.line_of(&FieldPath::dotted("clusters[0].endpoints[0].address")),
            Some(18)
        );
        assert_eq!(index.line_of(&FieldPath::dotted("nowhere.at.all")), Some(1));
    }

    #[test]
    fn survives_odd_documents() {
        assert_eq!(LineIndex::new("").line_of(&FieldPath::dotted("x")), None);
        let index = LineIndex::new("a: [1, {b: 2}\nc: 3\n");
        assert_eq!(index.line_of(&FieldPath::dotted("a[1].b")), Some(1));
        let index = LineIndex::new("? [complex, key]\n: {x: 1}\nnext: 2\n");
        assert_eq!(index.line_of(&FieldPath::dotted("next")), Some(3));
        let index = LineIndex::new("a: &x {k: 1}\nb: *x\n");
        assert_eq!(index.line_of(&FieldPath::dotted("b")), Some(2));
        assert_eq!(index.line_of(&FieldPath::dotted("b.k")), Some(2));
    }

    #[test]
    fn finds_repeated_keys() {
        let index = LineIndex::new("a: 1\nb:\n  c: 1\n  d: 2\n  c: 3\na: 4\n");
        assert_eq!(
            index.duplicate_key().map(|(p, l)| (p.to_string(), l)),
            Some(("b.c".to_owned(), 5))
        );
        assert_eq!(LineIndex::new(DOC).duplicate_key(), None);
        // Equal keys in different list items are not repeats.
        assert_eq!(LineIndex::new("- a: 1\n- a: 2\n").duplicate_key(), None);
    }

    #[test]
    fn keys_with_dots_fall_back_cleanly() {
        let index = LineIndex::new("route_tables:\n  a.b:\n    virtual_hosts: []\n");
        assert_eq!(
            index.line_of(&FieldPath::dotted("route_tables.a.b.virtual_hosts")),
            Some(3)
        );
        assert_eq!(
            index.line_of(&FieldPath::dotted("route_tables.a.b.missing")),
            Some(2)
        );
    }
}

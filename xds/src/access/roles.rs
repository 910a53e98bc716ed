//! The roles file: rules that map a client certificate's names (URI and DNS SANs) to a role.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::identity::Identity;

/// Wildcards (`*` and `{group}`) a pattern may hold; bounds the matching work.
const MAX_WILDCARDS: usize = 8;
/// Longest pattern, in bytes.
const MAX_PATTERN: usize = 512;

/// What a client may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Open the stream of this node group only.
    Proxy { group: String },
    /// Use the operator API (and read), within these groups and clusters when set.
    Operator {
        groups: Option<BTreeSet<String>>,
        clusters: Option<BTreeSet<String>>,
    },
    /// Read status, metrics and the audit log.
    Viewer,
}

impl Role {
    /// The role's name, as in the roles file.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Proxy { .. } => "proxy",
            Role::Operator { .. } => "operator",
            Role::Viewer => "viewer",
        }
    }
}

impl Role {
    /// "a proxy of group maps", "an operator", …: for messages.
    pub fn with_article(&self) -> String {
        match self {
            Role::Operator { .. } => format!("an {self}"),
            _ => format!("a {self}"),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Proxy { group } => write!(f, "proxy of group {group}"),
            Role::Operator {
                groups: None,
                clusters: None,
            } => f.write_str("operator"),
            Role::Operator { groups, clusters } => {
                f.write_str("operator")?;
                let list = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(", ");
                if let Some(g) = groups {
                    write!(f, " of groups [{}]", list(g))?;
                }
                if let Some(c) = clusters {
                    write!(f, " of clusters [{}]", list(c))?;
                }
                Ok(())
            }
            Role::Viewer => f.write_str("viewer"),
        }
    }
}

/// The rules, in order: the first that matches one of a certificate's names gives its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles {
    rules: Vec<Rule>,
    /// Where they came from: the file, or `None` for the defaults.
    source: Option<PathBuf>,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    kind: NameKind,
    pattern: Pattern,
    role: RoleName,
    groups: Option<BTreeSet<String>>,
    clusters: Option<BTreeSet<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NameKind {
    Uri,
    Dns,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RoleName {
    Proxy,
    Operator,
    Viewer,
}

/// Why the roles file cannot be used; each names the file and, for a rule, where it is.
#[derive(Debug, thiserror::Error)]
pub enum RolesError {
    #[error("cannot read roles file {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("roles file {}: {error}", path.display())]
    Syntax {
        path: PathBuf,
        error: serde_yaml::Error,
    },
    #[error("roles file {}: roles[{index}].{field}: {message}", path.display())]
    Rule {
        path: PathBuf,
        index: usize,
        field: &'static str,
        message: String,
    },
    #[error("roles file {}: `roles` is empty: every client would be refused", path.display())]
    Empty { path: PathBuf },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    roles: Vec<RuleSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    uri: Option<String>,
    dns: Option<String>,
    role: RoleName,
    groups: Option<Vec<String>>,
    clusters: Option<Vec<String>>,
}

impl Default for Roles {
    /// The SPIFFE convention: `spiffe://<trust domain>/proxy/<group>` is a proxy of that group,
    /// `spiffe://<trust domain>/operator/<name>` an operator, `spiffe://<trust domain>/viewer/<name>`
    /// a viewer.
    fn default() -> Roles {
        let rule = |pattern: &str, role| Rule {
            kind: NameKind::Uri,
            pattern: Pattern::parse(pattern, '/').unwrap_or_default(),
            role,
            groups: None,
            clusters: None,
        };
        Roles {
            rules: vec![
                rule("spiffe://*/proxy/{group}", RoleName::Proxy),
                rule("spiffe://*/operator/*", RoleName::Operator),
                rule("spiffe://*/viewer/*", RoleName::Viewer),
            ],
            source: None,
        }
    }
}

impl Roles {
    /// Reads and checks a roles file.
    pub fn load(path: &Path) -> Result<Roles, RolesError> {
        let text = std::fs::read_to_string(path).map_err(|error| RolesError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Roles::parse(path, &text)
    }

    /// Checks a roles file's text; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Roles, RolesError> {
        let file: File = serde_yaml::from_str(text).map_err(|error| RolesError::Syntax {
            path: path.to_path_buf(),
            error,
        })?;
        if file.roles.is_empty() {
            return Err(RolesError::Empty {
                path: path.to_path_buf(),
            });
        }
        let mut rules = Vec::with_capacity(file.roles.len());
        for (index, spec) in file.roles.into_iter().enumerate() {
            let error = |field, message: String| RolesError::Rule {
                path: path.to_path_buf(),
                index,
                field,
                message,
            };
            let (kind, field, text, separator) = match (spec.uri, spec.dns) {
                (Some(uri), None) => (NameKind::Uri, "uri", uri, '/'),
                (None, Some(dns)) => (NameKind::Dns, "dns", dns.to_ascii_lowercase(), '.'),
                (Some(_), Some(_)) => {
                    return Err(error("dns", "give `uri` or `dns`, not both".into()))
                }
                (None, None) => {
                    return Err(error(
                        "uri",
                        "missing: give the name to match as `uri` or `dns`".into(),
                    ))
                }
            };
            let pattern = Pattern::parse(&text, separator).map_err(|m| error(field, m))?;
            match (spec.role, pattern.captures_group()) {
                (RoleName::Proxy, false) => {
                    return Err(error(
                        field,
                        format!(
                            "a proxy rule must capture the node group: put `{{group}}` in {text:?}"
                        ),
                    ))
                }
                (RoleName::Operator | RoleName::Viewer, true) => {
                    return Err(error(
                        field,
                        "`{group}` is only for proxy rules; use `*` or `groups`".into(),
                    ))
                }
                _ => {}
            }
            let list = |field, values: Option<Vec<String>>| match values {
                None => Ok(None),
                Some(_) if spec.role != RoleName::Operator => Err(error(
                    field,
                    "only operator rules are restricted this way".into(),
                )),
                Some(v) if v.is_empty() => Err(error(
                    field,
                    "an empty list allows nothing; leave it out to allow every one".into(),
                )),
                Some(v) => Ok(Some(v.into_iter().collect::<BTreeSet<_>>())),
            };
            let groups = list("groups", spec.groups)?;
            let clusters = list("clusters", spec.clusters)?;
            rules.push(Rule {
                kind,
                pattern,
                role: spec.role,
                groups,
                clusters,
            });
        }
        Ok(Roles {
            rules,
            source: Some(path.to_path_buf()),
        })
    }

    /// The role of a certificate with these names and the name that gave it; `None` when no
    /// rule matches.
    pub fn role_of(&self, identity: &Identity) -> Option<(Role, String)> {
        for rule in &self.rules {
            let (names, separator) = match rule.kind {
                NameKind::Uri => (&identity.uris, '/'),
                NameKind::Dns => (&identity.dns, '.'),
            };
            for name in names {
                let Some(captured) = rule.pattern.matches(name, separator) else {
                    continue;
                };
                let role = match rule.role {
                    RoleName::Proxy => Role::Proxy {
                        group: captured.unwrap_or_default(),
                    },
                    RoleName::Operator => Role::Operator {
                        groups: rule.groups.clone(),
                        clusters: rule.clusters.clone(),
                    },
                    RoleName::Viewer => Role::Viewer,
                };
                let shown = match rule.kind {
                    NameKind::Uri => name.clone(),
                    NameKind::Dns => format!("dns:{name}"),
                };
                return Some((role, shown));
            }
        }
        None
    }

    /// Whether these are the defaults (no roles file).
    pub fn is_default(&self) -> bool {
        self.source.is_none()
    }

    /// Where the rules come from, for the start-up log.
    pub fn describe(&self) -> String {
        match &self.source {
            Some(path) => format!("{} ({} rules)", path.display(), self.rules.len()),
            None => "the default SPIFFE names (spiffe://*/proxy/{group}, spiffe://*/operator/*, spiffe://*/viewer/*)".to_owned(),
        }
    }
}

// === impl Pattern ===

/// A name pattern: literal text, `*` (one or more characters within one part of the name, a
/// part ending at `/` in URIs and `.` in DNS names) and at most one `{group}` (the same,
/// captured); at most one wildcard per part, so matching never backtracks far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Pattern {
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    Star,
    Group,
}

impl Pattern {
    fn parse(text: &str, separator: char) -> Result<Pattern, String> {
        if text.is_empty() {
            return Err("empty".into());
        }
        if text.len() > MAX_PATTERN {
            return Err(format!("longer than {MAX_PATTERN} bytes"));
        }
        if text.chars().any(char::is_control) {
            return Err("holds control characters".into());
        }
        let mut tokens = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        let mut groups = 0;
        while let Some(c) = rest.chars().next() {
            let token = if c == '*' {
                rest = &rest[1..];
                Token::Star
            } else if let Some(after) = rest.strip_prefix("{group}") {
                rest = after;
                groups += 1;
                Token::Group
            } else if c == '{' || c == '}' {
                return Err(format!(
                    "{text:?}: `{c}` outside `{{group}}` (the only placeholder)"
                ));
            } else {
                literal.push(c);
                rest = &rest[c.len_utf8()..];
                continue;
            };
            if !literal.is_empty() {
                tokens.push(Token::Literal(std::mem::take(&mut literal)));
            } else if matches!(tokens.last(), Some(Token::Star | Token::Group)) {
                return Err(format!(
                    "{text:?}: two wildcards in a row cannot be told apart"
                ));
            }
            tokens.push(token);
        }
        if !literal.is_empty() {
            tokens.push(Token::Literal(literal));
        }
        if groups > 1 {
            return Err(format!("{text:?}: `{{group}}` more than once"));
        }
        let wildcards = tokens
            .iter()
            .filter(|t| !matches!(t, Token::Literal(_)))
            .count();
        if wildcards > MAX_WILDCARDS {
            return Err(format!("{text:?}: more than {MAX_WILDCARDS} wildcards"));
        }
        // The wildcards of one part: a separator in a literal between them ends the part.
        let mut in_part = 0;
        for token in &tokens {
            match token {
                Token::Literal(l) if l.contains(separator) => in_part = 0,
                Token::Literal(_) => {}
                Token::Star | Token::Group => {
                    in_part += 1;
                    if in_part > 1 {
                        return Err(format!(
                            "{text:?}: one wildcard per part (between `{separator}`s) at most"
                        ));
                    }
                }
            }
        }
        Ok(Pattern { tokens })
    }

    fn captures_group(&self) -> bool {
        self.tokens.contains(&Token::Group)
    }

    /// Whether `name` matches; `Some(captured group)` when it does.
    fn matches(&self, name: &str, separator: char) -> Option<Option<String>> {
        let mut captured = None;
        matches_from(&self.tokens, name, separator, &mut captured).then_some(captured)
    }
}

fn matches_from(
    tokens: &[Token],
    name: &str,
    separator: char,
    captured: &mut Option<String>,
) -> bool {
    let Some((first, rest)) = tokens.split_first() else {
        return name.is_empty();
    };
    match first {
        Token::Literal(text) => name
            .strip_prefix(text.as_str())
            .is_some_and(|after| matches_from(rest, after, separator, captured)),
        Token::Star | Token::Group => {
            // One or more characters of this part of the name, shortest first.
            let part = name.find(separator).unwrap_or(name.len());
            for (end, _) in name[..part].char_indices().skip(1).chain([(part, ' ')]) {
                if end == 0 {
                    continue;
                }
                if matches_from(rest, &name[end..], separator, captured) {
                    if *first == Token::Group {
                        *captured = Some(name[..end].to_owned());
                    }
                    return true;
                }
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(uris: &[&str], dns: &[&str]) -> Identity {
        Identity {
            uris: uris.iter().map(|s| s.to_string()).collect(),
            dns: dns.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn parse(text: &str) -> Result<Roles, RolesError> {
        Roles::parse(Path::new("roles.yaml"), text)
    }

    #[test]
    fn the_default_roles_follow_the_spiffe_names() {
        let roles = Roles::default();
        let role = |uri: &str| roles.role_of(&identity(&[uri], &[])).map(|(r, _)| r);
        assert_eq!(
            role("spiffe://mesh/proxy/maps"),
            Some(Role::Proxy {
                group: "maps".into()
            })
        );
        assert_eq!(
            role("spiffe://mesh/operator/alice"),
            Some(Role::Operator {
                groups: None,
                clusters: None
            })
        );
        assert_eq!(role("spiffe://mesh/viewer/grafana"), Some(Role::Viewer));
        // Parts never stretch across a `/`, and every wildcard needs a character.
        assert_eq!(role("spiffe://mesh/proxy/maps/extra"), None);
        assert_eq!(role("spiffe://mesh/proxy/"), None);
        assert_eq!(role("spiffe:///proxy/maps"), None);
        assert_eq!(role("spiffe://a/b/proxy/maps"), None);
        assert_eq!(role("spiffe://mesh/ns/maps/sa/p1"), None);
        assert_eq!(role("https://mesh/proxy/maps"), None);
    }

    #[test]
    fn the_first_matching_rule_wins_and_dns_names_match_by_label() {
        let roles = parse(
            r#"
roles:
  - { dns: "{group}.proxies.example", role: proxy }
  - { uri: "spiffe://mesh/team/maps/*", role: operator, groups: [maps], clusters: [tiles] }
  - { uri: "spiffe://mesh/team/*/*", role: viewer }
"#,
        )
        .unwrap();
        assert_eq!(
            roles.role_of(&identity(&[], &["maps.proxies.example"])),
            Some((
                Role::Proxy {
                    group: "maps".into()
                },
                "dns:maps.proxies.example".into()
            ))
        );
        assert_eq!(
            roles.role_of(&identity(&[], &["a.maps.proxies.example"])),
            None
        );
        let (role, name) = roles
            .role_of(&identity(&["spiffe://mesh/team/maps/alice"], &[]))
            .unwrap();
        assert_eq!(name, "spiffe://mesh/team/maps/alice");
        assert_eq!(
            role.to_string(),
            "operator of groups [maps] of clusters [tiles]"
        );
        assert_eq!(
            roles
                .role_of(&identity(&["spiffe://mesh/team/geo/bob"], &[]))
                .map(|(r, _)| r),
            Some(Role::Viewer)
        );
        // A later name of the certificate still matches an earlier rule.
        assert_eq!(
            roles
                .role_of(&identity(
                    &["spiffe://other/x", "spiffe://mesh/team/maps/alice"],
                    &[]
                ))
                .map(|(r, _)| r.name()),
            Some("operator")
        );
    }

    #[test]
    fn bad_rules_are_named_by_index_and_field() {
        let cases = [
            ("roles: []", "`roles` is empty"),
            ("roles: [{ role: viewer }]", "roles[0].uri: missing"),
            (
                "roles: [{ uri: a, dns: b, role: viewer }]",
                "roles[0].dns: give `uri` or `dns`, not both",
            ),
            (
                "roles: [{ uri: 'spiffe://m/{group}', role: viewer }, { uri: x, role: viewer }]",
                "roles[0].uri: `{group}` is only for proxy rules",
            ),
            (
                "roles: [{ uri: x, role: viewer }, { uri: 'spiffe://m/p/*', role: proxy }]",
                "roles[1].uri: a proxy rule must capture the node group",
            ),
            (
                "roles: [{ uri: 'spiffe://m/{grp}', role: viewer }]",
                "roles[0].uri: \"spiffe://m/{grp}\": `{` outside `{group}`",
            ),
            (
                "roles: [{ uri: 'spiffe://m/**', role: viewer }]",
                "two wildcards in a row",
            ),
            (
                "roles: [{ uri: 'spiffe://{group}/{group}', role: proxy }]",
                "`{group}` more than once",
            ),
            (
                "roles: [{ uri: 'x*', role: viewer, groups: [maps] }]",
                "roles[0].groups: only operator rules",
            ),
            (
                "roles: [{ uri: 'x*', role: operator, clusters: [] }]",
                "roles[0].clusters: an empty list allows nothing",
            ),
            (
                "roles: [{ uri: 'x*', role: admin }]",
                "unknown variant `admin`",
            ),
            (
                "roles: [{ uri: 'x*', role: viewer, group: a }]",
                "unknown field `group`",
            ),
        ];
        for (text, expected) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(expected), "{text}: {e}");
            assert!(e.contains("roles.yaml"), "{text}: {e}");
        }
    }

    #[test]
    fn wildcards_take_whole_characters_and_backtrack() {
        let p = Pattern::parse("a*b/{group}c", '/').unwrap();
        assert_eq!(p.matches("axbb/byc", '/'), Some(Some("by".into())));
        assert_eq!(p.matches("aéb/éc", '/'), Some(Some("é".into())));
        assert_eq!(p.matches("ab/c", '/'), None);
        assert!(Pattern::parse("a*b{group}c", '/')
            .unwrap_err()
            .contains("one wildcard per part"));
        assert!(Pattern::parse("*.*", '/').is_err());
        assert!(Pattern::parse("*.*", '.').is_ok());
        let p = Pattern::parse("spiffe://*", '/').unwrap();
        assert_eq!(p.matches("spiffe://x", '/'), Some(None));
        assert_eq!(p.matches("spiffe://x/", '/'), None);
    }
}

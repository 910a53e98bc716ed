//! Route names: what logs and metrics call a route, unique within its table.

use std::collections::HashMap;

use super::Validator;
use crate::config::model::RouteTable;
use crate::config::FieldPath;

/// The longest route `name`.
const MAX_ROUTE_NAME: usize = 128;

/// The name of route `r` of virtual host `v` in `table` when it has none: where it is.
pub fn default_route_name(table: &str, v: usize, r: usize) -> String {
    format!("route_tables.{table}.virtual_hosts[{v}].routes[{r}]")
}

impl Validator<'_> {
    /// Every route's name, given or by default, is unique in its table; a given one is short
    /// and printable (it becomes a metric label and a log field).
    pub(super) fn route_names(&mut self, table_name: &str, table: &RouteTable) {
        let base = FieldPath::root("route_tables").key(table_name.to_owned());
        // Name → the route that has it.
        let mut names: HashMap<String, FieldPath> = HashMap::new();
        for (v, vhost) in table.virtual_hosts.iter().enumerate() {
            for (r, route) in vhost.routes.iter().enumerate() {
                let at = base
                    .field("virtual_hosts")
                    .index(v)
                    .field("routes")
                    .index(r);
                let name = match &route.name {
                    Some(name) => {
                        if let Err(message) = check_name(name) {
                            self.error(at.field("name"), message);
                            continue;
                        }
                        name.clone()
                    }
                    None => default_route_name(table_name, v, r),
                };
                if let Some(first) = names.get(&name) {
                    let message = format!("route name {name:?} is also the name of {first}");
                    self.error(at.field("name"), message);
                } else {
                    names.insert(name, at);
                }
            }
        }
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() || name.chars().count() > MAX_ROUTE_NAME {
        return Err(format!("a route name has 1 to {MAX_ROUTE_NAME} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("{name:?} has a control character"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{assert_errors, parse_ok};

    #[test]
    fn names_are_unique_in_a_table_and_printable() {
        assert_errors(
            r#"
            route_tables:
              t:
                virtual_hosts:
                  - hosts: ["*"]
                    routes:
                      - { name: api, match: { prefix: /a }, respond: { status: 200 } }
                      - { name: api, match: { prefix: /b }, respond: { status: 200 } }
                      - { name: "", match: { prefix: /c }, respond: { status: 200 } }
                      - { name: "a\tb", match: { prefix: /d }, respond: { status: 200 } }
                      - name: "route_tables.t.virtual_hosts[0].routes[5]"
                        match: { prefix: /e }
                        respond: { status: 200 }
                      - { match: { prefix: /f }, respond: { status: 200 } }
            "#,
            &[
                (
                    "route_tables.t.virtual_hosts[0].routes[1].name",
                    7,
                    "route name \"api\" is also the name of route_tables.t.virtual_hosts[0].routes[0]",
                ),
                (
                    "route_tables.t.virtual_hosts[0].routes[2].name",
                    8,
                    "a route name has 1 to 128 characters",
                ),
                (
                    "route_tables.t.virtual_hosts[0].routes[3].name",
                    9,
                    "\"a\\tb\" has a control character",
                ),
                (
                    "route_tables.t.virtual_hosts[0].routes[5].name",
                    13,
                    "is also the name of route_tables.t.virtual_hosts[0].routes[4]",
                ),
            ],
        );
    }

    #[test]
    fn tables_name_their_routes_independently() {
        parse_ok(
            r#"
            route_tables:
              a:
                virtual_hosts:
                  - hosts: ["*"]
                    routes: [{ name: api, match: { prefix: / }, respond: { status: 200 } }]
              b:
                virtual_hosts:
                  - hosts: ["*"]
                    routes: [{ name: api, match: { prefix: / }, respond: { status: 200 } }]
            "#,
        );
    }
}

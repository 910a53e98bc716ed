//! `legate-xds route set-split | reset-split` and `legate-xds step`: change a route's split
//! weights in one node group, then wait until every connected proxy of the group has ACKed
//! the route tables that carry them.

use std::time::Duration;

use clap::Subcommand;
use http::Method;
use serde_json::{json, Value};

use super::{block_on, request_with, CliError, ServerArgs};

/// How often the wait for ACKs looks at `/v1/status`.
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Subcommand)]
pub enum RouteAction {
    /// Set a route's split: the clusters and their weights (0 to 10000, summing above 0).
    SetSplit {
        #[command(flatten)]
        route: RouteArgs,
        /// CLUSTER=WEIGHT, once per target.
        #[arg(required = true, value_name = "CLUSTER=WEIGHT")]
        targets: Vec<String>,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Drop the route's split override: the files' weights apply again.
    ResetSplit {
        #[command(flatten)]
        route: RouteArgs,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// Which route of which node group.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct RouteArgs {
    /// The node group.
    #[arg(long)]
    pub group: String,
    /// The route table.
    #[arg(long)]
    pub route_table: String,
    /// The route: its `name`, or `route_tables.<table>.virtual_hosts[i].routes[j]`.
    #[arg(long)]
    pub route: String,
}

/// How long to wait for the proxies' ACKs.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct WaitArgs {
    /// Give up waiting for every connected proxy's ACK after this long (`0s`: do not wait).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
}

/// `legate-xds step`: move a split's share towards (or away from) one target.
#[derive(Debug, clap::Args)]
pub struct StepArgs {
    #[command(flatten)]
    pub route: RouteArgs,
    /// The target whose share moves.
    #[arg(long, value_name = "CLUSTER")]
    pub to: String,
    /// Percentage points to move to it (negative: away from it).
    #[arg(long, allow_negative_numbers = true)]
    pub points: i64,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Parses `CLUSTER=WEIGHT`.
pub fn parse_target(arg: &str) -> Result<Value, CliError> {
    let bad = || CliError::BadTarget(arg.to_owned());
    let (cluster, weight) = arg.split_once('=').ok_or_else(bad)?;
    let weight: i64 = weight.trim().parse().map_err(|_| bad())?;
    if cluster.is_empty() {
        return Err(bad());
    }
    Ok(json!({ "cluster": cluster, "weight": weight }))
}

pub fn run(action: RouteAction) -> Result<(), CliError> {
    let (operation, route, extra, wait, server) = match action {
        RouteAction::SetSplit {
            route,
            targets,
            wait,
            server,
        } => {
            let targets = targets
                .iter()
                .map(|t| parse_target(t))
                .collect::<Result<Vec<_>, _>>()?;
            (
                "set-split",
                route,
                json!({ "targets": targets }),
                wait,
                server,
            )
        }
        RouteAction::ResetSplit {
            route,
            wait,
            server,
        } => ("reset-split", route, json!({}), wait, server),
    };
    change(operation, &route, extra, &wait, &server)
}

pub fn step(args: StepArgs) -> Result<(), CliError> {
    let extra = json!({ "cluster": args.to, "points": args.points });
    change("step", &args.route, extra, &args.wait, &args.server)
}

fn change(
    operation: &str,
    route: &RouteArgs,
    extra: Value,
    wait: &WaitArgs,
    server: &ServerArgs,
) -> Result<(), CliError> {
    let mut body = json!({
        "group": route.group,
        "route_table": route.route_table,
        "route": route.route,
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        body[k] = v.clone();
    }
    let path = format!("/v1/routes/{operation}");
    let answer = block_on(request_with(
        &server.server,
        &server.tls(),
        Method::POST,
        &path,
        Some(body),
    ))??;
    println!("{}", describe_split(&answer));
    let Some(version) = answer["route_tables_version"].as_str() else {
        return Ok(());
    };
    if wait.wait.is_zero() {
        return Ok(());
    }
    let (acked, total) = block_on(wait_for_acks(server, &route.group, version, wait.wait))??;
    if total == 0 {
        println!(
            "no proxy of group {} is connected: nothing to confirm",
            route.group
        );
    } else {
        println!(
            "acknowledged by {acked} of {total} connected proxies of group {}",
            route.group
        );
    }
    Ok(())
}

/// `ok: step maps kartotherian: kartotherian-metal=80 kartotherian-k8s=20 (override)`.
pub fn describe_split(answer: &Value) -> String {
    let s = |k: &str| answer.get(k).and_then(Value::as_str).unwrap_or("?");
    let split = match answer["split"].as_array() {
        Some(targets) => targets
            .iter()
            .map(|t| format!("{}={}", t["cluster"].as_str().unwrap_or("?"), t["weight"]))
            .collect::<Vec<_>>()
            .join(" "),
        None => "the files' split".to_owned(),
    };
    format!(
        "ok: {} {} {} {}: {split}",
        s("operation"),
        s("group"),
        s("route_table"),
        s("route")
    )
}

/// Waits until every connected proxy of `group` has ACKed route tables `version` (or a later
/// version's change has replaced it); returns (acked, connected) at the end.
async fn wait_for_acks(
    server: &ServerArgs,
    group: &str,
    version: &str,
    limit: Duration,
) -> Result<(usize, usize), CliError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let status = request_with(
            &server.server,
            &server.tls(),
            Method::GET,
            "/v1/status",
            None,
        )
        .await?;
        let (acked, total) = acks(&status, group, version);
        if acked == total {
            return Ok((acked, total));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::NotAcknowledged {
                group: group.to_owned(),
                acked,
                total,
                waited: limit,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Of the proxies of `group` in a `/v1/status` answer, how many hold route tables `version`
/// (or the group's current ones, when a later change has replaced `version`), and how many
/// there are.
pub fn acks(status: &Value, group: &str, version: &str) -> (usize, usize) {
    let served = status["groups"][group]["versions"]["route_tables"].as_str();
    let empty = Vec::new();
    let proxies = status["proxies"].as_array().unwrap_or(&empty);
    let of_group = proxies
        .iter()
        .filter(|p| p["node"]["cluster"].as_str() == Some(group));
    let (mut acked, mut total) = (0, 0);
    for p in of_group {
        total += 1;
        let held = p["versions"]["route_tables"]["acked"].as_str();
        if held == Some(version) || (held.is_some() && held == served) {
            acked += 1;
        }
    }
    (acked, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_cluster_equals_weight() {
        assert_eq!(
            parse_target("kartotherian-k8s=20").unwrap(),
            json!({"cluster": "kartotherian-k8s", "weight": 20})
        );
        for bad in ["k8s", "=3", "k8s=x", "k8s="] {
            assert!(
                matches!(parse_target(bad), Err(CliError::BadTarget(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn acks_count_the_group_only() {
        let status = json!({"proxies": [
            {"node": {"cluster": "maps"}, "versions": {"route_tables": {"acked": "v2"}}},
            {"node": {"cluster": "maps"}, "versions": {"route_tables": {"acked": "v1"}}},
            {"node": {"cluster": "other"}, "versions": {"route_tables": {"acked": "v1"}}},
        ]});
        assert_eq!(acks(&status, "maps", "v2"), (1, 2));
        assert_eq!(acks(&status, "none", "v2"), (0, 0));
        // A later change (v3) replaced v2: holding v3 counts, v1 still does not.
        let mut later = status.clone();
        later["groups"] = json!({"maps": {"versions": {"route_tables": "v3"}}});
        later["proxies"][0]["versions"]["route_tables"]["acked"] = json!("v3");
        assert_eq!(acks(&later, "maps", "v2"), (1, 2));
        later["proxies"][1]["versions"]["route_tables"]["acked"] = json!("v3");
        assert_eq!(acks(&later, "maps", "v2"), (2, 2));
    }

    #[test]
    fn describes_the_split_now() {
        let answer = json!({"operation": "step", "group": "maps", "route_table": "t",
            "route": "kartotherian", "split": [{"cluster": "metal", "weight": 80},
            {"cluster": "k8s", "weight": 20}]});
        assert_eq!(
            describe_split(&answer),
            "ok: step maps t kartotherian: metal=80 k8s=20"
        );
    }
}

//! Resolving endpoint DNS names: a stub resolver in the process (no libc), configured by the
//! `dns` section or by `/etc/resolv.conf` with its search list and `ndots`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ServerOrderingStrategy,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::op::Query;
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::{Hosts, TokioResolver};
use tracing::warn;

/// What the `dns` section asks for, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The name servers to ask; `None` means those of `/etc/resolv.conf`.
    pub servers: Option<Vec<SocketAddr>>,
    /// How long one lookup may take.
    pub timeout: Duration,
}

/// Why a name has no addresses this time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// The resolver could not be set up (no readable `/etc/resolv.conf`, say).
    NoResolver(String),
    /// The name servers answered with an error, or could not be reached.
    Failed(String),
    /// The answer held no A or AAAA record.
    NoAddresses,
    /// No answer within the timeout.
    TimedOut(Duration),
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LookupError::NoResolver(e) => write!(f, "no resolver: {e}"),
            LookupError::Failed(e) => f.write_str(e),
            LookupError::NoAddresses => f.write_str("no addresses"),
            LookupError::TimedOut(t) => write!(f, "timed out after {t:?}"),
        }
    }
}

/// A resolver for the names of every cluster. Lookups run on the runtime that awaits them
/// (the control thread); answers are not cached, so each refresh asks again.
///
/// `/etc/hosts` comes first, as the C library's `files` source does: a name it lists gets
/// exactly its addresses there, of either family, and no DNS question. (The resolver alone
/// would add `::1` to a `localhost` listed with `127.0.0.1` only.)
pub struct Resolver {
    settings: Settings,
    /// `/etc/hosts`, read when the resolver is set up.
    hosts: Hosts,
    inner: Result<TokioResolver, String>,
    /// Why `/etc/resolv.conf` gave no name servers, if it did not.
    system_error: Option<String>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("settings", &self.settings)
            .field("ready", &self.inner.is_ok())
            .finish()
    }
}

impl Resolver {
    pub fn new(settings: Settings) -> Resolver {
        let (inner, system_error) = match build(&settings) {
            Ok((resolver, system_error)) => (Ok(resolver), system_error),
            Err(e) => {
                warn!(error = %e, "cannot set up the DNS resolver; DNS endpoints will not resolve");
                (Err(e), None)
            }
        };
        let hosts = Hosts::from_system().unwrap_or_else(|e| {
            warn!(error = %e, "cannot read /etc/hosts; names are asked of DNS only");
            Hosts::default()
        });
        Resolver {
            settings,
            hosts,
            inner,
            system_error,
        }
    }

    /// Like [`Resolver::new`], with `hosts` in place of `/etc/hosts`.
    #[cfg(test)]
    fn with_hosts(settings: Settings, hosts: Hosts) -> Resolver {
        Resolver {
            hosts,
            ..Resolver::new(settings)
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Every address `name` has now, sorted and without duplicates.
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, LookupError> {
        if let Some(ips) = self.in_hosts(name) {
            return Ok(ips);
        }
        let resolver = self
            .inner
            .as_ref()
            .map_err(|e| LookupError::NoResolver(e.clone()))?;
        let timeout = self.settings.timeout;
        let answer = tokio::time::timeout(timeout, resolver.lookup_ip(name))
            .await
            .map_err(|_| LookupError::TimedOut(timeout))?
            .map_err(|e| match &self.system_error {
                Some(why) => LookupError::Failed(format!("{e} ({why})")),
                None => LookupError::Failed(e.to_string()),
            })?;
        let mut ips: Vec<IpAddr> = answer.iter().collect();
        ips.sort();
        ips.dedup();
        if ips.is_empty() {
            return Err(LookupError::NoAddresses);
        }
        Ok(ips)
    }
}

impl Resolver {
    /// The addresses `/etc/hosts` lists for `name`, if it lists any.
    fn in_hosts(&self, name: &str) -> Option<Vec<IpAddr>> {
        let name = Name::from_utf8(name).ok()?;
        let mut ips: Vec<IpAddr> = [RecordType::A, RecordType::AAAA]
            .into_iter()
            .filter_map(|kind| {
                self.hosts
                    .lookup_static_host(&Query::query(name.clone(), kind))
            })
            .flat_map(|lookup| {
                lookup
                    .answers()
                    .iter()
                    .filter_map(|r| r.data.ip_addr())
                    .collect::<Vec<_>>()
            })
            .collect();
        ips.sort();
        ips.dedup();
        (!ips.is_empty()).then_some(ips)
    }
}

/// Builds the resolver. Without usable name servers in `/etc/resolv.conf` it still answers
/// from `/etc/hosts`, and says why other names fail.
fn build(settings: &Settings) -> Result<(TokioResolver, Option<String>), String> {
    let provider = TokioRuntimeProvider::default();
    let (mut builder, system_error) = match &settings.servers {
        Some(servers) => {
            let servers = servers
                .iter()
                .map(|addr| {
                    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                    for connection in &mut server.connections {
                        connection.port = addr.port();
                    }
                    server
                })
                .collect();
            let config = ResolverConfig::from_name_servers(servers);
            (TokioResolver::builder_with_config(config, provider), None)
        }
        None => match TokioResolver::builder(provider.clone()) {
            Ok(builder) => (builder, None),
            Err(e) => {
                let error = format!("/etc/resolv.conf: {e}");
                warn!(%error, "no name servers; only /etc/hosts names resolve");
                let config = ResolverConfig::from_name_servers(Vec::new());
                (
                    TokioResolver::builder_with_config(config, provider),
                    Some(error),
                )
            }
        },
    };
    let options = builder.options_mut();
    // `/etc/hosts` is looked up first by [`Resolver::lookup`] itself.
    options.use_hosts_file = ResolveHosts::Never;
    // Every A and AAAA record is an endpoint, as getaddrinfo would list them.
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // Servers are asked one at a time, in the order given; each gets part of the lookup's
    // time, so a silent one leaves time for the next.
    options.server_ordering_strategy = ServerOrderingStrategy::UserProvidedOrder;
    options.num_concurrent_reqs = 1;
    let servers = u32::try_from(settings.servers.as_ref().map_or(1, Vec::len).max(1)).unwrap_or(1);
    options.timeout = settings.timeout / servers;
    options.attempts = 1;
    // Each refresh asks the servers again: the refresh interval, not the TTL, says how
    // fresh the endpoints are.
    options.positive_max_ttl = Some(Duration::ZERO);
    options.negative_max_ttl = Some(Duration::ZERO);
    let resolver = builder.build().map_err(|e| e.to_string())?;
    Ok((resolver, system_error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_in_hosts_gets_exactly_its_addresses_there() {
        let mut hosts = Hosts::default();
        hosts
            .read_hosts_conf("127.0.0.1 localhost\n10.0.0.7 db.internal db\n::7 db\n".as_bytes())
            .unwrap();
        // No name server: only the hosts file can answer.
        let settings = Settings {
            servers: Some(Vec::new()),
            timeout: Duration::from_millis(200),
        };
        let resolver = Resolver::with_hosts(settings, hosts);

        let localhost = resolver.lookup("localhost").await.unwrap();
        assert_eq!(localhost, [IpAddr::from([127, 0, 0, 1])], "no ::1 added");
        let db = resolver.lookup("db").await.unwrap();
        assert_eq!(
            db,
            [
                "10.0.0.7".parse::<IpAddr>().unwrap(),
                "::7".parse().unwrap()
            ]
        );
        assert!(resolver.lookup("elsewhere.invalid").await.is_err());
    }
}

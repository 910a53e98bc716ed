//! What a rate limit counts by: the whole route, the client's address (or its network, by
//! prefix length), a request header's value, the path, or several of these together.

use std::hash::Hasher;
use std::net::IpAddr;

use fnv::FnvHasher;
use http::{HeaderMap, HeaderName};

/// One part of a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Part {
    /// The client's address, or its network: the first `.0` bits of an IPv4 address, the
    /// first `.1` bits of an IPv6 one.
    ClientIp {
        prefix: Option<(u8, u8)>,
    },
    /// A header's value (absent: the empty value).
    Header(HeaderName),
    Path,
}

/// The parts, in order; none: one bucket for the whole route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct KeySpec {
    parts: Vec<Part>,
}

impl KeySpec {
    pub fn whole_route() -> KeySpec {
        KeySpec::default()
    }

    pub fn is_whole_route(&self) -> bool {
        self.parts.is_empty()
    }

    /// `route`, `client_ip`, `client_ip/24`, `header:x-client-id`, `path`, each once; the
    /// error says what is wrong with which.
    pub fn parse(parts: &[String]) -> Result<KeySpec, String> {
        let mut out = Vec::new();
        for p in parts {
            let part = match p.as_str() {
                "route" => continue,
                "client_ip" => Part::ClientIp { prefix: None },
                "path" => Part::Path,
                other => {
                    if let Some(bits) = other.strip_prefix("client_ip/") {
                        let prefix = prefixes(bits).ok_or_else(|| {
                            format!(
                                "{other:?}: expected client_ip/<IPv4 bits, 1-32> or client_ip/<IPv4 bits>/<IPv6 bits, 1-128>"
                            )
                        })?;
                        Part::ClientIp {
                            prefix: Some(prefix),
                        }
                    } else if let Some(name) = other.strip_prefix("header:") {
                        match HeaderName::from_bytes(name.as_bytes()) {
                            Ok(h) => Part::Header(h),
                            Err(_) => return Err(format!("{other:?}: not a valid header name")),
                        }
                    } else {
                        return Err(format!(
                            "{other:?}: expected route, client_ip, client_ip/<bits>, header:<name> or path"
                        ));
                    }
                }
            };
            if out.contains(&part) {
                return Err(format!("{p:?} twice"));
            }
            out.push(part);
        }
        Ok(KeySpec { parts: out })
    }

    /// As written in the config: `route`, or the parts joined by ` + `.
    pub fn describe(&self) -> String {
        if self.parts.is_empty() {
            return "route".to_owned();
        }
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|p| match p {
                Part::ClientIp { prefix: None } => "client_ip".to_owned(),
                Part::ClientIp {
                    prefix: Some((v4, v6)),
                } => format!("client_ip/{v4}/{v6}"),
                Part::Header(h) => format!("header:{h}"),
                Part::Path => "path".to_owned(),
            })
            .collect();
        parts.join(" + ")
    }

    /// The key of a request, hashed.
    pub fn hash(&self, seed: u64, client: IpAddr, path: &str, headers: &HeaderMap) -> u64 {
        let mut h = FnvHasher::with_key(seed);
        // An IPv4 client seen through an IPv6 socket is the IPv4 client.
        let client = client.to_canonical();
        for part in &self.parts {
            match part {
                Part::ClientIp { prefix } => match (client, prefix) {
                    (IpAddr::V4(v4), Some((bits, _))) => {
                        let shift = 32 - u32::from(*bits);
                        h.write_u32(u32::from(v4).checked_shr(shift).unwrap_or(0));
                    }
                    (IpAddr::V6(v6), Some((_, bits))) => {
                        let shift = 128 - u32::from(*bits);
                        h.write_u128(u128::from(v6).checked_shr(shift).unwrap_or(0));
                    }
                    (IpAddr::V4(v4), None) => h.write(&v4.octets()),
                    (IpAddr::V6(v6), None) => h.write(&v6.octets()),
                },
                Part::Header(name) => {
                    // Every value, in order: a client cannot pick its bucket by adding one.
                    for value in headers.get_all(name) {
                        h.write(value.as_bytes());
                        h.write_u8(0);
                    }
                }
                Part::Path => h.write(path.as_bytes()),
            }
            // Parts apart: ("ab", "c") and ("a", "bc") are two keys.
            h.write_u8(0xff);
        }
        spread(h.finish())
    }
}

/// `24` (IPv6: `/64`) or `24/48`.
fn prefixes(bits: &str) -> Option<(u8, u8)> {
    let (v4, v6) = match bits.split_once('/') {
        Some((v4, v6)) => (v4.parse::<u8>().ok()?, v6.parse::<u8>().ok()?),
        None => (bits.parse::<u8>().ok()?, 64),
    };
    ((1..=32).contains(&v4) && (1..=128).contains(&v6)).then_some((v4, v6))
}

/// A hash's bits mixed, so both the bucket (low bits) and the key's mark (high bits) vary.
fn spread(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

/// The hash of a one-header key with value `value`, for tests.
#[cfg(test)]
pub fn hash_str(value: &str) -> u64 {
    let spec = KeySpec::parse(&["header:x-client-id".to_owned()]).unwrap_or_default();
    let mut headers = HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_str(value) {
        headers.insert("x-client-id", v);
    }
    spec.hash(0, IpAddr::from([127, 0, 0, 1]), "/", &headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_tell_requests_apart() {
        assert!(KeySpec::parse(&["route".into()]).unwrap().is_whole_route());
        for bad in [
            "client_ip/0",
            "client_ip/33",
            "client_ip/24/129",
            "header:bad name",
            "ip",
            "path,path",
        ] {
            let parts: Vec<String> = bad.split(',').map(str::to_owned).collect();
            assert!(KeySpec::parse(&parts).is_err(), "{bad}");
        }
        let by_net = KeySpec::parse(&["client_ip/24".into()]).unwrap();
        let h = HeaderMap::new();
        let a = by_net.hash(0, "10.0.0.1".parse().unwrap(), "/", &h);
        assert_eq!(a, by_net.hash(0, "10.0.0.200".parse().unwrap(), "/", &h));
        assert_ne!(a, by_net.hash(0, "10.0.1.1".parse().unwrap(), "/", &h));
        let by_ip = KeySpec::parse(&["client_ip".into()]).unwrap();
        assert_ne!(
            by_ip.hash(0, "10.0.0.1".parse().unwrap(), "/", &h),
            by_ip.hash(0, "10.0.0.2".parse().unwrap(), "/", &h)
        );
        let both = KeySpec::parse(&["header:x-a".into(), "path".into()]).unwrap();
        let mut ab = HeaderMap::new();
        ab.insert("x-a", http::HeaderValue::from_static("ab"));
        let mut a_ = HeaderMap::new();
        a_.insert("x-a", http::HeaderValue::from_static("a"));
        let ip = "127.0.0.1".parse().unwrap();
        assert_ne!(both.hash(0, ip, "c", &ab), both.hash(0, ip, "bc", &a_));
    }
}

//! What a rate limit counts by: the whole route, the client's address (or its network, by
//! prefix length), a request header's value, the path, or several of these together.

use std::hash::Hasher;
use std::net::IpAddr;

use fnv::FnvHasher;
use http::{HeaderMap, HeaderName};

/// One part of a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Part {
    /// The client's address, or its first `prefix` bits.
    ClientIp {
        prefix: Option<u8>,
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
                        match bits.parse::<u8>() {
                            Ok(n) if (1..=128).contains(&n) => Part::ClientIp { prefix: Some(n) },
                            _ => {
                                return Err(format!(
                                    "{other:?}: the prefix length must be 1 to 128"
                                ))
                            }
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
                Part::ClientIp { prefix: Some(n) } => format!("client_ip/{n}"),
                Part::Header(h) => format!("header:{h}"),
                Part::Path => "path".to_owned(),
            })
            .collect();
        parts.join(" + ")
    }

    /// The key of a request, hashed.
    pub fn hash(&self, client: IpAddr, path: &str, headers: &HeaderMap) -> u64 {
        let mut h = FnvHasher::default();
        for part in &self.parts {
            match part {
                Part::ClientIp { prefix } => match (client, prefix) {
                    (IpAddr::V4(v4), Some(bits)) => {
                        let keep = u32::from(*bits.min(&32));
                        let masked = u32::from(v4).checked_shr(32 - keep).unwrap_or(0);
                        h.write_u32(masked);
                    }
                    (IpAddr::V6(v6), Some(bits)) => {
                        let keep = u32::from(*bits);
                        let masked = u128::from(v6).checked_shr(128 - keep).unwrap_or(0);
                        h.write_u128(masked);
                    }
                    (IpAddr::V4(v4), None) => h.write(&v4.octets()),
                    (IpAddr::V6(v6), None) => h.write(&v6.octets()),
                },
                Part::Header(name) => {
                    h.write(headers.get(name).map_or(&b""[..], |v| v.as_bytes()));
                }
                Part::Path => h.write(path.as_bytes()),
            }
            // Parts apart: ("ab", "c") and ("a", "bc") are two keys.
            h.write_u8(0xff);
        }
        spread(h.finish())
    }
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
    spec.hash(IpAddr::from([127, 0, 0, 1]), "/", &headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_tell_requests_apart() {
        assert!(KeySpec::parse(&["route".into()]).unwrap().is_whole_route());
        for bad in [
            "client_ip/0",
            "client_ip/129",
            "header:bad name",
            "ip",
            "path,path",
        ] {
            let parts: Vec<String> = bad.split(',').map(str::to_owned).collect();
            assert!(KeySpec::parse(&parts).is_err(), "{bad}");
        }
        let by_net = KeySpec::parse(&["client_ip/24".into()]).unwrap();
        let h = HeaderMap::new();
        let a = by_net.hash("10.0.0.1".parse().unwrap(), "/", &h);
        assert_eq!(a, by_net.hash("10.0.0.200".parse().unwrap(), "/", &h));
        assert_ne!(a, by_net.hash("10.0.1.1".parse().unwrap(), "/", &h));
        let by_ip = KeySpec::parse(&["client_ip".into()]).unwrap();
        assert_ne!(
            by_ip.hash("10.0.0.1".parse().unwrap(), "/", &h),
            by_ip.hash("10.0.0.2".parse().unwrap(), "/", &h)
        );
        let both = KeySpec::parse(&["header:x-a".into(), "path".into()]).unwrap();
        let mut ab = HeaderMap::new();
        ab.insert("x-a", http::HeaderValue::from_static("ab"));
        let mut a_ = HeaderMap::new();
        a_.insert("x-a", http::HeaderValue::from_static("a"));
        let ip = "127.0.0.1".parse().unwrap();
        assert_ne!(both.hash(ip, "c", &ab), both.hash(ip, "bc", &a_));
    }
}

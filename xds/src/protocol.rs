//! xDS-lite messages and their newline-delimited JSON framing (PROTOCOL.md R1–R12).

use std::collections::BTreeMap;
use std::fmt;

use bytes::{Buf, BytesMut};
use serde::{Deserialize, Serialize};

/// The request path of the stream (R1).
pub const STREAM_PATH: &str = "/xds/v1/stream";
/// Content type of both directions of the stream (R1).
pub const CONTENT_TYPE: &str = "application/x-ndjson";
/// Longest line accepted (R1).
pub const MAX_LINE: usize = 16 * 1024 * 1024;
/// Send a ping after this long without sending anything (R3).
pub const PING_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// A session silent for this long is dead (R3).
pub const DEAD_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// A resource type (R5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceType {
    Listeners,
    RouteTables,
    Clusters,
    Endpoints,
}

impl ResourceType {
    pub const ALL: [ResourceType; 4] = [
        ResourceType::Listeners,
        ResourceType::RouteTables,
        ResourceType::Clusters,
        ResourceType::Endpoints,
    ];

    /// The state-of-the-world types (R8).
    pub const SOTW: [ResourceType; 3] = [
        ResourceType::Listeners,
        ResourceType::RouteTables,
        ResourceType::Clusters,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Listeners => "listeners",
            ResourceType::RouteTables => "route_tables",
            ResourceType::Clusters => "clusters",
            ResourceType::Endpoints => "endpoints",
        }
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a proxy is (R7).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Node {
    #[serde(default)]
    pub id: String,
    /// The node group: proxies of one group get the same resources.
    #[serde(default)]
    pub cluster: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// The endpoints of one cluster, with their version (R9).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointsResource {
    /// The cluster's name.
    pub name: String,
    pub version: String,
    /// Endpoints in the config file's schema: `"ip:port"` or `{ address, weight, pooled, zone }`.
    pub endpoints: Vec<serde_json::Value>,
}

/// Why one resource of an update was rejected (R10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceError {
    pub name: String,
    pub error: String,
}

/// One line of the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Proxy → control plane, first (R7).
    Hello {
        node: Node,
        #[serde(default)]
        versions: BTreeMap<ResourceType, String>,
        #[serde(default)]
        endpoint_versions: BTreeMap<String, String>,
    },
    /// Control plane → proxy: every resource of a state-of-the-world type (R8).
    Response {
        resource_type: ResourceType,
        version_info: String,
        nonce: String,
        resources: Vec<serde_json::Value>,
    },
    /// Control plane → proxy: changed and removed endpoint lists (R9).
    Delta {
        resource_type: ResourceType,
        system_version_info: String,
        nonce: String,
        #[serde(default)]
        resources: Vec<EndpointsResource>,
        #[serde(default)]
        removed_resources: Vec<String>,
    },
    /// Proxy → control plane: the update with this nonce is applied (R10).
    Ack {
        resource_type: ResourceType,
        version_info: String,
        nonce: String,
    },
    /// Proxy → control plane: the update with this nonce is rejected (R10).
    Nack {
        resource_type: ResourceType,
        /// The version still held.
        version_info: String,
        nonce: String,
        error_detail: Vec<ResourceError>,
    },
    Ping,
    Pong,
}

/// A line that is not a valid message (R4).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("line longer than {0} bytes")]
    TooLong(usize),
    #[error("invalid message: {0}")]
    Invalid(#[from] serde_json::Error),
}

impl Message {
    /// One line: the JSON message and its `\n`.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising these types cannot fail: every map key is a string.
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }

    pub fn decode(line: &[u8]) -> Result<Message, DecodeError> {
        if line.len() > MAX_LINE {
            return Err(DecodeError::TooLong(MAX_LINE));
        }
        Ok(serde_json::from_slice(line)?)
    }
}

/// Splits a byte stream into lines (R1). Each byte is looked at once on its way to a
/// newline, however many pieces a long line arrives in.
#[derive(Debug)]
pub struct LineDecoder {
    buf: BytesMut,
    /// Bytes at the start of `buf` already searched: none of them is a newline.
    scanned: usize,
    /// The longest line accepted.
    max_line: usize,
    /// Bytes searched in all, for the test that each is searched once.
    #[cfg(test)]
    searched: usize,
}

impl Default for LineDecoder {
    /// Lines up to [`MAX_LINE`], the protocol's bound (R1).
    fn default() -> LineDecoder {
        LineDecoder::with_max_line(MAX_LINE)
    }
}

impl LineDecoder {
    /// Lines up to `max_line` bytes (at most [`MAX_LINE`]); a longer one is an error.
    pub fn with_max_line(max_line: usize) -> LineDecoder {
        LineDecoder {
            buf: BytesMut::new(),
            scanned: 0,
            max_line: max_line.min(MAX_LINE),
            #[cfg(test)]
            searched: 0,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, if one has arrived. Blank lines are skipped.
    pub fn next_message(&mut self) -> Option<Result<Message, DecodeError>> {
        self.next_line()
            .map(|line| line.and_then(|line| Message::decode(&line)))
    }

    /// The next complete line, without its `\n` (or `\r\n`), if one has arrived. Blank
    /// lines are skipped.
    pub fn next_line(&mut self) -> Option<Result<BytesMut, DecodeError>> {
        loop {
            let found = self.buf[self.scanned..].iter().position(|b| *b == b'\n');
            #[cfg(test)]
            {
                self.searched += found.map_or(self.buf.len() - self.scanned, |i| i + 1);
            }
            let Some(end) = found.map(|i| self.scanned + i) else {
                self.scanned = self.buf.len();
                if self.buf.len() > self.max_line {
                    self.buf.clear();
                    self.scanned = 0;
                    return Some(Err(DecodeError::TooLong(self.max_line)));
                }
                return None;
            };
            let mut line = self.buf.split_to(end);
            self.buf.advance(1);
            self.scanned = 0;
            if line.last() == Some(&b'\r') {
                line.truncate(line.len() - 1);
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if line.len() > self.max_line {
                return Some(Err(DecodeError::TooLong(self.max_line)));
            }
            return Some(Ok(line));
        }
    }
}

/// A version derived from content, so equal content has equal versions across restarts (R14):
/// FNV-1a 64 of the bytes, as 16 hex digits.
pub fn content_version(bytes: &[u8]) -> String {
    use std::hash::Hasher as _;
    let mut fnv = fnv::FnvHasher::default();
    fnv.write(bytes);
    format!("{:016x}", fnv.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_message() {
        let messages = vec![
            Message::Hello {
                node: Node {
                    id: "a".into(),
                    cluster: "maps".into(),
                    zone: Some("eqiad".into()),
                },
                versions: BTreeMap::from([(ResourceType::Clusters, "v1".into())]),
                endpoint_versions: BTreeMap::from([("tegola".into(), "e1".into())]),
            },
            Message::Response {
                resource_type: ResourceType::Listeners,
                version_info: "v2".into(),
                nonce: "n1".into(),
                resources: vec![serde_json::json!({"name": "l", "listen": "127.0.0.1:1"})],
            },
            Message::Delta {
                resource_type: ResourceType::Endpoints,
                system_version_info: "s".into(),
                nonce: "n2".into(),
                resources: vec![EndpointsResource {
                    name: "c".into(),
                    version: "e2".into(),
                    endpoints: vec![serde_json::json!("127.0.0.1:80")],
                }],
                removed_resources: vec!["gone".into()],
            },
            Message::Ack {
                resource_type: ResourceType::Clusters,
                version_info: "v2".into(),
                nonce: "n1".into(),
            },
            Message::Nack {
                resource_type: ResourceType::Clusters,
                version_info: "v1".into(),
                nonce: "n3".into(),
                error_detail: vec![ResourceError {
                    name: "c".into(),
                    error: "bad".into(),
                }],
            },
            Message::Ping,
            Message::Pong,
        ];
        let mut decoder = LineDecoder::default();
        for m in &messages {
            let line = m.encode();
            // Deliver each line in two pieces, to exercise reassembly.
            let (a, b) = line.split_at(line.len() / 2);
            decoder.push(a);
            assert!(decoder.next_message().is_none());
            decoder.push(b);
            let got = decoder.next_message().unwrap().unwrap();
            assert_eq!(&got, m);
        }
    }

    #[test]
    fn wire_format_is_the_documented_one() {
        let ack = Message::Ack {
            resource_type: ResourceType::RouteTables,
            version_info: "v".into(),
            nonce: "n".into(),
        };
        assert_eq!(
            String::from_utf8(ack.encode()).unwrap(),
            "{\"type\":\"ack\",\"resource_type\":\"route_tables\",\"version_info\":\"v\",\"nonce\":\"n\"}\n"
        );
        let hello: Message =
            serde_json::from_str(r#"{"type":"hello","node":{"id":"x","cluster":"g"},"extra":1}"#)
                .unwrap();
        assert!(
            matches!(hello, Message::Hello { .. }),
            "unknown fields are ignored (R4)"
        );
    }

    #[test]
    fn bad_lines_are_errors_not_panics() {
        for bad in [
            &b"{"[..],
            b"{\"type\":\"nope\"}",
            b"[]",
            b"\xff\xfe",
            b"{\"type\":\"ack\"}",
        ] {
            assert!(Message::decode(bad).is_err());
        }
        let mut d = LineDecoder::default();
        d.push(b"\n\r\n{\"type\":\"ping\"}\r\n");
        assert_eq!(d.next_message().unwrap().unwrap(), Message::Ping);
    }

    #[test]
    fn a_long_line_in_many_pieces_is_searched_once() {
        let line = Message::Ping.encode();
        let (head, tail) = line.split_at(line.len() - 1);
        let mut d = LineDecoder::default();
        for byte in head {
            d.push(std::slice::from_ref(byte));
            assert!(d.next_message().is_none());
            // What was searched is not searched again.
            assert_eq!(d.scanned, d.buf.len());
        }
        d.push(tail);
        assert_eq!(d.next_message().unwrap().unwrap(), Message::Ping);
        assert_eq!((d.buf.len(), d.scanned), (0, 0));
        assert_eq!(d.searched, line.len(), "each byte searched once");
        d.push(b"\n\n");
        d.push(&line);
        assert_eq!(
            d.next_message().unwrap().unwrap(),
            Message::Ping,
            "blank lines skipped"
        );
    }

    #[test]
    fn an_8_mib_line_fed_byte_by_byte_is_searched_once() {
        let pad = "x".repeat(8 * 1024 * 1024);
        let line = format!("{{\"type\":\"ping\",\"pad\":\"{pad}\"}}\n");
        let mut d = LineDecoder::default();
        let bytes = line.as_bytes();
        for byte in &bytes[..bytes.len() - 1] {
            d.push(std::slice::from_ref(byte));
            assert!(d.next_message().is_none());
        }
        d.push(b"\n");
        assert_eq!(d.next_message().unwrap().unwrap(), Message::Ping);
        assert_eq!(d.searched, bytes.len(), "linear: each byte searched once");
    }

    #[test]
    fn lines_over_the_limit_are_refused_whole_or_in_pieces() {
        let long = format!("{{\"type\":\"ping\",\"pad\":\"{}\"}}\n", "x".repeat(2000));
        let mut d = LineDecoder::with_max_line(1024);
        d.push(long.as_bytes());
        assert!(matches!(
            d.next_message(),
            Some(Err(DecodeError::TooLong(1024)))
        ));
        let mut d = LineDecoder::with_max_line(1024);
        for piece in long.as_bytes()[..1500].chunks(100) {
            d.push(piece);
            if let Some(r) = d.next_message() {
                assert!(matches!(r, Err(DecodeError::TooLong(1024))));
                // What was held of the line is dropped.
                assert_eq!(d.buf.len(), 0);
                return;
            }
        }
        panic!("a line growing past the limit was never refused");
    }
}

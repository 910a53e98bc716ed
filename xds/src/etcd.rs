//! A small etcd v3 client over etcd's JSON gateway (`/v3/kv/…`, `/v3/watch`, HTTP/1.1): range
//! reads, compare-and-swap writes on a key's revision, and prefix watches; each request tries
//! the members in turn.
//!
//! The kept etcd crates generate their gRPC code with `protoc` at build time; the gateway is
//! etcd's own HTTP form of the same API, so this needs nothing beyond hyper.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;

use crate::protocol::LineDecoder;

/// How long one request to one member may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read (a range of every override).
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// The members of one etcd cluster, by client address.
#[derive(Debug)]
pub struct Etcd {
    members: Vec<String>,
    /// The member that answered last; tried first.
    current: AtomicUsize,
}

/// A key and its value, with the revision that last changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// A change a watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(Kv),
    Delete { key: String, mod_revision: i64 },
}

/// What a transaction does to one key once its revision compares equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put(Vec<u8>),
    Delete,
    /// Only compared: the change leaves it as it is, but holds only if it is still so.
    Unchanged,
}

/// What a compare-and-swap write came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swap {
    /// Written, at this revision.
    Done(i64),
    /// The key had changed (or appeared, or gone); nothing was written.
    Conflict,
}

/// Why etcd could not be used; names the member and what failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("no etcd member answered ({0})")]
    Unreachable(String),
    #[error("etcd {member} answered {status}: {message}")]
    Refused {
        member: String,
        status: StatusCode,
        message: String,
    },
    #[error("etcd {member}: unexpected answer: {message}")]
    Answer { member: String, message: String },
    #[error("etcd watch from {member} ended: {message}")]
    WatchEnded { member: String, message: String },
    #[error("etcd {member} refused the write, but an earlier member may have applied it")]
    Uncertain { member: String },
    #[error("etcd has compacted its history past revision {wanted} (now from {compacted}): read everything again")]
    Compacted { wanted: i64, compacted: i64 },
}

/// `etcd://host:port,host:port` → the members.
pub fn parse_url(url: &str) -> Option<Vec<String>> {
    let list = url.strip_prefix("etcd://")?;
    let members: Vec<String> = list
        .split(',')
        .map(|m| m.trim().trim_end_matches('/').to_owned())
        .collect();
    let valid = |m: &String| {
        m.rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
    };
    (!members.is_empty() && members.iter().all(valid)).then_some(members)
}

fn b64(s: &[u8]) -> String {
    BASE64.encode(s)
}

/// The key just past every key that starts with `prefix`.
fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn kv_of(v: &Value) -> Option<Kv> {
    let key = BASE64.decode(v["key"].as_str()?).ok()?;
    let value = match v["value"].as_str() {
        Some(s) => BASE64.decode(s).ok()?,
        None => Vec::new(),
    };
    Some(Kv {
        key: String::from_utf8(key).ok()?,
        value,
        mod_revision: int(&v["mod_revision"]),
    })
}

impl Etcd {
    pub fn new(members: Vec<String>) -> Etcd {
        Etcd {
            members,
            current: AtomicUsize::new(0),
        }
    }

    pub fn members(&self) -> &[String] {
        &self.members
    }

    /// Every key under `prefix`, and the store's revision they were read at.
    pub async fn range(&self, prefix: &str) -> Result<(i64, Vec<Kv>), EtcdError> {
        let body = json!({ "key": b64(prefix.as_bytes()), "range_end": b64(&range_end(prefix)) });
        let (member, answer) = self.call("/v3/kv/range", &body).await?;
        let revision = int(&answer["header"]["revision"]);
        let mut kvs = Vec::new();
        for kv in answer["kvs"].as_array().into_iter().flatten() {
            kvs.push(kv_of(kv).ok_or_else(|| EtcdError::Answer {
                member: member.clone(),
                message: format!("a key-value it cannot read: {kv}"),
            })?);
        }
        Ok((revision, kvs))
    }

    /// One key, if it exists.
    pub async fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError> {
        let body = json!({ "key": b64(key.as_bytes()) });
        let (member, answer) = self.call("/v3/kv/range", &body).await?;
        match answer["kvs"].as_array().and_then(|kvs| kvs.first()) {
            None => Ok(None),
            Some(kv) => kv_of(kv).map(Some).ok_or_else(|| EtcdError::Answer {
                member,
                message: format!("a key-value it cannot read: {kv}"),
            }),
        }
    }

    /// In one transaction: each write done if every key was last changed at the revision
    /// given with it (0: if it does not exist).
    pub async fn swap_all(&self, changes: &[(String, i64, Write)]) -> Result<Swap, EtcdError> {
        let mut compare = Vec::new();
        let mut success = Vec::new();
        for (key, revision, write) in changes {
            let k = b64(key.as_bytes());
            compare.push(json!({ "key": k, "target": "MOD", "result": "EQUAL",
                                 "mod_revision": revision.to_string() }));
            match write {
                Write::Put(v) => {
                    success.push(json!({ "request_put": { "key": k, "value": b64(v) } }))
                }
                Write::Delete => success.push(json!({ "request_delete_range": { "key": k } })),
                Write::Unchanged => {}
            }
        }
        let body = json!({ "compare": compare, "success": success });
        let (member, answer, maybe_received) = self.call_noting("/v3/kv/txn", &body).await?;
        if answer["succeeded"] == true {
            Ok(Swap::Done(int(&answer["header"]["revision"])))
        } else if maybe_received {
            // The compare may have failed on this very write, applied by a member that
            // timed out.
            Err(EtcdError::Uncertain { member })
        } else {
            Ok(Swap::Conflict)
        }
    }

    /// Opens a watch of every key under `prefix`, from `start` on.
    pub async fn watch(&self, prefix: &str, start: i64) -> Result<Watch, EtcdError> {
        let body = json!({ "create_request": {
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&range_end(prefix)),
            "start_revision": start.to_string(),
        }});
        let mut last = String::new();
        for member in self.order() {
            match tokio::time::timeout(REQUEST_TIMEOUT, send(&member, "/v3/watch", &body)).await {
                Ok(Ok((StatusCode::OK, body))) => {
                    return Ok(Watch {
                        member,
                        start,
                        body,
                        decoder: LineDecoder::default(),
                    })
                }
                Ok(Ok((status, _))) => last = format!("{member}: {status}"),
                Ok(Err(e)) => last = format!("{member}: {e}"),
                Err(_) => last = format!("{member}: no answer within {REQUEST_TIMEOUT:?}"),
            }
        }
        Err(EtcdError::Unreachable(last))
    }

    /// The members, starting with the one that answered last.
    fn order(&self) -> Vec<String> {
        let n = self.members.len();
        let first = self.current.load(Ordering::Relaxed) % n.max(1);
        (0..n)
            .map(|i| self.members[(first + i) % n].clone())
            .collect()
    }

    /// POSTs `body` to `path` on the first member that answers; its JSON answer.
    async fn call(&self, path: &str, body: &Value) -> Result<(String, Value), EtcdError> {
        self.call_noting(path, body)
            .await
            .map(|(member, value, _)| (member, value))
    }

    /// [`Etcd::call`], and whether a member tried before the one that answered may have
    /// received the request (it timed out or failed after the request went out): for a
    /// write, its outcome is then not known from the answer alone.
    async fn call_noting(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<(String, Value, bool), EtcdError> {
        let mut last = String::new();
        let mut maybe_received = false;
        for (i, member) in self.order().into_iter().enumerate() {
            let answered = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let (status, incoming) = send(&member, path, body).await?;
                let bytes = http_body_util::Limited::new(incoming, MAX_ANSWER)
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                Ok::<_, String>((status, bytes))
            })
            .await;
            match answered {
                Ok(Ok((status, bytes))) => {
                    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    if status == StatusCode::OK && value["header"]["revision"].is_null() {
                        return Err(EtcdError::Answer {
                            member,
                            message: format!(
                                "not an etcd answer: {}",
                                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                            ),
                        });
                    }
                    if status == StatusCode::OK {
                        let n = self.members.len().max(1);
                        let at = (self.current.load(Ordering::Relaxed) + i) % n;
                        self.current.store(at, Ordering::Relaxed);
                        return Ok((member, value, maybe_received));
                    }
                    // A member without a leader (a lost quorum, an election) may be alone
                    // in that: try the next.
                    let message = value["error"]
                        .as_str()
                        .or(value["message"].as_str())
                        .unwrap_or("")
                        .to_owned();
                    if status.is_server_error() {
                        last = format!("{member}: {status} {message}");
                        maybe_received = true;
                        continue;
                    }
                    return Err(EtcdError::Refused {
                        member,
                        status,
                        message,
                    });
                }
                Ok(Err(e)) => {
                    // Not connected: certainly not received.
                    maybe_received |= !e.starts_with("connect:");
                    last = format!("{member}: {e}");
                }
                Err(_) => {
                    maybe_received = true;
                    last = format!("{member}: no answer within {REQUEST_TIMEOUT:?}");
                }
            }
        }
        Err(EtcdError::Unreachable(last))
    }
}

/// One POST over a new HTTP/1.1 connection; the status and the body as it comes.
async fn send(member: &str, path: &str, body: &Value) -> Result<(StatusCode, Incoming), String> {
    let tcp = TcpStream::connect(member)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(http::header::HOST, member)
        .header(http::header::CONTENT_TYPE, "application/json")
        // A member cut off from the quorum refuses (and ends watches) rather than serving an
        // old view.
        .header("grpc-metadata-hasleader", "true")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    Ok((resp.status(), resp.into_body()))
}

/// An open watch: events as they come.
pub struct Watch {
    member: String,
    /// The revision it was asked to start from.
    start: i64,
    body: Incoming,
    decoder: LineDecoder,
}

impl Watch {
    /// The next batch of events, all at one revision; an error when the watch ends (the
    /// member went away, or etcd cancelled it: compacted past its start, say).
    pub async fn next(&mut self) -> Result<Vec<Event>, EtcdError> {
        let ended = |message: String| EtcdError::WatchEnded {
            member: self.member.clone(),
            message,
        };
        loop {
            while let Some(line) = self.decoder.next_line() {
                let line = line.map_err(|e| ended(e.to_string()))?;
                let value: Value = serde_json::from_slice(&line)
                    .map_err(|e| ended(format!("an answer it cannot read: {e}")))?;
                let result = &value["result"];
                let compacted = int(&result["compact_revision"]);
                if compacted > 0 {
                    return Err(EtcdError::Compacted {
                        wanted: self.start,
                        compacted,
                    });
                }
                if result["canceled"] == true {
                    let reason = result["cancel_reason"].as_str().unwrap_or("cancelled");
                    return Err(ended(reason.to_owned()));
                }
                if let Some(error) = value.get("error") {
                    return Err(ended(error.to_string()));
                }
                let mut events = Vec::new();
                for e in result["events"].as_array().into_iter().flatten() {
                    let Some(kv) = kv_of(&e["kv"]) else { continue };
                    events.push(if e["type"] == "DELETE" {
                        Event::Delete {
                            key: kv.key,
                            mod_revision: kv.mod_revision,
                        }
                    } else {
                        Event::Put(kv)
                    });
                }
                if !events.is_empty() {
                    return Ok(events);
                }
            }
            match self.body.frame().await {
                None => return Err(ended("closed".into())),
                Some(Err(e)) => return Err(ended(e.to_string())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.decoder.push(&data);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_members_and_prefixes_end_where_they_should() {
        assert_eq!(
            parse_url("etcd://127.0.0.1:2379,10.0.0.2:2379"),
            Some(vec![
                "127.0.0.1:2379".to_owned(),
                "10.0.0.2:2379".to_owned()
            ])
        );
        assert_eq!(parse_url("etcd://"), None);
        assert_eq!(parse_url("etcd://host"), None);
        assert_eq!(parse_url("http://127.0.0.1:2379"), None);
        assert_eq!(range_end("/legate-xds/"), b"/legate-xds0".to_vec());
        assert_eq!(range_end("a\u{7f}"), b"a\x80".to_vec());
    }
}

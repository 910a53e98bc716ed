//! What Legate understands of the PostgreSQL wire protocol: the first message of a
//! connection (startup, SSL/GSS negotiation, or a cancel request) and the BackendKeyData that
//! ties a session's cancel key to its server. (The health probe is `cluster::health::postgres`.)
//!
//! Sessions that negotiate TLS with the server end to end hide their BackendKeyData; a cancel
//! for a key Legate has not seen is sent to every pooled endpoint (servers ignore keys that are
//! not theirs). Clients that want precise cancel routing should connect to Legate without TLS
//! (`sslmode=disable`) on the local hop.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

use crate::cluster::{Cluster, ClusterState};

const CANCEL_REQUEST: i32 = 80_877_102;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
/// Longest startup message accepted (PostgreSQL's own limit is 10000 bytes).
const MAX_STARTUP: usize = 10_000;
/// Time a client has to send its first message.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// A session's cancel key: (process id, secret).
pub type CancelKey = (i32, i32);

/// The first message a client sends.
#[derive(Debug, PartialEq, Eq)]
pub enum First {
    /// A StartupMessage (raw bytes, to forward).
    Startup(Vec<u8>),
    /// SSLRequest or GSSENCRequest: the session may be encrypted end to end.
    Encrypted(Vec<u8>),
    /// A CancelRequest for another session.
    Cancel { key: CancelKey, raw: Vec<u8> },
}

/// Reads and classifies the first message of a client connection.
pub async fn read_first<R: AsyncRead + Unpin>(client: &mut R) -> io::Result<First> {
    tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, read_first_inner(client))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no startup message"))?
}

async fn read_first_inner<R: AsyncRead + Unpin>(client: &mut R) -> io::Result<First> {
    let mut head = [0u8; 8];
    client.read_exact(&mut head).await?;
    let len = i32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let code = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    let len = usize::try_from(len)
        .ok()
        .filter(|l| (8..=MAX_STARTUP).contains(l))
        .ok_or_else(|| invalid(format!("bad startup length {len}")))?;
    let mut raw = Vec::with_capacity(len);
    raw.extend_from_slice(&head);
    raw.resize(len, 0);
    client.read_exact(&mut raw[8..]).await?;
    match code {
        CANCEL_REQUEST if len == 16 => {
            let pid = i32::from_be_bytes([raw[8], raw[9], raw[10], raw[11]]);
            let secret = i32::from_be_bytes([raw[12], raw[13], raw[14], raw[15]]);
            Ok(First::Cancel {
                key: (pid, secret),
                raw,
            })
        }
        SSL_REQUEST | GSSENC_REQUEST if len == 8 => Ok(First::Encrypted(raw)),
        c if c >> 16 == 3 => Ok(First::Startup(raw)),
        c => Err(invalid(format!("unsupported protocol code {c}"))),
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Sends a CancelRequest to the server that owns the session, or to every pooled endpoint
/// when the key is unknown.
pub async fn route_cancel(cluster: &Cluster, key: CancelKey, raw: &[u8]) {
    let owner = cluster
        .state
        .cancel_keys
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .copied();
    let targets: Vec<SocketAddr> = match owner {
        Some(addr) => {
            cluster.state.cancels_routed.fetch_add(1, Ordering::Relaxed);
            vec![addr]
        }
        None => {
            cluster
                .state
                .cancels_broadcast
                .fetch_add(1, Ordering::Relaxed);
            cluster
                .state
                .membership
                .load()
                .endpoints
                .iter()
                .filter(|e| e.pooled)
                .map(|e| e.addr)
                .collect()
        }
    };
    for addr in targets {
        let send = async {
            let mut s = TcpStream::connect(addr).await?;
            s.write_all(raw).await?;
            s.shutdown().await
        };
        match tokio::time::timeout(cluster.connect_timeout, send).await {
            Ok(Ok(())) => debug!(upstream = %addr, "cancel request forwarded"),
            Ok(Err(e)) => debug!(upstream = %addr, error = %e, "cancel request failed"),
            Err(_) => debug!(upstream = %addr, "cancel request timed out"),
        }
    }
}

/// Answers a client that sent a StartupMessage with a FATAL ErrorResponse.
pub async fn refuse<W: AsyncWrite + Unpin>(client: &mut W, message: &str) {
    refuse_with(client, CONNECTION_FAILURE, message).await;
}

/// SQLSTATE `08006`: the connection could not be made.
pub const CONNECTION_FAILURE: &str = "08006";
/// SQLSTATE `53300`: too many connections, as a server at `max_connections` says.
pub const TOO_MANY_CONNECTIONS: &str = "53300";

/// Sends a `FATAL` error with SQLSTATE `code`, then closes.
pub async fn refuse_with<W: AsyncWrite + Unpin>(client: &mut W, code: &str, message: &str) {
    let _ = client.write_all(&error_response(code, message)).await;
    let _ = client.shutdown().await;
}

fn error_response(code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = vec![b'E'];
    msg.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    msg.extend_from_slice(&body);
    msg
}

// === cancel key sniffing ===

/// Records a session's cancel key while the session lives.
#[derive(Debug)]
pub struct Registration {
    cluster: Arc<ClusterState>,
    server: SocketAddr,
    key: Option<CancelKey>,
}

impl Registration {
    pub fn new(cluster: Arc<ClusterState>, server: SocketAddr) -> Self {
        Registration {
            cluster,
            server,
            key: None,
        }
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<CancelKey, SocketAddr>> {
        self.cluster
            .cancel_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn record(&mut self, key: CancelKey) {
        self.keys().insert(key, self.server);
        self.key = Some(key);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.keys().remove(&key);
        }
    }
}

/// Parser state for the client's startup messages (written to the server).
#[derive(Debug)]
enum ClientSide {
    Header { buf: [u8; 8], have: usize },
    Skip(usize),
    Done,
}

/// Parser state for the server's messages (read from the server).
#[derive(Debug)]
enum ServerSide {
    Header {
        buf: [u8; 5],
        have: usize,
    },
    Payload {
        kind: u8,
        left: usize,
        key: [u8; 8],
        have: usize,
    },
    Done,
}

/// Wraps the server side of a Postgres session and watches the bytes pass until the
/// session's BackendKeyData has gone by; after that it is a plain pass-through.
pub struct KeySniffer<S> {
    inner: S,
    sniff: Option<Sniff>,
    /// Bytes written to the server and read from it.
    pub to_upstream: u64,
    pub to_client: u64,
}

struct Sniff {
    registration: Registration,
    client: ClientSide,
    server: ServerSide,
    /// Single-byte answers to SSLRequest/GSSENCRequest still expected from the server.
    answers: usize,
}

impl<S> KeySniffer<S> {
    pub fn new(inner: S, registration: Option<Registration>) -> Self {
        KeySniffer {
            inner,
            sniff: registration.map(|registration| Sniff {
                registration,
                client: ClientSide::Header {
                    buf: [0; 8],
                    have: 0,
                },
                server: ServerSide::Header {
                    buf: [0; 5],
                    have: 0,
                },
                answers: 0,
            }),
            to_upstream: 0,
            to_client: 0,
        }
    }
}

impl Sniff {
    fn client_bytes(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.client {
                ClientSide::Done => return,
                ClientSide::Skip(left) => {
                    let n = (*left).min(bytes.len());
                    *left -= n;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.client = ClientSide::Done;
                    }
                }
                ClientSide::Header { buf, have } => {
                    let n = (8 - *have).min(bytes.len());
                    buf[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have == 8 {
                        let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                        let code = i32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
                        if matches!(code, SSL_REQUEST | GSSENC_REQUEST) {
                            self.answers += 1;
                            self.client = ClientSide::Header {
                                buf: [0; 8],
                                have: 0,
                            };
                        } else {
                            let rest = usize::try_from(len).unwrap_or(8).saturating_sub(8);
                            self.client = if rest == 0 {
                                ClientSide::Done
                            } else {
                                ClientSide::Skip(rest)
                            };
                        }
                    }
                }
            }
        }
    }

    /// Returns false once sniffing is over (key seen, session ready, or encrypted).
    fn server_bytes(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.answers > 0 {
                self.answers -= 1;
                let answer = bytes[0];
                bytes = &bytes[1..];
                if answer != b'N' {
                    // 'S' or 'G': the rest of the session is encrypted end to end.
                    self.server = ServerSide::Done;
                    return false;
                }
                continue;
            }
            match &mut self.server {
                ServerSide::Done => return false,
                ServerSide::Header { buf, have } => {
                    let n = (5 - *have).min(bytes.len());
                    buf[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have == 5 {
                        let kind = buf[0];
                        let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
                        let left = usize::try_from(len).unwrap_or(4).saturating_sub(4);
                        if kind == b'Z' {
                            // ReadyForQuery: the startup phase is over.
                            self.server = ServerSide::Done;
                            return false;
                        }
                        self.server = ServerSide::Payload {
                            kind,
                            left,
                            key: [0; 8],
                            have: 0,
                        };
                        if left == 0 {
                            self.server = ServerSide::Header {
                                buf: [0; 5],
                                have: 0,
                            };
                        }
                    }
                }
                ServerSide::Payload {
                    kind,
                    left,
                    key,
                    have,
                } => {
                    let n = (*left).min(bytes.len());
                    if *kind == b'K' {
                        for b in &bytes[..n] {
                            if *have < 8 {
                                key[*have] = *b;
                                *have += 1;
                            }
                        }
                    }
                    *left -= n;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        if *kind == b'K' && *have == 8 {
                            let pid = i32::from_be_bytes([key[0], key[1], key[2], key[3]]);
                            let secret = i32::from_be_bytes([key[4], key[5], key[6], key[7]]);
                            self.registration.record((pid, secret));
                        }
                        self.server = ServerSide::Header {
                            buf: [0; 5],
                            have: 0,
                        };
                    }
                }
            }
        }
        true
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for KeySniffer<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = &buf.filled()[before..];
        this.to_client += read.len() as u64;
        if let Some(sniff) = &mut this.sniff {
            if !read.is_empty() && !matches!(sniff.server, ServerSide::Done) {
                // Once over, the registration (the key) stays for the session's life.
                if !sniff.server_bytes(read) {
                    sniff.client = ClientSide::Done;
                }
            }
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for KeySniffer<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &res {
            let n = *n;
            this.to_upstream += n as u64;
            if let Some(sniff) = &mut this.sniff {
                sniff.client_bytes(&buf[..n]);
            }
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::health::postgres::{error_fields, startup_message};

    fn be(v: i32) -> [u8; 4] {
        v.to_be_bytes()
    }

    #[tokio::test]
    async fn classifies_first_messages() {
        let startup = startup_message("u", "d");
        let mut r = &startup[..];
        assert_eq!(
            read_first(&mut r).await.unwrap(),
            First::Startup(startup.clone())
        );

        let mut cancel = Vec::new();
        cancel.extend_from_slice(&be(16));
        cancel.extend_from_slice(&be(CANCEL_REQUEST));
        cancel.extend_from_slice(&be(1234));
        cancel.extend_from_slice(&be(-5));
        let mut r = &cancel[..];
        assert_eq!(
            read_first(&mut r).await.unwrap(),
            First::Cancel {
                key: (1234, -5),
                raw: cancel.clone()
            }
        );

        let mut ssl = Vec::new();
        ssl.extend_from_slice(&be(8));
        ssl.extend_from_slice(&be(SSL_REQUEST));
        let mut r = &ssl[..];
        assert_eq!(
            read_first(&mut r).await.unwrap(),
            First::Encrypted(ssl.clone())
        );

        let mut r = &b"GET / HTTP/1.1\r\n\r\n"[..];
        assert!(read_first(&mut r).await.is_err());
    }

    fn server_message(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&((payload.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    fn sniff() -> Sniff {
        let cluster = Arc::new(ClusterState::new("c"));
        Sniff {
            registration: Registration::new(cluster, "127.0.0.1:5432".parse().unwrap()),
            client: ClientSide::Header {
                buf: [0; 8],
                have: 0,
            },
            server: ServerSide::Header {
                buf: [0; 5],
                have: 0,
            },
            answers: 0,
        }
    }

    #[test]
    fn finds_the_key_across_any_split() {
        let mut stream = Vec::new();
        stream.extend(server_message(b'R', &be(0)));
        stream.extend(server_message(b'S', b"server_version\x0016\x00"));
        let mut key = Vec::new();
        key.extend_from_slice(&be(4242));
        key.extend_from_slice(&be(77));
        stream.extend(server_message(b'K', &key));
        stream.extend(server_message(b'Z', b"I"));
        for chunk in [1, 2, 3, 7, 100] {
            let mut s = sniff();
            s.client_bytes(&startup_message("u", "d"));
            let mut active = true;
            for piece in stream.chunks(chunk) {
                active = s.server_bytes(piece);
            }
            assert!(!active, "sniffing stops at ReadyForQuery");
            assert_eq!(s.registration.key, Some((4242, 77)), "chunk {chunk}");
            let keys = s.registration.keys().clone();
            assert_eq!(
                keys.get(&(4242, 77)),
                Some(&"127.0.0.1:5432".parse().unwrap())
            );
        }
    }

    #[test]
    fn ssl_accepted_stops_sniffing_and_ssl_refused_continues() {
        let mut ssl = Vec::new();
        ssl.extend_from_slice(&be(8));
        ssl.extend_from_slice(&be(SSL_REQUEST));

        let mut s = sniff();
        s.client_bytes(&ssl);
        assert!(!s.server_bytes(b"S"));
        assert_eq!(s.registration.key, None);

        let mut s = sniff();
        s.client_bytes(&ssl);
        assert!(s.server_bytes(b"N"));
        s.client_bytes(&startup_message("u", "d"));
        let mut key = Vec::new();
        key.extend_from_slice(&be(1));
        key.extend_from_slice(&be(2));
        s.server_bytes(&server_message(b'K', &key));
        assert_eq!(s.registration.key, Some((1, 2)));
        drop(s);
    }

    #[test]
    fn error_response_round_trips() {
        let msg = error_response("08006", "no server");
        let (code, message) = error_fields(&msg[5..]);
        assert_eq!((code.as_str(), message.as_str()), ("08006", "no server"));
    }
}

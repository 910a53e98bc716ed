//! Binary upgrade without dropping a connection: the running process starts the binary at
//! its path again, hands it every listening socket (SCM_RIGHTS over a Unix socket), and
//! drains only once the new process serves on them.
//!
//! The two processes then hold the same kernel sockets, so nothing queued in an accept queue
//! is lost and no port is ever closed. The Unix socket has an abstract name (nothing on
//! disk) and only the spawned child's pid may use it (`SO_PEERCRED`).
//!
//! Each message is one SEQPACKET datagram: a JSON header and the descriptors it describes.
//! Old to new: `{"name": "...", "addr": "ip:port"}` with that socket group (one per worker;
//! the name is `listeners.<name>`, `admin` or `probes`), then `{"end": true}`. New to old:
//! `{"ready": true}` once it serves. A group is taken over by the address the new config
//! names, or, where the config says port 0, by its name and IP.

use std::ffi::OsString;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use serde::{Deserialize, Serialize};
use tracing::warn;

/// The environment variable naming the Unix socket a new process fetches its sockets from.
pub const SOCKET_ENV: &str = "LEGATE_UPGRADE_SOCKET";

/// Descriptors per message: the kernel's limit for one SCM_RIGHTS message.
const FDS_PER_MESSAGE: usize = 253;
/// The largest JSON header (listener names are in it).
const HEADER_MAX: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("cannot set up the upgrade socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("cannot start {path}: {source}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the new process exited ({0}) before it was serving")]
    Exited(std::process::ExitStatus),
    #[error("the new process did not serve within {0:?}")]
    TimedOut(Duration),
    #[error("the upgrade socket failed: {0}")]
    Transfer(#[source] std::io::Error),
    #[error("bad upgrade message: {0}")]
    Protocol(String),
}

/// The protocol's version, in every message. Fields a later version adds are ignored, so an
/// upgrade back to an older binary still works.
const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    #[serde(default)]
    v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    addr: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    end: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    ready: bool,
}

/// A group of listening sockets an upgrade hands over: whose they are, where they listen.
#[derive(Debug)]
pub struct Group {
    /// `listeners.<name>`, `admin` or `probes`.
    pub name: String,
    pub addr: SocketAddr,
    pub sockets: Vec<std::net::TcpListener>,
}

/// The group name of listener `name`.
pub fn listener_group(name: &str) -> String {
    format!("listeners.{name}")
}

/// What a new process received: listening socket groups.
#[derive(Debug, Default)]
pub struct Inherited {
    groups: Vec<Group>,
}

impl Inherited {
    /// The sockets for `name` configured at `addr`, taken out (each group is used once):
    /// those bound to `addr`, or, for a port 0 in the config, those of the same name and IP.
    pub fn take(&mut self, name: &str, addr: SocketAddr) -> Option<Vec<std::net::TcpListener>> {
        let i = self
            .groups
            .iter()
            .position(|g| g.addr == addr)
            .or_else(|| {
                (addr.port() == 0)
                    .then(|| {
                        self.groups
                            .iter()
                            .position(|g| g.name == name && g.addr.ip() == addr.ip())
                    })
                    .flatten()
            })?;
        Some(self.groups.swap_remove(i).sockets)
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The addresses not taken: listeners the new config no longer has. Their sockets
    /// close when this is dropped; the old process's copies close when it exits.
    pub fn left(&self) -> Vec<SocketAddr> {
        self.groups.iter().map(|g| g.addr).collect()
    }
}

/// The new process's side: connected to the old one, holding what it sent.
#[derive(Debug)]
pub struct Receiver {
    conn: OwnedFd,
}

impl Receiver {
    /// Connects to the old process named by [`SOCKET_ENV`], if this process was started by
    /// an upgrade, and receives its sockets.
    pub fn from_env() -> Option<Result<(Receiver, Inherited), UpgradeError>> {
        let name = std::env::var_os(SOCKET_ENV)?;
        Some(Receiver::connect(name.as_encoded_bytes()))
    }

    fn connect(name: &[u8]) -> Result<(Receiver, Inherited), UpgradeError> {
        let conn = seqpacket()?;
        let addr =
            SocketAddrUnix::new_abstract_name(name).map_err(|e| UpgradeError::Socket(e.into()))?;
        rustix::net::connect(&conn, &addr).map_err(|e| UpgradeError::Transfer(e.into()))?;
        let mut inherited = Inherited::default();
        loop {
            let (header, fds) = receive(&conn)?;
            if header.end {
                break;
            }
            let (Some(name), Some(addr)) = (header.name, header.addr) else {
                return Err(UpgradeError::Protocol(
                    "a group without name or addr".into(),
                ));
            };
            let i = match inherited.groups.iter().position(|g| g.name == name) {
                Some(i) => i,
                None => {
                    inherited.groups.push(Group {
                        name,
                        addr,
                        sockets: Vec::new(),
                    });
                    inherited.groups.len() - 1
                }
            };
            for fd in fds {
                let socket = std::net::TcpListener::from(fd);
                socket
                    .set_nonblocking(true)
                    .map_err(UpgradeError::Transfer)?;
                inherited.groups[i].sockets.push(socket);
            }
        }
        Ok((Receiver { conn }, inherited))
    }

    /// Tells the old process this one serves: it may stop accepting and drain.
    pub fn ready(self) -> Result<(), UpgradeError> {
        send(
            &self.conn,
            &Header {
                v: VERSION,
                name: None,
                addr: None,
                end: false,
                ready: true,
            },
            &[],
        )
    }
}

/// Starts `exe ARGS…` as the new process, hands it `sockets` and waits (at most `limit`)
/// until it says it serves. Returns its pid. On any failure the new process is killed and
/// this one goes on as before.
pub async fn hand_over(
    exe: &Path,
    args: &[OsString],
    sockets: Vec<Group>,
    limit: Duration,
) -> Result<u32, UpgradeError> {
    let listener = seqpacket()?;
    let name = format!(
        "legate-upgrade-{}-{:016x}",
        std::process::id(),
        fastrand::u64(..)
    );
    let addr = SocketAddrUnix::new_abstract_name(name.as_bytes())
        .map_err(|e| UpgradeError::Socket(e.into()))?;
    rustix::net::bind(&listener, &addr).map_err(|e| UpgradeError::Socket(e.into()))?;
    rustix::net::listen(&listener, 1).map_err(|e| UpgradeError::Socket(e.into()))?;
    // The exchange runs on a blocking thread; short timeouts let it notice a give-up.
    set_timeout(&listener).map_err(UpgradeError::Socket)?;

    let mut child = tokio::process::Command::new(exe)
        .args(args)
        .env(SOCKET_ENV, &name)
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|source| UpgradeError::Spawn {
            path: exe.to_path_buf(),
            source,
        })?;
    let pid = child.id().unwrap_or(0);
    let give_up = Arc::new(AtomicBool::new(false));
    let exchange = {
        let give_up = give_up.clone();
        tokio::task::spawn_blocking(move || exchange(&listener, pid, &sockets, limit, &give_up))
    };
    let outcome = tokio::select! {
        done = exchange => done.unwrap_or_else(|e| Err(UpgradeError::Transfer(std::io::Error::other(e)))),
        status = child.wait() => match status {
            Ok(status) => Err(UpgradeError::Exited(status)),
            Err(e) => Err(UpgradeError::Transfer(e)),
        },
    };
    match outcome {
        Ok(()) => Ok(pid),
        Err(e) => {
            give_up.store(true, Ordering::Relaxed);
            // An exchange that broke off (the new process failed) is best told by its exit.
            let e = match e {
                UpgradeError::Transfer(_) | UpgradeError::Protocol(_) => {
                    match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                        Ok(Ok(status)) => UpgradeError::Exited(status),
                        _ => e,
                    }
                }
                e => e,
            };
            let _ = child.start_kill();
            let _ = child.wait().await;
            Err(e)
        }
    }
}

/// The old process's side of the exchange, blocking: accept the new process (and no other),
/// send every socket, wait for its ready.
fn exchange(
    listener: &OwnedFd,
    pid: u32,
    sockets: &[Group],
    limit: Duration,
    give_up: &AtomicBool,
) -> Result<(), UpgradeError> {
    let deadline = Instant::now() + limit;
    let waiting = |e: &std::io::Error| {
        e.kind() == std::io::ErrorKind::WouldBlock
            && !give_up.load(Ordering::Relaxed)
            && Instant::now() < deadline
    };
    let conn = loop {
        match rustix::net::accept_with(listener, SocketFlags::CLOEXEC) {
            Ok(conn) => {
                // The name is visible to every local process: anyone else is turned away
                // (the connection closed, nothing sent) and the wait goes on.
                let peer = rustix::net::sockopt::socket_peercred(&conn)
                    .map_err(|e| UpgradeError::Transfer(e.into()))?;
                let peer_pid = peer.pid.as_raw_nonzero().get();
                if u32::try_from(peer_pid).ok() == Some(pid) {
                    break conn;
                }
                warn!(
                    pid = peer_pid,
                    "a process other than the new one connected to the upgrade socket; ignored"
                );
            }
            Err(e) => {
                let e = std::io::Error::from(e);
                if waiting(&e) || e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    return Err(UpgradeError::TimedOut(limit));
                }
                return Err(UpgradeError::Transfer(e));
            }
        }
    };
    set_timeout(&conn).map_err(UpgradeError::Transfer)?;
    for group in sockets {
        let fds: Vec<BorrowedFd<'_>> = group.sockets.iter().map(AsFd::as_fd).collect();
        for chunk in fds.chunks(FDS_PER_MESSAGE) {
            let header = Header {
                v: VERSION,
                name: Some(group.name.clone()),
                addr: Some(group.addr),
                end: false,
                ready: false,
            };
            send(&conn, &header, chunk)?;
        }
    }
    let end = Header {
        v: VERSION,
        name: None,
        addr: None,
        end: true,
        ready: false,
    };
    send(&conn, &end, &[])?;
    // The answer comes once the new process has loaded its config and serves.
    loop {
        match receive(&conn) {
            Ok((header, _)) if header.ready => return Ok(()),
            Ok(_) => return Err(UpgradeError::Protocol("expected ready".into())),
            Err(UpgradeError::Transfer(e))
                if waiting(&e) || e.kind() == std::io::ErrorKind::Interrupted =>
            {
                continue
            }
            Err(UpgradeError::Transfer(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(UpgradeError::TimedOut(limit))
            }
            Err(e) => return Err(e),
        }
    }
}

/// Blocking receives on `fd` return (`WouldBlock`) after this long without anything to
/// do, so the exchange can notice a give-up; a send that cannot go out within
/// [`SEND_LIMIT`] fails.
fn set_timeout(fd: &OwnedFd) -> std::io::Result<()> {
    use rustix::net::sockopt::{set_socket_timeout, Timeout};
    set_socket_timeout(fd, Timeout::Recv, Some(Duration::from_millis(200)))?;
    set_socket_timeout(fd, Timeout::Send, Some(SEND_LIMIT))?;
    Ok(())
}

/// How long one message may take to go out (the new process reads them as they come).
const SEND_LIMIT: Duration = Duration::from_secs(10);

/// A Unix SEQPACKET socket, closed on exec.
fn seqpacket() -> Result<OwnedFd, UpgradeError> {
    rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| UpgradeError::Socket(e.into()))
}

fn send(conn: impl AsFd, header: &Header, fds: &[BorrowedFd<'_>]) -> Result<(), UpgradeError> {
    let bytes = serde_json::to_vec(header).map_err(|e| UpgradeError::Protocol(e.to_string()))?;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(UpgradeError::Protocol(format!(
            "{} descriptors do not fit one message",
            fds.len()
        )));
    }
    loop {
        match rustix::net::sendmsg(
            &conn,
            &[IoSlice::new(&bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(UpgradeError::Transfer(e.into())),
        }
    }
}

fn receive(conn: impl AsFd) -> Result<(Header, Vec<OwnedFd>), UpgradeError> {
    let mut bytes = vec![0u8; HEADER_MAX];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        match rustix::net::recvmsg(
            &conn,
            &mut [IoSliceMut::new(&mut bytes)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(got) => break got,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(UpgradeError::Transfer(e.into())),
        }
    };
    let truncated = got
        .flags
        .intersects(rustix::net::ReturnFlags::TRUNC | rustix::net::ReturnFlags::CTRUNC);
    let fds: Vec<OwnedFd> = control
        .drain()
        .filter_map(|m| match m {
            RecvAncillaryMessage::ScmRights(fds) => Some(fds.collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect();
    if truncated {
        return Err(UpgradeError::Protocol(
            "a message was cut short (too long, or out of descriptors)".into(),
        ));
    }
    if got.bytes == 0 {
        return Err(UpgradeError::Transfer(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the other process closed the upgrade socket",
        )));
    }
    let header = serde_json::from_slice(&bytes[..got.bytes])
        .map_err(|e| UpgradeError::Protocol(e.to_string()))?;
    Ok((header, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str) -> Group {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Group {
            name: name.to_owned(),
            addr: socket.local_addr().unwrap(),
            sockets: vec![socket],
        }
    }

    #[test]
    fn groups_are_taken_by_address_or_for_port_0_by_name_and_ip() {
        let (front, admin) = (group("listeners.front"), group("admin"));
        let (front_addr, admin_addr) = (front.addr, admin.addr);
        let mut inherited = Inherited {
            groups: vec![front, admin],
        };

        // Another listener's name on front's address still takes front's sockets.
        let taken = inherited.take("listeners.renamed", front_addr).unwrap();
        assert_eq!(taken[0].local_addr().unwrap(), front_addr);
        assert!(
            inherited.take("listeners.front", front_addr).is_none(),
            "taken once"
        );
        // Port 0: by name and IP only.
        assert!(inherited
            .take("probes", "127.0.0.1:0".parse().unwrap())
            .is_none());
        assert!(inherited
            .take("admin", "10.0.0.1:0".parse().unwrap())
            .is_none());
        let taken = inherited
            .take("admin", "127.0.0.1:0".parse().unwrap())
            .unwrap();
        assert_eq!(taken[0].local_addr().unwrap(), admin_addr);
        assert!(inherited.is_empty());
    }
}
